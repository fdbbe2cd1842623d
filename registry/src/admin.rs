//! Token administration for the CLI (`hpfaas token create|list|revoke`):
//! functions that open the service's database directly, whether or not the
//! service is running (SQLite's locking makes that safe).
//!
//! A revocation also replaces the data directory's stamp file
//! ([`crate::revocation`]), so a running service refuses the token on its
//! next request and closes the streams and agent links that use it.

use std::path::Path;

use anyhow::Context;
use uuid::Uuid;

use crate::db::{self, catalog};
use crate::token;

pub use catalog::TokenInfo;

/// Creates `user` in the database under `data_dir` if missing and returns a
/// new API token for them; only the token's SHA-256 (and its first
/// [`token::PREFIX_CHARS`] characters, to recognise it) is stored.
pub fn create_token(data_dir: &Path, user: &str) -> anyhow::Result<String> {
    create_token_audited(data_dir, user, true)
}

/// [`create_token`], with its `token_created` audit line only if `audit`
/// (`hpfaas up --no-audit` writes no audit log at all).
pub fn create_token_audited(data_dir: &Path, user: &str, audit: bool) -> anyhow::Result<String> {
    let user = user.trim();
    if user.is_empty() || user.chars().any(char::is_control) {
        anyhow::bail!("invalid user name {user:?}: it must be non-empty printable text");
    }
    crate::data_dir::create(data_dir)?;
    let conn = open(data_dir)?;
    let token = token::new_token();
    let tx = conn.unchecked_transaction()?;
    let user_id = catalog::ensure_user(&tx, user)?;
    catalog::insert_token(&tx, &token::stored_token(&token), user_id, None)?;
    tx.commit()?;
    if audit {
        audit_now(
            data_dir,
            serde_json::json!({"event": "token_created", "user": user,
                "token_prefix": &token[..token::PREFIX_CHARS.min(token.len())]}),
        );
    }
    Ok(token)
}

/// Every token (user tokens and endpoint credentials) of `user`, oldest
/// first, described without the token itself.
pub fn list_tokens(data_dir: &Path, user: &str) -> anyhow::Result<Vec<TokenInfo>> {
    let conn = open_existing(data_dir)?;
    catalog::list_tokens(&conn, user.trim())?
        .ok_or_else(|| anyhow::anyhow!("no user named {:?} in {}", user.trim(), data_dir.display()))
}

/// Shortest prefix `revoke_token` accepts, so a slip of the keyboard cannot
/// match many tokens.
pub const MIN_PREFIX: usize = 6;

/// Revokes one token, named by the token itself, or by at least
/// [`MIN_PREFIX`] leading characters of its id (as `list_tokens` shows it)
/// or of the token. Exactly one live token must match. Returns what was
/// revoked.
pub fn revoke_token(data_dir: &Path, token_or_prefix: &str) -> anyhow::Result<TokenInfo> {
    let given = token_or_prefix.trim().to_ascii_lowercase();
    if given.len() < MIN_PREFIX || !given.chars().all(|c| c.is_ascii_hexdigit()) {
        anyhow::bail!(
            "{token_or_prefix:?} is not a token or a token prefix: give the token, or at least \
             {MIN_PREFIX} hex characters of its id or of the token (see `hpfaas token list`)"
        );
    }
    let conn = open_existing(data_dir)?;
    let full = (given.len() == 64).then(|| token::hash_token(&given));
    let found = catalog::find_tokens(&conn, full.as_deref(), &given)?;
    // The whole token names exactly one row; otherwise only live ones count.
    let exact: Vec<_> = found
        .iter()
        .filter(|(hash, _)| Some(hash) == full.as_ref())
        .cloned()
        .collect();
    let candidates: Vec<_> = if exact.is_empty() {
        found
            .into_iter()
            .filter(|(_, t)| t.revoked.is_none())
            .collect()
    } else {
        exact
    };
    let (hash, info) = match candidates.as_slice() {
        [] => anyhow::bail!("no live token matches {given:?} in {}", data_dir.display()),
        [one] => one.clone(),
        many => anyhow::bail!(
            "{given:?} matches {} tokens ({}); give more characters",
            many.len(),
            many.iter()
                .map(|(_, t)| format!("{} of {}", t.id, t.user))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if !catalog::revoke_token(&conn, &hash)? {
        anyhow::bail!(
            "token {} of user {} was already revoked",
            info.id,
            info.user
        );
    }
    crate::revocation::touch_stamp(data_dir).with_context(|| {
        format!(
            "token {} is revoked in the database, but the running service could not be told \
             (writing {})",
            info.id,
            data_dir.join(crate::revocation::STAMP_FILE).display()
        )
    })?;
    let mut info = info;
    info.revoked = Some(crate::time::now());
    audit_now(
        data_dir,
        serde_json::json!({"event": "token_revoked", "user": info.user, "token_id": info.id}),
    );
    Ok(info)
}

/// Appends to the audit log from the CLI; a failure is reported, not fatal.
fn audit_now(data_dir: &Path, event: serde_json::Value) {
    if let Err(e) = crate::audit::append_now(data_dir, event) {
        eprintln!("hpfaas: warning: cannot write the audit log: {e}");
    }
}

/// Describes a token's kind for people: `user` or `endpoint <id>`.
pub fn token_kind(endpoint: Option<Uuid>) -> String {
    match endpoint {
        Some(e) => format!("endpoint {e}"),
        None => "user".into(),
    }
}

fn open(data_dir: &Path) -> anyhow::Result<rusqlite::Connection> {
    let path = db::db_path(data_dir);
    db::open_for_writing(&path).with_context(|| format!("opening database {}", path.display()))
}

fn open_existing(data_dir: &Path) -> anyhow::Result<rusqlite::Connection> {
    let path = db::db_path(data_dir);
    if !path.exists() {
        anyhow::bail!(
            "no service database at {} (use --data-dir to name the service's data directory)",
            path.display()
        );
    }
    open(data_dir)
}
