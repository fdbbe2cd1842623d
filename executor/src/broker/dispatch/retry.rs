//! What becomes of a task whose run ended without its own answer (its worker
//! or manager was lost): it runs again while its retry budget
//! (`engine.max_retries_on_system_failure`) lasts, unless its owner
//! cancelled it meanwhile: then it is reported as `TaskCancelled` and never
//! run again.

use std::collections::{HashMap, HashSet};

use hpfaas_protocol::broker::ManagerInfo;
use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::task::{ExceptionInfo, Outcome, TaskResult};
use uuid::Uuid;

/// Retry budgets spent so far, and cancellations awaiting a result.
pub struct Retries {
    max_retries: u32,
    attempts: HashMap<Uuid, u32>,
    /// Cancelled tasks still in a manager's hands, until their result.
    cancelled: HashSet<Uuid>,
}

impl Retries {
    /// Budgets of `max_retries` re-runs per task.
    pub fn new(max_retries: u32) -> Self {
        Retries {
            max_retries,
            attempts: HashMap::new(),
            cancelled: HashSet::new(),
        }
    }

    /// Spends one re-run of the task's budget; false if it was spent already.
    pub fn spend(&mut self, task_id: Uuid) -> bool {
        let attempts = self.attempts.entry(task_id).or_insert(0);
        if *attempts >= self.max_retries {
            return false;
        }
        *attempts += 1;
        true
    }

    /// Marks a task in a manager's hands as cancelled.
    pub fn cancel(&mut self, task_id: Uuid) {
        self.cancelled.insert(task_id);
    }

    /// True (once) if the task was cancelled while in a manager's hands.
    pub fn take_cancelled(&mut self, task_id: &Uuid) -> bool {
        // Guarded: in ordinary work the set is empty, and this runs per result.
        !self.cancelled.is_empty() && self.cancelled.remove(task_id)
    }

    /// Forgets a task that is over.
    pub fn forget(&mut self, task_id: &Uuid) {
        if !self.attempts.is_empty() {
            self.attempts.remove(task_id);
        }
    }
}

/// True if the result says the task's worker died under it.
pub fn worker_lost(result: &TaskResult) -> bool {
    matches!(&result.outcome, Outcome::Failed { exception } if SystemFailure::WorkerLost.is(&exception.exc_type))
}

/// The result reported for a cancelled task that a manager held.
pub fn cancelled(task_id: Uuid, how: &str) -> TaskResult {
    TaskResult::failed(
        task_id,
        ExceptionInfo::system(
            SystemFailure::TaskCancelled,
            format!("the task was cancelled by its owner; {how}"),
        ),
    )
}

/// The result reported for a task whose manager was lost with no retry left.
pub fn manager_lost(task_id: Uuid, manager: &ManagerInfo, why: &str) -> TaskResult {
    let message = format!(
        "manager {} (block {}, host {}) was lost while running this task: {why}",
        manager.manager_id, manager.block_id, manager.host
    );
    TaskResult::failed(
        task_id,
        ExceptionInfo::system(SystemFailure::ManagerLost, message),
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{info, ok};
    use super::*;

    #[test]
    fn a_budget_is_per_task_and_starts_afresh_once_forgotten() {
        let mut r = Retries::new(2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(r.spend(a) && r.spend(a));
        assert!(!r.spend(a), "two re-runs, no third");
        assert!(r.spend(b), "another task has its own budget");
        r.forget(&a);
        assert!(r.spend(a));
        assert!(!Retries::new(0).spend(a), "no budget, no re-run");
    }

    #[test]
    fn a_cancellation_is_taken_once() {
        let mut r = Retries::new(0);
        let a = Uuid::new_v4();
        assert!(!r.take_cancelled(&a));
        r.cancel(a);
        assert!(r.take_cancelled(&a));
        assert!(!r.take_cancelled(&a));
    }

    #[test]
    fn failures_name_their_cause() {
        let id = Uuid::new_v4();
        let lost = TaskResult::failed(id, ExceptionInfo::system(SystemFailure::WorkerLost, "x"));
        assert!(worker_lost(&lost));
        assert!(!worker_lost(&ok(id)));
        assert!(!worker_lost(&cancelled(id, "x")));
        let Outcome::Failed { exception } = manager_lost(id, &info("m", "7", 1, 0), "gone").outcome
        else {
            panic!("expected a failure")
        };
        assert_eq!(exception.exc_type, SystemFailure::ManagerLost.name());
        assert!(
            exception.message.contains("manager m (block 7") && exception.message.ends_with("gone"),
            "{}",
            exception.message
        );
    }
}
