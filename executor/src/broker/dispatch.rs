//! The broker's bookkeeping, free of sockets and clocks so it can be tested
//! directly: which managers exist, what each holds, what is queued, and what
//! happens to a manager's tasks when it is lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use hpfaas_protocol::broker::{BrokerMessage, ManagerInfo};
use hpfaas_protocol::task::{ExceptionInfo, FunctionCode, Outcome, TaskResult, TaskSpec};
use hpfaas_protocol::PROTOCOL_VERSION;
use uuid::Uuid;

/// ZeroMQ routing identity of a manager's DEALER socket.
pub type Identity = Vec<u8>;

/// Exception type of a task whose manager vanished.
pub const MANAGER_LOST: &str = "ManagerLost";
/// Exception type of a task whose worker process died.
pub const WORKER_LOST: &str = "WorkerLost";

struct Manager {
    info: ManagerInfo,
    in_hand: HashSet<Uuid>,
    known_functions: HashSet<Uuid>,
    last_seen: Instant,
}

/// Queue, managers and retry budgets of one endpoint's broker.
pub struct Dispatcher {
    functions: HashMap<Uuid, String>,
    queue: VecDeque<TaskSpec>,
    /// Every task the broker owns (queued or in a manager's hands).
    tasks: HashMap<Uuid, TaskSpec>,
    attempts: HashMap<Uuid, u32>,
    managers: HashMap<Identity, Manager>,
    /// Round-robin order of registration, so no manager starves.
    order: Vec<Identity>,
    max_retries: u32,
    heartbeat_threshold: Duration,
    /// Seconds before a manager's deadline when it stops getting work.
    drain_period: f64,
}

/// One block as the broker sees it through its managers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockLoad {
    /// The block's id.
    pub block_id: String,
    /// Batch-system job id the managers reported.
    pub job_id: Option<String>,
    /// Connected managers of the block.
    pub managers: u32,
    /// Worker slots.
    pub workers: u32,
    /// Tasks in the managers' hands.
    pub in_hand: u64,
    /// True once the block is within its drain period: it takes no new work.
    pub draining: bool,
    /// Earliest walltime deadline of its managers (Unix seconds).
    pub deadline: Option<f64>,
}

/// Numbers the endpoint reports and scales on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Connected managers.
    pub managers: u32,
    /// Worker slots across managers.
    pub total_workers: u32,
    /// Worker slots without a task.
    pub idle_workers: u32,
    /// Tasks waiting for a manager.
    pub queued: u64,
    /// Tasks in managers' hands.
    pub in_hand: u64,
    /// Blocks with at least one registered manager.
    pub blocks: Vec<BlockLoad>,
}

impl Dispatcher {
    /// An empty broker state.
    pub fn new(max_retries: u32, heartbeat_threshold: Duration, drain_period: f64) -> Self {
        Dispatcher {
            functions: HashMap::new(),
            queue: VecDeque::new(),
            tasks: HashMap::new(),
            attempts: HashMap::new(),
            managers: HashMap::new(),
            order: Vec::new(),
            max_retries,
            heartbeat_threshold,
            drain_period,
        }
    }

    /// Accepts a manager, or says why not.
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
        if let Some(m) = self.managers.get_mut(&identity) {
            // A manager repeating its registration (it answered several
            // Reregister prompts at once) is the same manager: keep its tasks.
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
        self.managers.insert(
            identity,
            Manager {
                info,
                in_hand: HashSet::new(),
                known_functions: HashSet::new(),
                last_seen: now,
            },
        );
        Ok(())
    }

    /// True if `identity` is a registered manager.
    pub fn is_registered(&self, identity: &[u8]) -> bool {
        self.managers.contains_key(identity)
    }

    /// Records that a manager spoke.
    pub fn seen(&mut self, identity: &[u8], now: Instant) {
        if let Some(m) = self.managers.get_mut(identity) {
            m.last_seen = now;
        }
    }

    /// Queues tasks (a task already owned is ignored: delivery is at least once).
    pub fn submit(&mut self, functions: Vec<FunctionCode>, tasks: Vec<TaskSpec>) {
        for f in functions {
            self.functions.insert(f.function_id, f.code);
        }
        for t in tasks {
            if self.tasks.contains_key(&t.task_id) {
                continue;
            }
            self.tasks.insert(t.task_id, t.clone());
            self.queue.push_back(t);
        }
    }

    /// Takes finished tasks from a manager; returns the results to report.
    /// A `WorkerLost` failure with retries left is re-queued instead.
    pub fn complete(&mut self, identity: &[u8], results: Vec<TaskResult>) -> Vec<TaskResult> {
        let mut report = Vec::with_capacity(results.len());
        for r in results {
            if let Some(m) = self.managers.get_mut(identity) {
                m.in_hand.remove(&r.task_id);
            }
            let system_failure = matches!(&r.outcome, Outcome::Failed { exception } if exception.exc_type == WORKER_LOST);
            if system_failure && self.retry(r.task_id) {
                continue;
            }
            if self.tasks.remove(&r.task_id).is_some() {
                self.attempts.remove(&r.task_id);
                report.push(r);
            }
        }
        report
    }

    /// Re-queues a task if its retry budget allows; false if it is spent.
    fn retry(&mut self, task_id: Uuid) -> bool {
        let Some(spec) = self.tasks.get(&task_id) else {
            return false;
        };
        let attempts = self.attempts.entry(task_id).or_insert(0);
        if *attempts >= self.max_retries {
            return false;
        }
        *attempts += 1;
        self.queue.push_front(spec.clone());
        true
    }

    /// Removes a manager; its tasks are retried or failed with `ManagerLost`.
    pub fn remove_manager(&mut self, identity: &[u8], why: &str) -> Vec<TaskResult> {
        let Some(m) = self.managers.remove(identity) else {
            return Vec::new();
        };
        self.order.retain(|i| i.as_slice() != identity);
        let mut failed = Vec::new();
        for task_id in m.in_hand {
            if !self.retry(task_id) && self.tasks.remove(&task_id).is_some() {
                self.attempts.remove(&task_id);
                let message = format!(
                    "manager {} (block {}, host {}) was lost while running this task: {why}",
                    m.info.manager_id, m.info.block_id, m.info.host
                );
                failed.push(TaskResult::failed(
                    task_id,
                    ExceptionInfo::system(MANAGER_LOST, message),
                ));
            }
        }
        failed
    }

    /// Managers silent for longer than the heartbeat threshold.
    pub fn silent_managers(&self, now: Instant) -> Vec<Identity> {
        self.managers
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) > self.heartbeat_threshold)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Identities of the managers of a block.
    pub fn managers_of_block(&self, block_id: &str) -> Vec<Identity> {
        self.managers
            .iter()
            .filter(|(_, m)| m.info.block_id == block_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Identities of every manager.
    pub fn all_managers(&self) -> Vec<Identity> {
        self.order.clone()
    }

    /// True if the manager is within its drain period at wall time `now`.
    fn draining(&self, m: &Manager, now: f64) -> bool {
        m.info
            .deadline
            .is_some_and(|d| d - now <= self.drain_period)
    }

    /// Hands queued tasks to managers with free capacity, round-robin;
    /// `now` is the wall clock (Unix seconds) for walltime draining.
    pub fn dispatch(&mut self, now: f64) -> Vec<(Identity, BrokerMessage)> {
        let mut out = Vec::new();
        // A task re-queued after a restart may have finished meanwhile.
        while self
            .queue
            .front()
            .is_some_and(|t| !self.tasks.contains_key(&t.task_id))
        {
            self.queue.pop_front();
        }
        if self.queue.is_empty() {
            return out;
        }
        for identity in self.order.clone() {
            if self.queue.is_empty() {
                break;
            }
            let Some(m) = self.managers.get(&identity) else {
                continue;
            };
            if self.draining(m, now) {
                continue;
            }
            let free = (m.info.capacity() as usize).saturating_sub(m.in_hand.len());
            let mut tasks = Vec::with_capacity(free.min(self.queue.len()));
            while tasks.len() < free {
                let Some(t) = self.queue.pop_front() else {
                    break;
                };
                if self.tasks.contains_key(&t.task_id) {
                    tasks.push(t);
                }
            }
            if tasks.is_empty() {
                continue;
            }
            let m = self.managers.get_mut(&identity).expect("checked above");
            let mut functions = Vec::new();
            for t in &tasks {
                m.in_hand.insert(t.task_id);
                if m.known_functions.insert(t.function_id) {
                    if let Some(code) = self.functions.get(&t.function_id) {
                        functions.push(FunctionCode {
                            function_id: t.function_id,
                            code: code.clone(),
                        });
                    }
                }
            }
            out.push((identity, BrokerMessage::Tasks { functions, tasks }));
        }
        out
    }

    /// Current load at wall time `now` (Unix seconds).
    pub fn load(&self, now: f64) -> Load {
        let mut blocks: Vec<BlockLoad> = Vec::new();
        for m in self.managers.values() {
            let i = match blocks.iter().position(|b| b.block_id == m.info.block_id) {
                Some(i) => i,
                None => {
                    blocks.push(BlockLoad {
                        block_id: m.info.block_id.clone(),
                        ..Default::default()
                    });
                    blocks.len() - 1
                }
            };
            let b = &mut blocks[i];
            b.job_id = b.job_id.take().or(m.info.job_id.clone());
            b.managers += 1;
            b.workers += m.info.workers;
            b.in_hand += m.in_hand.len() as u64;
            b.draining |= self.draining(m, now);
            b.deadline = match (b.deadline, m.info.deadline) {
                (Some(a), Some(c)) => Some(a.min(c)),
                (a, c) => a.or(c),
            };
        }
        blocks.sort_by(|a, b| a.block_id.cmp(&b.block_id));
        let total: u32 = self.managers.values().map(|m| m.info.workers).sum();
        let busy: u32 = self
            .managers
            .values()
            .map(|m| (m.in_hand.len() as u32).min(m.info.workers))
            .sum();
        Load {
            managers: self.managers.len() as u32,
            total_workers: total,
            idle_workers: total - busy,
            queued: self.queue.len() as u64,
            in_hand: self.managers.values().map(|m| m.in_hand.len() as u64).sum(),
            blocks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, block: &str, workers: u32, prefetch: u32) -> ManagerInfo {
        ManagerInfo {
            version: PROTOCOL_VERSION,
            manager_id: id.into(),
            block_id: block.into(),
            job_id: None,
            host: "node".into(),
            rank: 0,
            pid: 1,
            cores: workers,
            workers,
            prefetch,
            deadline: None,
        }
    }

    fn tasks(n: usize, function_id: Uuid) -> Vec<TaskSpec> {
        (0..n)
            .map(|_| TaskSpec {
                task_id: Uuid::new_v4(),
                function_id,
                payload: String::new(),
                result_serializers: vec![],
                resource_spec: None,
            })
            .collect()
    }

    fn sent(msgs: &[(Identity, BrokerMessage)], who: &[u8]) -> (usize, usize) {
        msgs.iter()
            .filter(|(id, _)| id.as_slice() == who)
            .map(|(_, m)| match m {
                BrokerMessage::Tasks { functions, tasks } => (functions.len(), tasks.len()),
                _ => (0, 0),
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    fn ok(task_id: Uuid) -> TaskResult {
        TaskResult {
            task_id,
            outcome: Outcome::Success {
                result: "00\n".into(),
            },
            completed_at: 0.0,
        }
    }

    #[test]
    fn dispatch_respects_capacity_and_sends_code_once() {
        let now = Instant::now();
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0);
        d.register(b"a".to_vec(), info("a", "0", 2, 1), now)
            .unwrap();
        d.register(b"b".to_vec(), info("b", "0", 1, 0), now)
            .unwrap();
        let f = Uuid::new_v4();
        let ts = tasks(10, f);
        d.submit(
            vec![FunctionCode {
                function_id: f,
                code: "code".into(),
            }],
            ts.clone(),
        );
        let out = d.dispatch(0.0);
        assert_eq!(sent(&out, b"a"), (1, 3));
        assert_eq!(sent(&out, b"b"), (1, 1));
        assert_eq!(d.load(0.0).queued, 6);
        assert_eq!(d.load(0.0).idle_workers, 0);
        assert!(d.dispatch(0.0).is_empty(), "no capacity left");
        let first: Vec<Uuid> = match &out[0].1 {
            BrokerMessage::Tasks { tasks, .. } => tasks.iter().map(|t| t.task_id).collect(),
            _ => unreachable!(),
        };
        let reported = d.complete(b"a", first.iter().map(|&t| ok(t)).collect());
        assert_eq!(reported.len(), 3);
        let out = d.dispatch(0.0);
        assert_eq!(sent(&out, b"a"), (0, 3), "code is not sent twice");
    }

    #[test]
    fn draining_managers_get_no_work_and_say_so() {
        let now = Instant::now();
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0);
        let mut near = info("near", "1", 1, 0);
        near.deadline = Some(1000.0);
        d.register(b"near".to_vec(), near, now).unwrap();
        d.register(b"far".to_vec(), info("far", "2", 1, 0), now)
            .unwrap();
        d.submit(vec![], tasks(4, Uuid::new_v4()));
        let out = d.dispatch(950.0);
        assert_eq!(sent(&out, b"near"), (0, 0), "within 60 s of its deadline");
        assert_eq!(sent(&out, b"far"), (0, 1));
        let load = d.load(950.0);
        let near = load.blocks.iter().find(|b| b.block_id == "1").unwrap();
        assert!(near.draining);
        assert_eq!(near.deadline, Some(1000.0));
        assert!(
            !load
                .blocks
                .iter()
                .find(|b| b.block_id == "2")
                .unwrap()
                .draining
        );
        assert_eq!(
            sent(&d.dispatch(100.0), b"near"),
            (0, 1),
            "far from it: work"
        );
    }

    #[test]
    fn duplicate_submissions_are_ignored() {
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0);
        let ts = tasks(3, Uuid::new_v4());
        d.submit(vec![], ts.clone());
        d.submit(vec![], ts);
        assert_eq!(d.load(0.0).queued, 3);
    }

    #[test]
    fn lost_manager_fails_or_retries_its_tasks() {
        let now = Instant::now();
        for (retries, expect_failed) in [(0, 2), (1, 0)] {
            let mut d = Dispatcher::new(retries, Duration::from_secs(1), 60.0);
            d.register(b"a".to_vec(), info("a", "7", 2, 0), now)
                .unwrap();
            d.submit(vec![], tasks(2, Uuid::new_v4()));
            d.dispatch(0.0);
            assert!(d.silent_managers(now).is_empty());
            let silent = d.silent_managers(now + Duration::from_secs(2));
            assert_eq!(silent, vec![b"a".to_vec()]);
            let failed = d.remove_manager(b"a", "no heartbeat");
            assert_eq!(failed.len(), expect_failed);
            for r in &failed {
                match &r.outcome {
                    Outcome::Failed { exception } => {
                        assert_eq!(exception.exc_type, MANAGER_LOST);
                        assert!(
                            exception.message.contains("block 7"),
                            "{}",
                            exception.message
                        );
                    }
                    _ => panic!("expected a failure"),
                }
            }
            assert_eq!(d.load(0.0).queued, 2 - expect_failed as u64);
        }
    }

    #[test]
    fn worker_lost_is_retried_within_budget() {
        let now = Instant::now();
        let mut d = Dispatcher::new(1, Duration::from_secs(10), 60.0);
        d.register(b"a".to_vec(), info("a", "0", 1, 0), now)
            .unwrap();
        let ts = tasks(1, Uuid::new_v4());
        let id = ts[0].task_id;
        d.submit(vec![], ts);
        let lost = || TaskResult::failed(id, ExceptionInfo::system(WORKER_LOST, "died"));
        d.dispatch(0.0);
        assert!(
            d.complete(b"a", vec![lost()]).is_empty(),
            "first loss is retried"
        );
        assert_eq!(d.dispatch(0.0).len(), 1);
        assert_eq!(d.complete(b"a", vec![lost()]).len(), 1, "budget spent");
    }

    #[test]
    fn repeated_registration_is_idempotent() {
        let now = Instant::now();
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0);
        d.register(b"a".to_vec(), info("a", "0", 1, 0), now)
            .unwrap();
        d.submit(vec![], tasks(1, Uuid::new_v4()));
        d.dispatch(0.0);
        d.register(b"a".to_vec(), info("a", "0", 1, 0), now)
            .unwrap();
        assert_eq!(d.load(0.0).in_hand, 1, "its task stays in hand");
        assert!(d
            .register(b"a".to_vec(), info("other", "0", 1, 0), now)
            .is_err());
    }

    #[test]
    fn wrong_version_and_empty_managers_are_refused() {
        let now = Instant::now();
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0);
        let mut old = info("a", "0", 1, 0);
        old.version = 999;
        assert!(d
            .register(b"a".to_vec(), old, now)
            .unwrap_err()
            .contains("version"));
        assert!(d
            .register(b"b".to_vec(), info("b", "0", 0, 0), now)
            .is_err());
    }
}
