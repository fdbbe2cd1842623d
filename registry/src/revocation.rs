//! Token revocations reaching a running service, wherever they come from.
//!
//! A token can be revoked inside the service (an endpoint re-registered or
//! deleted) or by another process (`hpfaas token revoke` writes the database
//! directly). The other process then replaces the stamp file
//! `revoked.stamp` in the data directory. The service stats that file on
//! every authenticated request (one cheap syscall), so a revoked token gets
//! `401` on its very next request, and a background poll notices it too, so
//! open result streams and endpoint links can re-check their tokens and end.
//!
//! Either way [`Revocations::notify`] bumps a generation that long-lived
//! connections watch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::watch;

/// Name of the stamp file inside the data directory.
pub const STAMP_FILE: &str = "revoked.stamp";

/// What identifies one version of the stamp file.
type StampId = (Option<SystemTime>, u64, u64);

fn stamp_id(path: &Path) -> Option<StampId> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok(), meta.len(), inode))
}

/// Replaces the stamp file in `data_dir`, telling a running service that
/// tokens were revoked. Written to a new file and renamed, so the inode
/// changes even where timestamps are coarse.
pub fn touch_stamp(data_dir: &Path) -> std::io::Result<()> {
    let tmp = data_dir.join(format!("{STAMP_FILE}.{}", std::process::id()));
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{nanos}")?;
    }
    std::fs::rename(&tmp, data_dir.join(STAMP_FILE))
}

/// Watches for revocations; see the module documentation.
pub struct Revocations {
    stamp: PathBuf,
    seen: Mutex<Option<StampId>>,
    generation: watch::Sender<u64>,
}

impl Revocations {
    /// Watches the stamp file of `data_dir`, as it is now.
    pub fn new(data_dir: &Path) -> Revocations {
        let stamp = data_dir.join(STAMP_FILE);
        let seen = Mutex::new(stamp_id(&stamp));
        Revocations {
            stamp,
            seen,
            generation: watch::channel(0).0,
        }
    }

    /// Checks the stamp file; if it changed since the last look, notifies
    /// and returns true.
    pub fn poll(&self) -> bool {
        let now = stamp_id(&self.stamp);
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                false
            } else {
                *seen = now;
                true
            }
        };
        if changed {
            tracing::info!("tokens were revoked by another process");
            self.notify();
        }
        changed
    }

    /// Tells every watcher that some token was revoked.
    pub fn notify(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes whenever a token was revoked.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// Completes at the next revocation (never, if the sender is gone).
pub async fn next(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_stamp_is_noticed_once() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-stamp-")
            .tempdir()
            .unwrap();
        let dir = scratch.path().to_path_buf();
        let r = Revocations::new(&dir);
        let mut rx = r.subscribe();
        assert!(!r.poll());
        touch_stamp(&dir).unwrap();
        assert!(r.poll());
        assert!(!r.poll());
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        touch_stamp(&dir).unwrap();
        assert!(r.poll());
        assert!(rx.has_changed().unwrap());
    }
}
