//! Listing an owner's tasks (`GET /v3/tasks`): filters, newest first, in
//! pages joined by a cursor. Every filter is answered from an index of
//! schema version 9 that ends in `created`, so no query scans the table or
//! sorts; the tests below check the plan of every combination.

use hpfaas_protocol::task::TaskState;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use uuid::Uuid;

use crate::db::columns::uuid_col;
use crate::error::ApiResult;

/// Where a page ends: the (created, rid) of its last task. The next page
/// holds the tasks strictly older in that order, so tasks submitted
/// meanwhile (newer) never shift it, and none is shown twice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    created: f64,
    rid: i64,
}

/// Hex digits of an encoded cursor: the creation time's bits, then the rid.
const CURSOR_LEN: usize = 32;

impl Cursor {
    /// The opaque text clients send back.
    pub fn encode(&self) -> String {
        format!("{:016x}{:016x}", self.created.to_bits(), self.rid as u64)
    }

    /// A cursor from [`Cursor::encode`]'s text; `None` for anything else.
    pub fn decode(text: &str) -> Option<Cursor> {
        if text.len() != CURSOR_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let created = f64::from_bits(u64::from_str_radix(&text[..16], 16).ok()?);
        let rid = u64::from_str_radix(&text[16..], 16).ok()? as i64;
        (created.is_finite() && rid > 0).then_some(Cursor { created, rid })
    }
}

/// What to list; every filter is optional, and they combine with AND.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks on this endpoint.
    pub endpoint: Option<Uuid>,
    /// Only tasks of this function.
    pub function: Option<Uuid>,
    /// Only tasks of this task group.
    pub group: Option<Uuid>,
    /// Only tasks submitted at or after this time (Unix seconds).
    pub since: Option<f64>,
    /// Only tasks submitted before this time (Unix seconds).
    pub until: Option<f64>,
    /// Only tasks after this one in the list (the previous page's end).
    pub after: Option<Cursor>,
}

/// One task of a list: what a table of tasks shows, without its result.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedTask {
    /// Task id.
    pub id: Uuid,
    /// Its task group.
    pub group: Uuid,
    /// The function it runs.
    pub function: Uuid,
    /// The endpoint it runs on.
    pub endpoint: Uuid,
    /// Current state.
    pub state: TaskState,
    /// Unix seconds at submission.
    pub created: f64,
    /// Unix seconds at completion (the endpoint's clock).
    pub completed: Option<f64>,
    /// Exception type name, on failure.
    pub exc_type: Option<String>,
    /// The task whose cached result this one took or waits for.
    pub cached_from: Option<Uuid>,
}

/// A page of the list and the cursor of the next one (`None` on the last).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    /// Newest first.
    pub tasks: Vec<ListedTask>,
    /// Where the next page starts, when there may be one.
    pub next: Option<Cursor>,
}

/// The index that answers `filter`: the one of its most selective equality
/// filter (a group is a few tasks, a state may be most of them).
fn index_for(filter: &ListFilter) -> &'static str {
    if filter.group.is_some() {
        "tasks_by_group_created"
    } else if filter.function.is_some() {
        "tasks_by_owner_function"
    } else if filter.endpoint.is_some() {
        "tasks_by_owner_endpoint"
    } else if let Some(state) = filter.state {
        if state.is_final() {
            "tasks_by_owner_final"
        } else {
            "tasks_by_owner_pending"
        }
    } else {
        "tasks_by_owner"
    }
}

/// The query for `filter` and its parameters (owner and limit included).
fn list_query(owner: i64, filter: &ListFilter, limit: usize) -> (String, Vec<SqlValue>) {
    // Without statistics SQLite takes the index with the most equality
    // columns; `INDEXED BY` makes it the most selective one instead, and
    // fails the query (rather than scanning) should that index be gone.
    let mut sql = format!(
        "SELECT rid, id, group_id, function_id, endpoint_id, state, created, completed, exc_type,
                cached_from
         FROM tasks INDEXED BY {} WHERE owner = ?",
        index_for(filter)
    );
    if let Some(state) = filter.state {
        // Implies the partial index's own condition, so SQLite may use it.
        sql.push_str(if state.is_final() {
            " AND done = 1"
        } else {
            " AND done = 0"
        });
    }
    let mut params = vec![SqlValue::Integer(owner)];
    let mut eq = |column: &str, value: Option<String>| {
        if let Some(value) = value {
            sql.push_str(&format!(" AND {column} = ?"));
            params.push(SqlValue::Text(value));
        }
    };
    eq("state", filter.state.map(|s| s.as_str().to_string()));
    eq("endpoint_id", filter.endpoint.map(|u| u.to_string()));
    eq("function_id", filter.function.map(|u| u.to_string()));
    eq("group_id", filter.group.map(|u| u.to_string()));
    if let Some(since) = filter.since {
        sql.push_str(" AND created >= ?");
        params.push(SqlValue::Real(since));
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND created < ?");
        params.push(SqlValue::Real(until));
    }
    if let Some(c) = filter.after {
        // The range on `created` is the index's; only tasks submitted in the
        // same instant as the cursor's are told apart by rid.
        sql.push_str(" AND created <= ? AND (created < ? OR rid < ?)");
        params.extend([
            SqlValue::Real(c.created),
            SqlValue::Real(c.created),
            SqlValue::Integer(c.rid),
        ]);
    }
    sql.push_str(" ORDER BY created DESC, rid DESC LIMIT ?");
    params.push(SqlValue::Integer(limit as i64));
    (sql, params)
}

/// Up to `limit` of `owner`'s tasks matching `filter`, newest first.
pub fn list_tasks(
    conn: &Connection,
    owner: i64,
    filter: &ListFilter,
    limit: usize,
) -> ApiResult<TaskPage> {
    let (sql, params) = list_query(owner, filter, limit);
    let mut st = conn.prepare_cached(&sql)?;
    let mut last = None;
    let rows = st.query_map(params_from_iter(params), |r| {
        let state: String = r.get(5)?;
        let created: f64 = r.get(6)?;
        let rid: i64 = r.get(0)?;
        Ok((
            Cursor { created, rid },
            ListedTask {
                id: uuid_col(r, 1)?,
                group: uuid_col(r, 2)?,
                function: uuid_col(r, 3)?,
                endpoint: uuid_col(r, 4)?,
                // Only this crate writes states, always through `TaskState::as_str`.
                state: TaskState::parse(&state).unwrap_or(TaskState::Received),
                created,
                completed: r.get(7)?,
                exc_type: r.get(8)?,
                cached_from: r
                    .get::<_, Option<String>>(9)?
                    .and_then(|s| Uuid::parse_str(&s).ok()),
            },
        ))
    })?;
    let mut tasks = Vec::new();
    for row in rows {
        let (cursor, task) = row?;
        last = Some(cursor);
        tasks.push(task);
    }
    let next = if tasks.len() == limit { last } else { None };
    Ok(TaskPage { tasks, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tasks::test_fixture::{fixture, submit_n};

    /// Every combination of filters, with a final state (answered from the
    /// finished tasks' index) and with a pending one (the pending tasks').
    fn every_filter() -> Vec<ListFilter> {
        let mut all = Vec::new();
        for bits in 0u32..256 {
            let on = |i: u32| bits & (1 << i) != 0;
            let state = if on(7) {
                TaskState::Running
            } else {
                TaskState::Failed
            };
            all.push(ListFilter {
                state: on(0).then_some(state),
                endpoint: on(1).then(Uuid::new_v4),
                function: on(2).then(Uuid::new_v4),
                group: on(3).then(Uuid::new_v4),
                since: on(4).then_some(1.0),
                until: on(5).then_some(2.0),
                after: on(6).then_some(Cursor {
                    created: 1.5,
                    rid: 7,
                }),
            });
        }
        all
    }

    #[test]
    fn every_filter_combination_is_answered_from_an_index_without_sorting() {
        let fx = fixture();
        for filter in every_filter() {
            let (sql, params) = list_query(fx.owner, &filter, 100);
            let mut st = fx
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let plan: Vec<String> = st
                .query_map(params_from_iter(params), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let text = plan.join("; ");
            let expected = format!("SEARCH tasks USING INDEX {} (", index_for(&filter));
            assert!(
                plan.iter().all(|step| step.starts_with(&expected)),
                "{filter:?}: plan {text}, expected {expected}"
            );
            assert!(!text.contains("TEMP B-TREE"), "{filter:?}: plan {text}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let c = Cursor {
            created: 1_700_000_000.123456,
            rid: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in [
            "",
            "xyz",
            &"0".repeat(31),
            &"g".repeat(32),
            &"0".repeat(33),
            // NaN creation time, and rid 0.
            &format!("{:016x}{:016x}", f64::NAN.to_bits(), 1),
            &format!("{:016x}{:016x}", 1f64.to_bits(), 0),
            "é0000000000000000000000000000000",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pages_walk_newest_first_and_stay_put_when_tasks_are_added() {
        let fx = fixture();
        let group = Uuid::new_v4();
        // Tasks of one submission share their creation time: rid tells them apart.
        let mut ids = submit_n(&fx, group, 5, 10);
        ids.reverse();
        let filter = |after| ListFilter {
            group: Some(group),
            after,
            ..ListFilter::default()
        };
        let first = list_tasks(&fx.conn, fx.owner, &filter(None), 2).unwrap();
        assert_eq!(
            first.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
            ids[..2]
        );
        submit_n(&fx, group, 3, 10);
        let second = list_tasks(&fx.conn, fx.owner, &filter(first.next), 2).unwrap();
        assert_eq!(
            second.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
            ids[2..4]
        );
        let third = list_tasks(&fx.conn, fx.owner, &filter(second.next), 2).unwrap();
        assert_eq!(
            third.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
            ids[4..]
        );
        assert_eq!(third.next, None);
        // Someone else sees none of them.
        let other = crate::db::catalog::ensure_user(&fx.conn, "bob").unwrap();
        let theirs = list_tasks(&fx.conn, other, &ListFilter::default(), 10).unwrap();
        assert!(theirs.tasks.is_empty());
    }
}
