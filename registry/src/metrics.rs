//! The service's Prometheus metrics: the counters and histograms the hot
//! path moves (a few atomic operations per batch, one histogram observation
//! per task), the figures read at scrape time from state the service keeps
//! anyway ([`Snapshot`]), and their exposition in the Prometheus text format.
//!
//! Served on a listener of its own (`--metrics-listen`), never on the
//! service's port: the figures name endpoints, and a scrape carries no user
//! token; it may be asked for a token of its own ([`token_hash_from_file`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use uuid::Uuid;

/// The SHA-256 (hex) of the metrics token in `path` (its first line,
/// trimmed), which a scrape must then carry as a bearer token.
pub fn token_hash_from_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the metrics token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the metrics token file {} is empty",
        path.display()
    );
    Ok(crate::token::hash_token(token))
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Buckets of the task latency histograms, in seconds: 1 ms to about 2.5 min.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.5, 14)
}

/// One endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

/// One endpoint and a state (of its tasks, blocks or workers).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    endpoint: String,
    state: String,
}

/// What the hot path moves.
pub struct Metrics {
    registry: Registry,
    submitted: Family<EndpointLabel, Counter>,
    finished: Family<StateLabels, Counter>,
    end_to_end: Histogram,
    dispatch_to_start: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The service's metrics; `commit_seconds` is the database writer's own
    /// histogram ([`crate::db::Db::commit_seconds`]).
    pub fn new(commit_seconds: Histogram) -> Metrics {
        let mut registry = Registry::with_prefix("hpfaas");
        let submitted = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "tasks_submitted",
            "Tasks accepted by submits, per endpoint",
            submitted.clone(),
        );
        let finished = Family::<StateLabels, Counter>::default();
        registry.register(
            "tasks_finished",
            "Tasks that reached a final state (success, failed, cancelled), per endpoint",
            finished.clone(),
        );
        let end_to_end = Histogram::new(latency_buckets());
        registry.register(
            "task_end_to_end_seconds",
            "Seconds from a task's submit to its result being stored",
            end_to_end.clone(),
        );
        let dispatch_to_start = Histogram::new(latency_buckets());
        registry.register(
            "task_dispatch_to_start_seconds",
            "Seconds from a task being sent to its endpoint's agent to it running on a worker",
            dispatch_to_start.clone(),
        );
        registry.register(
            "db_commit_seconds",
            "Seconds one group commit of the database writer takes (BEGIN to COMMIT)",
            commit_seconds,
        );
        Metrics {
            registry,
            submitted,
            finished,
            end_to_end,
            dispatch_to_start,
        }
    }

    /// `count` tasks for `endpoint` were committed by one submit.
    pub fn submitted(&self, endpoint: Uuid, count: u64) {
        if count > 0 {
            self.submitted
                .get_or_create(&EndpointLabel {
                    endpoint: endpoint.to_string(),
                })
                .inc_by(count);
        }
    }

    /// `count` tasks of `endpoint` ended in `state` (one call per batch).
    pub fn finished(&self, endpoint: Uuid, state: &str, count: u64) {
        if count > 0 {
            self.finished
                .get_or_create(&StateLabels {
                    endpoint: endpoint.to_string(),
                    state: state.to_string(),
                })
                .inc_by(count);
        }
    }

    /// A task's result was stored `seconds` after its submit.
    pub fn end_to_end(&self, seconds: f64) {
        if seconds.is_finite() {
            self.end_to_end.observe(seconds.max(0.0));
        }
    }

    /// A task started running `seconds` after it was sent to its agent.
    pub fn dispatch_to_start(&self, seconds: f64) {
        self.dispatch_to_start.observe(seconds.max(0.0));
    }

    /// The exposition: the counters and histograms, then `snapshot`'s gauges.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_text::encode(&mut out, &snapshot.registry());
        out
    }
}

/// Figures read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Non-final tasks per (endpoint, state).
    pub tasks: Vec<(Uuid, String, u64)>,
    /// Each endpoint with a live agent and its last heartbeat report.
    pub online: Vec<(Uuid, hpfaas_protocol::endpoint::EndpointReport)>,
    /// Result streams open.
    pub open_streams: usize,
    /// Endpoint agents' WebSocket links open.
    pub open_links: usize,
}

impl Snapshot {
    /// The gauges, in a registry of their own made for this scrape.
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("hpfaas");
        let tasks = Family::<StateLabels, Gauge>::default();
        let queued = Family::<EndpointLabel, Gauge>::default();
        for (endpoint, state, n) in &self.tasks {
            let n = i64::try_from(*n).unwrap_or(i64::MAX);
            let endpoint = endpoint.to_string();
            tasks
                .get_or_create(&StateLabels {
                    endpoint: endpoint.clone(),
                    state: state.clone(),
                })
                .inc_by(n);
            queued.get_or_create(&EndpointLabel { endpoint }).inc_by(n);
        }
        registry.register("tasks", "Tasks not final, per endpoint and state", tasks);
        registry.register(
            "endpoint_queue_depth",
            "Tasks not final (queued, on their way, or running), per endpoint",
            queued,
        );
        let online = Gauge::<i64>::default();
        online.set(self.online.len() as i64);
        registry.register(
            "endpoints_online",
            "Endpoints with a connected agent",
            online,
        );
        let (blocks, workers, managers, outstanding) = (
            Family::<StateLabels, Gauge>::default(),
            Family::<StateLabels, Gauge>::default(),
            Family::<EndpointLabel, Gauge>::default(),
            Family::<EndpointLabel, Gauge>::default(),
        );
        for (endpoint, report) in &self.online {
            let endpoint = endpoint.to_string();
            let label = |state: &str| StateLabels {
                endpoint: endpoint.clone(),
                state: state.to_string(),
            };
            for (state, n) in block_states(report) {
                blocks.get_or_create(&label(state)).set(n);
            }
            let idle = i64::from(report.idle_workers.min(report.total_workers));
            let busy = i64::from(report.total_workers) - idle;
            workers.get_or_create(&label("busy")).set(busy);
            workers.get_or_create(&label("idle")).set(idle);
            let endpoint = EndpointLabel { endpoint };
            managers
                .get_or_create(&endpoint)
                .set(i64::from(report.managers));
            outstanding
                .get_or_create(&endpoint)
                .set(i64::try_from(report.outstanding_tasks).unwrap_or(i64::MAX));
        }
        registry.register(
            "endpoint_blocks",
            "Blocks (pilot jobs) per online endpoint and block state, from its last heartbeat",
            blocks,
        );
        registry.register(
            "endpoint_workers",
            "Worker slots per online endpoint, busy or idle, from its last heartbeat",
            workers,
        );
        registry.register(
            "endpoint_managers",
            "Connected managers per online endpoint, from its last heartbeat",
            managers,
        );
        registry.register(
            "endpoint_outstanding_tasks",
            "Tasks an online endpoint's agent holds unfinished, from its last heartbeat",
            outstanding,
        );
        let streams = Gauge::<i64>::default();
        streams.set(i64::try_from(self.open_streams).unwrap_or(i64::MAX));
        registry.register("result_streams_open", "Result streams open", streams);
        let links = Gauge::<i64>::default();
        links.set(i64::try_from(self.open_links).unwrap_or(i64::MAX));
        registry.register(
            "endpoint_links_open",
            "Endpoint agents' WebSocket links open (including ones still saying hello)",
            links,
        );
        registry
    }
}

/// Blocks of an endpoint by the state its heartbeat reports for each
/// (`pending`, `running`, `draining`; anything else an agent sends counts as
/// `other`, so an agent cannot grow the label set). An older agent reports
/// only a count: `active` then.
fn block_states(report: &hpfaas_protocol::endpoint::EndpointReport) -> Vec<(&'static str, i64)> {
    if report.blocks.is_empty() {
        return vec![("active", i64::from(report.active_blocks))];
    }
    ["pending", "running", "draining", "other"]
        .into_iter()
        .map(|state| {
            let known = |s: &str| matches!(s, "pending" | "running" | "draining");
            let n = report
                .blocks
                .iter()
                .filter(|b| b.state == state || (state == "other" && !known(&b.state)))
                .count();
            (state, n as i64)
        })
        .collect()
}

/// Pages of tasks most recently sent on one agent link and when, so the
/// time from dispatch to start is found from a task's `rid` without keeping
/// anything per task: pages are noted by their highest `rid`, which grows
/// unless priorities reorder the queue (a task sent out of `rid` order is
/// then timed from an earlier page: its figure is an upper bound).
#[derive(Debug, Default)]
pub struct DispatchTimes {
    /// (last rid of a page, when it was sent), oldest first.
    pages: Mutex<VecDeque<(i64, Instant)>>,
}

/// Pages [`DispatchTimes`] remembers; older tasks starting are not timed.
const DISPATCH_PAGES_KEPT: usize = 4096;

impl DispatchTimes {
    /// A page of tasks up to `last_rid` was sent now.
    pub fn sent(&self, last_rid: i64) {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        if pages.back().is_some_and(|(rid, _)| *rid >= last_rid) {
            return; // nothing new in this page
        }
        if pages.len() == DISPATCH_PAGES_KEPT {
            pages.pop_front();
        }
        pages.push_back((last_rid, Instant::now()));
    }

    /// When the task of `rid` was sent, if this link sent it recently.
    pub fn sent_at(&self, rid: i64) -> Option<Instant> {
        let pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        let i = pages.partition_point(|(last, _)| *last < rid);
        // The first page sent after the oldest one kept starts past its
        // rid; earlier rids may have been in pages already forgotten.
        if i == 0
            && pages
                .front()
                .is_some_and(|_| pages.len() == DISPATCH_PAGES_KEPT)
        {
            return None;
        }
        pages.get(i).map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_counted_by_the_state_each_reports_within_a_fixed_set() {
        use hpfaas_protocol::endpoint::{BlockReport, EndpointReport};
        let block = |state: &str| BlockReport {
            state: state.into(),
            ..BlockReport::default()
        };
        let report = EndpointReport {
            active_blocks: 4,
            blocks: vec![
                block("running"),
                block("running"),
                block("pending"),
                block("x\ny"),
            ],
            ..EndpointReport::default()
        };
        assert_eq!(
            block_states(&report),
            [
                ("pending", 1),
                ("running", 2),
                ("draining", 0),
                ("other", 1)
            ]
        );
        let older = EndpointReport {
            active_blocks: 2,
            ..EndpointReport::default()
        };
        assert_eq!(block_states(&older), [("active", 2)]);
    }
    use hpfaas_protocol::endpoint::EndpointReport;

    #[test]
    fn a_metrics_token_file_gives_its_first_lines_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "  secret \nrest\n").unwrap();
        assert_eq!(
            token_hash_from_file(&path).unwrap(),
            crate::token::hash_token("secret")
        );
        std::fs::write(&path, "\n").unwrap();
        let err = token_hash_from_file(&path).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        let err = token_hash_from_file(&dir.path().join("gone"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read the metrics token file"), "{err}");
    }

    #[test]
    fn dispatch_times_find_the_page_that_held_a_task() {
        let times = DispatchTimes::default();
        assert_eq!(times.sent_at(1), None);
        times.sent(10);
        let first = times.sent_at(3).unwrap();
        times.sent(10); // a page with nothing new
        times.sent(20);
        assert_eq!(times.sent_at(10), Some(first));
        let second = times.sent_at(11).unwrap();
        assert!(second >= first);
        assert_eq!(times.sent_at(20), Some(second));
        assert_eq!(times.sent_at(21), None, "not sent yet");
    }

    #[test]
    fn dispatch_times_forget_old_pages() {
        let times = DispatchTimes::default();
        for page in 1..=(DISPATCH_PAGES_KEPT as i64 + 1) {
            times.sent(page * 10);
        }
        assert_eq!(times.sent_at(5), None, "its page was forgotten");
        assert!(times.sent_at(25).is_some());
    }

    #[test]
    fn render_shows_counters_and_snapshot_gauges() {
        let commit = Histogram::new([0.001, 0.01]);
        commit.observe(0.002);
        let metrics = Metrics::new(commit);
        let ep = Uuid::new_v4();
        metrics.submitted(ep, 5);
        metrics.submitted(ep, 0);
        metrics.finished(ep, "success", 3);
        metrics.end_to_end(0.5);
        metrics.end_to_end(f64::NAN);
        let snapshot = Snapshot {
            tasks: vec![(ep, "received".into(), 2)],
            online: vec![(
                ep,
                EndpointReport {
                    managers: 1,
                    total_workers: 4,
                    idle_workers: 1,
                    outstanding_tasks: 3,
                    active_blocks: 1,
                    ..Default::default()
                },
            )],
            open_streams: 1,
            open_links: 1,
        };
        let text = metrics.render(&snapshot);
        for line in [
            format!("hpfaas_tasks_submitted_total{{endpoint=\"{ep}\"}} 5"),
            format!("hpfaas_tasks_finished_total{{endpoint=\"{ep}\",state=\"success\"}} 3"),
            "hpfaas_task_end_to_end_seconds_count 1".to_string(),
            "hpfaas_db_commit_seconds_count 1".to_string(),
            format!("hpfaas_tasks{{endpoint=\"{ep}\",state=\"received\"}} 2"),
            format!("hpfaas_endpoint_queue_depth{{endpoint=\"{ep}\"}} 2"),
            "hpfaas_endpoints_online 1".to_string(),
            format!("hpfaas_endpoint_blocks{{endpoint=\"{ep}\",state=\"active\"}} 1"),
            format!("hpfaas_endpoint_workers{{endpoint=\"{ep}\",state=\"busy\"}} 3"),
            format!("hpfaas_endpoint_workers{{endpoint=\"{ep}\",state=\"idle\"}} 1"),
            "hpfaas_result_streams_open 1".to_string(),
            "hpfaas_endpoint_links_open 1".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
