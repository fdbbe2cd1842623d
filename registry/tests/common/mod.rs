//! Test harness: a real `Service` on 127.0.0.1:0 with its own data
//! directory and runtime thread, a blocking HTTP client (ureq), a fake
//! endpoint agent speaking the protocol crate over a real WebSocket, and a
//! server-sent-events reader.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hpfaas_protocol::endpoint::{from_json, to_json, AgentMessage, ServiceMessage, TasksFrame};
use hpfaas_protocol::task::{FunctionCode, TaskSpec};
use hpfaas_registry::{create_token, Service, ServiceConfig};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A running service with a private data directory.
pub struct TestService {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    tweak: fn(&mut ServiceConfig),
}

fn no_tweak(_: &mut ServiceConfig) {}

impl TestService {
    /// Starts a service with default settings in a fresh directory.
    pub fn start() -> TestService {
        Self::start_with(no_tweak)
    }

    /// Starts a service whose config `tweak` adjusts.
    pub fn start_with(tweak: fn(&mut ServiceConfig)) -> TestService {
        let dir =
            std::env::temp_dir().join(format!("hpfaas-registry-test-{}", uuid::Uuid::new_v4()));
        Self::start_in(dir, tweak)
    }

    fn start_in(dir: PathBuf, tweak: fn(&mut ServiceConfig)) -> TestService {
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap(), dir.clone());
        tweak(&mut config);
        Self::start_config(config, tweak)
    }

    /// Starts a service with this exact configuration (its data_dir is
    /// removed when the service is dropped).
    pub fn start_config(config: ServiceConfig, tweak: fn(&mut ServiceConfig)) -> TestService {
        let dir = config.data_dir.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let service = Service::bind(config).await?;
                addr_tx.send(service.local_addr()).ok();
                service
                    .run(async move {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        });
        let addr = match addr_rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => panic!("service did not start: {:?}", thread.join()),
        };
        TestService {
            addr,
            dir,
            stop: Some(stop),
            thread: Some(thread),
            tweak,
        }
    }

    /// Stops the service gracefully and checks it stopped cleanly.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let result = thread.join().expect("service thread panicked");
            result.expect("service run failed");
        }
    }

    /// Stops the service and starts a new one on the same data directory.
    pub fn restart(self) -> TestService {
        let tweak = self.tweak;
        self.restart_with(tweak)
    }

    /// Stops the service and starts a new one on the same data directory,
    /// configured by `tweak` instead.
    pub fn restart_with(mut self, tweak: fn(&mut ServiceConfig)) -> TestService {
        self.stop();
        let dir = std::mem::take(&mut self.dir);
        drop(self);
        Self::start_in(dir, tweak)
    }

    /// A new user token (through the CLI's code path, while running).
    pub fn token(&self, user: &str) -> String {
        create_token(&self.dir, user).expect("create_token")
    }

    /// An HTTP client acting with `token`.
    pub fn client(&self, token: &str) -> Http {
        Http::new(self.addr, Some(token.to_string()))
    }

    /// An HTTP client without a token.
    pub fn anonymous(&self) -> Http {
        Http::new(self.addr, None)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A fresh temporary data directory path (not created).
    pub fn fresh_dir() -> PathBuf {
        std::env::temp_dir().join(format!("hpfaas-registry-test-{}", uuid::Uuid::new_v4()))
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// An answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub content_type: String,
    /// (lowercase name, value) of every header.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    /// The value of header `name` (lowercase), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Answer {
    /// Asserts a 2xx answer and returns its body.
    pub fn ok(self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "expected success, got {self:?}"
        );
        self.body
    }

    /// Asserts a JSON error with this status and code; returns the message.
    pub fn error(self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "unexpected answer {self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "not JSON: {self:?}"
        );
        assert_eq!(self.body["code"], code, "unexpected error code in {self:?}");
        self.body["error"]
            .as_str()
            .expect("error message")
            .to_string()
    }
}

/// Blocking HTTP client.
pub struct Http {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Http {
    fn new(addr: SocketAddr, token: Option<String>) -> Http {
        let agent = ureq::AgentBuilder::new().timeout(WAIT).build();
        Http {
            base: format!("http://{addr}"),
            token,
            agent,
        }
    }

    /// A client for `base` (e.g. `https://...`) using `agent`.
    pub fn with_agent(base: String, token: Option<String>, agent: ureq::Agent) -> Http {
        Http { base, token, agent }
    }

    /// The same client acting with another token.
    pub fn as_token(&self, token: &str) -> Http {
        Http {
            base: self.base.clone(),
            token: Some(token.to_string()),
            agent: self.agent.clone(),
        }
    }

    /// A request with the token set, for custom headers.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self
            .agent
            .request(method, &format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// Sends a prepared request with a JSON body.
    pub fn send(&self, req: ureq::Request, body: &Value) -> Answer {
        Self::answer(req.send_json(body))
    }

    pub fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
        let resp = match result {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => panic!("transport error: {e}"),
        };
        let status = resp.status();
        let content_type = resp.header("content-type").unwrap_or("").to_string();
        let headers: Vec<(String, String)> = resp
            .headers_names()
            .into_iter()
            .map(|n| {
                let v = resp.header(&n).unwrap_or("").to_string();
                (n, v)
            })
            .collect();
        let text = resp.into_string().expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
        // 503 (writes the service cannot make durable) and 507 (a user's
        // storage quota) are answers; any other 5xx is a bug.
        assert!(
            status < 500 || status == 503 || status == 507,
            "server error {status}: {body}"
        );
        Answer {
            status,
            body,
            content_type,
            headers,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        Self::answer(self.request("GET", path).call())
    }

    pub fn delete(&self, path: &str) -> Answer {
        Self::answer(self.request("DELETE", path).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        Self::answer(self.request("POST", path).send_json(body))
    }

    pub fn post_raw(&self, path: &str, body: &str) -> Answer {
        Self::answer(
            self.request("POST", path)
                .set("Content-Type", "application/json")
                .send_string(body),
        )
    }

    pub fn call(&self, method: &str, path: &str) -> Answer {
        Self::answer(self.request(method, path).call())
    }

    /// Opens the result stream of a group.
    pub fn stream(&self, group: &str, last_event_id: Option<&str>) -> SseReader {
        self.sse(&format!("/v3/taskgroup/{group}/stream"), last_event_id)
    }

    /// Opens the event stream at `path`, resuming after `last_event_id`.
    pub fn sse(&self, path: &str, last_event_id: Option<&str>) -> SseReader {
        let mut req = self.request("GET", path);
        if let Some(id) = last_event_id {
            req = req.set("Last-Event-ID", id);
        }
        SseReader::open(req)
    }

    /// Opens the result stream with the `last_event_id` query parameter.
    pub fn stream_query(&self, group: &str, last_event_id: &str) -> SseReader {
        SseReader::open(self.request(
            "GET",
            &format!("/v3/taskgroup/{group}/stream?last_event_id={last_event_id}"),
        ))
    }

    // ---- domain helpers ----

    pub fn register_function(&self, name: &str) -> String {
        let body = json!({"function_name": name, "function_code": format!("st\n{name}:def {name}(): pass")});
        self.post("/v3/functions", &body).ok()["function_uuid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Registers an endpoint; (id, credential).
    pub fn register_endpoint(&self, name: &str) -> (String, String) {
        let body = self
            .post("/v3/endpoints", &json!({"endpoint_name": name}))
            .ok();
        (
            body["endpoint_id"].as_str().unwrap().to_string(),
            body["credential"].as_str().unwrap().to_string(),
        )
    }

    /// Submits `tasks` ({function: [payload...]}); returns the answer body.
    pub fn submit(&self, endpoint: &str, tasks: Value) -> Value {
        self.post(
            &format!("/v3/endpoints/{endpoint}/submit"),
            &json!({"tasks": tasks}),
        )
        .ok()
    }

    pub fn task(&self, id: &str) -> Value {
        self.get(&format!("/v2/tasks/{id}")).ok()
    }

    /// Polls a task until `pred` holds.
    pub fn wait_task(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, || {
            let t = self.task(id);
            pred(&t).then_some(t)
        })
    }

    pub fn endpoint_status(&self, endpoint: &str) -> Value {
        self.get(&format!("/v2/endpoints/{endpoint}/status")).ok()
    }
}

/// Polls `f` until it returns `Some`, failing the test after [`WAIT`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

/// Reads a `text/event-stream` response line by line.
pub struct SseReader {
    lines: BufReader<Box<dyn Read + Send + Sync>>,
    pub comments: Vec<String>,
}

impl SseReader {
    fn open(req: ureq::Request) -> SseReader {
        let resp = match req.call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(code, resp)) => {
                panic!(
                    "stream refused with {code}: {}",
                    resp.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("stream transport error: {e}"),
        };
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        SseReader {
            lines: BufReader::new(resp.into_reader()),
            comments: Vec::new(),
        }
    }

    /// Reads until the service ends the stream; panics on an event.
    pub fn expect_end(&mut self) {
        loop {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.starts_with("data:") => {
                    panic!("expected the stream to end, got {line:?}")
                }
                Ok(_) => {}
            }
        }
    }

    /// The next event (skipping comments), within [`WAIT`].
    pub fn next_event(&mut self) -> SseEvent {
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self
                .lines
                .read_line(&mut line)
                .expect("reading the event stream");
            assert!(n > 0, "event stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    return SseEvent { id, event, data };
                }
                continue;
            }
            if let Some(c) = line.strip_prefix(':') {
                self.comments.push(c.trim().to_string());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A fake endpoint agent.
pub struct Agent {
    rt: tokio::runtime::Runtime,
    ws: Ws,
}

/// Why a WebSocket connection attempt failed: HTTP status and JSON body.
#[derive(Debug)]
pub struct Rejected {
    pub status: u16,
    pub body: Value,
}

/// What a closed connection said.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

impl Agent {
    /// Opens the WebSocket for `endpoint` with `token`.
    pub fn connect(addr: SocketAddr, endpoint: &str, token: &str) -> Result<Agent, Rejected> {
        Self::connect_url(&format!("ws://{addr}"), endpoint, token, None)
    }

    /// Opens the WebSocket at `base` (`ws://...` or `wss://...`), with a
    /// TLS connector for `wss`.
    pub fn connect_url(
        base: &str,
        endpoint: &str,
        token: &str,
        connector: Option<tokio_tungstenite::Connector>,
    ) -> Result<Agent, Rejected> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut req = format!("{base}/v3/endpoints/{endpoint}/connect")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let result = rt.block_on(async {
            tokio::time::timeout(
                WAIT,
                tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector),
            )
            .await
        });
        match result.expect("WebSocket connect timed out") {
            Ok((ws, _)) => Ok(Agent { rt, ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                let body = serde_json::from_slice(&body).unwrap_or_else(|e| {
                    panic!(
                        "rejection {status} is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(&body)
                    )
                });
                Err(Rejected { status, body })
            }
            Err(e) => panic!("WebSocket connect failed: {e}"),
        }
    }

    /// Connects and says hello; panics unless welcomed.
    pub fn online(addr: SocketAddr, endpoint: &str, credential: &str, host: &str) -> Agent {
        let mut agent = Agent::connect(addr, endpoint, credential).expect("connect");
        match agent.hello(host, 4242) {
            ServiceMessage::Welcome {
                version,
                heartbeat_period,
                ..
            } => {
                assert_eq!(version, hpfaas_protocol::PROTOCOL_VERSION);
                assert!(heartbeat_period > 0.0);
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        agent
    }

    /// Sends hello and returns the answer (welcome or refusal).
    pub fn hello(&mut self, host: &str, pid: u32) -> ServiceMessage {
        self.hello_with(host, pid, vec![], false)
    }

    /// Sends a hello declaring a policy; returns the answer.
    pub fn hello_with(
        &mut self,
        host: &str,
        pid: u32,
        allowed_functions: Vec<uuid::Uuid>,
        json_only: bool,
    ) -> ServiceMessage {
        self.send(&AgentMessage::Hello {
            version: hpfaas_protocol::PROTOCOL_VERSION,
            host: host.into(),
            pid,
            allowed_functions,
            json_only,
            flow_control: false,
            events: false,
        });
        self.recv().expect("an answer to hello")
    }

    /// Connects and says a hello declaring a policy; panics unless welcomed.
    pub fn online_with_policy(
        addr: SocketAddr,
        endpoint: &str,
        credential: &str,
        allowed_functions: Vec<uuid::Uuid>,
        json_only: bool,
    ) -> Agent {
        let mut agent = Agent::connect(addr, endpoint, credential).expect("connect");
        match agent.hello_with("login1", 4242, allowed_functions, json_only) {
            ServiceMessage::Welcome { .. } => agent,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    pub fn send(&mut self, msg: &AgentMessage) {
        self.send_raw(&to_json(msg));
    }

    pub fn send_raw(&mut self, text: &str) {
        let ws = &mut self.ws;
        self.rt
            .block_on(ws.send(Message::Text(text.into())))
            .expect("sending a frame");
    }

    /// The next protocol frame (text, or binary tasks), or `None` once the
    /// service closed.
    pub fn recv(&mut self) -> Option<ServiceMessage> {
        match self.recv_message(true) {
            Ok(Message::Binary(bytes)) => Some(
                TasksFrame::decode(&bytes)
                    .expect("binary frames parse")
                    .into(),
            ),
            Ok(Message::Text(text)) => Some(from_json(&text).expect("service frames parse")),
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(_) => None,
        }
    }

    /// The next text frame, or how the connection closed.
    pub fn recv_frame(&mut self) -> Result<String, Closed> {
        match self.recv_message(false)? {
            Message::Text(text) => Ok(text.to_string()),
            other => panic!("unexpected frame {other:?}"),
        }
    }

    /// The next text (or, if `binary`, binary) frame, or how the connection
    /// closed.
    fn recv_message(&mut self, binary: bool) -> Result<Message, Closed> {
        let ws = &mut self.ws;
        self.rt.block_on(async {
            loop {
                let next = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("timed out waiting for a frame");
                match next {
                    Some(Ok(Message::Text(t))) => return Ok(Message::Text(t)),
                    Some(Ok(Message::Binary(b))) if binary => return Ok(Message::Binary(b)),
                    Some(Ok(Message::Close(frame))) => {
                        return Err(Closed {
                            code: frame.as_ref().map(|f| u16::from(f.code)),
                            reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                        })
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        return Err(Closed {
                            code: None,
                            reason: e.to_string(),
                        })
                    }
                    None => {
                        return Err(Closed {
                            code: None,
                            reason: "ended".into(),
                        })
                    }
                }
            }
        })
    }

    /// Reads frames until the service closes; panics on a protocol frame.
    pub fn expect_close(&mut self) -> Closed {
        loop {
            match self.recv_frame() {
                Ok(text) => match from_json::<ServiceMessage>(&text) {
                    // Results may still be acknowledged while closing.
                    Ok(ServiceMessage::ResultAck { .. }) => continue,
                    other => panic!("expected close, got {other:?}"),
                },
                Err(closed) => return closed,
            }
        }
    }

    /// Collects `Tasks` frames until `n` tasks have arrived.
    pub fn recv_tasks(&mut self, n: usize) -> (Vec<TaskSpec>, Vec<FunctionCode>) {
        let (mut tasks, mut functions) = (Vec::new(), Vec::new());
        while tasks.len() < n {
            match self.recv() {
                Some(ServiceMessage::Tasks {
                    functions: f,
                    tasks: t,
                }) => {
                    functions.extend(f);
                    tasks.extend(t);
                }
                Some(ServiceMessage::ResultAck { .. }) => {}
                other => panic!("expected tasks, got {other:?}"),
            }
        }
        assert_eq!(tasks.len(), n, "more tasks than expected");
        (tasks, functions)
    }

    /// Waits for a `ResultAck` and returns its ids.
    pub fn recv_result_ack(&mut self) -> Vec<uuid::Uuid> {
        loop {
            match self.recv() {
                Some(ServiceMessage::ResultAck { task_ids }) => return task_ids,
                Some(ServiceMessage::Tasks { .. }) => continue,
                other => panic!("expected a result ack, got {other:?}"),
            }
        }
    }

    /// Closes the connection from the agent's side.
    pub fn close(mut self) {
        let ws = &mut self.ws;
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(WAIT, ws.close(None)).await });
    }
}

/// Reads tasks straight from the database file (durability checks).
pub fn tasks_in_db(dir: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(dir.join("registry.db")).unwrap();
    let mut st = conn
        .prepare("SELECT id, state FROM tasks ORDER BY rid")
        .unwrap();
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// A UUID from a JSON string.
pub fn uuid(v: &Value) -> uuid::Uuid {
    uuid::Uuid::parse_str(v.as_str().expect("a uuid string")).expect("a uuid")
}

/// A successful result.
pub fn success(id: uuid::Uuid, result: &str) -> hpfaas_protocol::task::TaskResult {
    hpfaas_protocol::task::TaskResult {
        task_id: id,
        outcome: hpfaas_protocol::task::Outcome::Success {
            result: result.into(),
        },
        output: None,
        completed_at: 1_700_000_000.5,
        placement: None,
    }
}

/// A failed result.
pub fn failure(id: uuid::Uuid) -> hpfaas_protocol::task::TaskResult {
    hpfaas_protocol::task::TaskResult::failed(
        id,
        hpfaas_protocol::task::ExceptionInfo {
            exc_type: "ZeroDivisionError".into(),
            message: "division by zero".into(),
            traceback: "Traceback (most recent call last):\nZeroDivisionError: division by zero"
                .into(),
        },
    )
}

/// The task ids of a submit answer for `function`, in order.
pub fn task_ids(answer: &Value, function: &str) -> Vec<uuid::Uuid> {
    answer["tasks"][function]
        .as_array()
        .expect("task ids")
        .iter()
        .map(uuid)
        .collect()
}

impl Agent {
    /// Connects with a hello that offers events; panics unless welcomed and
    /// told the service takes them.
    pub fn online_with_events(svc: &TestService, ep: &str, credential: &str) -> Agent {
        let mut agent = Agent::connect(svc.addr, ep, credential).expect("connect");
        agent.send(&AgentMessage::Hello {
            version: hpfaas_protocol::PROTOCOL_VERSION,
            host: "login1".into(),
            pid: 99,
            allowed_functions: vec![],
            json_only: false,
            flow_control: false,
            events: true,
        });
        match agent.recv() {
            Some(ServiceMessage::Welcome { events, .. }) => {
                assert!(events, "the service must say it takes events");
                agent
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// The ids of the next `Cancel` frame (skipping result acks).
    pub fn recv_cancel(&mut self) -> Vec<uuid::Uuid> {
        loop {
            match self.recv() {
                Some(ServiceMessage::Cancel { task_ids }) => return task_ids,
                Some(ServiceMessage::ResultAck { .. }) => continue,
                other => panic!("expected a cancel, got {other:?}"),
            }
        }
    }
}

/// The process's resident memory (`VmRSS`) and its peak (`VmHWM`), KiB.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
