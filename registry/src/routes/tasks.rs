//! Submitting tasks and reading them back: `POST /v3/endpoints/{id}/submit`,
//! `GET /v2/tasks/{id}`, `POST /v2/batch_status`, `GET /v2/taskgroup/{id}`,
//! and the task document they (and the result stream) share.

use std::collections::HashSet;
use std::fmt;

use axum::extract::State;
use hpfaas_protocol::task::TaskState;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::User;
use crate::db::tasks::{self as db_tasks, NewTask, Submission, TaskRow};
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_id, IdPath, Json};
use crate::routes::time_str;
use crate::state::AppState;

/// `{function_id: [payload, ...]}` in the order sent, so task ids follow
/// the client's order.
#[derive(Debug, Default)]
pub struct OrderedTasks(Vec<(String, Vec<String>)>);

impl<'de> Deserialize<'de> for OrderedTasks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedTasks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping function ids to lists of payload strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedTasks, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Vec<String>>()? {
                    out.push(entry);
                }
                Ok(OrderedTasks(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Body of `POST /v3/endpoints/{id}/submit` (Globus Compute's shape).
#[derive(Debug, Deserialize)]
pub struct SubmitBody {
    tasks: OrderedTasks,
    #[serde(default)]
    task_group_id: Option<Uuid>,
    #[serde(default)]
    #[allow(dead_code)]
    create_queue: Option<bool>,
    #[serde(default)]
    result_serializers: Option<Vec<String>>,
    #[serde(default)]
    resource_specification: Option<Map<String, Value>>,
    #[serde(default)]
    #[allow(dead_code)]
    user_endpoint_config: Option<Value>,
}

/// `POST /v3/endpoints/{id}/submit`: answered only once the tasks are
/// committed.
pub async fn submit(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
    Json(body): Json<SubmitBody>,
) -> ApiResult<axum::Json<Value>> {
    let endpoint = parse_id("endpoint", &raw)?;
    let mut functions = Vec::new();
    let mut seen = HashSet::new();
    let mut new_tasks = Vec::new();
    let mut echo = Map::new();
    for (key, payloads) in body.tasks.0 {
        let function = Uuid::parse_str(&key).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid function id {key:?} in `tasks`: not a UUID ({e})"
            ))
        })?;
        if echo.contains_key(&key) {
            return Err(ApiError::bad_request(format!(
                "function id {key} appears twice in `tasks`"
            )));
        }
        if seen.insert(function) {
            functions.push((key.clone(), function));
        }
        let ids: Vec<Uuid> = payloads
            .into_iter()
            .map(|payload| {
                let id = Uuid::new_v4();
                new_tasks.push(NewTask {
                    id,
                    function,
                    payload,
                });
                id
            })
            .collect();
        echo.insert(key, json!(ids));
    }
    let group = body.task_group_id.unwrap_or_else(Uuid::new_v4);
    let online = state.live.is_online(endpoint);
    let count = new_tasks.len();
    let submission = Submission {
        owner: user.id,
        endpoint,
        group,
        state: if online {
            TaskState::Received
        } else {
            TaskState::WaitingForEp
        },
        functions,
        tasks: new_tasks,
        result_serializers: json!(body.result_serializers.unwrap_or_default()).to_string(),
        resource_spec: body
            .resource_specification
            .map(|m| Value::Object(m).to_string()),
    };
    state
        .db
        .write(move |c, _| db_tasks::submit(c, &submission))
        .await?;
    if count > 0 {
        state.live.poke(endpoint);
    }
    Ok(axum::Json(json!({
        "request_id": Uuid::new_v4(),
        "task_group_id": group,
        "endpoint_id": endpoint,
        "tasks": echo,
    })))
}

/// The task document of docs/api.md.
pub fn task_document(t: &TaskRow) -> Value {
    let mut doc = json!({
        "task_id": t.id,
        "status": t.state.as_str(),
        "pending": !t.state.is_final(),
        "task_group_id": t.group,
        "function_id": t.function,
        "endpoint_id": t.endpoint,
        "created_t": time_str(t.created),
    });
    if let Some(result) = &t.result {
        doc["result"] = json!(result);
    }
    if t.state == TaskState::Failed {
        doc["exception"] = json!(t.exc_traceback.as_deref().unwrap_or(""));
        doc["exception_type"] = json!(t.exc_type.as_deref().unwrap_or(""));
        doc["exception_message"] = json!(t.exc_message.as_deref().unwrap_or(""));
    }
    if let Some(done) = t.completed {
        doc["completion_t"] = json!(time_str(done));
    }
    doc
}

/// `GET /v2/tasks/{id}`.
pub async fn get(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("task", &raw)?;
    let task = state
        .db
        .read(move |c| db_tasks::get_task(c, user.id, id))
        .await?
        .ok_or_else(|| ApiError::not_found_id("task", &raw))?;
    Ok(axum::Json(task_document(&task)))
}

/// Body of `POST /v2/batch_status`.
#[derive(Debug, Deserialize)]
pub struct BatchStatus {
    task_ids: Vec<String>,
}

/// `POST /v2/batch_status`: unknown (or someone else's) ids answer
/// `"status": "unknown"` rather than failing the batch.
pub async fn batch_status(
    State(state): State<AppState>,
    user: User,
    Json(body): Json<BatchStatus>,
) -> ApiResult<axum::Json<Value>> {
    let ids = body
        .task_ids
        .into_iter()
        .map(|raw| parse_id("task", &raw).map(|id| (raw, id)))
        .collect::<ApiResult<Vec<_>>>()?;
    let results = state
        .db
        .read(move |c| {
            let mut results = Map::new();
            for (raw, id) in ids {
                let doc = match db_tasks::get_task(c, user.id, id)? {
                    Some(task) => task_document(&task),
                    None => json!({
                        "task_id": raw,
                        "status": "unknown",
                        "pending": false,
                        "reason": "unknown task id",
                    }),
                };
                results.insert(raw, doc);
            }
            Ok(results)
        })
        .await?;
    Ok(axum::Json(json!({"response": "batch", "results": results})))
}

/// `GET /v2/taskgroup/{id}`.
pub async fn taskgroup(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("task group", &raw)?;
    let tasks = state
        .db
        .read(move |c| {
            if db_tasks::group_owner(c, id)? != Some(user.id) {
                return Ok(None);
            }
            db_tasks::group_tasks(c, id).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found_id("task group", &raw))?;
    let tasks: Vec<Value> = tasks
        .into_iter()
        .map(|(task, function, status)| json!({"id": task, "function_id": function, "status": status}))
        .collect();
    Ok(axum::Json(json!({"taskgroup_id": id, "tasks": tasks})))
}
