//! The service's settings: where it listens, where it keeps its database, and
//! the limits it enforces. The CLI fills this from flags; tests shorten the
//! heartbeat here rather than sleeping in the code under test.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings for one [`crate::Service`].
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Address to bind (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Directory holding `registry.db`; created if missing.
    pub data_dir: PathBuf,
    /// Largest request body accepted, bytes; larger ones get `413`.
    pub max_request_bytes: usize,
    /// Seconds between agent heartbeats, sent to agents in `Welcome`; an agent
    /// silent for three periods is dropped.
    pub heartbeat_period: f64,
}

impl ServiceConfig {
    /// Default request limit: 10 MiB, as documented in `docs/api.md`.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
    /// Default heartbeat period, seconds.
    pub const DEFAULT_HEARTBEAT_PERIOD: f64 = 2.0;

    /// A configuration with default limits.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        ServiceConfig {
            listen,
            data_dir: data_dir.into(),
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            heartbeat_period: Self::DEFAULT_HEARTBEAT_PERIOD,
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
    pub(crate) fn heartbeat_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.effective_heartbeat_period() * 3.0)
    }

    /// Path of the SQLite database inside `data_dir`.
    pub(crate) fn db_path(&self) -> PathBuf {
        crate::db::db_path(&self.data_dir)
    }
}
