//! Property-based fuzzing of every decoder of network input in the protocol
//! crate: payload framing, the agent↔service JSON frames, the broker↔manager
//! MessagePack frames, MPI resource specifications and task walltimes.
//!
//! Each target feeds arbitrary bytes or text and structure-aware mutations of
//! valid messages; the property is "no panic, and a bad input is an `Err`".
//! Cases per target: `FUZZ_CASES` (default 2,000); the targets fed inputs
//! of megabytes (built from repeated pieces, so generating them is cheap)
//! run a fiftieth of that, and each decode must stay within a bound that
//! only a super-linear decoder would pass.

use hpfaas_protocol::failure::SystemFailure;
use std::time::{Duration, Instant};

use hpfaas_protocol::broker::{self, BrokerMessage, ManagerInfo, ManagerMessage};
use hpfaas_protocol::endpoint::{self, AgentMessage, EndpointReport, ServiceMessage};
use hpfaas_protocol::mpi::{self, MpiNode, MpiRequest};
use hpfaas_protocol::payload;
use hpfaas_protocol::task::{
    ExceptionInfo, FunctionCode, Outcome, TaskOutput, TaskResult, TaskSpec, TaskState,
};
use proptest::prelude::*;
use uuid::Uuid;

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;
use fuzz::config;

/// Byte-level mutations of a valid encoding: flip, truncate, insert, delete.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Delete(usize),
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(i, v)| Mutation::Splice(i, v)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        match m {
            Mutation::Flip(i, b) if n > 0 => bytes[i % n] ^= b,
            Mutation::Truncate(i) => bytes.truncate(i % (n + 1)),
            Mutation::Insert(i, b) => bytes.insert(i % (n + 1), *b),
            Mutation::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Mutation::Splice(i, v) => {
                let at = i % (n + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}

/// Floats that survive a JSON round trip exactly.
fn dyadic() -> impl Strategy<Value = f64> {
    (0u32..4_000_000).prop_map(|n| f64::from(n) / 4.0)
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(TaskState::ALL.to_vec())
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    (
        uuid(),
        uuid(),
        ".{0,40}",
        prop::collection::vec("[0-9a-z]{2}\n", 0..3),
        prop::option::of(".{0,40}"),
    )
        .prop_map(
            |(task_id, function_id, payload, result_serializers, resource_spec)| TaskSpec {
                task_id,
                function_id,
                payload,
                blob: None,
                result_serializers,
                resource_spec,
            },
        )
}

fn output() -> impl Strategy<Value = Option<Box<TaskOutput>>> {
    prop::option::of((".{0,10}", ".{0,10}", any::<u64>(), any::<u64>()).prop_map(
        |(stdout, stderr, stdout_dropped, stderr_dropped)| {
            Box::new(TaskOutput {
                stdout,
                stderr,
                stdout_dropped,
                stderr_dropped,
            })
        },
    ))
}

fn result() -> impl Strategy<Value = TaskResult> {
    (
        uuid(),
        ".{0,20}",
        any::<bool>(),
        any::<i32>().prop_map(|n| f64::from(n) / 4.0),
        output(),
    )
        .prop_map(|(task_id, text, ok, at, output)| TaskResult {
            task_id,
            outcome: if ok {
                Outcome::Success { result: text }
            } else {
                Outcome::Failed {
                    exception: ExceptionInfo::system(SystemFailure::WorkerLost, text),
                }
            },
            output,
            completed_at: at,
            placement: None,
        })
}

fn function_code() -> impl Strategy<Value = FunctionCode> {
    (uuid(), ".{0,30}").prop_map(|(function_id, code)| FunctionCode { function_id, code })
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        (
            any::<u32>(),
            ".{0,10}",
            any::<u32>(),
            prop::collection::vec(uuid(), 0..3),
            any::<bool>()
        )
            .prop_map(|(version, host, pid, allowed_functions, json_only)| {
                AgentMessage::Hello {
                    version,
                    host,
                    pid,
                    allowed_functions,
                    json_only,
                    flow_control: !json_only,
                    events: json_only,
                }
            }),
        prop::collection::vec(uuid(), 0..4).prop_map(|task_ids| AgentMessage::Ack { task_ids }),
        any::<u64>().prop_map(|tasks| AgentMessage::Credit { tasks }),
        prop::collection::vec((uuid(), state()), 0..4)
            .prop_map(|updates| AgentMessage::States { updates }),
        prop::collection::vec(result(), 0..3).prop_map(|results| AgentMessage::Results { results }),
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(m, w, o)| AgentMessage::Heartbeat {
            status: EndpointReport {
                managers: m,
                total_workers: w,
                idle_workers: w / 2,
                outstanding_tasks: o,
                active_blocks: m,
                blocks: vec![],
            },
        }),
        (".{0,8}", ".{0,20}", any::<u32>()).prop_map(|(block, message, t)| AgentMessage::Events {
            events: vec![hpfaas_protocol::endpoint::EndpointEvent::new(
                f64::from(t),
                hpfaas_protocol::endpoint::EventKind::BlockFailed,
                message,
            )
            .block(&block, None)],
        }),
    ]
}

fn service_message() -> impl Strategy<Value = ServiceMessage> {
    prop_oneof![
        (
            any::<u32>(),
            dyadic(),
            any::<Option<u64>>(),
            any::<Option<u64>>()
        )
            .prop_map(
                |(version, heartbeat_period, max_result_bytes, max_message_bytes)| {
                    ServiceMessage::Welcome {
                        version,
                        heartbeat_period,
                        max_result_bytes,
                        max_message_bytes,
                        flow_control: max_result_bytes.is_some(),
                        events: max_message_bytes.is_some(),
                    }
                }
            ),
        ".{0,20}".prop_map(|reason| ServiceMessage::Refused { reason }),
        (
            prop::collection::vec(function_code(), 0..2),
            prop::collection::vec(task_spec(), 0..3)
        )
            .prop_map(|(functions, tasks)| ServiceMessage::Tasks { functions, tasks }),
        prop::collection::vec(uuid(), 0..4)
            .prop_map(|task_ids| ServiceMessage::ResultAck { task_ids }),
        prop::collection::vec(uuid(), 0..4)
            .prop_map(|task_ids| ServiceMessage::Cancel { task_ids }),
    ]
}

fn manager_message() -> impl Strategy<Value = ManagerMessage> {
    prop_oneof![
        (any::<u32>(), ".{0,8}", any::<u32>(), any::<u32>()).prop_map(|(v, host, pid, workers)| {
            ManagerMessage::Register(ManagerInfo {
                version: v,
                manager_id: host.clone(),
                block_id: "0".into(),
                job_id: Some(host.clone()),
                host,
                rank: 0,
                pid,
                cores: workers,
                workers,
                prefetch: 2,
                deadline: Some(1.0e9),
            })
        }),
        Just(ManagerMessage::Heartbeat),
        Just(ManagerMessage::Bye),
        prop::collection::vec(uuid(), 0..4)
            .prop_map(|task_ids| ManagerMessage::Running { task_ids }),
        prop::collection::vec(result(), 0..3)
            .prop_map(|results| ManagerMessage::Results { results }),
    ]
}

fn broker_message() -> impl Strategy<Value = BrokerMessage> {
    prop_oneof![
        (dyadic(), dyadic()).prop_map(|(p, t)| BrokerMessage::Registered {
            heartbeat_period: p,
            heartbeat_threshold: t,
        }),
        ".{0,20}".prop_map(|reason| BrokerMessage::Refused { reason }),
        Just(BrokerMessage::Reregister),
        Just(BrokerMessage::Heartbeat),
        Just(BrokerMessage::Shutdown),
        (
            prop::collection::vec(function_code(), 0..2),
            prop::collection::vec(task_spec(), 0..3)
        )
            .prop_map(|(functions, tasks)| BrokerMessage::Tasks { functions, tasks }),
        (
            task_spec(),
            prop::collection::vec((".{0,8}", any::<u32>()), 0..3)
        )
            .prop_map(|(task, nodes)| BrokerMessage::MpiTask {
                functions: vec![],
                task,
                nodes: nodes
                    .into_iter()
                    .map(|(host, ranks)| MpiNode { host, ranks })
                    .collect(),
            }),
        prop::collection::vec(uuid(), 0..4).prop_map(|task_ids| BrokerMessage::Cancel { task_ids }),
    ]
}

/// Structure-aware JSON mutation: replace one value anywhere in the tree by
/// an arbitrary scalar of another type.
fn replace_json_value(value: &mut serde_json::Value, pick: usize, with: &serde_json::Value) {
    fn walk(v: &mut serde_json::Value, n: &mut usize, with: &serde_json::Value) -> bool {
        if *n == 0 {
            *v = with.clone();
            return true;
        }
        *n -= 1;
        match v {
            serde_json::Value::Array(items) => items.iter_mut().any(|i| walk(i, n, with)),
            serde_json::Value::Object(map) => map.values_mut().any(|i| walk(i, n, with)),
            _ => false,
        }
    }
    let mut n = pick % 32;
    walk(value, &mut n, with);
}

fn json_scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,12}".prop_map(serde_json::Value::String),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!({"type": "hello"})),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unpack_arbitrary_text(text in ".{0,64}") {
        // Must not panic; whatever it returns must re-pack consistently.
        if let Ok(bufs) = payload::unpack(&text) {
            prop_assert_eq!(payload::pack(&bufs), text.as_str());
        }
        let _ = payload::strategy_of(&text);
        let _ = mpi::is_mpi_function(&text);
    }

    #[test]
    fn unpack_mutated_frames(
        bufs in prop::collection::vec(".{0,12}", 0..4),
        prefix in "[0-9]{0,24}\n?",
        cut in any::<usize>(),
    ) {
        let packed = payload::pack(&bufs);
        prop_assert_eq!(payload::unpack(&packed).unwrap(), bufs.iter().map(String::as_str).collect::<Vec<_>>());
        // A bogus (possibly huge) length prefix, and a cut at a char boundary.
        let bogus = format!("{prefix}{packed}");
        let _ = payload::unpack(&bogus);
        let cut = packed.char_indices().map(|(i, _)| i).nth(cut % (packed.chars().count() + 1)).unwrap_or(packed.len());
        let _ = payload::unpack(&packed[..cut]);
    }

    #[test]
    fn agent_frames_arbitrary_text(text in ".{0,128}") {
        prop_assert!(endpoint::from_json::<AgentMessage>(&text).is_err() || text.contains("type"));
        let _ = endpoint::from_json::<ServiceMessage>(&text);
    }

    #[test]
    fn agent_frames_mutated(
        msg in agent_message(),
        mutations in prop::collection::vec(mutation(), 1..4),
        pick in any::<usize>(),
        with in json_scalar(),
    ) {
        let text = endpoint::to_json(&msg);
        prop_assert_eq!(endpoint::from_json::<AgentMessage>(&text).unwrap(), msg);
        let bytes = mutate(text.clone().into_bytes(), &mutations);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = endpoint::from_json::<AgentMessage>(s);
        }
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        replace_json_value(&mut value, pick, &with);
        let _ = endpoint::from_json::<AgentMessage>(&value.to_string());
    }

    #[test]
    fn service_frames_mutated(
        msg in service_message(),
        mutations in prop::collection::vec(mutation(), 1..4),
        pick in any::<usize>(),
        with in json_scalar(),
    ) {
        let text = endpoint::to_json(&msg);
        prop_assert_eq!(endpoint::from_json::<ServiceMessage>(&text).unwrap(), msg);
        let bytes = mutate(text.clone().into_bytes(), &mutations);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = endpoint::from_json::<ServiceMessage>(s);
        }
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        replace_json_value(&mut value, pick, &with);
        if let Ok(ServiceMessage::Tasks { tasks, .. }) = endpoint::from_json::<ServiceMessage>(&value.to_string()) {
            for t in tasks {
                check_walltime(&t);
            }
        }
    }

    #[test]
    fn broker_frames_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = broker::decode::<BrokerMessage>(&bytes);
        let _ = broker::decode::<ManagerMessage>(&bytes);
    }

    #[test]
    fn broker_frames_mutated(
        b in broker_message(),
        m in manager_message(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let eb = broker::encode(&b);
        prop_assert_eq!(broker::decode::<BrokerMessage>(&eb).unwrap(), b);
        if let Ok(BrokerMessage::Tasks { tasks, .. }) = broker::decode::<BrokerMessage>(&mutate(eb, &mutations)) {
            for t in tasks {
                check_walltime(&t);
            }
        }
        let em = broker::encode(&m);
        prop_assert_eq!(broker::decode::<ManagerMessage>(&em).unwrap(), m);
        let _ = broker::decode::<ManagerMessage>(&mutate(em, &mutations));
    }

    #[test]
    fn mpi_request_arbitrary(text in ".{0,64}") {
        let _ = MpiRequest::parse(Some(&text));
    }

    #[test]
    fn mpi_request_structured(
        nodes in prop::option::of(json_count()),
        per_node in prop::option::of(json_count()),
        ranks in prop::option::of(json_count()),
        options in prop::option::of(json_scalar()),
        extra in prop::option::of("[a-z_]{1,12}"),
    ) {
        let mut map = serde_json::Map::new();
        for (k, v) in [("num_nodes", nodes), ("ranks_per_node", per_node), ("num_ranks", ranks), ("launcher_options", options)] {
            if let Some(v) = v {
                map.insert(k.into(), v);
            }
        }
        if let Some(k) = extra {
            map.insert(k, serde_json::json!(1));
        }
        let text = serde_json::Value::Object(map).to_string();
        if let Ok(r) = MpiRequest::parse(Some(&text)) {
            // A resolved request is self-consistent: every node gets a rank.
            prop_assert!(r.num_nodes >= 1 && r.ranks_per_node >= 1);
            let total: u64 = (0..r.num_nodes.min(4096)).map(|n| u64::from(r.ranks_on(n))).sum();
            if r.num_nodes <= 4096 {
                prop_assert_eq!(total, u64::from(r.num_ranks));
                prop_assert!(r.ranks_on(r.num_nodes - 1) >= 1);
            }
        }
    }

    #[test]
    fn walltime_arbitrary(spec in prop::option::of(".{0,40}"), w in json_scalar(), f in any::<f64>()) {
        let mk = |resource_spec: Option<String>| TaskSpec {
            task_id: Uuid::nil(),
            function_id: Uuid::nil(),
            payload: String::new(),
            blob: None,
            result_serializers: vec![],
            resource_spec,
        };
        check_walltime(&mk(spec));
        check_walltime(&mk(Some(serde_json::json!({ "walltime": w }).to_string())));
        check_walltime(&mk(Some(format!("{{\"walltime\": {f:e}}}"))));
    }
}

fn json_count() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (0u64..70).prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        json_scalar(),
    ]
}

/// A walltime the decoder accepts must be usable as a timeout (the manager
/// turns it into a `Duration`, which panics on values beyond u64 seconds).
fn check_walltime(t: &TaskSpec) {
    if let Ok(Some(w)) = t.walltime() {
        assert!(w > 0.0 && w.is_finite());
        assert!(
            Duration::try_from_secs_f64(w).is_ok(),
            "accepted walltime {w} is not a Duration"
        );
    }
}

/// Most bytes of one large input.
const LARGE: usize = 4 << 20;

/// Generous for a linear pass over [`LARGE`] bytes, unoptimised.
const LARGE_BOUND: Duration = Duration::from_secs(2);

/// Text of up to [`LARGE`] bytes: pieces, each repeated many times.
fn large_text(piece: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop::collection::vec((piece, 0usize..300_000), 0..12).prop_map(|parts| {
        let mut out = String::new();
        for (piece, n) in parts {
            let room = (LARGE - out.len()) / piece.len().max(1);
            out.push_str(&piece.repeat(n.min(room)));
        }
        out
    })
}

/// Bytes of up to [`LARGE`]: pieces, each repeated many times.
fn large_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (prop::collection::vec(any::<u8>(), 1..12), 0usize..300_000),
        0..12,
    )
    .prop_map(|parts| {
        let mut out = Vec::new();
        for (piece, n) in parts {
            let room = (LARGE - out.len()) / piece.len();
            for _ in 0..n.min(room) {
                out.extend_from_slice(&piece);
            }
        }
        out
    })
}

/// Pieces that look like framing, JSON or nothing in particular.
fn framing_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0\n".to_string()),
        Just("1\nx".to_string()),
        Just("pb\n".to_string()),
        Just("é".to_string()),
        "[0-9]{1,3}\n".prop_map(String::from),
        ".{1,6}",
    ]
}

fn json_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[".to_string()),
        Just("{\"a\":".to_string()),
        Just("\"\\u00e9\",".to_string()),
        Just("1e999,".to_string()),
        Just("{\"type\":\"tasks\",\"tasks\":[".to_string()),
        ".{1,6}",
    ]
}

fn within_bound<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < LARGE_BOUND, "{what} took {took:?}");
    out
}

fn large_config() -> ProptestConfig {
    let mut c = config();
    c.cases = (c.cases / 50).max(4);
    c
}

proptest! {
    #![proptest_config(large_config())]

    #[test]
    fn unpack_megabytes(text in large_text(framing_piece()), prefix in "(4\npb\n5)?") {
        let text = format!("{prefix}{text}");
        if let Ok(bufs) = within_bound("unpack", || payload::unpack(&text)) {
            prop_assert!(bufs.len() <= payload::MAX_BUFFERS);
            prop_assert_eq!(payload::pack(&bufs), text.as_str());
        }
        let _ = within_bound("blob_length", || payload::blob_length(&text));
        let _ = within_bound("is_mpi_function", || mpi::is_mpi_function(&text));
    }

    #[test]
    fn json_frames_megabytes(text in large_text(json_piece())) {
        let _ = within_bound("AgentMessage", || endpoint::from_json::<AgentMessage>(&text));
        let _ = within_bound("ServiceMessage", || endpoint::from_json::<ServiceMessage>(&text));
        let _ = within_bound("MpiRequest", || MpiRequest::parse(Some(&text)));
        let spec = TaskSpec {
            task_id: Uuid::nil(),
            function_id: Uuid::nil(),
            payload: String::new(),
            blob: None,
            result_serializers: vec![],
            resource_spec: Some(text),
        };
        within_bound("walltime", || check_walltime(&spec));
    }

    #[test]
    fn msgpack_frames_megabytes(bytes in large_bytes()) {
        let _ = within_bound("BrokerMessage", || broker::decode::<BrokerMessage>(&bytes));
        let _ = within_bound("ManagerMessage", || broker::decode::<ManagerMessage>(&bytes));
        let _ = within_bound("TasksFrame", || endpoint::TasksFrame::decode(&bytes));
    }
}
