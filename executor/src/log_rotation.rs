//! `endpoint.log` of a daemon agent, rotated by size (and, with
//! `logs.daily`, at each new day) and kept private.
//!
//! The agent writes its log itself rather than through a shell redirect, so
//! it can start a new file: the tracing subscriber writes each record through
//! [`LogWriter`], and before a record would take the file past
//! `logs.max_bytes` it is renamed
//! `endpoint.log.1` (older ones shift up to `logs.keep`, the oldest is
//! dropped) and a new `endpoint.log` is opened 0600. What bypasses tracing —
//! a panic message, a stray print — goes to descriptors 1 and 2, which are
//! pointed at the current file at every rotation: nothing written before or
//! after a rotation is lost, and the size check (on the file, not a count of
//! our own bytes) sees those writes too. A child inherits the file of its
//! start and keeps it across a rotation; the agent's own children have
//! outputs of their own (scheduler commands a pipe, blocks their block log).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;

use crate::config::LogsSection;

/// A log file that rotates by size.
pub struct RotatingLog {
    state: Mutex<State>,
}

/// Reads the time (the system clock; a test's clock in tests).
type Clock = Box<dyn Fn() -> SystemTime + Send>;

/// Days since 1970, UTC.
fn day_of(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

struct State {
    path: PathBuf,
    file: File,
    max_bytes: u64,
    keep: u32,
    daily: bool,
    /// The day (UTC, days since 1970) the current file's records are of.
    day: u64,
    /// Where the time is read: the system clock, or a test's.
    clock: Clock,
    /// Descriptors kept pointing at the current file (stdout and stderr).
    redirect: Vec<RawFd>,
    /// The size at which the last rotation failed: the next try waits for
    /// another `max_bytes`, so a read-only directory does not cost a failed
    /// rename (and an error line) per record.
    failed_at: Option<u64>,
}

impl RotatingLog {
    /// Opens `path` for appending (0600) with the `[logs]` limits, and points
    /// each descriptor of `redirect` at it.
    pub fn open(path: &Path, logs: &LogsSection, redirect: &[RawFd]) -> anyhow::Result<Self> {
        Self::open_with_clock(path, logs, redirect, Box::new(SystemTime::now))
    }

    fn open_with_clock(
        path: &Path,
        logs: &LogsSection,
        redirect: &[RawFd],
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let file = crate::private::open_append(path, false)?;
        let meta = file.metadata().context("cannot inspect the log")?;
        // A file left by an earlier run holds the records of its last write's day.
        let day = match meta.modified() {
            Ok(modified) if meta.len() > 0 => day_of(modified),
            _ => day_of(clock()),
        };
        let state = State {
            path: path.to_path_buf(),
            file,
            max_bytes: logs.max_bytes.max(1),
            keep: logs.keep.max(1),
            daily: logs.daily,
            day,
            clock,
            redirect: redirect.to_vec(),
            failed_at: None,
        };
        state.point_redirects()?;
        Ok(RotatingLog {
            state: Mutex::new(state),
        })
    }

    /// Appends one record, whole, in one write; first rotates the file if
    /// the record would take it past its limit (a record larger than the
    /// limit gets a file of its own). So the last line written is always in
    /// the current file.
    pub fn write_record(&self, bytes: &[u8]) -> io::Result<()> {
        // A panic while the lock was held leaves the state usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let size = state.file.metadata()?.len();
        let today = day_of((state.clock)());
        let full = size > 0 && size.saturating_add(bytes.len() as u64) > state.max_bytes;
        let new_day = state.daily && size > 0 && today != state.day;
        let retry = new_day
            || state
                .failed_at
                .is_none_or(|at| size >= at.saturating_add(state.max_bytes));
        state.day = today;
        if (full || new_day) && retry {
            if let Err(e) = state.rotate() {
                let line = format!("hpfaas: cannot rotate {}: {e:#}\n", state.path.display());
                state.file.write_all(line.as_bytes())?;
                state.failed_at = Some(state.file.metadata()?.len());
            }
        }
        state.file.write_all(bytes)
    }
}

impl State {
    /// `endpoint.log.N`.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{n}"));
        self.path.with_file_name(name)
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        for n in (1..self.keep).rev() {
            rename_if_there(&self.rotated(n), &self.rotated(n + 1))?;
        }
        rename_if_there(&self.path, &self.rotated(1))?;
        self.remove_beyond_keep();
        // Until the new file is open, writers go on into the renamed one.
        self.file = crate::private::open_append(&self.path, false)?;
        self.failed_at = None;
        self.point_redirects()
    }

    /// Removes `endpoint.log.N` past `keep`, left by a larger `logs.keep`.
    fn remove_beyond_keep(&self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let base = self.path.file_name().unwrap_or_default().to_string_lossy();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let index = name
                .to_str()
                .and_then(|n| n.strip_prefix(base.as_ref()))
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|n| n.parse::<u32>().ok());
            if index.is_some_and(|n| n > self.keep) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn point_redirects(&self) -> anyhow::Result<()> {
        for &fd in &self.redirect {
            // SAFETY: dup2 only replaces what `fd` refers to; both are open
            // descriptors of this process, and `self.file` outlives the call.
            if unsafe { libc::dup2(self.file.as_raw_fd(), fd) } < 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("cannot point descriptor {fd} at the log"));
            }
        }
        Ok(())
    }
}

fn rename_if_there(from: &Path, to: &Path) -> anyhow::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
        }
        _ => Ok(()),
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
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("hpfaas-log-rotation-")
            .tempdir()
            .unwrap()
    }

    fn limits(max_bytes: u64, keep: u32) -> LogsSection {
        LogsSection {
            max_bytes,
            keep,
            ..LogsSection::default()
        }
    }

    /// The log's files, current first, and what each holds.
    fn files(dir: &Path) -> Vec<(String, String)> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort_by_key(|n| {
            n.rsplit_once('.')
                .and_then(|(_, i)| i.parse::<u32>().ok())
                .unwrap_or(0)
        });
        names
            .into_iter()
            .map(|n| {
                let text = std::fs::read_to_string(dir.join(&n)).unwrap();
                (n, text)
            })
            .collect()
    }

    #[test]
    fn rotates_when_the_size_is_reached() {
        let s = scratch();
        let log = RotatingLog::open(&s.path().join("endpoint.log"), &limits(20, 3), &[]).unwrap();
        log.write_record(b"0123456789\n").unwrap();
        assert_eq!(files(s.path()).len(), 1, "below the limit: no rotation");
        log.write_record(b"abcdefghij\n").unwrap();
        let after = files(s.path());
        assert_eq!(
            after,
            vec![
                ("endpoint.log".to_string(), "abcdefghij\n".to_string()),
                ("endpoint.log.1".to_string(), "0123456789\n".to_string()),
            ]
        );
    }

    #[test]
    fn keeps_only_the_newest_rotated_files_private() {
        let s = scratch();
        let path = s.path().join("endpoint.log");
        // Left by an earlier run with a larger `logs.keep`.
        std::fs::write(s.path().join("endpoint.log.9"), "old\n").unwrap();
        let log = RotatingLog::open(&path, &limits(1, 2), &[]).unwrap();
        for i in 0..6 {
            log.write_record(format!("line {i}\n").as_bytes()).unwrap();
        }
        let kept = files(s.path());
        assert_eq!(
            kept,
            vec![
                ("endpoint.log".to_string(), "line 5\n".to_string()),
                ("endpoint.log.1".to_string(), "line 4\n".to_string()),
                ("endpoint.log.2".to_string(), "line 3\n".to_string()),
            ]
        );
        for (name, _) in kept {
            let mode = std::fs::metadata(s.path().join(&name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn no_line_is_lost_or_split_across_rotations() {
        let s = scratch();
        let path = s.path().join("endpoint.log");
        let log = Arc::new(RotatingLog::open(&path, &limits(4096, 1000), &[]).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i % 50));
                        log.write_record(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = files(s.path());
        assert!(all.len() > 10, "rotated {} times", all.len() - 1);
        let mut seen = std::collections::HashSet::new();
        for (name, text) in &all {
            assert!(
                text.is_empty() || text.ends_with('\n'),
                "{name} ends mid-line"
            );
            for line in text.lines() {
                assert!(seen.insert(line.to_string()), "twice: {line}");
            }
        }
        for t in 0..4 {
            for i in 0..2000 {
                let line = format!("thread {t} line {i} {}", "x".repeat(i % 50));
                assert!(seen.contains(&line), "lost: {line}");
            }
        }
    }

    #[test]
    fn redirected_descriptors_follow_the_current_file() {
        let s = scratch();
        let path = s.path().join("endpoint.log");
        // Stands in for stderr: the test harness's own must stay where it is.
        let stand_in = File::create(s.path().join("stand-in")).unwrap();
        let fd = stand_in.as_raw_fd();
        let stray = |text: &[u8]| {
            // SAFETY: `fd` is open for the whole test (`stand_in` lives).
            let n = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
            assert_eq!(n, text.len() as isize);
        };
        let log = RotatingLog::open(&path, &limits(10, 2), &[fd]).unwrap();
        stray(b"stray before\n");
        // The stray write counts towards the limit: this record rotates.
        log.write_record(b"record\n").unwrap();
        stray(b"stray after\n");
        assert_eq!(
            std::fs::read_to_string(s.path().join("endpoint.log.1")).unwrap(),
            "stray before\n"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "record\nstray after\n"
        );
        assert_eq!(
            std::fs::read_to_string(s.path().join("stand-in")).unwrap(),
            ""
        );
        drop(stand_in);
    }

    #[test]
    fn daily_rotation_starts_a_file_with_each_new_day() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let s = scratch();
        let path = s.path().join("endpoint.log");
        let day = 86_400;
        let now = Arc::new(AtomicU64::new(20_000 * day + 10));
        let clock_now = now.clone();
        let clock: Clock = Box::new(move || {
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(clock_now.load(Ordering::SeqCst))
        });
        let daily = LogsSection {
            daily: true,
            ..limits(1 << 20, 3)
        };
        let log = RotatingLog::open_with_clock(&path, &daily, &[], clock).unwrap();
        log.write_record(b"monday 1\n").unwrap();
        now.store(20_000 * day + day - 1, Ordering::SeqCst);
        log.write_record(b"monday 2\n").unwrap();
        assert_eq!(files(s.path()).len(), 1, "same day: no rotation");
        now.store(20_001 * day, Ordering::SeqCst);
        log.write_record(b"tuesday\n").unwrap();
        assert_eq!(
            files(s.path()),
            vec![
                ("endpoint.log".to_string(), "tuesday\n".to_string()),
                (
                    "endpoint.log.1".to_string(),
                    "monday 1\nmonday 2\n".to_string()
                ),
            ]
        );
        // Without `daily`, only the size counts.
        let s = scratch();
        let path = s.path().join("endpoint.log");
        let clock_now = now.clone();
        let clock: Clock = Box::new(move || {
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(clock_now.load(Ordering::SeqCst))
        });
        let log = RotatingLog::open_with_clock(&path, &limits(1 << 20, 3), &[], clock).unwrap();
        log.write_record(b"one\n").unwrap();
        now.store(20_005 * day, Ordering::SeqCst);
        log.write_record(b"two\n").unwrap();
        assert_eq!(files(s.path()).len(), 1);
    }

    #[test]
    fn a_file_from_an_earlier_day_is_rotated_at_the_first_record() {
        let s = scratch();
        let path = s.path().join("endpoint.log");
        std::fs::write(&path, "last week\n").unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - std::time::Duration::from_secs(7 * 86_400))
            .unwrap();
        drop(file);
        let daily = LogsSection {
            daily: true,
            ..limits(1 << 20, 3)
        };
        let log = RotatingLog::open(&path, &daily, &[]).unwrap();
        log.write_record(b"today\n").unwrap();
        assert_eq!(
            files(s.path()),
            vec![
                ("endpoint.log".to_string(), "today\n".to_string()),
                ("endpoint.log.1".to_string(), "last week\n".to_string()),
            ]
        );
    }

    #[test]
    fn a_failed_rotation_keeps_writing_to_the_current_file() {
        let s = scratch();
        let path = s.path().join("endpoint.log");
        // A directory where the rotated file would go fails the rename, for
        // root too (a read-only directory would not stop root).
        std::fs::create_dir(s.path().join("endpoint.log.1")).unwrap();
        std::fs::write(s.path().join("endpoint.log.1").join("x"), "").unwrap();
        let log = RotatingLog::open(&path, &limits(100, 1), &[]).unwrap();
        log.write_record(format!("{}first\n", "x".repeat(100)).as_bytes())
            .unwrap();
        log.write_record(b"second\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("first\nhpfaas: cannot rotate") && text.ends_with("second\n"),
            "{text}"
        );
        // One error line per `max_bytes` of growth, not one per record.
        assert_eq!(text.matches("cannot rotate").count(), 1, "{text}");
    }
}
