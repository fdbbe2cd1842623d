//! The Slurm, PBS and LSF providers end to end against fake scheduler
//! commands that print captured outputs (`tests/fixtures/`), put first on
//! `PATH`: submit, batched status with vanished jobs, accounting fallbacks,
//! cancel of finished jobs, the scheduler's own error text, and a command that
//! hangs. Needs no batch system; the real ones are in `tests/schedulers.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hpfaas_scheduler_adapters::{build, BlockRequest, JobState, Provider, ProviderConfig};

const FAKES: &[(&str, &str)] = &[
    (
        "sbatch",
        r#"script="$2"
case "$(cat "$script")" in
    *--partition=hang*) sleep 3600 ;;
    *--partition=nope*) cat "$FIX/slurm/sbatch-invalid-partition.stderr" >&2; exit 1 ;;
esac
cat "$FIX/slurm/sbatch-cluster.txt""#,
    ),
    ("squeue", r#"cat "$FIX/slurm/squeue.txt""#),
    (
        "sacct",
        // No slurmdbd here: only the completion log (`-c`) answers.
        r#"if [ "$1" != -c ]; then echo "Slurm accounting storage is disabled" >&2; exit 1; fi
printf '111|TIMEOUT|0:0\n108|FAILED|3:0\n'"#,
    ),
    (
        "scancel",
        r#"echo "scancel: error: Kill job error on job id 107: Job/step already completing or completed" >&2; exit 1"#,
    ),
    ("qsub", r#"cat "$FIX/pbs/qsub.txt""#),
    (
        "qstat",
        r#"cat "$FIX/pbs/qstat-mix.json"; cat "$FIX/pbs/qstat-mix.stderr" >&2; exit 153"#,
    ),
    (
        "qdel",
        r#"echo "qdel: Job has finished 1236.pbs01.example.org" >&2; exit 153"#,
    ),
    (
        "bsub",
        r#"cat > "$DIR/bsub.stdin"
if grep -q '^#BSUB -q nope' "$DIR/bsub.stdin"; then echo "nope: No such queue. Job not submitted." >&2; exit 255; fi
cat "$FIX/lsf/bsub-queue.txt""#,
    ),
    (
        "bjobs",
        r#"cat "$FIX/lsf/bjobs.txt"; cat "$FIX/lsf/bjobs-not-found.stderr" >&2; exit 255"#,
    ),
    (
        "bkill",
        r#"echo "Job <306>: Job has already finished" >&2; exit 255"#,
    ),
];

/// The directory of fake commands, first on `PATH` (set up once per process,
/// before any test runs a command), and a lock serialising the tests that
/// read its log.
fn fakes() -> (&'static Path, MutexGuard<'static, ()>) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let dir = DIR.get_or_init(|| {
        // One directory per test process: nextest runs each test in its own
        // process, and a shared directory would be wiped under a sibling.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fake-tools-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for (name, body) in FAKES {
            let path = dir.join(name);
            let text = format!(
                "#!/bin/sh\nFIX='{}'\nDIR='{}'\necho \"{name} $*\" >> \"$DIR/calls.log\"\n{body}\n",
                fixtures.display(),
                dir.display()
            );
            std::fs::write(&path, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = std::env::var("PATH").unwrap_or_default();
        std::env::set_var("PATH", format!("{}:{path}", dir.display()));
        dir
    });
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _ = std::fs::remove_file(dir.join("calls.log"));
    (dir, guard)
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

fn request(dir: &Path, name: &str) -> BlockRequest {
    BlockRequest {
        block_id: "1".into(),
        job_name: format!("hpfaas-{name}-1"),
        manager_command: vec!["/opt/hpfaas/bin/hpfaas".into(), "manager".into()],
        env: Vec::new(),
        log_dir: dir.join(name),
    }
}

fn provider(kind: &str, edit: impl FnOnce(&mut ProviderConfig)) -> Box<dyn Provider> {
    let mut config = ProviderConfig {
        kind: kind.parse().unwrap(),
        launcher: Some("single-node".into()),
        cmd_timeout: 10.0,
        ..Default::default()
    };
    edit(&mut config);
    build(&config).unwrap()
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn failed(reason: &str) -> JobState {
    JobState::Failed {
        reason: reason.into(),
    }
}

#[test]
fn slurm_submit_poll_with_accounting_fallback_and_cancel() {
    let (dir, _lock) = fakes();
    let mut p = provider("slurm", |c| c.partition = Some("debug".into()));
    let req = request(dir, "slurm-ok");
    assert_eq!(
        p.submit(&req).unwrap(),
        "4242",
        "`4242;perlmutter` is job 4242"
    );
    let script = std::fs::read_to_string(req.log_dir.join("block-1.slurm")).unwrap();
    assert_eq!(script, p.job_script(&req));

    let jobs = ids(&["101", "102", "107", "108", "109", "111"]);
    let s = p.status(&jobs).unwrap();
    assert_eq!(s.len(), jobs.len());
    assert_eq!(s["101"], JobState::Pending);
    assert_eq!(s["102"], JobState::Running);
    assert_eq!(s["107"], JobState::Completed);
    // Failed in squeue; sacct adds the exit code.
    assert_eq!(s["108"], failed("FAILED (exit code 3)"));
    // Failed in squeue, unknown to sacct: squeue's reason stays.
    assert_eq!(s["109"], failed("TIMEOUT (TimeLimit)"));
    // Gone from squeue: accounting says how it ended.
    assert_eq!(s["111"], failed("TIMEOUT"));
    assert_eq!(
        calls(dir),
        ["sbatch", "squeue", "sacct", "sacct"],
        "plain sacct first, then the completion log"
    );

    let _ = std::fs::remove_file(dir.join("calls.log"));
    p.status(&jobs).unwrap();
    assert_eq!(
        calls(dir),
        ["squeue", "sacct"],
        "one query and one accounting call per poll once the source is known"
    );
    let _ = std::fs::remove_file(dir.join("calls.log"));
    p.status(&ids(&["101", "102"])).unwrap();
    assert_eq!(
        calls(dir),
        ["squeue"],
        "no accounting call when nothing ended"
    );

    p.cancel(&ids(&["107"]))
        .expect("cancelling a finished job is not an error");
    assert!(p.status(&[]).unwrap().is_empty());
}

#[test]
fn slurm_invalid_partition_quotes_sbatch() {
    let (dir, _lock) = fakes();
    let mut p = provider("slurm", |c| c.partition = Some("nope".into()));
    let err = p
        .submit(&request(dir, "slurm-nope"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("slurm: `sbatch --parsable "), "{err}");
    assert!(
        err.contains("sbatch: error: invalid partition specified: nope"),
        "{err}"
    );
    assert!(err.contains("exit code 1"), "{err}");
}

#[test]
fn a_hanging_sbatch_is_killed_at_cmd_timeout() {
    let (dir, _lock) = fakes();
    let mut p = provider("slurm", |c| {
        c.partition = Some("hang".into());
        c.cmd_timeout = 0.5;
    });
    let started = Instant::now();
    let err = p
        .submit(&request(dir, "slurm-hang"))
        .unwrap_err()
        .to_string();
    // A generous bound: an sbatch left running would hold the pipes for an hour.
    assert!(started.elapsed() < Duration::from_secs(120), "{err}");
    assert!(err.contains("sbatch --parsable"), "{err}");
    assert!(err.contains("within 0.5 s"), "{err}");
}

#[test]
fn pbs_submit_poll_with_unknown_ids_and_cancel() {
    let (dir, _lock) = fakes();
    let mut p = provider("pbs", |c| c.queue = Some("workq".into()));
    let req = request(dir, "pbs-ok");
    assert_eq!(p.submit(&req).unwrap(), "1234.pbs01.example.org");
    assert!(req.log_dir.join("block-1.pbs").exists());

    let jobs: Vec<String> = (1234..=1240)
        .map(|n| format!("{n}.pbs01.example.org"))
        .collect();
    // qstat exits 153 (1240 is unknown) but answers for the others.
    let s = p.status(&jobs).unwrap();
    assert_eq!(s.len(), 7);
    assert_eq!(s["1234.pbs01.example.org"], JobState::Pending);
    assert_eq!(s["1235.pbs01.example.org"], JobState::Running);
    assert_eq!(s["1236.pbs01.example.org"], JobState::Completed);
    assert_eq!(s["1237.pbs01.example.org"], failed("walltime exceeded"));
    assert_eq!(
        s["1240.pbs01.example.org"],
        failed("finished; forgotten by qstat -x")
    );
    assert_eq!(calls(dir), ["qsub", "qstat"]);

    // An id with a shorter server name still matches its job.
    let s = p.status(&ids(&["1235.pbs01"])).unwrap();
    assert_eq!(s["1235.pbs01"], JobState::Running);

    p.cancel(&ids(&["1236.pbs01.example.org"]))
        .expect("qdel of a finished job (exit 153) is not an error");
}

#[test]
fn lsf_submit_on_stdin_poll_and_cancel() {
    let (dir, _lock) = fakes();
    let mut p = provider("lsf", |c| c.queue = Some("debug".into()));
    let req = request(dir, "lsf-ok");
    assert_eq!(p.submit(&req).unwrap(), "5521");
    let stdin = std::fs::read_to_string(dir.join("bsub.stdin")).unwrap();
    assert_eq!(stdin, p.job_script(&req), "bsub reads the script on stdin");

    let s = p
        .status(&ids(&["301", "302", "304", "306", "307", "9"]))
        .unwrap();
    assert_eq!(s["301"], JobState::Pending);
    assert_eq!(s["302"], JobState::Pending);
    assert_eq!(s["304"], JobState::Running);
    assert_eq!(s["306"], JobState::Completed);
    assert_eq!(s["307"], failed("EXIT with code 3"));
    assert_eq!(s["9"], failed("finished; forgotten by bjobs"));

    p.cancel(&ids(&["306"]))
        .expect("bkill of a finished job is not an error");

    let mut p = provider("lsf", |c| c.queue = Some("nope".into()));
    let err = p.submit(&request(dir, "lsf-nope")).unwrap_err().to_string();
    assert!(
        err.contains("nope: No such queue. Job not submitted."),
        "{err}"
    );
}
