//! `POST /v3/tasks/{id}/cancel` and `POST /v3/taskgroup/{id}/cancel`: the
//! owner cancels tasks that have not finished. Each becomes `cancelled`
//! (`TaskCancelled`, naming who and when), leaves dispatch, appears in the
//! result stream like any final task, and its endpoint's agent is told with
//! `ServiceMessage::Cancel` (now if connected, else when it reconnects).

use std::collections::BTreeMap;

use axum::extract::State;
use hpfaas_protocol::task::TaskState;
use serde_json::{json, Value};

use crate::auth::User;
use crate::db::cancel::{self, Cancelled};
use crate::db::Durability;
use crate::error::ApiResult;
use crate::extract::{parse_id, IdPath};
use crate::live::{Live, ResultEvent};
use crate::metrics::Metrics;
use crate::routes::tasks::require_group_owner;
use crate::state::AppState;

/// Tasks of a group cancelled per writer job.
const GROUP_BATCH: usize = 2000;

/// Announces cancelled tasks to the result streams and their endpoints,
/// and counts them. Runs as the cancel's commit becomes visible: result
/// events must come in `result_seq` order ([`ResultEvent`]).
fn announce(live: &Live, metrics: &Metrics, cancelled: &[Cancelled]) {
    let mut endpoints = BTreeMap::new();
    for c in cancelled {
        live.publish_result(ResultEvent {
            group: c.group,
            seq: c.seq,
            row: None,
        });
        *endpoints.entry(c.endpoint).or_insert(0) += 1;
    }
    for (endpoint, n) in endpoints {
        live.poke(endpoint);
        metrics.finished(endpoint, TaskState::Cancelled.as_str(), n);
    }
}

/// `POST /v3/tasks/{id}/cancel`.
pub async fn cancel_task(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("task", &raw)?;
    let name = user.name.clone();
    let (live, metrics) = (state.live.clone(), state.metrics.clone());
    state
        .db
        .write_visible(
            move |c, ctx| cancel::cancel_task(c, ctx, user.id, &name, id),
            Durability::Now,
            move |cancelled| announce(&live, &metrics, cancelled),
        )
        .await?;
    state
        .audit
        .record(serde_json::json!({"event": "task_finished", "task_id": id,
        "outcome": "cancelled", "cancelled_by": user.name}));
    tracing::info!(task = %id, user = %user.name, "task cancelled");
    Ok(axum::Json(json!({"task_id": id, "status": "cancelled"})))
}

/// `POST /v3/taskgroup/{id}/cancel`: every task of the group not final yet,
/// in bounded batches.
pub async fn cancel_group(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let group = parse_id("task group", &raw)?;
    require_group_owner(&state, &user, group, &raw).await?;
    // Held tasks (waiting for dependencies) have negative rids.
    let mut cursor = i64::MIN;
    let mut total = 0usize;
    loop {
        let name = user.name.clone();
        let (live, metrics) = (state.live.clone(), state.metrics.clone());
        let (cancelled, next) = state
            .db
            .write_visible(
                move |c, ctx| {
                    cancel::cancel_group_page(c, ctx, user.id, &name, group, cursor, GROUP_BATCH)
                },
                Durability::Now,
                move |(cancelled, _)| announce(&live, &metrics, cancelled),
            )
            .await?;
        total += cancelled.len();
        match next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    state
        .audit
        .record(serde_json::json!({"event": "task_group_cancelled",
        "task_group_id": group, "user": user.name, "tasks": total}));
    tracing::info!(%group, user = %user.name, tasks = total, "task group cancelled");
    Ok(axum::Json(
        json!({"taskgroup_id": group, "status": "cancelled", "cancelled": total}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_who_and_when() {
        let m = cancel::message("alice", 1_700_000_000.25);
        assert!(m.contains("alice"), "{m}");
        assert!(m.contains("2023-11-14T22:13:20"), "{m}");
    }
}
