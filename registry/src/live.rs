//! In-memory state that is not worth a database row: which endpoints have a
//! live agent (and what it last reported), the per-endpoint wake-ups that
//! tell an agent's link new tasks were committed, the notifications that
//! tell result streams a result was stored (one channel per task group, so
//! a result wakes only the streams of its group), and how many result
//! streams each token holds open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hpfaas_protocol::endpoint::EndpointReport;
use tokio::sync::{broadcast, Notify};
use uuid::Uuid;

use crate::db::tasks::TaskRow;

/// A result was stored. Published from the writer's visibility hooks, so
/// events come in `result_seq` order.
#[derive(Debug, Clone)]
pub struct ResultEvent {
    /// The task's group.
    pub group: Uuid,
    /// The result's `result_seq`.
    pub seq: i64,
    /// The task's row when it is small enough to hand to the streams
    /// ([`crate::db::tasks::StoredResult::row`]); else they read it.
    pub row: Option<Arc<TaskRow>>,
}

/// How many result notifications a slow stream may fall behind before it
/// re-reads from the database instead. Each group with an open stream
/// holds a channel of this many slots.
const RESULT_CHANNEL_CAPACITY: usize = 256;

/// What is known about an endpoint's agent connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionDetails {
    /// Host the agent said it runs on.
    pub host: String,
    /// The agent's process id.
    pub pid: u32,
    /// Unix seconds when it connected.
    pub connected_since: f64,
    /// Unix seconds of its last heartbeat, if any.
    pub last_heartbeat: Option<f64>,
    /// Its last heartbeat report.
    pub report: EndpointReport,
}

#[derive(Default)]
struct Slot {
    wake: Arc<Notify>,
    /// (connection id, kick) of the live agent, if one is connected.
    live: Option<(u64, Arc<Notify>)>,
    details: Option<ConnectionDetails>,
}

/// Shared live state of the service.
pub struct Live {
    endpoints: Mutex<HashMap<Uuid, Slot>>,
    /// Result notifications of each task group that has a stream open.
    results: Mutex<HashMap<Uuid, broadcast::Sender<ResultEvent>>>,
    result_capacity: usize,
    /// Open result streams per token (SHA-256), only those with one.
    streams: Mutex<HashMap<String, usize>>,
    next_conn: AtomicU64,
}

/// Locks `m`; nothing under these locks can panic halfway, so a poisoned
/// lock is recovered.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Live {
    fn default() -> Self {
        Live::with_result_capacity(RESULT_CHANNEL_CAPACITY)
    }
}

impl Live {
    /// Live state whose result notifications hold `capacity` events.
    pub(crate) fn with_result_capacity(capacity: usize) -> Live {
        Live {
            endpoints: Mutex::new(HashMap::new()),
            results: Mutex::new(HashMap::new()),
            result_capacity: capacity.max(1),
            streams: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<Uuid, Slot>> {
        lock(&self.endpoints)
    }

    /// Marks `endpoint` connected from `host`/`pid`; if another agent holds
    /// it, returns that agent's (host, pid) instead.
    pub fn claim(
        self: &Arc<Self>,
        endpoint: Uuid,
        host: &str,
        pid: u32,
    ) -> Result<Claim, (String, u32)> {
        let mut slots = self.slots();
        let slot = slots.entry(endpoint).or_default();
        if slot.live.is_some() {
            let holder = slot
                .details
                .as_ref()
                .map(|d| (d.host.clone(), d.pid))
                .unwrap_or_default();
            return Err(holder);
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        slot.live = Some((id, kick.clone()));
        slot.details = Some(ConnectionDetails {
            host: host.to_string(),
            pid,
            connected_since: crate::time::now(),
            last_heartbeat: None,
            report: EndpointReport::default(),
        });
        Ok(Claim {
            live: self.clone(),
            endpoint,
            id,
            wake: slot.wake.clone(),
            kick,
        })
    }

    /// Tells the endpoint's link (if any) that new tasks were committed.
    pub fn poke(&self, endpoint: Uuid) {
        if let Some(slot) = self.slots().get(&endpoint) {
            slot.wake.notify_one();
        }
    }

    /// Closes the endpoint's live connection, if any (credential revoked).
    pub fn kick(&self, endpoint: Uuid) {
        if let Some((_, kick)) = self.slots().get(&endpoint).and_then(|s| s.live.as_ref()) {
            kick.notify_one();
        }
    }

    /// True while an agent is connected for `endpoint`.
    pub fn is_online(&self, endpoint: Uuid) -> bool {
        self.slots()
            .get(&endpoint)
            .is_some_and(|s| s.live.is_some())
    }

    /// Online flag and the last known connection details.
    pub fn status(&self, endpoint: Uuid) -> (bool, Option<ConnectionDetails>) {
        match self.slots().get(&endpoint) {
            Some(slot) => (slot.live.is_some(), slot.details.clone()),
            None => (false, None),
        }
    }

    /// Each endpoint with a live agent, and what it last reported.
    pub fn online_reports(&self) -> Vec<(Uuid, EndpointReport)> {
        self.slots()
            .iter()
            .filter(|(_, slot)| slot.live.is_some())
            .map(|(id, slot)| {
                let report = slot.details.as_ref().map(|d| d.report.clone());
                (*id, report.unwrap_or_default())
            })
            .collect()
    }

    /// Result streams open, over all tokens.
    pub fn open_streams(&self) -> usize {
        lock(&self.streams).values().sum()
    }

    /// Announces a stored result to the result streams of its group.
    pub fn publish_result(&self, event: ResultEvent) {
        // No channel: nobody is streaming that group.
        if let Some(tx) = lock(&self.results).get(&event.group) {
            let _ = tx.send(event);
        }
    }

    /// Subscribes to the stored-result notifications of `group`.
    pub fn subscribe_results(self: &Arc<Self>, group: Uuid) -> ResultSubscription {
        let mut groups = lock(&self.results);
        let rx = match groups.get(&group) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(self.result_capacity);
                groups.insert(group, tx);
                rx
            }
        };
        ResultSubscription {
            rx,
            group,
            live: self.clone(),
        }
    }

    /// Counts a result stream opened with the token of this SHA-256, or
    /// `None` if it already holds `limit` open.
    pub fn open_stream(self: &Arc<Self>, token_hash: &str, limit: usize) -> Option<StreamSlot> {
        let mut streams = lock(&self.streams);
        let open = streams.entry(token_hash.to_string()).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(StreamSlot {
            live: self.clone(),
            token_hash: token_hash.to_string(),
        })
    }
}

/// A result stream's notifications; the group's channel goes when its last
/// subscription does.
pub struct ResultSubscription {
    rx: broadcast::Receiver<ResultEvent>,
    group: Uuid,
    live: Arc<Live>,
}

impl ResultSubscription {
    /// The next notification of the group.
    pub async fn recv(&mut self) -> Result<ResultEvent, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for ResultSubscription {
    fn drop(&mut self) {
        let mut groups = lock(&self.live.results);
        // This subscription's receiver is the last one left.
        if groups
            .get(&self.group)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            groups.remove(&self.group);
        }
    }
}

/// One open result stream of a token; dropping it frees the place.
pub struct StreamSlot {
    live: Arc<Live>,
    token_hash: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = lock(&self.live.streams);
        if let Some(open) = streams.get_mut(&self.token_hash) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                streams.remove(&self.token_hash);
            }
        }
    }
}

/// Proof that this connection is the endpoint's one live agent; dropping it
/// marks the endpoint offline at once.
pub struct Claim {
    live: Arc<Live>,
    endpoint: Uuid,
    id: u64,
    wake: Arc<Notify>,
    kick: Arc<Notify>,
}

impl Claim {
    /// Notified when new tasks for this endpoint are committed.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Completes when the connection must close (credential revoked).
    pub async fn kicked(&self) {
        self.kick.notified().await
    }

    /// Records a heartbeat report.
    pub fn heartbeat(&self, report: EndpointReport) {
        let mut slots = self.live.slots();
        if let Some(slot) = slots.get_mut(&self.endpoint) {
            if slot.live.as_ref().is_some_and(|(id, _)| *id == self.id) {
                if let Some(d) = slot.details.as_mut() {
                    d.last_heartbeat = Some(crate::time::now());
                    d.report = report;
                }
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut slots = self.live.slots();
        if let Some(slot) = slots.get_mut(&self.endpoint) {
            if slot.live.as_ref().is_some_and(|(id, _)| *id == self.id) {
                slot.live = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_per_endpoint_and_release_on_drop() {
        let live = Arc::new(Live::default());
        let ep = Uuid::new_v4();
        let claim = live.claim(ep, "login1", 11).unwrap();
        assert!(live.is_online(ep));
        assert_eq!(
            live.claim(ep, "login2", 22).err(),
            Some(("login1".to_string(), 11))
        );
        claim.heartbeat(EndpointReport {
            managers: 3,
            ..Default::default()
        });
        assert_eq!(live.status(ep).1.unwrap().report.managers, 3);
        let online = live.online_reports();
        assert_eq!(
            (online.len(), online[0].0, online[0].1.managers),
            (1, ep, 3)
        );
        drop(claim);
        assert!(live.online_reports().is_empty());
        assert!(!live.is_online(ep));
        let (online, details) = live.status(ep);
        assert!(!online);
        assert_eq!(details.unwrap().host, "login1");
        assert!(live.claim(ep, "login2", 22).is_ok());
    }

    fn event(group: Uuid, seq: i64) -> ResultEvent {
        ResultEvent {
            group,
            seq,
            row: None,
        }
    }

    #[tokio::test]
    async fn a_result_wakes_only_the_streams_of_its_group() {
        let live = Arc::new(Live::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut on_a = live.subscribe_results(a);
        let mut also_on_a = live.subscribe_results(a);
        let mut on_b = live.subscribe_results(b);
        live.publish_result(event(b, 1));
        live.publish_result(event(a, 2));
        assert_eq!(on_a.recv().await.unwrap().seq, 2);
        assert_eq!(also_on_a.recv().await.unwrap().seq, 2);
        assert_eq!(on_b.recv().await.unwrap().seq, 1);
        assert!(
            on_a.rx.is_empty() && on_b.rx.is_empty(),
            "woken by another group"
        );
        // A group's channel lives as long as its streams.
        drop(on_a);
        assert_eq!(lock(&live.results).len(), 2);
        drop(also_on_a);
        drop(on_b);
        assert!(lock(&live.results).is_empty());
        live.publish_result(event(a, 3));
    }

    #[test]
    fn open_streams_are_counted_per_token() {
        let live = Arc::new(Live::default());
        let held: Vec<StreamSlot> = (0..3).map(|_| live.open_stream("t1", 3).unwrap()).collect();
        assert!(live.open_stream("t1", 3).is_none());
        let other = live.open_stream("t2", 3).unwrap();
        assert_eq!(live.open_streams(), 4);
        drop(held);
        assert!(live.open_stream("t1", 3).is_some());
        drop(other);
        assert!(lock(&live.streams).is_empty());
    }
}
