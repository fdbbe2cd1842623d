//! `blocks.json`: the endpoint's record of the jobs it submitted, so a
//! restarted agent re-adopts them instead of leaking them. What is read
//! back is checked ([`adoptable`]) before any job id reaches a scheduler
//! command or kill(2).

use std::path::{Path, PathBuf};

use hpfaas_scheduler_adapters::JobId;
use serde::{Deserialize, Serialize};

/// File name of the record, in the endpoint directory.
pub const FILE: &str = "blocks.json";

/// What the record holds about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Endpoint-unique block id.
    pub block_id: String,
    /// The provider's job id.
    pub job_id: JobId,
    /// When it was submitted, Unix seconds.
    pub submitted_at: f64,
}

/// The whole file.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The id the next submitted block gets.
    pub next_id: u64,
    /// Every job submitted and not known to have ended.
    pub blocks: Vec<Record>,
}

/// Path of the record in endpoint directory `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the record a previous agent left in `dir`, keeping only the jobs
/// `provider` could own. A missing file is an empty record; an unreadable
/// one is logged and treated as empty, as the agent must start all the same.
pub fn load(dir: &Path, provider: &str) -> Saved {
    let path = path(dir);
    let mut saved: Saved = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "not re-adopting any block: {} is not a block record ({e})",
                path.display()
            );
            Saved::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
        Err(e) => {
            tracing::warn!(
                "not re-adopting any block: cannot read {}: {e}",
                path.display()
            );
            Saved::default()
        }
    };
    saved.blocks.retain(|record| {
        let ok = adoptable(provider, &record.job_id);
        if !ok {
            tracing::warn!(
                "not re-adopting block {}: {:?} in {FILE} is not a {provider} job id",
                record.block_id,
                record.job_id
            );
        }
        ok
    });
    saved
}

/// Writes the record privately; a failure is logged, since the blocks run
/// on whether or not they could be recorded.
pub fn save(dir: &Path, saved: &Saved) {
    let path = path(dir);
    let written = serde_json::to_vec_pretty(saved)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| crate::private::write(&path, &bytes, true));
    if let Err(e) = written {
        tracing::error!("cannot record blocks in {}: {e:#}", path.display());
    }
}

/// True if `job` read from `blocks.json` can be a job id of `provider`, so
/// it may be polled and cancelled: a local block's is the pid of its
/// process group (which a kill(2) of 0, 1 or a negative value would not
/// name), a batch system's a word that no command can take for an option.
pub fn adoptable(provider: &str, job: &str) -> bool {
    if provider == "local" {
        return job
            .parse::<u32>()
            .ok()
            .and_then(crate::agent::pid::signalable)
            .is_some();
    }
    !job.is_empty()
        && job.len() <= 128
        && !job.starts_with('-')
        && job
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-[]:@+".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_job_ids_are_re_adopted() {
        for bad in ["0", "1", "-1", "4294967295", "2147483648", "x", ""] {
            assert!(!adoptable("local", bad), "{bad:?}");
        }
        assert!(adoptable("local", "4242"));
        for bad in ["", "-1", "--user=alice", "1 2", "1;rm", "a\nb"] {
            assert!(!adoptable("slurm", bad), "{bad:?}");
        }
        for good in ["123456", "123456_7", "4321.pbs-server", "8[1]"] {
            assert!(adoptable("slurm", good), "{good:?}");
        }
    }

    fn record(block_id: &str, job_id: &str) -> Record {
        Record {
            block_id: block_id.into(),
            job_id: job_id.into(),
            submitted_at: 1.5,
        }
    }

    #[test]
    fn a_saved_record_loads_back_without_implausible_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let saved = Saved {
            next_id: 7,
            blocks: vec![record("5", "1234"), record("6", "--all")],
        };
        save(dir.path(), &saved);
        let loaded = load(dir.path(), "slurm");
        assert_eq!(loaded.next_id, 7);
        assert_eq!(loaded.blocks, vec![record("5", "1234")]);
    }

    #[test]
    fn a_missing_or_damaged_record_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "slurm"), Saved::default());
        std::fs::write(path(dir.path()), b"{\"next_id\": 3, \"blocks\": [").unwrap();
        assert_eq!(load(dir.path(), "slurm"), Saved::default());
    }
}
