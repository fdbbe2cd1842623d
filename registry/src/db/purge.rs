//! Result expiry and retention, in bounded batches.
//!
//! * A final task whose result nobody fetched within the result TTL loses
//!   its result: it keeps its status, and its document says
//!   `exception_type: "ResultExpired"`.
//! * Finished tasks, idempotency keys, and then-empty task groups older than
//!   the retention period are deleted; finished tasks whose result was
//!   fetched may go sooner (the fetched-results retention of `hpfaas up`).
//! * The space they took is reused: the database is in
//!   `auto_vacuum = INCREMENTAL` mode ([`reuse_space`], once per open), and
//!   after a purge the free pages past [`FREE_SLACK`] of the file are handed
//!   back to the filesystem ([`vacuum_step`]), so the file follows what is
//!   kept rather than its largest size ever.
//!
//! Each function handles at most `limit` rows (or pages), so one purge step
//! is one short writer job; [`crate::purge`] repeats them until nothing is
//! left.

use hpfaas_protocol::failure::SystemFailure;
use rusqlite::{params, Connection};

use super::tasks::{FATE_EXPIRED, FATE_FETCHED, FATE_UNFETCHED};
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
    delete_tasks(conn, "done = 1", cutoff, limit)
}

/// Deletes up to `limit` finished tasks stored before `cutoff` whose result
/// was fetched or that had none to fetch (cancelled).
pub fn delete_fetched(conn: &Connection, cutoff: f64, limit: usize) -> ApiResult<usize> {
    // The literal lets SQLite use the partial index `tasks_fetched`.
    let which = format!("done = 1 AND result_fate = {FATE_FETCHED}");
    delete_tasks(conn, &which, cutoff, limit)
}

/// Deletes up to `limit` tasks matching `which` stored before `cutoff`,
/// and takes what they kept off their owners' usage.
///
/// The task with the highest `rid` stays: SQLite gives a new row the highest
/// rowid plus one, and the endpoint links read their queue after a `rid`
/// cursor, so a rid handed out again after the newest tasks were deleted
/// would sit below a cursor and never be dispatched.
fn delete_tasks(conn: &Connection, which: &str, cutoff: f64, limit: usize) -> ApiResult<usize> {
    let sql = format!(
        "DELETE FROM tasks WHERE rid IN
            (SELECT rid FROM tasks WHERE {which} AND stored < ?1
                AND rid < (SELECT MAX(rid) FROM tasks) LIMIT ?2)
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

/// Free pages up to this fraction of the file stay free after a purge: they
/// are reused by the next inserts without the file shrinking and growing back.
pub const FREE_SLACK: i64 = 8;

/// Puts the database in `auto_vacuum = INCREMENTAL` mode, so free pages can
/// be handed back ([`vacuum_step`]). A new database only needs the setting;
/// an existing one is rebuilt once with `VACUUM` (logged). A rebuild that
/// cannot run now (another process holds the database) is left for the next
/// open: the database works all the same, its free pages reused, not returned.
pub fn reuse_space(conn: &Connection) -> rusqlite::Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode = |c: &Connection| c.pragma_query_value(None, "auto_vacuum", |r| r.get::<_, i64>(0));
    if mode(conn)? == INCREMENTAL {
        return Ok(());
    }
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    if mode(conn)? == INCREMENTAL {
        return Ok(()); // a new database: nothing to rebuild
    }
    let started = std::time::Instant::now();
    match conn.execute_batch("VACUUM") {
        Ok(()) => tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "rebuilt the registry database once so purged space can be returned \
             (auto_vacuum = INCREMENTAL)"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not rebuild the registry database for auto_vacuum now; trying at the next start"
        ),
    }
    Ok(())
}

/// Hands back to the filesystem up to `limit` free pages beyond
/// [`FREE_SLACK`]; returns how many it handed back.
pub fn vacuum_step(conn: &Connection, limit: usize) -> ApiResult<usize> {
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    // Handing back x pages leaves `free - x` of `pages - x`: at most a
    // FREE_SLACK-th once x >= (FREE_SLACK * free - pages) / (FREE_SLACK - 1).
    let excess = (FREE_SLACK * free - pages + FREE_SLACK - 2) / (FREE_SLACK - 1);
    let excess = excess.min(limit as i64);
    if excess <= 0 {
        return Ok(0);
    }
    // The pragma returns no rows; each step of it must be run to the end.
    let mut st = conn.prepare(&format!("PRAGMA incremental_vacuum({excess})"))?;
    let mut rows = st.query([])?;
    while rows.next()?.is_some() {}
    let left: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    Ok(usize::try_from(free - left).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto_vacuum(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_database_made_before_incremental_vacuum_is_rebuilt_once() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-purge-")
            .tempdir()
            .unwrap();
        let path = scratch.path().join("registry.db");
        {
            // As an older hpfaas left it: WAL, no auto_vacuum, rows in it.
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch("CREATE TABLE old (x TEXT); INSERT INTO old VALUES ('kept');")
                .unwrap();
            assert_eq!(auto_vacuum(&conn), 0);
        }
        let conn = crate::db::open_for_writing(&path).unwrap();
        assert_eq!(auto_vacuum(&conn), 2, "INCREMENTAL");
        let kept: String = conn
            .query_row("SELECT x FROM old", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "kept");
        drop(conn);
        let fresh = scratch.path().join("fresh.db");
        let conn = crate::db::open_for_writing(&fresh).unwrap();
        assert_eq!(auto_vacuum(&conn), 2, "a new database is born with it");
    }

    #[test]
    fn a_vacuum_step_leaves_at_most_the_slack_free() {
        let mut conn = Connection::open_in_memory().unwrap();
        reuse_space(&conn).unwrap();
        crate::db::schema::migrate(&mut conn).unwrap();
        conn.execute_batch("CREATE TABLE filler (x TEXT)").unwrap();
        for _ in 0..2000 {
            conn.execute("INSERT INTO filler VALUES (?1)", [("x".repeat(400))])
                .unwrap();
        }
        conn.execute("DELETE FROM filler WHERE rowid % 10 != 0", [])
            .unwrap();
        let count =
            |pragma: &str| -> i64 { conn.pragma_query_value(None, pragma, |r| r.get(0)).unwrap() };
        let before = (count("page_count"), count("freelist_count"));
        assert!(before.1 * FREE_SLACK > before.0, "{before:?}");
        while vacuum_step(&conn, 50).unwrap() == 50 {}
        let after = (count("page_count"), count("freelist_count"));
        assert!(after.1 * FREE_SLACK <= after.0, "{after:?}");
        assert!(after.1 > 0, "the slack stays free: {after:?}");
        assert_eq!(
            vacuum_step(&conn, 50).unwrap(),
            0,
            "nothing more to hand back"
        );
    }
}
