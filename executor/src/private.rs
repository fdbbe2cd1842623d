//! Files and directories only their owner may open. Other users share the
//! login node, `/tmp` and often the file system, so everything holding code,
//! arguments, results, keys or tokens is written 0600 inside directories
//! that are 0700, whatever the umask: modes are given at creation (a umask
//! only removes bits) and set again on what already exists.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Mode of a private directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a private file.
pub const FILE_MODE: u32 = 0o600;

/// Makes `root` and every directory from it down to `path` (which must lie
/// under `root`) private: created 0700 when missing, an existing one of
/// ours that others may enter is tightened to 0700 (with a warning). A
/// directory owned by someone else, or one that others may write (such as
/// `/tmp`), is refused: files planted there could be anybody's.
pub fn dirs(root: &Path, path: &Path) -> anyhow::Result<()> {
    let rest = path.strip_prefix(root).unwrap_or(Path::new(""));
    dir(root)?;
    let mut current = root.to_path_buf();
    for part in rest.components() {
        current.push(part);
        dir(&current)?;
    }
    Ok(())
}

/// Makes one directory private (see [`dirs`]); missing parents are created 0700.
pub fn dir(path: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", path.display());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "{} belongs to uid {}, not to you (uid {me}): hpfaas keeps its private files only \
             in directories of your own",
            path.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 || mode & 0o1000 != 0 {
        bail!(
            "{} is writable by other users (mode {mode:04o}): hpfaas will not keep private files \
             there; use a directory of your own (e.g. set HPFAAS_HOME)",
            path.display()
        );
    }
    if mode != DIR_MODE {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("cannot make {} private (chmod 700)", path.display()))?;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} was open to other users (mode {mode:04o}); it is now 0700",
                path.display()
            );
        }
    }
    Ok(())
}

/// Checks that `path` is this user's own (a directory when `directory`, else
/// a regular file; never a symlink) and that no one else can write it;
/// returns its metadata. The error names the path and the reason.
pub fn check_owned(path: &Path, directory: bool) -> Result<std::fs::Metadata, String> {
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
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
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

/// Replaces `path` with `bytes` atomically (a new 0600 file renamed over
/// it), so a reader never sees half a file and a crash leaves the old one.
/// With `durable`, the data and the rename are on disk before it returns.
pub fn write(path: &Path, bytes: &[u8], durable: bool) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    let written = (|| -> std::io::Result<()> {
        // A stale temporary file keeps its old mode if re-opened: start anew.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            sync_dir(path)?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Opens `path` for appending (created 0600), and makes an existing file
/// private too, so one written by an older version is not left readable.
pub fn open_append(path: &Path, read: bool) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .read(read)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    tighten(&file, path)?;
    Ok(file)
}

/// Sets an open file of ours to 0600 if it is not already.
pub fn tighten(file: &File, path: &Path) -> anyhow::Result<()> {
    let mode = file
        .metadata()
        .with_context(|| format!("cannot inspect {}", path.display()))?
        .mode()
        & 0o7777;
    if mode != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .with_context(|| format!("cannot make {} private (chmod 600)", path.display()))?;
    }
    Ok(())
}

/// Flushes the directory holding `path`, so a rename in it is durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(parent)?.sync_all()
}

/// `.<name>.tmp` beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("hpfaas-private-")
            .tempdir()
            .unwrap()
    }
    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn directories_are_made_and_tightened_to_0700() {
        let s = scratch();
        let root = s.path().join("home");
        let deep = root.join("endpoints").join("x");
        std::fs::create_dir_all(root.join("endpoints")).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        dirs(&root, &deep).unwrap();
        for p in [&root, &root.join("endpoints"), &deep] {
            assert_eq!(mode(p), 0o700, "{}", p.display());
        }
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let s = scratch();
        let shared = s.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = dir(&shared).unwrap_err().to_string();
        assert!(
            err.contains("writable by other users") && err.contains("1777"),
            "{err}"
        );
    }

    #[test]
    fn writes_replace_a_too_open_file_with_a_private_one() {
        let s = scratch();
        let path = s.path().join("state.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A stale temporary file left open to others must not be reused.
        std::fs::write(temp_path(&path), "stale").unwrap();
        std::fs::set_permissions(temp_path(&path), std::fs::Permissions::from_mode(0o666)).unwrap();
        write(&path, b"new", true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), 0o600);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn appending_opens_private_files() {
        let s = scratch();
        let path = s.path().join("journal.log");
        std::fs::write(&path, "x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_append(&path, true).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn owned_checks_refuse_open_symlinked_and_foreign_paths() {
        let s = scratch();
        let open = s.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_owned(&open, true).unwrap_err();
        assert!(err.contains("open") && err.contains("0777"), "{err}");
        let link = s.path().join("link");
        std::os::unix::fs::symlink(s.path(), &link).unwrap();
        let err = check_owned(&link, true).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        let file = s.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = check_owned(&file, true).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("owned_checks: another user's directory: skipped: needs root to chown");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            return;
        }
        let theirs = s.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let err = check_owned(&theirs, true).unwrap_err();
        assert!(err.contains("uid 65534") && err.contains("theirs"), "{err}");
    }
}
