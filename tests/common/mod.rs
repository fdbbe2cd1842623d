//! Helpers for the integration tests: a real `hpfaas service` on a free
//! loopback port, private `HPFAAS_HOME`s, and a small REST client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn hpfaas() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hpfaas"))
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hpfaas-it-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `hpfaas service`, killed on drop.
pub struct Service {
    pub url: String,
    pub data_dir: PathBuf,
    child: Child,
}

impl Service {
    pub fn start() -> Service {
        let data_dir = temp_dir("service");
        let mut child = hpfaas()
            .args(["service", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                // Keep draining so the service never blocks on a full pipe.
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("service did not start");
        Service {
            url,
            data_dir,
            child,
        }
    }

    /// A new user's API token, made with `hpfaas token create`.
    pub fn token(&self, user: &str) -> String {
        let out = hpfaas()
            .args(["token", "create", "--user", user, "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hpfaas endpoint ...` with a private home, pointed at `url` with `token`.
pub fn endpoint_cmd(home: &Path, url: &str, token: &str, args: &[&str]) -> std::process::Output {
    hpfaas()
        .arg("endpoint")
        .args(args)
        .env("HPFAAS_HOME", home)
        .env("HPFAAS_URL", url)
        .env("HPFAAS_TOKEN", token)
        .output()
        .unwrap()
}

/// Stops an endpoint when dropped, so a failing test leaves no agent behind.
pub struct EndpointGuard<'a> {
    pub home: PathBuf,
    pub name: &'a str,
}

impl Drop for EndpointGuard<'_> {
    fn drop(&mut self) {
        let _ = hpfaas()
            .args(["endpoint", "stop", self.name])
            .env("HPFAAS_HOME", &self.home)
            .output();
    }
}

pub fn get(url: &str, token: &str) -> Result<serde_json::Value, (u16, serde_json::Value)> {
    into_json(
        ureq::get(url)
            .set("Authorization", &format!("Bearer {token}"))
            .call(),
    )
}

pub fn post(
    url: &str,
    token: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, (u16, serde_json::Value)> {
    into_json(
        ureq::post(url)
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(body),
    )
}

fn into_json(
    r: Result<ureq::Response, ureq::Error>,
) -> Result<serde_json::Value, (u16, serde_json::Value)> {
    match r {
        Ok(resp) => Ok(resp.into_json().unwrap()),
        Err(ureq::Error::Status(code, resp)) => Err((code, resp.into_json().unwrap_or_default())),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Globus Compute framing of buffers.
pub fn pack(buffers: &[&str]) -> String {
    buffers
        .iter()
        .map(|b| format!("{}\n{b}", b.chars().count()))
        .collect()
}
