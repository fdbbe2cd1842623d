//! Tasks as every hop sees them: states (Globus Compute's names), the task
//! handed down to an endpoint, and the outcome handed back up.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::failure::SystemFailure;

/// Lifecycle state of a task, spelled as Globus Compute spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskState {
    /// Stored by the service, not yet handed to a connected endpoint.
    Received,
    /// Stored by the service; its endpoint is offline.
    WaitingForEp,
    /// Journaled by the endpoint; no manager is connected yet, or (an MPI
    /// task) not enough nodes of one block are free.
    WaitingForNodes,
    /// Journaled by the endpoint and queued for a worker.
    WaitingForLaunch,
    /// A worker is running it.
    Running,
    /// Finished and returned a result.
    Success,
    /// Finished with an exception or a system failure.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 8] = [
        TaskState::Received,
        TaskState::WaitingForEp,
        TaskState::WaitingForNodes,
        TaskState::WaitingForLaunch,
        TaskState::Running,
        TaskState::Success,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The state's wire name, e.g. `waiting-for-ep`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Received => "received",
            TaskState::WaitingForEp => "waiting-for-ep",
            TaskState::WaitingForNodes => "waiting-for-nodes",
            TaskState::WaitingForLaunch => "waiting-for-launch",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True once the task can no longer change.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A function's serialized code (`pack([code])`), sent once per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCode {
    /// The function's UUID.
    pub function_id: Uuid,
    /// Packed buffers of the function's code, as registered.
    pub code: String,
}

/// One task as handed to an endpoint and on to a manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's UUID.
    pub task_id: Uuid,
    /// Function to run; its code travels separately as [`FunctionCode`].
    pub function_id: Uuid,
    /// Packed `[args, kwargs]` buffers, as the client sent them.
    pub payload: String,
    /// The raw bytes of an args buffer sent as `pb\n<length>` (a pickle
    /// carried beside the text, never base64-encoded; docs/api.md,
    /// "Binary arguments"). Only MessagePack frames carry it; shared, not
    /// copied, when the task is cloned (the broker keeps one to re-queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<bytes::Bytes>,
    /// Strategy identifiers the client accepts for the result, best first;
    /// empty means the default (`00\n`).
    #[serde(default)]
    pub result_serializers: Vec<String>,
    /// The client's `resource_specification`, if any (JSON object).
    #[serde(default)]
    pub resource_spec: Option<String>,
}

/// Longest per-task walltime accepted, in seconds (about 31 years).
pub const MAX_WALLTIME: f64 = 1e9;

impl TaskSpec {
    /// About how many bytes the task takes in a frame (to size buffers
    /// once: growing one by doubling copies a large blob again and again).
    pub fn frame_size(&self) -> usize {
        self.payload.len() + self.blob.as_ref().map_or(0, |b| b.len()) + 160
    }

    /// The task's own walltime in seconds (`"walltime"` in its
    /// `resource_specification`), or why it is unusable.
    pub fn walltime(&self) -> Result<Option<f64>, String> {
        let Some(text) = self.resource_spec.as_deref() else {
            return Ok(None);
        };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("resource_specification is not valid JSON: {e}"))?;
        match value.get("walltime") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(w) => match w.as_f64() {
                // Bounded, so every accepted walltime is a valid `Duration`.
                Some(s) if s > 0.0 && s <= MAX_WALLTIME => Ok(Some(s)),
                _ => Err(format!(
                    "resource_specification walltime must be a positive number of seconds \
                     up to {MAX_WALLTIME}, not {w}"
                )),
            },
        }
    }
}

/// A remote exception: what the user sees in `TaskExecutionFailed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// Exception type name, e.g. `ZeroDivisionError`, `WorkerLost`.
    #[serde(rename = "type")]
    pub exc_type: String,
    /// The exception's message (`str(exc)`).
    pub message: String,
    /// Formatted traceback text (may be just the message for system errors).
    pub traceback: String,
}

impl ExceptionInfo {
    /// A failure raised by hpfaas itself rather than the user's code.
    pub fn system(failure: SystemFailure, message: impl Into<String>) -> Self {
        let message = message.into();
        ExceptionInfo {
            exc_type: failure.name().to_string(),
            traceback: format!("{failure}: {message}"),
            message,
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The function returned; `result` is a serialized buffer (`00\n...`).
    Success {
        /// Serialized return value.
        result: String,
    },
    /// The function raised, or the system lost it.
    Failed {
        /// What went wrong.
        exception: ExceptionInfo,
    },
}

/// Where and when a task started: the worker that ran it to its result.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Placement {
    /// When it started on the worker, seconds since the Unix epoch (the
    /// node's clock, as `completed_at`).
    pub started_at: f64,
    /// The block (pilot job) of the manager.
    pub block_id: String,
    /// The manager that ran it.
    pub manager_id: String,
    /// The worker slot of that manager, from 0.
    pub worker: u32,
    /// Host name of the node.
    pub host: String,
}

/// The outcome of one task, with when it completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's UUID.
    pub task_id: Uuid,
    /// Result or exception.
    pub outcome: Outcome,
    /// Completion time, seconds since the Unix epoch.
    pub completed_at: f64,
    /// Where it ran, when it reached a worker; absent from older managers
    /// and from results made without one (cancelled while queued, lost).
    /// Boxed: most results in flight are small, and travel by value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Box<Placement>>,
}

impl TaskResult {
    /// A failure result stamped with the current time.
    pub fn failed(task_id: Uuid, exception: ExceptionInfo) -> Self {
        TaskResult {
            task_id,
            outcome: Outcome::Failed { exception },
            completed_at: now_unix(),
            placement: None,
        }
    }
}

/// Seconds since the Unix epoch, as a float (Globus Compute's `completion_t`).
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_walltimes() {
        let spec = |rs: Option<&str>| TaskSpec {
            task_id: uuid::Uuid::nil(),
            function_id: uuid::Uuid::nil(),
            payload: String::new(),
            blob: None,
            result_serializers: vec![],
            resource_spec: rs.map(str::to_string),
        };
        assert_eq!(spec(None).walltime(), Ok(None));
        assert_eq!(spec(Some(r#"{"num_nodes": 2}"#)).walltime(), Ok(None));
        assert_eq!(spec(Some(r#"{"walltime": 90}"#)).walltime(), Ok(Some(90.0)));
        assert!(spec(Some(r#"{"walltime": -1}"#)).walltime().is_err());
        assert!(spec(Some(r#"{"walltime": 1e300}"#)).walltime().is_err());
        assert!(spec(Some(r#"{"walltime": "1h"}"#))
            .walltime()
            .unwrap_err()
            .contains("walltime"));
    }

    #[test]
    fn state_names_round_trip() {
        for st in TaskState::ALL {
            assert_eq!(TaskState::parse(st.as_str()), Some(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert_eq!(TaskState::parse("done"), None);
    }
}
