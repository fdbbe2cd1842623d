//! The names of failures hpfaas itself reports in place of a result.
//!
//! They are wire contract: the SDK maps some of them to exception classes
//! (`TaskCancelled`, `ResultExpired`), the broker retries on one of them
//! (`WorkerLost`), and users match on all of them. Every hop names them
//! through [`SystemFailure`], so a name is spelled once.

use std::fmt;

/// A failure raised by hpfaas rather than by the user's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemFailure {
    /// The worker process running the task died.
    WorkerLost,
    /// The manager holding the task stopped answering and retries ran out.
    ManagerLost,
    /// The task ran longer than its walltime.
    TaskTimeout,
    /// The task was cancelled before it finished.
    TaskCancelled,
    /// The service lost the task's stored arguments.
    PayloadLost,
    /// The result was larger than a hop allows.
    ResultTooLarge,
    /// The service purged the result before anyone fetched it.
    ResultExpired,
    /// The endpoint's policy refuses the function.
    FunctionNotAllowed,
    /// The task's arguments or resource specification are invalid (named as
    /// Python's `ValueError`, as Globus Compute reports it).
    ValueError,
    /// The manager does not know the task's function.
    FunctionNotFound,
    /// The task's `run_in_sandbox` directory could not be made.
    SandboxError,
    /// A worker answered with a frame the manager cannot read.
    WorkerProtocolError,
    /// A shell function exited non-zero or could not start.
    ShellFunctionError,
    /// An MPI function's launch failed or exited non-zero.
    MpiFunctionError,
    /// A task this one depends on failed or was lost; the message names it
    /// and its error.
    DependencyFailed,
}

impl SystemFailure {
    /// Every failure, for tests and documentation.
    pub const ALL: [SystemFailure; 15] = [
        SystemFailure::WorkerLost,
        SystemFailure::ManagerLost,
        SystemFailure::TaskTimeout,
        SystemFailure::TaskCancelled,
        SystemFailure::PayloadLost,
        SystemFailure::ResultTooLarge,
        SystemFailure::ResultExpired,
        SystemFailure::FunctionNotAllowed,
        SystemFailure::ValueError,
        SystemFailure::FunctionNotFound,
        SystemFailure::SandboxError,
        SystemFailure::WorkerProtocolError,
        SystemFailure::ShellFunctionError,
        SystemFailure::MpiFunctionError,
        SystemFailure::DependencyFailed,
    ];

    /// The exception type name users see.
    pub const fn name(self) -> &'static str {
        match self {
            SystemFailure::WorkerLost => "WorkerLost",
            SystemFailure::ManagerLost => "ManagerLost",
            SystemFailure::TaskTimeout => "TaskTimeout",
            SystemFailure::TaskCancelled => "TaskCancelled",
            SystemFailure::PayloadLost => "PayloadLost",
            SystemFailure::ResultTooLarge => "ResultTooLarge",
            SystemFailure::ResultExpired => "ResultExpired",
            SystemFailure::FunctionNotAllowed => "FunctionNotAllowed",
            SystemFailure::ValueError => "ValueError",
            SystemFailure::FunctionNotFound => "FunctionNotFound",
            SystemFailure::SandboxError => "SandboxError",
            SystemFailure::WorkerProtocolError => "WorkerProtocolError",
            SystemFailure::ShellFunctionError => "ShellFunctionError",
            SystemFailure::MpiFunctionError => "MPIFunctionError",
            SystemFailure::DependencyFailed => "DependencyFailed",
        }
    }

    /// Whether `exc_type` names this failure.
    pub fn is(self, exc_type: &str) -> bool {
        exc_type == self.name()
    }
}

impl fmt::Display for SystemFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_stable() {
        let names: std::collections::HashSet<_> =
            SystemFailure::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), SystemFailure::ALL.len());
        // The SDK and users match on these spellings: changing one breaks them.
        assert_eq!(SystemFailure::WorkerLost.to_string(), "WorkerLost");
        assert_eq!(SystemFailure::MpiFunctionError.name(), "MPIFunctionError");
        assert_eq!(SystemFailure::ValueError.name(), "ValueError");
        assert!(SystemFailure::TaskCancelled.is("TaskCancelled"));
        assert!(!SystemFailure::TaskCancelled.is("taskcancelled"));
    }
}
