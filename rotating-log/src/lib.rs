//! A log file that rotates by size and, if asked, at each new day (UTC),
//! keeping the newest `keep` rotated files, every one 0600: the endpoint's
//! `endpoint.log` (executor) and the service's `audit.log` (registry) are
//! both written through [`RotatingFile`].
//!
//! Before a record would take the file past `max_bytes` (or is the first of
//! a new day) the file is renamed `<name>.1`, older ones shift up to `keep`,
//! the oldest is dropped, and a new file is opened. The size is read from the
//! file, not counted, so writes by others (another process appending, a
//! descriptor pointed at the file) count too. Descriptors given to
//! [`RotatingFile::open_with`] are pointed at the current file after each
//! rotation (a daemon's stdout and stderr).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// When a file is rotated and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A record that would take the file past this many bytes starts a new one.
    pub max_bytes: u64,
    /// Rotated files kept (`<name>.1` newest ... `<name>.N`).
    pub keep: u32,
    /// Also rotate at the first record of each new day (UTC).
    pub daily: bool,
}

/// Reads the time (the system clock; a test's clock in tests).
pub type Clock = Box<dyn Fn() -> SystemTime + Send>;

/// Mode of every file of the log.
const FILE_MODE: u32 = 0o600;

/// Days since 1970, UTC.
fn day_of(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// One rotating log file, open for appending.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    limits: Limits,
    /// The day (UTC, days since 1970) the current file's records are of.
    day: u64,
    clock: Clock,
    /// Descriptors kept pointing at the current file.
    redirect: Vec<RawFd>,
    /// The size at which the last rotation failed: the next try waits for
    /// another `max_bytes`, so a read-only directory does not cost a failed
    /// rename (and an error line) per record.
    failed_at: Option<u64>,
}

impl RotatingFile {
    /// Opens `path` for appending (0600), on the system clock.
    pub fn open(path: &Path, limits: Limits) -> io::Result<Self> {
        Self::open_with(path, limits, &[], Box::new(SystemTime::now))
    }

    /// Opens `path` for appending (0600), points each descriptor of
    /// `redirect` at it, and reads the time from `clock`.
    pub fn open_with(
        path: &Path,
        limits: Limits,
        redirect: &[RawFd],
        clock: Clock,
    ) -> io::Result<Self> {
        let file = open_private(path)?;
        let meta = file.metadata()?;
        // A file left by an earlier run holds the records of its last write's day.
        let day = match meta.modified() {
            Ok(modified) if meta.len() > 0 => day_of(modified),
            _ => day_of(clock()),
        };
        let log = RotatingFile {
            path: path.to_path_buf(),
            file,
            limits: Limits {
                max_bytes: limits.max_bytes.max(1),
                keep: limits.keep.max(1),
                daily: limits.daily,
            },
            day,
            clock,
            redirect: redirect.to_vec(),
            failed_at: None,
        };
        log.point_redirects()?;
        Ok(log)
    }

    /// The current file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record, whole, in one write; first rotates the file if
    /// the record would take it past its limit (a record larger than the
    /// limit gets a file of its own). So the last record written is always
    /// in the current file. A failed rotation is told in the file itself,
    /// and writing goes on there.
    pub fn write_record(&mut self, bytes: &[u8]) -> io::Result<()> {
        let size = self.file.metadata()?.len();
        let today = day_of((self.clock)());
        let full = size > 0 && size.saturating_add(bytes.len() as u64) > self.limits.max_bytes;
        let new_day = self.limits.daily && size > 0 && today != self.day;
        let retry = new_day
            || self
                .failed_at
                .is_none_or(|at| size >= at.saturating_add(self.limits.max_bytes));
        self.day = today;
        if (full || new_day) && retry {
            if let Err(e) = self.rotate() {
                let line = format!("hpfaas: cannot rotate {}: {e}\n", self.path.display());
                self.file.write_all(line.as_bytes())?;
                self.failed_at = Some(self.file.metadata()?.len());
            }
        }
        self.file.write_all(bytes)
    }

    /// Appends whole lines, as many to a write as fit in the current file:
    /// a burst of lines is split only between lines, at rotations.
    pub fn write_lines(&mut self, mut text: &[u8]) -> io::Result<()> {
        while !text.is_empty() {
            let size = self.file.metadata()?.len();
            let room = usize::try_from(self.limits.max_bytes.saturating_sub(size))
                .unwrap_or(usize::MAX)
                .min(text.len());
            // The last line end within the room, else the end of the first line.
            let cut = match text[..room].iter().rposition(|&b| b == b'\n') {
                Some(end) => end + 1,
                None => text
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(text.len(), |end| end + 1),
            };
            self.write_record(&text[..cut])?;
            text = &text[cut..];
        }
        Ok(())
    }

    /// `<name>.N`.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{n}"));
        self.path.with_file_name(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.limits.keep).rev() {
            rename_if_there(&self.rotated(n), &self.rotated(n + 1))?;
        }
        rename_if_there(&self.path, &self.rotated(1))?;
        self.remove_beyond_keep();
        // Until the new file is open, writers go on into the renamed one.
        self.file = open_private(&self.path)?;
        self.failed_at = None;
        self.point_redirects()
    }

    /// Removes `<name>.N` past `keep`, left by a larger `keep`.
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
            if index.is_some_and(|n| n > self.limits.keep) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn point_redirects(&self) -> io::Result<()> {
        for &fd in &self.redirect {
            // SAFETY: dup2 only replaces what `fd` refers to; both are open
            // descriptors of this process, and `self.file` outlives the call.
            if unsafe { libc::dup2(self.file.as_raw_fd(), fd) } < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot point descriptor {fd} at the log: {e}"),
                ));
            }
        }
        Ok(())
    }
}

/// Opens `path` for appending, created 0600 or made 0600.
fn open_private(path: &Path) -> io::Result<File> {
    let named = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| named(e, "open"))?;
    let mode = file.metadata().map_err(|e| named(e, "inspect"))?.mode() & 0o7777;
    if mode != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| named(e, "make private (chmod 600)"))?;
    }
    Ok(file)
}

fn rename_if_there(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("cannot rename {} to {}: {e}", from.display(), to.display()),
        )),
        _ => Ok(()),
    }
}
#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use std::sync::{Arc, Mutex};

    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("hpfaas-rotating-log-")
            .tempdir()
            .unwrap()
    }

    fn limits(max_bytes: u64, keep: u32) -> Limits {
        Limits {
            max_bytes,
            keep,
            daily: false,
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
        let mut log = RotatingFile::open(&s.path().join("endpoint.log"), limits(20, 3)).unwrap();
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
        let mut log = RotatingFile::open(&path, limits(1, 2)).unwrap();
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
        let log = Arc::new(Mutex::new(
            RotatingFile::open(&path, limits(4096, 1000)).unwrap(),
        ));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i % 50));
                        log.lock().unwrap().write_record(line.as_bytes()).unwrap();
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
        let mut log =
            RotatingFile::open_with(&path, limits(10, 2), &[fd], Box::new(SystemTime::now))
                .unwrap();
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
        let daily = Limits {
            daily: true,
            ..limits(1 << 20, 3)
        };
        let mut log = RotatingFile::open_with(&path, daily, &[], clock).unwrap();
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
        let mut log = RotatingFile::open_with(&path, limits(1 << 20, 3), &[], clock).unwrap();
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
        let daily = Limits {
            daily: true,
            ..limits(1 << 20, 3)
        };
        let mut log = RotatingFile::open(&path, daily).unwrap();
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
        let mut log = RotatingFile::open(&path, limits(100, 1)).unwrap();
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

    #[test]
    fn a_burst_of_lines_is_split_only_between_lines() {
        let s = scratch();
        let path = s.path().join("audit.log");
        let mut log = RotatingFile::open(&path, limits(25, 10)).unwrap();
        log.write_lines(b"line one\nline two\nline three\n")
            .unwrap();
        log.write_lines(b"a line longer than the whole limit\nlast\n")
            .unwrap();
        let all = files(s.path());
        for (name, text) in &all {
            assert!(text.ends_with('\n'), "{name} ends mid-line: {text:?}");
        }
        let joined: String = all.iter().rev().map(|(_, text)| text.as_str()).collect();
        assert_eq!(
            joined,
            "line one\nline two\nline three\na line longer than the whole limit\nlast\n"
        );
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(all[0].1, "last\n");
    }
}
