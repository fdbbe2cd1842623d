//! The live views over server-sent events, against a real service and a
//! fake agent on a real WebSocket: an endpoint's status and events as they
//! change (resumable with Last-Event-ID, ended when the reader loses
//! access), and a user's overview (throughput and endpoints), for whom.

mod common;

use std::time::Duration;

use common::*;
use hpfaas_protocol::endpoint::{
    AgentMessage, BlockReport, EndpointEvent, EndpointReport, EventKind,
};
use serde_json::json;

/// The next event of `stream` named `kind` for which `pred` holds (others skipped).
fn next_where(stream: &mut SseReader, kind: &str, pred: impl Fn(&SseEvent) -> bool) -> SseEvent {
    loop {
        let e = stream.next_event();
        if e.event == kind && pred(&e) {
            return e;
        }
    }
}

#[test]
fn an_endpoint_view_follows_status_and_events_and_resumes() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let (ep, cred) = alice.register_endpoint("ep");
    let path = format!("/v3/endpoints/{ep}/events/stream");

    let mut view = alice.sse(&path, None);
    let first = view.next_event();
    assert_eq!(
        (first.event.as_str(), &first.data["status"]),
        ("status", &json!("offline"))
    );

    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    next_where(&mut view, "status", |e| e.data["status"] == "online");
    let connected = next_where(&mut view, "endpoint_event", |_| true);
    assert_eq!(connected.data["kind"], "agent_connected");
    assert_eq!(connected.id, connected.data["seq"].to_string());

    agent.send(&AgentMessage::Heartbeat {
        status: EndpointReport {
            managers: 1,
            total_workers: 2,
            active_blocks: 1,
            blocks: vec![BlockReport {
                block_id: "0".into(),
                job_id: "77".into(),
                provider: "slurm".into(),
                state: "pending".into(),
                nodes: 1,
                managers: 0,
                workers: 0,
                submitted_at: 1.7e9,
                started_at: None,
                deadline: None,
            }],
            ..Default::default()
        },
    });
    let status = next_where(&mut view, "status", |e| {
        e.data["details"]["blocks"].get(0).is_some()
    });
    assert_eq!(status.data["details"]["blocks"][0]["job_id"], "77");

    let message = "sbatch: error: invalid partition specified: nope";
    agent.send(&AgentMessage::Events {
        events: vec![
            EndpointEvent::new(1.7e9, EventKind::BlockFailed, message).block("0", Some("77"))
        ],
    });
    let failed = next_where(&mut view, "endpoint_event", |_| true);
    assert_eq!(failed.data["kind"], "block_failed");
    assert_eq!(failed.data["message"], message);

    // A reader that reconnects after the first event gets the second, once.
    let mut resumed = alice.sse(&path, Some(&connected.id));
    let again = next_where(&mut resumed, "endpoint_event", |_| true);
    assert_eq!(again.id, failed.id);
    // One without Last-Event-ID starts with the endpoint's recent events.
    let mut fresh = alice.sse(&path, None);
    let oldest = next_where(&mut fresh, "endpoint_event", |_| true);
    assert_eq!(oldest.id, connected.id);
    // The endpoint's own credential may watch too.
    let mut own = svc.client(&cred).sse(&path, None);
    assert_eq!(own.next_event().event, "status");

    agent.close();
    next_where(&mut view, "status", |e| e.data["status"] == "offline");
    let gone = next_where(&mut view, "endpoint_event", |_| true);
    assert_eq!(gone.data["kind"], "agent_disconnected");
}

#[test]
fn an_endpoint_view_is_refused_or_ended_for_whoever_may_not_read_it() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob_token = svc.token("bob");
    let (ep, _cred) = alice.register_endpoint("ep");
    let path = format!("/v3/endpoints/{ep}/events/stream");

    svc.client(&svc.token("carol"))
        .get(&path)
        .error(404, "not_found");
    svc.anonymous().get(&path).error(401, "unauthorized");
    let msg = alice
        .get(&format!("{path}?last_event_id=-3"))
        .error(400, "bad_request");
    assert!(msg.contains("last_event_id"), "{msg}");
    alice
        .get(&format!(
            "/v3/endpoints/{}/events/stream",
            uuid::Uuid::new_v4()
        ))
        .error(404, "not_found");

    // Bob may watch while the endpoint is shared with him; once it is not,
    // his view ends (at the latest at the next keep-alive, 15 s) with an
    // error naming why. His client waits longer than the usual WAIT.
    alice
        .post(
            &format!("/v3/endpoints/{ep}/share"),
            &json!({"users": ["bob"]}),
        )
        .ok();
    let patient = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build();
    let bob = Http::with_agent(svc.url(""), Some(bob_token), patient);
    let mut view = bob.sse(&path, None);
    assert_eq!(view.next_event().event, "status");
    let share = format!("/v3/endpoints/{ep}/share");
    alice
        .send(alice.request("DELETE", &share), &json!({"users": ["bob"]}))
        .ok();
    let end = next_where(&mut view, "error", |_| true);
    assert_eq!(end.data["code"], "not_found");
    view.expect_end();
}

#[test]
fn the_overview_follows_endpoints_and_throughput_of_its_user_only() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let (ep, cred) = alice.register_endpoint("ep");
    let (bobs_ep, _) = bob.register_endpoint("bobs");
    let function = alice.register_function("f");

    let mut view = alice.sse("/v3/activity/stream", None);
    let first = view.next_event();
    assert_eq!(first.event, "overview");
    let endpoints = first.data["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "only alice's endpoints: {endpoints:?}");
    assert_eq!(endpoints[0]["endpoint_id"], ep.as_str());
    assert_eq!(endpoints[0]["status"], "offline");
    assert!(!first.data.to_string().contains(&bobs_ep));

    let mut agent = Agent::online_with_events(&svc, &ep, &cred);
    next_where(&mut view, "overview", |e| {
        e.data["endpoints"][0]["status"] == "online"
    });
    let submitted = alice.submit(&ep, json!({ function.clone(): ["11\n1"] }));
    let task = uuid(&submitted["tasks"][&function][0]);
    agent.recv_tasks(1);
    agent.send(&AgentMessage::Results {
        results: vec![success(task, "00\nr")],
    });
    let busy = next_where(&mut view, "overview", |e| {
        e.data["activity"]["finished_per_second"].as_f64() > Some(0.0)
    });
    let minutes = busy.data["activity"]["last_hour"].as_array().unwrap();
    assert_eq!(minutes.last().unwrap()["finished"], 1);

    // An endpoint credential is not a user.
    svc.client(&cred)
        .get("/v3/activity/stream")
        .error(403, "forbidden");
    agent.close();
}
