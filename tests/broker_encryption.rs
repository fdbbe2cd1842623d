//! CurveZMQ on the broker↔manager link, through the real binaries: a
//! manager with only the broker's public key and a key of its own (or no
//! key) is not registered, and the bytes on the link carry no function
//! source or argument in clear — unless `engine.encrypted = false`, which
//! shows the capture would see them. With `engine.address = "unix"` (what
//! `hpfaas up` uses) the link is a Unix socket only the owner can open.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hpfaas_executor::broker::curve::CurveFile;
use serde_json::json;

const CONFIG: &str =
    "[engine]\nmax_workers_per_node = 1\nheartbeat_period = 0.5\nheartbeat_threshold = 10.0\n";

fn broker_record(ep: &Endpoint) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ep.dir().join("broker.json")).unwrap()).unwrap()
}

fn managers(ep: &Endpoint) -> serde_json::Value {
    let url = format!("{}/v2/endpoints/{}/status", ep.svc.url, ep.endpoint_id());
    get(&url, &ep.token).unwrap()["details"]["managers"].clone()
}

/// When the service last heard the agent's heartbeat.
fn last_heartbeat(ep: &Endpoint) -> serde_json::Value {
    let url = format!("{}/v2/endpoints/{}/status", ep.svc.url, ep.endpoint_id());
    get(&url, &ep.token).unwrap()["details"]["last_heartbeat"].clone()
}

#[test]
fn only_the_endpoint_keys_register() {
    let svc = Service::start();
    let token = svc.token("alice");
    let config = format!(
        "{CONFIG}\n[provider]\ntype = \"local\"\ninit_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n"
    );
    let ep = Endpoint::new(&svc, &token, "it-curve-zap", &config);
    ep.start();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ep.dir().join("curve.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the CURVE keys must be private");
    }
    wait_for(Duration::from_secs(60), "the block's manager", || {
        (managers(&ep) == json!(1)).then_some(())
    });
    let record = broker_record(&ep);
    let url = record["url"].as_str().unwrap().to_string();
    let server_key = record["server_key"]
        .as_str()
        .expect("broker.json names the broker's public key")
        .to_string();

    // The intruder knows the broker's public key and has a keypair of its own.
    let intruder_dir = temp_dir("intruder");
    let intruder = intruder_dir.join("keys.json");
    CurveFile::client_only().unwrap().write(&intruder).unwrap();
    let run = |extra: &[&str]| {
        hpfaas()
            .args(["manager", "--broker", &url, "--block-id", "intruder"])
            .args(["--register-timeout", "5"])
            .args(extra)
            .output()
            .unwrap()
    };
    let heartbeat_before = last_heartbeat(&ep);
    let out = run(&[
        "--server-key",
        &server_key,
        "--curve-file",
        intruder.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the intruder registered: {err}");
    // Refused by the ZAP handler, not left to its registration timeout.
    assert!(err.contains("refused this manager's CURVE key"), "{err}");

    // Without any key: no registration either, with an error that says why.
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a plain manager registered: {err}");
    assert!(
        err.contains("cannot register") || err.contains("did not answer"),
        "{err}"
    );

    // The endpoint still has only its own manager (by a heartbeat sent after
    // both attempts), and still runs tasks.
    wait_for(
        Duration::from_secs(60),
        "a heartbeat after the attempts",
        || (last_heartbeat(&ep) != heartbeat_before).then_some(()),
    );
    assert_eq!(managers(&ep), json!(1));
    let fid = ep.register("add", "def add(a, b):\n    return a + b\n");
    let ids = ep.submit_json(&fid, &[json!([2, 3])]);
    let docs = ep.wait_all(&ids, Duration::from_secs(60));
    assert_eq!(docs[0]["status"], json!("success"), "{}", docs[0]);
}

/// A TCP relay recording both directions.
fn relay(target: String) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (port, seen)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Runs one task through a hand-started manager behind a recording relay;
/// returns the recorded bytes.
fn capture(name: &str, encrypted: bool) -> Vec<u8> {
    let svc = Service::start();
    let token = svc.token("alice");
    // No blocks of its own: the only manager is ours, behind the relay.
    let config = format!(
        "{CONFIG}encrypted = {encrypted}\nallow_unencrypted_tcp = {}\n[provider]\ntype = \"local\"\ninit_blocks = 0\nmin_blocks = 0\nmax_blocks = 0\n",
        !encrypted
    );
    let ep = Endpoint::new(&svc, &token, name, &config);
    ep.start();
    let url = broker_record(&ep)["url"].as_str().unwrap().to_string();
    let (port, seen) = relay(url.trim_start_matches("tcp://").to_string());
    let keys = ep.dir().join("curve.json");
    let mut manager = hpfaas();
    manager
        .args(["manager", "--broker", &format!("tcp://127.0.0.1:{port}")])
        .args(["--block-id", "relayed", "--workers", "1"]);
    if encrypted {
        manager.arg("--curve-file").arg(&keys);
    } else {
        assert!(!keys.exists(), "no keys are made when encryption is off");
    }
    let mut manager = manager
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "the relayed manager", || {
        (managers(&ep) == json!(1)).then_some(())
    });
    let fid = ep.register(
        "shout",
        "def shout(word):\n    return 'zebra_source_marker_' + word\n",
    );
    let ids = ep.submit_json(&fid, &[json!(["quokka_argument_marker"])]);
    let docs = ep.wait_all(&ids, Duration::from_secs(60));
    assert_eq!(docs[0]["status"], json!("success"), "{}", docs[0]);
    let _ = ep.cmd(&["stop", name]);
    let _ = manager.kill();
    let _ = manager.wait();
    let bytes = seen.lock().unwrap().clone();
    assert!(bytes.len() > 100, "the relay saw {} bytes", bytes.len());
    bytes
}

#[test]
fn link_carries_no_source_or_argument_in_clear() {
    let bytes = capture("it-curve-capture", true);
    assert!(
        !contains(&bytes, "zebra_source_marker_"),
        "function source in clear"
    );
    assert!(
        !contains(&bytes, "quokka_argument_marker"),
        "argument in clear"
    );

    // The same capture with encryption off sees both: the capture works.
    let bytes = capture("it-curve-clear", false);
    assert!(contains(&bytes, "zebra_source_marker_"));
    assert!(contains(&bytes, "quokka_argument_marker"));
}

#[test]
fn a_unix_socket_broker_is_private_and_runs_tasks_without_keys() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let svc = Service::start();
    let token = svc.token("alice");
    let config = format!(
        "{CONFIG}address = \"unix\"\n[provider]\ntype = \"local\"\ninit_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n"
    );
    let ep = Endpoint::new(&svc, &token, "it-unix-broker", &config);
    ep.start();
    wait_for(Duration::from_secs(60), "the block's manager", || {
        (managers(&ep) == json!(1)).then_some(())
    });
    let record = broker_record(&ep);
    let socket = ep.dir().join("broker.sock");
    assert_eq!(record["url"], json!(format!("ipc://{}", socket.display())));
    assert!(record.get("server_key").is_none(), "{record}");
    assert!(!ep.dir().join("curve.json").exists(), "no keys are needed");
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    let mode = std::fs::metadata(ep.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "only the owner may reach the socket");

    let fid = ep.register("twice", "def twice(x):\n    return 2 * x\n");
    let ids = ep.submit_json(&fid, &[json!([21])]);
    let docs = ep.wait_all(&ids, Duration::from_secs(60));
    assert_eq!(docs[0]["status"], json!("success"), "{}", docs[0]);
    assert_eq!(docs[0]["result"], json!("11\n42"));
    let _ = ep.cmd(&["stop", "it-unix-broker"]);
}
