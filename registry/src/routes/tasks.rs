//! Reading tasks back: `GET /v2/tasks/{id}` (with its timeline), `POST /v2/batch_status`,
//! `GET /v2/taskgroup/{id}`, and the task document they (and the result
//! stream) share. Reading a final task's result marks it fetched, so the
//! result TTL no longer applies to it.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hpfaas_protocol::task::TaskState;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::User;
use crate::db::tasks::{self as db_tasks, TaskRow, Timeline};
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_id, IdPath, Json};
use crate::state::AppState;
use crate::time::time_str;

/// Tasks read per query when listing a task group.
const GROUP_PAGE: usize = 10_000;

/// Marks these final tasks fetched, without waiting (the next read would
/// just mark them again).
pub fn mark_fetched(state: &AppState, rows: &[&TaskRow]) {
    let ids: Vec<Uuid> = rows
        .iter()
        .filter(|t| t.state.is_final() && !t.fetched)
        .map(|t| t.id)
        .collect();
    if !ids.is_empty() {
        // Lazy: a mark lost in a power cut only lets the result TTL purge a
        // result its owner has read already.
        let _ = state
            .db
            .enqueue_lazy(move |c, _| db_tasks::mark_fetched(c, &ids));
    }
}

/// What every form of a task document starts with: the task, its state,
/// what it belongs to, and when it was submitted and (once done) completed.
pub fn document_head(
    id: Uuid,
    state: TaskState,
    ids: [Uuid; 3],
    created: f64,
    completed: Option<f64>,
) -> Value {
    let [group, function, endpoint] = ids;
    let mut doc = json!({
        "task_id": id,
        "status": state.as_str(),
        "pending": !state.is_final(),
        "task_group_id": group,
        "function_id": function,
        "endpoint_id": endpoint,
        "created_t": time_str(created),
    });
    if let Some(done) = completed {
        doc["completion_t"] = json!(time_str(done));
    }
    doc
}

/// The task document of docs/api.md.
pub fn task_document(t: &TaskRow) -> Value {
    let mut doc = document_head(
        t.id,
        t.state,
        [t.group, t.function, t.endpoint],
        t.created,
        t.completed,
    );
    if let Some(result) = &t.result {
        doc["result"] = json!(result);
    }
    // Failed, cancelled (`TaskCancelled`), or a result that expired
    // (`ResultExpired`, whatever the status).
    if let Some(exc_type) = &t.exc_type {
        doc["exception"] = json!(t.exc_traceback.as_deref().unwrap_or(""));
        doc["exception_type"] = json!(exc_type);
        doc["exception_message"] = json!(t.exc_message.as_deref().unwrap_or(""));
    }
    add_cached(&mut doc, t.state, t.cached_from);
    // Written by this service from a `TaskOutput`; unreadable text is left out.
    if let Some(output) = t.output.as_deref() {
        if let Ok(output) = serde_json::from_str::<Value>(output) {
            doc["output"] = output;
        }
    }
    doc
}

/// Memoization's keys (docs/api.md, "Memoization"), only on a call that
/// took or waits for a cached result: keys of their own, so Globus Compute
/// clients read on as before.
pub(crate) fn add_cached(doc: &mut Value, state: TaskState, cached_from: Option<Uuid>) {
    if let Some(from) = cached_from {
        doc["cached"] = json!(state == TaskState::Success);
        doc["cached_from"] = json!(from);
    }
}

/// Adds the timeline (and where the task ran, once known) to a task's
/// document: keys of their own, so Globus Compute clients read on as before.
fn add_timeline(doc: &mut Value, t: &Timeline) {
    let time = |t: Option<f64>| t.map(time_str);
    doc["timeline"] = json!({
        "submitted": time_str(t.submitted),
        "dispatched": time(t.dispatched),
        "started": time(t.started),
        "finished": time(t.finished),
        "result_fetched": time(t.fetched),
    });
    if let Some(placement) = t.placement.as_deref() {
        // Written by this crate as JSON; unreadable would be a bug, shown as absent.
        if let Ok(placement) = serde_json::from_str::<Value>(placement) {
            doc["placement"] = placement;
        }
    }
}

/// `GET /v2/tasks/{id}`: the task document with the task's timeline.
pub async fn get(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("task", &raw)?;
    let (task, timeline) = state
        .db
        .read(move |c| {
            let Some(task) = db_tasks::get_task(c, user.id, id)? else {
                return Ok(None);
            };
            Ok(Some((task, db_tasks::timeline(c, user.id, id)?)))
        })
        .await?
        .ok_or_else(|| ApiError::not_found_id("task", &raw))?;
    mark_fetched(&state, &[&task]);
    let mut doc = task_document(&task);
    if let Some(timeline) = &timeline {
        add_timeline(&mut doc, timeline);
    }
    Ok(axum::Json(doc))
}

/// Body of `POST /v2/batch_status`.
#[derive(Debug, Deserialize)]
pub struct BatchStatus {
    task_ids: Vec<String>,
}

/// `POST /v2/batch_status`: unknown (or someone else's) ids answer
/// `"status": "unknown"` rather than failing the batch.
pub async fn batch_status(
    State(state): State<AppState>,
    user: User,
    Json(body): Json<BatchStatus>,
) -> ApiResult<axum::Json<Value>> {
    let ids = body
        .task_ids
        .into_iter()
        .map(|raw| parse_id("task", &raw).map(|id| (raw, id)))
        .collect::<ApiResult<Vec<_>>>()?;
    let (results, rows) = state
        .db
        .read(move |c| {
            let mut results = Map::new();
            let mut rows = Vec::new();
            for (raw, id) in ids {
                let doc = match db_tasks::get_task(c, user.id, id)? {
                    Some(task) => {
                        let doc = task_document(&task);
                        rows.push(task);
                        doc
                    }
                    None => json!({
                        "task_id": raw,
                        "status": "unknown",
                        "pending": false,
                        "reason": "unknown task id",
                    }),
                };
                results.insert(raw, doc);
            }
            Ok((results, rows))
        })
        .await?;
    mark_fetched(&state, &rows.iter().collect::<Vec<_>>());
    Ok(axum::Json(json!({"response": "batch", "results": results})))
}

/// Task group `group` (`raw` as the client wrote it) is `user`'s; not found
/// otherwise.
pub async fn require_group_owner(
    state: &AppState,
    user: &User,
    group: Uuid,
    raw: &str,
) -> ApiResult<()> {
    let owner = state
        .db
        .read(move |c| db_tasks::group_owner(c, group))
        .await?;
    if owner != Some(user.id) {
        return Err(ApiError::not_found_id("task group", raw));
    }
    Ok(())
}

/// `GET /v2/taskgroup/{id}`: written in pages as it is read, so a group of
/// a million tasks never sits in memory whole.
pub async fn taskgroup(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<Response> {
    let id = parse_id("task group", &raw)?;
    let first = state
        .db
        .read(move |c| {
            if db_tasks::group_owner(c, id)? != Some(user.id) {
                return Ok(None);
            }
            db_tasks::group_tasks(c, id, i64::MIN, GROUP_PAGE).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found_id("task group", &raw))?;
    let head = format!(r#"{{"taskgroup_id":"{id}","tasks":["#);
    // (rows to write, cursor, rows written so far, finished)
    let start = (Some(first), 0i64, 0usize, false);
    let pages = futures_util::stream::unfold(start, move |(rows, cursor, written, done)| {
        let state = state.clone();
        async move {
            if done {
                return None;
            }
            let rows = match rows {
                Some(rows) => rows,
                None => {
                    match state
                        .db
                        .read(move |c| db_tasks::group_tasks(c, id, cursor, GROUP_PAGE))
                        .await
                    {
                        Ok(rows) => rows,
                        Err(e) => {
                            // The status is sent already: cut the body short,
                            // which the client sees as malformed JSON.
                            tracing::error!(group = %id, error = %e, "listing a task group failed");
                            return None;
                        }
                    }
                }
            };
            let full = rows.len() == GROUP_PAGE;
            let mut chunk = String::with_capacity(rows.len() * 120 + 2);
            let mut next = cursor;
            for (i, (rid, task, function, status)) in rows.iter().enumerate() {
                if written + i > 0 {
                    chunk.push(',');
                }
                let item = json!({"id": task, "function_id": function, "status": status});
                chunk.push_str(&item.to_string());
                next = *rid;
            }
            let written = written + rows.len();
            if !full {
                chunk.push_str("]}");
            }
            Some((
                Ok::<_, Infallible>(Bytes::from(chunk)),
                (None, next, written, !full),
            ))
        }
    });
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(head)) })
        .chain(pages);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
