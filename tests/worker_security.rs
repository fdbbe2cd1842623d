//! What a task can reach on a shared cluster, through the real stack
//! (service, agent, local block, manager, workers): the worker runtime is
//! not taken from the shared temp directory, no secret or private path
//! reaches a task's environment (nor its manager's, which a task running as
//! the same user can read), and tasks start outside the endpoint directory.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Everything a task can learn from where it runs.
const SNOOP: &str = "def snoop():\n    import os, sys\n    \
    with open('/proc/%d/environ' % os.getppid(), 'rb') as f:\n        \
        manager = f.read().decode('utf-8', 'replace')\n    \
    return {'env': dict(os.environ), 'manager_env': manager, 'cwd': os.getcwd(), 'path': sys.path}\n";

fn config() -> &'static str {
    "[engine]\nmax_workers_per_node = 1\nheartbeat_period = 0.5\nheartbeat_threshold = 4.0\n\
     shell_output_limit = 65536\n\
     [provider]\ntype = \"local\"\ninit_blocks = 1\nmax_blocks = 1\n"
}

/// The JSON result of a finished task.
fn json_result(doc: &Value) -> Value {
    assert_eq!(doc["status"], "success", "{doc}");
    let text = doc["result"].as_str().unwrap();
    serde_json::from_str(text.strip_prefix("11\n").unwrap()).unwrap()
}

#[test]
fn tasks_see_no_secrets_no_private_paths_and_no_planted_runtime() {
    let svc = Service::start();
    let token = svc.token("owner");
    let name = format!("it-wsec-{}", std::process::id());
    let ep = Endpoint::new(&svc, &token, &name, config());
    // The agent's temp directory: shared in real life, so nothing of the
    // endpoint's may be written (and later trusted) there.
    let shared_tmp = temp_dir("shared-tmp");
    let out = endpoint_command(&ep.home, &svc.url, &token, &["start", &name])
        .env("TMPDIR", &*shared_tmp)
        .output()
        .unwrap();
    assert_success(&out);

    let snoop = ep.register("snoop", SNOOP);
    let tasks = ep.submit_json(&snoop, &[json!([])]);
    let report = json_result(&ep.wait_all(&tasks, Duration::from_secs(90))[0]);

    let home = ep.home.display().to_string();
    let env = report["env"].as_object().unwrap();
    for (key, value) in env {
        let value = value.as_str().unwrap_or_default();
        assert!(
            !value.contains(&token),
            "the owner's token reached the task as {key}"
        );
        assert!(
            !key.starts_with("HPFAAS_")
                || ["HPFAAS_WORKER_RANK", "HPFAAS_WORKER_COUNT"].contains(&key.as_str()),
            "{key}={value} reached the task"
        );
        assert!(
            !value.contains(&home),
            "{key}={value} names the endpoint's private files"
        );
    }
    let manager_env = report["manager_env"].as_str().unwrap();
    assert!(
        !manager_env.contains(&token),
        "the owner's token is in the manager's environment, which tasks can read"
    );
    let cwd = report["cwd"].as_str().unwrap();
    assert!(!cwd.starts_with(&home), "the task started in {cwd}");

    // The runtime comes from the endpoint's private directory, not the temp dir.
    let planted: Vec<_> = std::fs::read_dir(&*shared_tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("hpfaas"))
        .collect();
    assert!(
        planted.is_empty(),
        "written in the shared temp dir: {planted:?}"
    );
    let runtime = ep.dir().join("runtime");
    assert_eq!(std::fs::metadata(&runtime).unwrap().mode() & 0o777, 0o700);
    let path = report["path"].to_string();
    assert!(path.contains(&runtime.display().to_string()), "{path}");

    // A shell function's caller passes data, never commands; and a command
    // printing without end is cut to the endpoint's shell_output_limit.
    let shell = |cmd: &str| {
        let code = pack(&[&format!("sh\n{}", json!({"cmd": cmd}))]);
        post(
            &format!("{}/v3/functions", svc.url),
            &token,
            json!({"function_name": "sh", "function_code": code}),
        )
        .unwrap()["function_uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let marker = shared_tmp.join("pwned");
    let attack = format!("x; touch {}", marker.display());
    let echo = shell("printf %s {msg}");
    let flood = shell("yes | head -c 5000000");
    let submit = |function: &str, kwargs: Value| {
        let payload = pack(&["11\n[]", &format!("11\n{kwargs}")]);
        let url = format!("{}/v3/endpoints/{}/submit", svc.url, ep.endpoint_id());
        let reply = post(&url, &token, json!({"tasks": {function: [payload]}})).unwrap();
        reply["tasks"][function][0].as_str().unwrap().to_string()
    };
    let tasks = [
        submit(&echo, json!({"msg": attack})),
        submit(&flood, json!({})),
    ];
    let docs = ep.wait_all(&tasks, Duration::from_secs(90));
    let result = |doc: &Value| -> Value {
        assert_eq!(doc["status"], "success", "{doc}");
        let text = doc["result"].as_str().unwrap();
        serde_json::from_str(text.strip_prefix("sr\n").unwrap()).unwrap()
    };
    let echoed = result(&docs[0]);
    assert_eq!(echoed["stdout"], attack.as_str(), "{echoed}");
    assert!(!marker.exists(), "the caller's argument ran a command");
    let flooded = result(&docs[1]);
    let kept = flooded["stdout"].as_str().unwrap().len();
    assert!(kept < 70_000, "{kept} bytes kept");
    assert!(
        flooded["stdout_dropped"].as_u64().unwrap() > 4_900_000,
        "{}",
        flooded["stdout_dropped"]
    );
}

/// A runtime directory another user owns, where the manager would install
/// its own, is refused: the block fails with a message naming it, and no
/// task ever runs the planted code.
#[test]
fn a_planted_runtime_is_refused() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("a_planted_runtime_is_refused: skipped: needs root to chown");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root"
        );
        return;
    }
    let dir = temp_dir("planted");
    let base = dir.join("runtime");
    std::fs::create_dir(&base).unwrap();
    std::os::unix::fs::chown(&base, Some(65534), Some(65534)).unwrap();
    let out = hpfaas()
        .args([
            "manager",
            "--broker",
            "tcp://127.0.0.1:9",
            "--register-timeout",
            "1",
            "--runtime-dir",
        ])
        .arg(&base)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&base.display().to_string()) && stderr.contains("uid 65534"),
        "{stderr}"
    );
}
