//! `[endpoint]` policy through the real stack: the agent declares
//! `allowed_functions` and `json_only` in its hello, the service refuses
//! submits that break them, and a `json_only` endpoint returns JSON results
//! even when the submitter did not ask for them.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn the_agent_declares_its_policy_and_answers_in_json() {
    let svc = Service::start();
    let token = svc.token("strict");
    let function = |name: &str| {
        let code = pack(&[&format!("st\n{name}:def {name}(a, b):\n    return a + b\n")]);
        post(
            &format!("{}/v3/functions", svc.url),
            &token,
            json!({"function_name": name, "function_code": code}),
        )
        .unwrap()["function_uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (allowed, other) = (function("add"), function("other"));
    let name = format!("it-policy-{}", std::process::id());
    let config = format!(
        "[endpoint]\nallowed_functions = [\"{allowed}\"]\njson_only = true\n\
         [engine]\nmax_workers_per_node = 1\nheartbeat_period = 0.5\nheartbeat_threshold = 10.0\n\
         [provider]\ntype = \"local\"\ninit_blocks = 1\nmax_blocks = 1\n"
    );
    let ep = Endpoint::new(&svc, &token, &name, &config);
    ep.start();
    let submit_url = format!("{}/v3/endpoints/{}/submit", svc.url, ep.endpoint_id());

    let pickled = pack(&["11\n[1, 2]", "00\ngASVAgAAAAAAAAB9lC4="]);
    let (code, body) = post(&submit_url, &token, json!({"tasks": {&allowed: [pickled]}}))
        .expect_err("pickled arguments refused");
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("00"), "{body}");
    let json_args = pack(&["11\n[2, 3]", "11\n{}"]);
    let (code, body) = post(
        &submit_url,
        &token,
        json!({"tasks": {&other: [json_args.clone()]}}),
    )
    .expect_err("a function outside allowed_functions refused");
    assert_eq!(code, 403, "{body}");

    // No result_serializers asked for: the endpoint answers in JSON anyway.
    let reply = post(
        &submit_url,
        &token,
        json!({"tasks": {&allowed: [json_args]}}),
    )
    .unwrap();
    let task = reply["tasks"][&allowed][0].as_str().unwrap().to_string();
    let doc = ep.wait_all(&[task], Duration::from_secs(60))[0].clone();
    assert_eq!(doc["status"], "success", "{doc}");
    assert_eq!(doc["result"], "11\n5", "{doc}");
}
