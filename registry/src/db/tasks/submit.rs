//! Submission: everything a `POST /v3/endpoints/{id}/submit` names is
//! checked (access, the endpoint's policy, the functions, the owner's
//! quota, the task group) and its tasks are stored with their payloads, in
//! one write; or the answer of an earlier request with the same
//! idempotency key is replayed.

use hpfaas_protocol::payload::{strategy_of, unpack, STRATEGY_JSON};
use hpfaas_protocol::task::TaskState;
use rusqlite::{params, Connection};
use uuid::Uuid;

use super::read::group_owner;
use crate::db::catalog::{self, EndpointPolicy};
use crate::db::dependencies::{self, Parents};
use crate::db::function_defaults;
use crate::db::idempotency::{self, IdempotentRequest};
use crate::db::result_seq::save_result_seq;
use crate::db::usage::{add_usage, check_quota, Quota};
use crate::db::writer::WriteCtx;
use crate::error::{ApiError, ApiResult};
use crate::resource_spec;
use crate::time::now;

/// One task of a submission.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its new id.
    pub id: Uuid,
    /// The function to run.
    pub function: Uuid,
    /// Packed `[args, kwargs]` (checked against the endpoint's policy).
    pub payload: String,
    /// The task has a file ([`crate::db::payload_files`]), written before this
    /// submit: its blob if it has one (the row stores the payload), else
    /// the payload (the row stores '').
    pub in_file: bool,
    /// Raw argument bytes the payload's `pb\n` buffer names.
    pub blob: Option<bytes::Bytes>,
}

impl NewTask {
    /// What its payload file holds, if it has one: the blob, else the payload.
    pub fn file_content(&self) -> Option<&[u8]> {
        self.in_file
            .then(|| self.blob.as_deref().unwrap_or(self.payload.as_bytes()))
    }
}

/// A whole `POST /v3/endpoints/{id}/submit`, checked and applied at once.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The submitting user.
    pub owner: i64,
    /// Target endpoint.
    pub endpoint: Uuid,
    /// Task group (created if new).
    pub group: Uuid,
    /// `received`, or `waiting-for-ep` when the endpoint is offline.
    pub state: TaskState,
    /// Functions used, with the key each was sent as (for error messages).
    pub functions: Vec<(String, Uuid)>,
    /// The tasks, in submission order.
    pub tasks: Vec<NewTask>,
    /// JSON array of strategy ids.
    pub result_serializers: String,
    /// JSON object, if given (over each function's defaults, key by key).
    pub resource_spec: Option<String>,
    /// The idempotency key, with the request's hash and the answer to store.
    pub idempotency: Option<IdempotentRequest>,
    /// The owner's limits.
    pub quota: Quota,
    /// Tasks that depend on others: (index in `tasks`, the parents' ids in
    /// the order the worker receives their results), by index.
    pub depends_on: Vec<(usize, Vec<Uuid>)>,
}

/// What a submit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// The tasks were stored.
    Created,
    /// A retry: nothing stored; this is the first request's answer.
    Replayed(String),
}

/// Refuses a user with no right to submit to `endpoint`: 404 when there is
/// no such endpoint, 403 when it is someone else's and not shared with them.
pub fn check_submit_access(
    conn: &Connection,
    user: i64,
    endpoint: Uuid,
    access: catalog::Access,
) -> ApiResult<()> {
    match access {
        catalog::Access::Owner | catalog::Access::Shared => Ok(()),
        catalog::Access::None => match catalog::endpoint_owner(conn, endpoint)? {
            Some(owner) if owner != user => Err(ApiError::forbidden(format!(
                "endpoint {endpoint} belongs to another user and is not shared with you; you can \
                 submit only to your own endpoints and those shared with you"
            ))),
            _ => Err(ApiError::not_found_id("endpoint", endpoint)),
        },
    }
}

/// Refuses a submission the endpoint's policy forbids: a function outside
/// `allowed_functions` (403), or with `json_only` a payload with a buffer
/// that is not JSON (400, naming the task's index).
fn check_policy(policy: &EndpointPolicy, s: &Submission) -> ApiResult<()> {
    let endpoint = s.endpoint;
    if !policy.allowed_functions.is_empty() {
        if let Some((key, _)) = s
            .functions
            .iter()
            .find(|(_, f)| !policy.allowed_functions.contains(f))
        {
            return Err(ApiError::forbidden(format!(
                "function {key} is not in the allowed_functions of endpoint {endpoint}"
            )));
        }
    }
    if !policy.json_only {
        return Ok(());
    }
    // Tasks come grouped by function, in the body's order.
    let (mut function, mut i) = (None, 0usize);
    for (index, task) in s.tasks.iter().enumerate() {
        if function != Some(task.function) {
            (function, i) = (Some(task.function), 0);
        }
        // The key the body named the function by, only for a refusal.
        let key = || {
            s.functions
                .iter()
                .find(|(_, f)| *f == task.function)
                .map_or_else(|| task.function.to_string(), |(key, _)| key.clone())
        };
        let buffers = unpack(&task.payload).map_err(|e| {
            let key = key();
            ApiError::bad_request(format!(
                "task index {index} (tasks[{key:?}][{i}]): its payload is not packed buffers \
                 ({e}); endpoint {endpoint} accepts only JSON (11\\n) arguments"
            ))
        })?;
        if let Some(buffer) = buffers
            .into_iter()
            .find(|b| strategy_of(b) != Some(STRATEGY_JSON))
        {
            let (strategy, key): (String, _) = (buffer.chars().take(3).collect(), key());
            return Err(ApiError::bad_request(format!(
                "task index {index} (tasks[{key:?}][{i}]) has a buffer with strategy \
                 {strategy:?}; endpoint {endpoint} accepts only JSON (11\\n) arguments"
            )));
        }
        i += 1;
    }
    Ok(())
}

/// Checks everything a submission names and stores its tasks (and its
/// idempotency key), or replays the answer of an earlier request with the
/// same key. A task whose parent has failed already is stored failed
/// (`DependencyFailed`) with the next `result_seq` of `ctx`.
pub fn submit(conn: &Connection, ctx: &mut WriteCtx, s: &Submission) -> ApiResult<Submitted> {
    if let Some(req) = &s.idempotency {
        if let Some(answer) = idempotency::replay(conn, s.owner, req)? {
            return Ok(Submitted::Replayed(answer));
        }
    }
    let (access, policy) = catalog::endpoint_access(conn, s.owner, s.endpoint)?;
    check_submit_access(conn, s.owner, s.endpoint, access)?;
    check_policy(&policy, s)?;
    // Each function's specification: its defaults under the submit's own.
    let mut specs = std::collections::HashMap::with_capacity(s.functions.len());
    for (sent_as, id) in &s.functions {
        let Some(defaults) = function_defaults::owned(conn, s.owner, *id)? else {
            return Err(ApiError::not_found(format!("function {sent_as} not found")));
        };
        let spec = resource_spec::merge(defaults.as_deref(), s.resource_spec.as_deref());
        specs.insert(*id, spec);
    }
    let size = |t: &NewTask| {
        let inline = if t.in_file && t.blob.is_none() {
            0
        } else {
            t.payload.len()
        };
        (inline + t.file_content().map_or(0, <[u8]>::len)) as u64
    };
    let bytes: u64 = s.tasks.iter().map(size).sum();
    check_quota(conn, s.owner, s.quota, s.tasks.len() as u64, bytes)?;
    ensure_group(conn, s.owner, s.group)?;
    let parents = check_dependencies(conn, s)?;
    let mut st = conn.prepare_cached(
        "INSERT INTO tasks (id, owner, endpoint_id, function_id, group_id, state,
                            result_serializers, resource_spec, created, queue_key, rid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut put_payload = conn.prepare_cached(
        "INSERT INTO task_payloads (rid, payload, in_file, bytes) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let (endpoint, group, created) = (s.endpoint.to_string(), s.group.to_string(), now());
    // Parsed once per function, not per task.
    let keys: std::collections::HashMap<Uuid, f64> = specs
        .iter()
        .map(|(f, spec)| (*f, resource_spec::queue_key(created, spec.as_deref())))
        .collect();
    let mut parents = parents.into_iter().peekable();
    let (mut failed_any, mut grown) = (false, 0i64);
    for (index, t) in s.tasks.iter().enumerate() {
        let spec = specs.get(&t.function).and_then(Option::as_deref);
        let mut inline = if t.in_file && t.blob.is_none() {
            ""
        } else {
            t.payload.as_str()
        };
        let (mut state, mut rid, mut spliced) = (s.state, None, None);
        let (mut waiting, mut failed) = (None, None);
        if let Some((_, all, at)) = parents.next_if(|(i, ..)| *i == index) {
            match at {
                Parents::Failed(message) => failed = Some(message),
                Parents::Ready(buffer) => {
                    spliced = Some(dependencies::spliced(inline, &buffer));
                }
                Parents::Waiting(left) => {
                    state = TaskState::WaitingForDependencies;
                    rid = Some(dependencies::held_rid(conn)?);
                    waiting = Some((all, left));
                }
            }
        }
        if let Some(text) = &spliced {
            inline = text;
        }
        let rid = st.insert(params![
            t.id.to_string(),
            s.owner,
            endpoint,
            t.function.to_string(),
            group,
            state.as_str(),
            s.result_serializers,
            spec,
            created,
            keys.get(&t.function).copied().unwrap_or(created),
            rid
        ])?;
        if let Some((all, left)) = waiting {
            dependencies::hold(conn, t.id, all, &left)?;
        }
        // Parents' results spliced in are the task's arguments from now on.
        let spliced_in = spliced
            .as_ref()
            .map_or(0, |p| (p.len() - t.payload.len()) as i64);
        grown += spliced_in;
        let bytes = size(t) as i64 + spliced_in;
        put_payload.execute(params![rid, inline, t.in_file, bytes])?;
        if let Some(message) = failed {
            failed_any = true;
            // Its usage: counted below with the others, taken back here.
            dependencies::fail_dependent(conn, ctx, t.id, &message)?;
        }
    }
    if failed_any {
        save_result_seq(conn, ctx)?;
    }
    add_usage(conn, s.owner, s.tasks.len() as i64, bytes as i64 + grown)?;
    if let Some(req) = &s.idempotency {
        idempotency::insert(conn, s.owner, req)?;
    }
    Ok(Submitted::Created)
}

/// Where each dependent task's parents stand, in task order: (index, its
/// parents, where they stand). A dependent's arguments must be inline (its
/// payload is rewritten when it is released).
fn check_dependencies<'a>(
    conn: &Connection,
    s: &'a Submission,
) -> ApiResult<Vec<(usize, &'a [Uuid], Parents)>> {
    let mut out = Vec::with_capacity(s.depends_on.len());
    for (index, parents) in &s.depends_on {
        let Some(task) = s.tasks.get(*index) else {
            continue;
        };
        if parents.is_empty() {
            continue;
        }
        if task.in_file {
            return Err(ApiError::bad_request(format!(
                "task index {index} has depends_on and its arguments are a blob (pb\\n); \
                 a dependent task's arguments must be in its payload text"
            )));
        }
        out.push((
            *index,
            parents.as_slice(),
            dependencies::check_parents(conn, s.owner, s.endpoint, parents)?,
        ));
    }
    out.sort_by_key(|(i, ..)| *i);
    Ok(out)
}

/// Creates task group `id` for `owner` if new; refuses another user's.
pub fn ensure_group(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<()> {
    conn.execute(
        "INSERT OR IGNORE INTO task_groups (id, owner, created) VALUES (?1, ?2, ?3)",
        params![id.to_string(), owner, now()],
    )?;
    match group_owner(conn, id)? {
        Some(o) if o == owner => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "task group {id} belongs to another user; choose a new task_group_id"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::catalog::ensure_user;

    #[test]
    fn policy_names_the_function_and_the_task_index() {
        let (ep, f, g) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let task = |function, payload: String| NewTask {
            id: Uuid::new_v4(),
            function,
            payload,
            in_file: false,
            blob: None,
        };
        let pack = hpfaas_protocol::payload::pack;
        let s = Submission {
            owner: 1,
            endpoint: ep,
            group: Uuid::new_v4(),
            state: TaskState::Received,
            functions: vec![(f.to_string(), f), (g.to_string(), g)],
            tasks: vec![
                task(f, pack(&["11\n[1]", "11\n{}"])),
                task(g, pack(&["11\n[]", "11\n{}"])),
                task(g, pack(&["11\n[]", "00\ngASVAA=="])),
            ],
            result_serializers: "[]".into(),
            resource_spec: None,
            idempotency: None,
            quota: Default::default(),
            depends_on: Vec::new(),
        };
        let only_f = EndpointPolicy {
            allowed_functions: vec![f],
            json_only: false,
        };
        let e = check_policy(&only_f, &s).unwrap_err();
        assert_eq!(e.code, "forbidden");
        assert!(e.message.contains(&g.to_string()), "{}", e.message);
        let json_only = EndpointPolicy {
            allowed_functions: vec![],
            json_only: true,
        };
        let e = check_policy(&json_only, &s).unwrap_err();
        assert_eq!(e.code, "bad_request");
        assert!(e.message.contains("task index 2"), "{}", e.message);
        assert!(
            e.message.contains(&format!("[{:?}][1]", g.to_string())),
            "{}",
            e.message
        );
        assert!(e.message.contains("\"00\\n\""), "{}", e.message);
        assert!(check_policy(&EndpointPolicy::default(), &s).is_ok());
    }

    #[test]
    fn another_users_group_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::schema::migrate(&mut conn).unwrap();
        let alice = ensure_user(&conn, "alice").unwrap();
        let group = Uuid::new_v4();
        ensure_group(&conn, alice, group).unwrap();
        let bob = ensure_user(&conn, "bob").unwrap();
        assert_eq!(
            ensure_group(&conn, bob, group).unwrap_err().code,
            "forbidden"
        );
    }
}
