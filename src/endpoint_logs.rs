//! `hpfaas endpoint logs NAME [-f] [--block N]`: the agent's `endpoint.log`,
//! or a block's output (`blocks/block-N.log` of a local block, `.out` and
//! `.err` of a batch job). With `-f` it polls for what is written next and
//! follows the log across rotations (`executor/src/log_rotation.rs` renames
//! the file and starts a new one): the rest of the old file is printed, then
//! the new one from its start; a file cut short is read again from its start.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use hpfaas_executor::lifecycle;
use serde_json::json;

use crate::output::{self, Format};

/// How often `-f` looks for more.
const POLL: Duration = Duration::from_millis(250);

/// The options of `endpoint logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// Endpoint name.
    #[arg(add = crate::completions::endpoint_names())]
    name: String,
    /// Keep printing what is written, across rotations (stop with Ctrl-C).
    #[arg(short, long)]
    follow: bool,
    /// Print block N's output instead of endpoint.log.
    #[arg(long, value_name = "N")]
    block: Option<String>,
}

/// Runs `endpoint logs`.
pub fn run(args: &LogsArgs, format: Format) -> anyhow::Result<()> {
    let dir = lifecycle::endpoint_dir(&args.name)?;
    if !dir.join("config.toml").exists() {
        anyhow::bail!("endpoint {} is not configured", args.name);
    }
    let paths = match &args.block {
        None => {
            let path = dir.join("endpoint.log");
            if !path.exists() {
                anyhow::bail!(
                    "{} does not exist: the endpoint's agent has not run as a daemon (`hpfaas \
                     endpoint start {}`; with --foreground it logs to stderr)",
                    path.display(),
                    args.name
                );
            }
            vec![path]
        }
        Some(block) => block_logs(&dir.join("blocks"), block)?,
    };
    let mut files: Vec<Followed> = paths.into_iter().map(Followed::new).collect();
    let several = files.len() > 1;
    if !args.follow {
        let mut docs = Vec::new();
        for f in &mut files {
            let text = String::from_utf8_lossy(&f.read_new()?).into_owned();
            match format {
                Format::Text => {
                    if several {
                        output::line(&format!("==> {} <==", f.path.display()))?;
                    }
                    output::raw(&text)?;
                }
                Format::Json => docs.push(json!({"path": f.path, "text": text})),
            }
        }
        if format == Format::Json {
            output::print_json(&json!({"name": args.name, "files": docs}))?;
        }
        return Ok(());
    }
    loop {
        for f in &mut files {
            let new = f.read_new()?;
            if new.is_empty() {
                continue;
            }
            match format {
                Format::Text => output::raw(&String::from_utf8_lossy(&new))?,
                // One JSON object per line of the file, as it comes.
                Format::Json => {
                    for line in f.lines(new) {
                        let doc = json!({"path": f.path, "line": line});
                        output::line(&serde_json::to_string(&doc)?)?;
                    }
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The output files of block `block` in `blocks`: the ones that exist.
fn block_logs(blocks: &Path, block: &str) -> anyhow::Result<Vec<PathBuf>> {
    let plausible = !block.is_empty()
        && block.len() <= 128
        && !block.starts_with('.')
        && block
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !plausible {
        anyhow::bail!(
            "invalid block id {block:?}: a block id is letters, digits, '.', '_' and '-'"
        );
    }
    let found: Vec<PathBuf> = ["log", "out", "err"]
        .iter()
        .map(|ext| blocks.join(format!("block-{block}.{ext}")))
        .filter(|p| p.exists())
        .collect();
    if found.is_empty() {
        anyhow::bail!(
            "block {block} has no output in {} (a block that never started has none; finished \
             blocks' files are kept to logs.keep_blocks)",
            blocks.display()
        );
    }
    Ok(found)
}

/// A file read from where the last read stopped.
struct Followed {
    path: PathBuf,
    file: Option<File>,
    /// Inode of `file`: another one at `path` means the log was rotated.
    inode: u64,
    offset: u64,
    /// The end of a line not yet complete (JSON output prints whole lines).
    partial: Vec<u8>,
}

impl Followed {
    fn new(path: PathBuf) -> Followed {
        Followed {
            path,
            file: None,
            inode: 0,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// What was written since the last call. After a rotation, the rest of
    /// the old file comes first, then the new file from its start; a file
    /// that shrank is read again from its start. A file that is missing for
    /// a moment (between a rename and the next create) gives nothing.
    fn read_new(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()))
            }
        };
        let rotated =
            self.file.is_some() && current.as_ref().is_some_and(|m| m.ino() != self.inode);
        if let Some(file) = &mut self.file {
            // What the old file got before it was renamed.
            file.read_to_end(&mut out)
                .with_context(|| format!("cannot read {}", self.path.display()))?;
            self.offset += out.len() as u64;
        }
        if rotated {
            self.file = None;
        }
        let Some(meta) = current else {
            return Ok(out);
        };
        let file = match &mut self.file {
            Some(file) if meta.len() < self.offset => {
                file.seek(SeekFrom::Start(0))?;
                self.offset = 0;
                file
            }
            Some(file) => file,
            None => {
                let file = File::open(&self.path)
                    .with_context(|| format!("cannot open {}", self.path.display()))?;
                self.inode = meta.ino();
                self.offset = 0;
                self.file.insert(file)
            }
        };
        let before = out.len();
        file.read_to_end(&mut out)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        self.offset += (out.len() - before) as u64;
        Ok(out)
    }

    /// The complete lines of `new` (with what was left of the last call).
    fn lines(&mut self, new: Vec<u8>) -> Vec<String> {
        self.partial.extend(new);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&done)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_log_is_read_across_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoint.log");
        std::fs::write(&path, "one\n").unwrap();
        let mut f = Followed::new(path.clone());
        assert_eq!(f.read_new().unwrap(), b"one\n");
        assert!(f.read_new().unwrap().is_empty());
        let append = |text: &str| {
            use std::io::Write as _;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            file.write_all(text.as_bytes()).unwrap();
        };
        append("two\n");
        // Rotated: written to, renamed, and a new file started.
        append("three\n");
        std::fs::rename(&path, dir.path().join("endpoint.log.1")).unwrap();
        assert!(
            f.read_new().unwrap() == b"two\nthree\n",
            "the old file's rest"
        );
        std::fs::write(&path, "four\n").unwrap();
        assert_eq!(f.read_new().unwrap(), b"four\n");
        // Cut short, then written again: read from the start.
        std::fs::write(&path, "5\n").unwrap();
        assert_eq!(f.read_new().unwrap(), b"5\n");
        assert_eq!(f.lines(b"a\nb".to_vec()), ["a"]);
        assert_eq!(f.lines(b"c\n".to_vec()), ["bc"]);
    }

    #[test]
    fn block_ids_cannot_leave_the_blocks_directory() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "", ".hidden", "a/b"] {
            let err = block_logs(dir.path(), bad).unwrap_err().to_string();
            assert!(err.contains("invalid block id"), "{bad}: {err}");
        }
        let err = block_logs(dir.path(), "3").unwrap_err().to_string();
        assert!(err.contains("no output"), "{err}");
        std::fs::write(dir.path().join("block-3.out"), "x").unwrap();
        std::fs::write(dir.path().join("block-3.err"), "y").unwrap();
        let found = block_logs(dir.path(), "3").unwrap();
        assert_eq!(found.len(), 2);
    }
}
