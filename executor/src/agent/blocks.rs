//! The endpoint's blocks (pilot jobs). A dedicated thread owns the provider,
//! because scheduler commands block for up to `cmd_timeout`: it polls the
//! jobs, asks the strategy what to submit or cancel, remembers its jobs in
//! `blocks.json` (so a restarted agent re-adopts them instead of leaking
//! them), and reports blocks that ended so the broker can settle their tasks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use hpfaas_protocol::task::now_unix;
use hpfaas_scheduler_adapters::{BlockRequest, JobId, JobState, Provider};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::broker::dispatch::Load;
use crate::strategy::{self, BlockView, Scaling};

/// A block that ended, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedBlock {
    /// The block's id.
    pub block_id: String,
    /// What the provider said.
    pub reason: String,
}

/// One block as `hpfaas endpoint status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockStatus {
    /// Block id.
    pub block_id: String,
    /// Batch-system job id.
    pub job_id: String,
    /// Provider name.
    pub provider: String,
    /// `pending`, `running`, `draining`.
    pub state: String,
    /// Nodes requested.
    pub nodes: u32,
    /// Connected managers.
    pub managers: u32,
    /// When it was submitted (or first seen), Unix seconds. Times, not ages,
    /// so `agent.json` changes only when a block does, not every tick.
    pub submitted_at: f64,
    /// When its walltime ends (Unix seconds), when known.
    pub deadline: Option<f64>,
}

/// What the blocks thread reports.
#[derive(Debug)]
pub enum BlocksEvent {
    /// A block's job ended.
    Ended(EndedBlock),
    /// The blocks and the last provider error, after every step.
    Status {
        /// Every live block.
        blocks: Vec<BlockStatus>,
        /// The last scheduler error (e.g. sbatch's own message), if any.
        last_error: Option<String>,
    },
}

/// Builds the manager command line for a block id.
pub type ManagerCommand = Box<dyn Fn(&str) -> Vec<String> + Send>;

/// Static facts the blocks thread needs.
pub struct BlocksSetup {
    /// The provider.
    pub provider: Box<dyn Provider>,
    /// Scaling keys.
    pub scaling: Scaling,
    /// Nodes per block.
    pub nodes: u32,
    /// Builds the manager command for a block id.
    pub manager_command: ManagerCommand,
    /// Prefix of job names, unique per endpoint.
    pub job_prefix: String,
    /// Where job scripts and block output go; `blocks.json` lives beside it.
    pub dir: PathBuf,
    /// Least time between two status queries to the scheduler.
    pub poll_period: Duration,
}

/// The agent's handle on the blocks thread.
pub struct BlocksHandle {
    input: std_mpsc::Sender<Input>,
    /// Events from the thread.
    pub events: mpsc::UnboundedReceiver<BlocksEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Input {
    Step { outstanding: u64, load: Load },
    CancelAll,
}

impl BlocksHandle {
    /// Starts the thread; it re-adopts the jobs recorded in `blocks.json`.
    pub fn start(setup: BlocksSetup) -> std::io::Result<BlocksHandle> {
        let (input, rx) = std_mpsc::channel();
        let (tx, events) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("blocks".into())
            .spawn(move || Blocks::new(setup).run(rx, tx))?;
        Ok(BlocksHandle {
            input,
            events,
            thread: Some(thread),
        })
    }

    /// Asks for one scaling step with the current work and load.
    pub fn step(&self, outstanding: u64, load: Load) {
        let _ = self.input.send(Input::Step { outstanding, load });
    }

    /// Cancels every block and waits for the thread to finish.
    pub fn cancel_all(mut self) {
        let _ = self.input.send(Input::CancelAll);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What `blocks.json` holds about one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    block_id: String,
    job_id: JobId,
    submitted_at: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    next_id: u64,
    blocks: Vec<Record>,
}

struct Block {
    record: Record,
    started: Instant,
    idle_since: Option<Instant>,
    managers: u32,
    draining: bool,
    deadline: Option<f64>,
}

impl Block {
    /// A block just submitted or re-adopted: idle, no managers seen yet.
    fn new(record: Record, now: Instant) -> Block {
        Block {
            record,
            started: now,
            idle_since: Some(now),
            managers: 0,
            draining: false,
            deadline: None,
        }
    }
}

struct Blocks {
    setup: BlocksSetup,
    live: Vec<Block>,
    next_id: u64,
    first: bool,
    hold_until: Option<Instant>,
    backoff: Duration,
    last_error: Option<String>,
    last_poll: Option<Instant>,
    /// A block lost its managers: ask the scheduler now, not at the next period.
    poll_now: bool,
    /// Blocks this endpoint did not submit whose managers joined it (a user's
    /// own job running `hpfaas manager --endpoint NAME`), with when first seen.
    external: Vec<(crate::broker::dispatch::BlockLoad, f64)>,
}

/// True if `job` read from `blocks.json` can be a job id of `provider`, so
/// it may be polled and cancelled: a local block's is the pid of its
/// process group (which a kill(2) of 0, 1 or a negative value would not
/// name), a batch system's a word that no command can take for an option.
fn adoptable(provider: &str, job: &str) -> bool {
    if provider == "local" {
        return job
            .parse::<u32>()
            .ok()
            .and_then(crate::agent::state_file::signalable)
            .is_some();
    }
    !job.is_empty()
        && job.len() <= 128
        && !job.starts_with('-')
        && job
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-[]:@+".contains(c))
}

/// A block that ended sooner than this after starting counts as a failed start.
const YOUNG: Duration = Duration::from_secs(10);

impl Blocks {
    fn new(setup: BlocksSetup) -> Self {
        let saved: Saved = std::fs::read(setup.dir.join("blocks.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let now = Instant::now();
        let provider = setup.provider.name();
        let live: Vec<Block> = saved
            .blocks
            .into_iter()
            .filter(|record| {
                let ok = adoptable(provider, &record.job_id);
                if !ok {
                    tracing::warn!(
                        "not re-adopting block {}: {:?} in blocks.json is not a {provider} job id",
                        record.block_id,
                        record.job_id
                    );
                }
                ok
            })
            .map(|record| {
                tracing::info!(
                    "re-adopting block {} (job {})",
                    record.block_id,
                    record.job_id
                );
                Block::new(record, now)
            })
            .collect();
        Blocks {
            first: live.is_empty(),
            setup,
            live,
            next_id: saved.next_id,
            hold_until: None,
            backoff: Duration::from_secs(1),
            last_error: None,
            last_poll: None,
            poll_now: false,
            external: Vec::new(),
        }
    }

    fn run(mut self, input: std_mpsc::Receiver<Input>, events: mpsc::UnboundedSender<BlocksEvent>) {
        while let Ok(mut message) = input.recv() {
            // Steps queue up while a scheduler command is slow: act on the latest.
            while let Ok(next) = input.try_recv() {
                if matches!(message, Input::CancelAll) {
                    break;
                }
                message = next;
            }
            match message {
                Input::Step { outstanding, load } => {
                    for ended in self.step(outstanding, &load) {
                        let _ = events.send(BlocksEvent::Ended(ended));
                    }
                    let _ = events.send(BlocksEvent::Status {
                        blocks: self.status(),
                        last_error: self.last_error.clone(),
                    });
                }
                Input::CancelAll => {
                    self.cancel_all();
                    return;
                }
            }
        }
    }

    fn save(&self) {
        let saved = Saved {
            next_id: self.next_id,
            blocks: self.live.iter().map(|b| b.record.clone()).collect(),
        };
        let path = self.setup.dir.join("blocks.json");
        let written = serde_json::to_vec_pretty(&saved)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| crate::private::write(&path, &bytes, true));
        if let Err(e) = written {
            tracing::error!("cannot record blocks in {}: {e:#}", path.display());
        }
    }

    fn step(&mut self, outstanding: u64, load: &Load) -> Vec<EndedBlock> {
        let now = Instant::now();
        self.observe(load, now);
        let ended = self.poll();
        if self.hold_until.is_some_and(|t| now < t) {
            return ended;
        }
        let views: Vec<BlockView> = self
            .live
            .iter()
            .map(|b| BlockView {
                id: b.record.block_id.clone(),
                idle_since: b.idle_since,
                draining: b.draining,
            })
            .collect();
        let decision = strategy::decide(&self.setup.scaling, &views, outstanding, self.first, now);
        self.first = false;
        if !decision.cancel.is_empty() {
            tracing::info!("cancelling idle blocks {:?}", decision.cancel);
            self.cancel(&decision.cancel);
        }
        for _ in 0..decision.submit {
            self.submit();
        }
        ended
    }

    /// Folds the broker's view (managers connected, tasks in hand) into the blocks.
    fn observe(&mut self, load: &Load, now: Instant) {
        let first_seen: HashMap<String, f64> = self
            .external
            .drain(..)
            .map(|(b, seen)| (b.block_id, seen))
            .collect();
        for l in &load.blocks {
            if !self.live.iter().any(|b| b.record.block_id == l.block_id) {
                let seen = first_seen
                    .get(&l.block_id)
                    .copied()
                    .unwrap_or_else(now_unix);
                self.external.push((l.clone(), seen));
            }
        }
        for b in &mut self.live {
            match load.blocks.iter().find(|l| l.block_id == b.record.block_id) {
                Some(l) => {
                    b.managers = l.managers;
                    b.draining = l.draining;
                    b.deadline = l.deadline;
                    if l.in_hand > 0 {
                        b.idle_since = None;
                    } else if b.idle_since.is_none() {
                        b.idle_since = Some(now);
                    }
                }
                None => {
                    self.poll_now |= b.managers > 0;
                    b.managers = 0;
                }
            }
        }
    }

    fn submit(&mut self) {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let request = BlockRequest {
            job_name: format!("{}-{id}", self.setup.job_prefix),
            block_id: id.clone(),
            manager_command: (self.setup.manager_command)(&id),
            env: Vec::new(),
            log_dir: self.setup.dir.join("blocks"),
        };
        match self.setup.provider.submit(&request) {
            Ok(job_id) => {
                tracing::info!(
                    "block {id} submitted as {} job {job_id}",
                    self.setup.provider.name()
                );
                let now = Instant::now();
                let record = Record {
                    block_id: id,
                    job_id,
                    submitted_at: now_unix(),
                };
                self.live.push(Block::new(record, now));
                self.save();
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
        let due = self
            .last_poll
            .is_none_or(|t| t.elapsed() >= self.setup.poll_period);
        if self.live.is_empty() || !(due || self.poll_now) {
            return Vec::new();
        }
        self.last_poll = Some(Instant::now());
        self.poll_now = false;
        let jobs: Vec<JobId> = self.live.iter().map(|b| b.record.job_id.clone()).collect();
        let states: HashMap<JobId, JobState> = match self.setup.provider.status(&jobs) {
            Ok(states) => states,
            Err(e) => {
                tracing::warn!("cannot poll blocks: {e}");
                self.last_error = Some(e.to_string());
                return Vec::new();
            }
        };
        let mut ended = Vec::new();
        let mut died_young = None;
        self.live.retain(|b| match states.get(&b.record.job_id) {
            Some(state) if state.is_finished() => {
                let reason = match state {
                    JobState::Failed { reason } => reason.clone(),
                    _ => "completed".to_string(),
                };
                tracing::warn!(
                    "block {} (job {}) ended: {reason}",
                    b.record.block_id,
                    b.record.job_id
                );
                if b.started.elapsed() < YOUNG && b.managers == 0 {
                    died_young = Some((b.record.block_id.clone(), reason.clone()));
                }
                ended.push(EndedBlock {
                    block_id: b.record.block_id.clone(),
                    reason,
                });
                false
            }
            _ => true,
        });
        if !ended.is_empty() {
            self.save();
        }
        if let Some((block, reason)) = died_young {
            self.last_error = Some(format!(
                "block {block} ended soon after starting: {reason}; see {}",
                self.setup.dir.join("blocks").display()
            ));
            self.hold_off();
        } else if !ended.is_empty() {
            self.backoff = Duration::from_secs(1);
        }
        ended
    }

    fn cancel(&mut self, block_ids: &[String]) {
        let jobs: Vec<JobId> = self
            .live
            .iter()
            .filter(|b| block_ids.contains(&b.record.block_id))
            .map(|b| b.record.job_id.clone())
            .collect();
        if let Err(e) = self.setup.provider.cancel(&jobs) {
            tracing::error!("cannot cancel blocks: {e}");
            self.last_error = Some(e.to_string());
        }
        // Forget them now; a job that survives its cancel is polled no more,
        // but its managers still show up in the broker's view.
        self.live
            .retain(|b| !block_ids.contains(&b.record.block_id));
        self.save();
    }

    fn cancel_all(&mut self) {
        let ids: Vec<String> = self
            .live
            .iter()
            .map(|b| b.record.block_id.clone())
            .collect();
        if !ids.is_empty() {
            self.cancel(&ids);
        }
    }

    fn status(&self) -> Vec<BlockStatus> {
        let external = self.external.iter().map(|(l, seen)| BlockStatus {
            block_id: l.block_id.clone(),
            job_id: l.job_id.clone().unwrap_or_else(|| "-".into()),
            provider: "external".into(),
            state: if l.draining { "draining" } else { "running" }.into(),
            nodes: l.managers,
            managers: l.managers,
            submitted_at: *seen,
            deadline: l.deadline,
        });
        self.live
            .iter()
            .map(|b| BlockStatus {
                block_id: b.record.block_id.clone(),
                job_id: b.record.job_id.clone(),
                provider: self.setup.provider.name().to_string(),
                state: match (b.managers, b.draining) {
                    (0, _) => "pending",
                    (_, true) => "draining",
                    _ => "running",
                }
                .into(),
                nodes: self.setup.nodes,
                managers: b.managers,
                submitted_at: b.record.submitted_at,
                deadline: b.deadline,
            })
            .chain(external)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_job_ids_are_re_adopted() {
        for bad in ["0", "1", "-1", "4294967295", "2147483648", "x", ""] {
            assert!(!adoptable("local", bad), "{bad:?}");
        }
        assert!(adoptable("local", "4242"));
        for bad in ["", "-1", "--user=alice", "1 2", "1;rm", "a\nb"] {
            assert!(!adoptable("slurm", bad), "{bad:?}");
        }
        for good in ["123456", "123456_7", "4321.pbs-server", "8[1]"] {
            assert!(adoptable("slurm", good), "{good:?}");
        }
    }
}
