//! The endpoint agent's WebSocket (`GET /v3/endpoints/{id}/connect`).
//!
//! One task per connection reads the agent's frames (acks, states, results,
//! heartbeats) and feeds them to the writer; a dispatcher task pages the
//! endpoint's non-final tasks out of the database behind a cursor and sleeps
//! on the endpoint's wake-up between pages; a sender task owns the socket's
//! write half and flushes when its queue runs dry. The database is the
//! queue, so a reconnecting agent simply starts again at cursor 0 and gets
//! every non-final task (it drops duplicates), and every cancel it has not
//! answered yet.
//!
//! With flow control (declared in the hello) the dispatcher sends no more
//! tasks than the agent's credit; credit frames poke it awake.
//!
//! The hello carries the endpoint's policy (`allowed_functions`,
//! `json_only`), stored for submit-time checks. A result over the size
//! limit is stored as a `ResultTooLarge` failure instead. When a token is
//! revoked anywhere, the link re-checks its credential and closes if that
//! was the one.

use hpfaas_protocol::failure::SystemFailure;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hpfaas_protocol::endpoint::{
    cap_results, check_events, from_json, to_json, AgentMessage, EndpointEvent, EventKind,
    ServiceMessage,
};
use hpfaas_protocol::task::{ExceptionInfo, Outcome, TaskResult, TaskState};
use hpfaas_protocol::{version_mismatch, PROTOCOL_VERSION};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use uuid::Uuid;

use crate::auth::{self, Caller};
use crate::db::cancel as db_cancel;
use crate::db::catalog::{self, EndpointPolicy};
use crate::db::events as db_events;
use crate::db::tasks::{self as db_tasks, Frame, PageLimits};
use crate::db::Durability;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_id, IdPath};
use crate::live::{Claim, ResultEvent};
use crate::metrics::DispatchTimes;
use crate::state::AppState;

/// Largest WebSocket message accepted, unless results may be larger
/// (tungstenite's default is 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest WebSocket message accepted: room for one result of
/// `--max-result-bytes`, JSON-escaped, whatever that limit is.
fn max_message_bytes(config: &crate::config::ServiceConfig) -> usize {
    MAX_MESSAGE_BYTES.max(
        config
            .max_result_bytes
            .saturating_mul(2)
            .saturating_add(1 << 20),
    )
}
/// Most tasks in one `Tasks` frame.
pub const PAGE_TASKS: usize = 2000;
/// Rough byte cap of one `Tasks` frame, far below [`MAX_MESSAGE_BYTES`].
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Limits of the first page after a wake-up, read on the async thread
/// ([`crate::db::Db::read_inline`]): a lone submit is dispatched without a
/// trip through the reader pool; a backlog is paged from the pool.
const QUICK_PAGE_TASKS: usize = 64;
const QUICK_PAGE_BYTES: usize = 256 * 1024;
/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Result batches of one agent queued for the writer at once (until their
/// commit is visible); more waits, which pushes back on the agent through TCP.
const RESULT_BATCHES_IN_FLIGHT: usize = 8;
/// Writes of one agent's acks, state changes and events queued for the
/// writer at once (until their commit is visible); more waits, pushing back
/// on the agent, so a flood of frames cannot queue without bound in front
/// of everyone's writes.
const UPDATES_IN_FLIGHT: usize = 64;
/// How long closing a connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /v3/endpoints/{id}/connect`: checks the credential, then upgrades.
pub async fn connect(
    State(state): State<AppState>,
    Caller(caller): Caller,
    IdPath(raw): IdPath,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let endpoint = parse_id("endpoint", &raw)?;
    match caller.endpoint {
        None => {
            return Err(ApiError::forbidden(
                "a user token cannot connect as an endpoint; use the endpoint credential \
                 returned by POST /v3/endpoints",
            ))
        }
        Some(own) if own != endpoint => {
            return Err(ApiError::forbidden(format!(
                "this credential belongs to endpoint {own}, not {endpoint}"
            )))
        }
        Some(_) => {}
    }
    let ws = ws.map_err(|rej| {
        ApiError::new(
            rej.status(),
            if rej.status().as_u16() == 426 {
                "upgrade_required"
            } else {
                "bad_request"
            },
            format!("expected a WebSocket upgrade: {}", rej.body_text()),
        )
    })?;
    let max = max_message_bytes(&state.config);
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(
            move |e| tracing::warn!(%endpoint, error = %e, "agent WebSocket upgrade failed"),
        )
        .on_upgrade(move |socket| run(state, endpoint, caller.token_hash, socket)))
}

/// How a connection ended.
enum End {
    /// We close it, telling the agent why.
    Close(u16, String),
    /// The agent went away (closed, or the socket failed).
    Gone(String),
}

fn text(msg: &ServiceMessage) -> Message {
    Message::Text(to_json(msg).into())
}

/// A close frame; WebSocket limits the reason to 123 bytes.
fn close_frame(code: u16, reason: &str) -> Message {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..cut].into(),
    }))
}

/// Sends `Refused`, closes, and waits briefly for the agent's close reply so
/// the refusal is read before the TCP connection goes.
async fn refuse(mut socket: WebSocket, endpoint: Uuid, reason: String) {
    tracing::info!(%endpoint, %reason, "endpoint agent refused");
    let _ = socket
        .send(text(&ServiceMessage::Refused {
            reason: reason.clone(),
        }))
        .await;
    let _ = socket.send(close_frame(close_code::POLICY, &reason)).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(close_frame(code, reason))).await;
}

/// What the agent said in its hello.
struct Hello {
    host: String,
    pid: u32,
    policy: EndpointPolicy,
    flow_control: bool,
    events: bool,
}

/// Reads the hello; `None` when the connection was closed or refused.
async fn handshake(
    state: &AppState,
    endpoint: Uuid,
    mut socket: WebSocket,
) -> Option<(WebSocket, Hello)> {
    let first = tokio::select! {
        first = tokio::time::timeout(HELLO_TIMEOUT, socket.recv()) => first,
        _ = state.shutting_down() => {
            close(socket, close_code::AWAY, "the service is shutting down").await;
            return None;
        }
    };
    let text = match first {
        Err(_) => {
            tracing::info!(%endpoint, "endpoint agent sent no hello; closing");
            close(socket, close_code::POLICY, "no hello received").await;
            return None;
        }
        Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return None,
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(Some(Ok(_))) => {
            tracing::warn!(%endpoint, "endpoint agent's first frame was not JSON text");
            close(
                socket,
                close_code::POLICY,
                "the first frame must be a JSON text hello",
            )
            .await;
            return None;
        }
    };
    match from_json::<AgentMessage>(text.as_str()) {
        Ok(AgentMessage::Hello {
            version,
            host,
            pid,
            allowed_functions,
            json_only,
            flow_control,
            events,
        }) => {
            if version != PROTOCOL_VERSION {
                refuse(
                    socket,
                    endpoint,
                    version_mismatch("endpoint agent", version),
                )
                .await;
                return None;
            }
            let policy = EndpointPolicy {
                allowed_functions,
                json_only,
            };
            Some((
                socket,
                Hello {
                    host,
                    pid,
                    policy,
                    flow_control,
                    events,
                },
            ))
        }
        Ok(_) => {
            tracing::warn!(%endpoint, "endpoint agent's first frame was not a hello");
            close(
                socket,
                close_code::POLICY,
                "the first frame must be a hello",
            )
            .await;
            None
        }
        Err(e) => {
            tracing::warn!(%endpoint, error = %e, "malformed first frame from endpoint agent");
            close(
                socket,
                close_code::INVALID,
                &format!("malformed frame: {e}"),
            )
            .await;
            None
        }
    }
}

/// One agent connection, from hello to close.
async fn run(state: AppState, endpoint: Uuid, credential: String, socket: WebSocket) {
    let _link = state.link_guard();
    // Watch from before the hello, so a revocation during it is not missed.
    let revocations = state.revocations.subscribe();
    let Some((mut socket, hello)) = handshake(&state, endpoint, socket).await else {
        return;
    };
    let Hello {
        host,
        pid,
        policy,
        flow_control,
        events,
    } = hello;
    let claim = match state.live.claim(endpoint, &host, pid) {
        Ok(claim) => claim,
        Err((holder, holder_pid)) => {
            let reason = format!(
                "endpoint {endpoint} is already connected from host {holder} (pid {holder_pid}); \
                 stop that agent first"
            );
            refuse(socket, endpoint, reason).await;
            return;
        }
    };
    // The policy is in force before any task of this connection is sent.
    let allowed = policy.allowed_functions.len();
    let json_only = policy.json_only;
    let stored = state
        .db
        .write(move |c, _| catalog::set_endpoint_policy(c, endpoint, &policy))
        .await;
    if let Err(e) = stored {
        tracing::error!(%endpoint, error = %e, "storing the endpoint's policy failed");
        close(
            socket,
            close_code::AWAY,
            "the service could not record this endpoint's policy; retry",
        )
        .await;
        return;
    }
    let welcome = ServiceMessage::Welcome {
        version: PROTOCOL_VERSION,
        heartbeat_period: state.config.effective_heartbeat_period(),
        max_result_bytes: Some(state.config.max_result_bytes as u64),
        max_message_bytes: Some(max_message_bytes(&state.config) as u64),
        flow_control,
        events,
    };
    if socket.send(text(&welcome)).await.is_err() {
        return;
    }
    tracing::info!(%endpoint, %host, pid, allowed_functions = allowed, json_only, "endpoint agent connected");
    let connected = format!("the agent connected from host {host} (pid {pid})");
    record_event(&state, endpoint, EventKind::AgentConnected, connected);

    let (sink, stream) = socket.split();
    let (out, out_rx) = mpsc::channel(16);
    let sender = tokio::spawn(send_loop(sink, out_rx));
    // An agent without flow control takes whatever is queued.
    let credit = Arc::new(AtomicU64::new(if flow_control { 0 } else { u64::MAX }));
    let dispatched = Arc::new(DispatchTimes::default());
    let dispatcher = tokio::spawn(dispatch_loop(
        state.clone(),
        endpoint,
        claim.wake(),
        credit.clone(),
        out.clone(),
        dispatched.clone(),
    ));
    let agent = AgentConnection {
        state: &state,
        endpoint,
        claim: &claim,
        credential: &credential,
        out: &out,
        credit: &credit,
        dispatched: &dispatched,
    };
    let end = receive_loop(&agent, stream, revocations).await;
    dispatcher.abort();
    // Offline as soon as the connection is over, not after the close dance.
    drop(claim);
    let why = match &end {
        End::Close(_, reason) => format!("the service closed the link: {reason}"),
        End::Gone(why) => format!("the link ended: {why}"),
    };
    record_event(&state, endpoint, EventKind::AgentDisconnected, why);
    let close = match &end {
        End::Close(code, reason) => {
            tracing::info!(%endpoint, %host, pid, %reason, "endpoint agent disconnected by the service");
            close_frame(*code, reason)
        }
        End::Gone(why) => {
            tracing::info!(%endpoint, %host, pid, reason = %why, "endpoint agent disconnected");
            Message::Close(None)
        }
    };
    let finished = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = out.send(close).await;
        drop(out);
        sender.await
    })
    .await;
    if finished.is_err() {
        tracing::debug!(%endpoint, "endpoint socket did not close in time; dropping it");
    }
}

/// Stores one event the service itself saw (the agent's link), without
/// waiting: an event lost to a stopping writer is only a line of history.
fn record_event(state: &AppState, endpoint: Uuid, kind: EventKind, message: String) {
    let event = EndpointEvent::new(crate::time::now(), kind, message);
    let stored = state.db.enqueue_lazy(move |c, _| {
        db_events::insert(c, endpoint, std::slice::from_ref(&event), db_events::KEPT)
    });
    if let Err(e) = stored {
        tracing::debug!(%endpoint, error = %e.message, "endpoint event not stored");
    }
}

/// Writes queued frames; flushes when the queue runs dry, so a burst of
/// frames shares one flush and a lone frame is not delayed by a timer.
async fn send_loop(mut sink: SplitSink<WebSocket, Message>, mut queue: mpsc::Receiver<Message>) {
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            let closing = matches!(msg, Message::Close(_));
            if sink.feed(msg).await.is_err() {
                return;
            }
            if closing {
                let _ = sink.flush().await;
                return;
            }
            next = queue.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Pages the endpoint's pending cancels and non-final tasks to the agent,
/// sleeping on `wake` (poked after each committed submit or cancel, and
/// when the agent grants credit) when it has caught up or has used up the
/// agent's `credit` (tasks it may still send; cancels need none). Each
/// page sent is noted in `dispatched`.
async fn dispatch_loop(
    state: AppState,
    endpoint: Uuid,
    wake: Arc<Notify>,
    credit: Arc<AtomicU64>,
    out: mpsc::Sender<Message>,
    dispatched: Arc<DispatchTimes>,
) {
    let mut cursor = db_tasks::QueueCursor::start();
    let mut cancel_cursor = 0i64;
    let mut sent_functions = HashSet::new();
    // Just woken (or started): the next read is the quick, inline one.
    let mut woken = true;
    loop {
        let (after_cancel, after) = (cancel_cursor, cursor.clone());
        let sent = std::mem::take(&mut sent_functions);
        // The quick page leaves payload files to the pool: reading one on
        // the async thread would hold up everything else on it.
        let limits = if woken {
            PageLimits {
                tasks: QUICK_PAGE_TASKS,
                bytes: QUICK_PAGE_BYTES,
                read_files: false,
            }
        } else {
            PageLimits {
                tasks: PAGE_TASKS,
                bytes: PAGE_BYTES,
                read_files: true,
            }
        };
        let granted = credit.load(Ordering::Acquire);
        let task_limits = PageLimits {
            tasks: limits
                .tasks
                .min(usize::try_from(granted).unwrap_or(usize::MAX)),
            ..limits
        };
        // One read per turn: cancels first (so a task cancelled meanwhile is
        // not started), else the next page of tasks.
        let files = state.db.payload_files().clone();
        let read = move |c: &rusqlite::Connection| {
            let (task_ids, last) =
                db_cancel::pending_cancels(c, endpoint, after_cancel, limits.tasks)?;
            if !task_ids.is_empty() {
                return Ok(Next::Cancels(task_ids, last, sent));
            }
            if task_limits.tasks == 0 {
                return Ok(Next::NoCredit(sent));
            }
            let page = db_tasks::dispatch_page(c, &files, endpoint, after, sent, task_limits)?;
            Ok(Next::Tasks(page))
        };
        let next = if woken {
            state.db.read_inline(read)
        } else {
            state.db.read(read).await
        };
        woken = false;
        match next {
            Ok(Next::Cancels(task_ids, last, sent)) => {
                sent_functions = sent;
                cancel_cursor = last;
                tracing::debug!(%endpoint, tasks = task_ids.len(), "cancels sent");
                if out
                    .send(text(&ServiceMessage::Cancel { task_ids }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Next::NoCredit(sent)) => {
                // The agent's credit comes with a poke of `wake`.
                sent_functions = sent;
                wake.notified().await;
                woken = true;
            }
            Ok(Next::Tasks(page)) => {
                sent_functions = page.sent_functions;
                cursor = page.cursor;
                // Only this loop takes credit, so it never goes below zero;
                // lost tasks count too (the page held them), which is harmless.
                if granted != u64::MAX {
                    credit.fetch_sub(page.count as u64, Ordering::AcqRel);
                }
                let (lost, more) = (!page.lost.is_empty(), page.more);
                if lost {
                    let results = page
                        .lost
                        .into_iter()
                        .map(|(task, why)| {
                            tracing::error!(%endpoint, %task, "{why}; the task fails");
                            TaskResult::failed(
                                task,
                                ExceptionInfo::system(SystemFailure::PayloadLost, why),
                            )
                        })
                        .collect();
                    match store_results(&state, endpoint, results, None) {
                        Ok(stored) => drop(tokio::spawn(stored)),
                        Err(_) => return,
                    }
                }
                match page.frame {
                    Some(frame) => {
                        let (size, message) = match frame {
                            Frame::Text(text) => (text.len(), Message::Text(text.into())),
                            Frame::Binary(bytes) => (bytes.len(), Message::Binary(bytes.into())),
                        };
                        tracing::debug!(%endpoint, tasks = page.count, bytes = size, "tasks sent");
                        dispatched.sent(page.max_rid);
                        if out.send(message).await.is_err() {
                            return;
                        }
                    }
                    None if lost || more => {} // more follows; read it now
                    None => {
                        wake.notified().await;
                        woken = true;
                    }
                }
            }
            Err(e) => {
                // Function codes are re-sent after this (the set was lost);
                // the agent tolerates that.
                tracing::error!(%endpoint, error = %e, "reading queued tasks or cancels failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What one turn of the dispatch loop found to send.
enum Next {
    /// Cancelled task ids, the cancel cursor after them, and the functions
    /// sent so far (unchanged).
    Cancels(Vec<Uuid>, i64, HashSet<Uuid>),
    /// The next page of queued tasks.
    Tasks(db_tasks::DispatchPage),
    /// The agent has granted no credit to send tasks with (the functions
    /// sent so far, unchanged).
    NoCredit(HashSet<Uuid>),
}

/// One agent's open connection, as its frame handlers share it: the
/// endpoint, its claim, the credential it connected with, the socket's
/// queue out and the agent's credit.
struct AgentConnection<'a> {
    state: &'a AppState,
    endpoint: Uuid,
    claim: &'a Claim,
    /// SHA-256 of the credential the agent connected with.
    credential: &'a str,
    out: &'a mpsc::Sender<Message>,
    /// Tasks the dispatcher may still send (the agent's credit).
    credit: &'a Arc<AtomicU64>,
    /// When this link sent recent pages of tasks.
    dispatched: &'a Arc<DispatchTimes>,
}

/// The close of a link whose credential could not be re-checked: failing
/// closed, the agent reconnects and is checked like a new connection.
fn unchecked(e: &ApiError) -> End {
    tracing::warn!(error = %e.message, "endpoint link closed: its credential could not be checked");
    End::Close(
        close_code::AGAIN,
        "the endpoint's credential could not be checked; reconnect later".into(),
    )
}

/// Re-checks the link's credential; `Some` ends the link.
async fn recheck(state: &AppState, credential: &str) -> Option<End> {
    match auth::still_valid(state, credential).await {
        Ok(true) => None,
        Ok(false) => Some(revoked()),
        Err(e) => Some(unchecked(&e)),
    }
}

fn revoked() -> End {
    End::Close(
        close_code::POLICY,
        "the endpoint's credential was revoked (endpoint re-registered or deleted, or hpfaas token revoke)"
            .into(),
    )
}

/// Handles the agent's frames until the connection must end.
async fn receive_loop(
    agent: &AgentConnection<'_>,
    mut stream: SplitStream<WebSocket>,
    mut revocations: watch::Receiver<u64>,
) -> End {
    let (state, endpoint) = (agent.state, agent.endpoint);
    let silence = state.config.heartbeat_timeout();
    let in_flight = InFlight {
        results: Arc::new(Semaphore::new(RESULT_BATCHES_IN_FLIGHT)),
        updates: Arc::new(Semaphore::new(UPDATES_IN_FLIGHT)),
    };
    // A revocation between the credential check and the subscription is
    // caught here.
    revocations.mark_unchanged();
    if let Some(end) = recheck(state, agent.credential).await {
        return end;
    }
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(silence, stream.next()) => next,
            _ = agent.claim.kicked() => return revoked(),
            _ = crate::revocation::next(&mut revocations) => {
                if let Some(end) = recheck(state, agent.credential).await {
                    return end;
                }
                continue;
            }
            _ = state.shutting_down() => return End::Close(close_code::AWAY, "the service is shutting down".into()),
        };
        let msg = match next {
            Err(_) => {
                return End::Close(
                    close_code::POLICY,
                    format!(
                        "no heartbeat for {:.1} s; dropping this agent",
                        silence.as_secs_f64()
                    ),
                )
            }
            Ok(None) => return End::Gone("connection closed".into()),
            Ok(Some(Err(e))) => {
                tracing::warn!(%endpoint, error = %e, "endpoint socket failed");
                return End::Gone(e.to_string());
            }
            Ok(Some(Ok(msg))) => msg,
        };
        let text = match msg {
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return End::Gone("the agent closed the connection".into()),
            Message::Binary(_) => {
                tracing::warn!(%endpoint, "binary frame from endpoint agent");
                return End::Close(
                    close_code::UNSUPPORTED,
                    "binary frames are not part of the protocol; send JSON text frames".into(),
                );
            }
        };
        let msg = match from_json::<AgentMessage>(text.as_str()) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%endpoint, error = %e, "malformed frame from endpoint agent");
                return End::Close(close_code::INVALID, format!("malformed frame: {e}"));
            }
        };
        if let Err(end) = handle(agent, msg, &in_flight).await {
            return end;
        }
    }
}

/// What one link has queued for the writer, each bounded.
struct InFlight {
    /// Result batches ([`RESULT_BATCHES_IN_FLIGHT`]).
    results: Arc<Semaphore>,
    /// Acks, state changes and events ([`UPDATES_IN_FLIGHT`]).
    updates: Arc<Semaphore>,
}

/// Queues a write one of the agent's frames asks for, once the link has
/// fewer than [`UPDATES_IN_FLIGHT`] queued; nobody waits for its commit.
async fn queue_update<T, F>(state: &AppState, updates: &Arc<Semaphore>, f: F) -> Result<(), End>
where
    T: Send + 'static,
    F: FnOnce(&rusqlite::Connection, &mut crate::db::WriteCtx) -> ApiResult<T> + Send + 'static,
{
    let Ok(permit) = updates.clone().acquire_owned().await else {
        return Ok(());
    };
    let visible = state.db.enqueue_lazy(f).map_err(shutting_down)?;
    tokio::spawn(async move {
        let _ = visible.await;
        drop(permit);
    });
    Ok(())
}

/// The writer refused a job: it is stopping, or broken (a failed sync);
/// the agent reconnects later and gets the reason meanwhile.
fn shutting_down(e: ApiError) -> End {
    End::Close(close_code::AWAY, e.message)
}

async fn handle(
    agent: &AgentConnection<'_>,
    msg: AgentMessage,
    in_flight: &InFlight,
) -> Result<(), End> {
    let (state, endpoint, out) = (agent.state, agent.endpoint, agent.out);
    match msg {
        AgentMessage::Hello { .. } => {
            tracing::warn!(%endpoint, "second hello from endpoint agent");
            return Err(End::Close(
                close_code::POLICY,
                "unexpected hello: this connection is already open".into(),
            ));
        }
        AgentMessage::Ack { task_ids } if !task_ids.is_empty() => {
            // Nobody waits for the answer: the agent expects none.
            queue_update(state, &in_flight.updates, move |c, _| {
                db_tasks::ack(c, endpoint, &task_ids)
            })
            .await?;
        }
        AgentMessage::States { updates } if !updates.is_empty() => {
            for (task, _) in updates.iter().filter(|(_, s)| *s == TaskState::Running) {
                state.audit.running(*task);
            }
            let (metrics, dispatched) = (state.metrics.clone(), agent.dispatched.clone());
            let started = move |rid| {
                if let Some(at) = dispatched.sent_at(rid) {
                    metrics.dispatch_to_start(at.elapsed().as_secs_f64());
                }
            };
            queue_update(state, &in_flight.updates, move |c, _| {
                db_tasks::update_states(c, endpoint, &updates, started)
            })
            .await?;
        }
        AgentMessage::Results { mut results } if !results.is_empty() => {
            let Ok(permit) = in_flight.results.clone().acquire_owned().await else {
                return Ok(());
            };
            cap_results(&mut results, state.config.max_result_bytes);
            let ids: Vec<Uuid> = results.iter().map(|r| r.task_id).collect();
            let stored = store_results(state, endpoint, results, Some(permit))?;
            let out = out.clone();
            // Wait for the commit elsewhere, so reading goes on meanwhile.
            tokio::spawn(async move {
                // Durable now: the agent may forget them. Results not stored
                // are not acknowledged, so the agent re-sends them after it
                // reconnects.
                if stored.await {
                    let _ = out
                        .send(text(&ServiceMessage::ResultAck { task_ids: ids }))
                        .await;
                }
            });
        }
        AgentMessage::Credit { tasks } if tasks > 0 => {
            let add = |c: u64| Some(c.saturating_add(tasks));
            let _ = agent
                .credit
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, add);
            agent.claim.wake().notify_one();
        }
        AgentMessage::Heartbeat { mut status } => {
            status.cap();
            agent.claim.heartbeat(status)
        }
        AgentMessage::Events { mut events } if !events.is_empty() => {
            if let Err(why) = check_events(&mut events) {
                tracing::warn!(%endpoint, %why, "bad events frame from endpoint agent");
                return Err(End::Close(
                    close_code::POLICY,
                    format!("bad events frame: {why}"),
                ));
            }
            // One write per frame of events.
            queue_update(state, &in_flight.updates, move |c, _| {
                db_events::insert(c, endpoint, &events, db_events::KEPT)
            })
            .await?;
        }
        AgentMessage::Ack { .. }
        | AgentMessage::States { .. }
        | AgentMessage::Results { .. }
        | AgentMessage::Credit { .. }
        | AgentMessage::Events { .. } => {}
    }
    Ok(())
}

/// Queues `results` for the writer. Result streams may read them once they
/// are visible (`permit`, a slot of the agent's batches in flight, is freed
/// then); once they are durable, each one stored (not a duplicate, not a late
/// result of a cancelled task) gets its audit line and loses its payload
/// file. The future says whether they were stored.
fn store_results(
    state: &AppState,
    endpoint: Uuid,
    results: Vec<TaskResult>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<impl std::future::Future<Output = bool> + Send + 'static, End> {
    let ended: HashMap<Uuid, Option<String>> = results
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Success { .. } => (r.task_id, None),
            Outcome::Failed { exception } => (r.task_id, Some(exception.exc_type.clone())),
        })
        .collect();
    let (audit, live, files, metrics, activity) = (
        state.audit.clone(),
        state.live.clone(),
        state.db.payload_files().clone(),
        state.metrics.clone(),
        state.activity.clone(),
    );
    let committed = state
        .db
        .enqueue_visible(
            move |c, ctx| db_tasks::store_results(c, ctx, endpoint, &results),
            // Only the agent's acknowledgement waits for the disk.
            Durability::Soon,
            move |stored: &Vec<db_tasks::StoredResult>| {
                drop(permit); // applied: the next batch may queue
                let now = crate::time::now();
                let mut failed = 0;
                for r in stored {
                    live.publish_result(ResultEvent {
                        group: r.group,
                        seq: r.seq,
                        row: r.row.clone(),
                    });
                    for released in &r.released {
                        live.poke(*released);
                    }
                    metrics.end_to_end(now - r.created);
                    failed += u64::from(r.state == TaskState::Failed);
                }
                let total = stored.len() as u64;
                metrics.finished(endpoint, TaskState::Success.as_str(), total - failed);
                metrics.finished(endpoint, TaskState::Failed.as_str(), failed);
                // A batch is one endpoint's, so mostly one user's: a few runs.
                for run in stored.chunk_by(|a, b| a.owner == b.owner) {
                    let failed = run.iter().filter(|r| r.state == TaskState::Failed).count();
                    activity.record(run[0].owner, now, run.len() as u64, failed as u64);
                }
            },
        )
        .map_err(shutting_down)?;
    Ok(async move {
        match committed.await {
            Ok(Ok(stored)) => {
                for r in &stored {
                    // Tasks that ended with these (a cached call's waiters,
                    // dependents failed with their parent) are not among the
                    // agent's results: their stored row, else their state.
                    let failed = r.state == TaskState::Failed;
                    let exc_type = ended.get(&r.task).cloned().flatten().or_else(|| {
                        let stored = r.row.as_ref().and_then(|row| row.exc_type.clone());
                        stored.or_else(|| {
                            failed.then(|| SystemFailure::DependencyFailed.name().to_string())
                        })
                    });
                    let how = if failed { "failed" } else { "success" };
                    audit.finished(r.task, how, exc_type.as_deref());
                }
                files.remove(stored.iter().filter(|r| r.payload_file).map(|r| r.task));
                true
            }
            Ok(Err(e)) => {
                tracing::error!(%endpoint, error = %e, "storing results failed");
                false
            }
            Err(_) => {
                tracing::debug!(%endpoint, "results not stored: the service is stopping");
                false
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Live;

    #[tokio::test]
    async fn a_flood_of_updates_waits_for_the_writer_instead_of_queueing_without_bound() {
        let (state, stop, _dir) = AppState::for_tests(Live::default());
        let updates = Arc::new(Semaphore::new(UPDATES_IN_FLIGHT));
        // The first write holds the writer until released; the rest queue behind it.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let first = queue_update(&state, &updates, move |_, _| {
            let _ = held.lock().map(|rx| rx.recv());
            Ok(())
        });
        assert!(first.await.is_ok());
        for _ in 1..UPDATES_IN_FLIGHT {
            assert!(queue_update(&state, &updates, |_, _| Ok(())).await.is_ok());
        }
        let one_more = queue_update(&state, &updates, |_, _| Ok(()));
        tokio::pin!(one_more);
        // Bounded: one more waits for as long as the writer is held.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut one_more)
                .await
                .is_err(),
            "a write beyond the bound was queued"
        );
        release.send(()).unwrap();
        let queued = tokio::time::timeout(Duration::from_secs(60), one_more).await;
        assert!(
            queued.is_ok_and(|r| r.is_ok()),
            "once the writer moved on, it was queued"
        );
        stop.send_replace(true);
        state.db.shutdown().await;
    }
}
