//! The endpoint's blocks (pilot jobs): submits what the strategy asks for,
//! polls the provider, and reports blocks that ended so the broker can fail
//! or retry the tasks of their managers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hpfaas_scheduler_adapters::{BlockRequest, JobId, JobState, Provider};

use crate::strategy::{self, Scaling, Snapshot};

/// A block that ended, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedBlock {
    /// The block's id.
    pub block_id: String,
    /// What the provider said.
    pub reason: String,
}

struct Block {
    id: String,
    job: JobId,
    started: Instant,
}

/// All blocks of one endpoint.
pub struct Blocks {
    provider: Box<dyn Provider>,
    scaling: Scaling,
    /// Builds the manager command for a block id.
    manager_command: Box<dyn Fn(&str) -> Vec<String> + Send>,
    /// Prefix of job names, unique per endpoint.
    job_prefix: String,
    log_dir: PathBuf,
    live: Vec<Block>,
    next_id: u64,
    first: bool,
    /// After blocks die young, wait before trying again (doubling each time).
    hold_until: Option<Instant>,
    backoff: Duration,
    /// Last provider error, shown by `hpfaas endpoint status`.
    pub last_error: Option<String>,
}

/// A block that ended sooner than this after starting counts as a failed start.
const YOUNG: Duration = Duration::from_secs(10);

impl Blocks {
    /// Blocks managed through `provider`.
    pub fn new(
        provider: Box<dyn Provider>,
        scaling: Scaling,
        manager_command: Box<dyn Fn(&str) -> Vec<String> + Send>,
        job_prefix: String,
        log_dir: PathBuf,
    ) -> Self {
        Blocks {
            provider,
            scaling,
            manager_command,
            job_prefix,
            log_dir,
            live: Vec::new(),
            next_id: 0,
            first: true,
            hold_until: None,
            backoff: Duration::from_secs(1),
            last_error: None,
        }
    }

    /// Blocks pending or running.
    pub fn active(&self) -> u32 {
        self.live.len() as u32
    }

    /// Polls the provider, then submits what the strategy asks for; returns
    /// the blocks that ended since the last step.
    pub fn step(&mut self, outstanding_tasks: u64) -> Vec<EndedBlock> {
        let ended = self.poll();
        let now = Instant::now();
        if self.hold_until.is_some_and(|t| now < t) {
            return ended;
        }
        let snapshot = Snapshot {
            active_blocks: self.active(),
            outstanding_tasks,
            first: self.first,
        };
        self.first = false;
        for _ in 0..strategy::blocks_to_submit(&self.scaling, &snapshot) {
            self.submit();
        }
        ended
    }

    fn submit(&mut self) {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let request = BlockRequest {
            job_name: format!("{}-{id}", self.job_prefix),
            block_id: id.clone(),
            manager_command: (self.manager_command)(&id),
            env: Vec::new(),
            log_dir: self.log_dir.clone(),
        };
        match self.provider.submit(&request) {
            Ok(job) => {
                tracing::info!("block {id} submitted as {} job {job}", self.provider.name());
                self.live.push(Block {
                    id,
                    job,
                    started: Instant::now(),
                });
            }
            Err(e) => {
                tracing::error!("cannot submit block {id}: {e}");
                self.last_error = Some(e.to_string());
                self.hold_off();
            }
        }
    }

    fn hold_off(&mut self) {
        self.hold_until = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(60));
    }

    fn poll(&mut self) -> Vec<EndedBlock> {
        if self.live.is_empty() {
            return Vec::new();
        }
        let jobs: Vec<JobId> = self.live.iter().map(|b| b.job.clone()).collect();
        let states: HashMap<JobId, JobState> = match self.provider.status(&jobs) {
            Ok(states) => states,
            Err(e) => {
                tracing::warn!("cannot poll blocks: {e}");
                self.last_error = Some(e.to_string());
                return Vec::new();
            }
        };
        let mut ended = Vec::new();
        let mut died_young = false;
        self.live.retain(|b| match states.get(&b.job) {
            Some(state) if state.is_finished() => {
                let reason = match state {
                    JobState::Failed { reason } => reason.clone(),
                    _ => "completed".to_string(),
                };
                tracing::warn!("block {} (job {}) ended: {reason}", b.id, b.job);
                died_young |= b.started.elapsed() < YOUNG;
                ended.push(EndedBlock {
                    block_id: b.id.clone(),
                    reason,
                });
                false
            }
            _ => true,
        });
        if died_young {
            self.last_error = Some(format!(
                "block {} ended soon after starting: {}; see its log in {}",
                ended[0].block_id,
                ended[0].reason,
                self.log_dir.display()
            ));
            self.hold_off();
        } else if !ended.is_empty() {
            self.backoff = Duration::from_secs(1);
        }
        ended
    }

    /// Cancels every block.
    pub fn cancel_all(&mut self) {
        let jobs: Vec<JobId> = self.live.drain(..).map(|b| b.job).collect();
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = self.provider.cancel(&jobs) {
            tracing::error!("cannot cancel blocks: {e}");
        }
    }
}
