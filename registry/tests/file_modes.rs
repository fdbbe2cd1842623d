//! The service's own files are private whatever the umask: the database,
//! its WAL and shared-memory files, payload files and the directories that
//! hold them (docs/security.md). One test in its own binary, because it
//! sets the process's umask.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::json;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn database_wal_and_payload_files_are_private_whatever_the_umask() {
    // SAFETY: umask(2) only sets this process's mask; this binary runs this
    // one test.
    unsafe { libc::umask(0o000) };
    let svc = TestService::start_with(|c| c.max_request_bytes = 64 << 20);
    let alice = svc.client(&svc.token("alice"));
    let f = alice.register_function("f");
    let (ep, _) = alice.register_endpoint("ep");
    // A payload large enough to be kept in a file of its own.
    let big = "x".repeat(2 << 20);
    alice.submit(&ep, json!({f.clone(): [big]}));
    let db = svc.dir.join("registry.db");
    let mut checked = vec![(svc.dir.clone(), 0o700), (db.clone(), 0o600)];
    for suffix in ["-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        checked.push((p.into(), 0o600));
    }
    let payloads = svc.dir.join("payloads");
    checked.push((payloads.clone(), 0o700));
    let files: Vec<_> = std::fs::read_dir(&payloads)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "the large payload is kept in a file");
    checked.extend(files.into_iter().map(|p| (p, 0o600)));
    for (path, want) in checked {
        assert_eq!(mode(&path), want, "{}", path.display());
    }
}
