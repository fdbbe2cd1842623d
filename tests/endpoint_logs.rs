//! Logs that do not grow forever, through the real binary: a daemon
//! agent's `endpoint.log` rotates at `[logs] max_bytes` keeping `keep` old
//! files, private, with the agent's stdout and stderr on the current file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

/// `endpoint.log` and its rotated files in `dir`, by name.
fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with("endpoint.log"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_tiny_log_limit_rotates_and_keeps_n_files() {
    let svc = Service::start();
    let token = svc.token("alice");
    // Every record is past a one-byte limit: each gets a file of its own.
    let config = "[provider]\ntype = \"local\"\ninit_blocks = 1\nmax_blocks = 1\n\n\
                  [logs]\nmax_bytes = 1\nkeep = 2\n";
    let ep = Endpoint::new(&svc, &token, "it-log-rotation", config);
    ep.start();
    let dir = ep.dir();
    // Block submitted, agent connected, manager registered: three records.
    wait_for(Duration::from_secs(60), "the block's manager", || {
        let all: String = log_files(&dir)
            .iter()
            .map(|n| std::fs::read_to_string(dir.join(n)).unwrap_or_default())
            .collect();
        (all.contains("registered") && all.contains("connected")).then_some(())
    });
    assert_eq!(
        log_files(&dir),
        ["endpoint.log", "endpoint.log.1", "endpoint.log.2"],
        "keep = 2: the oldest record's file is gone"
    );
    for name in log_files(&dir) {
        let path = dir.join(&name);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{name}: {text}");
    }
    // A panic message or a stray print goes to stdout or stderr: both are
    // the current file, not a rotated (or deleted) one.
    let pid = ep.state()["pid"].as_u64().expect("agent.json has the pid");
    for fd in [1, 2] {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, dir.join("endpoint.log"), "fd {fd}");
    }
    let out = ep.cmd(&["stop", &ep.name]);
    assert_success(&out);
    let kept: String = log_files(&dir)
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap())
        .collect();
    assert!(kept.contains("stopping endpoint"), "{kept}");
    assert_eq!(log_files(&dir).len(), 3);
}

/// Block ids and manager counts of the agent's live blocks (`agent.json`).
fn live_blocks(ep: &Endpoint) -> Vec<(String, u64)> {
    ep.state()["blocks"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .map(|b| {
                    let id = b["block_id"].as_str().unwrap_or_default().to_string();
                    (id, b["managers"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Block ids that have files in `blocks/`.
fn blocks_with_files(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir.join("blocks"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| Some(n.strip_prefix("block-")?.split_once('.')?.0.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn finished_blocks_files_are_pruned_and_a_running_blocks_kept() {
    let svc = Service::start();
    let token = svc.token("alice");
    let home_marker = temp_dir("log-prune-marker");
    let marker = home_marker.join("stay");
    // Blocks die at once until the marker exists; then one stays running.
    let config = format!(
        "[provider]\ntype = \"local\"\ninit_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n\
         worker_init = \"test -e '{}' || exit 3\"\n\n[logs]\nkeep_blocks = 1\n",
        marker.display()
    );
    let ep = Endpoint::new(&svc, &token, "it-log-prune", &config);
    ep.start();
    let dir = ep.dir();
    // Block 2 is submitted only after blocks 0 and 1 have ended.
    wait_for(Duration::from_secs(120), "block 2's job script", || {
        dir.join("blocks/block-2.sh").exists().then_some(())
    });
    std::fs::write(&marker, "").unwrap();
    let running = wait_for(Duration::from_secs(120), "a block with a manager", || {
        live_blocks(&ep)
            .into_iter()
            .find(|(_, managers)| *managers > 0)
            .map(|(id, _)| id)
    });
    let with_files = blocks_with_files(&dir);
    assert!(
        !with_files.contains("0"),
        "block 0 was pruned: {with_files:?}"
    );
    for ext in ["sh", "log"] {
        let file = dir.join(format!("blocks/block-{running}.{ext}"));
        assert!(file.exists(), "the running block's {ext} file");
    }
    let live: Vec<String> = live_blocks(&ep).into_iter().map(|(id, _)| id).collect();
    let finished: Vec<&String> = with_files.iter().filter(|id| !live.contains(id)).collect();
    assert!(
        finished.len() <= 1,
        "keep_blocks = 1: {finished:?} finished blocks have files"
    );
    // Stopping cancels the running block: it becomes the one finished block kept.
    assert_success(&ep.cmd(&["stop", &ep.name]));
    assert_eq!(
        blocks_with_files(&dir).into_iter().collect::<Vec<_>>(),
        [running]
    );
}
