//! The service's data directory: created, or made, private (0700).

use std::path::Path;

use anyhow::Context;

/// Creates the data directory 0700, or makes an existing one 0700: it holds
/// every user's code, arguments, results and token hashes.
pub fn create(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("inspecting data directory {}", dir.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making data directory {} private", dir.display()))?;
        tracing::warn!(
            "data directory {} was mode {mode:04o}; it is now 0700",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(dir: &Path) -> u32 {
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_directory_is_0700_and_an_open_one_is_closed() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-data-dir-")
            .tempdir()
            .unwrap();
        let new = scratch.path().join("a/b");
        create(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        let open = scratch.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
    }
}
