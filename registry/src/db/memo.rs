//! Memoization: a function registered with `cache` gets a stored result back
//! for an identical call (same owner, same code by SHA-256, same argument
//! bytes by SHA-256) without being dispatched. Entries live in `memo`, with
//! their own copy of the result, so a retention purge of the task a result
//! came from leaves them; they expire after the cache TTL (the periodic
//! purge deletes them) and their bytes count in their owner's stored bytes.
//!
//! A call with no entry becomes the *leader*: an entry without a result
//! names it. An identical call while the leader runs (in the same submit or
//! later) *waits*: its row names the leader in `cached_from` and has no
//! payload row, so dispatch never sees it. When the leader succeeds, the
//! entry gets the result and every waiter ends with it (`cached`); when it
//! fails, the entry goes and every waiter fails with the leader's error
//! (failures are never reused: a later identical call runs again); when it
//! is cancelled, its waiters are cancelled with it ([`crate::db::cancel`]).

use std::sync::Arc;

use hpfaas_protocol::task::{ExceptionInfo, TaskState};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::columns::uuid_col;
use super::tasks::{Submission, TaskRow, STREAMED_ROW_BYTES};
use super::usage::add_usage;
use super::writer::WriteCtx;
use crate::error::ApiResult;
use crate::time::now;

/// Entries deleted per statement when clearing or purging.
pub const BATCH: usize = 1000;

/// The identity of a function's body for the cache: SHA-256 of its code.
pub fn code_hash(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

/// The identity of a call: SHA-256 over the endpoint it runs on, the result
/// serializers it accepts, the packed payload and the raw bytes of its blob,
/// if any (each text led by its length, so no two can trade bytes). The
/// endpoint is part of it because a result is trusted as the endpoint that
/// made it is: the SDK unpickles only results of endpoints it trusts, judged
/// by the task's endpoint, so a result made on someone else's shared
/// endpoint must never come back as one of the caller's own endpoint.
pub fn args_hash(
    endpoint: Uuid,
    serializers: &str,
    payload: &str,
    blob: Option<&[u8]>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(endpoint.as_bytes());
    h.update((serializers.len() as u64).to_le_bytes());
    h.update(serializers.as_bytes());
    h.update((payload.len() as u64).to_le_bytes());
    h.update(payload.as_bytes());
    if let Some(blob) = blob {
        h.update(blob);
    }
    h.finalize().into()
}

/// Turns caching on for function `id` (its code hashed), in the write that
/// registers it.
pub fn enable(conn: &Connection, id: Uuid, code: &str) -> ApiResult<()> {
    conn.prepare_cached("UPDATE functions SET memo_hash = ?2 WHERE id = ?1")?
        .execute(params![id.to_string(), &code_hash(code)[..]])?;
    Ok(())
}

/// Whether function `id` was registered with `cache`.
pub fn is_cached(conn: &Connection, id: Uuid) -> ApiResult<bool> {
    Ok(function_hash(conn, id)?.is_some())
}

/// Whether function `id` is cached: its code hash, if so.
fn function_hash(conn: &Connection, id: Uuid) -> ApiResult<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT memo_hash FROM functions WHERE id = ?1")?
        .query_row([id.to_string()], |r| r.get::<_, Option<Vec<u8>>>(0))
        .optional()?
        .flatten())
}

/// A task that ended from the cache: a hit at submit, or a waiter its
/// leader's result ended. Its result is announced like any other.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// The task.
    pub task: Uuid,
    /// Its group.
    pub group: Uuid,
    /// Its `result_seq`.
    pub seq: i64,
    /// The state it ended in.
    pub state: TaskState,
    /// When it was submitted.
    pub created: f64,
    /// Its owner.
    pub owner: i64,
    /// Its row, when small enough for the streams to take from memory.
    pub row: Option<Arc<TaskRow>>,
}

/// What the cache did to a submission's tasks.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AtSubmit {
    /// Tasks answered from the cache, final already.
    pub hits: Vec<Ended>,
    /// Tasks that wait for an identical running call.
    pub waiting: usize,
    /// Tasks (hits and waiters) whose payload file is no longer needed.
    pub unneeded_files: Vec<Uuid>,
}

/// Answers from the cache the tasks of just-stored submission `s` whose
/// function is cached: a fresh entry (stored within `ttl_secs`) ends the
/// task at once with its result; an entry still being computed makes the
/// task wait for it; no entry makes the task its leader. Functions that are
/// not cached cost one lookup of their row each. Tasks with parents are
/// left out.
pub fn at_submit(
    conn: &Connection,
    ctx: &mut WriteCtx,
    s: &Submission,
    ttl_secs: f64,
) -> ApiResult<AtSubmit> {
    let owner = s.owner;
    let mut out = AtSubmit::default();
    // A submission's tasks come grouped by function (each function once in
    // its body): one lookup per group, linear however many functions it names.
    let mut current: Option<(Uuid, Option<Vec<u8>>)> = None;
    let at = now();
    // A dependent's arguments are not known until its parents finish
    // (`db::dependencies`): it is never looked up, nor waited for.
    let dependents: std::collections::HashSet<usize> = s
        .depends_on
        .iter()
        .filter(|(_, parents)| !parents.is_empty())
        .map(|(i, _)| *i)
        .collect();
    for (index, t) in s.tasks.iter().enumerate() {
        if dependents.contains(&index) {
            continue;
        }
        let code = match &current {
            Some((f, h)) if *f == t.function => h.clone(),
            _ => {
                let h = function_hash(conn, t.function)?;
                current = Some((t.function, h.clone()));
                h
            }
        };
        let Some(code) = code else { continue };
        let args = args_hash(
            s.endpoint,
            &s.result_serializers,
            &t.payload,
            t.blob.as_deref(),
        );
        let entry: Option<(i64, String, Option<String>, Option<f64>)> = conn
            .prepare_cached(
                "SELECT id, task_id, result, stored FROM memo
                 WHERE owner = ?1 AND code_hash = ?2 AND args_hash = ?3",
            )?
            .query_row(params![owner, code, &args[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let id = t.id.to_string();
        match entry {
            Some((_, from, Some(result), Some(stored))) if stored >= at - ttl_secs => {
                let arg_bytes = drop_payload(conn, &id, &mut out, t)?;
                let seq = ctx.next_result_seq;
                ctx.next_result_seq += 1;
                let row: (String, String, String, f64) = conn
                    .prepare_cached(
                        "UPDATE tasks SET state = 'success', done = 1, result = ?2, completed = ?3,
                                          stored = ?3, result_seq = ?4, result_fate = 0,
                                          cached_from = ?5
                         WHERE id = ?1
                         RETURNING group_id, function_id, endpoint_id, created",
                    )?
                    .query_row(params![id, result, at, seq, from], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?;
                add_usage(conn, owner, -1, result.len() as i64 - arg_bytes)?;
                let parse = |s: &str| Uuid::parse_str(s).unwrap_or_default();
                let group = parse(&row.0);
                let small = result.len() <= STREAMED_ROW_BYTES;
                out.hits.push(Ended {
                    task: t.id,
                    group,
                    seq,
                    state: TaskState::Success,
                    created: row.3,
                    owner,
                    row: small.then(|| {
                        Arc::new(TaskRow {
                            id: t.id,
                            group,
                            function: parse(&row.1),
                            endpoint: parse(&row.2),
                            state: TaskState::Success,
                            result: Some(result),
                            exc_type: None,
                            exc_message: None,
                            exc_traceback: None,
                            output: None,
                            created: row.3,
                            completed: Some(at),
                            result_seq: Some(seq),
                            fetched: false,
                            cached_from: Uuid::parse_str(&from).ok(),
                        })
                    }),
                });
            }
            Some((_, leader, None, _)) => {
                let arg_bytes = drop_payload(conn, &id, &mut out, t)?;
                conn.prepare_cached("UPDATE tasks SET cached_from = ?2 WHERE id = ?1")?
                    .execute(params![id, leader])?;
                add_usage(conn, owner, 0, -arg_bytes)?;
                out.waiting += 1;
            }
            Some((entry, _, result, _)) => {
                // Expired: this call computes it afresh.
                let old = result.map_or(0, |r| r.len() as i64);
                conn.prepare_cached(
                    "UPDATE memo SET task_id = ?2, result = NULL, stored = NULL WHERE id = ?1",
                )?
                .execute(params![entry, id])?;
                add_usage(conn, owner, 0, -old)?;
                lead(conn, &id)?;
            }
            None => {
                conn.prepare_cached(
                    "INSERT INTO memo (owner, code_hash, args_hash, task_id) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![owner, code, &args[..], id])?;
                lead(conn, &id)?;
            }
        }
    }
    if !out.hits.is_empty() {
        super::result_seq::save_result_seq(conn, ctx)?;
    }
    Ok(out)
}

fn lead(conn: &Connection, id: &str) -> ApiResult<()> {
    conn.prepare_cached("UPDATE tasks SET memo_leader = 1 WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Deletes a task's payload row (it will never be dispatched); returns the
/// bytes it counted and notes its file for removal.
fn drop_payload(
    conn: &Connection,
    id: &str,
    out: &mut AtSubmit,
    t: &super::tasks::NewTask,
) -> ApiResult<i64> {
    let dropped: Option<(bool, i64)> = conn
        .prepare_cached(
            "DELETE FROM task_payloads WHERE rid = (SELECT rid FROM tasks WHERE id = ?1)
             RETURNING in_file, bytes",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (in_file, bytes) = dropped.unwrap_or((false, 0));
    if in_file {
        out.unneeded_files.push(t.id);
    }
    Ok(bytes)
}

/// How a leader ended, for [`leader_ended`].
#[derive(Debug, Clone, Copy)]
pub enum LeaderOutcome<'a> {
    /// It succeeded with this result.
    Success(&'a str),
    /// It failed.
    Failed(&'a ExceptionInfo),
}

/// Leader `leader` (of `owner`) ended: on success its entry gets the
/// result, else the entry goes; either way its waiters end with it, each
/// with the next `result_seq` (the caller saves the sequence).
pub fn leader_ended(
    conn: &Connection,
    ctx: &mut WriteCtx,
    owner: i64,
    leader: Uuid,
    outcome: LeaderOutcome<'_>,
) -> ApiResult<Vec<Ended>> {
    let leader_text = leader.to_string();
    let at = now();
    match outcome {
        LeaderOutcome::Success(result) => {
            let n = conn
                .prepare_cached(
                    "UPDATE memo SET result = ?2, stored = ?3 WHERE task_id = ?1 AND result IS NULL",
                )?
                .execute(params![leader_text, result, at])?;
            if n > 0 {
                add_usage(conn, owner, 0, result.len() as i64)?;
            }
        }
        LeaderOutcome::Failed(_) => forget_pending(conn, leader)?,
    }
    let (result, exc_type, message, traceback) = match outcome {
        LeaderOutcome::Success(r) => (Some(r), None, None, None),
        LeaderOutcome::Failed(e) => (
            None,
            Some(e.exc_type.as_str()),
            Some(format!(
                "the identical call {leader} this task waited for failed: {}",
                e.message
            )),
            Some(e.traceback.as_str()),
        ),
    };
    let state = if result.is_some() {
        TaskState::Success
    } else {
        TaskState::Failed
    };
    let waiters = waiters(conn, &leader_text)?;
    let mut end = conn.prepare_cached(
        "UPDATE tasks SET state = ?2, done = 1, result = ?3, exc_type = ?4, exc_message = ?5,
                          exc_traceback = ?6, completed = ?7, stored = ?7, result_seq = ?8,
                          result_fate = 0
         WHERE rid = ?1 AND done = 0
         RETURNING id, group_id, function_id, endpoint_id, created",
    )?;
    let kept = result.map_or(0, str::len)
        + message.as_ref().map_or(0, String::len)
        + traceback.map_or(0, str::len);
    let mut out = Vec::with_capacity(waiters.len());
    for rid in waiters {
        let seq = ctx.next_result_seq;
        let row = end
            .query_row(
                params![
                    rid,
                    state.as_str(),
                    result,
                    exc_type,
                    message,
                    traceback,
                    at,
                    seq
                ],
                |r| {
                    Ok((
                        uuid_col(r, 0)?,
                        uuid_col(r, 1)?,
                        uuid_col(r, 2)?,
                        uuid_col(r, 3)?,
                        r.get::<_, f64>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((task, group, function, endpoint, created)) = row else {
            continue;
        };
        ctx.next_result_seq += 1;
        add_usage(conn, owner, -1, kept as i64)?;
        out.push(Ended {
            task,
            group,
            seq,
            state,
            created,
            owner,
            row: (kept <= STREAMED_ROW_BYTES).then(|| {
                Arc::new(TaskRow {
                    id: task,
                    group,
                    function,
                    endpoint,
                    state,
                    result: result.map(str::to_string),
                    exc_type: exc_type.map(str::to_string),
                    exc_message: message.clone(),
                    exc_traceback: traceback.map(str::to_string),
                    output: None,
                    created,
                    completed: Some(at),
                    result_seq: Some(seq),
                    fetched: false,
                    cached_from: Some(leader),
                })
            }),
        });
    }
    Ok(out)
}

/// The pending entry of leader `leader` goes (it failed or was cancelled):
/// the next identical call runs afresh.
pub fn forget_pending(conn: &Connection, leader: Uuid) -> ApiResult<()> {
    conn.prepare_cached("DELETE FROM memo WHERE task_id = ?1 AND result IS NULL")?
        .execute([leader.to_string()])?;
    Ok(())
}

/// Rows of the tasks waiting for leader `leader`, not final yet.
pub fn waiters(conn: &Connection, leader: &str) -> ApiResult<Vec<i64>> {
    Ok(conn
        .prepare_cached("SELECT rid FROM tasks WHERE cached_from = ?1 AND done = 0")?
        .query_map([leader], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Deletes up to `limit` of `owner`'s stored entries, of one function's
/// current code if `function` is given (404 if it is not theirs); returns
/// how many went. Entries still being computed stay (their leader is
/// running; its result is stored when it ends).
pub fn clear(
    conn: &Connection,
    owner: i64,
    function: Option<Uuid>,
    limit: usize,
) -> ApiResult<Option<usize>> {
    let hash = match function {
        Some(f) => {
            let row: Option<Option<Vec<u8>>> = conn
                .prepare_cached(
                    "SELECT memo_hash FROM functions WHERE id = ?1 AND owner = ?2 AND deleted = 0",
                )?
                .query_row(params![f.to_string(), owner], |r| r.get(0))
                .optional()?;
            match row {
                None => return Ok(None),
                Some(None) => return Ok(Some(0)),
                Some(Some(h)) => Some(h),
            }
        }
        None => None,
    };
    let freed: Vec<i64> = conn
        .prepare_cached(
            "DELETE FROM memo WHERE id IN (
                 SELECT id FROM memo WHERE owner = ?1 AND (?2 IS NULL OR code_hash = ?2)
                   AND result IS NOT NULL LIMIT ?3)
             RETURNING octet_length(result)",
        )?
        .query_map(params![owner, hash, limit as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    add_usage(conn, owner, 0, -freed.iter().sum::<i64>())?;
    Ok(Some(freed.len()))
}

/// Deletes up to `limit` entries stored before `cutoff` (the cache TTL);
/// returns how many went.
pub fn purge_expired(conn: &Connection, cutoff: f64, limit: usize) -> ApiResult<usize> {
    let freed: Vec<(i64, i64)> = conn
        .prepare_cached(
            "DELETE FROM memo WHERE id IN (
                 SELECT id FROM memo WHERE result IS NOT NULL AND stored < ?1 LIMIT ?2)
             RETURNING owner, octet_length(result)",
        )?
        .query_map(params![cutoff, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut usage = super::usage::UsageDelta::default();
    for (owner, bytes) in &freed {
        usage.add(*owner, 0, -bytes);
    }
    usage.apply(conn)?;
    Ok(freed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tasks::test_fixture::fixture;
    use crate::db::tasks::NewTask;
    use hpfaas_protocol::task::TaskState;
    use std::time::{Duration, Instant};

    /// A submit may name as many functions as tasks: looking up whether
    /// each is cached stays linear in them (seconds where milliseconds are
    /// expected, to catch only a blow-up).
    #[test]
    fn a_submit_naming_a_hundred_thousand_functions_is_looked_up_in_linear_time() {
        let fx = fixture();
        let tasks: Vec<NewTask> = (0..100_000)
            .map(|_| NewTask {
                id: Uuid::new_v4(),
                function: Uuid::new_v4(),
                payload: "p".into(),
                in_file: false,
                blob: None,
            })
            .collect();
        let s = Submission {
            owner: fx.owner,
            endpoint: fx.endpoint,
            group: Uuid::new_v4(),
            state: TaskState::Received,
            functions: Vec::new(),
            tasks,
            result_serializers: "[]".into(),
            resource_spec: None,
            idempotency: None,
            quota: Default::default(),
            depends_on: Vec::new(),
        };
        let mut ctx = WriteCtx { next_result_seq: 1 };
        let started = Instant::now();
        let done = at_submit(&fx.conn, &mut ctx, &s, 60.0).unwrap();
        let took = started.elapsed();
        assert_eq!(done, AtSubmit::default());
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }
}
