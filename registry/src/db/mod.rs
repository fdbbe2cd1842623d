//! The service's SQLite database: how it is opened, the pool of read
//! connections, and the handle to the group-commit writer.
//!
//! SQLite is the queue: tasks live in the `tasks` table from submission to
//! result, and the endpoint links read their work from it. Reads run on a
//! small pool of connections under `spawn_blocking`; every write goes through
//! the one writer thread ([`writer`]).

pub mod cancel;
pub mod catalog;
pub mod columns;
pub mod dependencies;
pub mod events;
pub mod function_defaults;
pub mod idempotency;
pub mod memo;
pub mod payload_files;
pub mod purge;
pub mod result_seq;
pub mod schema;
pub mod tasks;
pub mod usage;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{ApiError, ApiResult};
use payload_files::PayloadFiles;
use writer::Writer;
pub use writer::{Durability, WriteCtx};

/// How long a connection waits for a lock held by another process (e.g.
/// `hpfaas token create` while the service runs) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection. rusqlite keeps 16 by default;
/// the writer's hot path alone (submits, states, results, dependencies,
/// the cache, events, purges) uses more, and each one evicted is compiled
/// again at its next use: with 16, compiling SQL was a tenth of the
/// writer's time on a stream of tasks.
const STATEMENT_CACHE: usize = 256;

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// Where the database lives inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("registry.db")
}

/// SQLite's WAL file of the database at `path`.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Fault injection for tests: every sync of the database in `data_dir`
/// fails from now on, as on a failing disk ([`writer::fail_syncs_of`]).
#[doc(hidden)]
pub fn fail_syncs_under(data_dir: &Path) {
    writer::fail_syncs_of(wal_path(&db_path(data_dir)));
}

/// Opens (creating if needed) the database for writing and brings its schema
/// up to date.
pub fn open_for_writing(path: &Path) -> anyhow::Result<Connection> {
    make_private(path)?;
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // First of all: a new database takes it only while its file is empty.
    purge::reuse_space(&conn)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        anyhow::bail!("could not put {} in WAL mode (got {mode})", path.display());
    }
    // NORMAL: commits write the WAL without an fsync; the writer's syncer
    // fdatasyncs the WAL before answering a durable write (db::writer), so a
    // commit still survives a power cut, and the sync is off the writer's path.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each write job runs in a savepoint, so a statement that may fail a
    // constraint keeps a statement journal of the pages it changes; in a
    // temporary file that was a pwrite per page, a fifth of the writer's
    // time on a stream of results. It never outlives its statement.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// Creates the database file 0600 (whatever the umask), or makes an existing
/// one 0600: SQLite gives its WAL and shared-memory files the database
/// file's mode, so these hold no one else's reading either.
///
/// An existing file is changed by path, never opened: closing any
/// descriptor of a database releases every POSIX lock this process holds
/// on it, including those of its SQLite connections (`hpfaas up` opens the
/// database again for its token while the service runs).
fn make_private(path: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        files.push(side.into());
    }
    for file in files {
        // The WAL and shm files may not exist yet; older ones are tightened.
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private (chmod 600)", file.display()))?;
        }
    }
    Ok(())
}

fn open_for_reading(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(conn)
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn take(&self) -> ApiResult<Connection> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match pooled {
            Some(conn) => Ok(conn),
            None => Ok(open_for_reading(&self.path)?),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

/// The database: read pool plus writer, and the files of large payloads.
pub struct Db {
    readers: Arc<ReadPool>,
    writer: Writer,
    payload_files: PayloadFiles,
}

impl Db {
    /// Opens the database at `path`, migrates it, removes payload files no
    /// task needs (a crash may leave some), and starts the writer.
    pub fn open(path: &Path) -> anyhow::Result<Db> {
        let conn = open_for_writing(path)?;
        let payload_files = PayloadFiles::beside(path)?;
        let swept = payload_files.sweep(&conn)?;
        if swept > 0 {
            tracing::info!("removed {swept} payload files no task needs");
        }
        let next_result_seq = result_seq::max_result_seq(&conn)? + 1;
        let wal = wal_path(path);
        let writer = Writer::start(conn, WriteCtx { next_result_seq }, Some(wal))?;
        let readers = Arc::new(ReadPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        });
        Ok(Db {
            readers,
            writer,
            payload_files,
        })
    }

    /// Why the database accepts no more writes (a sync of its WAL failed),
    /// if it does not.
    pub fn write_failure(&self) -> Option<String> {
        self.writer.failure()
    }

    /// How long the writer's group commits take (for the service's metrics).
    pub fn commit_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.writer.commit_seconds().clone()
    }

    /// Where payloads over [`payload_files::INLINE_MAX`] are kept.
    pub fn payload_files(&self) -> &PayloadFiles {
        &self.payload_files
    }

    /// Runs a read-only query on a pooled connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> ApiResult<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let out = f(&conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|e| ApiError::internal(format!("database read failed: {e}")))?
    }

    /// Runs a small read-only query on the calling thread, with a pooled
    /// connection: for a read bounded to a few rows on a latency-critical
    /// path, where handing it to a pool thread and back costs more than the
    /// query. Large or unbounded reads use [`Db::read`].
    pub fn read_inline<T, F>(&self, f: F) -> ApiResult<T>
    where
        F: FnOnce(&Connection) -> ApiResult<T>,
    {
        let conn = self.readers.take()?;
        let out = f(&conn);
        self.readers.give_back(conn);
        out
    }

    /// Runs `f` in the next group commit and returns once it is durable.
    pub async fn write<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.writer.write(f).await
    }

    /// Runs `f` in the next group commit, durable as `durability` says;
    /// `on_visible` runs with its output as soon as the commit is visible,
    /// and the call returns once it is durable.
    pub async fn write_visible<T, F>(
        &self,
        f: F,
        durability: Durability,
        on_visible: impl FnOnce(&T) + Send + 'static,
    ) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.writer.write_visible(f, durability, on_visible).await
    }

    /// Queues `f` now (so writes from one connection keep their order) and
    /// returns the receiver of its post-commit answer; errors only if the
    /// writer has stopped.
    pub fn enqueue<T, F>(&self, f: F) -> ApiResult<tokio::sync::oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.writer.enqueue(f)
    }

    /// Queues `f` like [`Db::enqueue`] for a write that need not be durable
    /// on its own (a non-final state change): answered once visible.
    pub fn enqueue_lazy<T, F>(
        &self,
        f: F,
    ) -> ApiResult<tokio::sync::oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.writer.enqueue_lazy(f)
    }

    /// Queues `f` like [`Db::enqueue`], durable as `durability` says;
    /// `on_visible` runs with its output as soon as its commit is visible to
    /// readers, before it is durable.
    pub fn enqueue_visible<T, F>(
        &self,
        f: F,
        durability: Durability,
        on_visible: impl FnOnce(&T) + Send + 'static,
    ) -> ApiResult<tokio::sync::oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.writer.enqueue_visible(f, durability, on_visible)
    }

    /// Commits what is queued and stops the writer.
    pub async fn shutdown(&self) {
        self.writer.shutdown().await;
        if let Ok(mut idle) = self.readers.idle.lock() {
            idle.clear();
        }
    }
}
