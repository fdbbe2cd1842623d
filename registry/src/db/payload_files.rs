//! Large argument payloads, kept as one file per task beside the database.
//!
//! A payload over [`INLINE_MAX`] bytes is not stored in `task_payloads`:
//! SQLite would write it to the WAL, copy it again at the checkpoint, and
//! walk its chain of overflow pages to delete it, which was most of the
//! writer's time on 1 MiB arguments. Its row says `in_file = 1` and the text
//! is in `<data_dir>/payloads/<task id>`. A task with a blob (raw argument
//! bytes, docs/api.md "Binary arguments") keeps the blob in that file
//! instead, and its (short) payload text in the row.
//!
//! Durability: the submit handler writes and syncs the files (and their
//! directory) before the write job that inserts their rows, so a committed
//! row always has its file. A file is removed once its task's final state
//! is durable ([`PayloadFiles::remove`], by the endpoint link after a result
//! batch's sync); files of tasks that ended otherwise (cancelled) or of
//! submits that never committed (a crash, a refused or replayed request)
//! are removed by [`PayloadFiles::sweep`], at start-up and with each purge.
//! A sweep judges a file by its task's row, never by the file's mtime
//! (which a copy or restore resets): the only files it must spare without
//! a row are those of submits in flight, and this process knows which
//! those are (`pending`).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

/// Payloads longer than this (bytes of packed text) are kept in files.
pub const INLINE_MAX: usize = 64 * 1024;

/// The directory of payload files (cheap to clone: every dispatch turn and
/// result batch takes one).
#[derive(Debug, Clone)]
pub struct PayloadFiles {
    dir: Arc<Path>,
    /// Tasks whose file this process wrote and whose row it has not seen
    /// yet, nor removed the file: a submit may still be committing them.
    pending: Arc<Mutex<HashSet<Uuid>>>,
}

impl PayloadFiles {
    /// The payload directory beside the database at `db_path` (created, 0700).
    pub fn beside(db_path: &Path) -> std::io::Result<PayloadFiles> {
        let dir = db_path.with_file_name("payloads");
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        Ok(PayloadFiles {
            dir: dir.into(),
            pending: Arc::default(),
        })
    }

    fn path(&self, task: Uuid) -> PathBuf {
        self.dir.join(task.to_string())
    }

    /// Writes each task's payload to its file and makes them durable (the
    /// files, then the directory entries) before returning.
    pub fn write(&self, payloads: &[(Uuid, &[u8])]) -> std::io::Result<()> {
        if let Ok(mut pending) = self.pending.lock() {
            pending.extend(payloads.iter().map(|(task, _)| *task));
        }
        let mut files = Vec::with_capacity(payloads.len());
        for (task, content) in payloads {
            let path = self.path(*task);
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(content)?;
            files.push(file);
        }
        // Written first, synced after: the disk gets all of them at once.
        for file in &files {
            file.sync_data()?;
        }
        if !files.is_empty() {
            std::fs::File::open(&*self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The payload text of `task`.
    pub fn read(&self, task: Uuid) -> std::io::Result<String> {
        std::fs::read_to_string(self.path(task))
    }

    /// The blob of `task`.
    pub fn read_blob(&self, task: Uuid) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(task))
    }

    /// The size in bytes of `task`'s payload file.
    pub fn size(&self, task: Uuid) -> std::io::Result<u64> {
        Ok(std::fs::metadata(self.path(task))?.len())
    }

    /// Removes the files of these tasks (those without one are skipped).
    pub fn remove(&self, tasks: impl IntoIterator<Item = Uuid>) {
        for task in tasks {
            self.forget_pending(task);
            if let Err(e) = std::fs::remove_file(self.path(task)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%task, error = %e, "cannot remove a payload file");
                }
            }
        }
    }

    fn forget_pending(&self, task: Uuid) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&task);
        }
    }

    fn is_pending(&self, task: Uuid) -> bool {
        self.pending.lock().is_ok_and(|p| p.contains(&task))
    }

    /// Removes files whose task is final or unknown, but for the files of
    /// submits this process has in flight (no row yet). Returns how many
    /// were removed.
    pub fn sweep(&self, conn: &Connection) -> std::io::Result<usize> {
        let mut needed = conn
            .prepare_cached(
                "SELECT t.done = 0 AND ifnull(p.in_file, 0) = 1 FROM tasks t
                 LEFT JOIN task_payloads p ON p.rid = t.rid WHERE t.id = ?1",
            )
            .map_err(std::io::Error::other)?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&*self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let task = name.to_str().and_then(|n| Uuid::parse_str(n).ok());
            let keep = match task {
                Some(task) => {
                    let row: Option<bool> = needed
                        .query_row([task.to_string()], |r| r.get(0))
                        .optional()
                        .map_err(std::io::Error::other)?;
                    match row {
                        // Committed: the row decides from now on.
                        Some(needed) => {
                            self.forget_pending(task);
                            needed
                        }
                        None => self.is_pending(task),
                    }
                }
                None => false, // not ours (an editor's backup, a temp file)
            };
            if !keep {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_removed_and_swept_by_their_rows_not_their_mtimes() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-payloads-")
            .tempdir()
            .unwrap();
        let dir = scratch.path().to_path_buf();
        let files = PayloadFiles::beside(&dir.join("registry.db")).unwrap();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        files
            .write(&[(a, b"first".as_slice()), (b, b"second".as_slice())])
            .unwrap();
        assert_eq!(files.read(a).unwrap(), "first");
        files.remove([a, Uuid::new_v4()]);
        assert!(files.read(a).is_err());

        let conn = Connection::open_in_memory().unwrap();
        let mut conn = conn;
        crate::db::schema::migrate(&mut conn).unwrap();
        // b: a submit in flight (no row yet), its file dated a day back:
        // kept. c: a fresh file of a task that is final: removed at once.
        let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(files.path(b))
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        std::fs::write(files.path(c), "third").unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO users (id, name, created) VALUES (1, 'u', 0);
             INSERT INTO tasks (id, owner, endpoint_id, function_id, group_id, state, done, created)
             VALUES ('{c}', 1, 'e', 'f', 'g', 'success', 1, 0);"
        ))
        .unwrap();
        std::fs::write(files.dir.join("not-a-task"), "x").unwrap();
        assert_eq!(files.sweep(&conn).unwrap(), 2);
        assert_eq!(files.read(b).unwrap(), "second");
        assert!(files.read(c).is_err());
        // Once the process no longer has it in flight (a restart), an
        // orphan goes.
        files.forget_pending(b);
        assert_eq!(files.sweep(&conn).unwrap(), 1);
        assert!(files.read(b).is_err());
    }
}
