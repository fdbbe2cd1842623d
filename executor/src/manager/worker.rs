//! One warm Python worker process and the slot it serves.
//!
//! The worker speaks length-prefixed JSON frames over its stdin/stdout
//! (docs/api.md, "Worker pipe protocol"). A slot task owns the process: it
//! feeds it one task at a time, sends each outcome back to the manager, and
//! when the process dies fails the task in hand with `WorkerLost` and starts
//! a fresh process. The slot publishes the pid of its current process, so
//! the manager can kill it to cancel the task it runs.

use std::collections::HashSet;
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
use crate::broker::dispatch::WORKER_LOST;

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

/// Exception type of a task killed for running past its own walltime.
pub const TASK_TIMEOUT: &str = "TaskTimeout";

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
    payload: &'a str,
    result_serializers: &'a [String],
    /// Working directory for this task (`run_in_sandbox`).
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox_dir: Option<&'a str>,
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

/// Serves one slot until `jobs` closes: runs each job and sends
/// `(slot, result)` to `done`. `pid` holds the pid of the slot's worker
/// process while there is one, 0 otherwise.
pub async fn serve_slot(
    slot: usize,
    settings: Arc<WorkerSettings>,
    mut jobs: mpsc::UnboundedReceiver<PythonJob>,
    done: mpsc::UnboundedSender<Done>,
    pid: Arc<AtomicU32>,
) {
    let mut process: Option<Process> = None;
    let mut backoff = Duration::from_millis(100);
    while let Some(job) = jobs.recv().await {
        // A worker that died while idle (killed to cancel a task that had
        // just finished, say) is replaced before it can fail this task.
        if let Some(p) = process.as_mut() {
            if !matches!(p.child.try_wait(), Ok(None)) {
                pid.store(0, Ordering::SeqCst);
                process = None;
            }
        }
        if process.is_none() {
            match start(slot, &settings, &pid).await {
                Ok(p) => {
                    backoff = Duration::from_millis(100);
                    process = Some(p);
                }
                Err(e) => {
                    pid.store(0, Ordering::SeqCst);
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
                        ExceptionInfo::system(WORKER_LOST, message),
                    );
                    let _ = done.send(Done {
                        slot,
                        result,
                        killed_by_sigterm,
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let p = process.as_mut().expect("started above");
        let sandbox = match &settings.sandbox_root {
            Some(root) => match sandbox_dir(root, job.spec.task_id) {
                Ok(dir) => Some(dir.display().to_string()),
                Err(e) => {
                    let message = format!("cannot create the task's sandbox directory: {e}");
                    let result = TaskResult::failed(
                        job.spec.task_id,
                        ExceptionInfo::system("SandboxError", message),
                    );
                    if done.send(Done::new(slot, result)).is_err() {
                        break;
                    }
                    continue;
                }
            },
            None => None,
        };
        // A malformed walltime was refused by the broker; none means no limit.
        let walltime = job.spec.walltime().ok().flatten();
        let started = std::time::Instant::now();
        let run = run_one(p, &job, sandbox.as_deref());
        let ran = match walltime {
            Some(w) => tokio::time::timeout(Duration::from_secs_f64(w), run)
                .await
                .map_err(|_| w),
            None => Ok(run.await),
        };
        let mut killed_by_sigterm = false;
        let outcome = match ran {
            Err(w) => {
                // Past its walltime: kill the worker (the next job starts a
                // fresh one) and say why, not WorkerLost, so it is not retried.
                pid.store(0, Ordering::SeqCst);
                let (dead, _) = reap(process.take().expect("present")).await;
                let message = format!(
                    "the task exceeded its walltime of {w} s and was killed after {:.1} s \
                     (worker process {dead})",
                    started.elapsed().as_secs_f64()
                );
                tracing::warn!("slot {slot}: task {}: {message}", job.spec.task_id);
                Outcome::Failed {
                    exception: ExceptionInfo::system(TASK_TIMEOUT, message),
                }
            }
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                pid.store(0, Ordering::SeqCst);
                let (pid, ended) = reap(process.take().expect("present")).await;
                killed_by_sigterm = ended.by_sigterm;
                let message =
                    format!("worker process {pid} died while running this task ({ended}): {e}");
                tracing::warn!("slot {slot}: {message}");
                Outcome::Failed {
                    exception: ExceptionInfo::system(WORKER_LOST, message),
                }
            }
        };
        let result = TaskResult {
            task_id: job.spec.task_id,
            outcome,
            completed_at: now_unix(),
        };
        if done
            .send(Done {
                slot,
                result,
                killed_by_sigterm,
            })
            .is_err()
        {
            break;
        }
    }
    if let Some(p) = process {
        pid.store(0, Ordering::SeqCst);
        stop(p).await;
    }
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

async fn run_one(
    p: &mut Process,
    job: &PythonJob,
    sandbox_dir: Option<&str>,
) -> std::io::Result<Outcome> {
    let first_time = p.known.insert(job.spec.function_id);
    let request = Request {
        task_id: job.spec.task_id,
        function_id: job.spec.function_id,
        function_code: first_time.then_some(&*job.code),
        payload: &job.spec.payload,
        result_serializers: &job.spec.result_serializers,
        sandbox_dir,
    };
    let body = serde_json::to_vec(&request).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    p.stdin.write_all(&frame).await?;
    p.stdin.flush().await?;
    let reply = read_frame(&mut p.stdout).await?;
    let reply: Reply = serde_json::from_slice(&reply)
        .map_err(|e| std::io::Error::other(format!("malformed reply from worker: {e}")))?;
    if reply.task_id != Some(job.spec.task_id) {
        return Err(std::io::Error::other("worker replied for another task"));
    }
    Ok(match (reply.ok, reply.result, reply.exception) {
        (true, Some(result), _) => Outcome::Success { result },
        (false, _, Some(exception)) => Outcome::Failed { exception },
        _ => Outcome::Failed {
            exception: ExceptionInfo::system(
                "WorkerProtocolError",
                "worker reply had neither result nor exception",
            ),
        },
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
