//! Live views, as server-sent events, for the dashboard (and anyone who
//! wants to watch): an endpoint's status and events
//! (`GET /v3/endpoints/{id}/events/stream`) and the caller's overview,
//! their throughput and their endpoints' status (`GET /v3/activity/stream`).
//!
//! A view looks at what it shows once every [`TICK`] and sends only what
//! changed since its last frame. Looking is cheap (the status is in memory;
//! an endpoint's new events are one indexed read), and it keeps the views
//! off the paths they watch: a heartbeat or a stored result never waits on,
//! or wakes, an open page.
//!
//! Like the result stream, a view re-checks its token (and an endpoint
//! view the caller's access to the endpoint) when tokens are revoked and
//! at every keep-alive, and ends when either is gone.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::{Caller, Principal, User};
use crate::db::catalog::{self, EndpointRow};
use crate::db::events as db_events;
use crate::error::{ApiError, ApiResult};
use crate::extract::IdPath;
use crate::live::StreamSlot;
use crate::routes::endpoints::{readable, status_document, summary};
use crate::routes::sse;
use crate::routes::task_list::activity_document;
use crate::state::AppState;

/// How often a view looks for changes: the most a page lags behind.
pub const TICK: Duration = Duration::from_secs(1);

/// Events an endpoint view sends first when the client names no
/// `Last-Event-ID`, and the most it reads per look.
const EVENTS_PAGE: usize = 100;

/// How often the overview re-reads which endpoints the caller has.
const ENDPOINT_LIST_AGE: Duration = Duration::from_secs(10);

/// What a live view shows.
trait View: Send + 'static {
    /// The frames that bring the client up to date (none if nothing changed).
    fn look(&mut self, state: &AppState) -> impl Future<Output = ApiResult<Vec<Event>>> + Send;

    /// Whether the caller may still see this view; checked with the token.
    fn allowed(&self, state: &AppState) -> impl Future<Output = ApiResult<bool>> + Send;
}

/// Query string of the endpoint view.
#[derive(Debug, Deserialize)]
pub struct ViewQuery {
    #[serde(default)]
    last_event_id: Option<String>,
}

/// `GET /v3/endpoints/{id}/events/stream`: `status` frames (the status
/// document, each time it changes) and `endpoint_event` frames (each
/// event once, with its `seq` as the event id, so a reconnect resumes).
pub async fn endpoint(
    State(state): State<AppState>,
    Caller(caller): Caller,
    IdPath(raw): IdPath,
    headers: HeaderMap,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let resume = sse::last_event_id(&headers, query.last_event_id.as_deref())?;
    let id = readable(&state, &caller, &raw).await?;
    let slot = sse::open_slot(&state, &caller.token_hash)?;
    let view = EndpointView {
        id,
        caller: caller.clone(),
        since: (resume > 0).then_some(resume),
        shown: None,
    };
    let (tx, response) = sse::channel();
    tokio::spawn(follow(state, view, caller.token_hash, slot, tx));
    Ok(response)
}

/// `GET /v3/activity/stream`: an `overview` frame (the caller's
/// throughput, as `GET /v3/activity`, and their endpoints with their
/// status) each time it changes.
pub async fn overview(State(state): State<AppState>, user: User) -> ApiResult<impl IntoResponse> {
    let slot = sse::open_slot(&state, &user.token_hash)?;
    let view = OverviewView {
        user: user.id,
        endpoints: Vec::new(),
        listed: None,
        shown: None,
    };
    let (tx, response) = sse::channel();
    tokio::spawn(follow(state, view, user.token_hash, slot, tx));
    Ok(response)
}

/// Feeds one view until the client goes away, its token is revoked, its
/// access ends, or the service stops.
async fn follow<V: View>(
    state: AppState,
    mut view: V,
    token_hash: String,
    _slot: StreamSlot,
    tx: mpsc::Sender<Event>,
) {
    let mut revocations = state.revocations.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep_alive = tokio::time::sleep(sse::KEEP_ALIVE);
    tokio::pin!(keep_alive);
    loop {
        let check = tokio::select! {
            _ = tick.tick() => false,
            _ = crate::revocation::next(&mut revocations) => true,
            _ = &mut keep_alive => {
                keep_alive.as_mut().reset(tokio::time::Instant::now() + sse::KEEP_ALIVE);
                true
            }
            _ = tx.closed() => return,
            _ = state.shutting_down() => return,
        };
        if check {
            if !sse::token_still_good(&state, &token_hash, &tx, "live view").await {
                return;
            }
            match view.allowed(&state).await {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tx.send(gone_event()).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "live view closed: access could not be checked");
                    return;
                }
            }
            continue;
        }
        match view.look(&state).await {
            Ok(frames) => {
                for frame in frames {
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                // Ending the response makes the client reconnect (with its
                // Last-Event-ID): nothing is lost.
                tracing::warn!(error = %e.message, "live view stopped");
                return;
            }
        }
    }
}

/// The last event of a view whose subject the caller may no longer see.
fn gone_event() -> Event {
    Event::default().event("error").data(
        json!({"code": "not_found", "error": "this endpoint is no longer visible to you; this stream is closed"})
            .to_string(),
    )
}

/// One endpoint's status and events.
struct EndpointView {
    id: Uuid,
    caller: Principal,
    /// The last event sent, once any was.
    since: Option<i64>,
    /// The status document last sent.
    shown: Option<Value>,
}

impl View for EndpointView {
    async fn look(&mut self, state: &AppState) -> ApiResult<Vec<Event>> {
        let mut frames = Vec::new();
        let status = status_document(state, self.id);
        if self.shown.as_ref() != Some(&status) {
            frames.push(Event::default().event("status").data(status.to_string()));
            self.shown = Some(status);
        }
        let (id, since) = (self.id, self.since);
        let rows = state
            .db
            .read(move |c| db_events::list(c, id, since, EVENTS_PAGE))
            .await?;
        for row in rows {
            self.since = Some(row.seq);
            frames.push(
                Event::default()
                    .id(row.seq.to_string())
                    .event("endpoint_event")
                    .data(json!(row).to_string()),
            );
        }
        if self.since.is_none() {
            // No events yet: later ones are all new.
            self.since = Some(0);
        }
        Ok(frames)
    }

    async fn allowed(&self, state: &AppState) -> ApiResult<bool> {
        match readable(state, &self.caller, &self.id.to_string()).await {
            Ok(_) => Ok(true),
            Err(e) if e.status.is_client_error() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A user's throughput and endpoints.
struct OverviewView {
    user: i64,
    endpoints: Vec<EndpointRow>,
    /// When `endpoints` was read.
    listed: Option<Instant>,
    /// The frame last sent.
    shown: Option<Value>,
}

impl View for OverviewView {
    async fn look(&mut self, state: &AppState) -> ApiResult<Vec<Event>> {
        if self.listed.is_none_or(|t| t.elapsed() >= ENDPOINT_LIST_AGE) {
            let user = self.user;
            self.endpoints = state
                .db
                .read(move |c| catalog::list_endpoints(c, user))
                .await?;
            self.listed = Some(Instant::now());
        }
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                let mut doc = summary(state, e);
                let mut status = status_document(state, e.id);
                doc["details"] = status["details"].take();
                doc
            })
            .collect();
        let frame = json!({
            "activity": activity_document(state, self.user),
            "endpoints": endpoints,
        });
        if self.shown.as_ref() == Some(&frame) {
            return Ok(Vec::new());
        }
        let event = Event::default().event("overview").data(frame.to_string());
        self.shown = Some(frame);
        Ok(vec![event])
    }

    async fn allowed(&self, _state: &AppState) -> ApiResult<bool> {
        // The caller's own figures: the token check is all there is.
        Ok(true)
    }
}
