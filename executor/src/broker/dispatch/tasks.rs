//! The tasks the broker owns, queued or in a manager's hands, the code of
//! their functions, and the queue of ordinary tasks waiting for capacity
//! (served by priority with aging: [`super::queue`]).
//! A task the endpoint's blocks could never hold (its walltime is longer
//! than theirs) is refused here.

use std::collections::{HashMap, HashSet};

use hpfaas_protocol::task::{FunctionCode, TaskSpec};
use uuid::Uuid;

use super::queue::PriorityQueue;

/// Owned tasks and the queue of ordinary ones.
pub struct TaskBook {
    functions: HashMap<Uuid, String>,
    /// Every task the broker owns (queued or in a manager's hands).
    specs: HashMap<Uuid, TaskSpec>,
    /// Ids of queued ordinary tasks, in the order they are served; the specs
    /// stay in `specs` alone, so a million queued tasks are held once, not twice.
    queue: PriorityQueue,
    /// The latest wall time seen (Unix seconds): when a task arrives, for aging.
    now: f64,
    /// Walltime of a block (batch systems only), the most a task may ask for.
    block_walltime: Option<f64>,
}

impl TaskBook {
    /// No tasks; blocks of `block_walltime` seconds, if the batch system has one.
    pub fn new(block_walltime: Option<f64>) -> Self {
        TaskBook {
            functions: HashMap::new(),
            specs: HashMap::new(),
            queue: PriorityQueue::default(),
            now: 0.0,
            block_walltime,
        }
    }

    /// Sets the walltime of the endpoint's blocks.
    pub fn set_block_walltime(&mut self, seconds: Option<f64>) {
        self.block_walltime = seconds;
    }

    /// Advances the clock tasks arriving from now on are stamped with
    /// (never backwards, so a stepped clock cannot reorder the queue).
    pub fn advance(&mut self, now: f64) {
        if now > self.now {
            self.now = now;
        }
    }

    /// Stores a function's code (the same id twice keeps the last).
    pub fn add_function(&mut self, f: FunctionCode) {
        self.functions.insert(f.function_id, f.code);
    }

    /// Code of every function, by id.
    pub fn functions(&self) -> &HashMap<Uuid, String> {
        &self.functions
    }

    /// True if the broker owns this task.
    pub fn owns(&self, task_id: &Uuid) -> bool {
        self.specs.contains_key(task_id)
    }

    /// An owned task.
    pub fn get(&self, task_id: &Uuid) -> Option<&TaskSpec> {
        self.specs.get(task_id)
    }

    /// Why a task can never run here, judged by its own walltime.
    pub fn walltime_refusal(&self, task: &TaskSpec) -> Option<String> {
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

    /// Owns a task without queueing it (an MPI task waits elsewhere).
    pub fn own(&mut self, task: TaskSpec) {
        self.specs.insert(task.task_id, task);
    }

    /// Owns a task and queues it by its priority, arrived now.
    pub fn enqueue(&mut self, task: TaskSpec) {
        self.queue.push(task.task_id, task.priority(), self.now);
        self.own(task);
    }

    /// Queues an owned task first again (a retry goes before newer work).
    pub fn requeue_front(&mut self, task_id: Uuid) {
        self.queue.push_retry(task_id);
    }

    /// Stops owning a task; true if it was owned. Its id may stay queued:
    /// [`TaskBook::take_queued`] skips it.
    pub fn remove(&mut self, task_id: &Uuid) -> bool {
        self.specs.remove(task_id).is_some()
    }

    /// Drops these ids from the queue.
    pub fn unqueue(&mut self, dropped: &HashSet<Uuid>) {
        self.queue.remove_all(dropped);
    }

    /// Drops the ids of tasks no longer owned from the front of the queue
    /// (a task re-queued after a restart may have finished meanwhile).
    pub fn trim_front(&mut self) {
        let specs = &self.specs;
        while self.queue.drop_next_if(|id| !specs.contains_key(id)) {}
    }

    /// Ids in the queue of ordinary tasks.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Takes up to `room` queued tasks that `accept` takes, in the queue's
    /// order; the ones it refuses keep their places in the queue.
    pub fn take_queued(
        &mut self,
        room: usize,
        accept: impl Fn(&TaskSpec) -> bool,
    ) -> Vec<TaskSpec> {
        let mut taken = Vec::with_capacity(room.min(self.queue.len()));
        let mut refused = Vec::new();
        while taken.len() < room {
            let Some(place) = self.queue.pop() else {
                break;
            };
            let Some(t) = self.specs.get(&place.id()) else {
                continue;
            };
            if accept(t) {
                taken.push(t.clone());
            } else {
                refused.push(place);
            }
        }
        for place in refused.into_iter().rev() {
            self.queue.put_back(place);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::tasks;
    use super::*;

    #[test]
    fn refused_tasks_keep_their_places_and_finished_ones_are_skipped() {
        let mut book = TaskBook::new(None);
        let ts = tasks(5, Uuid::new_v4());
        for t in ts.clone() {
            book.enqueue(t);
        }
        assert!(book.remove(&ts[0].task_id));
        assert!(!book.remove(&ts[0].task_id));
        assert_eq!(book.queue_len(), 5, "a removed task's id stays queued");
        book.trim_front();
        assert_eq!(book.queue_len(), 4, "until it reaches the front");
        let (skip1, skip2) = (ts[1].task_id, ts[3].task_id);
        let taken = book.take_queued(2, |t| t.task_id != skip1 && t.task_id != skip2);
        let ids: Vec<Uuid> = taken.iter().map(|t| t.task_id).collect();
        assert_eq!(ids, vec![ts[2].task_id, ts[4].task_id]);
        let rest = book.take_queued(10, |_| true);
        let ids: Vec<Uuid> = rest.iter().map(|t| t.task_id).collect();
        assert_eq!(ids, vec![skip1, skip2], "in their old order");
        assert!(book.owns(&skip1), "taking a task does not disown it");
        book.requeue_front(skip2);
        book.requeue_front(skip1);
        book.unqueue(&HashSet::from([skip1]));
        assert_eq!(book.take_queued(10, |_| true)[0].task_id, skip2);
    }

    #[test]
    fn walltimes_longer_than_a_block_are_refused() {
        let mut t = tasks(1, Uuid::new_v4()).remove(0);
        t.resource_spec = Some(r#"{"walltime": 700}"#.into());
        assert!(TaskBook::new(None).walltime_refusal(&t).is_none());
        let why = TaskBook::new(Some(600.0)).walltime_refusal(&t).unwrap();
        assert!(why.contains("700") && why.contains("600"), "{why}");
        t.resource_spec = Some(r#"{"walltime": "long"}"#.into());
        assert!(TaskBook::new(None).walltime_refusal(&t).is_some());
    }
}
