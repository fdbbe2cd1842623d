//! A real `hpfaas up` for integration tests: started in a private
//! `HPFAAS_HOME` (optionally under a given umask), found through its
//! up.json, driven over REST, and stopped with SIGINT when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{hpfaas, register_python, submit_json, task, temp_dir, wait_all, wait_for, TempDir};

/// Fast heartbeats; a threshold a loaded machine does not trip.
pub const ENGINE: &str = "[engine]\nheartbeat_period = 0.2\nheartbeat_threshold = 10.0\n";

/// A running `hpfaas up`.
pub struct Up {
    /// Its `HPFAAS_HOME`.
    pub home: PathBuf,
    /// Removes the home when dropped, unless the caller gave one.
    _home_guard: Option<TempDir>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
    /// The contents of up.json.
    pub info: serde_json::Value,
}

/// How to start an [`Up`].
#[derive(Default)]
pub struct UpOptions {
    /// Umask of the process (inherited by everything it starts).
    pub umask: Option<u32>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Use this home (which the caller removes) instead of a fresh one.
    pub home: Option<PathBuf>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Where its output goes (default: `up.log` in the home).
    pub log: Option<PathBuf>,
}

impl Up {
    /// `hpfaas up --workers 1` in a fresh home.
    pub fn start(tag: &str) -> Up {
        Up::start_with(tag, UpOptions::default())
    }

    /// `hpfaas up --workers 1` as `options` say; waits for up.json.
    pub fn start_with(tag: &str, options: UpOptions) -> Up {
        let mut up = Up::spawn(tag, options);
        up.info = wait_for(Duration::from_secs(60), "up.json", || {
            up.read_info()
                .filter(|i| i["endpoint_id"].is_string())
                .or_else(|| {
                    assert!(!up.exited(), "hpfaas up exited:\n{}", up.log_text());
                    None
                })
        });
        up
    }

    /// Starts the process without waiting for it (to see it fail).
    pub fn spawn(tag: &str, options: UpOptions) -> Up {
        let (home, guard) = match options.home {
            Some(home) => (home, None),
            None => {
                let guard = temp_dir(tag);
                (guard.to_path_buf(), Some(guard))
            }
        };
        let config = home.join("engine.toml");
        if !config.exists() {
            std::fs::write(&config, ENGINE).unwrap();
        }
        let log = options.log.unwrap_or_else(|| home.join("up.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = hpfaas();
        cmd.args([
            "up",
            "--workers",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .args(&options.args)
        .env("HPFAAS_HOME", &home)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .env_remove("HPFAAS_URL")
        .env_remove("HPFAAS_TOKEN")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        if let Some(mask) = options.umask {
            // SAFETY: umask(2) is async-signal-safe and cannot fail.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        Up {
            home,
            _home_guard: guard,
            log,
            child,
            info: serde_json::Value::Null,
        }
    }

    fn read_info(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.home.join("up.json")).ok()?).ok()
    }

    /// True once the process has exited.
    pub fn exited(&self) -> bool {
        !super::alive(self.child.id() as i32)
    }

    /// Waits for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hpfaas up did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The service URL.
    pub fn url(&self) -> String {
        self.info["url"].as_str().unwrap().to_string()
    }

    /// The owner token.
    pub fn token(&self) -> String {
        self.info["token"].as_str().unwrap().to_string()
    }

    /// The local endpoint's id.
    pub fn endpoint_id(&self) -> String {
        self.info["endpoint_id"].as_str().unwrap().to_string()
    }

    /// The data directory (`$HPFAAS_HOME/up`).
    pub fn data_dir(&self) -> PathBuf {
        self.home.join("up")
    }

    /// The local endpoint's directory.
    pub fn endpoint_dir(&self) -> PathBuf {
        self.data_dir().join("endpoint")
    }

    /// Registers a Python function; its id.
    pub fn register(&self, name: &str, source: &str) -> String {
        register_python(&self.url(), &self.token(), name, source)
    }

    /// Submits one task per JSON argument list: the task ids, or the
    /// service's error status and body.
    pub fn try_submit(
        &self,
        function_id: &str,
        args: &[serde_json::Value],
    ) -> Result<Vec<String>, (u16, serde_json::Value)> {
        submit_json(
            &self.url(),
            &self.token(),
            &self.endpoint_id(),
            function_id,
            args,
        )
    }

    /// Waits until every task is final; their documents in order.
    pub fn wait_all(&self, task_ids: &[String], limit: Duration) -> Vec<serde_json::Value> {
        wait_all(&self.url(), &self.token(), task_ids, limit)
    }

    /// One task's document.
    pub fn task(&self, task_id: &str) -> serde_json::Value {
        task(&self.url(), &self.token(), task_id)
    }

    /// Stops it with SIGINT and waits (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on the child this value owns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mode bits (permissions, setuid/setgid/sticky) of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}
