//! Micro-benchmarks of the broker's dispatch decision
//! ([`hpfaas_executor::broker::dispatch::Dispatcher`]) with no sockets:
//! spreading a burst of tasks over many managers, and the steady state
//! where one manager's results frame frees room that is refilled at once.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hpfaas_executor::broker::dispatch::Dispatcher;
use hpfaas_protocol::broker::{BrokerMessage, ManagerInfo};
use hpfaas_protocol::task::{FunctionCode, Outcome, TaskResult, TaskSpec};
use hpfaas_protocol::PROTOCOL_VERSION;
use uuid::Uuid;

const MANAGERS: usize = 1024;
const TASKS: usize = 4096;

fn tasks(n: usize, function_id: Uuid) -> Vec<TaskSpec> {
    (0..n)
        .map(|_| TaskSpec {
            task_id: Uuid::new_v4(),
            function_id,
            payload: "5\n11\n[]4\n11\n{}".into(),
            blob: None,
            result_serializers: vec![],
            resource_spec: None,
        })
        .collect()
}

/// A dispatcher with `MANAGERS` managers of `workers` slots each and the
/// function's code, nothing queued.
fn dispatcher(workers: u32, function_id: Uuid) -> Dispatcher {
    let mut d = Dispatcher::new(0, Duration::from_secs(60), 0.0);
    let now = Instant::now();
    for i in 0..MANAGERS {
        let id = format!("manager-{i:05}");
        let info = ManagerInfo {
            version: PROTOCOL_VERSION,
            manager_id: id.clone(),
            block_id: format!("block-{}", i / 64),
            job_id: None,
            host: format!("node{i}"),
            rank: 0,
            pid: 1,
            cores: workers,
            workers,
            prefetch: 0,
            deadline: None,
        };
        d.register(id.into_bytes(), info, now).unwrap();
    }
    let code = vec![FunctionCode {
        function_id,
        code: "6\n01\nabc".into(),
    }];
    d.submit(code, vec![]);
    d
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    let function_id = Uuid::new_v4();
    group.throughput(Throughput::Elements(TASKS as u64));
    // 4 slots on each of 1,024 managers; each also gets the code once.
    group.bench_function("4096_tasks_over_1024_managers", |b| {
        b.iter_batched(
            || {
                let mut d = dispatcher(4, function_id);
                d.submit(vec![], tasks(TASKS, function_id));
                d
            },
            |mut d| {
                let out = d.dispatch(0.0);
                assert_eq!(out.len(), MANAGERS);
                out
            },
            BatchSize::LargeInput,
        )
    });

    // Steady state: a full broker with a deep queue; 128 tasks come in,
    // one manager reports 128 results and is refilled with 128 tasks.
    group.throughput(Throughput::Elements(128));
    group.bench_function("submit_complete_refill_128_of_1024_managers", |b| {
        let mut d = dispatcher(128, function_id);
        d.submit(vec![], tasks(MANAGERS * 128 + 128, function_id));
        let first = d.dispatch(0.0);
        assert_eq!(first.len(), MANAGERS);
        let mut in_hand: Vec<(Vec<u8>, Vec<Uuid>)> = first
            .into_iter()
            .map(|(who, m)| match m {
                BrokerMessage::Tasks { tasks, .. } => {
                    (who, tasks.iter().map(|t| t.task_id).collect())
                }
                _ => (who, vec![]),
            })
            .collect();
        let mut next = 0;
        b.iter_batched(
            || tasks(128, function_id),
            |fresh| {
                d.submit(vec![], fresh);
                let (who, held) = &mut in_hand[next % MANAGERS];
                next += 1;
                let results: Vec<TaskResult> = held
                    .drain(..)
                    .map(|task_id| TaskResult {
                        task_id,
                        outcome: Outcome::Success {
                            result: "11\nnull".into(),
                        },
                        output: None,
                        completed_at: 0.0,
                        placement: None,
                    })
                    .collect();
                d.complete(who, results);
                for (_, m) in d.dispatch(0.0) {
                    if let BrokerMessage::Tasks { tasks, .. } = m {
                        held.extend(tasks.iter().map(|t| t.task_id));
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

// Few samples over a short time: `cargo bench` is a quick look, not a study.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = dispatch
}
criterion_main!(benches);
