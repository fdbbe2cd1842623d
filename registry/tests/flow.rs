//! Flow control: an agent that declares it in its hello gets no more tasks
//! than it granted credit for, in queue order, and each connection starts
//! from no credit; an agent that does not gets every queued task.

mod common;

use common::*;
use hpfaas_protocol::endpoint::{AgentMessage, ServiceMessage};
use serde_json::json;

fn online_with_flow_control(svc: &TestService, ep: &str, credential: &str) -> Agent {
    let mut agent = Agent::connect(svc.addr, ep, credential).expect("connect");
    agent.send(&AgentMessage::Hello {
        version: hpfaas_protocol::PROTOCOL_VERSION,
        host: "login1".into(),
        pid: 7,
        allowed_functions: vec![],
        json_only: false,
        flow_control: true,
        events: false,
    });
    match agent.recv() {
        Some(ServiceMessage::Welcome { flow_control, .. }) => {
            assert!(flow_control, "the service must say it honours credit");
            agent
        }
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[test]
fn the_service_sends_no_more_tasks_than_the_agent_granted() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, credential) = alice.register_endpoint("ep");
    let payloads: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let submitted = task_ids(&alice.submit(&ep, json!({f.clone(): payloads})), &f);

    let mut agent = online_with_flow_control(&svc, &ep, &credential);
    agent.send(&AgentMessage::Credit { tasks: 3 });
    // Exactly 3: had the service sent more, they would be in this frame or
    // come before the next grant's tasks below.
    let (first, _) = agent.recv_tasks(3);
    agent.send(&AgentMessage::Credit { tasks: 2 });
    let (second, _) = agent.recv_tasks(2);
    let got: Vec<_> = first.iter().chain(&second).map(|t| t.task_id).collect();
    assert_eq!(got, submitted[..5]);

    // New work is sent as far as credit goes, and no further.
    agent.send(&AgentMessage::Credit { tasks: 6 });
    let (third, _) = agent.recv_tasks(5);
    let more = task_ids(&alice.submit(&ep, json!({f.clone(): ["q0", "q1"]})), &f);
    let (fourth, _) = agent.recv_tasks(1);
    assert_eq!(
        third.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        submitted[5..]
    );
    assert_eq!(fourth[0].task_id, more[0]);
    agent.send(&AgentMessage::Credit { tasks: 1 });
    let (fifth, _) = agent.recv_tasks(1);
    assert_eq!(fifth[0].task_id, more[1]);
    agent.close();

    // A new connection starts from no credit: the re-sent tasks wait for it.
    let mut again = online_with_flow_control(&svc, &ep, &credential);
    again.send(&AgentMessage::Credit { tasks: 4 });
    let (resent, _) = again.recv_tasks(4);
    assert_eq!(
        resent.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        submitted[..4]
    );
}

#[test]
fn a_backlog_held_for_credit_goes_out_highest_priority_first() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, credential) = alice.register_endpoint("ep");
    let submit = |payloads: Vec<&str>, priority: i64| {
        let body = json!({"tasks": {f.clone(): payloads},
            "resource_specification": {"priority": priority}});
        let answer = alice
            .post(&format!("/v3/endpoints/{ep}/submit"), &body)
            .ok();
        task_ids(&answer, &f)
    };
    let plain = submit(vec!["p0", "p1", "p2"], 0);
    let mut agent = online_with_flow_control(&svc, &ep, &credential);
    agent.send(&AgentMessage::Credit { tasks: 1 });
    let (first, _) = agent.recv_tasks(1);
    assert_eq!(first[0].task_id, plain[0]);
    // Submitted while the rest of the backlog waits for credit: it jumps it,
    // though the link has already sent past its place in submit order.
    let urgent = submit(vec!["u0"], 4);
    let low = submit(vec!["l0"], -4);
    agent.send(&AgentMessage::Credit { tasks: 1 });
    let (second, _) = agent.recv_tasks(1);
    assert_eq!(second[0].task_id, urgent[0]);
    agent.send(&AgentMessage::Credit { tasks: 10 });
    let (rest, _) = agent.recv_tasks(3);
    let rest: Vec<_> = rest.iter().map(|t| t.task_id).collect();
    assert_eq!(rest, [plain[1], plain[2], low[0]]);
    // Nothing twice: a fresh task is the next thing sent.
    let later = submit(vec!["z"], 0);
    let (next, _) = agent.recv_tasks(1);
    assert_eq!(next[0].task_id, later[0]);
    agent.close();
}
