//! Task dependencies (futures as arguments). A task submitted with
//! `depends_on` parents that have not all finished is stored held: state
//! `waiting-for-dependencies`, a negative `rid` (below every dispatch
//! cursor, so no endpoint link reads it), a `held_tasks` row counting the
//! parents it still waits for and a `task_dependents` edge from each. When
//! its last parent succeeds it is released: the parents' results are
//! appended to its payload as a third buffer (`dr\n` + the packed results,
//! in `depends_on` order; the service never decodes them) and it gets a
//! fresh `rid` at the end of its endpoint's queue. A finished parent's
//! children are found through its edges: O(children), never a scan.
//! What happens to children of a parent that failed or was cancelled lives
//! with those events (`tasks/results.rs`, `cancel.rs`).

use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::payload::pack;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::db::columns::uuid_col;
use crate::db::usage::add_usage;
use crate::db::writer::WriteCtx;
use crate::error::{ApiError, ApiResult};
use crate::time::now;

/// Strategy id of the buffer of parents' results a released task's payload
/// ends with (hpfaas extension; docs/api.md, "Dependencies").
pub const STRATEGY_PARENT_RESULTS: &str = "dr\n";

/// Most parents one task may name.
pub const MAX_PARENTS: usize = 100_000;

/// Where a new task's parents stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parents {
    /// Every parent succeeded: the buffer to append to the payload now.
    Ready(String),
    /// These parents have not finished: the task is held.
    Waiting(Vec<Uuid>),
    /// A parent failed or was cancelled already: the task is stored failed
    /// with `DependencyFailed` and this message.
    Failed(String),
}

/// A task [`fail_dependent`] failed.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedDependent {
    /// Its group.
    pub group: Uuid,
    /// Its `result_seq`.
    pub seq: i64,
    /// When it was submitted.
    pub created: f64,
    /// Its owner.
    pub owner: i64,
}

/// Checks the parents a new task of `owner` names: each must be an existing
/// task of the same owner (another user's is reported as not found, as an
/// unknown one is), named once, and not succeeded with its result purged.
/// Cycles cannot arise: a parent exists before its child.
pub fn check_parents(
    conn: &Connection,
    owner: i64,
    endpoint: Uuid,
    parents: &[Uuid],
) -> ApiResult<Parents> {
    if parents.len() > MAX_PARENTS {
        return Err(ApiError::bad_request(format!(
            "a task names {} parents in depends_on; at most {MAX_PARENTS} are allowed",
            parents.len()
        )));
    }
    let mut st = conn.prepare_cached(
        "SELECT t.state, t.done, t.result_fate, t.exc_type, t.exc_message, t.result,
                t.endpoint_id, e.owner
         FROM tasks t JOIN endpoints e ON e.id = t.endpoint_id
         WHERE t.id = ?1 AND t.owner = ?2",
    )?;
    let here = endpoint.to_string();
    let mut seen = std::collections::HashSet::with_capacity(parents.len());
    let (mut waiting, mut results) = (Vec::new(), Vec::new());
    for parent in parents {
        if !seen.insert(*parent) {
            return Err(ApiError::bad_request(format!(
                "task {parent} appears twice in one task's depends_on"
            )));
        }
        type Row = (
            (String, i64, i64),
            (Option<String>, Option<String>, Option<String>),
            (String, i64),
        );
        let row: Option<Row> = st
            .query_row(params![parent.to_string(), owner], |r| {
                Ok((
                    (r.get(0)?, r.get(1)?, r.get(2)?),
                    (r.get(3)?, r.get(4)?, r.get(5)?),
                    (r.get(6)?, r.get(7)?),
                ))
            })
            .optional()?;
        let Some(((state, done, fate), (exc_type, exc_message, result), (ran_on, its_owner))) = row
        else {
            return Err(ApiError::not_found(format!(
                "task {parent} named in depends_on not found; a dependency must name an \
                 existing task of yours"
            )));
        };
        if ran_on != here && its_owner != owner {
            // Its result may be a pickle the other endpoint's owner made; the
            // worker of this endpoint, which runs as someone else (you, or
            // this endpoint's owner), would unpickle it without the check the
            // SDK makes (`UntrustedResult`).
            return Err(ApiError::forbidden(format!(
                "task {parent} named in depends_on runs on endpoint {ran_on}, which you do not \
                 own, and this task would run on another endpoint ({here}): its result could \
                 be a pickle that endpoint's owner made, unpickled here unchecked; fetch the \
                 result (the SDK checks it) and pass the value, or run this task on {ran_on}"
            )));
        }
        match (done, state.as_str(), result) {
            (0, ..) => waiting.push(*parent),
            (_, "success", Some(result)) if fate != 2 => results.push(result),
            (_, "success", _) => {
                return Err(ApiError::conflict(format!(
                    "task {parent} named in depends_on succeeded, but its result has \
                     expired and was purged; submit it again"
                )))
            }
            // Failed or cancelled (say, while the SDK was sending this one).
            _ => {
                return Ok(Parents::Failed(failure_message(
                    *parent,
                    exc_type.as_deref().unwrap_or(&state),
                    exc_message.as_deref().unwrap_or_default(),
                )))
            }
        }
    }
    if waiting.is_empty() {
        Ok(Parents::Ready(results_buffer(&results)))
    } else {
        Ok(Parents::Waiting(waiting))
    }
}

/// The buffer a released task's payload gains: `dr\n` + the packed results.
fn results_buffer<S: AsRef<str>>(results: &[S]) -> String {
    format!("{STRATEGY_PARENT_RESULTS}{}", pack(results))
}

/// `payload` (packed `[args, kwargs]`) with the results buffer appended.
pub fn spliced(payload: &str, buffer: &str) -> String {
    let mut out = String::with_capacity(payload.len() + buffer.len() + 12);
    out.push_str(payload);
    out.push_str(&pack(&[buffer]));
    out
}

/// The `rid` of a task about to be held: below every other (and below 0,
/// where every dispatch cursor starts).
pub fn held_rid(conn: &Connection) -> ApiResult<i64> {
    let min: Option<i64> = conn
        .prepare_cached("SELECT MIN(rid) FROM tasks")?
        .query_row([], |r| r.get(0))?;
    Ok(min.unwrap_or(0).min(0) - 1)
}

/// Records held task `child`: it names `parents` (all, in order) and waits
/// for `waiting`, the ones not finished.
pub fn hold(conn: &Connection, child: Uuid, parents: &[Uuid], waiting: &[Uuid]) -> ApiResult<()> {
    let all: Vec<String> = parents.iter().map(Uuid::to_string).collect();
    let child = child.to_string();
    conn.prepare_cached("INSERT INTO held_tasks (id, waiting) VALUES (?1, ?2)")?
        .execute(params![child, waiting.len() as i64])?;
    conn.prepare_cached("INSERT INTO held_parents (id, parents) VALUES (?1, ?2)")?
        .execute(params![
            child,
            serde_json::to_string(&all).unwrap_or_default()
        ])?;
    let mut edge =
        conn.prepare_cached("INSERT INTO task_dependents (parent, child) VALUES (?1, ?2)")?;
    for parent in waiting {
        edge.execute(params![parent.to_string(), child])?;
    }
    Ok(())
}

/// Removes the edges from `parent`, which has just finished, and returns
/// its children that are still held (each looked up by its key: the cost
/// is the parent's children, whatever else is held).
pub fn take_children(conn: &Connection, parent: Uuid) -> ApiResult<Vec<Uuid>> {
    let children = conn
        .prepare_cached("DELETE FROM task_dependents WHERE parent = ?1 RETURNING child")?
        .query_map([parent.to_string()], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut held = conn.prepare_cached("SELECT id FROM held_tasks WHERE id = ?1")?;
    let mut out = Vec::with_capacity(children.len());
    for child in children {
        if let Some(id) = held.query_row([child], |r| uuid_col(r, 0)).optional()? {
            out.push(id);
        }
    }
    Ok(out)
}

/// Forgets held task `child` (it has become final without running).
pub fn forget(conn: &Connection, child: Uuid) -> ApiResult<()> {
    conn.prepare_cached("DELETE FROM held_tasks WHERE id = ?1")?
        .execute([child.to_string()])?;
    conn.prepare_cached("DELETE FROM held_parents WHERE id = ?1")?
        .execute([child.to_string()])?;
    Ok(())
}

/// One parent of held task `child` succeeded. When it was the last one,
/// the child is released (see the module's comment) and its endpoint
/// returned, to be woken.
pub fn parent_succeeded(conn: &Connection, child: Uuid) -> ApiResult<Option<Uuid>> {
    let waiting: Option<i64> = conn
        .prepare_cached(
            "UPDATE held_tasks SET waiting = waiting - 1 WHERE id = ?1 RETURNING waiting",
        )?
        .query_row([child.to_string()], |r| r.get(0))
        .optional()?;
    if waiting != Some(0) {
        return Ok(None);
    }
    let parents: String = conn
        .prepare_cached("SELECT parents FROM held_parents WHERE id = ?1")?
        .query_row([child.to_string()], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| "[]".into());
    forget(conn, child)?;
    release(conn, child, &parents)
}

/// Splices the parents' results into held task `child` and queues it.
fn release(conn: &Connection, child: Uuid, parents: &str) -> ApiResult<Option<Uuid>> {
    let row: Option<(i64, String, i64, String, i64)> = conn
        .prepare_cached(
            "SELECT t.rid, p.payload, p.bytes, t.endpoint_id, t.owner
             FROM tasks t JOIN task_payloads p ON p.rid = t.rid
             WHERE t.id = ?1 AND t.done = 0",
        )?
        .query_row([child.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((rid, payload, bytes, endpoint, owner)) = row else {
        return Ok(None);
    };
    let parents: Vec<String> = serde_json::from_str(parents).map_err(|e| {
        ApiError::internal(format!("held task {child} has unreadable parents: {e}"))
    })?;
    let mut result = conn.prepare_cached("SELECT result FROM tasks WHERE id = ?1")?;
    let mut results = Vec::with_capacity(parents.len());
    for parent in &parents {
        let text: Option<String> = result
            .query_row([parent], |r| r.get(0))
            .optional()?
            .flatten();
        results.push(text.unwrap_or_default());
    }
    let payload = spliced(&payload, &results_buffer(&results));
    let fresh: i64 = conn
        .prepare_cached("SELECT MAX(rid) + 1 FROM tasks")?
        .query_row([], |r| r.get(0))?;
    conn.prepare_cached("UPDATE tasks SET rid = ?2, state = 'received' WHERE rid = ?1")?
        .execute(params![rid, fresh])?;
    let grown = payload.len() as i64 - bytes;
    conn.prepare_cached(
        "UPDATE task_payloads SET rid = ?2, payload = ?3, bytes = ?4 WHERE rid = ?1",
    )?
    .execute(params![rid, fresh, payload, payload.len() as i64])?;
    add_usage(conn, owner, 0, grown)?;
    Uuid::parse_str(&endpoint)
        .map(Some)
        .map_err(|e| ApiError::internal(format!("task {child} has a bad endpoint id: {e}")))
}

/// Fails task `child`, not final yet (held, or being stored), with
/// `DependencyFailed` and `message`, with the next `result_seq` (the caller
/// saves it); drops its payload and what it counted in the owner's usage.
/// `None` when it is final already.
pub fn fail_dependent(
    conn: &Connection,
    ctx: &mut WriteCtx,
    child: Uuid,
    message: &str,
) -> ApiResult<Option<FailedDependent>> {
    forget(conn, child)?;
    let name = SystemFailure::DependencyFailed.name();
    let (seq, at) = (ctx.next_result_seq, now());
    let traceback = format!("{name}: {message}");
    let row: Option<(Uuid, i64, f64, i64)> = conn
        .prepare_cached(
            "UPDATE tasks SET state = 'failed', done = 1, exc_type = ?2, exc_message = ?3,
                              exc_traceback = ?4, completed = ?5, stored = ?5, result_seq = ?6,
                              result_fate = 0
             WHERE id = ?1 AND done = 0
             RETURNING group_id, rid, created, owner",
        )?
        .query_row(
            params![child.to_string(), name, message, traceback, at, seq],
            |r| Ok((uuid_col(r, 0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((group, rid, created, owner)) = row else {
        return Ok(None);
    };
    ctx.next_result_seq += 1;
    let arg_bytes: i64 = conn
        .prepare_cached("DELETE FROM task_payloads WHERE rid = ?1 RETURNING bytes")?
        .query_row([rid], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let kept = (message.len() + traceback.len()) as i64;
    add_usage(conn, owner, -1, kept - arg_bytes)?;
    Ok(Some(FailedDependent {
        group,
        seq,
        created,
        owner,
    }))
}

/// The message of a task failed because `parent` failed with `exc_type`.
pub fn failure_message(parent: Uuid, exc_type: &str, message: &str) -> String {
    format!("task {parent}, which this task depends on, failed: {exc_type}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_results_buffer_is_a_third_packed_buffer() {
        let payload = pack(&["11\n[1]", "11\n{}"]);
        let out = spliced(&payload, &results_buffer(&["11\n2", "00\nAA=="]));
        let buffers = hpfaas_protocol::payload::unpack(&out).unwrap();
        assert_eq!(buffers.len(), 3);
        assert_eq!(buffers[2], "dr\n4\n11\n27\n00\nAA==");
    }
}
