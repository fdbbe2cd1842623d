//! Task dependencies through the REST API and real endpoint links: a
//! dependent on another endpoint is held, then dispatched there with its
//! parent's result once the parent's endpoint reports it; references are
//! checked (unknown, another user's, malformed).

mod common;

use common::*;
use hpfaas_protocol::endpoint::AgentMessage;
use hpfaas_protocol::payload::{pack, unpack};
use serde_json::json;

#[test]
fn a_dependent_waits_on_its_endpoint_until_the_parent_on_another_succeeds() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep1, cred1) = alice.register_endpoint("ep1");
    let (ep2, cred2) = alice.register_endpoint("ep2");
    let mut agent1 = Agent::online(svc.addr, &ep1, &cred1, "node1");
    let mut agent2 = Agent::online(svc.addr, &ep2, &cred2, "node2");
    let args = pack(&["11\n[]", "11\n{}"]);
    let parent = task_ids(&alice.submit(&ep1, json!({f.clone(): [args.clone()]})), &f)[0];
    let child = alice
        .post(
            &format!("/v3/endpoints/{ep2}/submit"),
            &json!({"tasks": {f.clone(): [args.clone()]},
                    "depends_on": {f.clone(): [[parent.to_string()]]}}),
        )
        .ok();
    let child = task_ids(&child, &f)[0];
    assert_eq!(
        alice.task(&child.to_string())["status"],
        "waiting-for-dependencies"
    );
    let listed = alice.get("/v3/tasks?status=waiting-for-dependencies").ok();
    assert_eq!(listed["tasks"][0]["task_id"], child.to_string(), "{listed}");
    // Globus Compute clients see a task that has not finished.
    assert_eq!(listed["tasks"][0]["pending"], true);

    // Another plain task on ep2 goes out at once; the held one does not.
    let plain = task_ids(&alice.submit(&ep2, json!({f.clone(): [args.clone()]})), &f)[0];
    let (sent, _) = agent2.recv_tasks(1);
    assert_eq!(sent[0].task_id, plain);
    let (sent, _) = agent1.recv_tasks(1);
    assert_eq!(sent[0].task_id, parent);
    agent1.send(&AgentMessage::Results {
        results: vec![success(parent, "11\n42")],
    });
    // ep2's link has passed the child's place: it gets it all the same.
    let (sent, _) = agent2.recv_tasks(1);
    assert_eq!(sent[0].task_id, child);
    let buffers = unpack(&sent[0].payload).unwrap();
    assert_eq!(buffers.len(), 3);
    assert_eq!(buffers[2], format!("dr\n{}", pack(&["11\n42"])));
}

#[test]
fn references_are_checked_without_telling_whose_a_task_is() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    let args = pack(&["11\n[]", "11\n{}"]);
    let parent = task_ids(&alice.submit(&ep, json!({f.clone(): [args.clone()]})), &f)[0];
    let g = bob.register_function("g");
    let (bob_ep, _) = bob.register_endpoint("bob-ep");
    let submit = |who: &Http, ep: &str, fid: &str, depends_on: serde_json::Value| {
        who.post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {fid: [args.clone()]}, "depends_on": depends_on}),
        )
    };
    let foreign = submit(
        &bob,
        &bob_ep,
        &g,
        json!({g.clone(): [[parent.to_string()]]}),
    )
    .error(404, "not_found");
    let unknown = submit(
        &bob,
        &bob_ep,
        &g,
        json!({g.clone(): [[uuid::Uuid::new_v4()]]}),
    )
    .error(404, "not_found");
    // The same words but for the id: nothing says the first task exists.
    assert_eq!(
        foreign.replace(&parent.to_string(), "X"),
        unknown
            .split(' ')
            .map(|w| if w.len() == 36 { "X" } else { w })
            .collect::<Vec<_>>()
            .join(" ")
    );
    submit(&alice, &ep, &f, json!({f.clone(): [["not-a-uuid"]]})).error(400, "bad_request");
    submit(
        &alice,
        &ep,
        &f,
        json!({f.clone(): [[], [parent.to_string()]]}),
    )
    .error(400, "bad_request");
    submit(&alice, &ep, &f, json!({"other": [[parent.to_string()]]})).error(400, "bad_request");
}

#[test]
fn a_fan_in_with_arguments_over_the_payload_file_size_is_held_and_released_whole() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let args = pack(&["11\n[]", "11\n{}"]);
    let parent = task_ids(&alice.submit(&ep, json!({f.clone(): [args.clone()]})), &f)[0];
    // A fan-in's arguments hold a reference per parent: easily over 64 KiB.
    let big = pack(&[format!("11\n[{}0]", "0,".repeat(50_000)), "11\n{}".into()]);
    let answer = alice
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {f.clone(): [big.clone()]},
                    "depends_on": {f.clone(): [[parent.to_string()]]}}),
        )
        .ok();
    let child = task_ids(&answer, &f)[0];
    let mut agent = Agent::online(svc.addr, &ep, &cred, "node1");
    let (sent, _) = agent.recv_tasks(1);
    assert_eq!(sent[0].task_id, parent);
    agent.send(&AgentMessage::Results {
        results: vec![success(parent, "11\n1")],
    });
    let (sent, _) = agent.recv_tasks(1);
    assert_eq!(sent[0].task_id, child);
    assert_eq!(sent[0].payload, format!("{big}{}", pack(&["dr\n4\n11\n1"])));
}

#[test]
fn a_result_from_an_endpoint_the_user_does_not_own_is_not_fed_to_another_endpoint() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let f = alice.register_function("f");
    let (own, _) = alice.register_endpoint("own");
    let (shared, _) = bob.register_endpoint("shared");
    bob.post(
        &format!("/v3/endpoints/{shared}/share"),
        &json!({"users": ["alice"]}),
    )
    .ok();
    let args = pack(&["11\n[]", "11\n{}"]);
    let parent = task_ids(
        &alice.submit(&shared, json!({f.clone(): [args.clone()]})),
        &f,
    )[0];
    let depending = |on: &str| {
        alice.post(
            &format!("/v3/endpoints/{on}/submit"),
            &json!({"tasks": {f.clone(): [args.clone()]},
                    "depends_on": {f.clone(): [[parent.to_string()]]}}),
        )
    };
    // Bob's worker would make the result; Alice's own would unpickle it.
    let why = depending(&own).error(403, "forbidden");
    assert!(why.contains(&shared) && why.contains("pickle"), "{why}");
    // On the same endpoint, the result never crosses owners.
    let held = task_ids(&depending(&shared).ok(), &f)[0];
    assert_eq!(
        alice.task(&held.to_string())["status"],
        "waiting-for-dependencies"
    );
}
