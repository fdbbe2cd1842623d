//! What every server-sent-event route shares: a place among its token's
//! open streams (at most `--max-streams-per-token`), the resume point a
//! reconnecting client names (`Last-Event-ID`), the re-check of its token
//! when tokens are revoked and at every keep-alive, and the response that
//! relays the events a pump task produces.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::extract::excerpt;
use crate::live::StreamSlot;
use crate::state::AppState;

/// Silence after which a keep-alive comment is sent (and the token re-checked).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Events a pump may have produced and the client not yet taken.
const BUFFER: usize = 64;

/// A place among the open streams of the token with SHA-256 `token_hash`,
/// or `429` when it has its limit open already.
pub fn open_slot(state: &AppState, token_hash: &str) -> ApiResult<StreamSlot> {
    let limit = state.config.max_streams_per_token;
    state.live.open_stream(token_hash, limit).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "this token already has {limit} event streams open, the service's limit \
                     (--max-streams-per-token); close one first"
            ),
        )
    })
}

/// Where a reconnecting client resumes: the `Last-Event-ID` header, else
/// the `last_event_id` query parameter (for clients that cannot set
/// headers), else 0.
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> ApiResult<i64> {
    let (raw, source) = match headers.get("last-event-id") {
        Some(h) => (
            h.to_str()
                .map_err(|_| ApiError::bad_request("invalid Last-Event-ID header: not text"))?,
            "Last-Event-ID header",
        ),
        None => match query {
            Some(q) => (q, "last_event_id"),
            None => return Ok(0),
        },
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(0);
    }
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            let raw = excerpt(raw);
            ApiError::bad_request(format!(
                "invalid {source} {raw}: expected a non-negative integer (the id of the last event received)"
            ))
        })
}

/// Whether a stream may go on after re-checking its token.
enum Recheck {
    /// The token is still good.
    Live,
    /// The token was revoked: send [`revoked_event`] and end.
    Revoked,
    /// The lookup failed: the stream ends without an event (failing
    /// closed), and the client's reconnect is checked like any request.
    Unchecked(ApiError),
}

/// Re-checks the token with SHA-256 `hash`.
async fn recheck(state: &AppState, hash: &str) -> Recheck {
    match auth::still_valid(state, hash).await {
        Ok(true) => Recheck::Live,
        Ok(false) => Recheck::Revoked,
        Err(e) => Recheck::Unchecked(e),
    }
}

/// Re-checks the token with SHA-256 `hash` for the stream `what` feeds
/// through `tx`: true if it may go on; if not, the stream's last event (a
/// revoked token's `error`) has been sent and the refusal logged.
pub async fn token_still_good(
    state: &AppState,
    hash: &str,
    tx: &tokio::sync::mpsc::Sender<Event>,
    what: &str,
) -> bool {
    match recheck(state, hash).await {
        Recheck::Live => true,
        Recheck::Revoked => {
            tracing::info!(stream = what, "event stream closed: its token was revoked");
            let _ = tx.send(revoked_event()).await;
            false
        }
        Recheck::Unchecked(e) => {
            tracing::warn!(stream = what, error = %e.message,
                "event stream closed: its token could not be checked");
            false
        }
    }
}

/// The last event of a stream whose token was revoked.
fn revoked_event() -> Event {
    Event::default().event("error").data(
        serde_json::json!({"code": "unauthorized", "error": "the token was revoked; this stream is closed"})
            .to_string(),
    )
}

/// A channel for a pump task's events, and the response that relays them
/// (with keep-alive comments in silences); the response ends when the pump
/// drops its sender.
pub fn channel() -> (
    mpsc::Sender<Event>,
    Sse<impl Stream<Item = Result<Event, Infallible>>>,
) {
    let (tx, rx) = mpsc::channel(BUFFER);
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    let response =
        Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    (tx, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_event_id_of_megabytes_is_refused_in_bounded_time() {
        for raw in [
            "9".repeat(8 << 20),
            " ".repeat(8 << 20),
            "é".repeat(4 << 20),
        ] {
            let start = std::time::Instant::now();
            match last_event_id(&HeaderMap::new(), Some(&raw)) {
                Ok(n) => assert!(raw.trim().is_empty() && n == 0),
                Err(e) => assert!(e.message.len() < 400, "the input echoed back"),
            }
            // Trimming 8 MiB of spaces char by char takes about 2 s in a
            // debug build here, more with the test binary's other threads
            // on two loaded cores; a quadratic blow-up would take hours.
            assert!(start.elapsed() < Duration::from_secs(30));
        }
    }

    #[test]
    fn last_event_id_must_be_a_count() {
        assert_eq!(last_event_id(&HeaderMap::new(), Some("")), Ok(0));
        assert_eq!(last_event_id(&HeaderMap::new(), Some(" 42 ")), Ok(42));
        assert!(last_event_id(&HeaderMap::new(), Some("-1")).is_err());
        assert!(last_event_id(&HeaderMap::new(), Some("abc"))
            .unwrap_err()
            .message
            .contains("\"abc\""));
    }
}
