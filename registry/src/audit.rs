//! The audit log: one JSON line per event in `<data_dir>/audit.log` (0600)
//! — who submitted what, when it ran and how it ended, plus tokens and
//! endpoint registrations (docs/api.md, "Audit log").
//!
//! Handlers only [`Audit::record`] an event: a bounded queue carries it to
//! a writer thread, so a request never waits for the disk. The writer is
//! woken only when it sleeps, and then gathers events for a few
//! milliseconds: one wake-up per burst, not one per event (a thread wake
//! for each of a task's three lines was a tenth of `hpfaas up`'s CPU on
//! no-op tasks). It appends each burst whole lines at a time to a
//! [`RotatingFile`] (by size and by day, the newest `keep` rotated files
//! kept: [`AuditLimits`]). Lines are compact: a task's submitter, function,
//! endpoint and group are on its `task_submitted` line only; its
//! `task_running` and `task_finished` lines name just the task. A full
//! channel or a failing disk costs only audit lines, never
//! the service, but never silently: every loss is logged as an error with
//! the count, counted ([`Audit::lines_lost`]), and once lines can be written
//! again the log itself gets an `audit_lines_lost` line saying how many.
//! With no limits (`hpfaas up --no-audit`) nothing is written at all.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use hpfaas_rotating_log::Limits as AuditLimits;
use hpfaas_rotating_log::RotatingFile;
use serde_json::{json, Value};
use uuid::Uuid;

/// The file, under the service's data directory.
pub const FILE: &str = "audit.log";

/// Events waiting for the writer before new ones are dropped (and logged).
const CAPACITY: usize = 1 << 16;

/// How long the writer, once woken, lets a burst of events gather.
const GATHER: Duration = Duration::from_millis(5);

/// Default rotation: files of 64 MiB, ten kept, and a new file each day.
pub const DEFAULT_LIMITS: AuditLimits = AuditLimits {
    max_bytes: 64 << 20,
    keep: 10,
    daily: true,
};

/// One queued event. Task events, most of the log, stay typed until the
/// writer formats them: no JSON tree is built per task.
#[derive(Debug)]
enum Event {
    /// Any other event, a JSON object with its `ts`.
    Other(Value),
    /// A task was submitted.
    Submitted {
        ts: f64,
        user: String,
        task: Uuid,
        function: Uuid,
        endpoint: Uuid,
        group: Uuid,
    },
    /// The endpoint reported a task running.
    Running { ts: f64, task: Uuid },
    /// A task's result was stored.
    Finished {
        ts: f64,
        task: Uuid,
        how: &'static str,
        exc_type: Option<String>,
    },
}

/// The sending side, shared by every handler.
pub struct Audit {
    queue: Arc<Queue>,
    /// False when the log is off: events are dropped where they are made.
    enabled: bool,
}

/// Events on their way to the writer thread.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    /// Lines lost since the start (queue full, or the disk refused them).
    lost: AtomicU64,
}

impl Queue {
    /// Counts `n` more lost lines; returns the total.
    fn lose(&self, n: u64) -> u64 {
        self.lost.fetch_add(n, Ordering::Relaxed) + n
    }
}

#[derive(Default)]
struct QueueState {
    events: Vec<Event>,
    /// The writer is blocked in `wake.wait` (only then is it notified).
    sleeping: bool,
    /// The last [`Audit`] is gone: write what is queued, then stop.
    closed: bool,
}

impl Queue {
    /// The next batch of events; `None` once closed and drained.
    fn take(&self) -> Option<Vec<Event>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.events.is_empty() {
            if state.closed {
                return None;
            }
            state.sleeping = true;
            while state.events.is_empty() && !state.closed {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.sleeping = false;
            if !state.closed {
                drop(state);
                std::thread::sleep(GATHER);
                state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            }
        }
        if state.events.is_empty() {
            return None; // closed
        }
        Some(std::mem::take(&mut state.events))
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        let mut state = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        drop(state);
        self.queue.wake.notify_one();
    }
}

impl Audit {
    /// Starts the writer thread for `<data_dir>/audit.log`, rotated within
    /// `limits`; it ends when the last [`Audit`] is dropped, after writing
    /// what it holds. With no limits the log is off: no thread, no file.
    pub fn start(data_dir: &Path, limits: Option<AuditLimits>) -> Audit {
        let queue = Arc::new(Queue::default());
        let Some(limits) = limits else {
            return Audit {
                queue,
                enabled: false,
            };
        };
        let path = data_dir.join(FILE);
        let writer_queue = queue.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer(&path, limits, &writer_queue));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit log writer; no audit lines will be written");
        }
        Audit {
            queue,
            enabled: true,
        }
    }

    /// Queues one event (a JSON object; `ts` is added here); never blocks.
    pub fn record(&self, mut event: Value) {
        if let Some(map) = event.as_object_mut() {
            map.entry("ts").or_insert_with(|| json!(now()));
        }
        self.send(Event::Other(event));
    }

    fn send(&self, event: Event) {
        if !self.enabled {
            return;
        }
        let mut state = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.events.len() >= CAPACITY {
            drop(state);
            let lost = self.queue.lose(1);
            // One error line per power of two: a flood does not flood the log.
            if lost.is_power_of_two() {
                tracing::error!(lost, event = ?event, "audit log writer is behind; dropping audit lines ({lost} lost so far)");
            }
            return;
        }
        state.events.push(event);
        let sleeping = std::mem::replace(&mut state.sleeping, false);
        drop(state);
        if sleeping {
            self.queue.wake.notify_one();
        }
    }

    /// Audit lines lost since the service started (writer behind, or the
    /// disk full or failing).
    pub fn lines_lost(&self) -> u64 {
        self.queue.lost.load(Ordering::Relaxed)
    }

    /// A task was submitted at `ts` (Unix seconds): stamped by the caller,
    /// which may queue the line a moment later.
    pub fn submitted(
        &self,
        ts: f64,
        user: &str,
        task: Uuid,
        function: Uuid,
        endpoint: Uuid,
        group: Uuid,
    ) {
        self.send(Event::Submitted {
            ts,
            user: user.to_string(),
            task,
            function,
            endpoint,
            group,
        });
    }

    /// The endpoint reported the task running.
    pub fn running(&self, task: Uuid) {
        self.send(Event::Running { ts: now(), task });
    }

    /// The task ended: `how` is `success`, `failed` or `cancelled`.
    pub fn finished(&self, task: Uuid, how: &'static str, exc_type: Option<&str>) {
        self.send(Event::Finished {
            ts: now(),
            task,
            how,
            exc_type: exc_type.map(str::to_string),
        });
    }
}

fn now() -> f64 {
    hpfaas_protocol::task::now_unix()
}

/// Appends one event to `<data_dir>/audit.log` at once, from a process
/// other than the service (`hpfaas token create|revoke`).
pub fn append_now(data_dir: &Path, mut event: Value) -> std::io::Result<()> {
    event["ts"] = json!(now());
    let mut file = open(&data_dir.join(FILE))?;
    file.write_all(format!("{event}\n").as_bytes())
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn writer(path: &Path, limits: AuditLimits, queue: &Queue) {
    let mut file: Option<RotatingFile> = None;
    // Lost lines already told in the log itself.
    let mut told = 0u64;
    // A write failed, maybe mid-line: the next line starts a line of its own.
    let mut cut = false;
    let mut text = String::new();
    while let Some(batch) = queue.take() {
        let count = batch.len() as u64;
        if file.is_none() {
            match RotatingFile::open(path, limits) {
                Ok(f) => file = Some(f),
                Err(e) => {
                    let lost = queue.lose(count);
                    tracing::error!(path = %path.display(), error = %e, lost, "cannot open the audit log; dropped {count} audit lines ({lost} lost so far)");
                    continue;
                }
            }
        }
        let out = file.as_mut().expect("opened above");
        let lost = queue.lost.load(Ordering::Relaxed);
        text.clear();
        if cut {
            text.push('\n');
        }
        if lost > told {
            let notice = json!({"event": "audit_lines_lost", "lines": lost - told, "ts": now()});
            text.push_str(&format!("{notice}\n"));
        }
        for event in batch {
            format_line(event, &mut text);
        }
        match out.write_lines(text.as_bytes()) {
            Ok(()) => (told, cut) = (lost, false),
            Err(e) => {
                // Some of the batch may be on disk; counted as lost all the same.
                let lost = queue.lose(count);
                tracing::error!(path = %path.display(), error = %e, lost, "writing the audit log failed; dropped {count} audit lines ({lost} lost so far)");
                // Reopen next time: the file may have been moved or the disk freed.
                file = None;
                cut = true;
            }
        }
    }
}

/// Appends the event's line to `line`. Task lines are written by hand, in
/// milliseconds: most of the log, with no JSON tree built per task.
fn format_line(event: Event, line: &mut String) {
    use std::fmt::Write as _;
    match event {
        Event::Other(value) => {
            let _ = writeln!(line, "{value}");
        }
        Event::Submitted {
            ts,
            user,
            task,
            function,
            endpoint,
            group,
        } => {
            let user = json_string(&user);
            let _ = writeln!(
                line,
                r#"{{"event":"task_submitted","ts":{ts:.3},"task_id":"{task}","user":{user},"function_id":"{function}","endpoint_id":"{endpoint}","task_group_id":"{group}"}}"#
            );
        }
        Event::Running { ts, task } => {
            let _ = writeln!(
                line,
                r#"{{"event":"task_running","ts":{ts:.3},"task_id":"{task}"}}"#
            );
        }
        Event::Finished {
            ts,
            task,
            how,
            exc_type,
        } => {
            let _ = write!(
                line,
                r#"{{"event":"task_finished","ts":{ts:.3},"task_id":"{task}","outcome":{}"#,
                json_string(how)
            );
            if let Some(t) = exc_type {
                let _ = write!(line, r#","exception_type":{}"#, json_string(&t));
            }
            line.push_str("}\n");
        }
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until the audit log in `dir` holds a line with `event`.
    fn wait_line(dir: &Path, event: &str) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(dir.join(FILE)).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.iter().any(|l| l["event"] == event) {
                return lines;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {event} line in {text:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_lost_to_a_full_disk_are_counted_and_told_in_the_log() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-audit-")
            .tempdir()
            .unwrap();
        let dir = scratch.path().to_path_buf();
        // A disk with no space: every write fails with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", dir.join(FILE)).unwrap();
        let audit = Audit::start(&dir, Some(DEFAULT_LIMITS));
        for i in 0..3 {
            audit.record(json!({"event": "token_created", "user": format!("u{i}")}));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while audit.lines_lost() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} lost",
                audit.lines_lost()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(audit.lines_lost(), 3);
        // Space is back.
        std::fs::remove_file(dir.join(FILE)).unwrap();
        audit.record(json!({"event": "token_revoked", "user": "u9"}));
        let lines = wait_line(&dir, "token_revoked");
        assert_eq!(lines[0]["event"], "audit_lines_lost", "{lines:?}");
        assert_eq!(lines[0]["lines"], 3);
        assert_eq!(lines[1]["user"], "u9");
        assert_eq!(lines.len(), 2);
        drop(audit);
    }

    #[test]
    fn lines_are_appended_private_and_flushed() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-audit-")
            .tempdir()
            .unwrap();
        let dir = scratch.path().to_path_buf();
        let audit = Audit::start(&dir, Some(DEFAULT_LIMITS));
        audit.record(json!({"event": "token_created", "user": "ada"}));
        let path = dir.join(FILE);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["event"], "token_created");
        assert_eq!(line["user"], "ada");
        assert!(line["ts"].as_f64().unwrap() > 0.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(audit);
    }

    #[test]
    fn task_lines_are_compact_and_name_the_submitter_once() {
        let (task, function, endpoint, group) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let mut text = String::new();
        let mut line = |event: Event| -> Value {
            let start = text.len();
            format_line(event, &mut text);
            let added = &text[start..];
            assert!(
                added.ends_with('\n') && added.matches('\n').count() == 1,
                "{added}"
            );
            serde_json::from_str(added).unwrap_or_else(|e| panic!("{e}: {added}"))
        };
        let ts = 1_765_000_000.123_456;
        let submitted = line(Event::Submitted {
            ts,
            user: "ada \"the\" admin".into(),
            task,
            function,
            endpoint,
            group,
        });
        assert_eq!(submitted["event"], "task_submitted");
        assert_eq!(submitted["user"], "ada \"the\" admin");
        assert_eq!(submitted["function_id"], json!(function));
        assert_eq!(submitted["endpoint_id"], json!(endpoint));
        assert_eq!(submitted["task_group_id"], json!(group));
        assert_eq!(submitted["ts"], 1_765_000_000.123);
        let running = line(Event::Running { ts, task });
        assert_eq!(running["task_id"], json!(task));
        let finished = line(Event::Finished {
            ts,
            task,
            how: "failed",
            exc_type: Some("Value\"Error".into()),
        });
        assert_eq!(finished["exception_type"], "Value\"Error");
        assert_eq!(finished["outcome"], "failed");
        for later in [&running, &finished] {
            assert!(later.get("user").is_none(), "said once: {later}");
        }
        let succeeded = line(Event::Finished {
            ts,
            task,
            how: "success",
            exc_type: None,
        });
        assert_eq!(succeeded["outcome"], "success");
        // Submitted, running and a success, by `hpfaas up`'s user: the
        // README's bytes per task (about 700 when every line named the
        // submitter, function and endpoint, with microseconds).
        let mut lines = String::new();
        for event in [
            Event::Submitted {
                ts,
                user: "local".into(),
                task,
                function,
                endpoint,
                group,
            },
            Event::Running { ts, task },
            Event::Finished {
                ts,
                task,
                how: "success",
                exc_type: None,
            },
        ] {
            format_line(event, &mut lines);
        }
        assert!(
            lines.len() <= 490,
            "{} bytes per task:\n{lines}",
            lines.len()
        );
    }

    /// The log's files in `dir`, current first.
    fn log_files(dir: &Path) -> Vec<(String, String)> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort_by_key(|n| {
            n.strip_prefix("audit.log.")
                .map_or(0, |i| i.parse().unwrap())
        });
        names
            .into_iter()
            .map(|n| (n.clone(), std::fs::read_to_string(dir.join(n)).unwrap()))
            .collect()
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_the_newest_files() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-audit-")
            .tempdir()
            .unwrap();
        let dir = scratch.path().to_path_buf();
        let limits = AuditLimits {
            max_bytes: 2048,
            keep: 3,
            daily: true,
        };
        let audit = Audit::start(&dir, Some(limits));
        let tasks = 200;
        for _ in 0..tasks {
            let task = Uuid::new_v4();
            audit.submitted(
                1.0,
                "ada",
                task,
                Uuid::new_v4(),
                Uuid::new_v4(),
                Uuid::new_v4(),
            );
            audit.running(task);
            audit.finished(task, "success", None);
        }
        audit.record(json!({"event": "token_revoked", "user": "last"}));
        wait_line(&dir, "token_revoked");
        drop(audit);
        let files = log_files(&dir);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
        );
        for (name, text) in &files {
            assert!(text.len() <= 2048, "{name}: {} bytes", text.len());
            assert!(text.ends_with('\n'), "{name} ends mid-line");
            for line in text.lines() {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            }
        }
        let kept: usize = files.iter().map(|(_, t)| t.lines().count()).sum();
        assert!(
            kept < tasks * 3,
            "older files were dropped: {kept} lines kept"
        );
    }

    #[test]
    fn an_audit_log_turned_off_writes_no_file() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-audit-")
            .tempdir()
            .unwrap();
        let audit = Audit::start(scratch.path(), None);
        let task = Uuid::new_v4();
        audit.submitted(
            1.0,
            "ada",
            task,
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        audit.finished(task, "success", None);
        audit.record(json!({"event": "token_created", "user": "ada"}));
        drop(audit);
        let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_missing_directory_costs_lines_not_the_caller() {
        let dir = std::env::temp_dir().join(format!("hpfaas-audit-gone-{}", Uuid::new_v4()));
        let audit = Audit::start(&dir, Some(DEFAULT_LIMITS));
        for _ in 0..10 {
            audit.record(json!({"event": "x"}));
        }
        drop(audit);
        assert!(!dir.exists());
    }
}
