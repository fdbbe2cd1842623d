//! `hpfaas endpoint configure|start|stop|list|status`: endpoint directories
//! under `$HPFAAS_HOME/endpoints/NAME/`, starting an agent as a daemon, and
//! stopping it with everything it started.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hpfaas_scheduler_adapters::ProviderKind;
use serde::Serialize;

use crate::agent::{registration, state_file::AgentState, AgentSpec};
use crate::config::{self, EndpointConfig};

/// `$HPFAAS_HOME`, else `~/.hpfaas`.
pub fn hpfaas_home() -> PathBuf {
    if let Some(home) = std::env::var_os("HPFAAS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let user_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    user_home.join(".hpfaas")
}

/// Directory of the endpoint called `name`.
pub fn endpoint_dir(name: &str) -> anyhow::Result<PathBuf> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with('.');
    if !valid {
        bail!("invalid endpoint name {name:?}: use letters, digits, '-', '_' and '.', up to 64 characters");
    }
    Ok(hpfaas_home().join("endpoints").join(name))
}

/// Where `hpfaas endpoint configure` takes a new endpoint's configuration from.
#[derive(Debug, Clone, Copy)]
pub enum ConfigSource<'a> {
    /// Every key of this provider, `[engine]` and `[endpoint]`, commented.
    Provider(ProviderKind),
    /// A shipped site configuration ([`config::sites`]), by name.
    Site(&'a str),
    /// A configuration the user already has.
    File(&'a Path),
}

/// Largest file `--from` copies: a configuration is a few KiB, and an
/// unbounded read of a wrong path (a device, a huge log) would never end.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a configuration to copy, bounded by [`MAX_CONFIG_BYTES`].
fn read_config_file(file: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read {}", file.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        bail!(
            "{} is larger than {MAX_CONFIG_BYTES} bytes: not an endpoint configuration",
            file.display()
        );
    }
    Ok(text)
}

/// Writes the configuration of a new endpoint from `source`, checked as
/// `endpoint start` will check it: no source leaves a file `start` refuses.
pub fn configure(name: &str, source: ConfigSource) -> anyhow::Result<PathBuf> {
    let dir = endpoint_dir(name)?;
    let path = dir.join("config.toml");
    if path.exists() {
        bail!("endpoint {name} is already configured: {}", path.display());
    }
    let url = std::env::var("HPFAAS_URL").ok().filter(|u| !u.is_empty());
    let (text, origin) = match source {
        ConfigSource::Provider(kind) => (
            config::template::template(kind, url.as_deref()),
            format!("the {kind} template"),
        ),
        ConfigSource::Site(site) => (
            config::sites::find(site)
                .map_err(anyhow::Error::msg)?
                .text_for(url.as_deref()),
            format!("site {site}"),
        ),
        ConfigSource::File(file) => (read_config_file(file)?, file.display().to_string()),
    };
    check_config(&text).map_err(|message| anyhow::anyhow!("{origin}: {message}"))?;
    crate::private::dirs(&hpfaas_home(), &dir)?;
    crate::private::write(&path, text.as_bytes(), true)?;
    Ok(path)
}

/// What [`load_config`] checks, on a configuration's text.
pub fn check_config(text: &str) -> Result<EndpointConfig, String> {
    let config = EndpointConfig::parse(text)?;
    local_blocks_fit(&config).map_err(|message| config::locate::at_line(text, &message))?;
    Ok(config)
}

/// Reads an endpoint's configuration for use here: the file's own checks
/// ([`EndpointConfig::parse`]) and then [`local_blocks_fit`]; errors name the
/// file, and the line where they can.
pub fn load_config(path: &Path) -> Result<EndpointConfig, config::ConfigError> {
    let error = |message: String| config::ConfigError {
        path: path.display().to_string(),
        message,
    };
    let text = read_config_file(path).map_err(|e| error(format!("{e:#}")))?;
    check_config(&text).map_err(error)
}

/// Local blocks run on this very machine: refuses now the worker placement
/// every one of their managers would refuse at its start. Blocks of a batch
/// system run on other nodes, whose managers check for themselves.
pub fn local_blocks_fit(config: &EndpointConfig) -> Result<(), String> {
    match config.provider.kind {
        ProviderKind::Local => crate::manager::affinity::check_this_machine(
            &config.engine.worker_request()?,
            config.provider.nodes_per_block,
        ),
        ProviderKind::Slurm | ProviderKind::Pbs | ProviderKind::Lsf => Ok(()),
    }
}

/// Builds the agent's spec from the endpoint's directory and environment.
pub fn agent_spec(name: &str) -> anyhow::Result<AgentSpec> {
    let dir = endpoint_dir(name)?;
    let path = dir.join("config.toml");
    if !path.exists() {
        bail!("endpoint {name} is not configured; run `hpfaas endpoint configure {name}`");
    }
    // Before anything is read from or written to it: the directory holds
    // the credential, keys, journal and logs.
    crate::private::dirs(&hpfaas_home(), &dir)?;
    let config = load_config(&path)?;
    crate::tls::set_ca_file(config.endpoint.ca_file.clone());
    let service_url = service_url(&config).with_context(|| {
        format!(
            "no service URL: set endpoint.service_url in {} or HPFAAS_URL",
            path.display()
        )
    })?;
    let owner_token = owner_token(&config)?;
    Ok(AgentSpec {
        name: name.to_string(),
        dir,
        config,
        service_url,
        owner_token,
        reregister: false,
        hpfaas_exe: std::env::current_exe().context("cannot find the hpfaas binary")?,
    })
}

/// The service an endpoint of `config` reports to: `endpoint.service_url`,
/// else `HPFAAS_URL`.
pub fn service_url(config: &EndpointConfig) -> Option<String> {
    config
        .endpoint
        .service_url
        .clone()
        .or_else(|| std::env::var("HPFAAS_URL").ok().filter(|u| !u.is_empty()))
}

/// The owner's token for a first registration: `HPFAAS_TOKEN`, else the
/// file `endpoint.token_file` names.
pub fn owner_token(config: &EndpointConfig) -> anyhow::Result<Option<String>> {
    if let Some(t) = std::env::var("HPFAAS_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    let Some(f) = &config.endpoint.token_file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(f)
        .with_context(|| format!("cannot read endpoint.token_file {}", f.display()))?;
    Ok(Some(token.trim().to_string()))
}

/// The running agent of an endpoint, if any.
pub fn running(dir: &Path) -> Option<AgentState> {
    AgentState::read(dir).filter(AgentState::is_alive)
}

/// Starts the endpoint's agent as a daemon and waits until it is connected
/// (or has failed, whose error is returned).
pub fn start_daemon(name: &str) -> anyhow::Result<String> {
    let spec = agent_spec(name)?;
    if let Some(s) = running(&spec.dir) {
        bail!("endpoint {name} is already running (pid {})", s.pid);
    }
    AgentState::remove(&spec.dir);
    let log_path = spec.dir.join("endpoint.log");
    let log = crate::private::open_append(&log_path, false)?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut child = Command::new(&spec.hpfaas_exe)
        .args(["endpoint", "start", name, "--foreground", "--rotate-log"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the endpoint agent")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail = text.get(log_start as usize..).unwrap_or(&text);
            let last = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            bail!(
                "endpoint {name} failed to start ({status}): {last}\n(log: {})",
                log_path.display()
            );
        }
        if let Some(s) = AgentState::read(&spec.dir) {
            if s.pid == child.id() && s.state == "online" {
                return Ok(format!(
                    "endpoint {name} started (pid {}), id {}",
                    s.pid,
                    s.endpoint_id.unwrap_or_default()
                ));
            }
        }
        if Instant::now() > deadline {
            return Ok(format!(
                "endpoint {name} started (pid {}) but is not connected to {} yet; see {}",
                child.id(),
                spec.service_url,
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rotating `endpoint.log` a daemon agent logs to (what [`start_daemon`]
/// starts: `endpoint start NAME --foreground --rotate-log`), with its stdout
/// and stderr pointed at it. Its stdio is the same file already, so what
/// fails before this still reaches the log.
pub fn daemon_log(name: &str) -> anyhow::Result<crate::log_rotation::LogWriter> {
    let dir = endpoint_dir(name)?;
    crate::private::dirs(&hpfaas_home(), &dir)?;
    // A config that cannot be read gets the default limits: the agent
    // refuses it right after, into this log.
    let logs = EndpointConfig::load(&dir.join("config.toml"))
        .map(|c| c.logs)
        .unwrap_or_default();
    crate::log_rotation::endpoint_log(&dir, &logs)
}

/// Stops the endpoint's agent and waits for it. The agent cancels its
/// blocks, unless `keep_blocks` (for `restart`): then the next agent re-adopts them.
pub fn stop(name: &str, keep_blocks: bool) -> anyhow::Result<String> {
    let dir = endpoint_dir(name)?;
    let Some(s) = running(&dir) else {
        AgentState::remove(&dir);
        bail!("endpoint {name} is not running");
    };
    let signal = if keep_blocks {
        libc::SIGUSR1
    } else {
        libc::SIGTERM
    };
    // `running` only returns a state whose pid is alive, so a valid one.
    crate::agent::pid::send_signal(s.pid, signal)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.is_alive() {
        if Instant::now() > deadline {
            // The agent ignored SIGTERM for 30 s.
            crate::agent::pid::send_signal(s.pid, libc::SIGKILL)?;
            bail!(
                "endpoint {name} (pid {}) did not stop within 30 s and was killed",
                s.pid
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    AgentState::remove(&dir);
    Ok(if keep_blocks {
        format!("endpoint {name} stopped; its blocks keep running")
    } else {
        format!("endpoint {name} stopped")
    })
}

/// One row of `hpfaas endpoint list`.
#[derive(Debug, Serialize)]
pub struct EndpointRow {
    /// Endpoint name.
    pub name: String,
    /// Endpoint id, once registered.
    pub endpoint_id: Option<String>,
    /// `running (online)`, `stopped`, ...
    pub state: String,
    /// Agent pid when running.
    pub pid: Option<u32>,
    /// Blocks pending or running.
    pub active_blocks: u32,
    /// Service URL.
    pub service_url: Option<String>,
    /// Last error the agent reported.
    pub last_error: Option<String>,
    /// Every live block, when running.
    pub blocks: Vec<crate::agent::blocks::BlockStatus>,
}

/// Describes one endpoint from its directory.
pub fn describe(name: &str) -> anyhow::Result<EndpointRow> {
    let dir = endpoint_dir(name)?;
    if !dir.join("config.toml").exists() {
        bail!("endpoint {name} is not configured");
    }
    let credential = registration::load(&dir).ok().flatten();
    let live = running(&dir);
    Ok(EndpointRow {
        name: name.to_string(),
        endpoint_id: credential.as_ref().map(|c| c.endpoint_id.clone()),
        state: match &live {
            Some(s) => format!("running ({})", s.state),
            None => "stopped".into(),
        },
        pid: live.as_ref().map(|s| s.pid),
        active_blocks: live.as_ref().map(|s| s.active_blocks).unwrap_or(0),
        service_url: credential.map(|c| c.service_url),
        blocks: live.as_ref().map(|s| s.blocks.clone()).unwrap_or_default(),
        last_error: live.and_then(|s| s.last_error),
    })
}

/// Every configured endpoint, by name.
pub fn list() -> anyhow::Result<Vec<EndpointRow>> {
    let root = hpfaas_home().join("endpoints");
    let mut names: Vec<String> = match std::fs::read_dir(&root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("config.toml").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", root.display())),
    };
    names.sort();
    // One directory that cannot be described (a name made by hand that no
    // command accepts, an unreadable file) is a row saying why, not the end
    // of the listing.
    Ok(names
        .iter()
        .map(|n| {
            describe(n).unwrap_or_else(|e| EndpointRow {
                name: n.clone(),
                endpoint_id: None,
                state: format!("unusable: {e:#}"),
                pid: None,
                active_blocks: 0,
                service_url: None,
                last_error: None,
                blocks: Vec::new(),
            })
        })
        .collect())
}

/// Asks the service for the endpoint's status using its credential.
pub fn service_status(name: &str) -> anyhow::Result<serde_json::Value> {
    service_get(name, "/v2/endpoints/{id}/status")
}

/// GETs `path` (`{id}` standing for the endpoint's id) from the service
/// the endpoint registered with, using its credential.
pub fn service_get(name: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let dir = endpoint_dir(name)?;
    let c = registration::load(&dir)?
        .with_context(|| format!("endpoint {name} has never registered"))?;
    let url = format!(
        "{}{}",
        c.service_url.trim_end_matches('/'),
        path.replace("{id}", &c.endpoint_id)
    );
    let ca_file = load_config(&dir.join("config.toml"))
        .ok()
        .and_then(|config| config.endpoint.ca_file);
    match get_json(&url, Some(&c.credential), ca_file.as_deref()) {
        Ok(v) => Ok(v),
        Err(Reply::Status(code, text)) => bail!("the service answered {code}: {text}"),
        Err(Reply::Unreachable(e)) => bail!("cannot reach the service at {}: {e}", c.service_url),
    }
}

/// Why a request to the service got no JSON document.
#[derive(Debug)]
pub enum Reply {
    /// The service answered with this status, saying this (its error's
    /// words when the body is the service's JSON error).
    Status(u16, String),
    /// No answer: the network, TLS, or not a JSON body.
    Unreachable(String),
}

/// `GET url` with an optional bearer token, trusting `ca_file` if given;
/// the answer's JSON document.
pub fn get_json(
    url: &str,
    bearer: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<serde_json::Value, Reply> {
    let agent = crate::tls::ureq_agent(ca_file)
        .map_err(|e| Reply::Unreachable(format!("{e:#}")))?
        .timeout(Duration::from_secs(10))
        .build();
    let mut request = agent.get(url);
    if let Some(token) = bearer {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    match request.call() {
        Ok(r) => r
            .into_json()
            .map_err(|e| Reply::Unreachable(format!("the answer is not JSON: {e}"))),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            // The service's errors are `{"code": ..., "error": "words"}`.
            let words = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string));
            Err(Reply::Status(code, words.unwrap_or(text)))
        }
        Err(e) => Err(Reply::Unreachable(e.to_string())),
    }
}

/// The job script the endpoint submits for a block (with the broker address
/// of the running agent, or of its last run).
pub fn job_script(name: &str) -> anyhow::Result<String> {
    job_script_for(&agent_spec(name)?)
}

/// The job script an agent of `spec` would submit for its first block.
pub fn job_script_for(spec: &AgentSpec) -> anyhow::Result<String> {
    let provider =
        hpfaas_scheduler_adapters::build(&spec.config.provider).map_err(anyhow::Error::msg)?;
    // A broken record only loses the example address: `start` writes a new one.
    let broker_url = broker_url(&spec.dir).ok().flatten().unwrap_or_else(|| {
        let address = crate::broker::address::resolve(
            spec.config.engine.address.as_deref(),
            spec.config.provider.kind == ProviderKind::Local,
        )
        .unwrap_or_else(|e| e);
        format!("tcp://{address}:PORT-CHOSEN-AT-START")
    });
    let block = "0";
    let request = hpfaas_scheduler_adapters::BlockRequest {
        block_id: block.into(),
        job_name: format!("hpfaas-{}-{block}", spec.name),
        manager_command: crate::agent::manager_command(spec, &broker_url, block),
        env: Vec::new(),
        log_dir: spec.dir.join("blocks"),
    };
    Ok(provider.job_script(&request))
}

/// The broker address recorded by the endpoint's agent: `None` if it never
/// ran, an error naming the file if the record is unreadable or broken.
pub fn broker_url(dir: &Path) -> anyhow::Result<Option<String>> {
    Ok(crate::broker::record::read(dir)?.map(|r| r.url))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cores of this machine, where local blocks run.
    fn cores_here() -> usize {
        crate::manager::affinity::Topology::detect()
            .unwrap()
            .cores
            .len()
    }

    /// An `[engine]` pinning `workers` workers to a block of cores each.
    fn block_for(workers: usize) -> String {
        format!("[engine]\ncpu_affinity = \"block\"\nmax_workers_per_node = {workers}\n")
    }

    #[test]
    fn impossible_placements_are_refused_at_load() {
        let err = check_config("[engine]\ncpu_affinity = \"packed\"\n").unwrap_err();
        assert!(err.contains("engine.cpu_affinity = \"packed\""), "{err}");
        let err = check_config("[engine]\ncpu_affinity = \"list:0:1\"\nmax_workers_per_node = 3\n")
            .unwrap_err();
        assert!(
            err.contains("2 workers") && err.contains("3 workers"),
            "{err}"
        );
        // Local blocks run here, so this machine's cores bound the block modes.
        let cores = cores_here();
        let err = check_config(&block_for(cores + 1)).unwrap_err();
        assert!(err.contains(&format!("{} workers", cores + 1)), "{err}");
        let fits =
            format!("[engine]\ncpu_affinity = \"alternating\"\nmax_workers_per_node = {cores}\n");
        check_config(&fits).unwrap();
    }

    #[test]
    fn only_local_blocks_are_held_to_this_machine() {
        let cores = cores_here();
        let engine = block_for(cores + 1);
        let local = format!("{engine}[provider]\ntype = \"local\"\n");
        assert!(check_config(&local).is_err());
        // Slurm's managers run on other nodes and check their own.
        let slurm = format!("{engine}[provider]\ntype = \"slurm\"\n");
        check_config(&slurm).unwrap();
    }

    /// Every site `configure --site` offers passes `load_config` as written,
    /// with or without a service URL filled in.
    #[test]
    fn every_embedded_site_config_loads() {
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-sites-test-")
            .tempdir()
            .unwrap();
        for site in config::sites::SITES {
            for url in [None, Some("https://faas.example.org")] {
                let path = dir.path().join(format!("{}.toml", site.name));
                std::fs::write(&path, site.text_for(url)).unwrap();
                let config = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(config.endpoint.service_url.as_deref(), url);
            }
        }
    }

    #[test]
    fn load_config_names_the_file_and_what_does_not_fit() {
        let dir = tempfile::Builder::new()
            .prefix("hpfaas-lifecycle-test-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("config.toml");
        let cores = cores_here();
        let too_many = cores + 1;
        std::fs::write(&path, block_for(too_many)).unwrap();
        let err = load_config(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&path.display().to_string())
                && err.contains(&format!("{too_many} workers"))
                && err.contains("needs at least one core per worker"),
            "{err}"
        );
        std::fs::write(&path, "[engine]\ncpu_affinity = \"alternating\"\n").unwrap();
        let config = load_config(&path).unwrap();
        assert_eq!(
            config.engine.cpu_affinity,
            config::cpu_affinity::CpuAffinity::Alternating
        );
    }
}
