//! One warm Python worker process: starting it, the pipe protocol it speaks
//! (length-prefixed frames over its stdin/stdout, docs/api.md, "Worker pipe
//! protocol"), and ending it. Which tasks it runs, and when, is decided by
//! the slot that owns it ([`super::slot`]).

use hpfaas_protocol::failure::SystemFailure;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hpfaas_protocol::task::{ExceptionInfo, Outcome, TaskOutput, TaskSpec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use uuid::Uuid;

use super::affinity::Placement;
use super::container::{self, Run};
use super::job_env;
use crate::config::container::Container;

/// How a worker process ended, for messages and the SIGTERM check.
#[derive(Debug)]
pub struct Ended {
    description: String,
    /// It died of SIGTERM (sent by a batch system ending the job).
    pub by_sigterm: bool,
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
    /// The last lines of its stderr, when they were kept (in a container,
    /// where the runtime explains a failed start there).
    said: Option<String>,
}

impl std::fmt::Display for EndedBeforeReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the worker ended before it was ready ({}): {}",
            self.ended, self.cause
        )?;
        match &self.said {
            Some(said) => write!(f, "; it said: {said}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for EndedBeforeReady {}

/// Whether a failed [`Worker::start`] was the worker being killed by SIGTERM
/// while it started up (see [`super::slot::Done`]).
pub fn start_ended_by_sigterm(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<EndedBeforeReady>())
        .is_some_and(|ended| ended.ended.by_sigterm)
}

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
    /// `engine.python_output_limit`: bytes of each task's stdout and stderr
    /// the worker returns with its reply (0: they go to the worker log).
    pub output_limit: usize,
    /// The container workers run in (`engine.container_type`), if any; or
    /// why it cannot be used (an archive that would not import), which
    /// every worker start then fails with.
    pub container: Option<Result<Container, String>>,
}

impl WorkerSettings {
    /// How a worker is started, for messages: the interpreter, and the
    /// container it runs in.
    pub fn describe(&self) -> String {
        match &self.container {
            Some(Ok(c)) => format!(
                "with worker_python = {:?} in the {}",
                self.python,
                container::describe(c)
            ),
            _ => format!("with worker_python = {:?}", self.python),
        }
    }
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

impl PythonJob {
    /// Roughly how many bytes the job's request takes.
    pub fn request_size(&self) -> usize {
        self.spec.payload.len()
            + self.spec.blob.as_ref().map_or(0, |b| b.len())
            + self.code.len()
            + 256
    }
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
    #[serde(default)]
    output: Option<Box<TaskOutput>>,
}

#[derive(Deserialize)]
struct Ready {
    ready: bool,
    pid: u32,
}

/// Why a request was not written.
#[derive(Debug)]
pub enum WriteError {
    /// The task cannot run (no sandbox directory, a request too large): its
    /// failure. The worker is fine.
    Refused(ExceptionInfo),
    /// The worker's pipe is broken: the worker died.
    Broken(std::io::Error),
}

/// A running worker process, ready for requests.
pub struct Worker {
    child: Child,
    /// The pid the worker reported (for messages).
    pid: u32,
    /// The container it runs in and the container's name, when one must be
    /// removed after its command ends (Podman, Docker).
    container: Option<(Container, String)>,
    /// Where requests go.
    pub requests: RequestPipe,
    /// Where its answers come from.
    pub replies: ReplyPipe,
}

/// The manager's end of a worker's stdin, and the functions the worker has
/// been sent (their code goes only the first time).
pub struct RequestPipe {
    stdin: ChildStdin,
    known: HashSet<Uuid>,
}

/// The manager's end of a worker's stdout.
pub struct ReplyPipe {
    stdout: ChildStdout,
}

impl Worker {
    /// Starts worker `slot` and waits for its ready frame. `spawned` gets the
    /// process id as soon as the process exists, before it is ready, so a
    /// task cancelled while its worker starts up can be stopped too.
    pub async fn start(
        slot: usize,
        settings: &WorkerSettings,
        spawned: impl FnOnce(u32),
    ) -> std::io::Result<Worker> {
        let container = match &settings.container {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return Err(std::io::Error::other(e.clone())),
        };
        let name = container_name(slot);
        let mut command = command(slot, settings, container.map(|c| (c, name.as_str())));
        let kept = container.map(|_| {
            command.stderr(Stdio::piped());
            StderrTail::default()
        });
        let mut child = command.spawn()?;
        spawned(child.id().unwrap_or(0));
        let removal = container
            .filter(|c| !c.kind.is_child())
            .map(|c| (c.clone(), name));
        if let (Some(tail), Some(stderr)) = (&kept, child.stderr.take()) {
            tail.forward(stderr);
        }
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        // A container's image may have to be unpacked first.
        let ready_within = Duration::from_secs(if container.is_some() { 300 } else { 60 });
        let frame = match tokio::time::timeout(ready_within, read_frame(&mut stdout)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => {
                // Say how it ended: a worker killed at start-up by the batch
                // system's SIGTERM must count as such (see `Done`).
                let ended = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                    Ok(Ok(status)) => Ended::of(status),
                    _ => Ended::unknown("still running"),
                };
                let said = match &kept {
                    Some(tail) => tail.settled().await,
                    None => None,
                };
                if let Some((c, name)) = &removal {
                    container::remove(c, name);
                }
                return Err(std::io::Error::other(EndedBeforeReady {
                    ended,
                    cause: e,
                    said,
                }));
            }
            Err(_) => {
                let _ = child.start_kill();
                if let Some((c, name)) = &removal {
                    container::remove(c, name);
                }
                return Err(std::io::Error::other(format!(
                    "the worker did not report ready within {} s",
                    ready_within.as_secs()
                )));
            }
        };
        let ready: Ready = serde_json::from_slice(&frame)
            .map_err(|e| std::io::Error::other(format!("bad ready frame from worker: {e}")))?;
        if !ready.ready {
            return Err(std::io::Error::other("worker reported not ready"));
        }
        Ok(Worker {
            child,
            pid: ready.pid,
            container: removal,
            requests: RequestPipe {
                stdin,
                known: HashSet::new(),
            },
            replies: ReplyPipe { stdout },
        })
    }

    /// Whether the process has exited (or cannot be asked).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process (and removes its container) and waits briefly for
    /// it; its pid and how it ended.
    pub async fn kill(mut self) -> (u32, Ended) {
        let _ = self.child.start_kill();
        self.remove_container();
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => (self.pid, Ended::of(status)),
            _ => (self.pid, Ended::unknown("exit status unknown")),
        }
    }

    /// Closes its stdin, which ends a worker between tasks; kills it (and
    /// removes its container) if it has not exited two seconds later.
    pub async fn stop(self) {
        let Worker {
            mut child,
            requests,
            container: removal,
            ..
        } = self;
        drop(requests);
        if tokio::time::timeout(Duration::from_secs(2), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
            if let Some((c, name)) = removal {
                container::remove(&c, &name);
            }
        }
    }

    /// A killed `podman run` or `docker run` leaves its container running.
    fn remove_container(&mut self) {
        if let Some((c, name)) = self.container.take() {
            container::remove(&c, &name);
        }
    }
}

/// A name no other worker container on this node has: the user and the
/// manager's pid ([`container::name_prefix`]), the slot, and a count of the
/// workers this manager started.
fn container_name(slot: usize) -> String {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}w{slot}-{n}", container::name_prefix())
}

/// The command that starts worker `slot`: the embedded runtime, the job's
/// environment, the slot's placement, and death with the manager; inside
/// `container` (with the container's name) when there is one.
fn command(
    slot: usize,
    settings: &WorkerSettings,
    container: Option<(&Container, &str)>,
) -> tokio::process::Command {
    let mut env: Vec<(OsString, OsString)> = job_env::child_environment().to_vec();
    env.push(("HPFAAS_WORKER_RANK".into(), slot.to_string().into()));
    env.push((
        "HPFAAS_WORKER_COUNT".into(),
        settings.count.to_string().into(),
    ));
    let placement = settings.placements.get(slot);
    if let Some(placement) = placement {
        env.push((
            "OMP_NUM_THREADS".into(),
            placement.omp_threads.to_string().into(),
        ));
        if let Some(device) = &placement.accelerator {
            for var in [
                "CUDA_VISIBLE_DEVICES",
                "ROCR_VISIBLE_DEVICES",
                "ZE_AFFINITY_MASK",
            ] {
                env.push((var.into(), device.into()));
            }
        }
    }
    let python: Vec<OsString> = vec![
        settings.python.clone().into(),
        "-u".into(),
        "-c".into(),
        super::runtime::bootstrap(&settings.runtime_dir, settings.output_limit).into(),
    ];
    let cwd = job_env::working_directory();
    let argv = match container {
        None => python,
        Some((c, name)) => {
            let mut binds = vec![(settings.runtime_dir.clone(), false)];
            if let Some(root) = &settings.sandbox_root {
                binds.push((root.clone(), true));
            }
            let env_names = container::passed_variables(env.iter().map(|(k, _)| k.as_os_str()));
            container::argv(
                c,
                &Run {
                    name,
                    argv: python,
                    cwd,
                    binds,
                    env_names,
                    accelerator: placement.and_then(|p| p.accelerator.as_deref()),
                    interactive: true,
                },
            )
        }
    };
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(mask) = placement.and_then(|p| p.cpu_mask()) {
        // SAFETY: the hook runs between fork and exec, so it may only make
        // async-signal-safe calls: apply() is one system call on a set
        // computed here, before the fork. Pinning before exec means the
        // interpreter, and so all user code, starts bound (a container's
        // runtime passes the binding on to what it starts).
        unsafe { command.pre_exec(move || mask.apply()) };
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
    command
}

/// The last lines a containerized worker wrote to stderr, kept while they
/// are copied to the manager's own: where a container runtime says why a
/// worker could not start (no such image, no such runtime option).
#[derive(Default, Clone)]
struct StderrTail {
    lines: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    done: Arc<tokio::sync::Notify>,
}

/// Lines of a worker's stderr kept for a failed start's message.
const STDERR_LINES_KEPT: usize = 5;

impl StderrTail {
    /// Copies `stderr` line by line to this process's stderr, keeping the last few.
    fn forward(&self, stderr: tokio::process::ChildStderr) {
        use tokio::io::AsyncBufReadExt as _;
        let tail = self.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                let mut kept = tail.lines.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == STDERR_LINES_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line.chars().take(1000).collect());
            }
            tail.done.notify_one();
        });
    }

    /// The kept lines once stderr has closed (or after a second), joined.
    async fn settled(&self) -> Option<String> {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.done.notified()).await;
        let kept = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let text = kept
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" / ");
        (!text.is_empty()).then_some(text)
    }
}

impl RequestPipe {
    /// Writes the job's request (the function's code the first time this
    /// worker sees it), creating its sandbox directory first if asked.
    pub async fn send(
        &mut self,
        job: &PythonJob,
        settings: &WorkerSettings,
    ) -> Result<(), WriteError> {
        let sandbox = match &settings.sandbox_root {
            Some(root) => match sandbox_dir(root, job.spec.task_id) {
                Ok(dir) => Some(dir.display().to_string()),
                Err(e) => {
                    return Err(WriteError::Refused(ExceptionInfo::system(
                        SystemFailure::SandboxError,
                        format!("cannot create the task's sandbox directory: {e}"),
                    )))
                }
            },
            None => None,
        };
        let first_time = self.known.insert(job.spec.function_id);
        let head =
            request_head(job, first_time, sandbox.as_deref()).map_err(WriteError::Refused)?;
        let broken = WriteError::Broken;
        self.stdin.write_all(&head).await.map_err(broken)?;
        // The blob is written from where it is: the pipe takes it in pieces
        // anyway, and a copy into the frame first cost the manager's one
        // thread a pass.
        let blob = job.spec.blob.as_deref().unwrap_or_default();
        self.stdin.write_all(blob).await.map_err(broken)?;
        self.stdin.flush().await.map_err(broken)
    }
}

impl ReplyPipe {
    /// The next frame the worker sends; an error when it closed its end (it
    /// died) or announced a frame over the limit.
    pub async fn next(&mut self) -> std::io::Result<Vec<u8>> {
        read_frame(&mut self.stdout).await
    }
}

/// A request frame up to its blob: the length (which counts the blob, sent
/// after it), the JSON header, a newline and the payload. The payload and
/// blob go as they are: neither side escapes or scans them (a 1 MiB
/// argument cost a JSON pass each). An error is the task's failure.
fn request_head(
    job: &PythonJob,
    first_time: bool,
    sandbox: Option<&str>,
) -> Result<Vec<u8>, ExceptionInfo> {
    let request = Request {
        task_id: job.spec.task_id,
        function_id: job.spec.function_id,
        function_code: first_time.then_some(&*job.code),
        result_serializers: &job.spec.result_serializers,
        sandbox_dir: sandbox,
        blob: job.spec.blob.as_ref().map(|b| b.len()),
    };
    let header = serde_json::to_vec(&request)
        .map_err(|e| ExceptionInfo::system(SystemFailure::WorkerLost, e.to_string()))?;
    let payload = job.spec.payload.as_bytes();
    let blob = job.spec.blob.as_ref().map_or(0, |b| b.len());
    let length = header.len() + 1 + payload.len() + blob;
    let length = u32::try_from(length).map_err(|_| {
        ExceptionInfo::system(
            SystemFailure::WorkerLost,
            format!("a task request of {length} bytes is over the worker pipe's 4 GiB frame limit"),
        )
    })?;
    let mut frame = Vec::with_capacity(length as usize - blob + 4);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&header);
    frame.push(b'\n');
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// The outcome in a worker's reply to task `task_id`, and what the task
/// printed; an error when the reply breaks the protocol.
pub fn parse_reply(
    frame: &[u8],
    task_id: Uuid,
) -> std::io::Result<(Outcome, Option<Box<TaskOutput>>)> {
    let reply: Reply = serde_json::from_slice(frame)
        .map_err(|e| std::io::Error::other(format!("malformed reply from worker: {e}")))?;
    if reply.task_id != Some(task_id) {
        return Err(std::io::Error::other("worker replied for another task"));
    }
    let outcome = match (reply.ok, reply.result, reply.exception) {
        (true, Some(result), _) => Outcome::Success { result },
        (false, _, Some(exception)) => Outcome::Failed { exception },
        _ => Outcome::Failed {
            exception: ExceptionInfo::system(
                SystemFailure::WorkerProtocolError,
                "worker reply had neither result nor exception",
            ),
        },
    };
    Ok((outcome, reply.output))
}

async fn read_frame(input: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "worker frame of {len} bytes exceeds the limit"
        )));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(payload: &str, blob: Option<&[u8]>) -> PythonJob {
        PythonJob {
            spec: TaskSpec {
                task_id: Uuid::new_v4(),
                function_id: Uuid::new_v4(),
                payload: payload.into(),
                blob: blob.map(|b| b.to_vec().into()),
                result_serializers: vec!["11\n".into()],
                resource_spec: None,
            },
            code: "13\nthe code".into(),
        }
    }

    /// Splits a request head into its length prefix, JSON header and payload.
    fn split(head: &[u8]) -> (usize, serde_json::Value, &[u8]) {
        let length = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
        let newline = head.iter().position(|&b| b == b'\n').unwrap();
        let header = serde_json::from_slice(&head[4..newline]).unwrap();
        (length, header, &head[newline + 1..])
    }

    /// The length counts the blob written after the head; the payload
    /// follows the header's newline byte for byte, newlines and quotes included.
    #[test]
    fn a_request_carries_its_payload_as_is_and_counts_its_blob() {
        let payload = "2\n\"é\n0\n";
        let job = job(payload, Some(b"\x00\x01\xff"));
        let head = request_head(&job, true, Some("/sandbox/t")).unwrap();
        let (length, header, rest) = split(&head);
        assert_eq!(length, head.len() - 4 + 3);
        assert_eq!(rest, payload.as_bytes());
        assert_eq!(header["task_id"], job.spec.task_id.to_string());
        assert_eq!(header["function_id"], job.spec.function_id.to_string());
        assert_eq!(header["function_code"], "13\nthe code");
        assert_eq!(header["result_serializers"], serde_json::json!(["11\n"]));
        assert_eq!(header["sandbox_dir"], "/sandbox/t");
        assert_eq!(header["blob"], 3);
    }

    /// A worker that has the function already gets no code, and keys that
    /// do not apply are left out rather than sent as null.
    #[test]
    fn a_known_function_goes_without_its_code() {
        let job = job("0\n", None);
        let head = request_head(&job, false, None).unwrap();
        let (length, header, rest) = split(&head);
        assert_eq!(length, head.len() - 4);
        assert_eq!(rest, b"0\n");
        let keys: Vec<_> = header.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 3, "{header}");
        for absent in ["function_code", "sandbox_dir", "blob"] {
            assert!(header.get(absent).is_none(), "{absent} in {header}");
        }
    }

    #[test]
    fn replies_give_the_outcome_or_say_how_they_break_the_protocol() {
        let id = Uuid::new_v4();
        let reply = |json: serde_json::Value| {
            parse_reply(json.to_string().as_bytes(), id).map(|(outcome, _)| outcome)
        };
        let ok = reply(serde_json::json!({"task_id": id, "ok": true, "result": "11\n3"}));
        assert!(matches!(ok.unwrap(), Outcome::Success { result } if result == "11\n3"));
        let exception = serde_json::json!({"type": "KeyError", "message": "'x'", "traceback": "t"});
        let failed = reply(serde_json::json!({"task_id": id, "ok": false, "exception": exception}));
        assert!(
            matches!(failed.unwrap(), Outcome::Failed { exception } if exception.exc_type == "KeyError")
        );
        let neither = reply(serde_json::json!({"task_id": id, "ok": true}));
        assert!(matches!(
            neither.unwrap(),
            Outcome::Failed { exception } if SystemFailure::WorkerProtocolError.is(&exception.exc_type)
        ));
        let other =
            reply(serde_json::json!({"task_id": Uuid::new_v4(), "ok": true, "result": "r"}));
        assert!(other.unwrap_err().to_string().contains("another task"));
        let garbage = parse_reply(b"\xff{", id).unwrap_err();
        assert!(garbage.to_string().contains("malformed reply"), "{garbage}");
    }

    /// A reply carries what the task printed; a reply without it (a silent
    /// task, or a runtime that predates capture) has none.
    #[test]
    fn replies_carry_the_tasks_output() {
        let id = Uuid::new_v4();
        let output = serde_json::json!({"stdout": "hi\n", "stderr": "", "stdout_dropped": 0});
        let frame = serde_json::json!({"task_id": id, "ok": true, "result": "r", "output": output});
        let (_, printed) = parse_reply(frame.to_string().as_bytes(), id).unwrap();
        let printed = printed.unwrap();
        assert_eq!(
            (printed.stdout.as_str(), printed.stderr_dropped),
            ("hi\n", 0)
        );
        let silent = serde_json::json!({"task_id": id, "ok": true, "result": "r"});
        let (_, none) = parse_reply(silent.to_string().as_bytes(), id).unwrap();
        assert_eq!(none, None);
        let bad =
            serde_json::json!({"task_id": id, "ok": true, "result": "r", "output": {"stdout": 3}});
        let e = parse_reply(bad.to_string().as_bytes(), id).unwrap_err();
        assert!(e.to_string().contains("malformed reply"), "{e}");
    }

    #[tokio::test]
    async fn frames_are_read_whole_and_bounded_before_allocating() {
        let mut input: &[u8] = b"\x00\x00\x00\x03abc\x00\x00\x00\x05ab";
        assert_eq!(read_frame(&mut input).await.unwrap(), b"abc");
        let truncated = read_frame(&mut input).await.unwrap_err();
        assert_eq!(truncated.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut huge: &[u8] = b"\xff\xff\xff\xff";
        let e = read_frame(&mut huge).await.unwrap_err();
        assert!(e.to_string().contains("4294967295 bytes exceeds"), "{e}");
    }

    /// Only a worker SIGTERM killed while it started counts as the batch
    /// system's doing.
    #[test]
    fn a_start_ended_by_sigterm_is_told_apart() {
        let ended = |by_sigterm| {
            std::io::Error::other(EndedBeforeReady {
                ended: Ended {
                    description: "signal: 15".into(),
                    by_sigterm,
                },
                cause: std::io::ErrorKind::UnexpectedEof.into(),
                said: None,
            })
        };
        assert!(start_ended_by_sigterm(&ended(true)));
        assert!(!start_ended_by_sigterm(&ended(false)));
        assert!(!start_ended_by_sigterm(&std::io::Error::other(
            "no ready frame"
        )));
        assert!(ended(true)
            .to_string()
            .contains("ended before it was ready (signal: 15)"));
    }
}
