//! Endpoint blocks and events on the service, from a fake agent over a
//! real WebSocket: blocks in `GET /v2/endpoints/{id}/status`, events in
//! `GET /v3/endpoints/{id}/events` (kept to the last `KEPT`, across a
//! restart), who may read them, and bad events frames.

mod common;

use common::*;
use hpfaas_protocol::endpoint::{
    AgentMessage, BlockReport, EndpointEvent, EndpointReport, EventKind, ServiceMessage,
};
use hpfaas_registry::db::events::KEPT;
use serde_json::{json, Value};

fn failed(n: usize) -> EndpointEvent {
    EndpointEvent::new(
        1.7e9 + n as f64,
        EventKind::BlockFailed,
        format!("sbatch: error: invalid partition specified: nope ({n})"),
    )
    .block(&n.to_string(), None)
}

/// The endpoint's events (all kept ones), once `pred` holds for them.
fn events_when(http: &Http, ep: &str, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(what, || {
        let answer = http
            .get(&format!("/v3/endpoints/{ep}/events?limit=500"))
            .ok();
        let events = answer["events"].as_array().unwrap().clone();
        pred(&events).then_some(events)
    })
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[test]
fn blocks_and_events_reach_the_owner_and_users_it_is_shared_with() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let carol = svc.client(&svc.token("carol"));
    let (ep, cred) = alice.register_endpoint("ep");
    alice
        .post(
            &format!("/v3/endpoints/{ep}/share"),
            &json!({"users": ["bob"]}),
        )
        .ok();
    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    let deadline = hpfaas_protocol::task::now_unix() + 3600.0;
    agent.send(&AgentMessage::Heartbeat {
        status: EndpointReport {
            managers: 1,
            total_workers: 4,
            active_blocks: 1,
            blocks: vec![BlockReport {
                block_id: "3".into(),
                job_id: "4711".into(),
                provider: "slurm".into(),
                state: "running".into(),
                nodes: 1,
                managers: 1,
                workers: 4,
                submitted_at: 1.7e9,
                started_at: Some(1.7e9 + 5.0),
                deadline: Some(deadline),
            }],
            ..Default::default()
        },
    });
    agent.send(&AgentMessage::Events {
        events: vec![failed(1)],
    });
    for reader in [&alice, &bob] {
        let block = wait_for("the block in the status", || {
            let s = reader.endpoint_status(&ep);
            s["details"]["blocks"].get(0).cloned()
        });
        assert_eq!(block["job_id"], "4711");
        assert_eq!(block["workers"], 4);
        assert_eq!(block["started_at"], 1.7e9 + 5.0);
        let left = block["walltime_left"].as_f64().unwrap();
        assert!((3000.0..=3600.0).contains(&left), "{left}");
        let events = events_when(reader, &ep, "the failure", |e| e.len() >= 2);
        assert_eq!(kinds(&events), ["agent_connected", "block_failed"]);
        assert!(events[0]["message"].as_str().unwrap().contains("login1"));
        assert!(events[1]["message"]
            .as_str()
            .unwrap()
            .contains("invalid partition specified"));
        assert_eq!(events[1]["block_id"], "1");
    }
    // Its own credential reads them too; anyone else gets 404.
    assert_eq!(
        svc.client(&cred)
            .get(&format!("/v3/endpoints/{ep}/events"))
            .ok()["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    carol
        .get(&format!("/v3/endpoints/{ep}/events"))
        .error(404, "not_found");
    carol
        .get(&format!("/v2/endpoints/{ep}/status"))
        .error(404, "not_found");
    // Bad queries are named.
    let msg = alice
        .get(&format!("/v3/endpoints/{ep}/events?limit=501"))
        .error(400, "bad_request");
    assert!(msg.contains("limit"), "{msg}");
    let msg = alice
        .get(&format!("/v3/endpoints/{ep}/events?since=-1"))
        .error(400, "bad_request");
    assert!(msg.contains("since"), "{msg}");
    agent.close();
    events_when(&alice, &ep, "the disconnection", |e| {
        kinds(e).last() == Some(&"agent_disconnected")
    });
}

#[test]
fn an_endpoint_keeps_its_last_events_across_a_restart() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let (ep, cred) = alice.register_endpoint("ep");
    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    let all: Vec<EndpointEvent> = (0..KEPT + 10).map(failed).collect();
    for frame in all.chunks(200) {
        agent.send(&AgentMessage::Events {
            events: frame.to_vec(),
        });
    }
    let last = format!("({})", KEPT + 9);
    let kept = events_when(&alice, &ep, "the last event", |e| {
        e.last()
            .is_some_and(|e| e["message"].as_str().unwrap().contains(&last))
    });
    assert_eq!(kept.len(), KEPT);
    assert!(kept[0]["message"].as_str().unwrap().contains("(10)"));
    // Paging after a seq gives what follows it.
    let seq = kept[KEPT - 3]["seq"].as_i64().unwrap();
    let after = alice
        .get(&format!("/v3/endpoints/{ep}/events?since={seq}"))
        .ok();
    assert_eq!(after["events"].as_array().unwrap().len(), 2);
    assert_eq!(after["last_seq"], kept[KEPT - 1]["seq"]);
    agent.close();
    events_when(&alice, &ep, "the disconnection", |e| {
        kinds(e).last() == Some(&"agent_disconnected")
    });

    let svc = svc.restart();
    let alice = svc.client(&svc.token("alice"));
    let back = alice
        .get(&format!("/v3/endpoints/{ep}/events?limit=500"))
        .ok();
    let back = back["events"].as_array().unwrap();
    assert_eq!(back.len(), KEPT);
    assert_eq!(kinds(back).last(), Some(&"agent_disconnected"));
}

#[test]
fn bad_events_frames_close_the_link_naming_the_fault() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let (ep, cred) = alice.register_endpoint("ep");

    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    agent.send(&AgentMessage::Events {
        events: (0..257).map(failed).collect(),
    });
    let closed = agent.expect_close();
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(closed.reason.contains("257 events"), "{closed:?}");

    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    agent.send_raw(r#"{"type":"events","events":[{"time":1,"kind":"exploded"}]}"#);
    let closed = agent.expect_close();
    assert_eq!(closed.code, Some(1007), "{closed:?}");
    assert!(closed.reason.contains("malformed frame"), "{closed:?}");

    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    agent.send_raw(r#"{"type":"events","events":[{"time":-5,"kind":"block_failed"}]}"#);
    let closed = agent.expect_close();
    assert!(closed.reason.contains("time"), "{closed:?}");

    // None of it was stored; the endpoint takes a good agent afterwards.
    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    agent.send(&AgentMessage::Events {
        events: vec![failed(7)],
    });
    let events = events_when(&alice, &ep, "the good event", |e| {
        kinds(e).contains(&"block_failed")
    });
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "block_failed")
            .count(),
        1
    );
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "agent_disconnected")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("257 events")),
        "the service recorded why it closed the link: {reasons:?}"
    );
    agent.close();
}

#[test]
fn an_agent_that_does_not_offer_events_is_not_told_to_send_them() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let (ep, cred) = alice.register_endpoint("ep");
    let mut agent = Agent::connect(svc.addr, &ep, &cred).unwrap();
    match agent.hello("old", 1) {
        ServiceMessage::Welcome { events, .. } => assert!(!events),
        other => panic!("{other:?}"),
    }
    agent.close();
}

#[test]
fn deleting_an_endpoint_deletes_its_events_even_the_last_disconnection() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let (ep, cred) = alice.register_endpoint("ep");
    let (kept, kept_cred) = alice.register_endpoint("kept");
    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    let other = Agent::online_with_events(&svc, &kept, &kept_cred);
    agent.send(&AgentMessage::Events {
        events: vec![failed(1)],
    });
    events_when(&alice, &ep, "the failure", |e| e.len() >= 2);
    alice.delete(&format!("/v2/endpoints/{ep}")).ok();
    // The service closes the deleted endpoint's link; its closing is an event
    // the service would record, after the deletion.
    agent.expect_close();
    other.close();
    events_when(&alice, &kept, "the other endpoint's disconnection", |e| {
        kinds(e).last() == Some(&"agent_disconnected")
    });
    // Both disconnections were queued before the other's was read back, so
    // both reached the database by now.
    let count = |id: &str| -> i64 {
        let db = rusqlite::Connection::open(svc.dir.join("registry.db")).unwrap();
        db.query_row(
            "SELECT count(*) FROM endpoint_events WHERE endpoint_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count(&ep), 0, "the deleted endpoint's events are gone");
    assert_eq!(count(&kept), 2, "the other endpoint keeps its own");
}
