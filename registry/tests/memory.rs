//! Memory stays bounded however many tasks wait for an offline endpoint:
//! submits are stored as they come and the endpoint is fed in pages from
//! SQLite. Measured on this process (the service runs in it) through
//! `/proc/self/status`. 200,000 tasks always; 1,000,000 with
//! `HPFAAS_HEAVY=1`. Alone in its own test binary, so no other test's
//! memory is counted.

mod common;

use common::*;
use hpfaas_protocol::endpoint::{AgentMessage, EndpointReport, ServiceMessage};
use serde_json::json;

/// Allowed growth of the peak resident memory over the baseline.
const BOUND_KIB: u64 = 300 * 1024;
/// Tasks per submit (under the default limit of 100,000).
const PER_SUBMIT: usize = 50_000;

#[test]
fn memory_stays_bounded_with_many_tasks_for_an_offline_endpoint() {
    let total: usize = if std::env::var_os("HPFAAS_HEAVY").is_some_and(|v| v == "1") {
        1_000_000
    } else {
        200_000
    };
    let svc = TestService::start();
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    // Warm up every path once, so the baseline includes their fixed costs.
    alice.submit(&ep, json!({f.clone(): vec!["w"; 1000]}));
    let (base, _) = rss_kib();

    let payloads = vec!["11\n[1]"; PER_SUBMIT];
    let started = std::time::Instant::now();
    for _ in 0..total / PER_SUBMIT {
        let answer = alice.submit(&ep, json!({f.clone(): payloads}));
        assert_eq!(task_ids(&answer, &f).len(), PER_SUBMIT);
    }
    let (after_submit, peak_submit) = rss_kib();
    eprintln!(
        "{total} tasks submitted in {:.1} s; RSS {base} -> {after_submit} KiB, peak {peak_submit} KiB",
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak_submit.saturating_sub(base) < BOUND_KIB,
        "peak grew by {} KiB submitting {total} tasks",
        peak_submit - base
    );

    // The endpoint comes online and is fed every task, in pages.
    let started = std::time::Instant::now();
    let mut agent = Agent::online(svc.addr, &ep, &cred, "login1");
    let mut received = 0usize;
    let mut beat = std::time::Instant::now();
    while received < total + 1000 {
        // A long drain must not look like a silent agent.
        if beat.elapsed() > std::time::Duration::from_secs(1) {
            agent.send(&AgentMessage::Heartbeat {
                status: EndpointReport::default(),
            });
            beat = std::time::Instant::now();
        }
        match agent.recv() {
            Some(ServiceMessage::Tasks { tasks, .. }) => {
                assert!(tasks.len() <= 2000);
                received += tasks.len();
            }
            other => panic!("expected tasks, got {other:?}"),
        }
    }
    let (after_dispatch, peak) = rss_kib();
    eprintln!(
        "{received} tasks dispatched in {:.1} s; RSS {after_dispatch} KiB, peak {peak} KiB",
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak.saturating_sub(base) < BOUND_KIB,
        "peak grew by {} KiB with {total} tasks queued and dispatched",
        peak - base
    );
    agent.close();
}
