//! Finished blocks' files in `blocks/` (job scripts, output, saved
//! environments: `block-<id>.<ext>`), kept to the newest `logs.keep_blocks`
//! blocks so the directory does not grow with every block an endpoint ever
//! ran. A live block's files are never removed: its job may still read its
//! script and write its output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The files of one block, and when the newest of them last changed.
struct BlockFiles {
    id: String,
    newest: SystemTime,
    paths: Vec<PathBuf>,
}

/// The block a file in `blocks/` belongs to: `block-<id>.<ext>` gives `<id>`.
fn block_of(name: &str) -> Option<&str> {
    let (id, _ext) = name.strip_prefix("block-")?.split_once('.')?;
    (!id.is_empty()).then_some(id)
}

/// Removes the files of every block in `dir` but the `keep` most recently
/// written finished ones; `live` names the blocks whose files stay whatever
/// their age. Returns how many blocks' files were removed. A file that
/// cannot be removed is left (and named in the log); a missing `dir` is
/// nothing to prune.
pub fn prune(dir: &Path, keep: usize, live: &[&str]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut blocks: HashMap<String, BlockFiles> = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(block_of) else {
            continue;
        };
        if live.contains(&id) {
            continue;
        }
        // symlink_metadata: a link is the block's file, not what it points at.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() {
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let block = blocks.entry(id.to_string()).or_insert_with(|| BlockFiles {
            id: id.to_string(),
            newest: SystemTime::UNIX_EPOCH,
            paths: Vec::new(),
        });
        block.newest = block.newest.max(modified);
        block.paths.push(entry.path());
    }
    let mut finished: Vec<BlockFiles> = blocks.into_values().collect();
    // Newest first; equal times (coarse clocks) by the later block id.
    finished.sort_by(|a, b| {
        b.newest
            .cmp(&a.newest)
            .then_with(|| id_order(&b.id).cmp(&id_order(&a.id)))
    });
    let mut removed = 0;
    for block in finished.into_iter().skip(keep) {
        for path in &block.paths {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
        removed += 1;
    }
    removed
}

/// Our block ids are counters: numbers sort as numbers, before other names.
fn id_order(id: &str) -> (u64, &str) {
    (id.parse().unwrap_or(u64::MAX), id)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `blocks/` with `block-<id>.sh` and `.log` for each id, the later ids
    /// written later.
    fn blocks_dir(ids: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-prune-")
            .tempdir()
            .unwrap();
        let start = SystemTime::now() - Duration::from_secs(3600);
        for (n, id) in ids.iter().enumerate() {
            for ext in ["sh", "log"] {
                let path = dir.path().join(format!("block-{id}.{ext}"));
                std::fs::write(&path, "x").unwrap();
                let file = std::fs::File::options().write(true).open(&path).unwrap();
                file.set_modified(start + Duration::from_secs(60 * n as u64))
                    .unwrap();
            }
        }
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn keeps_the_newest_finished_blocks() {
        let dir = blocks_dir(&["0", "1", "2", "3"]);
        assert_eq!(prune(dir.path(), 2, &[]), 2);
        assert_eq!(
            names(dir.path()),
            ["block-2.log", "block-2.sh", "block-3.log", "block-3.sh"]
        );
        assert_eq!(prune(dir.path(), 2, &[]), 0, "nothing more to remove");
    }

    #[test]
    fn live_blocks_are_never_removed_however_old() {
        // Block 0 is the oldest and still running (re-adopted, say).
        let dir = blocks_dir(&["0", "1", "2", "3"]);
        assert_eq!(prune(dir.path(), 1, &["0"]), 2);
        assert_eq!(
            names(dir.path()),
            ["block-0.log", "block-0.sh", "block-3.log", "block-3.sh"]
        );
        assert_eq!(prune(dir.path(), 0, &["0"]), 1);
        assert_eq!(names(dir.path()), ["block-0.log", "block-0.sh"]);
    }

    #[test]
    fn other_files_are_left_alone() {
        let dir = blocks_dir(&["0", "1"]);
        for other in ["notes.txt", "block-", "block-.sh", "blocks.json"] {
            std::fs::write(dir.path().join(other), "mine").unwrap();
        }
        std::fs::create_dir(dir.path().join("block-9.d")).unwrap();
        assert_eq!(prune(dir.path(), 0, &[]), 2);
        assert_eq!(
            names(dir.path()),
            [
                "block-",
                "block-.sh",
                "block-9.d",
                "blocks.json",
                "notes.txt"
            ]
        );
        assert_eq!(prune(&dir.path().join("missing"), 0, &[]), 0);
    }

    #[test]
    fn equal_times_keep_the_later_block() {
        let dir = blocks_dir(&[]);
        for id in ["9", "10", "8"] {
            std::fs::write(dir.path().join(format!("block-{id}.log")), "x").unwrap();
        }
        let when = SystemTime::now();
        for id in ["9", "10", "8"] {
            let file = std::fs::File::options()
                .write(true)
                .open(dir.path().join(format!("block-{id}.log")))
                .unwrap();
            file.set_modified(when).unwrap();
        }
        prune(dir.path(), 1, &[]);
        assert_eq!(names(dir.path()), ["block-10.log"]);
    }
}
