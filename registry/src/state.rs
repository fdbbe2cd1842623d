//! What every handler shares: the database, the live state, the settings,
//! the token cache, revocations, the metrics and the shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::Audit;
use crate::config::ServiceConfig;
use crate::db::Db;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::revocation::Revocations;
use crate::token::TokenCache;

/// Shared state handed to every route.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Arc<Db>,
    /// Connected endpoints and result notifications.
    pub live: Arc<Live>,
    /// Settings.
    pub config: Arc<ServiceConfig>,
    /// Recently seen tokens.
    pub tokens: Arc<TokenCache>,
    /// Revocations, from this service or another process.
    pub revocations: Arc<Revocations>,
    /// Becomes `true` when the service shuts down; long-lived responses end.
    pub shutdown: watch::Receiver<bool>,
    /// Count of live endpoint links, so shutdown can wait for them.
    pub links: Arc<watch::Sender<usize>>,
    /// The audit log.
    pub audit: Arc<Audit>,
    /// Dashboard login links and sessions.
    pub sessions: Arc<crate::ui::session::Sessions>,
    /// Each user's recent throughput, for the dashboard.
    pub activity: Arc<crate::activity::Activity>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Builds the state over an open database.
    pub fn new(db: Db, config: ServiceConfig, shutdown: watch::Receiver<bool>) -> AppState {
        let revocations = Arc::new(Revocations::new(&config.data_dir));
        let audit = Arc::new(Audit::start(&config.data_dir, config.audit));
        let metrics = Arc::new(Metrics::new(db.commit_seconds()));
        AppState {
            db: Arc::new(db),
            live: Arc::default(),
            config: Arc::new(config),
            tokens: Arc::default(),
            revocations,
            shutdown,
            links: Arc::new(watch::channel(0).0),
            audit,
            sessions: Arc::default(),
            activity: Arc::default(),
            metrics,
        }
    }

    /// Some token was revoked in this service: forget cached tokens and
    /// tell long-lived connections to re-check theirs.
    pub fn tokens_revoked(&self) {
        self.tokens.invalidate();
        self.revocations.notify();
    }

    /// Looks for revocations made by another process (see
    /// [`crate::revocation`]); forgets cached tokens if there were any.
    pub fn check_revocations(&self) {
        if self.revocations.poll() {
            self.tokens.invalidate();
        }
    }

    /// Looks for revocations by other processes every `revocation_poll`, so
    /// streams and agent links notice them without a request coming in.
    pub async fn poll_revocations(self) {
        let period = self.config.revocation_poll.max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => self.check_revocations(),
                _ = self.shutting_down() => return,
            }
        }
    }

    /// Completes once shutdown has begun.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        // An error means the sender is gone, which also means shutdown.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Registers a live endpoint link until the guard drops.
    pub fn link_guard(&self) -> LinkGuard {
        self.links.send_modify(|n| *n += 1);
        LinkGuard(self.links.clone())
    }

    /// Waits until every endpoint link has finished, at most `limit`.
    pub async fn links_closed(&self, limit: Duration) -> bool {
        let mut rx = self.links.subscribe();
        let closed = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
        closed.is_ok()
    }
}

/// Counts one live endpoint link.
pub struct LinkGuard(Arc<watch::Sender<usize>>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
impl AppState {
    /// A state over a fresh database in a temporary directory; the sender
    /// triggers shutdown.
    /// The directory is removed when the returned guard is dropped.
    pub(crate) fn for_tests(live: Live) -> (AppState, watch::Sender<bool>, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-registry-unit-")
            .tempdir()
            .unwrap();
        let config = ServiceConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
        let db = Db::open(&config.db_path()).unwrap();
        let (stop, shutdown) = watch::channel(false);
        let mut state = AppState::new(db, config, shutdown);
        state.live = Arc::new(live);
        (state, stop, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revocations_by_another_process_are_polled_until_shutdown() {
        let (state, stop, dir) = AppState::for_tests(Live::default());
        let mut revoked = state.revocations.subscribe();
        let poll = tokio::spawn(state.clone().poll_revocations());
        // What `hpfaas token revoke` does from another process.
        crate::revocation::touch_stamp(dir.path()).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(30), revoked.changed()).await;
        assert!(matches!(seen, Ok(Ok(()))), "the revocation was not noticed");
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(30), poll)
            .await
            .expect("the poll outlived shutdown")
            .unwrap();
        state.db.shutdown().await;
    }
}
