//! `engine.cpu_affinity` and what the endpoint asks of every manager's
//! workers (pinning, `max_workers_per_node`, `available_accelerators`),
//! parsed and checked as far as it can be without seeing a node. The agent
//! reads it from the file and hands it to each manager on its command line
//! ([`CpuAffinity`]'s `Display`); the manager reads it back with the same
//! parser and places its workers (`manager/affinity.rs`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// Size of a `cpu_set_t` in CPUs: no worker can be pinned to a CPU beyond it.
pub const CPU_SETSIZE: usize = libc::CPU_SETSIZE as usize;

/// How workers are pinned (`engine.cpu_affinity`), with Parsl's names and meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum CpuAffinity {
    /// No pinning: every worker may use all of the manager's CPUs.
    #[default]
    None,
    /// Worker i gets the i-th contiguous block of cores, inside one NUMA
    /// domain where the counts allow.
    Block,
    /// As `Block`, counting from the last core.
    BlockReverse,
    /// Cores dealt round-robin: worker i gets cores i, i+n, i+2n, ...
    Alternating,
    /// Exactly the CPU (PU) ids listed for each worker.
    List(Vec<Vec<u32>>),
}

/// The modes, for messages.
const MODES: &str = "none, block, block-reverse, alternating or list:CPUS:CPUS:... \
                     (one entry per worker, e.g. \"list:0-3,8-11:4-7,12-15\")";

impl CpuAffinity {
    /// Parses `engine.cpu_affinity`.
    pub fn parse(text: &str) -> Result<CpuAffinity, String> {
        match text {
            "none" => Ok(CpuAffinity::None),
            "block" => Ok(CpuAffinity::Block),
            "block-reverse" => Ok(CpuAffinity::BlockReverse),
            "alternating" => Ok(CpuAffinity::Alternating),
            _ => match text.strip_prefix("list:") {
                Some(list) => list
                    .split(':')
                    .map(|entry| {
                        parse_cpus(entry)
                            .map_err(|e| format!("engine.cpu_affinity = {text:?}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(CpuAffinity::List),
                None => Err(format!(
                    "engine.cpu_affinity = {text:?} is not a mode; use {MODES}"
                )),
            },
        }
    }
}

impl FromStr for CpuAffinity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        CpuAffinity::parse(text)
    }
}

impl TryFrom<String> for CpuAffinity {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        CpuAffinity::parse(&text)
    }
}

/// The value as `engine.cpu_affinity` writes it; `list:` entries as
/// ranges, so that it parses back to the same value.
impl fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuAffinity::None => f.write_str("none"),
            CpuAffinity::Block => f.write_str("block"),
            CpuAffinity::BlockReverse => f.write_str("block-reverse"),
            CpuAffinity::Alternating => f.write_str("alternating"),
            CpuAffinity::List(entries) => {
                f.write_str("list")?;
                for entry in entries {
                    write!(f, ":{}", fmt_cpus(entry))?;
                }
                Ok(())
            }
        }
    }
}

/// Parses one worker's CPUs, `0-3,8-11`, into ascending distinct ids.
fn parse_cpus(entry: &str) -> Result<Vec<u32>, String> {
    if entry.trim().is_empty() {
        return Err("an entry is empty; give each worker at least one CPU".into());
    }
    let mut cpus = BTreeSet::new();
    for item in entry.split(',') {
        let bad = || format!("{item:?} is not a CPU id or a range like 8-11");
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item, item),
        };
        let a: u32 = a.trim().parse().map_err(|_| bad())?;
        let b: u32 = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(bad());
        }
        if b as usize >= CPU_SETSIZE {
            return Err(format!(
                "CPU {b} is beyond the {CPU_SETSIZE} CPUs a worker can be pinned to"
            ));
        }
        cpus.extend(a..=b);
    }
    Ok(cpus.into_iter().collect())
}

/// What the endpoint asks of every manager: pinning, worker count, accelerators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRequest {
    /// `engine.cpu_affinity`.
    pub mode: CpuAffinity,
    /// `engine.max_workers_per_node`, if set.
    pub max_workers: Option<u32>,
    /// `engine.available_accelerators`: one per worker.
    pub accelerators: Vec<String>,
}

impl WorkerRequest {
    /// Checks what can be checked without seeing a node.
    pub fn new(
        mode: CpuAffinity,
        max_workers: Option<u32>,
        accelerators: Vec<String>,
    ) -> Result<WorkerRequest, String> {
        if let Some(bad) = accelerators
            .iter()
            .find(|a| a.trim().is_empty() || a.contains(','))
        {
            return Err(format!(
                "engine.available_accelerators: {bad:?} is not an accelerator id (no commas, not empty)"
            ));
        }
        let request = WorkerRequest {
            mode,
            max_workers,
            accelerators,
        };
        if let CpuAffinity::List(entries) = &request.mode {
            // A list's own length is the default, so this needs no node.
            let workers = request.workers(entries.len() as u32);
            if (entries.len() as u32) < workers {
                return Err(request.list_too_short(entries.len(), workers));
            }
        }
        Ok(request)
    }

    /// Workers per manager: `max_workers_per_node`, else one per accelerator,
    /// else one per `list:` entry, else `default`; never more than there
    /// are accelerators.
    pub fn workers(&self, default: u32) -> u32 {
        let accelerators = self.accelerators.len() as u32;
        let wanted = self.max_workers.unwrap_or(match &self.mode {
            _ if accelerators > 0 => accelerators,
            CpuAffinity::List(entries) => entries.len() as u32,
            _ => default,
        });
        let capped = if accelerators > 0 {
            wanted.min(accelerators)
        } else {
            wanted
        };
        capped.max(1)
    }

    /// Where a worker count came from, for messages.
    pub(crate) fn workers_source(&self) -> &'static str {
        match (self.max_workers, self.accelerators.is_empty()) {
            (Some(_), true) => "engine.max_workers_per_node",
            (Some(_), false) => {
                "engine.max_workers_per_node, capped by engine.available_accelerators"
            }
            (None, false) => "one per engine.available_accelerators",
            (None, true) => "the default",
        }
    }

    /// Why a `list:` of `entries` cannot pin `workers` workers.
    pub(crate) fn list_too_short(&self, entries: usize, workers: u32) -> String {
        format!(
            "engine.cpu_affinity lists CPUs for {entries} workers but {workers} workers are asked for \
             ({}); give one ':'-separated entry per worker",
            self.workers_source()
        )
    }
}

/// CPU ids as ranges, `0-3,8-11`.
pub fn fmt_cpus(cpus: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(text: &str) -> CpuAffinity {
        text.parse().unwrap()
    }

    #[test]
    fn modes_parse_and_unknown_ones_are_named() {
        assert_eq!(CpuAffinity::parse("none").unwrap(), CpuAffinity::None);
        assert_eq!(
            CpuAffinity::parse("block-reverse").unwrap(),
            CpuAffinity::BlockReverse
        );
        assert_eq!(
            CpuAffinity::parse("list:0-3,8-11:4-7,12-15").unwrap(),
            CpuAffinity::List(vec![
                vec![0, 1, 2, 3, 8, 9, 10, 11],
                vec![4, 5, 6, 7, 12, 13, 14, 15]
            ])
        );
        assert_eq!(
            CpuAffinity::parse("list:3,1,1").unwrap(),
            CpuAffinity::List(vec![vec![1, 3]])
        );
        let err = CpuAffinity::parse("blocky").unwrap_err();
        assert!(
            err.contains("\"blocky\"") && err.contains("block-reverse"),
            "{err}"
        );
        for bad in [
            "list:",
            "list:0::1",
            "list:3-1",
            "list:a",
            "list:0-",
            "list:5000",
        ] {
            let err = CpuAffinity::parse(bad).unwrap_err();
            assert!(err.contains("engine.cpu_affinity"), "{bad}: {err}");
        }
    }

    #[test]
    fn modes_print_as_they_parse() {
        for text in [
            "none",
            "block",
            "block-reverse",
            "alternating",
            "list:0-3,8-11:4-7,12-15",
            "list:5:0",
        ] {
            assert_eq!(mode(text).to_string(), text);
        }
        // Another spelling of the same CPUs prints in the one canonical form,
        // which reads back as the same value.
        let spelled = mode("list: 3,1,1,2 :7");
        assert_eq!(spelled.to_string(), "list:1-3:7");
        assert_eq!(mode(&spelled.to_string()), spelled);
    }

    #[derive(Debug, Deserialize)]
    struct Engine {
        #[serde(default)]
        cpu_affinity: CpuAffinity,
    }

    #[test]
    fn a_bad_mode_in_a_file_is_named_with_its_line() {
        let engine: Engine = toml::from_str("").unwrap();
        assert_eq!(engine.cpu_affinity, CpuAffinity::None);
        let engine: Engine = toml::from_str("cpu_affinity = \"list:0:1\"\n").unwrap();
        assert_eq!(
            engine.cpu_affinity,
            CpuAffinity::List(vec![vec![0], vec![1]])
        );
        let err = toml::from_str::<Engine>("\ncpu_affinity = \"packed\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.cpu_affinity = \"packed\" is not a mode")
                && err.contains("line 2"),
            "{err}"
        );
        let err = toml::from_str::<Engine>("cpu_affinity = \"list:9999\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("CPU 9999 is beyond"), "{err}");
        assert!(toml::from_str::<Engine>("cpu_affinity = 3\n").is_err());
    }

    #[test]
    fn requests_are_checked_without_a_node() {
        let err = WorkerRequest::new(mode("list:0:1"), Some(3), vec![]).unwrap_err();
        assert!(
            err.contains("lists CPUs for 2 workers but 3 workers are asked for")
                && err.contains("engine.max_workers_per_node"),
            "{err}"
        );
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let err = WorkerRequest::new(mode("list:0:1"), None, three).unwrap_err();
        assert!(
            err.contains("one per engine.available_accelerators"),
            "{err}"
        );
        for bad in ["0,1", "", " "] {
            let err = WorkerRequest::new(CpuAffinity::None, None, vec![bad.into()]).unwrap_err();
            assert!(
                err.contains("engine.available_accelerators"),
                "{bad:?}: {err}"
            );
        }
        WorkerRequest::new(mode("list:0:1"), Some(2), vec![]).unwrap();
    }

    #[test]
    fn worker_counts_follow_accelerators_and_lists() {
        let gpus: Vec<String> = ["0", "1", "2", "3"].map(String::from).to_vec();
        let r = WorkerRequest::new(CpuAffinity::Block, None, gpus.clone()).unwrap();
        assert_eq!(r.workers(64), 4);
        let r = WorkerRequest::new(CpuAffinity::Block, Some(8), gpus.clone()).unwrap();
        assert_eq!(r.workers(64), 4, "capped by the accelerators");
        let r = WorkerRequest::new(CpuAffinity::Block, Some(2), gpus).unwrap();
        assert_eq!(r.workers(64), 2);
        let r = WorkerRequest::new(mode("list:0:1:2"), None, vec![]).unwrap();
        assert_eq!(r.workers(64), 3);
        assert_eq!(
            WorkerRequest::new(CpuAffinity::None, None, vec![])
                .unwrap()
                .workers(7),
            7
        );
    }
}
