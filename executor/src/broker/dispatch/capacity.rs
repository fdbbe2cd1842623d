//! Capacity dispatch: on each round, which managers are looked at, and how
//! many queued ordinary tasks each gets (as many as it has room for, none
//! while it drains or is held for an MPI task, none whose own walltime its
//! block can no longer hold). Looking only at managers that freed room,
//! unless something else changed, keeps a results frame O(1) in the number
//! of managers.

use std::ops::ControlFlow;

use hpfaas_protocol::broker::BrokerMessage;

use super::managers::{ConnectedManager, Identity, Managers};
use super::tasks::TaskBook;

/// What the next round must look at.
pub struct Rounds {
    /// Managers that freed capacity since the last round. Only they can
    /// take queued work, unless `rescan` says more changed.
    freed: Vec<Identity>,
    /// Whether the next round must look at every manager: tasks were
    /// queued, or a manager registered or stopped being held for MPI.
    rescan: bool,
    /// Wall time of the last round: as time goes on, managers only lose
    /// eligibility (drain periods, deadlines), so only a clock stepped back
    /// calls for a rescan.
    last_now: f64,
}

impl Default for Rounds {
    fn default() -> Self {
        Rounds {
            freed: Vec::new(),
            rescan: false,
            last_now: f64::NEG_INFINITY,
        }
    }
}

impl Rounds {
    /// The next round looks at every manager.
    pub fn rescan(&mut self) {
        self.rescan = true;
    }

    /// A manager freed capacity.
    pub fn freed(&mut self, identity: &[u8]) {
        self.freed.push(identity.to_vec());
    }

    /// Hands queued tasks to managers with free capacity, round-robin in
    /// registration order, at wall time `now` (Unix seconds); appends the
    /// `Tasks` messages to `out`.
    pub fn dispatch(
        &mut self,
        managers: &mut Managers,
        tasks: &mut TaskBook,
        now: f64,
        out: &mut Vec<(Identity, BrokerMessage)>,
    ) {
        tasks.trim_front();
        if tasks.queue_len() == 0 {
            // Managers with room are looked at again when tasks come.
            self.freed.clear();
            return;
        }
        if now < self.last_now {
            self.rescan = true;
        }
        self.last_now = now;
        let drain_period = managers.drain_period();
        if std::mem::take(&mut self.rescan) {
            self.freed.clear();
            managers.each_in_order(|identity, m| {
                if tasks.queue_len() == 0 {
                    return ControlFlow::Break(());
                }
                if let Some(message) = fill(m, tasks, drain_period, now) {
                    out.push((identity.clone(), message));
                }
                ControlFlow::Continue(())
            });
        } else {
            for identity in std::mem::take(&mut self.freed) {
                if tasks.queue_len() == 0 {
                    break;
                }
                let Some(m) = managers.get_mut(&identity) else {
                    continue;
                };
                if let Some(message) = fill(m, tasks, drain_period, now) {
                    out.push((identity, message));
                }
            }
        }
    }
}

/// Hands a manager as many queued tasks as it has room for; the `Tasks`
/// message, if any.
fn fill(
    m: &mut ConnectedManager,
    tasks: &mut TaskBook,
    drain_period: f64,
    now: f64,
) -> Option<BrokerMessage> {
    if m.draining(drain_period, now) || m.held_for.is_some() {
        return None;
    }
    let free = m.free();
    if free == 0 {
        return None;
    }
    // Tasks whose own walltime this block can no longer hold wait for
    // another block (the strategy starts one if none is left). Only a block
    // with a deadline can be too short: parse the task's walltime only then
    // (this runs per results frame).
    let batch = tasks.take_queued(free, |t| {
        m.info.deadline.is_none() || m.fits(t.walltime().ok().flatten(), now)
    });
    if batch.is_empty() {
        return None;
    }
    m.in_hand.extend(batch.iter().map(|t| t.task_id));
    let functions = m.unseen_code(tasks.functions(), &batch);
    Some(BrokerMessage::Tasks {
        functions,
        tasks: batch,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use uuid::Uuid;

    use super::super::test_support::{info, tasks};
    use super::*;

    fn setup(names: &[&str]) -> (Managers, TaskBook) {
        let mut ms = Managers::new(Duration::from_secs(10), 60.0);
        for name in names {
            ms.register(
                name.as_bytes().to_vec(),
                info(name, "0", 1, 0),
                Instant::now(),
            )
            .unwrap();
        }
        (ms, TaskBook::new(None))
    }

    fn round(r: &mut Rounds, ms: &mut Managers, book: &mut TaskBook, now: f64) -> Vec<Identity> {
        let mut out = Vec::new();
        r.dispatch(ms, book, now, &mut out);
        out.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn without_a_rescan_only_freed_managers_are_looked_at() {
        let (mut ms, mut book) = setup(&["a", "b"]);
        let mut r = Rounds::default();
        for t in tasks(4, Uuid::new_v4()) {
            book.enqueue(t);
        }
        assert!(
            round(&mut r, &mut ms, &mut book, 0.0).is_empty(),
            "no rescan asked for"
        );
        r.rescan();
        assert_eq!(
            round(&mut r, &mut ms, &mut book, 0.0),
            [b"a".to_vec(), b"b".to_vec()]
        );
        for m in ["a", "b"] {
            ms.get_mut(m.as_bytes()).unwrap().in_hand.clear();
        }
        r.freed(b"b");
        assert_eq!(round(&mut r, &mut ms, &mut book, 1.0), [b"b".to_vec()]);
        ms.get_mut(b"b").unwrap().in_hand.clear();
        assert!(
            round(&mut r, &mut ms, &mut book, 2.0).is_empty(),
            "a freed manager is looked at once"
        );
        // A clock stepped back may make draining managers eligible again.
        assert_eq!(round(&mut r, &mut ms, &mut book, 1.5), [b"a".to_vec()]);
    }

    #[test]
    fn draining_held_and_full_managers_take_nothing() {
        let (mut ms, mut book) = setup(&["held", "full", "draining", "free"]);
        ms.get_mut(b"held").unwrap().held_for = Some(Uuid::new_v4());
        ms.get_mut(b"full").unwrap().in_hand.insert(Uuid::new_v4());
        ms.get_mut(b"draining").unwrap().info.deadline = Some(100.0);
        for t in tasks(3, Uuid::new_v4()) {
            book.enqueue(t);
        }
        let mut r = Rounds::default();
        r.rescan();
        assert_eq!(round(&mut r, &mut ms, &mut book, 50.0), [b"free".to_vec()]);
        assert_eq!(book.queue_len(), 2);
    }
}
