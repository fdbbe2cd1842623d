//! The blocks' bookkeeping and decisions, apart from the thread that runs
//! them: which jobs are live, when to ask the scheduler, what to submit or
//! cancel (the strategy's call), the back-off after a failed submit, the
//! pause after a block that dies young, and the blocks other people started
//! (external ones). It never reads the system clock itself: every step is
//! given a [`Clock`], read where a decision needs the time (after a slow
//! scheduler command as well as before), so tests drive it with a
//! hand-advanced clock and an in-memory provider.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hpfaas_protocol::endpoint::{EndpointEvent, EventKind};
use hpfaas_scheduler_adapters::{BlockRequest, JobId, JobState, Provider};

use super::clock::Clock;
use super::prune;
use super::record::{self, Record, Saved};
use crate::broker::dispatch::{BlockLoad, Load};
use crate::strategy::{self, BlockView, Scaling};

/// A block that ended, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedBlock {
    /// The block's id.
    pub block_id: String,
    /// What the provider said.
    pub reason: String,
}

/// One block as `hpfaas endpoint status` shows it, and as the agent
/// reports it to the service.
pub use hpfaas_protocol::endpoint::BlockReport as BlockStatus;

/// Builds the manager command line for a block id.
pub type ManagerCommand = Box<dyn Fn(&str) -> Vec<String> + Send>;

/// Static facts the blocks need.
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
    /// Finished blocks whose files stay in `blocks/` (`logs.keep_blocks`).
    pub keep_finished: usize,
}

/// A block that ended sooner than this after starting counts as a failed start.
pub const YOUNG: Duration = Duration::from_secs(10);
/// The pause after the first failed start or submit; it doubles with each
/// failure in a row, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between failed starts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One live block of ours.
struct Block {
    record: Record,
    started: Instant,
    idle_since: Option<Instant>,
    managers: u32,
    workers: u32,
    draining: bool,
    deadline: Option<f64>,
    /// When its first manager was seen (Unix seconds).
    started_at: Option<f64>,
}

impl Block {
    /// A block just submitted or re-adopted: idle, no managers seen yet.
    fn new(record: Record, now: Instant) -> Block {
        Block {
            record,
            started: now,
            idle_since: Some(now),
            managers: 0,
            workers: 0,
            draining: false,
            deadline: None,
            started_at: None,
        }
    }
}

/// The endpoint's blocks and what it decided about them so far.
pub struct Blocks {
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
    external: Vec<(BlockLoad, f64)>,
    /// What happened since the last [`Blocks::take_events`], oldest first.
    events: Vec<EndpointEvent>,
}

impl Blocks {
    /// The blocks at `now`: those `blocks.json` records (a previous agent's)
    /// are re-adopted, and `init_blocks` applies only when there are none.
    pub fn new(setup: BlocksSetup, now: Instant) -> Self {
        let saved = record::load(&setup.dir, setup.provider.name());
        let live: Vec<Block> = saved
            .blocks
            .into_iter()
            .map(|record| {
                tracing::info!(
                    "re-adopting block {} (job {})",
                    record.block_id,
                    record.job_id
                );
                Block::new(record, now)
            })
            .collect();
        let blocks = Blocks {
            first: live.is_empty(),
            setup,
            live,
            next_id: saved.next_id,
            hold_until: None,
            backoff: FIRST_BACKOFF,
            last_error: None,
            last_poll: None,
            poll_now: false,
            external: Vec::new(),
            events: Vec::new(),
        };
        // Earlier runs' finished blocks count against the limit too.
        blocks.prune_files();
        blocks
    }

    /// The last scheduler error (e.g. sbatch's own message), if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The events since the last call, oldest first: blocks submitted,
    /// running, failed (with the scheduler's message), ended, draining,
    /// cancelled, and failed scheduler commands.
    pub fn take_events(&mut self) -> Vec<EndpointEvent> {
        std::mem::take(&mut self.events)
    }

    /// Records an event about no block in particular at `clock`'s time.
    fn event(&mut self, clock: &dyn Clock, kind: EventKind, message: String) {
        self.events
            .push(EndpointEvent::new(clock.unix(), kind, message));
    }

    /// One scaling step: folds in the broker's `load`, polls the scheduler
    /// when due, then submits and cancels as the strategy decides for
    /// `outstanding` tasks, unless a back-off holds submissions. Returns the
    /// blocks that ended.
    pub fn step(&mut self, outstanding: u64, load: &Load, clock: &dyn Clock) -> Vec<EndedBlock> {
        let now = clock.now();
        self.observe(load, now, clock);
        let ended = self.poll(clock);
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
            self.cancel(&decision.cancel, "idle past max_idletime", clock);
        }
        for _ in 0..decision.submit {
            self.submit(clock);
        }
        ended
    }

    /// Folds the broker's view (managers connected, tasks in hand) into the blocks.
    fn observe(&mut self, load: &Load, now: Instant, clock: &dyn Clock) {
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
                    .unwrap_or_else(|| clock.unix());
                self.external.push((l.clone(), seen));
            }
        }
        for b in &mut self.live {
            match load.blocks.iter().find(|l| l.block_id == b.record.block_id) {
                Some(l) => {
                    let block = (b.record.block_id.as_str(), Some(b.record.job_id.as_str()));
                    if l.managers > 0 && b.started_at.is_none() {
                        b.started_at = Some(clock.unix());
                        let message = format!("{} manager(s) connected", l.managers);
                        self.events.push(
                            EndpointEvent::new(clock.unix(), EventKind::BlockRunning, message)
                                .block(block.0, block.1),
                        );
                    }
                    if l.draining && !b.draining {
                        let message = "its walltime is near: it takes no new tasks".to_string();
                        self.events.push(
                            EndpointEvent::new(clock.unix(), EventKind::BlockDraining, message)
                                .block(block.0, block.1),
                        );
                    }
                    b.managers = l.managers;
                    b.workers = l.workers;
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
                    b.workers = 0;
                }
            }
        }
    }

    /// Submits the next block; its times are read once the scheduler answered.
    fn submit(&mut self, clock: &dyn Clock) {
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
                let message = format!("submitted as {} job {job_id}", self.setup.provider.name());
                self.events.push(
                    EndpointEvent::new(clock.unix(), EventKind::BlockSubmitted, message)
                        .block(&id, Some(&job_id)),
                );
                let record = Record {
                    block_id: id,
                    job_id,
                    submitted_at: clock.unix(),
                };
                self.live.push(Block::new(record, clock.now()));
                self.save();
            }
            Err(e) => {
                tracing::error!("cannot submit block {id}: {e}");
                self.last_error = Some(e.to_string());
                self.events.push(
                    EndpointEvent::new(clock.unix(), EventKind::BlockFailed, e.to_string())
                        .block(&id, None),
                );
                self.hold_off(clock.now());
            }
        }
    }

    /// Holds submissions for the current back-off, and doubles it for the next failure.
    fn hold_off(&mut self, now: Instant) {
        self.hold_until = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Asks the scheduler about the live blocks when a period has passed
    /// (or a block lost its managers), and forgets those that ended.
    fn poll(&mut self, clock: &dyn Clock) -> Vec<EndedBlock> {
        let now = clock.now();
        let due = self
            .last_poll
            .is_none_or(|t| now.saturating_duration_since(t) >= self.setup.poll_period);
        if self.live.is_empty() || !(due || self.poll_now) {
            return Vec::new();
        }
        self.last_poll = Some(now);
        self.poll_now = false;
        let jobs: Vec<JobId> = self.live.iter().map(|b| b.record.job_id.clone()).collect();
        let states: HashMap<JobId, JobState> = match self.setup.provider.status(&jobs) {
            Ok(states) => states,
            Err(e) => {
                tracing::warn!("cannot poll blocks: {e}");
                let error = e.to_string();
                // A scheduler that stays down is one event, not one per poll.
                if self.last_error.as_ref() != Some(&error) {
                    self.event(clock, EventKind::SchedulerError, error.clone());
                }
                self.last_error = Some(error);
                return Vec::new();
            }
        };
        // The query may have taken long: ages count to its answer.
        let now = clock.now();
        let mut ended = Vec::new();
        let mut died_young = None;
        let unix = clock.unix();
        let events = &mut self.events;
        self.live.retain(|b| match states.get(&b.record.job_id) {
            Some(state) if state.is_finished() => {
                let (kind, reason) = match state {
                    JobState::Failed { reason } => (EventKind::BlockFailed, reason.clone()),
                    _ => (EventKind::BlockEnded, "completed".to_string()),
                };
                events.push(
                    EndpointEvent::new(unix, kind, reason.clone())
                        .block(&b.record.block_id, Some(&b.record.job_id)),
                );
                tracing::warn!(
                    "block {} (job {}) ended: {reason}",
                    b.record.block_id,
                    b.record.job_id
                );
                if now.saturating_duration_since(b.started) < YOUNG && b.managers == 0 {
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
            self.prune_files();
        }
        if let Some((block, reason)) = died_young {
            self.last_error = Some(format!(
                "block {block} ended soon after starting: {reason}; see {}",
                self.setup.dir.join("blocks").display()
            ));
            self.hold_off(now);
        } else if !ended.is_empty() {
            self.backoff = FIRST_BACKOFF;
        }
        ended
    }

    /// Cancels `block_ids`, saying `why` in their events.
    fn cancel(&mut self, block_ids: &[String], why: &str, clock: &dyn Clock) {
        let jobs: Vec<JobId> = self
            .live
            .iter()
            .filter(|b| block_ids.contains(&b.record.block_id))
            .map(|b| b.record.job_id.clone())
            .collect();
        if let Err(e) = self.setup.provider.cancel(&jobs) {
            tracing::error!("cannot cancel blocks: {e}");
            self.last_error = Some(e.to_string());
            self.event(clock, EventKind::SchedulerError, e.to_string());
        }
        for b in self
            .live
            .iter()
            .filter(|b| block_ids.contains(&b.record.block_id))
        {
            self.events.push(
                EndpointEvent::new(clock.unix(), EventKind::BlockCancelled, why.to_string())
                    .block(&b.record.block_id, Some(&b.record.job_id)),
            );
        }
        // Forget them now; a job that survives its cancel is polled no more,
        // but its managers still show up in the broker's view.
        self.live
            .retain(|b| !block_ids.contains(&b.record.block_id));
        self.save();
        self.prune_files();
    }

    /// Removes finished blocks' files past `keep_finished`, never a live
    /// block's (see [`prune`]).
    fn prune_files(&self) {
        let live: Vec<&str> = self
            .live
            .iter()
            .map(|b| b.record.block_id.as_str())
            .collect();
        prune::prune(
            &self.setup.dir.join("blocks"),
            self.setup.keep_finished,
            &live,
        );
    }

    /// Cancels every live block (the endpoint stops).
    pub fn cancel_all(&mut self, clock: &dyn Clock) {
        let ids: Vec<String> = self
            .live
            .iter()
            .map(|b| b.record.block_id.clone())
            .collect();
        if !ids.is_empty() {
            self.cancel(&ids, "the endpoint stopped", clock);
        }
    }

    fn save(&self) {
        let saved = Saved {
            next_id: self.next_id,
            blocks: self.live.iter().map(|b| b.record.clone()).collect(),
        };
        record::save(&self.setup.dir, &saved);
    }

    /// Every block, ours then external ones, as `hpfaas endpoint status` shows them.
    pub fn status(&self) -> Vec<BlockStatus> {
        let external = self.external.iter().map(|(l, seen)| BlockStatus {
            block_id: l.block_id.clone(),
            job_id: l.job_id.clone().unwrap_or_else(|| "-".into()),
            provider: "external".into(),
            state: if l.draining { "draining" } else { "running" }.into(),
            nodes: l.managers,
            managers: l.managers,
            workers: l.workers,
            submitted_at: *seen,
            started_at: Some(*seen),
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
                workers: b.workers,
                submitted_at: b.record.submitted_at,
                started_at: b.started_at,
                deadline: b.deadline,
            })
            .chain(external)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeClock, FakeProvider, Queue, UNIX_START};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// One block on demand, none kept idle; the scheduler polled every 5 s.
    const SCALING: Scaling = Scaling {
        init_blocks: 0,
        min_blocks: 0,
        max_blocks: 3,
        slots_per_block: 10,
        parallelism: 1.0,
        max_idletime: Duration::from_secs(60),
    };
    const POLL: Duration = Duration::from_secs(5);

    struct Harness {
        blocks: Blocks,
        queue: Arc<Mutex<Queue>>,
        clock: FakeClock,
        dir: tempfile::TempDir,
    }

    impl Harness {
        fn new(scaling: Scaling) -> Harness {
            Harness::in_dir(tempfile::tempdir().unwrap(), scaling)
        }

        /// Blocks that start with `init_blocks`.
        fn with_init_blocks(init_blocks: u32) -> Harness {
            Harness::new(Scaling {
                init_blocks,
                ..SCALING
            })
        }

        /// Blocks over `dir`, which may hold a previous run's `blocks.json`.
        fn in_dir(dir: tempfile::TempDir, scaling: Scaling) -> Harness {
            let queue = Arc::new(Mutex::new(Queue::default()));
            let clock = FakeClock::new();
            let setup = BlocksSetup {
                provider: Box::new(FakeProvider {
                    queue: queue.clone(),
                    clock: clock.clone(),
                }),
                scaling,
                nodes: 2,
                manager_command: Box::new(|id| vec!["hpfaas".into(), "manager".into(), id.into()]),
                job_prefix: "hpfaas-test".into(),
                dir: dir.path().to_path_buf(),
                poll_period: POLL,
                keep_finished: 2,
            };
            let blocks = Blocks::new(setup, clock.now());
            Harness {
                blocks,
                queue,
                clock,
                dir,
            }
        }

        /// One step at `seconds` on the fake clock.
        fn step_at(&mut self, seconds: f64, outstanding: u64, load: &Load) -> Vec<EndedBlock> {
            self.clock.set(seconds);
            self.blocks.step(outstanding, load, &self.clock)
        }

        fn submits(&self) -> usize {
            self.queue.lock().unwrap().submits.len()
        }

        fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
            self.queue.lock().unwrap()
        }

        fn saved(&self) -> Saved {
            serde_json::from_slice(&std::fs::read(record::path(self.dir.path())).unwrap()).unwrap()
        }
    }

    /// The broker's view with `managers` managers of each of `blocks`, idle.
    fn load_of(blocks: &[(&str, u32)]) -> Load {
        Load {
            blocks: blocks
                .iter()
                .map(|(id, managers)| BlockLoad {
                    block_id: id.to_string(),
                    managers: *managers,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn submit_back_off_doubles_while_submits_fail_and_resets_after_a_block_lived() {
        let mut h = Harness::new(SCALING);
        let none = Load::default();
        h.queue().refuse_submit = Some("sbatch: error: invalid account".into());
        // Each failure holds submissions for 1, 2, then 4 seconds.
        let mut t = 0.0;
        for pause in [1.0, 2.0, 4.0] {
            let tried = h.submits();
            h.step_at(t, 5, &none);
            assert_eq!(h.submits(), tried + 1, "a submit at {t}");
            h.step_at(t + pause - 0.1, 5, &none);
            assert_eq!(h.submits(), tried + 1, "held at {}", t + pause - 0.1);
            t += pause;
        }
        // The pause stops doubling at a minute.
        for _ in 0..10 {
            h.step_at(t, 5, &none);
            t += MAX_BACKOFF.as_secs_f64();
        }
        let tried = h.submits();
        h.step_at(t - 0.1, 5, &none);
        assert_eq!(h.submits(), tried, "held just under a minute");
        h.step_at(t, 5, &none);
        assert_eq!(h.submits(), tried + 1, "tried again after a minute");
        t += MAX_BACKOFF.as_secs_f64();

        // A block that starts, runs and ends normally resets the back-off.
        h.queue().refuse_submit = None;
        h.step_at(t, 5, &none);
        let job = h.blocks.status()[0].job_id.clone();
        let block = h.blocks.status()[0].block_id.clone();
        h.step_at(t + 30.0, 5, &load_of(&[(&block, 1)]));
        h.queue().states.insert(job, JobState::Completed);
        h.queue().refuse_submit = Some("sbatch: error: invalid account".into());
        let tried = h.submits();
        let ended = h.step_at(t + 40.0, 5, &none);
        assert_eq!(ended[0].reason, "completed");
        assert_eq!(h.submits(), tried + 1, "a replacement is tried at once");
        h.step_at(t + 40.9, 5, &none);
        assert_eq!(h.submits(), tried + 1);
        h.step_at(t + 41.0, 5, &none);
        assert_eq!(h.submits(), tried + 2, "the pause is back to a second");
    }

    #[test]
    fn the_back_off_counts_from_when_a_slow_submit_failed() {
        let mut h = Harness::new(SCALING);
        h.queue().refuse_submit = Some("sbatch: timed out".into());
        h.queue().submit_takes = Duration::from_secs(30);
        h.step_at(0.0, 5, &Load::default());
        // Failed at 30 s; held one second from then, not from the step.
        h.step_at(30.5, 5, &Load::default());
        assert_eq!(h.submits(), 1);
        h.step_at(31.0, 5, &Load::default());
        assert_eq!(h.submits(), 2);
    }

    #[test]
    fn a_block_that_dies_young_pauses_submission() {
        let mut h = Harness::new(SCALING);
        let none = Load::default();
        h.step_at(0.0, 5, &none);
        let job = h.blocks.status()[0].job_id.clone();
        h.queue().states.insert(
            job,
            JobState::Failed {
                reason: "exit code 127".into(),
            },
        );
        // The first poll (at 1 s) finds it dead, 1 s old, with no manager ever seen.
        let ended = h.step_at(1.0, 5, &none);
        assert_eq!(
            ended,
            vec![EndedBlock {
                block_id: "0".into(),
                reason: "exit code 127".into()
            }]
        );
        let error = h.blocks.last_error().unwrap().to_string();
        assert!(
            error.contains("block 0 ended soon after starting: exit code 127"),
            "{error}"
        );
        assert!(
            error.contains(&h.dir.path().join("blocks").display().to_string()),
            "the error says where the block's output is: {error}"
        );
        assert_eq!(h.submits(), 1, "no replacement while paused");
        assert!(h.blocks.status().is_empty());
        assert!(h.saved().blocks.is_empty(), "the ended block is forgotten");
        h.step_at(1.9, 5, &none);
        assert_eq!(h.submits(), 1);
        h.step_at(2.0, 5, &none);
        assert_eq!(h.submits(), 2, "a replacement after the pause");

        // One that ran past YOUNG with managers is replaced at once.
        let job = h.blocks.status()[0].job_id.clone();
        h.step_at(20.0, 5, &load_of(&[("1", 1)]));
        h.queue().states.insert(
            job,
            JobState::Failed {
                reason: "TIMEOUT".into(),
            },
        );
        let ended = h.step_at(30.0, 5, &none);
        assert_eq!(ended[0].reason, "TIMEOUT");
        assert_eq!(h.submits(), 3);

        // So is one, however young, whose managers are still connected
        // when the scheduler reports it ended (the broker sees the end later).
        let job = h.blocks.status()[0].job_id.clone();
        h.step_at(31.0, 5, &load_of(&[("2", 1)]));
        h.queue().states.insert(job, JobState::Completed);
        let ended = h.step_at(36.0, 5, &load_of(&[("2", 1)]));
        assert_eq!(ended[0].block_id, "2");
        assert_eq!(h.submits(), 4);
    }

    #[test]
    fn finished_blocks_files_are_pruned_but_never_a_live_blocks() {
        let mut h = Harness::new(SCALING);
        h.blocks.setup.keep_finished = 0;
        h.step_at(0.0, 30, &Load::default());
        let blocks_dir = h.dir.path().join("blocks");
        let script = |id: &str| blocks_dir.join(format!("block-{id}.sh"));
        let first: Vec<String> = h.queue().submits.clone();
        assert_eq!(first, ["0", "1", "2"]);
        assert!(first.iter().all(|id| script(id).exists()));
        // Blocks 1 and 2 end; block 0, the oldest, still runs.
        h.queue().states.insert("1002".into(), JobState::Completed);
        h.queue().states.insert(
            "1003".into(),
            JobState::Failed {
                reason: "TIMEOUT".into(),
            },
        );
        let ended = h.step_at(20.0, 30, &Load::default());
        assert_eq!(ended.len(), 2);
        assert!(!script("1").exists() && !script("2").exists());
        let live: Vec<String> = h.blocks.status().into_iter().map(|b| b.block_id).collect();
        assert!(live.contains(&"0".to_string()), "{live:?}");
        for id in &live {
            assert!(script(id).exists(), "live block {id} lost its script");
        }
        // Stopping cancels every block: then they are all finished.
        h.blocks.cancel_all(&h.clock);
        assert_eq!(std::fs::read_dir(&blocks_dir).unwrap().count(), 0);
    }

    #[test]
    fn blocks_recorded_by_a_previous_run_are_re_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let old = |block_id: &str, job_id: &str| Record {
            block_id: block_id.into(),
            job_id: job_id.into(),
            submitted_at: 1234.5,
        };
        record::save(
            dir.path(),
            &Saved {
                next_id: 5,
                blocks: vec![old("3", "777"), old("4", "--all")],
            },
        );
        // init_blocks applies to an endpoint with no blocks, not to re-adopted ones.
        let mut h = Harness::in_dir(
            dir,
            Scaling {
                init_blocks: 1,
                ..SCALING
            },
        );
        let status = h.blocks.status();
        assert_eq!(status.len(), 1, "an implausible job id is not re-adopted");
        assert_eq!(
            status[0],
            BlockStatus {
                block_id: "3".into(),
                job_id: "777".into(),
                provider: "fake".into(),
                state: "pending".into(),
                nodes: 2,
                managers: 0,
                workers: 0,
                submitted_at: 1234.5,
                started_at: None,
                deadline: None,
            }
        );
        h.step_at(0.0, 0, &Load::default());
        assert_eq!(h.submits(), 0);
        assert_eq!(h.queue().polls, vec![vec!["777".to_string()]]);
        // New blocks carry on from the recorded next id.
        h.step_at(1.0, 15, &Load::default());
        assert_eq!(h.queue().submits, vec!["5".to_string()]);
        assert_eq!(h.queue().job_names, vec!["hpfaas-test-5".to_string()]);
        let saved = h.saved();
        assert_eq!(saved.next_id, 6);
        let ids: Vec<&str> = saved.blocks.iter().map(|r| r.block_id.as_str()).collect();
        assert_eq!(ids, ["3", "5"]);
    }

    #[test]
    fn an_external_block_is_shown_but_never_polled_counted_or_cancelled() {
        let mut h = Harness::new(SCALING);
        let mut load = load_of(&[("user-7", 2)]);
        load.blocks[0].job_id = Some("999".into());
        load.blocks[0].deadline = Some(UNIX_START + 3600.0);
        h.step_at(10.0, 0, &load);
        let external = BlockStatus {
            block_id: "user-7".into(),
            job_id: "999".into(),
            provider: "external".into(),
            state: "running".into(),
            nodes: 2,
            managers: 2,
            workers: 0,
            submitted_at: UNIX_START + 10.0,
            started_at: Some(UNIX_START + 10.0),
            deadline: Some(UNIX_START + 3600.0),
        };
        assert_eq!(h.blocks.status(), vec![external.clone()]);
        // Idle far past max_idletime: still ours to show, not to cancel;
        // first seen stays when it was first seen; draining shows.
        load.blocks[0].draining = true;
        h.step_at(500.0, 0, &load);
        assert_eq!(
            h.blocks.status(),
            vec![BlockStatus {
                state: "draining".into(),
                ..external
            }]
        );
        assert!(h.queue().cancels.is_empty() && h.queue().polls.is_empty());
        // It does not count as one of ours: work still gets a block of our own.
        h.step_at(501.0, 5, &load);
        assert_eq!(h.submits(), 1);
        assert_eq!(h.saved().blocks.len(), 1, "blocks.json holds only ours");
        // Gone from the broker's view, gone from the status.
        h.step_at(502.0, 5, &Load::default());
        let ids: Vec<String> = h.blocks.status().into_iter().map(|b| b.block_id).collect();
        assert_eq!(ids, ["0"]);
    }

    #[test]
    fn a_cancelled_block_is_forgotten() {
        let mut h = Harness::with_init_blocks(2);
        h.step_at(0.0, 0, &Load::default());
        assert_eq!(h.submits(), 2);
        let busy = |in_hand| {
            let mut load = load_of(&[("0", 1), ("1", 1)]);
            load.blocks[1].in_hand = in_hand;
            load
        };
        h.step_at(30.0, 0, &busy(1));
        // Block 0 has been idle for a minute, block 1 only since 40 s.
        h.step_at(40.0, 0, &busy(0));
        assert!(h.queue().cancels.is_empty());
        h.step_at(60.0, 0, &busy(0));
        assert_eq!(h.queue().cancels, vec![vec!["1001".to_string()]]);
        let saved = h.saved();
        assert_eq!(saved.blocks.len(), 1);
        assert_eq!(saved.blocks[0].block_id, "1");
        // Its job is polled no more, though it still runs; while its manager
        // lingers in the broker it shows as someone else's block.
        h.step_at(70.0, 0, &busy(0));
        assert_eq!(h.queue().polls.last().unwrap(), &vec!["1002".to_string()]);
        let status = h.blocks.status();
        let zero = status.iter().find(|b| b.block_id == "0").unwrap();
        assert_eq!(zero.provider, "external");
        // Stopping the endpoint cancels the rest and leaves an empty record.
        h.blocks.cancel_all(&h.clock);
        assert_eq!(h.queue().cancels.last().unwrap(), &vec!["1002".to_string()]);
        assert!(h.saved().blocks.is_empty());
        assert_eq!(h.saved().next_id, 2);
    }

    #[test]
    fn a_provider_error_is_reported_and_the_blocks_kept() {
        let mut h = Harness::with_init_blocks(1);
        h.step_at(0.0, 0, &Load::default());
        assert_eq!(h.blocks.last_error(), None);
        h.queue().refuse_status = Some("squeue: slurm_load_jobs error: timed out".into());
        let ended = h.step_at(5.0, 0, &Load::default());
        assert!(ended.is_empty());
        assert_eq!(
            h.blocks.last_error(),
            Some("fake: squeue: slurm_load_jobs error: timed out")
        );
        assert_eq!(h.blocks.status().len(), 1, "a failed poll ends no block");
        // The scheduler answers again; the error stays until replaced, as
        // the agent shows the last one.
        h.queue().refuse_status = None;
        h.queue().refuse_submit = Some("sbatch: error: QOSMaxSubmitJobPerUserLimit".into());
        h.step_at(10.0, 15, &Load::default());
        assert_eq!(
            h.blocks.last_error(),
            Some("fake: sbatch: error: QOSMaxSubmitJobPerUserLimit")
        );
    }

    #[test]
    fn the_scheduler_is_asked_each_period_or_when_a_block_loses_its_managers() {
        let mut h = Harness::with_init_blocks(1);
        let polls = |h: &Harness| h.queue().polls.len();
        h.step_at(0.0, 0, &Load::default());
        assert_eq!(polls(&h), 0, "nothing to ask about before the first submit");
        h.step_at(1.0, 0, &Load::default());
        assert_eq!(polls(&h), 1);
        h.step_at(5.9, 0, &load_of(&[("0", 1)]));
        assert_eq!(polls(&h), 1);
        h.step_at(6.0, 0, &load_of(&[("0", 1)]));
        assert_eq!(polls(&h), 2);
        // Its managers left: ask now, not at 11 s.
        h.step_at(7.0, 0, &Load::default());
        assert_eq!(polls(&h), 3);
        h.step_at(8.0, 0, &Load::default());
        assert_eq!(polls(&h), 3);
    }

    /// (kind, block, message) of the events since the last call.
    fn events(h: &mut Harness) -> Vec<(EventKind, Option<String>, String)> {
        h.blocks
            .take_events()
            .into_iter()
            .map(|e| (e.kind, e.block_id, e.message))
            .collect()
    }

    #[test]
    fn each_turn_of_a_blocks_life_is_an_event_with_the_schedulers_words() {
        let mut h = Harness::new(SCALING);
        let none = Load::default();
        h.queue().refuse_submit = Some("sbatch: error: invalid partition specified: nope".into());
        h.step_at(0.0, 5, &none);
        let seen = events(&mut h);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, EventKind::BlockFailed);
        assert_eq!(seen[0].1.as_deref(), Some("0"));
        assert!(
            seen[0].2.contains("invalid partition specified: nope"),
            "{seen:?}"
        );

        h.queue().refuse_submit = None;
        h.step_at(1.0, 5, &none);
        let seen = events(&mut h);
        assert_eq!(seen[0].0, EventKind::BlockSubmitted, "{seen:?}");
        let job = h.blocks.status()[0].job_id.clone();
        assert!(seen[0].2.contains(&job), "{seen:?}");

        // Its manager connects: running once, however many steps see it.
        let mut load = load_of(&[("1", 1)]);
        load.blocks[0].workers = 4;
        h.step_at(20.0, 5, &load);
        h.step_at(21.0, 5, &load);
        let seen = events(&mut h);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, EventKind::BlockRunning);
        let status = &h.blocks.status()[0];
        assert_eq!(status.started_at, Some(UNIX_START + 20.0));
        assert_eq!(status.workers, 4);
        load.blocks[0].draining = true;
        h.step_at(22.0, 5, &load);
        assert_eq!(events(&mut h)[0].0, EventKind::BlockDraining);

        // The scheduler says it failed: the reason is the scheduler's.
        h.queue().states.insert(
            job,
            JobState::Failed {
                reason: "NODE_FAIL".into(),
            },
        );
        h.step_at(30.0, 5, &none);
        let seen = events(&mut h);
        assert!(
            seen.contains(&(EventKind::BlockFailed, Some("1".into()), "NODE_FAIL".into())),
            "{seen:?}"
        );
        // A failed status query, then a stop.
        h.queue().refuse_status = Some("squeue: timed out".into());
        h.step_at(40.0, 5, &none);
        h.step_at(50.0, 5, &none);
        let errors = events(&mut h)
            .into_iter()
            .filter(|e| e.0 == EventKind::SchedulerError)
            .collect::<Vec<_>>();
        assert_eq!(errors.len(), 1, "one event while it stays down: {errors:?}");
        assert!(errors[0].2.contains("squeue: timed out"), "{errors:?}");
        let live: Vec<String> = h.blocks.status().into_iter().map(|b| b.block_id).collect();
        h.blocks.cancel_all(&h.clock);
        let cancelled: Vec<Option<String>> = events(&mut h)
            .into_iter()
            .filter(|e| e.0 == EventKind::BlockCancelled)
            .map(|e| e.1)
            .collect();
        assert_eq!(cancelled, live.into_iter().map(Some).collect::<Vec<_>>());
    }
}
