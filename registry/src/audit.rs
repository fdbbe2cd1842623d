//! The audit log: one JSON line per event in `<data_dir>/audit.log` (0600)
//! — who submitted what, when it ran and how it ended, plus tokens and
//! endpoint registrations (docs/api.md, "Audit log").
//!
//! Handlers only [`Audit::record`] an event: a bounded channel carries it to
//! a writer thread, so a request never waits for the disk. The writer adds
//! the user's name and the function of `running` and `finished` events —
//! remembered from the task's `task_submitted` line, else read from the
//! database with its own read-only connection — appends, and flushes each
//! burst. A full channel or a failing disk is logged and costs only audit
//! lines, never the service.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use serde_json::{json, Value};
use uuid::Uuid;

/// The file, under the service's data directory.
pub const FILE: &str = "audit.log";

/// Events waiting for the writer before new ones are dropped (and logged).
const CAPACITY: usize = 1 << 16;

/// Unfinished tasks whose submitter the writer remembers; past this many the
/// memory is cleared and later events of older tasks read the database.
const REMEMBERED_TASKS: usize = 1 << 18;

/// The sending side, shared by every handler.
pub struct Audit {
    tx: SyncSender<Value>,
}

impl Audit {
    /// Starts the writer thread for `<data_dir>/audit.log`; it ends when
    /// the last [`Audit`] is dropped, after writing what it holds.
    pub fn start(data_dir: &Path) -> Audit {
        let (tx, rx) = sync_channel(CAPACITY);
        let dir = data_dir.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer(dir, rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit log writer; no audit lines will be written");
        }
        Audit { tx }
    }

    /// Queues one event (a JSON object; `ts` is added here); never blocks.
    pub fn record(&self, mut event: Value) {
        if let Some(map) = event.as_object_mut() {
            map.entry("ts").or_insert_with(|| json!(now()));
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(e)) => {
                tracing::error!(event = %e, "audit log writer is behind; dropping an audit line")
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A task was submitted.
    pub fn submitted(&self, user: &str, task: Uuid, function: Uuid, endpoint: Uuid, group: Uuid) {
        self.record(
            json!({"event": "task_submitted", "user": user, "task_id": task,
            "function_id": function, "endpoint_id": endpoint, "task_group_id": group}),
        );
    }

    /// The endpoint reported the task running.
    pub fn running(&self, task: Uuid, endpoint: Uuid) {
        self.record(json!({"event": "task_running", "task_id": task, "endpoint_id": endpoint}));
    }

    /// The task ended: `how` is `success`, `failed` or `cancelled`.
    pub fn finished(&self, task: Uuid, endpoint: Option<Uuid>, how: &str, exc_type: Option<&str>) {
        let mut e = json!({"event": "task_finished", "task_id": task, "outcome": how});
        if let Some(endpoint) = endpoint {
            e["endpoint_id"] = json!(endpoint);
        }
        if let Some(t) = exc_type {
            e["exception_type"] = json!(t);
        }
        self.record(e);
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

fn writer(dir: PathBuf, rx: Receiver<Value>) {
    let path = dir.join(FILE);
    let mut file: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut db: Option<rusqlite::Connection> = None;
    let mut known = Submitters::default();
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(4096));
        if file.is_none() {
            match open(&path) {
                Ok(f) => file = Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    if !failing {
                        tracing::error!(path = %path.display(), error = %e, "cannot open the audit log; dropping audit lines");
                    }
                    failing = true;
                    continue;
                }
            }
        }
        let out = file.as_mut().expect("opened above");
        let mut result = Ok(());
        for mut event in batch {
            known.complete(&dir, &mut db, &mut event);
            result = result.and_then(|()| out.write_all(format!("{event}\n").as_bytes()));
        }
        match result.and_then(|()| out.flush()) {
            Ok(()) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::error!(path = %path.display(), error = %e, "writing the audit log failed; dropping audit lines");
                }
                failing = true;
                // Reopen next time: the file may have been moved or the disk freed.
                file = None;
            }
        }
    }
}

/// Who submitted each unfinished task, and what it calls where, from its
/// `task_submitted` event: the later events of a task need no database read.
#[derive(Default)]
struct Submitters(HashMap<String, [Value; 3]>);

impl Submitters {
    /// Adds the submitter's name and the function to a task event that lacks them.
    fn complete(&mut self, dir: &Path, db: &mut Option<rusqlite::Connection>, event: &mut Value) {
        let Some(task) = event
            .get("task_id")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return;
        };
        let finished = event.get("event").and_then(Value::as_str) == Some("task_finished");
        if let Some(user) = event.get("user") {
            if !finished {
                if self.0.len() >= REMEMBERED_TASKS {
                    self.0.clear();
                }
                let field = |k: &str| event.get(k).cloned().unwrap_or(Value::Null);
                self.0.insert(
                    task,
                    [user.clone(), field("function_id"), field("endpoint_id")],
                );
            }
            return;
        }
        let known = if finished {
            self.0.remove(&task)
        } else {
            self.0.get(&task).cloned()
        };
        let found = match known {
            Some(fields) => Some(fields),
            None => lookup(dir, db, &task).map(|(u, f, e)| [json!(u), json!(f), json!(e)]),
        };
        if let Some([user, function, endpoint]) = found {
            event["user"] = user;
            event["function_id"] = function;
            event
                .as_object_mut()
                .expect("an object")
                .entry("endpoint_id")
                .or_insert(endpoint);
        }
    }
}

/// (user name, function id, endpoint id) of a task, from the database.
fn lookup(
    dir: &Path,
    db: &mut Option<rusqlite::Connection>,
    task: &str,
) -> Option<(String, String, String)> {
    if db.is_none() {
        *db = rusqlite::Connection::open_with_flags(
            crate::db::db_path(dir),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| tracing::warn!(error = %e, "audit log: cannot read the database"))
        .ok();
    }
    db.as_ref()?
        .prepare_cached(
            "SELECT u.name, t.function_id, t.endpoint_id FROM tasks t JOIN users u ON u.id = t.owner
             WHERE t.id = ?1",
        )
        .and_then(|mut st| st.query_row([task], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_private_and_flushed() {
        let dir = std::env::temp_dir().join(format!("hpfaas-audit-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
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
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn later_events_of_a_task_get_its_submitter_without_the_database() {
        let dir = std::env::temp_dir().join(format!("hpfaas-audit-nodb-{}", Uuid::new_v4()));
        let mut known = Submitters::default();
        let mut db = None;
        let (task, function, endpoint) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut submitted = json!({"event": "task_submitted", "user": "ada", "task_id": task,
            "function_id": function, "endpoint_id": endpoint});
        known.complete(&dir, &mut db, &mut submitted);
        let mut running = json!({"event": "task_running", "task_id": task});
        known.complete(&dir, &mut db, &mut running);
        assert_eq!(running["user"], "ada");
        assert_eq!(running["endpoint_id"], json!(endpoint));
        let mut finished = json!({"event": "task_finished", "task_id": task, "outcome": "success"});
        known.complete(&dir, &mut db, &mut finished);
        assert_eq!(finished["function_id"], json!(function));
        assert!(known.0.is_empty(), "a finished task is forgotten");
        let mut unknown = json!({"event": "task_running", "task_id": Uuid::new_v4()});
        known.complete(&dir, &mut db, &mut unknown);
        assert!(
            unknown.get("user").is_none(),
            "no database, no name, no panic"
        );
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
