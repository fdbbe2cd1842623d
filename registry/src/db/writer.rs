//! Group commit: one thread owns the only write connection.
//!
//! Callers send closures over a channel. The thread takes everything queued,
//! runs each closure inside its own savepoint of ONE transaction, commits
//! (one fsync for the whole batch), and only then answers each caller. So a
//! submit is durable before it is acknowledged, yet a thousand concurrent
//! submits cost one fsync, not a thousand.
//!
//! Some writes need not be durable on their own: a task's move to
//! `waiting-for-launch` or `running` lost in a power cut is harmless (the
//! task is still queued and is re-sent). Those are queued with
//! [`Writer::enqueue_lazy`]; a batch holding nothing else commits with
//! `synchronous=NORMAL`, skipping the fsync, and becomes durable with the
//! next batch that syncs (WAL keeps commits in order).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiResult};

/// Most jobs applied in one transaction; bounds how long a commit waits.
const MAX_BATCH: usize = 4096;

/// State the writer keeps across transactions.
#[derive(Debug)]
pub struct WriteCtx {
    /// Next `result_seq` to hand out (monotonic across the service).
    pub next_result_seq: i64,
}

/// Work for the writer: applied inside the batch transaction, answered after
/// the commit.
trait Job: Send {
    fn apply(&mut self, conn: &Connection, ctx: &mut WriteCtx);
    fn finish(self: Box<Self>, committed: Result<(), ApiError>);
    /// Whether its commit must reach the disk before it is answered.
    fn durable(&self) -> bool;
}

struct TypedJob<T, F> {
    f: Option<F>,
    out: Option<ApiResult<T>>,
    reply: oneshot::Sender<ApiResult<T>>,
    durable: bool,
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

    fn durable(&self) -> bool {
        self.durable
    }
}

enum Msg {
    Job(Box<dyn Job>),
    Shutdown,
}

/// Handle to the writer thread.
pub struct Writer {
    tx: mpsc::UnboundedSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub fn start(conn: Connection, ctx: WriteCtx) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("hpfaas-db-writer".into())
            .spawn(move || run(conn, ctx, rx))?;
        Ok(Writer {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `f`; the receiver answers after the transaction holding it
    /// has committed (or failed).
    pub fn enqueue<T, F>(&self, f: F) -> ApiResult<oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.queue(f, true)
    }

    /// Queues `f` like [`Writer::enqueue`], but its commit may skip the
    /// fsync: it becomes durable with the next batch that syncs.
    pub fn enqueue_lazy<T, F>(&self, f: F) -> ApiResult<oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        self.queue(f, false)
    }

    fn queue<T, F>(&self, f: F, durable: bool) -> ApiResult<oneshot::Receiver<ApiResult<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriteCtx) -> ApiResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = TypedJob {
            f: Some(f),
            out: None,
            reply,
            durable,
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

    /// Commits everything queued so far, then stops the thread.
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

fn run(conn: Connection, mut ctx: WriteCtx, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut syncing = true; // the connection is opened with synchronous=FULL
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
        let durable = batch.iter().any(|job| job.durable());
        if durable != syncing {
            let mode = if durable { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => syncing = durable,
                // Still FULL, or still NORMAL with nothing durable queued.
                Err(e) => tracing::warn!(error = %e, "cannot set synchronous={mode}"),
            }
        }
        commit_batch(&conn, &mut ctx, batch);
    }
    // Jobs queued after the shutdown are dropped; their callers see
    // "shutting down" through the closed reply channel.
    rx.close();
    tracing::debug!("database writer stopped");
}

fn commit_batch(conn: &Connection, ctx: &mut WriteCtx, mut batch: Vec<Box<dyn Job>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = ApiError::from(e);
        for job in batch {
            job.finish(Err(err.clone()));
        }
        return;
    }
    for job in batch.iter_mut() {
        job.apply(conn, ctx);
    }
    let committed = conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        ApiError::from(e)
    });
    for job in batch {
        job.finish(committed.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> Writer {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER NOT NULL)")
            .unwrap();
        Writer::start(conn, WriteCtx { next_result_seq: 1 }).unwrap()
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
    async fn only_a_batch_of_lazy_jobs_skips_the_fsync() {
        let w = writer();
        let sync = |c: &Connection| -> ApiResult<i64> {
            Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?)
        };
        let lazy = w.enqueue_lazy(move |c, _| sync(c)).unwrap();
        assert_eq!(lazy.await.unwrap(), Ok(1), "NORMAL");
        assert_eq!(w.write(move |c, _| sync(c)).await, Ok(2), "FULL");
        w.shutdown().await;
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
