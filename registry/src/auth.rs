//! Bearer-token authentication: user tokens versus endpoint credentials.
//!
//! A token is 32 random bytes in hex; only its SHA-256 is stored, so a copy
//! of the database does not leak usable tokens. An endpoint credential is a
//! token scoped to one endpoint: it can connect that endpoint's WebSocket and
//! read its status, and nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use crate::db::catalog::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// A new random token (64 hex characters).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The stored form of a token: SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Entries kept before the cache starts over.
const CACHE_LIMIT: usize = 10_000;

/// Recently verified tokens, so most requests skip the database lookup.
///
/// Revocations happen only inside this service, which then calls
/// [`TokenCache::invalidate`]. The generation counter stops a lookup that
/// raced with a revocation from caching the revoked token.
#[derive(Default)]
pub struct TokenCache {
    generation: AtomicU64,
    entries: Mutex<HashMap<String, Principal>>,
}

impl TokenCache {
    fn get(&self, hash: &str) -> Option<Principal> {
        self.entries.lock().ok()?.get(hash).cloned()
    }

    fn insert(&self, generation: u64, hash: String, principal: Principal) {
        if let Ok(mut entries) = self.entries.lock() {
            if self.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if entries.len() >= CACHE_LIMIT {
                entries.clear();
            }
            entries.insert(hash, principal);
        }
    }

    /// Forgets every cached token (after a revocation).
    pub fn invalidate(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            entries.clear();
        }
    }
}

/// Whoever presented a valid token: a user, or an endpoint credential.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing `Authorization: Bearer <token>` header")
        })?;
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
        let hash = hash_token(token);
        if let Some(p) = state.tokens.get(&hash) {
            return Ok(Caller(p));
        }
        let generation = state.tokens.generation.load(Ordering::SeqCst);
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

/// A caller holding a user token (not an endpoint credential).
#[derive(Debug, Clone)]
pub struct User {
    /// The user's id.
    pub id: i64,
    /// The user's name.
    pub name: String,
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(p) = Caller::from_request_parts(parts, state).await?;
        match p.endpoint {
            None => Ok(User {
                id: p.user_id,
                name: p.user_name,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_hashes_are_stable() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hash_token("abc"), hash_token("abc"));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn invalidation_wins_over_a_racing_insert() {
        let cache = TokenCache::default();
        let p = Principal {
            user_id: 1,
            user_name: "a".into(),
            endpoint: None,
        };
        let generation = cache.generation.load(Ordering::SeqCst);
        cache.invalidate();
        cache.insert(generation, "h".into(), p.clone());
        assert!(cache.get("h").is_none());
        cache.insert(cache.generation.load(Ordering::SeqCst), "h".into(), p);
        assert!(cache.get("h").is_some());
    }
}
