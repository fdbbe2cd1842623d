//! The `local` provider: a block is a process group on this machine running
//! a job script through `sh`, so `worker_init` runs first, as on a cluster.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::launcher::Launcher;
use crate::quote::shell_quote;
use crate::{BlockRequest, JobId, JobState, Provider, ProviderConfig, ProviderError};

/// How long a cancelled block gets to exit after SIGTERM before SIGKILL.
const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Runs blocks as local process groups; the job id is the group's pid.
pub struct LocalProvider {
    config: ProviderConfig,
    children: HashMap<JobId, Child>,
    finished: HashMap<JobId, JobState>,
}

impl LocalProvider {
    /// A provider with no blocks.
    pub fn new(config: ProviderConfig) -> Self {
        LocalProvider {
            config,
            children: HashMap::new(),
            finished: HashMap::new(),
        }
    }

    fn error(message: String) -> ProviderError {
        ProviderError {
            provider: "local",
            message,
        }
    }

    /// Reaps a child if it has exited, recording how.
    fn poll(&mut self, job: &str) -> Option<JobState> {
        if let Some(state) = self.finished.get(job) {
            return Some(state.clone());
        }
        let child = self.children.get_mut(job)?;
        let state = match child.try_wait() {
            Ok(None) => return Some(JobState::Running),
            Ok(Some(status)) if status.success() => JobState::Completed,
            Ok(Some(status)) => JobState::Failed {
                reason: match status.code() {
                    Some(code) => format!("exit code {code}"),
                    None => format!("killed by {status}"),
                },
            },
            Err(e) => JobState::Failed {
                reason: format!("cannot wait for block: {e}"),
            },
        };
        self.children.remove(job);
        self.finished.insert(job.to_string(), state.clone());
        Some(state)
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    /// With an MPI launcher and `nodes_per_block` > 1, the block's managers
    /// share this machine as one MPI job, each behaving as one node.
    fn job_script(&self, request: &BlockRequest) -> String {
        let (nodes, cmd) = (
            self.config.nodes_per_block,
            shell_quote(&request.manager_command),
        );
        let launch = match self.config.launcher() {
            // One machine: every rank lands here, so no one-per-node mapping.
            Ok(Launcher::Mpiexec) => format!("mpiexec -n {nodes} --bind-to none {cmd}"),
            Ok(launcher) => launcher.line(nodes, &cmd),
            Err(_) => cmd,
        };
        format!(
            "#!/bin/sh\n# hpfaas block {} ({})\n{}exec {launch}\n",
            request.block_id,
            request.job_name,
            crate::script::script_preamble(request, &self.config.worker_init),
        )
    }

    /// Nothing to ask: blocks are this machine's own processes. Only the
    /// launcher a block would run must be here.
    fn probe(&mut self) -> Result<String, ProviderError> {
        let program = match self.config.launcher() {
            Ok(Launcher::Mpiexec) => Some("mpiexec"),
            Ok(Launcher::Srun) => Some("srun"),
            _ => None,
        };
        match program {
            Some(p) if !crate::command::on_path(p) => Err(Self::error(format!(
                "provider.launcher needs {p}, which is not on PATH; install it or choose \
                 another launcher"
            ))),
            Some(p) => Ok(format!("blocks run on this machine, started by {p}")),
            None => Ok("blocks run on this machine as process groups".into()),
        }
    }

    fn submit(&mut self, request: &BlockRequest) -> Result<JobId, ProviderError> {
        std::fs::create_dir_all(&request.log_dir).map_err(|e| {
            Self::error(format!("cannot create {}: {e}", request.log_dir.display()))
        })?;
        let script_path = request
            .log_dir
            .join(format!("block-{}.sh", request.block_id));
        crate::create_private(&script_path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, self.job_script(request).as_bytes())
            })
            .map_err(|e| Self::error(format!("cannot write {}: {e}", script_path.display())))?;
        let log_path = request
            .log_dir
            .join(format!("block-{}.log", request.block_id));
        let log = crate::create_private(&log_path)
            .map_err(|e| Self::error(format!("cannot create {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Self::error(format!("cannot duplicate log handle: {e}")))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(&script_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        crate::strip_secrets(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Self::error(format!("cannot start block {}: {e}", request.block_id)))?;
        let job = child.id().to_string();
        self.children.insert(job.clone(), child);
        Ok(job)
    }

    fn status(&mut self, jobs: &[JobId]) -> Result<HashMap<JobId, JobState>, ProviderError> {
        Ok(jobs
            .iter()
            .map(|job| {
                let state = self.poll(job).unwrap_or(JobState::Failed {
                    reason: "unknown to this provider".into(),
                });
                (job.clone(), state)
            })
            .collect())
    }

    fn cancel(&mut self, jobs: &[JobId]) -> Result<(), ProviderError> {
        let groups: Vec<(JobId, i32)> = jobs
            .iter()
            .filter_map(|job| Some((job.clone(), job.parse::<i32>().ok()?)))
            .filter(|(job, _)| self.children.contains_key(job))
            .collect();
        for (_, pgid) in &groups {
            signal_group(*pgid, libc::SIGTERM);
        }
        // Wait for every process of each group, not only its leader: a
        // manager's workers must not outlive their block.
        let deadline = Instant::now() + CANCEL_GRACE;
        let mut live = groups;
        while !live.is_empty() {
            for (job, _) in &live {
                self.poll(job);
            }
            live.retain(|(_, pgid)| group_exists(*pgid));
            if Instant::now() > deadline + CANCEL_GRACE {
                // Only unreaped zombies can be left (their reaper is not us).
                break;
            }
            if Instant::now() > deadline {
                for (_, pgid) in &live {
                    signal_group(*pgid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for job in jobs {
            if let Some(child) = self.children.get_mut(job) {
                let _ = child.wait();
            }
            self.poll(job);
        }
        Ok(())
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) on a process group this provider created.
    unsafe { libc::kill(-pgid, signal) };
}

/// True while any process (zombies included) remains in the group.
fn group_exists(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        let jobs: Vec<JobId> = self.children.keys().cloned().collect();
        let _ = self.cancel(&jobs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(init: &str) -> LocalProvider {
        LocalProvider::new(ProviderConfig {
            worker_init: init.into(),
            ..Default::default()
        })
    }

    /// A directory for a test's block logs, removed on drop.
    fn log_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("hpfaas-local-")
            .tempdir()
            .unwrap()
    }

    fn request(logs: &tempfile::TempDir, id: &str, argv: &[&str]) -> BlockRequest {
        BlockRequest {
            block_id: id.into(),
            job_name: format!("hpfaas-test-{id}"),
            manager_command: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("HPFAAS_TEST_VAR".into(), "from env".into())],
            log_dir: logs.path().to_path_buf(),
        }
    }

    fn wait_finished(p: &mut LocalProvider, job: &JobId) -> JobState {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let state = p.status(std::slice::from_ref(job)).unwrap()[job].clone();
            if state.is_finished() {
                return state;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("block {job} did not finish");
    }

    #[test]
    fn runs_worker_init_then_the_command_and_reports_exit() {
        let logs = log_dir();
        let mut p = provider("INIT=ran; export INIT");
        let req = request(
            &logs,
            "ok",
            &["sh", "-c", "echo \"$INIT $HPFAAS_TEST_VAR\""],
        );
        assert!(p
            .job_script(&req)
            .contains("export HPFAAS_TEST_VAR='from env'"));
        let job = p.submit(&req).unwrap();
        assert_eq!(wait_finished(&mut p, &job), JobState::Completed);
        let log = std::fs::read_to_string(req.log_dir.join("block-ok.log")).unwrap();
        assert_eq!(log.trim(), "ran from env");

        let job = p
            .submit(&request(&logs, "bad", &["sh", "-c", "exit 3"]))
            .unwrap();
        assert_eq!(
            wait_finished(&mut p, &job),
            JobState::Failed {
                reason: "exit code 3".into()
            }
        );
    }

    /// The agent's token must not reach a block: its tasks run as the same
    /// user and could read it from any of the block's processes.
    #[test]
    fn blocks_do_not_inherit_the_agents_secrets() {
        let logs = log_dir();
        std::env::set_var("HPFAAS_LOCAL_TEST_TOKEN", "secret-in-agent");
        let mut p = provider("");
        let req = request(
            &logs,
            "secret",
            &[
                "sh",
                "-c",
                "echo \"[$HPFAAS_LOCAL_TEST_TOKEN][$HPFAAS_TEST_VAR]\"",
            ],
        );
        let job = p.submit(&req).unwrap();
        assert_eq!(wait_finished(&mut p, &job), JobState::Completed);
        let log = std::fs::read_to_string(req.log_dir.join("block-secret.log")).unwrap();
        assert_eq!(log.trim(), "[][from env]");
    }

    #[test]
    fn cancel_kills_the_whole_group() {
        let logs = log_dir();
        let mut p = provider("");
        let job = p
            .submit(&request(
                &logs,
                "long",
                &["sh", "-c", "sleep 60 & sleep 60"],
            ))
            .unwrap();
        assert_eq!(
            p.status(std::slice::from_ref(&job)).unwrap()[&job],
            JobState::Running
        );
        p.cancel(std::slice::from_ref(&job)).unwrap();
        assert!(p.status(std::slice::from_ref(&job)).unwrap()[&job].is_finished());
        let pgid: i32 = job.parse().unwrap();
        // SAFETY: signal 0 only checks for existence of the group.
        let alive = unsafe { libc::kill(-pgid, 0) } == 0;
        assert!(!alive, "processes of the cancelled group survive");
        assert!(p.status(&["nope".to_string()]).unwrap()["nope"].is_finished());
    }
}
