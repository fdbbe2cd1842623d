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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

/// Payloads longer than this (bytes of packed text) are kept in files.
pub const INLINE_MAX: usize = 64 * 1024;

/// A file younger than this may belong to a submit still being committed;
/// a sweep while the service runs leaves it alone.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(600);

/// The directory of payload files (cheap to clone: every dispatch turn and
/// result batch takes one).
#[derive(Debug, Clone)]
pub struct PayloadFiles {
    dir: Arc<Path>,
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
        Ok(PayloadFiles { dir: dir.into() })
    }

    fn path(&self, task: Uuid) -> PathBuf {
        self.dir.join(task.to_string())
    }

    /// Writes each task's payload to its file and makes them durable (the
    /// files, then the directory entries) before returning.
    pub fn write(&self, payloads: &[(Uuid, &[u8])]) -> std::io::Result<()> {
        let mut files = Vec::with_capacity(payloads.len());
        for (task, content) in payloads {
            let path = self.path(*task);
            let mut file = std::fs::File::create(&path)?;
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
            if let Err(e) = std::fs::remove_file(self.path(task)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%task, error = %e, "cannot remove a payload file");
                }
            }
        }
    }

    /// Removes files whose task is final or unknown; with `running`, only
    /// files older than [`SWEEP_MIN_AGE`] (a younger one may belong to a
    /// submit not yet committed). Returns how many were removed.
    pub fn sweep(&self, conn: &Connection, running: bool) -> std::io::Result<usize> {
        let mut needed = conn
            .prepare_cached(
                "SELECT 1 FROM tasks t JOIN task_payloads p ON p.rid = t.rid
             WHERE t.id = ?1 AND t.done = 0 AND p.in_file = 1",
            )
            .map_err(std::io::Error::other)?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&*self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let task = name.to_str().and_then(|n| Uuid::parse_str(n).ok());
            if running {
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok());
                if age.is_none_or(|age| age < SWEEP_MIN_AGE) {
                    continue;
                }
            }
            let keep = match task {
                Some(task) => needed
                    .query_row([task.to_string()], |_| Ok(()))
                    .optional()
                    .map_err(std::io::Error::other)?
                    .is_some(),
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
    fn written_read_removed_and_swept() {
        let dir = std::env::temp_dir().join(format!("hpfaas-payloads-{}", Uuid::new_v4()));
        let files = PayloadFiles::beside(&dir.join("registry.db")).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        files
            .write(&[(a, b"first".as_slice()), (b, b"second".as_slice())])
            .unwrap();
        assert_eq!(files.read(a).unwrap(), "first");
        files.remove([a, Uuid::new_v4()]);
        assert!(files.read(a).is_err());

        // No task rows at all: at start-up every file is an orphan, but a
        // running service keeps young ones.
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::schema::migrate(&mut conn).unwrap();
        std::fs::write(files.dir.join("not-a-task"), "x").unwrap();
        assert_eq!(files.sweep(&conn, true).unwrap(), 0);
        assert_eq!(files.read(b).unwrap(), "second");
        assert_eq!(files.sweep(&conn, false).unwrap(), 2);
        assert!(files.read(b).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
