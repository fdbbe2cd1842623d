//! The endpoint's whole life through the real binaries: `hpfaas service`,
//! `hpfaas token create`, `hpfaas endpoint configure|start|status|list|stop`,
//! a task over REST through agent, broker, manager and a Python worker, and
//! the refusals (a twin agent on "another login node", a second start, a
//! misspelled config key).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn status_of(svc: &Service, token: &str, endpoint_id: &str) -> String {
    let url = format!("{}/v2/endpoints/{endpoint_id}/status", svc.url);
    get(&url, token).unwrap()["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn endpoint_lifecycle_end_to_end() {
    let svc = Service::start();
    let token = svc.token("alice");
    let home = temp_dir("home");
    let name = "it-lifecycle";
    let _guard = EndpointGuard {
        home: home.to_path_buf(),
        name,
    };

    let out = endpoint_cmd(&home, &svc.url, &token, &["configure", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = home.join("endpoints").join(name).join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // Keep the test quick: short heartbeats.
    let text = text.replace(
        "[engine]\n",
        "[engine]\nmax_workers_per_node = 2\nheartbeat_period = 0.5\nheartbeat_threshold = 10.0\n",
    );
    std::fs::write(&config, text).unwrap();

    let out = endpoint_cmd(&home, &svc.url, &token, &["start", name]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "start failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let credential: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.join("endpoints").join(name).join("endpoint.json")).unwrap(),
    )
    .unwrap();
    let endpoint_id = credential["endpoint_id"].as_str().unwrap().to_string();
    assert!(stdout.contains(&endpoint_id), "{stdout}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("endpoints").join(name).join("endpoint.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the credential must be private");
    }
    assert_eq!(status_of(&svc, &token, &endpoint_id), "online");

    // A second start of the same endpoint says so instead of starting a twin.
    let out = endpoint_cmd(&home, &svc.url, &token, &["start", name]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{out:?}"
    );

    // The same endpoint from "another login node" (a copy of its directory)
    // is refused by the service, which names the host holding it.
    let other = temp_dir("other-home");
    let other_dir = other.join("endpoints").join(name);
    std::fs::create_dir_all(&other_dir).unwrap();
    for f in ["config.toml", "endpoint.json"] {
        std::fs::copy(home.join("endpoints").join(name).join(f), other_dir.join(f)).unwrap();
    }
    let _other_guard = EndpointGuard {
        home: other.to_path_buf(),
        name,
    };
    let out = endpoint_cmd(&other, &svc.url, &token, &["start", name]);
    assert!(!out.status.success(), "a twin agent must be refused");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let host = gethostname();
    assert!(
        err.contains("already connected") && err.contains(&host),
        "{err}"
    );

    // A Python task over REST: JSON arguments, JSON result.
    let fid = post(
        &format!("{}/v3/functions", svc.url),
        &token,
        json!({"function_name": "add", "function_code": pack(&["st\nadd:def add(a, b):\n    return a + b\n"])}),
    )
    .unwrap()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let submit = post(
        &format!("{}/v3/endpoints/{endpoint_id}/submit", svc.url),
        &token,
        json!({"tasks": {&fid: [pack(&["11\n[2, 3]", "11\n{}"])]}, "result_serializers": ["11\n"]}),
    )
    .unwrap();
    let task_id = submit["tasks"][&fid][0].as_str().unwrap().to_string();
    let doc = wait_for(Duration::from_secs(60), "the task to finish", || {
        let doc = get(&format!("{}/v2/tasks/{task_id}", svc.url), &token).unwrap();
        (doc["pending"] == json!(false)).then_some(doc)
    });
    assert_eq!(doc["status"], "success", "{doc}");
    assert_eq!(doc["result"], "11\n5", "{doc}");

    // list and status print tables (and JSON for scripts).
    let out = endpoint_cmd(&home, &svc.url, &token, &["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["name"], name);
    assert_eq!(rows[0]["endpoint_id"], endpoint_id.as_str());
    let out = endpoint_cmd(&home, &svc.url, &token, &["status", name]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains("online") && table.contains("total workers"),
        "{table}"
    );

    // stop: the agent and its blocks go, the service shows it offline.
    let out = endpoint_cmd(&home, &svc.url, &token, &["stop", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        Duration::from_secs(10),
        "the endpoint to go offline",
        || (status_of(&svc, &token, &endpoint_id) == "offline").then_some(()),
    );
    let out = endpoint_cmd(&home, &svc.url, &token, &["stop", name]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn misspelled_config_key_is_refused_with_its_name_and_line() {
    let home = temp_dir("badconfig");
    let out = endpoint_cmd(&home, "http://127.0.0.1:9", "t", &["configure", "it-bad"]);
    assert!(out.status.success());
    let config = home.join("endpoints").join("it-bad").join("config.toml");
    std::fs::write(&config, "[engine]\nmax_worker_per_node = 4\n").unwrap();
    let out = endpoint_cmd(&home, "http://127.0.0.1:9", "t", &["start", "it-bad"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("max_worker_per_node") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn unknown_subcommand_and_bad_names_fail_cleanly() {
    let out = hpfaas()
        .args(["endpoint", "start", "../escape"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid endpoint name"));
    let out = hpfaas().args(["frobnicate"]).output().unwrap();
    assert!(!out.status.success());
}

fn gethostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
