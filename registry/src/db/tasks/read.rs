//! What owners read of the queue: task rows, a group's tasks, results in
//! stream order, and marking results fetched (so the result TTL no longer
//! applies to them).

use hpfaas_protocol::task::TaskState;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::db::columns::uuid_col;
use crate::error::ApiResult;
use crate::time::now;

/// A task as the REST routes show it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Task id.
    pub id: Uuid,
    /// Its task group.
    pub group: Uuid,
    /// The function it runs.
    pub function: Uuid,
    /// The endpoint it runs on.
    pub endpoint: Uuid,
    /// Current state.
    pub state: TaskState,
    /// Serialized result, on success.
    pub result: Option<String>,
    /// Exception type name, on failure.
    pub exc_type: Option<String>,
    /// Exception message, on failure.
    pub exc_message: Option<String>,
    /// Traceback text, on failure.
    pub exc_traceback: Option<String>,
    /// What a Python task printed (protocol `TaskOutput` as JSON), if anything.
    pub output: Option<String>,
    /// Unix seconds at submission.
    pub created: f64,
    /// Unix seconds at completion.
    pub completed: Option<f64>,
    /// Position in the result streams, once final.
    pub result_seq: Option<i64>,
    /// True once a final task's result was read by its owner (or there is
    /// nothing to read, or it expired).
    pub fetched: bool,
    /// The task whose result this one took from the cache, or waits for
    /// ([`crate::db::memo`]).
    pub cached_from: Option<Uuid>,
}

/// Largest result (or traceback) handed to the result streams in memory.
pub const STREAMED_ROW_BYTES: usize = 16 * 1024;

const TASK_COLUMNS: &str = "id, group_id, function_id, endpoint_id, state, result, exc_type, \
     exc_message, exc_traceback, created, completed, result_seq, result_fate, output, cached_from";

/// `result_fate`: the result waits to be fetched.
pub const FATE_UNFETCHED: i64 = 0;
/// `result_fate`: fetched, or nothing to fetch.
pub const FATE_FETCHED: i64 = 1;
/// `result_fate`: purged unfetched after the result TTL.
pub const FATE_EXPIRED: i64 = 2;

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    let state: String = r.get(4)?;
    Ok(TaskRow {
        id: uuid_col(r, 0)?,
        group: uuid_col(r, 1)?,
        function: uuid_col(r, 2)?,
        endpoint: uuid_col(r, 3)?,
        // Only this crate writes states, always through `TaskState::as_str`.
        state: TaskState::parse(&state).unwrap_or(TaskState::Received),
        result: r.get(5)?,
        exc_type: r.get(6)?,
        exc_message: r.get(7)?,
        exc_traceback: r.get(8)?,
        created: r.get(9)?,
        completed: r.get(10)?,
        result_seq: r.get(11)?,
        fetched: r.get::<_, i64>(12)? != FATE_UNFETCHED,
        output: r.get(13)?,
        cached_from: r
            .get::<_, Option<String>>(14)?
            .and_then(|s| Uuid::parse_str(&s).ok()),
    })
}

/// Who owns task group `id`, if it exists.
pub fn group_owner(conn: &Connection, id: Uuid) -> ApiResult<Option<i64>> {
    let mut st = conn.prepare_cached("SELECT owner FROM task_groups WHERE id = ?1")?;
    Ok(st.query_row([id.to_string()], |r| r.get(0)).optional()?)
}

/// The owner's task `id`.
pub fn get_task(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<Option<TaskRow>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1 AND owner = ?2"
    ))?;
    Ok(st
        .query_row(params![id.to_string(), owner], task_from_row)
        .optional()?)
}

/// (rid, task id, function id, state) of a group's tasks after `after_rid`,
/// in submission order, at most `limit`.
pub fn group_tasks(
    conn: &Connection,
    group: Uuid,
    after_rid: i64,
    limit: usize,
) -> ApiResult<Vec<(i64, Uuid, Uuid, String)>> {
    let mut st = conn.prepare_cached(
        "SELECT rid, id, function_id, state FROM tasks WHERE group_id = ?1 AND rid > ?2
         ORDER BY rid LIMIT ?3",
    )?;
    let rows = st.query_map(params![group.to_string(), after_rid, limit as i64], |r| {
        Ok((r.get(0)?, uuid_col(r, 1)?, uuid_col(r, 2)?, r.get(3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Finished tasks of a group with `result_seq > after`, in that order.
pub fn results_after(
    conn: &Connection,
    group: Uuid,
    after: i64,
    limit: usize,
) -> ApiResult<Vec<TaskRow>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks
         WHERE group_id = ?1 AND result_seq > ?2 ORDER BY result_seq LIMIT ?3"
    ))?;
    let rows = st.query_map(
        params![group.to_string(), after, limit as i64],
        task_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The owner has read these final tasks' results: the result TTL no
/// longer applies to them.
pub fn mark_fetched(conn: &Connection, ids: &[Uuid]) -> ApiResult<usize> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET result_fate = 1, fetched = ?2
         WHERE id = ?1 AND done = 1 AND result_fate = 0",
    )?;
    let at = now();
    let mut n = 0;
    for id in ids {
        n += st.execute(params![id.to_string(), at])?;
    }
    Ok(n)
}
