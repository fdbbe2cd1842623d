//! `GET /v3/taskgroup/{id}/stream`: a task group's results as server-sent
//! events.
//!
//! Order matters for not losing events: subscribe to live notifications
//! first, then replay from the database everything after `Last-Event-ID`,
//! then follow notifications. A notification only says "group G has a
//! result with seq S"; the stream always reads the results themselves from
//! the database after its last sent seq, so a reader that lagged behind the
//! broadcast channel just re-reads and loses nothing.
//!
//! The stream re-checks its token when any token is revoked and at every
//! keep-alive; once the token is revoked it sends one `event: error` with a
//! JSON `unauthorized` error and ends, and the client's reconnect gets `401`.
//! When the token cannot be checked (the database fails), the stream ends
//! all the same: it never goes on unchecked.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::IntoResponse;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use crate::auth::User;
use crate::db::tasks as db_tasks;
use crate::db::tasks::TaskRow;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_id, IdPath};
use crate::live::{ResultSubscription, StreamSlot};
use crate::routes::sse;
use crate::routes::tasks::{mark_fetched, require_group_owner, task_document};
use crate::state::AppState;

/// Results read from the database per query.
const PAGE: usize = 1000;
/// Results in the first read after a notification, which runs on the async
/// thread ([`crate::db::Db::read_inline`]): a lone result reaches its stream
/// without a trip through the reader pool; more are paged from the pool.
const QUICK_PAGE: usize = 16;

/// Query string of the stream route.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    last_event_id: Option<String>,
}

/// `GET /v3/taskgroup/{id}/stream`.
pub async fn stream(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let group = parse_id("task group", &raw)?;
    let query =
        query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let last = sse::last_event_id(&headers, query.0.last_event_id.as_deref())?;
    let slot = sse::open_slot(&state, &user.token_hash)?;
    // Subscribe before reading anything, so no result falls in between.
    let notifications = state.live.subscribe_results(group);
    let revocations = state.revocations.subscribe();
    require_group_owner(&state, &user, group, &raw).await?;
    let (tx, response) = sse::channel();
    let watch = Watch {
        notifications,
        revocations,
        token_hash: user.token_hash,
        _slot: Some(slot),
    };
    tokio::spawn(pump(state, group, last, watch, tx));
    Ok(response)
}

/// What a stream listens to besides its client.
struct Watch {
    notifications: ResultSubscription,
    revocations: watch::Receiver<u64>,
    /// SHA-256 of the token the stream was opened with.
    token_hash: String,
    /// The stream's place among its token's open streams, held while it runs.
    _slot: Option<StreamSlot>,
}

/// Feeds one stream until the client goes away, its token is revoked, or
/// the service stops.
async fn pump(state: AppState, group: Uuid, mut last: i64, watch: Watch, tx: mpsc::Sender<Event>) {
    let Watch {
        mut notifications,
        mut revocations,
        token_hash,
        _slot,
    } = watch;
    let mut stale = true;
    let keep_alive = tokio::time::sleep(sse::KEEP_ALIVE);
    tokio::pin!(keep_alive);
    loop {
        if stale {
            match send_after(&state, group, &mut last, &tx).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    // Ending the response makes the client reconnect with
                    // its Last-Event-ID; nothing is lost.
                    tracing::warn!(%group, error = %e, "result stream stopped");
                    return;
                }
            }
        }
        let check = tokio::select! {
            n = notifications.recv() => {
                stale = false;
                match n {
                    Ok(event) if event.group == group && event.seq > last => match event.row {
                        // Events come in result_seq order, and every one
                        // before this was sent or read: send it as it is.
                        Some(row) => {
                            if tx.send(result_event(&row)).await.is_err() {
                                return;
                            }
                            last = event.seq;
                            mark_fetched(&state, &[&row]);
                        }
                        None => stale = true,
                    },
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => stale = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                false
            }
            _ = crate::revocation::next(&mut revocations) => true,
            // Silence: the response sends a keep-alive about now. One timer
            // for the stream, re-armed only here, so a busy service (whose
            // every result wakes this loop) cannot postpone the token check.
            _ = &mut keep_alive => {
                keep_alive.as_mut().reset(tokio::time::Instant::now() + sse::KEEP_ALIVE);
                true
            }
            _ = tx.closed() => return,
            _ = state.shutting_down() => return,
        };
        if check {
            stale = false;
            if !sse::token_still_good(
                &state,
                &token_hash,
                &tx,
                &format!("results of group {group}"),
            )
            .await
            {
                return;
            }
        }
    }
}

/// Sends every stored result of `group` after `*last`; false once the
/// client has gone.
async fn send_after(
    state: &AppState,
    group: Uuid,
    last: &mut i64,
    tx: &mpsc::Sender<Event>,
) -> ApiResult<bool> {
    let mut first = true;
    loop {
        let after = *last;
        let rows = if first {
            state
                .db
                .read_inline(|c| db_tasks::results_after(c, group, after, QUICK_PAGE))?
        } else {
            state
                .db
                .read(move |c| db_tasks::results_after(c, group, after, PAGE))
                .await?
        };
        let full = rows.len() == if first { QUICK_PAGE } else { PAGE };
        first = false;
        for row in &rows {
            let Some(seq) = row.result_seq.filter(|s| *s > *last) else {
                continue;
            };
            if tx.send(result_event(row)).await.is_err() {
                return Ok(false);
            }
            *last = seq;
        }
        mark_fetched(state, &rows.iter().collect::<Vec<_>>());
        if !full {
            return Ok(true);
        }
    }
}

/// The `result` event of a final task.
fn result_event(row: &TaskRow) -> Event {
    Event::default()
        .id(row.result_seq.unwrap_or_default().to_string())
        .event("result")
        .data(task_document(row).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::catalog::{self, EndpointRegistration, FunctionRow};
    use crate::db::tasks::{NewTask, Submission};
    use crate::live::{Live, ResultEvent};
    use hpfaas_protocol::task::{Outcome, TaskResult, TaskState};
    use std::time::Duration;

    /// Stores results for `ids` through the writer and announces them.
    async fn finish(state: &AppState, endpoint: Uuid, ids: &[Uuid]) {
        let results: Vec<TaskResult> = ids
            .iter()
            .map(|id| TaskResult {
                task_id: *id,
                outcome: Outcome::Success { result: "r".into() },
                output: None,
                completed_at: 1.0,
                placement: None,
            })
            .collect();
        let stored = state
            .db
            .write(move |c, ctx| db_tasks::store_results(c, ctx, endpoint, &results))
            .await
            .unwrap();
        for r in stored {
            state.live.publish_result(ResultEvent {
                group: r.group,
                seq: r.seq,
                row: r.row,
            });
        }
    }

    #[tokio::test]
    async fn a_lagging_reader_re_reads_and_loses_nothing() {
        let (state, stop, _dir) = AppState::for_tests(Live::with_result_capacity(4));
        let (group, function) = (Uuid::new_v4(), Uuid::new_v4());
        let ids: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
        let new_tasks: Vec<NewTask> = ids
            .iter()
            .map(|id| NewTask {
                id: *id,
                function,
                payload: "p".into(),
                in_file: false,
                blob: None,
            })
            .collect();
        let endpoint = state
            .db
            .write(move |c, ctx| {
                let owner = catalog::ensure_user(c, "alice")?;
                let reg = EndpointRegistration {
                    id: None,
                    name: "ep".into(),
                    display_name: "ep".into(),
                    metadata: serde_json::json!({}),
                };
                let cred = catalog::StoredToken {
                    hash: "cred".into(),
                    prefix: "cred".into(),
                };
                let endpoint = catalog::register_endpoint(c, owner, &reg, &cred)?;
                let f = FunctionRow {
                    id: function,
                    name: "f".into(),
                    code: "c".into(),
                    description: String::new(),
                    metadata: serde_json::json!({}),
                };
                catalog::insert_function(c, owner, &f)?;
                db_tasks::submit(
                    c,
                    ctx,
                    &Submission {
                        owner,
                        endpoint,
                        group,
                        state: TaskState::Received,
                        functions: vec![(function.to_string(), function)],
                        tasks: new_tasks,
                        result_serializers: "[]".into(),
                        resource_spec: None,
                        idempotency: None,
                        quota: Default::default(),
                        depends_on: Vec::new(),
                    },
                )?;
                Ok(endpoint)
            })
            .await
            .unwrap();
        finish(&state, endpoint, &ids[..2]).await;

        // A reader that holds one event and reads nothing more.
        let (tx, mut rx) = mpsc::channel(1);
        let watch = Watch {
            notifications: state.live.subscribe_results(group),
            revocations: state.revocations.subscribe(),
            token_hash: "unused".into(),
            _slot: None,
        };
        let pump = tokio::spawn(pump(state.clone(), group, 0, watch, tx));
        let first = rx.recv().await.unwrap();
        // Ten more results overflow the 4-slot notification channel.
        finish(&state, endpoint, &ids[2..]).await;
        let mut events = vec![first];
        while events.len() < ids.len() {
            let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            events.push(e);
        }
        assert_eq!(events.len(), 12);
        // Nothing more (no duplicates) arrives once caught up.
        assert!(tokio::time::timeout(Duration::from_millis(50), rx.recv())
            .await
            .is_err());
        stop.send_replace(true);
        pump.await.unwrap();
        assert!(rx.recv().await.is_none(), "the stream ends at shutdown");
        state.db.shutdown().await;
    }
}
