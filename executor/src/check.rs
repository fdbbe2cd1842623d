//! `hpfaas endpoint check NAME`: everything `endpoint start` needs, checked
//! one by one without starting anything — the configuration, the agent not
//! already running, the service and the credential the agent would use,
//! the batch system's commands, the broker's address, the workers' Python —
//! and the exact job script a block would get. Each finding says what to do.

use std::path::Path;
use std::process::{Command, Stdio};

use hpfaas_protocol::PROTOCOL_VERSION;
use hpfaas_scheduler_adapters::ProviderKind;
use serde::Serialize;

use crate::agent::{registration, AgentSpec};
use crate::config::EndpointConfig;
use crate::lifecycle::{self, Reply};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// `start` works, but something may bite later.
    Warn,
    /// `start` would fail.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked (`configuration`, `service`, ...).
    pub check: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// What was found, and what to do when it is not fine.
    pub detail: String,
}

/// Every finding about one endpoint, and the job script of its first block.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Endpoint name.
    pub name: String,
    /// True when `endpoint start` would work.
    pub ok: bool,
    /// In the order they were checked.
    pub findings: Vec<Finding>,
    /// What a block would be submitted with, once the configuration loads.
    pub job_script: Option<String>,
}

/// Checks endpoint `name`; an error only for a name that cannot be one.
pub fn check(name: &str) -> anyhow::Result<Report> {
    let dir = lifecycle::endpoint_dir(name)?;
    let mut report = Report {
        name: name.to_string(),
        ok: false,
        findings: Vec::new(),
        job_script: None,
    };
    let path = dir.join("config.toml");
    let config = if path.exists() {
        lifecycle::load_config(&path)
    } else {
        report.add(
            "configuration",
            Verdict::Fail,
            format!(
                "endpoint {name} is not configured: run `hpfaas endpoint configure {name} \
                 --provider slurm|pbs|lsf|local` (or --site SITE, --from FILE)"
            ),
        );
        return Ok(report.finish());
    };
    let config = match config {
        Ok(config) => {
            report.add("configuration", Verdict::Ok, summary(&path, &config));
            config
        }
        Err(e) => {
            report.add(
                "configuration",
                Verdict::Fail,
                format!("{e}\nfix the file, then check again"),
            );
            return Ok(report.finish());
        }
    };
    crate::tls::set_ca_file(config.endpoint.ca_file.clone());
    report.agent(name, &dir);
    report.service(name, &dir, &config);
    report.scheduler(&config);
    report.broker_address(&config);
    report.worker_python(&config);
    report.container(&config);
    match std::env::current_exe() {
        Ok(hpfaas_exe) => {
            let spec = AgentSpec {
                name: name.to_string(),
                dir,
                service_url: lifecycle::service_url(&config).unwrap_or_default(),
                config,
                owner_token: None,
                reregister: false,
                hpfaas_exe,
            };
            match lifecycle::job_script_for(&spec) {
                Ok(script) => report.job_script = Some(script),
                Err(e) => report.add("job script", Verdict::Fail, format!("{e:#}")),
            }
        }
        Err(e) => report.add(
            "job script",
            Verdict::Fail,
            format!("cannot find the hpfaas binary that blocks would run: {e}"),
        ),
    }
    Ok(report.finish())
}

/// One line on what the configuration asks for.
fn summary(path: &Path, config: &EndpointConfig) -> String {
    let p = &config.provider;
    let workers = config
        .engine
        .max_workers_per_node
        .map_or("one worker per core".to_string(), |w| {
            format!("{w} workers per node")
        });
    format!(
        "{} loads: {} blocks ({} to {}, {} node(s) each), {workers}",
        path.display(),
        p.kind,
        p.min_blocks,
        p.max_blocks,
        p.nodes_per_block,
    )
}

impl Report {
    fn add(&mut self, check: &'static str, verdict: Verdict, detail: String) {
        self.findings.push(Finding {
            check,
            verdict,
            detail,
        });
    }

    fn finish(mut self) -> Self {
        self.ok = self.findings.iter().all(|f| f.verdict != Verdict::Fail);
        self
    }

    /// `start` refuses an endpoint whose agent runs.
    fn agent(&mut self, name: &str, dir: &Path) {
        match lifecycle::running(dir) {
            Some(state) => self.add(
                "agent",
                Verdict::Fail,
                format!(
                    "endpoint {name} is already running (pid {}): `hpfaas endpoint restart \
                     {name}` restarts it with this configuration",
                    state.pid
                ),
            ),
            None => self.add("agent", Verdict::Ok, "not running".into()),
        }
    }

    /// The service answers, speaks our protocol, and takes the credential
    /// the agent would present: its stored one, else the owner's token it
    /// would register with.
    fn service(&mut self, name: &str, dir: &Path, config: &EndpointConfig) {
        let Some(url) = lifecycle::service_url(config) else {
            return self.add(
                "service",
                Verdict::Fail,
                "no service URL: set endpoint.service_url in the configuration, or HPFAAS_URL \
                 in the environment (`hpfaas up` prints both)"
                    .into(),
            );
        };
        let base = url.trim_end_matches('/');
        let ca_file = config.endpoint.ca_file.as_deref();
        let version =
            match lifecycle::get_json(&format!("{base}/v2/version?service=all"), None, ca_file) {
                Ok(v) => v,
                Err(reply) => {
                    return self.add("service", Verdict::Fail, unreachable(&url, &reply));
                }
            };
        let theirs = version["protocol_version"].as_u64();
        if theirs != Some(u64::from(PROTOCOL_VERSION)) {
            return self.add(
                "service",
                Verdict::Fail,
                format!(
                    "{url} speaks endpoint protocol {} and this hpfaas speaks {PROTOCOL_VERSION}: \
                     use the same hpfaas release as the service (it runs {})",
                    theirs.map_or("(none given)".to_string(), |v| v.to_string()),
                    version["hpfaas"].as_str().unwrap_or("an unknown version"),
                ),
            );
        }
        self.add(
            "service",
            Verdict::Ok,
            format!(
                "{url} answers (hpfaas {})",
                version["hpfaas"].as_str().unwrap_or("?")
            ),
        );
        let stored = match registration::load(dir) {
            Ok(stored) => stored.filter(|c| c.service_url == url),
            Err(e) => {
                return self.add(
                    "credential",
                    Verdict::Fail,
                    format!("{e:#}: remove it, and start with HPFAAS_TOKEN set to register again"),
                );
            }
        };
        if let Some(c) = stored {
            let status = format!("{base}/v2/endpoints/{}/status", c.endpoint_id);
            return match lifecycle::get_json(&status, Some(&c.credential), ca_file) {
                Ok(_) => self.add(
                    "credential",
                    Verdict::Ok,
                    format!(
                        "the service accepts endpoint {}'s credential",
                        c.endpoint_id
                    ),
                ),
                Err(Reply::Status(code @ (401 | 403 | 404), text)) => self.add(
                    "credential",
                    Verdict::Fail,
                    format!(
                        "the service refused endpoint {}'s stored credential ({code}: {}): remove \
                         {} and start with HPFAAS_TOKEN set to the owner's token to register \
                         again",
                        c.endpoint_id,
                        text.trim(),
                        dir.join(registration::FILE).display()
                    ),
                ),
                Err(reply) => self.add("credential", Verdict::Fail, unreachable(&url, &reply)),
            };
        }
        let token = match lifecycle::owner_token(config) {
            Ok(Some(token)) => token,
            Ok(None) => {
                return self.add(
                    "credential",
                    Verdict::Fail,
                    format!(
                        "endpoint {name} has not registered with {url} yet and there is no owner \
                         token to register with: set HPFAAS_TOKEN (`hpfaas up` prints it) or \
                         endpoint.token_file"
                    ),
                );
            }
            Err(e) => return self.add("credential", Verdict::Fail, format!("{e:#}")),
        };
        match lifecycle::get_json(&format!("{base}/v2/endpoints"), Some(&token), ca_file) {
            Ok(_) => self.add(
                "credential",
                Verdict::Ok,
                format!("the owner token is accepted; start registers endpoint {name} with it"),
            ),
            Err(Reply::Status(401, text)) => self.add(
                "credential",
                Verdict::Fail,
                format!(
                    "the service refused the owner token (401: {}): check HPFAAS_TOKEN or \
                     endpoint.token_file (`hpfaas token create` on the service's machine makes one)",
                    text.trim()
                ),
            ),
            Err(reply) => self.add("credential", Verdict::Fail, unreachable(&url, &reply)),
        }
    }

    /// The provider asks its batch system once, as a poll would.
    fn scheduler(&mut self, config: &EndpointConfig) {
        let outcome = hpfaas_scheduler_adapters::build(&config.provider)
            .and_then(|mut provider| provider.probe().map_err(|e| e.to_string()));
        match outcome {
            Ok(said) => self.add("scheduler", Verdict::Ok, said),
            Err(e) => self.add("scheduler", Verdict::Fail, e),
        }
    }

    /// Managers on other nodes must reach the broker's address.
    fn broker_address(&mut self, config: &EndpointConfig) {
        let local = config.provider.kind == ProviderKind::Local;
        if config.engine.unix_socket() {
            return self.add(
                "broker address",
                Verdict::Ok,
                "a Unix socket in the endpoint's directory".into(),
            );
        }
        match crate::broker::address::resolve(config.engine.address.as_deref(), local) {
            Ok(ip)
                if !local
                    && ip
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|a| a.is_loopback()) =>
            {
                self.add(
                    "broker address",
                    Verdict::Warn,
                    format!(
                        "{ip}: managers of {} blocks on other nodes cannot reach a loopback \
                         address; set engine.address to the interface the compute nodes reach \
                         (fine on a single-node cluster)",
                        config.provider.kind
                    ),
                )
            }
            Ok(ip) => self.add(
                "broker address",
                Verdict::Ok,
                format!("managers connect to {ip}"),
            ),
            Err(e) => self.add("broker address", Verdict::Fail, e),
        }
    }

    /// Local blocks start workers here with `engine.worker_python`; batch
    /// blocks start them on compute nodes, where it may live elsewhere.
    fn worker_python(&mut self, config: &EndpointConfig) {
        let python = &config.engine.worker_python;
        let local = config.provider.kind == ProviderKind::Local;
        let answer = Command::new(python)
            .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let version = match answer {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            Ok(out) => format!("exited with {}", out.status),
            Err(e) => format!("cannot be run ({e})"),
        };
        if version.starts_with(|c: char| c.is_ascii_digit()) {
            let fine = version
                .split('.')
                .take(2)
                .map(|n| n.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
                >= vec![3, 8];
            if fine {
                return self.add(
                    "worker python",
                    Verdict::Ok,
                    format!("{python} is Python {version}"),
                );
            }
            return self.add(
                "worker python",
                if local { Verdict::Fail } else { Verdict::Warn },
                format!("{python} is Python {version}; workers need 3.8 or newer: set engine.worker_python"),
            );
        }
        if local {
            self.add(
                "worker python",
                Verdict::Fail,
                format!(
                    "engine.worker_python = {python:?} {version}: set it to a Python 3 interpreter"
                ),
            );
        } else {
            self.add(
                "worker python",
                Verdict::Warn,
                format!(
                    "engine.worker_python = {python:?} {version} here; it must run on the compute \
                     nodes (worker_init can load a module or activate an environment)"
                ),
            );
        }
    }
}

impl Report {
    /// The container runtime must be where workers start: here for local
    /// blocks; on the compute nodes, where it is likely the same, for batch.
    fn container(&mut self, config: &EndpointConfig) {
        let Ok(Some(container)) = config.engine.container() else {
            return;
        };
        let runtime = container.kind.name();
        let described = crate::manager::container::describe(&container);
        if hpfaas_scheduler_adapters::command::on_path(runtime) {
            self.add(
                "container",
                Verdict::Ok,
                format!("workers and shell tasks run in the {described}"),
            );
        } else if config.provider.kind == ProviderKind::Local {
            self.add(
                "container",
                Verdict::Fail,
                format!("engine.container_type = \"{runtime}\", but {runtime} is not on PATH here"),
            );
        } else {
            self.add(
                "container",
                Verdict::Warn,
                format!(
                    "{runtime} is not on PATH here; it must be on the compute nodes \
                     (worker_init can load it)"
                ),
            );
        }
    }
}

/// A request that got no usable answer, in words a user can act on.
fn unreachable(url: &str, reply: &Reply) -> String {
    match reply {
        Reply::Status(code, text) => format!("{url} answered {code}: {}", text.trim()),
        Reply::Unreachable(e) => format!(
            "cannot reach the service at {url}: {e}; is it running (`hpfaas up` or `hpfaas \
             service`), and is the URL right?"
        ),
    }
}
