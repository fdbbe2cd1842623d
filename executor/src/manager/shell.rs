//! Shell functions (`ShellFunction` in the SDK), run by the manager itself:
//! no Python on the worker side. The command's `{name}` placeholders are
//! filled from the task's JSON keyword arguments, as `str.format` would,
//! each value single-quoted for the shell: the caller of a function need not
//! be its registrant, and must not be able to run commands of their own.
//! Only the registrant can turn quoting off (`quote_arguments: false`).
//!
//! A command's output is kept as a bounded head and tail
//! (`engine.shell_output_limit`); what lies between is counted, not stored.

use hpfaas_protocol::failure::SystemFailure;
use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use hpfaas_protocol::payload::{self, STRATEGY_JSON, STRATEGY_SHELL_RESULT};
use hpfaas_protocol::task::{ExceptionInfo, Outcome};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::container::{self, Run};
use crate::config::container::Container;

/// Return code of a command killed for exceeding its walltime (as `timeout(1)`).
pub const WALLTIME_RETURNCODE: i32 = 124;

/// How long a command past its walltime has to end after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// A shell function's definition (the JSON after `sh\n`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ShellSpec {
    /// Command line for `/bin/sh -c`, with `{name}` placeholders.
    pub cmd: String,
    /// Seconds before the command is killed; none means no limit.
    #[serde(default)]
    pub walltime: Option<f64>,
    /// Lines kept from the end of stdout and stderr.
    #[serde(default = "default_snippet_lines")]
    pub snippet_lines: usize,
    /// Single-quote each substituted value (the default). Set by the
    /// function's registrant; a caller's arguments cannot change it.
    #[serde(default = "default_quote_arguments")]
    pub quote_arguments: bool,
    /// Bytes of each output stream kept in memory, half from its start and
    /// half from its end (`engine.shell_output_limit`); set by the manager.
    #[serde(skip, default = "default_output_limit")]
    pub output_limit: usize,
    /// Working directory for the command (`run_in_sandbox`); set by the
    /// manager per task, never by the function's definition.
    #[serde(skip)]
    pub cwd: Option<std::path::PathBuf>,
    /// The container the command runs in (`engine.container_type`; shell
    /// tasks only, not MPI launchers); set by the manager.
    #[serde(skip)]
    pub container: Option<std::sync::Arc<Container>>,
}

impl ShellSpec {
    /// This spec for one task: the task's own walltime (seconds) applies
    /// too, the smaller of the two winning; `cwd` is the task's directory.
    pub fn for_task(&self, task_walltime: Option<f64>, cwd: Option<std::path::PathBuf>) -> Self {
        let walltime = match (
            self.walltime.filter(|w| w.is_finite() && *w > 0.0),
            task_walltime,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ShellSpec {
            walltime,
            cwd,
            ..self.clone()
        }
    }
}

fn default_snippet_lines() -> usize {
    1000
}

fn default_quote_arguments() -> bool {
    true
}

fn default_output_limit() -> usize {
    crate::config::DEFAULT_SHELL_OUTPUT_LIMIT
}

/// What a shell task returns (the JSON after `sr\n`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShellResult {
    /// Exit code; negative signal number if killed by a signal; 124 on walltime.
    pub returncode: i32,
    /// Last `snippet_lines` lines of standard output.
    pub stdout: String,
    /// Last `snippet_lines` lines of standard error.
    pub stderr: String,
    /// The command as run.
    pub cmd: String,
    /// Bytes of standard output not in `stdout` (over the output limit or
    /// the snippet lines); 0 when it is whole.
    #[serde(default)]
    pub stdout_dropped: u64,
    /// Bytes of standard error not in `stderr`.
    #[serde(default)]
    pub stderr_dropped: u64,
}

/// Runs one shell task and returns its outcome.
pub async fn run(spec: &ShellSpec, payload: &str) -> Outcome {
    match render_command(spec, payload) {
        Ok(cmd) => run_line(spec, &cmd, &[], &cmd).await,
        Err(message) => Outcome::Failed {
            exception: ExceptionInfo::system(SystemFailure::ShellFunctionError, message),
        },
    }
}

/// Runs a rendered command line for `/bin/sh -c` with `env` added, under the
/// spec's walltime and snippet size; `shown` is what the result names as `cmd`.
pub async fn run_line(
    spec: &ShellSpec,
    line: &str,
    env: &[(&str, String)],
    shown: &str,
) -> Outcome {
    match execute(spec, line, env, shown).await {
        Ok(result) => Outcome::Success {
            result: format!(
                "{STRATEGY_SHELL_RESULT}{}",
                serde_json::to_string(&result).unwrap_or_default()
            ),
        },
        Err(e) => Outcome::Failed {
            exception: ExceptionInfo::system(
                SystemFailure::ShellFunctionError,
                format!("cannot run `{shown}`: {e}"),
            ),
        },
    }
}

/// Fills the command's placeholders from the payload's JSON kwargs.
pub fn render_command(spec: &ShellSpec, payload: &str) -> Result<String, String> {
    let buffers = payload::unpack(payload).map_err(|e| format!("bad task payload: {e}"))?;
    let [args, kwargs] = buffers.as_slice() else {
        return Err(format!(
            "task payload has {} buffers, expected 2 (args, kwargs)",
            buffers.len()
        ));
    };
    let json = |buf: &str, what: &str| -> Result<serde_json::Value, String> {
        let body = buf.strip_prefix(STRATEGY_JSON).ok_or_else(|| {
            format!(
                "shell function {what} must be JSON-serialized (strategy 11); got {:?}",
                payload::strategy_of(buf)
            )
        })?;
        serde_json::from_str(body)
            .map_err(|e| format!("shell function {what} are not valid JSON: {e}"))
    };
    match json(args, "arguments")? {
        serde_json::Value::Array(a) if a.is_empty() => {}
        _ => return Err("shell functions take keyword arguments only".into()),
    }
    let kwargs = match json(kwargs, "keyword arguments")? {
        serde_json::Value::Object(map) => map,
        _ => return Err("shell function keyword arguments must be a JSON object".into()),
    };
    format_placeholders(&spec.cmd, &kwargs, spec.quote_arguments)
}

/// `value` as one POSIX shell word: single-quoted, each `'` as `'\''`.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

fn format_placeholders(
    template: &str,
    kwargs: &serde_json::Map<String, serde_json::Value>,
    quoted: bool,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let value = kwargs.get(&name).ok_or_else(|| {
                    format!("shell command `{template}` needs keyword argument '{name}'")
                })?;
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if quoted {
                    out.push_str(&quote(&text));
                } else {
                    out.push_str(&text);
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

async fn execute(
    spec: &ShellSpec,
    line: &str,
    env: &[(&str, String)],
    shown: &str,
) -> std::io::Result<ShellResult> {
    let cwd = spec
        .cwd
        .clone()
        .unwrap_or_else(|| super::job_env::working_directory().to_path_buf());
    let inner: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), line.into()];
    let name = format!(
        "{}t{}",
        container::name_prefix(),
        uuid::Uuid::new_v4().simple()
    );
    let argv = match spec.container.as_deref() {
        None => inner,
        Some(c) => {
            let job = super::job_env::child_environment()
                .iter()
                .map(|(k, _)| k.as_os_str());
            let extra = env.iter().map(|(k, _)| std::ffi::OsStr::new(*k));
            container::argv(
                c,
                &Run {
                    name: &name,
                    argv: inner,
                    cwd: &cwd,
                    binds: Vec::new(),
                    env_names: container::passed_variables(job.chain(extra)),
                    accelerator: None,
                    interactive: false,
                },
            )
        }
    };
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&cwd)
        // The job's environment, not the managers' MPI job's: a user's own
        // mpiexec or srun (and an MPI task's launcher) must not join it.
        .env_clear()
        .envs(super::job_env::child_environment().iter().cloned())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id();
    // Cancelling a task drops this future; kill_on_drop alone would reach
    // only `/bin/sh`, not what it started.
    let removal = spec
        .container
        .as_deref()
        .filter(|c| !c.kind.is_child())
        .map(|c| (c.clone(), name));
    let mut group = GroupGuard(pid, removal);

    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let collect = async {
        let (out, err) = tokio::join!(
            Capture::read(stdout, spec.output_limit),
            Capture::read(stderr, spec.output_limit)
        );
        let (out, err) = (out?, err?);
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let limit = spec.walltime.filter(|w| w.is_finite() && *w > 0.0);
    tokio::pin!(collect);
    let finished = match limit {
        Some(w) => match tokio::time::timeout(Duration::from_secs_f64(w), &mut collect).await {
            Ok(result) => Some(result),
            Err(_) => {
                // SIGTERM first: MPI launchers put each rank in a process
                // group of its own, out of the group kill's reach, and end
                // the ranks only when they are asked to end themselves.
                signal_group(pid, libc::SIGTERM);
                let _ = tokio::time::timeout(KILL_GRACE, &mut collect).await;
                signal_group(pid, libc::SIGKILL);
                if let Some((c, name)) = group.1.take() {
                    container::remove(&c, &name);
                }
                None
            }
        },
        None => Some(collect.await),
    };
    // Reaped (or killed above): its group id may belong to someone else soon.
    group.0 = None;
    match finished {
        Some(result) => {
            let (status, out, err) = result?;
            use std::os::unix::process::ExitStatusExt;
            let returncode = status.code().or(status.signal().map(|s| -s)).unwrap_or(-1);
            let (stdout, stdout_dropped) = out.snippet(spec.snippet_lines);
            let (stderr, stderr_dropped) = err.snippet(spec.snippet_lines);
            Ok(ShellResult {
                returncode,
                stdout,
                stderr,
                cmd: shown.to_string(),
                stdout_dropped,
                stderr_dropped,
            })
        }
        None => Ok(ShellResult {
            returncode: WALLTIME_RETURNCODE,
            stdout: String::new(),
            stderr: format!(
                "hpfaas: command exceeded its walltime of {} s and was killed",
                limit.unwrap_or_default()
            ),
            cmd: shown.to_string(),
            stdout_dropped: 0,
            stderr_dropped: 0,
        }),
    }
}

/// One output stream of a command, kept within a byte limit: its first
/// half-limit bytes, its last half-limit bytes, and the count of those
/// between, so a command printing without end costs bounded memory.
#[derive(Debug, Default)]
struct Capture {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    /// Bytes read and kept in neither.
    gap: u64,
    half: usize,
}

impl Capture {
    /// Reads `stream` to its end, keeping at most `limit` bytes.
    async fn read(
        mut stream: impl tokio::io::AsyncRead + Unpin,
        limit: usize,
    ) -> std::io::Result<Capture> {
        let mut capture = Capture {
            half: limit / 2,
            ..Capture::default()
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(capture);
            }
            capture.push(&buf[..n]);
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        let room = self.half.saturating_sub(self.head.len());
        let into_head = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..into_head]);
        bytes = &bytes[into_head..];
        if bytes.len() > self.half {
            // Only the chunk's end can stay in the tail.
            let skip = bytes.len() - self.half;
            self.gap += (self.tail.len() + skip) as u64;
            self.tail.clear();
            bytes = &bytes[skip..];
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.half);
        self.tail.drain(..overflow);
        self.gap += overflow as u64;
        self.tail.extend(bytes);
    }

    /// The text shown for this stream (its last `lines` lines, with a marker
    /// where bytes were dropped) and how many bytes of it are not shown.
    fn snippet(self, lines: usize) -> (String, u64) {
        let total = self.head.len() as u64 + self.gap + self.tail.len() as u64;
        let (tail, _) = self.tail.as_slices();
        let mut tail_bytes = tail.to_vec();
        tail_bytes.extend(self.tail.as_slices().1);
        let marker = if self.gap > 0 {
            let newline = if self.head.ends_with(b"\n") || self.head.is_empty() {
                ""
            } else {
                "\n"
            };
            format!(
                "{newline}[hpfaas: {} bytes of output dropped here]\n",
                self.gap
            )
        } else {
            String::new()
        };
        let head = String::from_utf8_lossy(&self.head);
        let tail = String::from_utf8_lossy(&tail_bytes);
        let whole = format!("{head}{marker}{tail}");
        let shown = last_lines(&whole, lines);
        let cut = whole.len() - shown.len();
        // Bytes of real output shown: the marker, if still there, is not output.
        let marker_end = head.len() + marker.len();
        let marker_shown = marker_end.saturating_sub(cut.max(head.len()));
        let real_shown = (shown.len() - marker_shown.min(shown.len())) as u64;
        let dropped = total.saturating_sub(real_shown);
        if dropped > 0 && marker_shown == 0 {
            (
                format!("[hpfaas: {dropped} bytes of output dropped]\n{shown}"),
                dropped,
            )
        } else {
            (shown, dropped)
        }
    }
}

/// Ends the command's process group when dropped while still armed, i.e.
/// when the task is cancelled mid-run: SIGTERM at once (an MPI launcher then
/// ends its ranks, which sit in groups of their own), SIGKILL after
/// [`KILL_GRACE`] for whatever ignored it.
/// A container whose command is killed is removed too (Podman, Docker).
struct GroupGuard(Option<u32>, Option<(Container, String)>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            signal_group(Some(pid), libc::SIGTERM);
            let removal = self.1.take();
            // Drop cannot wait; a detached thread gives the grace period.
            std::thread::spawn(move || {
                std::thread::sleep(KILL_GRACE);
                signal_group(Some(pid), libc::SIGKILL);
                if let Some((c, name)) = removal {
                    container::remove(&c, &name);
                }
            });
        }
    }
}

/// Sends `signal` to the process group the command leads, if it started.
fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on the process group we created for this command.
        unsafe { libc::kill(-(pid as i32), signal) };
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    lines[lines.len().saturating_sub(n)..].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(kwargs: &str) -> String {
        payload::pack(&["11\n[]".to_string(), format!("11\n{kwargs}")])
    }

    fn spec(cmd: &str, walltime: Option<f64>) -> ShellSpec {
        ShellSpec {
            cwd: None,
            cmd: cmd.into(),
            walltime,
            snippet_lines: 1000,
            quote_arguments: true,
            output_limit: crate::config::DEFAULT_SHELL_OUTPUT_LIMIT,
            container: None,
        }
    }

    fn shell_result(outcome: Outcome) -> ShellResult {
        match outcome {
            Outcome::Success { result } => {
                serde_json::from_str(result.strip_prefix("sr\n").unwrap()).unwrap()
            }
            other => panic!("expected success, got {other:?}"),
        }
    }

    #[test]
    fn placeholders_follow_str_format() {
        let s = spec("echo {msg} {{literal}} {n}", None);
        assert_eq!(
            render_command(&s, &payload(r#"{"msg": "hi", "n": 3}"#)).unwrap(),
            "echo 'hi' {literal} '3'"
        );
        let err = render_command(&s, &payload(r#"{"msg": "hi"}"#)).unwrap_err();
        assert!(err.contains("'n'"), "{err}");
        let err = render_command(&s, &payload::pack(&["00\nabc", "11\n{}"])).unwrap_err();
        assert!(err.contains("JSON"), "{err}");
        assert!(render_command(&s, "garbage").is_err());
    }

    #[tokio::test]
    async fn runs_and_captures_output() {
        let r = shell_result(
            run(
                &spec("echo {msg}; echo err >&2; exit 3", None),
                &payload(r#"{"msg":"hi"}"#),
            )
            .await,
        );
        assert_eq!(
            (r.returncode, r.stdout.as_str(), r.stderr.as_str()),
            (3, "hi\n", "err\n")
        );
        assert_eq!(r.cmd, "echo 'hi'; echo err >&2; exit 3");
        assert_eq!((r.stdout_dropped, r.stderr_dropped), (0, 0));
    }

    #[tokio::test]
    async fn walltime_kills_the_whole_group() {
        let start = std::time::Instant::now();
        let r =
            shell_result(run(&spec("sleep 3600 & sleep 3600", Some(0.3)), &payload("{}")).await);
        assert_eq!(r.returncode, WALLTIME_RETURNCODE);
        assert!(r.stderr.contains("walltime"), "{}", r.stderr);
        // A generous bound: a background `sleep` left alive would hold the
        // output pipes for an hour.
        assert!(start.elapsed() < Duration::from_secs(120));
    }

    /// A caller's keyword arguments are data: whatever they hold, the
    /// command gets them as one word and runs nothing of theirs.
    #[tokio::test]
    async fn injection_attempts_are_inert() {
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-sh-")
            .tempdir()
            .unwrap();
        let marker = dir.path().join("pwned");
        let m = marker.display().to_string();
        for attack in [
            format!("; touch {m}"),
            format!("$(touch {m})"),
            format!("`touch {m}`"),
            format!("x' ; touch {m}; echo '"),
            format!("x'\''; touch {m} #"),
            format!("\ntouch {m}"),
            format!("&& touch {m}"),
            format!("| touch {m}"),
            format!("> {m}"),
        ] {
            let kwargs = serde_json::json!({ "msg": attack }).to_string();
            let r = shell_result(run(&spec("printf %s {msg}", None), &payload(&kwargs)).await);
            assert_eq!(r.returncode, 0, "{attack:?}: {r:?}");
            assert_eq!(r.stdout, attack, "{attack:?}");
            assert!(!marker.exists(), "{attack:?} ran a command");
        }
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    /// Only the function's registrant can ask for values pasted as they are.
    #[tokio::test]
    async fn quoting_is_the_registrants_choice() {
        let quoted: ShellSpec = serde_json::from_str(r#"{"cmd": "echo {msg}"}"#).unwrap();
        assert!(quoted.quote_arguments);
        let raw: ShellSpec =
            serde_json::from_str(r#"{"cmd": "echo {msg}", "quote_arguments": false}"#).unwrap();
        let r = shell_result(run(&raw, &payload(r#"{"msg": "a; echo b"}"#)).await);
        assert_eq!(r.stdout, "a\nb\n");
    }

    /// A command printing far more than the limit finishes with bounded
    /// memory: a head and a tail are kept, the rest is counted and marked.
    #[tokio::test]
    async fn endless_output_is_bounded_and_counted() {
        let total: u64 = 50_000_000;
        let mut s = spec(
            &format!("yes | head -c {total}; echo done >&2"),
            Some(120.0),
        );
        s.output_limit = 64 * 1024;
        s.snippet_lines = 100_000;
        let r = shell_result(run(&s, &payload("{}")).await);
        assert_eq!(r.returncode, 0);
        assert!(r.stdout.len() < 70 * 1024, "{} bytes kept", r.stdout.len());
        assert!(
            r.stdout.contains("bytes of output dropped here]"),
            "no marker"
        );
        let shown = r.stdout.lines().filter(|l| *l == "y").count() as u64 * 2;
        assert_eq!(r.stdout_dropped, total - shown);
        assert_eq!((r.stderr.as_str(), r.stderr_dropped), ("done\n", 0));
        // With few snippet lines, the marker says how much is not shown.
        s.snippet_lines = 3;
        let r = shell_result(run(&s, &payload("{}")).await);
        assert_eq!(r.stdout_dropped, total - 6);
        assert_eq!(
            r.stdout,
            format!("[hpfaas: {} bytes of output dropped]\ny\ny\ny\n", total - 6)
        );
    }

    #[test]
    fn a_capture_never_holds_more_than_its_limit() {
        let mut c = Capture {
            half: 10,
            ..Capture::default()
        };
        for chunk in [&b"0123456"[..], b"789abcdef", &[b'x'; 100], b"tail-end"] {
            c.push(chunk);
            assert!(c.head.len() <= 10 && c.tail.len() <= 10);
        }
        assert_eq!(c.head, b"0123456789");
        assert_eq!(c.tail.iter().copied().collect::<Vec<u8>>(), b"xxtail-end");
        assert_eq!(c.gap, 6 + 98);
        let (text, dropped) = c.snippet(10);
        assert_eq!(
            text,
            "0123456789\n[hpfaas: 104 bytes of output dropped here]\nxxtail-end"
        );
        assert_eq!(dropped, 104);
    }

    #[test]
    fn snippets_keep_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a", 5), "a");
    }
}
