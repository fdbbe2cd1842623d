//! A task's timeline, for its detail (`GET /v2/tasks/{id}`): when it was
//! submitted, dispatched to its endpoint, started on a worker (and on
//! which), finished, and when its owner first read the result. The times
//! are columns the existing state UPDATEs set (`results.rs`, `read.rs`).

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::error::ApiResult;

/// The moments of one task, Unix seconds; `None` until it happens.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// Stored by the service.
    pub submitted: f64,
    /// Acknowledged (journaled) by the endpoint's agent.
    pub dispatched: Option<f64>,
    /// Started on a worker: the node's clock once the result says so, the
    /// service's when the agent reported it running.
    pub started: Option<f64>,
    /// Finished (the node's clock).
    pub finished: Option<f64>,
    /// First read of the result by its owner.
    pub fetched: Option<f64>,
    /// Where it ran, as stored: JSON `{"block_id", "manager_id", "worker",
    /// "host"}`.
    pub placement: Option<String>,
}

/// The timeline of the owner's task `id`.
pub fn timeline(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<Option<Timeline>> {
    let mut st = conn.prepare_cached(
        "SELECT created, dispatched, started, completed, fetched, placement
         FROM tasks WHERE id = ?1 AND owner = ?2",
    )?;
    Ok(st
        .query_row(params![id.to_string(), owner], |r| {
            Ok(Timeline {
                submitted: r.get(0)?,
                dispatched: r.get(1)?,
                started: r.get(2)?,
                finished: r.get(3)?,
                fetched: r.get(4)?,
                placement: r.get(5)?,
            })
        })
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tasks::read::mark_fetched;
    use crate::db::tasks::results::{ack, store_results, update_states};
    use crate::db::tasks::test_fixture::{fixture, submit_n};
    use crate::db::writer::WriteCtx;
    use hpfaas_protocol::task::{Outcome, Placement, TaskResult, TaskState};

    #[test]
    fn each_moment_is_recorded_by_the_update_that_happens_then() {
        let fx = fixture();
        let ids = submit_n(&fx, Uuid::new_v4(), 2, 10);
        let at = |id| timeline(&fx.conn, fx.owner, id).unwrap().unwrap();
        let fresh = at(ids[0]);
        assert!(fresh.submitted > 0.0);
        assert_eq!(
            (
                fresh.dispatched,
                fresh.started,
                fresh.finished,
                fresh.fetched
            ),
            (None, None, None, None)
        );
        ack(&fx.conn, fx.endpoint, &ids).unwrap();
        let acked = at(ids[0]);
        assert!(acked.dispatched.unwrap() >= acked.submitted);
        update_states(
            &fx.conn,
            fx.endpoint,
            &[(ids[0], TaskState::Running)],
            |_| {},
        )
        .unwrap();
        let running = at(ids[0]).started.expect("started when running");
        // A second `running` (a retry on another worker) keeps the first.
        update_states(
            &fx.conn,
            fx.endpoint,
            &[(ids[0], TaskState::Running)],
            |_| {},
        )
        .unwrap();
        assert_eq!(at(ids[0]).started, Some(running));

        let placed = Placement {
            started_at: 1_700_000_000.5,
            block_id: "3".into(),
            manager_id: "m".repeat(1000),
            worker: 2,
            host: "node7".into(),
        };
        let results = [
            TaskResult {
                task_id: ids[0],
                outcome: Outcome::Success { result: "r".into() },
                output: None,
                completed_at: 1_700_000_001.0,
                placement: Some(Box::new(placed)),
            },
            TaskResult {
                task_id: ids[1],
                outcome: Outcome::Success { result: "r".into() },
                output: None,
                completed_at: 1_700_000_002.0,
                // A start time no clock gives: not stored.
                placement: Some(Box::new(Placement {
                    started_at: f64::NAN,
                    ..Placement::default()
                })),
            },
        ];
        let mut ctx = WriteCtx { next_result_seq: 1 };
        store_results(&fx.conn, &mut ctx, fx.endpoint, &results).unwrap();
        let done = at(ids[0]);
        assert_eq!(done.started, Some(1_700_000_000.5), "the node's clock wins");
        assert_eq!(done.finished, Some(1_700_000_001.0));
        let placement: serde_json::Value =
            serde_json::from_str(done.placement.as_deref().unwrap()).unwrap();
        assert_eq!(placement["host"], "node7");
        assert_eq!(placement["worker"], 2);
        assert_eq!(placement["manager_id"].as_str().unwrap().len(), 256);
        let other = at(ids[1]);
        assert_eq!((other.started, other.placement), (None, None));

        assert_eq!(done.fetched, None);
        mark_fetched(&fx.conn, &ids[..1]).unwrap();
        let fetched = at(ids[0]).fetched.expect("fetched");
        mark_fetched(&fx.conn, &ids[..1]).unwrap();
        assert_eq!(at(ids[0]).fetched, Some(fetched), "the first read counts");
    }
}
