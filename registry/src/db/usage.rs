//! What each user holds (`user_usage`: tasks not final, bytes of arguments
//! and results kept) and the per-user limits on it ([`Quota`]). Every write
//! that inserts, finishes, cancels, expires or deletes tasks updates it,
//! once per batch; a submit is checked against it.

use hpfaas_protocol::task::ExceptionInfo;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{ApiError, ApiResult};

/// Per-user limits, so one user cannot fill the queue or the disk for
/// everyone (`hpfaas service --max-queued-tasks-per-user`,
/// `--max-stored-bytes-per-user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most non-final tasks a user may have; a submit past it gets `429`.
    pub max_queued_tasks: u64,
    /// Most bytes of arguments and results the service may keep for a user;
    /// a submit past it gets `507`.
    pub max_stored_bytes: u64,
}

impl Quota {
    /// Default most queued tasks per user.
    pub const DEFAULT_MAX_QUEUED_TASKS: u64 = 1_000_000;
    /// Default most stored bytes per user: 100 GiB.
    pub const DEFAULT_MAX_STORED_BYTES: u64 = 100 << 30;
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            max_queued_tasks: Self::DEFAULT_MAX_QUEUED_TASKS,
            max_stored_bytes: Self::DEFAULT_MAX_STORED_BYTES,
        }
    }
}

/// Adds to what `owner` holds: `queued` more tasks not final, `bytes` more
/// bytes stored (either may be negative). Called once per batch by every
/// write that inserts, finishes, cancels, expires or deletes tasks.
pub(crate) fn add_usage(conn: &Connection, owner: i64, queued: i64, bytes: i64) -> ApiResult<()> {
    if queued != 0 || bytes != 0 {
        conn.prepare_cached(
            "INSERT INTO user_usage (user_id, queued, bytes) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id) DO UPDATE
             SET queued = queued + excluded.queued, bytes = bytes + excluded.bytes",
        )?
        .execute(params![owner, queued, bytes])?;
    }
    Ok(())
}

/// Usage changes of one batch, per owner, applied at its end.
#[derive(Debug, Default)]
pub(crate) struct UsageDelta(Vec<(i64, i64, i64)>);

impl UsageDelta {
    /// Counts a change of `owner`'s usage.
    pub(crate) fn add(&mut self, owner: i64, queued: i64, bytes: i64) {
        // Almost always one owner per batch: a short scan beats a map.
        match self.0.iter_mut().find(|(o, _, _)| *o == owner) {
            Some((_, q, b)) => (*q, *b) = (*q + queued, *b + bytes),
            None => self.0.push((owner, queued, bytes)),
        }
    }

    /// Stores the changes.
    pub(crate) fn apply(self, conn: &Connection) -> ApiResult<()> {
        for (owner, queued, bytes) in self.0 {
            add_usage(conn, owner, queued, bytes)?;
        }
        Ok(())
    }
}

/// Bytes a final task keeps: its result and exception texts.
pub(crate) fn result_bytes(result: Option<&str>, exc: Option<&ExceptionInfo>) -> i64 {
    (result.map_or(0, str::len) + exc.map_or(0, |e| e.message.len() + e.traceback.len())) as i64
}

/// Refuses a submit of `tasks` tasks and `bytes` bytes of arguments that
/// would take `owner` past `quota` (what a user holds: `user_usage`).
pub(crate) fn check_quota(
    conn: &Connection,
    owner: i64,
    quota: Quota,
    tasks: u64,
    bytes: u64,
) -> ApiResult<()> {
    let (queued, stored): (i64, i64) = conn
        .prepare_cached("SELECT queued, bytes FROM user_usage WHERE user_id = ?1")?
        .query_row([owner], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0));
    let (queued, stored) = (queued.max(0) as u64, stored.max(0) as u64);
    if queued.saturating_add(tasks) > quota.max_queued_tasks {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "you have {queued} tasks not finished yet; with these {tasks} you would pass the \
                 limit of {} queued tasks per user (--max-queued-tasks-per-user); wait for \
                 some to finish, or cancel some",
                quota.max_queued_tasks
            ),
        ));
    }
    if stored.saturating_add(bytes) > quota.max_stored_bytes {
        return Err(ApiError::insufficient_storage(format!(
            "the service holds {stored} bytes of your arguments and results; these {bytes} \
                 more would pass the limit of {} bytes per user (--max-stored-bytes-per-user); \
                 fetch or let expire old results, or send smaller arguments",
            quota.max_stored_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(conn: &Connection, owner: i64) -> (i64, i64) {
        conn.query_row(
            "SELECT queued, bytes FROM user_usage WHERE user_id = ?1",
            [owner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    fn db() -> (Connection, i64) {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let owner = super::super::catalog::ensure_user(&conn, "alice").unwrap();
        (conn, owner)
    }

    #[test]
    fn a_batch_adds_up_per_owner_and_writes_once() {
        let (conn, alice) = db();
        let bob = super::super::catalog::ensure_user(&conn, "bob").unwrap();
        add_usage(&conn, alice, 3, 300).unwrap();
        let mut delta = UsageDelta::default();
        delta.add(alice, -1, 10);
        delta.add(bob, 2, 20);
        delta.add(alice, -1, -110);
        delta.apply(&conn).unwrap();
        assert_eq!(usage(&conn, alice), (1, 200));
        assert_eq!(usage(&conn, bob), (2, 20));
    }

    #[test]
    fn the_quota_names_the_limit_passed() {
        let (conn, alice) = db();
        add_usage(&conn, alice, 9, 900).unwrap();
        let quota = Quota {
            max_queued_tasks: 10,
            max_stored_bytes: 1000,
        };
        assert!(check_quota(&conn, alice, quota, 1, 100).is_ok());
        let e = check_quota(&conn, alice, quota, 2, 0).unwrap_err();
        assert_eq!(e.status.as_u16(), 429, "{}", e.message);
        assert!(
            e.message.contains("--max-queued-tasks-per-user"),
            "{}",
            e.message
        );
        let e = check_quota(&conn, alice, quota, 1, 101).unwrap_err();
        assert_eq!(e.status.as_u16(), 507, "{}", e.message);
        assert!(
            e.message.contains("--max-stored-bytes-per-user"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_result_keeps_its_text_and_its_exception() {
        let exc = ExceptionInfo {
            exc_type: "ZeroDivisionError".into(),
            message: "bad".into(),
            traceback: "tb".into(),
        };
        assert_eq!(result_bytes(Some("12345"), None), 5);
        assert_eq!(result_bytes(None, Some(&exc)), 5);
        assert_eq!(result_bytes(None, None), 0);
    }
}
