//! Per-task walltime and `run_in_sandbox` through the real stack (`hpfaas
//! service`, `hpfaas endpoint start`, a local block): a Python task past its
//! `resource_specification` walltime is killed with its worker and fails
//! with `TaskTimeout`, a shell function's own walltime yields to a smaller
//! task walltime, each task runs in `tasks/<task_id>/`, and the service's
//! audit log records who submitted what and when it ran.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Writes `out.txt` in the working directory; returns that directory.
const WRITE: &str = "def write(text):\n    import os\n    with open('out.txt', 'w') as f:\n        f.write(text)\n    return os.getcwd()\n";

fn json_result(doc: &serde_json::Value) -> serde_json::Value {
    doc["result"]
        .as_str()
        .and_then(|r| r.strip_prefix("11\n"))
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_else(|| panic!("no JSON result: {doc}"))
}

#[test]
fn walltime_kills_tasks_and_sandbox_separates_them() {
    let svc = Service::start();
    let token = svc.token("limits-user");
    let name = format!("it-limits-{}", std::process::id());
    let config = "[engine]\nmax_workers_per_node = 1\nprefetch_capacity = 0\n\
                  heartbeat_period = 0.5\nheartbeat_threshold = 10.0\nrun_in_sandbox = true\n\
                  [provider]\ntype = \"local\"\ninit_blocks = 1\nmax_blocks = 1\n";
    let ep = Endpoint::new(&svc, &token, &name, config);
    ep.start();
    let files = temp_dir("limits-files");
    let submit = |function: &str, payload: String, resources: serde_json::Value| -> String {
        let reply = post(
            &format!("{}/v3/endpoints/{}/submit", svc.url, ep.endpoint_id()),
            &token,
            json!({"tasks": {function: [payload]}, "result_serializers": ["11\n"],
                   "resource_specification": resources}),
        )
        .unwrap();
        reply["tasks"][function][0].as_str().unwrap().to_string()
    };

    // A Python task past its walltime: killed with its worker, TaskTimeout.
    let nap = ep.register("nap", NAP_WITH_PID);
    let pid_file = files.join("nap.pid");
    let payload = pack(&[
        &format!("11\n[{}, 30]", json!(pid_file.display().to_string())),
        "11\n{}",
    ]);
    let slow = submit(&nap, payload, json!({"walltime": 1}));
    let pid: i32 = wait_for(Duration::from_secs(30), "the task to start", || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    let doc = ep.wait_all(std::slice::from_ref(&slow), Duration::from_secs(60))[0].clone();
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["exception_type"], "TaskTimeout", "{doc}");
    assert!(doc.to_string().contains("walltime of 1 s"), "{doc}");
    wait_for(
        Duration::from_secs(60),
        "the timed-out worker to die",
        || (!alive(pid)).then_some(()),
    );

    // The slot has a fresh worker; tasks run in directories of their own.
    let write = ep.register("write", WRITE);
    let tasks = ep.submit_json(&write, &[json!(["a"]), json!(["b"])]);
    let docs = ep.wait_all(&tasks, Duration::from_secs(30));
    let mut dirs = Vec::new();
    for (task, doc) in tasks.iter().zip(&docs) {
        assert_eq!(doc["status"], "success", "{doc}");
        let dir = PathBuf::from(json_result(doc).as_str().unwrap());
        assert_eq!(dir, ep.dir().join("tasks").join(task), "{doc}");
        assert!(dir.join("out.txt").is_file(), "{}", dir.display());
        dirs.push(dir);
    }
    assert_ne!(dirs[0], dirs[1]);
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("out.txt")).unwrap(),
        "a"
    );
    assert_eq!(
        std::fs::read_to_string(dirs[1].join("out.txt")).unwrap(),
        "b"
    );

    // A shell function with a walltime of 60 s under a task walltime of 1 s:
    // the smaller wins; the command runs in its own directory too.
    let shell = post(
        &format!("{}/v3/functions", svc.url),
        &token,
        json!({"function_name": "sh", "function_code":
            pack(&[r#"sh
{"cmd": "pwd > where.txt; sleep 600", "walltime": 60}"#])}),
    )
    .unwrap()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let sh = submit(&shell, pack(&["11\n[]", "11\n{}"]), json!({"walltime": 1}));
    let doc = ep.wait_all(std::slice::from_ref(&sh), Duration::from_secs(90))[0].clone();
    assert_eq!(doc["status"], "success", "{doc}");
    let result: serde_json::Value = serde_json::from_str(
        doc["result"]
            .as_str()
            .and_then(|r| r.strip_prefix("sr\n"))
            .unwrap_or_else(|| panic!("{doc}")),
    )
    .unwrap();
    assert_eq!(result["returncode"], 124, "{result}");
    let stderr = result["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains("walltime of 1 s"),
        "the task's 1 s won: {result}"
    );
    let sandbox = dirs[0].parent().unwrap().join(&sh);
    let pwd = std::fs::read_to_string(sandbox.join("where.txt")).unwrap();
    assert_eq!(pwd.trim(), sandbox.display().to_string());

    // The audit log: who submitted each task, when it ran, how it ended.
    let audit = |task: &str, event: &str| -> serde_json::Value {
        wait_for(Duration::from_secs(10), "audit lines", || {
            let text = std::fs::read_to_string(svc.data_dir.join("audit.log")).ok()?;
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|l| l["task_id"] == task && l["event"] == event)
        })
    };
    for (task, function, outcome) in [(&slow, &nap, "failed"), (&tasks[0], &write, "success")] {
        let submitted = audit(task, "task_submitted");
        let running = audit(task, "task_running");
        let finished = audit(task, "task_finished");
        // Who, what and where are said once, on the submit line.
        assert_eq!(submitted["user"], "limits-user", "{submitted}");
        assert_eq!(submitted["function_id"], function.as_str(), "{submitted}");
        assert_eq!(submitted["endpoint_id"], ep.endpoint_id(), "{submitted}");
        assert_eq!(finished["outcome"], outcome, "{finished}");
        let ts = |l: &serde_json::Value| l["ts"].as_f64().unwrap();
        assert!(ts(&submitted) <= ts(&running) && ts(&running) <= ts(&finished));
    }
    assert_eq!(
        audit(&slow, "task_finished")["exception_type"],
        "TaskTimeout"
    );
    let text = std::fs::read_to_string(svc.data_dir.join("audit.log")).unwrap();
    assert!(text.contains(r#""event":"token_created""#), "{text}");
    assert!(text.contains(r#""event":"endpoint_registered""#), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(svc.data_dir.join("audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
