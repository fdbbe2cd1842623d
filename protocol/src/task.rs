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
    /// Held by the service until every task it depends on has succeeded
    /// (docs/api.md, "Dependencies").
    WaitingForDependencies,
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
    pub const ALL: [TaskState; 9] = [
        TaskState::Received,
        TaskState::WaitingForEp,
        TaskState::WaitingForDependencies,
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
            TaskState::WaitingForDependencies => "waiting-for-dependencies",
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

    /// The task's priority (`"priority"` in its `resource_specification`;
    /// [`crate::priority`]).
    pub fn priority(&self) -> i64 {
        crate::priority::priority_in(self.resource_spec.as_deref())
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
    /// What a Python task printed (absent from agents that predate it, and
    /// for tasks that printed nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Box<TaskOutput>>,
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
            output: None,
            completed_at: now_unix(),
            placement: None,
        }
    }
}

/// A Python task's standard output and error, each kept as a head and a
/// tail (`engine.python_output_limit`) with a `[hpfaas: N bytes of output
/// dropped here]` line between them, as shell tasks' output is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// What the task wrote to `sys.stdout`.
    #[serde(default)]
    pub stdout: String,
    /// What the task wrote to `sys.stderr`.
    #[serde(default)]
    pub stderr: String,
    /// Bytes of standard output not in `stdout`; 0 when it is whole.
    #[serde(default)]
    pub stdout_dropped: u64,
    /// Bytes of standard error not in `stderr`.
    #[serde(default)]
    pub stderr_dropped: u64,
}

impl TaskOutput {
    /// Bytes of text it holds (what storing it costs).
    pub fn len(&self) -> usize {
        self.stdout.len() + self.stderr.len()
    }

    /// True when neither stream holds any text.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cuts the two streams to at most `budget` bytes of text together,
    /// each keeping its head and tail; what is cut is added to its count.
    pub fn cap(&mut self, budget: usize) {
        if self.len() <= budget {
            return;
        }
        let half = budget / 2;
        // A stream under its half leaves the rest of the budget to the other.
        let (out, err) = if self.stdout.len() <= half {
            (self.stdout.len(), budget - self.stdout.len())
        } else if self.stderr.len() <= half {
            (budget - self.stderr.len(), self.stderr.len())
        } else {
            (half, budget - half)
        };
        self.stdout_dropped += keep_ends(&mut self.stdout, out);
        self.stderr_dropped += keep_ends(&mut self.stderr, err);
    }
}

/// Keeps about `limit` bytes of `text`, its start and its end, with a line
/// saying how many were dropped between them (the line itself may take the
/// whole of a small limit); returns the bytes of the original text dropped.
fn keep_ends(text: &mut String, limit: usize) -> u64 {
    if text.len() <= limit {
        return 0;
    }
    let marker_room = 64;
    let keep = limit.saturating_sub(marker_room);
    let mut head = keep / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (keep - keep / 2);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    let dropped = tail - head;
    let kept = format!(
        "{}\n[hpfaas: {dropped} bytes of output dropped here]\n{}",
        &text[..head],
        &text[tail..]
    );
    *text = kept;
    dropped as u64
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

    /// A result from an agent or manager that predates `output` decodes
    /// (JSON and MessagePack), and one without output is sent without the key.
    #[test]
    fn results_without_output_decode_and_encode_as_before() {
        let id = Uuid::new_v4();
        let old = format!(
            r#"{{"task_id":"{id}","outcome":{{"success":{{"result":"00\nx"}}}},"completed_at":1.5}}"#
        );
        let r: TaskResult = serde_json::from_str(&old).unwrap();
        assert_eq!(r.output, None);
        assert_eq!(serde_json::to_string(&r).unwrap(), old);
        #[derive(Serialize)]
        struct OldResult {
            task_id: Uuid,
            outcome: Outcome,
            completed_at: f64,
        }
        let packed = rmp_serde::to_vec_named(&OldResult {
            task_id: id,
            outcome: r.outcome.clone(),
            completed_at: 1.5,
        })
        .unwrap();
        let from_msgpack: TaskResult = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(from_msgpack, r);
    }

    #[test]
    fn output_travels_in_json_and_msgpack() {
        let mut r = TaskResult::failed(
            Uuid::new_v4(),
            ExceptionInfo::system(SystemFailure::WorkerLost, "gone"),
        );
        // A time JSON carries exactly: serde_json's parser may be one unit
        // in the last place off for some (it lacks `float_roundtrip`).
        r.completed_at = 1_700_000_000.5;
        r.output = Some(Box::new(TaskOutput {
            stdout: "héllo\n".into(),
            stderr: String::new(),
            stdout_dropped: 7,
            stderr_dropped: 0,
        }));
        let json: TaskResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(json, r);
        let packed: TaskResult =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&r).unwrap()).unwrap();
        assert_eq!(packed, r);
        // Keys a newer sender may leave out default to nothing.
        let partial: TaskOutput = serde_json::from_str(r#"{"stderr":"e"}"#).unwrap();
        assert_eq!(
            (partial.stdout.as_str(), partial.stderr.as_str()),
            ("", "e")
        );
    }

    /// Capping keeps each stream's ends, counts what it cut, never splits a
    /// character, and leaves a small stream whole when the other is large.
    #[test]
    fn capping_output_keeps_heads_and_tails() {
        let mut o = TaskOutput {
            stdout: format!("start{}end", "é".repeat(10_000)),
            stderr: "short".into(),
            ..TaskOutput::default()
        };
        let before = o.stdout.len() as u64;
        o.cap(1000);
        assert!(o.len() <= 1000 + 64, "{}", o.len());
        assert_eq!(o.stderr, "short");
        assert_eq!(o.stderr_dropped, 0);
        assert!(o.stdout.starts_with("start") && o.stdout.ends_with("end"));
        let marker = format!(
            "[hpfaas: {} bytes of output dropped here]",
            o.stdout_dropped
        );
        assert!(o.stdout.contains(&marker), "{}", o.stdout);
        let shown = o.stdout.len() as u64 - marker.len() as u64 - 2;
        assert_eq!(shown + o.stdout_dropped, before);
        let mut whole = o.clone();
        whole.cap(usize::MAX);
        assert_eq!(whole, o);
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
