//! Limits: an oversized body or batch is `413` with `Connection: close`
//! (and the connection really closes), and a result over the limit fails
//! its task with `ResultTooLarge` instead of being stored.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use hpfaas_protocol::endpoint::AgentMessage;
use serde_json::json;

/// Sends one raw HTTP/1.1 request, returns everything the service sent
/// until it closed the connection.
fn raw_exchange(svc: &TestService, token: &str, path: &str, body: &str) -> String {
    let mut tcp = TcpStream::connect(svc.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    // The service may answer and close before reading it all.
    let _ = tcp.write_all(body.as_bytes());
    let mut out = Vec::new();
    // Ends at the service's close; a kept-alive connection would end in the
    // read timeout instead, an error.
    let ended = tcp.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    if let Err(e) = ended {
        panic!("the service did not close the connection ({e}); it sent: {out}");
    }
    out
}

#[test]
fn every_413_says_connection_close_and_closes() {
    let svc = TestService::start_with(|c| {
        c.max_request_bytes = 4096;
        c.max_tasks_per_submit = 10;
    });
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    let submit = format!("/v3/endpoints/{ep}/submit");

    let big = json!({"tasks": {f.clone(): ["x".repeat(8192)]}}).to_string();
    let answer = raw_exchange(&svc, &token, &submit, &big);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("payload_too_large") && answer.contains("4096"),
        "{answer}"
    );

    // Too many tasks: 413 naming the limit, also closing.
    let many = json!({"tasks": {f.clone(): vec!["p"; 11]}}).to_string();
    let answer = raw_exchange(&svc, &token, &submit, &many);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    assert!(answer.contains("more than 10 tasks"), "{answer}");

    // The same through a client; a success keeps the connection.
    let a = alice.post(&submit, &json!({"tasks": {f.clone(): vec!["p"; 11]}}));
    assert_eq!(a.header("connection"), Some("close"));
    let msg = a.error(413, "payload_too_large");
    assert!(
        msg.contains("10") && msg.contains("--max-tasks-per-submit"),
        "{msg}"
    );
    let ok = alice.post(&submit, &json!({"tasks": {f.clone(): vec!["p"; 10]}}));
    assert_ne!(ok.header("connection"), Some("close"));
    ok.ok();
    assert_eq!(
        tasks_in_db(&svc.dir).len(),
        10,
        "nothing of the refused batches was stored"
    );
    // Any refusal of a request with a body closes: the body may be unread
    // (here the path is refused before the body is looked at).
    let bad = alice.post(&submit, &json!({"tasks": 5}));
    assert_eq!(bad.header("connection"), Some("close"));
    bad.error(400, "bad_request");
    let bad_path = alice.post("/v3/tasks/nope/cancel", &json!({}));
    assert_eq!(bad_path.header("connection"), Some("close"));
    bad_path.error(400, "bad_request");
    let get = alice.get("/v3/tasks/nope");
    assert_ne!(
        get.header("connection"),
        Some("close"),
        "no body, nothing unread"
    );
}

#[test]
fn a_result_over_the_limit_fails_its_task_instead_of_being_stored() {
    let svc = TestService::start_with(|c| c.max_result_bytes = 1000);
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let sub = alice.submit(&ep, json!({f.clone(): ["a", "b"]}));
    let t = task_ids(&sub, &f);
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    agent.recv_tasks(2);
    agent.send(&AgentMessage::Results {
        results: vec![
            success(t[0], &"r".repeat(2000)),
            success(t[1], &"s".repeat(1000)),
        ],
    });
    let mut acked = agent.recv_result_ack();
    acked.sort();
    let mut want = t.clone();
    want.sort();
    assert_eq!(
        acked, want,
        "both are acknowledged: the agent may forget them"
    );
    let big = alice.task(&t[0].to_string());
    assert_eq!(big["status"], "failed");
    assert_eq!(big["exception_type"], "ResultTooLarge");
    let msg = big["exception_message"].as_str().unwrap();
    assert!(
        msg.contains("2000 bytes") && msg.contains("1000 bytes"),
        "{msg}"
    );
    assert!(big.get("result").is_none());
    let fits = alice.task(&t[1].to_string());
    assert_eq!(fits["status"], "success");
    assert_eq!(fits["result"].as_str().unwrap().len(), 1000);
    agent.close();
}
