//! `hpfaas up` over a long run (issue 21, "Long runs hold steady"): the
//! results it has handed over go after `--fetched-retention`, and with
//! `--no-audit` it writes no audit log at all.

mod common;

use std::time::Duration;

use common::up::{Up, UpOptions};
use common::{get, wait_for};
use serde_json::json;

#[test]
fn up_purges_fetched_results_and_can_write_no_audit_log() {
    let up = Up::start_with(
        "long-runs",
        UpOptions {
            args: ["--no-audit", "--fetched-retention", "1s"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    );
    let f = up.register("double", "def double(x):\n    return 2 * x\n");
    let ids = up
        .try_submit(&f, &[json!([1]), json!([2]), json!([3])])
        .unwrap();
    // Fetched here: from now on they may go.
    let docs = up.wait_all(&ids, Duration::from_secs(60));
    assert!(docs.iter().all(|d| d["status"] == "success"), "{docs:?}");
    // The newest task stays (its row id is not handed out again); the others go.
    wait_for(Duration::from_secs(60), "fetched tasks deleted", || {
        let gone = ids[..2]
            .iter()
            .filter(|id| {
                let url = format!("{}/v2/tasks/{id}", up.url());
                matches!(get(&url, &up.token()), Err((404, _)))
            })
            .count();
        (gone == 2).then_some(())
    });
    let audit: Vec<_> = std::fs::read_dir(up.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit.log"))
        .map(|e| e.path())
        .collect();
    assert!(audit.is_empty(), "--no-audit wrote {audit:?}");
}
