//! Accepting and serving connections, over plain TCP or TLS, within the
//! limits that keep slow or greedy clients from holding the service:
//!
//! * at most `max_connections` open at once, agent WebSockets included (the
//!   slot travels with the socket, through an upgrade); beyond that the
//!   loop stops accepting, so further connections wait in the kernel's
//!   accept queue without taking a file descriptor or memory here (the cap
//!   is lowered to fit the open-file limit, if need be);
//! * a request's headers must arrive within `header_read_timeout`;
//! * a connection that moves no byte either way for `idle_timeout` is
//!   dropped (a client that connects and says nothing, or stops reading
//!   its response); an upgraded WebSocket is left to its heartbeats.
//!
//! The body's deadline (`body_read_timeout`) is the body extractor's
//! ([`crate::extract::Body`]), as it knows where a request's body ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::ServiceConfig;

/// The connection limits [`serve`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time allowed for a request's headers.
    pub header_read_timeout: Duration,
    /// Silence after which a connection is dropped.
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits `config` sets, each at least a sane minimum.
    pub fn of(config: &ServiceConfig) -> Limits {
        Limits {
            max_connections: fit_open_files(config.max_connections.max(1)),
            header_read_timeout: config.header_read_timeout.max(Duration::from_millis(10)),
            idle_timeout: config.idle_timeout.max(Duration::from_millis(10)),
        }
    }
}

/// Descriptors kept for the database, payload files, logs and the
/// endpoint of `hpfaas up`, beyond one per connection.
const RESERVED_FILES: u64 = 256;

/// `wanted` connections, fewer if the process may not open that many
/// files: the soft `RLIMIT_NOFILE` is raised toward the hard one first, so
/// that the cap, not a failing `accept`, is what stops new connections.
fn fit_open_files(wanted: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return wanted;
    }
    let need = (wanted as u64).saturating_add(RESERVED_FILES);
    if lim.rlim_cur < need && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: need.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    let fitted = fit(wanted, lim.rlim_cur);
    if fitted < wanted {
        tracing::warn!(
            wanted,
            allowed = fitted,
            open_file_limit = lim.rlim_cur,
            "--max-connections is above what the open-file limit (ulimit -n) allows; using less"
        );
    }
    fitted
}

/// `wanted`, at most the open-file limit less [`RESERVED_FILES`] (and at
/// least one).
fn fit(wanted: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(RESERVED_FILES).max(1);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Serves `router` until `stopping` completes, then stops accepting and
/// lets open connections finish (the caller bounds that).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    stopping: impl Future<Output = ()> + Send,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(stopping);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut stopping => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stopping => break,
        };
        // Small frames (acks, single results) must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = Tracked {
            io: tcp,
            activity: activity.clone(),
            _slot: slot,
        };
        let (tls, router, builder) = (tls.clone(), router.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = TowerToHyperService::new(router);
            let served = async {
                match tls {
                    None => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let Some(io) = crate::tls::handshake(&acceptor, io, peer).await else {
                            return Ok(());
                        };
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                        watcher.watch(conn.into_owned()).await
                    }
                }
            };
            tokio::select! {
                ended = served => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = activity.idle_for(limits.idle_timeout) => {
                    tracing::debug!(%peer, "closing a connection idle for {:?}", limits.idle_timeout);
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Completes once no byte moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A connection's socket, noting its activity and holding its slot until
/// it is dropped (also after an upgrade to a WebSocket).
struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        assert_eq!(fit(1024, 20_000), 1024);
        assert_eq!(fit(1024, 1024), 1024 - 256);
        assert_eq!(fit(1024, 100), 1);
        assert!(fit_open_files(usize::MAX / 2) < usize::MAX / 2);
    }

    #[tokio::test]
    async fn idleness_is_measured_from_the_last_byte() {
        let activity = Activity::new();
        let limit = Duration::from_millis(200);
        let start = Instant::now();
        activity.idle_for(limit).await;
        assert!(start.elapsed() >= limit);
    }
}
