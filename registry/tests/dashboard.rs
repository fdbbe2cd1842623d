//! The web dashboard's logins against a real service: a token buys a
//! one-time link, the link becomes an HttpOnly SameSite=Strict cookie and a
//! redirect without the key, the cookie reads (GET) and never acts, and a
//! revoked token ends its sessions. The page itself is driven in a real
//! browser by tests/python/test_dashboard.py.

mod common;

use common::*;
use hpfaas_registry::revoke_token;
use serde_json::json;

/// A client that does not follow redirects, so the login's answer is seen.
fn browser() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

fn link(svc: &TestService, token: &str, body: serde_json::Value) -> String {
    let answer: serde_json::Value = ureq::post(&svc.url("/v3/ui/login_link"))
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(body)
        .unwrap()
        .into_json()
        .unwrap();
    answer["path"].as_str().unwrap().to_string()
}

/// Opens a login link: the session cookie it sets (name=value) and where it
/// redirects.
fn log_in(svc: &TestService, path: &str) -> (String, String) {
    let resp = browser().get(&svc.url(path)).call().unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    (pair, resp.header("location").unwrap().to_string())
}

/// GET `path` with only `cookie`: the status and the body.
fn get_with(svc: &TestService, path: &str, cookie: &str) -> (u16, String) {
    match browser().get(&svc.url(path)).set("Cookie", cookie).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_link_logs_in_once_and_its_cookie_reads_but_never_acts() {
    let svc = TestService::start();
    let token = svc.token("alice");
    let path = link(&svc, &token, json!({}));
    assert!(path.starts_with("/ui/login?key="), "{path}");
    let (cookie, location) = log_in(&svc, &format!("{path}&next=%23/tasks"));
    assert_eq!(location, "/ui/#/tasks");
    // Reads with the cookie, as alice.
    let (status, listed) = get_with(&svc, "/v2/endpoints", &cookie);
    assert_eq!((status, listed.as_str()), (200, "[]"));
    // Never acts: a POST with only the cookie is refused, saying why.
    let err = browser()
        .post(&svc.url("/v3/functions"))
        .set("Cookie", &cookie)
        .send_json(json!({"function_name": "f", "function_code": "x"}))
        .unwrap_err();
    match err {
        ureq::Error::Status(401, r) => {
            let text = r.into_string().unwrap();
            assert!(text.contains("can only read"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // The link worked once.
    let again = browser().get(&svc.url(&path)).call().unwrap_err();
    match again {
        ureq::Error::Status(401, r) => {
            let page = r.into_string().unwrap();
            assert!(page.contains("hpfaas dashboard"), "{page}");
        }
        other => panic!("{other:?}"),
    }
    // A forged cookie is nobody.
    let (status, said) = get_with(&svc, "/v2/endpoints", "hpfaas_session=0123");
    assert_eq!(status, 401);
    assert!(said.contains("dashboard session has ended"), "{said}");
}

#[test]
fn revoking_the_token_ends_its_sessions_and_logging_out_ends_one() {
    let svc = TestService::start();
    let token = svc.token("bob");
    let (cookie, _) = log_in(&svc, &link(&svc, &token, json!({"ttl": 60})));
    let (other, _) = log_in(&svc, &link(&svc, &token, json!({"ttl": 60})));
    assert_eq!(get_with(&svc, "/v2/endpoints", &cookie).0, 200);
    // Logging out ends that session only.
    let out = browser()
        .post(&svc.url("/ui/logout"))
        .set("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get_with(&svc, "/v2/endpoints", &cookie).0, 401);
    assert_eq!(get_with(&svc, "/v2/endpoints", &other).0, 200);
    revoke_token(&svc.dir, &token[..10]).unwrap();
    assert_eq!(get_with(&svc, "/v2/endpoints", &other).0, 401);
}

#[test]
fn pages_carry_headers_that_keep_them_to_themselves() {
    let svc = TestService::start();
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let resp = ureq::get(&svc.url(path)).call().unwrap();
        assert!(resp.content_type().starts_with(kind), "{path}");
        let csp = resp.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
        let body = resp.into_string().unwrap();
        // Nothing is fetched from elsewhere.
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
    }
}

#[test]
fn bad_link_requests_are_refused_naming_what_is_wrong() {
    let svc = TestService::start();
    let token = svc.token("carol");
    for body in [
        json!({"ttl": 0}),
        json!({"ttl": 90000}),
        json!({"ttl": "long"}),
    ] {
        let err = ureq::post(&svc.url("/v3/ui/login_link"))
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(body.clone())
            .unwrap_err();
        match err {
            ureq::Error::Status(400 | 422, r) => {
                let text = r.into_string().unwrap();
                assert!(text.contains("ttl"), "{body}: {text}");
            }
            other => panic!("{body}: {other:?}"),
        }
    }
    let err = ureq::post(&svc.url("/v3/ui/login_link"))
        .send_json(json!({}))
        .unwrap_err();
    assert!(matches!(err, ureq::Error::Status(401, _)));
    // A login without a key, or with a made-up one, is a page saying what to do.
    for path in ["/ui/login", "/ui/login?key=nope", "/ui/login?key=%ff%fe"] {
        match browser().get(&svc.url(path)).call().unwrap_err() {
            ureq::Error::Status(401, r) => {
                assert!(
                    r.into_string().unwrap().contains("hpfaas dashboard"),
                    "{path}"
                )
            }
            other => panic!("{path}: {other:?}"),
        }
    }
}

/// The overview's throughput counts each user's own finished tasks as the
/// agent's results are stored, and nobody else's.
#[test]
fn activity_counts_the_callers_finished_and_failed_tasks() {
    use hpfaas_protocol::endpoint::AgentMessage;
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let sub = alice.submit(&ep, json!({f.clone(): ["1", "2", "3"]}));
    let ids: Vec<uuid::Uuid> = sub["tasks"][&f]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    agent.recv_tasks(3);
    agent.send(&AgentMessage::Results {
        results: vec![success(ids[0], "r"), success(ids[1], "r"), failure(ids[2])],
    });
    agent.recv_result_ack();
    let mine = alice.get("/v3/activity").ok();
    let hour = mine["last_hour"].as_array().unwrap();
    assert_eq!(hour.len(), 60);
    let (finished, failed) = hour.iter().fold((0, 0), |(a, b), m| {
        (
            a + m["finished"].as_u64().unwrap(),
            b + m["failed"].as_u64().unwrap(),
        )
    });
    assert_eq!((finished, failed), (3, 1), "{mine}");
    assert!(
        mine["finished_per_second"].as_f64().unwrap() > 0.0,
        "{mine}"
    );
    let theirs = bob.get("/v3/activity").ok();
    assert!(theirs["last_hour"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["finished"] == 0));
}
