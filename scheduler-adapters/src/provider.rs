//! What every provider is: the [`Provider`] trait, the block it starts
//! ([`BlockRequest`]), where a job is ([`JobState`]), and its errors.

use std::collections::HashMap;
use std::path::PathBuf;

/// A batch-system job id as the scheduler prints it (e.g. `1234`, `1234.server`).
pub type JobId = String;

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
    /// Asks the batch system once, as a poll would, whether it answers;
    /// says what was asked. Starts and changes nothing (`endpoint check`).
    fn probe(&mut self) -> Result<String, ProviderError>;
}
