//! `hpfaas endpoint check` through the real binary against a real service:
//! each thing `start` needs, found missing or wrong, is named with what to
//! do, and the exit status is 0 only when a `start` would work. The full
//! walk-through on Slurm, PBS and LSF is `tests/python/test_walkthrough.py`.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

/// `hpfaas --output json endpoint check NAME` in `home`: the exit status and
/// the report.
fn check_json(home: &Path, url: &str, token: &str, name: &str) -> (bool, serde_json::Value) {
    let mut c = endpoint_command(home, url, token, &["check", name]);
    c.env("HPFAAS_OUTPUT", "json");
    let out = c.output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// The verdict and detail of one check in a report.
fn finding(report: &serde_json::Value, check: &str) -> (String, String) {
    let f = report["findings"]
        .as_array()
        .and_then(|all| all.iter().find(|f| f["check"] == check))
        .unwrap_or_else(|| panic!("no {check} finding in {report:#}"));
    (
        f["verdict"].as_str().unwrap().to_string(),
        f["detail"].as_str().unwrap().to_string(),
    )
}

fn configure(home: &Path, name: &str, text: &str) {
    let dir = home.join("endpoints").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const LOCAL: &str = "[engine]\nmax_workers_per_node = 1\n[provider]\ntype = \"local\"\n";

#[test]
fn a_ready_endpoint_passes_and_shows_its_job_script() {
    let svc = Service::start();
    let token = svc.token("alice");
    let home = temp_dir("check-ready");
    configure(&home, "ready", LOCAL);
    let (ok, report) = check_json(&home, &svc.url, &token, "ready");
    assert!(ok && report["ok"] == true, "{report:#}");
    for check in [
        "configuration",
        "agent",
        "service",
        "credential",
        "scheduler",
        "broker address",
        "worker python",
    ] {
        assert_eq!(finding(&report, check).0, "ok", "{check}: {report:#}");
    }
    assert!(
        report["job_script"]
            .as_str()
            .is_some_and(|s| s.contains(" manager --broker ")),
        "{report:#}"
    );
    // For people: one line per check, the script, and what to run next.
    let out = endpoint_cmd(&home, &svc.url, &token, &["check", "ready"]);
    assert_success(&out);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("ok    credential"), "{stdout}");
    assert!(stdout.contains("hpfaas endpoint start ready"), "{stdout}");
}

#[test]
fn an_unconfigured_endpoint_is_told_how_to_configure() {
    let home = temp_dir("check-none");
    let out = endpoint_cmd(&home, "http://127.0.0.1:9", "t", &["check", "nothing"]);
    assert!(!out.status.success());
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("hpfaas endpoint configure nothing --provider"),
        "{stdout}"
    );
    assert!(stderr.contains("would not start"), "{stderr}");
}

#[test]
fn a_value_the_checks_refuse_is_named_with_its_line() {
    let home = temp_dir("check-value");
    configure(
        &home,
        "bad",
        "# a comment\n[engine]\nprefetch_capacity = 2\nmax_workers_per_node = 0\n",
    );
    let (ok, report) = check_json(&home, "http://127.0.0.1:9", "t", "bad");
    assert!(!ok);
    let (verdict, detail) = finding(&report, "configuration");
    assert_eq!(verdict, "fail");
    assert!(
        detail.contains("line 4: engine.max_workers_per_node must be at least 1"),
        "{detail}"
    );
    // `start` names the line too: one loader.
    let out = endpoint_cmd(&home, "http://127.0.0.1:9", "t", &["start", "bad"]);
    assert!(text(&out).1.contains("line 4: engine.max_workers_per_node"));
}

#[test]
fn an_unreachable_service_and_a_refused_token_are_failures() {
    let home = temp_dir("check-service");
    configure(&home, "ep", LOCAL);
    // Nothing listens on the discard port.
    let (ok, report) = check_json(&home, "http://127.0.0.1:9", "t", "ep");
    assert!(!ok);
    let (verdict, detail) = finding(&report, "service");
    assert_eq!(verdict, "fail");
    assert!(
        detail.contains("cannot reach the service at http://127.0.0.1:9"),
        "{detail}"
    );

    let svc = Service::start();
    let (ok, report) = check_json(&home, &svc.url, "not-a-token", "ep");
    assert!(!ok);
    assert_eq!(finding(&report, "service").0, "ok");
    let (verdict, detail) = finding(&report, "credential");
    assert_eq!(verdict, "fail");
    assert!(
        detail.contains("refused the owner token (401") && detail.contains("HPFAAS_TOKEN"),
        "{detail}"
    );
}

#[test]
fn a_revoked_stored_credential_says_how_to_register_again() {
    let svc = Service::start();
    let token = svc.token("bob");
    let home = temp_dir("check-credential");
    configure(&home, "ep", LOCAL);
    let stored = serde_json::json!({
        "endpoint_id": uuid::Uuid::new_v4().to_string(),
        "credential": "revoked-long-ago",
        "service_url": svc.url,
    });
    std::fs::write(home.join("endpoints/ep/endpoint.json"), stored.to_string()).unwrap();
    let (ok, report) = check_json(&home, &svc.url, &token, "ep");
    assert!(!ok);
    let (verdict, detail) = finding(&report, "credential");
    assert_eq!(verdict, "fail");
    assert!(
        detail.contains("refused endpoint") && detail.contains("endpoint.json"),
        "{detail}"
    );
}

#[test]
fn a_batch_system_that_is_not_here_is_a_failure() {
    let svc = Service::start();
    let token = svc.token("carol");
    let home = temp_dir("check-scheduler");
    // An empty PATH: neither sbatch nor anything else can be found.
    let empty = temp_dir("check-path");
    for (kind, tool) in [("slurm", "sbatch"), ("pbs", "qsub"), ("lsf", "bsub")] {
        configure(
            &home,
            kind,
            &format!("[engine]\naddress = \"127.0.0.1\"\n[provider]\ntype = \"{kind}\"\n"),
        );
        let mut c = endpoint_command(&home, &svc.url, &token, &["check", kind]);
        c.env("HPFAAS_OUTPUT", "json").env("PATH", &*empty);
        let out = c.output().unwrap();
        assert!(!out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (verdict, detail) = finding(&report, "scheduler");
        assert_eq!(verdict, "fail", "{kind}");
        assert!(
            detail.contains(&format!("{tool} is not on PATH")),
            "{detail}"
        );
        // Blocks run elsewhere: a python3 missing here is only a warning.
        assert_eq!(finding(&report, "worker python").0, "warn", "{report:#}");
        // The job script is still shown, to see what would be submitted.
        assert!(report["job_script"].is_string(), "{report:#}");
    }
}

#[test]
fn a_running_endpoint_is_pointed_to_restart() {
    let svc = Service::start();
    let token = svc.token("dave");
    let home = temp_dir("check-running");
    configure(&home, "live", LOCAL);
    let _guard = EndpointGuard {
        home: home.to_path_buf(),
        name: "live",
    };
    assert_success(&endpoint_cmd(&home, &svc.url, &token, &["start", "live"]));
    let (ok, report) = check_json(&home, &svc.url, &token, "live");
    assert!(!ok);
    let (verdict, detail) = finding(&report, "agent");
    assert_eq!(verdict, "fail");
    assert!(detail.contains("hpfaas endpoint restart live"), "{detail}");
    // Its credential is now the stored one, and the service accepts it.
    let (verdict, detail) = finding(&report, "credential");
    assert_eq!(verdict, "ok", "{detail}");
    assert!(detail.contains("accepts endpoint"), "{detail}");
}

#[test]
fn a_scheduler_that_does_not_answer_is_quoted() {
    use std::os::unix::fs::PermissionsExt as _;
    let svc = Service::start();
    let token = svc.token("erin");
    let home = temp_dir("check-down");
    configure(
        &home,
        "down",
        "[engine]\naddress = \"127.0.0.1\"\n[provider]\ntype = \"slurm\"\n",
    );
    // What Slurm's commands say while slurmctld is down.
    let bin = temp_dir("check-down-bin");
    for (tool, body) in [
        ("sbatch", "exit 1"),
        (
            "squeue",
            "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
        ),
    ] {
        let path = bin.join(tool);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut c = endpoint_command(&home, &svc.url, &token, &["check", "down"]);
    c.env("HPFAAS_OUTPUT", "json")
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()));
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (verdict, detail) = finding(&report, "scheduler");
    assert_eq!(verdict, "fail");
    assert!(
        detail.contains("squeue")
            && detail.contains("Unable to contact slurm controller")
            && detail.contains("--jobs=999999999"),
        "{detail}"
    );
}

#[test]
fn a_container_runtime_missing_here_fails_a_local_endpoint() {
    let home = temp_dir("check-container");
    configure(
        &home,
        "boxed",
        "[engine]\ncontainer_type = \"apptainer\"\ncontainer_uri = \"/images/s.sif\"\n\
         [provider]\ntype = \"local\"\n",
    );
    let mut c = endpoint_command(&home, "http://127.0.0.1:9", "t", &["check", "boxed"]);
    c.env("HPFAAS_OUTPUT", "json").env("PATH", "/usr/bin:/bin");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (verdict, detail) = finding(&report, "container");
    assert_eq!(verdict, "fail");
    assert!(detail.contains("apptainer is not on PATH"), "{detail}");
    // The job script's manager carries the container.
    let script = report["job_script"].as_str().unwrap();
    assert!(
        script.contains("--container-type apptainer --container-uri /images/s.sif"),
        "{script}"
    );
}
