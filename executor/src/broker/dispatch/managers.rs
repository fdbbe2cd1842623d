//! The broker's record of each connected manager: what it offers, what it
//! holds, which code it has, when it last spoke, whether its block's
//! walltime is running out, and which MPI task holds it. Registration order
//! is kept so capacity is handed out round-robin and no manager starves.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use hpfaas_protocol::broker::ManagerInfo;
use hpfaas_protocol::task::{FunctionCode, TaskSpec};
use hpfaas_protocol::PROTOCOL_VERSION;
use uuid::Uuid;

/// ZeroMQ routing identity of a manager's DEALER socket.
pub type Identity = Vec<u8>;

/// One manager as the broker sees it (not the manager process itself,
/// [`crate::manager`]).
pub struct ConnectedManager {
    /// What the manager said when it registered.
    pub info: ManagerInfo,
    /// Tasks handed to it and not answered yet.
    pub in_hand: HashSet<Uuid>,
    /// Functions whose code it has been sent.
    known_functions: HashSet<Uuid>,
    /// When it last spoke.
    last_seen: Instant,
    /// The MPI task this manager is held for (waiting to start or running);
    /// it gets no other work meanwhile.
    pub held_for: Option<Uuid>,
}

impl ConnectedManager {
    fn new(info: ManagerInfo, now: Instant) -> Self {
        ConnectedManager {
            info,
            in_hand: HashSet::new(),
            known_functions: HashSet::new(),
            last_seen: now,
            held_for: None,
        }
    }

    /// Worker slots (and prefetch) not taken by a task in hand.
    pub fn free(&self) -> usize {
        (self.info.capacity() as usize).saturating_sub(self.in_hand.len())
    }

    /// True if its block has walltime left for a task needing `walltime` s
    /// at wall time `now` (Unix seconds).
    pub fn fits(&self, walltime: Option<f64>, now: f64) -> bool {
        match (walltime, self.info.deadline) {
            (Some(w), Some(deadline)) => deadline - now >= w,
            _ => true,
        }
    }

    /// True if it is within `drain_period` seconds of its deadline at `now`.
    pub fn draining(&self, drain_period: f64, now: f64) -> bool {
        self.info.deadline.is_some_and(|d| d - now <= drain_period)
    }

    /// Code of the tasks' functions it has not been sent yet, now counted as sent.
    pub fn unseen_code(
        &mut self,
        functions: &HashMap<Uuid, String>,
        tasks: &[TaskSpec],
    ) -> Vec<FunctionCode> {
        let mut out = Vec::new();
        for t in tasks {
            if self.known_functions.insert(t.function_id) {
                if let Some(code) = functions.get(&t.function_id) {
                    out.push(FunctionCode {
                        function_id: t.function_id,
                        code: code.clone(),
                    });
                }
            }
        }
        out
    }
}

/// Every connected manager, in registration order.
pub struct Managers {
    by_identity: HashMap<Identity, ConnectedManager>,
    /// Round-robin order of registration.
    order: Vec<Identity>,
    heartbeat_threshold: Duration,
    /// Seconds before a manager's deadline when it stops getting work.
    drain_period: f64,
}

impl Managers {
    /// No managers yet.
    pub fn new(heartbeat_threshold: Duration, drain_period: f64) -> Self {
        Managers {
            by_identity: HashMap::new(),
            order: Vec::new(),
            heartbeat_threshold,
            drain_period,
        }
    }

    /// Seconds before a manager's deadline when it stops getting work.
    pub fn drain_period(&self) -> f64 {
        self.drain_period
    }

    /// Accepts a manager, or says why not. A manager repeating its
    /// registration (it answered several `Reregister` prompts at once) is
    /// the same manager and keeps its tasks.
    pub fn register(
        &mut self,
        identity: Identity,
        info: ManagerInfo,
        now: Instant,
    ) -> Result<(), String> {
        if info.version != PROTOCOL_VERSION {
            return Err(hpfaas_protocol::version_mismatch("manager", info.version));
        }
        if info.capacity() == 0 {
            return Err("a manager must offer at least one worker".into());
        }
        if let Some(m) = self.by_identity.get_mut(&identity) {
            if m.info.manager_id != info.manager_id {
                return Err(format!(
                    "manager identity {} is already registered",
                    info.manager_id
                ));
            }
            m.info = info;
            m.last_seen = now;
            return Ok(());
        }
        self.order.push(identity.clone());
        self.by_identity
            .insert(identity, ConnectedManager::new(info, now));
        Ok(())
    }

    /// Forgets a manager; what it was.
    pub fn remove(&mut self, identity: &[u8]) -> Option<ConnectedManager> {
        let m = self.by_identity.remove(identity)?;
        self.order.retain(|i| i.as_slice() != identity);
        Some(m)
    }

    /// True if `identity` is a registered manager.
    pub fn contains(&self, identity: &[u8]) -> bool {
        self.by_identity.contains_key(identity)
    }

    /// The manager of this identity.
    pub fn get(&self, identity: &[u8]) -> Option<&ConnectedManager> {
        self.by_identity.get(identity)
    }

    /// The manager of this identity, to change.
    pub fn get_mut(&mut self, identity: &[u8]) -> Option<&mut ConnectedManager> {
        self.by_identity.get_mut(identity)
    }

    /// Every manager, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &ConnectedManager> {
        self.by_identity.values()
    }

    /// How many managers are connected.
    pub fn len(&self) -> usize {
        self.by_identity.len()
    }

    /// Records that a manager spoke.
    pub fn seen(&mut self, identity: &[u8], now: Instant) {
        if let Some(m) = self.by_identity.get_mut(identity) {
            m.last_seen = now;
        }
    }

    /// Managers silent for longer than the heartbeat threshold.
    pub fn silent(&self, now: Instant) -> Vec<Identity> {
        self.by_identity
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) > self.heartbeat_threshold)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Identities of the managers of a block.
    pub fn of_block(&self, block_id: &str) -> Vec<Identity> {
        self.by_identity
            .iter()
            .filter(|(_, m)| m.info.block_id == block_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Identities of every manager, in registration order.
    pub fn order(&self) -> &[Identity] {
        &self.order
    }

    /// The first manager, in registration order, with this task in hand.
    pub fn holder_of(&self, task_id: &Uuid) -> Option<&Identity> {
        self.order.iter().find(|i| {
            self.by_identity
                .get(*i)
                .is_some_and(|m| m.in_hand.contains(task_id))
        })
    }

    /// Calls `visit` on every manager in registration order until it breaks.
    pub fn each_in_order(
        &mut self,
        mut visit: impl FnMut(&Identity, &mut ConnectedManager) -> ControlFlow<()>,
    ) {
        for identity in &self.order {
            if let Some(m) = self.by_identity.get_mut(identity) {
                if visit(identity, m).is_break() {
                    break;
                }
            }
        }
    }

    /// Most managers registered by one block (0 with none).
    pub fn most_in_one_block(&self) -> u32 {
        let mut per_block: HashMap<&str, u32> = HashMap::new();
        for m in self.by_identity.values() {
            *per_block.entry(m.info.block_id.as_str()).or_default() += 1;
        }
        per_block.into_values().max().unwrap_or(0)
    }

    /// Lets go of the managers held for an MPI task; true if any was.
    pub fn release(&mut self, task_id: Uuid) -> bool {
        let mut any = false;
        for m in self.by_identity.values_mut() {
            if m.held_for == Some(task_id) {
                m.held_for = None;
                any = true;
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{info, tasks};
    use super::*;

    #[test]
    fn registration_keeps_order_and_refuses_an_identity_taken_by_another() {
        let now = Instant::now();
        let mut ms = Managers::new(Duration::from_secs(10), 60.0);
        for name in ["b", "a", "c"] {
            ms.register(name.as_bytes().to_vec(), info(name, "0", 1, 0), now)
                .unwrap();
        }
        assert_eq!(ms.order(), [b"b".to_vec(), b"a".to_vec(), b"c".to_vec()]);
        ms.register(b"a".to_vec(), info("a", "1", 2, 0), now)
            .unwrap();
        assert_eq!(ms.len(), 3, "a repeated registration is the same manager");
        assert_eq!(ms.get(b"a").unwrap().info.block_id, "1");
        let e = ms
            .register(b"a".to_vec(), info("x", "0", 1, 0), now)
            .unwrap_err();
        assert!(e.contains("already registered"), "{e}");
        assert!(ms.remove(b"b").is_some());
        assert!(ms.remove(b"b").is_none());
        assert_eq!(ms.order(), [b"a".to_vec(), b"c".to_vec()]);
        assert!(!ms.contains(b"b"));
    }

    #[test]
    fn silence_blocks_and_holders_are_found() {
        let now = Instant::now();
        let mut ms = Managers::new(Duration::from_secs(1), 0.0);
        ms.register(b"a".to_vec(), info("a", "x", 1, 0), now)
            .unwrap();
        ms.register(b"b".to_vec(), info("b", "y", 1, 0), now)
            .unwrap();
        ms.register(b"c".to_vec(), info("c", "y", 1, 0), now)
            .unwrap();
        let later = now + Duration::from_secs(2);
        ms.seen(b"b", later);
        let mut silent = ms.silent(later);
        silent.sort();
        assert_eq!(silent, vec![b"a".to_vec(), b"c".to_vec()]);
        let mut of_y = ms.of_block("y");
        of_y.sort();
        assert_eq!(of_y, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(ms.most_in_one_block(), 2);
        let task = Uuid::new_v4();
        ms.get_mut(b"c").unwrap().in_hand.insert(task);
        assert_eq!(ms.holder_of(&task), Some(&b"c".to_vec()));
        assert_eq!(ms.holder_of(&Uuid::new_v4()), None);
    }

    #[test]
    fn each_in_order_visits_in_registration_order_until_told_to_stop() {
        let now = Instant::now();
        let mut ms = Managers::new(Duration::from_secs(1), 0.0);
        for name in ["m2", "m0", "m1"] {
            ms.register(name.as_bytes().to_vec(), info(name, "0", 1, 0), now)
                .unwrap();
        }
        let mut seen = Vec::new();
        ms.each_in_order(|id, m| {
            seen.push(id.clone());
            m.held_for = Some(Uuid::nil());
            if seen.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, vec![b"m2".to_vec(), b"m0".to_vec()]);
        assert!(ms.get(b"m1").unwrap().held_for.is_none());
        assert!(ms.release(Uuid::nil()));
        assert!(!ms.release(Uuid::nil()), "nothing is held any more");
    }

    #[test]
    fn a_manager_knows_its_room_walltime_drain_and_code() {
        let mut i = info("a", "0", 2, 1);
        i.deadline = Some(1000.0);
        let mut m = ConnectedManager::new(i, Instant::now());
        assert_eq!(m.free(), 3);
        m.in_hand.insert(Uuid::new_v4());
        assert_eq!(m.free(), 2);
        assert!(m.fits(Some(100.0), 900.0) && !m.fits(Some(101.0), 900.0));
        assert!(
            m.fits(None, 2000.0),
            "a task without a walltime fits anywhere"
        );
        assert!(!m.draining(60.0, 939.0) && m.draining(60.0, 940.0));
        let f = Uuid::new_v4();
        let functions = HashMap::from([(f, "code".to_string())]);
        let ts = tasks(2, f);
        assert_eq!(m.unseen_code(&functions, &ts).len(), 1, "once per batch");
        assert!(m.unseen_code(&functions, &ts).is_empty(), "and never again");
    }
}
