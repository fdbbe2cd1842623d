//! `GET /v2/version`: what the service is, without authentication, so a
//! client can check compatibility before it has a token.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use hpfaas_protocol::{HPFAAS_VERSION, PROTOCOL_VERSION};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};

/// Oldest SDK this service accepts.
pub const MIN_SDK_VERSION: &str = "0.0.1";
/// Oldest endpoint agent this service accepts.
pub const MIN_EP_VERSION: &str = "0.0.1";
/// Version of the REST API (routes and JSON shapes): raised when a change
/// would break an SDK written for the previous one. The SDK refuses a
/// service whose number differs from its own (docs/api.md, "Version
/// compatibility"); the release (`hpfaas`) may change without it.
pub const API_VERSION: u32 = 1;

/// Query string of the version route.
#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    #[serde(default)]
    service: Option<String>,
}

/// `GET /v2/version[?service=all]`.
pub async fn version(
    query: Result<Query<VersionQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    let query =
        query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    match query.0.service.as_deref() {
        None | Some("api") => Ok(axum::Json(json!(HPFAAS_VERSION))),
        Some("all") => Ok(axum::Json(json!({
            "api": HPFAAS_VERSION,
            "hpfaas": HPFAAS_VERSION,
            "min_sdk_version": MIN_SDK_VERSION,
            "min_ep_version": MIN_EP_VERSION,
            "api_version": API_VERSION,
            "protocol_version": PROTOCOL_VERSION,
        }))),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown service {other:?}: use service=all, or omit it"
        ))),
    }
}
