//! Property-based fuzzing of the parsers of scheduler output (sbatch, squeue,
//! sacct, qsub, qstat JSON, bsub, bjobs) and of the `[provider]` section of
//! the configuration file: arbitrary text and line-level mutations of the
//! recorded fixtures must never panic. Cases per target: `FUZZ_CASES`
//! (default 2,000).

use std::path::Path;
use std::time::Duration;

use hpfaas_scheduler_adapters::batch::Scheduler;
use hpfaas_scheduler_adapters::config::parse_walltime;
use hpfaas_scheduler_adapters::lsf::{self, Lsf};
use hpfaas_scheduler_adapters::pbs::{self, Pbs};
use hpfaas_scheduler_adapters::slurm::{self, Slurm};
use hpfaas_scheduler_adapters::ProviderConfig;
use proptest::prelude::*;

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;
use fuzz::config;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// Every recorded scheduler output, as seeds for mutation.
fn seeds() -> Vec<String> {
    [
        "slurm/squeue.txt",
        "slurm/sacct.txt",
        "slurm/sacct-c.txt",
        "slurm/sbatch-cluster.txt",
        "slurm/sbatch-invalid-partition.stderr",
        "pbs/qstat-mix.json",
        "pbs/qstat-invalid.json",
        "pbs/qstat-mix.stderr",
        "pbs/qsub.txt",
        "lsf/bjobs.txt",
        "lsf/bsub-queue.txt",
        "lsf/bjobs-not-found.stderr",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect()
}

/// Line-level and character-level mutations of a seed.
#[derive(Debug, Clone)]
enum Edit {
    DropLine(usize),
    DupLine(usize),
    SwapLines(usize, usize),
    InsertText(usize, String),
    TruncateChars(usize),
    ReplaceChar(usize, char),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::DropLine),
        any::<usize>().prop_map(Edit::DupLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (
            any::<usize>(),
            prop_oneof![
                ".{0,12}",
                "[\"{}:,|<> 0-9A-Z\\n]{0,12}",
                Just("Job <".to_string()),
                Just("\"Jobs\":".to_string()),
                Just("\"1.s\":{".to_string()),
                Just("\"Exit_status\":99999999999999999999,".to_string()),
                Just("|FAILED|-9223372036854775808:99".to_string()),
            ]
        )
            .prop_map(|(i, t)| Edit::InsertText(i, t)),
        any::<usize>().prop_map(Edit::TruncateChars),
        (any::<usize>(), any::<char>()).prop_map(|(i, c)| Edit::ReplaceChar(i, c)),
    ]
}

fn apply(seed: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = seed.lines().map(str::to_string).collect();
    for e in edits {
        let n = lines.len();
        match e {
            Edit::DropLine(i) if n > 0 => {
                lines.remove(i % n);
            }
            Edit::DupLine(i) if n > 0 => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::SwapLines(a, b) if n > 0 => lines.swap(a % n, b % n),
            Edit::InsertText(i, t) => {
                let mut text = lines.join("\n");
                let at = boundary(&text, *i);
                text.insert_str(at, t);
                lines = text.lines().map(str::to_string).collect();
            }
            Edit::TruncateChars(i) => {
                let mut text = lines.join("\n");
                text.truncate(boundary(&text, *i));
                lines = text.lines().map(str::to_string).collect();
            }
            Edit::ReplaceChar(i, c) => {
                let text = lines.join("\n");
                let k = i % (text.chars().count() + 1);
                let text: String = text
                    .chars()
                    .enumerate()
                    .map(|(j, x)| if j == k { *c } else { x })
                    .collect();
                lines = text.lines().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

fn boundary(text: &str, i: usize) -> usize {
    let count = text.chars().count();
    text.char_indices()
        .map(|(b, _)| b)
        .nth(i % (count + 1))
        .unwrap_or(text.len())
}

fn parse_everything(text: &str) {
    let _ = Slurm::parse_submit(text);
    let _ = Slurm::parse_query(text);
    let _ = slurm::parse_squeue(text);
    let _ = slurm::parse_sacct(text);
    let _ = Slurm::is_gone_message(text);
    let _ = Pbs::parse_submit(text);
    let _ = Pbs::parse_query(text);
    let _ = pbs::parse_qstat_json(text);
    let _ = Pbs::is_gone_message(text);
    let _ = Lsf::parse_submit(text);
    let _ = Lsf::parse_query(text);
    let _ = lsf::parse_bjobs(text);
    let _ = Lsf::is_gone_message(text);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsers_take_arbitrary_text(text in ".{0,200}") {
        parse_everything(&text);
    }

    #[test]
    fn parsers_take_mutated_fixtures(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let seeds = seeds();
        let text = apply(which.get(&seeds).as_str(), &edits);
        parse_everything(&text);
    }

    #[test]
    fn walltimes_parse_or_fail(text in "[0-9: ]{0,30}|.{0,16}") {
        if let Ok(d) = parse_walltime(&text) {
            prop_assert!(d > Duration::ZERO);
        }
    }

    #[test]
    fn provider_sections_parse_or_fail(
        kind in prop::sample::select(vec!["local", "slurm", "pbs", "lsf", "x"]),
        walltime in "[0-9:]{1,25}",
        numbers in prop::collection::vec(
            prop_oneof![
                any::<f64>().prop_map(|f| format!("{f:e}")),
                any::<i64>().prop_map(|n| n.to_string()),
                Just("inf".to_string()),
                Just("nan".to_string()),
                Just("1e300".to_string()),
                Just("\"3\"".to_string()),
            ],
            6,
        ),
    ) {
        let text = format!(
            "type = \"{kind}\"\nwalltime = \"{walltime}\"\nmax_idletime = {}\npoll_period = {}\n\
             cmd_timeout = {}\ndrain_period = {}\nparallelism = {}\nnodes_per_block = {}\n",
            numbers[0], numbers[1], numbers[2], numbers[3], numbers[4], numbers[5],
        );
        if let Ok(config) = toml::from_str::<ProviderConfig>(&text) {
            if config.validate().is_ok() {
                // Everything a validated section holds is usable: these
                // conversions panic on out-of-range values.
                let _ = config.walltime();
                let _ = config.poll_period();
                let _ = Duration::from_secs_f64(config.cmd_timeout);
                let _ = Duration::from_secs_f64(config.max_idletime);
                let _ = Duration::from_secs_f64(config.drain_period);
            }
        }
    }
}
