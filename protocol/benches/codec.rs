//! Micro-benchmarks of the wire codecs on the hot path: the broker's
//! MessagePack frames for a batch of tasks (broker → manager) and a batch of
//! results (manager → broker), and Globus Compute payload framing.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use hpfaas_protocol::broker::{decode, encode, BrokerMessage, ManagerMessage};
use hpfaas_protocol::payload::{pack, unpack};
use hpfaas_protocol::task::{Outcome, TaskResult, TaskSpec};
use std::time::Duration;
use uuid::Uuid;

/// Tasks per frame: a manager with 128 slots refilled at once.
const BATCH: usize = 128;

fn task_batch() -> BrokerMessage {
    let function_id = Uuid::new_v4();
    let tasks = (0..BATCH)
        .map(|_| TaskSpec {
            task_id: Uuid::new_v4(),
            function_id,
            payload: pack(&["11\n[1, 2, 3]", "11\n{}"]),
            blob: None,
            result_serializers: vec![],
            resource_spec: None,
        })
        .collect();
    BrokerMessage::Tasks {
        functions: vec![],
        tasks,
    }
}

fn result_batch() -> ManagerMessage {
    let results = (0..BATCH)
        .map(|_| TaskResult {
            task_id: Uuid::new_v4(),
            outcome: Outcome::Success {
                result: "11\nnull".into(),
            },
            output: None,
            completed_at: 1.7e9,
            placement: None,
        })
        .collect();
    ManagerMessage::Results { results }
}

fn broker_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("broker_frames");
    group.throughput(Throughput::Elements(BATCH as u64));
    let tasks = task_batch();
    let tasks_bytes = encode(&tasks);
    group.bench_function("encode_task_batch_128", |b| {
        b.iter(|| encode(black_box(&tasks)))
    });
    group.bench_function("decode_task_batch_128", |b| {
        b.iter(|| decode::<BrokerMessage>(black_box(&tasks_bytes)).unwrap())
    });
    let results = result_batch();
    let results_bytes = encode(&results);
    group.bench_function("encode_result_batch_128", |b| {
        b.iter(|| encode(black_box(&results)))
    });
    group.bench_function("decode_result_batch_128", |b| {
        b.iter(|| decode::<ManagerMessage>(black_box(&results_bytes)).unwrap())
    });
    group.finish();
}

fn payload_framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("payload");
    let args = format!("00\n{}", "x".repeat(1024));
    let kwargs = "00\n{}".to_string();
    let packed = pack(&[&args, &kwargs]);
    group.throughput(Throughput::Bytes(packed.len() as u64));
    group.bench_function("pack_1KiB", |b| {
        b.iter(|| pack(black_box(&[&args, &kwargs])))
    });
    group.bench_function("unpack_1KiB", |b| {
        b.iter(|| unpack(black_box(&packed)).unwrap())
    });
    group.finish();
}

// Few samples over a short time: `cargo bench` is a quick look, not a study.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2));
    targets = broker_frames, payload_framing
}
criterion_main!(benches);
