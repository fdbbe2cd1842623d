//! Cancelling tasks: a task that is not final becomes `cancelled` (a final
//! state with `TaskCancelled`, so it reaches the result streams like any
//! other), leaves the dispatch queue, and is flagged `cancel_pending` until
//! its endpoint's agent answers the cancel (an `Ack`, or a late result,
//! which is acknowledged and dropped).

use hpfaas_protocol::failure::SystemFailure;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::columns::uuid_col;
use super::dependencies;
use super::writer::WriteCtx;
use crate::error::{ApiError, ApiResult};
use crate::time::now;

/// A task just cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The task.
    pub task: Uuid,
    /// Its group, for the result streams.
    pub group: Uuid,
    /// Its `result_seq`.
    pub seq: i64,
    /// Its endpoint, to tell the agent.
    pub endpoint: Uuid,
}

/// The exception message of a cancelled task: who and when.
pub fn message(user: &str, at: f64) -> String {
    format!(
        "cancelled by user {user} at {} (unix time {at:.3})",
        crate::time::rfc3339(at)
    )
}

/// Cancels the task of row `rid` if it is not final; the identical calls
/// waiting for it, if it computes a cached result, are cancelled too and
/// added to `waiters`.
fn cancel_row(
    conn: &Connection,
    ctx: &mut WriteCtx,
    rid: i64,
    text: &str,
    at: f64,
    waiters: &mut Vec<Cancelled>,
) -> ApiResult<Option<Cancelled>> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET state = 'cancelled', done = 1, result = NULL,
                exc_type = ?6, exc_message = ?2, exc_traceback = ?3,
                completed = ?4, stored = ?4, result_seq = ?5, result_fate = 1,
                cancel_pending = (cached_from IS NULL)
         WHERE rid = ?1 AND done = 0
         RETURNING id, group_id, endpoint_id, owner, memo_leader",
    )?;
    let arg_bytes: i64 = conn
        .prepare_cached("DELETE FROM task_payloads WHERE rid = ?1 RETURNING bytes")?
        .query_row([rid], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let seq = ctx.next_result_seq;
    let cancelled = SystemFailure::TaskCancelled;
    let traceback = format!("{cancelled}: {text}");
    let row = st
        .query_row(
            params![rid, text, traceback, at, seq, cancelled.name()],
            |r| {
                Ok((
                    Cancelled {
                        task: uuid_col(r, 0)?,
                        group: uuid_col(r, 1)?,
                        endpoint: uuid_col(r, 2)?,
                        seq,
                    },
                    r.get::<_, i64>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            },
        )
        .optional()?;
    let mut leader = false;
    let row = match row {
        Some((cancelled, owner, lead)) => {
            leader = lead;
            let kept = (text.len() + traceback.len()) as i64;
            super::usage::add_usage(conn, owner, -1, kept - arg_bytes)?;
            Some(cancelled)
        }
        None => None,
    };
    if row.is_some() {
        ctx.next_result_seq += 1;
        super::result_seq::save_result_seq(conn, ctx)?;
    }
    if let (Some(c), true) = (&row, leader) {
        cancel_waiters(conn, ctx, c.task, at, waiters)?;
    }
    Ok(row)
}

/// A cancelled call that computed a cached result takes the identical calls
/// waiting for it along ([`super::memo`]); its entry goes, so the next
/// identical call runs.
fn cancel_waiters(
    conn: &Connection,
    ctx: &mut WriteCtx,
    leader: Uuid,
    at: f64,
    out: &mut Vec<Cancelled>,
) -> ApiResult<()> {
    super::memo::forget_pending(conn, leader)?;
    let text = format!("cancelled with the identical call {leader} it waited for");
    for rid in super::memo::waiters(conn, &leader.to_string())? {
        // A waiter never leads: nothing more is added.
        let mut none = Vec::new();
        out.extend(cancel_row(conn, ctx, rid, &text, at, &mut none)?);
    }
    Ok(())
}

/// Cancels the tasks that depend on `out[from..]`, and theirs in turn
/// (appended to `out`): a task whose parent was cancelled can never run.
fn cancel_dependents(
    conn: &Connection,
    ctx: &mut WriteCtx,
    out: &mut Vec<Cancelled>,
    from: usize,
    at: f64,
) -> ApiResult<()> {
    let mut rid = conn.prepare_cached("SELECT rid FROM tasks WHERE id = ?1 AND done = 0")?;
    let mut next = from;
    while next < out.len() {
        let parent = out[next].task;
        next += 1;
        dependencies::forget(conn, parent)?;
        for child in dependencies::take_children(conn, parent)? {
            let Some(child_rid) = rid
                .query_row([child.to_string()], |r| r.get::<_, i64>(0))
                .optional()?
            else {
                continue;
            };
            let text = format!(
                "cancelled because task {parent}, which it depends on, was cancelled at {} \
                 (unix time {at:.3})",
                crate::time::rfc3339(at)
            );
            let mut waiters = Vec::new();
            out.extend(cancel_row(conn, ctx, child_rid, &text, at, &mut waiters)?);
            out.append(&mut waiters);
        }
    }
    Ok(())
}

/// Cancels `owner`'s task `id`: 404 if it is not theirs, 409 naming its
/// state if it is final already. The task comes first, then the identical
/// calls that waited for it, if any, then the tasks depending on any of
/// them, and theirs in turn.
pub fn cancel_task(
    conn: &Connection,
    ctx: &mut WriteCtx,
    owner: i64,
    user_name: &str,
    id: Uuid,
) -> ApiResult<Vec<Cancelled>> {
    let row: Option<(i64, String)> = conn
        .prepare_cached("SELECT rid, state FROM tasks WHERE id = ?1 AND owner = ?2")?
        .query_row(params![id.to_string(), owner], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((rid, state)) = row else {
        return Err(ApiError::not_found_id("task", id));
    };
    let at = now();
    let mut waiters = Vec::new();
    let first = cancel_row(conn, ctx, rid, &message(user_name, at), at, &mut waiters)?.ok_or_else(
        || {
            ApiError::conflict(format!(
                "task {id} is already {state}; only a task that has not finished can be cancelled"
            ))
        },
    )?;
    let mut out = vec![first];
    out.append(&mut waiters);
    cancel_dependents(conn, ctx, &mut out, 0, at)?;
    Ok(out)
}

/// Cancels up to `limit` non-final tasks of `owner`'s group after `after_rid`
/// (a cursor, so a huge group is done in bounded steps); returns them and
/// the cursor to continue from (`None` when the group is done).
pub fn cancel_group_page(
    conn: &Connection,
    ctx: &mut WriteCtx,
    owner: i64,
    user_name: &str,
    group: Uuid,
    after_rid: i64,
    limit: usize,
) -> ApiResult<(Vec<Cancelled>, Option<i64>)> {
    let rids: Vec<i64> = {
        let mut st = conn.prepare_cached(
            "SELECT rid FROM tasks WHERE group_id = ?1 AND owner = ?2 AND rid > ?3 AND done = 0
             ORDER BY rid LIMIT ?4",
        )?;
        let rows = st.query_map(
            params![group.to_string(), owner, after_rid, limit as i64],
            |r| r.get(0),
        )?;
        rows.collect::<Result<_, _>>()?
    };
    let at = now();
    let text = message(user_name, at);
    let mut out = Vec::with_capacity(rids.len());
    let mut waiters = Vec::new();
    for rid in &rids {
        // Waiters right after their leader: events go in `result_seq` order.
        out.extend(cancel_row(conn, ctx, *rid, &text, at, &mut waiters)?);
        out.append(&mut waiters);
    }
    cancel_dependents(conn, ctx, &mut out, 0, at)?;
    let next = (rids.len() == limit).then(|| rids.last().copied().unwrap_or(after_rid));
    Ok((out, next))
}

/// The agent has answered the cancel of task `id` (an ack or a result).
pub fn cancel_delivered(conn: &Connection, id: &str, endpoint: &str) -> ApiResult<()> {
    conn.prepare_cached(
        "UPDATE tasks SET cancel_pending = 0 WHERE id = ?1 AND endpoint_id = ?2 AND cancel_pending = 1",
    )?
    .execute(params![id, endpoint])?;
    Ok(())
}

/// Cancelled tasks of `endpoint` whose cancel the agent has not answered,
/// after `after_seq` in cancellation order (`result_seq`, assigned when
/// cancelled, so a cursor never skips a later cancel), at most `limit`;
/// with the cursor to continue from.
pub fn pending_cancels(
    conn: &Connection,
    endpoint: Uuid,
    after_seq: i64,
    limit: usize,
) -> ApiResult<(Vec<Uuid>, i64)> {
    let mut st = conn.prepare_cached(
        "SELECT result_seq, id FROM tasks
         WHERE endpoint_id = ?1 AND cancel_pending = 1 AND result_seq > ?2
         ORDER BY result_seq LIMIT ?3",
    )?;
    let mut last = after_seq;
    let mut ids = Vec::new();
    let mut rows = st.query(params![endpoint.to_string(), after_seq, limit as i64])?;
    while let Some(r) = rows.next()? {
        last = r.get(0)?;
        ids.push(uuid_col(r, 1)?);
    }
    Ok((ids, last))
}
