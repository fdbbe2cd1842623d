//! `GET /v3/tasks`: the caller's tasks, newest first, filtered and paged by
//! an opaque cursor. Each query parameter is checked on its own, so a bad
//! one is refused with its name; the query itself is `db::tasks::list`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use hpfaas_protocol::task::TaskState;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::User;
use crate::db::tasks::{self as db_tasks, Cursor, ListFilter, ListedTask};
use crate::error::{ApiError, ApiResult};
use crate::extract::excerpt;
use crate::state::AppState;

/// Tasks in a page when the caller names no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Most tasks in one page.
pub const MAX_LIMIT: usize = 1000;

/// The query string, as text: each value is parsed by [`filter_of`], which
/// names the parameter it refuses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    endpoint_id: Option<String>,
    function_id: Option<String>,
    task_group_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The route's query parameters, as OpenAPI parameter objects.
pub fn query_parameters() -> Vec<Value> {
    let uuid = json!({"type": "string", "format": "uuid"});
    let time = json!({"type": "number", "minimum": 0});
    let states: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
    [
        (
            "status",
            json!({"type": "string", "enum": states}),
            "only tasks in this state",
        ),
        ("endpoint_id", uuid.clone(), "only tasks on this endpoint"),
        ("function_id", uuid.clone(), "only tasks of this function"),
        ("task_group_id", uuid, "only tasks of this task group"),
        (
            "since",
            time.clone(),
            "only tasks submitted at or after this time (Unix seconds)",
        ),
        (
            "until",
            time,
            "only tasks submitted before this time (Unix seconds)",
        ),
        (
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
            "most tasks in the page (default 100)",
        ),
        (
            "cursor",
            json!({"type": "string"}),
            "`next_cursor` of the previous page",
        ),
    ]
    .into_iter()
    .map(|(name, schema, description)| {
        json!({"name": name, "in": "query", "required": false,
               "description": description, "schema": schema})
    })
    .collect()
}

fn bad(name: &str, raw: &str, expected: &str) -> ApiError {
    ApiError::bad_request(format!(
        "invalid query parameter {name}={}: expected {expected}",
        excerpt(raw)
    ))
}

fn uuid_param(name: &str, raw: Option<&str>) -> ApiResult<Option<Uuid>> {
    raw.map(|raw| Uuid::parse_str(raw).map_err(|_| bad(name, raw, "a UUID")))
        .transpose()
}

fn time_param(name: &str, raw: Option<&str>) -> ApiResult<Option<f64>> {
    raw.map(|raw| {
        raw.parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| bad(name, raw, "a time in Unix seconds, e.g. 1700000000.5"))
    })
    .transpose()
}

/// The filter and page size the query asks for, or a 400 naming the
/// parameter that is wrong.
pub fn filter_of(q: &ListQuery) -> ApiResult<(ListFilter, usize)> {
    let state = match q.status.as_deref() {
        None => None,
        Some(raw) => Some(TaskState::parse(raw).ok_or_else(|| {
            let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            bad("status", raw, &format!("one of {}", names.join(", ")))
        })?),
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| bad("limit", raw, &format!("an integer from 1 to {MAX_LIMIT}")))?,
    };
    let after = q
        .cursor
        .as_deref()
        .map(|raw| {
            Cursor::decode(raw).ok_or_else(|| {
                bad(
                    "cursor",
                    raw,
                    "the next_cursor of an earlier page, unchanged",
                )
            })
        })
        .transpose()?;
    let filter = ListFilter {
        state,
        endpoint: uuid_param("endpoint_id", q.endpoint_id.as_deref())?,
        function: uuid_param("function_id", q.function_id.as_deref())?,
        group: uuid_param("task_group_id", q.task_group_id.as_deref())?,
        since: time_param("since", q.since.as_deref())?,
        until: time_param("until", q.until.as_deref())?,
        after,
    };
    Ok((filter, limit))
}

/// One task of the list: the task document's identity and times, never the
/// result (`GET /v2/tasks/{id}` has it).
fn listed_document(t: &ListedTask) -> Value {
    let mut doc = super::tasks::document_head(
        t.id,
        t.state,
        [t.group, t.function, t.endpoint],
        t.created,
        t.completed,
    );
    if let Some(exc_type) = &t.exc_type {
        doc["exception_type"] = json!(exc_type);
    }
    super::tasks::add_cached(&mut doc, t.state, t.cached_from);
    doc
}

/// `GET /v3/tasks`.
pub async fn list(
    State(state): State<AppState>,
    user: User,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let (filter, limit) = filter_of(&query)?;
    let page = state
        .db
        .read(move |c| db_tasks::list_tasks(c, user.id, &filter, limit))
        .await?;
    let tasks: Vec<Value> = page.tasks.iter().map(listed_document).collect();
    Ok(axum::Json(json!({
        "tasks": tasks,
        "next_cursor": page.next.map(|c| c.encode()),
    })))
}

/// `GET /v3/activity`: how fast the caller's tasks finish, now and over the
/// last hour by minute (counted in memory as results are stored).
pub async fn activity(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
    user: crate::auth::User,
) -> axum::Json<serde_json::Value> {
    axum::Json(activity_document(&state, user.id))
}

/// What `GET /v3/activity` answers for user `user`.
pub fn activity_document(state: &crate::state::AppState, user: i64) -> serde_json::Value {
    let recent = state.activity.of(user, crate::time::now());
    serde_json::json!({
        "finished_per_second": recent.finished_per_second,
        "failed_per_second": recent.failed_per_second,
        "last_hour": recent.last_hour.iter().map(|(minute, finished, failed)| {
            serde_json::json!({"minute": minute, "finished": finished, "failed": failed})
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let mut q = ListQuery::default();
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "status" => q.status = v,
                "endpoint_id" => q.endpoint_id = v,
                "function_id" => q.function_id = v,
                "task_group_id" => q.task_group_id = v,
                "since" => q.since = v,
                "until" => q.until = v,
                "limit" => q.limit = v,
                "cursor" => q.cursor = v,
                _ => unreachable!("{k}"),
            }
        }
        q
    }

    #[test]
    fn each_bad_parameter_is_refused_by_name() {
        for (name, value) in [
            ("status", "done"),
            ("endpoint_id", "nope"),
            ("function_id", "1234"),
            ("task_group_id", ""),
            ("since", "yesterday"),
            ("until", "NaN"),
            ("since", "-1"),
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "many"),
            ("cursor", "abc"),
        ] {
            let err = filter_of(&query(&[(name, value)])).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(
                err.message.contains(&format!("{name}=")),
                "{name}={value}: {}",
                err.message
            );
        }
    }

    #[test]
    fn good_parameters_make_the_filter() {
        let g = Uuid::new_v4();
        let (f, limit) = filter_of(&query(&[
            ("status", "waiting-for-ep"),
            ("task_group_id", &g.to_string()),
            ("since", "10"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(
            (f.state, f.group, f.since, f.until, limit),
            (Some(TaskState::WaitingForEp), Some(g), Some(10.0), None, 5)
        );
        assert_eq!(filter_of(&query(&[])).unwrap().1, DEFAULT_LIMIT);
    }
}
