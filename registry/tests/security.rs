//! Who may do what: token revocation (at once, including open result
//! streams and agent links), `hpfaas token list`, the endpoint's declared
//! policy, sharing, and the authorization matrix over every route.

mod common;

use common::*;
use hpfaas_protocol::endpoint::AgentMessage;
use hpfaas_protocol::payload::pack;
use hpfaas_registry::routes::{Auth, ROUTES};
use hpfaas_registry::{list_tokens, revoke_token};
use serde_json::{json, Value};
use uuid::Uuid;

#[test]
fn revoked_tokens_are_refused_at_once_on_requests_streams_and_agent_links() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let other = svc.token("alice");
    let alice = svc.client(&token);
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let sub = alice.submit(&ep, json!({f.clone(): ["a"]}));
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    agent.recv_tasks(1);

    // The list shows ids, first characters and kinds, never a token.
    let listed = list_tokens(&svc.dir, "alice").unwrap();
    assert_eq!(listed.len(), 3);
    let text = format!("{listed:?}");
    for secret in [&token, &other, &cred] {
        assert!(!text.contains(secret.as_str()), "a token leaked: {text}");
    }
    assert_eq!(listed[0].prefix.as_deref(), Some(&token[..8]));
    assert_eq!(listed[2].endpoint, Some(Uuid::parse_str(&ep).unwrap()));
    assert!(listed
        .iter()
        .all(|t| t.revoked.is_none() && t.created > 1.6e9));
    assert!(list_tokens(&svc.dir, "nobody")
        .unwrap_err()
        .to_string()
        .contains("nobody"));

    let mut stream = alice.stream(&group, None);
    // Revoked by another "process" (the CLI's code path, straight into the
    // database): refused on the very next request.
    let revoked = revoke_token(&svc.dir, &token[..10]).unwrap();
    assert_eq!(revoked.id, listed[0].id);
    assert_eq!(revoked.user, "alice");
    let msg = alice.get("/v2/endpoints").error(401, "unauthorized");
    assert!(msg.contains("revoked"), "{msg}");
    // The open stream says so and ends.
    let e = stream.next_event();
    assert_eq!(e.event, "error");
    assert_eq!(e.data["code"], "unauthorized");
    stream.expect_end();
    // Another token of the same user still works.
    svc.client(&other).get("/v2/endpoints").ok();

    // An endpoint credential, by its id's prefix: its live link closes.
    let closed_by = revoke_token(&svc.dir, &listed[2].id[..8]).unwrap();
    assert_eq!(closed_by.endpoint, Some(Uuid::parse_str(&ep).unwrap()));
    let closed = agent.expect_close();
    assert!(closed.reason.contains("revoked"), "{closed:?}");
    svc.client(&cred)
        .get(&format!("/v2/endpoints/{ep}/status"))
        .error(401, "unauthorized");
    assert!(Agent::connect(svc.addr, &ep, &cred).is_err());

    // Mistakes are explained.
    let e = revoke_token(&svc.dir, &token).unwrap_err().to_string();
    assert!(e.contains("already revoked"), "{e}");
    let e = revoke_token(&svc.dir, "abc").unwrap_err().to_string();
    assert!(e.contains("at least 6"), "{e}");
    let e = revoke_token(&svc.dir, "not-hex-at-all")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a token"), "{e}");
    let e = revoke_token(&svc.dir, "000000000000")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no live token"), "{e}");
    let after = list_tokens(&svc.dir, "alice").unwrap();
    assert_eq!(after.iter().filter(|t| t.revoked.is_some()).count(), 2);
}

#[test]
fn the_endpoints_declared_policy_is_enforced_at_submit() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let g = alice.register_function("g");
    let (ep, cred) = alice.register_endpoint("ep");
    let fid = Uuid::parse_str(&f).unwrap();
    let agent = Agent::online_with_policy(svc.addr, &ep, &cred, vec![fid], true);
    agent.close();
    let submit = format!("/v3/endpoints/{ep}/submit");
    let json_args = pack(&["11\n[1, 2]", "11\n{}"]);

    // Enforced while the endpoint is offline too.
    let msg = alice
        .post(&submit, &json!({"tasks": {g.clone(): [json_args.clone()]}}))
        .error(403, "forbidden");
    assert!(
        msg.contains(&g) && msg.contains("allowed_functions"),
        "{msg}"
    );
    let pickled = pack(&["00\ngASVBQAAAAAAAAB9lC4=", "11\n{}"]);
    let msg = alice
        .post(
            &submit,
            &json!({"tasks": {f.clone(): [json_args.clone(), pickled]}}),
        )
        .error(400, "bad_request");
    assert!(msg.contains("task index 1") && msg.contains("00"), "{msg}");
    let msg = alice
        .post(&submit, &json!({"tasks": {f.clone(): ["not framed"]}}))
        .error(400, "bad_request");
    assert!(msg.contains("task index 0"), "{msg}");
    assert!(tasks_in_db(&svc.dir).is_empty());
    alice.submit(&ep, json!({f.clone(): [json_args.clone()]}));

    // An agent that declares nothing (an older one) lifts the policy.
    Agent::online(svc.addr, &ep, &cred, "login1").close();
    alice.submit(&ep, json!({g: ["00\nanything"]}));
    assert_eq!(tasks_in_db(&svc.dir).len(), 2);
}

#[test]
fn a_shared_endpoint_takes_submits_from_the_named_users_only() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let carol = svc.client(&svc.token("carol"));
    let af = alice.register_function("af");
    let bf = bob.register_function("bf");
    let cf = carol.register_function("cf");
    let (ep, cred) = alice.register_endpoint("ep");
    let share = format!("/v3/endpoints/{ep}/share");

    bob.post(&share, &json!({"users": ["bob"]}))
        .error(404, "not_found");
    let shared = alice
        .post(&share, &json!({"users": ["bob", " dave "]}))
        .ok();
    assert_eq!(
        shared,
        json!({"endpoint_id": ep, "shared_with": ["bob", "dave"]})
    );
    assert_eq!(
        alice.get(&format!("/v2/endpoints/{ep}")).ok()["shared_with"],
        json!(["bob", "dave"])
    );

    // Bob submits his own function and reads his own task.
    let sub = bob.submit(&ep, json!({bf.clone(): ["b"]}));
    let bt = task_ids(&sub, &bf)[0];
    assert_eq!(bob.task(&bt.to_string())["endpoint_id"], json!(ep));
    alice
        .get(&format!("/v2/tasks/{bt}"))
        .error(404, "not_found");
    // The endpoint runs it with bob's function.
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let (tasks, functions) = agent.recv_tasks(1);
    assert_eq!(tasks[0].task_id, bt);
    assert_eq!(functions[0].function_id.to_string(), bf);
    agent.send(&AgentMessage::Results {
        results: vec![success(bt, "done")],
    });
    agent.recv_result_ack();
    assert_eq!(bob.task(&bt.to_string())["result"], "done");

    // Bob sees whether it runs and why not (its status and events)...
    assert_eq!(bob.endpoint_status(&ep)["status"], "online");
    bob.get(&format!("/v3/endpoints/{ep}/events")).ok();
    // ...but cannot manage the endpoint nor use alice's function.
    for (method, path) in [
        ("GET", format!("/v2/endpoints/{ep}")),
        ("DELETE", format!("/v2/endpoints/{ep}")),
    ] {
        bob.call(method, &path).error(404, "not_found");
    }
    bob.post(&share, &json!({"users": ["carol"]}))
        .error(404, "not_found");
    assert!(bob.get("/v2/endpoints").ok().as_array().unwrap().is_empty());
    bob.post(
        &format!("/v3/endpoints/{ep}/submit"),
        &json!({"tasks": {af.clone(): ["x"]}}),
    )
    .error(404, "not_found");
    // Carol was never named.
    carol
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {cf: ["c"]}}),
        )
        .error(403, "forbidden");

    // Unsharing ends it.
    let left = alice
        .send(alice.request("DELETE", &share), &json!({"users": ["bob"]}))
        .ok();
    assert_eq!(left["shared_with"], json!(["dave"]));
    bob.post(
        &format!("/v3/endpoints/{ep}/submit"),
        &json!({"tasks": {bf.clone(): ["again"]}}),
    )
    .error(403, "forbidden");
    // And what bob could read of it.
    bob.get(&format!("/v2/endpoints/{ep}/status"))
        .error(404, "not_found");
    bob.get(&format!("/v3/endpoints/{ep}/events"))
        .error(404, "not_found");
    alice
        .post(&share, &json!({"users": [""]}))
        .error(400, "bad_request");
    alice
        .post(&share, &json!({"users": "bob"}))
        .error(400, "bad_request");
    agent.close();
}

/// One user's things, and every string that would give them away.
struct Side {
    token: String,
    credential: String,
    function: String,
    endpoint: String,
    task: String,
    group: String,
    secrets: Vec<String>,
}

fn side(svc: &TestService, user: &str) -> Side {
    let token = svc.token(user);
    let http = svc.client(&token);
    let name = format!("{user}_secret_function");
    let code = format!("st\n{name}:def {name}(): return '{user}-secret-code'");
    let function = http
        .post(
            "/v3/functions",
            &json!({"function_name": name, "function_code": code}),
        )
        .ok()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let reg = http
        .post(
            "/v3/endpoints",
            &json!({"endpoint_name": format!("{user}_secret_endpoint"), "display_name": format!("{user}_secret_display")}),
        )
        .ok();
    let endpoint = reg["endpoint_id"].as_str().unwrap().to_string();
    let credential = reg["credential"].as_str().unwrap().to_string();
    let payload = format!("11\n\"{user}-secret-payload\"");
    let sub = http.submit(&endpoint, json!({function.clone(): [payload.clone()]}));
    let task = task_ids(&sub, &function)[0].to_string();
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let secrets = vec![
        token.clone(),
        credential.clone(),
        function.clone(),
        endpoint.clone(),
        task.clone(),
        group.clone(),
        name,
        format!("{user}-secret-code"),
        format!("{user}_secret_endpoint"),
        format!("{user}_secret_display"),
        format!("{user}-secret-payload"),
        format!("\"{user}\""),
        format!("user {user}"),
    ];
    Side {
        token,
        credential,
        function,
        endpoint,
        task,
        group,
        secrets,
    }
}

/// The requests that aim `route` at `victim`'s things while acting as an
/// attacker whose own things are `own`: (path, body).
fn aimed(method: &str, path: &str, victim: &Side, own: &Side) -> Vec<(String, Option<Value>)> {
    let at = |id: &str| path.replace("{id}", id);
    match (method, path) {
        ("POST", "/v3/functions") => vec![(
            path.into(),
            Some(json!({"function_name": "x", "function_code": "st\nx:def x(): pass"})),
        )],
        ("GET" | "DELETE", "/v2/functions/{id}") | ("DELETE", "/v3/functions/{id}/cache") => {
            vec![(at(&victim.function), None)]
        }
        // Clears the caller's own cached results only.
        ("DELETE", "/v3/cache") => vec![(path.into(), None)],
        ("POST", "/v3/endpoints") => vec![(
            path.into(),
            Some(json!({"endpoint_name": "x", "endpoint_id": victim.endpoint})),
        )],
        ("GET", "/v2/endpoints") | ("GET", "/v3/service/status") => vec![(path.into(), None)],
        ("GET" | "DELETE", "/v2/endpoints/{id}")
        | ("GET", "/v2/endpoints/{id}/status")
        | ("GET", "/v3/endpoints/{id}/events")
        | ("GET", "/v3/endpoints/{id}/events/stream")
        | ("GET", "/v3/endpoints/{id}/connect") => vec![(at(&victim.endpoint), None)],
        ("POST" | "DELETE", "/v3/endpoints/{id}/share") => {
            vec![(at(&victim.endpoint), Some(json!({"users": ["mallory"]})))]
        }
        ("POST", "/v3/endpoints/{id}/submit") => vec![
            // Own function to the victim's endpoint.
            (
                at(&victim.endpoint),
                Some(json!({"tasks": {own.function.clone(): ["11\n1"]}})),
            ),
            // The victim's function to one's own endpoint.
            (
                at(&own.endpoint),
                Some(json!({"tasks": {victim.function.clone(): ["11\n1"]}})),
            ),
            // Into the victim's task group.
            (
                at(&own.endpoint),
                Some(
                    json!({"tasks": {own.function.clone(): ["11\n1"]}, "task_group_id": victim.group}),
                ),
            ),
        ],
        ("GET", "/v2/tasks/{id}") | ("POST", "/v3/tasks/{id}/cancel") => {
            vec![(at(&victim.task), None)]
        }
        // The victim's endpoint, function and group as filters.
        ("GET", "/v3/tasks") => vec![
            (format!("{path}?endpoint_id={}", victim.endpoint), None),
            (format!("{path}?function_id={}", victim.function), None),
            (format!("{path}?task_group_id={}", victim.group), None),
        ],
        ("POST", "/v2/batch_status") => {
            vec![(path.into(), Some(json!({"task_ids": [victim.task]})))]
        }
        ("GET", "/v2/taskgroup/{id}")
        | ("GET", "/v3/taskgroup/{id}/stream")
        | ("POST", "/v3/taskgroup/{id}/cancel") => vec![(at(&victim.group), None)],
        // A login link is the caller's own: nothing of the victim's to aim at.
        ("POST", "/v3/ui/login_link") => vec![(path.into(), Some(json!({})))],
        // Counts of the caller's own tasks only.
        ("GET", "/v3/activity") | ("GET", "/v3/activity/stream") => vec![(path.into(), None)],
        _ => panic!("{method} {path} has no entry in the authorization matrix: add one"),
    }
}

/// True if the attacker's own call is legitimately allowed (acting on its
/// own namespace, which the matrix does not count as forbidden).
fn allowed(method: &str, path: &str, caller: &str) -> bool {
    matches!(
        (method, path, caller),
        ("POST", "/v3/functions", "user")
            | ("GET", "/v2/endpoints", "user")
            // Nothing of anyone's: whether writes work, audit lines lost.
            | ("GET", "/v3/service/status", "user")
            // A dashboard login for the caller itself.
            | ("POST", "/v3/ui/login_link", "user")
            | ("GET", "/v3/activity", "user")
            | ("GET", "/v3/activity/stream", "user")
            | ("DELETE", "/v3/cache", "user")
            // A victim's own credential on its own endpoint.
            | ("GET", "/v2/endpoints/{id}/status", "victim credential")
            | ("GET", "/v3/endpoints/{id}/events", "victim credential")
            | ("GET", "/v3/endpoints/{id}/events/stream", "victim credential")
            | ("GET", "/v3/endpoints/{id}/connect", "victim credential")
    )
}

#[test]
fn authorization_matrix_every_route_refuses_and_leaks_nothing() {
    let svc = TestService::start();
    let alice = side(&svc, "alice");
    let bob = side(&svc, "bob");
    let mut checked = 0;
    for (victim, attacker) in [(&alice, &bob), (&bob, &alice)] {
        // Callers: the other user, the other user's endpoint credential, the
        // victim's own endpoint credential (outside its scope), nobody.
        let callers = [
            ("user", Some(attacker.token.as_str())),
            ("attacker credential", Some(attacker.credential.as_str())),
            ("victim credential", Some(victim.credential.as_str())),
            ("anonymous", None),
        ];
        for route in ROUTES.iter().filter(|r| r.auth != Auth::None) {
            for (path, body) in aimed(route.method, route.path, victim, attacker) {
                for (kind, token) in callers {
                    if allowed(route.method, route.path, kind) {
                        continue;
                    }
                    let http = match token {
                        Some(t) => svc.client(t),
                        None => svc.anonymous(),
                    };
                    let req = http.request(route.method, &path);
                    let answer = match &body {
                        Some(b) => Http::answer(req.send_json(b)),
                        None => Http::answer(req.call()),
                    };
                    let what = format!("{kind} {} {path} {body:?}", route.method);
                    let batch = route.path == "/v2/batch_status" && kind == "user";
                    if token.is_none() {
                        assert_eq!(answer.status, 401, "{what}: {answer:?}");
                    } else if route.path == "/v3/tasks" && kind == "user" {
                        // Filters, not grants: only the caller's own tasks match.
                        assert_eq!(answer.status, 200, "{what}: {answer:?}");
                        assert_eq!(answer.body["tasks"], json!([]), "{what}");
                    } else if batch {
                        // Unknown ids answer "unknown", never the task.
                        assert_eq!(answer.status, 200, "{what}: {answer:?}");
                        assert_eq!(answer.body["results"][&victim.task]["status"], "unknown");
                    } else {
                        assert!(
                            [403, 404].contains(&answer.status),
                            "{what}: expected 403/404, got {answer:?}"
                        );
                    }
                    // Nothing of the victim beyond what the request named.
                    let sent = format!(
                        "{path} {}",
                        body.as_ref().map(Value::to_string).unwrap_or_default()
                    );
                    let text = answer.body.to_string();
                    // (The victim's own credential knows its own endpoint.)
                    let known = if kind == "victim credential" {
                        vec![victim.endpoint.as_str(), victim.credential.as_str()]
                    } else {
                        vec![]
                    };
                    for secret in &victim.secrets {
                        if !sent.contains(secret.as_str()) && !known.contains(&secret.as_str()) {
                            assert!(
                                !text.contains(secret.as_str()),
                                "{what} leaked {secret:?}: {text}"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} combinations checked");

    // Every refused write changed nothing: each side's things are intact.
    for me in [&alice, &bob] {
        let http = svc.client(&me.token);
        http.get(&format!("/v2/functions/{}", me.function)).ok();
        http.get(&format!("/v2/endpoints/{}", me.endpoint)).ok();
        assert_eq!(http.task(&me.task)["status"], "waiting-for-ep");
        assert_eq!(
            http.get(&format!("/v2/endpoints/{}", me.endpoint)).ok()["shared_with"],
            json!([])
        );
        let tg = http.get(&format!("/v2/taskgroup/{}", me.group)).ok();
        assert_eq!(tg["tasks"].as_array().unwrap().len(), 1);
        Agent::online(svc.addr, &me.endpoint, &me.credential, "login1").close();
    }
    assert_eq!(tasks_in_db(&svc.dir).len(), 2);
}
