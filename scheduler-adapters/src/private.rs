//! Files only their owner can open: job scripts and block logs hold
//! command lines and task output.

/// Creates (or empties) `path` as a file only its owner can open, whatever
/// the umask: job scripts and block logs hold command lines and task output.
pub fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}
