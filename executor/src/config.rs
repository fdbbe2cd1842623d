//! The endpoint configuration file (`$HPFAAS_HOME/endpoints/NAME/config.toml`).
//!
//! Section and key names follow Globus Compute and Parsl. Every key is listed
//! in `docs/configuration.md`; an unknown or mistyped key is an error naming
//! the key and its line, never silently ignored.
//!
//! Values with a grammar (`cpu_affinity`, `mpi_launcher`, `port_range`, and
//! the scheduler adapters' `provider.type`) are parsed while the file is
//! read, into the types the agent and the managers use; a bad one is refused
//! with its line. The engine's live in the submodules here, which import
//! nothing of the agent or the manager: the managers read the same values
//! back from their command line with the same parsers. A value refused by the
//! checks after parsing gets its line from [`locate`]. Whether this machine
//! can host local blocks as configured is not a property of the file:
//! `lifecycle::load_config` checks it.

pub mod container;
pub mod cpu_affinity;
pub mod locate;
pub mod mpi_launcher;
pub mod port_range;
pub mod sites;
pub mod template;

use std::path::{Path, PathBuf};

use hpfaas_scheduler_adapters::{ProviderConfig, ProviderKind};
use serde::Deserialize;
use uuid::Uuid;

use container::{Container, ContainerType};
use cpu_affinity::{CpuAffinity, WorkerRequest};
use mpi_launcher::MpiLauncher;
use port_range::PortRange;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `[endpoint]`: identity and how to reach the service.
    #[serde(default)]
    pub endpoint: EndpointSection,
    /// `[engine]`: the broker, managers and workers.
    #[serde(default)]
    pub engine: EngineSection,
    /// `[provider]`: where blocks run (owned by the scheduler adapters).
    #[serde(default)]
    pub provider: ProviderConfig,
    /// `[logs]`: how much of `endpoint.log` and of the blocks' files is kept.
    #[serde(default)]
    pub logs: LogsSection,
    /// `[metrics]`: the agent's own Prometheus exposition.
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Serve `GET /metrics` (Prometheus text, plain HTTP) on this address;
    /// unset: no metrics served by the agent.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// A file whose first line is the bearer token a scrape must carry;
    /// unset: scrapes need none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `[logs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    /// `endpoint.log` is rotated before a record would take it past this
    /// many bytes.
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`endpoint.log.1` newest ... `endpoint.log.N`).
    #[serde(default = "default_log_keep")]
    pub keep: u32,
    /// Also rotate at the first record of each new day (UTC).
    #[serde(default)]
    pub daily: bool,
    /// Finished blocks whose job scripts and logs stay in `blocks/`; older
    /// ones are removed, a live block's never.
    #[serde(default = "default_keep_blocks")]
    pub keep_blocks: usize,
}

impl Default for LogsSection {
    fn default() -> Self {
        LogsSection {
            max_bytes: default_log_max_bytes(),
            keep: default_log_keep(),
            daily: false,
            keep_blocks: default_keep_blocks(),
        }
    }
}

/// Default of `logs.max_bytes`: 10 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
/// The most rotated files `logs.keep` may ask for.
pub const MAX_LOG_KEEP: u32 = 1000;

fn default_log_max_bytes() -> u64 {
    DEFAULT_LOG_MAX_BYTES
}

fn default_log_keep() -> u32 {
    5
}

fn default_keep_blocks() -> usize {
    20
}

/// `[endpoint]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// Base URL of the service; falls back to `HPFAAS_URL`.
    pub service_url: Option<String>,
    /// File holding the owner's token, used only at first registration.
    pub token_file: Option<PathBuf>,
    /// Functions this endpoint will run; empty means all of the owner's.
    #[serde(default)]
    pub allowed_functions: Vec<Uuid>,
    /// Accept only JSON (`11\n`) arguments and return results as JSON, so
    /// nothing from a submitter is ever unpickled here.
    #[serde(default)]
    pub json_only: bool,
    /// Name shown in listings; defaults to the endpoint's directory name.
    pub display_name: Option<String>,
    /// PEM CA to trust (besides the system roots) for an `https://` service;
    /// falls back to `HPFAAS_CA_FILE`.
    pub ca_file: Option<PathBuf>,
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Warm workers per manager; defaults to the cores of the node.
    pub max_workers_per_node: Option<u32>,
    /// How workers are pinned: `none`, `block`, `block-reverse`,
    /// `alternating` or `list:...` (Parsl's modes).
    #[serde(default)]
    pub cpu_affinity: CpuAffinity,
    /// Accelerator ids, one per worker (an int N in the file means `0..N`).
    #[serde(default, deserialize_with = "accelerators")]
    pub available_accelerators: Vec<String>,
    /// Re-runs of a task after `ManagerLost` or `WorkerLost`.
    #[serde(default)]
    pub max_retries_on_system_failure: u32,
    /// Interpreter for Python workers.
    #[serde(default = "default_worker_python")]
    pub worker_python: String,
    /// Tasks a manager holds beyond its free workers.
    #[serde(default = "default_prefetch")]
    pub prefetch_capacity: u32,
    /// Seconds between heartbeats (broker ↔ managers, agent → service).
    #[serde(default = "default_heartbeat_period")]
    pub heartbeat_period: f64,
    /// Seconds of silence after which a manager is declared lost.
    #[serde(default = "default_heartbeat_threshold")]
    pub heartbeat_threshold: f64,
    /// IP or interface name the broker listens on for managers; default:
    /// loopback for the local provider, else the first non-loopback
    /// interface. `"unix"` (local provider only): a Unix socket in the
    /// endpoint's private directory, which only its owner can open, so the
    /// link needs no CurveZMQ ([`EngineSection::curve`]).
    pub address: Option<String>,
    /// Port range `"a-b"` for the broker; any free port when absent.
    pub port_range: Option<PortRange>,
    /// How MPI tasks are launched: `mpiexec` (OpenMPI), `mpiexec-mpich`, `srun`.
    #[serde(default)]
    pub mpi_launcher: MpiLauncher,
    /// Extra arguments for the MPI launcher, before each task's own.
    #[serde(default)]
    pub launcher_options: String,
    /// Run each task in its own working directory,
    /// `<manager's directory>/tasks/<task_id>/` (Globus Compute's name).
    #[serde(default)]
    pub run_in_sandbox: bool,
    /// Bytes of a shell or MPI task's stdout (and of its stderr) a manager
    /// keeps, half from the start and half from the end; the rest is counted.
    #[serde(default = "default_shell_output_limit")]
    pub shell_output_limit: usize,
    /// CurveZMQ on the broker↔manager link (keys in the endpoint directory);
    /// `false` only for debugging: tasks then cross the network in clear.
    #[serde(default = "default_encrypted")]
    pub encrypted: bool,
    /// Allows `encrypted = false` on a TCP address. Without CurveZMQ any
    /// process that reaches the broker's port (any local user, on
    /// loopback too) can register as a manager and receive tasks.
    #[serde(default)]
    pub allow_unencrypted_tcp: bool,
    /// The container runtime workers and shell tasks run in; none: on the
    /// node itself.
    pub container_type: Option<ContainerType>,
    /// What they run in: an image, an image archive, a directory, a `.sif`.
    pub container_uri: Option<String>,
    /// The runtime's own options, split at white space.
    #[serde(default)]
    pub container_cmd_options: String,
}

/// `engine.address` for a broker on a Unix socket ([`EngineSection::address`]).
pub const UNIX_ADDRESS: &str = "unix";

impl EngineSection {
    /// The broker listens on a Unix socket in the endpoint directory.
    pub fn unix_socket(&self) -> bool {
        self.address.as_deref() == Some(UNIX_ADDRESS)
    }

    /// The broker link uses CurveZMQ: `encrypted`, over TCP (a Unix socket
    /// in a directory only the owner can open is private already).
    pub fn curve(&self) -> bool {
        self.encrypted && !self.unix_socket()
    }

    /// The container of the three `container_*` keys, checked together.
    pub fn container(&self) -> Result<Option<Container>, String> {
        Container::from_keys(
            self.container_type,
            self.container_uri.as_deref(),
            &self.container_cmd_options,
        )
    }

    /// What every manager is asked for: pinning, worker count, accelerators.
    pub fn worker_request(&self) -> Result<WorkerRequest, String> {
        WorkerRequest::new(
            self.cpu_affinity.clone(),
            self.max_workers_per_node,
            self.available_accelerators.clone(),
        )
    }

    /// Refuses a broker on TCP without CurveZMQ unless explicitly allowed
    /// ([`EngineSection::allow_unencrypted_tcp`]). Checked where the agent
    /// starts, after `hpfaas up` may have chosen a Unix socket.
    pub fn check_link(&self) -> Result<(), String> {
        if self.encrypted || self.unix_socket() || self.allow_unencrypted_tcp {
            return Ok(());
        }
        Err(format!(
            "engine.encrypted = false on a TCP broker (engine.address = {}) lets anyone who can \
             reach its port, any local user included, register as a manager and receive tasks \
             and results: keep encrypted = true, use address = \"{UNIX_ADDRESS}\" with the \
             local provider, or set engine.allow_unencrypted_tcp = true to accept that",
            self.address
                .as_deref()
                .map_or("the default".to_string(), |a| format!("{a:?}"))
        ))
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            max_workers_per_node: None,
            cpu_affinity: CpuAffinity::default(),
            available_accelerators: Vec::new(),
            max_retries_on_system_failure: 0,
            worker_python: default_worker_python(),
            prefetch_capacity: default_prefetch(),
            heartbeat_period: default_heartbeat_period(),
            heartbeat_threshold: default_heartbeat_threshold(),
            address: None,
            port_range: None,
            mpi_launcher: MpiLauncher::default(),
            launcher_options: String::new(),
            run_in_sandbox: false,
            shell_output_limit: default_shell_output_limit(),
            encrypted: true,
            allow_unencrypted_tcp: false,
            container_type: None,
            container_uri: None,
            container_cmd_options: String::new(),
        }
    }
}

/// Default of `engine.shell_output_limit`: 512 KiB of head and of tail.
pub const DEFAULT_SHELL_OUTPUT_LIMIT: usize = 1 << 20;

fn default_shell_output_limit() -> usize {
    DEFAULT_SHELL_OUTPUT_LIMIT
}

fn default_encrypted() -> bool {
    true
}

/// `available_accelerators`: a list of ids (strings or integers), or a
/// count N meaning `["0", ..., "N-1"]`, as in Globus Compute.
fn accelerators<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u32),
    }
    struct Accelerators;
    impl<'de> serde::de::Visitor<'de> for Accelerators {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of accelerator ids or a count")
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            let n = u32::try_from(n).map_err(|_| E::custom("a count cannot be negative"))?;
            Ok((0..n).map(|i| i.to_string()).collect())
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            self.visit_i64(i64::try_from(n).map_err(|_| E::custom("too many accelerators"))?)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut ids = Vec::new();
            while let Some(id) = seq.next_element::<Id>()? {
                ids.push(match id {
                    Id::Text(s) => s,
                    Id::Number(n) => n.to_string(),
                });
            }
            Ok(ids)
        }
    }
    d.deserialize_any(Accelerators)
}

fn default_worker_python() -> String {
    "python3".into()
}
fn default_prefetch() -> u32 {
    8
}
fn default_heartbeat_period() -> f64 {
    2.0
}
fn default_heartbeat_threshold() -> f64 {
    10.0
}

/// A configuration file that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong (the TOML parser's message names the key and line).
    pub message: String,
}

impl EndpointConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|message| ConfigError {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: EndpointConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config
            .validate()
            .map_err(|message| locate::at_line(text, &message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let e = &self.engine;
        if e.max_workers_per_node == Some(0) {
            return Err("engine.max_workers_per_node must be at least 1".into());
        }
        // Bounded, so both are valid `Duration`s (`from_secs_f64` panics
        // beyond `u64` seconds).
        let max = hpfaas_scheduler_adapters::config::MAX_SECONDS;
        if !(e.heartbeat_period > 0.0 && e.heartbeat_period <= max) {
            return Err(format!(
                "engine.heartbeat_period must be a positive number of seconds up to {max}"
            ));
        }
        if !(e.heartbeat_threshold > e.heartbeat_period && e.heartbeat_threshold <= max) {
            return Err(format!(
                "engine.heartbeat_threshold ({}) must be larger than engine.heartbeat_period ({})",
                e.heartbeat_threshold, e.heartbeat_period
            ));
        }
        if e.unix_socket() && self.provider.kind != ProviderKind::Local {
            return Err(format!(
                "engine.address = \"{UNIX_ADDRESS}\" needs provider.type = \"local\": managers \
                 of {} blocks run on other nodes, which cannot open a Unix socket on this one",
                self.provider.kind
            ));
        }
        e.worker_request()?;
        e.container()?;
        if self.logs.max_bytes == 0 {
            return Err("logs.max_bytes must be at least 1".into());
        }
        if !(1..=MAX_LOG_KEEP).contains(&self.logs.keep) {
            return Err(format!(
                "logs.keep must be between 1 and {MAX_LOG_KEEP} rotated files"
            ));
        }
        self.provider.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = EndpointConfig::parse("").unwrap();
        assert_eq!(c.engine.worker_python, "python3");
        assert_eq!(c.provider.kind, ProviderKind::Local);
        assert_eq!(c.provider.max_blocks, 1);
    }

    #[test]
    fn log_limits_have_defaults_and_bounds() {
        let c = EndpointConfig::parse("").unwrap();
        assert_eq!(c.logs.max_bytes, DEFAULT_LOG_MAX_BYTES);
        assert_eq!((c.logs.keep, c.logs.keep_blocks), (5, 20));
        let c =
            EndpointConfig::parse("[logs]\nmax_bytes = 1\nkeep = 2\nkeep_blocks = 0\n").unwrap();
        assert_eq!(
            (c.logs.max_bytes, c.logs.keep, c.logs.keep_blocks),
            (1, 2, 0)
        );
        let err = EndpointConfig::parse("[logs]\nmax_bytes = 0\n").unwrap_err();
        assert!(err.contains("logs.max_bytes"), "{err}");
        let err = EndpointConfig::parse("[logs]\nkeep = 0\n").unwrap_err();
        assert!(err.contains("logs.keep"), "{err}");
        let err = EndpointConfig::parse("[logs]\nkeep = 1001\n").unwrap_err();
        assert!(err.contains("logs.keep"), "{err}");
        let err = EndpointConfig::parse("[logs]\nmax_size = 5\n").unwrap_err();
        assert!(err.contains("max_size") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn misspelled_key_is_named_with_its_line() {
        let err = EndpointConfig::parse(
            "[engine]\nworker_python = \"python3\"\nmax_worker_per_node = 4\n",
        )
        .unwrap_err();
        assert!(err.contains("max_worker_per_node"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = EndpointConfig::parse("[engine]\nheartbeat_period = \"fast\"\n").unwrap_err();
        assert!(
            err.contains("heartbeat_period") || err.contains("line 2"),
            "{err}"
        );
        let err = EndpointConfig::parse("[provider]\nmax_blocks = -1\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn inconsistent_values_are_refused() {
        assert!(EndpointConfig::parse(
            "[engine]\nheartbeat_period = 5.0\nheartbeat_threshold = 1.0\n"
        )
        .is_err());
        assert!(EndpointConfig::parse("[provider]\nmin_blocks = 3\nmax_blocks = 1\n").is_err());
        assert!(EndpointConfig::parse("[provider]\ntype = \"cobalt\"\n")
            .unwrap_err()
            .contains("cobalt"));
        assert!(EndpointConfig::parse("[engine]\nport_range = \"9-1\"\n").is_err());
        let unix = "[engine]\naddress = \"unix\"\n[provider]\ntype = \"slurm\"\n";
        let e = EndpointConfig::parse(unix).unwrap_err().to_string();
        assert!(e.contains("provider.type = \"local\""), "{e}");
        assert!(!e.contains("provider.kind"), "{e}");
        assert!(
            EndpointConfig::parse("[engine]\nmpi_launcher = \"aprun\"\n")
                .unwrap_err()
                .contains("aprun")
        );
        let c = EndpointConfig::parse("[engine]\nport_range = \"55000-55100\"\n").unwrap();
        assert_eq!(
            c.engine.port_range,
            Some(PortRange {
                first: 55000,
                last: 55100
            })
        );
    }

    #[test]
    fn an_unencrypted_tcp_broker_needs_an_explicit_key() {
        for address in ["", "address = \"127.0.0.1\"\n", "address = \"10.1.2.3\"\n"] {
            let text = format!("[engine]\nencrypted = false\n{address}");
            let err = EndpointConfig::parse(&text)
                .unwrap()
                .engine
                .check_link()
                .unwrap_err();
            assert!(err.contains("engine.allow_unencrypted_tcp"), "{err}");
            let allowed = format!("{text}allow_unencrypted_tcp = true\n");
            EndpointConfig::parse(&allowed)
                .unwrap()
                .engine
                .check_link()
                .unwrap();
        }
        let unix = "[engine]\nencrypted = false\naddress = \"unix\"\n";
        EndpointConfig::parse(unix)
            .unwrap()
            .engine
            .check_link()
            .unwrap();
        EndpointConfig::parse("")
            .unwrap()
            .engine
            .check_link()
            .unwrap();
    }
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    #[test]
    fn accelerators_are_a_list_or_a_count() {
        let c = EndpointConfig::parse("").unwrap();
        assert_eq!(c.engine.cpu_affinity, CpuAffinity::None);
        assert!(c.engine.available_accelerators.is_empty());
        let c = EndpointConfig::parse("[engine]\navailable_accelerators = 3\n").unwrap();
        assert_eq!(c.engine.available_accelerators, ["0", "1", "2"]);
        let c =
            EndpointConfig::parse("[engine]\navailable_accelerators = [\"GPU-a\", 1]\n").unwrap();
        assert_eq!(c.engine.available_accelerators, ["GPU-a", "1"]);
        let err = EndpointConfig::parse("[engine]\navailable_accelerators = -1\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        let err =
            EndpointConfig::parse("[engine]\navailable_accelerators = \"0,1\"\n").unwrap_err();
        assert!(err.contains("available_accelerators"), "{err}");
    }
}
