//! One warm Python worker process and the slot it serves.
//!
//! The worker speaks length-prefixed JSON frames over its stdin/stdout
//! (docs/api.md, "Worker pipe protocol"). A slot task owns the process: the
//! worker runs one task at a time, and the slot writes the next small task
//! into its pipe while the current one runs, so the worker goes straight on
//! to it. The slot sends each outcome back to the manager; when the process
//! dies it fails the running task with `WorkerLost`, starts a fresh process
//! and gives it the tasks that were waiting in the dead one's pipe. The slot
//! publishes the pid of its current process and the task it runs, so the
//! manager can kill it to cancel that task.

use hpfaas_protocol::failure::SystemFailure;
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hpfaas_protocol::task::{now_unix, ExceptionInfo, Outcome, TaskResult, TaskSpec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::affinity::Placement;
use super::job_env;

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

/// How a worker process ended, for messages and the SIGTERM check.
#[derive(Debug)]
struct Ended {
    description: String,
    by_sigterm: bool,
}

impl Ended {
    fn of(status: std::process::ExitStatus) -> Ended {
        use std::os::unix::process::ExitStatusExt;
        Ended {
            description: status.to_string(),
            by_sigterm: status.signal() == Some(libc::SIGTERM),
        }
    }

    fn unknown(what: &str) -> Ended {
        Ended {
            description: what.into(),
            by_sigterm: false,
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// A worker that exited before it was ready (carried inside `io::Error`).
#[derive(Debug)]
struct EndedBeforeReady {
    ended: Ended,
    cause: std::io::Error,
}

impl std::fmt::Display for EndedBeforeReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the worker ended before it was ready ({}): {}",
            self.ended, self.cause
        )
    }
}

impl std::error::Error for EndedBeforeReady {}

/// Largest frame a worker may send (a result beyond it fails the task).
const MAX_FRAME: usize = 1 << 30;

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Interpreter, e.g. `python3`.
    pub python: String,
    /// Directory holding the embedded `hpfaas` package.
    pub runtime_dir: PathBuf,
    /// Workers on this manager (exported as `HPFAAS_WORKER_COUNT`).
    pub count: u32,
    /// Each slot's CPUs, `OMP_NUM_THREADS` and accelerator, by slot.
    pub placements: Vec<Placement>,
    /// `engine.run_in_sandbox`: the directory under which each task gets its
    /// own working directory (`<dir>/<task_id>/`); `None` when off.
    pub sandbox_root: Option<PathBuf>,
}

/// A task's own working directory under `root` (`run_in_sandbox`), created.
pub fn sandbox_dir(root: &std::path::Path, task_id: Uuid) -> std::io::Result<PathBuf> {
    let dir = root.join(task_id.to_string());
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A Python task for a slot, with the function's code.
#[derive(Debug)]
pub struct PythonJob {
    /// The task.
    pub spec: TaskSpec,
    /// Packed function code.
    pub code: Arc<str>,
}

#[derive(Serialize)]
struct Request<'a> {
    task_id: Uuid,
    function_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_code: Option<&'a str>,
    result_serializers: &'a [String],
    /// Working directory for this task (`run_in_sandbox`).
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox_dir: Option<&'a str>,
    /// Bytes of blob that follow the payload at the end of the frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    blob: Option<usize>,
}

#[derive(Deserialize)]
struct Reply {
    task_id: Option<Uuid>,
    ok: bool,
    result: Option<String>,
    exception: Option<ExceptionInfo>,
}

#[derive(Deserialize)]
struct Ready {
    ready: bool,
    pid: u32,
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pid: u32,
    known: HashSet<Uuid>,
}

/// Which task a slot's worker is running, and the tasks handed to the slot
/// that were cancelled before they started. One lock for both, taken by the
/// slot when its worker moves to another task and by the manager when it
/// cancels one, so the manager never kills a worker that has moved on.
#[derive(Debug, Default)]
pub struct SlotTasks {
    /// The task the slot's worker is running (or starting up for).
    pub running: Option<Uuid>,
    /// Tasks handed to the slot to report cancelled instead of running.
    pub skip: HashSet<Uuid>,
}

/// Requests up to this size are written into a busy worker's pipe behind
/// its running task, so it starts the next one without waiting for the
/// manager; a larger one waits until the worker has answered (it could
/// fill the pipe while the worker's own large answer fills the other).
const PIPELINED_REQUEST_BYTES: usize = 32 * 1024;

/// A task written to the worker: the job and when it started (`None` while
/// it waits in the pipe behind the running one).
struct InPipe {
    job: PythonJob,
    started: Option<std::time::Instant>,
}

/// Serves one slot until `jobs` closes: runs each job and sends
/// `(slot, result)` to `done`. `pid` holds the pid of the slot's worker
/// process while there is one, 0 otherwise. The manager may hand a slot a
/// second job while its first runs; a small one is written into the
/// worker's pipe at once, so the worker goes on to it without a round trip.
pub async fn serve_slot(
    slot: usize,
    settings: Arc<WorkerSettings>,
    mut jobs: mpsc::UnboundedReceiver<PythonJob>,
    done: mpsc::UnboundedSender<Done>,
    pid: Arc<AtomicU32>,
    tasks: Arc<std::sync::Mutex<SlotTasks>>,
) {
    let slot_tasks = || tasks.lock().unwrap_or_else(|e| e.into_inner());
    let report = |result: TaskResult, killed_by_sigterm: bool| {
        done.send(Done {
            slot,
            result,
            killed_by_sigterm,
        })
        .is_ok()
    };
    // Warm from the start, as the manager's slots promise: a worker started
    // on its slot's first task made that task wait for an interpreter (the
    // second worker of a fresh block began ~110 ms after the first). If it
    // cannot start, the first task tries again and fails with the cause.
    let mut process: Option<Process> = match start(slot, &settings, &pid).await {
        Ok(p) => Some(p),
        Err(e) => {
            pid.store(0, Ordering::SeqCst);
            tracing::warn!("slot {slot}: the worker did not start ahead of its first task: {e}");
            None
        }
    };
    let mut backoff = Duration::from_millis(100);
    // Taken from `jobs` but not written to a worker yet.
    let mut held: VecDeque<PythonJob> = VecDeque::new();
    let mut pipe: VecDeque<InPipe> = VecDeque::new();
    let mut jobs_open = true;
    loop {
        if pipe.is_empty() {
            let job = match held.pop_front() {
                Some(job) => job,
                None if jobs_open => match jobs.recv().await {
                    Some(job) => job,
                    None => break,
                },
                None => break,
            };
            if slot_tasks().skip.remove(&job.spec.task_id) {
                if !report(cancelled_before_start(job.spec.task_id), false) {
                    break;
                }
                continue;
            }
            // A worker that died while idle (killed to cancel a task that had
            // just finished, say) is replaced before it can fail this task.
            if let Some(p) = process.as_mut() {
                if !matches!(p.child.try_wait(), Ok(None)) {
                    pid.store(0, Ordering::SeqCst);
                    process = None;
                }
            }
            slot_tasks().running = Some(job.spec.task_id);
            if process.is_none() {
                match start(slot, &settings, &pid).await {
                    Ok(p) => {
                        backoff = Duration::from_millis(100);
                        process = Some(p);
                    }
                    Err(e) => {
                        pid.store(0, Ordering::SeqCst);
                        slot_tasks().running = None;
                        let killed_by_sigterm = e
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<EndedBeforeReady>())
                            .is_some_and(|ended| ended.ended.by_sigterm);
                        let message = format!(
                            "cannot start a Python worker with worker_python = {:?}: {e}",
                            settings.python
                        );
                        tracing::error!("{message}");
                        let result = TaskResult::failed(
                            job.spec.task_id,
                            ExceptionInfo::system(SystemFailure::WorkerLost, message),
                        );
                        if !report(result, killed_by_sigterm) {
                            break;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let p = process.as_mut().expect("started above");
            match write_request(&mut p.stdin, &mut p.known, &job, &settings).await {
                Ok(()) => pipe.push_back(InPipe {
                    job,
                    started: Some(std::time::Instant::now()),
                }),
                Err(Refused(e)) => {
                    slot_tasks().running = None;
                    if !report(TaskResult::failed(job.spec.task_id, e), false) {
                        break;
                    }
                    continue;
                }
                Err(Broken(e)) => {
                    // Its death is read from its stdout below.
                    tracing::debug!("slot {slot}: cannot write to the worker: {e}");
                    pipe.push_back(InPipe {
                        job,
                        started: Some(std::time::Instant::now()),
                    })
                }
            }
        }

        // Wait for the running task's answer; meanwhile pipeline the next.
        let p = process.as_mut().expect("a task is in the pipe");
        let current = pipe.front().expect("not empty");
        // A malformed walltime was refused by the broker; none means no limit.
        let walltime = current.job.spec.walltime().ok().flatten();
        let started = current.started.unwrap_or_else(std::time::Instant::now);
        let deadline = walltime.map(|w| started + Duration::from_secs_f64(w));
        let answer = {
            let reply = read_frame(&mut p.stdout);
            tokio::pin!(reply);
            loop {
                tokio::select! {
                    r = &mut reply => break Answer::Frame(r),
                    _ = sleep_until_opt(deadline) => break Answer::Timeout,
                    job = jobs.recv(), if jobs_open && pipe.len() < 2 && held.is_empty() => {
                        // Closed: the manager is going; the running task ends first.
                        let Some(job) = job else {
                            jobs_open = false;
                            continue;
                        };
                        let task_id = job.spec.task_id;
                        if slot_tasks().skip.remove(&task_id) {
                            if !report(cancelled_before_start(task_id), false) {
                                break Answer::Closed;
                            }
                            continue;
                        }
                        if request_size(&job) > PIPELINED_REQUEST_BYTES {
                            held.push_back(job);
                            continue;
                        }
                        match write_request(&mut p.stdin, &mut p.known, &job, &settings).await {
                            Ok(()) => pipe.push_back(InPipe { job, started: None }),
                            Err(Refused(e)) => {
                                if !report(TaskResult::failed(task_id, e), false) {
                                    break Answer::Closed;
                                }
                            }
                            // The worker is gone: the job runs on its successor.
                            Err(Broken(e)) => {
                                tracing::debug!("slot {slot}: cannot write to the worker: {e}");
                                held.push_back(job);
                            }
                        }
                    }
                }
            }
        };
        let current = pipe.pop_front().expect("not empty");
        let task_id = current.job.spec.task_id;
        let mut killed_by_sigterm = false;
        let outcome = match answer {
            Answer::Closed => {
                pipe.push_front(current);
                break;
            }
            Answer::Frame(Ok(frame)) => match parse_reply(&frame, task_id) {
                Ok(outcome) => outcome,
                Err(e) => {
                    let (pid_was, _) = reap(process.take().expect("present")).await;
                    pid.store(0, Ordering::SeqCst);
                    lost(format!("worker process {pid_was} broke the protocol: {e}"))
                }
            },
            Answer::Frame(Err(e)) => {
                pid.store(0, Ordering::SeqCst);
                let (pid_was, ended) = reap(process.take().expect("present")).await;
                killed_by_sigterm = ended.by_sigterm;
                let message =
                    format!("worker process {pid_was} died while running this task ({ended}): {e}");
                tracing::warn!("slot {slot}: {message}");
                lost(message)
            }
            Answer::Timeout => {
                // Past its walltime: kill the worker (the next job starts a
                // fresh one) and say why, not WorkerLost, so it is not retried.
                pid.store(0, Ordering::SeqCst);
                let (dead, _) = reap(process.take().expect("present")).await;
                let message = format!(
                    "the task exceeded its walltime of {} s and was killed after {:.1} s \
                     (worker process {dead})",
                    walltime.unwrap_or_default(),
                    started.elapsed().as_secs_f64()
                );
                tracing::warn!("slot {slot}: task {task_id}: {message}");
                Outcome::Failed {
                    exception: ExceptionInfo::system(SystemFailure::TaskTimeout, message),
                }
            }
        };
        if process.is_none() {
            // Tasks still in the dead worker's pipe had not started: they run
            // on its successor, in order.
            while let Some(waiting) = pipe.pop_back() {
                held.push_front(waiting.job);
            }
        }
        // A task cancelled while it waited in the pipe is starting now:
        // stop it, as a cancelled running task is stopped.
        let stop_next = {
            let mut tasks = slot_tasks();
            let next = pipe.front().map(|next| next.job.spec.task_id);
            tasks.running = next;
            next.filter(|id| tasks.skip.remove(id))
        };
        if let Some(next) = stop_next {
            pid.store(0, Ordering::SeqCst);
            if let Some(p) = process.take() {
                let _ = reap(p).await;
            }
            pipe.pop_front();
            while let Some(waiting) = pipe.pop_back() {
                held.push_front(waiting.job);
            }
            slot_tasks().running = None;
            let result = TaskResult {
                task_id,
                outcome,
                completed_at: now_unix(),
            };
            if !report(result, killed_by_sigterm) || !report(cancelled_before_start(next), false) {
                break;
            }
            continue;
        }
        if let Some(next) = pipe.front_mut() {
            next.started = Some(std::time::Instant::now());
        }
        let result = TaskResult {
            task_id,
            outcome,
            completed_at: now_unix(),
        };
        if !report(result, killed_by_sigterm) {
            break;
        }
    }
    if let Some(p) = process {
        pid.store(0, Ordering::SeqCst);
        stop(p).await;
    }
}

/// What ended the wait for the running task's answer.
enum Answer {
    Frame(std::io::Result<Vec<u8>>),
    Timeout,
    /// The manager's results channel is gone.
    Closed,
}

/// Why a request was not written.
enum WriteError {
    /// The task cannot run (no sandbox directory): its failure.
    Refused(ExceptionInfo),
    /// The worker's pipe is broken: the worker died.
    Broken(std::io::Error),
}
use WriteError::{Broken, Refused};

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

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Roughly how many bytes the job's request takes.
fn request_size(job: &PythonJob) -> usize {
    job.spec.payload.len() + job.spec.blob.as_ref().map_or(0, |b| b.len()) + job.code.len() + 256
}

/// Writes the job's request frame (the function's code the first time this
/// worker sees it), creating its sandbox directory first if asked.
async fn write_request(
    stdin: &mut ChildStdin,
    known: &mut HashSet<Uuid>,
    job: &PythonJob,
    settings: &WorkerSettings,
) -> Result<(), WriteError> {
    let sandbox = match &settings.sandbox_root {
        Some(root) => match sandbox_dir(root, job.spec.task_id) {
            Ok(dir) => Some(dir.display().to_string()),
            Err(e) => {
                return Err(Refused(ExceptionInfo::system(
                    SystemFailure::SandboxError,
                    format!("cannot create the task's sandbox directory: {e}"),
                )))
            }
        },
        None => None,
    };
    let first_time = known.insert(job.spec.function_id);
    let request = Request {
        task_id: job.spec.task_id,
        function_id: job.spec.function_id,
        function_code: first_time.then_some(&*job.code),
        result_serializers: &job.spec.result_serializers,
        sandbox_dir: sandbox.as_deref(),
        blob: job.spec.blob.as_ref().map(|b| b.len()),
    };
    let header = serde_json::to_vec(&request).map_err(|e| {
        Refused(ExceptionInfo::system(
            SystemFailure::WorkerLost,
            e.to_string(),
        ))
    })?;
    // The payload follows the JSON header and a newline as it is, and the
    // blob follows the payload: neither side escapes or scans them (a 1 MiB
    // argument cost a JSON pass each).
    let payload = job.spec.payload.as_bytes();
    let blob = job.spec.blob.as_deref().unwrap_or_default();
    let length = header.len() + 1 + payload.len() + blob.len();
    let length = u32::try_from(length).map_err(|_| {
        Refused(ExceptionInfo::system(
            SystemFailure::WorkerLost,
            format!("a task request of {length} bytes is over the worker pipe's 4 GiB frame limit"),
        ))
    })?;
    let mut frame = Vec::with_capacity(length as usize - blob.len() + 4);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&header);
    frame.push(b'\n');
    frame.extend_from_slice(payload);
    stdin.write_all(&frame).await.map_err(Broken)?;
    // Written from where it is: the pipe takes it in pieces anyway, and a
    // copy into the frame first cost the manager's one thread a pass.
    stdin.write_all(blob).await.map_err(Broken)?;
    stdin.flush().await.map_err(Broken)
}

/// The outcome in a worker's reply to task `task_id`.
fn parse_reply(frame: &[u8], task_id: Uuid) -> std::io::Result<Outcome> {
    let reply: Reply = serde_json::from_slice(frame)
        .map_err(|e| std::io::Error::other(format!("malformed reply from worker: {e}")))?;
    if reply.task_id != Some(task_id) {
        return Err(std::io::Error::other("worker replied for another task"));
    }
    Ok(match (reply.ok, reply.result, reply.exception) {
        (true, Some(result), _) => Outcome::Success { result },
        (false, _, Some(exception)) => Outcome::Failed { exception },
        _ => Outcome::Failed {
            exception: ExceptionInfo::system(
                SystemFailure::WorkerProtocolError,
                "worker reply had neither result nor exception",
            ),
        },
    })
}

/// Starts a worker and waits for its ready frame; `pid` is set as soon as
/// the process exists, so a task cancelled while its worker starts up is
/// stopped too.
async fn start(
    slot: usize,
    settings: &WorkerSettings,
    pid: &AtomicU32,
) -> std::io::Result<Process> {
    let mut command = tokio::process::Command::new(&settings.python);
    command
        .arg("-u")
        .arg("-c")
        .arg(super::runtime::bootstrap(&settings.runtime_dir))
        .current_dir(job_env::working_directory())
        .env_clear()
        .envs(job_env::child_environment().iter().cloned())
        .env("HPFAAS_WORKER_RANK", slot.to_string())
        .env("HPFAAS_WORKER_COUNT", settings.count.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(placement) = settings.placements.get(slot) {
        command.env("OMP_NUM_THREADS", placement.omp_threads.to_string());
        if let Some(device) = &placement.accelerator {
            for var in [
                "CUDA_VISIBLE_DEVICES",
                "ROCR_VISIBLE_DEVICES",
                "ZE_AFFINITY_MASK",
            ] {
                command.env(var, device);
            }
        }
        if let Some(mask) = placement.cpu_mask() {
            // SAFETY: the hook runs between fork and exec, so it may only make
            // async-signal-safe calls: apply() is one system call on a set
            // computed here, before the fork. Pinning before exec means the
            // interpreter, and so all user code, starts bound.
            unsafe { command.pre_exec(move || mask.apply()) };
        }
    }
    // SAFETY: prctl is one async-signal-safe system call. A worker must not
    // outlive its manager (a manager killed with SIGKILL cannot clean up),
    // or it would hold its cores and memory on the node for nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = command.spawn()?;
    pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
    let stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let frame = match tokio::time::timeout(Duration::from_secs(60), read_frame(&mut stdout)).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => {
            // Say how it ended: a worker killed at start-up by the batch
            // system's SIGTERM must count as such (see `Done`).
            let ended = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(Ok(status)) => Ended::of(status),
                _ => Ended::unknown("still running"),
            };
            return Err(std::io::Error::other(EndedBeforeReady { ended, cause: e }));
        }
        Err(_) => {
            return Err(std::io::Error::other(
                "the worker did not report ready within 60 s",
            ))
        }
    };
    let ready: Ready = serde_json::from_slice(&frame)
        .map_err(|e| std::io::Error::other(format!("bad ready frame from worker: {e}")))?;
    if !ready.ready {
        return Err(std::io::Error::other("worker reported not ready"));
    }
    Ok(Process {
        child,
        stdin,
        stdout,
        pid: ready.pid,
        known: HashSet::new(),
    })
}

async fn read_frame(stdout: &mut ChildStdout) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stdout.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "worker frame of {len} bytes exceeds the limit"
        )));
    }
    let mut body = vec![0u8; len];
    stdout.read_exact(&mut body).await?;
    Ok(body)
}

/// Waits briefly for a dead worker; returns its pid and how it ended.
async fn reap(mut p: Process) -> (u32, Ended) {
    let _ = p.child.start_kill();
    match tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await {
        Ok(Ok(status)) => (p.pid, Ended::of(status)),
        _ => (p.pid, Ended::unknown("exit status unknown")),
    }
}

async fn stop(mut p: Process) {
    drop(p.stdin);
    if tokio::time::timeout(Duration::from_secs(2), p.child.wait())
        .await
        .is_err()
    {
        let _ = p.child.kill().await;
    }
}
