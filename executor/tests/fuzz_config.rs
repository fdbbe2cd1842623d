//! Property-based fuzzing of the endpoint configuration file
//! (`EndpointConfig::parse`: TOML, then validation of every section):
//! arbitrary text, line-level mutations of the shipped site configurations
//! and of the template, and arbitrary values for every engine key. A file
//! either parses into a configuration whose values are usable or is an
//! error; it never panics. Cases per target: `FUZZ_CASES` (default 2,000).

use std::path::Path;
use std::time::Duration;

use hpfaas_executor::config::port_range::PortRange;
use hpfaas_executor::config::template::template;
use hpfaas_executor::config::EndpointConfig;
use hpfaas_scheduler_adapters::ProviderKind;
use proptest::prelude::*;

#[path = "../../tests/support/fuzz.rs"]
mod fuzz;
use fuzz::config;

fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-configs");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "toml")
                .then(|| std::fs::read_to_string(p).ok())
                .flatten()
        })
        .collect();
    out.sort();
    for kind in ProviderKind::ALL {
        out.push(template(kind, Some("http://127.0.0.1:8000")));
        // The template with every commented key switched on.
        out.push(
            template(kind, None)
                .lines()
                .map(|l| l.strip_prefix("# ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    out
}

/// What a validated configuration promises its users (the agent turns
/// these into `Duration`s, which panic on out-of-range values).
fn check(config: &EndpointConfig) {
    let e = &config.engine;
    let _ = Duration::from_secs_f64(e.heartbeat_period);
    let _ = Duration::from_secs_f64(e.heartbeat_threshold);
    let p = &config.provider;
    let _ = p.walltime();
    let _ = p.poll_period();
    let _ = Duration::from_secs_f64(p.max_idletime);
    let _ = Duration::from_secs_f64(p.drain_period);
    let _ = Duration::from_secs_f64(p.cmd_timeout);
    if let Some(range) = &e.port_range {
        assert!(range.first >= 1 && range.first <= range.last, "{range}");
    }
}

fn parse(text: &str) {
    if let Ok(c) = EndpointConfig::parse(text) {
        check(&c);
    }
}

#[derive(Debug, Clone)]
enum Edit {
    DropLine(usize),
    DupLine(usize),
    SetValue(usize, String),
    InsertLine(usize, String),
    Truncate(usize),
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("1e300".to_string()),
        Just("0".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9:,\\-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        "[ -~]{0,16}".prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("[1, \"a\", 2.5]".to_string()),
        Just("{}".to_string()),
        Just("\"list:0,1:2,3\"".to_string()),
        Just("\"list:99999999999\"".to_string()),
        Just("\"65535-0\"".to_string()),
        Just("\"1-65535\"".to_string()),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::DropLine),
        any::<usize>().prop_map(Edit::DupLine),
        (any::<usize>(), toml_value()).prop_map(|(i, v)| Edit::SetValue(i, v)),
        (
            any::<usize>(),
            prop_oneof![
                ".{0,20}",
                Just("[engine]".to_string()),
                Just("[provider]".to_string()),
                Just("[[provider]]".to_string()),
                Just("[endpoint]".to_string()),
            ]
        )
            .prop_map(|(i, l)| Edit::InsertLine(i, l)),
        any::<usize>().prop_map(Edit::Truncate),
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
            // Replace the value of the i-th `key = value` line.
            Edit::SetValue(i, v) => {
                let keyed: Vec<usize> = (0..n).filter(|&j| lines[j].contains('=')).collect();
                if !keyed.is_empty() {
                    let j = keyed[i % keyed.len()];
                    let key = lines[j].split('=').next().unwrap().to_string();
                    lines[j] = format!("{key}= {v}");
                }
            }
            Edit::InsertLine(i, l) => lines.insert(i % (n + 1), l.clone()),
            Edit::Truncate(i) => lines.truncate(i % (n + 1)),
            _ => {}
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text(text in ".{0,200}") {
        parse(&text);
    }

    #[test]
    fn mutated_site_configs(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let seeds = seeds();
        parse(&apply(which.get(&seeds).as_str(), &edits));
    }

    #[test]
    fn engine_values(
        key in prop::sample::select(vec![
            "max_workers_per_node", "cpu_affinity", "available_accelerators",
            "max_retries_on_system_failure", "worker_python", "prefetch_capacity",
            "heartbeat_period", "heartbeat_threshold", "address", "port_range",
            "mpi_launcher", "launcher_options",
        ]),
        value in toml_value(),
    ) {
        parse(&format!("[engine]\n{key} = {value}\n"));
    }

    #[test]
    fn port_ranges(text in "[0-9 \\-]{0,14}|.{0,10}") {
        if let Ok(range) = text.parse::<PortRange>() {
            prop_assert!(range.first >= 1 && range.first <= range.last);
            // It prints in a form that parses back to itself.
            prop_assert_eq!(range.to_string().parse::<PortRange>(), Ok(range));
        }
    }
}
