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
        /// The agent reports endpoint events ([`AgentMessage::Events`])
        /// once the service's welcome says it takes them. Older agents
        /// (`false`) send none.
        #[serde(default)]
        events: bool,
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
    /// What happened to the endpoint's blocks and managers since the last
    /// such frame, oldest first; at most [`MAX_EVENTS_PER_FRAME`]. Sent only
    /// to a service whose welcome said `events`; the service keeps the
    /// last few hundred per endpoint.
    Events {
        /// The events.
        events: Vec<EndpointEvent>,
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
        /// The service stores [`AgentMessage::Events`] (the hello said it
        /// sends them). An older service says nothing and would close the
        /// link on an events frame: the agent sends none then.
        #[serde(default)]
        events: bool,
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
    /// Each of those blocks. Missing from older agents (empty); older
    /// services ignore it.
    #[serde(default)]
    pub blocks: Vec<BlockReport>,
}

/// Most blocks a heartbeat's report is taken with; the rest are dropped.
pub const MAX_REPORTED_BLOCKS: usize = 1024;

impl EndpointReport {
    /// Bounds what an agent's report may hold in the service's memory: at
    /// most [`MAX_REPORTED_BLOCKS`] blocks, their words cut to 128 bytes.
    pub fn cap(&mut self) {
        self.blocks.truncate(MAX_REPORTED_BLOCKS);
        for b in &mut self.blocks {
            for word in [
                &mut b.block_id,
                &mut b.job_id,
                &mut b.provider,
                &mut b.state,
            ] {
                truncate(word, MAX_EVENT_ID);
            }
        }
    }
}

/// One block (pilot job) as the endpoint reports it, in `agent.json` and
/// in heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockReport {
    /// Block id, unique within the endpoint.
    pub block_id: String,
    /// The batch system's job id (`-` when unknown).
    pub job_id: String,
    /// Provider name (`slurm`, `local`, ..., `external` for a block the
    /// endpoint did not submit).
    pub provider: String,
    /// `pending`, `running` or `draining`.
    pub state: String,
    /// Nodes requested.
    pub nodes: u32,
    /// Connected managers.
    pub managers: u32,
    /// Worker slots of those managers.
    #[serde(default)]
    pub workers: u32,
    /// When it was submitted (or first seen), Unix seconds. Times, not ages,
    /// so `agent.json` changes only when a block does, not every tick.
    pub submitted_at: f64,
    /// When its first manager connected, Unix seconds.
    #[serde(default)]
    pub started_at: Option<f64>,
    /// When its walltime ends (Unix seconds), when known.
    pub deadline: Option<f64>,
}

/// What happened, in an [`EndpointEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The scheduler took a block's job.
    BlockSubmitted,
    /// A block's first manager connected.
    BlockRunning,
    /// A block could not be submitted, or its job failed; the message is
    /// the scheduler's own (e.g. sbatch's stderr).
    BlockFailed,
    /// A block's job ended without an error (e.g. it completed).
    BlockEnded,
    /// A block entered its drain period (its walltime is near).
    BlockDraining,
    /// The endpoint cancelled a block (idle, or the endpoint stopped).
    BlockCancelled,
    /// A scheduler command other than a submit failed (status, cancel).
    SchedulerError,
    /// A manager stopped answering and was given up.
    ManagerLost,
    /// The agent connected to the service (recorded by the service).
    AgentConnected,
    /// The agent's connection ended (recorded by the service).
    AgentDisconnected,
}

impl EventKind {
    /// The kind's name on the wire and in the service's database.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::BlockSubmitted => "block_submitted",
            EventKind::BlockRunning => "block_running",
            EventKind::BlockFailed => "block_failed",
            EventKind::BlockEnded => "block_ended",
            EventKind::BlockDraining => "block_draining",
            EventKind::BlockCancelled => "block_cancelled",
            EventKind::SchedulerError => "scheduler_error",
            EventKind::ManagerLost => "manager_lost",
            EventKind::AgentConnected => "agent_connected",
            EventKind::AgentDisconnected => "agent_disconnected",
        }
    }
}

/// One thing that happened to an endpoint's blocks, managers or link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointEvent {
    /// When, Unix seconds.
    pub time: f64,
    /// What.
    pub kind: EventKind,
    /// The block it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_id: Option<String>,
    /// The block's job id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Details in words: the scheduler's message for a failure.
    #[serde(default)]
    pub message: String,
}

/// Most events in one [`AgentMessage::Events`] frame.
pub const MAX_EVENTS_PER_FRAME: usize = 256;
/// Longest event message kept, bytes; a longer one is cut, saying so.
pub const MAX_EVENT_MESSAGE: usize = 4096;
/// Longest block or job id in an event, bytes.
const MAX_EVENT_ID: usize = 128;

impl EndpointEvent {
    /// An event at `time` with no block.
    pub fn new(time: f64, kind: EventKind, message: impl Into<String>) -> Self {
        EndpointEvent {
            time,
            kind,
            block_id: None,
            job_id: None,
            message: message.into(),
        }
    }

    /// The same event about `block_id` (job `job_id`, when known).
    pub fn block(mut self, block_id: &str, job_id: Option<&str>) -> Self {
        self.block_id = Some(block_id.to_string());
        self.job_id = job_id.map(str::to_string);
        self
    }
}

/// Checks an events frame from an agent: its size, and each event's time
/// and ids; an over-long message is cut. The error says what was wrong.
pub fn check_events(events: &mut [EndpointEvent]) -> Result<(), String> {
    if events.len() > MAX_EVENTS_PER_FRAME {
        return Err(format!(
            "an events frame carries {} events, more than {MAX_EVENTS_PER_FRAME}",
            events.len()
        ));
    }
    for (i, e) in events.iter_mut().enumerate() {
        if !e.time.is_finite() || e.time < 0.0 {
            return Err(format!("event {i} has time {}, not Unix seconds", e.time));
        }
        for (what, id) in [("block_id", &e.block_id), ("job_id", &e.job_id)] {
            if id.as_ref().is_some_and(|id| id.len() > MAX_EVENT_ID) {
                return Err(format!(
                    "event {i} has a {what} longer than {MAX_EVENT_ID} bytes"
                ));
            }
        }
        truncate(&mut e.message, MAX_EVENT_MESSAGE);
    }
    Ok(())
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
/// oversized exception text is cut; captured output is cut to what the
/// limit leaves beside them (keeping its head and tail). The agent applies
/// it before journaling, the service again on receipt.
pub fn cap_results(results: &mut [TaskResult], limit: usize) {
    for r in results {
        let kept = match &mut r.outcome {
            Outcome::Success { result } if result.len() > limit => {
                let size = result.len();
                r.outcome = too_large(size, limit, "the service's limit (--max-result-bytes)");
                0
            }
            Outcome::Success { result } => result.len(),
            Outcome::Failed { exception } => {
                truncate(&mut exception.exc_type, MAX_EXC_TYPE);
                let half = (limit / 2).max(256);
                truncate(&mut exception.message, half);
                truncate(&mut exception.traceback, half);
                exception.message.len() + exception.traceback.len()
            }
        };
        if let Some(output) = &mut r.output {
            output.cap(limit.saturating_sub(kept));
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
                events: false,
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
                    output: None,
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
            events: false,
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
                events: false,
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
                events: false,
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
            output: None,
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
                output: None,
                completed_at: 1.0,
                placement: None,
            },
            TaskResult {
                task_id: b,
                outcome: Outcome::Success {
                    result: "y".repeat(1000),
                },
                output: None,
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

    /// Output counts against the result limit: it gets what the result or
    /// exception leaves, keeping its ends; output that fits is untouched.
    #[test]
    fn output_is_cut_to_what_the_result_limit_leaves() {
        let printed = |n| {
            Some(Box::new(crate::task::TaskOutput {
                stdout: "o".repeat(n),
                stderr: "e".repeat(n),
                ..Default::default()
            }))
        };
        let success = |result: usize, output| TaskResult {
            task_id: Uuid::new_v4(),
            outcome: Outcome::Success {
                result: "r".repeat(result),
            },
            output,
            placement: None,
            completed_at: 1.0,
        };
        let mut failed = TaskResult::failed(
            Uuid::new_v4(),
            ExceptionInfo::system(SystemFailure::ValueError, "m".repeat(300)),
        );
        failed.output = printed(10_000);
        let mut results = vec![
            success(6_000, printed(10_000)),
            success(100, printed(100)),
            failed,
        ];
        cap_results(&mut results, 10_000);
        let output = |r: &TaskResult| r.output.clone().unwrap();
        let first = output(&results[0]);
        assert!(first.len() <= 4_000 + 128, "{}", first.len());
        assert!(first.stdout_dropped > 0 && first.stderr_dropped > 0);
        assert_eq!(output(&results[1]), printed(100).unwrap());
        let Outcome::Failed { exception } = &results[2].outcome else {
            panic!("{:?}", results[2].outcome)
        };
        let left = 10_000 - exception.message.len() - exception.traceback.len();
        assert!(output(&results[2]).len() <= left + 128);
    }

    #[test]
    fn events_and_blocks_round_trip_and_older_frames_still_parse() {
        let events = AgentMessage::Events {
            events: vec![
                EndpointEvent::new(
                    1.5,
                    EventKind::BlockFailed,
                    "sbatch: error: invalid partition",
                )
                .block("3", None),
                EndpointEvent::new(2.0, EventKind::BlockSubmitted, "").block("4", Some("77")),
            ],
        };
        let text = to_json(&events);
        assert!(text.contains(r#""kind":"block_failed""#), "{text}");
        assert_eq!(from_json::<AgentMessage>(&text).unwrap(), events);
        let beat = AgentMessage::Heartbeat {
            status: EndpointReport {
                active_blocks: 1,
                blocks: vec![BlockReport {
                    block_id: "4".into(),
                    job_id: "77".into(),
                    state: "running".into(),
                    started_at: Some(3.0),
                    ..Default::default()
                }],
                ..Default::default()
            },
        };
        assert_eq!(from_json::<AgentMessage>(&to_json(&beat)).unwrap(), beat);
        // A heartbeat from an agent that predates blocks.
        let old = r#"{"type":"heartbeat","status":{"managers":1,"total_workers":2,
            "idle_workers":2,"outstanding_tasks":0,"active_blocks":1}}"#;
        let AgentMessage::Heartbeat { status } = from_json(old).unwrap() else {
            panic!()
        };
        assert!(status.blocks.is_empty());
        // A kind this service does not know is a malformed frame.
        let unknown = r#"{"type":"events","events":[{"time":1,"kind":"exploded"}]}"#;
        let err = from_json::<AgentMessage>(unknown).unwrap_err().to_string();
        assert!(err.contains("exploded"), "{err}");
    }

    #[test]
    fn events_frames_are_checked_and_long_messages_cut() {
        let event = |message: String| EndpointEvent::new(1.0, EventKind::BlockFailed, message);
        let mut ok = vec![event("é".repeat(MAX_EVENT_MESSAGE))];
        check_events(&mut ok).unwrap();
        assert!(ok[0].message.len() <= MAX_EVENT_MESSAGE);
        assert!(ok[0].message.contains("cut at"), "{}", ok[0].message);
        let mut many = vec![event(String::new()); MAX_EVENTS_PER_FRAME + 1];
        let err = check_events(&mut many).unwrap_err();
        assert!(err.contains("257 events"), "{err}");
        let mut bad_time = vec![EndpointEvent::new(f64::NAN, EventKind::BlockEnded, "")];
        assert!(check_events(&mut bad_time).unwrap_err().contains("time"));
        let mut long_id = vec![event(String::new()).block(&"9".repeat(200), None)];
        assert!(check_events(&mut long_id).unwrap_err().contains("block_id"));
    }

    #[test]
    fn a_report_is_capped_before_the_service_keeps_it() {
        let block = BlockReport {
            block_id: "b".repeat(1000),
            job_id: "j".into(),
            ..Default::default()
        };
        let mut report = EndpointReport {
            blocks: vec![block; MAX_REPORTED_BLOCKS + 5],
            ..Default::default()
        };
        report.cap();
        assert_eq!(report.blocks.len(), MAX_REPORTED_BLOCKS);
        assert!(report.blocks[0].block_id.len() <= MAX_EVENT_ID);
        assert_eq!(report.blocks[0].job_id, "j");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(from_json::<ServiceMessage>("{\"type\":\"nope\"}").is_err());
        assert!(from_json::<ServiceMessage>("\u{0}").is_err());
    }
}
