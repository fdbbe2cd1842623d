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

use rusqlite::{params, Connection};

use super::tasks::{FATE_EXPIRED, FATE_UNFETCHED};
use crate::error::ApiResult;

/// Exception type of an expired result.
pub const RESULT_EXPIRED: &str = "ResultExpired";

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
    let traceback = format!("{RESULT_EXPIRED}: {message}");
    // The literals let (and INDEXED BY makes) SQLite use the partial index
    // of unfetched results, not scan every finished task.
    let sql = format!(
        "UPDATE tasks SET result = NULL, exc_type = ?3, exc_message = ?4, exc_traceback = ?5,
                          result_fate = {FATE_EXPIRED}
         WHERE rid IN (SELECT rid FROM tasks INDEXED BY tasks_unfetched
                       WHERE done = 1 AND result_fate = {FATE_UNFETCHED} AND stored < ?1 LIMIT ?2)"
    );
    let n = conn.execute(
        &sql,
        params![cutoff, limit as i64, RESULT_EXPIRED, message, traceback],
    )?;
    Ok(n)
}

/// Deletes up to `limit` finished tasks stored before `cutoff`.
pub fn delete_finished(conn: &Connection, cutoff: f64, limit: usize) -> ApiResult<usize> {
    Ok(conn.execute(
        "DELETE FROM tasks WHERE rid IN
            (SELECT rid FROM tasks WHERE done = 1 AND stored < ?1 LIMIT ?2)",
        params![cutoff, limit as i64],
    )?)
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
