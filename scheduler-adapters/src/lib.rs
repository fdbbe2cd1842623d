//! Batch-system providers: each one starts, watches and cancels *blocks*
//! (pilot jobs) that run `hpfaas manager`.
//!
//! A provider only talks to its batch system; deciding how many blocks to run
//! is the endpoint's strategy (`executor/src/strategy.rs`). Calls may block on
//! scheduler commands (each bounded by `provider.cmd_timeout`), so the
//! endpoint runs them off its event loop.
//!
//! `local` runs blocks as process groups; `slurm`, `pbs` and `lsf` share one
//! flow ([`batch::BatchProvider`]) over their own commands and formats
//! ([`slurm`], [`pbs`], [`lsf`]), with job scripts laid out by [`script`] and
//! commands run by [`command`].

pub mod batch;
pub mod command;
pub mod config;
pub mod launcher;
pub mod local;
pub mod lsf;
pub mod pbs;
pub mod script;
pub mod slurm;

use std::collections::HashMap;
use std::path::PathBuf;

/// A batch-system job id as the scheduler prints it (e.g. `1234`, `1234.server`).
pub type JobId = String;

/// Creates (or empties) `path` as a file only its owner can open, whatever
/// the umask: job scripts and block logs hold command lines and task output.
pub fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

use batch::BatchProvider;
pub use config::ProviderConfig;

/// What to start: one block of managers. Its size, walltime, placement,
/// `worker_init` and launcher come from the provider's [`ProviderConfig`].
#[derive(Debug, Clone)]
pub struct BlockRequest {
    /// Endpoint-unique block id, passed to each manager.
    pub block_id: String,
    /// Scheduler job name; unique per endpoint and block.
    pub job_name: String,
    /// Argument vector that starts one manager (absolute binary path first).
    pub manager_command: Vec<String>,
    /// Environment the job script exports before starting the managers.
    pub env: Vec<(String, String)>,
    /// Where the job script and the block's output go.
    pub log_dir: PathBuf,
}

/// Where a job is in its life, as the endpoint needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Queued or starting.
    Pending,
    /// Running.
    Running,
    /// Ended normally.
    Completed,
    /// Ended abnormally; the reason names what the scheduler said.
    Failed {
        /// E.g. `TIMEOUT`, `NODE_FAIL`, `exit code 1`.
        reason: String,
    },
}

impl JobState {
    /// True once the job can no longer run anything.
    pub fn is_finished(&self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed { .. })
    }
}

/// A scheduler command failed; the message carries the scheduler's own words.
#[derive(Debug, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    /// Which provider.
    pub provider: &'static str,
    /// What went wrong, including the scheduler's stderr where there is one.
    pub message: String,
}

impl ProviderError {
    /// An error of `provider` saying `message`.
    pub fn new(provider: &'static str, message: impl Into<String>) -> Self {
        ProviderError {
            provider,
            message: message.into(),
        }
    }
}

/// One batch system.
pub trait Provider: Send {
    /// Short name (`local`, `slurm`, ...), used in messages.
    fn name(&self) -> &'static str;
    /// The exact job script [`Provider::submit`] would submit.
    fn job_script(&self, request: &BlockRequest) -> String;
    /// Starts a block and returns its job id.
    fn submit(&mut self, request: &BlockRequest) -> Result<JobId, ProviderError>;
    /// States of the given jobs, in one batched query where the system allows.
    fn status(&mut self, jobs: &[JobId]) -> Result<HashMap<JobId, JobState>, ProviderError>;
    /// Cancels the given jobs; cancelling a finished job is not an error.
    fn cancel(&mut self, jobs: &[JobId]) -> Result<(), ProviderError>;
}

/// The provider a configuration asks for.
pub fn build(config: &ProviderConfig) -> Result<Box<dyn Provider>, String> {
    config.validate()?;
    match config.kind.as_str() {
        "local" => Ok(Box::new(local::LocalProvider::new(config.clone()))),
        "slurm" => Ok(Box::new(BatchProvider::<slurm::Slurm>::new(
            config.clone(),
        )?)),
        "pbs" => Ok(Box::new(BatchProvider::<pbs::Pbs>::new(config.clone())?)),
        "lsf" => Ok(Box::new(BatchProvider::<lsf::Lsf>::new(config.clone())?)),
        other => Err(format!(
            "provider.type = {other:?} is not available in this build"
        )),
    }
}

/// True for a variable of the agent's environment that holds a secret (the
/// owner's `HPFAAS_TOKEN`, and any `HPFAAS_*` key, password or credential):
/// blocks and scheduler commands never get one, since tasks run as the same
/// user as the block and can read its processes' environments.
pub fn is_secret_variable(name: &std::ffi::OsStr) -> bool {
    let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("HPFAAS_")) else {
        return false;
    };
    ["TOKEN", "KEY", "SECRET", "CREDENTIAL", "PASSWORD"]
        .iter()
        .any(|word| rest.contains(word))
}

/// Removes this process's secret variables ([`is_secret_variable`]) from
/// what `command` will inherit.
pub fn strip_secrets(command: &mut std::process::Command) {
    for (name, _) in std::env::vars_os() {
        if is_secret_variable(&name) {
            command.env_remove(name);
        }
    }
}

/// Exports and `worker_init` for the top of a job script, shared by every provider.
pub fn script_preamble(request: &BlockRequest, worker_init: &str) -> String {
    let mut out = String::new();
    for (key, value) in &request.env {
        out.push_str(&format!(
            "export {key}={}\n",
            launcher::shell_quote(&[value])
        ));
    }
    if !worker_init.trim().is_empty() {
        out.push_str(worker_init.trim_end());
        out.push('\n');
    }
    out
}

/// A captured scheduler output from `tests/fixtures/` (e.g. `pbs/qsub.txt`).
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_told_apart() {
        for secret in [
            "HPFAAS_TOKEN",
            "HPFAAS_OWNER_TOKEN",
            "HPFAAS_TLS_KEY",
            "HPFAAS_CURVE_SECRET",
            "HPFAAS_PASSWORD",
        ] {
            assert!(is_secret_variable(secret.as_ref()), "{secret}");
        }
        for plain in [
            "HPFAAS_HOME",
            "HPFAAS_URL",
            "TOKEN",
            "PATH",
            "HPFAAS_EMULATOR_STATE",
        ] {
            assert!(!is_secret_variable(plain.as_ref()), "{plain}");
        }
    }
}
