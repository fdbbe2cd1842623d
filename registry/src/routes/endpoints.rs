//! `/v3/endpoints` and `/v2/endpoints/...`: registering endpoints (which
//! issues their credentials), listing, deleting, their live status (blocks
//! included) and their recent events.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use hpfaas_protocol::endpoint::BlockReport;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::{Caller, User};
use crate::db::catalog::{self, Access, EndpointRegistration, EndpointRow, Principal};
use crate::db::events as db_events;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_id, IdPath, Json};
use crate::live::ConnectionDetails;
use crate::state::AppState;
use crate::time::time_str;
use crate::token::{new_token, stored_token};

/// Body of `POST /v3/endpoints`; other keys an agent sends are ignored.
#[derive(Debug, Deserialize)]
pub struct RegisterEndpoint {
    endpoint_name: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    endpoint_id: Option<Uuid>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// `POST /v3/endpoints`.
pub async fn register(
    State(state): State<AppState>,
    user: User,
    Json(body): Json<RegisterEndpoint>,
) -> ApiResult<axum::Json<Value>> {
    let name = body.endpoint_name.trim().to_string();
    if name.is_empty() {
        return Err(ApiError::bad_request("endpoint_name must not be empty"));
    }
    let reg = EndpointRegistration {
        id: body.endpoint_id,
        display_name: body
            .display_name
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| name.clone()),
        name,
        metadata: Value::Object(body.metadata.unwrap_or_default()),
    };
    let credential = new_token();
    let stored = stored_token(&credential);
    let name = reg.name.clone();
    let id = state
        .db
        .write(move |c, _| catalog::register_endpoint(c, user.id, &reg, &stored))
        .await?;
    if body.endpoint_id.is_some() {
        // Earlier credentials were revoked: forget them and drop an agent
        // still connected with one. Only this endpoint's credentials changed,
        // so streams and other links need no re-check.
        state.tokens.invalidate();
        state.live.kick(id);
    }
    state
        .audit
        .record(json!({"event": "endpoint_registered", "user": user.name,
        "endpoint_id": id, "name": name, "reregistered": body.endpoint_id.is_some()}));
    tracing::info!(endpoint = %id, user = %user.name, "endpoint registered");
    Ok(axum::Json(
        json!({"endpoint_id": id, "name": name, "credential": credential}),
    ))
}

fn status_word(state: &AppState, id: Uuid) -> &'static str {
    if state.live.is_online(id) {
        "online"
    } else {
        "offline"
    }
}

/// An endpoint as `GET /v2/endpoints` lists it.
pub fn summary(state: &AppState, e: &EndpointRow) -> Value {
    json!({
        "endpoint_id": e.id,
        "uuid": e.id,
        "name": e.name,
        "display_name": e.display_name,
        "status": status_word(state, e.id),
    })
}

/// `GET /v2/endpoints`.
pub async fn list(State(state): State<AppState>, user: User) -> ApiResult<axum::Json<Value>> {
    let rows = state
        .db
        .read(move |c| catalog::list_endpoints(c, user.id))
        .await?;
    Ok(axum::Json(Value::Array(
        rows.iter().map(|e| summary(&state, e)).collect(),
    )))
}

/// `GET /v2/endpoints/{id}`.
pub async fn get(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("endpoint", &raw)?;
    let (e, shared) = state
        .db
        .read(move |c| match catalog::get_endpoint(c, user.id, id)? {
            Some(e) => Ok(Some((e, catalog::shared_with(c, id)?))),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| ApiError::not_found_id("endpoint", &raw))?;
    let mut doc = summary(&state, &e);
    doc["created_t"] = json!(time_str(e.created));
    doc["shared_with"] = json!(shared);
    Ok(axum::Json(doc))
}

/// `DELETE /v2/endpoints/{id}`: its credentials are revoked and a connected
/// agent is dropped; its tasks stay readable.
pub async fn delete(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("endpoint", &raw)?;
    let deleted = state
        .db
        .write(move |c, _| catalog::delete_endpoint(c, user.id, id))
        .await?;
    if !deleted {
        return Err(ApiError::not_found_id("endpoint", &raw));
    }
    state.tokens.invalidate();
    state.live.kick(id);
    tracing::info!(endpoint = %id, "endpoint deleted");
    Ok(axum::Json(json!({"endpoint_id": id, "deleted": true})))
}

/// Checks that `caller` may read endpoint `raw`'s status and events: its
/// owner, a user it is shared with, or its own credential; anyone else
/// gets 404, as if it did not exist.
pub async fn readable(state: &AppState, caller: &Principal, raw: &str) -> ApiResult<Uuid> {
    let id = parse_id("endpoint", raw)?;
    match caller.endpoint {
        Some(own) if own != id => {
            return Err(ApiError::forbidden(format!(
                "this is the credential of endpoint {own}; it cannot read endpoint {id}"
            )))
        }
        _ => {}
    }
    let user = caller.user_id;
    let (access, _) = state
        .db
        .read(move |c| catalog::endpoint_access(c, user, id))
        .await?;
    if access == Access::None {
        return Err(ApiError::not_found_id("endpoint", raw));
    }
    Ok(id)
}

/// `GET /v2/endpoints/{id}/status`: for the owner, users it is shared
/// with, or the endpoint's own credential.
pub async fn status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = readable(&state, &caller, &raw).await?;
    Ok(axum::Json(status_document(&state, id)))
}

/// What `GET /v2/endpoints/{id}/status` answers: online or not, and the
/// agent's last report (blocks included).
pub fn status_document(state: &AppState, id: Uuid) -> Value {
    let (online, details) = state.live.status(id);
    json!({
        "status": if online { "online" } else { "offline" },
        "details": details.as_ref().map(details_json).unwrap_or_else(|| json!({})),
    })
}

/// Most events one `GET /v3/endpoints/{id}/events` returns, and the default.
pub const MAX_EVENTS_LIMIT: usize = 500;
const DEFAULT_EVENTS_LIMIT: usize = 100;

/// Query of `GET /v3/endpoints/{id}/events`, parsed by hand for clear errors.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    since: Option<String>,
    limit: Option<String>,
}

fn query_number(name: &str, raw: &str, max: i64) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| (0..=max).contains(n))
        .ok_or_else(|| {
            let shown: String = raw.chars().take(40).collect();
            ApiError::bad_request(format!(
                "invalid {name} {shown:?}: expected an integer from 0 to {max}"
            ))
        })
}

/// `GET /v3/endpoints/{id}/events?since=SEQ&limit=N`: the endpoint's
/// events after `since`, oldest first, or without it its last ones; for
/// whoever may read its status.
pub async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    IdPath(raw): IdPath,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let since = query
        .since
        .as_deref()
        .map(|s| query_number("since", s, i64::MAX))
        .transpose()?;
    let limit = match query.limit.as_deref() {
        Some(l) => query_number("limit", l, MAX_EVENTS_LIMIT as i64)? as usize,
        None => DEFAULT_EVENTS_LIMIT,
    };
    let id = readable(&state, &caller, &raw).await?;
    let rows = state
        .db
        .read(move |c| db_events::list(c, id, since, limit))
        .await?;
    let last = rows.last().map(|r| r.seq).or(since);
    Ok(axum::Json(json!({
        "endpoint_id": id,
        "events": rows,
        "last_seq": last,
    })))
}

fn details_json(d: &ConnectionDetails) -> Value {
    json!({
        "host": d.host,
        "pid": d.pid,
        "connected_since": d.connected_since,
        "last_heartbeat": d.last_heartbeat,
        "managers": d.report.managers,
        "total_workers": d.report.total_workers,
        "idle_workers": d.report.idle_workers,
        "outstanding_tasks": d.report.outstanding_tasks,
        "active_blocks": d.report.active_blocks,
        "blocks": d.report.blocks.iter().map(block_json).collect::<Vec<_>>(),
    })
}

/// A block as the status shows it: the agent's report, plus the walltime
/// left now (the agent reports the deadline, which does not tick).
fn block_json(b: &BlockReport) -> Value {
    let mut doc = json!(b);
    doc["walltime_left"] = json!(b
        .deadline
        .map(|d| (d - crate::time::now()).max(0.0).round()));
    doc
}
