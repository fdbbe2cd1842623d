//! Results travel in frames bounded by bytes, not by count: an agent that
//! comes back with many unacknowledged results, each under the service's
//! result limit but together far over its WebSocket message limit (64 MiB),
//! delivers them all instead of losing its link to the same oversized frame
//! on every reconnect.

mod common;

use std::time::Duration;

use common::*;
use hpfaas_executor::agent::journal::Journal;
use hpfaas_protocol::task::{Outcome, TaskResult};

/// Results this size, 80 of them: 76 MB in all.
const RESULT_BYTES: usize = 950_000;
const TASKS: usize = 80;

#[test]
fn many_large_results_in_the_journal_all_arrive() {
    let svc = Service::start();
    let token = svc.token("frames-user");
    let name = format!("it-frames-{}", std::process::id());
    // No blocks: the results come from the journal only.
    let config = "[engine]\nheartbeat_period = 0.5\nheartbeat_threshold = 4.0\n\
                  [provider]\ntype = \"local\"\ninit_blocks = 0\nmin_blocks = 0\nmax_blocks = 0\n";
    let ep = Endpoint::new(&svc, &token, &name, config);
    ep.start();
    wait_for(Duration::from_secs(30), "the agent to connect", || {
        (ep.state()["state"] == "online").then_some(())
    });
    let f = ep.register("f", "def f(x):\n    return x\n");
    let args: Vec<serde_json::Value> = (0..TASKS).map(|i| serde_json::json!([i])).collect();
    let tasks = ep.submit_json(&f, &args);
    let out = ep.cmd(&["stop", &name]);
    assert_success(&out);

    // What the agent would have journaled had its tasks finished while the
    // service was away.
    let mut journal = Journal::open(&ep.dir().join("journal.log")).unwrap();
    let result = format!("11\n\"{}\"", "r".repeat(RESULT_BYTES));
    let results: Vec<TaskResult> = tasks
        .iter()
        .map(|t| TaskResult {
            task_id: t.parse().unwrap(),
            outcome: Outcome::Success {
                result: result.clone(),
            },
            output: None,
            completed_at: 1.0,
            placement: None,
        })
        .collect();
    journal.store_results(&results);
    drop(journal);

    ep.start();
    let docs = ep.wait_all(&tasks, Duration::from_secs(300));
    for doc in &docs {
        assert_eq!(doc["status"], "success", "{}", &doc.to_string()[..200]);
        assert_eq!(doc["result"].as_str().unwrap().len(), result.len());
    }
    assert_success(&ep.cmd(&["stop", &name]));
}
