//! A hostile or broken client, or a failing database, must not hold the
//! service: long-lived connections fail closed when their token cannot be
//! checked, slow and greedy clients are cut off by timeouts and caps.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

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
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
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
