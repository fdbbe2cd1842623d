//! An endpoint behind a proxy: the agent reaches the service only through
//! an HTTP CONNECT proxy named by `HTTPS_PROXY`/`HTTP_PROXY`, as on login
//! nodes whose only way out is the site proxy.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// A minimal forward proxy: CONNECT tunnels (counted) and absolute-form
/// plain-HTTP requests, as squid and most site proxies serve them.
fn start_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = Arc::new(AtomicUsize::new(0));
    let count = tunnels.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let count = count.clone();
            std::thread::spawn(move || serve(client, &count));
        }
    });
    (format!("http://{addr}"), tunnels)
}

fn serve(client: TcpStream, count: &AtomicUsize) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap_or_default();
    let mut headers = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        headers.push_str(&header);
    }
    let parts: Vec<&str> = request_line.split_whitespace().collect();
    let [method, target, version] = parts[..] else {
        return;
    };
    let (authority, forwarded) = match (method, target.strip_prefix("http://")) {
        ("CONNECT", _) => (target.to_string(), None),
        (_, Some(rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            (
                authority.to_string(),
                Some(format!("{method} /{path} {version}\r\n{headers}\r\n")),
            )
        }
        _ => {
            let _ = (&client).write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            return;
        }
    };
    let Ok(mut upstream) = TcpStream::connect(&authority) else {
        let _ = (&client).write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    match forwarded {
        Some(head) => upstream.write_all(head.as_bytes()).unwrap(),
        None => {
            count.fetch_add(1, Ordering::SeqCst);
            (&client)
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .unwrap();
        }
    }
    let (mut up_r, mut up_w) = (upstream.try_clone().unwrap(), upstream);
    let mut client_w = client;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut up_w);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 16384];
    while let Ok(n) = up_r.read(&mut buf) {
        if n == 0 || client_w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

#[test]
fn agent_connects_through_a_connect_proxy() {
    let svc = Service::start();
    let token = svc.token("proxied");
    let home = temp_dir("proxy-home");
    let name = "it-proxy";
    let _guard = EndpointGuard {
        home: home.to_path_buf(),
        name,
    };
    let (proxy, tunnels) = start_proxy();
    let run = |args: &[&str]| {
        hpfaas()
            .arg("endpoint")
            .args(args)
            .env("HPFAAS_HOME", &home)
            .env("HPFAAS_URL", &svc.url)
            .env("HPFAAS_TOKEN", &token)
            .env("HTTPS_PROXY", &proxy)
            .env("HTTP_PROXY", &proxy)
            .env("NO_PROXY", "")
            .env("no_proxy", "")
            .output()
            .unwrap()
    };
    assert!(run(&["configure", name]).status.success());
    let out = run(&["start", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let credential: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.join("endpoints").join(name).join("endpoint.json")).unwrap(),
    )
    .unwrap();
    let url = format!(
        "{}/v2/endpoints/{}/status",
        svc.url,
        credential["endpoint_id"].as_str().unwrap()
    );
    wait_for(Duration::from_secs(20), "the endpoint to be online", || {
        (get(&url, &token).unwrap()["status"] == "online").then_some(())
    });
    assert!(
        tunnels.load(Ordering::SeqCst) >= 1,
        "the agent did not go through the proxy"
    );
    assert!(run(&["stop", name]).status.success());
}
