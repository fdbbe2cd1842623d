//! The database schema and its migrations.
//!
//! Migrations are an ordered list; `PRAGMA user_version` records how many
//! have been applied, so opening an older database brings it up to date and
//! opening a newer one is refused instead of misread.

use rusqlite::{Connection, TransactionBehavior};

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE users (
        id      INTEGER PRIMARY KEY,
        name    TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    );
    -- Only the SHA-256 of a token is stored; endpoint_id set means the token
    -- is an endpoint credential that can act only as that endpoint.
    CREATE TABLE tokens (
        hash        TEXT PRIMARY KEY,
        user_id     INTEGER NOT NULL REFERENCES users(id),
        endpoint_id TEXT,
        revoked     INTEGER NOT NULL DEFAULT 0,
        created     REAL NOT NULL
    );
    CREATE INDEX tokens_by_endpoint ON tokens(endpoint_id) WHERE endpoint_id IS NOT NULL;
    -- Deleted functions keep their code: tasks already submitted still run.
    CREATE TABLE functions (
        id          TEXT PRIMARY KEY,
        owner       INTEGER NOT NULL REFERENCES users(id),
        name        TEXT NOT NULL,
        code        TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        metadata    TEXT NOT NULL DEFAULT '{}',
        created     REAL NOT NULL,
        deleted     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE endpoints (
        id           TEXT PRIMARY KEY,
        owner        INTEGER NOT NULL REFERENCES users(id),
        name         TEXT NOT NULL,
        display_name TEXT NOT NULL,
        metadata     TEXT NOT NULL DEFAULT '{}',
        created      REAL NOT NULL,
        deleted      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX endpoints_by_owner ON endpoints(owner);
    CREATE TABLE task_groups (
        id      TEXT PRIMARY KEY,
        owner   INTEGER NOT NULL REFERENCES users(id),
        created REAL NOT NULL
    );
    -- rid is the dispatch cursor (submission order); done mirrors
    -- "state is final" so the queue index stays small; result_seq orders
    -- the result streams.
    CREATE TABLE tasks (
        rid                INTEGER PRIMARY KEY,
        id                 TEXT NOT NULL UNIQUE,
        owner              INTEGER NOT NULL REFERENCES users(id),
        endpoint_id        TEXT NOT NULL,
        function_id        TEXT NOT NULL,
        group_id           TEXT NOT NULL,
        state              TEXT NOT NULL,
        done               INTEGER NOT NULL DEFAULT 0,
        payload            TEXT NOT NULL,
        result_serializers TEXT NOT NULL DEFAULT '[]',
        resource_spec      TEXT,
        result             TEXT,
        exc_type           TEXT,
        exc_message        TEXT,
        exc_traceback      TEXT,
        created            REAL NOT NULL,
        completed          REAL,
        result_seq         INTEGER
    );
    CREATE INDEX tasks_queue ON tasks(endpoint_id, rid) WHERE done = 0;
    CREATE INDEX tasks_by_group ON tasks(group_id, rid);
    CREATE INDEX tasks_results ON tasks(group_id, result_seq) WHERE result_seq IS NOT NULL;
    CREATE UNIQUE INDEX tasks_result_seq ON tasks(result_seq) WHERE result_seq IS NOT NULL;
    "#,
    // 2: revocation details, endpoint policy and sharing, idempotent submits,
    // cancellation, result expiry and retention.
    r#"
    -- prefix: the token's first characters, so its owner can recognise it in
    -- `hpfaas token list` (never enough of it to be usable).
    ALTER TABLE tokens ADD COLUMN prefix TEXT;
    ALTER TABLE tokens ADD COLUMN revoked_at REAL;
    CREATE INDEX tokens_by_user ON tokens(user_id);
    -- What the endpoint's agent declared in its last hello.
    ALTER TABLE endpoints ADD COLUMN allowed_functions TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE endpoints ADD COLUMN json_only INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE endpoint_shares (
        endpoint_id TEXT NOT NULL,
        user_id     INTEGER NOT NULL REFERENCES users(id),
        created     REAL NOT NULL,
        PRIMARY KEY (endpoint_id, user_id)
    );
    -- One row per (user, key): the answer of the submit that used it, and a
    -- hash of that request, so a retry gets the same answer and a different
    -- request under the same key is refused.
    CREATE TABLE idempotency_keys (
        owner        INTEGER NOT NULL REFERENCES users(id),
        key          TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        answer       TEXT NOT NULL,
        created      REAL NOT NULL,
        PRIMARY KEY (owner, key)
    );
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created);
    -- stored: service time when the task became final (completed is the
    -- endpoint's clock). result_fate: 0 = result not fetched yet, 1 = fetched
    -- or nothing to fetch, 2 = expired and purged. cancel_pending: cancelled
    -- while the endpoint may hold it; repeated to the agent until it answers.
    ALTER TABLE tasks ADD COLUMN stored REAL;
    ALTER TABLE tasks ADD COLUMN result_fate INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN cancel_pending INTEGER NOT NULL DEFAULT 0;
    UPDATE tasks SET stored = COALESCE(completed, created) WHERE done = 1;
    CREATE INDEX tasks_unfetched ON tasks(stored) WHERE done = 1 AND result_fate = 0;
    CREATE INDEX tasks_finished ON tasks(stored) WHERE done = 1;
    CREATE INDEX tasks_cancels ON tasks(endpoint_id, result_seq) WHERE cancel_pending = 1;
    CREATE INDEX task_groups_by_age ON task_groups(created);
    "#,
    // 3: argument payloads in their own table, keyed by the task's rid.
    // SQLite rewrites a whole row on every UPDATE, so with the payload in
    // `tasks` each state change (acknowledged, running, final) copied it
    // once more; a 1 MiB argument was written four times. A payload is
    // deleted when its task becomes final.
    r#"
    CREATE TABLE task_payloads (
        rid     INTEGER PRIMARY KEY,
        payload TEXT NOT NULL
    );
    INSERT INTO task_payloads (rid, payload) SELECT rid, payload FROM tasks WHERE done = 0;
    ALTER TABLE tasks DROP COLUMN payload;
    "#,
    // 4: a payload over payload_files::INLINE_MAX is kept in a file of its
    // own (`payloads/<task id>`); its row then holds '' and `in_file = 1`.
    r#"
    ALTER TABLE task_payloads ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5: the last result_seq handed out is kept in a row, written once per
    // write job, instead of a UNIQUE index on tasks(result_seq) that every
    // stored result updated (and that made each result's UPDATE keep a
    // statement journal) only so start-up could read MAX(result_seq).
    r#"
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters (name, value)
        SELECT 'result_seq', COALESCE(MAX(result_seq), 0) FROM tasks;
    DROP INDEX tasks_result_seq;
    "#,
    r#"
    -- What each user holds, for the per-user quotas (db::usage::check_quota):
    -- tasks not final, and bytes of arguments (task_payloads.bytes, files
    -- included) and results (result, exc_message, exc_traceback). Kept in
    -- batches by the code that inserts, finishes, cancels, expires and
    -- deletes tasks (db::usage::add_usage), not by triggers: a trigger per
    -- row was a third more writer time on no-op tasks.
    ALTER TABLE task_payloads ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE task_payloads SET bytes = octet_length(payload);
    CREATE TABLE user_usage (
        user_id INTEGER PRIMARY KEY,
        queued  INTEGER NOT NULL DEFAULT 0,
        bytes   INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO user_usage (user_id, queued, bytes)
        SELECT owner, SUM(1 - done),
               SUM(ifnull(octet_length(result), 0) + ifnull(octet_length(exc_message), 0)
                   + ifnull(octet_length(exc_traceback), 0))
        FROM tasks GROUP BY owner;
    UPDATE user_usage SET bytes = bytes + ifnull((SELECT SUM(p.bytes) FROM task_payloads p
        JOIN tasks t ON t.rid = p.rid WHERE t.owner = user_usage.user_id), 0);
    "#,
    // 7: a Python task's captured stdout and stderr (protocol TaskOutput as
    // JSON), written by the same UPDATE as its result.
    r#"
    ALTER TABLE tasks ADD COLUMN output TEXT;
    "#,
    // 8: endpoint events: what happened to blocks, managers and agent links.
    r#"
    -- What happened to each endpoint's blocks, managers and agent link
    -- (db::events), the last few hundred per endpoint. AUTOINCREMENT so a
    -- sequence number is never handed out twice, even after the oldest
    -- rows are deleted: readers page with ?since=SEQ.
    CREATE TABLE endpoint_events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        endpoint_id TEXT NOT NULL,
        time        REAL NOT NULL,
        kind        TEXT NOT NULL,
        block_id    TEXT,
        job_id      TEXT,
        message     TEXT NOT NULL
    );
    CREATE INDEX endpoint_events_by_endpoint ON endpoint_events (endpoint_id, seq);
    "#,
    // 9: listing an owner's tasks newest first (`GET /v3/tasks`), and each
    // task's timeline. Every list index ends in `created` (and, as every
    // index does, the rowid), so each filter's rows come out in the list's
    // order, (created, rid) descending, with no sort. The timeline's times
    // are set by the UPDATEs that already run at those moments: dispatched
    // by the agent's ack, started by `running` (then the worker's own
    // clock, with the placement, from the result), fetched by the owner's
    // first read of the result. A state filter is answered by partial
    // indexes: a final state's from the finished tasks, which enter their
    // index once; a pending state's from the owner's pending tasks (at most
    // its queue quota). An index on (owner, state) would be rewritten by
    // each of a task's three state changes: a tenth of the service's CPU
    // per no-op task.
    r#"
    CREATE INDEX tasks_by_owner ON tasks(owner, created);
    CREATE INDEX tasks_by_owner_pending ON tasks(owner, created) WHERE done = 0;
    CREATE INDEX tasks_by_owner_final ON tasks(owner, state, created) WHERE done = 1;
    CREATE INDEX tasks_by_owner_endpoint ON tasks(owner, endpoint_id, created);
    CREATE INDEX tasks_by_owner_function ON tasks(owner, function_id, created);
    CREATE INDEX tasks_by_group_created ON tasks(group_id, created);
    ALTER TABLE tasks ADD COLUMN dispatched REAL;
    ALTER TABLE tasks ADD COLUMN started REAL;
    ALTER TABLE tasks ADD COLUMN placement TEXT;
    ALTER TABLE tasks ADD COLUMN fetched REAL;
    "#,
    // 10: finished tasks whose result was fetched, by age: the fetched-results
    // retention (`hpfaas up`) deletes them long before the retention, and
    // without this index would step over every unfetched one each time.
    r#"
    CREATE INDEX tasks_fetched ON tasks(stored) WHERE done = 1 AND result_fate = 1;
    "#,
    // 11: priorities. An endpoint's queue is read in `queue_key` order
    // (`hpfaas_protocol::priority`: `created - priority * AGING_SECONDS`),
    // so its index leads with it; tasks queued before had priority 0. A
    // function's default `resource_specification` (JSON object or NULL).
    r#"
    ALTER TABLE tasks ADD COLUMN queue_key REAL NOT NULL DEFAULT 0;
    UPDATE tasks SET queue_key = created WHERE done = 0;
    DROP INDEX tasks_queue;
    CREATE INDEX tasks_queue ON tasks(endpoint_id, queue_key, rid) WHERE done = 0;
    ALTER TABLE functions ADD COLUMN resource_defaults TEXT;
    "#,
    // 12: memoization (db::memo). A function registered with `cache`
    // carries the SHA-256 of its code; `memo` holds each owner's successful
    // results by (code hash, argument hash), a copy of the result, so a
    // retention purge of the task it came from leaves it. A row with no
    // result yet names the task computing it (`memo_leader` on that task);
    // identical calls meanwhile wait with `cached_from` naming that task and
    // no payload row, so dispatch never sees them.
    r#"
    ALTER TABLE functions ADD COLUMN memo_hash BLOB;
    ALTER TABLE tasks ADD COLUMN cached_from TEXT;
    ALTER TABLE tasks ADD COLUMN memo_leader INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX tasks_memo_waiters ON tasks(cached_from) WHERE done = 0 AND cached_from IS NOT NULL;
    CREATE TABLE memo (
        id          INTEGER PRIMARY KEY,
        owner       INTEGER NOT NULL,
        code_hash   BLOB NOT NULL,
        args_hash   BLOB NOT NULL,
        task_id     TEXT NOT NULL,
        result      TEXT,
        stored      REAL
    );
    CREATE UNIQUE INDEX memo_key ON memo(owner, code_hash, args_hash);
    CREATE INDEX memo_pending ON memo(task_id) WHERE result IS NULL;
    CREATE INDEX memo_by_age ON memo(stored) WHERE result IS NOT NULL;
    "#,
    // 13: task dependencies (db/dependencies.rs). A held task waits for
    // `waiting` parents; `held_parents` keeps every parent's id (a JSON
    // array, in the order the worker receives their results) in a row of
    // its own, so that counting a parent down does not rewrite a fan-in's
    // list; `task_dependents` finds a finished parent's children without a
    // scan of the held tasks.
    r#"
    CREATE TABLE held_tasks (
        id      TEXT PRIMARY KEY,
        waiting INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE held_parents (
        id      TEXT PRIMARY KEY,
        parents TEXT NOT NULL
    );
    CREATE TABLE task_dependents (
        parent TEXT NOT NULL,
        child  TEXT NOT NULL,
        PRIMARY KEY (parent, child)
    ) WITHOUT ROWID;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Brings the database up to [`SCHEMA_VERSION`], all in one transaction.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > SCHEMA_VERSION {
        anyhow::bail!(
            "the registry database has schema version {current}, newer than this hpfaas \
             understands ({SCHEMA_VERSION}); run a newer hpfaas"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, SCHEMA_VERSION);
    }

    #[test]
    fn version_3_moves_queued_payloads_out_of_tasks() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..2] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 2).unwrap();
        tx.execute_batch(
            "INSERT INTO users VALUES (1, 'u', 0);
             INSERT INTO tasks (rid, id, owner, endpoint_id, function_id, group_id, state,
                                done, payload, created)
             VALUES (1, 'a', 1, 'e', 'f', 'g', 'received', 0, 'queued', 0),
                    (2, 'b', 1, 'e', 'f', 'g', 'success', 1, '', 0);",
        )
        .unwrap();
        tx.commit().unwrap();
        migrate(&mut conn).unwrap();
        let moved: Vec<(i64, String)> = conn
            .prepare("SELECT rid, payload FROM task_payloads")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(moved, vec![(1, "queued".to_string())]);
    }

    #[test]
    fn version_5_keeps_the_last_result_seq_in_a_row() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..4] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 4).unwrap();
        tx.execute_batch(
            "INSERT INTO users VALUES (1, 'u', 0);
             INSERT INTO tasks (rid, id, owner, endpoint_id, function_id, group_id, state,
                                done, created, result_seq)
             VALUES (1, 'a', 1, 'e', 'f', 'g', 'success', 1, 0, 41),
                    (2, 'b', 1, 'e', 'f', 'g', 'received', 0, 0, NULL);",
        )
        .unwrap();
        tx.commit().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(crate::db::result_seq::max_result_seq(&conn).unwrap(), 41);
        let mut empty = Connection::open_in_memory().unwrap();
        migrate(&mut empty).unwrap();
        assert_eq!(crate::db::result_seq::max_result_seq(&empty).unwrap(), 0);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
