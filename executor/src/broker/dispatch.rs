//! The broker's bookkeeping, free of sockets and clocks so it can be tested
//! directly: which managers exist, what each holds, what is queued, what
//! happens to a manager's tasks when it is lost, and which managers are held
//! for an MPI task.
//!
//! An MPI task (an `MPIFunction` call) needs whole nodes of one block: the
//! broker holds that many managers for it ([`placement::choose`]); they take
//! no new work from then on, and once all are idle the first of them (the
//! leader) gets the task with the list of nodes. They return to ordinary
//! work when its result comes back. A task no block could ever hold fails at
//! once; one that does not fit now waits, reported as `waiting-for-nodes`.
//!
//! A cancelled task still queued is dropped (a waiting MPI task lets go of
//! the nodes it held); one in a manager's hands is cancelled there, and
//! whatever result it then sends is reported as `TaskCancelled`, never
//! retried.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use hpfaas_protocol::broker::{BrokerMessage, ManagerInfo};
use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::mpi::{is_mpi_function, MpiNode, MpiRequest};
use hpfaas_protocol::task::{
    ExceptionInfo, FunctionCode, Outcome, TaskResult, TaskSpec, TaskState,
};
use hpfaas_protocol::PROTOCOL_VERSION;
use uuid::Uuid;

use super::placement::{self, Candidate};

/// ZeroMQ routing identity of a manager's DEALER socket.
pub type Identity = Vec<u8>;

struct Manager {
    info: ManagerInfo,
    in_hand: HashSet<Uuid>,
    known_functions: HashSet<Uuid>,
    last_seen: Instant,
    /// The MPI task this manager is held for (waiting to start or running);
    /// it gets no other work meanwhile.
    held_for: Option<Uuid>,
}

/// An MPI task that has not started yet.
struct MpiWait {
    task_id: Uuid,
    request: MpiRequest,
    /// Managers held for it, leader first; empty until one block has enough.
    held: Vec<Identity>,
    /// Whether `waiting-for-nodes` was reported.
    reported: bool,
}

impl MpiWait {
    fn new(task_id: Uuid, request: MpiRequest) -> Self {
        MpiWait {
            task_id,
            request,
            held: Vec::new(),
            reported: false,
        }
    }
}

/// Queue, managers and retry budgets of one endpoint's broker.
pub struct Dispatcher {
    functions: HashMap<Uuid, String>,
    /// Ids of queued tasks, oldest first; the specs stay in `tasks` alone,
    /// so a million queued tasks are held once, not twice.
    queue: VecDeque<Uuid>,
    /// Every task the broker owns (queued or in a manager's hands).
    tasks: HashMap<Uuid, TaskSpec>,
    attempts: HashMap<Uuid, u32>,
    managers: HashMap<Identity, Manager>,
    /// Round-robin order of registration, so no manager starves.
    order: Vec<Identity>,
    /// Managers that freed capacity since the last dispatch. Only they can
    /// take queued work, unless `rescan` says more changed: looking at
    /// these alone keeps a results frame O(1) in the number of managers.
    freed: Vec<Identity>,
    /// Whether the next dispatch must look at every manager: tasks were
    /// queued, or a manager registered or stopped being held for MPI.
    rescan: bool,
    /// Wall time of the last dispatch: as time goes on, managers only lose
    /// eligibility (drain periods, deadlines), so only a clock stepped back
    /// calls for a rescan.
    last_now: f64,
    max_retries: u32,
    heartbeat_threshold: Duration,
    /// Seconds before a manager's deadline when it stops getting work.
    drain_period: f64,
    /// Walltime of a block (batch systems only), the most a task may ask for.
    block_walltime: Option<f64>,
    /// Nodes of a block as configured (`provider.nodes_per_block`).
    nodes_per_block: u32,
    /// Functions that are `MPIFunction`s.
    mpi_functions: HashSet<Uuid>,
    /// What each MPI task the broker owns asks for (waiting or running).
    mpi_requests: HashMap<Uuid, MpiRequest>,
    /// MPI tasks not started yet, oldest first.
    mpi_queue: VecDeque<MpiWait>,
    /// State changes to report to the agent.
    states: Vec<(Uuid, TaskState)>,
    /// Cancelled tasks still in a manager's hands, until their result.
    cancelled: HashSet<Uuid>,
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
            freed: Vec::new(),
            rescan: false,
            last_now: f64::NEG_INFINITY,
            max_retries,
            heartbeat_threshold,
            drain_period,
            block_walltime: None,
            nodes_per_block: 1,
            mpi_functions: HashSet::new(),
            mpi_requests: HashMap::new(),
            mpi_queue: VecDeque::new(),
            states: Vec::new(),
            cancelled: HashSet::new(),
        }
    }

    /// Sets the walltime of the endpoint's blocks (batch systems only): a task
    /// asking for more can never run and fails at once.
    pub fn with_block_walltime(mut self, seconds: Option<f64>) -> Self {
        self.block_walltime = seconds;
        self
    }

    /// True if the manager's block has walltime left for a task needing `walltime` s.
    fn fits(m: &Manager, walltime: Option<f64>, now: f64) -> bool {
        match (walltime, m.info.deadline) {
            (Some(w), Some(deadline)) => deadline - now >= w,
            _ => true,
        }
    }

    /// Why a task can never run here, judged by its own walltime.
    fn walltime_refusal(&self, task: &TaskSpec) -> Option<String> {
        match task.walltime() {
            Err(why) => Some(why),
            Ok(Some(w)) => self.block_walltime.filter(|&b| w > b).map(|b| {
                format!(
                    "this task's walltime of {w} s exceeds the endpoint's block walltime of {b} s \
                     (provider.walltime), so no block could ever hold it"
                )
            }),
            Ok(None) => None,
        }
    }

    /// Sets the configured nodes per block, the least size an MPI task may rely on.
    pub fn with_nodes_per_block(mut self, nodes: u32) -> Self {
        self.nodes_per_block = nodes.max(1);
        self
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
            self.rescan = true;
            return Ok(());
        }
        self.rescan = true;
        self.order.push(identity.clone());
        self.managers.insert(
            identity,
            Manager {
                info,
                in_hand: HashSet::new(),
                known_functions: HashSet::new(),
                last_seen: now,
                held_for: None,
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

    /// Queues tasks (a task already owned is ignored: delivery is at least
    /// once); returns the failures of MPI tasks that can never run.
    pub fn submit(
        &mut self,
        functions: Vec<FunctionCode>,
        tasks: Vec<TaskSpec>,
    ) -> Vec<TaskResult> {
        for f in functions {
            if is_mpi_function(&f.code) {
                self.mpi_functions.insert(f.function_id);
            }
            self.functions.insert(f.function_id, f.code);
        }
        let mut refused = Vec::new();
        for t in tasks {
            if self.tasks.contains_key(&t.task_id) {
                continue;
            }
            if let Some(why) = self.walltime_refusal(&t) {
                refused.push(TaskResult::failed(
                    t.task_id,
                    ExceptionInfo::system(SystemFailure::ValueError, why),
                ));
                continue;
            }
            if self.mpi_functions.contains(&t.function_id) {
                match self.mpi_request(&t) {
                    Ok(request) => {
                        self.mpi_queue
                            .push_back(MpiWait::new(t.task_id, request.clone()));
                        self.mpi_requests.insert(t.task_id, request);
                        self.tasks.insert(t.task_id, t);
                    }
                    Err(why) => refused.push(TaskResult::failed(
                        t.task_id,
                        ExceptionInfo::system(SystemFailure::ValueError, why),
                    )),
                }
                continue;
            }
            self.queue.push_back(t.task_id);
            self.tasks.insert(t.task_id, t);
            self.rescan = true;
        }
        refused
    }

    /// What an MPI task asks for, or why no block of this endpoint can ever run it.
    fn mpi_request(&self, task: &TaskSpec) -> Result<MpiRequest, String> {
        let request = MpiRequest::parse(task.resource_spec.as_deref())?;
        let largest = self.largest_block();
        if request.num_nodes > largest {
            return Err(format!(
                "this MPI task needs {} nodes of one block ({} ranks, {} per node), but this \
                 endpoint's blocks have at most {largest} (provider.nodes_per_block = {}), \
                 so it can never run",
                request.num_nodes, request.num_ranks, request.ranks_per_node, self.nodes_per_block
            ));
        }
        Ok(request)
    }

    /// Most nodes one block may have: as configured, or as many managers as
    /// a block has registered (one joined by hand may have more).
    fn largest_block(&self) -> u32 {
        let mut per_block: HashMap<&str, u32> = HashMap::new();
        for m in self.managers.values() {
            *per_block.entry(m.info.block_id.as_str()).or_default() += 1;
        }
        per_block
            .into_values()
            .max()
            .unwrap_or(0)
            .max(self.nodes_per_block)
    }

    /// Takes finished tasks from a manager; returns the results to report.
    /// A `WorkerLost` failure with retries left is re-queued instead.
    pub fn complete(&mut self, identity: &[u8], results: Vec<TaskResult>) -> Vec<TaskResult> {
        let mut report = Vec::with_capacity(results.len());
        if let Some(m) = self.managers.get_mut(identity) {
            let before = m.in_hand.len();
            for r in &results {
                m.in_hand.remove(&r.task_id);
            }
            if m.in_hand.len() < before {
                self.freed.push(identity.to_vec());
            }
        }
        for r in results {
            // The guards skip hashing the id into maps that are empty in
            // ordinary (non-MPI, uncancelled, first-try) work.
            if !self.mpi_requests.is_empty() && self.mpi_requests.contains_key(&r.task_id) {
                self.release(r.task_id);
            }
            let r = if !self.cancelled.is_empty() && self.cancelled.remove(&r.task_id) {
                // A killed worker looks like WorkerLost; it must not run again.
                cancelled(r.task_id, "it was stopped on its manager")
            } else {
                r
            };
            let system_failure = matches!(&r.outcome, Outcome::Failed { exception } if SystemFailure::WorkerLost.is(&exception.exc_type));
            if system_failure && self.retry(r.task_id) {
                continue;
            }
            if self.tasks.remove(&r.task_id).is_some() {
                if !self.attempts.is_empty() {
                    self.attempts.remove(&r.task_id);
                }
                if !self.mpi_requests.is_empty() {
                    self.mpi_requests.remove(&r.task_id);
                }
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
        match self.mpi_requests.get(&task_id) {
            Some(request) => self
                .mpi_queue
                .push_front(MpiWait::new(task_id, request.clone())),
            None => {
                self.queue.push_front(spec.task_id);
                self.rescan = true;
            }
        }
        true
    }

    /// Frees the managers held for an MPI task, so they take ordinary work
    /// again; a task still waiting will choose its nodes afresh.
    fn release(&mut self, task_id: Uuid) {
        for m in self.managers.values_mut() {
            if m.held_for == Some(task_id) {
                m.held_for = None;
                self.rescan = true;
            }
        }
        if let Some(w) = self.mpi_queue.iter_mut().find(|w| w.task_id == task_id) {
            w.held.clear();
        }
    }

    /// Removes a manager; its tasks are retried or failed with `ManagerLost`.
    pub fn remove_manager(&mut self, identity: &[u8], why: &str) -> Vec<TaskResult> {
        let Some(m) = self.managers.remove(identity) else {
            return Vec::new();
        };
        self.order.retain(|i| i.as_slice() != identity);
        if let Some(task_id) = m.held_for {
            // Before its start the task chooses other nodes; once started,
            // its leader reports how the run ended without this node.
            if self.mpi_queue.iter().any(|w| w.task_id == task_id) {
                self.release(task_id);
            }
        }
        let mut failed = Vec::new();
        for task_id in m.in_hand {
            if self.mpi_requests.contains_key(&task_id) {
                self.release(task_id);
            }
            if self.cancelled.remove(&task_id) {
                if self.tasks.remove(&task_id).is_some() {
                    self.attempts.remove(&task_id);
                    self.mpi_requests.remove(&task_id);
                    failed.push(cancelled(task_id, "its manager was lost meanwhile"));
                }
                continue;
            }
            if !self.retry(task_id) && self.tasks.remove(&task_id).is_some() {
                self.attempts.remove(&task_id);
                self.mpi_requests.remove(&task_id);
                let message = format!(
                    "manager {} (block {}, host {}) was lost while running this task: {why}",
                    m.info.manager_id, m.info.block_id, m.info.host
                );
                failed.push(TaskResult::failed(
                    task_id,
                    ExceptionInfo::system(SystemFailure::ManagerLost, message),
                ));
            }
        }
        failed
    }

    /// Cancels tasks: a queued one is dropped at once (a waiting MPI task
    /// releases the nodes it held); for one in a manager's hands the returned
    /// `Cancel` messages tell its manager, and its result, when it comes, is
    /// reported as `TaskCancelled`. Ids the broker does not own are ignored.
    pub fn cancel(&mut self, task_ids: &[Uuid]) -> Vec<(Identity, BrokerMessage)> {
        let mut per_manager: HashMap<Identity, Vec<Uuid>> = HashMap::new();
        let mut dropped = HashSet::new();
        for &id in task_ids {
            if !self.tasks.contains_key(&id) {
                continue;
            }
            let holder = self.order.iter().find(|i| {
                self.managers
                    .get(*i)
                    .is_some_and(|m| m.in_hand.contains(&id))
            });
            match holder {
                Some(identity) => {
                    self.cancelled.insert(id);
                    per_manager.entry(identity.clone()).or_default().push(id);
                }
                None => {
                    self.release(id);
                    self.tasks.remove(&id);
                    self.attempts.remove(&id);
                    self.mpi_requests.remove(&id);
                    dropped.insert(id);
                }
            }
        }
        if !dropped.is_empty() {
            self.queue.retain(|id| !dropped.contains(id));
            self.mpi_queue.retain(|w| !dropped.contains(&w.task_id));
        }
        per_manager
            .into_iter()
            .map(|(identity, task_ids)| (identity, BrokerMessage::Cancel { task_ids }))
            .collect()
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

    /// Holds nodes for MPI tasks and starts those whose nodes are idle, then
    /// hands queued tasks to the other managers with free capacity,
    /// round-robin; `now` is the wall clock (Unix seconds) for walltime draining.
    pub fn dispatch(&mut self, now: f64) -> Vec<(Identity, BrokerMessage)> {
        let mut out = self.place_mpi(now);
        // A task re-queued after a restart may have finished meanwhile.
        while self
            .queue
            .front()
            .is_some_and(|id| !self.tasks.contains_key(id))
        {
            self.queue.pop_front();
        }
        if self.queue.is_empty() {
            // Managers with room are looked at again when tasks come.
            self.freed.clear();
            return out;
        }
        if now < self.last_now {
            self.rescan = true;
        }
        self.last_now = now;
        if std::mem::take(&mut self.rescan) {
            self.freed.clear();
            let order = std::mem::take(&mut self.order);
            for identity in &order {
                if self.queue.is_empty() {
                    break;
                }
                if let Some(message) = self.fill(identity, now) {
                    out.push((identity.clone(), message));
                }
            }
            self.order = order;
        } else {
            for identity in std::mem::take(&mut self.freed) {
                if self.queue.is_empty() {
                    break;
                }
                if let Some(message) = self.fill(&identity, now) {
                    out.push((identity, message));
                }
            }
        }
        out
    }

    /// Hands a manager as many queued tasks as it has room for (none while
    /// it drains or is held for an MPI task); the `Tasks` message, if any.
    fn fill(&mut self, identity: &[u8], now: f64) -> Option<BrokerMessage> {
        let m = self.managers.get(identity)?;
        if self.draining(m, now) || m.held_for.is_some() {
            return None;
        }
        let free = (m.info.capacity() as usize).saturating_sub(m.in_hand.len());
        if free == 0 {
            return None;
        }
        let mut tasks = Vec::with_capacity(free.min(self.queue.len()));
        // Tasks whose own walltime this block can no longer hold wait
        // for another block (the strategy starts one if none is left).
        let mut too_long = Vec::new();
        while tasks.len() < free {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            // Only a block with a deadline can be too short; parse the
            // task's walltime only then (this loop runs per frame).
            if m.info.deadline.is_none() || Self::fits(m, t.walltime().ok().flatten(), now) {
                tasks.push(t.clone());
            } else {
                too_long.push(id);
            }
        }
        for id in too_long.into_iter().rev() {
            self.queue.push_front(id);
        }
        if tasks.is_empty() {
            return None;
        }
        let m = self.managers.get_mut(identity)?;
        m.in_hand.extend(tasks.iter().map(|t| t.task_id));
        let functions = unseen_code(&self.functions, m, &tasks);
        Some(BrokerMessage::Tasks { functions, tasks })
    }

    /// Holds nodes for waiting MPI tasks, oldest first, and starts each task
    /// whose held nodes have all gone idle.
    fn place_mpi(&mut self, now: f64) -> Vec<(Identity, BrokerMessage)> {
        let mut out = Vec::new();
        for mut w in std::mem::take(&mut self.mpi_queue) {
            if !self.tasks.contains_key(&w.task_id) {
                continue;
            }
            // A held node about to reach its walltime is a bad place to start.
            let unusable = w
                .held
                .iter()
                .any(|id| self.managers.get(id).is_none_or(|m| self.draining(m, now)));
            if unusable {
                for id in w.held.drain(..) {
                    if let Some(m) = self.managers.get_mut(&id) {
                        m.held_for = None;
                    }
                }
            }
            if w.held.is_empty() {
                let walltime = self.tasks[&w.task_id].walltime().ok().flatten();
                if let Some(chosen) = self.choose_nodes(&w.request, walltime, now) {
                    for id in &chosen {
                        if let Some(m) = self.managers.get_mut(id) {
                            m.held_for = Some(w.task_id);
                        }
                    }
                    w.held = chosen;
                }
            }
            let idle = !w.held.is_empty()
                && w.held
                    .iter()
                    .all(|id| self.managers.get(id).is_some_and(|m| m.in_hand.is_empty()));
            if idle {
                out.push(self.start_mpi(w));
                continue;
            }
            if !w.reported {
                w.reported = true;
                self.states.push((w.task_id, TaskState::WaitingForNodes));
            }
            self.mpi_queue.push_back(w);
        }
        out
    }

    /// Managers of one block to hold for an MPI task, leader first, if a block has enough.
    fn choose_nodes(
        &self,
        request: &MpiRequest,
        walltime: Option<f64>,
        now: f64,
    ) -> Option<Vec<Identity>> {
        let candidates: Vec<Candidate<Identity>> = self
            .order
            .iter()
            .filter_map(|id| {
                let m = self.managers.get(id)?;
                let usable =
                    m.held_for.is_none() && !self.draining(m, now) && Self::fits(m, walltime, now);
                usable.then(|| Candidate {
                    key: id.clone(),
                    block_id: m.info.block_id.clone(),
                    rank: m.info.rank,
                    busy: m.in_hand.len(),
                })
            })
            .collect();
        placement::choose(&candidates, request.num_nodes as usize)
    }

    /// The message that starts an MPI task on the leader of its held nodes.
    fn start_mpi(&mut self, w: MpiWait) -> (Identity, BrokerMessage) {
        let nodes: Vec<MpiNode> = w
            .held
            .iter()
            .zip(0..)
            .map(|(id, i)| MpiNode {
                host: self.managers[id].info.host.clone(),
                ranks: w.request.ranks_on(i),
            })
            .collect();
        let task = self.tasks[&w.task_id].clone();
        let leader = w.held[0].clone();
        let m = self
            .managers
            .get_mut(&leader)
            .expect("held managers are registered");
        m.in_hand.insert(task.task_id);
        let functions = unseen_code(&self.functions, m, std::slice::from_ref(&task));
        (
            leader,
            BrokerMessage::MpiTask {
                functions,
                task,
                nodes,
            },
        )
    }

    /// State changes since the last call (`waiting-for-nodes` of MPI tasks).
    pub fn take_states(&mut self) -> Vec<(Uuid, TaskState)> {
        std::mem::take(&mut self.states)
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
        // A manager held for an MPI task takes nothing else: none of its workers is free.
        let busy: u32 = self
            .managers
            .values()
            .map(|m| match m.held_for {
                Some(_) => m.info.workers,
                None => (m.in_hand.len() as u32).min(m.info.workers),
            })
            .sum();
        Load {
            managers: self.managers.len() as u32,
            total_workers: total,
            idle_workers: total - busy,
            queued: (self.queue.len() + self.mpi_queue.len()) as u64,
            in_hand: self.managers.values().map(|m| m.in_hand.len() as u64).sum(),
            blocks,
        }
    }
}

/// The result reported for a cancelled task that a manager held.
fn cancelled(task_id: Uuid, how: &str) -> TaskResult {
    TaskResult::failed(
        task_id,
        ExceptionInfo::system(
            SystemFailure::TaskCancelled,
            format!("the task was cancelled by its owner; {how}"),
        ),
    )
}

/// Code of the tasks' functions that the manager has not been sent yet.
fn unseen_code(
    functions: &HashMap<Uuid, String>,
    manager: &mut Manager,
    tasks: &[TaskSpec],
) -> Vec<FunctionCode> {
    let mut out = Vec::new();
    for t in tasks {
        if manager.known_functions.insert(t.function_id) {
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
                blob: None,
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
    fn tasks_go_only_where_their_walltime_fits() {
        let now = Instant::now();
        let mut d =
            Dispatcher::new(0, Duration::from_secs(10), 10.0).with_block_walltime(Some(600.0));
        let mut short = info("short", "1", 1, 0);
        short.deadline = Some(1100.0);
        d.register(b"short".to_vec(), short, now).unwrap();
        let mut long = tasks(1, Uuid::new_v4());
        long[0].resource_spec = Some(r#"{"walltime": 300}"#.into());
        let mut huge = tasks(1, Uuid::new_v4());
        huge[0].resource_spec = Some(r#"{"walltime": 3600}"#.into());
        let refused = d.submit(vec![], [long, huge.clone()].concat());
        assert_eq!(refused.len(), 1, "longer than any block can ever be");
        assert_eq!(refused[0].task_id, huge[0].task_id);
        assert!(
            d.dispatch(1000.0).is_empty(),
            "100 s left cannot hold 300 s"
        );
        let mut fresh = info("fresh", "2", 1, 0);
        fresh.deadline = Some(1590.0);
        d.register(b"fresh".to_vec(), fresh, now).unwrap();
        assert_eq!(sent(&d.dispatch(1000.0), b"fresh"), (0, 1));
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
                        assert_eq!(exception.exc_type, SystemFailure::ManagerLost.name());
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
        let lost =
            || TaskResult::failed(id, ExceptionInfo::system(SystemFailure::WorkerLost, "died"));
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

    /// An MPI function's code and `n` calls of it with this resource specification.
    fn mpi_tasks(n: usize, spec: &str) -> (Vec<FunctionCode>, Vec<TaskSpec>) {
        let f = Uuid::new_v4();
        let code = hpfaas_protocol::payload::pack(&[r#"sh
{"cmd": "./hello", "mpi": true}"#]);
        let mut ts = tasks(n, f);
        for t in &mut ts {
            t.resource_spec = Some(spec.to_string());
        }
        (
            vec![FunctionCode {
                function_id: f,
                code,
            }],
            ts,
        )
    }

    /// Registers one-worker managers `(name, block, host)` with no prefetch.
    fn managers(d: &mut Dispatcher, list: &[(&str, &str, &str)]) {
        for (rank, (name, block, host)) in list.iter().enumerate() {
            let mut i = info(name, block, 1, 0);
            i.host = host.to_string();
            i.rank = rank as u32;
            d.register(name.as_bytes().to_vec(), i, Instant::now())
                .unwrap();
        }
    }

    fn mpi_sent(msgs: &[(Identity, BrokerMessage)]) -> Vec<(Vec<u8>, Vec<MpiNode>)> {
        msgs.iter()
            .filter_map(|(id, m)| match m {
                BrokerMessage::MpiTask { nodes, .. } => Some((id.clone(), nodes.clone())),
                _ => None,
            })
            .collect()
    }

    fn failure(r: &TaskResult) -> &ExceptionInfo {
        match &r.outcome {
            Outcome::Failed { exception } => exception,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn mpi_task_holds_whole_nodes_of_one_block_until_it_ends() {
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0).with_nodes_per_block(2);
        managers(
            &mut d,
            &[("a0", "a", "h0"), ("a1", "a", "h1"), ("b0", "b", "h2")],
        );
        // a1 is busy with an ordinary task when the MPI task comes.
        let small = Uuid::new_v4();
        let busy = tasks(1, small);
        d.submit(vec![], busy.clone());
        let out = d.dispatch(0.0);
        assert_eq!(out.len(), 1);
        let busy_one = out[0].0.clone();
        let (code, mpi) = mpi_tasks(1, r#"{"num_nodes": 2, "ranks_per_node": 2}"#);
        assert!(d.submit(code, mpi.clone()).is_empty());
        let more = tasks(4, small);
        d.submit(vec![], more);
        let out = d.dispatch(0.0);
        assert!(mpi_sent(&out).is_empty(), "a node of block a is still busy");
        assert_eq!(
            d.take_states(),
            vec![(mpi[0].task_id, TaskState::WaitingForNodes)]
        );
        // The idle node of block a is held: only block b takes small tasks.
        assert_eq!(sent(&out, b"b0").1, 1);
        assert_eq!(sent(&out, b"a0").1 + sent(&out, b"a1").1, 0);
        assert_eq!(
            d.load(0.0).idle_workers,
            0,
            "held nodes are not idle capacity"
        );
        d.complete(&busy_one, vec![ok(busy[0].task_id)]);
        let out = d.dispatch(0.0);
        let started = mpi_sent(&out);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].0, b"a0".to_vec(), "the first node leads");
        let hosts: Vec<(&str, u32)> = started[0]
            .1
            .iter()
            .map(|n| (n.host.as_str(), n.ranks))
            .collect();
        assert_eq!(hosts, vec![("h0", 2), ("h1", 2)]);
        assert_eq!(sent(&out, b"a1").1, 0, "a1 stays held while the task runs");
        assert!(d.take_states().is_empty(), "waiting was reported once");
        // Its result frees both nodes for ordinary work.
        let done = d.complete(b"a0", vec![ok(mpi[0].task_id)]);
        assert_eq!(done.len(), 1);
        let out = d.dispatch(0.0);
        assert_eq!((sent(&out, b"a0").1, sent(&out, b"a1").1), (1, 1));
    }

    #[test]
    fn mpi_tasks_that_can_never_fit_fail_at_once() {
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0).with_nodes_per_block(2);
        managers(&mut d, &[("a0", "a", "h0")]);
        let (code, big) = mpi_tasks(1, r#"{"num_nodes": 3, "ranks_per_node": 2}"#);
        let refused = d.submit(code, big);
        assert_eq!(refused.len(), 1);
        let e = failure(&refused[0]);
        assert_eq!(e.exc_type, "ValueError");
        assert!(
            e.message.contains("needs 3 nodes") && e.message.contains("at most 2"),
            "{}",
            e.message
        );
        let (code, bad) = mpi_tasks(1, r#"{"nodes": 2}"#);
        let e = d.submit(code, bad);
        assert!(failure(&e[0]).message.contains("\"nodes\""), "{:?}", e);
        let (code, none) = mpi_tasks(1, "{}");
        let e = d.submit(code, none);
        assert!(failure(&e[0])
            .message
            .contains("needs a resource_specification"));
        // Two nodes fit a block of 2 even before the second node has come.
        let (code, fits) = mpi_tasks(1, r#"{"num_nodes": 2}"#);
        assert!(d.submit(code, fits).is_empty());
        assert!(d.dispatch(0.0).is_empty());
        assert_eq!(d.load(0.0).queued, 1);
        // A block joined by hand by more managers than configured may hold more.
        managers(&mut d, &[("a1", "a", "h1"), ("a2", "a", "h2")]);
        let (code, three) = mpi_tasks(1, r#"{"num_nodes": 3}"#);
        assert!(d.submit(code, three).is_empty());
    }

    #[test]
    fn losing_a_held_node_releases_the_others() {
        let mut d = Dispatcher::new(1, Duration::from_secs(10), 60.0).with_nodes_per_block(2);
        managers(&mut d, &[("a0", "a", "h0"), ("a1", "a", "h1")]);
        let busy = tasks(1, Uuid::new_v4());
        d.submit(vec![], busy);
        let out = d.dispatch(0.0);
        let busy_one = out[0].0.clone();
        let idle_one = if busy_one == b"a0" {
            b"a1".to_vec()
        } else {
            b"a0".to_vec()
        };
        let (code, mpi) = mpi_tasks(1, r#"{"num_nodes": 2}"#);
        d.submit(code, mpi.clone());
        d.submit(vec![], tasks(1, Uuid::new_v4()));
        assert!(
            d.dispatch(0.0).is_empty(),
            "both nodes are held for the MPI task"
        );
        // Before the start: the surviving node goes back to ordinary work.
        d.remove_manager(&busy_one, "gone");
        let out = d.dispatch(0.0);
        assert_eq!(sent(&out, &idle_one).1, 1);
        // A new node of the block: the MPI task starts once both are idle.
        let queued: Vec<Uuid> = match &out[0].1 {
            BrokerMessage::Tasks { tasks, .. } => tasks.iter().map(|t| t.task_id).collect(),
            _ => unreachable!(),
        };
        d.complete(&idle_one, queued.into_iter().map(ok).collect());
        managers(&mut d, &[("a2", "a", "h2")]);
        let out = d.dispatch(0.0);
        let started = mpi_sent(&out);
        assert_eq!(started.len(), 1);
        let leader = started[0].0.clone();
        // Once started, losing the leader retries the task (budget 1) on nodes held afresh.
        assert!(d.remove_manager(&leader, "gone").is_empty());
        assert_eq!(
            d.load(0.0).queued,
            2,
            "the MPI task and the small task no free node took"
        );
        managers(&mut d, &[("a3", "a", "h3")]);
        assert_eq!(mpi_sent(&d.dispatch(0.0)).len(), 1);
    }

    #[test]
    fn cancel_drops_queued_tasks_and_asks_the_holder_for_running_ones() {
        let mut d = Dispatcher::new(1, Duration::from_secs(10), 60.0);
        managers(&mut d, &[("a", "0", "h0")]);
        let ts = tasks(3, Uuid::new_v4());
        let (running, queued) = (ts[0].task_id, ts[1].task_id);
        d.submit(vec![], ts.clone());
        assert_eq!(sent(&d.dispatch(0.0), b"a").1, 1);
        let out = d.cancel(&[running, queued, Uuid::new_v4()]);
        assert_eq!(
            out,
            vec![(
                b"a".to_vec(),
                BrokerMessage::Cancel {
                    task_ids: vec![running]
                }
            )],
            "only the held task goes to its manager; unknown ids are ignored"
        );
        assert_eq!(d.load(0.0).queued, 1, "the queued task is gone");
        // The killed worker reports WorkerLost: reported as cancelled, not retried.
        let lost = TaskResult::failed(
            running,
            ExceptionInfo::system(SystemFailure::WorkerLost, "killed"),
        );
        let done = d.complete(b"a", vec![lost]);
        assert_eq!(done.len(), 1);
        assert_eq!(
            failure(&done[0]).exc_type,
            SystemFailure::TaskCancelled.name()
        );
        // The freed capacity goes to the remaining task, never to the cancelled one.
        let out = d.dispatch(0.0);
        let BrokerMessage::Tasks { tasks: next, .. } = &out[0].1 else {
            panic!("expected tasks")
        };
        assert_eq!(next[0].task_id, ts[2].task_id);
        assert!(d.dispatch(0.0).is_empty());
    }

    #[test]
    fn cancelling_a_waiting_mpi_task_releases_its_nodes() {
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0).with_nodes_per_block(2);
        managers(&mut d, &[("a0", "a", "h0"), ("a1", "a", "h1")]);
        let busy = tasks(1, Uuid::new_v4());
        d.submit(vec![], busy);
        let busy_one = d.dispatch(0.0)[0].0.clone();
        let (code, mpi) = mpi_tasks(1, r#"{"num_nodes": 2}"#);
        d.submit(code, mpi.clone());
        d.submit(vec![], tasks(1, Uuid::new_v4()));
        assert!(
            d.dispatch(0.0).is_empty(),
            "both nodes held for the MPI task"
        );
        assert!(d.cancel(&[mpi[0].task_id]).is_empty(), "it was never sent");
        let out = d.dispatch(0.0);
        assert_eq!(out.len(), 1, "the idle node takes ordinary work again");
        assert_ne!(out[0].0, busy_one);
        assert_eq!(d.load(0.0).queued, 0);
    }

    #[test]
    fn a_cancelled_task_on_a_lost_manager_is_not_retried() {
        let mut d = Dispatcher::new(3, Duration::from_secs(10), 60.0);
        managers(&mut d, &[("a", "0", "h0")]);
        let ts = tasks(1, Uuid::new_v4());
        d.submit(vec![], ts.clone());
        d.dispatch(0.0);
        assert_eq!(d.cancel(&[ts[0].task_id]).len(), 1);
        let failed = d.remove_manager(b"a", "gone");
        assert_eq!(failed.len(), 1);
        assert_eq!(
            failure(&failed[0]).exc_type,
            SystemFailure::TaskCancelled.name()
        );
        assert_eq!(d.load(0.0).queued, 0);
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
