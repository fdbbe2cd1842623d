//! The conversation between the endpoint's ZeroMQ broker (ROUTER) and the
//! managers (DEALER) inside pilot jobs. Frames are MessagePack maps.
//!
//! A manager sends [`ManagerMessage::Register`] first; the broker answers
//! [`BrokerMessage::Registered`] or [`BrokerMessage::Refused`]. The broker
//! then pushes tasks while the manager has fewer than `capacity` in hand
//! (workers + prefetch), so no manager ever asks per task. Results and state
//! changes go up in batches. Either side declares the other lost after
//! `heartbeat_threshold` seconds of silence.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::mpi::MpiNode;
use crate::task::{FunctionCode, TaskResult, TaskSpec};
use crate::DecodeError;

/// Who a manager is and what it can take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagerInfo {
    /// [`crate::PROTOCOL_VERSION`] of the manager.
    pub version: u32,
    /// Unique id of this manager process.
    pub manager_id: String,
    /// Block (pilot job) the manager belongs to.
    pub block_id: String,
    /// Batch-system job id of the block, when there is one.
    pub job_id: Option<String>,
    /// Host name of the node.
    pub host: String,
    /// Rank of the manager within its block.
    pub rank: u32,
    /// Process id of the manager.
    pub pid: u32,
    /// Cores the manager may use.
    pub cores: u32,
    /// Warm worker processes.
    pub workers: u32,
    /// Tasks held beyond `workers` so a worker never waits on the network.
    pub prefetch: u32,
    /// When the block's walltime ends (Unix seconds), if known; the broker
    /// stops giving the manager work `drain_period` before it.
    #[serde(default)]
    pub deadline: Option<f64>,
}

impl ManagerInfo {
    /// Most tasks the broker hands this manager at once.
    pub fn capacity(&self) -> u32 {
        self.workers + self.prefetch
    }
}

/// A frame from a manager to the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagerMessage {
    /// First frame: who the manager is.
    Register(ManagerInfo),
    /// Still alive.
    Heartbeat,
    /// These tasks started on a worker.
    Running {
        /// Started task ids.
        task_ids: Vec<Uuid>,
    },
    /// These tasks finished; each frees one unit of capacity.
    Results {
        /// Outcomes.
        results: Vec<TaskResult>,
    },
    /// The manager is leaving cleanly (drained or told to shut down).
    Bye,
}

/// A frame from the broker to a manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerMessage {
    /// Registration accepted.
    Registered {
        /// Seconds between heartbeats, both ways.
        heartbeat_period: f64,
        /// Seconds of silence after which the peer is declared lost.
        heartbeat_threshold: f64,
    },
    /// Registration refused; the manager exits with `reason`.
    Refused {
        /// Why, in words for the user.
        reason: String,
    },
    /// The broker does not know this manager (the agent restarted): register
    /// again and carry on, so a restarted agent re-adopts running blocks.
    Reregister,
    /// Tasks to run, with the code of functions this manager has not seen.
    Tasks {
        /// Function code not yet sent to this manager.
        functions: Vec<FunctionCode>,
        /// The tasks.
        tasks: Vec<TaskSpec>,
    },
    /// An MPI task for this manager to launch across `nodes`, which the
    /// broker holds for it (this manager is the first of them) until its
    /// result comes back.
    MpiTask {
        /// Function code not yet sent to this manager.
        functions: Vec<FunctionCode>,
        /// The task.
        task: TaskSpec,
        /// The reserved nodes in rank order, with the ranks each runs.
        nodes: Vec<MpiNode>,
    },
    /// Still alive.
    Heartbeat,
    /// Finish nothing more; exit now.
    Shutdown,
    /// The owner cancelled these tasks: drop them if queued, kill them if
    /// running. Each one the manager holds still comes back as a result
    /// (failed with `TaskCancelled`), so the broker's count of what the
    /// manager holds stays right. Ids the manager does not hold are ignored.
    Cancel {
        /// Cancelled task ids.
        task_ids: Vec<Uuid>,
    },
}

impl BrokerMessage {
    /// About its encoded size in bytes.
    pub fn size_hint(&self) -> usize {
        match self {
            BrokerMessage::Tasks { functions, tasks } => tasks_size_hint(functions, tasks),
            BrokerMessage::MpiTask {
                functions, task, ..
            } => tasks_size_hint(functions, std::slice::from_ref(task)) + 224,
            _ => 64,
        }
    }
}

/// About the encoded size of a frame carrying `functions` and `tasks`.
pub(crate) fn tasks_size_hint(functions: &[FunctionCode], tasks: &[TaskSpec]) -> usize {
    functions.iter().map(|f| f.code.len() + 64).sum::<usize>()
        + tasks.iter().map(TaskSpec::frame_size).sum::<usize>()
        + 32
}

/// Serializes a frame as MessagePack (named fields, so peers can evolve).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    encode_sized(msg, 64)
}

/// [`encode`] into a buffer of `capacity` bytes to begin with.
pub fn encode_sized<T: Serialize>(msg: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    rmp_serde::encode::write_named(&mut out, msg).expect("protocol messages always serialize");
    out
}

/// Deepest nesting of arrays and maps a MessagePack frame may have. Ours
/// nest a handful deep; the decoder recurses once per level (also when it
/// skips an unknown field), so a frame of a million nested arrays must be
/// refused before it exhausts a thread's stack.
pub const MAX_DEPTH: usize = 64;

/// Parses a MessagePack frame (any of this crate's), at most [`MAX_DEPTH`]
/// deep.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    Ok(T::deserialize(&mut de)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Outcome;

    #[test]
    fn frames_round_trip() {
        let info = ManagerInfo {
            version: 1,
            manager_id: "m1".into(),
            block_id: "0".into(),
            job_id: None,
            host: "node1".into(),
            rank: 0,
            pid: 7,
            cores: 2,
            workers: 2,
            prefetch: 4,
            deadline: Some(1.0e9),
        };
        assert_eq!(info.capacity(), 6);
        let id = Uuid::new_v4();
        for m in [
            ManagerMessage::Register(info),
            ManagerMessage::Heartbeat,
            ManagerMessage::Running { task_ids: vec![id] },
            ManagerMessage::Results {
                results: vec![TaskResult {
                    task_id: id,
                    outcome: Outcome::Success {
                        result: "00\nabc".into(),
                    },
                    output: None,
                    completed_at: 2.0,
                    placement: None,
                }],
            },
            ManagerMessage::Bye,
        ] {
            assert_eq!(decode::<ManagerMessage>(&encode(&m)).unwrap(), m);
        }
        let tasks = BrokerMessage::Tasks {
            functions: vec![FunctionCode {
                function_id: id,
                code: "5\nst\nf:".into(),
            }],
            tasks: vec![TaskSpec {
                task_id: id,
                function_id: id,
                payload: "3\n00\n3\n00\n".into(),
                blob: None,
                result_serializers: vec![],
                resource_spec: None,
            }],
        };
        assert_eq!(decode::<BrokerMessage>(&encode(&tasks)).unwrap(), tasks);
        let BrokerMessage::Tasks { functions, tasks } = tasks else {
            unreachable!()
        };
        let mpi = BrokerMessage::MpiTask {
            functions,
            task: tasks[0].clone(),
            nodes: vec![MpiNode {
                host: "node1".into(),
                ranks: 2,
            }],
        };
        assert_eq!(decode::<BrokerMessage>(&encode(&mpi)).unwrap(), mpi);
        let cancel = BrokerMessage::Cancel { task_ids: vec![id] };
        assert_eq!(decode::<BrokerMessage>(&encode(&cancel)).unwrap(), cancel);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<BrokerMessage>(b"\xc1\xff\x00").is_err());
        assert!(decode::<ManagerMessage>(b"").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // A map with an unknown key whose value is a million nested arrays,
        // on a thread with a small stack: skipping it must not recurse
        // that deep.
        let mut frame = vec![0x81, 0xa1, b'x'];
        frame.extend(std::iter::repeat_n(0x91, 1 << 20));
        frame.push(0xc0);
        let decoded = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let b = decode::<BrokerMessage>(&frame).map_err(|e| e.to_string());
                let f = crate::endpoint::TasksFrame::decode(&frame).map_err(|e| e.to_string());
                (b, f)
            })
            .unwrap()
            .join()
            .unwrap();
        let (b, f) = decoded;
        assert!(b.is_err(), "{b:?}");
        assert!(f.as_ref().unwrap_err().contains("depth"), "{f:?}");
    }
}
