//! What the agent reports back: tasks it journaled (`ack`), non-final
//! state changes, and results, stored once each (the first one wins) with
//! the next `result_seq`.

use hpfaas_protocol::endpoint::to_json;
use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::task::{Outcome, Placement, TaskResult, TaskState};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::read::{TaskRow, STREAMED_ROW_BYTES};
use crate::db::cancel;
use crate::db::dependencies;
use crate::db::memo;
use crate::db::result_seq::save_result_seq;
use crate::db::usage::{result_bytes, UsageDelta};
use crate::db::writer::WriteCtx;
use crate::error::ApiResult;
use crate::time::now;

/// The agent journaled these tasks: `waiting-for-launch`, unless they have
/// moved on already (a re-sent task may be running or finished). For a
/// cancelled task the ack answers the cancel: it is not repeated.
pub fn ack(conn: &Connection, endpoint: Uuid, ids: &[Uuid]) -> ApiResult<usize> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET state = 'waiting-for-launch', dispatched = ?3
         WHERE id = ?1 AND endpoint_id = ?2 AND state IN ('received', 'waiting-for-ep')",
    )?;
    let endpoint = endpoint.to_string();
    let at = now();
    let mut n = 0;
    for id in ids {
        let id = id.to_string();
        let changed = st.execute(params![id, endpoint, at])?;
        if changed == 0 {
            cancel::cancel_delivered(conn, &id, &endpoint)?;
        }
        n += changed;
    }
    Ok(n)
}

/// Applies non-final state changes to non-final tasks; final states are
/// ignored here because only a result may end a task. `started` gets the
/// `rid` of each task that moved to `running` (not one already there).
pub fn update_states(
    conn: &Connection,
    endpoint: Uuid,
    updates: &[(Uuid, TaskState)],
    mut started: impl FnMut(i64),
) -> ApiResult<usize> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET state = ?3,
                          started = CASE WHEN ?3 = 'running' THEN ifnull(started, ?4) ELSE started END
         WHERE id = ?1 AND endpoint_id = ?2 AND done = 0 AND state <> ?3
         RETURNING rid",
    )?;
    let endpoint = endpoint.to_string();
    let at = now();
    let mut n = 0;
    for (id, state) in updates {
        if state.is_final() {
            tracing::warn!(task = %id, state = state.as_str(), "ignoring a final state sent without a result");
            continue;
        }
        let rid: Option<i64> = st
            .query_row(params![id.to_string(), endpoint, state.as_str(), at], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(rid) = rid {
            n += 1;
            if *state == TaskState::Running {
                started(rid);
            }
        }
    }
    Ok(n)
}

/// Longest block id, manager id or host name kept of a placement.
pub const PLACEMENT_TEXT_MAX: usize = 256;

/// A placement as stored: its start time and the JSON of where it ran, each
/// text cut to [`PLACEMENT_TEXT_MAX`]; `None` if the start time is not a
/// plausible time (the agent is trusted with its endpoint's tasks only, not
/// with the service's columns).
fn stored_placement(p: &Placement) -> Option<(f64, String)> {
    if !(p.started_at.is_finite() && p.started_at > 0.0 && p.started_at < 1e13) {
        return None;
    }
    let cut = |text: &str| {
        let mut end = text.len().min(PLACEMENT_TEXT_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
    };
    let json = serde_json::json!({
        "block_id": cut(&p.block_id),
        "manager_id": cut(&p.manager_id),
        "worker": p.worker,
        "host": cut(&p.host),
    });
    Some((p.started_at, json.to_string()))
}

/// A result [`store_results`] stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    /// The task.
    pub task: Uuid,
    /// Its task group.
    pub group: Uuid,
    /// The result's `result_seq`.
    pub seq: i64,
    /// Its payload was in a file, to remove once this is durable.
    pub payload_file: bool,
    /// The state it ended in.
    pub state: TaskState,
    /// When it was submitted (Unix seconds, the service's clock).
    pub created: f64,
    /// The user who submitted it.
    pub owner: i64,
    /// The task's row as stored, when its result and exception text are at
    /// most [`STREAMED_ROW_BYTES`]: result streams send it without reading
    /// it back.
    pub row: Option<std::sync::Arc<TaskRow>>,
    /// Endpoints of the tasks this result released (it was their last
    /// parent): their links are to be woken.
    pub released: Vec<Uuid>,
}

/// Stores results for non-final tasks of this endpoint, each with the next
/// `result_seq`; returns each stored one. Results for
/// tasks already final (duplicates, cancelled tasks) or unknown are ignored:
/// first one wins.
pub fn store_results(
    conn: &Connection,
    ctx: &mut WriteCtx,
    endpoint: Uuid,
    results: &[TaskResult],
) -> ApiResult<Vec<StoredResult>> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET state = ?3, done = 1, result = ?4, exc_type = ?5, exc_message = ?6,
                          exc_traceback = ?7, completed = ?8, result_seq = ?9, stored = ?10,
                          result_fate = 0, output = ?11, started = ifnull(?12, started),
                          placement = ?13
         WHERE id = ?1 AND endpoint_id = ?2 AND done = 0
         RETURNING group_id, rid, function_id, created, owner, memo_leader",
    )?;
    // The payload of a finished task is no longer needed.
    let mut drop_payload =
        conn.prepare_cached("DELETE FROM task_payloads WHERE rid = ?1 RETURNING in_file, bytes")?;
    let mut usage = UsageDelta::default();
    let stored_at = now();
    let endpoint_text = endpoint.to_string();
    let mut stored = Vec::with_capacity(results.len());
    // Each task that ended here, with its failure (type, message) if any.
    let mut ended = Vec::new();
    for res in results {
        let completed = if res.completed_at.is_finite() && res.completed_at > 0.0 {
            res.completed_at
        } else {
            now()
        };
        let (state, result, exc) = match &res.outcome {
            Outcome::Success { result } => (TaskState::Success, Some(result.as_str()), None),
            Outcome::Failed { exception } => (TaskState::Failed, None, Some(exception)),
        };
        let seq = ctx.next_result_seq;
        let output = res.output.as_ref().map(to_json);
        let placement = res.placement.as_deref().and_then(stored_placement);
        let row: Option<(String, i64, String, f64, i64, bool)> = st
            .query_row(
                params![
                    res.task_id.to_string(),
                    endpoint_text,
                    state.as_str(),
                    result,
                    exc.map(|e| e.exc_type.as_str()),
                    exc.map(|e| e.message.as_str()),
                    exc.map(|e| e.traceback.as_str()),
                    completed,
                    seq,
                    stored_at,
                    output,
                    placement.as_ref().map(|p| p.0),
                    placement.as_ref().map(|p| p.1.as_str()),
                ],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let parsed = row.and_then(|(g, rid, f, created, owner, leader)| {
            Some((
                Uuid::parse_str(&g).ok()?,
                rid,
                Uuid::parse_str(&f).ok()?,
                created,
                owner,
                leader,
            ))
        });
        match parsed {
            Some((group, rid, function, created, owner, leader)) => {
                let dropped: Option<(bool, i64)> = drop_payload
                    .query_row([rid], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let (payload_file, arg_bytes) = dropped.unwrap_or((false, 0));
                let printed = output.as_ref().map_or(0, String::len);
                usage.add(
                    owner,
                    -1,
                    result_bytes(result, exc) + printed as i64 - arg_bytes,
                );
                ctx.next_result_seq += 1;
                let text =
                    result.map_or(0, str::len) + exc.map_or(0, |e| e.traceback.len()) + printed;
                let row = (text <= STREAMED_ROW_BYTES).then(|| {
                    std::sync::Arc::new(TaskRow {
                        id: res.task_id,
                        group,
                        function,
                        endpoint,
                        state,
                        result: result.map(str::to_string),
                        exc_type: exc.map(|e| e.exc_type.clone()),
                        exc_message: exc.map(|e| e.message.clone()),
                        exc_traceback: exc.map(|e| e.traceback.clone()),
                        created,
                        completed: Some(completed),
                        result_seq: Some(seq),
                        fetched: false,
                        output,
                        cached_from: None,
                    })
                });
                ended.push((
                    stored.len(),
                    res.task_id,
                    exc.map(|e| (e.exc_type.clone(), e.message.clone())),
                ));
                stored.push(StoredResult {
                    task: res.task_id,
                    group,
                    seq,
                    payload_file,
                    state,
                    created,
                    owner,
                    row,
                    released: Vec::new(),
                });
                if leader {
                    let outcome = match (result, exc) {
                        (Some(r), _) => memo::LeaderOutcome::Success(r),
                        (None, Some(e)) => memo::LeaderOutcome::Failed(e),
                        (None, None) => continue,
                    };
                    // The waiters ended with their leader, and so do their
                    // own dependents, as the leader's do.
                    for e in memo::leader_ended(conn, ctx, owner, res.task_id, outcome)? {
                        let failure = (e.state == TaskState::Failed)
                            .then(|| exc.map(|x| (x.exc_type.clone(), x.message.clone())))
                            .flatten();
                        ended.push((stored.len(), e.task, failure));
                        stored.push(StoredResult {
                            task: e.task,
                            group: e.group,
                            seq: e.seq,
                            payload_file: false,
                            state: e.state,
                            created: e.created,
                            owner: e.owner,
                            row: e.row,
                            released: Vec::new(),
                        });
                    }
                }
            }
            None => {
                // A cancelled task's late result also answers the cancel.
                cancel::cancel_delivered(conn, &res.task_id.to_string(), &endpoint_text)?;
                tracing::debug!(task = %res.task_id, %endpoint,
                    "result for a task that is already final or not this endpoint's; ignored")
            }
        }
    }
    usage.apply(conn)?;
    settle_dependents(conn, ctx, ended, &mut stored)?;
    if !stored.is_empty() {
        save_result_seq(conn, ctx)?;
    }
    Ok(stored)
}

/// A task that just ended: its index in the stored results, its id, its
/// failure (type, message) if it failed.
type Ended = (usize, Uuid, Option<(String, String)>);

/// The children of tasks that just ended (`ended`: index in `stored`, the
/// task, its failure): a success releases those it was the last parent of;
/// a failure fails every held child with `DependencyFailed` naming it,
/// and their children in turn (appended to `stored`, for the streams).
fn settle_dependents(
    conn: &Connection,
    ctx: &mut WriteCtx,
    ended: Vec<Ended>,
    stored: &mut Vec<StoredResult>,
) -> ApiResult<()> {
    let mut failed = Vec::new();
    for (index, task, failure) in ended {
        let children = dependencies::take_children(conn, task)?;
        match failure {
            None => {
                for child in children {
                    if let Some(endpoint) = dependencies::parent_succeeded(conn, child)? {
                        stored[index].released.push(endpoint);
                    }
                }
            }
            Some((exc_type, message)) => {
                let text = dependencies::failure_message(task, &exc_type, &message);
                failed.extend(children.into_iter().map(|c| (c, text.clone())));
            }
        }
    }
    // A worklist, not recursion: a chain of any length fails in constant stack.
    while let Some((child, message)) = failed.pop() {
        let Some(row) = dependencies::fail_dependent(conn, ctx, child, &message)? else {
            continue;
        };
        let (group, seq, created, owner) = (row.group, row.seq, row.created, row.owner);
        stored.push(StoredResult {
            task: child,
            group,
            seq,
            payload_file: false,
            state: TaskState::Failed,
            created,
            owner,
            row: None,
            released: Vec::new(),
        });
        let name = SystemFailure::DependencyFailed.name();
        let text = dependencies::failure_message(child, name, &message);
        failed.extend(
            dependencies::take_children(conn, child)?
                .into_iter()
                .map(|c| (c, text.clone())),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tasks::dispatch_page::dispatch_page;
    use crate::db::tasks::dispatch_page::tests::limits;
    use crate::db::tasks::read::{get_task, results_after};
    use crate::db::tasks::test_fixture::{fixture, submit_n};
    use hpfaas_protocol::failure::SystemFailure;
    use hpfaas_protocol::task::ExceptionInfo;
    use std::collections::HashSet;

    #[test]
    fn first_result_wins_and_finished_tasks_leave_the_queue() {
        let fx = fixture();
        let group = Uuid::new_v4();
        let ids = submit_n(&fx, group, 2, 10);
        assert_eq!(ack(&fx.conn, fx.endpoint, &ids).unwrap(), 2);
        let mut started = Vec::new();
        let running = [(ids[0], TaskState::Running)];
        assert_eq!(
            update_states(&fx.conn, fx.endpoint, &running, |rid| started.push(rid)).unwrap(),
            1
        );
        // Told again, it is not started twice.
        assert_eq!(
            update_states(&fx.conn, fx.endpoint, &running, |rid| started.push(rid)).unwrap(),
            0
        );
        let rid: i64 = fx
            .conn
            .query_row(
                "SELECT rid FROM tasks WHERE id = ?1",
                [ids[0].to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(started, vec![rid]);
        // A re-sent, re-acked running task stays running.
        assert_eq!(ack(&fx.conn, fx.endpoint, &ids[..1]).unwrap(), 0);
        let mut ctx = WriteCtx { next_result_seq: 7 };
        let ok = TaskResult {
            task_id: ids[0],
            outcome: Outcome::Success { result: "r".into() },
            output: None,
            completed_at: 5.0,
            placement: None,
        };
        let failed = TaskResult::failed(
            ids[0],
            ExceptionInfo::system(SystemFailure::WorkerLost, "gone"),
        );
        let stored = store_results(&fx.conn, &mut ctx, fx.endpoint, &[ok, failed]).unwrap();
        assert_eq!(ctx.next_result_seq, 8);
        let row = get_task(&fx.conn, fx.owner, ids[0]).unwrap().unwrap();
        assert_eq!(row.state, TaskState::Success);
        assert_eq!(row.result.as_deref(), Some("r"));
        // The row the streams get in memory is the row they would read.
        let first = StoredResult {
            task: ids[0],
            group,
            seq: 7,
            payload_file: false,
            state: TaskState::Success,
            created: row.created,
            owner: fx.owner,
            row: Some(std::sync::Arc::new(row)),
            released: Vec::new(),
        };
        assert_eq!(stored, vec![first]);
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            crate::db::tasks::QueueCursor::start(),
            HashSet::new(),
            limits(10, 1 << 20),
        )
        .unwrap();
        assert_eq!(page.count, 1);
        assert_eq!(results_after(&fx.conn, group, 0, 10).unwrap().len(), 1);
        assert!(results_after(&fx.conn, group, 7, 10).unwrap().is_empty());
        let payloads: i64 = fx
            .conn
            .query_row("SELECT COUNT(*) FROM task_payloads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            payloads, 1,
            "the finished task's payload is dropped, the other's kept"
        );
        // A large result is left for the streams to read.
        let big = TaskResult {
            task_id: ids[1],
            outcome: Outcome::Success {
                result: "r".repeat(STREAMED_ROW_BYTES + 1),
            },
            output: None,
            completed_at: 6.0,
            placement: None,
        };
        let stored = store_results(&fx.conn, &mut ctx, fx.endpoint, &[big]).unwrap();
        assert_eq!((stored[0].seq, stored[0].row.is_none()), (8, true));
    }

    /// A task's output is stored by the result's own UPDATE, shown in its
    /// document, counted in its owner's stored bytes, and purged with an
    /// expired result.
    #[test]
    fn output_is_stored_with_the_result_counted_and_expired_with_it() {
        let fx = fixture();
        let ids = submit_n(&fx, Uuid::new_v4(), 1, 10);
        let bytes = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT bytes FROM user_usage WHERE user_id = ?1",
                [fx.owner],
                |r| r.get(0),
            )
            .unwrap()
        };
        let before = bytes(&fx.conn);
        let output = hpfaas_protocol::task::TaskOutput {
            stdout: "printed\n".into(),
            stderr: "warned\n".into(),
            stdout_dropped: 5,
            stderr_dropped: 0,
        };
        let mut failed = TaskResult::failed(
            ids[0],
            ExceptionInfo::system(SystemFailure::ValueError, "boom"),
        );
        failed.output = Some(Box::new(output.clone()));
        let mut ctx = WriteCtx { next_result_seq: 1 };
        let stored = store_results(&fx.conn, &mut ctx, fx.endpoint, &[failed.clone()]).unwrap();
        let row = get_task(&fx.conn, fx.owner, ids[0]).unwrap().unwrap();
        assert_eq!(stored[0].row.as_deref(), Some(&row));
        let doc = crate::routes::tasks::task_document(&row);
        assert_eq!(doc["output"], serde_json::to_value(&output).unwrap());
        assert_eq!(doc["exception_type"], "ValueError");
        let text = to_json(&output).len() as i64;
        let Outcome::Failed { exception } = &failed.outcome else {
            unreachable!()
        };
        let exc = (exception.message.len() + exception.traceback.len()) as i64;
        assert_eq!(bytes(&fx.conn) - before, exc + text - 10);
        crate::db::purge::expire_results(&fx.conn, f64::MAX, 10, "1s").unwrap();
        let expired = get_task(&fx.conn, fx.owner, ids[0]).unwrap().unwrap();
        assert_eq!(expired.output, None);
        assert!(crate::routes::tasks::task_document(&expired)
            .get("output")
            .is_none());
        let kept = expired.exc_message.unwrap().len() + expired.exc_traceback.unwrap().len();
        assert_eq!(bytes(&fx.conn) - before, kept as i64 - 10);
    }
}
