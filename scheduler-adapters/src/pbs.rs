//! PBS Pro: `#PBS` directives with a `select` statement, `qsub`, one
//! `qstat -f -F json -x` for every job (finished ones included, with their
//! `Exit_status`), and `qdel`.

use std::path::Path;

use serde_json::Value;

use crate::batch::{failed, Scheduler, Seen};
use crate::command::Invocation;
use crate::script::{hh_mm_ss, log_file, word, Dialect};
use crate::{BlockRequest, JobId, JobState, ProviderConfig};

/// PBS Pro's formats.
#[derive(Debug, Default)]
pub struct Pbs;

impl Scheduler for Pbs {
    const NAME: &'static str = "pbs";
    const DIALECT: Dialect = Dialect {
        prefix: "#PBS",
        starts_in_home: true,
    };
    const EXTENSION: &'static str = "pbs";
    const QUERY_TOOL: &'static str = "qstat -x";

    fn directives(config: &ProviderConfig, request: &BlockRequest) -> Vec<String> {
        let mut d = vec![
            format!("-N {}", word(&request.job_name)),
            // PBS may start the script with the user's login shell otherwise.
            "-S /bin/bash".to_string(),
        ];
        if let Some(queue) = &config.queue {
            d.push(format!("-q {}", word(queue)));
        }
        if let Some(account) = &config.account {
            d.push(format!("-A {}", word(account)));
        }
        let mut select = format!("select={}", config.nodes_per_block);
        if let Some(extra) = config.select_options.as_deref().map(str::trim) {
            if !extra.is_empty() {
                select.push(':');
                select.push_str(extra.trim_start_matches(':'));
            }
        }
        d.push(format!("-l {}", word(&select)));
        // One manager per node: chunks must not share a node, unless the
        // user places them otherwise in scheduler_options.
        if !config
            .scheduler_options
            .iter()
            .any(|o| o.contains("place="))
        {
            d.push("-l place=scatter".to_string());
        }
        d.push(format!(
            "-l walltime={}",
            hh_mm_ss(config.walltime().as_secs())
        ));
        d.push(format!("-o {}", word(&log_file(request, "out"))));
        d.push(format!("-e {}", word(&log_file(request, "err"))));
        d
    }

    fn submit_command(path: &Path, _text: &str) -> Invocation {
        Invocation::new("qsub", [path.display().to_string()])
    }

    fn parse_submit(stdout: &str) -> Option<JobId> {
        // `1234.server` (the whole id is what qstat and qdel take); sites may
        // print notices before it.
        stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .filter(|id| {
                id.starts_with(|c: char| c.is_ascii_digit()) && !id.contains(char::is_whitespace)
            })
            .map(str::to_string)
    }

    fn query_command(jobs: &[JobId]) -> Invocation {
        let mut args: Vec<String> = ["-f", "-F", "json", "-x"].map(String::from).to_vec();
        args.extend(jobs.iter().cloned());
        Invocation::new("qstat", args)
    }

    fn parse_query(stdout: &str) -> Result<Vec<Seen>, String> {
        parse_qstat_json(stdout)
    }

    fn cancel_command(jobs: &[JobId]) -> Invocation {
        Invocation::new("qdel", jobs.iter().cloned())
    }

    fn is_gone_message(line: &str) -> bool {
        let line = line.to_ascii_lowercase();
        // `Job has finished 1.s` (qdel), `1.s Job has finished, use -x ...`
        // (qstat without -x); `Request invalid for state of job` is a job
        // already exiting.
        line.contains("unknown job id")
            || line.contains("has finished")
            || line.contains("request invalid for state of job")
    }
}

/// Jobs in `qstat -f -F json` output. Some PBS releases print invalid JSON
/// for jobs whose environment holds quotes or backslashes (openpbs#2541),
/// so a line-by-line reading of the same output is the fallback.
pub fn parse_qstat_json(stdout: &str) -> Result<Vec<Seen>, String> {
    if stdout.trim().is_empty() {
        // Every id unknown: qstat prints nothing.
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(stdout) {
        Ok(doc) => {
            let Some(jobs) = doc.get("Jobs") else {
                return Ok(Vec::new());
            };
            let jobs = jobs.as_object().ok_or("\"Jobs\" is not an object")?;
            Ok(jobs
                .iter()
                .map(|(id, attrs)| {
                    seen(
                        id,
                        attrs.get("job_state").and_then(Value::as_str).unwrap_or(""),
                        attrs.get("Exit_status").and_then(number),
                    )
                })
                .collect())
        }
        Err(e) => {
            let jobs = scan_lines(stdout);
            if jobs.is_empty() {
                Err(format!("not JSON ({e}) and no job in it"))
            } else {
                Ok(jobs)
            }
        }
    }
}

/// An integer written as a number or as a string.
fn number(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Reads `"1234.server":{`, `"job_state":"R",` and `"Exit_status":0,` lines
/// of qstat's pretty-printed JSON, ignoring everything else.
fn scan_lines(stdout: &str) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut current: Option<(String, String, Option<i64>)> = None;
    for line in stdout.lines().map(str::trim) {
        let Some((key, value)) = line.strip_prefix('"').and_then(|l| l.split_once("\":")) else {
            continue;
        };
        let value = value.trim().trim_end_matches(',').trim();
        if value == "{" && key.starts_with(|c: char| c.is_ascii_digit()) {
            // Job ids start with their sequence number; attribute and
            // environment variable names never start with a digit.
            out.extend(current.take().map(|(id, s, e)| seen(&id, &s, e)));
            current = Some((key.to_string(), String::new(), None));
        } else if let Some((_, state, exit)) = current.as_mut() {
            match key {
                "job_state" => *state = value.trim_matches('"').to_string(),
                "Exit_status" => *exit = value.trim_matches('"').parse().ok(),
                _ => {}
            }
        }
    }
    out.extend(current.map(|(id, s, e)| seen(&id, &s, e)));
    out
}

/// One job from its `job_state` and `Exit_status`.
fn seen(job: &str, state: &str, exit_status: Option<i64>) -> Seen {
    match state {
        "Q" | "T" => Seen::new(job, JobState::Pending),
        "H" => Seen::new(job, JobState::Pending).noting("held (H)"),
        "W" => Seen::new(job, JobState::Pending).noting("waiting for its start time (W)"),
        "M" => Seen::new(job, JobState::Pending).noting("moved to another server (M)"),
        "R" | "E" | "B" => Seen::new(job, JobState::Running),
        "S" | "U" => Seen::new(job, JobState::Running).noting(format!("suspended ({state})")),
        "F" | "X" => Seen::new(job, finished(exit_status)),
        other => {
            Seen::new(job, JobState::Pending).noting(format!("unknown PBS job_state {other:?}"))
        }
    }
}

/// A finished job's state from its `Exit_status` (negative values are PBS's
/// own `JOB_EXEC_*` codes; 256 + N means killed by signal N).
fn finished(exit_status: Option<i64>) -> JobState {
    let Some(status) = exit_status else {
        return failed("ended without running (no Exit_status; deleted while queued?)");
    };
    let reason = match status {
        0 => return JobState::Completed,
        -29 => "walltime exceeded".to_string(),
        -28 => "CPU time limit exceeded (exit status -28)".to_string(),
        -27 => "memory limit exceeded (exit status -27)".to_string(),
        -26 => "virtual memory limit exceeded (exit status -26)".to_string(),
        -25 | -24 => format!("CPU usage limit exceeded (exit status {status})"),
        271 => "killed (qdel)".to_string(),
        s if s > 256 => format!("exit status {s} (killed by signal {})", s - 256),
        s if s < 0 => format!("exit status {s} (PBS could not run the job)"),
        s => format!("exit status {s}"),
    };
    failed(reason)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::batch::states;
    use crate::fixture;

    #[test]
    fn qsub_ids_keep_the_server() {
        assert_eq!(
            Pbs::parse_submit(&fixture("pbs/qsub.txt")),
            Some("1234.pbs01.example.org".into())
        );
        assert_eq!(Pbs::parse_submit("77.server\n"), Some("77.server".into()));
        assert_eq!(Pbs::parse_submit("qsub: Unknown queue\n"), None);
        assert_eq!(Pbs::parse_submit(""), None);
    }

    #[test]
    fn qstat_mix_of_queued_running_and_finished() {
        // Captured with one unknown id: qstat exited 153 and said so on
        // stderr, but answered for the others.
        let s = states(parse_qstat_json(&fixture("pbs/qstat-mix.json")).unwrap());
        assert_eq!(s.len(), 6);
        assert_eq!(s["1234.pbs01.example.org"], JobState::Pending);
        assert_eq!(s["1235.pbs01.example.org"], JobState::Running);
        assert_eq!(s["1236.pbs01.example.org"], JobState::Completed);
        assert_eq!(s["1237.pbs01.example.org"], failed("walltime exceeded"));
        assert_eq!(s["1238.pbs01.example.org"], failed("killed (qdel)"));
        assert_eq!(s["1239.pbs01.example.org"], failed("exit status 3"));
        let stderr = fixture("pbs/qstat-mix.stderr");
        assert!(stderr.lines().all(Pbs::is_gone_message), "{stderr}");
    }

    #[test]
    fn qstat_held_and_suspended_jobs_are_noted() {
        let seen = parse_qstat_json(
            r#"{"Jobs": {"1.s": {"job_state": "H"}, "2.s": {"job_state": "S"}, "3.s": {"job_state": "F"}}}"#,
        )
        .unwrap();
        let by_id: HashMap<_, _> = seen.into_iter().map(|s| (s.job.clone(), s)).collect();
        assert_eq!(by_id["1.s"].state, JobState::Pending);
        assert_eq!(by_id["1.s"].note.as_deref(), Some("held (H)"));
        assert_eq!(by_id["2.s"].state, JobState::Running);
        assert_eq!(by_id["2.s"].note.as_deref(), Some("suspended (S)"));
        assert!(matches!(by_id["3.s"].state, JobState::Failed { .. }));
    }

    #[test]
    fn qstat_with_every_id_unknown() {
        assert!(parse_qstat_json("").unwrap().is_empty());
        let header = r#"{"timestamp":1700000000,"pbs_version":"2022.1.3","pbs_server":"pbs01"}"#;
        assert!(parse_qstat_json(header).unwrap().is_empty());
    }

    #[test]
    fn qstat_invalid_json_is_read_line_by_line() {
        let text = fixture("pbs/qstat-invalid.json");
        assert!(
            serde_json::from_str::<Value>(&text).is_err(),
            "fixture must be invalid JSON"
        );
        let s = states(parse_qstat_json(&text).unwrap());
        assert_eq!(s.len(), 2);
        assert_eq!(s["4.pbs01"], JobState::Running);
        assert_eq!(s["5.pbs01"], failed("exit status 1"));
        assert!(parse_qstat_json("qstat: garbage").is_err());
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(finished(Some(0)), JobState::Completed);
        assert_eq!(
            finished(Some(265)),
            failed("exit status 265 (killed by signal 9)")
        );
        assert_eq!(
            finished(Some(-27)),
            failed("memory limit exceeded (exit status -27)")
        );
        assert!(matches!(finished(None), JobState::Failed { .. }));
    }

    #[test]
    fn gone_messages() {
        for line in [
            "qstat: Unknown Job Id 9.pbs01",
            "qdel: Job has finished 1234.pbs01",
            "qdel: Unknown Job Id 1234.pbs01",
            "qdel: Request invalid for state of job 1234.pbs01",
            "qstat: 1234.pbs01 Job has finished, use -x or -H to obtain historical job information",
        ] {
            assert!(Pbs::is_gone_message(line), "{line}");
        }
        assert!(!Pbs::is_gone_message(
            "Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)"
        ));
    }

    #[test]
    fn commands() {
        let jobs = vec!["1.s".to_string(), "2.s".to_string()];
        assert_eq!(
            Pbs::query_command(&jobs).to_string(),
            "qstat -f -F json -x 1.s 2.s"
        );
        assert_eq!(Pbs::cancel_command(&jobs).to_string(), "qdel 1.s 2.s");
    }
}
