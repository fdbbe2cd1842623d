//! `GET /metrics` on the metrics listener (`--metrics-listen`): what the
//! service keeps anyway, read at scrape time, plus the counters and
//! histograms of [`crate::metrics::Metrics`]. Not in [`super::ROUTES`]: the
//! service's own port never serves it. With `--metrics-token-file` a scrape
//! must carry that bearer token (Prometheus: `authorization.credentials_file`).

use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rusqlite::Connection;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::metrics::{Snapshot, CONTENT_TYPE as METRICS_TYPE};
use crate::state::AppState;

/// The metrics listener's whole router: `/metrics`, else 404.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(state)
}

/// Non-final tasks per (endpoint, state): one query over the queue's
/// partial index per scrape, so its cost follows the queue, not the history.
const NON_FINAL_COUNTS: &str = "SELECT endpoint_id, state, COUNT(*) FROM tasks WHERE done = 0
                                GROUP BY endpoint_id, state";

/// Runs [`NON_FINAL_COUNTS`].
fn non_final_counts(conn: &Connection) -> ApiResult<Vec<(Uuid, String, u64)>> {
    let mut st = conn.prepare_cached(NON_FINAL_COUNTS)?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (endpoint, state, n) = row?;
        // Every stored endpoint id is a UUID; anything else is not shown.
        if let Ok(endpoint) = Uuid::parse_str(&endpoint) {
            out.push((endpoint, state, u64::try_from(n).unwrap_or(0)));
        }
    }
    Ok(out)
}

/// Whether `headers` carry the metrics token, when one is required.
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(want) = &state.config.metrics_token_hash else {
        return true;
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Hashes are compared, so the comparison's time tells nothing of the token.
    given.is_some_and(|token| crate::token::hash_token(token.trim()) == *want)
}

/// `GET /metrics`: the Prometheus text exposition.
async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer")],
            "this metrics listener wants its bearer token (--metrics-token-file)\n",
        )
            .into_response();
    }
    let tasks = match state.db.read(non_final_counts).await {
        Ok(tasks) => tasks,
        Err(e) => {
            tracing::warn!(error = %e.message, "metrics: counting tasks failed");
            let why = format!("reading the task counts failed: {}\n", e.message);
            return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
        }
    };
    let snapshot = Snapshot {
        tasks,
        online: state.live.online_reports(),
        open_streams: state.live.open_streams(),
        open_links: *state.links.borrow(),
    };
    (
        [(CONTENT_TYPE, METRICS_TYPE)],
        state.metrics.render(&snapshot),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tasks::test_fixture::{fixture, submit_n};

    #[test]
    fn counts_only_non_final_tasks_from_the_queue_index() {
        let fx = fixture();
        let ids = submit_n(&fx, Uuid::new_v4(), 3, 10);
        crate::db::tasks::ack(&fx.conn, fx.endpoint, &ids[..1]).unwrap();
        let done = hpfaas_protocol::task::TaskResult {
            task_id: ids[2],
            outcome: hpfaas_protocol::task::Outcome::Success { result: "r".into() },
            output: None,
            completed_at: 1.0,
            placement: None,
        };
        let mut ctx = crate::db::WriteCtx { next_result_seq: 1 };
        crate::db::tasks::store_results(&fx.conn, &mut ctx, fx.endpoint, &[done]).unwrap();
        let mut counts = non_final_counts(&fx.conn).unwrap();
        counts.sort_by(|a, b| a.1.cmp(&b.1));
        let received = fx
            .conn
            .query_row(
                "SELECT state FROM tasks WHERE id = ?1",
                [ids[1].to_string()],
                |r| r.get::<_, String>(0),
            )
            .unwrap();
        let mut want = vec![
            (fx.endpoint, received, 1),
            (fx.endpoint, "waiting-for-launch".to_string(), 1),
        ];
        want.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(counts, want);
        let plan: Vec<String> = fx
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {NON_FINAL_COUNTS}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("tasks_queue")),
            "not read from the queue's index: {plan:?}"
        );
    }
}
