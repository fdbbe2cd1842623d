//! Endpoints on batch systems, end to end: the real single-node Slurm, and
//! PBS Pro and LSF through their emulated command-line tools (which hand
//! the jobs to the same Slurm, so managers really run inside batch jobs).
//! Skipped with a printed reason without Slurm; required under `CI=true`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const WHERE: &str = "def where(x):\n    import os\n    job = os.environ.get('SLURM_JOB_ID') or os.environ.get('PBS_JOBID') or os.environ.get('LSB_JOBID') or ''\n    return [job, x]\n";
const SLEEP: &str = "def nap(s):\n    import time\n    time.sleep(s)\n    return s\n";

fn unique(tag: &str) -> String {
    format!(
        "it-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// An endpoint (configured with `text`, not started) of a new user of
/// `svc`, named `unique(tag)`; PBS and LSF see the emulated tools first.
fn batch_endpoint<'a>(svc: &'a Service, tag: &str, provider: &str, text: &str) -> Endpoint<'a> {
    let token = svc.token("batch");
    let mut ep = Endpoint::new(svc, &token, &unique(tag), text);
    if provider != "slurm" {
        ep.path_prefix = Some(emulators());
    }
    ep
}

fn config(provider: &str, extra_provider: &str, extra_engine: &str) -> String {
    // The emulated PBS and LSF jobs start managers with OpenMPI's mpiexec,
    // which refuses root unless told: exactly what a site's worker_init does.
    let placement = match provider {
        "slurm" => "partition = \"debug\"",
        _ => "queue = \"debug\"\nworker_init = \"export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\"",
    };
    format!(
        "[engine]\nmax_workers_per_node = 2\nheartbeat_period = 0.5\nheartbeat_threshold = 10.0\n{extra_engine}\n\
         [provider]\ntype = \"{provider}\"\n{placement}\nwalltime = \"00:10:00\"\n{extra_provider}\n"
    )
}

fn job_of(doc: &serde_json::Value) -> String {
    let result = doc["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no result: {doc}"));
    let value: serde_json::Value =
        serde_json::from_str(result.strip_prefix("11\n").unwrap()).unwrap();
    value[0].as_str().unwrap().to_string()
}

fn emulators() -> String {
    std::env::var("HPFAAS_EMULATORS")
        .unwrap_or_else(|_| format!("{}/tests/emulators/bin", env!("CARGO_MANIFEST_DIR")))
}

/// 500 tasks through pilot jobs that scale out from 0 and back to 0.
fn scale_out_run_and_scale_in(provider: &str) {
    let svc = Service::start();
    let text = config(
        provider,
        "init_blocks = 0\nmin_blocks = 0\nmax_blocks = 2\nmax_idletime = 3",
        "",
    );
    let ep = batch_endpoint(&svc, provider, provider, &text);
    let name = ep.name.clone();
    ep.start();
    assert!(
        ep.state()["blocks"].as_array().is_none_or(|b| b.is_empty()),
        "no block before work"
    );
    let f = ep.register("where", WHERE);
    let args: Vec<serde_json::Value> = (0..500).map(|i| json!([i])).collect();
    let ids = ep.submit_json(&f, &args);
    let docs = ep.wait_all(&ids, Duration::from_secs(180));
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(doc["status"], "success", "{doc}");
        assert!(
            !job_of(doc).is_empty(),
            "task {i} did not run inside a batch job: {doc}"
        );
    }
    // Idle for max_idletime: every block is cancelled, down to min_blocks = 0.
    wait_for(Duration::from_secs(60), "blocks to scale in to 0", || {
        ep.state()["blocks"]
            .as_array()
            .is_some_and(|b| b.is_empty())
            .then_some(())
    });
    let out = ep.cmd(&["stop", &name]);
    assert_success(&out);
    wait_for(
        Duration::from_secs(30),
        "no job of ours left in squeue",
        || {
            slurm_jobs(&format!("hpfaas-{name}"))
                .is_empty()
                .then_some(())
        },
    );
}

#[test]
fn slurm_blocks_scale_out_run_tasks_and_scale_in() {
    if slurm_available("slurm_blocks_scale_out_run_tasks_and_scale_in") {
        scale_out_run_and_scale_in("slurm");
    }
}

#[test]
fn pbs_blocks_scale_out_run_tasks_and_scale_in() {
    if slurm_available("pbs_blocks_scale_out_run_tasks_and_scale_in") {
        scale_out_run_and_scale_in("pbs");
    }
}

#[test]
fn lsf_blocks_scale_out_run_tasks_and_scale_in() {
    if slurm_available("lsf_blocks_scale_out_run_tasks_and_scale_in") {
        scale_out_run_and_scale_in("lsf");
    }
}

/// The scheduler's cancel command for a job of `provider`.
fn cancel_job(provider: &str, job: &str) {
    let (tool, path) = match provider {
        "slurm" => ("scancel", std::env::var("PATH").unwrap_or_default()),
        "pbs" => (
            "qdel",
            format!(
                "{}:{}",
                emulators(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        _ => (
            "bkill",
            format!(
                "{}:{}",
                emulators(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
    };
    let status = std::process::Command::new(tool)
        .arg(job)
        .env("PATH", path)
        .status()
        .unwrap();
    assert!(status.success(), "{tool} {job} failed");
}

/// Cancelling a block from outside fails its in-flight tasks with ManagerLost.
fn cancelled_block_fails_its_tasks(provider: &str) {
    let svc = Service::start();
    let text = config(provider, "init_blocks = 1\nmax_blocks = 1", "");
    let ep = batch_endpoint(&svc, &format!("cancel-{provider}"), provider, &text);
    ep.start();
    let f = ep.register("nap", SLEEP);
    let ids = ep.submit_json(&f, &[json!([120])]);
    wait_for(Duration::from_secs(60), "the task to run", || {
        (ep.task(&ids[0])["status"] == "running").then_some(())
    });
    let job = ep.state()["blocks"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    cancel_job(provider, &job);
    let doc = ep.wait_all(&ids, Duration::from_secs(60)).remove(0);
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["exception_type"], "ManagerLost", "{doc}");
}

#[test]
fn scancel_of_a_block_fails_its_tasks_with_manager_lost() {
    if slurm_available("scancel_of_a_block_fails_its_tasks_with_manager_lost") {
        cancelled_block_fails_its_tasks("slurm");
    }
}

#[test]
fn qdel_of_a_block_fails_its_tasks_with_manager_lost() {
    if slurm_available("qdel_of_a_block_fails_its_tasks_with_manager_lost") {
        cancelled_block_fails_its_tasks("pbs");
    }
}

#[test]
fn bkill_of_a_block_fails_its_tasks_with_manager_lost() {
    if slurm_available("bkill_of_a_block_fails_its_tasks_with_manager_lost") {
        cancelled_block_fails_its_tasks("lsf");
    }
}

#[test]
fn invalid_partition_is_shown_in_status() {
    if !slurm_available("invalid_partition_is_shown_in_status") {
        return;
    }
    let svc = Service::start();
    let text = config("slurm", "init_blocks = 1", "")
        .replace("partition = \"debug\"", "partition = \"no-such-partition\"");
    let ep = batch_endpoint(&svc, "badpart", "slurm", &text);
    let name = ep.name.clone();
    ep.start();
    let error = wait_for(
        Duration::from_secs(30),
        "the sbatch error in the agent state",
        || ep.state()["last_error"].as_str().map(str::to_string),
    );
    assert!(error.contains("invalid partition"), "{error}");
    let out = ep.cmd(&["status", &name]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.contains("invalid partition"), "{table}");
}

/// An agent killed with SIGKILL and started again serves tasks from the
/// block that kept running, and submits no twin.
fn killed_agent_readopts_its_blocks(provider: &str) {
    let svc = Service::start();
    let text = config(provider, "init_blocks = 1\nmax_blocks = 1", "");
    let ep = batch_endpoint(&svc, &format!("readopt-{provider}"), provider, &text);
    let name = ep.name.clone();
    ep.start();
    let f = ep.register("where", WHERE);
    let first = ep.wait_all(&ep.submit_json(&f, &[json!([1])]), Duration::from_secs(60));
    let job = job_of(&first[0]);
    let pid = ep.state()["pid"].as_u64().unwrap() as i32;
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for(Duration::from_secs(10), "the agent to die", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    ep.start();
    let again = ep.wait_all(&ep.submit_json(&f, &[json!([2])]), Duration::from_secs(60));
    assert_eq!(
        job_of(&again[0]),
        job,
        "the re-adopted block serves the task"
    );
    assert_eq!(
        slurm_jobs(&format!("hpfaas-{name}")).len(),
        1,
        "no duplicate block was submitted"
    );
}

#[test]
fn a_killed_agent_readopts_its_blocks() {
    if slurm_available("a_killed_agent_readopts_its_blocks") {
        killed_agent_readopts_its_blocks("slurm");
    }
}

#[test]
fn a_killed_pbs_agent_readopts_its_blocks() {
    if slurm_available("a_killed_pbs_agent_readopts_its_blocks") {
        killed_agent_readopts_its_blocks("pbs");
    }
}

#[test]
fn a_killed_lsf_agent_readopts_its_blocks() {
    if slurm_available("a_killed_lsf_agent_readopts_its_blocks") {
        killed_agent_readopts_its_blocks("lsf");
    }
}

#[test]
fn a_users_own_sbatch_script_joins_the_endpoint() {
    if !slurm_available("a_users_own_sbatch_script_joins_the_endpoint") {
        return;
    }
    let svc = Service::start();
    let ep = batch_endpoint(
        &svc,
        "ownjob",
        "slurm",
        &config("slurm", "max_blocks = 0", ""),
    );
    let name = ep.name.clone();
    ep.start();
    let script = ep.dir().join("own.sbatch");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n#SBATCH --job-name=hpfaas-{name}-own\n#SBATCH --partition=debug\n#SBATCH --time=5\n\
             #SBATCH --output={dir}/own.out\nexport HPFAAS_HOME={home}\n\
             srun --overlap --cpu-bind=none {bin} manager --endpoint {name} --workers 1\n",
            dir = ep.dir().display(),
            home = ep.home.display(),
            bin = env!("CARGO_BIN_EXE_hpfaas"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("sbatch")
        .arg("--parsable")
        .arg(&script)
        .output()
        .unwrap();
    assert_success(&out);
    let job = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let f = ep.register("where", WHERE);
    let docs = ep.wait_all(
        &ep.submit_json(&f, &[json!([1]), json!([2])]),
        Duration::from_secs(90),
    );
    for doc in &docs {
        assert_eq!(job_of(doc), job, "{doc}");
    }
    // The endpoint shows the job among its blocks, as joined from outside.
    let shown = wait_for(
        Duration::from_secs(10),
        "the job in the endpoint's blocks",
        || {
            let blocks = ep.state()["blocks"].clone();
            blocks
                .as_array()?
                .iter()
                .find(|b| b["job_id"] == job.as_str())
                .cloned()
        },
    );
    assert_eq!(shown["provider"], "external", "{shown}");
    let _ = std::process::Command::new("scancel").arg(&job).status();
}

#[test]
fn walltime_draining_starts_a_replacement_block() {
    if !slurm_available("walltime_draining_starts_a_replacement_block") {
        return;
    }
    let svc = Service::start();
    // A 10-minute block that drains 9m50s before its end: after ~10 s it
    // takes no new work, so the endpoint must start a replacement for it.
    let text = config(
        "slurm",
        "init_blocks = 1\nmin_blocks = 1\nmax_blocks = 2\ndrain_period = 590",
        "",
    );
    let ep = batch_endpoint(&svc, "drain", "slurm", &text);
    ep.start();
    let f = ep.register("where", WHERE);
    let first =
        job_of(&ep.wait_all(&ep.submit_json(&f, &[json!([1])]), Duration::from_secs(60))[0]);
    wait_for(Duration::from_secs(60), "the first block to drain", || {
        let blocks = ep.state()["blocks"].clone();
        blocks
            .as_array()?
            .iter()
            .any(|b| b["state"] == "draining")
            .then_some(())
    });
    let later =
        job_of(&ep.wait_all(&ep.submit_json(&f, &[json!([2])]), Duration::from_secs(90))[0]);
    assert_ne!(later, first, "a draining block must not take new work");
}

#[test]
fn a_block_that_hits_its_walltime_is_replaced_and_its_task_retried() {
    if !slurm_available("a_block_that_hits_its_walltime_is_replaced_and_its_task_retried") {
        return;
    }
    let svc = Service::start();
    // One-minute blocks (Slurm's smallest) that drain for their last 30 s:
    // the replacement starts before the first block is killed, and the task
    // killed with it is retried there (max_retries_on_system_failure = 1).
    let text = config(
        "slurm",
        "init_blocks = 1\nmin_blocks = 1\nmax_blocks = 2\ndrain_period = 30",
        "max_retries_on_system_failure = 1",
    )
    .replace("walltime = \"00:10:00\"", "walltime = \"00:01:00\"");
    let ep = batch_endpoint(&svc, "walltime", "slurm", &text);
    ep.start();
    let marker = ep.dir().join("first-attempt");
    let source = format!(
        "def once(x):\n    import os, time\n    job = os.environ['SLURM_JOB_ID']\n    if not os.path.exists({m:?}):\n        open({m:?}, 'w').write(job)\n        time.sleep(600)\n    return [job, x]\n",
        m = marker.display().to_string()
    );
    let f = ep.register("once", &source);
    let ids = ep.submit_json(&f, &[json!([1])]);
    let doc = ep.wait_all(&ids, Duration::from_secs(240)).remove(0);
    assert_eq!(doc["status"], "success", "{doc}");
    let first_job = std::fs::read_to_string(&marker).unwrap();
    assert_ne!(
        job_of(&doc),
        first_job,
        "the retry ran on the replacement block"
    );
}
