//! `endpoint.log` of a daemon agent, rotated by size (and, with
//! `logs.daily`, at each new day) and kept private.
//!
//! The agent writes its log itself rather than through a shell redirect, so
//! it can start a new file: the tracing subscriber writes each record through
//! [`LogWriter`] into a [`RotatingFile`] with the `[logs]` limits
//! (`endpoint.log.1` newest ... `endpoint.log.N`). What bypasses tracing —
//! a panic message, a stray print — goes to descriptors 1 and 2, which are
//! pointed at the current file at every rotation: nothing written before or
//! after a rotation is lost, and the size check (on the file, not a count of
//! our own bytes) sees those writes too. A child inherits the file of its
//! start and keeps it across a rotation; the agent's own children have
//! outputs of their own (scheduler commands a pipe, blocks their block log).

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use hpfaas_rotating_log::{Limits, RotatingFile};

use crate::config::LogsSection;

/// A log file that rotates, shared by the threads that log.
pub struct RotatingLog {
    file: Mutex<RotatingFile>,
}

impl RotatingLog {
    /// Opens `path` for appending (0600) with the `[logs]` limits, and points
    /// each descriptor of `redirect` at it.
    pub fn open(path: &Path, logs: &LogsSection, redirect: &[i32]) -> anyhow::Result<Self> {
        let limits = Limits {
            max_bytes: logs.max_bytes,
            keep: logs.keep,
            daily: logs.daily,
        };
        let file = RotatingFile::open_with(path, limits, redirect, Box::new(SystemTime::now))
            .with_context(|| format!("cannot open the log {}", path.display()))?;
        Ok(RotatingLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one record, whole, in one write (rotating first if it would
    /// take the file past its limit).
    pub fn write_record(&self, bytes: &[u8]) -> io::Result<()> {
        // A panic while the lock was held leaves the file usable.
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_record(bytes)
    }
}

/// The tracing subscriber's writer: each record goes to the log whole.
#[derive(Clone)]
pub struct LogWriter(Arc<RotatingLog>);

impl LogWriter {
    /// A writer on `log`.
    pub fn new(log: RotatingLog) -> Self {
        LogWriter(Arc::new(log))
    }
}

/// One record being written through a [`LogWriter`].
pub struct Record<'a>(&'a RotatingLog);

impl Write for Record<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_record(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Record<'a>;

    fn make_writer(&'a self) -> Record<'a> {
        Record(&self.0)
    }
}

/// `endpoint.log` of the endpoint in `dir`, with stdout and stderr pointed
/// at it: what a daemon agent logs through.
pub fn endpoint_log(dir: &Path, logs: &LogsSection) -> anyhow::Result<LogWriter> {
    let log = RotatingLog::open(
        &dir.join("endpoint.log"),
        logs,
        &[libc::STDOUT_FILENO, libc::STDERR_FILENO],
    )?;
    Ok(LogWriter::new(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_rotate_with_the_logs_section_limits() {
        let s = tempfile::Builder::new()
            .prefix("hpfaas-log-rotation-")
            .tempdir()
            .unwrap();
        let path = s.path().join("endpoint.log");
        let logs = LogsSection {
            max_bytes: 20,
            keep: 1,
            ..LogsSection::default()
        };
        let log = RotatingLog::open(&path, &logs, &[]).unwrap();
        for i in 0..3 {
            log.write_record(format!("record {i} ......\n").as_bytes())
                .unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "record 2 ......\n");
        assert_eq!(
            std::fs::read_to_string(s.path().join("endpoint.log.1")).unwrap(),
            "record 1 ......\n"
        );
        assert!(!s.path().join("endpoint.log.2").exists(), "keep = 1");
    }
}
