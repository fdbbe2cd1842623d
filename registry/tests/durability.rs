//! A failed sync of the database is fatal to its writer: the submit whose
//! commit was already visible (and dispatched) is answered 503 naming the
//! cause, its payload file stays for the task that was dispatched, and no
//! later write is accepted.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_healthy_service_says_ok() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let status = alice.get("/v3/service/status").ok();
    assert_eq!(status["status"], "ok", "{status}");
    assert!(status["writes_refused"].is_null());
    assert_eq!(status["audit_lines_lost"], 0);
    svc.anonymous()
        .get("/v3/service/status")
        .error(401, "unauthorized");
}

fn payload_files(svc: &TestService) -> Vec<String> {
    std::fs::read_dir(svc.dir.join("payloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_failed_sync_answers_503_and_keeps_the_files_of_committed_tasks() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, credential) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");

    hpfaas_registry::db::fail_syncs_under(&svc.dir);
    // Over 64 KiB: kept in a payload file.
    let big = "x".repeat(100_000);
    let submit = format!("/v3/endpoints/{ep}/submit");
    let message = alice
        .post(&submit, &json!({"tasks": {f.clone(): [big.clone()]}}))
        .error(503, "unavailable");
    assert!(message.contains("injected sync failure"), "{message}");
    assert!(message.contains("restart"), "{message}");

    // The commit was visible: the task went out, and its file is still there.
    let (tasks, _) = agent.recv_tasks(1);
    assert_eq!(tasks[0].payload, big);
    assert_eq!(payload_files(&svc), vec![tasks[0].task_id.to_string()]);

    // Nothing more is written.
    let again = alice
        .post(&submit, &json!({"tasks": {f.clone(): ["small"]}}))
        .error(503, "unavailable");
    assert!(again.contains("injected sync failure"), "{again}");
    // The service says so to any user.
    let status = alice.get("/v3/service/status").ok();
    assert_eq!(status["status"], "degraded", "{status}");
    assert!(status["writes_refused"]
        .as_str()
        .unwrap()
        .contains("injected sync failure"));
}

#[test]
fn a_submit_refused_for_its_priority_leaves_no_payload_file() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    // Large enough to be kept in a file, not in the row.
    let big = "x".repeat(200_000);
    let body = json!({"tasks": {f.clone(): [big]}, "resource_specification": {"priority": 1e9}});
    let why = alice
        .post(&format!("/v3/endpoints/{ep}/submit"), &body)
        .error(400, "bad_request");
    assert!(why.contains("priority"), "{why}");
    assert!(
        payload_files(&svc).is_empty(),
        "files left behind: {:?}",
        payload_files(&svc)
    );
}
