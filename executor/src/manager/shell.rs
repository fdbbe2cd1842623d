//! Shell functions (`ShellFunction` in the SDK), run by the manager itself:
//! no Python on the worker side. The command's `{name}` placeholders are
//! filled from the task's JSON keyword arguments, as `str.format` would.

use std::process::Stdio;
use std::time::Duration;

use hpfaas_protocol::payload::{self, STRATEGY_JSON, STRATEGY_SHELL_RESULT};
use hpfaas_protocol::task::{ExceptionInfo, Outcome};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

/// Return code of a command killed for exceeding its walltime (as `timeout(1)`).
pub const WALLTIME_RETURNCODE: i32 = 124;

/// How long a command past its walltime has to end after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// Exception type for a shell task that could not even be started.
const SHELL_ERROR: &str = "ShellFunctionError";

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
    /// Working directory for the command (`run_in_sandbox`); set by the
    /// manager per task, never by the function's definition.
    #[serde(skip)]
    pub cwd: Option<std::path::PathBuf>,
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
}

/// Runs one shell task and returns its outcome.
pub async fn run(spec: &ShellSpec, payload: &str) -> Outcome {
    match render_command(spec, payload) {
        Ok(cmd) => run_line(spec, &cmd, &[], &cmd).await,
        Err(message) => Outcome::Failed {
            exception: ExceptionInfo::system(SHELL_ERROR, message),
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
            exception: ExceptionInfo::system(SHELL_ERROR, format!("cannot run `{shown}`: {e}")),
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
    format_placeholders(&spec.cmd, &kwargs)
}

fn format_placeholders(
    template: &str,
    kwargs: &serde_json::Map<String, serde_json::Value>,
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
                match value {
                    serde_json::Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
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
    let mut command = tokio::process::Command::new("/bin/sh");
    match &spec.cwd {
        Some(dir) => command.current_dir(dir),
        None => command.current_dir(super::job_env::working_directory()),
    };
    let mut child = command
        .arg("-c")
        .arg(line)
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
    let mut group = GroupGuard(pid);

    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let collect = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        a?;
        b?;
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
                None
            }
        },
        None => Some(collect.await),
    };
    // Reaped (or killed above): its group id may belong to someone else soon.
    group.0 = None;
    let tail = |bytes: &[u8]| last_lines(&String::from_utf8_lossy(bytes), spec.snippet_lines);
    match finished {
        Some(result) => {
            let (status, out, err) = result?;
            use std::os::unix::process::ExitStatusExt;
            let returncode = status.code().or(status.signal().map(|s| -s)).unwrap_or(-1);
            Ok(ShellResult {
                returncode,
                stdout: tail(&out),
                stderr: tail(&err),
                cmd: shown.to_string(),
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
        }),
    }
}

/// Ends the command's process group when dropped while still armed, i.e.
/// when the task is cancelled mid-run: SIGTERM at once (an MPI launcher then
/// ends its ranks, which sit in groups of their own), SIGKILL after
/// [`KILL_GRACE`] for whatever ignored it.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            signal_group(Some(pid), libc::SIGTERM);
            // Drop cannot wait; a detached thread gives the grace period.
            std::thread::spawn(move || {
                std::thread::sleep(KILL_GRACE);
                signal_group(Some(pid), libc::SIGKILL);
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
            "echo hi {literal} 3"
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
        assert_eq!(r.cmd, "echo hi; echo err >&2; exit 3");
    }

    #[tokio::test]
    async fn walltime_kills_the_whole_group() {
        let start = std::time::Instant::now();
        let r = shell_result(run(&spec("sleep 30 & sleep 30", Some(0.3)), &payload("{}")).await);
        assert_eq!(r.returncode, WALLTIME_RETURNCODE);
        assert!(r.stderr.contains("walltime"), "{}", r.stderr);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn snippets_keep_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a", 5), "a");
    }
}
