//! A full disk (issue 13): `hpfaas up` keeps its database, payload files
//! and the endpoint's journal on a small tmpfs the test mounts, the test
//! fills it, and submits and results go on meanwhile. Submits must be
//! refused with a clear error (507, with a message) or acknowledged; no
//! process may die; once space returns, every acknowledged task completes.
//!
//! Needs root (to mount); skipped with a printed reason otherwise, and
//! required under `CI=true`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::up::{Up, UpOptions};
use common::{temp_dir, TempDir};
use serde_json::json;

/// True when running as root; otherwise prints why the test is skipped,
/// or fails it under `CI=true`.
fn root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let reason = format!("{test}: skipped: needs root to mount a tmpfs");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{reason}, and CI=true requires it"
    );
    eprintln!("{reason}");
    false
}

/// A tmpfs of `size`, unmounted (then removed) when dropped.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = temp_dir("small-disk");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&*dir)
            .output()
            .unwrap();
        common::assert_success(&out);
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&*self.dir).output();
    }
}

/// Fills the disk holding `path` with a file of zeros until it is full.
fn fill(path: &Path) -> std::fs::File {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last partial blocks too.
    let small = [0u8; 512];
    while f.write(&small).map(|n| n > 0).unwrap_or(false) {}
    f
}

#[test]
fn a_full_disk_refuses_clearly_loses_nothing_and_recovers() {
    if !root("a_full_disk_refuses_clearly_loses_nothing_and_recovers") {
        return;
    }
    let disk = SmallDisk::mount("24m");
    let outside = temp_dir("small-disk-log");
    let home: PathBuf = disk.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let up = Up::start_with(
        "small-disk",
        UpOptions {
            home: Some(home.clone()),
            log: Some(outside.join("up.log")),
            ..Default::default()
        },
    );
    // Each task waits for its gate file (outside the small disk) to exist.
    let echo = up.register(
        "echo",
        "def echo(x, gate):\n    import os, time\n    deadline = time.time() + 300\n    \
         while not os.path.exists(gate) and time.time() < deadline:\n        time.sleep(0.02)\n    \
         return len(x)\n",
    );
    let open = outside.join("open");
    std::fs::write(&open, "").unwrap();
    let open = open.to_str().unwrap();
    let warm = up.try_submit(&echo, &[json!(["x", open])]).unwrap();
    up.wait_all(&warm, Duration::from_secs(60));

    // Tasks held until the disk is full: their results arrive then.
    let small = "s".repeat(1000);
    let large = "L".repeat(100 << 10);
    let held = outside.join("held");
    let held_gate = held.to_str().unwrap();
    let mut acknowledged: Vec<(String, usize)> = Vec::new();
    let running = up
        .try_submit(
            &echo,
            &[json!([small, held_gate]), json!([large, held_gate])],
        )
        .unwrap();
    acknowledged.extend(running.into_iter().zip([small.len(), large.len()]));

    let filler_path = home.join("filler");
    let filler = fill(&filler_path);
    let mut refused = 0;
    for round in 0..20 {
        let arg = if round % 2 == 0 { &small } else { &large };
        match up.try_submit(&echo, &[json!([arg, open]), json!([arg, open])]) {
            Ok(ids) => acknowledged.extend(ids.into_iter().map(|id| (id, arg.len()))),
            Err((status, body)) => {
                refused += 1;
                assert_eq!(status, 507, "a full disk answered {status}: {body}");
                let message = body["error"].as_str().unwrap_or_default();
                assert!(
                    message.contains("full") || message.contains("space"),
                    "{body}"
                );
            }
        }
    }
    assert!(refused > 0, "nothing was refused on a full disk");
    // The held tasks finish now, and their results meet the full disk.
    std::fs::write(&held, "").unwrap();
    common::wait_for(
        Duration::from_secs(60),
        "results to meet the full journal",
        || {
            assert!(
                !up.exited(),
                "hpfaas up died on a full disk:\n{}",
                up.log_text()
            );
            up.log_text()
                .contains("cannot write the journal")
                .then_some(())
        },
    );

    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    let ids: Vec<String> = acknowledged.iter().map(|(id, _)| id.clone()).collect();
    let docs = up.wait_all(&ids, Duration::from_secs(120));
    for ((id, len), doc) in acknowledged.iter().zip(&docs) {
        assert_eq!(
            doc["result"],
            json!(format!("11\n{len}")),
            "task {id}: {doc}"
        );
    }
    // And it takes new work again.
    let after = up.try_submit(&echo, &[json!(["again", open])]).unwrap();
    assert_eq!(
        up.wait_all(&after, Duration::from_secs(60))[0]["result"],
        json!("11\n5")
    );
    assert!(!up.exited());
}
