//! Helpers for the integration tests: a real `hpfaas service` on a free
//! loopback port, private `HPFAAS_HOME`s, and a small REST client.

#![allow(dead_code)]

pub mod up;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn hpfaas() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hpfaas"))
}

/// A fresh private directory under the system temp dir, removed with
/// everything in it when the guard is dropped, whether the test passed or
/// panicked.
pub fn temp_dir(tag: &str) -> TempDir {
    let path = std::env::temp_dir().join(format!("hpfaas-it-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&path).unwrap();
    TempDir { path }
}

/// A directory that is removed on drop; reads as the `Path` it holds.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `hpfaas service`, killed on drop.
pub struct Service {
    pub url: String,
    pub data_dir: TempDir,
    child: Child,
}

impl Service {
    pub fn start() -> Service {
        Service::start_with(&[])
    }

    /// `hpfaas service` with extra arguments (e.g. `--tls-cert`, `--tls-key`).
    pub fn start_with(extra: &[&std::ffi::OsStr]) -> Service {
        let data_dir = temp_dir("service");
        let mut child = hpfaas()
            .args(["service", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
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
        assert_success(&out);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that a command succeeded, showing its stderr if not.
#[track_caller]
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The command `hpfaas endpoint ...` with a private home, pointed at `url`
/// with `token`, not run yet.
pub fn endpoint_command(home: &Path, url: &str, token: &str, args: &[&str]) -> Command {
    let mut c = hpfaas();
    c.arg("endpoint")
        .args(args)
        .env("HPFAAS_HOME", home)
        .env("HPFAAS_URL", url)
        .env("HPFAAS_TOKEN", token);
    c
}

/// `hpfaas endpoint ...` with a private home, pointed at `url` with `token`.
pub fn endpoint_cmd(home: &Path, url: &str, token: &str, args: &[&str]) -> std::process::Output {
    endpoint_command(home, url, token, args).output().unwrap()
}

/// Writes the worker's pid to `path` (whole or not at all: a temporary file
/// renamed into place), then sleeps `seconds`; returns the pid.
pub const NAP_WITH_PID: &str = "def nap(path, seconds):\n    import os, time\n    with open(path + '.tmp', 'w') as f:\n        f.write(str(os.getpid()))\n    os.replace(path + '.tmp', path)\n    time.sleep(seconds)\n    return os.getpid()\n";

/// The pid in `path`, once it exists (writers rename it into place whole).
pub fn pid_in(path: &Path, what: &str) -> i32 {
    wait_for(Duration::from_secs(60), what, || {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
}

/// Polls the endpoint's status until the agent reports `n` outstanding tasks.
pub fn wait_outstanding(ep: &Endpoint, n: u64, what: &str) {
    let url = format!("{}/v2/endpoints/{}/status", ep.svc.url, ep.endpoint_id());
    wait_for(Duration::from_secs(60), what, || {
        let status = get(&url, &ep.token).ok()?;
        (status
            .to_string()
            .contains(&format!("\"outstanding_tasks\":{n}")))
        .then_some(())
    });
}

/// True while `pid` runs (a zombie waiting for its parent counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
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

/// True when a real Slurm is up (`scripts/slurm.sh up` and `HPFAAS_SLURM=1`);
/// otherwise prints why the test is skipped — or fails it under `CI=true`.
pub fn slurm_available(test: &str) -> bool {
    if std::env::var("HPFAAS_SLURM").as_deref() == Ok("1") {
        return true;
    }
    let reason = format!(
        "{test}: skipped: no Slurm (run `scripts/slurm.sh up` as root and set HPFAAS_SLURM=1)"
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{reason}, and CI=true requires it"
    );
    eprintln!("{reason}");
    false
}

/// A configured endpoint in a private home, with helpers to drive it.
pub struct Endpoint<'a> {
    pub svc: &'a Service,
    pub token: String,
    pub home: TempDir,
    pub name: String,
    /// Extra PATH entries first (emulated PBS/LSF tools).
    pub path_prefix: Option<String>,
}

impl<'a> Endpoint<'a> {
    /// Configures `name` with `config` (a whole config.toml).
    pub fn new(svc: &'a Service, token: &str, name: &str, config: &str) -> Endpoint<'a> {
        let home = temp_dir(name);
        let dir = home.join("endpoints").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), config).unwrap();
        Endpoint {
            svc,
            token: token.to_string(),
            home,
            name: name.to_string(),
            path_prefix: None,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.home.join("endpoints").join(&self.name)
    }

    /// Runs `hpfaas endpoint ARGS... NAME`.
    pub fn cmd(&self, args: &[&str]) -> std::process::Output {
        let mut c = hpfaas();
        c.arg("endpoint")
            .args(args)
            .env("HPFAAS_HOME", &self.home)
            .env("HPFAAS_URL", &self.svc.url)
            .env("HPFAAS_TOKEN", &self.token);
        if let Some(prefix) = &self.path_prefix {
            c.env(
                "PATH",
                format!("{prefix}:{}", std::env::var("PATH").unwrap_or_default()),
            );
        }
        c.output().unwrap()
    }

    /// Starts the agent, asserting success.
    pub fn start(&self) {
        let out = self.cmd(&["start", &self.name]);
        assert!(
            out.status.success(),
            "start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn endpoint_id(&self) -> String {
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir().join("endpoint.json")).unwrap())
                .unwrap();
        c["endpoint_id"].as_str().unwrap().to_string()
    }

    /// The agent's published state (`agent.json`).
    pub fn state(&self) -> serde_json::Value {
        std::fs::read(self.dir().join("agent.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Registers a Python function given as `name` and its source.
    pub fn register(&self, name: &str, source: &str) -> String {
        register_python(&self.svc.url, &self.token, name, source)
    }

    /// Submits one task per JSON argument list; returns the task ids in order.
    pub fn submit_json(&self, function_id: &str, args: &[serde_json::Value]) -> Vec<String> {
        submit_json(
            &self.svc.url,
            &self.token,
            &self.endpoint_id(),
            function_id,
            args,
        )
        .unwrap()
    }

    /// Waits until every task is final; returns their documents in order.
    pub fn wait_all(&self, task_ids: &[String], limit: Duration) -> Vec<serde_json::Value> {
        wait_all(&self.svc.url, &self.token, task_ids, limit)
    }

    /// The task document of one task.
    pub fn task(&self, task_id: &str) -> serde_json::Value {
        task(&self.svc.url, &self.token, task_id)
    }
}

impl Drop for Endpoint<'_> {
    fn drop(&mut self) {
        let _ = self.cmd(&["stop", &self.name]);
    }
}

/// Names of the queued or running Slurm jobs whose name starts with `prefix`.
pub fn slurm_jobs(prefix: &str) -> Vec<String> {
    let out = Command::new("squeue")
        .args(["--noheader", "--format=%j %i %T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// `hpfaas manager --simulate` processes against a broker, killed on drop.
pub struct SimulatedManagers {
    pub child: Child,
}

impl SimulatedManagers {
    /// One process running `managers` simulated managers of `workers` slots
    /// each, connecting to `broker_url` (with `curve_file`'s keys, if any).
    pub fn start(
        broker_url: &str,
        managers: u32,
        workers: u32,
        curve_file: Option<&Path>,
    ) -> SimulatedManagers {
        let mut command = hpfaas();
        command
            .args(["manager", "--simulate", "--broker", broker_url])
            .args(["--simulate-managers", &managers.to_string()])
            .args(["--workers", &workers.to_string(), "--block-id", "sim"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(file) = curve_file {
            command.arg("--curve-file").arg(file);
        }
        SimulatedManagers {
            child: command.spawn().unwrap(),
        }
    }

    /// Waits up to `limit` for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for SimulatedManagers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers a Python function given as `name` and its source; its id.
pub fn register_python(url: &str, token: &str, name: &str, source: &str) -> String {
    let code = pack(&[&format!("st\n{name}:{source}")]);
    post(
        &format!("{url}/v3/functions"),
        token,
        serde_json::json!({"function_name": name, "function_code": code}),
    )
    .unwrap()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Submits one task per JSON argument list (JSON results): the task ids in
/// order, or the service's error status and body.
pub fn submit_json(
    url: &str,
    token: &str,
    endpoint_id: &str,
    function_id: &str,
    args: &[serde_json::Value],
) -> Result<Vec<String>, (u16, serde_json::Value)> {
    let payloads: Vec<String> = args
        .iter()
        .map(|a| pack(&[&format!("11\n{a}"), "11\n{}"]))
        .collect();
    let reply = post(
        &format!("{url}/v3/endpoints/{endpoint_id}/submit"),
        token,
        serde_json::json!({"tasks": {function_id: payloads}, "result_serializers": ["11\n"]}),
    )?;
    Ok(reply["tasks"][function_id]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect())
}

/// Waits until every task is final; their documents in order. Each poll
/// asks only for the tasks still pending, so large results cross once
/// rather than on every poll (80 results of 1 MB polled whole every 50 ms
/// starved the very service they waited on).
pub fn wait_all(
    url: &str,
    token: &str,
    task_ids: &[String],
    limit: Duration,
) -> Vec<serde_json::Value> {
    let url = format!("{url}/v2/batch_status");
    let mut done: std::collections::HashMap<String, serde_json::Value> = Default::default();
    let distinct = task_ids
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    wait_for(limit, "tasks to finish", || {
        let pending: Vec<&String> = task_ids.iter().filter(|t| !done.contains_key(*t)).collect();
        if !pending.is_empty() {
            let r = post(&url, token, serde_json::json!({"task_ids": pending})).ok()?;
            for t in pending {
                let doc = &r["results"][t];
                if doc["pending"] == serde_json::json!(false) {
                    done.insert(t.clone(), doc.clone());
                }
            }
        }
        (done.len() == distinct).then(|| task_ids.iter().map(|t| done[t].clone()).collect())
    })
}

/// One task's document.
pub fn task(url: &str, token: &str, task_id: &str) -> serde_json::Value {
    get(&format!("{url}/v2/tasks/{task_id}"), token).unwrap()
}
