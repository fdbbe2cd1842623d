//! Tokens: how one is made, what is stored of it, and the cache of
//! recently verified ones.
//!
//! A token is 32 random bytes in hex; only its SHA-256 is stored, so a copy
//! of the database does not leak usable tokens. Tokens are found by their
//! hash (an indexed SQLite lookup, and a hash map in [`TokenCache`]), never
//! compared byte by byte against a secret (see [`crate::auth`] for why that
//! is constant-time enough).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::catalog::{Principal, StoredToken};

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

/// Characters of a token kept in clear (`tokens.prefix`), so its owner can
/// recognise it: 32 of its 256 bits, leaving 224 unknown.
pub const PREFIX_CHARS: usize = 8;

/// What the database keeps of `token`.
pub fn stored_token(token: &str) -> StoredToken {
    StoredToken {
        hash: hash_token(token),
        prefix: token.chars().take(PREFIX_CHARS).collect(),
    }
}

/// Entries kept before the cache starts over.
const CACHE_LIMIT: usize = 10_000;

/// Recently verified tokens, so most requests skip the database lookup.
///
/// Every revocation, in this service or seen through the stamp file, calls
/// [`TokenCache::invalidate`]. The generation counter stops a lookup that
/// raced with a revocation from caching the revoked token.
#[derive(Default)]
pub struct TokenCache {
    generation: AtomicU64,
    entries: Mutex<HashMap<String, Principal>>,
}

impl TokenCache {
    /// The principal of a cached token.
    pub fn get(&self, hash: &str) -> Option<Principal> {
        self.entries.lock().ok()?.get(hash).cloned()
    }

    /// Caches a token looked up while the cache was at `generation`.
    pub fn insert(&self, generation: u64, hash: String, principal: Principal) {
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

    /// The generation to pass to [`TokenCache::insert`] after a lookup.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Forgets every cached token (after a revocation).
    pub fn invalidate(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            entries.clear();
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
            token_hash: "h".into(),
        };
        let generation = cache.generation();
        cache.invalidate();
        cache.insert(generation, "h".into(), p.clone());
        assert!(cache.get("h").is_none());
        cache.insert(cache.generation(), "h".into(), p);
        assert!(cache.get("h").is_some());
    }
}
