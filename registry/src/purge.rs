//! The purge: expire unfetched results past the result TTL, then delete
//! idempotency keys, finished tasks (fetched ones past the fetched-results
//! retention, if one is set) and empty task groups past the retention
//! period ([`crate::db::purge`]), cached results past the cache TTL
//! ([`crate::db::memo`]), and hand free pages past the slack back to the
//! filesystem. Each step is one short writer job of at most [`BATCH`]
//! rows, repeated until nothing is left.
//!
//! The rows a steady stream of tasks leaves behind (results to expire,
//! keys, finished and fetched tasks) are purged every [`PACE`], so each
//! round deletes about a second of the stream, spread over the minute:
//! purged once a minute, a minute's rows (250,000 at 4,000 tasks/s) went in
//! one burst that took the writer from submits and results for seconds,
//! and left a third of the file free at once, handed back to the
//! filesystem only to be grown again. Empty groups, payload files no task
//! needs any more (a cancelled task's, say: [`crate::db::payload_files`]),
//! expired cache entries and free pages are swept every `purge_interval`.

use std::time::{Duration, Instant};

use crate::db::purge;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Rows per writer job. A job holds the writer for some tens of
/// milliseconds; smaller jobs cost more per row (each commit writes again
/// the pages of the random task-id index it touched: 250 rows a job took
/// twice the time per row of 1,000).
pub const BATCH: usize = 1000;

/// How often the stream's rows are purged (or every `purge_interval`, if
/// that is shorter).
pub const PACE: Duration = Duration::from_secs(1);

/// What one purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Results expired.
    pub expired: usize,
    /// Finished tasks deleted.
    pub tasks: usize,
    /// Of those, deleted sooner for their result was fetched.
    pub fetched: usize,
    /// Idempotency keys deleted.
    pub keys: usize,
    /// Empty task groups deleted.
    pub groups: usize,
    /// Cached results past the cache TTL deleted.
    pub cached: usize,
    /// Payload files removed.
    pub payload_files: usize,
    /// Free database pages handed back to the filesystem.
    pub pages: usize,
    /// Time the writer spent in the purge's jobs.
    pub writer_time: Duration,
}

impl std::ops::AddAssign for Purged {
    fn add_assign(&mut self, o: Purged) {
        self.expired += o.expired;
        self.tasks += o.tasks;
        self.fetched += o.fetched;
        self.keys += o.keys;
        self.groups += o.groups;
        self.payload_files += o.payload_files;
        self.pages += o.pages;
        self.writer_time += o.writer_time;
    }
}

/// `7d`, `12h`, `90s`: a duration as people write it.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    // (`is_multiple_of` is newer than the workspace's rust-version.)
    let whole = |unit: u64| s / unit * unit == s;
    if d.subsec_nanos() != 0 || s == 0 {
        format!("{:.3}s", d.as_secs_f64())
    } else if whole(86_400) {
        format!("{}d", s / 86_400)
    } else if whole(3600) {
        format!("{}h", s / 3600)
    } else if whole(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Repeats `step` (rows handled per call) until a call handles less than a
/// full batch or the service stops; adds the time the writer spent in it to
/// `busy`.
async fn drain<F>(state: &AppState, busy: &mut Duration, step: F) -> ApiResult<usize>
where
    F: Fn(&rusqlite::Connection) -> ApiResult<usize> + Clone + Send + 'static,
{
    let mut total = 0;
    loop {
        let step = step.clone();
        // Deleting purged rows again after a power cut is harmless, so a
        // job asks for no sync of its own: it becomes durable with the next
        // write that does. An idle service's purge, every second, never
        // touches the disk's cache flush, and never is the write that finds
        // a failing disk.
        let visible = state.db.enqueue_lazy(move |c, _| {
            let started = Instant::now();
            step(c).map(|n| (n, started.elapsed()))
        })?;
        let (n, took) = visible
            .await
            .map_err(|_| ApiError::unavailable("the service is stopping"))??;
        total += n;
        *busy += took;
        if n < BATCH || *state.shutdown.borrow() {
            return Ok(total);
        }
    }
}

/// One whole purge pass, now: the stream's rows and the sweep.
pub async fn purge_once(state: &AppState) -> ApiResult<Purged> {
    let mut p = purge_stream(state).await?;
    p += sweep(state, p.expired + p.tasks + p.keys > 0).await?;
    Ok(p)
}

/// Expires results and deletes keys and finished tasks that are due now.
async fn purge_stream(state: &AppState) -> ApiResult<Purged> {
    let now = crate::time::now();
    let ttl = state.config.result_ttl;
    let ttl_cut = now - ttl.as_secs_f64();
    let keep_cut = now - state.config.retention.as_secs_f64();
    let ttl_text = human(ttl);
    let mut busy = Duration::ZERO;
    let expired = drain(state, &mut busy, move |c| {
        purge::expire_results(c, ttl_cut, BATCH, &ttl_text)
    })
    .await?;
    // Keys go before tasks: a key is created before its tasks are stored, so
    // with one cutoff no replayed answer can name a task already deleted,
    // even between the two steps.
    let keys = drain(state, &mut busy, move |c| {
        purge::delete_keys(c, keep_cut, BATCH)
    })
    .await?;
    let mut tasks = drain(state, &mut busy, move |c| {
        purge::delete_finished(c, keep_cut, BATCH)
    })
    .await?;
    let mut fetched = 0;
    if let Some(kept) = state.config.fetched_retention {
        let fetched_cut = now - kept.as_secs_f64();
        if fetched_cut > keep_cut {
            fetched = drain(state, &mut busy, move |c| {
                purge::delete_fetched(c, fetched_cut, BATCH)
            })
            .await?;
            tasks += fetched;
        }
    }
    Ok(Purged {
        expired,
        tasks,
        fetched,
        keys,
        writer_time: busy,
        ..Purged::default()
    })
}

/// Deletes empty groups and unneeded payload files, and, after `deleted`
/// rows (by this sweep or the stream's purges since the last), hands free
/// pages past the slack back.
async fn sweep(state: &AppState, deleted: bool) -> ApiResult<Purged> {
    let keep_cut = crate::time::now() - state.config.retention.as_secs_f64();
    let mut busy = Duration::ZERO;
    let groups = drain(state, &mut busy, move |c| {
        purge::delete_empty_groups(c, keep_cut, BATCH)
    })
    .await?;
    let cache_cut = crate::time::now() - state.config.cache_ttl.as_secs_f64();
    let cached = drain(state, &mut busy, move |c| {
        crate::db::memo::purge_expired(c, cache_cut, BATCH)
    })
    .await?;
    let files = state.db.payload_files().clone();
    let payload_files = state
        .db
        .read(move |c| {
            files
                .sweep(c)
                .map_err(|e| ApiError::internal(format!("sweeping payload files failed: {e}")))
        })
        .await?;
    let pages = if deleted || groups + cached > 0 {
        drain(state, &mut busy, |c| purge::vacuum_step(c, BATCH)).await?
    } else {
        0
    };
    Ok(Purged {
        groups,
        cached,
        payload_files,
        pages,
        writer_time: busy,
        ..Purged::default()
    })
}

/// Purges the stream's rows every [`PACE`] and sweeps every
/// `purge_interval`, until shutdown; logs what it did once per sweep.
pub async fn run(state: AppState) {
    let period = state.config.purge_interval.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period.min(PACE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sweep = Instant::now();
    let mut since_sweep = Purged::default();
    // Said once per run of failures, not every second.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutting_down() => return,
        }
        match purge_stream(&state).await {
            Ok(p) => {
                since_sweep += p;
                failing = false;
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "purge failed; trying again every second");
            }
            Err(_) => {}
        }
        if Instant::now() < next_sweep {
            continue;
        }
        next_sweep = Instant::now() + period;
        let deleted = since_sweep.expired + since_sweep.tasks + since_sweep.keys > 0;
        match sweep(&state, deleted).await {
            Ok(p) => since_sweep += p,
            Err(e) => tracing::warn!(error = %e, "purge failed; trying again next period"),
        }
        let p = std::mem::take(&mut since_sweep);
        let idle = Purged {
            writer_time: p.writer_time,
            ..Purged::default()
        };
        if p != idle {
            tracing::info!(
                expired = p.expired,
                tasks = p.tasks,
                fetched = p.fetched,
                keys = p.keys,
                groups = p.groups,
                cached = p.cached,
                payload_files = p.payload_files,
                pages = p.pages,
                writer_seconds = p.writer_time.as_secs_f64(),
                "purged expired results and old records"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_flags() {
        assert_eq!(human(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_secs(61)), "61s");
        assert_eq!(human(Duration::from_millis(1500)), "1.500s");
    }
}
