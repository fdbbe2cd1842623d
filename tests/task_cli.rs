//! `hpfaas task list|show|logs|cancel|wait` against a real service and a
//! local endpoint: each command's table and its `--output json` document,
//! and a finished task's timeline naming the block, manager, worker and
//! host that ran it (carried from the manager through broker and agent).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Runs `hpfaas task ARGS...` as the endpoint's owner, in its home (where
/// its name is known); (success, stdout, stderr).
fn task_cmd(ep: &Endpoint, args: &[&str]) -> (bool, String, String) {
    let out = hpfaas()
        .arg("task")
        .args(args)
        .env("HPFAAS_HOME", &*ep.home)
        .env("HPFAAS_URL", &ep.svc.url)
        .env("HPFAAS_TOKEN", &ep.token)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn task_json(ep: &Endpoint, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = task_cmd(ep, &all);
    assert!(ok, "task {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn task_commands_list_show_log_cancel_and_wait() {
    let svc = Service::start();
    let token = svc.token("cli-tasks");
    let name = format!("it-task-cli-{}", std::process::id());
    let config = "[engine]\nmax_workers_per_node = 1\nprefetch_capacity = 0\n\
                  [provider]\ntype = \"local\"\ninit_blocks = 1\nmax_blocks = 1\n";
    let ep = Endpoint::new(&svc, &token, &name, config);
    ep.start();
    let add = ep.register("add", "def add(a, b):\n    return a + b\n");
    let boom = ep.register("boom", "def boom():\n    raise ValueError('no luck')\n");
    let nap = ep.register("nap", "def nap(s):\n    import time\n    time.sleep(s)\n");
    let shell = post(
        &format!("{}/v3/functions", svc.url),
        &token,
        json!({"function_name": "greet", "function_code":
            pack(&[r#"sh
{"cmd": "echo hello {who}; echo careful >&2"}"#])}),
    )
    .unwrap()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string();

    let sum = ep.submit_json(&add, &[json!([1, 2])])[0].clone();
    let failed = ep.submit_json(&boom, &[json!([])])[0].clone();
    let greeting = post(
        &format!("{}/v3/endpoints/{}/submit", svc.url, ep.endpoint_id()),
        &token,
        json!({"tasks": {&shell: [pack(&["11\n[]", "11\n{\"who\": \"world\"}"])]}}),
    )
    .unwrap()["tasks"][&shell][0]
        .as_str()
        .unwrap()
        .to_string();

    // wait: all three finish; one failed, so the command fails and says so.
    let (ok, stdout, stderr) = task_cmd(&ep, &["wait", &sum, &failed, &greeting]);
    assert!(!ok, "a failed task makes wait fail");
    assert!(stderr.contains("1 of 3 tasks did not succeed"), "{stderr}");
    assert!(
        stdout.contains("failed") && stdout.contains("ValueError"),
        "{stdout}"
    );
    let waited = task_json(&ep, &["wait", &sum, &greeting]);
    assert_eq!(waited["tasks"][0]["status"], "success");

    // show: the timeline and where the task ran.
    let shown = task_json(&ep, &["show", &sum]);
    assert_eq!(shown["result"], "11\n3");
    for moment in ["submitted", "dispatched", "started", "finished"] {
        assert!(shown["timeline"][moment].is_string(), "{moment}: {shown}");
    }
    let placement = &shown["placement"];
    assert_eq!(placement["worker"], 0, "{shown}");
    assert_eq!(placement["host"].as_str(), Some(gethostname().as_str()));
    assert!(placement["block_id"].is_string() && placement["manager_id"].is_string());
    let (ok, table, _) = task_cmd(&ep, &["show", &failed]);
    assert!(ok);
    assert!(
        table.contains("ValueError") && table.contains("no luck"),
        "{table}"
    );
    assert!(
        table.contains("Traceback"),
        "the traceback follows: {table}"
    );

    // logs: a shell task's output, stdout and stderr apart.
    let (ok, stdout, stderr) = task_cmd(&ep, &["logs", &greeting]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "hello world\n");
    assert_eq!(stderr, "careful\n");
    let logs = task_json(&ep, &["logs", &greeting]);
    assert_eq!(logs["stdout"], "hello world\n");
    let (ok, _, stderr) = task_cmd(&ep, &["logs", &sum]);
    assert!(!ok && stderr.contains("no captured output"), "{stderr}");

    // cancel: a running task is cancelled, a finished one is left as it is.
    let long = ep.submit_json(&nap, &[json!([600])])[0].clone();
    wait_for(Duration::from_secs(30), "the nap to run", || {
        (ep.task(&long)["status"] == "running").then_some(())
    });
    let cancelled = task_json(&ep, &["cancel", &long, &sum]);
    assert_eq!(cancelled["tasks"][0]["cancelled"], true, "{cancelled}");
    assert_eq!(cancelled["tasks"][1]["cancelled"], false, "{cancelled}");
    let (ok, _, stderr) = task_cmd(&ep, &["wait", "--timeout", "30", &long]);
    assert!(!ok && stderr.contains("did not succeed"), "{stderr}");

    // list: newest first, filtered, as a table too.
    let listed = task_json(&ep, &["list"]);
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [&long, &greeting, &failed, &sum]);
    let only_failed = task_json(&ep, &["list", "--status", "failed"]);
    assert_eq!(only_failed["tasks"].as_array().unwrap().len(), 1);
    let by_name = task_json(&ep, &["list", "--endpoint", &name, "--limit", "2"]);
    assert_eq!(by_name["tasks"].as_array().unwrap().len(), 2);
    assert!(by_name["next_cursor"].is_string());
    let (ok, table, _) = task_cmd(&ep, &["list", "--since", "1h"]);
    assert!(ok);
    assert!(table.starts_with("TASK ID"), "{table}");
    assert_eq!(table.lines().count(), 5, "{table}");

    // Mistakes are named.
    let (ok, _, stderr) = task_cmd(&ep, &["list", "--status", "finished"]);
    assert!(!ok && stderr.contains("status"), "{stderr}");
    let (ok, _, stderr) = task_cmd(&ep, &["show", "not-a-task"]);
    assert!(!ok && stderr.contains("not a task id"), "{stderr}");
    let (ok, _, stderr) = task_cmd(&ep, &["wait", "--timeout", "0.5", &long.replace('a', "b")]);
    assert!(!ok, "{stderr}");
}

fn gethostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
