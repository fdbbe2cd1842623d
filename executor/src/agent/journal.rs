//! The agent's journal: a local append-only file that holds every result
//! until the service acknowledges it, so a killed agent re-sends results
//! instead of re-running their tasks.
//!
//! Each line is one JSON record: `{"result": <TaskResult>}` when a result
//! arrives, `{"acked": [<task id>...]}` when the service has made results
//! durable. Opening the file replays it. A write is one `write` of whole
//! lines; a torn last line (the agent killed mid-write) is cut off at the
//! next open; any other unreadable line stops the agent with an error
//! naming the file and the byte, rather than dropping results. The file is
//! emptied whenever nothing is unacknowledged, and rewritten (a new file
//! renamed over it, so a crash or a full disk leaves the old one whole)
//! with only the unacknowledged results once it outgrows [`COMPACT_BYTES`]. Like the SQLite journal it replaces (a result insert
//! and delete per task were a tenth of `hpfaas up`), it survives the
//! agent's death, not the machine's: the service keeps every task that has
//! no durable result and sends it again.
//!
//! When the file cannot be written (a full disk), results are kept in
//! memory and written with the next ones once it can, and sent all the
//! same: the service keeps every task without a durable result, so only a
//! crash before space returns costs anything, a re-run. A record that was
//! written only in part is cut off again at once. Results left without an
//! acknowledgement (the service could not store them either) are sent
//! again ([`Journal::stale`]).
//!
//! Tasks themselves are not journaled: the service re-sends all non-final
//! ones to each new agent connection. Which tasks this agent is running is
//! kept in memory, to ignore the copies a reconnect re-sends.
//!
//! An exclusive `flock` on `journal.lock` beside it keeps a second agent
//! for the same endpoint out (on a file of its own, as compaction replaces
//! the journal's). Both are 0600: results are the users' data.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use hpfaas_protocol::task::{TaskResult, TaskSpec};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Size past which the file is rewritten with only what is unacknowledged.
const COMPACT_BYTES: u64 = 64 << 20;

/// One line of the file.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record<R> {
    /// A result, stored until acknowledged.
    Result(R),
    /// Results the service acknowledged.
    Acked(Vec<Uuid>),
}

/// The open journal.
pub struct Journal {
    path: PathBuf,
    /// Opened for appending.
    file: File,
    /// Held, with its `flock`, while the journal is open.
    _lock: File,
    /// Bytes in the file.
    size: u64,
    /// Ids of tasks accepted by this agent and not finished yet.
    outstanding: HashSet<Uuid>,
    /// Ids of the results stored and not yet acknowledged.
    unacknowledged: HashSet<Uuid>,
    /// Results the file could not take yet (also in `unacknowledged`).
    unwritten: HashMap<Uuid, TaskResult>,
    /// Results unacknowledged at the last [`Journal::stale`] call.
    seen_unacknowledged: HashSet<Uuid>,
    /// Size at which to compact next (later after a compaction failed).
    compact_at: u64,
    /// The last write failed (logged once it works again).
    write_failed: bool,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`, taking over the
    /// results of an earlier version's SQLite journal (`journal.db` beside it).
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        let lock = crate::private::open_append(&path.with_extension("lock"), false)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "the journal {} is held by another agent for this endpoint",
                path.display()
            );
        }
        let file = crate::private::open_append(path, true)
            .with_context(|| format!("cannot open the journal {}", path.display()))?;
        let (results, good) = replay(path)?;
        let mut journal = Journal {
            path: path.to_path_buf(),
            size: good,
            file,
            _lock: lock,
            outstanding: HashSet::new(),
            unacknowledged: results.keys().copied().collect(),
            unwritten: HashMap::new(),
            seen_unacknowledged: HashSet::new(),
            compact_at: COMPACT_BYTES,
            write_failed: false,
        };
        // Cut off a torn last line, so the next record starts on its own.
        journal.file.set_len(good)?;
        let old = path.with_file_name("journal.db");
        if old.exists() {
            let earlier = sqlite_results(&old)?;
            journal.store_results(&earlier);
            anyhow::ensure!(
                journal.unwritten.is_empty(),
                "cannot write the journal {} to take over {}",
                path.display(),
                old.display()
            );
            for suffix in ["", "-wal", "-shm"] {
                let mut name = old.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
            tracing::info!(
                "took {} unacknowledged results over from {}",
                earlier.len(),
                old.display()
            );
        }
        if journal.unacknowledged.is_empty() {
            journal.empty()?;
        }
        Ok(journal)
    }

    /// Takes new tasks; returns those not seen before (a re-sent task that
    /// is running here or has a result waiting for its acknowledgement is
    /// not run twice).
    pub fn accept(&mut self, tasks: Vec<TaskSpec>) -> Vec<TaskSpec> {
        let mut fresh = Vec::with_capacity(tasks.len());
        for t in tasks {
            if !self.unacknowledged.contains(&t.task_id) && self.outstanding.insert(t.task_id) {
                fresh.push(t);
            }
        }
        fresh
    }

    /// Stores results until the service acknowledges them: in the file, or
    /// in memory while the file cannot take them (the error is logged).
    pub fn store_results(&mut self, results: &[TaskResult]) {
        for r in results {
            self.outstanding.remove(&r.task_id);
            self.unacknowledged.insert(r.task_id);
            self.unwritten.insert(r.task_id, r.clone());
        }
        self.write_unwritten();
    }

    /// Appends the results kept in memory, if the file takes them now.
    fn write_unwritten(&mut self) {
        if self.unwritten.is_empty() {
            return;
        }
        let mut lines = Vec::new();
        for r in self.unwritten.values() {
            // A TaskResult always serialises; should it not, it stays in memory.
            if serde_json::to_writer(&mut lines, &Record::Result(r)).is_err() {
                return;
            }
            lines.push(b'\n');
        }
        match self.append(&lines) {
            Ok(()) => {
                if self.write_failed {
                    self.write_failed = false;
                    tracing::info!(
                        "the journal {} takes results again ({} kept in memory written)",
                        self.path.display(),
                        self.unwritten.len()
                    );
                }
                self.unwritten.clear();
            }
            Err(e) => {
                self.write_failed = true;
                tracing::error!(
                    "{e:#}; {} results are kept in memory until it can be written (they are sent \
                 meanwhile; the service re-sends their tasks should this agent stop first)",
                    self.unwritten.len()
                );
            }
        }
    }

    /// Forgets results the service has made durable. A failure to record
    /// that only leaves them in the file, to be sent again once (the
    /// service drops duplicates); it is logged.
    pub fn forget_results(&mut self, task_ids: &[Uuid]) {
        for id in task_ids {
            self.unacknowledged.remove(id);
            self.unwritten.remove(id);
        }
        let done = if self.unacknowledged.is_empty() {
            self.empty()
        } else {
            self.record_acks(task_ids)
        };
        if let Err(e) = done {
            tracing::warn!("{e:#}");
        }
    }

    fn record_acks(&mut self, task_ids: &[Uuid]) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(&Record::<()>::Acked(task_ids.to_vec()))?;
        line.push(b'\n');
        self.append(&line)?;
        if self.size > self.compact_at {
            if let Err(e) = self.compact() {
                // Not at every acknowledgement: after another eighth.
                self.compact_at = self.size + COMPACT_BYTES / 8;
                return Err(e);
            }
            self.compact_at = COMPACT_BYTES;
        }
        Ok(())
    }

    /// Results that were unacknowledged at the previous call already, to
    /// send again: the service acknowledges what it stores, so these it
    /// could not (a full disk) or never got. Writes results kept in memory
    /// if the file takes them now.
    pub fn stale(&mut self) -> anyhow::Result<Vec<TaskResult>> {
        self.write_unwritten();
        let stale: HashSet<Uuid> = self
            .unacknowledged
            .intersection(&self.seen_unacknowledged)
            .copied()
            .collect();
        self.seen_unacknowledged = self.unacknowledged.clone();
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .unacknowledged()?
            .into_iter()
            .filter(|r| stale.contains(&r.task_id))
            .collect())
    }

    /// Stops counting cancelled tasks as outstanding. A result that still
    /// comes for one is stored and sent like any other (the service
    /// acknowledges and drops it).
    pub fn cancel(&mut self, task_ids: &[Uuid]) {
        for id in task_ids {
            self.outstanding.remove(id);
        }
    }

    /// Results the service has not acknowledged yet.
    pub fn unacknowledged(&self) -> anyhow::Result<Vec<TaskResult>> {
        let (mut results, _) = replay(&self.path)?;
        for (id, r) in &self.unwritten {
            results.insert(*id, r.clone());
        }
        Ok(self
            .unacknowledged
            .iter()
            .filter_map(|id| results.remove(id))
            .collect())
    }

    /// Tasks accepted and not yet finished.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.len() as u64
    }

    /// Appends whole records, or nothing: what a failed write left of them
    /// is cut off, so the file never holds a broken record before good ones.
    fn append(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if let Err(e) = self.file.write_all(bytes) {
            let cut = self.file.set_len(self.size);
            let e = anyhow::Error::from(e)
                .context(format!("cannot write the journal {}", self.path.display()));
            return Err(match cut {
                Ok(()) => e,
                Err(cut) => e.context(format!(
                    "and cannot cut its partial record off ({cut}): the journal is damaged"
                )),
            });
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Nothing is unacknowledged: the file starts over.
    fn empty(&mut self) -> anyhow::Result<()> {
        if self.size > 0 {
            self.file.set_len(0)?;
            self.size = 0;
        }
        Ok(())
    }

    /// Replaces the file with one holding only the unacknowledged results.
    /// Until the rename the old file is untouched, so a failure (a full
    /// disk) or a crash part-way loses nothing.
    fn compact(&mut self) -> anyhow::Result<()> {
        let keep = self.unacknowledged()?;
        let mut lines = Vec::new();
        for r in &keep {
            serde_json::to_writer(&mut lines, &Record::Result(r))?;
            lines.push(b'\n');
        }
        crate::private::write(&self.path, &lines, true)
            .with_context(|| format!("cannot compact the journal {}", self.path.display()))?;
        self.file = crate::private::open_append(&self.path, true)?;
        self.size = lines.len() as u64;
        Ok(())
    }
}

/// The unacknowledged results in the file at `path` (the last one stored
/// for each task), and the length of its whole lines.
fn replay(path: &Path) -> anyhow::Result<(HashMap<Uuid, TaskResult>, u64)> {
    let file =
        File::open(path).with_context(|| format!("cannot read the journal {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let (mut results, mut good, mut line) = (HashMap::new(), 0u64, Vec::new());
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break; // the end, or a torn last line
        }
        match serde_json::from_slice::<Record<TaskResult>>(&line) {
            Ok(Record::Result(r)) => {
                results.insert(r.task_id, r);
            }
            Ok(Record::Acked(ids)) => {
                for id in ids {
                    results.remove(&id);
                }
            }
            Err(e) => anyhow::bail!(
                "the journal {} is corrupt at byte {good} ({e}); it may hold results the \
                 service has not acknowledged: move it aside to start without them",
                path.display()
            ),
        }
        good += n as u64;
    }
    if !line.is_empty() && !could_be_torn(&line) {
        anyhow::bail!(
            "the journal {} ends in {} bytes at byte {good} that are not part of a record; it \
             may hold results the service has not acknowledged: move it aside to start without \
             them",
            path.display(),
            line.len()
        );
    }
    Ok((results, good))
}

/// True if `tail` (an unterminated last line) can be the start of a record
/// whose write was cut short, which is cut off; anything else is damage.
fn could_be_torn(tail: &[u8]) -> bool {
    [&br#"{"result":"#[..], &br#"{"acked":"#[..]]
        .iter()
        .any(|head| tail.starts_with(head) || head.starts_with(tail))
}

/// The results in an earlier version's SQLite journal.
fn sqlite_results(path: &Path) -> anyhow::Result<Vec<TaskResult>> {
    let db = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open the old journal {}", path.display()))?;
    let has_results: bool = db.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'results'",
        [],
        |r| r.get(0),
    )?;
    if !has_results {
        return Ok(Vec::new());
    }
    let mut stmt = db.prepare("SELECT result FROM results")?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(serde_json::from_str(&r?)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpfaas_protocol::task::Outcome;
    use std::fs::OpenOptions;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("hpfaas-journal-")
            .tempdir()
            .unwrap()
    }

    fn task() -> TaskSpec {
        TaskSpec {
            task_id: Uuid::new_v4(),
            function_id: Uuid::new_v4(),
            payload: "p".into(),
            blob: None,
            result_serializers: vec![],
            resource_spec: None,
        }
    }

    fn result(task_id: Uuid) -> TaskResult {
        TaskResult {
            task_id,
            outcome: Outcome::Success { result: "r".into() },
            output: None,
            completed_at: 1.0,
            placement: None,
        }
    }

    #[test]
    fn results_survive_reopen_until_acknowledged() {
        let dir = temp_dir();
        let path = dir.path().join("journal.log");
        let (a, b, c) = (task(), task(), task());
        {
            let mut j = Journal::open(&path).unwrap();
            assert_eq!(j.accept(vec![a.clone(), b.clone(), c.clone()]).len(), 3);
            assert!(j.accept(vec![a.clone()]).is_empty(), "re-sent task ignored");
            j.store_results(&[result(a.task_id), result(c.task_id)]);
            j.forget_results(&[c.task_id]);
            assert!(
                j.accept(vec![a.clone()]).is_empty(),
                "finished task not re-run"
            );
            assert_eq!(j.outstanding(), 1);
        }
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.outstanding(), 0, "tasks are the service's to re-send");
        assert_eq!(j.unacknowledged().unwrap(), vec![result(a.task_id)]);
        assert!(
            j.accept(vec![a.clone()]).is_empty(),
            "a task whose result waits for its acknowledgement is not re-run"
        );
        assert_eq!(
            j.accept(vec![b.clone()]),
            vec![b.clone()],
            "re-sent task runs"
        );
        j.forget_results(&[a.task_id]);
        assert!(j.unacknowledged().unwrap().is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied");
        j.cancel(&[b.task_id, Uuid::new_v4()]);
        assert_eq!(
            j.outstanding(),
            0,
            "a cancelled task is no longer outstanding"
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_off() {
        let dir = temp_dir();
        let path = dir.path().join("journal.log");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        {
            let mut j = Journal::open(&path).unwrap();
            j.store_results(&[result(a)]);
        }
        // Killed in the middle of writing b's line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"result":{"task_id":"#).unwrap();
        drop(f);
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.unacknowledged().unwrap(), vec![result(a)]);
        j.store_results(&[result(b)]);
        drop(j);
        let j = Journal::open(&path).unwrap();
        let mut ids: Vec<Uuid> = j
            .unacknowledged()
            .unwrap()
            .iter()
            .map(|r| r.task_id)
            .collect();
        ids.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(ids, want, "the next record starts on a line of its own");
    }

    #[test]
    fn a_long_file_is_compacted_to_what_is_unacknowledged() {
        let dir = temp_dir();
        let path = dir.path().join("journal.log");
        let mut j = Journal::open(&path).unwrap();
        let kept = Uuid::new_v4();
        j.store_results(&[result(kept)]);
        let big = "x".repeat(1 << 20);
        let size = || std::fs::metadata(&path).unwrap().len();
        let mut rounds = 0;
        loop {
            let (before, id) = (size(), Uuid::new_v4());
            let mut r = result(id);
            r.outcome = Outcome::Success {
                result: big.clone(),
            };
            j.store_results(&[r]);
            j.forget_results(&[id]);
            rounds += 1;
            if size() < before {
                break;
            }
            assert!(rounds <= (COMPACT_BYTES >> 20) + 1, "never compacted");
        }
        assert!(rounds > (COMPACT_BYTES >> 20) - 2, "compacted early");
        assert!(size() < 4096, "{} bytes left", size());
        assert_eq!(j.unacknowledged().unwrap(), vec![result(kept)]);
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.unacknowledged().unwrap(), vec![result(kept)]);
    }

    #[test]
    fn compaction_writes_a_new_private_file_and_keeps_the_lock() {
        let dir = temp_dir();
        let path = dir.path().join("journal.log");
        let mut j = Journal::open(&path).unwrap();
        let kept = Uuid::new_v4();
        j.store_results(&[result(kept)]);
        let inode = std::fs::metadata(&path).unwrap().ino();
        // Past the threshold, then one more acknowledgement compacts.
        j.size = COMPACT_BYTES;
        let gone = Uuid::new_v4();
        j.store_results(&[result(gone)]);
        j.forget_results(&[gone]);
        let meta = std::fs::metadata(&path).unwrap();
        assert_ne!(meta.ino(), inode, "rewritten in place, not replaced");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(
            Journal::open(&path).is_err(),
            "the lock survives compaction"
        );
        let stored = result(Uuid::new_v4());
        j.store_results(std::slice::from_ref(&stored));
        drop(j);
        let j = Journal::open(&path).unwrap();
        let mut got = j.unacknowledged().unwrap();
        got.sort_by_key(|r| r.task_id);
        let mut want = vec![result(kept), stored];
        want.sort_by_key(|r| r.task_id);
        assert_eq!(got, want, "appends after compaction go to the new file");
    }

    #[test]
    fn results_the_file_cannot_take_are_kept_in_memory_until_it_can() {
        let dir = temp_dir();
        let path = dir.path().join("journal.log");
        let mut j = Journal::open(&path).unwrap();
        let (a, b) = (task(), task());
        j.accept(vec![a.clone(), b.clone()]);
        j.store_results(&[result(a.task_id)]);
        let good = std::fs::read(&path).unwrap();
        // A file that refuses writes, as a full disk does.
        j.file = File::open(&path).unwrap();
        j.store_results(&[result(b.task_id)]);
        assert_eq!(std::fs::read(&path).unwrap(), good, "nothing half written");
        assert!(j.accept(vec![b.clone()]).is_empty(), "not run twice");
        let mut ids: Vec<Uuid> = j
            .unacknowledged()
            .unwrap()
            .iter()
            .map(|r| r.task_id)
            .collect();
        ids.sort();
        let mut want = vec![a.task_id, b.task_id];
        want.sort();
        assert_eq!(ids, want);
        j.forget_results(&[a.task_id]); // cannot be recorded: logged, not fatal
                                        // Space is back: the next call writes what memory held.
        j.file = crate::private::open_append(&path, true).unwrap();
        assert!(
            j.stale().unwrap().is_empty(),
            "nothing stale on the first call"
        );
        drop(j);
        let j = Journal::open(&path).unwrap();
        let ids: Vec<Uuid> = j
            .unacknowledged()
            .unwrap()
            .iter()
            .map(|r| r.task_id)
            .collect();
        assert!(ids.contains(&b.task_id), "{ids:?}");
    }

    #[test]
    fn results_unacknowledged_for_a_whole_period_are_stale() {
        let dir = temp_dir();
        let path = dir.path().join("journal.log");
        let mut j = Journal::open(&path).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        j.store_results(&[result(a)]);
        assert!(j.stale().unwrap().is_empty());
        j.store_results(&[result(b)]);
        assert_eq!(j.stale().unwrap(), vec![result(a)], "b is new");
        j.forget_results(&[a]);
        assert_eq!(j.stale().unwrap(), vec![result(b)]);
        j.forget_results(&[b]);
        assert!(j.stale().unwrap().is_empty());
    }

    #[test]
    fn an_existing_journal_is_made_private() {
        let dir = temp_dir();
        let path = dir.path().join("journal.log");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _j = Journal::open(&path).unwrap();
        for p in [path.clone(), path.with_extension("lock")] {
            let mode = std::fs::metadata(&p).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    #[test]
    fn a_corrupt_journal_stops_the_agent_naming_the_file() {
        let a = Uuid::new_v4();
        for damage in [
            &b"garbage\n"[..],
            b"\x00\x01\x02 not json",
            b"{\"result\":{}}\n",
        ] {
            let dir = temp_dir();
            let path = dir.path().join("journal.log");
            {
                let mut j = Journal::open(&path).unwrap();
                j.store_results(&[result(a)]);
            }
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(damage).unwrap();
            drop(f);
            let before = std::fs::read(&path).unwrap();
            let err = format!(
                "{:#}",
                Journal::open(&path).err().expect("corrupt journal opened")
            );
            assert!(
                err.contains(&path.display().to_string()) && err.contains("byte"),
                "{err}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), before, "nothing cut off");
        }
    }

    #[test]
    fn results_of_an_earlier_sqlite_journal_are_taken_over() {
        let dir = temp_dir();
        let a = Uuid::new_v4();
        {
            let db = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
            db.execute_batch(
                "CREATE TABLE functions (id TEXT PRIMARY KEY, code TEXT NOT NULL);
                 CREATE TABLE tasks (id TEXT PRIMARY KEY, spec TEXT NOT NULL);
                 CREATE TABLE results (id TEXT PRIMARY KEY, result TEXT NOT NULL);
                 INSERT INTO tasks VALUES ('x', '{}');",
            )
            .unwrap();
            db.execute(
                "INSERT INTO results VALUES (?1, ?2)",
                [a.to_string(), serde_json::to_string(&result(a)).unwrap()],
            )
            .unwrap();
        }
        let j = Journal::open(&dir.path().join("journal.log")).unwrap();
        assert_eq!(j.outstanding(), 0);
        assert_eq!(j.unacknowledged().unwrap(), vec![result(a)]);
        assert!(
            !dir.path().join("journal.db").exists(),
            "the old file is gone"
        );
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = temp_dir();
        let path = dir.path().join("journal.log");
        let _first = Journal::open(&path).unwrap();
        let err = Journal::open(&path)
            .err()
            .expect("second open must fail")
            .to_string();
        assert!(err.contains("journal"), "{err}");
    }
}
