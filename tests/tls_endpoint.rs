//! An endpoint of a service that serves TLS with a private CA: with
//! `endpoint.ca_file` it registers and connects over `wss://` and runs a
//! task; without it, `hpfaas endpoint start` fails naming the certificate
//! problem. The self-signed certificate is made with `openssl` (skipped with a
//! printed reason without it; required under `CI=true`).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A self-signed certificate for localhost/127.0.0.1 and its key, or `None`
/// (with the reason printed) when `openssl` is missing.
fn self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // rustls (webpki) refuses a CA certificate as the server's own one.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match out {
        Ok(out) if out.status.success() => Some((cert, key)),
        other => {
            let reason = format!("tls_endpoint: skipped: cannot run openssl: {other:?}");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{reason}, and CI=true requires it"
            );
            eprintln!("{reason}");
            None
        }
    }
}

fn endpoint_cmd(home: &Path, url: &str, token: &str, args: &[&str]) -> std::process::Output {
    endpoint_command(home, url, token, args)
        .env_remove("HPFAAS_CA_FILE")
        .output()
        .unwrap()
}

fn configure(home: &Path, name: &str, endpoint_section: &str) {
    let dir = home.join("endpoints").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[endpoint]\n{endpoint_section}\n[engine]\nmax_workers_per_node = 1\n\
             heartbeat_period = 0.5\nheartbeat_threshold = 10.0\n\n[provider]\ntype = \"local\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn endpoint_trusts_its_ca_file_over_wss() {
    let tmp = temp_dir("tls");
    let Some((cert, key)) = self_signed(&tmp) else {
        return;
    };
    let svc = Service::start_with(&[
        OsStr::new("--tls-cert"),
        cert.as_os_str(),
        OsStr::new("--tls-key"),
        key.as_os_str(),
    ]);
    assert!(svc.url.starts_with("https://"), "{}", svc.url);
    let token = svc.token("tls");
    let home = temp_dir("tls-home");

    // Without the CA the certificate is refused, and start says why.
    configure(&home, "no-ca", "");
    let out = endpoint_cmd(&home, &svc.url, &token, &["start", "no-ca"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "started without the CA: {text}");
    assert!(
        text.contains("certificate") || text.contains("UnknownIssuer"),
        "the error names the certificate problem: {text}"
    );

    // With it, the endpoint registers, connects over wss:// and runs a task.
    let name = "with-ca";
    configure(
        &home,
        name,
        &format!("ca_file = {:?}", cert.display().to_string()),
    );
    let _guard = EndpointGuard {
        home: home.to_path_buf(),
        name,
    };
    let out = endpoint_cmd(&home, &svc.url, &token, &["start", name]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(" id "),
        "start failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let credential: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.join("endpoints").join(name).join("endpoint.json")).unwrap(),
    )
    .unwrap();
    let endpoint_id = credential["endpoint_id"].as_str().unwrap();

    let agent = hpfaas_executor::tls::ureq_agent(Some(&cert))
        .unwrap()
        .build();
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| -> serde_json::Value {
        let request = agent
            .request(method, &format!("{}{path}", svc.url))
            .set("Authorization", &format!("Bearer {token}"));
        match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        .into_json()
        .unwrap()
    };
    let code = pack(&["st\ndouble:def double(x):\n    return 2 * x\n"]);
    let function_id = call(
        "POST",
        "/v3/functions",
        Some(json!({"function_name": "double", "function_code": code})),
    )["function_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let payload = pack(&["11\n[21]", "11\n{}"]);
    let reply = call(
        "POST",
        &format!("/v3/endpoints/{endpoint_id}/submit"),
        Some(json!({"tasks": {&function_id: [payload]}, "result_serializers": ["11\n"]})),
    );
    let task_id = reply["tasks"][&function_id][0]
        .as_str()
        .unwrap()
        .to_string();
    let doc = wait_for(Duration::from_secs(60), "the task over wss://", || {
        let doc = call("GET", &format!("/v2/tasks/{task_id}"), None);
        (doc["pending"] == json!(false)).then_some(doc)
    });
    assert_eq!(doc["status"], "success", "{doc}");
    assert_eq!(doc["result"], "11\n42");
    let status = call("GET", &format!("/v2/endpoints/{endpoint_id}/status"), None);
    assert_eq!(status["status"], "online", "{status}");
}
