//! The engine-ceiling benchmark: the real broker in this process, driven
//! like the agent drives it, against `hpfaas manager --simulate` processes
//! that complete every task at once. Measures how long P×M managers take to
//! register and how fast N no-op tasks go through, and prints one JSON line:
//!
//! ```text
//! cargo run --release -p hpfaas-executor --example broker_bench -- \
//!     --hpfaas target/release/hpfaas --processes P --managers-per-process M \
//!     --slots S --tasks N [--prefetch K] [--batch B] [--heartbeat-period SECONDS] [--encrypted]
//! ```
//!
//! `register_s` is read from the broker's load report, sent once per
//! heartbeat period (default 0.5 s), so it is rounded up to that period.
//!
//! Logs go to stderr; stdout carries only the JSON line.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hpfaas_executor::broker::curve::CurveFile;
use hpfaas_executor::broker::{self, BrokerCommand, BrokerConfig, BrokerEvent};
use hpfaas_protocol::payload::pack;
use hpfaas_protocol::task::{FunctionCode, Outcome, TaskSpec};
use uuid::Uuid;

/// The command line.
struct Args {
    hpfaas: PathBuf,
    processes: u32,
    managers_per_process: u32,
    slots: u32,
    prefetch: u32,
    tasks: u64,
    batch: usize,
    encrypted: bool,
    heartbeat_period: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        hpfaas: PathBuf::from("target/release/hpfaas"),
        processes: 1,
        managers_per_process: 1,
        slots: 64,
        prefetch: 8,
        tasks: 100_000,
        batch: 1000,
        encrypted: false,
        heartbeat_period: 0.5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--encrypted" {
            args.encrypted = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{flag} {value}: {e}");
        match flag.as_str() {
            "--hpfaas" => args.hpfaas = PathBuf::from(&value),
            "--processes" => args.processes = value.parse().map_err(|e| bad(&e))?,
            "--managers-per-process" => {
                args.managers_per_process = value.parse().map_err(|e| bad(&e))?
            }
            "--slots" => args.slots = value.parse().map_err(|e| bad(&e))?,
            "--prefetch" => args.prefetch = value.parse().map_err(|e| bad(&e))?,
            "--tasks" => args.tasks = value.parse().map_err(|e| bad(&e))?,
            "--batch" => args.batch = value.parse::<usize>().map_err(|e| bad(&e))?.max(1),
            "--heartbeat-period" => args.heartbeat_period = value.parse().map_err(|e| bad(&e))?,
            _ => anyhow::bail!("unknown argument {flag}"),
        }
    }
    Ok(args)
}

/// Raises this process's open-file limit to its hard limit (children inherit
/// it): the broker holds one connection per manager, and each simulated
/// manager process holds several sockets per identity.
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct of this process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Peak resident memory of this process (the broker's), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Manager processes, killed if still running when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Children {
    /// The first child that exited, with its status.
    fn exited(&mut self) -> Option<String> {
        self.0.iter_mut().find_map(|c| match c.try_wait() {
            Ok(Some(status)) => Some(format!("manager process {} exited: {status}", c.id())),
            _ => None,
        })
    }

    /// Waits up to `grace` for every child to exit by itself.
    async fn wait_all(&mut self, grace: Duration) {
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if self
                .0
                .iter_mut()
                .all(|c| matches!(c.try_wait(), Ok(Some(_))))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    let args = parse_args()?;
    raise_nofile();
    let managers = args.processes * args.managers_per_process;
    let key_dir = std::env::temp_dir().join(format!("hpfaas-bench-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&key_dir)?;
    let curve = if args.encrypted {
        let file = CurveFile::generate()?;
        file.write(&key_dir.join("curve.json"))?;
        Some(file.server_keys()?)
    } else {
        None
    };
    // A saturated manager process may answer late; the benchmark is about
    // throughput, not about declaring managers lost.
    let mut broker = broker::start(BrokerConfig::loopback(
        Duration::from_secs_f64(args.heartbeat_period),
        Duration::from_secs(120),
        curve,
    ))?;
    eprintln!(
        "broker on {}; starting {} processes x {} managers x {} slots",
        broker.url, args.processes, args.managers_per_process, args.slots
    );

    let started = Instant::now();
    let mut children = Children(Vec::new());
    for p in 0..args.processes {
        let mut command = Command::new(&args.hpfaas);
        command
            .args(["manager", "--simulate", "--broker", &broker.url])
            .arg("--simulate-managers")
            .arg(args.managers_per_process.to_string())
            .arg("--workers")
            .arg(args.slots.to_string())
            .arg("--prefetch")
            .arg(args.prefetch.to_string())
            .arg("--block-id")
            .arg(format!("bench-{p}"))
            .arg("--register-timeout")
            .arg("300")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if args.encrypted {
            command.arg("--curve-file").arg(key_dir.join("curve.json"));
        }
        children.0.push(
            command
                .spawn()
                .with_context(|| format!("cannot run {}", args.hpfaas.display()))?,
        );
    }

    // Registration: the broker's periodic load report counts managers.
    let registered = loop {
        let event = tokio::time::timeout(Duration::from_secs(300), broker.events.recv())
            .await
            .context("managers did not register within 300 s")?
            .context("the broker stopped")?;
        if let BrokerEvent::Load(load) = event {
            if load.managers >= managers {
                break started.elapsed();
            }
        }
        if let Some(why) = children.exited() {
            anyhow::bail!(why);
        }
    };
    eprintln!("{managers} managers registered in {registered:.2?}");

    let function_id = Uuid::new_v4();
    let functions = vec![FunctionCode {
        function_id,
        code: pack(&["01\nno-op function"]),
    }];
    let payload = pack(&["11\n[]", "11\n{}"]);
    let commands = broker.commands.clone();
    let (total, batch) = (args.tasks, args.batch);
    // One random base and a counter: a getrandom call per task id would
    // load the broker's process with work that is the benchmark's own.
    let id_base = Uuid::new_v4().as_u64_pair().0;
    let run_start = Instant::now();
    // Batches as the agent forwards them from the service, from their own
    // task so results are counted while later batches are still going in.
    let submitter = tokio::spawn(async move {
        let mut sent = 0u64;
        let mut first = true;
        while sent < total {
            let n = (total - sent).min(batch as u64);
            let tasks = (0..n)
                .map(|i| TaskSpec {
                    task_id: Uuid::from_u64_pair(id_base, sent + i),
                    function_id,
                    payload: payload.clone(),
                    blob: None,
                    result_serializers: Vec::new(),
                    resource_spec: None,
                })
                .collect();
            let functions = if first { functions.clone() } else { Vec::new() };
            first = false;
            if commands
                .send(BrokerCommand::Submit { functions, tasks })
                .is_err()
            {
                break;
            }
            sent += n;
            tokio::task::yield_now().await;
        }
    });

    let (mut done, mut failed) = (0u64, 0u64);
    let mut last_report = Instant::now();
    while done < total {
        let event = tokio::time::timeout(Duration::from_secs(60), broker.events.recv())
            .await
            .with_context(|| format!("no progress for 60 s at {done} of {total} results"))?
            .context("the broker stopped")?;
        if let BrokerEvent::Results(results) = event {
            done += results.len() as u64;
            failed += results
                .iter()
                .filter(|r| !matches!(r.outcome, Outcome::Success { .. }))
                .count() as u64;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!("{done} of {total} results");
        }
    }
    let seconds = run_start.elapsed().as_secs_f64();
    let _ = submitter.await;
    let peak = peak_rss_mib();

    let _ = broker.commands.send(BrokerCommand::Shutdown);
    let _ = broker.task.await;
    children.wait_all(Duration::from_secs(10)).await;
    drop(children);
    let _ = std::fs::remove_dir_all(&key_dir);
    anyhow::ensure!(failed == 0, "{failed} of {total} tasks failed");

    println!(
        "{}",
        serde_json::json!({
            "managers": managers,
            "slots": u64::from(managers) * u64::from(args.slots),
            "tasks": total,
            "register_s": registered.as_secs_f64(),
            "seconds": seconds,
            "tasks_per_s": total as f64 / seconds,
            "broker_peak_rss_mib": peak,
        })
    );
    Ok(())
}

/// Logs to stderr (RUST_LOG, default `warn`), never to stdout.
fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
