//! The service's settings: where it listens, where it keeps its database, and
//! the limits it enforces. The CLI fills this from flags; tests shorten the
//! heartbeat, the purge period and the expiry times here rather than sleeping
//! in the code under test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A certificate chain and its private key, both PEM files, for HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Settings for one [`crate::Service`].
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Address to bind (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Directory holding `registry.db`; created if missing.
    pub data_dir: PathBuf,
    /// Largest request body accepted, bytes; larger ones get `413`.
    pub max_request_bytes: usize,
    /// Most tasks in one submit; more get `413`.
    pub max_tasks_per_submit: usize,
    /// Largest result (or exception text) stored, bytes; a larger result
    /// fails its task with `ResultTooLarge`.
    pub max_result_bytes: usize,
    /// A result nobody fetched within this time is purged (`ResultExpired`).
    pub result_ttl: Duration,
    /// Finished tasks and idempotency keys older than this are deleted.
    pub retention: Duration,
    /// A cached result ([`crate::db::memo`]) is reused for this long after
    /// it was stored, then purged.
    pub cache_ttl: Duration,
    /// Finished tasks whose result was fetched (or that had none to fetch)
    /// are deleted this long after they finished, if sooner than
    /// `retention` (`hpfaas up`: minutes); `None`: after `retention`.
    pub fetched_retention: Option<Duration>,
    /// How the audit log rotates (size, files kept, daily); `None`: no
    /// audit log is written (`hpfaas up --no-audit`).
    pub audit: Option<crate::audit::AuditLimits>,
    /// How often empty groups, payload files and free pages are swept
    /// (expiry and retention run every `purge::PACE`, or this if shorter).
    pub purge_interval: Duration,
    /// How often the service looks for tokens revoked by another process
    /// (`hpfaas token revoke`), to close streams and agent links using them.
    /// Requests check at once regardless.
    pub revocation_poll: Duration,
    /// Seconds between agent heartbeats, sent to agents in `Welcome`; an agent
    /// silent for three periods is dropped.
    pub heartbeat_period: f64,
    /// Serve HTTPS with these files instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Most connections open at once (agent WebSockets included); further
    /// ones wait in the kernel's accept queue, taking nothing here.
    pub max_connections: usize,
    /// A request's headers must arrive within this time of its first byte,
    /// or the connection is closed.
    pub header_read_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed
    /// (result streams send a keep-alive every 15 s; agent links are ruled
    /// by their heartbeats instead).
    pub idle_timeout: Duration,
    /// A request's body must arrive within this time, else `408`.
    pub body_read_timeout: Duration,
    /// Most event streams (result streams, live views) open at once with one token; more get `429`.
    pub max_streams_per_token: usize,
    /// Per-user limits on what the service holds for them.
    pub quota: crate::db::usage::Quota,
    /// Where to serve `/metrics` (Prometheus text), on a listener of its
    /// own; `None` serves no metrics. Never the service's own port.
    pub metrics_listen: Option<SocketAddr>,
    /// SHA-256 (hex) of the bearer token a scrape must carry
    /// (`--metrics-token-file`); `None`: scrapes need none.
    pub metrics_token_hash: Option<String>,
}

impl ServiceConfig {
    /// Default request limit: 10 MiB, as documented in `docs/api.md`.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
    /// Default most tasks per submit.
    pub const DEFAULT_MAX_TASKS_PER_SUBMIT: usize = 100_000;
    /// Default largest stored result: 10 MiB.
    pub const DEFAULT_MAX_RESULT_BYTES: usize = 10 * 1024 * 1024;
    /// Default result time-to-live: 7 days.
    pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(7 * 86_400);
    /// Default time a cached result is reused: 7 days.
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(7 * 86_400);
    /// Default retention of finished tasks: 30 days.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
    /// Default purge period: one minute.
    pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(60);
    /// Default revocation poll: one second.
    pub const DEFAULT_REVOCATION_POLL: Duration = Duration::from_secs(1);
    /// Default heartbeat period, seconds.
    pub const DEFAULT_HEARTBEAT_PERIOD: f64 = 2.0;
    /// Default most open connections.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    /// Default time to send a request's headers.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default silence after which a connection is closed.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default time to send a request's body.
    pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default most open result streams per token.
    pub const DEFAULT_MAX_STREAMS_PER_TOKEN: usize = 64;

    /// A configuration with default limits.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        ServiceConfig {
            listen,
            data_dir: data_dir.into(),
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            max_tasks_per_submit: Self::DEFAULT_MAX_TASKS_PER_SUBMIT,
            max_result_bytes: Self::DEFAULT_MAX_RESULT_BYTES,
            result_ttl: Self::DEFAULT_RESULT_TTL,
            retention: Self::DEFAULT_RETENTION,
            cache_ttl: Self::DEFAULT_CACHE_TTL,
            fetched_retention: None,
            audit: Some(crate::audit::DEFAULT_LIMITS),
            purge_interval: Self::DEFAULT_PURGE_INTERVAL,
            revocation_poll: Self::DEFAULT_REVOCATION_POLL,
            heartbeat_period: Self::DEFAULT_HEARTBEAT_PERIOD,
            tls: None,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: Self::DEFAULT_BODY_READ_TIMEOUT,
            max_streams_per_token: Self::DEFAULT_MAX_STREAMS_PER_TOKEN,
            quota: crate::db::usage::Quota::default(),
            metrics_listen: None,
            metrics_token_hash: None,
        }
    }

    /// The heartbeat period actually used.
    pub(crate) fn effective_heartbeat_period(&self) -> f64 {
        // A non-finite or non-positive period would make every agent time out
        // at once (or never); fall back to the default.
        if self.heartbeat_period.is_finite() && self.heartbeat_period > 0.0 {
            self.heartbeat_period.min(86_400.0)
        } else {
            Self::DEFAULT_HEARTBEAT_PERIOD
        }
    }

    /// How long an agent may stay silent before it is dropped.
    pub(crate) fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.effective_heartbeat_period() * 3.0)
    }

    /// Path of the SQLite database inside `data_dir`.
    pub(crate) fn db_path(&self) -> PathBuf {
        crate::db::db_path(&self.data_dir)
    }
}

/// Parses a duration such as `90`, `90s`, `15m`, `12h`, `7d` or `1.5d`
/// (seconds when no unit is given), for the CLI's `--result-ttl` and
/// `--retention`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "week" | "weeks" => 7.0 * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m, h, d or w"
            ))
        }
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 15m, 12h or 7d"))?;
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 100.0 * 365.0 * 86_400.0 {
        return Err(format!(
            "invalid duration {text:?}: it must be positive and at most 100 years"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-3d").is_err());
        assert!(parse_duration("3y").unwrap_err().contains("unit"));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
    }
}
