//! Users, tokens, functions and endpoints: the rows that name things, as
//! opposed to the task queue ([`super::tasks`]).
//!
//! These are plain functions over a connection; the caller decides whether
//! they run on a read connection or inside a group commit.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use uuid::Uuid;

use super::columns::{json_col, uuid_col};
use crate::error::{ApiError, ApiResult};
use crate::time::now;

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user owning the token (and everything it creates).
    pub user_id: i64,
    /// The user's name.
    pub user_name: String,
    /// Set for an endpoint credential: the only endpoint it may act as.
    pub endpoint: Option<Uuid>,
    /// SHA-256 of the token, to re-check it after a revocation.
    pub token_hash: String,
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
        token_hash: hash.to_string(),
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

/// What is stored of a token: its SHA-256 and its first few characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// The token's first [`crate::token::PREFIX_CHARS`] characters.
    pub prefix: String,
}

/// Stores a token for `user_id`, scoped to `endpoint` if given.
pub fn insert_token(
    conn: &Connection,
    token: &StoredToken,
    user_id: i64,
    endpoint: Option<Uuid>,
) -> ApiResult<()> {
    conn.execute(
        "INSERT INTO tokens (hash, prefix, user_id, endpoint_id, created)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            token.hash,
            token.prefix,
            user_id,
            endpoint.map(|e| e.to_string()),
            now()
        ],
    )?;
    Ok(())
}

/// One token as `hpfaas token list` shows it: never the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// The token's id: the first characters of its SHA-256.
    pub id: String,
    /// The token's first characters, if recorded (tokens made before
    /// prefixes were stored have none).
    pub prefix: Option<String>,
    /// The owning user's name.
    pub user: String,
    /// Set for an endpoint credential.
    pub endpoint: Option<Uuid>,
    /// Unix seconds at creation.
    pub created: f64,
    /// Unix seconds at revocation, if revoked (0 when the time is unknown).
    pub revoked: Option<f64>,
}

/// Characters of the SHA-256 shown as a token's id.
pub const TOKEN_ID_CHARS: usize = 16;

fn token_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    let hash: String = r.get(0)?;
    let endpoint: Option<String> = r.get(3)?;
    let revoked: bool = r.get(5)?;
    let revoked_at: Option<f64> = r.get(6)?;
    Ok(TokenInfo {
        id: hash.chars().take(TOKEN_ID_CHARS).collect(),
        prefix: r.get(1)?,
        user: r.get(2)?,
        endpoint: endpoint.and_then(|e| Uuid::parse_str(&e).ok()),
        created: r.get(4)?,
        revoked: revoked.then(|| revoked_at.unwrap_or(0.0)),
    })
}

const TOKEN_INFO_SQL: &str = "SELECT t.hash, t.prefix, u.name, t.endpoint_id, t.created, \
     t.revoked, t.revoked_at FROM tokens t JOIN users u ON u.id = t.user_id";

/// Every token of user `name`, oldest first; `None` if there is no such user.
pub fn list_tokens(conn: &Connection, name: &str) -> ApiResult<Option<Vec<TokenInfo>>> {
    let user: Option<i64> = conn
        .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
        .optional()?;
    let Some(user) = user else { return Ok(None) };
    let mut st = conn.prepare(&format!(
        "{TOKEN_INFO_SQL} WHERE t.user_id = ?1 ORDER BY t.created, t.hash"
    ))?;
    let rows = st.query_map([user], token_info)?;
    Ok(Some(rows.collect::<Result<_, _>>()?))
}

/// Tokens whose SHA-256 is `hash`, or (for a shorter hex `prefix`) whose id
/// or recorded prefix starts with it; revoked ones included.
pub fn find_tokens(
    conn: &Connection,
    hash: Option<&str>,
    prefix: &str,
) -> ApiResult<Vec<(String, TokenInfo)>> {
    // Only hex reaches the LIKE patterns (checked by the caller), so no
    // wildcard can slip in.
    let mut st = conn.prepare(&format!(
        "{TOKEN_INFO_SQL} WHERE t.hash = ?1 OR t.hash LIKE ?2 || '%' \
         OR (t.prefix IS NOT NULL AND ?2 LIKE t.prefix || '%' ) \
         OR (t.prefix IS NOT NULL AND t.prefix LIKE ?2 || '%') ORDER BY t.created"
    ))?;
    let rows = st.query_map(params![hash.unwrap_or(""), prefix], |r| {
        Ok((r.get::<_, String>(0)?, token_info(r)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes the token with this SHA-256; false if it was revoked already.
pub fn revoke_token(conn: &Connection, hash: &str) -> ApiResult<bool> {
    let n = conn.execute(
        "UPDATE tokens SET revoked = 1, revoked_at = ?2 WHERE hash = ?1 AND revoked = 0",
        params![hash, now()],
    )?;
    Ok(n > 0)
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

/// Creates or re-registers an endpoint and issues `credential`, revoking
/// the endpoint's earlier credentials.
pub fn register_endpoint(
    conn: &Connection,
    owner: i64,
    reg: &EndpointRegistration,
    credential: &StoredToken,
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
    insert_token(conn, credential, owner, Some(id))?;
    Ok(id)
}

fn revoke_endpoint_credentials(conn: &Connection, id: Uuid) -> ApiResult<()> {
    conn.execute(
        "UPDATE tokens SET revoked = 1, revoked_at = ?2 WHERE endpoint_id = ?1 AND revoked = 0",
        params![id.to_string(), now()],
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

/// How a user may use an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// They own it: everything.
    Owner,
    /// It is shared with them: submit only.
    Shared,
    /// Nothing (or there is no such live endpoint).
    None,
}

/// What the endpoint's agent declared it will run (last hello).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Functions it runs; empty means all.
    pub allowed_functions: Vec<Uuid>,
    /// Only JSON (`11\n`) arguments.
    pub json_only: bool,
}

/// How `user` may use live endpoint `id`, and its policy.
pub fn endpoint_access(
    conn: &Connection,
    user: i64,
    id: Uuid,
) -> ApiResult<(Access, EndpointPolicy)> {
    let mut st = conn.prepare_cached(
        "SELECT e.owner, e.allowed_functions, e.json_only,
                EXISTS (SELECT 1 FROM endpoint_shares s WHERE s.endpoint_id = e.id AND s.user_id = ?2)
         FROM endpoints e WHERE e.id = ?1 AND e.deleted = 0",
    )?;
    let row = st
        .query_row(params![id.to_string(), user], |r| {
            let allowed: String = r.get(1)?;
            Ok((
                r.get::<_, i64>(0)?,
                allowed,
                r.get::<_, bool>(2)?,
                r.get::<_, bool>(3)?,
            ))
        })
        .optional()?;
    let Some((owner, allowed, json_only, shared)) = row else {
        return Ok((Access::None, EndpointPolicy::default()));
    };
    let access = if owner == user {
        Access::Owner
    } else if shared {
        Access::Shared
    } else {
        Access::None
    };
    let policy = EndpointPolicy {
        allowed_functions: serde_json::from_str(&allowed).unwrap_or_default(),
        json_only,
    };
    Ok((access, policy))
}

/// Records the policy the endpoint's agent declared.
pub fn set_endpoint_policy(conn: &Connection, id: Uuid, policy: &EndpointPolicy) -> ApiResult<()> {
    let allowed = serde_json::to_string(&policy.allowed_functions)
        .map_err(|e| ApiError::internal(format!("could not encode allowed_functions: {e}")))?;
    conn.execute(
        "UPDATE endpoints SET allowed_functions = ?2, json_only = ?3 WHERE id = ?1",
        params![id.to_string(), allowed, policy.json_only],
    )?;
    Ok(())
}

/// Shares the owner's endpoint with these users (created if new, so that a
/// name does not reveal whether such a user exists); false if the owner has
/// no such endpoint.
pub fn share_endpoint(
    conn: &Connection,
    owner: i64,
    id: Uuid,
    users: &[String],
) -> ApiResult<bool> {
    for_each_user_of_owned_endpoint(conn, owner, id, users, |name| {
        let user = ensure_user(conn, name)?;
        if user != owner {
            conn.execute(
                "INSERT OR IGNORE INTO endpoint_shares (endpoint_id, user_id, created) VALUES (?1, ?2, ?3)",
                params![id.to_string(), user, now()],
            )?;
        }
        Ok(())
    })
}

/// Stops sharing the owner's endpoint with these users; false if the owner
/// has no such endpoint.
pub fn unshare_endpoint(
    conn: &Connection,
    owner: i64,
    id: Uuid,
    users: &[String],
) -> ApiResult<bool> {
    for_each_user_of_owned_endpoint(conn, owner, id, users, |name| {
        conn.execute(
            "DELETE FROM endpoint_shares WHERE endpoint_id = ?1
             AND user_id = (SELECT id FROM users WHERE name = ?2)",
            params![id.to_string(), name],
        )?;
        Ok(())
    })
}

/// Calls `f` for each of these user names if the owner has endpoint `id`;
/// false (and no call) if not.
fn for_each_user_of_owned_endpoint(
    conn: &Connection,
    owner: i64,
    id: Uuid,
    users: &[String],
    mut f: impl FnMut(&str) -> ApiResult<()>,
) -> ApiResult<bool> {
    if get_endpoint(conn, owner, id)?.is_none() {
        return Ok(false);
    }
    for name in users {
        f(name)?;
    }
    Ok(true)
}

/// Names of the users endpoint `id` is shared with, sorted.
pub fn shared_with(conn: &Connection, id: Uuid) -> ApiResult<Vec<String>> {
    let mut st = conn.prepare_cached(
        "SELECT u.name FROM endpoint_shares s JOIN users u ON u.id = s.user_id
         WHERE s.endpoint_id = ?1 ORDER BY u.name",
    )?;
    let rows = st.query_map([id.to_string()], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
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
        super::events::delete(conn, id)?;
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

    fn stored(hash: &str) -> StoredToken {
        StoredToken {
            hash: hash.into(),
            prefix: hash.into(),
        }
    }

    #[test]
    fn sharing_grants_submit_access_only_to_named_users() {
        let c = db();
        let alice = ensure_user(&c, "alice").unwrap();
        let bob = ensure_user(&c, "bob").unwrap();
        let reg = EndpointRegistration {
            id: None,
            name: "ep".into(),
            display_name: "ep".into(),
            metadata: serde_json::json!({}),
        };
        let id = register_endpoint(&c, alice, &reg, &stored("h1")).unwrap();
        assert_eq!(endpoint_access(&c, alice, id).unwrap().0, Access::Owner);
        assert_eq!(endpoint_access(&c, bob, id).unwrap().0, Access::None);
        assert!(!share_endpoint(&c, bob, id, &["bob".into()]).unwrap());
        assert!(share_endpoint(
            &c,
            alice,
            id,
            &["bob".into(), "carol".into(), "alice".into()]
        )
        .unwrap());
        assert_eq!(shared_with(&c, id).unwrap(), vec!["bob", "carol"]);
        assert_eq!(endpoint_access(&c, bob, id).unwrap().0, Access::Shared);
        let policy = EndpointPolicy {
            allowed_functions: vec![Uuid::new_v4()],
            json_only: true,
        };
        set_endpoint_policy(&c, id, &policy).unwrap();
        assert_eq!(endpoint_access(&c, bob, id).unwrap().1, policy);
        assert!(unshare_endpoint(&c, alice, id, &["bob".into(), "nobody".into()]).unwrap());
        assert_eq!(endpoint_access(&c, bob, id).unwrap().0, Access::None);
        assert_eq!(shared_with(&c, id).unwrap(), vec!["carol"]);
    }

    #[test]
    fn tokens_are_listed_and_found_by_id_or_prefix() {
        let c = db();
        let alice = ensure_user(&c, "alice").unwrap();
        let t = StoredToken {
            hash: "abcdef0123456789abcdef".into(),
            prefix: "99887766".into(),
        };
        insert_token(&c, &t, alice, None).unwrap();
        let list = list_tokens(&c, "alice").unwrap().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, "abcdef0123456789");
        assert_eq!(list[0].prefix.as_deref(), Some("99887766"));
        assert_eq!(list_tokens(&c, "nobody").unwrap(), None);
        assert_eq!(find_tokens(&c, None, "abcdef01").unwrap().len(), 1);
        assert_eq!(find_tokens(&c, None, "998877").unwrap().len(), 1);
        assert_eq!(find_tokens(&c, None, "9988776655").unwrap().len(), 1);
        assert_eq!(find_tokens(&c, None, "123456").unwrap().len(), 0);
        assert!(revoke_token(&c, &t.hash).unwrap());
        assert!(!revoke_token(&c, &t.hash).unwrap());
        assert!(list_tokens(&c, "alice").unwrap().unwrap()[0]
            .revoked
            .is_some());
        assert_eq!(lookup_token(&c, &t.hash).unwrap(), None);
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
        let id = register_endpoint(&c, alice, &reg, &stored("h1")).unwrap();
        assert_eq!(lookup_token(&c, "h1").unwrap().unwrap().endpoint, Some(id));
        let again = EndpointRegistration {
            id: Some(id),
            ..reg.clone()
        };
        assert_eq!(
            register_endpoint(&c, alice, &again, &stored("h2")).unwrap(),
            id
        );
        assert_eq!(lookup_token(&c, "h1").unwrap(), None);
        assert!(lookup_token(&c, "h2").unwrap().is_some());

        let bob = ensure_user(&c, "bob").unwrap();
        let err = register_endpoint(&c, bob, &again, &stored("h3")).unwrap_err();
        assert_eq!(err.code, "forbidden");
        assert!(delete_endpoint(&c, alice, id).unwrap());
        assert_eq!(lookup_token(&c, "h2").unwrap(), None);
        assert!(!delete_endpoint(&c, alice, id).unwrap());
    }
}
