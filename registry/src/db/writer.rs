//! Group commit: one thread owns the only write connection.
//!
//! Callers send closures over a channel. The thread takes everything queued,
//! runs each closure inside its own savepoint of ONE transaction and
//! commits. A commit is *visible* at once (readers see it, and a job's
//! `on_visible` hook runs: wake the endpoint's dispatch, tell result
//! streams); it is *durable* once the WAL file has been synced, and only then
//! is a durable job answered. So a submit is durable before it is
//! acknowledged, yet a thousand concurrent submits cost one sync, and the
//! work a commit unblocks (dispatching the tasks, streaming the results)
//! does not wait for the disk.
//!
//! The connection runs with `synchronous=NORMAL` (a commit writes the WAL,
//! no fsync) and a syncer thread `fdatasync`s the WAL file after each batch:
//! what `synchronous=FULL` does at commit, taken off the writer's path. One
//! sync covers every commit written before it. A checkpoint syncs the WAL
//! before copying it, so frames overwritten later are durable in the
//! database file.
//!
//! A durable job says how soon ([`Durability`]): a submit's client waits
//! for its answer, so its sync starts at once; stored results only gate the
//! agent's acknowledgement (streams read them once visible), so their sync
//! may wait [`SYNC_DELAY`] to be shared with more.
//!
//! A failed sync is fatal to the writer: the commits it covered are visible
//! (tasks dispatched, results streamed) yet maybe not on disk, and after a
//! failed `fdatasync` the kernel may have dropped the dirty pages, so a later
//! sync that succeeds proves nothing. The writer then commits nothing more
//! and every write, queued or new, is answered 503 naming the cause; nothing
//! already committed is undone. An operator checks the disk and restarts the
//! service, which recovers from the database file and its WAL.
//!
//! Some writes need not be durable on their own: a task's move to
//! `waiting-for-launch` or `running` lost in a power cut is harmless (the
//! task is still queued and is re-sent). Those are queued with
//! [`Writer::enqueue_lazy`] and answered once visible.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiResult};

/// Most jobs applied in one transaction; bounds how long a commit waits.
const MAX_BATCH: usize = 4096;

/// Longest a [`Durability::Soon`] job waits for its sync, to share it.
pub const SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// How soon a durable write must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Someone waits for the answer: sync at once.
    Now,
    /// Nobody waits on the disk: the sync may wait up to [`SYNC_DELAY`].
    Soon,
}

/// State the writer keeps across transactions.
#[derive(Debug)]
pub struct WriteCtx {
    /// Next `result_seq` to hand out (monotonic across the service).
    pub next_result_seq: i64,
}

/// Runs on the writer thread once a job's commit is visible, with its output.
type OnVisible<T> = Box<dyn FnOnce(&T) + Send>;

/// Work for the writer: applied inside the batch transaction, answered after
/// the commit (durable jobs: after the sync).
trait Job: Send {
    fn apply(&mut self, conn: &Connection, ctx: &mut WriteCtx);
    /// The commit holding it is visible.
    fn visible(&mut self);
    fn finish(self: Box<Self>, committed: Result<(), ApiError>);
    /// How soon it must be on disk before it is answered; `None` (lazy):
    /// answered once visible.
    fn durability(&self) -> Option<Durability>;
}

struct TypedJob<T, F> {
    f: Option<F>,
    out: Option<ApiResult<T>>,
    reply: oneshot::Sender<ApiResult<T>>,
    durability: Option<Durability>,
    on_visible: Option<OnVisible<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send,
{
    fn apply(&mut self, conn: &Connection, ctx: &mut WriteCtx) {
        let Some(f) = self.f.take() else { return };
        // A savepoint per job: one caller's error undoes only its own writes.
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            self.out = Some(Err(e.into()));
            return;
        }
        let out = catch_unwind(AssertUnwindSafe(|| f(conn, ctx))).unwrap_or_else(|_| {
            tracing::error!("a database write panicked; its changes are rolled back");
            Err(ApiError::internal("database write failed unexpectedly"))
        });
        let end = if out.is_ok() {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        self.out = Some(match conn.execute_batch(end) {
            Ok(()) => out,
            Err(e) => Err(e.into()),
        });
    }

    fn visible(&mut self) {
        if let (Some(hook), Some(Ok(out))) = (self.on_visible.take(), &self.out) {
            if catch_unwind(AssertUnwindSafe(|| hook(out))).is_err() {
                tracing::error!("a commit's visibility hook panicked");
            }
        }
    }

    fn finish(self: Box<Self>, committed: Result<(), ApiError>) {
        let out = match committed {
            Ok(()) => self
                .out
                .unwrap_or_else(|| Err(ApiError::internal("database write was not applied"))),
            Err(e) => Err(e),
        };
        // The caller may have gone away (client disconnected); nothing to do.
        let _ = self.reply.send(out);
    }

    fn durability(&self) -> Option<Durability> {
        self.durability
    }
}

enum Msg {
    Job(Box<dyn Job>),
    Shutdown,
}

/// Why the writer stopped committing, once a sync of the WAL failed; shared
/// by the handle, the writer thread and the syncer.
#[derive(Debug, Default)]
struct Broken(OnceLock<String>);

impl Broken {
    /// Records the first failure; later ones keep it.
    fn set(&self, cause: String) {
        if self.0.set(cause).is_ok() {
            tracing::error!(
                "the database writer stopped: {}; no more writes are accepted until the \
                 service is restarted",
                self.0.get().map(String::as_str).unwrap_or_default()
            );
        }
    }

    /// The 503 every write gets once the writer is broken.
    fn error(&self) -> Option<ApiError> {
        self.0.get().map(|cause| {
            ApiError::unavailable(format!(
                "the service's database could not be made durable ({cause}); it accepts no \
                 more writes until an operator checks its disk and restarts it"
            ))
        })
    }
}

/// Handle to the writer thread.
pub struct Writer {
    tx: mpsc::UnboundedSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    broken: Arc<Broken>,
    commit_seconds: Histogram,
}

impl Writer {
    /// Starts the writer thread on `conn`. With `wal`, the path of the
    /// database's WAL file, durable jobs are answered after a sync of it (the
    /// connection must be in WAL mode with `synchronous=NORMAL`); without
    /// (an in-memory database), once committed.
    pub fn start(conn: Connection, ctx: WriteCtx, wal: Option<PathBuf>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::unbounded_channel();
        let broken = Arc::new(Broken::default());
        let syncer = match wal {
            Some(path) => {
                let (sync_tx, sync_rx) = std_mpsc::channel();
                let broken = broken.clone();
                let thread = std::thread::Builder::new()
                    .name("hpfaas-db-sync".into())
                    .spawn(move || sync_loop(path, sync_rx, &broken))?;
                Some((sync_tx, thread))
            }
            None => None,
        };
        let thread_broken = broken.clone();
        // 0.1 ms to about 2.4 s.
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.5, 12));
        let timer = commit_seconds.clone();
        let thread = std::thread::Builder::new()
            .name("hpfaas-db-writer".into())
            .spawn(move || run(conn, ctx, rx, syncer, &thread_broken, &timer))?;
        Ok(Writer {
            tx,
            thread: Mutex::new(Some(thread)),
            broken,
            commit_seconds,
        })
    }

    /// How long each group commit took, BEGIN to COMMIT (one observation
    /// per batch, for the service's metrics).
    pub fn commit_seconds(&self) -> &Histogram {
        &self.commit_seconds
    }

    /// Why the writer accepts no more writes (a sync of the WAL failed), if
    /// it does not.
    pub fn failure(&self) -> Option<String> {
        self.broken.0.get().cloned()
    }

    /// Queues `f`; the receiver answers once the transaction holding it is
    /// durable (or failed).
    pub fn enqueue<T, F>(&self, f: F) -> ApiResult<oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.queue(f, Some(Durability::Now), None)
    }

    /// Queues `f` like [`Writer::enqueue`], durable as `durability` says,
    /// and runs `on_visible` with its output on the writer thread as soon as
    /// its commit is visible, before it is durable. The hook must be quick
    /// and must not block.
    pub fn enqueue_visible<T, F>(
        &self,
        f: F,
        durability: Durability,
        on_visible: impl FnOnce(&T) + Send + 'static,
    ) -> ApiResult<oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.queue(f, Some(durability), Some(Box::new(on_visible)))
    }

    /// Queues `f` like [`Writer::enqueue`], but answers as soon as its commit
    /// is visible: it becomes durable with the next sync.
    pub fn enqueue_lazy<T, F>(&self, f: F) -> ApiResult<oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.queue(f, None, None)
    }

    fn queue<T, F>(
        &self,
        f: F,
        durability: Option<Durability>,
        on_visible: Option<OnVisible<T>>,
    ) -> ApiResult<oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        if let Some(err) = self.broken.error() {
            return Err(err);
        }
        let (reply, rx) = oneshot::channel();
        let job = TypedJob {
            f: Some(f),
            out: None,
            reply,
            durability,
            on_visible,
        };
        self.tx
            .send(Msg::Job(Box::new(job)))
            .map_err(|_| shutting_down())?;
        Ok(rx)
    }

    /// Runs `f` in the next group commit and waits until it is durable.
    pub async fn write<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        let rx = self.enqueue(f)?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Runs `f` like [`Writer::enqueue_visible`] and returns once it is
    /// durable (or failed).
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
        let rx = self.enqueue_visible(f, durability, on_visible)?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Commits (and syncs) everything queued so far, then stops the threads.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn shutting_down() -> ApiError {
    ApiError::unavailable("the service is shutting down")
}

/// The syncer: the channel to it and its thread.
type Syncer = (std_mpsc::Sender<Vec<Box<dyn Job>>>, JoinHandle<()>);

fn run(
    conn: Connection,
    mut ctx: WriteCtx,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    syncer: Option<Syncer>,
    broken: &Broken,
    commit_seconds: &Histogram,
) {
    let mut open = true;
    while open {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = match first {
            Msg::Job(job) => vec![job],
            Msg::Shutdown => break,
        };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::Shutdown) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(err) = broken.error() {
            // Committing more would make visible what may never be durable.
            batch
                .into_iter()
                .for_each(|job| job.finish(Err(err.clone())));
            continue;
        }
        let durable = commit_batch(&conn, &mut ctx, batch, commit_seconds);
        if durable.is_empty() {
            continue;
        }
        match &syncer {
            Some((to_syncer, _)) => {
                if let Err(std_mpsc::SendError(jobs)) = to_syncer.send(durable) {
                    let err = ApiError::internal("the database sync thread stopped");
                    jobs.into_iter()
                        .for_each(|job| job.finish(Err(err.clone())));
                }
            }
            None => durable.into_iter().for_each(|job| job.finish(Ok(()))),
        }
    }
    // Jobs queued after the shutdown are dropped; their callers see
    // "shutting down" through the closed reply channel.
    rx.close();
    if let Some((to_syncer, thread)) = syncer {
        drop(to_syncer); // the syncer syncs what it holds, then ends
        let _ = thread.join();
    }
    tracing::debug!("database writer stopped");
}

/// Applies and commits a batch, runs the visibility hooks, answers the jobs
/// that need no sync, and returns those that do.
fn commit_batch(
    conn: &Connection,
    ctx: &mut WriteCtx,
    mut batch: Vec<Box<dyn Job>>,
    commit_seconds: &Histogram,
) -> Vec<Box<dyn Job>> {
    let started = std::time::Instant::now();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = ApiError::from(e);
        for job in batch {
            job.finish(Err(err.clone()));
        }
        return Vec::new();
    }
    for job in batch.iter_mut() {
        job.apply(conn, ctx);
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        let err = ApiError::from(e);
        for job in batch {
            job.finish(Err(err.clone()));
        }
        return Vec::new();
    }
    commit_seconds.observe(started.elapsed().as_secs_f64());
    let mut durable = Vec::new();
    for mut job in batch {
        job.visible();
        if job.durability().is_some() {
            durable.push(job);
        } else {
            job.finish(Ok(()));
        }
    }
    durable
}

/// The syncer thread: syncs the WAL file after each batch of commits (every
/// batch queued meanwhile shares the sync; with no [`Durability::Now`] job
/// it waits up to [`SYNC_DELAY`] for more), then answers their jobs.
fn sync_loop(wal: PathBuf, rx: std_mpsc::Receiver<Vec<Box<dyn Job>>>, broken: &Broken) {
    let urgent = |jobs: &[Box<dyn Job>]| {
        jobs.iter()
            .any(|job| job.durability() == Some(Durability::Now))
    };
    // Kept open: SQLite keeps one WAL file (same inode) while the writer's
    // connection is open; after a failure it is opened afresh.
    let mut file: Option<std::fs::File> = None;
    while let Ok(mut jobs) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            jobs.extend(more);
        }
        let deadline = std::time::Instant::now() + SYNC_DELAY;
        while !urgent(&jobs) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(more) => jobs.extend(more),
                Err(_) => break, // the delay is over, or the writer stopped
            }
        }
        // Once a sync failed, none after it proves anything (see the module
        // comment): every later job fails with the same cause.
        if broken.error().is_none() {
            if let Err(e) = sync_file(&mut file, &wal) {
                tracing::error!(path = %wal.display(), error = %e, "cannot sync the database's WAL");
                broken.set(format!("syncing {} failed: {e}", wal.display()));
            }
        }
        let synced = broken.error().map_or(Ok(()), Err);
        for job in jobs {
            job.finish(synced.clone());
        }
    }
}

/// WAL paths whose next syncs fail ([`fail_syncs_of`]); checked only while
/// [`SYNC_FAULTS_SET`] says some are set.
static SYNC_FAULTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static SYNC_FAULTS_SET: AtomicBool = AtomicBool::new(false);

/// Fault injection for tests: every later sync of the WAL file at `wal` fails
/// with an I/O error, as a failing disk's `fdatasync` would. Real disks
/// that fail on demand cannot be had in a test; everything after the
/// `fdatasync` call itself runs as in production.
#[doc(hidden)]
pub fn fail_syncs_of(wal: PathBuf) {
    if let Ok(mut faults) = SYNC_FAULTS.lock() {
        faults.push(wal);
        SYNC_FAULTS_SET.store(true, Ordering::SeqCst);
    }
}

fn sync_fault(path: &std::path::Path) -> bool {
    SYNC_FAULTS_SET.load(Ordering::Relaxed)
        && SYNC_FAULTS
            .lock()
            .is_ok_and(|faults| faults.iter().any(|f| f == path))
}

/// `fdatasync` of the file at `path`, opened into `file` if it is not yet.
fn sync_file(file: &mut Option<std::fs::File>, path: &std::path::Path) -> std::io::Result<()> {
    if sync_fault(path) {
        return Err(std::io::Error::other("injected sync failure (test)"));
    }
    if file.is_none() {
        *file = Some(std::fs::OpenOptions::new().write(true).open(path)?);
    }
    file.as_ref().expect("opened above").sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> Writer {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER NOT NULL)")
            .unwrap();
        Writer::start(conn, WriteCtx { next_result_seq: 1 }, None).unwrap()
    }

    /// A writer on a WAL file in a fresh directory, and the database's path.
    fn file_writer(
        wal: impl FnOnce(&std::path::Path) -> PathBuf,
    ) -> (Writer, PathBuf, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-writer-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE t (x INTEGER NOT NULL)",
        )
        .unwrap();
        let wal = wal(&path);
        (
            Writer::start(conn, WriteCtx { next_result_seq: 1 }, Some(wal)).unwrap(),
            path,
            dir,
        )
    }

    #[tokio::test]
    async fn a_failing_job_undoes_only_its_own_writes() {
        let w = writer();
        let ok = w
            .enqueue(|c, _| Ok(c.execute("INSERT INTO t VALUES (1)", [])?))
            .unwrap();
        let bad = w
            .enqueue(|c, _| -> ApiResult<()> {
                c.execute("INSERT INTO t VALUES (2)", [])?;
                Err(ApiError::bad_request("no"))
            })
            .unwrap();
        assert_eq!(ok.await.unwrap(), Ok(1));
        assert_eq!(bad.await.unwrap(), Err(ApiError::bad_request("no")));
        let rows: Vec<i64> = w
            .write(|c, _| {
                let mut st = c.prepare("SELECT x FROM t ORDER BY x")?;
                let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                Ok(v)
            })
            .await
            .unwrap();
        assert_eq!(rows, vec![1]);
        w.shutdown().await;
        let err = w.write(|_, _| Ok(())).await.unwrap_err();
        assert_eq!(err.code, "unavailable");
    }

    #[tokio::test]
    async fn a_commit_is_visible_to_readers_before_its_durable_answer() {
        let (w, path, _dir) = file_writer(|db| db.with_extension("db-wal"));
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let reader_path = path.clone();
        let durable = w
            .enqueue_visible(
                |c, _| Ok(c.execute("INSERT INTO t VALUES (7)", [])?),
                Durability::Now,
                move |inserted: &usize| {
                    let reader = Connection::open(&reader_path).unwrap();
                    let n: i64 = reader
                        .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                        .unwrap();
                    seen_tx.send((*inserted, n)).unwrap();
                },
            )
            .unwrap();
        assert_eq!(durable.await.unwrap(), Ok(1));
        assert_eq!(seen_rx.try_recv().unwrap(), (1, 1), "the hook saw the row");
        let lazy = w.enqueue_lazy(|c, _| Ok(c.execute("INSERT INTO t VALUES (8)", [])?));
        assert_eq!(lazy.unwrap().await.unwrap(), Ok(1));
        // Results' durability: the sync waits a moment for company, then comes.
        let soon = w
            .enqueue_visible(
                |c, _| Ok(c.execute("INSERT INTO t VALUES (9)", [])?),
                Durability::Soon,
                |_| {},
            )
            .unwrap();
        assert_eq!(soon.await.unwrap(), Ok(1));
        w.shutdown().await;
    }

    #[tokio::test]
    async fn a_failed_sync_stops_the_writer_without_undoing_commits() {
        // A real failure of the syncer's open + fdatasync: the WAL's directory
        // does not exist.
        let (w, path, _dir) = file_writer(|db| db.with_file_name("missing").join("w.db-wal"));
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let durable = w
            .write_visible(
                |c, _| Ok(c.execute("INSERT INTO t VALUES (1)", [])?),
                Durability::Now,
                move |_: &usize| seen_tx.send(()).unwrap(),
            )
            .await
            .unwrap_err();
        assert_eq!(durable.status.as_u16(), 503, "{durable}");
        assert!(durable.message.contains("syncing"), "{durable}");
        assert!(durable.message.contains("restart"), "{durable}");
        seen_rx.try_recv().expect("the commit was visible");
        assert!(w.failure().unwrap().contains("missing"));
        // Nothing more is committed, lazy or durable, queued or new.
        let err = w.enqueue_lazy(|c, _| Ok(c.execute("INSERT INTO t VALUES (2)", [])?));
        assert_eq!(err.unwrap_err().status.as_u16(), 503);
        let err = w.write(|c, _| Ok(c.execute("INSERT INTO t VALUES (3)", [])?));
        assert_eq!(err.await.unwrap_err().status.as_u16(), 503);
        w.shutdown().await;
        // The visible commit stays: nothing was half-undone.
        let reader = Connection::open(&path).unwrap();
        let rows: Vec<i64> = reader
            .prepare("SELECT x FROM t")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![1]);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_dead_writer() {
        let w = writer();
        let err = w
            .write(|_, _| -> ApiResult<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(err.code, "internal");
        assert_eq!(w.write(|_, ctx| Ok(ctx.next_result_seq)).await, Ok(1));
        w.shutdown().await;
    }
}
