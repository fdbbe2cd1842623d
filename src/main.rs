//! `hpfaas`: the one binary. Each subcommand is a thin wrapper over a crate:
//! `service` and `token` over `hpfaas-registry`, `endpoint` and `manager`
//! over `hpfaas-executor`, and `up` runs both in one process;
//! `completions` and `man` render the clap definitions below themselves.

mod audit_flags;
mod cache_flags;
mod check;
mod choices;
mod completions;
mod configure;
mod connection_limits;
mod dashboard;
mod endpoint_logs;
mod endpoint_status;
mod global;
mod man;
mod output;
mod service_access;
mod task_cli;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use hpfaas_executor::config::container::{Container, ContainerType};
use hpfaas_executor::config::cpu_affinity::CpuAffinity;
use hpfaas_executor::config::mpi_launcher::MpiLauncher;
use hpfaas_executor::config::DEFAULT_SHELL_OUTPUT_LIMIT;
use hpfaas_executor::{lifecycle, manager};
use output::Format;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// High-performance function-as-a-service for HPC.
#[derive(Parser)]
#[command(name = "hpfaas", version, about, after_help = ENVIRONMENT)]
struct Cli {
    #[command(flatten)]
    global: global::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// The environment variables, in `hpfaas --help` and the man page.
const ENVIRONMENT: &str = "\
Environment:
  HPFAAS_HOME    state directory (--home), default ~/.hpfaas
  HPFAAS_OUTPUT  text or json (--output)
  HPFAAS_URL     service URL for `endpoint start` (--service-url) and `task`
  HPFAAS_TOKEN   owner token for an endpoint's first registration, and for `task`
  RUST_LOG       log filter, e.g. debug; overrides -v and -q";

#[derive(Subcommand)]
enum Command {
    /// Run the service and one local endpoint in this process (writes $HPFAAS_HOME/up.json).
    Up(up::UpArgs),
    /// Print a one-time login link to the service's web dashboard.
    Dashboard(dashboard::DashboardArgs),
    /// Run the service (REST, result streams, endpoint connections).
    Service {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8740")]
        listen: SocketAddr,
        /// Where the SQLite database lives (default: $HPFAAS_HOME/service).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Largest request body accepted, in bytes.
        #[arg(long, default_value_t = 10 << 20)]
        max_request_bytes: usize,
        /// Most tasks accepted in one submit.
        #[arg(long, default_value_t = 100_000)]
        max_tasks_per_submit: usize,
        /// Largest result stored, in bytes; a larger one fails its task (ResultTooLarge).
        #[arg(long, default_value_t = 10 << 20)]
        max_result_bytes: usize,
        /// Most tasks not yet final one user may have; a submit past it gets 429.
        #[arg(long, default_value_t = hpfaas_registry::db::usage::Quota::DEFAULT_MAX_QUEUED_TASKS)]
        max_queued_tasks_per_user: u64,
        /// Most bytes of arguments and results kept for one user; a submit past it gets 507.
        #[arg(long, default_value_t = hpfaas_registry::db::usage::Quota::DEFAULT_MAX_STORED_BYTES)]
        max_stored_bytes_per_user: u64,
        /// Purge results nobody fetched after this long (e.g. 90s, 12h, 7d).
        #[arg(long, default_value = "7d", value_parser = hpfaas_registry::parse_duration)]
        result_ttl: Duration,
        /// Delete finished tasks and idempotency keys older than this (e.g. 30d).
        #[arg(long, default_value = "30d", value_parser = hpfaas_registry::parse_duration)]
        retention: Duration,
        /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve Prometheus /metrics on this address (plain HTTP, no token: bind it where only
        /// the monitoring system reaches); no metrics without it.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// A scrape of --metrics-listen must carry the token in this file as a bearer token
        /// (Prometheus: authorization.credentials_file).
        #[arg(long, requires = "metrics_listen")]
        metrics_token_file: Option<PathBuf>,
        #[command(flatten)]
        limits: connection_limits::ConnectionLimits,
        #[command(flatten)]
        audit: audit_flags::AuditFlags,
        #[command(flatten)]
        cache: cache_flags::CacheFlags,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Configure, start and stop endpoints.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// List, inspect, cancel and wait for your tasks on the service (HPFAAS_URL/HPFAAS_TOKEN, else up.json).
    Task {
        #[command(subcommand)]
        command: task_cli::TaskCommand,
    },
    /// Internal: what a block runs on each node.
    Manager(Box<ManagerArgs>),
    /// Print a shell completion script (install: see README).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: completions::Shell,
    },
    /// Write a man page per command and subcommand into DIR.
    Man {
        /// Directory for the pages, e.g. ~/.local/share/man/man1.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a user (if new) and print a new API token for it.
    Create {
        /// User name.
        #[arg(long)]
        user: String,
        /// The service's data directory (default: $HPFAAS_HOME/service).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List a user's tokens (ids and first characters, never the token).
    List {
        /// User name.
        #[arg(long)]
        user: String,
        /// The service's data directory (default: $HPFAAS_HOME/service).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Same as --output json (kept for scripts written before it).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Revoke a token at once, even while the service runs.
    Revoke {
        /// The token, or at least 6 leading characters of its id or of the token.
        token_or_prefix: String,
        /// The service's data directory (default: $HPFAAS_HOME/service).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Write $HPFAAS_HOME/endpoints/NAME/config.toml: every key of a
    /// provider commented (--provider), a site's (--site), or yours (--from).
    Configure(configure::ConfigureArgs),
    /// Start the endpoint's agent (a daemon unless --foreground).
    Start {
        /// Endpoint name.
        #[arg(add = completions::endpoint_names())]
        name: String,
        /// Stay in the foreground and log to stderr.
        #[arg(long)]
        foreground: bool,
        /// Internal (what a daemon runs): log to the endpoint's endpoint.log,
        /// rotated as its [logs] section says.
        #[arg(long, hide = true, requires = "foreground")]
        rotate_log: bool,
        #[command(flatten)]
        service: service_access::ServiceAccess,
    },
    /// Stop the endpoint's agent and every block it started.
    Stop {
        /// Endpoint name.
        #[arg(add = completions::endpoint_names())]
        name: String,
    },
    /// Restart the agent; running blocks are re-adopted, not cancelled.
    Restart {
        /// Endpoint name.
        #[arg(add = completions::endpoint_names())]
        name: String,
        #[command(flatten)]
        service: service_access::ServiceAccess,
    },
    /// List configured endpoints.
    List {
        /// Same as --output json (kept for scripts written before it).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Check everything `start` needs without starting: the configuration,
    /// the service and credential, the batch system; print the job script.
    /// Exit status 0 only when `start` would work.
    Check {
        /// Endpoint name.
        #[arg(add = completions::endpoint_names())]
        name: String,
        #[command(flatten)]
        service: service_access::ServiceAccess,
    },
    /// Print the job script the endpoint submits for a block.
    JobScript {
        /// Endpoint name.
        #[arg(add = completions::endpoint_names())]
        name: String,
    },
    /// Show one endpoint, locally and as the service sees it: its agent,
    /// blocks and recent events.
    Status(endpoint_status::StatusArgs),
    /// Print the agent's endpoint.log, or a block's output.
    Logs(endpoint_logs::LogsArgs),
}

#[derive(clap::Args)]
struct ManagerArgs {
    /// Broker address, e.g. tcp://10.0.0.1:55001.
    #[arg(
        long,
        required_unless_present = "endpoint",
        conflicts_with = "endpoint"
    )]
    broker: Option<String>,
    /// Join this endpoint (from a job script of your own): the broker address
    /// is read from $HPFAAS_HOME/endpoints/NAME on the shared file system.
    #[arg(long, value_name = "NAME", add = completions::endpoint_names())]
    endpoint: Option<String>,
    /// Block this manager belongs to (default: job-<batch job id>).
    #[arg(long)]
    block_id: Option<String>,
    /// The block's walltime in seconds, counted from now.
    #[arg(long)]
    walltime: Option<f64>,
    /// Batch-system job id of the block.
    #[arg(long)]
    job_id: Option<String>,
    /// Worker slots (default: cores available).
    #[arg(long)]
    workers: Option<u32>,
    /// Tasks held beyond free workers.
    #[arg(long, default_value_t = 8)]
    prefetch: u32,
    /// Interpreter for Python workers.
    #[arg(long, default_value = "python3")]
    worker_python: String,
    /// Seconds to wait for the broker to accept the registration.
    #[arg(long, default_value_t = 30.0)]
    register_timeout: f64,
    /// How workers are pinned: a mode below, or list:CPUS:CPUS... (the
    /// CPUs of each worker in turn, e.g. list:0-3,8-11:4-7,12-15).
    #[arg(long, default_value = "none", value_parser = choices::cpu_affinity())]
    cpu_affinity: CpuAffinity,
    /// Accelerator ids, one per worker (comma-separated); caps the worker count.
    #[arg(long, value_delimiter = ',')]
    accelerators: Vec<String>,
    /// How MPI tasks led by this manager are launched.
    #[arg(long, default_value = "mpiexec", value_parser = choices::mpi_launcher())]
    mpi_launcher: MpiLauncher,
    /// Extra MPI launcher arguments (give as --launcher-options=--flag).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    launcher_options: String,
    /// Run each task in its own directory, DIR/<task_id>/ (engine.run_in_sandbox).
    #[arg(long)]
    sandbox_dir: Option<PathBuf>,
    /// Private directory (made 0700; refused if another user owns or may
    /// write it) for the worker runtime and MPI hostfiles. Default: the
    /// endpoint's `runtime/` with --endpoint, else $XDG_RUNTIME_DIR/hpfaas,
    /// else $HPFAAS_HOME/runtime; never the shared temp directory.
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// Bytes of a shell task's stdout (and stderr) kept, head and tail
    /// (engine.shell_output_limit); the rest is counted as dropped.
    #[arg(long, default_value_t = DEFAULT_SHELL_OUTPUT_LIMIT)]
    shell_output_limit: usize,
    /// Container runtime the workers and shell tasks run in (engine.container_type).
    #[arg(long, value_name = "RUNTIME", value_parser = choices::container_type())]
    container_type: Option<ContainerType>,
    /// Image, archive, directory or .sif to run them in (engine.container_uri).
    #[arg(long, value_name = "URI", requires = "container_type")]
    container_uri: Option<String>,
    /// The runtime's own options (engine.container_cmd_options; give as
    /// --container-cmd-options=--flag).
    #[arg(
        long,
        default_value = "",
        allow_hyphen_values = true,
        requires = "container_type"
    )]
    container_cmd_options: String,
    /// Bytes of a Python task's stdout (and stderr) returned with its
    /// result, head and tail (engine.python_output_limit); 0: none.
    #[arg(long, default_value_t = hpfaas_executor::config::DEFAULT_PYTHON_OUTPUT_LIMIT)]
    python_output_limit: usize,
    /// CURVE key file (mode 0600) with this manager's keypair, and the
    /// broker's public key unless --server-key gives it; with --endpoint the
    /// endpoint directory's curve.json is used. Secret keys never go in argv.
    #[arg(long)]
    curve_file: Option<PathBuf>,
    /// The broker's CURVE public key (Z85), overriding the key file's.
    #[arg(long)]
    server_key: Option<String>,
    /// Benchmarking: complete each task at once with a successful None
    /// result instead of running it (no Python, no processes), speaking the
    /// real protocol to the broker.
    #[arg(long)]
    simulate: bool,
    /// With --simulate: manager identities this process runs, each with
    /// its own connection, registration and --workers slots.
    #[arg(long, default_value_t = 1, requires = "simulate")]
    simulate_managers: u32,
}

fn main() {
    completions::answer_if_asked(Cli::command);
    let cli = Cli::parse();
    cli.global.apply(|| daemon_log(&cli));
    if let Err(e) = run(cli) {
        eprintln!("hpfaas: error: {e:#}");
        std::process::exit(1);
    }
}

/// A daemon agent's rotating `endpoint.log`, if this is one. When it cannot
/// be opened, stderr (the same file, by the daemon's redirect) is used.
fn daemon_log(cli: &Cli) -> Option<hpfaas_executor::log_rotation::LogWriter> {
    let Command::Endpoint {
        command:
            EndpointCommand::Start {
                name,
                rotate_log: true,
                ..
            },
    } = &cli.command
    else {
        return None;
    };
    lifecycle::daemon_log(name)
        .inspect_err(|e| eprintln!("hpfaas: endpoint.log will not rotate: {e:#}"))
        .ok()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A runtime on the calling thread, for the manager, the endpoint agent and
/// `hpfaas up`. Their work per task is small (a frame in, a frame out, a
/// pipe or a socket between), and on a multi-threaded runtime much of their
/// time went to waking and parking worker threads: the manager's CPU per
/// task halved on one thread. Blocking work already has threads of its own
/// (the database writer and syncer, ZeroMQ bridges, `spawn_blocking` reads).
/// The standalone service keeps a multi-threaded runtime for many clients.
fn single_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The service's data directory: the one given, else `$HPFAAS_HOME/service`,
/// which is made private with the home above it (the registry makes a
/// directory it creates 0700; the home may predate it).
fn service_dir(data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = data_dir {
        return Ok(dir);
    }
    let home = lifecycle::hpfaas_home();
    let dir = home.join("service");
    hpfaas_executor::private::dirs(&home, &dir)?;
    Ok(dir)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.global.output;
    match cli.command {
        Command::Up(args) => single_thread_runtime()?.block_on(up::run(args, format)),
        Command::Dashboard(args) => dashboard::run(args, format),
        Command::Service {
            listen,
            data_dir,
            max_request_bytes,
            max_tasks_per_submit,
            max_result_bytes,
            max_queued_tasks_per_user,
            max_stored_bytes_per_user,
            result_ttl,
            retention,
            tls_cert,
            tls_key,
            metrics_listen,
            metrics_token_file,
            limits,
            audit,
            cache,
        } => {
            let mut config = hpfaas_registry::ServiceConfig::new(listen, service_dir(data_dir)?);
            limits.apply(&mut config);
            audit.apply(&mut config);
            cache.apply(&mut config);
            config.max_request_bytes = max_request_bytes;
            config.max_tasks_per_submit = max_tasks_per_submit;
            config.max_result_bytes = max_result_bytes;
            config.quota = hpfaas_registry::db::usage::Quota {
                max_queued_tasks: max_queued_tasks_per_user,
                max_stored_bytes: max_stored_bytes_per_user,
            };
            config.result_ttl = result_ttl;
            config.retention = retention;
            config.metrics_listen = metrics_listen;
            config.metrics_token_hash = metrics_token_file
                .as_deref()
                .map(hpfaas_registry::metrics::token_hash_from_file)
                .transpose()?;
            config.tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| hpfaas_registry::TlsFiles { cert, key });
            runtime()?.block_on(async {
                let service = hpfaas_registry::Service::bind(config).await?;
                eprintln!("hpfaas service listening on {}", service.url());
                if let Some(metrics) = service.metrics_url() {
                    eprintln!("hpfaas metrics on {metrics}");
                }
                service.run(shutdown_signal()).await
            })
        }
        Command::Token { command } => token(command, format),
        Command::Endpoint { command } => endpoint(command, format),
        Command::Task { command } => task_cli::run(command, format),
        Command::Completions { shell } => {
            completions::write_script(shell, &mut std::io::stdout().lock())
        }
        Command::Man { dir } => {
            let pages = man::write_pages(Cli::command(), &dir)?;
            match format {
                Format::Json => output::print_json(&serde_json::json!({ "pages": pages })),
                Format::Text => output::line(&format!(
                    "wrote {} man pages into {}",
                    pages.len(),
                    dir.display()
                )),
            }
        }
        Command::Manager(args) => {
            // MPI first, on the main thread, before any runtime thread exists;
            // then every thread and worker inherits this rank's share of the node.
            let membership = manager::block::Membership::join()?;
            let cores = membership.pin_to_share()?;
            tracing::info!(
                "manager rank {} of {} ({} of {} on this node), cores {:?}",
                membership.rank,
                membership.size,
                membership.local_rank,
                membership.local_size,
                cores
            );
            let rank = membership.rank;
            let endpoint_dir = args
                .endpoint
                .as_deref()
                .map(lifecycle::endpoint_dir)
                .transpose()?;
            let curve = hpfaas_executor::broker::curve::for_manager(
                args.curve_file.as_deref(),
                args.server_key.as_deref(),
                endpoint_dir.as_deref(),
            )?;
            let simulate = args.simulate.then_some(args.simulate_managers);
            let config = manager::ManagerConfig {
                rank,
                broker_url: match (args.broker, &args.endpoint) {
                    (Some(url), _) => url,
                    (None, Some(name)) => {
                        let dir = lifecycle::endpoint_dir(name)?;
                        lifecycle::broker_url(&dir)?.with_context(|| {
                            format!(
                                "endpoint {name} has no broker address in {}; is it started?",
                                dir.display()
                            )
                        })?
                    }
                    (None, None) => anyhow::bail!("give --broker URL or --endpoint NAME"),
                },
                block_id: args
                    .block_id
                    .unwrap_or_else(|| match manager::job_id_from_env() {
                        Some(job) => format!("job-{job}"),
                        None => format!("manual-{}", std::process::id()),
                    }),
                walltime: args
                    .walltime
                    .filter(|w| *w > 0.0)
                    .map(Duration::from_secs_f64),
                job_id: args.job_id,
                workers: args.workers,
                prefetch: args.prefetch,
                worker_python: args.worker_python,
                register_timeout: Duration::from_secs_f64(args.register_timeout.max(0.1)),
                cpu_affinity: args.cpu_affinity,
                accelerators: args.accelerators,
                mpi_launcher: args.mpi_launcher,
                launcher_options: args.launcher_options,
                sandbox_dir: args.sandbox_dir,
                curve,
                shell_output_limit: args.shell_output_limit,
                container: Container::from_keys(
                    args.container_type,
                    args.container_uri.as_deref(),
                    &args.container_cmd_options,
                )
                .map_err(anyhow::Error::msg)?,
                python_output_limit: args.python_output_limit,
                runtime_base: match (args.runtime_dir, &endpoint_dir) {
                    (Some(dir), _) => dir,
                    (None, Some(dir)) => dir.join("runtime"),
                    (None, None) => manager::runtime::default_base(&lifecycle::hpfaas_home()),
                },
            };
            let result = single_thread_runtime()?.block_on(async move {
                match simulate {
                    Some(managers) => manager::simulate::run(config, managers).await,
                    None => manager::run(config).await,
                }
            });
            // MPI finalises here, after the runtime and its threads are gone.
            drop(membership);
            result
        }
    }
}

fn endpoint(command: EndpointCommand, format: Format) -> anyhow::Result<()> {
    match command {
        EndpointCommand::Configure(args) => configure::run(args, format)?,
        EndpointCommand::Start {
            name,
            foreground: true,
            service,
            ..
        } => {
            service.apply()?;
            let spec = lifecycle::agent_spec(&name)?;
            if let Some(s) = lifecycle::running(&spec.dir) {
                if s.pid != std::process::id() {
                    anyhow::bail!("endpoint {name} is already running (pid {})", s.pid);
                }
            }
            let dir = spec.dir.clone();
            let result = single_thread_runtime()?
                .block_on(hpfaas_executor::agent::run(spec, agent_shutdown()));
            hpfaas_executor::agent::state_file::AgentState::remove(&dir);
            result?;
        }
        EndpointCommand::Start {
            name,
            foreground: false,
            service,
            ..
        } => {
            service.apply()?;
            let message = lifecycle::start_daemon(&name)?;
            started(&name, &message, format)?;
        }
        EndpointCommand::Stop { name } => {
            let message = lifecycle::stop(&name, false)?;
            match format {
                Format::Text => output::line(&message)?,
                Format::Json => {
                    output::print_json(&serde_json::json!({"name": name, "state": "stopped"}))?
                }
            }
        }
        EndpointCommand::Check { name, service } => {
            service.apply()?;
            check::run(&name, format)?;
        }
        EndpointCommand::JobScript { name } => {
            let script = lifecycle::job_script(&name)?;
            match format {
                Format::Text => output::raw(&script)?,
                Format::Json => {
                    output::print_json(&serde_json::json!({"name": name, "job_script": script}))?
                }
            }
        }
        EndpointCommand::Restart { name, service } => {
            service.apply()?;
            // What the next agent needs is checked before this one stops:
            // a configuration it cannot start from must not leave the
            // endpoint down with its blocks unwatched.
            lifecycle::agent_spec(&name)?;
            let stopped = match lifecycle::stop(&name, true) {
                Ok(msg) => Some(msg),
                Err(e) if e.to_string().contains("is not running") => None,
                Err(e) => return Err(e),
            };
            if let (Some(msg), Format::Text) = (stopped, format) {
                output::line(&msg)?;
            }
            let message = lifecycle::start_daemon(&name)?;
            started(&name, &message, format)?;
        }
        EndpointCommand::List { json } => {
            let rows = lifecycle::list()?;
            if json || format == Format::Json {
                output::print_json(&serde_json::to_value(&rows)?)?;
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.name.clone(),
                            r.endpoint_id.clone().unwrap_or_else(|| "-".into()),
                            r.state.clone(),
                            r.active_blocks.to_string(),
                        ]
                    })
                    .collect();
                output::print_table(&["NAME", "ENDPOINT ID", "STATE", "BLOCKS"], &table)?;
            }
        }
        EndpointCommand::Status(args) => endpoint_status::run(&args, format)?,
        EndpointCommand::Logs(args) => endpoint_logs::run(&args, format)?,
    }
    Ok(())
}

/// What `endpoint start|restart` print once the agent runs: the sentence,
/// or with `--output json` the endpoint id alone (`null` while the agent has
/// never registered, e.g. when the service is not reachable yet).
fn started(name: &str, message: &str, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Text => output::line(message),
        Format::Json => {
            let endpoint_id = lifecycle::describe(name)?.endpoint_id;
            if endpoint_id.is_none() {
                eprintln!("hpfaas: {message}");
            }
            output::print_json(&serde_json::json!({ "endpoint_id": endpoint_id }))
        }
    }
}

/// A token as `token list|revoke --output json` print it.
fn token_json(t: &hpfaas_registry::TokenInfo) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "prefix": t.prefix, "user": t.user,
        "endpoint_id": t.endpoint, "created": t.created, "revoked": t.revoked,
    })
}

/// `hpfaas token create|list|revoke`.
fn token(command: TokenCommand, format: Format) -> anyhow::Result<()> {
    use hpfaas_registry::admin::token_kind;
    use hpfaas_registry::time::rfc3339;
    match command {
        TokenCommand::Create { user, data_dir } => {
            let token = hpfaas_registry::create_token(&service_dir(data_dir)?, &user)?;
            match format {
                Format::Text => output::line(&token)?,
                Format::Json => {
                    output::print_json(&serde_json::json!({"user": user, "token": token}))?
                }
            }
        }
        TokenCommand::List {
            user,
            data_dir,
            json,
        } => {
            let tokens = hpfaas_registry::list_tokens(&service_dir(data_dir)?, &user)?;
            if json || format == Format::Json {
                let rows: Vec<serde_json::Value> = tokens.iter().map(token_json).collect();
                output::print_json(&serde_json::Value::Array(rows))?;
            } else {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.prefix.as_ref().map_or("-".into(), |p| format!("{p}...")),
                            token_kind(t.endpoint),
                            rfc3339(t.created),
                            t.revoked.map_or("-".into(), rfc3339),
                        ]
                    })
                    .collect();
                output::print_table(&["ID", "STARTS WITH", "KIND", "CREATED", "REVOKED"], &rows)?;
            }
        }
        TokenCommand::Revoke {
            token_or_prefix,
            data_dir,
        } => {
            let t = hpfaas_registry::revoke_token(&service_dir(data_dir)?, &token_or_prefix)?;
            match format {
                Format::Text => output::line(&format!(
                    "revoked token {} of user {} ({})",
                    t.id,
                    t.user,
                    token_kind(t.endpoint)
                ))?,
                Format::Json => output::print_json(&token_json(&t))?,
            }
        }
    }
    Ok(())
}

/// How a foreground agent is asked to stop: SIGINT/SIGTERM stop everything,
/// SIGUSR1 (sent by `endpoint restart`) leaves the blocks for the next agent.
async fn agent_shutdown() -> hpfaas_executor::agent::Shutdown {
    use hpfaas_executor::agent::Shutdown;
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        shutdown_signal().await;
        return Shutdown::Stop;
    };
    tokio::select! {
        _ = shutdown_signal() => Shutdown::Stop,
        _ = usr1.recv() => Shutdown::KeepBlocks,
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager_args(extra: &[&str]) -> Result<ManagerArgs, clap::Error> {
        let argv = ["hpfaas", "manager", "--broker", "tcp://127.0.0.1:9"];
        match Cli::try_parse_from(argv.iter().chain(extra))?.command {
            Command::Manager(args) => Ok(*args),
            _ => unreachable!("parsed as the manager subcommand"),
        }
    }

    /// The manager reads the values the agent writes with the parsers the
    /// configuration file is read with.
    #[test]
    fn manager_options_use_the_config_parsers() {
        let args = manager_args(&[]).unwrap();
        assert_eq!(args.cpu_affinity, CpuAffinity::None);
        assert_eq!(args.mpi_launcher, MpiLauncher::OpenMpi);
        assert_eq!(args.shell_output_limit, DEFAULT_SHELL_OUTPUT_LIMIT);
        let list: CpuAffinity = "list:0-3:8".parse().unwrap();
        let written = list.to_string();
        let args = manager_args(&[
            "--cpu-affinity",
            &written,
            "--mpi-launcher",
            &MpiLauncher::Mpich.to_string(),
        ])
        .unwrap();
        assert_eq!(args.cpu_affinity, list);
        assert_eq!(args.mpi_launcher, MpiLauncher::Mpich);
        let err = manager_args(&["--cpu-affinity", "compact"])
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("engine.cpu_affinity = \"compact\" is not a mode"),
            "{err}"
        );
        let err = manager_args(&["--mpi-launcher", "aprun"])
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("engine.mpi_launcher = \"aprun\" is unknown"),
            "{err}"
        );
    }
}
