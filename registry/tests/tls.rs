//! HTTPS: with `--tls-cert/--tls-key` the service speaks TLS on its one port;
//! REST, the result stream and the endpoint WebSocket (`wss://`) all work
//! for a client that trusts the certificate, and nothing works without TLS
//! or without that trust. The certificate is made here, self-signed.

mod common;

use std::sync::Arc;

use common::*;
use hpfaas_protocol::endpoint::AgentMessage;
use hpfaas_registry::{Service, ServiceConfig, TlsFiles};
use serde_json::json;

struct Pki {
    cert_pem: String,
    key_pem: String,
    client: Arc<rustls::ClientConfig>,
}

fn pki() -> Pki {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki {
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
        client: Arc::new(client),
    }
}

fn write_files(dir: &std::path::Path, pki: &Pki) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, &pki.cert_pem).unwrap();
    std::fs::write(&files.key, &pki.key_pem).unwrap();
    files
}

#[test]
fn https_and_wss_work_for_a_client_that_trusts_the_certificate() {
    let pki = pki();
    let dir = TestService::fresh_dir();
    let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap(), dir.clone());
    config.tls = Some(write_files(&dir.join("tls"), &pki));
    let svc = TestService::start_config(config, |_| {});
    let base = format!("https://127.0.0.1:{}", svc.addr.port());
    let agent = ureq::AgentBuilder::new()
        .timeout(WAIT)
        .tls_config(pki.client.clone())
        .build();
    let anon = Http::with_agent(base.clone(), None, agent);
    assert_eq!(
        anon.get("/v2/version").ok(),
        json!(hpfaas_protocol::HPFAAS_VERSION)
    );
    let alice = anon.as_token(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, cred) = alice.register_endpoint("ep");
    let sub = alice.submit(&ep, json!({f.clone(): ["a"]}));
    let group = sub["task_group_id"].as_str().unwrap().to_string();
    let t = task_ids(&sub, &f)[0];
    let mut stream = alice.stream(&group, None);

    // The agent over wss://, trusting the same certificate.
    let wss = format!("wss://127.0.0.1:{}", svc.addr.port());
    let connector = tokio_tungstenite::Connector::Rustls(pki.client.clone());
    let mut agent = Agent::connect_url(&wss, &ep, &cred, Some(connector)).expect("wss connect");
    match agent.hello("login1", 1) {
        hpfaas_protocol::endpoint::ServiceMessage::Welcome { .. } => {}
        other => panic!("expected welcome, got {other:?}"),
    }
    let (tasks, _) = agent.recv_tasks(1);
    assert_eq!(tasks[0].task_id, t);
    agent.send(&AgentMessage::Results {
        results: vec![success(t, "over tls")],
    });
    assert_eq!(agent.recv_result_ack(), vec![t]);
    let e = stream.next_event();
    assert_eq!(e.data["result"], "over tls");
    assert_eq!(alice.task(&t.to_string())["status"], "success");
    assert_eq!(alice.endpoint_status(&ep)["status"], "online");

    // Plain HTTP to the TLS port, and a client without the certificate among
    // its roots, get nowhere.
    let plain = ureq::AgentBuilder::new().timeout(WAIT).build();
    let err = plain
        .get(&format!("http://{}/v2/version", svc.addr))
        .call()
        .unwrap_err();
    assert!(matches!(err, ureq::Error::Transport(_)), "{err}");
    let err = plain.get(&format!("{base}/v2/version")).call().unwrap_err();
    assert!(matches!(err, ureq::Error::Transport(_)), "{err}");
    agent.close();
}

#[test]
fn bad_tls_files_stop_the_service_with_a_clear_error() {
    let pki = pki();
    let other = pki_key_only();
    let dir = TestService::fresh_dir();
    let files = write_files(&dir.join("tls"), &pki);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bind = |tls: TlsFiles| {
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap(), dir.clone());
        config.tls = Some(tls);
        rt.block_on(Service::bind(config))
            .err()
            .map(|e| format!("{e:#}"))
    };
    let missing = dir.join("nope.pem");
    let e = bind(TlsFiles {
        cert: files.cert.clone(),
        key: missing.clone(),
    })
    .expect("a missing key is an error");
    assert!(e.contains("nope.pem"), "{e}");
    let e = bind(TlsFiles {
        cert: files.key.clone(),
        key: files.key.clone(),
    })
    .expect("a key is no certificate");
    assert!(e.contains("no PEM certificate"), "{e}");
    let wrong_key = dir.join("tls/other.pem");
    std::fs::write(&wrong_key, other).unwrap();
    let e = bind(TlsFiles {
        cert: files.cert.clone(),
        key: wrong_key,
    })
    .expect("a key of another certificate is an error");
    assert!(e.contains("does not fit"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A private key of some other certificate.
fn pki_key_only() -> String {
    pki().key_pem
}
