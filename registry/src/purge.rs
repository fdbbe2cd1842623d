//! The periodic purge: every `purge_interval`, expire unfetched results past
//! the result TTL, then delete idempotency keys, finished tasks (fetched
//! ones past the fetched-results retention, if one is set) and empty
//! task groups past the retention period ([`crate::db::purge`]), cached
//! results past the cache TTL ([`crate::db::memo`]), and hand
//! free pages past the slack back to the filesystem. Each step
//! is one short writer job of at most [`BATCH`] rows, repeated until nothing
//! is left, so a purge of millions of rows never holds the writer for long.
//! Last, payload files no task needs any more (a cancelled task's, say) are
//! removed ([`crate::db::payload_files`]).

use std::time::Duration;

use crate::db::purge;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Rows per writer job.
pub const BATCH: usize = 1000;

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
/// full batch or the service stops.
async fn drain<F>(state: &AppState, step: F) -> ApiResult<usize>
where
    F: Fn(&rusqlite::Connection) -> ApiResult<usize> + Clone + Send + 'static,
{
    let mut total = 0;
    loop {
        let step = step.clone();
        let n = state.db.write(move |c, _| step(c)).await?;
        total += n;
        if n < BATCH || *state.shutdown.borrow() {
            return Ok(total);
        }
    }
}

/// One purge pass, now.
pub async fn purge_once(state: &AppState) -> ApiResult<Purged> {
    let now = crate::time::now();
    let ttl = state.config.result_ttl;
    let ttl_cut = now - ttl.as_secs_f64();
    let keep_cut = now - state.config.retention.as_secs_f64();
    let ttl_text = human(ttl);
    let expired = drain(state, move |c| {
        purge::expire_results(c, ttl_cut, BATCH, &ttl_text)
    })
    .await?;
    // Keys go before tasks: a key is created before its tasks are stored, so
    // with one cutoff no replayed answer can name a task already deleted,
    // even between the two steps.
    let keys = drain(state, move |c| purge::delete_keys(c, keep_cut, BATCH)).await?;
    let mut tasks = drain(state, move |c| purge::delete_finished(c, keep_cut, BATCH)).await?;
    let mut fetched = 0;
    if let Some(kept) = state.config.fetched_retention {
        let fetched_cut = now - kept.as_secs_f64();
        if fetched_cut > keep_cut {
            fetched = drain(state, move |c| purge::delete_fetched(c, fetched_cut, BATCH)).await?;
            tasks += fetched;
        }
    }
    let groups = drain(state, move |c| {
        purge::delete_empty_groups(c, keep_cut, BATCH)
    })
    .await?;
    let cache_cut = now - state.config.cache_ttl.as_secs_f64();
    let cached = drain(state, move |c| {
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
    let pages = if expired + tasks + keys + groups + cached > 0 {
        drain(state, |c| purge::vacuum_step(c, BATCH)).await?
    } else {
        0
    };
    Ok(Purged {
        expired,
        tasks,
        fetched,
        keys,
        groups,
        cached,
        payload_files,
        pages,
    })
}

/// Purges every `purge_interval` until shutdown.
pub async fn run(state: AppState) {
    let period = state.config.purge_interval.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutting_down() => return,
        }
        match purge_once(&state).await {
            Ok(p) if p != Purged::default() => tracing::info!(
                expired = p.expired,
                tasks = p.tasks,
                fetched = p.fetched,
                keys = p.keys,
                groups = p.groups,
                cached = p.cached,
                payload_files = p.payload_files,
                pages = p.pages,
                "purged expired results and old records"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purge failed; trying again next period"),
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
