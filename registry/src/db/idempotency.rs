//! Idempotency keys of submits: the answer a key got, so that a client
//! retrying after a lost answer (or a service restart) gets the same task
//! ids instead of new tasks.
//!
//! The row is written in the same savepoint as the tasks it answers
//! ([`super::tasks::submit`]), so either both are durable or neither is.
//! Keys expire with the retention period ([`super::purge`]).

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{ApiError, ApiResult};
use crate::time::now;

/// A submit carrying an idempotency key.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    /// The client's key.
    pub key: String,
    /// SHA-256 of what the request asks (endpoint and body).
    pub request_hash: String,
    /// The answer (JSON text) to give this request and its retries.
    pub answer: String,
}

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

/// A stored answer for this key, or 409 if the key was used for another
/// request; `None` if the key is new.
pub fn replay(conn: &Connection, owner: i64, req: &IdempotentRequest) -> ApiResult<Option<String>> {
    match lookup(conn, owner, &req.key)? {
        None => Ok(None),
        Some((hash, answer)) if hash == req.request_hash => Ok(Some(answer)),
        Some(_) => Err(ApiError::conflict(format!(
            "idempotency key {:?} was already used for a different request (another endpoint or \
             body); use a new key for a new submission",
            req.key
        ))),
    }
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

    fn request(key: &str, hash: &str) -> IdempotentRequest {
        IdempotentRequest {
            key: key.into(),
            request_hash: hash.into(),
            answer: format!("answer to {hash}"),
        }
    }

    #[test]
    fn a_key_replays_its_answer_and_refuses_another_request() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let alice = super::super::catalog::ensure_user(&conn, "alice").unwrap();
        let bob = super::super::catalog::ensure_user(&conn, "bob").unwrap();
        let first = request("k1", "h1");
        assert_eq!(replay(&conn, alice, &first).unwrap(), None);
        insert(&conn, alice, &first).unwrap();
        assert_eq!(
            replay(&conn, alice, &first).unwrap().as_deref(),
            Some("answer to h1")
        );
        let e = replay(&conn, alice, &request("k1", "h2")).unwrap_err();
        assert_eq!(e.code, "conflict");
        assert!(e.message.contains("\"k1\""), "{}", e.message);
        // Keys are per user.
        assert_eq!(replay(&conn, bob, &request("k1", "h2")).unwrap(), None);
    }

    #[test]
    fn keys_are_bounded_printable_text() {
        assert!(validate_key("retry-1", "h").is_ok());
        assert!(validate_key("", "h").is_err());
        assert!(validate_key("a\nb", "h").is_err());
        assert!(validate_key(&"k".repeat(256), "h").is_err());
        assert!(validate_key(&"k".repeat(255), "h").is_ok());
    }
}
