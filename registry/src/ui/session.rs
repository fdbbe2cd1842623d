//! Dashboard logins, as Jupyter does them: a user token buys a one-time
//! login link (`POST /v3/ui/login_link`, or `hpfaas up` at start); opening
//! it trades the link's key for a session cookie (HttpOnly, SameSite=Strict)
//! and redirects to a URL without the key. A session acts with the token
//! that made the link, re-checked on every request, so revoking the token
//! ends its sessions.
//!
//! Keys and session ids are 256 random bits; only their SHA-256 is kept,
//! in memory (a restarted service forgets every session). Both stores are
//! bounded: a caller cannot grow them past [`MAX_LIVE`] entries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::token::{hash_token, new_token};

/// Name of the session cookie.
pub const COOKIE: &str = "hpfaas_session";
/// How long a session lasts after its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Longest life a login link may be given.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Live links, and live sessions, at most.
pub const MAX_LIVE: usize = 10_000;

/// One store: SHA-256 of a secret -> (the token hash it acts with, expiry).
#[derive(Default)]
struct Store(HashMap<String, (String, Instant)>);

impl Store {
    /// Adds `secret`, after dropping expired entries; false when full.
    fn insert(&mut self, secret: &str, token_hash: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        if self.0.len() >= MAX_LIVE {
            self.0.retain(|_, (_, expires)| *expires > now);
        }
        if self.0.len() >= MAX_LIVE {
            return false;
        }
        self.0
            .insert(hash_token(secret), (token_hash.to_string(), now + ttl));
        true
    }
}

/// Login links and sessions of the dashboard.
#[derive(Default)]
pub struct Sessions {
    links: Mutex<Store>,
    sessions: Mutex<Store>,
}

/// Too many live links or sessions.
#[derive(Debug)]
pub struct Full;

impl Sessions {
    /// A new login link key for the token with this hash, valid once within `ttl`.
    pub fn new_link(&self, token_hash: &str, ttl: Duration) -> Result<String, Full> {
        let key = new_token();
        let ttl = ttl.min(MAX_LINK_TTL);
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .insert(&key, token_hash, ttl)
            .then_some(key)
            .ok_or(Full)
    }

    /// Spends a link's key: a new session id for its token, or `None` when
    /// the key is unknown, used or expired.
    pub fn log_in(&self, key: &str) -> Result<Option<String>, Full> {
        let spent = {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            links.0.remove(&hash_token(key))
        };
        let Some((token_hash, _)) = spent.filter(|(_, expires)| *expires > Instant::now()) else {
            return Ok(None);
        };
        let session = new_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.insert(&session, &token_hash, SESSION_TTL) {
            Ok(Some(session))
        } else {
            Err(Full)
        }
    }

    /// The token hash a live session acts with.
    pub fn token_hash(&self, session: &str) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .0
            .get(&hash_token(session))
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(hash, _)| hash.clone())
    }

    /// Ends a session.
    pub fn log_out(&self, session: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.0.remove(&hash_token(session));
    }
}

/// The session id in a request's `Cookie` headers, if any.
pub fn from_cookies(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_logs_in_once_and_the_session_acts_with_its_token() {
        let s = Sessions::default();
        let key = s.new_link("tokenhash", Duration::from_secs(60)).unwrap();
        let session = s.log_in(&key).unwrap().expect("a fresh link logs in");
        assert_eq!(s.token_hash(&session).as_deref(), Some("tokenhash"));
        assert!(s.log_in(&key).unwrap().is_none(), "a link works once");
        assert!(s.token_hash("forged").is_none());
        s.log_out(&session);
        assert!(s.token_hash(&session).is_none());
    }

    #[test]
    fn expired_links_do_not_log_in() {
        let s = Sessions::default();
        let key = s.new_link("h", Duration::ZERO).unwrap();
        assert!(s.log_in(&key).unwrap().is_none());
    }

    #[test]
    fn the_stores_are_bounded() {
        let s = Sessions::default();
        for _ in 0..MAX_LIVE {
            s.new_link("h", Duration::from_secs(60)).unwrap();
        }
        assert!(s.new_link("h", Duration::from_secs(60)).is_err());
        // Expired entries make room.
        let s = Sessions::default();
        for _ in 0..MAX_LIVE {
            s.new_link("h", Duration::ZERO).unwrap();
        }
        assert!(s.new_link("h", Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; hpfaas_session=abc ; b=2".parse().unwrap());
        assert_eq!(from_cookies(&h).as_deref(), Some("abc"));
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "hpfaas_session=".parse().unwrap());
        assert_eq!(from_cookies(&h), None);
    }
}
