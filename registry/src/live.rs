//! In-memory state that is not worth a database row: which endpoints have a
//! live agent (and what it last reported), the per-endpoint wake-ups that
//! tell an agent's link new tasks were committed, and the notifications that
//! tell result streams a result was stored.

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
/// re-reads from the database instead.
const RESULT_CHANNEL_CAPACITY: usize = 4096;

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
    results: broadcast::Sender<ResultEvent>,
    next_conn: AtomicU64,
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
            results: broadcast::channel(capacity).0,
            next_conn: AtomicU64::new(1),
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<Uuid, Slot>> {
        // Nothing under this lock can panic halfway; recover from poisoning.
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
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
            connected_since: crate::db::now(),
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

    /// Announces a stored result to the result streams.
    pub fn publish_result(&self, event: ResultEvent) {
        // No subscriber is not an error: nobody is streaming that group.
        let _ = self.results.send(event);
    }

    /// Subscribes to stored-result notifications.
    pub fn subscribe_results(&self) -> broadcast::Receiver<ResultEvent> {
        self.results.subscribe()
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
                    d.last_heartbeat = Some(crate::db::now());
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
        drop(claim);
        assert!(!live.is_online(ep));
        let (online, details) = live.status(ep);
        assert!(!online);
        assert_eq!(details.unwrap().host, "login1");
        assert!(live.claim(ep, "login2", 22).is_ok());
    }
}
