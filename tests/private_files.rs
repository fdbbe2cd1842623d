//! What `hpfaas up` and an endpoint leave on disk is their owner's alone
//! (issue 13, "Safe on a shared cluster"): every directory 0700 and every
//! file 0600 whatever the umask, too-open directories tightened and shared
//! ones refused, the owner token kept (not minted and printed at every
//! start), and damaged state files stopping the start with an error naming
//! the file instead of being dropped.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::up::{mode, Up, UpOptions};
use common::{endpoint_cmd, temp_dir};
use serde_json::json;

/// Every directory and file under `root` that is open to others, with its mode.
/// The service's own database files are the registry's to protect; here
/// they sit in a 0700 directory, which the walk checks.
fn too_open(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut bad = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if mode(&dir) != 0o700 {
            bad.push((dir.clone(), mode(&dir)));
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let (path, kind) = (entry.path(), entry.file_type().unwrap());
            let name = entry.file_name().to_string_lossy().into_owned();
            let test_input = dir == root && (name == "engine.toml" || name == "up.log");
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && !test_input
                && !name.starts_with("registry.db")
                && mode(&path) & 0o077 != 0
            {
                bad.push((path.clone(), mode(&path)));
            }
        }
    }
    bad
}

#[test]
fn up_keeps_its_files_private_whatever_the_umask() {
    for umask in [0o022, 0o000] {
        let home = temp_dir("private-up");
        std::fs::set_permissions(&*home, std::fs::Permissions::from_mode(0o755)).unwrap();
        let up = Up::start_with(
            "private-up",
            UpOptions {
                umask: Some(umask),
                home: Some(home.to_path_buf()),
                ..Default::default()
            },
        );
        let f = up.register("double", "def double(x):\n    return 2 * x\n");
        let ids = up.try_submit(&f, &[json!([21])]).unwrap();
        let docs = up.wait_all(&ids, Duration::from_secs(60));
        assert_eq!(docs[0]["result"], json!("11\n42"), "{}", docs[0]);
        let endpoint = up.endpoint_dir();
        for file in ["journal.log", "endpoint.json", "agent.json", "broker.json"] {
            assert!(endpoint.join(file).exists(), "{file} missing");
        }
        assert!(up.home.join("up.json").exists());
        let bad = too_open(&up.home);
        assert!(bad.is_empty(), "umask {umask:03o}: open to others: {bad:?}");
    }
}

#[test]
fn a_home_others_may_write_or_own_is_refused() {
    let shared = temp_dir("shared-home");
    std::fs::set_permissions(&*shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut up = Up::spawn(
        "shared-home",
        UpOptions {
            home: Some(shared.to_path_buf()),
            ..Default::default()
        },
    );
    assert!(!up.wait_exit(Duration::from_secs(30)).success());
    let log = up.log_text();
    assert!(
        log.contains(&shared.display().to_string()) && log.contains("writable by other users"),
        "{log}"
    );
    assert!(!shared.join("up").exists(), "nothing was written there");

    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let foreign = temp_dir("foreign-home");
        std::os::unix::fs::chown(&*foreign, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&*foreign, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The test's own config and log go elsewhere: the home is not ours.
        let out = endpoint_cmd(&foreign, "http://127.0.0.1:1", "t", &["configure", "x"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("belongs to uid 65534"), "{err}");
        assert_eq!(
            mode(&foreign),
            0o755,
            "another user's directory is left alone"
        );
    }
}

#[test]
fn endpoint_configure_makes_private_directories() {
    let home = temp_dir("configure");
    std::fs::set_permissions(&*home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = endpoint_cmd(&home, "http://127.0.0.1:1", "t", &["configure", "site"]);
    common::assert_success(&out);
    let dir = home.join("endpoints").join("site");
    for d in [home.to_path_buf(), home.join("endpoints"), dir.clone()] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(mode(&dir.join("config.toml")), 0o600);
}

#[test]
fn up_keeps_its_token_and_prints_it_only_when_asked() {
    let home = temp_dir("token");
    // What it prints once started (after up.json is written).
    let printed = |up: &Up| {
        common::wait_for(Duration::from_secs(30), "the start-up lines", || {
            let log = up.log_text();
            log.contains("stops everything").then_some(log)
        })
    };
    let first = {
        let up = Up::start_with(
            "token",
            UpOptions {
                home: Some(home.to_path_buf()),
                ..Default::default()
            },
        );
        let log = printed(&up);
        assert!(!log.contains(&up.token()), "the token was printed:\n{log}");
        assert_eq!(mode(&up.home.join("up.json")), 0o600);
        up.token()
    };
    let up = Up::start_with(
        "token",
        UpOptions {
            home: Some(home.to_path_buf()),
            args: vec!["--print-env".into()],
            ..Default::default()
        },
    );
    assert_eq!(up.token(), first, "a new token was minted at restart");
    let log = printed(&up);
    assert!(
        log.contains(&format!("HPFAAS_TOKEN={first}")),
        "--print-env did not print it:\n{log}"
    );
    drop(up);
    // A revoked token is replaced, not re-used.
    let out = common::hpfaas()
        .args(["token", "revoke", &first, "--data-dir"])
        .arg(home.join("up"))
        .output()
        .unwrap();
    common::assert_success(&out);
    let up = Up::start_with(
        "token",
        UpOptions {
            home: Some(home.to_path_buf()),
            ..Default::default()
        },
    );
    assert_ne!(up.token(), first, "{}", up.log_text());
    let f = up.register("one", "def one():\n    return 1\n");
    up.try_submit(&f, &[json!([])]).unwrap();
}

#[test]
fn damaged_state_stops_up_naming_the_file() {
    let home = temp_dir("damaged");
    drop(Up::start_with(
        "damaged",
        UpOptions {
            home: Some(home.to_path_buf()),
            ..Default::default()
        },
    ));
    let start = || {
        let mut up = Up::spawn(
            "damaged",
            UpOptions {
                home: Some(home.to_path_buf()),
                ..Default::default()
            },
        );
        assert!(
            !up.wait_exit(Duration::from_secs(60)).success(),
            "started:\n{}",
            up.log_text()
        );
        up.log_text()
    };

    let journal = home.join("up").join("endpoint").join("journal.log");
    std::fs::write(&journal, "{\"result\":{\"task_id\":\"x\"}}\nnot a record\n").unwrap();
    let log = start();
    assert!(
        log.contains(&journal.display().to_string()) && log.contains("corrupt"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        "{\"result\":{\"task_id\":\"x\"}}\nnot a record\n",
        "the journal was changed"
    );
    std::fs::remove_file(&journal).unwrap();

    let db = home.join("up").join("registry.db");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(home.join("up").join(format!("registry.db{suffix}")));
    }
    std::fs::write(&db, vec![0x5a; 64 << 10]).unwrap();
    let log = start();
    assert!(log.contains(&db.display().to_string()), "{log}");
    assert_eq!(std::fs::read(&db).unwrap(), vec![0x5a; 64 << 10]);
}

#[test]
fn the_default_service_directory_is_private_with_its_home() {
    let home = temp_dir("service-home");
    std::fs::set_permissions(&*home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = common::hpfaas()
        .args(["token", "create", "--user", "alice"])
        .env("HPFAAS_HOME", &*home)
        .output()
        .unwrap();
    common::assert_success(&out);
    for d in [home.to_path_buf(), home.join("service")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
}
