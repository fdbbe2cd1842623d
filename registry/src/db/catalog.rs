//! Users, tokens, functions and endpoints: the rows that name things, as
//! opposed to the task queue ([`super::tasks`]).
//!
//! These are plain functions over a connection; the caller decides whether
//! they run on a read connection or inside a group commit.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use uuid::Uuid;

use super::{json_col, now, uuid_col};
use crate::error::{ApiError, ApiResult};

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user owning the token (and everything it creates).
    pub user_id: i64,
    /// The user's name.
    pub user_name: String,
    /// Set for an endpoint credential: the only endpoint it may act as.
    pub endpoint: Option<Uuid>,
}

/// Finds the live (not revoked) token with this SHA-256.
pub fn lookup_token(conn: &Connection, hash: &str) -> ApiResult<Option<Principal>> {
    let mut st = conn.prepare_cached(
        "SELECT t.user_id, u.name, t.endpoint_id FROM tokens t JOIN users u ON u.id = t.user_id
         WHERE t.hash = ?1 AND t.revoked = 0",
    )?;
    let row = st
        .query_row([hash], |r| {
            let endpoint: Option<String> = r.get(2)?;
            Ok((r.get(0)?, r.get(1)?, endpoint))
        })
        .optional()?;
    Ok(row.map(|(user_id, user_name, endpoint)| Principal {
        user_id,
        user_name,
        endpoint: endpoint.and_then(|e| Uuid::parse_str(&e).ok()),
    }))
}

/// Returns the user's id, creating the user if missing.
pub fn ensure_user(conn: &Connection, name: &str) -> ApiResult<i64> {
    conn.execute(
        "INSERT OR IGNORE INTO users (name, created) VALUES (?1, ?2)",
        params![name, now()],
    )?;
    Ok(conn.query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))?)
}

/// Stores a token's hash for `user_id`, scoped to `endpoint` if given.
pub fn insert_token(
    conn: &Connection,
    hash: &str,
    user_id: i64,
    endpoint: Option<Uuid>,
) -> ApiResult<()> {
    conn.execute(
        "INSERT INTO tokens (hash, user_id, endpoint_id, created) VALUES (?1, ?2, ?3, ?4)",
        params![hash, user_id, endpoint.map(|e| e.to_string()), now()],
    )?;
    Ok(())
}

/// A registered function.
#[derive(Debug, Clone)]
pub struct FunctionRow {
    /// Its id.
    pub id: Uuid,
    /// `function_name` as registered.
    pub name: String,
    /// `function_code` as registered.
    pub code: String,
    /// Free text.
    pub description: String,
    /// Free JSON object.
    pub metadata: Value,
}

/// Stores a new function owned by `owner`.
pub fn insert_function(conn: &Connection, owner: i64, f: &FunctionRow) -> ApiResult<()> {
    conn.execute(
        "INSERT INTO functions (id, owner, name, code, description, metadata, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            f.id.to_string(),
            owner,
            f.name,
            f.code,
            f.description,
            f.metadata.to_string(),
            now()
        ],
    )?;
    Ok(())
}

/// The owner's function `id`, unless deleted.
pub fn get_function(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<Option<FunctionRow>> {
    let mut st = conn.prepare_cached(
        "SELECT id, name, code, description, metadata FROM functions
         WHERE id = ?1 AND owner = ?2 AND deleted = 0",
    )?;
    Ok(st
        .query_row(params![id.to_string(), owner], |r| {
            Ok(FunctionRow {
                id: uuid_col(r, 0)?,
                name: r.get(1)?,
                code: r.get(2)?,
                description: r.get(3)?,
                metadata: json_col(r, 4)?,
            })
        })
        .optional()?)
}

/// True if `owner` has a live function `id`.
pub fn owns_function(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<bool> {
    let mut st = conn
        .prepare_cached("SELECT 1 FROM functions WHERE id = ?1 AND owner = ?2 AND deleted = 0")?;
    Ok(st.exists(params![id.to_string(), owner])?)
}

/// Marks the owner's function deleted; false if there was none.
pub fn delete_function(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<bool> {
    let n = conn.execute(
        "UPDATE functions SET deleted = 1 WHERE id = ?1 AND owner = ?2 AND deleted = 0",
        params![id.to_string(), owner],
    )?;
    Ok(n > 0)
}

/// A function's code by id, whoever owns it and even if deleted (tasks
/// already queued still need it).
pub fn function_code(conn: &Connection, id: Uuid) -> ApiResult<Option<String>> {
    let mut st = conn.prepare_cached("SELECT code FROM functions WHERE id = ?1")?;
    Ok(st.query_row([id.to_string()], |r| r.get(0)).optional()?)
}

/// A registered endpoint.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    /// Its id.
    pub id: Uuid,
    /// `endpoint_name`.
    pub name: String,
    /// `display_name` (defaults to the name).
    pub display_name: String,
    /// Unix seconds of the first registration.
    pub created: f64,
}

/// What `POST /v3/endpoints` asks for.
#[derive(Debug, Clone)]
pub struct EndpointRegistration {
    /// Client-chosen id, if any.
    pub id: Option<Uuid>,
    /// `endpoint_name`.
    pub name: String,
    /// `display_name`.
    pub display_name: String,
    /// Free JSON object.
    pub metadata: Value,
}

/// Creates or re-registers an endpoint and issues the credential whose hash
/// is `credential_hash`, revoking the endpoint's earlier credentials.
pub fn register_endpoint(
    conn: &Connection,
    owner: i64,
    reg: &EndpointRegistration,
    credential_hash: &str,
) -> ApiResult<Uuid> {
    let id = reg.id.unwrap_or_else(Uuid::new_v4);
    let id_text = id.to_string();
    let existing: Option<i64> = conn
        .query_row(
            "SELECT owner FROM endpoints WHERE id = ?1",
            [&id_text],
            |r| r.get(0),
        )
        .optional()?;
    match existing {
        Some(other) if other != owner => {
            return Err(ApiError::forbidden(format!(
                "endpoint {id} is registered by another user; choose another endpoint_id"
            )));
        }
        Some(_) => {
            conn.execute(
                "UPDATE endpoints SET name = ?2, display_name = ?3, metadata = ?4, deleted = 0
                 WHERE id = ?1",
                params![
                    id_text,
                    reg.name,
                    reg.display_name,
                    reg.metadata.to_string()
                ],
            )?;
            revoke_endpoint_credentials(conn, id)?;
        }
        None => {
            conn.execute(
                "INSERT INTO endpoints (id, owner, name, display_name, metadata, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id_text,
                    owner,
                    reg.name,
                    reg.display_name,
                    reg.metadata.to_string(),
                    now()
                ],
            )?;
        }
    }
    insert_token(conn, credential_hash, owner, Some(id))?;
    Ok(id)
}

fn revoke_endpoint_credentials(conn: &Connection, id: Uuid) -> ApiResult<()> {
    conn.execute(
        "UPDATE tokens SET revoked = 1 WHERE endpoint_id = ?1 AND revoked = 0",
        [id.to_string()],
    )?;
    Ok(())
}

fn endpoint_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EndpointRow> {
    Ok(EndpointRow {
        id: uuid_col(r, 0)?,
        name: r.get(1)?,
        display_name: r.get(2)?,
        created: r.get(3)?,
    })
}

/// The owner's endpoint `id`, unless deleted.
pub fn get_endpoint(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<Option<EndpointRow>> {
    let mut st = conn.prepare_cached(
        "SELECT id, name, display_name, created FROM endpoints
         WHERE id = ?1 AND owner = ?2 AND deleted = 0",
    )?;
    Ok(st
        .query_row(params![id.to_string(), owner], endpoint_from_row)
        .optional()?)
}

/// The owner's endpoints, oldest first.
pub fn list_endpoints(conn: &Connection, owner: i64) -> ApiResult<Vec<EndpointRow>> {
    let mut st = conn.prepare_cached(
        "SELECT id, name, display_name, created FROM endpoints
         WHERE owner = ?1 AND deleted = 0 ORDER BY created, id",
    )?;
    let rows = st.query_map([owner], endpoint_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Who owns live endpoint `id`, if it exists.
pub fn endpoint_owner(conn: &Connection, id: Uuid) -> ApiResult<Option<i64>> {
    let mut st =
        conn.prepare_cached("SELECT owner FROM endpoints WHERE id = ?1 AND deleted = 0")?;
    Ok(st.query_row([id.to_string()], |r| r.get(0)).optional()?)
}

/// Marks the owner's endpoint deleted and revokes its credentials; false if
/// there was none.
pub fn delete_endpoint(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<bool> {
    let n = conn.execute(
        "UPDATE endpoints SET deleted = 1 WHERE id = ?1 AND owner = ?2 AND deleted = 0",
        params![id.to_string(), owner],
    )?;
    if n > 0 {
        revoke_endpoint_credentials(conn, id)?;
    }
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c
    }

    #[test]
    fn re_registering_rotates_the_credential() {
        let c = db();
        let alice = ensure_user(&c, "alice").unwrap();
        assert_eq!(ensure_user(&c, "alice").unwrap(), alice);
        let reg = EndpointRegistration {
            id: None,
            name: "ep".into(),
            display_name: "ep".into(),
            metadata: serde_json::json!({}),
        };
        let id = register_endpoint(&c, alice, &reg, "h1").unwrap();
        assert_eq!(lookup_token(&c, "h1").unwrap().unwrap().endpoint, Some(id));
        let again = EndpointRegistration {
            id: Some(id),
            ..reg.clone()
        };
        assert_eq!(register_endpoint(&c, alice, &again, "h2").unwrap(), id);
        assert_eq!(lookup_token(&c, "h1").unwrap(), None);
        assert!(lookup_token(&c, "h2").unwrap().is_some());

        let bob = ensure_user(&c, "bob").unwrap();
        let err = register_endpoint(&c, bob, &again, "h3").unwrap_err();
        assert_eq!(err.code, "forbidden");
        assert!(delete_endpoint(&c, alice, id).unwrap());
        assert_eq!(lookup_token(&c, "h2").unwrap(), None);
        assert!(!delete_endpoint(&c, alice, id).unwrap());
    }
}
