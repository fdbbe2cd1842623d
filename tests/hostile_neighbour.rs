//! A hostile neighbour (issue 13, "Safe on a shared cluster"): a second
//! Unix user, made with `useradd` for the test and removed afterwards,
//! tries what another user of a login node can: read `hpfaas up`'s files,
//! connect to its sockets, plant a worker runtime in the shared temporary
//! directory, and have `hpfaas endpoint stop` signal processes through a
//! forged pid. Nothing may get through.
//!
//! Needs root (to add the user); skipped with a printed reason otherwise,
//! and required under `CI=true`.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::up::{Up, UpOptions};
use common::{temp_dir, wait_for, TempDir};
use serde_json::json;

/// An interpreter every user may run (not a per-user shim).
const PYTHON: &str = "/usr/bin/python3";

/// True when running as root; otherwise prints why the test is skipped,
/// or fails it under `CI=true`.
fn root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let reason = format!("{test}: skipped: needs root to add a second Unix user");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{reason}, and CI=true requires it"
    );
    eprintln!("{reason}");
    false
}

/// A throwaway Unix user, deleted (with the processes the test started
/// as it) when dropped.
struct Neighbour {
    name: String,
    uid: u32,
    gid: u32,
    started: Vec<Child>,
}

impl Neighbour {
    fn add() -> Neighbour {
        let name = format!(
            "hpfaas-nb-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let out = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .unwrap();
        common::assert_success(&out);
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            common::assert_success(&out);
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        Neighbour {
            name,
            uid,
            gid,
            started: Vec::new(),
        }
    }

    /// `program args...` as this user, with no supplementary groups.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={}", self.uid),
            &format!("--regid={}", self.gid),
            "--clear-groups",
            "--",
            program,
        ])
        .env_remove("HPFAAS_HOME")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null());
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap()
    }

    /// Gives `path` to this user.
    fn own(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        for child in &mut self.started {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A directory like `/tmp`: root's, writable by all, sticky.
fn shared_dir(tag: &str) -> TempDir {
    let dir = temp_dir(tag);
    std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// Every process in the tree under `pid`, `pid` included.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        parents.push((p, ppid));
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// The Unix sockets (path, or `@name` when abstract) that processes in
/// `pids` hold open.
fn unix_sockets(pids: &[u32]) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy().into_owned();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let mut paths: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() >= 8 && inodes.contains(cols[6])).then(|| cols[7].to_string())
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The loopback/any TCP ports `pids` listen on.
fn tcp_listeners(pids: &[u32]) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy().into_owned();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

const CONNECT: &str = "import socket, sys\n\
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
    s.connect(sys.argv[1])\n\
    print('connected')\n";

#[test]
fn a_neighbour_can_neither_read_nor_reach_hpfaas_up() {
    if !root("a_neighbour_can_neither_read_nor_reach_hpfaas_up") {
        return;
    }
    let nb = Neighbour::add();
    let up = Up::start("neighbour-up");
    let f = up.register("secret", "def secret(x):\n    return 'kept_' + x\n");
    let ids = up
        .try_submit(&f, &[json!(["argument_only_alice_may_see"])])
        .unwrap();
    assert_eq!(
        up.wait_all(&ids, Duration::from_secs(60))[0]["result"],
        json!("11\n\"kept_argument_only_alice_may_see\"")
    );
    // As if the owner's home were open to traversal: the inner levels must
    // hold on their own.
    std::fs::set_permissions(&up.home, std::fs::Permissions::from_mode(0o711)).unwrap();

    let data = up.data_dir();
    let endpoint = up.endpoint_dir();
    let files: Vec<PathBuf> = vec![
        up.home.join("up.json"),
        data.join("registry.db"),
        data.join("registry.db-wal"),
        data.join("token"),
        data.join("metrics-token"),
        data.join("audit.log"),
        endpoint.join("endpoint.json"),
        endpoint.join("journal.log"),
        endpoint.join("agent.json"),
        endpoint.join("broker.json"),
        endpoint.join("blocks").join("block-0.log"),
        endpoint.join("blocks").join("block-0.sh"),
    ];
    for path in &files {
        assert!(path.exists(), "{} is not there to try", path.display());
        let out = nb.run("cat", &[path.to_str().unwrap()]);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "the neighbour read {}",
            path.display()
        );
    }
    for dir in [
        &data,
        &endpoint,
        &endpoint.join("blocks"),
        &endpoint.join("runtime"),
    ] {
        assert!(dir.is_dir(), "{} is not there to try", dir.display());
        let out = nb.run("ls", &[dir.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "the neighbour listed {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Every Unix socket of `up` and of what it started.
    let pid = up.info["pid"].as_u64().unwrap() as u32;
    let tree = process_tree(pid);
    let sockets = unix_sockets(&tree);
    let broker = endpoint.join("broker.sock");
    assert!(
        std::fs::symlink_metadata(&broker)
            .unwrap()
            .file_type()
            .is_socket(),
        "no broker socket at {}",
        broker.display()
    );
    assert!(
        sockets.contains(&broker.display().to_string()),
        "{sockets:?}"
    );
    for socket in &sockets {
        assert!(
            !socket.starts_with('@'),
            "an abstract socket anyone can open: {socket}"
        );
        let out = nb.run(PYTHON, &["-c", CONNECT, socket]);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "the neighbour connected to {socket}"
        );
    }
    // A manager of the neighbour's cannot join either.
    let out = nb.run(
        common::hpfaas().get_program().to_str().unwrap(),
        &[
            "manager",
            "--broker",
            &format!("ipc://{}", broker.display()),
            "--register-timeout",
            "3",
        ],
    );
    assert!(!out.status.success(), "the neighbour's manager registered");

    // The only TCP ports are the service's and its metrics', and each wants
    // a token.
    let service_port: u16 = up.url().rsplit(':').next().unwrap().parse().unwrap();
    let metrics_url = up.info["metrics_url"].as_str().unwrap();
    let metrics_port: u16 = metrics_url
        .trim_end_matches("/metrics")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut listening = tcp_listeners(&tree);
    listening.sort_unstable();
    let mut expected = vec![service_port, metrics_port];
    expected.sort_unstable();
    assert_eq!(listening, expected);
    for url in [
        format!("{}/v2/tasks/{}", up.url(), ids[0]),
        metrics_url.to_string(),
    ] {
        let out = nb.run(
            "curl",
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "{url}");
    }
}

/// Writes the real `hpfaas` package into `dir/hpfaas/`, its modules
/// announcing themselves in `marker` when imported.
fn plant_runtime(nb: &Neighbour, dir: &Path, marker: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/hpfaas");
    let package = dir.join("hpfaas");
    let out = nb.run("mkdir", &["-p", package.to_str().unwrap()]);
    common::assert_success(&out);
    for entry in std::fs::read_dir(&source).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "py") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // At the end, after any `from __future__` import that must come first.
        let planted = format!(
            "{text}\nopen({:?}, 'a').write(__name__ + '\\n')\n",
            marker.display().to_string()
        );
        let target = package.join(entry.file_name());
        std::fs::write(&target, planted).unwrap();
        nb.own(&target);
    }
}

/// MAY FAIL until the manager's runtime leaves the shared temp directory:
/// a runtime a neighbour planted under the name the manager would use must
/// never be imported by the owner's workers.
#[test]
fn a_runtime_planted_in_the_shared_temp_dir_is_not_imported() {
    if !root("a_runtime_planted_in_the_shared_temp_dir_is_not_imported") {
        return;
    }
    let nb = Neighbour::add();
    let shared = shared_dir("shared-tmp");
    // Where planted code would announce itself (root's worker may write it).
    let marker = shared.join("planted-code-ran");
    // The names the runtime has had: content-addressed, and plain.
    let scratch = temp_dir("runtime-name");
    let real = hpfaas_executor::manager::runtime::install(&scratch).unwrap();
    let leaf = real.file_name().unwrap().to_string_lossy().into_owned();
    for name in [leaf.as_str(), "hpfaas-runtime", "hpfaas-runtime-0", "."] {
        let dir = shared.join(name);
        if name != "." {
            common::assert_success(&nb.run("mkdir", &["-p", dir.to_str().unwrap()]));
        }
        plant_runtime(&nb, &dir, &marker);
    }
    let up = Up::start_with(
        "planted-runtime",
        UpOptions {
            env: vec![("TMPDIR".into(), shared.display().to_string())],
            ..Default::default()
        },
    );
    let f = up.register("triple", "def triple(x):\n    return 3 * x\n");
    let ids = up.try_submit(&f, &[json!([14])]).unwrap();
    let doc = &up.wait_all(&ids, Duration::from_secs(60))[0];
    assert!(
        !marker.exists(),
        "the neighbour's planted runtime ran in the owner's worker: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    assert_eq!(doc["result"], json!("11\n42"), "{doc}");
}

#[test]
fn a_forged_pid_in_agent_json_signals_nothing() {
    if !root("a_forged_pid_in_agent_json_signals_nothing") {
        return;
    }
    let mut nb = Neighbour::add();
    // A process of the neighbour's own that kill(-1, ...) would reach.
    let canary = nb.command("sleep").arg("300").spawn().unwrap();
    let canary_pid = canary.id() as i32;
    nb.started.push(canary);
    wait_for(
        Duration::from_secs(10),
        "the canary to run as the neighbour",
        || {
            let status = std::fs::read_to_string(format!("/proc/{canary_pid}/status")).ok()?;
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains(&nb.uid.to_string()))
                .then_some(())
        },
    );
    let bin = common::hpfaas().get_program().to_owned();
    for pid in [u64::from(u32::MAX), 1 << 31, 0, 1] {
        let home = temp_dir("forged-pid");
        let dir = home.join("endpoints").join("x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), "").unwrap();
        let state = json!({"pid": pid, "endpoint_id": null, "state": "online",
            "service_url": "http://127.0.0.1:1", "active_blocks": 0, "last_error": null});
        std::fs::write(dir.join("agent.json"), state.to_string()).unwrap();
        for p in [home.to_path_buf(), home.join("endpoints"), dir.clone()] {
            nb.own(&p);
        }
        nb.own(&dir.join("config.toml"));
        nb.own(&dir.join("agent.json"));
        let out = nb
            .command(bin.to_str().unwrap())
            .args(["endpoint", "stop", "x"])
            .env("HPFAAS_HOME", &*home)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            common::alive(canary_pid),
            "pid {pid} in agent.json: `hpfaas endpoint stop` killed the neighbour's other processes"
        );
        assert!(
            !out.status.success() && text.contains("is not running"),
            "pid {pid}: {text}"
        );
    }
}
