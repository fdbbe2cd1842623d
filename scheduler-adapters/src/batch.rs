//! The life of a block on a batch system, shared by Slurm, PBS Pro and LSF:
//! write the job script next to the block's logs, submit it, poll every job
//! in one command, settle the ones the scheduler no longer lists, cancel.
//!
//! A [`Scheduler`] knows one system's directives, commands and output
//! formats, as pure functions wherever it can; [`BatchProvider`] owns the
//! flow, the time limits and the error messages, so the three providers
//! differ only where their batch systems do.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::command::{self, Invocation, Output};
use crate::launcher::Launcher;
use crate::script::{self, Dialect};
use crate::{BlockRequest, JobId, JobState, Provider, ProviderConfig, ProviderError};

/// One job as a status query reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The id as the scheduler printed it.
    pub job: String,
    /// Where the job is.
    pub state: JobState,
    /// Something worth logging that the state does not say (e.g. suspended).
    pub note: Option<String>,
}

impl Seen {
    /// A job in `state` with nothing to note.
    pub fn new(job: &str, state: JobState) -> Self {
        Seen {
            job: job.to_string(),
            state,
            note: None,
        }
    }

    /// The same, with a note.
    pub fn noting(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// The states in a query's answer, by job id (for tests).
#[cfg(test)]
pub(crate) fn states(seen: Vec<Seen>) -> HashMap<String, JobState> {
    seen.into_iter().map(|s| (s.job, s.state)).collect()
}

/// A failure state with `reason`.
pub fn failed(reason: impl Into<String>) -> JobState {
    JobState::Failed {
        reason: reason.into(),
    }
}

/// One batch system's commands and formats.
pub trait Scheduler: Send + Default + 'static {
    /// Provider name (`slurm`, `pbs`, `lsf`).
    const NAME: &'static str;
    /// Its job-script directives and where its jobs start.
    const DIALECT: Dialect;
    /// Extension of the job script file (`block-<id>.<ext>`).
    const EXTENSION: &'static str;
    /// The status command, as named in "forgotten by ..." reasons.
    const QUERY_TOOL: &'static str;

    /// Directive arguments (without the prefix) for one block.
    fn directives(config: &ProviderConfig, request: &BlockRequest) -> Vec<String>;
    /// The command that submits the script at `path` (whose text is `text`).
    fn submit_command(path: &Path, text: &str) -> Invocation;
    /// The job id in the submit command's stdout, if there is one.
    fn parse_submit(stdout: &str) -> Option<JobId>;
    /// One command asking for the state of every job in `jobs`.
    fn query_command(jobs: &[JobId]) -> Invocation;
    /// The jobs in the query's stdout (however it exited).
    fn parse_query(stdout: &str) -> Result<Vec<Seen>, String>;
    /// The command that cancels every job in `jobs`.
    fn cancel_command(jobs: &[JobId]) -> Invocation;
    /// True for an error line that only says a job is unknown or already finished.
    fn is_gone_message(line: &str) -> bool;

    /// Gives `missing` jobs (absent from the query's answer, hence finished)
    /// their final state in `states`, and may make the reasons of finished
    /// jobs more precise; runs at most one command. By default a missing job
    /// is reported as forgotten.
    fn settle(
        &mut self,
        _runner: &Runner,
        states: &mut HashMap<JobId, JobState>,
        missing: &[JobId],
    ) {
        for job in missing {
            states.insert(
                job.clone(),
                failed(format!("finished; forgotten by {}", Self::QUERY_TOOL)),
            );
        }
    }
}

/// Runs a provider's commands under its `cmd_timeout` and turns failures
/// into [`ProviderError`]s that quote the scheduler.
#[derive(Debug, Clone)]
pub struct Runner {
    provider: &'static str,
    timeout: Duration,
}

impl Runner {
    /// A runner for `provider` with the given per-command limit.
    pub fn new(provider: &'static str, timeout: Duration) -> Self {
        Runner { provider, timeout }
    }

    /// The error for `provider` with `message`.
    pub fn error(&self, message: impl Into<String>) -> ProviderError {
        ProviderError::new(self.provider, message)
    }

    /// Runs the command; only a start failure or a timeout is an error.
    pub fn run(&self, invocation: &Invocation) -> Result<Output, ProviderError> {
        command::run(invocation, self.timeout).map_err(|e| self.error(e.to_string()))
    }

    /// Runs the command; any non-zero exit is an error quoting its stderr.
    pub fn run_ok(&self, invocation: &Invocation) -> Result<Output, ProviderError> {
        let output = self.run(invocation)?;
        if output.success() {
            Ok(output)
        } else {
            Err(self.failure(invocation, &output))
        }
    }

    /// Runs the command; a non-zero exit is accepted when every line of its
    /// stderr only says that some job is unknown or finished (`qstat` exits
    /// 153 for one unknown id but still answers for the others).
    pub fn run_tolerant(
        &self,
        invocation: &Invocation,
        is_gone: fn(&str) -> bool,
    ) -> Result<Output, ProviderError> {
        let output = self.run(invocation)?;
        let only_gone = output.code.is_some()
            && output
                .stderr
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .all(is_gone);
        if output.success() || only_gone {
            Ok(output)
        } else {
            Err(self.failure(invocation, &output))
        }
    }

    /// The error for a command that failed: what it ran, how it ended, what it said.
    pub fn failure(&self, invocation: &Invocation, output: &Output) -> ProviderError {
        self.error(format!(
            "`{invocation}` failed ({}): {}",
            output.ending(),
            output.said()
        ))
    }
}

/// The job `probe` asks about: far beyond the ids batch systems hand out
/// (Slurm's largest is 67,108,863), so the answer is "unknown job" and the
/// probe touches nobody's job, while the status command runs exactly as a
/// poll runs it.
const PROBE_JOB: &str = "999999999";

/// A [`Provider`] for the batch system `S`.
pub struct BatchProvider<S: Scheduler> {
    config: ProviderConfig,
    launcher: Launcher,
    runner: Runner,
    scheduler: S,
    /// The last note logged per job, so that a note is logged once, not every poll.
    notes: HashMap<JobId, String>,
}

impl<S: Scheduler> BatchProvider<S> {
    /// A provider for a validated configuration.
    pub fn new(config: ProviderConfig) -> Result<Self, String> {
        let launcher = config.launcher()?;
        let runner = Runner::new(S::NAME, Duration::from_secs_f64(config.cmd_timeout));
        Ok(BatchProvider {
            config,
            launcher,
            runner,
            scheduler: S::default(),
            notes: HashMap::new(),
        })
    }

    /// Logs notes that are new or changed since the last poll.
    fn log_notes(&mut self, seen: &HashMap<JobId, Option<String>>) {
        for (job, note) in seen {
            match note {
                Some(note) if self.notes.get(job) != Some(note) => {
                    tracing::info!("{} job {job}: {note}", S::NAME);
                    self.notes.insert(job.clone(), note.clone());
                }
                Some(_) => {}
                None => {
                    self.notes.remove(job);
                }
            }
        }
    }
}

impl<S: Scheduler> Provider for BatchProvider<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn job_script(&self, request: &BlockRequest) -> String {
        script::render(
            S::DIALECT,
            &S::directives(&self.config, request),
            &self.config,
            &self.launcher,
            request,
        )
    }

    fn submit(&mut self, request: &BlockRequest) -> Result<JobId, ProviderError> {
        let dir = &request.log_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            self.runner
                .error(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(format!("block-{}.{}", request.block_id, S::EXTENSION));
        let text = self.job_script(request);
        crate::create_private(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|e| {
                self.runner
                    .error(format!("cannot write {}: {e}", path.display()))
            })?;
        // Submitted from the log directory, so a job that starts where it was
        // submitted (Slurm) starts there too.
        let invocation = S::submit_command(&path, &text).in_dir(dir);
        let output = self.runner.run_ok(&invocation)?;
        S::parse_submit(&output.stdout).ok_or_else(|| {
            self.runner.error(format!(
                "cannot find a job id in what `{invocation}` printed: {:?}{}",
                output.stdout.trim(),
                match output.stderr.trim() {
                    "" => String::new(),
                    err => format!(" (stderr: {err:?})"),
                }
            ))
        })
    }

    fn status(&mut self, jobs: &[JobId]) -> Result<HashMap<JobId, JobState>, ProviderError> {
        if jobs.is_empty() {
            return Ok(HashMap::new());
        }
        let invocation = S::query_command(jobs);
        let output = self.runner.run_tolerant(&invocation, S::is_gone_message)?;
        let seen = S::parse_query(&output.stdout).map_err(|e| {
            self.runner
                .error(format!("cannot read the answer of `{invocation}`: {e}"))
        })?;
        let matched = match_ids(jobs, seen);
        let mut states: HashMap<JobId, JobState> = matched
            .iter()
            .map(|(job, (state, _))| (job.clone(), state.clone()))
            .collect();
        let missing: Vec<JobId> = jobs
            .iter()
            .filter(|job| !states.contains_key(*job))
            .cloned()
            .collect();
        self.scheduler.settle(&self.runner, &mut states, &missing);
        for job in jobs {
            // Every job asked about gets an answer: a caller waits on the
            // ones that have none.
            states
                .entry(job.clone())
                .or_insert_with(|| failed(format!("finished; forgotten by {}", S::QUERY_TOOL)));
        }
        self.log_notes(
            &matched
                .into_iter()
                .map(|(job, (_, note))| (job, note))
                .collect(),
        );
        for (job, state) in &states {
            if state.is_finished() {
                // Nobody polls a finished job again.
                self.notes.remove(job);
            }
        }
        Ok(states)
    }

    fn probe(&mut self) -> Result<String, ProviderError> {
        let submit = S::submit_command(Path::new("block.script"), "").program;
        if !command::on_path(&submit) {
            return Err(self.runner.error(format!(
                "{submit} is not on PATH: blocks are submitted with it, so run the endpoint on a \
                 machine that submits {} jobs (a login node), or put {submit}'s directory on PATH",
                S::NAME
            )));
        }
        let invocation = S::query_command(&[PROBE_JOB.to_string()]);
        let output = self.runner.run_tolerant(&invocation, S::is_gone_message)?;
        S::parse_query(&output.stdout).map_err(|e| {
            self.runner
                .error(format!("cannot read the answer of `{invocation}`: {e}"))
        })?;
        Ok(format!("`{invocation}` answered; {submit} is on PATH"))
    }

    fn cancel(&mut self, jobs: &[JobId]) -> Result<(), ProviderError> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.runner
            .run_tolerant(&S::cancel_command(jobs), S::is_gone_message)?;
        for job in jobs {
            self.notes.remove(job);
        }
        Ok(())
    }
}

/// The number a job id starts with: `1234` for `1234.pbs01.example.org`
/// or `1234;cluster`.
pub fn sequence_number(job: &str) -> &str {
    let end = job.find(['.', ';']).unwrap_or(job.len());
    &job[..end]
}

/// Pairs the jobs a query reported with the ids asked about: by the whole id,
/// else by sequence number (`qstat` may print `1234.pbs01.example.org` for a
/// job `qsub` called `1234.pbs01`). Unasked jobs are dropped.
pub fn match_ids(asked: &[JobId], seen: Vec<Seen>) -> HashMap<JobId, (JobState, Option<String>)> {
    let mut by_number: HashMap<&str, Option<&JobId>> = HashMap::new();
    for job in asked {
        by_number
            .entry(sequence_number(job))
            .and_modify(|e| *e = None) // ambiguous: match whole ids only
            .or_insert(Some(job));
    }
    let mut out = HashMap::new();
    for s in seen {
        let job = if asked.contains(&s.job) {
            Some(s.job.clone())
        } else {
            by_number
                .get(sequence_number(&s.job))
                .copied()
                .flatten()
                .cloned()
        };
        if let Some(job) = job {
            out.insert(job, (s.state, s.note));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_whole_or_by_number() {
        let asked = vec!["1234.pbs01".to_string(), "77".to_string()];
        let seen = vec![
            Seen::new("1234.pbs01.example.org", JobState::Running),
            Seen::new("77", JobState::Pending).noting("held"),
            Seen::new("999.pbs01", JobState::Completed),
        ];
        let m = match_ids(&asked, seen);
        assert_eq!(m.len(), 2);
        assert_eq!(m["1234.pbs01"].0, JobState::Running);
        assert_eq!(m["77"], (JobState::Pending, Some("held".into())));
    }

    #[test]
    fn ambiguous_numbers_need_whole_ids() {
        let asked = vec!["5.a".to_string(), "5.b".to_string()];
        let m = match_ids(&asked, vec![Seen::new("5.c", JobState::Running)]);
        assert!(m.is_empty());
        let m = match_ids(&asked, vec![Seen::new("5.b", JobState::Running)]);
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["5.b"]);
    }

    #[test]
    fn sequence_numbers() {
        assert_eq!(sequence_number("1234.pbs01.example.org"), "1234");
        assert_eq!(sequence_number("1234;cluster"), "1234");
        assert_eq!(sequence_number("1234"), "1234");
    }

    fn is_gone(line: &str) -> bool {
        line.contains("Unknown Job Id")
    }

    #[test]
    fn tolerant_runs_accept_only_unknown_job_complaints() {
        let runner = Runner::new("pbs", Duration::from_secs(5));
        let unknown = Invocation::new(
            "/bin/sh",
            [
                "-c",
                "echo '{}'; echo 'qstat: Unknown Job Id 9.server' >&2; exit 153",
            ],
        );
        let out = runner.run_tolerant(&unknown, is_gone).unwrap();
        assert_eq!(out.code, Some(153));
        assert_eq!(out.stdout.trim(), "{}");

        let down = Invocation::new(
            "/bin/sh",
            [
                "-c",
                "echo 'Connection refused' >&2; echo 'qstat: Unknown Job Id 9' >&2; exit 2",
            ],
        );
        let err = runner.run_tolerant(&down, is_gone).unwrap_err().to_string();
        assert!(err.starts_with("pbs: `/bin/sh -c"), "{err}");
        assert!(err.contains("Connection refused"), "{err}");
    }

    #[test]
    fn failures_quote_the_scheduler() {
        let runner = Runner::new("slurm", Duration::from_secs(5));
        let inv = Invocation::new(
            "/bin/sh",
            [
                "-c",
                "echo 'sbatch: error: invalid partition specified: nope' >&2; exit 1",
            ],
        );
        let err = runner.run_ok(&inv).unwrap_err().to_string();
        assert!(
            err.contains("(exit code 1): sbatch: error: invalid partition specified: nope"),
            "{err}"
        );
    }
}
