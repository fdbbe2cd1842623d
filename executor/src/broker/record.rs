//! `broker.json` in the endpoint directory: where the endpoint's broker
//! listened last and its CURVE public key. The agent writes it when its
//! broker starts and reads it at the next start, to bind the same port so
//! the managers of blocks that outlived a restart find the broker again;
//! `hpfaas manager --endpoint NAME` and `hpfaas endpoint job-script` read it
//! to reach the broker.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// File name of [`BrokerRecord`] in the endpoint directory.
pub const BROKER_FILE: &str = "broker.json";

/// Where the broker listens and how a manager recognises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerRecord {
    /// Address managers connect to.
    pub url: String,
    /// The broker's CURVE public key (Z85); absent when the link is not
    /// encrypted (`engine.encrypted = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_key: Option<String>,
}

/// The record in the endpoint directory `dir`: `None` if there is none (its
/// agent never started a broker); an error naming the file if it cannot be
/// read or is not a broker record.
pub fn read(dir: &Path) -> anyhow::Result<Option<BrokerRecord>> {
    let path = dir.join(BROKER_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not a broker record", path.display()))
}

/// Replaces the record in the endpoint directory `dir`, readable by its owner
/// alone, and on disk before this returns.
pub fn write(dir: &Path, record: &BrokerRecord) -> anyhow::Result<()> {
    crate::private::write(
        &dir.join(BROKER_FILE),
        &serde_json::to_vec_pretty(record)?,
        true,
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("hpfaas-record-")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn a_record_reads_back_as_written_and_only_its_owner_may_read_it() {
        let dir = scratch();
        for record in [
            BrokerRecord {
                url: "tcp://10.0.0.1:55001".into(),
                server_key: Some("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7".into()),
            },
            BrokerRecord {
                url: "ipc:///home/u/.hpfaas/endpoints/e/broker.sock".into(),
                server_key: None,
            },
        ] {
            write(dir.path(), &record).unwrap();
            assert_eq!(read(dir.path()).unwrap(), Some(record));
        }
        let text = std::fs::read_to_string(dir.path().join(BROKER_FILE)).unwrap();
        assert!(!text.contains("server_key"), "{text}");
        let mode = std::fs::metadata(dir.path().join(BROKER_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_record_is_none_and_a_broken_one_an_error_naming_the_file() {
        let dir = scratch();
        assert_eq!(read(dir.path()).unwrap(), None);
        for broken in [
            &b"{\"url\": \"tcp://h:1\", \"ser"[..],
            b"[]",
            b"{}",
            b"\xff\xfe",
        ] {
            std::fs::write(dir.path().join(BROKER_FILE), broken).unwrap();
            let e = format!("{:#}", read(dir.path()).unwrap_err());
            assert!(
                e.contains(BROKER_FILE) && e.contains("not a broker record"),
                "{e}"
            );
        }
        // A directory where the file should be cannot be read.
        std::fs::remove_file(dir.path().join(BROKER_FILE)).unwrap();
        std::fs::create_dir(dir.path().join(BROKER_FILE)).unwrap();
        let e = format!("{:#}", read(dir.path()).unwrap_err());
        assert!(e.contains("cannot read") && e.contains(BROKER_FILE), "{e}");
    }
}
