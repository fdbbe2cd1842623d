//! Micro-benchmarks of the registry's group commit
//! (`hpfaas_registry::db::writer`, through [`hpfaas_registry::db::Db`]) on a
//! temporary file database: many concurrent submits landing in one
//! transaction, and batches of results stored the way an agent's frames are.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hpfaas_protocol::task::{Outcome, TaskResult, TaskState};
use hpfaas_registry::db::catalog::{self, EndpointRegistration, FunctionRow, StoredToken};
use hpfaas_registry::db::tasks::{self, NewTask, Submission};
use hpfaas_registry::db::Db;
use uuid::Uuid;

/// Concurrent submit requests per round, each of `PER_SUBMIT` tasks.
const SUBMITS: usize = 100;
const PER_SUBMIT: usize = 10;
/// Results per agent frame, and frames per round.
const RESULTS_PER_FRAME: usize = 100;
const FRAMES: usize = 10;

struct Fixture {
    db: Db,
    owner: i64,
    endpoint: Uuid,
    function: Uuid,
    dir: std::path::PathBuf,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = std::env::temp_dir().join(format!("hpfaas-bench-db-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = Db::open(&dir.join("bench.db")).unwrap();
    let function = Uuid::new_v4();
    let (owner, endpoint) = rt
        .block_on(db.write(move |c, _| {
            let owner = catalog::ensure_user(c, "bench")?;
            catalog::insert_function(
                c,
                owner,
                &FunctionRow {
                    id: function,
                    name: "noop".into(),
                    code: "6\n01\nabc".into(),
                    description: String::new(),
                    metadata: serde_json::json!({}),
                },
            )?;
            let endpoint = catalog::register_endpoint(
                c,
                owner,
                &EndpointRegistration {
                    id: None,
                    name: "bench".into(),
                    display_name: "bench".into(),
                    metadata: serde_json::json!({}),
                },
                &StoredToken {
                    hash: format!("{:064x}", 1),
                    prefix: "bench".into(),
                },
            )?;
            Ok((owner, endpoint))
        }))
        .unwrap();
    Fixture {
        db,
        owner,
        endpoint,
        function,
        dir,
    }
}

impl Fixture {
    /// Queues `SUBMITS` submits at once and waits for all; the task ids.
    async fn submit_round(&self) -> Vec<Uuid> {
        let mut ids = Vec::with_capacity(SUBMITS * PER_SUBMIT);
        let mut pending = Vec::with_capacity(SUBMITS);
        for _ in 0..SUBMITS {
            let tasks: Vec<NewTask> = (0..PER_SUBMIT)
                .map(|_| NewTask {
                    id: Uuid::new_v4(),
                    function: self.function,
                    payload: "5\n11\n[]4\n11\n{}".into(),
                    in_file: false,
                    blob: None,
                })
                .collect();
            ids.extend(tasks.iter().map(|t| t.id));
            let submission = Submission {
                owner: self.owner,
                endpoint: self.endpoint,
                group: Uuid::new_v4(),
                state: TaskState::Received,
                functions: vec![("noop".into(), self.function)],
                tasks,
                result_serializers: "[]".into(),
                resource_spec: None,
                idempotency: None,
                quota: Default::default(),
                depends_on: Vec::new(),
            };
            pending.push(
                self.db
                    .enqueue(move |c, ctx| tasks::submit(c, ctx, &submission))
                    .unwrap(),
            );
        }
        for rx in pending {
            rx.await.unwrap().unwrap();
        }
        ids
    }

    /// Stores results for `ids` in frames of `RESULTS_PER_FRAME`, all queued at once.
    async fn result_round(&self, ids: &[Uuid]) {
        let mut pending = Vec::with_capacity(FRAMES);
        for chunk in ids.chunks(RESULTS_PER_FRAME) {
            let results: Vec<TaskResult> = chunk
                .iter()
                .map(|&task_id| TaskResult {
                    task_id,
                    outcome: Outcome::Success {
                        result: "11\nnull".into(),
                    },
                    output: None,
                    completed_at: 1.7e9,
                    placement: None,
                })
                .collect();
            let endpoint = self.endpoint;
            pending.push(
                self.db
                    .enqueue(move |c, ctx| tasks::store_results(c, ctx, endpoint, &results))
                    .unwrap(),
            );
        }
        for rx in pending {
            let stored = rx.await.unwrap().unwrap();
            assert_eq!(stored.len(), RESULTS_PER_FRAME);
        }
    }
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let f = fixture(&rt);
    let mut group = c.benchmark_group("group_commit");
    group.throughput(Throughput::Elements((SUBMITS * PER_SUBMIT) as u64));
    group.bench_function("100_concurrent_submits_of_10_tasks", |b| {
        b.iter(|| rt.block_on(f.submit_round()))
    });
    group.throughput(Throughput::Elements((FRAMES * RESULTS_PER_FRAME) as u64));
    group.bench_function("10_result_frames_of_100", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let ids = rt.block_on(f.submit_round());
                let start = Instant::now();
                rt.block_on(f.result_round(&ids[..FRAMES * RESULTS_PER_FRAME]));
                spent += start.elapsed();
            }
            spent
        })
    });
    group.finish();
    rt.block_on(f.db.shutdown());
    let _ = std::fs::remove_dir_all(&f.dir);
}

// Few samples over a short time: `cargo bench` is a quick look, not a study.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = group_commit
}
criterion_main!(benches);
