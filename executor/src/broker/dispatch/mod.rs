//! The broker's bookkeeping, free of sockets and clocks so it can be tested
//! directly: the [`Dispatcher`] the broker loop calls, over one part per
//! concept: connected managers ([`managers`]), the tasks the broker owns and
//! its queue ([`tasks`], served by priority: [`queue`]), re-runs and cancellations ([`retry`]), managers
//! held for MPI tasks ([`mpi_hold`]), handing out capacity ([`capacity`])
//! and the reported load ([`load`]).
//!
//! A cancelled task still queued is dropped (a waiting MPI task lets go of
//! the nodes it held); one in a manager's hands is cancelled there, and
//! whatever result it then sends is reported as `TaskCancelled`, never
//! retried. A lost manager's tasks are re-run within their budget or fail
//! with `ManagerLost`; a held node lost before its MPI task started lets the
//! task choose its nodes afresh.

mod capacity;
mod load;
mod managers;
mod mpi_hold;
mod queue;
mod retry;
mod tasks;
#[cfg(test)]
mod test_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use hpfaas_protocol::broker::{BrokerMessage, ManagerInfo};
use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::task::{ExceptionInfo, FunctionCode, TaskResult, TaskSpec, TaskState};
use uuid::Uuid;

use capacity::Rounds;
pub use load::{BlockLoad, Load};
pub use managers::Identity;
use managers::Managers;
use mpi_hold::MpiHold;
use retry::Retries;
use tasks::TaskBook;

/// Queue, managers and retry budgets of one endpoint's broker.
pub struct Dispatcher {
    managers: Managers,
    tasks: TaskBook,
    retries: Retries,
    mpi: MpiHold,
    rounds: Rounds,
}

impl Dispatcher {
    /// An empty broker state.
    pub fn new(max_retries: u32, heartbeat_threshold: Duration, drain_period: f64) -> Self {
        Dispatcher {
            managers: Managers::new(heartbeat_threshold, drain_period),
            tasks: TaskBook::new(None),
            retries: Retries::new(max_retries),
            mpi: MpiHold::new(1),
            rounds: Rounds::default(),
        }
    }

    /// Sets the walltime of the endpoint's blocks (batch systems only): a task
    /// asking for more can never run and fails at once.
    pub fn with_block_walltime(mut self, seconds: Option<f64>) -> Self {
        self.tasks.set_block_walltime(seconds);
        self
    }

    /// Sets the configured nodes per block, the least size an MPI task may rely on.
    pub fn with_nodes_per_block(mut self, nodes: u32) -> Self {
        self.mpi.set_nodes_per_block(nodes);
        self
    }

    /// Accepts a manager, or says why not.
    pub fn register(
        &mut self,
        identity: Identity,
        info: ManagerInfo,
        now: Instant,
    ) -> Result<(), String> {
        self.managers.register(identity, info, now)?;
        self.rounds.rescan();
        Ok(())
    }

    /// True if `identity` is a registered manager.
    pub fn is_registered(&self, identity: &[u8]) -> bool {
        self.managers.contains(identity)
    }

    /// Records that a manager spoke.
    pub fn seen(&mut self, identity: &[u8], now: Instant) {
        self.managers.seen(identity, now);
    }

    /// Sets the wall time (Unix seconds) tasks queued from now on arrive at,
    /// for aging (it never goes back); [`Dispatcher::dispatch`] sets it too.
    pub fn advance_clock(&mut self, now: f64) {
        self.tasks.advance(now);
    }

    /// Queues tasks (a task already owned is ignored: delivery is at least
    /// once), arrived at the time of the last [`Dispatcher::advance_clock`];
    /// returns the failures of tasks that can never run.
    pub fn submit(
        &mut self,
        functions: Vec<FunctionCode>,
        tasks: Vec<TaskSpec>,
    ) -> Vec<TaskResult> {
        for f in functions {
            self.mpi.add_function(&f);
            self.tasks.add_function(f);
        }
        let mut refused = Vec::new();
        for t in tasks {
            if self.tasks.owns(&t.task_id) {
                continue;
            }
            if let Some(why) = self.tasks.walltime_refusal(&t) {
                refused.push(value_error(t.task_id, why));
                continue;
            }
            if self.mpi.is_mpi(&t) {
                match self.mpi.request(&t, self.managers.most_in_one_block()) {
                    Ok(request) => {
                        self.mpi.enqueue(t.task_id, request);
                        self.tasks.own(t);
                    }
                    Err(why) => refused.push(value_error(t.task_id, why)),
                }
                continue;
            }
            self.tasks.enqueue(t);
            self.rounds.rescan();
        }
        refused
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
                self.rounds.freed(identity);
            }
        }
        for r in results {
            if self.mpi.owns(&r.task_id) {
                self.release(r.task_id);
            }
            let r = if self.retries.take_cancelled(&r.task_id) {
                // A killed worker looks like WorkerLost; it must not run again.
                retry::cancelled(r.task_id, "it was stopped on its manager")
            } else {
                r
            };
            if retry::worker_lost(&r) && self.retry(r.task_id) {
                continue;
            }
            if self.forget(&r.task_id) {
                report.push(r);
            }
        }
        report
    }

    /// Re-queues a task if its retry budget allows; false if it is spent.
    fn retry(&mut self, task_id: Uuid) -> bool {
        if !self.tasks.owns(&task_id) || !self.retries.spend(task_id) {
            return false;
        }
        if !self.mpi.requeue_front(task_id) {
            self.tasks.requeue_front(task_id);
            self.rounds.rescan();
        }
        true
    }

    /// Stops owning a task that is over; true if it was owned.
    fn forget(&mut self, task_id: &Uuid) -> bool {
        if !self.tasks.remove(task_id) {
            return false;
        }
        self.retries.forget(task_id);
        self.mpi.forget(task_id);
        true
    }

    /// Frees the managers held for an MPI task, so they take ordinary work
    /// again; a task still waiting will choose its nodes afresh.
    fn release(&mut self, task_id: Uuid) {
        if self.managers.release(task_id) {
            self.rounds.rescan();
        }
        self.mpi.unhold(task_id);
    }

    /// Removes a manager; its tasks are retried or failed with `ManagerLost`.
    pub fn remove_manager(&mut self, identity: &[u8], why: &str) -> Vec<TaskResult> {
        let Some(m) = self.managers.remove(identity) else {
            return Vec::new();
        };
        if let Some(task_id) = m.held_for {
            // Before its start the task chooses other nodes; once started,
            // its leader reports how the run ended without this node.
            if self.mpi.is_waiting(&task_id) {
                self.release(task_id);
            }
        }
        let mut failed = Vec::new();
        for task_id in m.in_hand {
            if self.mpi.owns(&task_id) {
                self.release(task_id);
            }
            if self.retries.take_cancelled(&task_id) {
                if self.forget(&task_id) {
                    failed.push(retry::cancelled(task_id, "its manager was lost meanwhile"));
                }
                continue;
            }
            if !self.retry(task_id) && self.forget(&task_id) {
                failed.push(retry::manager_lost(task_id, &m.info, why));
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
            if !self.tasks.owns(&id) {
                continue;
            }
            match self.managers.holder_of(&id) {
                Some(identity) => {
                    self.retries.cancel(id);
                    per_manager.entry(identity.clone()).or_default().push(id);
                }
                None => {
                    self.release(id);
                    self.forget(&id);
                    dropped.insert(id);
                }
            }
        }
        if !dropped.is_empty() {
            self.tasks.unqueue(&dropped);
            self.mpi.unqueue(&dropped);
        }
        per_manager
            .into_iter()
            .map(|(identity, task_ids)| (identity, BrokerMessage::Cancel { task_ids }))
            .collect()
    }

    /// Managers silent for longer than the heartbeat threshold.
    pub fn silent_managers(&self, now: Instant) -> Vec<Identity> {
        self.managers.silent(now)
    }

    /// The block of a connected manager.
    pub fn manager_block(&self, identity: &[u8]) -> Option<String> {
        self.managers.get(identity).map(|m| m.info.block_id.clone())
    }

    /// Identities of the managers of a block.
    pub fn managers_of_block(&self, block_id: &str) -> Vec<Identity> {
        self.managers.of_block(block_id)
    }

    /// Identities of every manager.
    pub fn all_managers(&self) -> Vec<Identity> {
        self.managers.order().to_vec()
    }

    /// Holds nodes for MPI tasks and starts those whose nodes are idle, then
    /// hands queued tasks to the other managers with free capacity,
    /// round-robin; `now` is the wall clock (Unix seconds) for walltime draining.
    pub fn dispatch(&mut self, now: f64) -> Vec<(Identity, BrokerMessage)> {
        self.advance_clock(now);
        let placed = self.mpi.place(&mut self.managers, &self.tasks, now);
        if placed.released {
            // Nodes let go of gain eligibility, which the rounds would
            // otherwise only notice when something else calls for a rescan.
            self.rounds.rescan();
        }
        let mut out = placed.started;
        self.rounds
            .dispatch(&mut self.managers, &mut self.tasks, now, &mut out);
        out
    }

    /// State changes since the last call (`waiting-for-nodes` of MPI tasks).
    pub fn take_states(&mut self) -> Vec<(Uuid, TaskState)> {
        self.mpi.take_states()
    }

    /// Current load at wall time `now` (Unix seconds).
    pub fn load(&self, now: f64) -> Load {
        let queued = self.tasks.queue_len() + self.mpi.waiting();
        Load::of(&self.managers, queued, now)
    }
}

/// The failure of a task that can never run here.
fn value_error(task_id: Uuid, why: String) -> TaskResult {
    TaskResult::failed(
        task_id,
        ExceptionInfo::system(SystemFailure::ValueError, why),
    )
}

#[cfg(test)]
mod tests {
    use hpfaas_protocol::mpi::MpiNode;
    use hpfaas_protocol::task::{ExceptionInfo, Outcome};

    use super::test_support::{info, mpi_tasks, ok, tasks};
    use super::*;

    fn sent(msgs: &[(Identity, BrokerMessage)], who: &[u8]) -> (usize, usize) {
        msgs.iter()
            .filter(|(id, _)| id.as_slice() == who)
            .map(|(_, m)| match m {
                BrokerMessage::Tasks { functions, tasks } => (functions.len(), tasks.len()),
                _ => (0, 0),
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Ids of the tasks sent in `msgs`, in order.
    fn sent_ids(msgs: &[(Identity, BrokerMessage)]) -> Vec<Uuid> {
        msgs.iter()
            .flat_map(|(_, m)| match m {
                BrokerMessage::Tasks { tasks, .. } => tasks.iter().map(|t| t.task_id).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn the_queue_is_served_by_priority_with_aging() {
        let now = Instant::now();
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0);
        d.register(b"a".to_vec(), info("a", "0", 1, 0), now)
            .unwrap();
        let f = Uuid::new_v4();
        let with_priority = |p: i64| {
            let mut t = tasks(1, f).remove(0);
            t.resource_spec = Some(format!(r#"{{"priority": {p}}}"#));
            t
        };
        // The wall clock the broker loop hands `dispatch`, advanced by hand.
        let blocker = tasks(1, f);
        d.submit(vec![], blocker.clone());
        assert_eq!(sent_ids(&d.dispatch(1000.0)), [blocker[0].task_id]);
        let (low, plain, high) = (with_priority(-1), tasks(1, f).remove(0), with_priority(2));
        d.submit(vec![], vec![low.clone(), plain.clone(), high.clone()]);
        // 90 s later a priority-1 task arrives: the plain one has waited
        // long enough to go before it, the low one has not.
        d.dispatch(1090.0);
        let late = with_priority(1);
        d.submit(vec![], vec![late.clone()]);
        let mut order = Vec::new();
        let mut running = blocker[0].task_id;
        for _ in 0..4 {
            d.complete(b"a", vec![ok(running)]);
            let ids = sent_ids(&d.dispatch(1090.0));
            assert_eq!(ids.len(), 1, "one slot");
            running = ids[0];
            order.push(running);
        }
        assert_eq!(
            order,
            [high.task_id, plain.task_id, late.task_id, low.task_id]
        );
    }

    #[test]
    fn tasks_queued_before_the_first_dispatch_arrive_at_the_clock_given() {
        // The broker's first tasks come before its first dispatch round: had
        // they arrived at time 0, they would outrank every later task.
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0);
        let f = Uuid::new_v4();
        let plain = tasks(1, f);
        d.advance_clock(1000.0);
        d.submit(vec![], plain.clone());
        assert!(d.dispatch(1005.0).is_empty(), "no manager yet");
        let mut high = tasks(1, f);
        high[0].resource_spec = Some(r#"{"priority": 1}"#.into());
        d.advance_clock(1010.0);
        d.submit(vec![], high.clone());
        d.register(b"a".to_vec(), info("a", "0", 1, 0), Instant::now())
            .unwrap();
        assert_eq!(sent_ids(&d.dispatch(1010.0)), [high[0].task_id]);
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

    #[test]
    fn nodes_let_go_by_a_draining_hold_take_ordinary_work_at_once() {
        let mut d = Dispatcher::new(0, Duration::from_secs(10), 60.0).with_nodes_per_block(2);
        let mut near = info("a1", "a", 1, 0);
        near.deadline = Some(1000.0);
        near.rank = 1;
        d.register(b"a1".to_vec(), near, Instant::now()).unwrap();
        d.submit(vec![], tasks(1, Uuid::new_v4()));
        assert_eq!(sent(&d.dispatch(0.0), b"a1").1, 1, "a1 is busy");
        managers(&mut d, &[("a0", "a", "h0")]);
        let (code, mpi) = mpi_tasks(1, r#"{"num_nodes": 2}"#);
        assert!(d.submit(code, mpi).is_empty());
        d.submit(vec![], tasks(1, Uuid::new_v4()));
        assert!(d.dispatch(0.0).is_empty(), "a0 and a1 are held");
        // a1 enters its drain period: the hold is let go and no other block
        // has two nodes, so the idle a0 is free for the queued task.
        let out = d.dispatch(950.0);
        assert_eq!(sent(&out, b"a0").1, 1, "{out:?}");
        assert!(mpi_sent(&out).is_empty());
    }
}
