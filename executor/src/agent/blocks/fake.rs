//! An in-memory batch system and a hand-advanced clock: the test seam of
//! the blocks' decisions ([`super::state`]) and of the agent's stop path.
//! Like a real provider it writes each block's job script to `blocks/`.
//! Real providers are tested against real schedulers and emulators.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hpfaas_scheduler_adapters::{BlockRequest, JobId, JobState, Provider, ProviderError};

use super::clock::Clock;

/// A clock that moves only when the test (or a slow fake command) says.
#[derive(Clone)]
pub struct FakeClock {
    start: Instant,
    elapsed: Arc<Mutex<Duration>>,
}

/// Unix time at the fake clock's start.
pub const UNIX_START: f64 = 1_700_000_000.0;

impl FakeClock {
    /// A clock at [`UNIX_START`].
    pub fn new() -> Self {
        FakeClock {
            start: Instant::now(),
            elapsed: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap() += by;
    }

    /// Sets the clock to `seconds` after its start.
    pub fn set(&self, seconds: f64) {
        *self.elapsed.lock().unwrap() = Duration::from_secs_f64(seconds);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().unwrap()
    }

    fn unix(&self) -> f64 {
        UNIX_START + self.elapsed.lock().unwrap().as_secs_f64()
    }
}

/// What the in-memory batch system was asked and will answer.
#[derive(Default)]
pub struct Queue {
    /// Block ids of every submit attempt, failed ones included.
    pub submits: Vec<String>,
    /// Job names of the successful submits.
    pub job_names: Vec<String>,
    /// Every status query, with the jobs it asked about.
    pub polls: Vec<Vec<JobId>>,
    pub cancels: Vec<Vec<JobId>>,
    /// Scripted job states; a job not here is pending.
    pub states: HashMap<JobId, JobState>,
    /// When set, submits fail with this message.
    pub refuse_submit: Option<String>,
    /// When set, status queries fail with this message.
    pub refuse_status: Option<String>,
    /// How long a submit takes, on the fake clock.
    pub submit_takes: Duration,
}

/// An in-memory [`Provider`]: job `N` for the Nth submit, scripted states.
pub struct FakeProvider {
    /// What it was asked and will answer.
    pub queue: Arc<Mutex<Queue>>,
    /// The clock a slow submit moves on.
    pub clock: FakeClock,
}

impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn job_script(&self, request: &BlockRequest) -> String {
        request.manager_command.join(" ")
    }

    fn submit(&mut self, request: &BlockRequest) -> Result<JobId, ProviderError> {
        let mut q = self.queue.lock().unwrap();
        self.clock.advance(q.submit_takes);
        q.submits.push(request.block_id.clone());
        if let Some(message) = &q.refuse_submit {
            return Err(ProviderError::new("fake", message.clone()));
        }
        q.job_names.push(request.job_name.clone());
        // Where a real provider writes the job script (pruning reads it).
        let script = request
            .log_dir
            .join(format!("block-{}.sh", request.block_id));
        std::fs::create_dir_all(&request.log_dir)
            .and_then(|()| std::fs::write(&script, self.job_script(request)))
            .map_err(|e| ProviderError::new("fake", e.to_string()))?;
        Ok(format!("{}", 1000 + q.submits.len()))
    }

    fn status(&mut self, jobs: &[JobId]) -> Result<HashMap<JobId, JobState>, ProviderError> {
        let mut q = self.queue.lock().unwrap();
        q.polls.push(jobs.to_vec());
        if let Some(message) = &q.refuse_status {
            return Err(ProviderError::new("fake", message.clone()));
        }
        Ok(jobs
            .iter()
            .map(|j| {
                let state = q.states.get(j).cloned().unwrap_or(JobState::Pending);
                (j.clone(), state)
            })
            .collect())
    }

    fn cancel(&mut self, jobs: &[JobId]) -> Result<(), ProviderError> {
        self.queue.lock().unwrap().cancels.push(jobs.to_vec());
        Ok(())
    }

    fn probe(&mut self) -> Result<String, ProviderError> {
        match &self.queue.lock().unwrap().refuse_status {
            Some(message) => Err(ProviderError::new("fake", message.clone())),
            None => Ok("the fake scheduler answered".into()),
        }
    }
}
