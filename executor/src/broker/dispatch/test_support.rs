//! Managers, tasks and results the dispatch unit tests are built from.

use hpfaas_protocol::broker::ManagerInfo;
use hpfaas_protocol::task::{FunctionCode, Outcome, TaskResult, TaskSpec};
use hpfaas_protocol::PROTOCOL_VERSION;
use uuid::Uuid;

/// A manager of `workers` slots and `prefetch` extra tasks in `block`.
pub fn info(id: &str, block: &str, workers: u32, prefetch: u32) -> ManagerInfo {
    ManagerInfo {
        version: PROTOCOL_VERSION,
        manager_id: id.into(),
        block_id: block.into(),
        job_id: None,
        host: "node".into(),
        rank: 0,
        pid: 1,
        cores: workers,
        workers,
        prefetch,
        deadline: None,
    }
}

/// `n` calls of a function, each a fresh task id.
pub fn tasks(n: usize, function_id: Uuid) -> Vec<TaskSpec> {
    (0..n)
        .map(|_| TaskSpec {
            task_id: Uuid::new_v4(),
            function_id,
            payload: String::new(),
            blob: None,
            result_serializers: vec![],
            resource_spec: None,
        })
        .collect()
}

/// A successful result.
pub fn ok(task_id: Uuid) -> TaskResult {
    TaskResult {
        task_id,
        outcome: Outcome::Success {
            result: "00\n".into(),
        },
        output: None,
        completed_at: 0.0,
        placement: None,
    }
}

/// An MPI function's code and `n` calls of it with this resource specification.
pub fn mpi_tasks(n: usize, spec: &str) -> (Vec<FunctionCode>, Vec<TaskSpec>) {
    let f = Uuid::new_v4();
    let code = hpfaas_protocol::payload::pack(&[r#"sh
{"cmd": "./hello", "mpi": true}"#]);
    let mut ts = tasks(n, f);
    for t in &mut ts {
        t.resource_spec = Some(spec.to_string());
    }
    (
        vec![FunctionCode {
            function_id: f,
            code,
        }],
        ts,
    )
}
