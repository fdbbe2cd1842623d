//! The broker's queue of ordinary tasks, served by priority with aging
//! (the rule of `hpfaas_protocol::priority`: smallest
//! `arrived - priority * AGING_SECONDS` first, equal keys in arrival
//! order), and retries served before all of them.
//!
//! Within one priority the key grows with arrival, so each priority is a
//! plain FIFO and the next task is the best of the FIFOs' heads: pushing
//! and taking cost the same as one FIFO when every task has priority 0, and
//! a scan of the priorities in use otherwise (a handful, at most
//! `MAX_PRIORITY - MIN_PRIORITY + 1`). No task is ever re-sorted.

use std::collections::{BTreeMap, HashSet, VecDeque};

use hpfaas_protocol::priority::queue_key;
use uuid::Uuid;

/// One queued task: its key, its arrival number (ties) and its id.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: f64,
    seq: u64,
    id: Uuid,
}

/// Where a taken task came from, to put it back in the same place.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// `None` for a retry, else the task's priority and entry.
    from: Option<(i64, Entry)>,
    id: Uuid,
}

impl Place {
    /// The task's id.
    pub fn id(&self) -> Uuid {
        self.id
    }
}

/// Queued task ids by priority with aging, retries first.
#[derive(Debug, Default)]
pub struct PriorityQueue {
    /// Re-queued tasks (retries), served before any other, first in first out.
    retries: VecDeque<Uuid>,
    /// One FIFO per priority in use; a FIFO is removed when it empties.
    levels: BTreeMap<i64, VecDeque<Entry>>,
    /// Arrivals so far (the tie-break).
    seq: u64,
    len: usize,
}

impl PriorityQueue {
    /// Queues a task that arrived at `arrived` (seconds on the broker's
    /// clock, never earlier than the tasks queued before it).
    pub fn push(&mut self, id: Uuid, priority: i64, arrived: f64) {
        self.seq += 1;
        let entry = Entry {
            key: queue_key(arrived, priority),
            seq: self.seq,
            id,
        };
        self.levels.entry(priority).or_default().push_back(entry);
        self.len += 1;
    }

    /// Queues a task before every other (a retry goes before newer work).
    pub fn push_retry(&mut self, id: Uuid) {
        self.retries.push_front(id);
        self.len += 1;
    }

    /// Takes the next task to serve.
    pub fn pop(&mut self) -> Option<Place> {
        if let Some(id) = self.retries.pop_front() {
            self.len -= 1;
            return Some(Place { from: None, id });
        }
        let mut best: Option<(i64, Entry)> = None;
        for (&priority, fifo) in &self.levels {
            let Some(&head) = fifo.front() else { continue };
            let better = match &best {
                None => true,
                Some((_, b)) => (head.key, head.seq) < (b.key, b.seq),
            };
            if better {
                best = Some((priority, head));
            }
        }
        let (priority, entry) = best?;
        if let Some(fifo) = self.levels.get_mut(&priority) {
            fifo.pop_front();
            if fifo.is_empty() {
                self.levels.remove(&priority);
            }
        }
        self.len -= 1;
        Some(Place {
            from: Some((priority, entry)),
            id: entry.id,
        })
    }

    /// Puts back tasks just taken with [`PriorityQueue::pop`], most recently
    /// taken first, so each regains its exact place.
    pub fn put_back(&mut self, place: Place) {
        match place.from {
            None => self.retries.push_front(place.id),
            Some((priority, entry)) => self.levels.entry(priority).or_default().push_front(entry),
        }
        self.len += 1;
    }

    /// Drops the next task to serve if `dead` says so; true if it did.
    pub fn drop_next_if(&mut self, dead: impl Fn(&Uuid) -> bool) -> bool {
        let Some(place) = self.pop() else {
            return false;
        };
        if dead(&place.id) {
            return true;
        }
        self.put_back(place);
        false
    }

    /// Drops these ids wherever they are queued.
    pub fn remove_all(&mut self, dropped: &HashSet<Uuid>) {
        self.retries.retain(|id| !dropped.contains(id));
        for fifo in self.levels.values_mut() {
            fifo.retain(|e| !dropped.contains(&e.id));
        }
        self.levels.retain(|_, fifo| !fifo.is_empty());
        self.len = self.retries.len() + self.levels.values().map(VecDeque::len).sum::<usize>();
    }

    /// Ids queued.
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut PriorityQueue) -> Vec<Uuid> {
        std::iter::from_fn(|| q.pop().map(|p| p.id())).collect()
    }

    #[test]
    fn higher_priorities_first_then_arrival_order() {
        let mut q = PriorityQueue::default();
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        // All arrive at once: priority decides, then arrival.
        q.push(ids[0], 0, 100.0);
        q.push(ids[1], 0, 100.0);
        q.push(ids[2], 5, 100.0);
        q.push(ids[3], -1, 100.0);
        q.push(ids[4], 5, 100.0);
        assert_eq!(q.len(), 5);
        assert_eq!(drain(&mut q), [ids[2], ids[4], ids[0], ids[1], ids[3]]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn waiting_tasks_age_past_newer_higher_priority_ones() {
        // A hand-advanced clock: the priority-0 task arrives at 0 s; a
        // priority-1 task at 59 s still goes before it, one at 61 s after.
        let mut q = PriorityQueue::default();
        let (old, early, late) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        q.push(old, 0, 0.0);
        q.push(early, 1, 59.0);
        q.push(late, 1, 61.0);
        assert_eq!(drain(&mut q), [early, old, late]);
    }

    #[test]
    fn a_low_priority_task_is_served_once_it_has_waited_long_enough() {
        // A steady stream of top-priority tasks, one a second, cannot keep
        // a lowest-priority task waiting longer than the aging bound.
        use hpfaas_protocol::priority::{AGING_SECONDS, MAX_PRIORITY, MIN_PRIORITY};
        let mut q = PriorityQueue::default();
        let low = Uuid::new_v4();
        q.push(low, MIN_PRIORITY, 0.0);
        let bound = (MAX_PRIORITY - MIN_PRIORITY) as f64 * AGING_SECONDS;
        let mut now = 0.0;
        loop {
            now += 1.0;
            q.push(Uuid::new_v4(), MAX_PRIORITY, now);
            // One task served a second, so the queue only grows by the stream.
            if q.pop().unwrap().id() == low {
                break;
            }
            assert!(now <= bound + 1.0, "still waiting after {now} s");
        }
        assert!(now > bound - 2.0, "served at {now} s, before its time");
    }

    #[test]
    fn retries_go_first_and_put_back_restores_places() {
        let mut q = PriorityQueue::default();
        let (a, b, c, r) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        q.push(a, 0, 0.0);
        q.push(b, 3, 0.0);
        q.push(c, 0, 0.0);
        q.push_retry(r);
        let taken: Vec<Place> = std::iter::from_fn(|| q.pop()).take(3).collect();
        assert_eq!(taken.iter().map(Place::id).collect::<Vec<_>>(), [r, b, a]);
        for place in taken.into_iter().rev() {
            q.put_back(place);
        }
        q.remove_all(&HashSet::from([b]));
        assert_eq!(q.len(), 3);
        assert_eq!(drain(&mut q), [r, a, c]);
    }
}
