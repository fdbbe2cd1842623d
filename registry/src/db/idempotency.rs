//! Idempotency keys of submits: the answer a key got, so that a client
//! retrying after a lost answer (or a service restart) gets the same task
//! ids instead of new tasks.
//!
//! The row is written in the same savepoint as the tasks it answers
//! ([`super::tasks::submit`]), so either both are durable or neither is.
//! Keys expire with the retention period ([`super::purge`]).

use rusqlite::{params, Connection, OptionalExtension};

use super::tasks::IdempotentRequest;
use crate::error::{ApiError, ApiResult};
use crate::time::now;

/// Longest key accepted, characters.
pub const MAX_KEY_CHARS: usize = 255;

/// Checks a client's key: non-empty printable text of bounded length.
pub fn validate_key(key: &str, source: &str) -> ApiResult<()> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "invalid {source}: an idempotency key must be 1 to {MAX_KEY_CHARS} printable characters"
        )));
    }
    Ok(())
}

/// (request hash, answer) stored for `owner`'s `key`.
pub fn lookup(conn: &Connection, owner: i64, key: &str) -> ApiResult<Option<(String, String)>> {
    let mut st = conn.prepare_cached(
        "SELECT request_hash, answer FROM idempotency_keys WHERE owner = ?1 AND key = ?2",
    )?;
    Ok(st
        .query_row(params![owner, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Records the answer given to `req`.
pub fn insert(conn: &Connection, owner: i64, req: &IdempotentRequest) -> ApiResult<()> {
    conn.execute(
        "INSERT INTO idempotency_keys (owner, key, request_hash, answer, created)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![owner, req.key, req.request_hash, req.answer, now()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_printable_text() {
        assert!(validate_key("retry-1", "h").is_ok());
        assert!(validate_key("", "h").is_err());
        assert!(validate_key("a\nb", "h").is_err());
        assert!(validate_key(&"k".repeat(256), "h").is_err());
        assert!(validate_key(&"k".repeat(255), "h").is_ok());
    }
}
