//! End-to-end tests of the registry service: real HTTP, a real WebSocket
//! acting as the endpoint agent, and the real database on disk.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use hpfaas_protocol::endpoint::{AgentMessage, EndpointReport, ServiceMessage};
use hpfaas_protocol::task::{ExceptionInfo, Outcome, TaskResult, TaskState};
use serde_json::{json, Value};
use uuid::Uuid;

fn uuid(v: &Value) -> Uuid {
    Uuid::parse_str(v.as_str().expect("a uuid string")).expect("a uuid")
}

fn success(id: Uuid, result: &str) -> TaskResult {
    TaskResult {
        task_id: id,
        outcome: Outcome::Success {
            result: result.into(),
        },
        output: None,
        completed_at: 1_700_000_000.5,
        placement: None,
    }
}

fn failure(id: Uuid) -> TaskResult {
    TaskResult {
        task_id: id,
        outcome: Outcome::Failed {
            exception: ExceptionInfo {
                exc_type: "ZeroDivisionError".into(),
                message: "division by zero".into(),
                traceback:
                    "Traceback (most recent call last):\nZeroDivisionError: division by zero".into(),
            },
        },
        output: None,
        completed_at: 1_700_000_001.25,
        placement: None,
    }
}

#[test]
fn tokens_authenticate_and_errors_are_json() {
    let svc = TestService::start();
    let anon = svc.anonymous();
    assert_eq!(
        anon.get("/v2/version").ok(),
        json!(hpfaas_protocol::HPFAAS_VERSION)
    );
    let all = anon.get("/v2/version?service=all").ok();
    assert_eq!(all["protocol_version"], hpfaas_protocol::PROTOCOL_VERSION);
    assert_eq!(all["api"], hpfaas_protocol::HPFAAS_VERSION);
    // What the SDK compares at first contact (docs/api.md, "Version compatibility").
    assert_eq!(all["api_version"], 1, "{all}");
    anon.get("/v2/version?service=nope")
        .error(400, "bad_request");

    let msg = anon.get("/v2/endpoints").error(401, "unauthorized");
    assert!(msg.contains("Authorization"), "{msg}");
    let msg = svc
        .client("not-a-token")
        .get("/v2/endpoints")
        .error(401, "unauthorized");
    assert!(msg.contains("invalid"), "{msg}");

    let token = svc.token("alice");
    assert_eq!(token.len(), 64);
    let alice = svc.client(&token);
    assert_eq!(alice.get("/v2/endpoints").ok(), json!([]));
    // A second token for the same user sees the same things.
    let again = svc.client(&svc.token("alice"));
    let (ep, credential) = alice.register_endpoint("ep");
    assert_eq!(again.get("/v2/endpoints").ok()[0]["endpoint_id"], json!(ep));

    // An endpoint credential acts only as its endpoint.
    let cred = svc.client(&credential);
    let msg = cred.get("/v2/endpoints").error(403, "forbidden");
    assert!(msg.contains(&ep), "{msg}");
    assert_eq!(cred.endpoint_status(&ep)["status"], "offline");
}

#[test]
fn functions_register_read_and_delete() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let body = json!({
        "function_name": "double", "function_code": "25\nst\ndouble:def double(x): ...",
        "description": "doubles", "metadata": {"python_version": "3.11"},
        "entry_point": "double", "public": false,
    });
    let id = alice.post("/v3/functions", &body).ok()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let f = alice.get(&format!("/v2/functions/{id}")).ok();
    assert_eq!(f["function_uuid"], json!(id));
    assert_eq!(f["function_name"], "double");
    assert_eq!(f["function_code"], body["function_code"]);
    assert_eq!(f["description"], "doubles");
    assert_eq!(f["metadata"]["python_version"], "3.11");

    assert_eq!(
        alice.delete(&format!("/v2/functions/{id}")).ok(),
        json!({"function_uuid": id, "deleted": true})
    );
    let msg = alice
        .get(&format!("/v2/functions/{id}"))
        .error(404, "not_found");
    assert!(msg.contains(&id), "{msg}");
    alice
        .delete(&format!("/v2/functions/{id}"))
        .error(404, "not_found");
    let msg = alice
        .get("/v2/functions/not-a-uuid")
        .error(400, "bad_request");
    assert!(msg.contains("not-a-uuid"), "{msg}");
}

#[test]
fn endpoint_registration_issues_and_rotates_credentials() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let reg = alice
        .post("/v3/endpoints", &json!({"endpoint_name": "cluster", "display_name": "My Cluster", "metadata": {"k": 1}}))
        .ok();
    let ep = reg["endpoint_id"].as_str().unwrap().to_string();
    assert_eq!(reg["name"], "cluster");
    let first = reg["credential"].as_str().unwrap().to_string();

    let list = alice.get("/v2/endpoints").ok();
    assert_eq!(
        list,
        json!([{"endpoint_id": ep, "uuid": ep, "name": "cluster", "display_name": "My Cluster", "status": "offline"}])
    );
    let one = alice.get(&format!("/v2/endpoints/{ep}")).ok();
    assert_eq!(one["display_name"], "My Cluster");
    assert!(one["created_t"].as_str().unwrap().parse::<f64>().unwrap() > 1.6e9);
    assert_eq!(
        alice.endpoint_status(&ep),
        json!({"status": "offline", "details": {}})
    );

    // Re-registering the same id rotates the credential and drops an agent
    // connected with the old one.
    let mut agent = Agent::online(svc.addr, &ep, &first, "login1");
    let again = alice
        .post(
            "/v3/endpoints",
            &json!({"endpoint_name": "cluster2", "endpoint_id": ep}),
        )
        .ok();
    assert_eq!(again["endpoint_id"], json!(ep));
    let second = again["credential"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let closed = agent.expect_close();
    assert!(closed.reason.contains("revoked"), "{closed:?}");
    svc.client(&first)
        .get(&format!("/v2/endpoints/{ep}/status"))
        .error(401, "unauthorized");
    svc.client(&second).endpoint_status(&ep);

    // A client-chosen new id is honoured.
    let chosen = Uuid::new_v4().to_string();
    let reg = alice
        .post(
            "/v3/endpoints",
            &json!({"endpoint_name": "x", "endpoint_id": chosen}),
        )
        .ok();
    assert_eq!(reg["endpoint_id"], json!(chosen));

    assert_eq!(
        alice.delete(&format!("/v2/endpoints/{ep}")).ok(),
        json!({"endpoint_id": ep, "deleted": true})
    );
    alice
        .get(&format!("/v2/endpoints/{ep}"))
        .error(404, "not_found");
    svc.client(&second)
        .get(&format!("/v2/endpoints/{ep}/status"))
        .error(401, "unauthorized");
    assert_eq!(alice.get("/v2/endpoints").ok().as_array().unwrap().len(), 1);
}

#[test]
fn submit_dispatch_ack_and_results_round_trip() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f1 = alice.register_function("f1");
    let f2 = alice.register_function("f2");
    let (ep, cred) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    assert_eq!(alice.endpoint_status(&ep)["status"], "online");

    let body = json!({
        "tasks": {f1.clone(): ["p1", "p2"], f2.to_uppercase(): ["p3"]},
        "result_serializers": ["11\n"],
        "resource_specification": {"num_nodes": 2},
        "create_queue": true,
    });
    let sub = alice
        .post(&format!("/v3/endpoints/{ep}/submit"), &body)
        .ok();
    assert_eq!(sub["endpoint_id"], json!(ep));
    Uuid::parse_str(sub["request_id"].as_str().unwrap()).unwrap();
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let keys: BTreeSet<&String> = sub["tasks"].as_object().unwrap().keys().collect();
    assert_eq!(keys, BTreeSet::from([&f1, &f2.to_uppercase()]));
    let t1: Vec<Uuid> = sub["tasks"][&f1]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();
    let t2: Vec<Uuid> = sub["tasks"][f2.to_uppercase()]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();
    assert_eq!((t1.len(), t2.len()), (2, 1));
    assert_eq!(alice.task(&t1[0].to_string())["status"], "received");

    let (tasks, functions) = agent.recv_tasks(3);
    let by_id: HashMap<Uuid, _> = tasks.iter().map(|t| (t.task_id, t.clone())).collect();
    assert_eq!(by_id[&t1[0]].payload, "p1");
    assert_eq!(by_id[&t1[1]].payload, "p2");
    assert_eq!(by_id[&t2[0]].payload, "p3");
    assert_eq!(by_id[&t2[0]].function_id.to_string(), f2);
    assert_eq!(by_id[&t1[0]].result_serializers, vec!["11\n".to_string()]);
    let spec: Value =
        serde_json::from_str(by_id[&t1[0]].resource_spec.as_deref().unwrap()).unwrap();
    assert_eq!(spec, json!({"num_nodes": 2}));
    let mut codes: Vec<_> = functions
        .iter()
        .map(|f| (f.function_id.to_string(), f.code.clone()))
        .collect();
    codes.sort();
    let mut expected = vec![
        (f1.clone(), "st\nf1:def f1(): pass".to_string()),
        (f2.clone(), "st\nf2:def f2(): pass".to_string()),
    ];
    expected.sort();
    assert_eq!(codes, expected, "each function's code exactly once");

    agent.send(&AgentMessage::Ack {
        task_ids: vec![t1[0], t1[1], t2[0]],
    });
    alice.wait_task(&t1[0].to_string(), "ack", |t| {
        t["status"] == "waiting-for-launch"
    });
    agent.send(&AgentMessage::States {
        updates: vec![(t1[0], TaskState::Running), (t1[1], TaskState::Success)],
    });
    alice.wait_task(&t1[0].to_string(), "running", |t| t["status"] == "running");
    // A final state without a result changes nothing.
    assert_eq!(
        alice.task(&t1[1].to_string())["status"],
        "waiting-for-launch"
    );

    agent.send(&AgentMessage::Results {
        results: vec![success(t1[0], "00\nresult"), failure(t1[1])],
    });
    let mut acked = agent.recv_result_ack();
    acked.sort();
    let mut want = vec![t1[0], t1[1]];
    want.sort();
    assert_eq!(acked, want);

    let ok = alice.task(&t1[0].to_string());
    assert_eq!(ok["status"], "success");
    assert_eq!(ok["pending"], false);
    assert_eq!(ok["result"], "00\nresult");
    assert_eq!(ok["completion_t"], "1700000000.500000");
    assert_eq!(ok["task_group_id"], json!(group));
    assert_eq!(ok["function_id"], json!(f1));
    assert_eq!(ok["endpoint_id"], json!(ep));
    assert!(ok.get("exception").is_none());
    assert!(ok["created_t"].as_str().unwrap().parse::<f64>().is_ok());

    let failed = alice.task(&t1[1].to_string());
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["exception_type"], "ZeroDivisionError");
    assert_eq!(failed["exception_message"], "division by zero");
    assert!(failed["exception"]
        .as_str()
        .unwrap()
        .starts_with("Traceback"));
    assert!(failed.get("result").is_none());

    // A duplicate result is acknowledged and ignored: the first one wins.
    agent.send(&AgentMessage::Results {
        results: vec![failure(t1[0])],
    });
    assert_eq!(agent.recv_result_ack(), vec![t1[0]]);
    assert_eq!(alice.task(&t1[0].to_string())["status"], "success");

    let unknown = Uuid::new_v4().to_string();
    let batch = alice
        .post(
            "/v2/batch_status",
            &json!({"task_ids": [t1[0].to_string(), t2[0].to_string(), unknown]}),
        )
        .ok();
    assert_eq!(batch["response"], "batch");
    assert_eq!(batch["results"][t1[0].to_string()]["status"], "success");
    assert_eq!(
        batch["results"][t2[0].to_string()]["status"],
        "waiting-for-launch"
    );
    assert_eq!(batch["results"][t2[0].to_string()]["pending"], true);
    assert_eq!(
        batch["results"][&unknown],
        json!({"task_id": unknown, "status": "unknown", "pending": false, "reason": "unknown task id"})
    );

    let tg = alice.get(&format!("/v2/taskgroup/{group}")).ok();
    assert_eq!(tg["taskgroup_id"], json!(group));
    let listed: Vec<(Uuid, String)> = tg["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (uuid(&t["id"]), t["status"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(listed.len(), 3);
    // Submission order: payload order within a function, keys in body order.
    let pos = |id: Uuid| listed.iter().position(|(t, _)| *t == id).unwrap();
    assert!(pos(t1[0]) + 1 == pos(t1[1]), "{listed:?}");
    assert_eq!(listed[pos(t1[0])].1, "success");
    assert_eq!(listed[pos(t1[1])].1, "failed");
    assert_eq!(listed[pos(t2[0])].1, "waiting-for-launch");

    // Submits are durable: they are in the database file itself.
    let in_db = tasks_in_db(&svc.dir);
    assert_eq!(in_db.len(), 3);
    agent.close();
}

#[test]
fn result_stream_replays_resumes_and_goes_live() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let group = Uuid::new_v4().to_string();
    let sub = alice
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {f.clone(): ["a", "b", "c"]}, "task_group_id": group}),
        )
        .ok();
    assert_eq!(sub["task_group_id"], json!(group));
    let ids: Vec<Uuid> = sub["tasks"][&f]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    agent.recv_tasks(3);
    agent.send(&AgentMessage::Results {
        results: vec![success(ids[0], "r0")],
    });
    agent.recv_result_ack();
    agent.send(&AgentMessage::Results {
        results: vec![failure(ids[1])],
    });
    agent.recv_result_ack();

    // Replay from the start.
    let mut s = alice.stream(&group, None);
    let e1 = s.next_event();
    let e2 = s.next_event();
    assert_eq!((e1.event.as_str(), e2.event.as_str()), ("result", "result"));
    assert_eq!(uuid(&e1.data["task_id"]), ids[0]);
    assert_eq!(e1.data["result"], "r0");
    assert_eq!(uuid(&e2.data["task_id"]), ids[1]);
    assert_eq!(e2.data["exception_type"], "ZeroDivisionError");
    let (s1, s2): (i64, i64) = (e1.id.parse().unwrap(), e2.id.parse().unwrap());
    assert!(s2 > s1);

    // Resuming after the first event replays only the second.
    let mut resumed = alice.stream(&group, Some(&e1.id));
    let r = resumed.next_event();
    assert_eq!(uuid(&r.data["task_id"]), ids[1]);
    let mut by_query = alice.stream_query(&group, &e1.id);
    assert_eq!(uuid(&by_query.next_event().data["task_id"]), ids[1]);

    // A live result reaches every open stream, once.
    agent.send(&AgentMessage::Results {
        results: vec![success(ids[2], "r2")],
    });
    agent.recv_result_ack();
    for stream in [&mut s, &mut resumed, &mut by_query] {
        let live = stream.next_event();
        assert_eq!(uuid(&live.data["task_id"]), ids[2]);
        assert!(live.id.parse::<i64>().unwrap() > s2);
    }

    // Results of other groups never show up; a stream resumed after e2
    // replays the third result, then follows new ones of its own group.
    let mut tail = alice.stream(&group, Some(&e2.id));
    let other = alice.submit(&ep, json!({f.clone(): ["other"]}));
    let other_id = uuid(&other["tasks"][&f][0]);
    let more = alice
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {f.clone(): ["d"]}, "task_group_id": group}),
        )
        .ok();
    let d = uuid(&more["tasks"][&f][0]);
    agent.recv_tasks(2);
    agent.send(&AgentMessage::Results {
        results: vec![success(other_id, "x")],
    });
    agent.recv_result_ack();
    agent.send(&AgentMessage::Results {
        results: vec![success(d, "rd")],
    });
    agent.recv_result_ack();
    assert_eq!(uuid(&tail.next_event().data["task_id"]), ids[2]);
    assert_eq!(uuid(&tail.next_event().data["task_id"]), d);
    assert_eq!(uuid(&s.next_event().data["task_id"]), d);

    alice
        .get(&format!("/v3/taskgroup/{}/stream", Uuid::new_v4()))
        .error(404, "not_found");
    let msg = alice
        .call(
            "GET",
            &format!("/v3/taskgroup/{group}/stream?last_event_id=abc"),
        )
        .error(400, "bad_request");
    assert!(msg.contains("abc"), "{msg}");
    agent.close();
}

#[test]
fn a_second_agent_is_refused_naming_the_first_host() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let (ep, cred) = alice.register_endpoint("ep");
    let first = Agent::online(svc.addr, &ep, &cred, "login1");
    let mut second = Agent::connect(svc.addr, &ep, &cred).expect("upgrade");
    match second.hello("login2", 99) {
        ServiceMessage::Refused { reason } => {
            assert!(reason.contains("login1"), "{reason}");
            assert!(reason.contains("4242"), "{reason}");
            assert!(reason.contains(&ep), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    second.expect_close();
    // The first is unaffected.
    let status = alice.endpoint_status(&ep);
    assert_eq!(status["status"], "online");
    assert_eq!(status["details"]["host"], "login1");
    // Once it leaves, another may connect.
    first.close();
    wait_for("offline", || {
        (alice.endpoint_status(&ep)["status"] == "offline").then_some(())
    });
    let third = Agent::online(svc.addr, &ep, &cred, "login2");
    assert_eq!(alice.endpoint_status(&ep)["details"]["host"], "login2");
    third.close();
}

#[test]
fn agent_handshake_failures_are_explained() {
    let svc = TestService::start();
    let alice_token = svc.token("alice");
    let alice = svc.client(&alice_token);
    let (ep, cred) = alice.register_endpoint("ep");
    let (other_ep, other_cred) = alice.register_endpoint("other");

    let r = Agent::connect(svc.addr, &ep, &alice_token)
        .err()
        .expect("user token refused");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("forbidden"))
    );
    let r = Agent::connect(svc.addr, &ep, &other_cred)
        .err()
        .expect("other credential refused");
    assert_eq!(r.status, 403);
    assert!(r.body["error"].as_str().unwrap().contains(&other_ep));
    let r = Agent::connect(svc.addr, &ep, "bogus")
        .err()
        .expect("bad token refused");
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (401, Some("unauthorized"))
    );
    // A plain GET (no upgrade) gets a JSON error too.
    let msg = svc
        .client(&cred)
        .get(&format!("/v3/endpoints/{ep}/connect"))
        .error(400, "bad_request");
    assert!(msg.contains("WebSocket"), "{msg}");

    let mut old = Agent::connect(svc.addr, &ep, &cred).unwrap();
    old.send(&AgentMessage::Hello {
        version: 999,
        host: "h".into(),
        pid: 1,
        allowed_functions: vec![],
        json_only: false,
        flow_control: false,
        events: false,
    });
    match old.recv() {
        Some(ServiceMessage::Refused { reason }) => assert!(reason.contains("version"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    old.expect_close();

    let mut rude = Agent::connect(svc.addr, &ep, &cred).unwrap();
    rude.send(&AgentMessage::Ack { task_ids: vec![] });
    let closed = rude.expect_close();
    assert!(closed.reason.contains("hello"), "{closed:?}");

    // A malformed frame after the hello closes the connection with a reason.
    let mut garbled = Agent::online(svc.addr, &ep, &cred, "login1");
    garbled.send_raw("{\"type\": \"results\", \"results\": 5}");
    let closed = garbled.expect_close();
    assert!(closed.reason.contains("malformed"), "{closed:?}");
    wait_for("offline", || {
        (alice.endpoint_status(&ep)["status"] == "offline").then_some(())
    });
    // The service still works.
    Agent::online(svc.addr, &ep, &cred, "login1").close();
}

#[test]
fn endpoint_status_follows_the_connection_and_heartbeats() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let (ep, cred) = alice.register_endpoint("ep");
    assert_eq!(
        alice.endpoint_status(&ep),
        json!({"status": "offline", "details": {}})
    );
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login7");
    let status = alice.endpoint_status(&ep);
    assert_eq!(status["status"], "online");
    assert_eq!(status["details"]["host"], "login7");
    assert_eq!(status["details"]["pid"], 4242);
    assert!(status["details"]["connected_since"].as_f64().unwrap() > 1.6e9);
    assert_eq!(alice.get("/v2/endpoints").ok()[0]["status"], "online");

    let report = EndpointReport {
        managers: 2,
        total_workers: 16,
        idle_workers: 5,
        outstanding_tasks: 11,
        active_blocks: 1,
        ..Default::default()
    };
    agent.send(&AgentMessage::Heartbeat { status: report });
    let details = wait_for("heartbeat", || {
        let s = alice.endpoint_status(&ep);
        (s["details"]["managers"] == 2).then_some(s["details"].clone())
    });
    assert_eq!(details["total_workers"], 16);
    assert_eq!(details["idle_workers"], 5);
    assert_eq!(details["outstanding_tasks"], 11);
    assert_eq!(details["active_blocks"], 1);
    assert!(details["last_heartbeat"].as_f64().is_some());
    // The credential reads its own status.
    assert_eq!(svc.client(&cred).endpoint_status(&ep)["status"], "online");

    agent.close();
    wait_for("offline after close", || {
        (alice.endpoint_status(&ep)["status"] == "offline").then_some(())
    });
    // The last details stay visible.
    assert_eq!(alice.endpoint_status(&ep)["details"]["host"], "login7");
}

#[test]
fn a_silent_agent_is_dropped() {
    let svc = TestService::start_with(|c| c.heartbeat_period = 0.1);
    let alice = svc.client(&svc.token("alice"));
    let (ep, cred) = alice.register_endpoint("ep");
    let mut agent = Agent::connect(svc.addr, &ep, &cred).unwrap();
    match agent.hello("quiet", 1) {
        ServiceMessage::Welcome {
            heartbeat_period, ..
        } => assert_eq!(heartbeat_period, 0.1),
        other => panic!("{other:?}"),
    }
    let closed = agent.expect_close();
    assert!(closed.reason.contains("heartbeat"), "{closed:?}");
    assert_eq!(alice.endpoint_status(&ep)["status"], "offline");
}

#[test]
fn tasks_submitted_while_offline_are_delivered_on_connect() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let sub = alice.submit(&ep, json!({f.clone(): ["x", "y"]}));
    let ids: Vec<Uuid> = sub["tasks"][&f]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();
    assert_eq!(alice.task(&ids[0].to_string())["status"], "waiting-for-ep");
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let (tasks, functions) = agent.recv_tasks(2);
    assert_eq!(tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(), ids);
    assert_eq!(functions.len(), 1);
    // And new ones arrive live, without the code again.
    let more = alice.submit(&ep, json!({f.clone(): ["z"]}));
    let (tasks, functions) = agent.recv_tasks(1);
    assert_eq!(tasks[0].task_id, uuid(&more["tasks"][&f][0]));
    assert!(functions.is_empty());
    assert_eq!(
        alice.task(&tasks[0].task_id.to_string())["status"],
        "received"
    );
    agent.close();
}

#[test]
fn a_restart_keeps_tasks_and_resends_unfinished_ones() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let sub = alice.submit(&ep, json!({f.clone(): ["a", "b", "c"]}));
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let ids: Vec<Uuid> = sub["tasks"][&f]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    agent.recv_tasks(3);
    agent.send(&AgentMessage::Ack {
        task_ids: ids.clone(),
    });
    agent.send(&AgentMessage::Results {
        results: vec![success(ids[0], "r0")],
    });
    agent.recv_result_ack();
    alice.wait_task(&ids[1].to_string(), "ack", |t| {
        t["status"] == "waiting-for-launch"
    });
    let mut open_stream = alice.stream(&group, None);
    let first_seq: i64 = open_stream.next_event().id.parse().unwrap();

    // Shutdown ends open streams and agent connections instead of waiting
    // for them.
    let svc = svc.restart();
    open_stream.expect_end();
    let closed = agent.expect_close();
    assert!(closed.reason.contains("shutting down"), "{closed:?}");
    let alice = svc.client(&token);
    assert_eq!(alice.task(&ids[0].to_string())["result"], "r0");
    assert_eq!(
        alice.task(&ids[1].to_string())["status"],
        "waiting-for-launch"
    );
    assert_eq!(
        alice.get(&format!("/v2/functions/{f}")).ok()["function_name"],
        "f"
    );
    assert_eq!(alice.endpoint_status(&ep)["status"], "offline");

    // The reconnecting agent gets every non-final task again, and only those.
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let (tasks, functions) = agent.recv_tasks(2);
    assert_eq!(
        tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        ids[1..]
    );
    assert_eq!(functions.len(), 1);
    agent.send(&AgentMessage::Results {
        results: vec![success(ids[1], "r1")],
    });
    agent.recv_result_ack();
    // Result sequence numbers keep increasing across the restart.
    let mut s = alice.stream(&group, Some(&first_seq.to_string()));
    let e = s.next_event();
    assert_eq!(uuid(&e.data["task_id"]), ids[1]);
    assert!(e.id.parse::<i64>().unwrap() > first_seq);
    agent.close();
}

#[test]
fn users_see_only_their_own_things() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    let sub = alice.submit(&ep, json!({f.clone(): ["x"]}));
    let task = sub["tasks"][&f][0].as_str().unwrap().to_string();
    let group = sub["task_group_id"].as_str().unwrap().to_string();

    bob.get(&format!("/v2/functions/{f}"))
        .error(404, "not_found");
    bob.delete(&format!("/v2/functions/{f}"))
        .error(404, "not_found");
    bob.get(&format!("/v2/tasks/{task}"))
        .error(404, "not_found");
    bob.get(&format!("/v2/endpoints/{ep}"))
        .error(404, "not_found");
    bob.get(&format!("/v2/endpoints/{ep}/status"))
        .error(404, "not_found");
    bob.delete(&format!("/v2/endpoints/{ep}"))
        .error(404, "not_found");
    bob.get(&format!("/v2/taskgroup/{group}"))
        .error(404, "not_found");
    bob.get(&format!("/v3/taskgroup/{group}/stream"))
        .error(404, "not_found");
    assert_eq!(bob.get("/v2/endpoints").ok(), json!([]));
    let batch = bob
        .post("/v2/batch_status", &json!({"task_ids": [task]}))
        .ok();
    assert_eq!(batch["results"][&task]["status"], "unknown");

    let bf = bob.register_function("g");
    let (bep, _) = bob.register_endpoint("bep");
    let msg = bob
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {bf.clone(): ["x"]}}),
        )
        .error(403, "forbidden");
    assert!(msg.contains(&ep), "{msg}");
    let msg = bob
        .post(
            &format!("/v3/endpoints/{bep}/submit"),
            &json!({"tasks": {f.clone(): ["x"]}}),
        )
        .error(404, "not_found");
    assert!(msg.contains(&f), "{msg}");
    let msg = bob
        .post(
            &format!("/v3/endpoints/{bep}/submit"),
            &json!({"tasks": {bf.clone(): ["x"]}, "task_group_id": group}),
        )
        .error(403, "forbidden");
    assert!(msg.contains(&group), "{msg}");
    // Bob cannot take over Alice's endpoint id either.
    bob.post(
        "/v3/endpoints",
        &json!({"endpoint_name": "x", "endpoint_id": ep}),
    )
    .error(403, "forbidden");
    // Nothing of that was stored.
    assert_eq!(tasks_in_db(&svc.dir).len(), 1);
}

#[test]
fn bad_input_gets_a_json_4xx_naming_the_problem() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    let submit = format!("/v3/endpoints/{ep}/submit");

    let msg = alice
        .post_raw("/v3/functions", "{not json")
        .error(400, "bad_request");
    assert!(msg.contains("JSON"), "{msg}");
    alice
        .post_raw("/v3/functions", "")
        .error(400, "bad_request");
    alice
        .post_raw("/v3/functions", "[1, 2]")
        .error(400, "bad_request");
    let msg = alice
        .post("/v3/functions", &json!({"function_name": "x"}))
        .error(400, "bad_request");
    assert!(msg.contains("function_code"), "{msg}");
    let msg = alice
        .post(
            "/v3/functions",
            &json!({"function_name": 5, "function_code": "x"}),
        )
        .error(400, "bad_request");
    assert!(msg.contains("function_name"), "{msg}");
    let msg = alice
        .post(
            "/v3/functions",
            &json!({"function_name": "x", "function_code": "c", "metadata": [1]}),
        )
        .error(400, "bad_request");
    assert!(msg.contains("metadata"), "{msg}");
    alice
        .post(
            "/v3/functions",
            &json!({"function_name": "x", "function_code": ""}),
        )
        .error(400, "bad_request");

    let msg = alice
        .post(
            "/v3/endpoints",
            &json!({"endpoint_name": "x", "endpoint_id": "nope"}),
        )
        .error(400, "bad_request");
    assert!(msg.contains("endpoint_id"), "{msg}");
    alice
        .post("/v3/endpoints", &json!({}))
        .error(400, "bad_request");
    alice
        .post("/v3/endpoints", &json!({"endpoint_name": " "}))
        .error(400, "bad_request");

    let msg = alice.post(&submit, &json!({})).error(400, "bad_request");
    assert!(msg.contains("tasks"), "{msg}");
    let msg = alice
        .post(&submit, &json!({"tasks": {f.clone(): [1]}}))
        .error(400, "bad_request");
    assert!(msg.contains(&f), "{msg}");
    let msg = alice
        .post(&submit, &json!({"tasks": {f.clone(): "x"}}))
        .error(400, "bad_request");
    assert!(msg.contains("tasks"), "{msg}");
    let msg = alice
        .post(&submit, &json!({"tasks": {"fn-x": ["a"]}}))
        .error(400, "bad_request");
    assert!(msg.contains("fn-x"), "{msg}");
    let missing = Uuid::new_v4().to_string();
    let msg = alice
        .post(&submit, &json!({"tasks": {missing.clone(): ["a"]}}))
        .error(404, "not_found");
    assert!(msg.contains(&missing), "{msg}");
    let msg = alice
        .post(&submit, &json!({"tasks": {}, "task_group_id": "tg"}))
        .error(400, "bad_request");
    assert!(msg.contains("task_group_id"), "{msg}");
    let msg = alice
        .post(&submit, &json!({"tasks": {}, "resource_specification": 3}))
        .error(400, "bad_request");
    assert!(msg.contains("resource_specification"), "{msg}");
    let nowhere = Uuid::new_v4().to_string();
    let msg = alice
        .post(
            &format!("/v3/endpoints/{nowhere}/submit"),
            &json!({"tasks": {f.clone(): ["a"]}}),
        )
        .error(404, "not_found");
    assert!(msg.contains(&nowhere), "{msg}");
    let msg = alice
        .post("/v3/endpoints/xyz/submit", &json!({"tasks": {}}))
        .error(400, "bad_request");
    assert!(msg.contains("xyz"), "{msg}");

    for path in [
        "/v2/tasks/abc",
        "/v2/endpoints/abc",
        "/v2/endpoints/abc/status",
        "/v2/taskgroup/abc",
        "/v3/taskgroup/abc/stream",
    ] {
        let msg = alice.get(path).error(400, "bad_request");
        assert!(msg.contains("abc"), "{path}: {msg}");
    }
    let unknown = Uuid::new_v4().to_string();
    for path in [
        "/v2/tasks/",
        "/v2/endpoints/",
        "/v2/taskgroup/",
        "/v2/functions/",
    ] {
        let msg = alice
            .get(&format!("{path}{unknown}"))
            .error(404, "not_found");
        assert!(msg.contains(&unknown), "{path}: {msg}");
    }
    let msg = alice
        .post("/v2/batch_status", &json!({"task_ids": ["zzz"]}))
        .error(400, "bad_request");
    assert!(msg.contains("zzz"), "{msg}");
    alice
        .post("/v2/batch_status", &json!({"task_ids": "zzz"}))
        .error(400, "bad_request");

    let msg = alice.get("/v9/nothing").error(404, "not_found");
    assert!(msg.contains("/v9/nothing"), "{msg}");
    let msg = alice
        .call("PUT", "/v3/functions")
        .error(405, "method_not_allowed");
    assert!(msg.contains("POST"), "{msg}");
    alice
        .call("POST", "/v2/version")
        .error(405, "method_not_allowed");
    // Percent-encoded junk in a path segment.
    alice.get("/v2/tasks/%FF%FE").error(400, "bad_request");
}

#[test]
fn an_oversized_body_is_413_json() {
    let svc = TestService::start_with(|c| c.max_request_bytes = 4096);
    let alice = svc.client(&svc.token("alice"));
    let (ep, _) = alice.register_endpoint("ep");
    let f = alice.register_function("f");
    let big = "x".repeat(8192);
    let msg = alice
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {f.clone(): [big]}}),
        )
        .error(413, "payload_too_large");
    assert!(msg.contains("4096"), "{msg}");
    alice
        .post(
            "/v3/functions",
            &json!({"function_name": "g", "function_code": "y".repeat(5000)}),
        )
        .error(413, "payload_too_large");
    // Just under the limit is fine.
    alice.submit(&ep, json!({f: ["x".repeat(3000)]}));
}

/// (method, path) rows of the route table in docs/api.md.
fn documented_routes() -> Vec<(String, String)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (method, path) = (*cells.get(1)?, *cells.get(2)?);
            (["GET", "POST", "DELETE"].contains(&method) && path.starts_with('/'))
                .then(|| (method.to_string(), path.to_string()))
        })
        .collect()
}

#[test]
fn openapi_lists_every_documented_route_and_each_is_answered() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let doc = svc.anonymous().get("/openapi.json").ok();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    let paths = doc["paths"].as_object().unwrap();
    let documented = documented_routes();
    assert!(documented.len() >= 16, "{documented:?}");
    let mut in_openapi = BTreeSet::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            in_openapi.insert((method.to_uppercase(), path.clone()));
        }
    }
    let documented_set: BTreeSet<_> = documented.iter().cloned().collect();
    assert_eq!(
        in_openapi, documented_set,
        "openapi.json and docs/api.md disagree"
    );

    // Every documented route is routed: never the fallback's "no route" nor 405.
    let id = Uuid::new_v4().to_string();
    for (method, path) in &documented {
        let op = &paths[path.as_str()][method.to_lowercase()];
        let path = path.replace("{id}", &id);
        if op["responses"]["200"]["content"]["application/json"].is_null() {
            // The dashboard's pages: answered, whatever the status, as text.
            let status = match ureq::request(method, &svc.url(&path)).call() {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(code, _)) => code,
                Err(e) => panic!("{method} {path}: {e}"),
            };
            assert!(status != 404 && status != 405, "{method} {path}: {status}");
            continue;
        }
        let answer = match method.as_str() {
            "POST" => alice.post_raw(&path, "{}"),
            m => alice.call(m, &path),
        };
        assert_ne!(answer.status, 405, "{method} {path}: {answer:?}");
        let unrouted = answer.body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no route"));
        assert!(!unrouted, "{method} {path} is not routed: {answer:?}");
    }
}

#[test]
fn thousands_of_tasks_page_out_and_stream_back_complete() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    const N: usize = 5000;
    let payloads: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    let sub = alice.submit(&ep, json!({f.clone(): payloads}));
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let ids: Vec<Uuid> = sub["tasks"][&f]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();

    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    // 5000 tasks arrive in several pages of at most 2000.
    let mut got = Vec::new();
    while got.len() < N {
        match agent.recv() {
            Some(ServiceMessage::Tasks { tasks, .. }) => {
                assert!(tasks.len() <= 2000);
                got.extend(tasks.into_iter().map(|t| t.task_id));
            }
            other => panic!("expected tasks, got {other:?}"),
        }
    }
    assert_eq!(got, ids);

    // Open the stream, then store far more results than the notification
    // channel holds while nobody reads it.
    let mut stream = alice.stream(&group, None);
    for chunk in ids.chunks(1000) {
        agent.send(&AgentMessage::Results {
            results: chunk.iter().map(|id| success(*id, "r")).collect(),
        });
        agent.recv_result_ack();
    }
    let mut seen = BTreeSet::new();
    let mut last = 0i64;
    while seen.len() < N {
        let e = stream.next_event();
        let seq: i64 = e.id.parse().unwrap();
        assert!(seq > last, "event ids increase");
        last = seq;
        assert!(
            seen.insert(uuid(&e.data["task_id"])),
            "no duplicates within one stream"
        );
    }
    assert_eq!(seen, ids.iter().copied().collect());
    agent.close();
}

#[test]
fn large_payloads_are_split_across_frames() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    // Three 3 MiB payloads: under the 10 MiB request limit together, but
    // more than one 4 MiB frame can carry.
    let payloads: Vec<String> = (0..3).map(|i| format!("{i}").repeat(3 << 20)).collect();
    let sub = alice.submit(&ep, json!({f.clone(): payloads.clone()}));
    let ids: Vec<Uuid> = sub["tasks"][&f]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid)
        .collect();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let mut frames = 0;
    let mut got = Vec::new();
    while got.len() < 3 {
        match agent.recv() {
            Some(ServiceMessage::Tasks { tasks, .. }) => {
                frames += 1;
                got.extend(tasks.into_iter().map(|t| (t.task_id, t.payload)));
            }
            other => panic!("expected tasks, got {other:?}"),
        }
    }
    assert_eq!(frames, 3, "each 3 MiB task travels in its own frame");
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    assert!(got.iter().zip(&payloads).all(|((_, p), q)| p == q));
    agent.close();
}

#[test]
fn priorities_and_function_defaults_order_the_backlog_across_a_restart() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let plain_fn = alice.register_function("plain");
    let body = json!({"function_name": "urgent", "function_code": "st\nurgent:def urgent(): pass",
        "resource_specification": {"priority": 3, "walltime": 60}});
    let urgent_fn = alice.post("/v3/functions", &body).ok()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = alice.get(&format!("/v2/functions/{urgent_fn}")).ok();
    assert_eq!(
        doc["resource_specification"],
        json!({"priority": 3, "walltime": 60})
    );
    let (ep, cred) = alice.register_endpoint("ep");
    let submit = |function: &str, spec: Value| -> Uuid {
        let body = json!({"tasks": {function: ["x"]}, "resource_specification": spec});
        let answer = alice
            .post(&format!("/v3/endpoints/{ep}/submit"), &body)
            .ok();
        uuid(&answer["tasks"][function][0])
    };
    // Queued while the endpoint is offline, in the opposite of their order.
    let low = submit(&plain_fn, json!({"priority": -2}));
    let plain = submit(&plain_fn, json!({}));
    let overridden = submit(&urgent_fn, json!({"priority": -1, "walltime": 5}));
    let defaulted = submit(&urgent_fn, json!({}));
    let high = submit(&plain_fn, json!({"priority": 7}));
    for bad in [json!(5000), json!(1.5), json!("high")] {
        let body = json!({"tasks": {plain_fn.clone(): ["x"]},
            "resource_specification": {"priority": bad}});
        let why = alice
            .post(&format!("/v3/endpoints/{ep}/submit"), &body)
            .error(400, "bad_request");
        assert!(why.contains("priority") && why.contains("1000"), "{why}");
    }
    let body = json!({"function_name": "bad", "function_code": "st\nbad:def bad(): pass",
        "resource_specification": {"priority": -5000}});
    let why = alice.post("/v3/functions", &body).error(400, "bad_request");
    assert!(why.contains("priority"), "{why}");

    let svc = svc.restart();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let (tasks, _) = agent.recv_tasks(5);
    let order: Vec<Uuid> = tasks.iter().map(|t| t.task_id).collect();
    assert_eq!(order, [high, defaulted, plain, overridden, low]);
    let spec = |id: Uuid| -> Value {
        let t = tasks.iter().find(|t| t.task_id == id).unwrap();
        serde_json::from_str(t.resource_spec.as_deref().unwrap()).unwrap()
    };
    assert_eq!(spec(defaulted), json!({"priority": 3, "walltime": 60}));
    assert_eq!(spec(overridden), json!({"priority": -1, "walltime": 5}));
    agent.close();
}
