//! An endpoint's blocks and events, end to end through the real binary: a
//! block that cannot be submitted (a bad partition or queue) shows the
//! scheduler's own message on the service (`/v2/endpoints/{id}/status` and
//! `/v3/endpoints/{id}/events`) and in `hpfaas endpoint status`, here and
//! from another machine by id; a local block is seen running, then
//! cancelled when the endpoint stops; `hpfaas endpoint logs` prints the
//! agent's log and a block's output. The batch cases run against the real
//! Slurm (PBS and LSF through their emulators) and are skipped without it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn unique(tag: &str) -> String {
    format!(
        "it-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn emulators() -> String {
    std::env::var("HPFAAS_EMULATORS")
        .unwrap_or_else(|_| format!("{}/tests/emulators/bin", env!("CARGO_MANIFEST_DIR")))
}

/// The endpoint's events on the service, once `pred` holds for them.
fn events_when(ep: &Endpoint, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let url = format!(
        "{}/v3/endpoints/{}/events?limit=500",
        ep.svc.url,
        ep.endpoint_id()
    );
    wait_for(Duration::from_secs(60), what, || {
        let answer = get(&url, &ep.token).ok()?;
        let events = answer["events"].as_array()?.clone();
        pred(&events).then_some(events)
    })
}

fn has(events: &[Value], kind: &str, words: &str) -> bool {
    events
        .iter()
        .any(|e| e["kind"] == kind && e["message"].as_str().unwrap_or("").contains(words))
}

/// `hpfaas [--output json] endpoint status ARGS...` with `ep`'s home, URL and token.
fn status(ep: &Endpoint, json: bool, args: &[&str]) -> String {
    let mut all = vec!["status"];
    all.extend(args);
    let mut c = hpfaas();
    if json {
        c.args(["--output", "json"]);
    }
    let out = c
        .arg("endpoint")
        .args(&all)
        .env("HPFAAS_HOME", &ep.home)
        .env("HPFAAS_URL", &ep.svc.url)
        .env("HPFAAS_TOKEN", &ep.token)
        .output()
        .unwrap();
    assert_success(&out);
    String::from_utf8(out.stdout).unwrap()
}

/// A block refused by the scheduler: its words reach the service and the CLI.
fn refused_block_shows_the_schedulers_message(provider: &str, words: &str) {
    let svc = Service::start();
    let token = svc.token("alice");
    let placement = match provider {
        "slurm" => "partition = \"no-such-partition\"",
        _ => "queue = \"no-such-queue\"",
    };
    let config = format!(
        "[provider]\ntype = \"{provider}\"\n{placement}\nwalltime = \"00:05:00\"\ninit_blocks = 1\n\
         max_blocks = 1\n"
    );
    let mut ep = Endpoint::new(&svc, &token, &unique(provider), &config);
    if provider != "slurm" {
        ep.path_prefix = Some(emulators());
    }
    ep.start();
    let _guard = EndpointGuard {
        home: ep.home.to_path_buf(),
        name: &ep.name,
    };
    let events = events_when(&ep, "the refused submit", |e| has(e, "block_failed", words));
    assert!(has(&events, "agent_connected", ""), "{events:?}");

    // Here, from the endpoint's directory and the service.
    let doc: Value = wait_for(Duration::from_secs(30), "the error in agent.json", || {
        let doc: Value = serde_json::from_str(&status(&ep, true, &[&ep.name])).unwrap();
        let error = doc["local"]["last_error"].as_str().unwrap_or("");
        error.contains(words).then_some(doc)
    });
    assert!(
        has(doc["events"].as_array().unwrap(), "block_failed", words),
        "{doc}"
    );
    let text = status(&ep, false, &[&ep.name]);
    assert!(
        text.contains("block_failed") && text.contains(words),
        "{text}"
    );

    // Another machine: nothing configured, the endpoint named by its id.
    let elsewhere = temp_dir("elsewhere");
    let out = hpfaas()
        .args(["endpoint", "status", &ep.endpoint_id()])
        .env("HPFAAS_HOME", &*elsewhere)
        .env("HPFAAS_URL", &svc.url)
        .env("HPFAAS_TOKEN", &token)
        .output()
        .unwrap();
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("block_failed") && text.contains(words),
        "{text}"
    );
    assert!(text.contains("online"), "{text}");
}

#[test]
fn a_bad_slurm_partition_shows_sbatchs_message() {
    if slurm_available("a_bad_slurm_partition_shows_sbatchs_message") {
        refused_block_shows_the_schedulers_message("slurm", "invalid partition");
    }
}

#[test]
fn a_bad_pbs_queue_shows_qsubs_message() {
    if slurm_available("a_bad_pbs_queue_shows_qsubs_message") {
        refused_block_shows_the_schedulers_message("pbs", "Unknown queue");
    }
}

#[test]
fn a_bad_lsf_queue_shows_bsubs_message() {
    if slurm_available("a_bad_lsf_queue_shows_bsubs_message") {
        refused_block_shows_the_schedulers_message("lsf", "No such queue");
    }
}

#[test]
fn a_local_block_runs_and_is_cancelled_when_the_endpoint_stops() {
    let svc = Service::start();
    let token = svc.token("alice");
    let config = "[engine]\nmax_workers_per_node = 1\n\n\
                  [provider]\ntype = \"local\"\ninit_blocks = 1\nmax_blocks = 1\n";
    let ep = Endpoint::new(&svc, &token, &unique("local"), config);
    ep.start();
    let guard = EndpointGuard {
        home: ep.home.to_path_buf(),
        name: &ep.name,
    };
    let status_url = format!("{}/v2/endpoints/{}/status", svc.url, ep.endpoint_id());
    let block = wait_for(Duration::from_secs(60), "a running block", || {
        let s = get(&status_url, &token).ok()?;
        let b = s["details"]["blocks"].get(0)?.clone();
        (b["state"] == "running").then_some(b)
    });
    assert_eq!(block["provider"], "local");
    assert_eq!(block["workers"], 1);
    assert!(block["started_at"].as_f64().is_some(), "{block}");
    let events = events_when(&ep, "the block running", |e| has(e, "block_running", ""));
    assert!(has(&events, "block_submitted", "local job"), "{events:?}");
    let id = block["block_id"].as_str().unwrap().to_string();
    // --remote asks only the service, with the endpoint's credential.
    let remote: Value = serde_json::from_str(&status(&ep, true, &["--remote", &ep.name])).unwrap();
    assert!(remote.get("local").is_none(), "{remote}");
    assert_eq!(remote["blocks"][0]["block_id"], id.as_str(), "{remote}");
    assert!(
        has(remote["events"].as_array().unwrap(), "block_running", ""),
        "{remote}"
    );

    // Its output and the agent's log, from the endpoint's directory.
    let out = ep.cmd(&["logs", &ep.name, "--block", &id]);
    assert_success(&out);
    let out = ep.cmd(&["logs", &ep.name]);
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("submitted"), "{log}");
    let out = ep.cmd(&["logs", &ep.name, "--block", "../../x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid block id"));

    assert_success(&ep.cmd(&["stop", &ep.name]));
    drop(guard);
    let events = events_when(&ep, "the block cancelled", |e| {
        has(e, "block_cancelled", "the endpoint stopped")
    });
    let cancelled = events
        .iter()
        .find(|e| e["kind"] == "block_cancelled")
        .unwrap();
    assert_eq!(cancelled["block_id"], id.as_str());
    events_when(&ep, "the agent gone", |e| {
        e.last().is_some_and(|e| e["kind"] == "agent_disconnected")
    });
}

/// A manager that stops answering (stopped with SIGSTOP) is reported lost,
/// with its block, for the agent to turn into a `manager_lost` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_manager_is_reported_lost_with_its_block() {
    use hpfaas_executor::broker::{self, BrokerCommand, BrokerConfig, BrokerEvent};
    let mut broker = broker::start(BrokerConfig::loopback(
        Duration::from_millis(200),
        Duration::from_secs(1),
        None,
    ))
    .unwrap();
    let managers = SimulatedManagers::start(&broker.url, 1, 2, None);
    let registered = async {
        loop {
            match broker.events.recv().await {
                Some(BrokerEvent::Load(load)) if load.managers == 1 => return,
                Some(_) => {}
                None => panic!("the broker stopped"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), registered)
        .await
        .expect("the simulated manager did not register");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(managers.child.id() as i32, libc::SIGSTOP) },
        0
    );
    let lost = async {
        loop {
            match broker.events.recv().await {
                Some(BrokerEvent::ManagerLost { block_id, why }) => return (block_id, why),
                Some(_) => {}
                None => panic!("the broker stopped"),
            }
        }
    };
    let (block_id, why) = tokio::time::timeout(Duration::from_secs(30), lost)
        .await
        .expect("the silent manager was not reported lost");
    assert_eq!(block_id.as_deref(), Some("sim"));
    assert!(why.contains("heartbeat_threshold"), "{why}");
    drop(managers);
    let _ = broker.commands.send(BrokerCommand::Shutdown);
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_follow_prints_what_is_written_across_a_rotation() {
    use std::io::{BufRead as _, Write as _};
    let home = temp_dir("logs-follow");
    let dir = home.join("endpoints").join("ep");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "").unwrap();
    let log = dir.join("endpoint.log");
    std::fs::write(&log, "first line\n").unwrap();
    let mut child = Killed(
        hpfaas()
            .args(["--output", "json", "endpoint", "logs", "ep", "-f"])
            .env("HPFAAS_HOME", &*home)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next = || -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from `endpoint logs -f`");
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next()["line"], "first line");
    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    append("second line\n");
    assert_eq!(next()["line"], "second line");
    // Rotated the way the agent does it: renamed, then a new file.
    append("last of the old file\n");
    std::fs::rename(&log, dir.join("endpoint.log.1")).unwrap();
    std::fs::write(&log, "first of the new file\n").unwrap();
    let (a, b) = (next(), next());
    assert_eq!(a["line"], "last of the old file");
    assert_eq!(b["line"], "first of the new file");
    assert_eq!(b["path"], log.display().to_string());
}
