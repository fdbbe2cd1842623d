//! The hpfaas service: REST for clients, server-sent result streams, and the
//! endpoint agents' WebSocket, all on one port (HTTP or HTTPS), over one
//! SQLite database.
//!
//! * [`config`]: settings ([`ServiceConfig`]).
//! * [`error`]: the JSON error answer every route uses.
//! * [`token`]: tokens: making one, what is stored of it, the cache of
//!   verified ones.
//! * [`auth`]: who is calling: user tokens versus endpoint credentials.
//! * [`revocation`]: revoked tokens reaching a running service.
//! * [`audit`]: the audit log (`audit.log`), written off the request path.
//! * [`admin`]: `hpfaas token create|list|revoke` on the database.
//! * [`data_dir`]: the private data directory.
//! * [`extract`]: request extractors with JSON rejections.
//! * [`db`]: SQLite: schema, group-commit writer, read pool, queries.
//! * [`live`]: connected endpoints, dispatch wake-ups, result notifications.
//! * [`metrics`]: Prometheus counters, histograms and scrape-time gauges,
//!   served on their own listener (`--metrics-listen`).
//! * [`routes`]: the route table, the handlers, and `/openapi.json`.
//! * [`endpoint_link`]: one endpoint agent's WebSocket connection.
//! * [`purge`]: result expiry and retention, periodically.
//! * [`serve`]: accepting connections, with the connection cap and the
//!   header and idle timeouts.
//! * [`tls`]: serving HTTPS.
//! * [`time`]: Unix seconds, and how task documents and messages show them.
//!
//! The CLI's `hpfaas service`, `hpfaas token ...` and `hpfaas up` are thin
//! wrappers over [`Service`] and the [`admin`] functions.

pub mod activity;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod data_dir;
pub mod db;
pub mod endpoint_link;
pub mod error;
pub mod extract;
pub mod live;
pub mod metrics;
pub mod purge;
pub mod resource_spec;
pub mod revocation;
pub mod routes;
pub mod serve;
pub mod state;
pub mod time;
pub mod tls;
pub mod token;
pub mod ui;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use admin::{create_token, create_token_audited, list_tokens, revoke_token, TokenInfo};
pub use config::{parse_duration, ServiceConfig, TlsFiles};
use state::AppState;

/// How long shutdown waits for open HTTP responses and agent links.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A bound, not yet running service.
pub struct Service {
    state: AppState,
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The metrics listener (`--metrics-listen`), if any.
    metrics: Option<TcpListener>,
    stop: watch::Sender<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Service {
    /// Creates `data_dir`, opens (and migrates) `data_dir/registry.db`,
    /// loads the TLS files if any, and binds the listening socket.
    pub async fn bind(config: ServiceConfig) -> anyhow::Result<Service> {
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        data_dir::create(&config.data_dir)?;
        let path = config.db_path();
        let db = tokio::task::spawn_blocking(move || {
            db::Db::open(&path).with_context(|| format!("opening database {}", path.display()))
        })
        .await??;
        let listener =
            listen(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(listen(addr).with_context(|| format!("binding metrics {addr}"))?),
            None => None,
        };
        let (stop, shutdown) = watch::channel(false);
        let state = AppState::new(db, config, shutdown);
        Ok(Service {
            state,
            listener,
            local_addr,
            metrics,
            stop,
            tls,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where Prometheus scrapes the service (`http://ADDR/metrics`), when
    /// `metrics_listen` was set.
    pub fn metrics_url(&self) -> Option<String> {
        let addr = self.metrics.as_ref()?.local_addr().ok()?;
        Some(format!("http://{addr}/metrics"))
    }

    /// The service's base URL: `https://ADDR` with TLS, else `http://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
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
            metrics,
            stop,
            tls,
        } = self;
        tracing::info!(addr = %local_addr, tls = tls.is_some(),
            data_dir = %state.config.data_dir.display(), "hpfaas service listening");
        let purge = tokio::spawn(purge::run(state.clone()));
        let revocations = tokio::spawn(state.clone().poll_revocations());
        let router = routes::router(state.clone());
        let mut stopping = state.shutdown.clone();
        let stopping = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let limits = serve::Limits::of(&state.config);
        let metrics =
            metrics.map(|listener| tokio::spawn(serve_metrics(listener, state.clone(), limits)));
        let serve = serve::serve(listener, tls, router, limits, stopping);
        tokio::pin!(serve);
        let result = tokio::select! {
            () = &mut serve => Ok::<(), std::io::Error>(()),
            _ = shutdown => {
                tracing::info!("hpfaas service shutting down");
                stop.send_replace(true);
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await.is_err() {
                    tracing::warn!("open HTTP connections did not finish in time; dropping them");
                }
                Ok(())
            }
        };
        stop.send_replace(true);
        if !state.links_closed(SHUTDOWN_GRACE).await {
            tracing::warn!("endpoint links did not close in time");
        }
        let _ = purge.await;
        let _ = revocations.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        state.db.shutdown().await;
        tracing::info!("hpfaas service stopped");
        result.context("serving HTTP")
    }
}

/// Most scrapes served at once on the metrics listener.
const METRICS_CONNECTIONS: usize = 16;

/// Serves `/metrics` on its own listener, plain HTTP, until shutdown.
async fn serve_metrics(listener: TcpListener, state: AppState, limits: serve::Limits) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    let limits = serve::Limits {
        max_connections: METRICS_CONNECTIONS,
        ..limits
    };
    let mut stopping = state.shutdown.clone();
    let stopping = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let router = routes::metrics::router(state);
    serve::serve(listener, None, router, limits, stopping).await;
}

/// Connections the kernel holds for the service while it has
/// `max_connections` open (capped by `net.core.somaxconn`); beyond them a
/// client's connect waits on its own retries.
const ACCEPT_BACKLOG: u32 = 1024;

/// Binds `addr` with room for [`ACCEPT_BACKLOG`] waiting connections.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}
