//! The audit log: one JSON line per event in `<data_dir>/audit.log` (0600)
//! — who submitted what, when it ran and how it ended, plus tokens and
//! endpoint registrations (docs/api.md, "Audit log").
//!
//! Handlers only [`Audit::record`] an event: a bounded queue carries it to
//! a writer thread, so a request never waits for the disk. The writer is
//! woken only when it sleeps, and then gathers events for a few
//! milliseconds: one wake-up per burst, not one per event (a thread wake
//! for each of a task's three lines was a tenth of `hpfaas up`'s CPU on
//! no-op tasks). The writer adds
//! the user's name and the function of `running` and `finished` events —
//! remembered from the task's `task_submitted` line, else read from the
//! database with its own read-only connection — appends, and flushes each
//! burst. A full channel or a failing disk costs only audit lines, never
//! the service, but never silently: every loss is logged as an error with
//! the count, counted ([`Audit::lines_lost`]), and once lines can be written
//! again the log itself gets an `audit_lines_lost` line saying how many.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

/// The file, under the service's data directory.
pub const FILE: &str = "audit.log";

/// Events waiting for the writer before new ones are dropped (and logged).
const CAPACITY: usize = 1 << 16;

/// How long the writer, once woken, lets a burst of events gather.
const GATHER: Duration = Duration::from_millis(5);

/// Unfinished tasks whose submitter the writer remembers; past this many the
/// memory is cleared and later events of older tasks read the database.
const REMEMBERED_TASKS: usize = 1 << 18;

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
    Running { ts: f64, task: Uuid, endpoint: Uuid },
    /// A task's result was stored.
    Finished {
        ts: f64,
        task: Uuid,
        endpoint: Option<Uuid>,
        how: &'static str,
        exc_type: Option<String>,
    },
}

/// The sending side, shared by every handler.
pub struct Audit {
    queue: Arc<Queue>,
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
    /// Starts the writer thread for `<data_dir>/audit.log`; it ends when
    /// the last [`Audit`] is dropped, after writing what it holds.
    pub fn start(data_dir: &Path) -> Audit {
        let queue = Arc::new(Queue::default());
        let dir = data_dir.to_path_buf();
        let writer_queue = queue.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer(dir, &writer_queue));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit log writer; no audit lines will be written");
        }
        Audit { queue }
    }

    /// Queues one event (a JSON object; `ts` is added here); never blocks.
    pub fn record(&self, mut event: Value) {
        if let Some(map) = event.as_object_mut() {
            map.entry("ts").or_insert_with(|| json!(now()));
        }
        self.send(Event::Other(event));
    }

    fn send(&self, event: Event) {
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
    pub fn running(&self, task: Uuid, endpoint: Uuid) {
        self.send(Event::Running {
            ts: now(),
            task,
            endpoint,
        });
    }

    /// The task ended: `how` is `success`, `failed` or `cancelled`.
    pub fn finished(
        &self,
        task: Uuid,
        endpoint: Option<Uuid>,
        how: &'static str,
        exc_type: Option<&str>,
    ) {
        self.send(Event::Finished {
            ts: now(),
            task,
            endpoint,
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

fn writer(dir: PathBuf, queue: &Queue) {
    let path = dir.join(FILE);
    let mut file: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut known = Submitters::new(dir.clone());
    // Lost lines already told in the log itself.
    let mut told = 0u64;
    // A write failed, maybe mid-line: the next line starts a line of its own.
    let mut cut = false;
    let mut line = String::new();
    while let Some(batch) = queue.take() {
        let count = batch.len() as u64;
        if file.is_none() {
            match open(&path) {
                Ok(f) => file = Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    let lost = queue.lose(count);
                    tracing::error!(path = %path.display(), error = %e, lost, "cannot open the audit log; dropped {count} audit lines ({lost} lost so far)");
                    continue;
                }
            }
        }
        let out = file.as_mut().expect("opened above");
        let lost = queue.lost.load(Ordering::Relaxed);
        let mut result = Ok(());
        if lost > told {
            let notice = json!({"event": "audit_lines_lost", "lines": lost - told, "ts": now()});
            let start = if cut { "\n" } else { "" };
            result = out.write_all(format!("{start}{notice}\n").as_bytes());
        }
        for event in batch {
            line.clear();
            known.format(event, &mut line);
            result = result.and_then(|()| out.write_all(line.as_bytes()));
        }
        match result.and_then(|()| out.flush()) {
            Ok(()) => (told, cut) = (lost, false),
            Err(e) => {
                // Some of the batch may be on disk; counted as lost all the same.
                let lost = queue.lose(count);
                tracing::error!(path = %path.display(), error = %e, lost, "writing the audit log failed; dropped {count} audit lines ({lost} lost so far)");
                // Reopen next time: the file may have been moved or the disk
                // freed. What is still buffered is dropped, not retried.
                if let Some(broken) = file.take() {
                    drop(broken.into_parts());
                }
                cut = true;
            }
        }
    }
}

/// A task's submitter (as a JSON string), function and endpoint.
type Submitter = (String, Uuid, Uuid);

/// Who submitted each unfinished task, and what it calls where, from its
/// `task_submitted` event: the later events of a task need no database read
/// (a task submitted before the service restarted is looked up).
struct Submitters {
    dir: PathBuf,
    db: Option<rusqlite::Connection>,
    known: HashMap<Uuid, Submitter>,
}

impl Submitters {
    fn new(dir: PathBuf) -> Submitters {
        Submitters {
            dir,
            db: None,
            known: HashMap::new(),
        }
    }

    /// Appends the event's line to `line`, with the submitter's name and the
    /// function added to the events of a task.
    fn format(&mut self, event: Event, line: &mut String) {
        use std::fmt::Write as _;
        match event {
            Event::Other(mut value) => {
                self.complete(&mut value);
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
                    r#"{{"endpoint_id":"{endpoint}","event":"task_submitted","function_id":"{function}","task_group_id":"{group}","task_id":"{task}","ts":{ts},"user":{user}}}"#
                );
                self.remember(task, (user, function, endpoint));
            }
            Event::Running { ts, task, endpoint } => {
                let _ = write!(
                    line,
                    r#"{{"endpoint_id":"{endpoint}","event":"task_running","#
                );
                if let Some((user, function, _)) = self.known_submitter(task) {
                    let _ = write!(line, r#""function_id":"{function}","user":{user},"#);
                }
                let _ = writeln!(line, r#""task_id":"{task}","ts":{ts}}}"#);
            }
            Event::Finished {
                ts,
                task,
                endpoint,
                how,
                exc_type,
            } => {
                let submitter = self.take_submitter(task);
                line.push('{');
                if let Some(endpoint) = endpoint.or(submitter.as_ref().map(|s| s.2)) {
                    let _ = write!(line, r#""endpoint_id":"{endpoint}","#);
                }
                line.push_str(r#""event":"task_finished","#);
                if let Some(t) = exc_type {
                    let _ = write!(line, r#""exception_type":{},"#, json_string(&t));
                }
                if let Some((user, function, _)) = &submitter {
                    let _ = write!(line, r#""function_id":"{function}","user":{user},"#);
                }
                let _ = writeln!(
                    line,
                    r#""outcome":{},"task_id":"{task}","ts":{ts}}}"#,
                    json_string(how)
                );
            }
        }
    }

    /// Remembers a task's submitter, forgetting everyone past the bound.
    fn remember(&mut self, task: Uuid, submitter: Submitter) {
        if self.known.len() >= REMEMBERED_TASKS {
            self.known.clear();
        }
        self.known.insert(task, submitter);
    }

    /// The task's submitter, remembered, else read (and remembered): borrowed,
    /// as every task's running line asks for it.
    fn known_submitter(&mut self, task: Uuid) -> Option<&Submitter> {
        if !self.known.contains_key(&task) {
            let found = self.read_submitter(task)?;
            self.remember(task, found);
        }
        self.known.get(&task)
    }

    /// The task's submitter, forgotten now: its last line is being written.
    fn take_submitter(&mut self, task: Uuid) -> Option<Submitter> {
        self.known
            .remove(&task)
            .or_else(|| self.read_submitter(task))
    }

    /// The task's submitter from the database.
    fn read_submitter(&mut self, task: Uuid) -> Option<Submitter> {
        let (user, function, endpoint) = self.lookup(task)?;
        Some((
            json_string(&user),
            Uuid::parse_str(&function).ok()?,
            Uuid::parse_str(&endpoint).ok()?,
        ))
    }

    /// Adds the submitter's name and the function to a generic task event
    /// (a cancellation) that lacks them.
    fn complete(&mut self, event: &mut Value) {
        if event.get("user").is_some() {
            return;
        }
        let Some(task) = event
            .get("task_id")
            .and_then(Value::as_str)
            .and_then(|t| Uuid::parse_str(t).ok())
        else {
            return;
        };
        let last = event.get("event").and_then(Value::as_str) == Some("task_finished");
        let submitter = if last {
            self.take_submitter(task)
        } else {
            self.known_submitter(task).cloned()
        };
        if let Some((user, function, endpoint)) = submitter {
            event["user"] = serde_json::from_str(&user).unwrap_or(Value::Null);
            event["function_id"] = json!(function);
            event
                .as_object_mut()
                .expect("an object")
                .entry("endpoint_id")
                .or_insert(json!(endpoint));
        }
    }

    /// (user name, function id, endpoint id) of a task, from the database.
    fn lookup(&mut self, task: Uuid) -> Option<(String, String, String)> {
        if self.db.is_none() {
            self.db = rusqlite::Connection::open_with_flags(
                crate::db::db_path(&self.dir),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| tracing::warn!(error = %e, "audit log: cannot read the database"))
            .ok();
        }
        self.db
            .as_ref()?
            .prepare_cached(
                "SELECT u.name, t.function_id, t.endpoint_id FROM tasks t
                 JOIN users u ON u.id = t.owner WHERE t.id = ?1",
            )
            .and_then(|mut st| {
                st.query_row([task.to_string()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
            })
            .ok()
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
        let audit = Audit::start(&dir);
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
        let audit = Audit::start(&dir);
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
    fn later_events_of_a_task_get_its_submitter_without_the_database() {
        let dir = std::env::temp_dir().join(format!("hpfaas-audit-nodb-{}", Uuid::new_v4()));
        let mut known = Submitters::new(dir);
        let (task, function, endpoint, group) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let mut line = |event: Event| -> Value {
            let mut text = String::new();
            known.format(event, &mut text);
            assert!(
                text.ends_with('\n') && text.matches('\n').count() == 1,
                "{text}"
            );
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
        };
        let submitted = line(Event::Submitted {
            ts: 1.5,
            user: "ada \"the\" admin".into(),
            task,
            function,
            endpoint,
            group,
        });
        assert_eq!(submitted["event"], "task_submitted");
        assert_eq!(submitted["user"], "ada \"the\" admin");
        assert_eq!(submitted["task_group_id"], json!(group));
        assert_eq!(submitted["ts"], 1.5);
        let running = line(Event::Running {
            ts: 2.0,
            task,
            endpoint,
        });
        assert_eq!(running["user"], "ada \"the\" admin");
        assert_eq!(running["function_id"], json!(function));
        assert_eq!(running["endpoint_id"], json!(endpoint));
        let finished = line(Event::Finished {
            ts: 3.0,
            task,
            endpoint: None,
            how: "failed",
            exc_type: Some("Value\"Error".into()),
        });
        assert_eq!(
            finished["endpoint_id"],
            json!(endpoint),
            "taken from the submit"
        );
        assert_eq!(finished["exception_type"], "Value\"Error");
        assert_eq!(finished["outcome"], "failed");
        assert_eq!(finished["user"], "ada \"the\" admin");
        let unknown = line(Event::Running {
            ts: 4.0,
            task: Uuid::new_v4(),
            endpoint,
        });
        assert!(
            unknown.get("user").is_none(),
            "no database, no name, no panic"
        );
        let cancelled = line(Event::Other(
            json!({"event": "task_finished", "task_id": task, "outcome": "cancelled"}),
        ));
        assert!(
            cancelled.get("user").is_none(),
            "a finished task is forgotten"
        );
        assert!(known.known.is_empty());
    }

    #[test]
    fn a_missing_directory_costs_lines_not_the_caller() {
        let dir = std::env::temp_dir().join(format!("hpfaas-audit-gone-{}", Uuid::new_v4()));
        let audit = Audit::start(&dir);
        for _ in 0..10 {
            audit.record(json!({"event": "x"}));
        }
        drop(audit);
        assert!(!dir.exists());
    }
}
