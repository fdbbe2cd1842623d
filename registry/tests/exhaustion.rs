//! A hostile or broken client, or a failing database, must not hold the
//! service: long-lived connections fail closed when their token cannot be
//! checked, slow and greedy clients are cut off by timeouts and caps.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Agent, TestService, WAIT};
use serde_json::json;

/// A result stream read over a raw socket, so that the test tells the
/// service closing it from a client-side timeout.
struct RawStream {
    tcp: TcpStream,
}

impl RawStream {
    fn open(addr: SocketAddr, token: &str, group: &str) -> RawStream {
        let mut tcp = TcpStream::connect(addr).unwrap();
        write!(
            tcp,
            "GET /v3/taskgroup/{group}/stream HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut s = RawStream { tcp };
        let head = s.read_some();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s
    }

    fn read_some(&mut self) -> String {
        self.tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.tcp.read(&mut buf).expect("reading the stream");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Waits (within [`WAIT`]) for the service to close the connection;
    /// returns what it sent meanwhile.
    fn expect_closed(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        let mut got = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the stream is still open; it sent {got:?}");
            self.tcp.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            match self.tcp.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("the stream is still open ({e}); it sent {got:?}"),
            }
        }
    }
}

#[test]
fn streams_and_agent_links_close_when_their_token_cannot_be_checked() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let sub = alice.submit(&ep, json!({f.clone(): ["a"]}));
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    agent.recv_tasks(1);
    let mut stream = RawStream::open(svc.addr, &token, &group);

    // The token table becomes unreadable, then some token is revoked: the
    // re-checks fail, and both connections must end rather than go on
    // unchecked.
    let db = rusqlite::Connection::open(svc.dir.join("registry.db")).unwrap();
    db.busy_timeout(WAIT).unwrap();
    db.execute_batch("ALTER TABLE tokens RENAME TO tokens_unreadable")
        .unwrap();
    hpfaas_registry::revocation::touch_stamp(&svc.dir).unwrap();

    let sent = stream.expect_closed();
    assert!(!sent.contains("event: result"), "{sent}");
    let closed = agent.expect_close();
    assert!(closed.reason.contains("could not be checked"), "{closed:?}");
    // New requests are refused too, not let through.
    match alice.request("GET", "/v2/endpoints").call() {
        Err(ureq::Error::Status(status, _)) => assert_eq!(status, 500),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Connects and sends `text` without reading.
/// Asks for a task group's result stream over a raw connection: the
/// connection and the first bytes of the answer.
fn ask_for_stream(addr: SocketAddr, group: &str, token: &str) -> (TcpStream, String) {
    let mut tcp = send_raw(
        addr,
        &format!(
            "GET /v3/taskgroup/{group}/stream HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    let n = tcp.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    (tcp, head)
}

fn send_raw(addr: SocketAddr, text: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(text.as_bytes()).unwrap();
    tcp
}

/// Reads until the peer closes (within [`WAIT`]); returns what it sent.
fn read_until_closed(tcp: &mut TcpStream) -> String {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "still open after {WAIT:?}");
        tcp.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 4096];
        match tcp.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&got).into_owned()
            }
            Err(e) => panic!("still open ({e}) after {WAIT:?}"),
        }
    }
}

/// Reads one whole response (headers and a `Content-Length` body).
fn read_response(tcp: &mut TcpStream) -> String {
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).expect("reading a response");
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

fn short_timeouts(c: &mut hpfaas_registry::ServiceConfig) {
    c.header_read_timeout = Duration::from_secs(1);
    c.idle_timeout = Duration::from_secs(1);
    c.body_read_timeout = Duration::from_secs(1);
}

#[test]
fn half_sent_headers_and_silent_connections_are_closed() {
    let svc = TestService::start_with(short_timeouts);
    let mut half = send_raw(svc.addr, "GET /v2/version HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let mut silent = send_raw(svc.addr, "");
    // A byte every so often does not keep half-sent headers alive.
    let mut trickle = send_raw(svc.addr, "GET /v2/version HTTP/1.1\r\n");
    // Paced by the read timeout: one header line each 200 ms.
    trickle
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < WAIT,
            "trickled headers still open after {WAIT:?}"
        );
        if trickle.write_all(b"X-A: b\r\n").is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match trickle.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    read_until_closed(&mut half);
    read_until_closed(&mut silent);
    // A prompt request on a fresh connection is still served.
    let mut ok = send_raw(svc.addr, "GET /v2/version HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = read_response(&mut ok);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_trickled_body_gets_408_naming_the_limit() {
    let svc = TestService::start_with(|c| c.body_read_timeout = Duration::from_secs(1));
    let token = svc.token("alice");
    let mut slow = send_raw(
        svc.addr,
        &format!(
            "POST /v3/functions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"function_name\""
        ),
    );
    let answer = read_response(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-read-timeout"), "{answer}");
}

/// File descriptors open in this process (service and test client alike).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn connections_beyond_the_cap_wait_without_taking_file_descriptors() {
    const CAP: usize = 8;
    const MORE: usize = 200;
    let svc = TestService::start_with(|c| c.max_connections = CAP);
    let request = "GET /v2/version HTTP/1.1\r\nHost: x\r\n\r\n";
    // Keep-alive connections holding every slot, each served once.
    let mut held: Vec<TcpStream> = (0..CAP).map(|_| send_raw(svc.addr, request)).collect();
    for tcp in &mut held {
        assert!(read_response(tcp).starts_with("HTTP/1.1 200"));
    }
    let before = open_fds();
    let mut waiting: Vec<TcpStream> = (0..MORE).map(|_| send_raw(svc.addr, request)).collect();
    // The client's own sockets, and none taken by the service.
    let taken = open_fds() - before;
    assert!(
        taken <= MORE + 4,
        "{taken} descriptors for {MORE} queued connections"
    );
    waiting[0]
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        waiting[0].read(&mut buf).is_err(),
        "a connection beyond the cap was served"
    );
    // As slots free up, the queued connections are served in turn.
    drop(held);
    for tcp in &mut waiting {
        let answer = read_response(tcp);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tcp.shutdown(std::net::Shutdown::Both).unwrap();
    }
}

#[test]
fn result_streams_are_capped_per_token() {
    let svc = TestService::start();
    let cap = hpfaas_registry::ServiceConfig::DEFAULT_MAX_STREAMS_PER_TOKEN;
    let greedy = svc.token("mallory");
    let client = svc.client(&greedy);
    let f = client.register_function("f");
    let (ep, _) = client.register_endpoint("ep");
    let sub = client.submit(&ep, json!({f.clone(): ["a"]}));
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let (mut tcp, head) = ask_for_stream(svc.addr, &group, &greedy);
        if head.starts_with("HTTP/1.1 200") {
            open.push(tcp);
        } else {
            let rest = read_until_closed(&mut tcp);
            let answer = format!("{head}{rest}");
            assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
            assert!(answer.contains("--max-streams-per-token"), "{answer}");
            assert!(answer.contains(&cap.to_string()), "{answer}");
            refused += 1;
        }
    }
    assert_eq!(open.len(), cap);
    assert_eq!(refused, 1000 - cap);
    // Another user's token is still served.
    let alice = svc.token("alice");
    let a = svc.client(&alice);
    let (ep_a, _) = a.register_endpoint("ep");
    let fa = a.register_function("f");
    let sub = a.submit(&ep_a, json!({fa.clone(): ["a"]}));
    let group_a = sub["task_group_id"].as_str().unwrap().to_string();
    let _stream = RawStream::open(svc.addr, &alice, &group_a);
    // A closed stream frees its place.
    drop(open.pop());
    common::wait_for("a freed stream place", || {
        let (tcp, head) = ask_for_stream(svc.addr, &group, &greedy);
        head.starts_with("HTTP/1.1 200").then_some(tcp)
    });
}

#[test]
fn a_payload_of_millions_of_buffers_is_refused_quickly_naming_the_limit() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    // `4\npb\n5` and three million empty buffers: 9 MiB of JSON. A decoder
    // rescanning the rest for each buffer would take hours.
    let mut payload = String::from("4\npb\n5");
    payload.push_str(&"0\n".repeat(3_000_000));
    let body = json!({"tasks": {f: [payload]}});
    let start = Instant::now();
    let msg = alice
        .post(&format!("/v3/endpoints/{ep}/submit"), &body)
        .error(400, "bad_request");
    let took = start.elapsed();
    assert!(msg.contains("more than 1024 packed buffers"), "{msg}");
    // Seconds where milliseconds are expected: only a blow-up fails this.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
