//! The agent's own Prometheus exposition (`[metrics] listen`): its blocks
//! by state, each block's managers, workers and tasks in hand, and its
//! workers busy and idle, as of the agent's last heartbeat tick ([`Figures`];
//! nothing is counted per task). Served by a minimal HTTP/1.1 responder:
//! `GET /metrics` only, one request per connection, heads bounded in size
//! and time; with `[metrics] token_file`, only to a scrape carrying that
//! bearer token.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::agent::blocks::BlockStatus;
use crate::broker::dispatch::Load;

/// Largest request head read; a longer one is refused.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrapes answered at once; further connections wait in the kernel.
const MAX_CONNECTIONS: usize = 16;

/// What the agent last saw, as its heartbeat tick records it.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// The broker's load report.
    pub load: Load,
    /// The blocks the agent keeps.
    pub blocks: Vec<BlockStatus>,
    /// Tasks accepted from the service and not finished.
    pub outstanding: u64,
    /// Whether the link to the service is up.
    pub connected: bool,
    /// Unix seconds of the figures, for walltime left.
    pub now: f64,
}

/// A block, by its id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockLabel {
    block: String,
}

/// A state (of a block, of a worker).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// Every state a block is shown in, so a state with no block reads 0.
const BLOCK_STATES: [&str; 3] = ["pending", "running", "draining"];

impl Figures {
    /// The Prometheus text exposition of these figures.
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("hpfaas_agent");
        let gauge = |v: i64| {
            let g = Gauge::<i64>::default();
            g.set(v);
            g
        };
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        registry.register(
            "connected",
            "1 while the link to the service is up",
            gauge(i64::from(self.connected)),
        );
        registry.register(
            "outstanding_tasks",
            "Tasks accepted from the service and not finished",
            gauge(count(self.outstanding)),
        );
        registry.register(
            "queued_tasks",
            "Tasks waiting for a manager",
            gauge(count(self.load.queued)),
        );
        registry.register(
            "managers",
            "Connected managers",
            gauge(i64::from(self.load.managers)),
        );
        let workers = Family::<StateLabel, Gauge>::default();
        let idle = self.load.idle_workers.min(self.load.total_workers);
        for (state, n) in [("busy", self.load.total_workers - idle), ("idle", idle)] {
            workers
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::from(n));
        }
        registry.register("workers", "Worker slots, busy or idle", workers);
        let blocks = Family::<StateLabel, Gauge>::default();
        for state in BLOCK_STATES {
            blocks
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(0);
        }
        for b in &self.blocks {
            blocks
                .get_or_create(&StateLabel {
                    state: b.state.clone(),
                })
                .inc();
        }
        registry.register("blocks", "Blocks (pilot jobs) by state", blocks);
        let (managers, workers, in_hand, left) = (
            Family::<BlockLabel, Gauge>::default(),
            Family::<BlockLabel, Gauge>::default(),
            Family::<BlockLabel, Gauge>::default(),
            Family::<BlockLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default(),
        );
        for b in &self.load.blocks {
            let label = BlockLabel {
                block: b.block_id.clone(),
            };
            managers.get_or_create(&label).set(i64::from(b.managers));
            workers.get_or_create(&label).set(i64::from(b.workers));
            in_hand.get_or_create(&label).set(count(b.in_hand));
        }
        for b in &self.blocks {
            if let Some(deadline) = b.deadline.filter(|d| d.is_finite()) {
                let label = BlockLabel {
                    block: b.block_id.clone(),
                };
                left.get_or_create(&label)
                    .set((deadline - self.now).max(0.0));
            }
        }
        registry.register(
            "block_managers",
            "Connected managers of each block",
            managers,
        );
        registry.register("block_workers", "Worker slots of each block", workers);
        registry.register(
            "block_tasks_in_hand",
            "Tasks in the hands of each block's managers",
            in_hand,
        );
        registry.register(
            "block_walltime_left_seconds",
            "Seconds until each block's walltime ends, where known",
            left,
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// The token in `path`'s first line, trimmed (`[metrics] token_file`).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the metrics token file {} ([metrics] token_file)",
            path.display()
        )
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "the metrics token file {} ([metrics] token_file) is empty",
        path.display()
    );
    Ok(token)
}

/// The agent's exporter: the figures it serves, and the server task,
/// stopped when this is dropped.
pub struct Exporter {
    figures: Arc<Mutex<Figures>>,
    server: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl Exporter {
    /// Binds `addr` and serves `/metrics` there until dropped, to scrapes
    /// carrying `token` when one is given.
    pub async fn start(addr: SocketAddr, token: Option<String>) -> anyhow::Result<Exporter> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr} ([metrics] listen)"))?;
        let addr = listener.local_addr()?;
        let figures = Arc::new(Mutex::new(Figures::default()));
        let server = tokio::spawn(serve(listener, figures.clone(), token.map(Arc::from)));
        tracing::info!(%addr, "agent metrics listening");
        Ok(Exporter {
            figures,
            server,
            addr,
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the figures served.
    pub fn update(&self, figures: Figures) {
        *self.figures.lock().unwrap_or_else(|p| p.into_inner()) = figures;
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, figures: Arc<Mutex<Figures>>, token: Option<Arc<str>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait a moment rather than spin.
                tracing::warn!(error = %e, "metrics: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (figures, token) = (figures.clone(), token.clone());
        tokio::spawn(async move {
            let _slot = slot;
            answer(stream, &figures, token.as_deref()).await;
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, figures: &Mutex<Figures>, token: Option<&str>) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        Ok(None) => {
            respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                "bad request head\n",
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let (status, body) = route(&head, token, || {
        figures.lock().unwrap_or_else(|p| p.into_inner()).render()
    });
    let kind = if status.starts_with("200") {
        prometheus_text::CONTENT_TYPE
    } else {
        "text/plain"
    };
    respond(&mut stream, status, kind, &body).await;
}

/// The status and body for a request head: `GET /metrics` (with `token`
/// as its bearer token, when one is required) gets `render()`.
fn route(
    head: &str,
    token: Option<&str>,
    render: impl FnOnce() -> String,
) -> (&'static str, String) {
    let mut lines = head.lines();
    let mut words = lines.next().unwrap_or("").split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let authorized = token.is_none_or(|want| {
        lines
            .filter_map(|line| line.split_once(':'))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
            .filter_map(|(_, value)| value.trim().strip_prefix("Bearer "))
            .any(|given| same(given.trim(), want))
    });
    match (method, path) {
        ("GET", "/metrics") if !authorized => (
            "401 Unauthorized",
            "this agent's metrics want its bearer token ([metrics] token_file)\n".into(),
        ),
        ("GET", "/metrics") => ("200 OK", render()),
        ("GET", _) => ("404 Not Found", "only /metrics is served here\n".into()),
        _ => ("405 Method Not Allowed", "only GET is served here\n".into()),
    }
}

/// `a == b`, in a time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The request head, up to its blank line; `None` if it is longer than
/// [`MAX_HEAD_BYTES`], not text, or the client closed first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        // Only the new bytes, and the three before them, can complete the
        // blank line: the search stays linear in the head's size.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(from + end);
            return String::from_utf8(head).ok();
        }
        if head.len() > MAX_HEAD_BYTES {
            return None;
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) {
    let message = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(message.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::dispatch::BlockLoad;

    fn block(id: &str, state: &str, deadline: Option<f64>) -> BlockStatus {
        BlockStatus {
            block_id: id.into(),
            job_id: "42".into(),
            provider: "local".into(),
            state: state.into(),
            nodes: 1,
            managers: 1,
            submitted_at: 0.0,
            deadline,
        }
    }

    #[test]
    fn figures_show_blocks_by_state_and_each_blocks_load() {
        let figures = Figures {
            load: Load {
                managers: 2,
                total_workers: 8,
                idle_workers: 3,
                queued: 4,
                in_hand: 5,
                blocks: vec![BlockLoad {
                    block_id: "0".into(),
                    managers: 2,
                    workers: 8,
                    in_hand: 5,
                    ..Default::default()
                }],
            },
            blocks: vec![
                block("0", "running", Some(160.0)),
                block("1", "pending", None),
            ],
            outstanding: 9,
            connected: true,
            now: 100.0,
        };
        let text = figures.render();
        for line in [
            "hpfaas_agent_connected 1",
            "hpfaas_agent_outstanding_tasks 9",
            "hpfaas_agent_queued_tasks 4",
            "hpfaas_agent_managers 2",
            "hpfaas_agent_workers{state=\"busy\"} 5",
            "hpfaas_agent_workers{state=\"idle\"} 3",
            "hpfaas_agent_blocks{state=\"running\"} 1",
            "hpfaas_agent_blocks{state=\"pending\"} 1",
            "hpfaas_agent_blocks{state=\"draining\"} 0",
            "hpfaas_agent_block_managers{block=\"0\"} 2",
            "hpfaas_agent_block_workers{block=\"0\"} 8",
            "hpfaas_agent_block_tasks_in_hand{block=\"0\"} 5",
            "hpfaas_agent_block_walltime_left_seconds{block=\"0\"} 60.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn only_get_metrics_is_answered() {
        let render = || "figures".to_string();
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x", None, render),
            ("200 OK", "figures".into())
        );
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1", None, render).0, "200 OK");
        assert_eq!(route("GET / HTTP/1.1", None, render).0, "404 Not Found");
        assert_eq!(
            route("POST /metrics HTTP/1.1", None, render).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route("", None, render).0, "405 Method Not Allowed");
    }

    #[test]
    fn a_token_when_configured_is_required_exactly() {
        let render = || "figures".to_string();
        let token = Some("s3cret");
        for (head, status) in [
            ("GET /metrics HTTP/1.1\r\nHost: x", "401 Unauthorized"),
            (
                "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3creT",
                "401 Unauthorized",
            ),
            (
                "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret2",
                "401 Unauthorized",
            ),
            (
                "GET /metrics HTTP/1.1\r\nAuthorization: s3cret",
                "401 Unauthorized",
            ),
            (
                "GET /metrics HTTP/1.1\r\nauthorization:  Bearer s3cret ",
                "200 OK",
            ),
        ] {
            assert_eq!(route(head, token, render).0, status, "{head}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, " s3cret \n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "s3cret");
        std::fs::write(&path, "").unwrap();
        let err = read_token(&path).unwrap_err().to_string();
        assert!(err.contains("[metrics] token_file) is empty"), "{err}");
    }

    #[tokio::test]
    async fn serves_a_scrape_and_refuses_an_endless_head() {
        let exporter = Exporter::start("127.0.0.1:0".parse().unwrap(), None)
            .await
            .unwrap();
        exporter.update(Figures {
            outstanding: 7,
            ..Default::default()
        });
        let addr = exporter.local_addr();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(
            reply.contains("\nhpfaas_agent_outstanding_tasks 7\n"),
            "{reply}"
        );

        let mut client = TcpStream::connect(addr).await.unwrap();
        // A head that never ends is cut off at the limit.
        let junk = vec![b'a'; MAX_HEAD_BYTES + 2048];
        let _ = client.write_all(&junk).await;
        let mut reply = String::new();
        let _ = client.read_to_string(&mut reply).await;
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request"), "{reply}");
    }
}
