//! Running one scheduler command (`sbatch`, `qstat`, `bsub`, ...) with a time
//! limit, capturing its stdout, stderr and exit code.
//!
//! Scheduler commands hang when a controller is unreachable, so every call is
//! bounded by `cmd_timeout`; a command that overruns is killed together with
//! any children it started (it runs in its own process group).

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::quote::shell_quote;

/// A command line to run, with optional standard input and working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Program name (looked up on `PATH`) or path.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Text written to the command's standard input (`bsub < script`).
    pub stdin: Option<String>,
    /// Directory to run in; the caller's when `None`.
    pub dir: Option<PathBuf>,
}

impl Invocation {
    /// `program args...` with no input.
    pub fn new<S: Into<String>>(program: &str, args: impl IntoIterator<Item = S>) -> Self {
        Invocation {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
            dir: None,
        }
    }

    /// The same command reading `text` on its standard input.
    pub fn with_stdin(mut self, text: impl Into<String>) -> Self {
        self.stdin = Some(text.into());
        self
    }

    /// The same command run in `dir`.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }
}

impl fmt::Display for Invocation {
    /// The command as a user would type it, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", shell_quote(&[&self.program]))?;
        if !self.args.is_empty() {
            write!(f, " {}", shell_quote(&self.args))?;
        }
        if self.stdin.is_some() {
            write!(f, " < (script)")?;
        }
        Ok(())
    }
}

/// What a finished command printed and how it exited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Standard output (lossily decoded).
    pub stdout: String,
    /// Standard error (lossily decoded).
    pub stderr: String,
    /// Exit code; `None` when a signal ended the command.
    pub code: Option<i32>,
}

impl Output {
    /// True when the command exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// What the command said, on one line, for an error message: its stderr,
    /// else its stdout, else a note that it said nothing.
    pub fn said(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            "(no output)".to_string()
        } else {
            lines.join("; ")
        }
    }

    /// How the command ended, for messages: `exit code 1` or `killed by a signal`.
    pub fn ending(&self) -> String {
        match self.code {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_string(),
        }
    }
}

/// A command that could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (not installed, not on `PATH`, ...).
    #[error("cannot run `{command}`: {source}")]
    Start {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program did not finish within the time limit and was killed.
    #[error("`{command}` did not finish within {} s (provider.cmd_timeout) and was killed", timeout.as_secs_f64())]
    TimedOut {
        /// The command line.
        command: String,
        /// The limit it overran.
        timeout: Duration,
    },
}

/// True when `program` is a path to a file, or names an executable file in
/// a directory of `PATH`, as `Command` would find it.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// Runs `invocation` to its end or until `timeout`, whichever comes first.
pub fn run(invocation: &Invocation, timeout: Duration) -> Result<Output, CommandError> {
    let deadline = Instant::now() + timeout;
    let mut command = Command::new(&invocation.program);
    command
        .args(&invocation.args)
        .stdin(if invocation.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a timeout kills what it started too (a
        // wrapper script's `sleep`, an ssh to the controller, ...).
        .process_group(0);
    // `sbatch` hands its whole environment to the job by default.
    crate::strip_secrets(&mut command);
    if let Some(dir) = &invocation.dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|source| CommandError::Start {
        command: invocation.to_string(),
        source,
    })?;

    if let (Some(text), Some(mut pipe)) = (invocation.stdin.clone(), child.stdin.take()) {
        // A writer thread: a command that does not read its input must not
        // block us once the pipe buffer is full.
        thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
    }
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());

    // The pipes close when the command (and everything it started) exits.
    let left = || deadline.saturating_duration_since(Instant::now());
    let Ok(stdout) = stdout.recv_timeout(left()) else {
        return Err(give_up(&mut child, invocation, timeout));
    };
    let Ok(stderr) = stderr.recv_timeout(left()) else {
        return Err(give_up(&mut child, invocation, timeout));
    };
    let mut pause = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Ok(Output {
                    stdout,
                    stderr,
                    code: status.code(),
                })
            }
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            _ => return Err(give_up(&mut child, invocation, timeout)),
        }
    }
}

/// Kills an overdue command's whole process group and reaps it.
fn give_up(child: &mut Child, invocation: &Invocation, timeout: Duration) -> CommandError {
    // SAFETY: kill(2) on the process group this module created for the command.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    CommandError::TimedOut {
        command: invocation.to_string(),
        timeout,
    }
}

/// Reads a pipe to its end on a thread; the text arrives on the channel.
fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_path_finds_executables_only() {
        assert!(on_path("sh") && on_path("/bin/sh"));
        assert!(!on_path("hpfaas-no-such-tool") && !on_path("/nonexistent/sh"));
        // A file that is not executable is not a command, on PATH or by path.
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("notes");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        assert!(!on_path(plain.to_str().unwrap()));
        assert!(!on_path(dir.path().to_str().unwrap()), "a directory");
    }

    fn sh(script: &str) -> Invocation {
        Invocation::new("/bin/sh", ["-c", script])
    }

    #[test]
    fn captures_stdout_stderr_and_code() {
        let out = run(
            &sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.code, Some(3));
        assert!(!out.success());
        assert_eq!(out.said(), "err");
        assert_eq!(out.ending(), "exit code 3");
    }

    #[test]
    fn feeds_stdin() {
        let out = run(
            &Invocation::new("cat", Vec::<String>::new()).with_stdin("script\n"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.stdout, "script\n");
        assert!(out.success());
    }

    #[test]
    fn runs_in_the_given_directory() {
        let out = run(&sh("pwd").in_dir("/tmp"), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout.trim(), "/tmp");
    }

    #[test]
    fn a_hanging_command_is_killed_with_its_children() {
        let started = Instant::now();
        // The child `sleep` holds the pipes open: killing only the shell would
        // leave the reader waiting for it.
        let err = run(&sh("sleep 3600; echo never"), Duration::from_millis(300)).unwrap_err();
        // A generous bound: a `sleep` left alive would hold the pipes for an hour.
        assert!(started.elapsed() < Duration::from_secs(120));
        let message = err.to_string();
        assert!(message.contains("/bin/sh -c"), "{message}");
        assert!(message.contains("0.3 s"), "{message}");
        assert!(message.contains("cmd_timeout"), "{message}");
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = run(
            &Invocation::new("hpfaas-no-such-sbatch", ["--parsable"]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(err.to_string().contains("hpfaas-no-such-sbatch"), "{err}");
    }

    #[test]
    fn display_quotes_like_a_shell() {
        let inv = Invocation::new("squeue", ["--format=%i %T", "--jobs=1,2"]);
        assert_eq!(inv.to_string(), "squeue '--format=%i %T' --jobs=1,2");
        assert_eq!(
            Invocation::new("bsub", Vec::<String>::new())
                .with_stdin("x")
                .to_string(),
            "bsub < (script)"
        );
    }

    #[test]
    fn said_falls_back_to_stdout_then_a_note() {
        let out = Output {
            stdout: "Job not submitted.\n".into(),
            ..Default::default()
        };
        assert_eq!(out.said(), "Job not submitted.");
        assert_eq!(Output::default().said(), "(no output)");
    }
}
