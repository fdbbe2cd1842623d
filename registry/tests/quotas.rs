//! Per-user quotas: a user past the limit of queued (non-final) tasks gets
//! 429, past the limit of stored bytes (arguments and results) 507, each
//! naming the limit and its value; finishing, cancelling or fetching frees
//! room again, and other users are not affected.

mod common;

use common::*;
use hpfaas_protocol::endpoint::AgentMessage;
use serde_json::json;

#[test]
fn queued_tasks_are_limited_per_user() {
    let svc = TestService::start_with(|c| c.quota.max_queued_tasks = 3);
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let f = alice.register_function("f");
    let (ep, credential) = alice.register_endpoint("ep");
    let submit = format!("/v3/endpoints/{ep}/submit");
    let first = alice.submit(&ep, json!({f.clone(): ["a", "b"]}));
    let message = alice
        .post(&submit, &json!({"tasks": {f.clone(): ["c", "d"]}}))
        .error(429, "too_many_requests");
    assert!(message.contains("limit of 3 queued tasks"), "{message}");
    assert!(message.contains("--max-queued-tasks-per-user"), "{message}");

    // Bob has a queue of his own.
    let g = bob.register_function("g");
    let (bob_ep, _) = bob.register_endpoint("bob-ep");
    bob.submit(&bob_ep, json!({g: ["x", "y", "z"]}));

    // A finished task frees its place.
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    let (tasks, _) = agent.recv_tasks(2);
    agent.send(&AgentMessage::Results {
        results: vec![success(tasks[0].task_id, "11\n1")],
    });
    agent.recv_result_ack();
    alice.submit(&ep, json!({f.clone(): ["c", "d"]}));
    alice
        .post(&submit, &json!({"tasks": {f.clone(): ["e"]}}))
        .error(429, "too_many_requests");
    // So does a cancelled one.
    let id = task_ids(&first, &f)[1];
    alice
        .post(&format!("/v3/tasks/{id}/cancel"), &json!({}))
        .ok();
    alice.submit(&ep, json!({f: ["e"]}));
}

#[test]
fn stored_bytes_are_limited_per_user() {
    let svc = TestService::start_with(|c| c.quota.max_stored_bytes = 300_000);
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, credential) = alice.register_endpoint("ep");
    let submit = format!("/v3/endpoints/{ep}/submit");
    // 200 KB: kept in a payload file, counted all the same.
    let big = "x".repeat(200_000);
    let first = alice.submit(&ep, json!({f.clone(): [big.clone()]}));
    let message = alice
        .post(&submit, &json!({"tasks": {f.clone(): [big.clone()]}}))
        .error(507, "insufficient_storage");
    assert!(message.contains("limit of 300000 bytes"), "{message}");
    assert!(message.contains("--max-stored-bytes-per-user"), "{message}");

    // The task's argument is dropped once it is final; its result counts.
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    let (tasks, _) = agent.recv_tasks(1);
    assert_eq!(tasks[0].task_id, task_ids(&first, &f)[0]);
    agent.send(&AgentMessage::Results {
        results: vec![success(tasks[0].task_id, &"r".repeat(150_000))],
    });
    agent.recv_result_ack();
    alice
        .post(&submit, &json!({"tasks": {f.clone(): [big.clone()]}}))
        .error(507, "insufficient_storage");
    alice.submit(&ep, json!({f: ["small"]}));
}

/// `user_usage` as recomputed from scratch: what every path must keep it at.
fn usage_from_scratch(dir: &std::path::Path) -> Vec<(i64, i64, i64)> {
    let conn = rusqlite::Connection::open(dir.join("registry.db")).unwrap();
    let kept: Vec<(i64, i64, i64)> = conn
        .prepare(
            "SELECT owner, SUM(1 - done),
                    SUM(ifnull(octet_length(result), 0) + ifnull(octet_length(exc_message), 0)
                        + ifnull(octet_length(exc_traceback), 0)
                        + ifnull((SELECT bytes FROM task_payloads p WHERE p.rid = t.rid), 0))
             FROM tasks t GROUP BY owner ORDER BY owner",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    kept
}

fn usage_kept(dir: &std::path::Path) -> Vec<(i64, i64, i64)> {
    let conn = rusqlite::Connection::open(dir.join("registry.db")).unwrap();
    let kept: Vec<(i64, i64, i64)> = conn
        .prepare("SELECT user_id, queued, bytes FROM user_usage WHERE queued <> 0 OR bytes <> 0 ORDER BY user_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    kept
}

/// Three services on one data directory, so no step races a timer: the
/// first keeps everything, the second expires unfetched results, the third
/// deletes finished records.
#[test]
fn expiry_and_retention_give_room_back_and_usage_stays_exact() {
    let svc = TestService::start_with(|c| {
        c.quota.max_stored_bytes = 300_000;
        c.purge_interval = std::time::Duration::from_millis(100);
    });
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, credential) = alice.register_endpoint("ep");
    let submit = format!("/v3/endpoints/{ep}/submit");
    let answer = alice.submit(&ep, json!({f.clone(): ["a", "b", "c"]}));
    let ids = task_ids(&answer, &f);
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    agent.recv_tasks(3);
    agent.send(&AgentMessage::Results {
        results: vec![success(ids[0], &"r".repeat(250_000)), failure(ids[1])],
    });
    agent.recv_result_ack();
    alice
        .post(&format!("/v3/tasks/{}/cancel", ids[2]), &json!({}))
        .ok();
    assert_eq!(usage_kept(&svc.dir), usage_from_scratch(&svc.dir));

    // The unfetched result expires: its 250 KB are free again.
    let big = "x".repeat(100_000);
    alice
        .post(&submit, &json!({"tasks": {f.clone(): [big.clone()]}}))
        .error(507, "insufficient_storage");
    agent.close();
    let svc = svc.restart_with(|c| {
        c.quota.max_stored_bytes = 300_000;
        c.result_ttl = std::time::Duration::from_secs(1);
        c.purge_interval = std::time::Duration::from_millis(100);
    });
    let alice = svc.client(&token);
    wait_for("the result to expire", || {
        let answer = alice.post(&submit, &json!({"tasks": {f.clone(): [big.clone()]}}));
        (answer.status == 200).then_some(())
    });
    assert_eq!(usage_kept(&svc.dir), usage_from_scratch(&svc.dir));
    // Retention deletes the finished tasks; only the new one is left.
    let svc = svc.restart_with(|c| {
        c.quota.max_stored_bytes = 300_000;
        c.result_ttl = std::time::Duration::from_secs(1);
        c.retention = std::time::Duration::from_secs(1);
        c.purge_interval = std::time::Duration::from_millis(100);
    });
    wait_for("retention to delete the finished tasks", || {
        (tasks_in_db(&svc.dir).len() == 1).then_some(())
    });
    assert_eq!(usage_kept(&svc.dir), usage_from_scratch(&svc.dir));
}
