//! Request extractors whose rejections are JSON errors naming the problem,
//! replacing axum's plain-text ones: a raw body, a JSON body, and a path id.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::{DeserializeOwned, DeserializeSeed};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The raw request body, within the size limit (`413` beyond it) and
/// received within the body deadline (`408` past it), so a client
/// trickling its body cannot hold a connection and a buffer for long.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let deadline = state.config.body_read_timeout;
        let read = tokio::time::timeout(deadline, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {} s, the service's limit \
                         (--body-read-timeout)",
                        deadline.as_secs_f64()
                    ),
                )
            })?;
        let bytes = read.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(format!(
                    "request body is larger than the limit of {} bytes",
                    state.config.max_request_bytes
                ))
            } else {
                ApiError::bad_request(format!(
                    "could not read the request body: {}",
                    rej.body_text()
                ))
            }
        })?;
        Ok(Body(bytes))
    }
}

/// A JSON request body; malformed JSON, wrong types and missing fields give
/// `400` naming the field, an over-limit body `413`.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let Body(bytes) = Body::from_request(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a JSON body, naming the path of the offending field on error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    parse_json_seed(bytes, PhantomData::<T>)
}

/// [`parse_json`] with a seed, for bodies whose parsing needs settings
/// (e.g. a limit checked while reading).
pub fn parse_json_seed<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> ApiResult<S::Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut track = serde_path_to_error::Track::new();
    let value = seed
        .deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
        .map_err(|inner| {
            let path = track.path().to_string();
            if path == "." || path.is_empty() {
                ApiError::bad_request(format!("invalid JSON body: {inner}"))
            } else {
                ApiError::bad_request(format!("invalid JSON body at `{path}`: {inner}"))
            }
        })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// The single `{id}` segment of a path, as sent.
#[derive(Debug)]
pub struct IdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| IdPath(p.0))
            .map_err(|rej| ApiError::bad_request(format!("bad path: {}", rej.body_text())))
    }
}

/// Parses an id of the given kind (e.g. "task"), naming it on error.
pub fn parse_id(kind: &str, raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|e| {
        let raw = excerpt(raw);
        ApiError::bad_request(format!("invalid {kind} id {raw}: not a UUID ({e})"))
    })
}

/// Characters of a client's input quoted back in an error message.
const EXCERPT_CHARS: usize = 64;

/// `raw` quoted for an error message, cut after [`EXCERPT_CHARS`]
/// characters, so that refusing a huge input does not echo it back.
pub fn excerpt(raw: &str) -> String {
    match raw.char_indices().nth(EXCERPT_CHARS) {
        None => format!("{raw:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &raw[..cut], raw.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Vec<u32>,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"name": "x", "items": [1, "two"]}"#).unwrap_err();
        assert!(e.message.contains("items[1]"), "{}", e.message);
        let e = parse_json::<Body>(br#"{"items": []}"#).unwrap_err();
        assert!(e.message.contains("missing field `name`"), "{}", e.message);
        let e = parse_json::<Body>(b"{nope").unwrap_err();
        assert_eq!(e.code, "bad_request");
        let e = parse_json::<Body>(br#"{"name": "x", "items": []} trailing"#).unwrap_err();
        assert!(e.message.contains("trailing"), "{}", e.message);
        assert!(parse_json::<Body>(b"  ")
            .unwrap_err()
            .message
            .contains("empty"));
    }

    #[test]
    fn long_input_is_cut_in_error_messages() {
        let e = parse_id("task", &"é".repeat(100_000)).unwrap_err();
        assert!(e.message.len() < 400, "{}", e.message);
        assert!(e.message.contains("200000 bytes"), "{}", e.message);
        assert_eq!(excerpt("abc"), "\"abc\"");
    }

    #[test]
    fn bad_ids_are_named() {
        let e = parse_id("task", "xyz").unwrap_err();
        assert!(e.message.contains("task id \"xyz\""), "{}", e.message);
        assert!(parse_id("task", &Uuid::new_v4().to_string()).is_ok());
    }
}
