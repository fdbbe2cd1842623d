//! The hpfaas service: REST for clients, server-sent result streams, and the
//! endpoint agents' WebSocket, all on one port, over one SQLite database.
//!
//! * [`config`]: settings ([`ServiceConfig`]).
//! * [`error`]: the JSON error answer every route uses.
//! * [`auth`]: bearer tokens; user tokens versus endpoint credentials.
//! * [`extract`]: request extractors with JSON rejections.
//! * [`db`]: SQLite: schema, group-commit writer, read pool, queries.
//! * [`live`]: connected endpoints, dispatch wake-ups, result notifications.
//! * [`routes`]: the route table, the handlers, and `/openapi.json`.
//! * [`endpoint_link`]: one endpoint agent's WebSocket connection.
//!
//! The CLI's `hpfaas service`, `hpfaas token create` and `hpfaas up` are thin
//! wrappers over [`Service`] and [`create_token`].

pub mod auth;
pub mod config;
pub mod db;
pub mod endpoint_link;
pub mod error;
pub mod extract;
pub mod live;
pub mod routes;
pub mod state;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ServiceConfig;
use state::AppState;

/// How long shutdown waits for open HTTP responses and agent links.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A bound, not yet running service.
pub struct Service {
    state: AppState,
    listener: TcpListener,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Service {
    /// Creates `data_dir`, opens (and migrates) `data_dir/registry.db`, and
    /// binds the listening socket.
    pub async fn bind(config: ServiceConfig) -> anyhow::Result<Service> {
        create_private_dir(&config.data_dir)?;
        let path = config.db_path();
        let db = tokio::task::spawn_blocking(move || {
            db::Db::open(&path).with_context(|| format!("opening database {}", path.display()))
        })
        .await??;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let (stop, shutdown) = watch::channel(false);
        let state = AppState {
            db: Arc::new(db),
            live: Arc::default(),
            config: Arc::new(config),
            tokens: Arc::default(),
            shutdown,
            links: Arc::new(watch::channel(0).0),
        };
        Ok(Service {
            state,
            listener,
            local_addr,
            stop,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting, closes agent
    /// sockets and result streams, and commits what the writer still holds.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Service {
            state,
            listener,
            local_addr,
            stop,
        } = self;
        tracing::info!(addr = %local_addr, data_dir = %state.config.data_dir.display(), "hpfaas service listening");
        let listener = listener.tap_io(|tcp| {
            // Small frames (acks, single results) must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
        });
        let router = routes::router(state.clone());
        let mut stopping = state.shutdown.clone();
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|s| *s).await;
            })
            .into_future();
        tokio::pin!(serve);
        let result = tokio::select! {
            r = &mut serve => r,
            _ = shutdown => {
                tracing::info!("hpfaas service shutting down");
                stop.send_replace(true);
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("open HTTP connections did not finish in time; dropping them");
                        Ok(())
                    }
                }
            }
        };
        stop.send_replace(true);
        if !state.links_closed(SHUTDOWN_GRACE).await {
            tracing::warn!("endpoint links did not close in time");
        }
        state.db.shutdown().await;
        tracing::info!("hpfaas service stopped");
        result.context("serving HTTP")
    }
}

/// Creates `user` in the database under `data_dir` if missing and returns a
/// new API token for them; only the token's SHA-256 is stored.
pub fn create_token(data_dir: &Path, user: &str) -> anyhow::Result<String> {
    let user = user.trim();
    if user.is_empty() || user.chars().any(char::is_control) {
        anyhow::bail!("invalid user name {user:?}: it must be non-empty printable text");
    }
    create_private_dir(data_dir)?;
    let path = db::db_path(data_dir);
    let conn = db::open_for_writing(&path)
        .with_context(|| format!("opening database {}", path.display()))?;
    let token = auth::new_token();
    let tx = conn.unchecked_transaction()?;
    let user_id = db::catalog::ensure_user(&tx, user)?;
    db::catalog::insert_token(&tx, &auth::hash_token(&token), user_id, None)?;
    tx.commit()?;
    Ok(token)
}

/// Creates the data directory, readable only by its owner when new.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))
}
