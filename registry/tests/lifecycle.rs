//! A task's life beyond submit and result: idempotent submits (also across
//! a restart), cancellation (service side: state, result stream, and the
//! agent's `Cancel`), and result expiry and retention.

mod common;

use std::time::Duration;

use common::*;
use hpfaas_protocol::endpoint::AgentMessage;
use serde_json::json;
use uuid::Uuid;

#[test]
fn an_idempotency_key_makes_a_retry_return_the_first_answer_even_after_a_restart() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    let (ep2, _) = alice.register_endpoint("ep2");
    let path = format!("/v3/endpoints/{ep}/submit");
    let body = json!({"tasks": {f.clone(): ["a", "b"]}});

    let first = alice.send(
        alice.request("POST", &path).set("Idempotency-Key", "k1"),
        &body,
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    let first = first.body;
    let again = alice.send(
        alice.request("POST", &path).set("Idempotency-Key", "k1"),
        &body,
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first, "same request id, group and task ids");
    assert_eq!(tasks_in_db(&svc.dir).len(), 2, "the retry created nothing");

    // The key may also travel in the body.
    let in_body = json!({"tasks": {f.clone(): ["c"]}, "idempotency_key": "k2"});
    let b1 = alice.post(&path, &in_body).ok();
    assert_eq!(alice.post(&path, &in_body).ok(), b1);
    assert_eq!(tasks_in_db(&svc.dir).len(), 3);

    // The same key for another request is a conflict naming the key.
    let other = json!({"tasks": {f.clone(): ["zzz"]}});
    let msg = alice
        .send(
            alice.request("POST", &path).set("Idempotency-Key", "k1"),
            &other,
        )
        .error(409, "conflict");
    assert!(msg.contains("\"k1\""), "{msg}");
    let msg = alice
        .send(
            alice
                .request("POST", &format!("/v3/endpoints/{ep2}/submit"))
                .set("Idempotency-Key", "k1"),
            &body,
        )
        .error(409, "conflict");
    assert!(msg.contains("k1"), "{msg}");
    // Header and body disagreeing is a plain mistake.
    let msg = alice
        .send(
            alice.request("POST", &path).set("Idempotency-Key", "k9"),
            &in_body,
        )
        .error(400, "bad_request");
    assert!(msg.contains("k9") && msg.contains("k2"), "{msg}");
    alice
        .send(
            alice.request("POST", &path).set("Idempotency-Key", ""),
            &body,
        )
        .error(400, "bad_request");

    // A refused first attempt stores no key: the corrected retry goes through.
    let missing = Uuid::new_v4().to_string();
    alice
        .send(
            alice.request("POST", &path).set("Idempotency-Key", "k3"),
            &json!({"tasks": {missing: ["x"]}}),
        )
        .error(404, "not_found");
    alice
        .send(
            alice.request("POST", &path).set("Idempotency-Key", "k3"),
            &body,
        )
        .ok();
    assert_eq!(tasks_in_db(&svc.dir).len(), 5);

    // Keys are per user.
    let bob = svc.client(&svc.token("bob"));
    let bf = bob.register_function("g");
    let (bep, _) = bob.register_endpoint("bep");
    let theirs = bob
        .send(
            bob.request("POST", &format!("/v3/endpoints/{bep}/submit"))
                .set("Idempotency-Key", "k1"),
            &json!({"tasks": {bf: ["q"]}}),
        )
        .ok();
    assert_ne!(theirs["request_id"], first["request_id"]);
    assert_eq!(tasks_in_db(&svc.dir).len(), 6);

    // The key survives a restart, with its answer.
    let svc = svc.restart();
    let alice = svc.client(&token);
    let after = alice.send(
        alice.request("POST", &path).set("Idempotency-Key", "k1"),
        &body,
    );
    assert_eq!(after.header("idempotent-replayed"), Some("true"));
    assert_eq!(after.body, first);
    assert_eq!(tasks_in_db(&svc.dir).len(), 6);
}

#[test]
fn cancelled_tasks_leave_dispatch_reach_the_stream_and_the_agent() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let sub = alice.submit(&ep, json!({f.clone(): ["a", "b", "c", "d"]}));
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let t = task_ids(&sub, &f);
    agent.recv_tasks(4);
    agent.send(&AgentMessage::Ack {
        task_ids: t.clone(),
    });
    alice.wait_task(&t[0].to_string(), "ack", |d| {
        d["status"] == "waiting-for-launch"
    });
    let mut stream = alice.stream(&group, None);

    let answer = alice
        .post(&format!("/v3/tasks/{}/cancel", t[0]), &json!({}))
        .ok();
    assert_eq!(answer, json!({"task_id": t[0], "status": "cancelled"}));
    let doc = alice.task(&t[0].to_string());
    assert_eq!(doc["status"], "cancelled");
    assert_eq!(doc["pending"], false);
    assert_eq!(doc["exception_type"], "TaskCancelled");
    let msg = doc["exception_message"].as_str().unwrap();
    assert!(msg.contains("alice") && msg.contains("Z ("), "{msg}");
    assert!(doc.get("result").is_none());
    assert_eq!(agent.recv_cancel(), vec![t[0]]);
    let e = stream.next_event();
    assert_eq!(
        (uuid(&e.data["task_id"]), e.data["status"].as_str()),
        (t[0], Some("cancelled"))
    );

    // Cancelling again, or a finished task, is a conflict naming the state.
    let msg = alice
        .post(&format!("/v3/tasks/{}/cancel", t[0]), &json!({}))
        .error(409, "conflict");
    assert!(msg.contains("cancelled"), "{msg}");
    // A late result for the cancelled task is acknowledged and dropped.
    agent.send(&AgentMessage::Results {
        results: vec![success(t[0], "late"), success(t[1], "r1")],
    });
    let mut acked = agent.recv_result_ack();
    acked.sort();
    let mut want = vec![t[0], t[1]];
    want.sort();
    assert_eq!(acked, want);
    assert_eq!(alice.task(&t[0].to_string())["status"], "cancelled");
    let msg = alice
        .post(&format!("/v3/tasks/{}/cancel", t[1]), &json!({}))
        .error(409, "conflict");
    assert!(msg.contains("success"), "{msg}");
    assert_eq!(uuid(&stream.next_event().data["task_id"]), t[1]);

    // Only the owner may cancel; ids are checked.
    bob.post(&format!("/v3/tasks/{}/cancel", t[2]), &json!({}))
        .error(404, "not_found");
    bob.post(&format!("/v3/taskgroup/{group}/cancel"), &json!({}))
        .error(404, "not_found");
    alice
        .post(&format!("/v3/tasks/{}/cancel", Uuid::new_v4()), &json!({}))
        .error(404, "not_found");
    alice
        .post("/v3/tasks/nope/cancel", &json!({}))
        .error(400, "bad_request");

    // The whole group: the two tasks not final yet.
    let answer = alice
        .post(&format!("/v3/taskgroup/{group}/cancel"), &json!({}))
        .ok();
    assert_eq!(answer["cancelled"], 2);
    assert_eq!(answer["taskgroup_id"], json!(group));
    let mut cancelled = agent.recv_cancel();
    cancelled.sort();
    let mut want = vec![t[2], t[3]];
    want.sort();
    assert_eq!(cancelled, want);
    let mut streamed = vec![uuid(&stream.next_event().data["task_id"])];
    streamed.push(uuid(&stream.next_event().data["task_id"]));
    streamed.sort();
    assert_eq!(streamed, want);
    let again = alice
        .post(&format!("/v3/taskgroup/{group}/cancel"), &json!({}))
        .ok();
    assert_eq!(again["cancelled"], 0);

    // t[3]'s cancel is answered with an ack; t[2]'s is not, so a
    // reconnecting agent hears it again (and only it), before new tasks.
    agent.send(&AgentMessage::Ack {
        task_ids: vec![t[3]],
    });
    wait_for("the ack to be stored", || {
        let conn = rusqlite::Connection::open(svc.dir.join("registry.db")).unwrap();
        let pending: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE cancel_pending = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (pending == 1).then_some(())
    });
    agent.close();
    wait_for("offline", || {
        (alice.endpoint_status(&ep)["status"] == "offline").then_some(())
    });
    // Cancelled while offline: never dispatched, cancel sent on connect.
    let later = alice.submit(&ep, json!({f.clone(): ["e"]}));
    let e_id = task_ids(&later, &f)[0];
    alice
        .post(&format!("/v3/tasks/{e_id}/cancel"), &json!({}))
        .ok();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let mut heard = agent.recv_cancel();
    heard.sort();
    let mut want = vec![t[2], e_id];
    want.sort();
    assert_eq!(heard, want);
    let fresh = alice.submit(&ep, json!({f.clone(): ["f"]}));
    let (tasks, _) = agent.recv_tasks(1);
    assert_eq!(
        tasks[0].task_id,
        task_ids(&fresh, &f)[0],
        "cancelled tasks are not dispatched"
    );
    agent.close();
}

/// Three services on one data directory, so no step races a timer: the
/// first keeps everything while results arrive and one is fetched, the
/// second expires unfetched results (1 s), the third deletes finished
/// records (retention 1 s).
#[test]
fn unfetched_results_expire_and_old_records_are_deleted() {
    let svc = TestService::start_with(|c| {
        c.purge_interval = Duration::from_millis(100);
    });
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let path = format!("/v3/endpoints/{ep}/submit");
    let body = json!({"tasks": {f.clone(): ["a", "b", "c", "pending"]}});
    let sub = alice
        .send(
            alice.request("POST", &path).set("Idempotency-Key", "old"),
            &body,
        )
        .ok();
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let t = task_ids(&sub, &f);
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    agent.recv_tasks(4);
    agent.send(&AgentMessage::Results {
        results: vec![success(t[0], "r0"), failure(t[1]), success(t[2], "r2")],
    });
    agent.recv_result_ack();
    // t[2] is fetched, so it keeps its result.
    assert_eq!(alice.task(&t[2].to_string())["result"], "r2");
    agent.close();
    let svc = svc.restart_with(|c| {
        c.result_ttl = Duration::from_secs(1);
        c.purge_interval = Duration::from_millis(100);
    });
    let alice = svc.client(&token);
    // Reading a result marks it fetched, so watch the database instead.
    wait_for("expiry", || {
        let conn = rusqlite::Connection::open(svc.dir.join("registry.db")).unwrap();
        let expired: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE result_fate = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (expired == 2).then_some(())
    });
    let expired = alice.task(&t[0].to_string());
    assert_eq!(expired["exception_type"], "ResultExpired");
    assert_eq!(expired["status"], "success");
    assert_eq!(expired["pending"], false);
    assert!(expired.get("result").is_none(), "{expired}");
    assert!(
        expired["exception_message"]
            .as_str()
            .unwrap()
            .contains("1s"),
        "{expired}"
    );
    let failed = alice.task(&t[1].to_string());
    assert_eq!(
        (failed["status"].as_str(), failed["exception_type"].as_str()),
        (Some("failed"), Some("ResultExpired"))
    );
    let kept = alice.task(&t[2].to_string());
    assert_eq!(kept["result"], "r2");
    assert!(kept.get("exception_type").is_none());

    // Past the retention period the finished tasks and the key are gone;
    // the pending task stays.
    let svc = svc.restart_with(|c| {
        c.result_ttl = Duration::from_secs(1);
        c.retention = Duration::from_secs(1);
        c.purge_interval = Duration::from_millis(100);
    });
    let alice = svc.client(&token);
    wait_for("retention", || {
        (alice.get(&format!("/v2/tasks/{}", t[2])).status == 404).then_some(())
    });
    for id in &t[..3] {
        alice
            .get(&format!("/v2/tasks/{id}"))
            .error(404, "not_found");
    }
    assert_eq!(alice.task(&t[3].to_string())["status"], "waiting-for-ep");
    let tg = alice.get(&format!("/v2/taskgroup/{group}")).ok();
    assert_eq!(tg["tasks"].as_array().unwrap().len(), 1);
    let retry = alice.send(
        alice.request("POST", &path).set("Idempotency-Key", "old"),
        &body,
    );
    assert_eq!(retry.header("idempotent-replayed"), None, "the key expired");
    assert_ne!(retry.body["request_id"], sub["request_id"]);
}

#[test]
fn a_large_task_group_lists_completely() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    // More than one page of the group listing.
    let payloads: Vec<String> = (0..25_000).map(|i| i.to_string()).collect();
    let group = Uuid::new_v4().to_string();
    let sub = alice
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {f.clone(): payloads}, "task_group_id": group}),
        )
        .ok();
    let ids = task_ids(&sub, &f);
    let tg = alice.get(&format!("/v2/taskgroup/{group}")).ok();
    let listed: Vec<Uuid> = tg["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| uuid(&t["id"]))
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(tg["tasks"][0]["status"], "waiting-for-ep");
}

#[test]
fn large_arguments_live_in_files_until_their_task_ends() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let files = svc.dir.join("payloads");
    let file_of = |id: &str| files.join(id);
    // Over payload_files::INLINE_MAX, with characters JSON must escape.
    let big = format!("{}\"\\\n{}", "a".repeat(70_000), "z".repeat(10));
    let small = "11\n[1]".to_string();

    // Queued while the endpoint is offline: the big one is a file, durable
    // across a restart; the small one is not.
    let answer = alice.submit(&ep, json!({f.clone(): [big.clone(), small.clone()]}));
    let ids: Vec<String> = task_ids(&answer, &f).iter().map(Uuid::to_string).collect();
    assert!(
        file_of(&ids[0]).exists(),
        "the large argument is in its file"
    );
    assert!(
        !file_of(&ids[1]).exists(),
        "a small one stays in the database"
    );
    std::fs::write(files.join(Uuid::new_v4().to_string()), "orphan").unwrap();
    let svc = svc.restart();
    let alice = svc.client(&token);
    let left: Vec<_> = std::fs::read_dir(&files).unwrap().collect();
    assert_eq!(
        left.len(),
        1,
        "start-up removed the orphan, kept the queued task's file"
    );

    // Dispatched with its exact text; the file goes once the result is durable.
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let (tasks, _) = agent.recv_tasks(2);
    let sent = tasks
        .iter()
        .find(|t| t.task_id.to_string() == ids[0])
        .unwrap();
    assert_eq!(sent.payload, big);
    agent.send(&AgentMessage::Results {
        results: tasks.iter().map(|t| success(t.task_id, "00\nr")).collect(),
    });
    assert_eq!(agent.recv_result_ack().len(), 2);
    wait_for("the payload file removed", || {
        (!file_of(&ids[0]).exists()).then_some(())
    });
    assert_eq!(alice.task(&ids[0])["status"], "success");

    // A replayed submit leaves no file behind; a refused one neither.
    let path = format!("/v3/endpoints/{ep}/submit");
    let body = json!({"tasks": {f.clone(): [big.clone()]}});
    let submit = || {
        alice
            .send(
                alice.request("POST", &path).set("Idempotency-Key", "big"),
                &body,
            )
            .ok()
    };
    let first = submit();
    assert_eq!(submit(), first);
    let missing = Uuid::new_v4().to_string();
    alice
        .post(&path, &json!({"tasks": {missing: [big.clone()]}}))
        .error(404, "not_found");
    let kept: Vec<_> = std::fs::read_dir(&files).unwrap().collect();
    assert_eq!(kept.len(), 1, "only the first submit's file");

    // A file lost under a queued task fails that task, naming the cause,
    // and dispatch goes on with the tasks after it.
    let lost = first["tasks"][&f][0].as_str().unwrap().to_string();
    agent.recv_tasks(1);
    drop(agent);
    std::fs::remove_file(file_of(&lost)).unwrap();
    let after = alice.submit(&ep, json!({f.clone(): [small]}));
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let (tasks, _) = agent.recv_tasks(1);
    assert_eq!(
        tasks[0].task_id.to_string(),
        after["tasks"][&f][0].as_str().unwrap()
    );
    let failed = alice.wait_task(&lost, "the task failed", |t| t["status"] == "failed");
    assert_eq!(failed["exception_type"], "PayloadLost");
    assert!(
        failed["exception_message"]
            .as_str()
            .unwrap()
            .contains("argument file"),
        "{failed}"
    );
}

#[test]
fn a_live_stream_gets_results_and_cancels_in_order_as_the_service_reads_them() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let group = Uuid::new_v4().to_string();
    let payloads: Vec<String> = (0..30).map(|i| format!("p{i}")).collect();
    let answer = alice
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {f.clone(): payloads}, "task_group_id": group}),
        )
        .ok();
    let ids = task_ids(&answer, &f);
    let mut stream = alice.stream(&group, None);
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    agent.recv_tasks(ids.len());

    // Results (handed to the stream in memory, one a large one it reads
    // back) interleaved with cancels (which it reads), in small batches.
    let big = "x".repeat(20 * 1024);
    for (i, chunk) in ids.chunks(3).enumerate() {
        if i % 2 == 0 {
            let results = chunk
                .iter()
                .map(|id| success(*id, if *id == ids[0] { &big } else { "00\nr" }))
                .collect();
            agent.send(&AgentMessage::Results { results });
            // The agent is told of the cancels meanwhile.
            loop {
                match agent.recv() {
                    Some(hpfaas_protocol::endpoint::ServiceMessage::ResultAck { .. }) => break,
                    Some(hpfaas_protocol::endpoint::ServiceMessage::Cancel { .. }) => {}
                    other => panic!("expected a result ack, got {other:?}"),
                }
            }
        } else {
            for id in chunk {
                alice
                    .post(&format!("/v3/tasks/{id}/cancel"), &json!({}))
                    .ok();
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut last = 0i64;
    for _ in 0..ids.len() {
        let e = stream.next_event();
        let seq: i64 = e.id.parse().unwrap();
        assert!(seq > last, "event {seq} after {last}");
        last = seq;
        let task = uuid(&e.data["task_id"]);
        assert!(seen.insert(task), "{task} twice");
        // The document streamed is the one the service returns for the
        // task, less the timeline and placement only the detail carries.
        let mut read = alice.task(&task.to_string());
        let mut streamed = e.data.clone();
        for doc in [&mut read, &mut streamed] {
            for key in ["fetched", "timeline", "placement"] {
                doc.as_object_mut().unwrap().remove(key);
            }
        }
        assert_eq!(streamed, read);
    }
    assert_eq!(seen.len(), ids.len());
}

/// A submit body with blobs: `{n}\n`, the JSON document, the blobs.
fn blob_body(json: &serde_json::Value, blobs: &[&[u8]]) -> Vec<u8> {
    let text = json.to_string();
    let mut body = format!("{}\n{text}", text.len()).into_bytes();
    for blob in blobs {
        body.extend_from_slice(blob);
    }
    body
}

/// Posts a body with blobs to `path`, with an idempotency key if given.
fn post_blobs(client: &Http, path: &str, body: &[u8], key: Option<&str>) -> Answer {
    let mut req = client
        .request("POST", path)
        .set("Content-Type", "application/x-hpfaas-blobs");
    if let Some(key) = key {
        req = req.set("Idempotency-Key", key);
    }
    Http::answer(req.send_bytes(body))
}

#[test]
fn binary_arguments_reach_the_agent_as_raw_bytes_and_bad_bodies_are_named() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let path = format!("/v3/endpoints/{ep}/submit");
    let files = svc.dir.join("payloads");
    let stored = || std::fs::read_dir(&files).unwrap().count();
    // Every byte value, and far over the inline limit.
    let one: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let two = vec![b'\n'; 70_000];
    let args = |blob: &[u8]| {
        format!(
            "{}\npb\n{}5\n00\nxx",
            3 + blob.len().to_string().len(),
            blob.len()
        )
    };
    let json = json!({"tasks": {f.clone(): [args(&one), "3\n00\n3\n00\n", args(&two)]}});
    let body = blob_body(&json, &[&one, &two]);
    let answer = post_blobs(&alice, &path, &body, Some("k1")).ok();
    let ids: Vec<String> = task_ids(&answer, &f).iter().map(Uuid::to_string).collect();
    assert_eq!(std::fs::read(files.join(&ids[0])).unwrap(), one);
    assert_eq!(std::fs::read(files.join(&ids[2])).unwrap(), two);
    assert_eq!(stored(), 2, "the small task has no file");
    // The same key and body replay; the same key with other blob bytes is
    // another request.
    let replay = post_blobs(&alice, &path, &body, Some("k1"));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let mut other = body.clone();
    *other.last_mut().unwrap() = b'x';
    post_blobs(&alice, &path, &other, Some("k1")).error(409, "conflict");

    // Queued blobs survive a restart, and keep their files.
    let svc = svc.restart();
    let alice = svc.client(&token);
    assert_eq!(stored(), 2);
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let (tasks, functions) = agent.recv_tasks(3);
    assert_eq!(
        functions.len(),
        1,
        "code is sent once, in either kind of frame"
    );
    let by_id = |id: &str| tasks.iter().find(|t| t.task_id.to_string() == id).unwrap();
    assert_eq!(by_id(&ids[0]).blob.as_deref(), Some(one.as_slice()));
    assert_eq!(by_id(&ids[0]).payload, args(&one));
    assert_eq!(by_id(&ids[1]).blob, None);
    assert_eq!(by_id(&ids[2]).blob.as_deref(), Some(two.as_slice()));
    agent.send(&AgentMessage::Results {
        results: tasks.iter().map(|t| success(t.task_id, "00\nr")).collect(),
    });
    assert_eq!(agent.recv_result_ack().len(), 3);
    wait_for("the blob files removed", || (stored() == 0).then_some(()));

    // Bad bodies: each refused with what is wrong, and no file is left.
    let small = args(b"abc");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"tasks\": {}}".to_vec(), "must open with the length"),
        (b"99\n{}".to_vec(), "announces a JSON document of 99 bytes"),
        (
            blob_body(&json!({"tasks": {f.clone(): [small.clone()]}}), &[b"ab"]),
            "only 2 bytes of blobs are left",
        ),
        (
            blob_body(&json!({"tasks": {f.clone(): [small.clone()]}}), &[b"abcd"]),
            "1 bytes of blobs that no task's args name",
        ),
        (
            blob_body(&json!({"tasks": {f.clone(): ["7\npb\nmany3\n00\n"]}}), &[]),
            "\"many\"",
        ),
    ];
    for (body, why) in cases {
        let message = post_blobs(&alice, &path, &body, None).error(400, "bad_request");
        assert!(message.contains(why), "{why:?} not in {message:?}");
    }
    // A JSON body cannot name blobs.
    let message = alice
        .send(
            alice.request("POST", &path),
            &json!({"tasks": {f.clone(): [small]}}),
        )
        .error(400, "bad_request");
    assert!(message.contains("application/x-hpfaas-blobs"), "{message}");
    assert_eq!(stored(), 0);
    agent.close();
}

/// `(page_count, freelist_count)` of the database in `dir`, as committed.
fn pages(dir: &std::path::Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(dir.join("registry.db")).unwrap();
    let count =
        |pragma: &str| -> i64 { conn.pragma_query_value(None, pragma, |r| r.get(0)).unwrap() };
    (count("page_count"), count("freelist_count"))
}

/// A stream's finished tasks are deleted every second (`purge::PACE`), a
/// second's worth at a time, not in one burst per `purge_interval`: with
/// the sweep an hour apart, fetched tasks still go a moment after the
/// fetched retention.
#[test]
fn fetched_tasks_go_within_seconds_though_the_sweep_is_hourly() {
    let svc = TestService::start_with(|c| {
        c.fetched_retention = Some(Duration::from_secs(1));
        c.purge_interval = Duration::from_secs(3600);
        c.heartbeat_period = 600.0;
    });
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    // The service's first purge (at start) has run by now: the tasks are
    // stored after it.
    let sub = alice
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {f.clone(): ["a", "b", "c"]}}),
        )
        .ok();
    let ids = task_ids(&sub, &f);
    agent.recv_tasks(3);
    agent.send(&AgentMessage::Results {
        results: ids.iter().map(|id| success(*id, "r")).collect(),
    });
    agent.recv_result_ack();
    let fetched = alice
        .post("/v2/batch_status", &json!({ "task_ids": ids }))
        .ok();
    assert_eq!(fetched["results"].as_object().unwrap().len(), 3);
    // All but the newest (its rid is never handed out again).
    wait_for("the fetched tasks purged", || {
        (tasks_in_db(&svc.dir) == vec![(ids[2].to_string(), "success".to_string())]).then_some(())
    });
    agent.close();
}

#[test]
fn fetched_results_go_after_the_fetched_retention_and_their_space_is_returned() {
    let svc = TestService::start_with(|c| {
        c.fetched_retention = Some(Duration::from_secs(1));
        c.purge_interval = Duration::from_millis(100);
        // The test's agent sends no heartbeats while it waits for purges.
        c.heartbeat_period = 600.0;
    });
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let path = format!("/v3/endpoints/{ep}/submit");
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let mut run = |n: usize, tag: &str| -> Vec<Uuid> {
        let payloads: Vec<String> = (0..n)
            .map(|i| format!("{tag} {i} {}", "x".repeat(300)))
            .collect();
        let ids = task_ids(
            &alice
                .post(&path, &json!({"tasks": {f.clone(): payloads}}))
                .ok(),
            &f,
        );
        agent.recv_tasks(n);
        let results = ids
            .iter()
            .map(|id| success(*id, &"r".repeat(500)))
            .collect();
        agent.send(&AgentMessage::Results { results });
        agent.recv_result_ack();
        ids
    };
    // A result nobody fetches stays (until the result TTL). Each round's
    // tasks must reach the agent although the last round's were deleted.
    let unfetched = run(1, "unfetched")[0];
    let mut sizes = Vec::new();
    for round in 0..5 {
        let ids = run(500, &format!("round {round}"));
        let fetched = alice
            .post("/v2/batch_status", &json!({ "task_ids": ids }))
            .ok();
        assert_eq!(fetched["results"].as_object().unwrap().len(), 500);
        // Gone once fetched and a second old; and the pages they took are
        // handed back, not only marked free.
        let (page_count, free) = wait_for("the fetched tasks purged, their pages returned", || {
            let (page_count, free) = pages(&svc.dir);
            // The newest task stays, so its rid is never handed out again.
            (tasks_in_db(&svc.dir).len() == 2 && free * 8 <= page_count)
                .then_some((page_count, free))
        });
        sizes.push(page_count);
        assert!(
            free * 8 <= page_count,
            "round {round}: {free} of {page_count} pages free"
        );
    }
    // The file follows what is kept: flat across rounds, not one round's
    // worth more each (500 results of 500 bytes and arguments of 300: ~100
    // pages of 4 KiB). Within the slack of free pages it may move a little.
    let round_pages = 500 * 800 / 4096;
    assert!(
        sizes[4] <= sizes[1] + round_pages / 2,
        "pages after each round: {sizes:?}"
    );
    let kept = alice.task(&unfetched.to_string());
    assert_eq!(kept["result"], "r".repeat(500), "{kept}");
}
