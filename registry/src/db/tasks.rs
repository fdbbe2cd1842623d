//! Task groups and tasks: the queue endpoints drain and the results clients
//! read.
//!
//! The `tasks` table is the queue. An endpoint link keeps a cursor (`rid`)
//! and pages through its endpoint's non-final tasks ([`dispatch_page`]);
//! acknowledgements, state updates and results come back through the writer
//! ([`ack`], [`update_states`], [`store_results`]).

use std::collections::HashSet;

use hpfaas_protocol::endpoint::TasksFrame;
use hpfaas_protocol::task::{
    ExceptionInfo, FunctionCode, Outcome, TaskResult, TaskSpec, TaskState,
};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use hpfaas_protocol::payload::{strategy_of, unpack, STRATEGY_JSON};

use super::catalog::{self, EndpointPolicy};
use super::columns::uuid_col;
use super::payload_files::PayloadFiles;
use super::writer::WriteCtx;
use crate::error::{ApiError, ApiResult};
use crate::time::now;

/// A task as the REST routes show it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
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
    /// Serialized result, on success.
    pub result: Option<String>,
    /// Exception type name, on failure.
    pub exc_type: Option<String>,
    /// Exception message, on failure.
    pub exc_message: Option<String>,
    /// Traceback text, on failure.
    pub exc_traceback: Option<String>,
    /// Unix seconds at submission.
    pub created: f64,
    /// Unix seconds at completion.
    pub completed: Option<f64>,
    /// Position in the result streams, once final.
    pub result_seq: Option<i64>,
    /// True once a final task's result was read by its owner (or there is
    /// nothing to read, or it expired).
    pub fetched: bool,
}

const TASK_COLUMNS: &str = "id, group_id, function_id, endpoint_id, state, result, exc_type, \
     exc_message, exc_traceback, created, completed, result_seq, result_fate";

/// `result_fate`: the result waits to be fetched.
pub const FATE_UNFETCHED: i64 = 0;
/// `result_fate`: fetched, or nothing to fetch.
pub const FATE_FETCHED: i64 = 1;
/// `result_fate`: purged unfetched after the result TTL.
pub const FATE_EXPIRED: i64 = 2;

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    let state: String = r.get(4)?;
    Ok(TaskRow {
        id: uuid_col(r, 0)?,
        group: uuid_col(r, 1)?,
        function: uuid_col(r, 2)?,
        endpoint: uuid_col(r, 3)?,
        // Only this crate writes states, always through `TaskState::as_str`.
        state: TaskState::parse(&state).unwrap_or(TaskState::Received),
        result: r.get(5)?,
        exc_type: r.get(6)?,
        exc_message: r.get(7)?,
        exc_traceback: r.get(8)?,
        created: r.get(9)?,
        completed: r.get(10)?,
        result_seq: r.get(11)?,
        fetched: r.get::<_, i64>(12)? != FATE_UNFETCHED,
    })
}

/// Highest `result_seq` stored (0 when none), to continue the sequence.
pub fn max_result_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT value FROM counters WHERE name = 'result_seq'",
        [],
        |r| r.get(0),
    )
}

/// Records the last `result_seq` handed out, in the job that handed it out.
pub fn save_result_seq(conn: &Connection, ctx: &WriteCtx) -> ApiResult<()> {
    conn.prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'result_seq'")?
        .execute([ctx.next_result_seq - 1])?;
    Ok(())
}

/// One task of a submission.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its new id.
    pub id: Uuid,
    /// The function to run.
    pub function: Uuid,
    /// Packed `[args, kwargs]` (checked against the endpoint's policy).
    pub payload: String,
    /// The task has a file ([`super::payload_files`]), written before this
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
    /// JSON object, if given.
    pub resource_spec: Option<String>,
    /// The idempotency key, with the request's hash and the answer to store.
    pub idempotency: Option<IdempotentRequest>,
    /// The owner's limits.
    pub quota: Quota,
}

/// Per-user limits, so one user cannot fill the queue or the disk for
/// everyone (`hpfaas service --max-queued-tasks-per-user`,
/// `--max-stored-bytes-per-user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most non-final tasks a user may have; a submit past it gets `429`.
    pub max_queued_tasks: u64,
    /// Most bytes of arguments and results the service may keep for a user;
    /// a submit past it gets `507`.
    pub max_stored_bytes: u64,
}

impl Quota {
    /// Default most queued tasks per user.
    pub const DEFAULT_MAX_QUEUED_TASKS: u64 = 1_000_000;
    /// Default most stored bytes per user: 100 GiB.
    pub const DEFAULT_MAX_STORED_BYTES: u64 = 100 << 30;
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            max_queued_tasks: Self::DEFAULT_MAX_QUEUED_TASKS,
            max_stored_bytes: Self::DEFAULT_MAX_STORED_BYTES,
        }
    }
}

/// Adds to what `owner` holds: `queued` more tasks not final, `bytes` more
/// bytes stored (either may be negative). Called once per batch by every
/// write that inserts, finishes, cancels, expires or deletes tasks.
pub(crate) fn add_usage(conn: &Connection, owner: i64, queued: i64, bytes: i64) -> ApiResult<()> {
    if queued != 0 || bytes != 0 {
        conn.prepare_cached(
            "INSERT INTO user_usage (user_id, queued, bytes) VALUES (?1, ?2, ?3)
             ON CONFLICT (user_id) DO UPDATE
             SET queued = queued + excluded.queued, bytes = bytes + excluded.bytes",
        )?
        .execute(params![owner, queued, bytes])?;
    }
    Ok(())
}

/// Usage changes of one batch, per owner, applied at its end.
#[derive(Debug, Default)]
pub(crate) struct UsageDelta(Vec<(i64, i64, i64)>);

impl UsageDelta {
    /// Counts a change of `owner`'s usage.
    pub(crate) fn add(&mut self, owner: i64, queued: i64, bytes: i64) {
        // Almost always one owner per batch: a short scan beats a map.
        match self.0.iter_mut().find(|(o, _, _)| *o == owner) {
            Some((_, q, b)) => (*q, *b) = (*q + queued, *b + bytes),
            None => self.0.push((owner, queued, bytes)),
        }
    }

    /// Stores the changes.
    pub(crate) fn apply(self, conn: &Connection) -> ApiResult<()> {
        for (owner, queued, bytes) in self.0 {
            add_usage(conn, owner, queued, bytes)?;
        }
        Ok(())
    }
}

/// Bytes a final task keeps: its result and exception texts.
pub(crate) fn result_bytes(result: Option<&str>, exc: Option<&ExceptionInfo>) -> i64 {
    (result.map_or(0, str::len) + exc.map_or(0, |e| e.message.len() + e.traceback.len())) as i64
}

/// Refuses a submit of `tasks` tasks and `bytes` bytes of arguments that
/// would take `owner` past `quota` (what a user holds: `user_usage`).
fn check_quota(
    conn: &Connection,
    owner: i64,
    quota: Quota,
    tasks: u64,
    bytes: u64,
) -> ApiResult<()> {
    let (queued, stored): (i64, i64) = conn
        .prepare_cached("SELECT queued, bytes FROM user_usage WHERE user_id = ?1")?
        .query_row([owner], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0));
    let (queued, stored) = (queued.max(0) as u64, stored.max(0) as u64);
    if queued.saturating_add(tasks) > quota.max_queued_tasks {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "you have {queued} tasks not finished yet; with these {tasks} you would pass the \
                 limit of {} queued tasks per user (--max-queued-tasks-per-user); wait for \
                 some to finish, or cancel some",
                quota.max_queued_tasks
            ),
        ));
    }
    if stored.saturating_add(bytes) > quota.max_stored_bytes {
        return Err(ApiError::insufficient_storage(format!(
            "the service holds {stored} bytes of your arguments and results; these {bytes} \
                 more would pass the limit of {} bytes per user (--max-stored-bytes-per-user); \
                 fetch or let expire old results, or send smaller arguments",
            quota.max_stored_bytes
        )));
    }
    Ok(())
}

/// A submit carrying an idempotency key.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    /// The client's key.
    pub key: String,
    /// SHA-256 of what the request asks (endpoint and body).
    pub request_hash: String,
    /// The answer (JSON text) to give this request and its retries.
    pub answer: String,
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

/// A stored answer for this key, or 409 if the key was used for another
/// request; `None` if the key is new.
pub fn replay(conn: &Connection, owner: i64, req: &IdempotentRequest) -> ApiResult<Option<String>> {
    match super::idempotency::lookup(conn, owner, &req.key)? {
        None => Ok(None),
        Some((hash, answer)) if hash == req.request_hash => Ok(Some(answer)),
        Some(_) => Err(ApiError::conflict(format!(
            "idempotency key {:?} was already used for a different request (another endpoint or \
             body); use a new key for a new submission",
            req.key
        ))),
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
/// same key.
pub fn submit(conn: &Connection, s: &Submission) -> ApiResult<Submitted> {
    if let Some(req) = &s.idempotency {
        if let Some(answer) = replay(conn, s.owner, req)? {
            return Ok(Submitted::Replayed(answer));
        }
    }
    let (access, policy) = catalog::endpoint_access(conn, s.owner, s.endpoint)?;
    check_submit_access(conn, s.owner, s.endpoint, access)?;
    check_policy(&policy, s)?;
    for (sent_as, id) in &s.functions {
        if !catalog::owns_function(conn, s.owner, *id)? {
            return Err(ApiError::not_found(format!("function {sent_as} not found")));
        }
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
    let mut st = conn.prepare_cached(
        "INSERT INTO tasks (id, owner, endpoint_id, function_id, group_id, state,
                            result_serializers, resource_spec, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut put_payload = conn.prepare_cached(
        "INSERT INTO task_payloads (rid, payload, in_file, bytes) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let (endpoint, group, created) = (s.endpoint.to_string(), s.group.to_string(), now());
    for t in &s.tasks {
        let rid = st.insert(params![
            t.id.to_string(),
            s.owner,
            endpoint,
            t.function.to_string(),
            group,
            s.state.as_str(),
            s.result_serializers,
            s.resource_spec,
            created
        ])?;
        let inline = if t.in_file && t.blob.is_none() {
            ""
        } else {
            t.payload.as_str()
        };
        put_payload.execute(params![rid, inline, t.in_file, size(t) as i64])?;
    }
    add_usage(conn, s.owner, s.tasks.len() as i64, bytes as i64)?;
    if let Some(req) = &s.idempotency {
        super::idempotency::insert(conn, s.owner, req)?;
    }
    Ok(Submitted::Created)
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

/// Who owns task group `id`, if it exists.
pub fn group_owner(conn: &Connection, id: Uuid) -> ApiResult<Option<i64>> {
    let mut st = conn.prepare_cached("SELECT owner FROM task_groups WHERE id = ?1")?;
    Ok(st.query_row([id.to_string()], |r| r.get(0)).optional()?)
}

/// The owner's task `id`.
pub fn get_task(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<Option<TaskRow>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1 AND owner = ?2"
    ))?;
    Ok(st
        .query_row(params![id.to_string(), owner], task_from_row)
        .optional()?)
}

/// (rid, task id, function id, state) of a group's tasks after `after_rid`,
/// in submission order, at most `limit`.
pub fn group_tasks(
    conn: &Connection,
    group: Uuid,
    after_rid: i64,
    limit: usize,
) -> ApiResult<Vec<(i64, Uuid, Uuid, String)>> {
    let mut st = conn.prepare_cached(
        "SELECT rid, id, function_id, state FROM tasks WHERE group_id = ?1 AND rid > ?2
         ORDER BY rid LIMIT ?3",
    )?;
    let rows = st.query_map(params![group.to_string(), after_rid, limit as i64], |r| {
        Ok((r.get(0)?, uuid_col(r, 1)?, uuid_col(r, 2)?, r.get(3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Finished tasks of a group with `result_seq > after`, in that order.
pub fn results_after(
    conn: &Connection,
    group: Uuid,
    after: i64,
    limit: usize,
) -> ApiResult<Vec<TaskRow>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks
         WHERE group_id = ?1 AND result_seq > ?2 ORDER BY result_seq LIMIT ?3"
    ))?;
    let rows = st.query_map(
        params![group.to_string(), after, limit as i64],
        task_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The owner has read these final tasks' results: the result TTL no
/// longer applies to them.
pub fn mark_fetched(conn: &Connection, ids: &[Uuid]) -> ApiResult<usize> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET result_fate = 1 WHERE id = ?1 AND done = 1 AND result_fate = 0",
    )?;
    let mut n = 0;
    for id in ids {
        n += st.execute([id.to_string()])?;
    }
    Ok(n)
}

/// A frame of tasks for the agent.
#[derive(Debug)]
pub enum Frame {
    /// A `ServiceMessage::Tasks` as JSON text.
    Text(String),
    /// A [`TasksFrame`] of tasks with blobs, as MessagePack.
    Binary(Vec<u8>),
}

/// One frame's worth of an endpoint's queue. A page holds tasks with blobs
/// or tasks without, not both: the first task of the other kind starts the
/// next page.
#[derive(Debug)]
pub struct DispatchPage {
    /// The frame, `None` when nothing is queued past the cursor.
    pub frame: Option<Frame>,
    /// Cursor to continue from.
    pub last_rid: i64,
    /// Tasks in the frame.
    pub count: usize,
    /// Functions whose code this connection has now been sent.
    pub sent_functions: HashSet<Uuid>,
    /// Tasks left out because their payload file is gone (with the error);
    /// the caller fails them.
    pub lost: Vec<(Uuid, String)>,
    /// The page ended at a payload file it was not to read: more is queued.
    pub more: bool,
}

/// How much one [`dispatch_page`] may take.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// Most tasks.
    pub tasks: usize,
    /// About this many bytes of frame at most (a single larger task still goes, alone).
    pub bytes: usize,
    /// Read payload files ([`super::payload_files`]); if not, the page ends
    /// before the first task whose payload is in a file.
    pub read_files: bool,
}

/// Reads the endpoint's non-final tasks after `after` (within `limits`),
/// with the code of functions not in `sent_functions`, as the text of one
/// `ServiceMessage::Tasks` frame.
pub fn dispatch_page(
    conn: &Connection,
    files: &PayloadFiles,
    endpoint: Uuid,
    after: i64,
    mut sent_functions: HashSet<Uuid>,
    limits: PageLimits,
) -> ApiResult<DispatchPage> {
    let mut st = conn.prepare_cached(
        "SELECT t.rid, t.id, t.function_id, p.payload, t.result_serializers, t.resource_spec,
                p.in_file
         FROM tasks t JOIN task_payloads p ON p.rid = t.rid
         WHERE t.endpoint_id = ?1 AND t.done = 0 AND t.rid > ?2 ORDER BY t.rid LIMIT ?3",
    )?;
    let mut rows = st.query(params![endpoint.to_string(), after, limits.tasks as i64])?;
    let (mut functions, mut tasks) = (String::new(), String::new());
    // A page of tasks with blobs keeps them whole, for one MessagePack frame.
    let mut binary: Option<TasksFrame> = None;
    let (mut count, mut bytes, mut last_rid) = (0usize, 0usize, after);
    let (mut lost, mut more) = (Vec::new(), false);
    while let Some(r) = rows.next()? {
        let rid: i64 = r.get(0)?;
        let serializers: String = r.get(4)?;
        let task_id = uuid_col(r, 1)?;
        let inline: String = r.get(3)?;
        let in_file: bool = r.get(6)?;
        // A row with a file and a payload of its own: the file is the blob.
        let has_blob = in_file && !inline.is_empty();
        if count > 0 && has_blob != binary.is_some() {
            break;
        }
        let (payload, blob) = if in_file {
            if !limits.read_files {
                more = true;
                break;
            }
            // A file that would not fit the page is not read (and then
            // dropped): the next page starts with it.
            let size = files.size(task_id).unwrap_or(0) as usize;
            if count > 0 && bytes + size > limits.bytes {
                break;
            }
            let read = if has_blob {
                files
                    .read_blob(task_id)
                    .map(|blob| (inline, Some(blob.into())))
            } else {
                files.read(task_id).map(|text| (text, None))
            };
            match read {
                Ok(both) => both,
                Err(e) => {
                    lost.push((
                        task_id,
                        format!("the task's argument file is unreadable: {e}"),
                    ));
                    last_rid = rid;
                    continue;
                }
            }
        } else {
            (inline, None)
        };
        let spec = TaskSpec {
            task_id,
            function_id: uuid_col(r, 2)?,
            payload,
            blob,
            result_serializers: serde_json::from_str(&serializers).unwrap_or_default(),
            resource_spec: r.get(5)?,
        };
        let mut code = None;
        if !sent_functions.contains(&spec.function_id) {
            match catalog::function_code(conn, spec.function_id)? {
                Some(text) => {
                    code = Some(FunctionCode {
                        function_id: spec.function_id,
                        code: text,
                    })
                }
                None => tracing::warn!(task = %spec.task_id, function = %spec.function_id,
                    "queued task names a function with no stored code"),
            }
        }
        if has_blob {
            // Raw bytes in MessagePack: the sizes are about what goes out.
            let item = spec.payload.len()
                + spec.blob.as_ref().map_or(0, |b| b.len())
                + code.as_ref().map_or(0, |c| c.code.len())
                + 256;
            if count > 0 && bytes + item > limits.bytes {
                break;
            }
            let page = binary.get_or_insert_with(|| TasksFrame {
                functions: Vec::new(),
                tasks: Vec::new(),
            });
            if let Some(code) = code {
                sent_functions.insert(code.function_id);
                page.functions.push(code);
            }
            page.tasks.push(spec);
            bytes += item;
        } else {
            let task_json = to_json(&spec)?;
            let code_json = code.as_ref().map(to_json).transpose()?;
            let item = task_json.len() + code_json.as_ref().map_or(0, |c| c.len() + 1) + 1;
            // The byte cap keeps frames far below the WebSocket message limit;
            // a single oversized task still goes, alone.
            if count > 0 && bytes + item > limits.bytes {
                break;
            }
            if let Some(code_json) = code_json {
                sent_functions.insert(spec.function_id);
                if !functions.is_empty() {
                    functions.push(',');
                }
                functions.push_str(&code_json);
            }
            if !tasks.is_empty() {
                tasks.push(',');
            }
            tasks.push_str(&task_json);
            bytes += item;
        }
        count += 1;
        last_rid = rid;
    }
    let frame = match binary {
        Some(page) => Some(Frame::Binary(page.encode())),
        None => (count > 0).then(|| {
            Frame::Text(format!(
                r#"{{"type":"tasks","functions":[{functions}],"tasks":[{tasks}]}}"#
            ))
        }),
    };
    Ok(DispatchPage {
        frame,
        last_rid,
        count,
        sent_functions,
        lost,
        more,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> ApiResult<String> {
    serde_json::to_string(v)
        .map_err(|e| ApiError::internal(format!("could not encode a task: {e}")))
}

/// The agent journaled these tasks: `waiting-for-launch`, unless they have
/// moved on already (a re-sent task may be running or finished). For a
/// cancelled task the ack answers the cancel: it is not repeated.
pub fn ack(conn: &Connection, endpoint: Uuid, ids: &[Uuid]) -> ApiResult<usize> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET state = 'waiting-for-launch'
         WHERE id = ?1 AND endpoint_id = ?2 AND state IN ('received', 'waiting-for-ep')",
    )?;
    let endpoint = endpoint.to_string();
    let mut n = 0;
    for id in ids {
        let id = id.to_string();
        let changed = st.execute(params![id, endpoint])?;
        if changed == 0 {
            super::cancel::cancel_delivered(conn, &id, &endpoint)?;
        }
        n += changed;
    }
    Ok(n)
}

/// Applies non-final state changes to non-final tasks; final states are
/// ignored here because only a result may end a task.
pub fn update_states(
    conn: &Connection,
    endpoint: Uuid,
    updates: &[(Uuid, TaskState)],
) -> ApiResult<usize> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET state = ?3 WHERE id = ?1 AND endpoint_id = ?2 AND done = 0",
    )?;
    let endpoint = endpoint.to_string();
    let mut n = 0;
    for (id, state) in updates {
        if state.is_final() {
            tracing::warn!(task = %id, state = state.as_str(), "ignoring a final state sent without a result");
            continue;
        }
        n += st.execute(params![id.to_string(), endpoint, state.as_str()])?;
    }
    Ok(n)
}

/// A result [`store_results`] stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    /// The task.
    pub task: Uuid,
    /// Its task group.
    pub group: Uuid,
    /// The result's `result_seq`.
    pub seq: i64,
    /// Its payload was in a file, to remove once this is durable.
    pub payload_file: bool,
    /// The task's row as stored, when its result and exception text are at
    /// most [`STREAMED_ROW_BYTES`]: result streams send it without reading
    /// it back.
    pub row: Option<std::sync::Arc<TaskRow>>,
}

/// Largest result (or traceback) handed to the result streams in memory.
pub const STREAMED_ROW_BYTES: usize = 16 * 1024;

/// Stores results for non-final tasks of this endpoint, each with the next
/// `result_seq`; returns each stored one. Results for
/// tasks already final (duplicates, cancelled tasks) or unknown are ignored:
/// first one wins.
pub fn store_results(
    conn: &Connection,
    ctx: &mut WriteCtx,
    endpoint: Uuid,
    results: &[TaskResult],
) -> ApiResult<Vec<StoredResult>> {
    let mut st = conn.prepare_cached(
        "UPDATE tasks SET state = ?3, done = 1, result = ?4, exc_type = ?5, exc_message = ?6,
                          exc_traceback = ?7, completed = ?8, result_seq = ?9, stored = ?10,
                          result_fate = 0
         WHERE id = ?1 AND endpoint_id = ?2 AND done = 0
         RETURNING group_id, rid, function_id, created, owner",
    )?;
    // The payload of a finished task is no longer needed.
    let mut drop_payload =
        conn.prepare_cached("DELETE FROM task_payloads WHERE rid = ?1 RETURNING in_file, bytes")?;
    let mut usage = UsageDelta::default();
    let stored_at = now();
    let endpoint_text = endpoint.to_string();
    let mut stored = Vec::with_capacity(results.len());
    for res in results {
        let completed = if res.completed_at.is_finite() && res.completed_at > 0.0 {
            res.completed_at
        } else {
            now()
        };
        let (state, result, exc) = match &res.outcome {
            Outcome::Success { result } => (TaskState::Success, Some(result.as_str()), None),
            Outcome::Failed { exception } => (TaskState::Failed, None, Some(exception)),
        };
        let seq = ctx.next_result_seq;
        let row: Option<(String, i64, String, f64, i64)> = st
            .query_row(
                params![
                    res.task_id.to_string(),
                    endpoint_text,
                    state.as_str(),
                    result,
                    exc.map(|e| e.exc_type.as_str()),
                    exc.map(|e| e.message.as_str()),
                    exc.map(|e| e.traceback.as_str()),
                    completed,
                    seq,
                    stored_at
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let parsed = row.and_then(|(g, rid, f, created, owner)| {
            Some((
                Uuid::parse_str(&g).ok()?,
                rid,
                Uuid::parse_str(&f).ok()?,
                created,
                owner,
            ))
        });
        match parsed {
            Some((group, rid, function, created, owner)) => {
                let dropped: Option<(bool, i64)> = drop_payload
                    .query_row([rid], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let (payload_file, arg_bytes) = dropped.unwrap_or((false, 0));
                usage.add(owner, -1, result_bytes(result, exc) - arg_bytes);
                ctx.next_result_seq += 1;
                let text = result.map_or(0, str::len) + exc.map_or(0, |e| e.traceback.len());
                let row = (text <= STREAMED_ROW_BYTES).then(|| {
                    std::sync::Arc::new(TaskRow {
                        id: res.task_id,
                        group,
                        function,
                        endpoint,
                        state,
                        result: result.map(str::to_string),
                        exc_type: exc.map(|e| e.exc_type.clone()),
                        exc_message: exc.map(|e| e.message.clone()),
                        exc_traceback: exc.map(|e| e.traceback.clone()),
                        created,
                        completed: Some(completed),
                        result_seq: Some(seq),
                        fetched: false,
                    })
                });
                stored.push(StoredResult {
                    task: res.task_id,
                    group,
                    seq,
                    payload_file,
                    row,
                });
            }
            None => {
                // A cancelled task's late result also answers the cancel.
                super::cancel::cancel_delivered(conn, &res.task_id.to_string(), &endpoint_text)?;
                tracing::debug!(task = %res.task_id, %endpoint,
                    "result for a task that is already final or not this endpoint's; ignored")
            }
        }
    }
    usage.apply(conn)?;
    if !stored.is_empty() {
        save_result_seq(conn, ctx)?;
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::catalog::{
        ensure_user, insert_function, register_endpoint, EndpointRegistration, FunctionRow,
    };
    use hpfaas_protocol::endpoint::{from_json, ServiceMessage};
    use hpfaas_protocol::failure::SystemFailure;
    use hpfaas_protocol::task::ExceptionInfo;

    struct Fixture {
        /// Holds the payload files' directory; removed on drop.
        _dir: tempfile::TempDir,
        conn: Connection,
        files: PayloadFiles,
        owner: i64,
        endpoint: Uuid,
        function: Uuid,
    }

    fn fixture() -> Fixture {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let owner = ensure_user(&conn, "alice").unwrap();
        let reg = EndpointRegistration {
            id: None,
            name: "ep".into(),
            display_name: "ep".into(),
            metadata: serde_json::json!({}),
        };
        let cred = crate::db::catalog::StoredToken {
            hash: "cred".into(),
            prefix: "cred".into(),
        };
        let endpoint = register_endpoint(&conn, owner, &reg, &cred).unwrap();
        let function = Uuid::new_v4();
        let f = FunctionRow {
            id: function,
            name: "f".into(),
            code: "10\nst\nf:code".into(),
            description: String::new(),
            metadata: serde_json::json!({}),
        };
        insert_function(&conn, owner, &f).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-tasks-")
            .tempdir()
            .unwrap();
        let files = PayloadFiles::beside(&dir.path().join("registry.db")).unwrap();
        Fixture {
            _dir: dir,
            conn,
            files,
            owner,
            endpoint,
            function,
        }
    }

    fn limits(tasks: usize, bytes: usize) -> PageLimits {
        PageLimits {
            tasks,
            bytes,
            read_files: true,
        }
    }

    /// The page's frame as JSON text.
    fn text(page: &DispatchPage) -> &str {
        match &page.frame {
            Some(Frame::Text(text)) => text,
            other => panic!("not a text frame: {other:?}"),
        }
    }

    #[test]
    fn tasks_with_blobs_go_in_binary_pages_of_their_own() {
        let fx = fixture();
        let blob = |i: u8| bytes::Bytes::from(vec![i; 100_000]);
        let task = |blob: Option<bytes::Bytes>| NewTask {
            id: Uuid::new_v4(),
            function: fx.function,
            payload: match &blob {
                Some(b) => format!("9\npb\n{}3\n00\n", b.len()),
                None => "3\n00\n3\n00\n".into(),
            },
            in_file: blob.is_some(),
            blob,
        };
        let tasks = vec![
            task(None),
            task(Some(blob(1))),
            task(Some(blob(2))),
            task(None),
        ];
        submit_tasks(&fx, Uuid::new_v4(), &tasks);
        let page = |after, sent| {
            dispatch_page(
                &fx.conn,
                &fx.files,
                fx.endpoint,
                after,
                sent,
                limits(10, 1 << 20),
            )
            .unwrap()
        };
        let first = page(0, HashSet::new());
        assert_eq!(first.count, 1, "the blob task starts the next page");
        let Ok(ServiceMessage::Tasks { functions, .. }) = from_json(text(&first)) else {
            panic!("not a tasks frame")
        };
        assert_eq!(functions.len(), 1);
        let second = page(first.last_rid, first.sent_functions);
        assert_eq!(second.count, 2);
        let Some(Frame::Binary(bytes)) = &second.frame else {
            panic!("tasks with blobs go in a binary frame")
        };
        let frame = TasksFrame::decode(bytes).unwrap();
        assert!(
            frame.functions.is_empty(),
            "code is sent once per connection"
        );
        for (sent, task) in frame.tasks.iter().zip(&tasks[1..3]) {
            assert_eq!(sent.task_id, task.id);
            assert_eq!(sent.payload, task.payload);
            assert_eq!(sent.blob.as_deref(), task.blob.as_deref());
        }
        let third = page(second.last_rid, second.sent_functions);
        assert_eq!(third.count, 1);
        assert!(matches!(third.frame, Some(Frame::Text(_))));
        // The quick page reads no file, blob or payload.
        let quick = PageLimits {
            read_files: false,
            ..limits(10, 1 << 20)
        };
        let skipped = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            first.last_rid,
            HashSet::new(),
            quick,
        )
        .unwrap();
        assert_eq!((skipped.count, skipped.more), (0, true));
    }

    fn submit_n(fx: &Fixture, group: Uuid, n: usize, payload_len: usize) -> Vec<Uuid> {
        let tasks: Vec<NewTask> = (0..n)
            .map(|_| NewTask {
                id: Uuid::new_v4(),
                function: fx.function,
                payload: "x".repeat(payload_len),
                in_file: false,
                blob: None,
            })
            .collect();
        submit_tasks(fx, group, &tasks);
        tasks.into_iter().map(|t| t.id).collect()
    }

    /// Stores `tasks` of the fixture's function as one submit to group
    /// `group`, writing the files of those `in_file` first (their blob, or
    /// else their payload), as the submit route does.
    fn submit_tasks(fx: &Fixture, group: Uuid, tasks: &[NewTask]) {
        let files: Vec<(Uuid, &[u8])> = tasks
            .iter()
            .filter_map(|t| Some((t.id, t.file_content()?)))
            .collect();
        fx.files.write(&files).unwrap();
        let s = Submission {
            owner: fx.owner,
            endpoint: fx.endpoint,
            group,
            state: TaskState::Received,
            functions: vec![(fx.function.to_string(), fx.function)],
            tasks: tasks.to_vec(),
            result_serializers: "[]".into(),
            resource_spec: None,
            idempotency: None,
            quota: Default::default(),
        };
        assert_eq!(submit(&fx.conn, &s).unwrap(), Submitted::Created);
    }

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
    fn a_payload_file_that_does_not_fit_the_page_waits_for_the_next() {
        let fx = fixture();
        let tasks: Vec<NewTask> = (0..2)
            .map(|_| NewTask {
                id: Uuid::new_v4(),
                function: fx.function,
                payload: "y".repeat(100_000),
                in_file: true,
                blob: None,
            })
            .collect();
        submit_tasks(&fx, Uuid::new_v4(), &tasks);
        let quick = PageLimits {
            read_files: false,
            ..limits(10, 1 << 20)
        };
        let page =
            dispatch_page(&fx.conn, &fx.files, fx.endpoint, 0, HashSet::new(), quick).unwrap();
        assert_eq!(
            (page.count, page.more),
            (0, true),
            "left to a page that reads files"
        );
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            0,
            HashSet::new(),
            limits(10, 150_000),
        )
        .unwrap();
        assert_eq!(page.count, 1, "the second file does not fit");
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            page.last_rid,
            page.sent_functions,
            limits(10, 150_000),
        )
        .unwrap();
        assert_eq!(page.count, 1);
        let Ok(ServiceMessage::Tasks { tasks: sent, .. }) = from_json(text(&page)) else {
            panic!("not a tasks frame")
        };
        assert_eq!(sent[0].task_id, tasks[1].id);
        assert_eq!(sent[0].payload, tasks[1].payload);
    }

    #[test]
    fn pages_respect_counts_bytes_and_send_code_once() {
        let fx = fixture();
        let ids = submit_n(&fx, Uuid::new_v4(), 5, 1000);
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            0,
            HashSet::new(),
            limits(2, 1 << 20),
        )
        .unwrap();
        assert_eq!(page.count, 2);
        let Ok(ServiceMessage::Tasks { functions, tasks }) = from_json(text(&page)) else {
            panic!("not a tasks frame")
        };
        assert_eq!(functions.len(), 1);
        assert_eq!(
            tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
            ids[..2]
        );
        // Next page: byte cap of ~1.5 tasks still sends one, and no code again.
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            page.last_rid,
            page.sent_functions,
            limits(100, 1500),
        )
        .unwrap();
        assert_eq!(page.count, 1);
        let Ok(ServiceMessage::Tasks { functions, tasks }) = from_json(text(&page)) else {
            panic!("not a tasks frame")
        };
        assert!(functions.is_empty());
        assert_eq!(tasks[0].task_id, ids[2]);
    }

    #[test]
    fn first_result_wins_and_finished_tasks_leave_the_queue() {
        let fx = fixture();
        let group = Uuid::new_v4();
        let ids = submit_n(&fx, group, 2, 10);
        assert_eq!(ack(&fx.conn, fx.endpoint, &ids).unwrap(), 2);
        assert_eq!(
            update_states(&fx.conn, fx.endpoint, &[(ids[0], TaskState::Running)]).unwrap(),
            1
        );
        // A re-sent, re-acked running task stays running.
        assert_eq!(ack(&fx.conn, fx.endpoint, &ids[..1]).unwrap(), 0);
        let mut ctx = WriteCtx { next_result_seq: 7 };
        let ok = TaskResult {
            task_id: ids[0],
            outcome: Outcome::Success { result: "r".into() },
            completed_at: 5.0,
        };
        let failed = TaskResult::failed(
            ids[0],
            ExceptionInfo::system(SystemFailure::WorkerLost, "gone"),
        );
        let stored = store_results(&fx.conn, &mut ctx, fx.endpoint, &[ok, failed]).unwrap();
        assert_eq!(ctx.next_result_seq, 8);
        let row = get_task(&fx.conn, fx.owner, ids[0]).unwrap().unwrap();
        assert_eq!(row.state, TaskState::Success);
        assert_eq!(row.result.as_deref(), Some("r"));
        // The row the streams get in memory is the row they would read.
        let first = StoredResult {
            task: ids[0],
            group,
            seq: 7,
            payload_file: false,
            row: Some(std::sync::Arc::new(row)),
        };
        assert_eq!(stored, vec![first]);
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            0,
            HashSet::new(),
            limits(10, 1 << 20),
        )
        .unwrap();
        assert_eq!(page.count, 1);
        assert_eq!(results_after(&fx.conn, group, 0, 10).unwrap().len(), 1);
        assert!(results_after(&fx.conn, group, 7, 10).unwrap().is_empty());
        let payloads: i64 = fx
            .conn
            .query_row("SELECT COUNT(*) FROM task_payloads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            payloads, 1,
            "the finished task's payload is dropped, the other's kept"
        );
        // A large result is left for the streams to read.
        let big = TaskResult {
            task_id: ids[1],
            outcome: Outcome::Success {
                result: "r".repeat(STREAMED_ROW_BYTES + 1),
            },
            completed_at: 6.0,
        };
        let stored = store_results(&fx.conn, &mut ctx, fx.endpoint, &[big]).unwrap();
        assert_eq!((stored[0].seq, stored[0].row.is_none()), (8, true));
    }

    #[test]
    fn another_users_group_is_refused() {
        let fx = fixture();
        let group = Uuid::new_v4();
        ensure_group(&fx.conn, fx.owner, group).unwrap();
        let bob = ensure_user(&fx.conn, "bob").unwrap();
        assert_eq!(
            ensure_group(&fx.conn, bob, group).unwrap_err().code,
            "forbidden"
        );
    }
}
