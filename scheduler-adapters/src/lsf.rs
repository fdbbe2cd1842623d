//! IBM Spectrum LSF (Summit style, whole nodes with `-nnodes`): `#BSUB`
//! directives, `bsub < script`, one `bjobs -o 'jobid stat exit_code'` for
//! every job, and `bkill`. A job `bjobs` no longer lists (after LSF's
//! CLEAN_PERIOD) is finished, with no record of how.

use std::path::Path;

use crate::batch::{failed, Scheduler, Seen};
use crate::command::Invocation;
use crate::script::{log_file, whole_minutes, word, Dialect};
use crate::{BlockRequest, JobId, JobState, ProviderConfig};

/// LSF's formats.
#[derive(Debug, Default)]
pub struct Lsf;

impl Scheduler for Lsf {
    const NAME: &'static str = "lsf";
    const DIALECT: Dialect = Dialect {
        prefix: "#BSUB",
        starts_in_home: true,
    };
    const EXTENSION: &'static str = "lsf";
    const QUERY_TOOL: &'static str = "bjobs";

    fn directives(config: &ProviderConfig, request: &BlockRequest) -> Vec<String> {
        // LSF's -W is [hours:]minutes; round up so a block is never cut short.
        let minutes = whole_minutes(config.walltime());
        let mut d = vec![
            format!("-J {}", word(&request.job_name)),
            format!("-nnodes {}", config.nodes_per_block),
            format!("-W {}:{:02}", minutes / 60, minutes % 60),
        ];
        if let Some(queue) = &config.queue {
            d.push(format!("-q {}", word(queue)));
        }
        if let Some(project) = &config.project {
            d.push(format!("-P {}", word(project)));
        }
        d.push(format!("-o {}", word(&log_file(request, "out"))));
        d.push(format!("-e {}", word(&log_file(request, "err"))));
        d
    }

    fn submit_command(_path: &Path, text: &str) -> Invocation {
        // bsub reads `#BSUB` directives only from a script on its stdin.
        Invocation::new("bsub", Vec::<String>::new()).with_stdin(text)
    }

    fn parse_submit(stdout: &str) -> Option<JobId> {
        // `Job <1234> is submitted to queue <normal>.` (or `to default queue`).
        let rest = &stdout[stdout.find("Job <")? + "Job <".len()..];
        let id = &rest[..rest.find('>')?];
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
    }

    fn query_command(jobs: &[JobId]) -> Invocation {
        let mut args: Vec<String> = ["-noheader", "-o", "jobid stat exit_code"]
            .map(String::from)
            .to_vec();
        args.extend(jobs.iter().cloned());
        Invocation::new("bjobs", args)
    }

    fn parse_query(stdout: &str) -> Result<Vec<Seen>, String> {
        Ok(parse_bjobs(stdout))
    }

    fn cancel_command(jobs: &[JobId]) -> Invocation {
        Invocation::new("bkill", jobs.iter().cloned())
    }

    fn is_gone_message(line: &str) -> bool {
        line.contains("is not found")
            || line.contains("Job has already finished")
            || line.contains("No matching job found")
    }
}

/// Jobs in `bjobs -noheader -o 'jobid stat exit_code'` output; the exit code
/// is `-` for jobs that did not exit with one.
pub fn parse_bjobs(stdout: &str) -> Vec<Seen> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let job = words
                .next()
                .filter(|j| j.bytes().all(|b| b.is_ascii_digit()))?;
            let state = words.next()?;
            let exit_code = words.next().filter(|c| *c != "-");
            Some(seen(job, state, exit_code))
        })
        .collect()
}

/// One job from its LSF state and exit code.
fn seen(job: &str, state: &str, exit_code: Option<&str>) -> Seen {
    match state {
        "PEND" | "WAIT" | "PROV" => Seen::new(job, JobState::Pending),
        "PSUSP" => Seen::new(job, JobState::Pending).noting("suspended while pending (PSUSP)"),
        "RUN" => Seen::new(job, JobState::Running),
        "USUSP" => Seen::new(job, JobState::Running)
            .noting("suspended by its owner or an administrator (USUSP)"),
        "SSUSP" => Seen::new(job, JobState::Running).noting("suspended by LSF (SSUSP)"),
        "UNKWN" => {
            Seen::new(job, JobState::Running).noting("LSF lost contact with the job's host (UNKWN)")
        }
        "DONE" => Seen::new(job, JobState::Completed),
        "EXIT" => Seen::new(
            job,
            failed(match exit_code {
                Some(code) => format!("EXIT with code {code}"),
                None => "EXIT".to_string(),
            }),
        ),
        "ZOMBI" => Seen::new(job, failed("ZOMBI (killed while its host was unreachable)")),
        other => Seen::new(job, JobState::Pending).noting(format!("unknown LSF state {other}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::fixture;

    #[test]
    fn bsub_ids() {
        assert_eq!(
            Lsf::parse_submit(&fixture("lsf/bsub-queue.txt")),
            Some("5521".into())
        );
        assert_eq!(
            Lsf::parse_submit("Job <12> is submitted to default queue <normal>.\n"),
            Some("12".into())
        );
        assert_eq!(
            Lsf::parse_submit("nope: No such queue. Job not submitted.\n"),
            None
        );
        assert_eq!(Lsf::parse_submit("Job <> is submitted"), None);
    }

    #[test]
    fn bjobs_states() {
        let seen = parse_bjobs(&fixture("lsf/bjobs.txt"));
        let by_id: HashMap<_, _> = seen.into_iter().map(|s| (s.job.clone(), s)).collect();
        assert_eq!(by_id["301"].state, JobState::Pending);
        assert_eq!(by_id["302"].state, JobState::Pending);
        assert_eq!(
            by_id["302"].note.as_deref(),
            Some("suspended while pending (PSUSP)")
        );
        assert_eq!(by_id["303"].state, JobState::Running);
        assert_eq!(by_id["304"].state, JobState::Running);
        assert!(by_id["304"].note.as_deref().unwrap().contains("USUSP"));
        assert_eq!(by_id["305"].state, JobState::Running);
        assert!(by_id["305"].note.as_deref().unwrap().contains("SSUSP"));
        assert_eq!(by_id["306"].state, JobState::Completed);
        assert_eq!(by_id["307"].state, failed("EXIT with code 3"));
        assert_eq!(by_id["308"].state, failed("EXIT"));
        assert_eq!(by_id.len(), 8);
    }

    #[test]
    fn an_empty_answer_for_a_finished_job() {
        // `bjobs 9` after CLEAN_PERIOD: nothing on stdout, `Job <9> is not
        // found` on stderr, exit 255.
        assert!(parse_bjobs("").is_empty());
        let stderr = fixture("lsf/bjobs-not-found.stderr");
        assert!(stderr.lines().all(Lsf::is_gone_message));
    }

    #[test]
    fn gone_messages() {
        assert!(Lsf::is_gone_message("Job <1234>: Job has already finished"));
        assert!(!Lsf::is_gone_message("LSF is down. Please wait ..."));
    }

    #[test]
    fn commands() {
        let jobs = vec!["1".to_string(), "2".to_string()];
        assert_eq!(
            Lsf::query_command(&jobs).to_string(),
            "bjobs -noheader -o 'jobid stat exit_code' 1 2"
        );
        assert_eq!(Lsf::cancel_command(&jobs).to_string(), "bkill 1 2");
        let submit = Lsf::submit_command(Path::new("/x/block-1.lsf"), "#!/bin/bash\n");
        assert_eq!(submit.stdin.as_deref(), Some("#!/bin/bash\n"));
    }
}
