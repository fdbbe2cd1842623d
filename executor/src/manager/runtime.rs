//! The Python worker runtime, carried inside the binary so a compute node
//! needs only an interpreter. The manager writes the `hpfaas` package into a
//! content-addressed directory once and starts each worker from there.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The `hpfaas` package files, relative to the package directory.
const FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../python/hpfaas/__init__.py"),
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
        "client.py",
        include_str!("../../../python/hpfaas/client.py"),
    ),
    (
        "executor.py",
        include_str!("../../../python/hpfaas/executor.py"),
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

/// Writes the runtime under `base` (once per content) and returns the
/// directory to put on `sys.path`.
pub fn install(base: &Path) -> std::io::Result<PathBuf> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    FILES.hash(&mut hasher);
    let dir = base.join(format!("hpfaas-runtime-{:016x}", hasher.finish()));
    if dir.join("hpfaas").join("worker.py").exists() {
        return Ok(dir);
    }
    // Write into a private directory and rename it into place, so managers
    // starting at once on a shared file system never see half a package.
    let staging = base.join(format!(".hpfaas-runtime-{}", uuid::Uuid::new_v4()));
    let package = staging.join("hpfaas");
    std::fs::create_dir_all(&package)?;
    for (name, text) in FILES {
        std::fs::write(package.join(name), text)?;
    }
    if std::fs::rename(&staging, &dir).is_err() {
        // Another manager won the race; its copy is identical.
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(dir)
}

/// The `-c` program that starts a worker from the runtime directory.
pub fn bootstrap(runtime_dir: &Path) -> String {
    format!(
        "import sys; sys.path.insert(0, {:?}); from hpfaas.worker import main; main()",
        runtime_dir.display().to_string()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_and_completely() {
        let base = std::env::temp_dir().join(format!("hpfaas-rt-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&base).unwrap();
        let a = install(&base).unwrap();
        let b = install(&base).unwrap();
        assert_eq!(a, b);
        for (name, _) in FILES {
            assert!(a.join("hpfaas").join(name).exists(), "{name} missing");
        }
        assert!(bootstrap(&a).contains("hpfaas.worker"));
        std::fs::remove_dir_all(&base).unwrap();
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
