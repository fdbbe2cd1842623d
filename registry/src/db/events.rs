//! Endpoint events (blocks submitted, running, failed with the scheduler's
//! message, cancelled; managers lost; the agent's link): the last
//! [`KEPT`] of each endpoint, written once per frame of events, never per
//! task, and read by `GET /v3/endpoints/{id}/events`. Deleting an endpoint
//! deletes its events ([`delete`]).

use hpfaas_protocol::endpoint::EndpointEvent;
use rusqlite::{params, Connection};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiResult;

/// Events kept per endpoint; older ones are deleted as new ones come.
pub const KEPT: usize = 500;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    /// Its place in the sequence of all events (`?since=` takes it).
    pub seq: i64,
    /// When, Unix seconds.
    pub time: f64,
    /// What (`block_failed`, ...).
    pub kind: String,
    /// The block it concerns.
    pub block_id: Option<String>,
    /// The block's job id.
    pub job_id: Option<String>,
    /// Details: the scheduler's message for a failure.
    pub message: String,
}

/// Stores `events` of `endpoint`, then deletes all but its last `keep`.
/// Nothing is stored for a deleted endpoint (its agent's link may report
/// its own closing after the deletion removed the endpoint's events).
pub fn insert(
    conn: &Connection,
    endpoint: Uuid,
    events: &[EndpointEvent],
    keep: usize,
) -> ApiResult<()> {
    let id = endpoint.to_string();
    let deleted: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM endpoints WHERE id = ?1 AND deleted = 1)")?
        .query_row([&id], |r| r.get(0))?;
    if deleted {
        return Ok(());
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO endpoint_events (endpoint_id, time, kind, block_id, job_id, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in events {
        insert.execute(params![
            id,
            e.time,
            e.kind.as_str(),
            e.block_id,
            e.job_id,
            e.message
        ])?;
    }
    // The index walks back `keep` rows to the newest one to drop.
    conn.prepare_cached(
        "DELETE FROM endpoint_events WHERE endpoint_id = ?1 AND seq <= (
             SELECT seq FROM endpoint_events WHERE endpoint_id = ?1
             ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![id, keep as i64])?;
    Ok(())
}

/// Deletes every event of `endpoint` (it is being deleted).
pub fn delete(conn: &Connection, endpoint: Uuid) -> ApiResult<()> {
    conn.prepare_cached("DELETE FROM endpoint_events WHERE endpoint_id = ?1")?
        .execute([endpoint.to_string()])?;
    Ok(())
}

/// Events of `endpoint`, oldest first: those after `since`, or without it
/// the last ones; at most `limit` either way.
pub fn list(
    conn: &Connection,
    endpoint: Uuid,
    since: Option<i64>,
    limit: usize,
) -> ApiResult<Vec<EventRow>> {
    let read = |r: &rusqlite::Row<'_>| {
        Ok(EventRow {
            seq: r.get(0)?,
            time: r.get(1)?,
            kind: r.get(2)?,
            block_id: r.get(3)?,
            job_id: r.get(4)?,
            message: r.get(5)?,
        })
    };
    let (id, limit) = (endpoint.to_string(), limit as i64);
    let rows = match since {
        Some(since) => conn
            .prepare_cached(
                "SELECT seq, time, kind, block_id, job_id, message FROM endpoint_events
                 WHERE endpoint_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![id, since, limit], read)?
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            let mut newest = conn
                .prepare_cached(
                    "SELECT seq, time, kind, block_id, job_id, message FROM endpoint_events
                     WHERE endpoint_id = ?1 ORDER BY seq DESC LIMIT ?2",
                )?
                .query_map(params![id, limit], read)?
                .collect::<Result<Vec<_>, _>>()?;
            newest.reverse();
            newest
        }
    };
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpfaas_protocol::endpoint::EventKind;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::schema::migrate(&mut conn).unwrap();
        conn
    }

    fn event(n: usize) -> EndpointEvent {
        EndpointEvent::new(n as f64, EventKind::BlockSubmitted, n.to_string()).block("1", None)
    }

    #[test]
    fn each_endpoint_keeps_its_last_events_and_pages_after_a_seq() {
        let conn = db();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        insert(&conn, b, &[event(0)], 5).unwrap();
        for n in 0..8 {
            insert(&conn, a, &[event(n)], 5).unwrap();
        }
        let kept = list(&conn, a, None, 100).unwrap();
        let messages: Vec<&str> = kept.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["3", "4", "5", "6", "7"]);
        assert_eq!(
            list(&conn, b, None, 100).unwrap().len(),
            1,
            "b keeps its own"
        );
        let last_two = list(&conn, a, None, 2).unwrap();
        assert_eq!(last_two[1].message, "7");
        assert_eq!(last_two[0].message, "6");
        let after = list(&conn, a, Some(kept[2].seq), 100).unwrap();
        let messages: Vec<&str> = after.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["6", "7"]);
        assert_eq!(after[0].kind, "block_submitted");
        assert_eq!(after[0].block_id.as_deref(), Some("1"));
    }

    #[test]
    fn reads_and_trims_use_the_index() {
        let conn = db();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT seq FROM endpoint_events
                 WHERE endpoint_id = 'x' AND seq > 3 ORDER BY seq LIMIT 5",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(
                |p| p.contains("USING COVERING INDEX endpoint_events_by_endpoint")
                    || p.contains("USING INDEX endpoint_events_by_endpoint")
            ),
            "{plan:?}"
        );
    }
}
