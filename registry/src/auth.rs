//! Bearer-token authentication: user tokens versus endpoint credentials.
//!
//! A token is 32 random bytes in hex; only its SHA-256 is stored, so a copy
//! of the database does not leak usable tokens. An endpoint credential is a
//! token scoped to one endpoint: it can connect that endpoint's WebSocket and
//! read its status, and nothing else.
//!
//! Tokens are found by their hash (an indexed SQLite lookup, and a hash map
//! in [`TokenCache`]), not compared byte by byte against a secret. That is
//! constant-time enough: the comparisons that could take a variable time
//! run on SHA-256 digests, so the most a timing attacker could learn is how
//! many leading bytes of the *digest* of their guess match a stored digest,
//! which tells nothing about a preimage; and a token is 256 random bits, so
//! guessing one is hopeless anyway.
//!
//! Revocation ([`crate::revocation`]) is checked before the cache on every
//! request, so a revoked token is refused on its next request.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

pub use crate::db::catalog::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::token::hash_token;

/// Whoever presented a valid token: a user, or an endpoint credential.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = match parts.headers.get(AUTHORIZATION) {
            Some(header) => {
                let token = header
                    .to_str()
                    .ok()
                    .and_then(|h| h.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
                    })?;
                hash_token(token)
            }
            None => dashboard_session(parts, state)?,
        };
        state.check_revocations();
        if let Some(p) = state.tokens.get(&hash) {
            return Ok(Caller(p));
        }
        let generation = state.tokens.generation();
        let lookup = hash.clone();
        let found = state
            .db
            .read(move |c| crate::db::catalog::lookup_token(c, &lookup))
            .await?;
        match found {
            Some(p) => {
                state.tokens.insert(generation, hash, p.clone());
                Ok(Caller(p))
            }
            None => Err(ApiError::unauthorized("invalid or revoked token")),
        }
    }
}

/// The token hash a dashboard session cookie acts with. Only on GET (and
/// HEAD) requests: the dashboard reads, and a cookie that could also act
/// would let any page the user visits try to act for them (SameSite=Strict
/// aside). A session's token is checked like a presented one afterwards.
fn dashboard_session(parts: &Parts, state: &AppState) -> Result<String, ApiError> {
    let missing = || ApiError::unauthorized("missing `Authorization: Bearer <token>` header");
    let Some(session) = crate::ui::session::from_cookies(&parts.headers) else {
        return Err(missing());
    };
    if parts.method != axum::http::Method::GET && parts.method != axum::http::Method::HEAD {
        return Err(ApiError::unauthorized(format!(
            "a dashboard session can only read; {} {} needs `Authorization: Bearer <token>`",
            parts.method,
            parts.uri.path()
        )));
    }
    state.sessions.token_hash(&session).ok_or_else(|| {
        ApiError::unauthorized(
            "the dashboard session has ended (expired, logged out, or the service restarted); \
             open a new login link from `hpfaas dashboard`",
        )
    })
}

/// True if the token with this SHA-256 is still live, for long-lived
/// connections that re-check after a revocation. An error means the token
/// could not be checked: the caller closes its connection then too (fails
/// closed), as a request would be refused; the client reconnects, and its
/// new request is checked afresh.
pub async fn still_valid(state: &AppState, hash: &str) -> ApiResult<bool> {
    let lookup = hash.to_string();
    let found = state
        .db
        .read(move |c| crate::db::catalog::lookup_token(c, &lookup))
        .await?;
    Ok(found.is_some())
}

/// A caller holding a user token (not an endpoint credential).
#[derive(Debug, Clone)]
pub struct User {
    /// The user's id.
    pub id: i64,
    /// The user's name.
    pub name: String,
    /// SHA-256 of the token used, to re-check it later.
    pub token_hash: String,
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(p) = Caller::from_request_parts(parts, state).await?;
        match p.endpoint {
            None => Ok(User {
                id: p.user_id,
                name: p.user_name,
                token_hash: p.token_hash,
            }),
            Some(endpoint) => Err(ApiError::forbidden(format!(
                "this is the credential of endpoint {endpoint}: it can only connect that endpoint \
                 and read its status; {} {} needs a user token",
                parts.method,
                parts.uri.path()
            ))),
        }
    }
}
