//! Result expiry and retention, in bounded batches.
//!
//! * A final task whose result nobody fetched within the result TTL loses
//!   its result: it keeps its status, and its document says
//!   `exception_type: "ResultExpired"`.
//! * Finished tasks, idempotency keys, and then-empty task groups older than
//!   the retention period are deleted.
//!
//! Each function handles at most `limit` rows, so one purge step is one short
//! writer job; [`crate::purge`] repeats them until nothing is left.

use hpfaas_protocol::failure::SystemFailure;
use rusqlite::{params, Connection};

use super::tasks::{FATE_EXPIRED, FATE_UNFETCHED};
use super::usage::UsageDelta;
use crate::error::ApiResult;

/// Bytes a final task keeps (counted in `user_usage`), as SQL.
const KEPT: &str = "ifnull(octet_length(result), 0) + ifnull(octet_length(exc_message), 0) \
                    + ifnull(octet_length(exc_traceback), 0) + ifnull(octet_length(output), 0)";

/// Purges up to `limit` unfetched results stored before `cutoff`.
pub fn expire_results(
    conn: &Connection,
    cutoff: f64,
    limit: usize,
    ttl_text: &str,
) -> ApiResult<usize> {
    let message = format!(
        "the result was not fetched within the service's result TTL ({ttl_text}) and was purged"
    );
    let expired = SystemFailure::ResultExpired;
    let traceback = format!("{expired}: {message}");
    // The literals let (and INDEXED BY makes) SQLite use the partial index
    // of unfetched results, not scan every finished task.
    let sql = format!(
        "SELECT rid, owner, {KEPT} FROM tasks INDEXED BY tasks_unfetched
         WHERE done = 1 AND result_fate = {FATE_UNFETCHED} AND stored < ?1 LIMIT ?2"
    );
    let rows: Vec<(i64, i64, i64)> = conn
        .prepare_cached(&sql)?
        .query_map(params![cutoff, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let sql = format!(
        "UPDATE tasks SET result = NULL, exc_type = ?2, exc_message = ?3, exc_traceback = ?4,
                          output = NULL, result_fate = {FATE_EXPIRED}
         WHERE rid = ?1"
    );
    let mut expire = conn.prepare_cached(&sql)?;
    let mut usage = UsageDelta::default();
    let kept_now = (message.len() + traceback.len()) as i64;
    for (rid, owner, kept) in &rows {
        expire.execute(params![rid, expired.name(), message, traceback])?;
        usage.add(*owner, 0, kept_now - kept);
    }
    usage.apply(conn)?;
    Ok(rows.len())
}

/// Deletes up to `limit` finished tasks stored before `cutoff`.
pub fn delete_finished(conn: &Connection, cutoff: f64, limit: usize) -> ApiResult<usize> {
    let sql = format!(
        "DELETE FROM tasks WHERE rid IN
            (SELECT rid FROM tasks WHERE done = 1 AND stored < ?1 LIMIT ?2)
         RETURNING owner, {KEPT}"
    );
    let mut usage = UsageDelta::default();
    let mut n = 0;
    let mut st = conn.prepare_cached(&sql)?;
    let mut rows = st.query(params![cutoff, limit as i64])?;
    while let Some(r) = rows.next()? {
        usage.add(r.get(0)?, 0, -r.get::<_, i64>(1)?);
        n += 1;
    }
    drop(rows);
    usage.apply(conn)?;
    Ok(n)
}

/// Deletes up to `limit` idempotency keys created before `cutoff`.
pub fn delete_keys(conn: &Connection, cutoff: f64, limit: usize) -> ApiResult<usize> {
    Ok(conn.execute(
        "DELETE FROM idempotency_keys WHERE rowid IN
            (SELECT rowid FROM idempotency_keys WHERE created < ?1 LIMIT ?2)",
        params![cutoff, limit as i64],
    )?)
}

/// Deletes up to `limit` task groups created before `cutoff` that have no
/// task left.
pub fn delete_empty_groups(conn: &Connection, cutoff: f64, limit: usize) -> ApiResult<usize> {
    Ok(conn.execute(
        "DELETE FROM task_groups WHERE id IN
            (SELECT g.id FROM task_groups g WHERE g.created < ?1
             AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.group_id = g.id) LIMIT ?2)",
        params![cutoff, limit as i64],
    )?)
}
