//! `hpfaas man DIR`: one man page (section 1) per command and subcommand,
//! rendered by clap_mangen from the same definitions as `--help`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Writes `hpfaas.1`, `hpfaas-endpoint.1`, `hpfaas-endpoint-start.1`, ...
/// into `dir` (made if missing); the paths written, parents first.
pub fn write_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Built first, so each subcommand's page is titled with its full name.
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut written = Vec::new();
    write_tree(&command, dir, &mut written)?;
    Ok(written)
}

fn write_tree(
    command: &clap::Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let page = clap_mangen::Man::new(command.clone());
    let path = page
        .generate_to(dir)
        .with_context(|| format!("cannot write a man page into {}", dir.display()))?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, dir, written)?;
    }
    Ok(())
}
