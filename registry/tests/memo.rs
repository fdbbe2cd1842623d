//! Memoization (docs/api.md, "Memoization"): a function registered with
//! `cache` gets a stored result back for an identical call without a
//! dispatch; identical calls together run once; failures are not reused;
//! entries are per user, expire, can be cleared, outlive the retention of
//! the task they came from and a restart of the service.

mod common;

use std::time::Duration;

use common::*;
use hpfaas_protocol::endpoint::AgentMessage;
use serde_json::{json, Value};

fn register(http: &Http, name: &str, code: &str, cache: bool) -> String {
    let body = json!({"function_name": name, "function_code": code, "cache": cache});
    http.post("/v3/functions", &body).ok()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The next task the agent is sent is `expected`: a task answered from the
/// cache before it would have come first.
fn next_dispatched(agent: &mut Agent) -> uuid::Uuid {
    agent.recv_tasks(1).0[0].task_id
}

fn finish(agent: &mut Agent, results: Vec<hpfaas_protocol::task::TaskResult>) {
    agent.send(&AgentMessage::Results { results });
    agent.recv_result_ack();
}

fn cached_from(t: &Value) -> Option<String> {
    t["cached_from"].as_str().map(str::to_string)
}

#[test]
fn identical_calls_run_once_and_later_ones_are_answered_without_a_dispatch() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = register(&alice, "f", "st\nf:def f(x): return x", true);
    let plain = alice.register_function("plain");
    assert_eq!(alice.get(&format!("/v2/functions/{f}")).ok()["cache"], true);
    assert_eq!(
        alice.get(&format!("/v2/functions/{plain}")).ok()["cache"],
        false
    );
    let (ep, credential) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");

    // Two identical calls in one submit, and one with other arguments.
    let answer = alice.submit(&ep, json!({f.clone(): ["a", "a", "b"]}));
    let ids = task_ids(&answer, &f);
    let group = answer["task_group_id"].as_str().unwrap().to_string();
    let mut stream = alice.stream(&group, None);
    let (sent, _) = agent.recv_tasks(2);
    let sent: Vec<_> = sent.iter().map(|t| t.task_id).collect();
    assert_eq!(sent, vec![ids[0], ids[2]], "the identical call runs once");
    let waiter = alice.task(&ids[1].to_string());
    assert_eq!(waiter["pending"], true, "{waiter}");
    assert_eq!(cached_from(&waiter), Some(ids[0].to_string()));
    assert_eq!(waiter["cached"], false, "{waiter}");
    finish(
        &mut agent,
        vec![success(ids[0], "ra"), success(ids[2], "rb")],
    );
    let waiter = alice.wait_task(&ids[1].to_string(), "the waiter's result", |t| {
        t["status"] == "success"
    });
    assert_eq!(waiter["result"], "ra");
    assert_eq!(waiter["cached"], true);
    // All three results reach the group's stream.
    let mut streamed: Vec<String> = (0..3)
        .map(|_| {
            stream.next_event().data["task_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    streamed.sort();
    let mut all: Vec<String> = ids.iter().map(ToString::to_string).collect();
    all.sort();
    assert_eq!(streamed, all);

    // A later identical call is final at once, with its own id.
    let again = task_ids(&alice.submit(&ep, json!({f.clone(): ["a"]})), &f)[0];
    let hit = alice.task(&again.to_string());
    assert_eq!(hit["status"], "success", "{hit}");
    assert_eq!(hit["result"], "ra");
    assert_eq!(hit["cached"], true);
    assert_eq!(cached_from(&hit), Some(ids[0].to_string()));
    assert_ne!(again, ids[0]);
    // Listed too.
    let listed = alice.get(&format!("/v3/tasks?function_id={f}")).ok();
    let listed = listed["tasks"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(listed[0]["task_id"], again.to_string());
    assert_eq!(listed[0]["cached"], true);
    assert_eq!(cached_from(&listed[0]), Some(ids[0].to_string()));
    assert!(listed[3].get("cached").is_none(), "{}", listed[3]);

    // Nothing of it was dispatched: the next task out is a plain one.
    let p = task_ids(&alice.submit(&ep, json!({plain.clone(): ["a"]})), &plain)[0];
    assert_eq!(next_dispatched(&mut agent), p);

    // Other arguments miss.
    let c = task_ids(&alice.submit(&ep, json!({f.clone(): ["c"]})), &f)[0];
    assert_eq!(next_dispatched(&mut agent), c);
    // A changed body misses; the same body registered again hits (the key is
    // the code, not the function's id).
    let g = register(&alice, "f", "st\nf:def f(x): return x + 1", true);
    let changed = task_ids(&alice.submit(&ep, json!({g.clone(): ["a"]})), &g)[0];
    assert_eq!(next_dispatched(&mut agent), changed);
    let same = register(&alice, "f", "st\nf:def f(x): return x", true);
    let twin = task_ids(&alice.submit(&ep, json!({same.clone(): ["a"]})), &same)[0];
    assert_eq!(alice.task(&twin.to_string())["result"], "ra");
    // A function registered without cache always runs.
    let uncached = register(&alice, "f", "st\nf:def f(x): return x", false);
    let run = task_ids(
        &alice.submit(&ep, json!({uncached.clone(): ["a"]})),
        &uncached,
    )[0];
    assert_eq!(next_dispatched(&mut agent), run);

    // Another endpoint misses: a result is trusted as its endpoint is (the
    // SDK unpickles only results of endpoints it trusts, by the task's
    // endpoint), so one made on a shared endpoint never shows as one's own.
    let (ep2, credential2) = alice.register_endpoint("ep2");
    let mut agent2 = Agent::online(svc.addr, &ep2, &credential2, "login3");
    let elsewhere = task_ids(&alice.submit(&ep2, json!({f.clone(): ["a"]})), &f)[0];
    assert_eq!(next_dispatched(&mut agent2), elsewhere);
    // So do other result serializers: the stored result is in the first's.
    let json_only = alice
        .post(
            &format!("/v3/endpoints/{ep}/submit"),
            &json!({"tasks": {f.clone(): ["a"]}, "result_serializers": ["11"]}),
        )
        .ok();
    let json_only = task_ids(&json_only, &f)[0];
    assert_eq!(next_dispatched(&mut agent), json_only);

    // Another user with the same code and arguments misses.
    let bob = svc.client(&svc.token("bob"));
    let fb = register(&bob, "f", "st\nf:def f(x): return x", true);
    let (ep_b, credential_b) = bob.register_endpoint("ep");
    let mut agent_b = Agent::online(svc.addr, &ep_b, &credential_b, "login2");
    let theirs = task_ids(&bob.submit(&ep_b, json!({fb.clone(): ["a"]})), &fb)[0];
    assert_eq!(next_dispatched(&mut agent_b), theirs);
}

#[test]
fn a_failure_is_not_reused_and_fails_the_calls_that_waited_for_it() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = register(&alice, "f", "st\nf:def f(x): return 1 / x", true);
    let (ep, credential) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    let first = task_ids(&alice.submit(&ep, json!({f.clone(): ["0"]})), &f);
    // Waits for the first, from a later submit.
    let second = task_ids(&alice.submit(&ep, json!({f.clone(): ["0"]})), &f);
    assert_eq!(next_dispatched(&mut agent), first[0]);
    finish(&mut agent, vec![failure(first[0])]);
    let waiter = alice.wait_task(&second[0].to_string(), "the waiter fails", |t| {
        t["status"] == "failed"
    });
    assert_eq!(waiter["exception_type"], "ZeroDivisionError");
    let message = waiter["exception_message"].as_str().unwrap();
    assert!(
        message.contains(&format!("identical call {}", first[0])),
        "{message}"
    );
    // The next identical call runs again.
    let third = task_ids(&alice.submit(&ep, json!({f.clone(): ["0"]})), &f)[0];
    assert_eq!(next_dispatched(&mut agent), third);
    finish(&mut agent, vec![success(third, "ok")]);
    let fourth = task_ids(&alice.submit(&ep, json!({f.clone(): ["0"]})), &f)[0];
    assert_eq!(alice.task(&fourth.to_string())["result"], "ok");
}

#[test]
fn cancelling_the_running_call_cancels_its_waiters_and_the_next_call_runs() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = register(&alice, "f", "st\nf:def f(x): return x", true);
    let (ep, credential) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    let ids = task_ids(&alice.submit(&ep, json!({f.clone(): ["y", "y", "y"]})), &f);
    assert_eq!(next_dispatched(&mut agent), ids[0]);
    // A waiter cancelled on its own leaves the running call alone.
    alice
        .post(&format!("/v3/tasks/{}/cancel", ids[2]), &json!({}))
        .ok();
    assert_eq!(alice.task(&ids[0].to_string())["pending"], true);
    alice
        .post(&format!("/v3/tasks/{}/cancel", ids[0]), &json!({}))
        .ok();
    let waiter = alice.task(&ids[1].to_string());
    assert_eq!(waiter["status"], "cancelled", "{waiter}");
    assert!(waiter["exception_message"]
        .as_str()
        .unwrap()
        .contains(&ids[0].to_string()));
    let next = task_ids(&alice.submit(&ep, json!({f.clone(): ["y"]})), &f)[0];
    let cancelled = agent.recv_cancel();
    assert!(cancelled.contains(&ids[0]), "{cancelled:?}");
    assert_eq!(next_dispatched(&mut agent), next);
}

fn short_cache(c: &mut hpfaas_registry::ServiceConfig) {
    c.cache_ttl = Duration::from_millis(600);
    c.purge_interval = Duration::from_millis(100);
}

fn memo_rows(svc: &TestService) -> i64 {
    let conn = rusqlite::Connection::open(svc.dir.join("registry.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM memo", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn entries_expire_after_the_ttl_and_are_purged() {
    let svc = TestService::start_with(short_cache);
    let alice = svc.client(&svc.token("alice"));
    let f = register(&alice, "f", "st\nf:def f(x): return x", true);
    let (ep, credential) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    let first = task_ids(&alice.submit(&ep, json!({f.clone(): ["t"]})), &f)[0];
    assert_eq!(next_dispatched(&mut agent), first);
    finish(&mut agent, vec![success(first, "r")]);
    assert_eq!(memo_rows(&svc), 1);
    // The purge deletes the entry once the TTL has passed.
    wait_for("the expired entry to be purged", || {
        (memo_rows(&svc) == 0).then_some(())
    });
    let again = task_ids(&alice.submit(&ep, json!({f.clone(): ["t"]})), &f)[0];
    assert_eq!(next_dispatched(&mut agent), again);
}

#[test]
fn an_expired_entry_not_yet_purged_is_computed_afresh() {
    let svc = TestService::start_with(|c| {
        c.cache_ttl = Duration::from_millis(300);
        c.purge_interval = Duration::from_secs(3600);
    });
    let alice = svc.client(&svc.token("alice"));
    let f = register(&alice, "f", "st\nf:def f(x): return x", true);
    let (ep, credential) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    let first = task_ids(&alice.submit(&ep, json!({f.clone(): ["t"]})), &f)[0];
    assert_eq!(next_dispatched(&mut agent), first);
    finish(&mut agent, vec![success(first, "old")]);
    let stored = std::time::Instant::now();
    // Waits for the TTL to pass: the event this test is about is time itself.
    wait_for("the TTL to pass", || {
        (stored.elapsed() > Duration::from_millis(400)).then_some(())
    });
    let again = task_ids(&alice.submit(&ep, json!({f.clone(): ["t"]})), &f)[0];
    assert_eq!(next_dispatched(&mut agent), again);
    finish(&mut agent, vec![success(again, "new")]);
    let hit = task_ids(&alice.submit(&ep, json!({f.clone(): ["t"]})), &f)[0];
    let hit = alice.task(&hit.to_string());
    assert_eq!(hit["result"], "new");
    assert_eq!(cached_from(&hit), Some(again.to_string()));
}

/// What `user`'s quota counts as stored bytes.
fn stored_bytes(svc: &TestService, user: &str) -> i64 {
    let conn = rusqlite::Connection::open(svc.dir.join("registry.db")).unwrap();
    conn.query_row(
        "SELECT bytes FROM user_usage JOIN users ON users.id = user_id WHERE name = ?1",
        [user],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn clearing_by_function_or_all_and_only_ones_own() {
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let bob = svc.client(&svc.token("bob"));
    let f = register(&alice, "f", "st\nf:def f(x): return x", true);
    let g = register(&alice, "g", "st\ng:def g(x): return x", true);
    let (ep, credential) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    let ids = task_ids(
        &alice.submit(&ep, json!({f.clone(): ["1"], g.clone(): ["1"]})),
        &f,
    );
    let gid = task_ids(&alice.submit(&ep, json!({g.clone(): ["2"]})), &g)[0];
    let (sent, _) = agent.recv_tasks(3);
    let results = sent.iter().map(|t| success(t.task_id, "r")).collect();
    finish(&mut agent, results);
    assert_eq!(memo_rows(&svc), 3);
    // Another user can neither clear these nor name the function.
    bob.delete(&format!("/v3/functions/{f}/cache"))
        .error(404, "not_found");
    assert_eq!(bob.delete("/v3/cache").ok()["cleared"], 0);
    assert_eq!(memo_rows(&svc), 3);
    let before = stored_bytes(&svc, "alice");
    let cleared = alice.delete(&format!("/v3/functions/{f}/cache")).ok();
    assert_eq!(cleared["cleared"], 1, "{cleared}");
    // The entry's copy of its result ("r") no longer counts in the quota.
    assert_eq!(before - stored_bytes(&svc, "alice"), 1);
    let again = task_ids(&alice.submit(&ep, json!({f.clone(): ["1"]})), &f)[0];
    assert_eq!(next_dispatched(&mut agent), again);
    assert_ne!(again, ids[0]);
    let hit = task_ids(&alice.submit(&ep, json!({g.clone(): ["2"]})), &g)[0];
    assert_eq!(
        cached_from(&alice.task(&hit.to_string())),
        Some(gid.to_string())
    );
    assert_eq!(alice.delete("/v3/cache").ok()["cleared"], 2);
    assert_eq!(memo_rows(&svc), 1, "the entry still being computed stays");
}

#[test]
fn entries_outlive_the_retention_of_their_task_and_a_restart() {
    let svc = TestService::start_with(|c| {
        c.retention = Duration::from_millis(300);
        c.purge_interval = Duration::from_millis(100);
    });
    let token = svc.token("alice");
    let alice = svc.client(&token);
    let f = register(&alice, "f", "st\nf:def f(x): return x", true);
    let (ep, credential) = alice.register_endpoint("ep");
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    let ids = task_ids(&alice.submit(&ep, json!({f.clone(): ["k", "w", "w"]})), &f);
    let (sent, _) = agent.recv_tasks(2);
    assert_eq!(sent[0].task_id, ids[0]);
    finish(&mut agent, vec![success(ids[0], "kept")]);
    // The task that computed it is deleted by the retention purge...
    wait_for("the source task to be purged", || {
        let gone = alice.get(&format!("/v2/tasks/{}", ids[0])).status == 404;
        gone.then_some(())
    });
    // ...and survives a restart with a waiter still waiting.
    agent.close();
    let svc = svc.restart_with(|_| {});
    let alice = svc.client(&token);
    let hit = task_ids(&alice.submit(&ep, json!({f.clone(): ["k"]})), &f)[0];
    let hit = alice.task(&hit.to_string());
    assert_eq!(hit["result"], "kept", "{hit}");
    assert_eq!(cached_from(&hit), Some(ids[0].to_string()));
    // The re-sent queue holds the running call, not its waiter.
    let mut agent = Agent::online(svc.addr, &ep, &credential, "login1");
    assert_eq!(next_dispatched(&mut agent), ids[1]);
    finish(&mut agent, vec![success(ids[1], "w")]);
    let waiter = alice.wait_task(&ids[2].to_string(), "the waiter after a restart", |t| {
        t["status"] == "success"
    });
    assert_eq!(waiter["result"], "w");
}

/// The lookup a submit makes, as SQLite plans it: a search of the unique
/// index on the whole key, whatever the size of the cache. With
/// `HPFAAS_HEAVY=1` the cache holds a million entries and the time of a
/// submit answered from it is printed (never asserted).
#[test]
fn a_lookup_is_one_search_of_the_key_index_among_a_million_entries() {
    let heavy = std::env::var_os("HPFAAS_HEAVY").is_some_and(|v| v == "1");
    let entries: u64 = if heavy { 1_000_000 } else { 2_000 };
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let code = "st\nf:def f(x): return x";
    let f = register(&alice, "f", code, true);
    let (ep, _) = alice.register_endpoint("ep");
    let endpoint = uuid::Uuid::parse_str(&ep).unwrap();
    let mut conn = rusqlite::Connection::open(svc.dir.join("registry.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let owner: i64 = conn
        .query_row("SELECT id FROM users WHERE name = 'alice'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let code_hash = hpfaas_registry::db::memo::code_hash(code);
    let started = std::time::Instant::now();
    let tx = conn.transaction().unwrap();
    {
        let mut put = tx
            .prepare(
                "INSERT INTO memo (owner, code_hash, args_hash, task_id, result, stored)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .unwrap();
        let now = hpfaas_protocol::task::now_unix();
        for i in 0..entries {
            let args =
                hpfaas_registry::db::memo::args_hash(endpoint, "[]", &format!("arg{i}"), None);
            let from = uuid::Uuid::new_v4().to_string();
            put.execute(rusqlite::params![
                owner,
                &code_hash[..],
                &args[..],
                from,
                format!("r{i}"),
                now
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    eprintln!("{entries} cache entries stored in {:?}", started.elapsed());

    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT id, task_id, result, stored FROM memo
             WHERE owner = ?1 AND code_hash = ?2 AND args_hash = ?3",
        )
        .unwrap()
        .query_map(
            rusqlite::params![owner, &code_hash[..], &[0u8; 32][..]],
            |r| r.get::<_, String>(3),
        )
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    eprintln!("plan: {plan:?}");
    assert_eq!(
        plan,
        vec!["SEARCH memo USING INDEX memo_key (owner=? AND code_hash=? AND args_hash=?)"]
    );

    let last = format!("arg{}", entries - 1);
    let started = std::time::Instant::now();
    let hit = task_ids(&alice.submit(&ep, json!({f.clone(): [last]})), &f)[0];
    let took = started.elapsed();
    let hit = alice.task(&hit.to_string());
    assert_eq!(hit["result"], format!("r{}", entries - 1), "{hit}");
    eprintln!("a submit answered from a cache of {entries} entries took {took:?}");
}
