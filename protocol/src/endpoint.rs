//! The endpoint agent's WebSocket conversation with the service.
//!
//! The agent connects to `GET /v3/endpoints/{id}/connect` with its endpoint
//! credential as `Authorization: Bearer`, sends [`AgentMessage::Hello`], and
//! gets [`ServiceMessage::Welcome`] or [`ServiceMessage::Refused`]. After that
//! both sides stream batches: tasks down, acknowledgements and results up,
//! result acknowledgements down. Every frame is one JSON text message, but
//! for tasks that carry blobs (raw argument bytes): those come as a binary
//! frame, a [`TasksFrame`] in MessagePack. The service builds a JSON
//! `tasks` frame from tasks encoded one at a time ([`TasksJson`]).
//!
//! Delivery is at least once on this hop: the service re-sends every task
//! that is not final when an agent (re)connects, and the agent re-sends every
//! result that the service has not acknowledged. Both sides drop duplicates
//! by task id.

use crate::failure::SystemFailure;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::task::{ExceptionInfo, FunctionCode, Outcome, TaskResult, TaskSpec, TaskState};
use crate::DecodeError;

/// A frame from the endpoint agent to the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First frame on a connection.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the agent.
        version: u32,
        /// Host name of the machine the agent runs on.
        host: String,
        /// Process id of the agent.
        pid: u32,
        /// The endpoint's `allowed_functions`: the service refuses a submit of
        /// any other function (403). Empty (the default) allows all of the
        /// owner's functions. Missing from older agents.
        #[serde(default)]
        allowed_functions: Vec<Uuid>,
        /// The endpoint accepts only JSON (`11\n`) arguments: the service
        /// refuses a submit whose payload buffers use any other strategy (400).
        /// Missing from older agents (`false`).
        #[serde(default)]
        json_only: bool,
        /// The agent grants credit ([`AgentMessage::Credit`]): the service
        /// sends no more tasks than granted. Older agents (`false`) get
        /// every queued task.
        #[serde(default)]
        flow_control: bool,
    },
    /// These tasks are journaled by the agent; the service stops re-sending
    /// them on this connection and marks them `waiting-for-launch`.
    Ack {
        /// Journaled task ids.
        task_ids: Vec<Uuid>,
    },
    /// Non-final state changes (e.g. `running`).
    States {
        /// (task id, new state) pairs.
        updates: Vec<(Uuid, TaskState)>,
    },
    /// Finished tasks; the service answers with [`ServiceMessage::ResultAck`]
    /// once they are durable.
    Results {
        /// Outcomes.
        results: Vec<TaskResult>,
    },
    /// The agent can take this many more tasks (added to what it granted
    /// before on this connection, less the tasks sent since). Credit starts
    /// at zero on every connection; the agent grants it in batches.
    Credit {
        /// More tasks the service may send.
        tasks: u64,
    },
    /// Periodic liveness and capacity report.
    Heartbeat {
        /// What the endpoint has right now.
        status: EndpointReport,
    },
}

/// A frame from the service to the endpoint agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServiceMessage {
    /// The connection is accepted.
    Welcome {
        /// [`crate::PROTOCOL_VERSION`] of the service.
        version: u32,
        /// How often the agent should send heartbeats, seconds.
        heartbeat_period: f64,
        /// The service's `--max-result-bytes`: the agent fails a larger
        /// result with `ResultTooLarge` before journaling it. Missing from
        /// older services.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_result_bytes: Option<u64>,
        /// Largest WebSocket message the service reads: the agent keeps every
        /// frame below it. Missing from older services (64 MiB then).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_message_bytes: Option<u64>,
        /// The service honours [`AgentMessage::Credit`] on this connection
        /// (the hello asked for flow control). An older service says
        /// nothing and would close the link on a credit frame: the agent
        /// sends none then.
        #[serde(default)]
        flow_control: bool,
    },
    /// The connection is refused; the agent reports `reason` and stops.
    Refused {
        /// Why, in words for the user.
        reason: String,
    },
    /// Tasks to run. `functions` holds the code of every function in `tasks`
    /// that was not yet sent on this connection.
    Tasks {
        /// Function code not yet sent on this connection.
        functions: Vec<FunctionCode>,
        /// The tasks.
        tasks: Vec<TaskSpec>,
    },
    /// These results are durable in the service; the agent may forget them.
    ResultAck {
        /// Acknowledged task ids.
        task_ids: Vec<Uuid>,
    },
    /// The owner cancelled these tasks (already `cancelled` in the service):
    /// drop them if queued, kill them if running. The agent answers with
    /// [`AgentMessage::Ack`] of the ids once it has recorded the cancellation
    /// (ids it never held included); until an `Ack` or a result for a task
    /// arrives, the service repeats the cancel on every reconnect. A result
    /// that still arrives for a cancelled task is acknowledged and dropped.
    /// An agent older than this message logs it as unknown and ignores it.
    Cancel {
        /// Cancelled task ids.
        task_ids: Vec<Uuid>,
    },
}

/// Capacity and load of an endpoint, as reported in heartbeats and shown by
/// `GET /v2/endpoints/{id}/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    /// Connected managers.
    pub managers: u32,
    /// Worker slots across all managers.
    pub total_workers: u32,
    /// Worker slots with nothing to do.
    pub idle_workers: u32,
    /// Tasks accepted but not finished.
    pub outstanding_tasks: u64,
    /// Blocks (pilot jobs) alive or starting.
    pub active_blocks: u32,
}

/// Tasks of which some carry a blob ([`TaskSpec::blob`]): the service sends
/// them as a binary frame, this struct in MessagePack, so the blobs travel
/// as raw bytes; the agent takes it as a [`ServiceMessage::Tasks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TasksFrame {
    /// Function code not yet sent on this connection.
    pub functions: Vec<FunctionCode>,
    /// The tasks.
    pub tasks: Vec<TaskSpec>,
}

impl TasksFrame {
    /// The binary frame.
    pub fn encode(&self) -> Vec<u8> {
        let size = crate::broker::tasks_size_hint(&self.functions, &self.tasks);
        crate::broker::encode_sized(self, size)
    }

    /// Parses a binary frame.
    pub fn decode(bytes: &[u8]) -> Result<TasksFrame, DecodeError> {
        crate::broker::decode(bytes)
    }
}

impl From<TasksFrame> for ServiceMessage {
    fn from(frame: TasksFrame) -> ServiceMessage {
        ServiceMessage::Tasks {
            functions: frame.functions,
            tasks: frame.tasks,
        }
    }
}

/// One task of a JSON `tasks` frame, encoded once: the service weighs it
/// against the frame's byte budget before adding it ([`TasksJson::push`]),
/// and the frame is spliced from these texts without encoding them again.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTask {
    task: String,
    code: Option<String>,
}

impl EncodedTask {
    /// Encodes `task` and, when it is to go with it, its function's `code`.
    pub fn new(task: &TaskSpec, code: Option<&FunctionCode>) -> Result<Self, serde_json::Error> {
        Ok(EncodedTask {
            task: serde_json::to_string(task)?,
            code: code.map(serde_json::to_string).transpose()?,
        })
    }

    /// Bytes it adds to a frame, its separators included.
    pub fn frame_bytes(&self) -> usize {
        self.task.len() + self.code.as_ref().map_or(0, |c| c.len() + 1) + 1
    }
}

/// A [`ServiceMessage::Tasks`] as JSON text, spliced from tasks encoded one
/// at a time ([`EncodedTask`]): the same text [`to_json`] gives for the
/// message, without building the message or encoding a task twice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TasksJson {
    functions: String,
    tasks: String,
    count: usize,
}

impl TasksJson {
    /// Adds a task (and its function's code, if it carries it).
    pub fn push(&mut self, item: EncodedTask) {
        if let Some(code) = item.code {
            if !self.functions.is_empty() {
                self.functions.push(',');
            }
            self.functions.push_str(&code);
        }
        if !self.tasks.is_empty() {
            self.tasks.push(',');
        }
        self.tasks.push_str(&item.task);
        self.count += 1;
    }

    /// Tasks added so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no task was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The frame's text.
    pub fn finish(self) -> String {
        let (functions, tasks) = (self.functions, self.tasks);
        // The tag and field order of `ServiceMessage::Tasks` as serde writes
        // them; a unit test holds the two to the same text.
        format!(r#"{{"type":"tasks","functions":[{functions}],"tasks":[{tasks}]}}"#)
    }
}

/// Largest message an older service (one that does not say) reads.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Longest exception type name kept, bytes.
const MAX_EXC_TYPE: usize = 256;

/// Cuts `s` to at most `max` bytes, on a character boundary, saying so.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let note = format!("... [cut at {max} bytes of {}]", s.len());
        let mut cut = max.saturating_sub(note.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(&note);
    }
}

/// The failure that replaces a result of `size` bytes over `limit`.
fn too_large(size: usize, limit: usize, what: &str) -> Outcome {
    Outcome::Failed {
        exception: ExceptionInfo::system(
            SystemFailure::ResultTooLarge,
            format!(
                "the result is {size} bytes, more than {what} of {limit} bytes; return less \
                 data, or write it to a file and return its path"
            ),
        ),
    }
}

/// Enforces the service's `--max-result-bytes` (`limit`): a larger result
/// fails its task with `ResultTooLarge` (naming the size and the limit); an
/// oversized exception text is cut. The agent applies it before journaling,
/// the service again on receipt.
pub fn cap_results(results: &mut [TaskResult], limit: usize) {
    for r in results {
        match &mut r.outcome {
            Outcome::Success { result } if result.len() > limit => {
                let size = result.len();
                r.outcome = too_large(size, limit, "the service's limit (--max-result-bytes)");
            }
            Outcome::Success { .. } => {}
            Outcome::Failed { exception } => {
                truncate(&mut exception.exc_type, MAX_EXC_TYPE);
                let half = (limit / 2).max(256);
                truncate(&mut exception.message, half);
                truncate(&mut exception.traceback, half);
            }
        }
    }
}

/// Room a `results` frame takes around its results.
const RESULTS_ENVELOPE: usize = 64;

/// Packs results into `results` frames (JSON text) of at most `target`
/// bytes each, encoding each result once; a result alone may take up to
/// `max` (the service's message limit) and one whose encoding is larger
/// still is replaced by a `ResultTooLarge` failure, so no frame is ever
/// refused by the service (and re-sent forever).
pub fn result_frames(results: Vec<TaskResult>, target: usize, max: usize) -> Vec<String> {
    let max = max.saturating_sub(RESULTS_ENVELOPE).max(1024);
    let target = target.min(max);
    let mut frames = Vec::new();
    let mut frame = String::new();
    for mut r in results {
        let mut text = to_json(&r);
        if text.len() > max {
            let size = match &r.outcome {
                Outcome::Success { result } => result.len(),
                Outcome::Failed { .. } => text.len(),
            };
            r.outcome = too_large(size, max, "what one message to the service may carry");
            cap_results(std::slice::from_mut(&mut r), max / 8);
            text = to_json(&r);
        }
        if !frame.is_empty() && frame.len() + text.len() + 3 > target {
            frame.push_str("]}");
            frames.push(std::mem::take(&mut frame));
        }
        if frame.is_empty() {
            frame.push_str(r#"{"type":"results","results":["#);
        } else {
            frame.push(',');
        }
        frame.push_str(&text);
    }
    if !frame.is_empty() {
        frame.push_str("]}");
        frames.push(frame);
    }
    frames
}

/// Serializes a frame as JSON text.
pub fn to_json<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).expect("protocol messages always serialize")
}

/// Parses a JSON frame.
pub fn from_json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
    Ok(serde_json::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_frame_carries_blobs_as_raw_bytes() {
        let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let frame = TasksFrame {
            functions: vec![FunctionCode {
                function_id: Uuid::new_v4(),
                code: "st\nf:def f(x): return x".into(),
            }],
            tasks: vec![TaskSpec {
                task_id: Uuid::new_v4(),
                function_id: Uuid::new_v4(),
                payload: "9\npb\n100000".into(),
                blob: Some(blob.clone().into()),
                result_serializers: vec![],
                resource_spec: None,
            }],
        };
        let bytes = frame.encode();
        assert!(
            bytes.len() < blob.len() + 400,
            "{} bytes: not raw",
            bytes.len()
        );
        assert_eq!(TasksFrame::decode(&bytes).unwrap(), frame);
        assert!(TasksFrame::decode(&bytes[..bytes.len() / 2]).is_err());
        // JSON frames never carry the field when there is no blob.
        let plain = TaskSpec {
            blob: None,
            ..frame.tasks[0].clone()
        };
        assert!(!to_json(&plain).contains("blob"));
    }

    fn spec(function_id: Uuid, n: u32) -> TaskSpec {
        TaskSpec {
            task_id: Uuid::new_v4(),
            function_id,
            payload: format!("5\n11\n[{n}]2\n{{}}\u{e9}\"quoted\""),
            blob: None,
            result_serializers: vec!["11".into(), "00".into()],
            resource_spec: (n == 1).then(|| r#"{"num_nodes": 2}"#.into()),
        }
    }

    #[test]
    fn a_spliced_tasks_frame_is_the_serde_frame() {
        let (f, g) = (Uuid::new_v4(), Uuid::new_v4());
        let code = |function_id| FunctionCode {
            function_id,
            code: "st\nf:def f(x):\n    return \"x\"".into(),
        };
        // Code goes with the first task of each function only.
        let sent = [
            (spec(f, 0), Some(code(f))),
            (spec(f, 1), None),
            (spec(g, 2), Some(code(g))),
        ];
        let mut spliced = TasksJson::default();
        assert!(spliced.is_empty());
        let mut bytes = 0;
        for (task, code) in &sent {
            let item = EncodedTask::new(task, code.as_ref()).unwrap();
            bytes += item.frame_bytes();
            spliced.push(item);
        }
        assert_eq!(spliced.len(), 3);
        let message = ServiceMessage::Tasks {
            functions: sent.iter().filter_map(|(_, c)| c.clone()).collect(),
            tasks: sent.iter().map(|(t, _)| t.clone()).collect(),
        };
        let text = spliced.finish();
        assert_eq!(text, to_json(&message));
        assert_eq!(from_json::<ServiceMessage>(&text).unwrap(), message);
        // What the items weighed is what the frame holds, less its envelope.
        let envelope = to_json(&ServiceMessage::Tasks {
            functions: vec![],
            tasks: vec![],
        });
        assert!(
            text.len() <= bytes + envelope.len(),
            "{bytes} {}",
            text.len()
        );
        // A frame of tasks whose code was sent before has no functions.
        let mut later = TasksJson::default();
        later.push(EncodedTask::new(&sent[1].0, None).unwrap());
        let message = ServiceMessage::Tasks {
            functions: vec![],
            tasks: vec![sent[1].0.clone()],
        };
        assert_eq!(later.finish(), to_json(&message));
    }

    #[test]
    fn messages_round_trip_as_json() {
        let id = Uuid::new_v4();
        let msgs = vec![
            AgentMessage::Hello {
                version: 1,
                host: "login1".into(),
                pid: 42,
                allowed_functions: vec![id],
                json_only: true,
                flow_control: false,
            },
            AgentMessage::Ack { task_ids: vec![id] },
            AgentMessage::Credit { tasks: 512 },
            AgentMessage::States {
                updates: vec![(id, TaskState::Running)],
            },
            AgentMessage::Results {
                results: vec![TaskResult {
                    task_id: id,
                    outcome: Outcome::Failed {
                        exception: ExceptionInfo::system(
                            SystemFailure::WorkerLost,
                            "worker 3 died",
                        ),
                    },
                    completed_at: 1.5,
                    placement: None,
                }],
            },
            AgentMessage::Heartbeat {
                status: EndpointReport::default(),
            },
        ];
        for m in msgs {
            let text = to_json(&m);
            assert_eq!(from_json::<AgentMessage>(&text).unwrap(), m);
        }
        let hello = to_json(&AgentMessage::Hello {
            version: 1,
            host: "h".into(),
            pid: 1,
            allowed_functions: vec![],
            json_only: false,
            flow_control: false,
        });
        assert!(hello.starts_with("{\"type\":\"hello\""), "{hello}");
    }

    #[test]
    fn older_peers_still_parse() {
        // A hello from an agent that predates the policy fields.
        let old = r#"{"type":"hello","version":1,"host":"h","pid":7}"#;
        assert_eq!(
            from_json::<AgentMessage>(old).unwrap(),
            AgentMessage::Hello {
                version: 1,
                host: "h".into(),
                pid: 7,
                allowed_functions: vec![],
                json_only: false,
                flow_control: false,
            }
        );
        // A welcome from a service that predates the limits and flow control.
        let old = r#"{"type":"welcome","version":1,"heartbeat_period":2.0}"#;
        assert_eq!(
            from_json::<ServiceMessage>(old).unwrap(),
            ServiceMessage::Welcome {
                version: 1,
                heartbeat_period: 2.0,
                max_result_bytes: None,
                max_message_bytes: None,
                flow_control: false,
            }
        );
        let id = Uuid::new_v4();
        let cancel = ServiceMessage::Cancel { task_ids: vec![id] };
        let text = to_json(&cancel);
        assert_eq!(from_json::<ServiceMessage>(&text).unwrap(), cancel);
        assert!(text.starts_with("{\"type\":\"cancel\""), "{text}");
    }

    fn success(size: usize) -> TaskResult {
        TaskResult {
            task_id: Uuid::new_v4(),
            outcome: Outcome::Success {
                result: "r".repeat(size),
            },
            completed_at: 1.0,
            placement: None,
        }
    }

    #[test]
    fn result_frames_are_bounded_by_bytes_and_lose_nothing() {
        // 300 results of 100 KB: 30 MB, far over a 1 MB frame.
        let results: Vec<TaskResult> = (0..300).map(|_| success(100_000)).collect();
        let frames = result_frames(results.clone(), 1 << 20, 2 << 20);
        assert!(frames.len() >= 29, "{} frames", frames.len());
        let mut back = Vec::new();
        for f in &frames {
            assert!(f.len() <= 1 << 20, "a frame of {} bytes", f.len());
            match from_json::<AgentMessage>(f).unwrap() {
                AgentMessage::Results { results } => back.extend(results),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, results);
        // One result over the target goes alone; one over the message
        // limit becomes a failure naming the limit.
        let frames = result_frames(
            vec![success(10), success(1_500_000), success(3 << 20)],
            1 << 20,
            2 << 20,
        );
        assert_eq!(frames.len(), 3);
        let AgentMessage::Results { results } = from_json(&frames[2]).unwrap() else {
            panic!()
        };
        match &results[0].outcome {
            Outcome::Failed { exception } => {
                assert_eq!(exception.exc_type, "ResultTooLarge");
                assert!(
                    exception.message.contains(&format!("{}", 3 << 20)),
                    "{}",
                    exception.message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_results_fail_and_long_exceptions_are_cut() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut results = vec![
            TaskResult {
                task_id: a,
                outcome: Outcome::Success {
                    result: "x".repeat(2000),
                },
                completed_at: 1.0,
                placement: None,
            },
            TaskResult {
                task_id: b,
                outcome: Outcome::Success {
                    result: "y".repeat(1000),
                },
                completed_at: 1.0,
                placement: None,
            },
            TaskResult::failed(
                c,
                ExceptionInfo::system(SystemFailure::ValueError, "é".repeat(5000)),
            ),
        ];
        cap_results(&mut results, 1000);
        match &results[0].outcome {
            Outcome::Failed { exception } => {
                assert_eq!(exception.exc_type, "ResultTooLarge");
                assert!(
                    exception.message.contains("2000 bytes"),
                    "{}",
                    exception.message
                );
                assert!(
                    exception.message.contains("1000 bytes"),
                    "{}",
                    exception.message
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&results[1].outcome, Outcome::Success { result } if result.len() == 1000));
        match &results[2].outcome {
            Outcome::Failed { exception } => {
                assert!(
                    exception.message.len() <= 500,
                    "{}",
                    exception.message.len()
                );
                assert!(
                    exception.message.ends_with("of 10000]"),
                    "{}",
                    exception.message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(from_json::<ServiceMessage>("{\"type\":\"nope\"}").is_err());
        assert!(from_json::<ServiceMessage>("\u{0}").is_err());
    }
}
