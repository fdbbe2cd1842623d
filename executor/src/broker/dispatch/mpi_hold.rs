//! Managers held for MPI tasks. An MPI task (an `MPIFunction` call) needs
//! whole nodes of one block: the broker holds that many managers for it
//! ([`placement::choose`]); they take no new work from then on, and once all
//! are idle the first of them (the leader) gets the task with the list of
//! nodes. A task no block could ever hold fails at once; one that does not
//! fit now waits, reported as `waiting-for-nodes`.

use std::collections::{HashMap, HashSet, VecDeque};

use hpfaas_protocol::broker::BrokerMessage;
use hpfaas_protocol::mpi::{is_mpi_function, MpiNode, MpiRequest};
use hpfaas_protocol::task::{FunctionCode, TaskSpec, TaskState};
use uuid::Uuid;

use super::managers::{Identity, Managers};
use super::tasks::TaskBook;
use crate::broker::placement::{self, Candidate};

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

/// What one [`MpiHold::place`] did.
#[derive(Default)]
pub struct Placed {
    /// Messages that start MPI tasks on their leaders.
    pub started: Vec<(Identity, BrokerMessage)>,
    /// True if a hold was let go of: its managers may take ordinary work.
    pub released: bool,
}

/// MPI functions, what each MPI task asks for, and the ones not started yet.
pub struct MpiHold {
    /// Nodes of a block as configured (`provider.nodes_per_block`).
    nodes_per_block: u32,
    /// Functions that are `MPIFunction`s.
    functions: HashSet<Uuid>,
    /// What each MPI task the broker owns asks for (waiting or running).
    requests: HashMap<Uuid, MpiRequest>,
    /// MPI tasks not started yet, oldest first.
    waiting: VecDeque<MpiWait>,
    /// State changes to report to the agent.
    states: Vec<(Uuid, TaskState)>,
}

impl MpiHold {
    /// No MPI tasks; blocks of `nodes_per_block` nodes as configured.
    pub fn new(nodes_per_block: u32) -> Self {
        MpiHold {
            nodes_per_block: nodes_per_block.max(1),
            functions: HashSet::new(),
            requests: HashMap::new(),
            waiting: VecDeque::new(),
            states: Vec::new(),
        }
    }

    /// Sets the configured nodes per block, the least size an MPI task may rely on.
    pub fn set_nodes_per_block(&mut self, nodes: u32) {
        self.nodes_per_block = nodes.max(1);
    }

    /// Notes whether a function is an `MPIFunction`.
    pub fn add_function(&mut self, f: &FunctionCode) {
        if is_mpi_function(&f.code) {
            self.functions.insert(f.function_id);
        }
    }

    /// True if the task calls an `MPIFunction`.
    pub fn is_mpi(&self, task: &TaskSpec) -> bool {
        self.functions.contains(&task.function_id)
    }

    /// True if this is an MPI task the broker owns.
    pub fn owns(&self, task_id: &Uuid) -> bool {
        // Guarded: in ordinary work the map is empty, and this runs per result.
        !self.requests.is_empty() && self.requests.contains_key(task_id)
    }

    /// What an MPI task asks for, or why no block of this endpoint can ever
    /// run it; `largest_seen` is the most managers one block has registered
    /// (one joined by hand may have more than configured).
    pub fn request(&self, task: &TaskSpec, largest_seen: u32) -> Result<MpiRequest, String> {
        let request = MpiRequest::parse(task.resource_spec.as_deref())?;
        let largest = largest_seen.max(self.nodes_per_block);
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

    /// Queues an MPI task last.
    pub fn enqueue(&mut self, task_id: Uuid, request: MpiRequest) {
        self.waiting
            .push_back(MpiWait::new(task_id, request.clone()));
        self.requests.insert(task_id, request);
    }

    /// Queues an owned MPI task first again, to choose its nodes afresh;
    /// false if it is not an MPI task.
    pub fn requeue_front(&mut self, task_id: Uuid) -> bool {
        match self.requests.get(&task_id) {
            Some(request) => {
                self.waiting
                    .push_front(MpiWait::new(task_id, request.clone()));
                true
            }
            None => false,
        }
    }

    /// True if the task waits for its nodes (it has not started).
    pub fn is_waiting(&self, task_id: &Uuid) -> bool {
        self.waiting.iter().any(|w| w.task_id == *task_id)
    }

    /// A waiting task let go of its nodes: it will choose them afresh.
    pub fn unhold(&mut self, task_id: Uuid) {
        if let Some(w) = self.waiting.iter_mut().find(|w| w.task_id == task_id) {
            w.held.clear();
        }
    }

    /// Forgets an MPI task that is over.
    pub fn forget(&mut self, task_id: &Uuid) {
        if !self.requests.is_empty() {
            self.requests.remove(task_id);
        }
    }

    /// Drops waiting tasks (cancelled before they started).
    pub fn unqueue(&mut self, dropped: &HashSet<Uuid>) {
        self.waiting.retain(|w| !dropped.contains(&w.task_id));
    }

    /// MPI tasks not started yet.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// State changes since the last call (`waiting-for-nodes`).
    pub fn take_states(&mut self) -> Vec<(Uuid, TaskState)> {
        std::mem::take(&mut self.states)
    }

    /// Holds nodes for waiting MPI tasks, oldest first, and starts each task
    /// whose held nodes have all gone idle; `now` is the wall clock (Unix s).
    pub fn place(&mut self, managers: &mut Managers, tasks: &TaskBook, now: f64) -> Placed {
        let mut placed = Placed::default();
        let drain_period = managers.drain_period();
        for mut w in std::mem::take(&mut self.waiting) {
            let Some(task) = tasks.get(&w.task_id) else {
                continue;
            };
            // A held node about to reach its walltime is a bad place to start.
            let unusable = w.held.iter().any(|id| {
                managers
                    .get(id)
                    .is_none_or(|m| m.draining(drain_period, now))
            });
            if unusable {
                placed.released = true;
                for id in w.held.drain(..) {
                    if let Some(m) = managers.get_mut(&id) {
                        m.held_for = None;
                    }
                }
            }
            if w.held.is_empty() {
                let walltime = task.walltime().ok().flatten();
                if let Some(chosen) = choose_nodes(managers, &w.request, walltime, now) {
                    for id in &chosen {
                        if let Some(m) = managers.get_mut(id) {
                            m.held_for = Some(w.task_id);
                        }
                    }
                    w.held = chosen;
                }
            }
            let idle = !w.held.is_empty()
                && w.held
                    .iter()
                    .all(|id| managers.get(id).is_some_and(|m| m.in_hand.is_empty()));
            if idle {
                if let Some(start) = start(managers, tasks, task, &w) {
                    placed.started.push(start);
                    continue;
                }
            }
            if !w.reported {
                w.reported = true;
                self.states.push((w.task_id, TaskState::WaitingForNodes));
            }
            self.waiting.push_back(w);
        }
        placed
    }
}

/// Managers of one block to hold for an MPI task, leader first, if a block has enough.
fn choose_nodes(
    managers: &Managers,
    request: &MpiRequest,
    walltime: Option<f64>,
    now: f64,
) -> Option<Vec<Identity>> {
    let drain_period = managers.drain_period();
    let candidates: Vec<Candidate<Identity>> = managers
        .order()
        .iter()
        .filter_map(|id| {
            let m = managers.get(id)?;
            let usable =
                m.held_for.is_none() && !m.draining(drain_period, now) && m.fits(walltime, now);
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

/// The message that starts an MPI task on the leader of its held nodes
/// (all registered: a lost one is let go of before this).
fn start(
    managers: &mut Managers,
    tasks: &TaskBook,
    task: &TaskSpec,
    w: &MpiWait,
) -> Option<(Identity, BrokerMessage)> {
    let nodes = w
        .held
        .iter()
        .zip(0..)
        .map(|(id, i)| {
            Some(MpiNode {
                host: managers.get(id)?.info.host.clone(),
                ranks: w.request.ranks_on(i),
            })
        })
        .collect::<Option<Vec<MpiNode>>>()?;
    let leader = w.held.first()?.clone();
    let m = managers.get_mut(&leader)?;
    m.in_hand.insert(task.task_id);
    let functions = m.unseen_code(tasks.functions(), std::slice::from_ref(task));
    Some((
        leader,
        BrokerMessage::MpiTask {
            functions,
            task: task.clone(),
            nodes,
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::test_support::{info, mpi_tasks};
    use super::*;

    fn register(ms: &mut Managers, list: &[(&str, &str)]) {
        for (rank, (name, block)) in list.iter().enumerate() {
            let mut i = info(name, block, 1, 0);
            i.host = format!("host-{name}");
            i.rank = rank as u32;
            ms.register(name.as_bytes().to_vec(), i, Instant::now())
                .unwrap();
        }
    }

    #[test]
    fn requests_larger_than_any_block_are_refused() {
        let hold = MpiHold::new(2);
        let (_, ts) = mpi_tasks(1, r#"{"num_nodes": 3}"#);
        let why = hold.request(&ts[0], 0).unwrap_err();
        assert!(why.contains("at most 2"), "{why}");
        assert_eq!(hold.request(&ts[0], 3).unwrap().num_nodes, 3);
        let (_, ts) = mpi_tasks(1, "{}");
        assert!(hold.request(&ts[0], 9).is_err());
    }

    #[test]
    fn a_task_holds_one_block_and_starts_on_its_leader_once_idle() {
        let mut ms = Managers::new(Duration::from_secs(10), 0.0);
        register(&mut ms, &[("a0", "a"), ("b0", "b"), ("a1", "a")]);
        let (code, ts) = mpi_tasks(1, r#"{"num_nodes": 2, "ranks_per_node": 3}"#);
        let id = ts[0].task_id;
        let mut book = TaskBook::new(None);
        let mut hold = MpiHold::new(2);
        book.add_function(code[0].clone());
        hold.add_function(&code[0]);
        assert!(hold.is_mpi(&ts[0]));
        let request = hold.request(&ts[0], 0).unwrap();
        book.own(ts[0].clone());
        hold.enqueue(id, request);
        ms.get_mut(b"a1").unwrap().in_hand.insert(Uuid::new_v4());
        let placed = hold.place(&mut ms, &book, 0.0);
        assert!(placed.started.is_empty() && !placed.released);
        assert_eq!(hold.take_states(), vec![(id, TaskState::WaitingForNodes)]);
        assert_eq!(ms.get(b"a0").unwrap().held_for, Some(id));
        assert_eq!(ms.get(b"b0").unwrap().held_for, None);
        ms.get_mut(b"a1").unwrap().in_hand.clear();
        let placed = hold.place(&mut ms, &book, 0.0);
        let [(
            leader,
            BrokerMessage::MpiTask {
                functions, nodes, ..
            },
        )] = &placed.started[..]
        else {
            panic!("expected one start")
        };
        assert_eq!(leader, b"a0");
        assert_eq!(functions.len(), 1);
        let hosts: Vec<(&str, u32)> = nodes.iter().map(|n| (n.host.as_str(), n.ranks)).collect();
        assert_eq!(hosts, vec![("host-a0", 3), ("host-a1", 3)]);
        assert_eq!(hold.waiting(), 0);
        assert!(hold.take_states().is_empty());
        assert!(hold.owns(&id), "running, still owned");
        hold.forget(&id);
        assert!(!hold.owns(&id));
    }

    #[test]
    fn a_hold_on_a_draining_node_is_let_go_of() {
        let mut ms = Managers::new(Duration::from_secs(10), 60.0);
        register(&mut ms, &[("a0", "a"), ("a1", "a")]);
        ms.get_mut(b"a1").unwrap().info.deadline = Some(1000.0);
        ms.get_mut(b"a1").unwrap().in_hand.insert(Uuid::new_v4());
        let (code, ts) = mpi_tasks(1, r#"{"num_nodes": 2}"#);
        let mut book = TaskBook::new(None);
        let mut hold = MpiHold::new(2);
        hold.add_function(&code[0]);
        hold.enqueue(ts[0].task_id, hold.request(&ts[0], 0).unwrap());
        book.own(ts[0].clone());
        assert!(!hold.place(&mut ms, &book, 0.0).released);
        assert_eq!(ms.get(b"a0").unwrap().held_for, Some(ts[0].task_id));
        let placed = hold.place(&mut ms, &book, 950.0);
        assert!(placed.released && placed.started.is_empty());
        assert_eq!(
            ms.get(b"a0").unwrap().held_for,
            None,
            "no block has two usable nodes"
        );
        assert_eq!(hold.waiting(), 1);
    }
}
