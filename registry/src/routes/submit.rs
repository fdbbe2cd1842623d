//! `POST /v3/endpoints/{id}/submit`: the submit body (read with the task
//! limit enforced while parsing, so an oversized batch never fills memory),
//! idempotency keys, and storing the tasks (access and the endpoint's
//! policy are checked in that write, `db::tasks::submit`).
//!
//! The answer is given only once the tasks are committed. A request with an
//! idempotency key (header `Idempotency-Key` or body `idempotency_key`) that
//! was seen before from the same user gets the first answer again and
//! creates nothing; the same key on a different request is `409`.
//!
//! A body of type [`BLOBS_CONTENT_TYPE`] is `{n}\n`, an n-byte JSON submit
//! body, then the blobs (raw argument bytes) that its payloads' `pb\n<len>`
//! args buffers name, in the order the payloads appear (docs/api.md,
//! "Binary arguments").

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use hpfaas_protocol::payload::blob_length;
use hpfaas_protocol::task::TaskState;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::User;
use crate::db::idempotency::validate_key;
use crate::db::idempotency::IdempotentRequest;
use crate::db::memo;
use crate::db::payload_files::INLINE_MAX;
use crate::db::tasks::{self as db_tasks, NewTask, Submission, Submitted};
use crate::db::Durability;
use crate::error::{ApiError, ApiResult};
use crate::extract::{excerpt, parse_id, parse_json_seed, Body, IdPath};
use crate::resource_spec;
use crate::state::AppState;

/// The header carrying an idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Bodies larger than this are parsed on a blocking thread.
const BLOCKING_BODY_BYTES: usize = 256 * 1024;
/// Set on an answer replayed for a known idempotency key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Content type of a submit body followed by blobs.
pub const BLOBS_CONTENT_TYPE: &str = "application/x-hpfaas-blobs";

/// Body of a submit (Globus Compute's shape, plus `idempotency_key`).
#[derive(Debug, Default)]
pub struct SubmitBody {
    /// `{function_id: [payload, ...]}` in the order sent.
    pub tasks: Vec<(String, Vec<String>)>,
    /// Client-chosen task group.
    pub task_group_id: Option<Uuid>,
    /// Strategy ids accepted for results.
    pub result_serializers: Option<Vec<String>>,
    /// Free JSON object handed to the endpoint.
    pub resource_specification: Option<Map<String, Value>>,
    /// Idempotency key given in the body.
    pub idempotency_key: Option<String>,
    /// `{function_id: [[parent task id, ...] or null, ...]}`: the tasks each
    /// task of `tasks` (same key, same position) depends on (hpfaas).
    pub depends_on: Option<HashMap<String, Vec<Option<Vec<Uuid>>>>>,
}

/// Reads a submit body, refusing more than `max_tasks` tasks with `413`
/// as soon as the limit is passed.
pub fn parse_submit(bytes: &[u8], max_tasks: usize) -> ApiResult<SubmitBody> {
    let over = Cell::new(false);
    let seed = BodySeed {
        max_tasks,
        over: &over,
    };
    parse_json_seed(bytes, seed).map_err(|e| {
        if over.get() {
            ApiError::payload_too_large(format!(
                "the submit holds more than {max_tasks} tasks, the service's limit per submit \
                 (--max-tasks-per-submit); split it into several submits"
            ))
        } else {
            e
        }
    })
}

struct BodySeed<'a> {
    max_tasks: usize,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = SubmitBody;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SubmitBody, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = SubmitBody;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a submit object with `tasks`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SubmitBody, A::Error> {
        let mut body = SubmitBody::default();
        let mut seen = HashSet::new();
        let mut has_tasks = false;
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(format!("duplicate field `{key}`")));
            }
            match key.as_str() {
                "tasks" => {
                    has_tasks = true;
                    body.tasks = map.next_value_seed(TasksSeed {
                        max_tasks: self.max_tasks,
                        over: self.over,
                    })?;
                }
                "task_group_id" => body.task_group_id = map.next_value()?,
                "result_serializers" => body.result_serializers = map.next_value()?,
                "resource_specification" => body.resource_specification = map.next_value()?,
                "idempotency_key" => body.idempotency_key = map.next_value()?,
                "depends_on" => body.depends_on = map.next_value()?,
                "create_queue" => {
                    let _: Option<bool> = map.next_value()?;
                }
                // `user_endpoint_config` and keys of newer clients.
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !has_tasks {
            return Err(A::Error::missing_field("tasks"));
        }
        Ok(body)
    }
}

/// `{function_id: [payload, ...]}`, counting tasks as they are read.
struct TasksSeed<'a> {
    max_tasks: usize,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for TasksSeed<'_> {
    type Value = Vec<(String, Vec<String>)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TasksSeed<'_> {
    type Value = Vec<(String, Vec<String>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object mapping function ids to lists of payload strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        let mut count = 0usize;
        while let Some(key) = map.next_key::<String>()? {
            let payloads = map.next_value_seed(PayloadsSeed {
                max_tasks: self.max_tasks,
                over: self.over,
                count: &mut count,
            })?;
            out.push((key, payloads));
        }
        Ok(out)
    }
}

struct PayloadsSeed<'a, 'c> {
    max_tasks: usize,
    over: &'a Cell<bool>,
    count: &'c mut usize,
}

impl<'de> DeserializeSeed<'de> for PayloadsSeed<'_, '_> {
    type Value = Vec<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PayloadsSeed<'_, '_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of payload strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut out = Vec::new();
        while let Some(payload) = seq.next_element::<String>()? {
            *self.count += 1;
            if *self.count > self.max_tasks {
                self.over.set(true);
                return Err(A::Error::custom(format!(
                    "more than {} tasks in one submit",
                    self.max_tasks
                )));
            }
            out.push(payload);
        }
        Ok(out)
    }
}

/// The idempotency key of a request: header or body field (equal if both).
fn idempotency_key(headers: &HeaderMap, body: &SubmitBody) -> ApiResult<Option<String>> {
    let header = match headers.get(IDEMPOTENCY_HEADER) {
        None => None,
        Some(h) => {
            let text = h.to_str().map_err(|_| {
                ApiError::bad_request("invalid Idempotency-Key header: not printable ASCII")
            })?;
            validate_key(text, "Idempotency-Key header")?;
            Some(text.to_string())
        }
    };
    if let Some(key) = &body.idempotency_key {
        validate_key(key, "idempotency_key")?;
    }
    match (header, &body.idempotency_key) {
        (Some(h), Some(b)) if h != *b => Err(ApiError::bad_request(format!(
            "the Idempotency-Key header ({h:?}) and the body's idempotency_key ({b:?}) differ; \
             send one key"
        ))),
        (Some(h), _) => Ok(Some(h)),
        (None, b) => Ok(b.clone()),
    }
}

/// True when the request's body is [`BLOBS_CONTENT_TYPE`].
fn has_blobs(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(BLOBS_CONTENT_TYPE))
}

/// A blob body's JSON document and the blob bytes after it.
fn split_blob_body(bytes: &Bytes) -> ApiResult<(Bytes, Bytes)> {
    let bad = || {
        ApiError::bad_request(format!(
            "a {BLOBS_CONTENT_TYPE} body must open with the length in bytes of its JSON \
             document, a newline, and that document"
        ))
    };
    let nl = bytes
        .iter()
        .take(21)
        .position(|&b| b == b'\n')
        .ok_or_else(bad)?;
    let n: usize = std::str::from_utf8(&bytes[..nl])
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(bad)?;
    let end = (nl + 1)
        .checked_add(n)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "the {BLOBS_CONTENT_TYPE} body announces a JSON document of {n} bytes but holds \
                 {} after the length",
                bytes.len() - nl - 1
            ))
        })?;
    Ok((bytes.slice(nl + 1..end), bytes.slice(end..)))
}

/// The blob `payload` names, taken from the front of `rest`.
fn take_blob(payload: &str, rest: &mut Bytes, allowed: bool) -> ApiResult<Option<Bytes>> {
    let length = blob_length(payload)
        .map_err(|e| ApiError::bad_request(format!("invalid task payload: {e}")))?;
    let Some(n) = length else {
        return Ok(None);
    };
    if !allowed {
        return Err(ApiError::bad_request(format!(
            "a task's args name a blob (pb\\n{n}), but the request is not \
             {BLOBS_CONTENT_TYPE}: its blobs must follow the JSON document"
        )));
    }
    if n > rest.len() {
        return Err(ApiError::bad_request(format!(
            "a task's args name a blob of {n} bytes, but only {} bytes of blobs are left \
             in the body",
            rest.len()
        )));
    }
    Ok(Some(rest.split_to(n)))
}

/// SHA-256 over what a request asks: its endpoint and its exact body; for
/// a body with blobs, its JSON document and the XXH3-128 of the blobs after
/// it. That tells any two requests apart as surely, without a cryptographic
/// pass over megabytes of arguments (a sixth of `hpfaas up` on 1 MiB ones).
fn request_hash(endpoint: Uuid, json: &[u8], blobs: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    h.update(endpoint.as_bytes());
    h.update(json);
    if let Some(blobs) = blobs {
        h.update(xxhash_rust::xxh3::xxh3_128(blobs).to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn json_answer(text: String, replayed: bool) -> Response {
    let mut resp = (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    resp
}

/// `POST /v3/endpoints/{id}/submit`.
pub async fn submit(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
    headers: HeaderMap,
    Body(bytes): Body,
) -> ApiResult<Response> {
    let endpoint = parse_id("endpoint", &raw)?;
    let max_tasks = state.config.max_tasks_per_submit;
    let large = bytes.len() > BLOCKING_BODY_BYTES;
    let with_blobs = has_blobs(&headers);
    let read = move || -> ApiResult<_> {
        let (json, blobs) = if with_blobs {
            split_blob_body(&bytes)?
        } else {
            (bytes.clone(), Bytes::new())
        };
        let body = parse_submit(&json, max_tasks)?;
        let key = idempotency_key(&headers, &body)?;
        let request_hash = key
            .as_ref()
            .map(|_| request_hash(endpoint, &json, with_blobs.then_some(&blobs[..])));
        // Each payload's framing is read here too (for its blob), with the
        // rest of the body's parsing.
        let mut rest = blobs;
        let taken = body
            .tasks
            .iter()
            .map(|(_, payloads)| {
                payloads
                    .iter()
                    .map(|p| take_blob(p, &mut rest, with_blobs))
                    .collect::<ApiResult<Vec<_>>>()
            })
            .collect::<ApiResult<Vec<_>>>()?;
        if !rest.is_empty() {
            return Err(ApiError::bad_request(format!(
                "the body ends with {} bytes of blobs that no task's args name",
                rest.len()
            )));
        }
        Ok((body, key, request_hash, taken))
    };
    // Parsing and hashing a large body takes milliseconds: off the async
    // thread, which `hpfaas up` shares with the endpoint's agent.
    let (body, key, request_hash, taken) = if large {
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| ApiError::internal(format!("reading the submit failed: {e}")))??
    } else {
        read()?
    };

    // Checked before any payload file is written: nothing to clean up.
    if let Some(spec) = &body.resource_specification {
        resource_spec::check(spec).map_err(ApiError::bad_request)?;
    }
    // Access, the endpoint's policy and a replayed key are all checked in
    // the write itself (`db_tasks::submit`): a read before it would cost
    // every submit a trip to the reader pool for what the write re-checks.
    let mut functions = Vec::new();
    let mut seen = HashSet::new();
    let mut new_tasks = Vec::new();
    let mut echo = Map::new();
    let mut depends_on = body.depends_on.unwrap_or_default();
    let mut dependencies = Vec::new();
    for ((key, payloads), blobs) in body.tasks.into_iter().zip(taken) {
        if let Some(parents) = depends_on.remove(&key) {
            if parents.len() > payloads.len() {
                return Err(ApiError::bad_request(format!(
                    "depends_on[{}] names {} tasks' parents; tasks[{0}] has {} tasks",
                    excerpt(&key),
                    parents.len(),
                    payloads.len()
                )));
            }
            let first = new_tasks.len();
            dependencies.extend(
                parents
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, p)| Some((first + i, p?))),
            );
        }
        let function = Uuid::parse_str(&key).map_err(|e| {
            let key = excerpt(&key);
            ApiError::bad_request(format!(
                "invalid function id {key} in `tasks`: not a UUID ({e})"
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
        let mut ids = Vec::with_capacity(payloads.len());
        for (payload, blob) in payloads.into_iter().zip(blobs) {
            let id = Uuid::new_v4();
            // A dependent's arguments stay in its row, however large (a
            // fan-in's references): its payload is rewritten on release.
            let dependent = dependencies
                .binary_search_by_key(&new_tasks.len(), |(i, _)| *i)
                .is_ok();
            new_tasks.push(NewTask {
                id,
                function,
                in_file: blob.is_some() || (!dependent && payload.len() > INLINE_MAX),
                payload,
                blob,
            });
            ids.push(id);
        }
        echo.insert(key, json!(ids));
    }
    if let Some(key) = depends_on.keys().next() {
        return Err(ApiError::bad_request(format!(
            "depends_on names function {}, which has no tasks in `tasks`",
            excerpt(key)
        )));
    }
    let group = body.task_group_id.unwrap_or_else(Uuid::new_v4);
    let answer = json!({
        "request_id": Uuid::new_v4(),
        "task_group_id": group,
        "endpoint_id": endpoint,
        "tasks": echo,
    })
    .to_string();
    // Large payloads go to files, durable before the rows that name them.
    let in_files: Vec<Uuid> = new_tasks
        .iter()
        .filter(|t| t.in_file)
        .map(|t| t.id)
        .collect();
    if !in_files.is_empty() {
        let files = state.db.payload_files().clone();
        new_tasks = tokio::task::spawn_blocking(move || {
            let pairs: Vec<(Uuid, &[u8])> = new_tasks
                .iter()
                .filter_map(|t| Some((t.id, t.file_content()?)))
                .collect();
            match files.write(&pairs) {
                Ok(()) => Ok(new_tasks),
                Err(e) => {
                    files.remove(pairs.iter().map(|(id, _)| *id));
                    Err(ApiError::io("cannot store the tasks' arguments", &e))
                }
            }
        })
        .await
        .map_err(|e| ApiError::internal(format!("storing the tasks' arguments failed: {e}")))??;
    }
    let online = state.live.is_online(endpoint);
    let count = new_tasks.len();
    let memo_ttl = state.config.cache_ttl.as_secs_f64();
    let audited: Vec<(Uuid, Uuid)> = new_tasks.iter().map(|t| (t.id, t.function)).collect();
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
        idempotency: key
            .zip(request_hash)
            .map(|(key, request_hash)| IdempotentRequest {
                key,
                request_hash,
                answer: answer.clone(),
            }),
        quota: state.config.quota,
        depends_on: dependencies,
    };
    // The endpoint's link may dispatch the tasks as soon as they are visible
    // (so the audit log records them as submitted then, before they can be
    // reported running); the client's answer waits until they are durable.
    let (live, audit, user_name) = (state.live.clone(), state.audit.clone(), user.name.clone());
    let metrics = state.metrics.clone();
    let activity = state.activity.clone();
    // Set once rows naming the files are committed: from then on the files
    // belong to dispatched tasks, whatever the answer (a failed sync).
    let committed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let named = committed.clone();
    let done = state
        .db
        .write_visible(
            move |c, ctx| {
                // Dependents of a parent that failed already are stored failed.
                let first = ctx.next_result_seq;
                let done = db_tasks::submit(c, ctx, &submission)?;
                let failed = first..ctx.next_result_seq;
                let cached = match done {
                    Submitted::Created => memo::at_submit(c, ctx, &submission, memo_ttl)?,
                    Submitted::Replayed(_) => memo::AtSubmit::default(),
                };
                Ok((done, cached, failed))
            },
            Durability::Now,
            move |(done, cached, failed)| {
                if !matches!(done, Submitted::Created) {
                    return;
                }
                for seq in failed.clone() {
                    live.publish_result(crate::live::ResultEvent {
                        group,
                        seq,
                        row: None,
                    });
                }
                named.store(true, std::sync::atomic::Ordering::SeqCst);
                // Stamped before the dispatch is poked, so no task can be
                // reported running earlier; queued after, off its path.
                let ts = hpfaas_protocol::task::now_unix();
                if count > 0 {
                    live.poke(endpoint);
                    metrics.submitted(endpoint, count as u64);
                }
                for (task, function) in audited {
                    audit.submitted(ts, &user_name, task, function, endpoint, group);
                }
                announce_cached(&live, &metrics, &activity, &audit, endpoint, cached);
            },
        )
        .await;
    if !committed.load(std::sync::atomic::Ordering::SeqCst) {
        // Refused, failed or replayed: no row names these files.
        state.db.payload_files().remove(in_files);
    }
    let (done, cached, _) = done?;
    // Hits and waiters never run: their payload files are not needed.
    state.db.payload_files().remove(cached.unneeded_files);
    match done {
        Submitted::Created => Ok(json_answer(answer, false)),
        Submitted::Replayed(first) => Ok(json_answer(first, true)),
    }
}

/// Tasks answered from the cache at submit reach the result streams, the
/// metrics and the audit log like results from an endpoint.
fn announce_cached(
    live: &crate::live::Live,
    metrics: &crate::metrics::Metrics,
    activity: &crate::activity::Activity,
    audit: &crate::audit::Audit,
    endpoint: Uuid,
    cached: &memo::AtSubmit,
) {
    if cached.hits.is_empty() {
        return;
    }
    let now = crate::time::now();
    for hit in &cached.hits {
        live.publish_result(crate::live::ResultEvent {
            group: hit.group,
            seq: hit.seq,
            row: hit.row.clone(),
        });
        audit.finished(hit.task, "success", None);
    }
    let n = cached.hits.len() as u64;
    metrics.finished(endpoint, TaskState::Success.as_str(), n);
    activity.record(cached.hits[0].owner, now, n, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    /// Most bytes of one generated body: the default request limit.
    const LARGE: usize = crate::config::ServiceConfig::DEFAULT_MAX_REQUEST_BYTES;

    /// Bytes of up to [`LARGE`], pieces each repeated many times, so that
    /// megabytes are cheap to generate.
    fn large_body(piece: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec((piece, 0usize..400_000), 0..10).prop_map(|parts| {
            let mut out = Vec::new();
            for (piece, n) in parts {
                let room = (LARGE - out.len()) / piece.len().max(1);
                for _ in 0..n.min(room) {
                    out.extend_from_slice(&piece);
                }
            }
            out
        })
    }

    fn body_piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(br#"{"tasks": {"00000000-0000-0000-0000-000000000000": ["#.to_vec()),
            Just(br#""4\npb\n5\n0\n0\n","#.to_vec()),
            Just(b"[".to_vec()),
            Just(b"0\n".to_vec()),
            Just(br#"{"a":"#.to_vec()),
            prop::collection::vec(any::<u8>(), 1..8),
        ]
    }

    fn within_bound<T>(what: &str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        let took = start.elapsed();
        // Seconds where milliseconds are expected: only a blow-up fails.
        assert!(took < Duration::from_secs(3), "{what} took {took:?}");
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse::<u32>().ok())
                .map_or(40, |c| (c / 50).max(4)),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn submit_bodies_of_megabytes_decode_in_bounded_time(
            body in large_body(body_piece()),
            prefix in prop::option::of(0usize..30_000_000),
        ) {
            let bytes = match prefix {
                Some(n) => [format!("{n}\n").into_bytes(), body].concat(),
                None => body,
            };
            let bytes = Bytes::from(bytes);
            if let Ok((json, mut blobs)) = within_bound("split_blob_body", || split_blob_body(&bytes)) {
                if let Ok(parsed) = within_bound("parse_submit", || parse_submit(&json, 100_000)) {
                    within_bound("take_blob", || {
                        for (_, payloads) in &parsed.tasks {
                            for p in payloads {
                                let _ = take_blob(p, &mut blobs, true);
                            }
                        }
                    });
                }
            }
        }
    }

    #[test]
    fn the_task_limit_is_enforced_while_parsing() {
        let f = Uuid::new_v4();
        let body = json!({"tasks": {f.to_string(): ["a", "b", "c"]}}).to_string();
        assert_eq!(
            parse_submit(body.as_bytes(), 3).unwrap().tasks[0].1.len(),
            3
        );
        let e = parse_submit(body.as_bytes(), 2).unwrap_err();
        assert_eq!(e.code, "payload_too_large");
        assert!(e.message.contains(" 2 "), "{}", e.message);
        // Other errors stay 400s naming the field.
        let e = parse_submit(br#"{"tasks": {"f": [1]}}"#, 10).unwrap_err();
        assert_eq!(e.code, "bad_request");
        assert!(e.message.contains("tasks.f[0]"), "{}", e.message);
        let e = parse_submit(br#"{"task_group_id": "x"}"#, 10).unwrap_err();
        assert!(e.message.contains("task_group_id"), "{}", e.message);
        let e = parse_submit(br#"{"create_queue": true}"#, 10).unwrap_err();
        assert!(e.message.contains("missing field `tasks`"), "{}", e.message);
        let e = parse_submit(br#"{"tasks": {}, "tasks": {}}"#, 10).unwrap_err();
        assert!(e.message.contains("duplicate"), "{}", e.message);
        let ok = parse_submit(
            br#"{"tasks": {}, "user_endpoint_config": {"a": [1]}, "idempotency_key": "k", "future": 1}"#,
            10,
        )
        .unwrap();
        assert_eq!(ok.idempotency_key.as_deref(), Some("k"));
    }
}
