//! MPI functions end to end, with real OpenMPI and a small MPI program the
//! test builds with `mpicc`: the broker holds whole nodes of one block for an
//! MPI task, the leading manager launches it with the endpoint's
//! `mpi_launcher`, a task no block can hold fails at once, and the held
//! managers serve ordinary tasks again afterwards.
//!
//! The block is the local provider's `nodes_per_block = 2` under `mpiexec`:
//! two managers on this machine, each one "node" with its share of the
//! cores, which is how a real two-node block looks to the broker. Under the
//! real Slurm (`HPFAAS_SLURM=1`) the same program runs through `srun`.
//! Skipped with a printed reason without MPI or Slurm; required under `CI=true`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const HELLO_C: &str = r#"#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("rank %d of %d\n", rank, size);
    MPI_Finalize();
    return 0;
}
"#;

/// A Python function that says which manager ran it (its worker's parent).
const MANAGER_PID: &str =
    "def manager_pid(s):\n    import os, time\n    time.sleep(s)\n    return os.getppid()\n";

/// True when `mpicc` and `mpiexec` are installed; else prints why the test
/// is skipped, or fails it under `CI=true`.
fn mpi_available(test: &str) -> bool {
    let found = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found("mpicc") && found("mpiexec") {
        return true;
    }
    let reason =
        format!("{test}: skipped: no mpicc/mpiexec (apt-get install openmpi-bin libopenmpi-dev)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{reason}, and CI=true requires it"
    );
    eprintln!("{reason}");
    false
}

/// Builds the MPI program that prints `rank R of N`; returns its path.
fn build_hello(dir: &Path) -> PathBuf {
    let (src, exe) = (dir.join("hello.c"), dir.join("hello"));
    std::fs::write(&src, HELLO_C).unwrap();
    let out = std::process::Command::new("mpicc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mpicc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Registers `MPIFunction(cmd)` as the SDK sends it.
fn register_mpi(ep: &Endpoint, cmd: &str, walltime: Option<f64>) -> String {
    let spec = json!({"cmd": cmd, "walltime": walltime, "snippet_lines": 1000, "mpi": true});
    let code = pack(&[&format!("sh\n{spec}")]);
    post(
        &format!("{}/v3/functions", ep.svc.url),
        &ep.token,
        json!({"function_name": "mpi", "function_code": code}),
    )
    .unwrap()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Submits one call of `function_id` (no arguments) with a resource specification.
fn submit_with(ep: &Endpoint, function_id: &str, resources: &Value) -> String {
    let reply = post(
        &format!("{}/v3/endpoints/{}/submit", ep.svc.url, ep.endpoint_id()),
        &ep.token,
        json!({"tasks": {function_id: [pack(&["11\n[]", "11\n{}"])]}, "resource_specification": resources}),
    )
    .unwrap();
    reply["tasks"][function_id][0].as_str().unwrap().to_string()
}

/// The `ShellResult` of a finished MPI task (returncode, stdout, stderr, cmd).
fn shell_result(doc: &Value) -> Value {
    let result = doc["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no result: {doc}"));
    serde_json::from_str(result.strip_prefix("sr\n").unwrap()).unwrap()
}

/// The sorted `rank R of N` lines of an MPI program's output.
fn ranks(result: &Value) -> Vec<String> {
    let mut lines: Vec<String> = result["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("rank "))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn completion(doc: &Value) -> f64 {
    doc["completion_t"].as_str().unwrap().parse().unwrap()
}

fn unique(tag: &str) -> String {
    format!(
        "it-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

#[test]
fn mpi_functions_get_whole_nodes_of_one_block() {
    if !mpi_available("mpi_functions_get_whole_nodes_of_one_block") {
        return;
    }
    let work = temp_dir("mpi-fn");
    let hello = build_hello(&work);
    let svc = Service::start();
    let token = svc.token("mpi");
    // What a site would write: root and the 2-core oversubscription are
    // OpenMPI settings of the job, the rest is one 2-node block.
    let config = "[engine]\nmax_workers_per_node = 1\nprefetch_capacity = 0\n\
                  heartbeat_period = 0.5\nheartbeat_threshold = 10.0\n\
                  launcher_options = \"--oversubscribe\"\n\
                  [provider]\ntype = \"local\"\nnodes_per_block = 2\nlauncher = \"mpiexec\"\n\
                  init_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n\
                  worker_init = \"export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\"\n";
    let ep = Endpoint::new(&svc, &token, &unique("mpi-fn"), config);
    ep.start();
    let status_url = format!("{}/v2/endpoints/{}/status", svc.url, ep.endpoint_id());
    wait_for(
        Duration::from_secs(60),
        "both managers of the block",
        || (get(&status_url, &token).unwrap()["details"]["managers"] == json!(2)).then_some(()),
    );
    let mpi = register_mpi(&ep, &hello.display().to_string(), None);

    // Two nodes of two ranks: four distinct ranks of one job.
    let t = submit_with(&ep, &mpi, &json!({"num_nodes": 2, "ranks_per_node": 2}));
    let doc = &ep.wait_all(&[t], Duration::from_secs(60))[0];
    assert_eq!(doc["status"], "success", "{doc}");
    let r = shell_result(doc);
    assert_eq!(r["returncode"], 0, "{r}");
    assert_eq!(
        ranks(&r),
        ["rank 0 of 4", "rank 1 of 4", "rank 2 of 4", "rank 3 of 4"],
        "{r}"
    );
    let host = std::process::Command::new("hostname")
        .output()
        .unwrap()
        .stdout;
    let host = String::from_utf8_lossy(&host).trim().to_string();
    // Both managers are on this machine: one host with 4 slots, not the host twice.
    assert!(
        r["cmd"]
            .as_str()
            .unwrap()
            .starts_with(&format!("mpiexec -n 4 --host {host}:4 ")),
        "{r}"
    );

    // `num_ranks` alone: every rank on one node.
    let t = submit_with(&ep, &mpi, &json!({"num_ranks": 3}));
    let r = shell_result(&ep.wait_all(&[t], Duration::from_secs(60))[0]);
    assert_eq!(
        ranks(&r),
        ["rank 0 of 3", "rank 1 of 3", "rank 2 of 3"],
        "{r}"
    );

    // More nodes than any block has: failed, saying so (not held forever).
    let t = submit_with(&ep, &mpi, &json!({"num_nodes": 3}));
    let doc = &ep.wait_all(&[t], Duration::from_secs(60))[0];
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["exception_type"], "ValueError", "{doc}");
    let message = doc["exception_message"].as_str().unwrap();
    assert!(
        message.contains("needs 3 nodes") && message.contains("at most 2"),
        "{message}"
    );

    // An MPI task among small ones: one manager is busy, so the task waits
    // for nodes while holding both; small tasks sent after it run after it,
    // then on both managers again.
    let small = ep.register("manager_pid", MANAGER_PID);
    let busy = ep.submit_json(&small, &[json!([2.0])]);
    wait_for(
        Duration::from_secs(30),
        "the first small task to run",
        || (ep.task(&busy[0])["status"] == "running").then_some(()),
    );
    let sleeper = register_mpi(&ep, "sleep 1", None);
    let t = submit_with(&ep, &sleeper, &json!({"num_nodes": 2}));
    wait_for(Duration::from_secs(10), "waiting-for-nodes", || {
        (ep.task(&t)["status"] == "waiting-for-nodes").then_some(())
    });
    let args: Vec<Value> = (0..8).map(|_| json!([0.3])).collect();
    let after = ep.submit_json(&small, &args);
    let mpi_doc = &ep.wait_all(std::slice::from_ref(&t), Duration::from_secs(60))[0];
    assert_eq!(shell_result(mpi_doc)["returncode"], 0, "{mpi_doc}");
    let docs = ep.wait_all(&after, Duration::from_secs(60));
    let mut pids = std::collections::BTreeSet::new();
    for doc in &docs {
        assert_eq!(doc["status"], "success", "{doc}");
        assert!(
            completion(doc) >= completion(mpi_doc),
            "a small task overtook the held nodes"
        );
        pids.insert(doc["result"].as_str().unwrap().to_string());
    }
    assert_eq!(
        pids.len(),
        2,
        "both managers serve small tasks again: {pids:?}"
    );

    // Walltime ends every rank, not only the launcher.
    let marker = format!(
        "{}.{}",
        40 + std::process::id() % 50,
        std::process::id() % 1000
    );
    let stuck = register_mpi(&ep, &format!("sleep {marker}"), Some(1.0));
    let t = submit_with(&ep, &stuck, &json!({"num_nodes": 2}));
    let r = shell_result(&ep.wait_all(&[t], Duration::from_secs(60))[0]);
    assert_eq!(r["returncode"], 124, "{r}");
    wait_for(Duration::from_secs(10), "the ranks to end", || {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap();
        let left = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.trim() == format!("sleep {marker}"));
        (!left).then_some(())
    });
}

#[test]
fn mpi_function_under_slurm_with_srun() {
    if !slurm_available("mpi_function_under_slurm_with_srun")
        || !mpi_available("mpi_function_under_slurm_with_srun")
    {
        return;
    }
    let work = temp_dir("mpi-srun");
    let hello = build_hello(&work);
    let svc = Service::start();
    let token = svc.token("mpi-srun");
    // The job asks Slurm for CPUs for both ranks: a task's step may only use
    // what the block's allocation holds.
    let config =
        "[engine]\nmax_workers_per_node = 1\nheartbeat_period = 0.5\nheartbeat_threshold = 10.0\n\
                  mpi_launcher = \"srun\"\n\
                  [provider]\ntype = \"slurm\"\npartition = \"debug\"\nlauncher = \"srun\"\n\
                  nodes_per_block = 1\ninit_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n\
                  walltime = \"00:10:00\"\nscheduler_options = [\"#SBATCH --ntasks-per-node=2\"]\n";
    let ep = Endpoint::new(&svc, &token, &unique("mpi-srun"), config);
    ep.start();
    let mpi = register_mpi(&ep, &hello.display().to_string(), None);
    let t = submit_with(&ep, &mpi, &json!({"num_nodes": 1, "ranks_per_node": 2}));
    let doc = &ep.wait_all(&[t], Duration::from_secs(120))[0];
    assert_eq!(doc["status"], "success", "{doc}");
    let r = shell_result(doc);
    assert_eq!(r["returncode"], 0, "{r}");
    assert_eq!(ranks(&r), ["rank 0 of 2", "rank 1 of 2"], "{r}");
    assert!(
        r["cmd"]
            .as_str()
            .unwrap()
            .starts_with("srun --overlap --mpi=pmix --nodes 1 "),
        "{r}"
    );
}
