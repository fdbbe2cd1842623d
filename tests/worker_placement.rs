//! Worker placement through the real binaries: a local endpoint whose
//! manager runs 2 workers under each `cpu_affinity` mode that pins, seen
//! from inside a Python task (`os.sched_getaffinity(0)`, `OMP_NUM_THREADS`,
//! the accelerator variables, the environment); and the requests
//! `endpoint start` or `hpfaas manager` refuse.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// Reports where it ran; sleeps so that both workers get a task.
const WHERE: &str = "def where(delay):
    import os, time
    WATCHED = ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'PMIX_RANK', 'OMPI_MCA_ess_base_jobid', 'OMPI_MCA_btl')
    time.sleep(delay)
    e = os.environ
    return {
        'rank': int(e['HPFAAS_WORKER_RANK']),
        'count': int(e['HPFAAS_WORKER_COUNT']),
        'cpus': sorted(os.sched_getaffinity(0)),
        'omp': e.get('OMP_NUM_THREADS'),
        'gpu': [e.get(v) for v in ('CUDA_VISIBLE_DEVICES', 'ROCR_VISIBLE_DEVICES', 'ZE_AFFINITY_MASK')],
        'env': {k: v for k, v in e.items() if k.startswith('PLACEMENT_TEST_') or k in WATCHED},
        'slurm': {k: e.get(k) for k in ('SLURM_JOB_ID', 'SLURM_STEP_ID', 'HPFAAS_JOB_ENV')},
    }
";

/// The CPUs this test (and so the endpoint it starts) may use.
fn allowed_cpus() -> Vec<u32> {
    // SAFETY: an all-zero cpu_set_t is valid and the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the set's true size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0);
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: index below CPU_SETSIZE of a filled set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c as u32)
        .collect()
}

fn unique(tag: &str) -> String {
    format!(
        "it-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Runs `where` on a local endpoint with `engine` lines and `worker_init`;
/// returns what each worker rank reported.
fn run_placed(tag: &str, engine: &str, worker_init: &str) -> BTreeMap<u64, serde_json::Value> {
    let provider = format!(
        "type = \"local\"\ninit_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\nworker_init = '''{worker_init}'''"
    );
    run_on(tag, engine, &provider)
}

/// Runs `where` on an endpoint with `engine` and `provider` lines; returns
/// what each worker rank reported.
fn run_on(tag: &str, engine: &str, provider: &str) -> BTreeMap<u64, serde_json::Value> {
    let svc = Service::start();
    let token = svc.token("placement");
    let name = unique(tag);
    let config = format!(
        "[engine]\nmax_workers_per_node = 2\nheartbeat_period = 0.5\nheartbeat_threshold = 10.0\n{engine}\n\
         [provider]\n{provider}\n"
    );
    let ep = Endpoint::new(&svc, &token, &name, &config);
    ep.start();
    let fid = ep.register("where", WHERE);
    let args: Vec<serde_json::Value> = (0..4).map(|_| serde_json::json!([0.6])).collect();
    let tasks = ep.submit_json(&fid, &args);
    let docs = ep.wait_all(&tasks, Duration::from_secs(60));
    let mut by_rank = BTreeMap::new();
    for doc in docs {
        assert_eq!(doc["status"], "success", "{doc}");
        let result = doc["result"]
            .as_str()
            .unwrap()
            .strip_prefix("11\n")
            .unwrap();
        let report: serde_json::Value = serde_json::from_str(result).unwrap();
        by_rank.insert(report["rank"].as_u64().unwrap(), report);
    }
    assert_eq!(
        by_rank.keys().copied().collect::<Vec<_>>(),
        vec![0, 1],
        "both workers should have run a task: {by_rank:?}"
    );
    by_rank
}

fn cpus(report: &serde_json::Value) -> Vec<u32> {
    report["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as u32)
        .collect()
}

/// Two disjoint, non-empty cpusets inside the allowed ones, with matching
/// `OMP_NUM_THREADS`; returns them.
fn disjoint_pair(by_rank: &BTreeMap<u64, serde_json::Value>) -> (Vec<u32>, Vec<u32>) {
    let allowed = allowed_cpus();
    let (a, b) = (cpus(&by_rank[&0]), cpus(&by_rank[&1]));
    for (set, report) in [(&a, &by_rank[&0]), (&b, &by_rank[&1])] {
        assert!(!set.is_empty(), "{report}");
        assert!(set.iter().all(|c| allowed.contains(c)), "{report}");
        let omp: usize = report["omp"].as_str().unwrap().parse().unwrap();
        assert!(omp >= 1 && omp <= set.len(), "{report}");
        assert_eq!(report["count"], 2, "{report}");
    }
    assert!(a.iter().all(|c| !b.contains(c)), "overlap: {a:?} {b:?}");
    (a, b)
}

fn have_two_cpus(test: &str) -> bool {
    if allowed_cpus().len() >= 2 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs 2 CPUs on CI"
    );
    eprintln!("{test}: skipped: this process may use only one CPU");
    false
}

#[test]
fn block_gives_each_worker_its_own_cores_and_a_clean_environment() {
    if !have_two_cpus("block") {
        return;
    }
    // Variables an MPI launcher would have added: the manager must not pass
    // them on (no saved job environment here, so it filters its own).
    let by_rank = run_placed(
        "block",
        "cpu_affinity = \"block\"",
        "export OMPI_COMM_WORLD_RANK=3 PMIX_RANK=3 OMPI_MCA_ess_base_jobid=9 OMPI_MCA_btl=self,tcp",
    );
    let (a, b) = disjoint_pair(&by_rank);
    assert!(a[0] < b[0], "block counts from the first core: {a:?} {b:?}");
    for report in by_rank.values() {
        assert_eq!(
            report["env"],
            serde_json::json!({"OMPI_MCA_btl": "self,tcp"}),
            "{report}"
        );
        assert_eq!(report["gpu"], serde_json::json!([null, null, null]));
    }
}

#[test]
fn block_reverse_with_accelerators_gives_one_each() {
    if !have_two_cpus("block-reverse") {
        return;
    }
    let by_rank = run_placed(
        "reverse",
        "cpu_affinity = \"block-reverse\"\navailable_accelerators = [\"0\", \"1\"]",
        "",
    );
    let (a, b) = disjoint_pair(&by_rank);
    assert!(
        a[0] > b[0],
        "block-reverse counts from the last core: {a:?} {b:?}"
    );
    assert_eq!(by_rank[&0]["gpu"], serde_json::json!(["0", "0", "0"]));
    assert_eq!(by_rank[&1]["gpu"], serde_json::json!(["1", "1", "1"]));
}

#[test]
fn alternating_pins_and_workers_get_the_saved_job_environment() {
    if !have_two_cpus("alternating") {
        return;
    }
    // What a batch job script does before its launch line, then a variable
    // "the launcher" adds after the save: workers see the saved one only.
    let dir = temp_dir("jobenv");
    let init = format!(
        "export PLACEMENT_TEST_SAVED=yes HPFAAS_JOB_ENV={}/job.env\n\
         env -0 > \"$HPFAAS_JOB_ENV\"\n\
         export PLACEMENT_TEST_LAUNCHER=yes OMPI_COMM_WORLD_SIZE=2",
        dir.display()
    );
    let by_rank = run_placed("alternating", "cpu_affinity = \"alternating\"", &init);
    let (a, _) = disjoint_pair(&by_rank);
    assert_eq!(a[0], allowed_cpus()[0], "worker 0 starts at the first core");
    for report in by_rank.values() {
        assert_eq!(
            report["env"],
            serde_json::json!({"PLACEMENT_TEST_SAVED": "yes"}),
            "{report}"
        );
    }
}

#[test]
fn list_pins_exactly_as_listed() {
    if !have_two_cpus("list") {
        return;
    }
    let allowed = allowed_cpus();
    let (first, second) = (allowed[0], allowed[1]);
    let by_rank = run_placed(
        "list",
        &format!("cpu_affinity = \"list:{second}:{first}\""),
        "",
    );
    assert_eq!(cpus(&by_rank[&0]), vec![second]);
    assert_eq!(cpus(&by_rank[&1]), vec![first]);
    assert_eq!(by_rank[&0]["omp"], "1");
}

/// `endpoint start` refuses before any block starts; the URL is never used.
fn start_error(tag: &str, engine: &str) -> String {
    let home = temp_dir(tag);
    let name = unique(tag);
    let dir = home.join("endpoints").join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!("[engine]\n{engine}\n[provider]\ntype = \"local\"\n"),
    )
    .unwrap();
    let out = endpoint_cmd(&home, "http://127.0.0.1:9", "t", &["start", &name]);
    assert!(!out.status.success(), "{engine}: start should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn impossible_placements_are_refused_at_endpoint_start() {
    let err = start_error("badmode", "cpu_affinity = \"compact\"");
    assert!(
        err.contains("engine.cpu_affinity = \"compact\" is not a mode")
            && err.contains("block-reverse"),
        "{err}"
    );
    let err = start_error(
        "shortlist",
        "cpu_affinity = \"list:0:1\"\nmax_workers_per_node = 3",
    );
    assert!(
        err.contains("lists CPUs for 2 workers but 3 workers are asked for"),
        "{err}"
    );
    // More workers than this machine (where local blocks run) has cores.
    let too_many = allowed_cpus().len() + 1;
    let err = start_error(
        "toomany",
        &format!("cpu_affinity = \"block\"\nmax_workers_per_node = {too_many}"),
    );
    assert!(
        err.contains(&format!("{too_many} workers"))
            && err.contains("needs at least one core per worker"),
        "{err}"
    );
}

#[test]
fn a_manager_refuses_cpus_it_may_not_use_before_registering() {
    let out = hpfaas()
        .args([
            "manager",
            "--broker",
            "tcp://127.0.0.1:9",
            "--register-timeout",
            "30",
            "--workers",
            "1",
            "--cpu-affinity",
            "list:4095",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CPU 4095"), "{err}");
    let out = hpfaas()
        .args([
            "manager",
            "--broker",
            "tcp://127.0.0.1:9",
            "--workers",
            "1",
            "--cpu-affinity",
            &format!("list:{}", libc::CPU_SETSIZE - 1),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("that this manager may not use"), "{err}");
}

/// Under the real Slurm: the job script saves its environment before `srun`,
/// so workers see the batch job (`SLURM_JOB_ID`) but not the managers' step
/// (`SLURM_STEP_ID`, `PMIX_*`), and are pinned as on a laptop.
#[test]
fn slurm_workers_get_the_job_environment_and_are_pinned() {
    if !slurm_available("slurm_workers_get_the_job_environment_and_are_pinned")
        || !have_two_cpus("slurm")
    {
        return;
    }
    let by_rank = run_on(
        "slurm-placed",
        "cpu_affinity = \"block\"",
        "type = \"slurm\"\npartition = \"debug\"\nwalltime = \"00:05:00\"\n\
         init_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\nlauncher_template = \"srun --mpi=pmix --nodes={nodes} --ntasks={nodes} --cpu-bind=none --overlap {cmd}\"\nlauncher = \"custom\"",
    );
    disjoint_pair(&by_rank);
    for report in by_rank.values() {
        let slurm = &report["slurm"];
        assert!(slurm["SLURM_JOB_ID"].is_string(), "{report}");
        assert!(slurm["SLURM_STEP_ID"].is_null(), "{report}");
        // The saved job environment is used, but its (private) path is not told.
        assert!(slurm["HPFAAS_JOB_ENV"].is_null(), "{report}");
        assert_eq!(report["env"], serde_json::json!({}), "{report}");
    }
}
