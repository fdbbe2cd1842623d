//! The Slurm, PBS and LSF providers against real schedulers: the test Slurm
//! of `scripts/slurm.sh up` (`HPFAAS_SLURM=1`), and the PBS Pro and LSF
//! emulators of `tests/emulators/bin` (or `HPFAAS_EMULATORS`), which hand
//! their jobs to that Slurm and print the real formats.
//!
//! Without them each test prints why it is skipped; with `CI=true` it fails
//! instead. Every job is named `it-<uuid>`, and each test checks that none of
//! its jobs is left in the queue.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hpfaas_scheduler_adapters::{build, BlockRequest, JobId, JobState, Provider, ProviderConfig};

/// How long a block may take to start, or to end after a cancel.
const PATIENCE: Duration = Duration::from_secs(90);

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (or, on CI, fails) a test that cannot run here.
fn unavailable(why: &str) -> bool {
    assert!(!ci(), "{why}, and CI=true: this test must run on CI");
    eprintln!("skipped: {why}");
    true
}

/// The emulator directory, if it holds the emulators.
fn emulator_dir() -> PathBuf {
    std::env::var_os("HPFAAS_EMULATORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/emulators/bin"))
}

/// Puts the emulators first on `PATH`, once, before any test runs a command.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = emulator_dir();
        if dir.join("qsub").exists() || dir.join("bsub").exists() {
            let path = std::env::var("PATH").unwrap_or_default();
            std::env::set_var("PATH", format!("{}:{path}", dir.display()));
        }
    });
}

/// True when the test cannot run: no Slurm, or not the emulator `tool` needs.
fn skip(tool: Option<&str>) -> bool {
    setup();
    if std::env::var("HPFAAS_SLURM").map_or(true, |v| v != "1") {
        return unavailable("no Slurm (set HPFAAS_SLURM=1 after scripts/slurm.sh up)");
    }
    match tool {
        Some(tool) if !emulator_dir().join(tool).exists() => unavailable(&format!(
            "no {tool} emulator in {} (set HPFAAS_EMULATORS)",
            emulator_dir().display()
        )),
        _ => false,
    }
}

/// A unique job name, and a directory for the job's script and logs.
fn unique() -> (String, PathBuf) {
    let name = format!("it-{}", uuid::Uuid::new_v4().simple());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("schedulers")
        .join(&name);
    (name, dir)
}

fn config(kind: &str) -> ProviderConfig {
    let mut config = ProviderConfig {
        kind: kind.parse().unwrap(),
        walltime: "00:05:00".into(),
        cmd_timeout: 20.0,
        ..Default::default()
    };
    match kind {
        // The real launcher line: srun in the job's allocation.
        "slurm" => config.partition = Some("debug".into()),
        // mpiexec is not what these tests are about.
        _ => config.launcher = Some("single-node".into()),
    }
    config
}

fn request(name: &str, dir: &Path, shell: &str) -> BlockRequest {
    BlockRequest {
        block_id: "1".into(),
        job_name: name.into(),
        manager_command: vec!["/bin/sh".into(), "-c".into(), shell.into()],
        env: vec![("HPFAAS_IT".into(), name.into())],
        log_dir: dir.into(),
    }
}

fn state(p: &mut dyn Provider, job: &JobId) -> JobState {
    let states = p.status(std::slice::from_ref(job)).unwrap();
    states
        .get(job)
        .unwrap_or_else(|| panic!("no state for {job} in {states:?}"))
        .clone()
}

fn wait_for(
    p: &mut dyn Provider,
    job: &JobId,
    what: &str,
    done: impl Fn(&JobState) -> bool,
) -> JobState {
    let started = Instant::now();
    loop {
        let s = state(p, job);
        if done(&s) {
            return s;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "job {job} not {what} after {PATIENCE:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Fails if Slurm still runs or queues a job called `name` (the emulators
/// hand their jobs to Slurm under the same name).
fn assert_no_leftovers(name: &str) {
    let started = Instant::now();
    loop {
        let out = Command::new("squeue")
            .args(["--noheader", "--format=%i %T", &format!("--name={name}")])
            .output()
            .expect("squeue");
        let left = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if left.is_empty() {
            return;
        }
        // A cancelled job may still be COMPLETING for a moment.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "jobs named {name} left behind: {left}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Cancels a test's job if the test fails half-way, so that a failure does
/// not leave a job running for the next test to trip over.
struct CancelOnDrop {
    provider: Box<dyn Provider>,
    job: JobId,
}

impl CancelOnDrop {
    fn new(config: &ProviderConfig, job: &JobId) -> Self {
        CancelOnDrop {
            provider: build(config).unwrap(),
            job: job.clone(),
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.provider.cancel(std::slice::from_ref(&self.job));
        }
    }
}

/// An id of the provider's form that names no job.
fn bogus(job: &JobId) -> JobId {
    match job.find('.') {
        Some(dot) => format!("67000000{}", &job[dot..]),
        None => "67000000".into(),
    }
}

/// Submit a long block, see it run (and run its command), poll it together
/// with an unknown id, cancel it, see it finished; cancel it again.
fn run_and_cancel(kind: &str, cancelled: &str) {
    let (name, dir) = unique();
    let mut p = build(&config(kind)).unwrap();
    let marker = dir.join("started");
    let req = request(
        &name,
        &dir,
        &format!(
            "echo \"$HPFAAS_IT ${{SLURM_JOB_ID:-}}\" > {}; sleep 60",
            marker.display()
        ),
    );
    let job = p.submit(&req).unwrap();
    let _cleanup = CancelOnDrop::new(&config(kind), &job);
    wait_for(p.as_mut(), &job, "running", |s| *s == JobState::Running);
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < PATIENCE,
            "block {job} never ran its command"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let written = std::fs::read_to_string(&marker).unwrap();
    assert!(
        written.starts_with(&name),
        "exports reach the manager: {written:?}"
    );
    if kind == "slurm" {
        assert_eq!(
            written.trim(),
            format!("{name} {job}"),
            "it ran in job {job}"
        );
    }

    let unknown = bogus(&job);
    let states = p.status(&[job.clone(), unknown.clone()]).unwrap();
    assert_eq!(states[&job], JobState::Running);
    assert!(states[&unknown].is_finished(), "{:?}", states[&unknown]);

    p.cancel(std::slice::from_ref(&job)).unwrap();
    let end = wait_for(p.as_mut(), &job, "finished", JobState::is_finished);
    eprintln!("{kind} job {job}, cancelled: {end:?}");
    match &end {
        JobState::Failed { reason } => assert!(reason.contains(cancelled), "{reason}"),
        other => panic!("a cancelled block is not {other:?}"),
    }
    p.cancel(std::slice::from_ref(&job))
        .expect("cancelling a finished job is not an error");
    assert_no_leftovers(&name);
}

/// A block whose manager exits 3 fails, with the code in the reason.
fn exit_code_is_reported(kind: &str) {
    let (name, dir) = unique();
    let mut p = build(&config(kind)).unwrap();
    let job = p.submit(&request(&name, &dir, "exit 3")).unwrap();
    let _cleanup = CancelOnDrop::new(&config(kind), &job);
    let end = wait_for(p.as_mut(), &job, "finished", JobState::is_finished);
    eprintln!("{kind} job {job}, exit 3: {end:?}");
    match &end {
        JobState::Failed { reason } => assert!(reason.contains('3'), "{reason}"),
        other => panic!("a block that exits 3 is not {other:?}"),
    }
    assert_no_leftovers(&name);
}

/// A placement the scheduler refuses surfaces the scheduler's own words.
fn bad_placement_is_quoted(kind: &str, words: &[&str]) {
    let (name, dir) = unique();
    let mut config = config(kind);
    let nope = format!("nope{}", &name[3..11]);
    match kind {
        "slurm" => config.partition = Some(nope.clone()),
        _ => config.queue = Some(nope.clone()),
    }
    let mut p = build(&config).unwrap();
    let err = p
        .submit(&request(&name, &dir, "true"))
        .unwrap_err()
        .to_string();
    eprintln!("{kind} with {nope}: {err}");
    for word in words {
        assert!(
            err.to_lowercase().contains(&word.to_lowercase()),
            "{word:?} not in {err}"
        );
    }
    assert_no_leftovers(&name);
}

#[test]
fn slurm_block_runs_and_is_cancelled() {
    if skip(None) {
        return;
    }
    run_and_cancel("slurm", "CANCELLED");
}

#[test]
fn slurm_failed_block_reports_its_exit_code() {
    if skip(None) {
        return;
    }
    exit_code_is_reported("slurm");
}

#[test]
fn slurm_invalid_partition_quotes_sbatch() {
    if skip(None) {
        return;
    }
    bad_placement_is_quoted("slurm", &["sbatch: error", "invalid partition"]);
}

#[test]
fn pbs_block_runs_and_is_cancelled() {
    if skip(Some("qsub")) {
        return;
    }
    run_and_cancel("pbs", "killed");
}

#[test]
fn pbs_failed_block_reports_its_exit_code() {
    if skip(Some("qsub")) {
        return;
    }
    exit_code_is_reported("pbs");
}

#[test]
fn pbs_unknown_queue_quotes_qsub() {
    if skip(Some("qsub")) {
        return;
    }
    bad_placement_is_quoted("pbs", &["qsub", "queue"]);
}

#[test]
fn lsf_block_runs_and_is_cancelled() {
    if skip(Some("bsub")) {
        return;
    }
    run_and_cancel("lsf", "EXIT");
}

#[test]
fn lsf_failed_block_reports_its_exit_code() {
    if skip(Some("bsub")) {
        return;
    }
    exit_code_is_reported("lsf");
}

#[test]
fn lsf_unknown_queue_quotes_bsub() {
    if skip(Some("bsub")) {
        return;
    }
    bad_placement_is_quoted("lsf", &["queue"]);
}
