//! A worker slot: the life of one warm Python worker, as the manager runs it.
//!
//! A [`Slot`] runs as a task of its own and the manager holds its
//! [`SlotHandle`]. The slot starts its worker ahead of the first task, hands
//! it each job, writes the next small job into its pipe while the current one
//! runs (so the worker goes straight on to it), and awaits each answer: past
//! its walltime the worker is killed (`TaskTimeout`); a worker that dies fails
//! its task with `WorkerLost`, and the jobs waiting in its pipe go to a fresh
//! one. Retiring the worker is the one place its pid is cleared. The slot
//! publishes that pid and the task its worker runs, so the manager can kill
//! the worker to cancel that task.

use std::collections::{HashSet, VecDeque};
use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::task::{now_unix, ExceptionInfo, Outcome, Placement, TaskOutput, TaskResult};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::worker::{
    parse_reply, start_ended_by_sigterm, Ended, PythonJob, RequestPipe, Worker, WorkerSettings,
    WriteError,
};

/// A task's outcome from a slot, and whether its worker was killed by a
/// SIGTERM from outside (a batch system ending the job signals every
/// process; the manager then waits for its own SIGTERM before reporting).
#[derive(Debug)]
pub struct Done {
    /// The slot that ran the task.
    pub slot: usize,
    /// The outcome.
    pub result: TaskResult,
    /// The worker died of SIGTERM while running or starting for this task.
    pub killed_by_sigterm: bool,
}

impl Done {
    /// A result not caused by a worker's death.
    pub fn new(slot: usize, result: TaskResult) -> Done {
        Done {
            slot,
            result,
            killed_by_sigterm: false,
        }
    }
}

/// Requests up to this size are written into a busy worker's pipe behind
/// its running task, so it starts the next one without waiting for the
/// manager; a larger one waits until the worker has answered (it could
/// fill the pipe while the worker's own large answer fills the other).
const PIPELINED_REQUEST_BYTES: usize = 32 * 1024;

/// What a slot and its manager share.
#[derive(Debug, Default)]
struct Shared {
    /// Pid of the slot's worker process while there is one, 0 otherwise.
    pid: AtomicU32,
    /// Which task the worker runs, and which to skip. One lock for both,
    /// taken by the slot when its worker moves to another task and by the
    /// manager when it cancels one, so the manager never kills a worker that
    /// has moved on.
    tasks: Mutex<Tasks>,
}

#[derive(Debug, Default)]
struct Tasks {
    /// The task the slot's worker is running (or starting up for).
    running: Option<Uuid>,
    /// Tasks handed to the slot to report cancelled instead of running.
    skip: HashSet<Uuid>,
}

impl Shared {
    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `task_id` was cancelled while it waited (forgotten by this call).
    fn take_skip(&self, task_id: Uuid) -> bool {
        self.tasks().skip.remove(&task_id)
    }

    fn set_running(&self, task_id: Option<Uuid>) {
        self.tasks().running = task_id;
    }

    /// The worker goes on to `next`, the task waiting behind the one that
    /// ended (if any); `next` again if it was cancelled while it waited.
    fn move_on(&self, next: Option<Uuid>) -> Option<Uuid> {
        let mut tasks = self.tasks();
        tasks.running = next;
        next.filter(|id| tasks.skip.remove(id))
    }
}

/// A task written to the worker: the job and when it started (`None` while
/// it waits in the pipe behind the running one).
struct InPipe {
    job: PythonJob,
    started: Option<Instant>,
}

/// What ended the wait for the running task's answer.
enum Answer {
    Frame(std::io::Result<Vec<u8>>),
    Timeout,
    /// The manager's results channel is gone.
    Closed,
}

/// One slot's worker and the jobs it holds, served until the manager closes
/// the slot's channel.
pub struct Slot {
    index: usize,
    settings: Arc<WorkerSettings>,
    jobs: mpsc::UnboundedReceiver<PythonJob>,
    /// False once the manager closed `jobs`: the slot finishes what it holds.
    jobs_open: bool,
    done: mpsc::UnboundedSender<Done>,
    shared: Arc<Shared>,
    worker: Option<Worker>,
    /// Taken from `jobs` but not written to a worker yet.
    held: VecDeque<PythonJob>,
    /// Written to the worker, the running task first.
    pipe: VecDeque<InPipe>,
    /// Pause after a worker failed to start, doubled each time up to 5 s.
    backoff: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl Slot {
    /// Runs jobs one after another, each on the worker, until the manager
    /// closes the channel; then stops the worker.
    async fn serve(mut self) {
        self.warm_up().await;
        loop {
            let flow = if self.pipe.is_empty() {
                match self.next_job().await {
                    Some(job) => self.begin(job).await,
                    None => break,
                }
            } else {
                let answer = self.await_answer().await;
                self.settle(answer).await
            };
            if flow.is_break() {
                break;
            }
        }
        if let Some(worker) = self.retire() {
            worker.stop().await;
        }
    }

    /// Warm from the start, as the manager's slots promise: a worker started
    /// on its slot's first task made that task wait for an interpreter (the
    /// second worker of a fresh block began ~110 ms after the first). If it
    /// cannot start, the first task tries again and fails with the cause.
    async fn warm_up(&mut self) {
        if let Err(e) = self.start_worker().await {
            tracing::warn!(
                "slot {}: the worker did not start ahead of its first task: {e}",
                self.index
            );
        }
    }

    /// Starts a worker, publishing its pid as soon as the process exists.
    async fn start_worker(&mut self) -> std::io::Result<()> {
        let shared = &self.shared;
        let started = Worker::start(self.index, &self.settings, |pid| {
            shared.pid.store(pid, Ordering::SeqCst)
        })
        .await;
        match started {
            Ok(worker) => {
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                // The process may have existed: its pid must not stay published.
                drop(self.retire());
                Err(e)
            }
        }
    }

    /// Takes the worker out of service: the one place its pid is cleared,
    /// before the caller ends it, so the manager never kills a process this
    /// slot has let go of (or another that reuses its pid).
    fn retire(&mut self) -> Option<Worker> {
        self.shared.pid.store(0, Ordering::SeqCst);
        self.worker.take()
    }

    /// Retires the worker that ran the task just answered and kills it; its
    /// pid and how it ended.
    async fn kill_worker(&mut self) -> (u32, Ended) {
        let worker = self
            .retire()
            .expect("a task was answered, so a worker ran it");
        worker.kill().await
    }

    /// The next job for an idle worker: one held back, else the manager's
    /// next; `None` once the manager has closed the channel.
    async fn next_job(&mut self) -> Option<PythonJob> {
        if let Some(job) = self.held.pop_front() {
            return Some(job);
        }
        if !self.jobs_open {
            return None;
        }
        self.jobs.recv().await
    }

    /// Hands `job` to the idle worker, starting a worker first if there is
    /// none; `Break` once the manager's results channel is gone.
    async fn begin(&mut self, job: PythonJob) -> ControlFlow<()> {
        let task_id = job.spec.task_id;
        if self.shared.take_skip(task_id) {
            return self.report(cancelled_before_start(task_id), false);
        }
        // A worker that died while idle (killed to cancel a task that had
        // just finished, say) is replaced before it can fail this task.
        if self.worker.as_mut().is_some_and(Worker::has_exited) {
            drop(self.retire());
        }
        self.shared.set_running(Some(task_id));
        if self.worker.is_none() {
            if let Err(e) = self.start_worker().await {
                return self.failed_to_start(task_id, e).await;
            }
            self.backoff = FIRST_BACKOFF;
        }
        let worker = self.worker.as_mut().expect("started above");
        match worker.requests.send(&job, &self.settings).await {
            Ok(()) => {}
            Err(WriteError::Refused(e)) => {
                self.shared.set_running(None);
                return self.report(TaskResult::failed(task_id, e), false);
            }
            // Its death is read from its stdout next.
            Err(WriteError::Broken(e)) => {
                tracing::debug!("slot {}: cannot write to the worker: {e}", self.index)
            }
        }
        self.pipe.push_back(InPipe {
            job,
            started: Some(Instant::now()),
        });
        Continue(())
    }

    /// Fails task `task_id`, whose worker could not start, and pauses before
    /// the next attempt.
    async fn failed_to_start(&mut self, task_id: Uuid, e: std::io::Error) -> ControlFlow<()> {
        self.shared.set_running(None);
        let message = format!(
            "cannot start a Python worker {}: {e}",
            self.settings.describe()
        );
        tracing::error!("{message}");
        let result = TaskResult::failed(
            task_id,
            ExceptionInfo::system(SystemFailure::WorkerLost, message),
        );
        self.report(result, start_ended_by_sigterm(&e))?;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        Continue(())
    }

    /// Waits for the answer to the running task, or its walltime; meanwhile
    /// writes the manager's next job into the worker's pipe.
    async fn await_answer(&mut self) -> Answer {
        let running = self.pipe.front_mut().expect("a task is in the pipe");
        // A malformed walltime was refused by the broker; none means no limit.
        let walltime = running.job.spec.walltime().ok().flatten();
        let started = *running.started.get_or_insert_with(Instant::now);
        let deadline = walltime.map(|w| started + Duration::from_secs_f64(w));
        // Held here while its reply is awaited, so that jobs can be written
        // into it meanwhile; back in the slot before anything else sees it.
        let mut worker = self.worker.take().expect("a task is in the pipe");
        let answer = {
            let reply = worker.replies.next();
            tokio::pin!(reply);
            loop {
                tokio::select! {
                    frame = &mut reply => break Answer::Frame(frame),
                    _ = sleep_until(deadline) => break Answer::Timeout,
                    job = self.jobs.recv(),
                        if self.jobs_open && self.pipe.len() < 2 && self.held.is_empty() =>
                    {
                        let Some(job) = job else {
                            // Closed: the manager is going; the running task ends first.
                            self.jobs_open = false;
                            continue;
                        };
                        if self.pipeline(&mut worker.requests, job).await.is_break() {
                            break Answer::Closed;
                        }
                    }
                }
            }
        };
        self.worker = Some(worker);
        answer
    }

    /// Writes `job` into the busy worker's pipe behind its running task, or
    /// holds it until the worker is idle if it is large or the worker gone.
    async fn pipeline(&mut self, requests: &mut RequestPipe, job: PythonJob) -> ControlFlow<()> {
        let task_id = job.spec.task_id;
        if self.shared.take_skip(task_id) {
            return self.report(cancelled_before_start(task_id), false);
        }
        if job.request_size() > PIPELINED_REQUEST_BYTES {
            self.held.push_back(job);
            return Continue(());
        }
        match requests.send(&job, &self.settings).await {
            Ok(()) => self.pipe.push_back(InPipe { job, started: None }),
            Err(WriteError::Refused(e)) => {
                return self.report(TaskResult::failed(task_id, e), false)
            }
            // The worker is gone: the job runs on its successor.
            Err(WriteError::Broken(e)) => {
                tracing::debug!("slot {}: cannot write to the worker: {e}", self.index);
                self.held.push_back(job);
            }
        }
        Continue(())
    }

    /// Reports the running task's outcome and moves the worker on to the
    /// task behind it; a task cancelled while it waited there is stopped
    /// with the worker, as a cancelled running task is.
    async fn settle(&mut self, answer: Answer) -> ControlFlow<()> {
        let ended = self.pipe.pop_front().expect("a task is in the pipe");
        let ((outcome, output), killed_by_sigterm) = match answer {
            Answer::Closed => {
                self.pipe.push_front(ended);
                return Break(());
            }
            Answer::Frame(frame) => self.outcome(&ended, frame).await,
            Answer::Timeout => ((self.time_out(&ended).await, None), false),
        };
        if self.worker.is_none() {
            // Tasks still in the dead worker's pipe had not started: they run
            // on its successor, in order.
            self.requeue_pipe();
        }
        // The manager adds where this slot is (block, manager, host).
        let placement = ended.started.map(|at| {
            Box::new(Placement {
                started_at: now_unix() - at.elapsed().as_secs_f64(),
                worker: self.index as u32,
                ..Placement::default()
            })
        });
        let result = |outcome| TaskResult {
            task_id: ended.job.spec.task_id,
            outcome,
            output,
            completed_at: now_unix(),
            placement,
        };
        let next = self.pipe.front().map(|next| next.job.spec.task_id);
        if let Some(cancelled) = self.shared.move_on(next) {
            if let Some(worker) = self.retire() {
                worker.kill().await;
            }
            self.pipe.pop_front();
            self.requeue_pipe();
            self.shared.set_running(None);
            self.report(result(outcome), killed_by_sigterm)?;
            return self.report(cancelled_before_start(cancelled), false);
        }
        if let Some(next) = self.pipe.front_mut() {
            next.started = Some(Instant::now());
        }
        self.report(result(outcome), killed_by_sigterm)
    }

    /// The outcome of task `ended` and what it printed, from its answer
    /// frame, or from the worker's death; and whether SIGTERM killed the worker.
    async fn outcome(
        &mut self,
        ended: &InPipe,
        frame: std::io::Result<Vec<u8>>,
    ) -> ((Outcome, Option<Box<TaskOutput>>), bool) {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                let (pid, how) = self.kill_worker().await;
                let message =
                    format!("worker process {pid} died while running this task ({how}): {e}");
                tracing::warn!("slot {}: {message}", self.index);
                return ((lost(message), None), how.by_sigterm);
            }
        };
        match parse_reply(&frame, ended.job.spec.task_id) {
            Ok(reply) => (reply, false),
            Err(e) => {
                let (pid, _) = self.kill_worker().await;
                (
                    (
                        lost(format!("worker process {pid} broke the protocol: {e}")),
                        None,
                    ),
                    false,
                )
            }
        }
    }

    /// Kills the worker of task `ended`, which is past its walltime (the next
    /// job starts a fresh one), and says why: not `WorkerLost`, so the task
    /// is not retried.
    async fn time_out(&mut self, ended: &InPipe) -> Outcome {
        let (pid, _) = self.kill_worker().await;
        let walltime = ended.job.spec.walltime().ok().flatten();
        let ran = ended.started.map_or(0.0, |at| at.elapsed().as_secs_f64());
        let message = format!(
            "the task exceeded its walltime of {} s and was killed after {ran:.1} s \
             (worker process {pid})",
            walltime.unwrap_or_default(),
        );
        tracing::warn!(
            "slot {}: task {}: {message}",
            self.index,
            ended.job.spec.task_id
        );
        Outcome::Failed {
            exception: ExceptionInfo::system(SystemFailure::TaskTimeout, message),
        }
    }

    /// Puts the jobs written to a worker that is gone back in front of the
    /// held ones, in order: none of them started.
    fn requeue_pipe(&mut self) {
        while let Some(waiting) = self.pipe.pop_back() {
            self.held.push_front(waiting.job);
        }
    }

    /// Sends a result to the manager; `Break` once it has stopped listening.
    fn report(&self, result: TaskResult, killed_by_sigterm: bool) -> ControlFlow<()> {
        let done = Done {
            slot: self.index,
            result,
            killed_by_sigterm,
        };
        match self.done.send(done) {
            Ok(()) => Continue(()),
            Err(_) => Break(()),
        }
    }
}

/// How the manager's cancellation of a Python task held by a slot went.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopping {
    /// The task waits in the slot: the slot reports it cancelled instead of
    /// running it.
    Skipped,
    /// The task runs but its worker process does not exist yet (a moment's
    /// window): it runs, and is reported cancelled.
    NoWorker,
    /// The worker running the task, this pid, was sent SIGKILL.
    Killed(u32),
}

/// What a manager holds of one slot: the way to hand it jobs and cancel
/// them, and which tasks it has.
pub struct SlotHandle {
    index: usize,
    jobs: mpsc::UnboundedSender<PythonJob>,
    shared: Arc<Shared>,
    serving: tokio::task::JoinHandle<()>,
    /// The task the slot runs: a Python task on its worker, or a shell or
    /// MPI command; `None` for an idle slot.
    pub running: Option<Uuid>,
    /// A Python task handed to the slot behind its running one: the slot
    /// writes it into the worker's pipe, so the worker starts it the moment
    /// the first ends instead of after a round trip through the manager.
    pub next: Option<Uuid>,
}

/// What a result meant to the slot it came from.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// The slot's running task; the one handed behind it, if any, runs now.
    Ran {
        /// The task that went on from behind.
        next: Option<Uuid>,
    },
    /// The task handed behind the running one, ended before it started
    /// (cancelled meanwhile, or refused).
    Waited,
    /// Not this slot's any more (a command cancelled after it finished but
    /// before its result was read): the result was reported already.
    Unknown,
}

impl SlotHandle {
    /// Starts slot `index` as a task of its own; its results go to `done`.
    pub fn spawn(
        index: usize,
        settings: Arc<WorkerSettings>,
        done: mpsc::UnboundedSender<Done>,
    ) -> SlotHandle {
        let (jobs_tx, jobs) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let slot = Slot {
            index,
            settings,
            jobs,
            jobs_open: true,
            done,
            shared: shared.clone(),
            worker: None,
            held: VecDeque::new(),
            pipe: VecDeque::new(),
            backoff: FIRST_BACKOFF,
        };
        SlotHandle {
            index,
            jobs: jobs_tx,
            shared,
            serving: tokio::spawn(slot.serve()),
            running: None,
            next: None,
        }
    }

    /// Hands the slot a Python job; the job's failure if the slot has stopped.
    pub fn hand(&self, job: PythonJob) -> Result<(), TaskResult> {
        let task_id = job.spec.task_id;
        self.jobs.send(job).map_err(|_| {
            let e = ExceptionInfo::system(SystemFailure::WorkerLost, "worker slot stopped");
            TaskResult::failed(task_id, e)
        })
    }

    /// Takes note that task `task_id` of this slot ended.
    pub fn finished(&mut self, task_id: Uuid) -> Finished {
        let finished = if self.running == Some(task_id) {
            // The slot goes straight on to the task handed to it behind this one.
            self.running = self.next.take();
            Finished::Ran { next: self.running }
        } else if self.next == Some(task_id) {
            self.next = None;
            Finished::Waited
        } else {
            return Finished::Unknown;
        };
        self.shared.take_skip(task_id);
        finished
    }

    /// Stops Python task `task_id` of this slot: kills the worker running
    /// it, or has the slot skip it if it waits.
    pub fn cancel(&self, task_id: Uuid) -> Stopping {
        // Under the slot's lock: its worker cannot move on to another task
        // between this check and the kill.
        let mut tasks = self.shared.tasks();
        if tasks.running != Some(task_id) {
            // Waiting in the slot, or finished meanwhile: the slot stops it
            // before it runs.
            tasks.skip.insert(task_id);
            tracing::info!(
                "task {task_id} cancelled while waiting in slot {}; \
                 stopped when the worker reaches it",
                self.index
            );
            return Stopping::Skipped;
        }
        let pid = self.shared.pid.load(Ordering::SeqCst);
        if pid == 0 {
            tracing::warn!("task {task_id} cancelled before its worker existed");
            return Stopping::NoWorker;
        }
        tracing::info!("cancelling task {task_id}: killing worker process {pid}");
        // SAFETY: kill(2) on the worker process this slot started, which
        // the slot has not retired (its pid is cleared first).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        Stopping::Killed(pid)
    }

    /// Closes the slot's channel: it finishes the jobs it holds, stops its
    /// worker and ends. Await the returned task to wait for that.
    pub fn close(self) -> tokio::task::JoinHandle<()> {
        self.serving
    }
}

fn lost(message: String) -> Outcome {
    Outcome::Failed {
        exception: ExceptionInfo::system(SystemFailure::WorkerLost, message),
    }
}

/// The result of a task cancelled before its worker started it (the
/// manager reports it as `TaskCancelled`).
fn cancelled_before_start(task_id: Uuid) -> TaskResult {
    TaskResult::failed(
        task_id,
        ExceptionInfo::system(SystemFailure::TaskCancelled, "cancelled before it started"),
    )
}

/// Sleeps until `deadline` (never returns when there is none).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpfaas_protocol::payload::{pack, STRATEGY_JSON};
    use hpfaas_protocol::task::TaskSpec;

    /// Generous: a worker is an interpreter starting on a loaded machine.
    const PATIENCE: Duration = Duration::from_secs(60);

    /// Settings for real Python workers, with the runtime installed in a
    /// directory that is removed with the returned guard.
    fn python() -> (tempfile::TempDir, Arc<WorkerSettings>) {
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-slot-test-")
            .tempdir()
            .unwrap();
        let runtime_dir = super::super::runtime::install(&dir.path().join("runtime")).unwrap();
        let settings = WorkerSettings {
            python: "python3".into(),
            runtime_dir,
            count: 1,
            placements: Vec::new(),
            sandbox_root: None,
            container: None,
            output_limit: 64,
        };
        (dir, Arc::new(settings))
    }

    /// Settings whose interpreter does not exist: no worker ever starts.
    fn no_python() -> Arc<WorkerSettings> {
        Arc::new(WorkerSettings {
            python: "/nonexistent/hpfaas-slot-test/python3".into(),
            runtime_dir: "/nonexistent/hpfaas-slot-test".into(),
            count: 1,
            placements: Vec::new(),
            sandbox_root: None,
            container: None,
            output_limit: 64,
        })
    }

    /// A Python function: its id and packed source (`st` strategy).
    fn function(name: &str, source: &str) -> (Uuid, Arc<str>) {
        let code = pack(&[format!("st\n{name}:{source}")]);
        (Uuid::new_v4(), code.into())
    }

    /// A call of `function` with these JSON `args`, answered in JSON.
    fn job(function: &(Uuid, Arc<str>), args: &str, resource_spec: Option<&str>) -> PythonJob {
        PythonJob {
            spec: TaskSpec {
                task_id: Uuid::new_v4(),
                function_id: function.0,
                payload: pack(&[
                    format!("{STRATEGY_JSON}{args}"),
                    format!("{STRATEGY_JSON}{{}}"),
                ]),
                blob: None,
                result_serializers: vec![STRATEGY_JSON.into()],
                resource_spec: resource_spec.map(Into::into),
            },
            code: function.1.clone(),
        }
    }

    async fn next_done(done: &mut mpsc::UnboundedReceiver<Done>) -> Done {
        tokio::time::timeout(PATIENCE, done.recv())
            .await
            .expect("a result within the deadline")
            .expect("the slot is serving")
    }

    fn result_of(done: &Done) -> &str {
        match &done.result.outcome {
            Outcome::Success { result } => result,
            Outcome::Failed { exception } => panic!("task failed: {exception:?}"),
        }
    }

    /// The exception of a task that failed as `failure`.
    fn failed_as(done: &Done, failure: SystemFailure) -> &ExceptionInfo {
        match &done.result.outcome {
            Outcome::Failed { exception } if failure.is(&exception.exc_type) => exception,
            other => panic!(
                "task {} did not fail as {failure}: {other:?}",
                done.result.task_id
            ),
        }
    }

    fn add() -> (Uuid, Arc<str>) {
        function("add", "def add(a, b):\n    return a + b\n")
    }

    /// A slot with a real worker, warm, and the guard of its runtime.
    struct Warm {
        dir: tempfile::TempDir,
        handle: SlotHandle,
        done: mpsc::UnboundedReceiver<Done>,
        /// The worker's pid.
        pid: u32,
    }

    async fn warm_slot() -> Warm {
        let (dir, settings) = python();
        let (done_tx, done) = mpsc::unbounded_channel();
        let handle = SlotHandle::spawn(0, settings, done_tx);
        let pid = worker_pid(&handle).await;
        Warm {
            dir,
            handle,
            done,
            pid,
        }
    }

    /// The slot's published worker pid, once there is one.
    async fn worker_pid(handle: &SlotHandle) -> u32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match handle.shared.pid.load(Ordering::SeqCst) {
                0 if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                0 => panic!("the slot published no worker pid"),
                pid => return pid,
            }
        }
    }

    /// Waits for `path` to exist (a task's sign that it runs).
    async fn until_exists(path: &std::path::Path) {
        let deadline = Instant::now() + PATIENCE;
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn process_exists(pid: u32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as i32, 0) == 0 }
    }

    /// A handle as the manager holds one, over a slot that has stopped.
    fn stopped_handle() -> SlotHandle {
        let (jobs, _) = mpsc::unbounded_channel();
        SlotHandle {
            index: 3,
            jobs,
            shared: Arc::default(),
            serving: tokio::spawn(async {}),
            running: None,
            next: None,
        }
    }

    #[tokio::test]
    async fn a_slot_runs_tasks_on_one_warm_worker_and_clears_its_pid_when_closed() {
        let mut slot = warm_slot().await;
        let add = add();
        slot.handle.hand(job(&add, "[1, 2]", None)).unwrap();
        slot.handle.hand(job(&add, "[20, 3]", None)).unwrap();
        let first = next_done(&mut slot.done).await;
        let second = next_done(&mut slot.done).await;
        assert_eq!((first.slot, result_of(&first)), (0, "11\n3"));
        assert_eq!(result_of(&second), "11\n23");
        // Each result says when it started on this slot's worker.
        for done in [&first, &second] {
            let placement = done.result.placement.as_ref().expect("a placement");
            assert_eq!(placement.worker, 0);
            assert!(placement.started_at > 0.0);
            assert!(placement.started_at <= done.result.completed_at);
        }
        assert!(
            first.result.placement.as_ref().unwrap().started_at
                <= second.result.placement.as_ref().unwrap().started_at
        );
        let shared = slot.handle.shared.clone();
        assert_eq!(
            shared.pid.load(Ordering::SeqCst),
            slot.pid,
            "one warm worker"
        );
        tokio::time::timeout(PATIENCE, slot.handle.close())
            .await
            .expect("the slot stops")
            .unwrap();
        assert_eq!(shared.pid.load(Ordering::SeqCst), 0);
        assert!(!process_exists(slot.pid), "the worker outlived its slot");
    }

    #[tokio::test]
    async fn past_its_walltime_a_task_fails_as_timeout_and_the_next_gets_a_fresh_worker() {
        let mut slot = warm_slot().await;
        let nap = function(
            "nap",
            "def nap(s):\n    import time\n    time.sleep(s)\n    return s\n",
        );
        let walltime = Some(r#"{"walltime": 0.5}"#);
        slot.handle.hand(job(&nap, "[600]", walltime)).unwrap();
        let timed_out = next_done(&mut slot.done).await;
        let exception = failed_as(&timed_out, SystemFailure::TaskTimeout);
        assert!(
            exception.message.contains("walltime of 0.5 s"),
            "{exception:?}"
        );
        // Retired before the report: no pid to kill until the next worker.
        assert_eq!(slot.handle.shared.pid.load(Ordering::SeqCst), 0);
        assert!(!process_exists(slot.pid));
        slot.handle.hand(job(&nap, "[0]", None)).unwrap();
        assert_eq!(result_of(&next_done(&mut slot.done).await), "11\n0");
        let second_pid = slot.handle.shared.pid.load(Ordering::SeqCst);
        assert!(second_pid != 0 && second_pid != slot.pid);
    }

    /// The task written behind the one whose worker dies had not started:
    /// it runs on the worker that replaces it.
    #[tokio::test]
    async fn a_dead_worker_fails_its_task_as_lost_and_the_task_behind_runs_on_its_successor() {
        let mut slot = warm_slot().await;
        let die = "def die():\n    import os, time\n    time.sleep(0.3)\n    os._exit(3)\n";
        let dying = job(&function("die", die), "[]", None);
        let dying_id = dying.spec.task_id;
        slot.handle.hand(dying).unwrap();
        slot.handle.hand(job(&add(), "[2, 2]", None)).unwrap();
        let lost = next_done(&mut slot.done).await;
        assert_eq!(lost.result.task_id, dying_id);
        let exception = failed_as(&lost, SystemFailure::WorkerLost);
        let died = format!("{} died while running this task", slot.pid);
        assert!(exception.message.contains(&died), "{exception:?}");
        assert!(!lost.killed_by_sigterm);
        assert_eq!(result_of(&next_done(&mut slot.done).await), "11\n4");
        assert_ne!(slot.handle.shared.pid.load(Ordering::SeqCst), slot.pid);
    }

    /// A task's prints come back with its result, bounded by the settings'
    /// limit (64 bytes here); a worker that dies mid-task takes its task's
    /// output with it, and the task behind reports only its own.
    #[tokio::test]
    async fn a_tasks_output_comes_with_its_result_and_dies_with_its_worker() {
        let mut slot = warm_slot().await;
        let chatty = function(
            "chatty",
            "def chatty(n):\n    import sys\n    print('o' * n)\n    \
             print('err', file=sys.stderr)\n    return n\n",
        );
        let die = "def die():\n    print('last words')\n    import os\n    os._exit(3)\n";
        slot.handle.hand(job(&chatty, "[100]", None)).unwrap();
        slot.handle
            .hand(job(&function("die", die), "[]", None))
            .unwrap();
        slot.handle.hand(job(&chatty, "[3]", None)).unwrap();
        let printed = next_done(&mut slot.done).await;
        assert_eq!(result_of(&printed), "11\n100");
        let output = printed.result.output.clone().expect("the prints came back");
        assert_eq!(output.stdout_dropped, 101 - 64);
        assert!(output.stdout.starts_with(&"o".repeat(32)), "{output:?}");
        assert_eq!(
            (output.stderr.as_str(), output.stderr_dropped),
            ("err\n", 0)
        );
        let lost = next_done(&mut slot.done).await;
        failed_as(&lost, SystemFailure::WorkerLost);
        assert_eq!(lost.result.output, None);
        let after = next_done(&mut slot.done).await;
        assert_eq!(result_of(&after), "11\n3");
        let own = after.result.output.clone().unwrap();
        assert_eq!((own.stdout.as_str(), own.stdout_dropped), ("ooo\n", 0));
    }

    /// A Python function that creates the file `marker` (its sign that it
    /// runs), then waits for the file `release` (at most a minute).
    fn hold() -> (Uuid, Arc<str>) {
        let source = "def hold(marker, release):\n    import os, time\n    \
                      open(marker, 'w').close()\n    deadline = time.time() + 60\n    \
                      while not os.path.exists(release) and time.time() < deadline:\n        \
                      time.sleep(0.01)\n    return 1\n";
        function("hold", source)
    }

    fn hold_args(marker: &std::path::Path, release: &std::path::Path) -> String {
        let path = |p: &std::path::Path| p.display().to_string();
        format!("[{:?}, {:?}]", path(marker), path(release))
    }

    /// A task cancelled while it waits in the worker's pipe is starting the
    /// moment the one before it answers: the worker is stopped with it.
    #[tokio::test]
    async fn a_task_cancelled_in_the_pipe_is_reported_cancelled_and_its_worker_replaced() {
        let mut slot = warm_slot().await;
        let marker = slot.dir.path().join("running");
        let release = slot.dir.path().join("release");
        let running = job(&hold(), &hold_args(&marker, &release), None);
        let waiting = job(&hold(), &hold_args(&marker, &release), None);
        let (running_id, waiting_id) = (running.spec.task_id, waiting.spec.task_id);
        slot.handle.hand(running).unwrap();
        slot.handle.hand(waiting).unwrap();
        // Both were written before the worker could read the first.
        until_exists(&marker).await;
        assert_eq!(slot.handle.cancel(waiting_id), Stopping::Skipped);
        std::fs::write(&release, "").unwrap();
        let first = next_done(&mut slot.done).await;
        assert_eq!(
            (first.result.task_id, result_of(&first)),
            (running_id, "11\n1")
        );
        let second = next_done(&mut slot.done).await;
        assert_eq!(second.result.task_id, waiting_id);
        let exception = failed_as(&second, SystemFailure::TaskCancelled);
        assert_eq!(exception.message, "cancelled before it started");
        assert_eq!(slot.handle.shared.pid.load(Ordering::SeqCst), 0);
        assert!(!process_exists(slot.pid));
    }

    #[tokio::test]
    async fn cancelling_the_running_task_kills_its_worker() {
        let mut slot = warm_slot().await;
        let marker = slot.dir.path().join("running");
        let never = slot.dir.path().join("never");
        let task = job(&hold(), &hold_args(&marker, &never), None);
        let task_id = task.spec.task_id;
        slot.handle.hand(task).unwrap();
        until_exists(&marker).await;
        assert_eq!(slot.handle.cancel(task_id), Stopping::Killed(slot.pid));
        let killed = next_done(&mut slot.done).await;
        assert_eq!(killed.result.task_id, task_id);
        // The manager reports it as cancelled; the slot saw its worker die.
        failed_as(&killed, SystemFailure::WorkerLost);
        assert!(!process_exists(slot.pid));
    }

    /// With no interpreter, a task the slot ran would fail as WorkerLost:
    /// one cancelled before the slot reaches it is never tried.
    #[tokio::test]
    async fn a_task_cancelled_before_its_slot_reaches_it_is_never_tried() {
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let handle = SlotHandle::spawn(0, no_python(), done_tx);
        let task = job(&add(), "[1, 1]", None);
        let task_id = task.spec.task_id;
        assert_eq!(handle.cancel(task_id), Stopping::Skipped);
        handle.hand(task).unwrap();
        let cancelled = next_done(&mut done).await;
        assert_eq!(cancelled.result.task_id, task_id);
        failed_as(&cancelled, SystemFailure::TaskCancelled);
        assert!(!handle.shared.take_skip(task_id), "the skip is used up");
    }

    #[tokio::test]
    async fn a_worker_that_cannot_start_fails_its_task_as_lost_and_leaves_no_pid() {
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let handle = SlotHandle::spawn(0, no_python(), done_tx);
        handle.hand(job(&add(), "[1, 1]", None)).unwrap();
        let failed = next_done(&mut done).await;
        let exception = failed_as(&failed, SystemFailure::WorkerLost);
        let named = r#"worker_python = "/nonexistent/hpfaas-slot-test/python3""#;
        assert!(exception.message.contains(named), "{exception:?}");
        assert_eq!(handle.shared.pid.load(Ordering::SeqCst), 0);
        assert_eq!(handle.shared.tasks().running, None);
    }

    #[tokio::test]
    async fn a_stopped_slot_fails_what_it_is_handed_as_worker_lost() {
        let handle = stopped_handle();
        let task = job(&add(), "[1, 1]", None);
        let task_id = task.spec.task_id;
        let failed = Done::new(3, handle.hand(task).unwrap_err());
        assert_eq!(failed.result.task_id, task_id);
        let exception = failed_as(&failed, SystemFailure::WorkerLost);
        assert_eq!(exception.message, "worker slot stopped");
    }

    /// The manager's record of a slot: a result of the running task brings
    /// the one behind it forward; one of the task behind just clears it.
    #[tokio::test]
    async fn results_move_the_task_behind_forward() {
        let mut handle = stopped_handle();
        let [a, b, c] = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        (handle.running, handle.next) = (Some(a), Some(b));
        assert_eq!(handle.finished(c), Finished::Unknown);
        assert_eq!(handle.finished(a), Finished::Ran { next: Some(b) });
        assert_eq!((handle.running, handle.next), (Some(b), None));
        assert_eq!(handle.finished(b), Finished::Ran { next: None });
        assert_eq!((handle.running, handle.next), (None, None));

        (handle.running, handle.next) = (Some(a), Some(b));
        // Cancelled while waiting: the slot reports it, and the skip is forgotten.
        assert_eq!(handle.cancel(b), Stopping::Skipped);
        assert_eq!(handle.finished(b), Finished::Waited);
        assert_eq!((handle.running, handle.next), (Some(a), None));
        assert!(!handle.shared.take_skip(b));
    }

    /// Between a task's start and its worker's spawn there is no pid: nothing
    /// is killed (least of all pid 0, the caller's process group).
    #[tokio::test]
    async fn cancelling_a_task_whose_worker_does_not_exist_yet_kills_nothing() {
        let handle = stopped_handle();
        let task_id = Uuid::new_v4();
        handle.shared.set_running(Some(task_id));
        assert_eq!(handle.cancel(task_id), Stopping::NoWorker);
        assert!(
            !handle.shared.take_skip(task_id),
            "a running task is not skipped"
        );
    }

    /// The slot's side of the shared record: moving on to a task cancelled
    /// while it waited returns it, once.
    #[test]
    fn moving_on_to_a_cancelled_task_says_so_once() {
        let shared = Shared::default();
        let [a, b] = [Uuid::new_v4(), Uuid::new_v4()];
        shared.tasks().skip.insert(b);
        assert_eq!(shared.move_on(Some(a)), None);
        assert_eq!(shared.tasks().running, Some(a));
        assert_eq!(shared.move_on(Some(b)), Some(b));
        assert_eq!(shared.tasks().running, Some(b));
        assert_eq!(shared.move_on(Some(b)), None);
        assert_eq!(shared.move_on(None), None);
        assert_eq!(shared.tasks().running, None);
    }
}
