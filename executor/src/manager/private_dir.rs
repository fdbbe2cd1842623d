//! Directories only this user can change, for what the manager writes and
//! then trusts (the worker runtime its workers import, MPI hostfiles).
//!
//! Other local users are hostile: a directory they created or can write
//! could hold code of theirs. So a directory is used only when it is a real
//! directory (not a symlink), owned by this process's effective uid and not
//! writable by group or others; one created here is 0700 whatever the umask.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// This process's effective uid, the owner every trusted path must have.
fn my_uid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (0700, whatever the umask) if it is missing, then checks it
/// as [`check`] does; a directory of ours that others may read is made 0700.
/// The error names the path and why it is refused.
pub fn ensure(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Another manager on a shared file system made it meanwhile;
                // the check below judges it like any other.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        }
        Err(e) => return Err(format!("cannot inspect {}: {e}", dir.display())),
    }
    let meta = check(dir, true)?;
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {} private (0700): {e}", dir.display()))?;
    }
    Ok(())
}

/// Checks that `path` is this user's own (a directory when `directory`, else
/// a regular file; never a symlink) and that no one else can write it;
/// returns its metadata. The error names the path and the reason.
pub fn check(path: &Path, directory: bool) -> Result<std::fs::Metadata, String> {
    let refuse = |why: String| Err(format!("refusing {}: {why}", path.display()));
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if directory && !kind.is_dir() {
        return refuse("it is not a directory".into());
    }
    if !directory && !kind.is_file() {
        return refuse("it is not a regular file".into());
    }
    let me = my_uid();
    if meta.uid() != me {
        return refuse(format!(
            "it is owned by uid {}, not by this user (uid {me}); another user may have planted it",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "its mode {:04o} lets other users write it",
            meta.mode() & 0o7777
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch() -> Scratch {
        let dir = std::env::temp_dir().join(format!("hpfaas-private-{}", uuid::Uuid::new_v4()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        Scratch(dir)
    }

    #[test]
    fn created_private_whatever_the_umask() {
        let s = scratch();
        let dir = s.0.join("a");
        // SAFETY: umask(2) only swaps the process mask; restored below.
        let old = unsafe { libc::umask(0o000) };
        let made = ensure(&dir);
        unsafe { libc::umask(old) };
        made.unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Ours but readable by others: tightened, not refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn writable_by_others_or_symlinked_is_refused() {
        let s = scratch();
        let open = s.0.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure(&open).unwrap_err();
        assert!(err.contains("open") && err.contains("0777"), "{err}");
        let link = s.0.join("link");
        std::os::unix::fs::symlink(&s.0, &link).unwrap();
        let err = ensure(&link).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn another_users_directory_is_refused() {
        if my_uid() != 0 {
            eprintln!("another_users_directory_is_refused: skipped: needs root to chown");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            return;
        }
        let s = scratch();
        let theirs = s.0.join("theirs");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&theirs)
            .unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = ensure(&theirs).unwrap_err();
        assert!(err.contains("uid 65534") && err.contains("theirs"), "{err}");
    }
}
