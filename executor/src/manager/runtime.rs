//! The Python worker runtime, carried inside the binary so a compute node
//! needs only an interpreter. The manager writes the `hpfaas` package into a
//! content-addressed directory once, in a private place ([`crate::private`]),
//! and starts each worker from there.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::private;

/// The `hpfaas` package files, relative to the package directory.
const FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../python/hpfaas/__init__.py"),
    ),
    (
        "progress_display.py",
        include_str!("../../../python/hpfaas/progress_display.py"),
    ),
    (
        "serialize.py",
        include_str!("../../../python/hpfaas/serialize.py"),
    ),
    (
        "errors.py",
        include_str!("../../../python/hpfaas/errors.py"),
    ),
    ("shell.py", include_str!("../../../python/hpfaas/shell.py")),
    ("mpi.py", include_str!("../../../python/hpfaas/mpi.py")),
    (
        "capture.py",
        include_str!("../../../python/hpfaas/capture.py"),
    ),
    (
        "client.py",
        include_str!("../../../python/hpfaas/client.py"),
    ),
    (
        "executor.py",
        include_str!("../../../python/hpfaas/executor.py"),
    ),
    (
        "stream.py",
        include_str!("../../../python/hpfaas/stream.py"),
    ),
    (
        "version.py",
        include_str!("../../../python/hpfaas/version.py"),
    ),
    (
        "worker.py",
        include_str!("../../../python/hpfaas/worker.py"),
    ),
];

/// Where the runtime goes when the manager is told no place: never the
/// shared temp directory, where another user could plant a package of the
/// same name. `$XDG_RUNTIME_DIR/hpfaas` when the session has one, else
/// `<hpfaas home>/runtime`.
pub fn default_base(hpfaas_home: &Path) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("hpfaas"),
        None => hpfaas_home.join("runtime"),
    }
}

/// Writes the runtime under `base` (once per content) and returns the
/// directory to put on `sys.path`. `base` is made private (0700) if it is
/// missing; a `base` or runtime that another user owns or may write is
/// refused, and a copy of ours whose files differ from the embedded ones is
/// replaced. The error names the path and the reason.
pub fn install(base: &Path) -> Result<PathBuf, String> {
    private::dir(base).map_err(|e| format!("{e:#}"))?;
    private::check_owned(base, true)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    FILES.hash(&mut hasher);
    let dir = base.join(format!("hpfaas-runtime-{:016x}", hasher.finish()));
    for _ in 0..3 {
        if std::fs::symlink_metadata(&dir).is_ok() {
            match verify(&dir)? {
                None => return Ok(dir),
                Some(why) => {
                    tracing::warn!("replacing the worker runtime {}: {why}", dir.display());
                    set_aside(base, &dir)?;
                }
            }
        }
        // Write into a private directory and rename it into place, so
        // managers starting at once on a shared file system never see half
        // a package; if another one won the race, its copy is checked above.
        let staging = base.join(format!(".hpfaas-runtime-{}", uuid::Uuid::new_v4()));
        write_package(&staging).map_err(|e| {
            format!(
                "cannot write the worker runtime in {}: {e}",
                staging.display()
            )
        })?;
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    match verify(&dir)? {
        None => Ok(dir),
        Some(why) => Err(format!(
            "cannot install the worker runtime in {}: {why}",
            dir.display()
        )),
    }
}

/// Writes the package into a new directory `staging` (0700).
fn write_package(staging: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(staging)?;
    let package = staging.join("hpfaas");
    std::fs::DirBuilder::new().mode(0o700).create(&package)?;
    for (name, text) in FILES {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(package.join(name))?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
    }
    Ok(())
}

/// Moves a stale runtime of ours out of the way (then removes it), so a
/// fresh one can be renamed into its place.
fn set_aside(base: &Path, dir: &Path) -> Result<(), String> {
    let stale = base.join(format!(".hpfaas-runtime-stale-{}", uuid::Uuid::new_v4()));
    match std::fs::rename(dir, &stale) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&stale);
            Ok(())
        }
        // Another manager set it aside first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "cannot replace the worker runtime {}: {e}",
            dir.display()
        )),
    }
}

/// Checks an installed runtime: `Err` if it or any file of it is not this
/// user's own or others may write it (refused: it may be planted), `Some`
/// reason if a file differs from the embedded one (ours, but to be
/// replaced), `None` when it is exactly the embedded package.
fn verify(dir: &Path) -> Result<Option<String>, String> {
    private::check_owned(dir, true)?;
    let package = dir.join("hpfaas");
    private::check_owned(&package, true)?;
    for (name, text) in FILES {
        let path = package.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(Some(format!("{} is missing", path.display())));
        }
        private::check_owned(&path, false)?;
        let found =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if found != text.as_bytes() {
            return Ok(Some(format!(
                "{} differs from this binary's",
                path.display()
            )));
        }
    }
    Ok(None)
}

/// The `-c` program that starts a worker from the runtime directory,
/// keeping `output_limit` bytes of each task's stdout and stderr.
pub fn bootstrap(runtime_dir: &Path, output_limit: usize) -> String {
    format!(
        "import sys; sys.path.insert(0, {:?}); from hpfaas.worker import main; \
         main(output_limit={output_limit})",
        runtime_dir.display().to_string()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory to install under (the test's `base`), removed on drop.
    fn scratch() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-rt-test-")
            .tempdir()
            .unwrap();
        let base = dir.path().join("base");
        (dir, base)
    }

    #[test]
    fn installs_once_and_completely() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, base) = scratch();
        let a = install(&base).unwrap();
        let b = install(&base).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&base).unwrap().mode() & 0o777, 0o700);
        for (name, _) in FILES {
            assert!(a.join("hpfaas").join(name).exists(), "{name} missing");
        }
        assert!(bootstrap(&a, 7).contains("hpfaas.worker"));
        assert!(bootstrap(&a, 7).ends_with("main(output_limit=7)"));
    }

    /// A runtime of ours that differs (edited, truncated) is rewritten, not used.
    #[test]
    fn a_changed_copy_is_replaced() {
        let (_dir, base) = scratch();
        let dir = install(&base).unwrap();
        let worker = dir.join("hpfaas").join("worker.py");
        std::fs::write(&worker, "raise SystemExit('planted')\n").unwrap();
        std::fs::remove_file(dir.join("hpfaas").join("mpi.py")).unwrap();
        assert_eq!(install(&base).unwrap(), dir);
        let embedded = FILES.iter().find(|(n, _)| *n == "worker.py").unwrap().1;
        assert_eq!(std::fs::read_to_string(&worker).unwrap(), embedded);
        assert!(dir.join("hpfaas").join("mpi.py").exists());
    }

    /// A runtime directory another user made (here: chowned to nobody) is
    /// refused with its path and the reason, whatever it holds.
    #[test]
    fn a_runtime_planted_by_another_user_is_refused() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("a_runtime_planted_by_another_user_is_refused: skipped: needs root");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            return;
        }
        let (_dir, base) = scratch();
        let dir = install(&base).unwrap();
        for path in [
            dir.join("hpfaas").join("worker.py"),
            dir.join("hpfaas"),
            dir.clone(),
        ] {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        }
        let err = install(&base).unwrap_err();
        assert!(
            err.contains(&dir.display().to_string()) && err.contains("uid 65534"),
            "{err}"
        );
        // A group-writable copy is refused too: someone else may have written it.
        let (_dir, base) = scratch();
        let dir = install(&base).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let worker = dir.join("hpfaas").join("worker.py");
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o664)).unwrap();
        let err = install(&base).unwrap_err();
        assert!(err.contains("worker.py") && err.contains("0664"), "{err}");
    }

    /// The base itself, if someone else owns it, is refused before anything
    /// is written or imported from it.
    #[test]
    fn a_base_owned_by_another_user_is_refused() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("a_base_owned_by_another_user_is_refused: skipped: needs root");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            return;
        }
        let (_dir, base) = scratch();
        std::fs::create_dir(&base).unwrap();
        std::os::unix::fs::chown(&base, Some(65534), Some(65534)).unwrap();
        let err = install(&base).unwrap_err();
        assert!(err.contains("uid 65534"), "{err}");
    }

    #[test]
    fn never_the_shared_temp_dir() {
        let home = Path::new("/home/u/.hpfaas");
        let base = default_base(home);
        assert!(
            !base.starts_with(std::env::temp_dir()),
            "{}",
            base.display()
        );
    }

    /// A module missing here breaks any worker that imports it (or imports
    /// a module that does), so every file of the package must be embedded.
    #[test]
    fn every_package_file_is_embedded() {
        let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/hpfaas");
        for entry in std::fs::read_dir(&package).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".py") {
                assert!(
                    FILES.iter().any(|(f, _)| *f == name),
                    "python/hpfaas/{name} is not embedded in the worker runtime"
                );
            }
        }
    }
}
