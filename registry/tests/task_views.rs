//! How owners see their tasks, against a running service: `GET /v3/tasks`
//! (filters, pages, whose tasks a caller sees, refused parameters; with
//! `HPFAAS_HEAVY=1`, how long a page takes among a million tasks, printed,
//! never asserted) and the timeline of `GET /v2/tasks/{id}`.

mod common;

use common::*;
use hpfaas_protocol::endpoint::AgentMessage;
use hpfaas_protocol::task::{Placement, TaskState};
use serde_json::{json, Value};

/// Task ids of a list answer, in order.
fn listed(answer: &Value) -> Vec<String> {
    answer["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect()
}

fn ids_of(answer: &Value, function: &str) -> Vec<String> {
    task_ids(answer, function)
        .iter()
        .map(|u| u.to_string())
        .collect()
}

#[test]
fn the_list_pages_newest_first_with_filters_and_only_the_callers_tasks() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let f = alice.register_function("f");
    let g = alice.register_function("g");
    let (ep, _) = alice.register_endpoint("ep");
    let first = alice.submit(&ep, json!({f.clone(): ["11\n[1]", "11\n[2]", "11\n[3]"]}));
    let second = alice.submit(&ep, json!({g.clone(): ["11\n[4]"]}));
    // Bob submits to Alice's endpoint, shared with him: Alice never sees it.
    alice
        .post(
            &format!("/v3/endpoints/{ep}/share"),
            &json!({"users": ["bob"]}),
        )
        .ok();
    let bf = bob.register_function("bf");
    let bobs = bob.submit(&ep, json!({bf.clone(): ["11\n[5]"]}));

    let mut newest_first = ids_of(&first, &f);
    newest_first.extend(ids_of(&second, &g));
    newest_first.reverse();
    let all = alice.get("/v3/tasks").ok();
    assert_eq!(listed(&all), newest_first);
    assert_eq!(all["next_cursor"], Value::Null);
    let task = &all["tasks"][0];
    assert_eq!(task["status"], "waiting-for-ep");
    assert_eq!(task["function_id"], json!(g));
    assert_eq!(task["endpoint_id"], json!(ep));
    assert!(task.get("result").is_none());

    // Pages of two, joined by the cursor; a submit in between shifts nothing.
    let page1 = alice.get("/v3/tasks?limit=2").ok();
    assert_eq!(listed(&page1), newest_first[..2]);
    alice.submit(&ep, json!({f.clone(): ["11\n[6]"]}));
    let cursor = page1["next_cursor"].as_str().expect("a cursor").to_string();
    let page2 = alice
        .get(&format!("/v3/tasks?limit=2&cursor={cursor}"))
        .ok();
    assert_eq!(listed(&page2), newest_first[2..4]);

    // Filters.
    let by_function = alice.get(&format!("/v3/tasks?function_id={g}")).ok();
    assert_eq!(listed(&by_function), ids_of(&second, &g));
    let group = first["task_group_id"].as_str().unwrap();
    let by_group = alice
        .get(&format!(
            "/v3/tasks?task_group_id={group}&status=waiting-for-ep"
        ))
        .ok();
    assert_eq!(listed(&by_group).len(), 3);
    let none = alice.get("/v3/tasks?status=failed").ok();
    assert!(listed(&none).is_empty());
    let future = alice.get("/v3/tasks?since=99999999999").ok();
    assert!(listed(&future).is_empty());
    let past = alice.get("/v3/tasks?until=1").ok();
    assert!(listed(&past).is_empty());

    let theirs = bob.get(&format!("/v3/tasks?endpoint_id={ep}")).ok();
    assert_eq!(listed(&theirs), ids_of(&bobs, &bf));

    for (query, name) in [
        ("status=finished", "status"),
        ("endpoint_id=x", "endpoint_id"),
        ("function_id=1", "function_id"),
        ("task_group_id=", "task_group_id"),
        ("since=today", "since"),
        ("until=-5", "until"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("cursor=AAAA", "cursor"),
        ("colour=red", "colour"),
    ] {
        let message = alice
            .get(&format!("/v3/tasks?{query}"))
            .error(400, "bad_request");
        assert!(message.contains(name), "{query}: {message}");
    }
    assert_eq!(svc.anonymous().get("/v3/tasks").status, 401);
}

#[test]
fn a_page_among_a_million_tasks_stays_fast() {
    if std::env::var_os("HPFAAS_HEAVY").is_none_or(|v| v != "1") {
        eprintln!("skipped: set HPFAAS_HEAVY=1 to list among 1,000,000 tasks");
        return;
    }
    let mut svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    let answer = alice.submit(&ep, json!({f.clone(): ["11\n[1]"]}));
    let group = answer["task_group_id"].as_str().unwrap().to_string();
    svc.stop();
    // A million rows written straight into the database (through the API
    // it would take most of an hour): spread over 100 groups, the states,
    // and three days of submission times.
    let started = std::time::Instant::now();
    {
        let conn = rusqlite::Connection::open(svc.dir.join("registry.db")).unwrap();
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
             INSERT INTO tasks (id, owner, endpoint_id, function_id, group_id, state, done, created)
             SELECT printf('00000000-0000-4000-8000-%012d', i), t.owner, t.endpoint_id, t.function_id,
                    CASE WHEN i % 100 = 0 THEN '{group}' ELSE printf('00000000-0000-4000-9000-%012d', i % 100) END,
                    CASE i % 4 WHEN 0 THEN 'success' WHEN 1 THEN 'failed'
                               WHEN 2 THEN 'running' ELSE 'received' END,
                    i % 4 < 2, 1700000000 + i * 0.25
             FROM n, (SELECT owner, endpoint_id, function_id FROM tasks LIMIT 1) t;"
        ))
        .unwrap();
    }
    eprintln!(
        "inserted 1,000,000 tasks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let svc = svc.restart();
    let alice = svc.client(&svc.token("alice"));
    for query in [
        String::new(),
        "status=failed".into(),
        format!("endpoint_id={ep}"),
        format!("function_id={f}"),
        format!("task_group_id={group}"),
        "since=1700100000&until=1700200000".into(),
        "status=running&until=1700050000".into(),
    ] {
        // Walk five pages of 1000, the last one deep in the list.
        let started = std::time::Instant::now();
        let mut cursor = String::new();
        let mut seen = 0;
        for _ in 0..5 {
            let page = alice
                .get(&format!("/v3/tasks?limit=1000&{query}{cursor}"))
                .ok();
            seen += listed(&page).len();
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert!(seen > 0, "{query}: nothing listed");
        eprintln!(
            "GET /v3/tasks?{query}: {seen} tasks in {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

#[test]
fn a_task_detail_shows_its_timeline_and_where_it_ran() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let answer = alice.submit(&ep, json!({f.clone(): ["11\n[1]"]}));
    let id = task_ids(&answer, &f)[0];
    let timeline = |doc: &Value| doc["timeline"].clone();
    let fresh = alice.task(&id.to_string());
    assert!(timeline(&fresh)["submitted"].is_string());
    assert_eq!(timeline(&fresh)["started"], Value::Null);
    assert!(fresh.get("placement").is_none());

    agent.recv_tasks(1);
    agent.send(&AgentMessage::Ack { task_ids: vec![id] });
    agent.send(&AgentMessage::States {
        updates: vec![(id, TaskState::Running)],
    });
    let running = alice.wait_task(&id.to_string(), "running", |t| t["status"] == "running");
    assert!(timeline(&running)["dispatched"].is_string());
    assert!(timeline(&running)["started"].is_string());

    let mut result = success(id, "11\n2");
    result.placement = Some(Box::new(Placement {
        started_at: 1_700_000_000.25,
        block_id: "4".into(),
        manager_id: "m-1".into(),
        worker: 3,
        host: "node9".into(),
    }));
    agent.send(&AgentMessage::Results {
        results: vec![result],
    });
    let done = alice.wait_task(&id.to_string(), "success", |t| t["status"] == "success");
    assert_eq!(timeline(&done)["started"], "1700000000.250000");
    assert!(timeline(&done)["finished"].is_string());
    assert_eq!(
        done["placement"],
        json!({"block_id": "4", "manager_id": "m-1", "worker": 3, "host": "node9"})
    );
    // Reading the result is the last moment: the next read shows it.
    let fetched = wait_for("the result marked fetched", || {
        let doc = alice.task(&id.to_string());
        timeline(&doc)["result_fetched"].is_string().then_some(doc)
    });
    assert_eq!(fetched["result"], "11\n2");
}
