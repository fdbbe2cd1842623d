//! Slurm: `#SBATCH` directives, `sbatch --parsable`, `squeue` for every job
//! at once, `sacct` (or `sacct -c`, the job-completion log, on clusters
//! without an accounting database) for jobs `squeue` no longer lists or that
//! failed, and `scancel`.

use std::collections::HashMap;
use std::path::Path;

use crate::batch::{failed, Runner, Scheduler, Seen};
use crate::command::Invocation;
use crate::script::{hh_mm_ss, log_file, whole_minutes, word, Dialect};
use crate::{BlockRequest, JobId, JobState, ProviderConfig};

/// Slurm's formats, and which accounting source answers on this cluster.
#[derive(Debug, Default)]
pub struct Slurm {
    accounting: Option<Accounting>,
}

/// Where `sacct` finds finished jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accounting {
    /// `slurmdbd` (plain `sacct`).
    Database,
    /// The job-completion log (`sacct -c`), when `AccountingStorageType=none`.
    CompletionLog,
}

impl Scheduler for Slurm {
    const NAME: &'static str = "slurm";
    const DIALECT: Dialect = Dialect {
        prefix: "#SBATCH",
        starts_in_home: false,
    };
    const EXTENSION: &'static str = "slurm";
    const QUERY_TOOL: &'static str = "squeue and sacct";

    fn directives(config: &ProviderConfig, request: &BlockRequest) -> Vec<String> {
        let mut d = vec![
            format!("--job-name={}", word(&request.job_name)),
            format!("--nodes={}", config.nodes_per_block),
            // Slurm counts whole minutes; never cut a block short.
            format!("--time={}", hh_mm_ss(whole_minutes(config.walltime()) * 60)),
        ];
        for (flag, value) in [
            ("partition", &config.partition),
            ("account", &config.account),
            ("qos", &config.qos),
            ("constraint", &config.constraint),
        ] {
            if let Some(value) = value {
                d.push(format!("--{flag}={}", word(value)));
            }
        }
        d.push(format!("--output={}", word(&log_file(request, "out"))));
        d.push(format!("--error={}", word(&log_file(request, "err"))));
        d
    }

    fn submit_command(path: &Path, _text: &str) -> Invocation {
        Invocation::new(
            "sbatch",
            ["--parsable".to_string(), path.display().to_string()],
        )
    }

    fn parse_submit(stdout: &str) -> Option<JobId> {
        // `1234`, or `1234;cluster` on a multi-cluster site.
        let line = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
        let id = line.split(';').next()?.trim();
        is_number(id).then(|| id.to_string())
    }

    fn query_command(jobs: &[JobId]) -> Invocation {
        // `--states=all`: jobs that ended in the last MinJobAge seconds are
        // still listed with their final state, which spares most `sacct` calls.
        Invocation::new(
            "squeue",
            [
                "--noheader".to_string(),
                "--states=all".to_string(),
                "--format=%i %T %r".to_string(),
                format!("--jobs={}", jobs.join(",")),
            ],
        )
    }

    fn parse_query(stdout: &str) -> Result<Vec<Seen>, String> {
        Ok(parse_squeue(stdout))
    }

    fn cancel_command(jobs: &[JobId]) -> Invocation {
        Invocation::new("scancel", jobs.iter().cloned())
    }

    fn is_gone_message(line: &str) -> bool {
        line.contains("Invalid job id specified")
            || line.contains("already completing or completed")
            || line.contains("Job has already finished")
    }

    /// Asks accounting, in one `sacct` call, how the missing jobs ended and
    /// with which exit code the failed ones did.
    fn settle(
        &mut self,
        runner: &Runner,
        states: &mut HashMap<JobId, JobState>,
        missing: &[JobId],
    ) {
        let mut ask: Vec<JobId> = missing.to_vec();
        ask.extend(
            states
                .iter()
                .filter(|(_, s)| matches!(s, JobState::Failed { .. }))
                .map(|(job, _)| job.clone()),
        );
        if ask.is_empty() {
            return;
        }
        ask.sort();
        let (records, trouble) = match self.account(runner, &ask) {
            Ok(records) => (records, None),
            Err(e) => (HashMap::new(), Some(e)),
        };
        for job in missing {
            let state = match records.get(job) {
                Some(state) if state.is_finished() => state.clone(),
                Some(_) => {
                    failed("finished; squeue no longer lists it but sacct still says it runs")
                }
                None => failed(match &trouble {
                    Some(e) => format!(
                        "finished; squeue no longer lists it and sacct cannot say how ({e})"
                    ),
                    None => "finished; forgotten by squeue and sacct".to_string(),
                }),
            };
            states.insert(job.clone(), state);
        }
        for (job, state) in states.iter_mut() {
            if let (JobState::Failed { .. }, Some(record)) = (&state, records.get(job)) {
                if record.is_finished() {
                    *state = record.clone();
                }
            }
        }
    }
}

impl Slurm {
    /// The final states accounting knows for `jobs`; learns on the first call
    /// whether this cluster has an accounting database or only a completion log.
    fn account(
        &mut self,
        runner: &Runner,
        jobs: &[JobId],
    ) -> Result<HashMap<JobId, JobState>, String> {
        let order = match self.accounting {
            Some(known) => vec![known],
            None => vec![Accounting::Database, Accounting::CompletionLog],
        };
        let mut errors = Vec::new();
        for source in order {
            match runner.run_ok(&sacct_command(source, jobs)) {
                Ok(output) => {
                    self.accounting = Some(source);
                    return Ok(parse_sacct(&output.stdout));
                }
                Err(e) => errors.push(e.message),
            }
        }
        Err(errors.join("; "))
    }
}

fn sacct_command(source: Accounting, jobs: &[JobId]) -> Invocation {
    let mut args = Vec::new();
    if source == Accounting::CompletionLog {
        args.push("-c".to_string());
    }
    args.extend([
        "-X".to_string(),
        "--noheader".to_string(),
        "--parsable2".to_string(),
        "--format=JobIDRaw,State,ExitCode".to_string(),
        format!("--jobs={}", jobs.join(",")),
    ]);
    Invocation::new("sacct", args)
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Jobs in `squeue --format='%i %T %r'` output (the reason may contain spaces).
pub fn parse_squeue(stdout: &str) -> Vec<Seen> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.trim().splitn(3, ' ');
            let job = words.next().filter(|j| !j.is_empty())?;
            let state = words.next()?;
            let reason = words.next().unwrap_or("").trim();
            Some(seen(job, state, reason))
        })
        .collect()
}

/// One job in `squeue` terms: its state name and squeue's reason.
fn seen(job: &str, state: &str, reason: &str) -> Seen {
    let has_reason = !reason.is_empty() && reason != "None";
    let with_reason = || {
        if has_reason {
            format!("{state} ({reason})")
        } else {
            state.to_string()
        }
    };
    match state {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" | "RESIZING" => {
            let s = Seen::new(job, JobState::Pending);
            if has_reason {
                // Why a block does not start (e.g. `PartitionTimeLimit`) is
                // the first thing a user asks.
                s.noting(format!("pending: {reason}"))
            } else {
                s
            }
        }
        "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" => Seen::new(job, JobState::Running),
        "SUSPENDED" | "STOPPED" => {
            Seen::new(job, JobState::Running).noting(format!("suspended ({state})"))
        }
        "COMPLETED" => Seen::new(job, JobState::Completed),
        "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY" | "PREEMPTED" | "CANCELLED" | "FAILED"
        | "BOOT_FAIL" | "DEADLINE" | "SPECIAL_EXIT" | "REVOKED" => {
            Seen::new(job, failed(with_reason()))
        }
        other => Seen::new(job, JobState::Pending).noting(format!("unknown Slurm state {other}")),
    }
}

/// Final states in `sacct --parsable2 --format=JobIDRaw,State,ExitCode` output.
pub fn parse_sacct(stdout: &str) -> HashMap<JobId, JobState> {
    let mut out = HashMap::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.trim().split('|').collect();
        let [job, state, exit_code, ..] = fields[..] else {
            continue;
        };
        if job.is_empty() {
            continue;
        }
        // Later records of a requeued job come last; the last one counts.
        out.insert(job.to_string(), sacct_state(state, exit_code));
    }
    out
}

/// `CANCELLED by 0` + `0:15` → a failure naming both.
fn sacct_state(state: &str, exit_code: &str) -> JobState {
    let name = state.split_whitespace().next().unwrap_or("");
    let base = seen("", name, "").state;
    match base {
        JobState::Failed { .. } => match describe_exit_code(exit_code) {
            Some(code) => failed(format!("{state} ({code})")),
            None => failed(state),
        },
        // A job that COMPLETED has exit code 0 by definition.
        other => other,
    }
}

/// `3:0` → `exit code 3`; `0:9` → `signal 9`; `0:0` → nothing.
fn describe_exit_code(text: &str) -> Option<String> {
    let (code, signal) = text.split_once(':').unwrap_or((text, "0"));
    let (code, signal) = (code.parse::<i64>().ok()?, signal.parse::<i64>().ok()?);
    match (code, signal) {
        (0, 0) => None,
        (c, 0) => Some(format!("exit code {c}")),
        (0, s) if s < 65 => Some(format!("signal {s}")),
        _ => Some(format!("exit code {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::states;
    use crate::fixture;

    #[test]
    fn sbatch_ids() {
        assert_eq!(Slurm::parse_submit("1234\n"), Some("1234".into()));
        assert_eq!(
            Slurm::parse_submit(&fixture("slurm/sbatch-cluster.txt")),
            Some("4242".into())
        );
        assert_eq!(Slurm::parse_submit("Submitted batch job 12\n"), None);
        assert_eq!(Slurm::parse_submit(""), None);
    }

    #[test]
    fn a_failing_sbatch_is_quoted() {
        let output = crate::command::Output {
            stderr: fixture("slurm/sbatch-invalid-partition.stderr"),
            code: Some(1),
            ..Default::default()
        };
        let submit = Slurm::submit_command(Path::new("/x/block-1.slurm"), "");
        let err = Runner::new("slurm", std::time::Duration::from_secs(1))
            .failure(&submit, &output)
            .to_string();
        assert_eq!(
            err,
            "slurm: `sbatch --parsable /x/block-1.slurm` failed (exit code 1): \
             sbatch: error: invalid partition specified: nope; \
             sbatch: error: Batch job submission failed: Invalid partition name specified"
        );
    }

    #[test]
    fn squeue_states_and_a_missing_job() {
        let seen = parse_squeue(&fixture("slurm/squeue.txt"));
        let notes: HashMap<_, _> = seen
            .iter()
            .map(|s| (s.job.clone(), s.note.clone()))
            .collect();
        let s = states(seen);
        assert_eq!(s["101"], JobState::Pending);
        assert_eq!(notes["101"].as_deref(), Some("pending: Resources"));
        assert_eq!(s["102"], JobState::Running);
        assert_eq!(s["103"], JobState::Running); // COMPLETING
        assert_eq!(s["104"], JobState::Pending); // CONFIGURING
        assert_eq!(
            notes["105"].as_deref(),
            Some("pending: ReqNodeNotAvail, UnavailableNodes:node[01-02]")
        );
        assert_eq!(s["106"], JobState::Running);
        assert_eq!(notes["106"].as_deref(), Some("suspended (SUSPENDED)"));
        assert_eq!(s["107"], JobState::Completed);
        assert_eq!(s["108"], failed("FAILED (NonZeroExitCode)"));
        assert_eq!(s["109"], failed("TIMEOUT (TimeLimit)"));
        assert_eq!(s["110"], JobState::Pending); // REQUEUED
        assert!(
            !s.contains_key("111"),
            "111 finished long ago: squeue forgot it"
        );
    }

    #[test]
    fn sacct_failures_keep_their_names() {
        let s = parse_sacct(&fixture("slurm/sacct.txt"));
        assert_eq!(s["200"], JobState::Completed);
        assert_eq!(s["201"], failed("TIMEOUT"));
        assert_eq!(s["202"], failed("OUT_OF_MEMORY (exit code 0:125)"));
        assert_eq!(s["203"], failed("NODE_FAIL (exit code 1)"));
        assert_eq!(s["204"], failed("CANCELLED by 0 (signal 15)"));
        assert_eq!(s["205"], failed("FAILED (exit code 3)"));
        assert_eq!(s["206"], failed("PREEMPTED"));
        assert_eq!(s["207"], JobState::Running);
        // A requeued job: its last record counts.
        assert_eq!(s["208"], JobState::Completed);
        for state in s.values() {
            if let JobState::Failed { reason } = state {
                assert!(!reason.contains("done"), "{reason}");
            }
        }
    }

    #[test]
    fn completion_log_answers() {
        // `sacct -c` on a cluster without slurmdbd (captured on the test Slurm).
        let s = parse_sacct(&fixture("slurm/sacct-c.txt"));
        assert_eq!(s["2"], failed("FAILED (exit code 3)"));
        assert_eq!(s["3"], JobState::Completed);
        assert_eq!(s["1"], failed("CANCELLED"));
    }

    #[test]
    fn unknown_states_are_not_taken_for_finished() {
        let seen = parse_squeue("7 NEW_STATE None\n");
        assert_eq!(seen[0].state, JobState::Pending);
        assert_eq!(
            seen[0].note.as_deref(),
            Some("unknown Slurm state NEW_STATE")
        );
    }

    #[test]
    fn gone_messages() {
        for line in [
            "slurm_load_jobs error: Invalid job id specified",
            "scancel: error: Kill job error on job id 12: Job/step already completing or completed",
        ] {
            assert!(Slurm::is_gone_message(line), "{line}");
        }
        assert!(!Slurm::is_gone_message(
            "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
        ));
    }

    #[test]
    fn commands() {
        let jobs = vec!["1".to_string(), "2".to_string()];
        assert_eq!(
            Slurm::query_command(&jobs).to_string(),
            "squeue --noheader --states=all '--format=%i %T %r' --jobs=1,2"
        );
        assert_eq!(
            sacct_command(Accounting::CompletionLog, &jobs).to_string(),
            "sacct -c -X --noheader --parsable2 --format=JobIDRaw,State,ExitCode --jobs=1,2"
        );
        assert_eq!(Slurm::cancel_command(&jobs).to_string(), "scancel 1 2");
    }
}
