//! The endpoint agent: the process on a login node that connects the
//! service to the blocks. It journals tasks from the service, hands them to
//! the broker, sends results back until acknowledged, heartbeats, and keeps
//! the right number of blocks running.

pub mod blocks;
pub mod credit;
pub mod events;
pub mod journal;
pub mod link;
pub mod metrics;
pub mod pid;
pub mod policy;
pub mod registration;
pub mod state_file;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use hpfaas_protocol::endpoint::{
    cap_results, result_frames, AgentMessage, EndpointEvent, EndpointReport, EventKind,
    ServiceMessage, DEFAULT_MAX_MESSAGE_BYTES,
};
use hpfaas_protocol::task::{FunctionCode, TaskResult, TaskSpec};
use hpfaas_scheduler_adapters::ProviderKind;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::broker::{self, dispatch::Load, BrokerCommand, BrokerConfig, BrokerEvent, BrokerHandle};
use crate::config::cpu_affinity::CpuAffinity;
use crate::config::mpi_launcher::MpiLauncher;
use crate::config::EndpointConfig;
use crate::strategy::Scaling;
use blocks::{BlocksEvent, BlocksHandle, BlocksSetup};
use events::EventQueue;
use journal::Journal;
use link::{LinkEvent, LinkTarget, Outgoing};
use state_file::AgentState;

/// Bytes of results per frame to the service; a larger result goes alone,
/// up to the service's message limit (see [`result_frames`]).
const RESULT_FRAME_BYTES: usize = 4 << 20;
/// The result size limit assumed until the service says its own (the
/// service's default `--max-result-bytes`).
const DEFAULT_MAX_RESULT_BYTES: usize = 10 << 20;
/// Most broker events handled in one turn of the agent's loop, so a flood of
/// results cannot starve the service link and the timers.
const BROKER_EVENTS_PER_TURN: usize = 256;

/// How often results still unacknowledged after a whole period are sent
/// again (the service could not store them, e.g. on a full disk, and
/// acknowledges only what it stored).
const RESEND_PERIOD: Duration = Duration::from_secs(15);

/// Everything an agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Endpoint name (its directory name).
    pub name: String,
    /// The endpoint directory (config, credential, journal, logs).
    pub dir: PathBuf,
    /// Parsed configuration.
    pub config: EndpointConfig,
    /// Service base URL.
    pub service_url: String,
    /// Owner token, needed only to register.
    pub owner_token: Option<String>,
    /// Register even when a credential is stored (rotates it).
    pub reregister: bool,
    /// The `hpfaas` binary that blocks run as managers.
    pub hpfaas_exe: PathBuf,
}

/// How the agent is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Stop everything: tell managers to exit and cancel every block.
    Stop,
    /// Exit but leave the blocks running, for the next agent to re-adopt
    /// (`hpfaas endpoint restart`).
    KeepBlocks,
}

/// Runs the agent until `shutdown` resolves or the service refuses it.
pub async fn run(spec: AgentSpec, shutdown: impl Future<Output = Shutdown>) -> anyhow::Result<()> {
    spec.config
        .engine
        .check_link()
        .map_err(anyhow::Error::msg)?;
    crate::private::dir(&spec.dir)?;
    // Job scripts, block logs and environment files go there.
    crate::private::dir(&spec.dir.join("blocks"))?;
    let mut state = AgentState {
        pid: std::process::id(),
        endpoint_id: None,
        state: "starting".into(),
        service_url: spec.service_url.clone(),
        ..Default::default()
    };
    state.write(&spec.dir)?;
    let credential = credential(&spec).await?;
    state.endpoint_id = Some(credential.endpoint_id.clone());
    let exporter = match spec.config.metrics.listen {
        Some(addr) => {
            let token = spec.config.metrics.token_file.as_deref();
            let token = token.map(metrics::read_token).transpose()?;
            Some(metrics::Exporter::start(addr, token).await?)
        }
        None => None,
    };
    state.metrics_url = exporter
        .as_ref()
        .map(|e| format!("http://{}/metrics", e.local_addr()));
    state.state = "connecting".into();
    state.write(&spec.dir)?;

    let engine = &spec.config.engine;
    let journal = Journal::open(&spec.dir.join("journal.log"))?;
    let previous = broker::record::read(&spec.dir).unwrap_or_else(|e| {
        tracing::warn!("{e:#}; the broker takes a new port");
        None
    });
    let curve = if engine.curve() {
        Some(broker::curve::load_or_create(&spec.dir)?)
    } else {
        if !engine.unix_socket() {
            tracing::warn!(
                "engine.encrypted = false with engine.allow_unencrypted_tcp = true: tasks and \
                 results cross the broker link in clear, and anyone who reaches it may join"
            );
        }
        None
    };
    let address = if engine.unix_socket() {
        broker::address::unix_socket(&spec.dir).map_err(anyhow::Error::msg)?
    } else {
        broker::address::resolve(
            engine.address.as_deref(),
            spec.config.provider.kind == ProviderKind::Local,
        )
        .map_err(anyhow::Error::msg)?
    };
    let broker = broker::start(BrokerConfig {
        address,
        port_range: engine.port_range.map(|r| (r.first, r.last)),
        preferred_port: previous.and_then(|p| p.url.rsplit(':').next()?.parse().ok()),
        heartbeat_period: Duration::from_secs_f64(engine.heartbeat_period),
        heartbeat_threshold: Duration::from_secs_f64(engine.heartbeat_threshold),
        max_retries: engine.max_retries_on_system_failure,
        drain_period: spec.config.provider.drain_period,
        nodes_per_block: spec.config.provider.nodes_per_block,
        block_walltime: block_walltime(&spec),
        curve: curve.as_ref().map(|c| c.server_keys()).transpose()?,
    })?;
    broker::record::write(
        &spec.dir,
        &broker::record::BrokerRecord {
            url: broker.url.clone(),
            server_key: curve.and_then(|c| c.server_public),
        },
    )?;
    tracing::info!(
        "endpoint {} ({}) broker listening on {}",
        spec.name,
        credential.endpoint_id,
        broker.url
    );

    let setup = blocks_setup(&spec, &broker.url)?;
    let strategy_need = credit::strategy_need(&setup.scaling);
    let blocks = BlocksHandle::start(setup)?;
    let (to_service, from_service, link) = link::spawn(LinkTarget {
        service_url: spec.service_url.clone(),
        endpoint_id: credential.endpoint_id.clone(),
        credential: credential.credential.clone(),
        allowed_functions: spec.config.endpoint.allowed_functions.clone(),
        json_only: spec.config.endpoint.json_only,
    });

    let agent = Agent::new(
        &spec,
        journal,
        to_service,
        broker.commands.clone(),
        strategy_need,
    );
    Running {
        agent,
        state,
        from_service,
        broker,
        blocks,
        link: Some(link),
        exporter,
    }
    .run(shutdown)
    .await
}

/// How long a stopping agent waits for its last frames (the blocks'
/// cancel events) to reach the service.
const LINK_FLUSH: Duration = Duration::from_secs(3);

/// The agent once its broker, blocks and service link run.
struct Running<'a> {
    agent: Agent<'a>,
    state: AgentState,
    from_service: mpsc::UnboundedReceiver<LinkEvent>,
    broker: BrokerHandle,
    blocks: BlocksHandle,
    /// The service link's task, which ends once its queue is sent.
    link: Option<tokio::task::JoinHandle<()>>,
    /// The agent's `/metrics` (`[metrics] listen`), if configured.
    exporter: Option<metrics::Exporter>,
}

impl Running<'_> {
    /// Serves until `shutdown` resolves or an error ends the loop, then
    /// stops: the one way out once the broker and the blocks run, so no
    /// error can skip stopping them.
    async fn run(mut self, shutdown: impl Future<Output = Shutdown>) -> anyhow::Result<()> {
        let outcome = self.serve(shutdown).await;
        self.stop(outcome).await
    }

    /// The agent's loop: how it was asked to stop, or the error that ended it.
    async fn serve(
        &mut self,
        shutdown: impl Future<Output = Shutdown>,
    ) -> anyhow::Result<Shutdown> {
        let Running {
            agent,
            state,
            from_service,
            broker,
            blocks,
            exporter,
            ..
        } = self;
        let spec = agent.spec;
        let engine = &spec.config.engine;
        let mut heartbeat = tokio::time::interval(Duration::from_secs_f64(engine.heartbeat_period));
        let mut scaling =
            tokio::time::interval(Duration::from_secs_f64(engine.heartbeat_period.min(1.0)));
        let mut resend = tokio::time::interval(RESEND_PERIOD);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                event = from_service.recv() => match event {
                    Some(LinkEvent::Connected { heartbeat_period, max_result_bytes, max_message_bytes, flow_control, events }) => {
                        if let Some(limit) = max_result_bytes {
                            agent.max_result_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
                        }
                        agent.max_message_bytes = max_message_bytes;
                        // Credit starts again from nothing on every connection;
                        // a service without flow control gets none.
                        (agent.connected, agent.granted) = (flow_control, 0);
                        agent.events_link = events;
                        agent.send_events();
                        tracing::info!("connected to {}", spec.service_url);
                        // The service drops agents that miss its heartbeats, so
                        // never beat slower than it asks, whatever the engine's period.
                        let period = heartbeat_period.min(engine.heartbeat_period).max(0.05);
                        heartbeat = tokio::time::interval(Duration::from_secs_f64(period));
                        agent.resend_results()?;
                        agent.grant_credit();
                        state.state = "online".into();
                        // The connection's error is over; the scheduler's is not.
                        state.last_error = agent.blocks_error.clone();
                        publish(state, &spec.dir);
                    }
                    Some(LinkEvent::Message(message)) => {
                        agent.on_service_message(message)?;
                        agent.grant_credit();
                    }
                    Some(LinkEvent::Disconnected(why)) => {
                        (agent.connected, agent.events_link) = (false, false);
                        tracing::warn!("disconnected from the service: {why}");
                        state.state = "connecting".into();
                        state.last_error = Some(why);
                        publish(state, &spec.dir);
                    }
                    Some(LinkEvent::Refused(why)) => break Err(anyhow::anyhow!("the service refused this endpoint: {why}")),
                    None => break Err(anyhow::anyhow!("the service link stopped")),
                },
                Some(event) = broker.events.recv() => {
                    // Whatever else the broker queued meanwhile goes along, so
                    // one journal transaction and one frame carry a whole burst.
                    let mut events = vec![event];
                    while events.len() < BROKER_EVENTS_PER_TURN {
                        match broker.events.try_recv() {
                            Ok(more) => events.push(more),
                            Err(_) => break,
                        }
                    }
                    agent.on_broker_events(events)?;
                    agent.grant_credit();
                    if let Some(recent) = agent.events.take_changed() {
                        state.events = recent;
                        publish(state, &spec.dir);
                    }
                }
                _ = heartbeat.tick() => {
                    let status = EndpointReport {
                        managers: agent.load.managers,
                        total_workers: agent.load.total_workers,
                        idle_workers: agent.load.idle_workers,
                        outstanding_tasks: agent.journal.outstanding(),
                        active_blocks: state.blocks.len() as u32,
                        blocks: state.blocks.clone(),
                    };
                    let _ = agent.to_service.send(AgentMessage::Heartbeat { status }.into());
                    if let Some(exporter) = exporter {
                        exporter.update(metrics::Figures {
                            load: agent.load.clone(),
                            blocks: state.blocks.clone(),
                            outstanding: agent.journal.outstanding(),
                            connected: state.state == "online",
                            now: hpfaas_protocol::task::now_unix(),
                        });
                    }
                }
                _ = resend.tick() => match agent.journal.stale() {
                    Ok(stale) if !stale.is_empty() => {
                        tracing::info!(results = stale.len(), "sending results the service has not acknowledged again");
                        agent.send_results(stale);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{e:#}"),
                },
                _ = scaling.tick() => blocks.step(agent.journal.outstanding(), agent.load.clone()),
                Some(event) = blocks.events.recv() => match event {
                    BlocksEvent::Ended(b) => {
                        let _ = agent.broker.send(BrokerCommand::BlockEnded { block_id: b.block_id, reason: b.reason });
                    }
                    BlocksEvent::Status { blocks: list, last_error, events } => {
                        agent.record_events(events);
                        let recent = agent.events.take_changed();
                        agent.blocks_error.clone_from(&last_error);
                        let error = last_error.or(state.last_error.clone());
                        if recent.is_some() || list != state.blocks || error != state.last_error {
                            if let Some(recent) = recent {
                                state.events = recent;
                            }
                            state.active_blocks = list.len() as u32;
                            state.blocks = list;
                            state.last_error = error;
                            publish(state, &spec.dir);
                        }
                    }
                },
                how = &mut shutdown => break Ok(how),
            }
        }
    }

    /// Stops after `outcome`, deciding what becomes of the broker and the blocks:
    /// - `Ok(KeepBlocks)` (`hpfaas endpoint restart`): both are left as they
    ///   are; the broker's socket closes as the process exits, and the
    ///   blocks' managers wait for the next agent, which binds the same
    ///   address and re-adopts the blocks from `blocks.json`.
    /// - `Ok(Stop)`, and every error (the service refused the endpoint, the
    ///   link stopped, the journal failed): the broker tells the managers to
    ///   exit (given up to 5 s), then every block is cancelled and
    ///   `blocks.json` emptied. After an error no agent is left to feed the
    ///   blocks or take their results, so they would only hold their
    ///   allocation until their walltime; the service keeps every task
    ///   without a durable result for the next agent, and the journal keeps
    ///   the results it has not acknowledged.
    ///
    /// `agent.json` says `stopping` either way, and the events of the stop
    /// (each block cancelled) go to the service before the link closes
    /// (given up to [`LINK_FLUSH`]). The error that ended the loop is what
    /// is returned.
    async fn stop(self, outcome: anyhow::Result<Shutdown>) -> anyhow::Result<()> {
        let Running {
            mut agent,
            mut state,
            broker,
            blocks,
            link,
            ..
        } = self;
        let spec = agent.spec;
        state.state = "stopping".into();
        let _ = state.write(&spec.dir);
        match &outcome {
            Ok(Shutdown::KeepBlocks) => {
                tracing::info!(
                    "stopping endpoint {}; its blocks keep running for the next agent",
                    spec.name
                );
            }
            Ok(Shutdown::Stop) | Err(_) => {
                let why = if outcome.is_err() {
                    " after an error"
                } else {
                    ""
                };
                tracing::info!("stopping endpoint {} and its blocks{why}", spec.name);
                let _ = broker.commands.send(BrokerCommand::Shutdown);
                let _ = tokio::time::timeout(Duration::from_secs(5), broker.task).await;
                let events = tokio::task::spawn_blocking(move || blocks.cancel_all()).await?;
                agent.record_events(events);
                if let Some(recent) = agent.events.take_changed() {
                    state.events = recent;
                    let _ = state.write(&spec.dir);
                }
            }
        }
        // The link sends what is queued (the cancels' events), then closes.
        drop(agent);
        if let Some(link) = link {
            if tokio::time::timeout(LINK_FLUSH, link).await.is_err() {
                tracing::debug!("the service link did not close in time");
            }
        }
        outcome.map(|_| ())
    }
}

/// Rewrites `agent.json`; a failure (a full disk) is logged, not fatal:
/// the file only shows the agent's state to `hpfaas endpoint status`.
fn publish(state: &AgentState, dir: &std::path::Path) {
    if let Err(e) = state.write(dir) {
        tracing::warn!("{e:#}");
    }
}

async fn credential(spec: &AgentSpec) -> anyhow::Result<registration::Credential> {
    let stored = registration::load(&spec.dir)?;
    if let Some(c) = &stored {
        if !spec.reregister && c.service_url == spec.service_url {
            return Ok(c.clone());
        }
    }
    let token = spec.owner_token.clone().with_context(|| {
        format!(
            "endpoint {} has no credential for {} yet: set HPFAAS_TOKEN (or endpoint.token_file) \
             to the owner's token for its first registration",
            spec.name, spec.service_url
        )
    })?;
    let (dir, url, name) = (
        spec.dir.clone(),
        spec.service_url.clone(),
        spec.name.clone(),
    );
    let display = spec
        .config
        .endpoint
        .display_name
        .clone()
        .unwrap_or_else(|| name.clone());
    let reuse = stored
        .filter(|c| c.service_url == spec.service_url)
        .map(|c| c.endpoint_id);
    tokio::task::spawn_blocking(move || {
        registration::register(&dir, &url, &token, &name, &display, reuse.as_deref())
    })
    .await?
}

/// The walltime after which the batch system ends a block; `None` for local blocks.
pub fn block_walltime(spec: &AgentSpec) -> Option<Duration> {
    (spec.config.provider.kind != ProviderKind::Local).then(|| spec.config.provider.walltime())
}

/// The manager command line for a block: what the job script runs on each node.
pub fn manager_command(spec: &AgentSpec, broker_url: &str, block_id: &str) -> Vec<String> {
    let engine = &spec.config.engine;
    let mut argv = vec![
        spec.hpfaas_exe.display().to_string(),
        "manager".into(),
        "--broker".into(),
        broker_url.to_string(),
        "--block-id".into(),
        block_id.to_string(),
        "--prefetch".into(),
        engine.prefetch_capacity.to_string(),
        "--worker-python".into(),
        engine.worker_python.clone(),
        // Private, and on the file system batch jobs share with the agent.
        "--runtime-dir".into(),
        spec.dir.join("runtime").display().to_string(),
    ];
    // Only batch systems end a block at its walltime; a local block lives
    // until cancelled, so giving it a deadline would drain it for nothing.
    if let Some(walltime) = block_walltime(spec) {
        argv.extend(["--walltime".into(), walltime.as_secs().to_string()]);
    }
    if let Some(w) = engine.max_workers_per_node {
        argv.extend(["--workers".into(), w.to_string()]);
    }
    if engine.cpu_affinity != CpuAffinity::None {
        argv.extend(["--cpu-affinity".into(), engine.cpu_affinity.to_string()]);
    }
    if !engine.available_accelerators.is_empty() {
        argv.extend([
            "--accelerators".into(),
            engine.available_accelerators.join(","),
        ]);
    }
    // Only the file's path: secret keys never go on a command line.
    if engine.curve() {
        argv.extend([
            "--curve-file".into(),
            broker::curve::endpoint_file(&spec.dir)
                .display()
                .to_string(),
        ]);
    }
    if engine.run_in_sandbox {
        // In the endpoint's directory, which batch jobs see too (shared $HPFAAS_HOME).
        let root = spec.dir.join("tasks");
        argv.extend(["--sandbox-dir".into(), root.display().to_string()]);
    }
    // Checked when the configuration was read; a file changed since is
    // the next start's to refuse.
    if let Ok(Some(container)) = engine.container() {
        argv.extend(container.manager_args());
    }
    if engine.shell_output_limit != crate::config::DEFAULT_SHELL_OUTPUT_LIMIT {
        argv.extend([
            "--shell-output-limit".into(),
            engine.shell_output_limit.to_string(),
        ]);
    }
    if engine.python_output_limit != crate::config::DEFAULT_PYTHON_OUTPUT_LIMIT {
        argv.extend([
            "--python-output-limit".into(),
            engine.python_output_limit.to_string(),
        ]);
    }
    // MPI settings only when not the defaults, so most job scripts stay as they were.
    if engine.mpi_launcher != MpiLauncher::OpenMpi {
        argv.extend(["--mpi-launcher".into(), engine.mpi_launcher.to_string()]);
    }
    if !engine.launcher_options.trim().is_empty() {
        // One word with `=`: the value itself usually starts with `--`.
        argv.push(format!(
            "--launcher-options={}",
            engine.launcher_options.trim()
        ));
    }
    argv
}

/// Workers a manager will run, as far as the agent can tell without seeing
/// the node (its core count is a guess): the manager's own rule.
fn workers_estimate(engine: &crate::config::EngineSection, cores: u32) -> u32 {
    crate::config::cpu_affinity::WorkerRequest {
        mode: engine.cpu_affinity.clone(),
        max_workers: engine.max_workers_per_node,
        accelerators: engine.available_accelerators.clone(),
    }
    .workers(cores)
}

fn blocks_setup(spec: &AgentSpec, broker_url: &str) -> anyhow::Result<BlocksSetup> {
    let engine = &spec.config.engine;
    let provider = &spec.config.provider;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let scaling = Scaling {
        init_blocks: provider.init_blocks,
        min_blocks: provider.min_blocks,
        max_blocks: provider.max_blocks,
        slots_per_block: (workers_estimate(engine, cores) + engine.prefetch_capacity)
            * provider.nodes_per_block,
        parallelism: provider.parallelism,
        max_idletime: Duration::from_secs_f64(provider.max_idletime),
    };
    let (owned, url) = (spec.clone(), broker_url.to_string());
    Ok(BlocksSetup {
        provider: hpfaas_scheduler_adapters::build(provider).map_err(anyhow::Error::msg)?,
        scaling,
        nodes: provider.nodes_per_block,
        manager_command: Box::new(move |block_id| manager_command(&owned, &url, block_id)),
        job_prefix: format!("hpfaas-{}", spec.name),
        dir: spec.dir.clone(),
        poll_period: provider.poll_period(),
        keep_finished: spec.config.logs.keep_blocks,
    })
}

struct Agent<'a> {
    spec: &'a AgentSpec,
    journal: Journal,
    to_service: mpsc::UnboundedSender<Outgoing>,
    broker: mpsc::UnboundedSender<BrokerCommand>,
    load: Load,
    /// The service's `--max-result-bytes` (as of the last welcome).
    max_result_bytes: usize,
    /// The largest message the service reads (as of the last welcome).
    max_message_bytes: usize,
    /// Connected to a service that honours credit: credit granted now counts.
    connected: bool,
    /// Credit granted on this connection and not used by tasks yet.
    granted: u64,
    /// Outstanding tasks the block strategy must see to run every block.
    strategy_need: u64,
    /// Connected to a service that stores endpoint events.
    events_link: bool,
    /// Events not yet sent, and the recent ones.
    events: EventQueue,
    /// The blocks' last scheduler error, which outlives a reconnection.
    blocks_error: Option<String>,
}

impl<'a> Agent<'a> {
    /// An agent not yet connected, assuming the service's default limits
    /// until its welcome says otherwise.
    fn new(
        spec: &'a AgentSpec,
        journal: Journal,
        to_service: mpsc::UnboundedSender<Outgoing>,
        broker: mpsc::UnboundedSender<BrokerCommand>,
        strategy_need: u64,
    ) -> Self {
        Agent {
            spec,
            journal,
            to_service,
            broker,
            load: Load::default(),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connected: false,
            granted: 0,
            strategy_need,
            events_link: false,
            events: EventQueue::default(),
            blocks_error: None,
        }
    }

    /// Records events, and sends them if the service takes them now.
    fn record_events(&mut self, events: Vec<EndpointEvent>) {
        if !events.is_empty() {
            self.events.push(events);
            self.send_events();
        }
    }

    /// Sends the pending events, if the service takes them; else they wait
    /// for the next connection.
    fn send_events(&mut self) {
        if self.events_link {
            for frame in self.events.frames() {
                let _ = self.to_service.send(frame.into());
            }
        }
    }

    fn on_service_message(&mut self, message: ServiceMessage) -> anyhow::Result<()> {
        match message {
            ServiceMessage::Tasks { functions, tasks } => {
                self.granted = self.granted.saturating_sub(tasks.len() as u64);
                self.accept(functions, tasks)
            }
            ServiceMessage::ResultAck { task_ids } => {
                self.journal.forget_results(&task_ids);
                Ok(())
            }
            ServiceMessage::Welcome { .. } | ServiceMessage::Refused { .. } => Ok(()),
            ServiceMessage::Cancel { task_ids } => self.cancel(task_ids),
        }
    }

    /// Takes tasks, acknowledges them, then hands the new ones to the
    /// broker; tasks the endpoint's policy refuses fail at once.
    fn accept(&mut self, functions: Vec<FunctionCode>, tasks: Vec<TaskSpec>) -> anyhow::Result<()> {
        let endpoint = &self.spec.config.endpoint;
        let mut accepted = Vec::with_capacity(tasks.len());
        let mut refused = Vec::new();
        for mut t in tasks {
            match policy::refusal(endpoint, &t) {
                Some(why) => refused.push(TaskResult::failed(t.task_id, why)),
                None => {
                    policy::prepare(endpoint, &mut t);
                    accepted.push(t);
                }
            }
        }
        let task_ids = accepted
            .iter()
            .map(|t| t.task_id)
            .chain(refused.iter().map(|r| r.task_id))
            .collect();
        let fresh = self.journal.accept(accepted);
        let _ = self.to_service.send(AgentMessage::Ack { task_ids }.into());
        if !refused.is_empty() {
            self.finish(refused)?;
        }
        if !fresh.is_empty() {
            let _ = self.broker.send(BrokerCommand::Submit {
                functions,
                tasks: fresh,
            });
        }
        Ok(())
    }

    /// Forgets cancelled tasks, has the broker drop or kill them, and
    /// acknowledges the ids (all of them: the service stops repeating the
    /// cancel once it knows the agent recorded it).
    fn cancel(&mut self, task_ids: Vec<Uuid>) -> anyhow::Result<()> {
        tracing::info!(tasks = task_ids.len(), "cancelling tasks");
        self.journal.cancel(&task_ids);
        let _ = self.broker.send(BrokerCommand::Cancel {
            task_ids: task_ids.clone(),
        });
        let _ = self.to_service.send(AgentMessage::Ack { task_ids }.into());
        Ok(())
    }

    /// Passes on a burst of broker events: their state changes in one
    /// message, then their results in one journal transaction.
    fn on_broker_events(&mut self, events: Vec<BrokerEvent>) -> anyhow::Result<()> {
        let (mut updates, mut results) = (Vec::new(), Vec::new());
        for event in events {
            match event {
                BrokerEvent::Running(task_ids) => updates.extend(
                    task_ids
                        .into_iter()
                        .map(|id| (id, hpfaas_protocol::task::TaskState::Running)),
                ),
                BrokerEvent::States(more) => updates.extend(more),
                BrokerEvent::Results(more) => results.extend(more),
                BrokerEvent::Load(load) => self.load = load,
                BrokerEvent::ManagerLost { block_id, why } => {
                    let mut event = EndpointEvent::new(
                        hpfaas_protocol::task::now_unix(),
                        EventKind::ManagerLost,
                        why,
                    );
                    event.block_id = block_id;
                    self.record_events(vec![event]);
                }
            }
        }
        if !updates.is_empty() {
            let _ = self
                .to_service
                .send(AgentMessage::States { updates }.into());
        }
        if !results.is_empty() {
            self.finish(results)?;
        }
        Ok(())
    }

    /// Grants the service credit for more tasks when a batch of room is free.
    fn grant_credit(&mut self) {
        if !self.connected {
            return;
        }
        let prefetch = self.spec.config.engine.prefetch_capacity;
        let window = credit::window(&self.load, prefetch, self.strategy_need);
        let tasks = credit::to_grant(window, self.journal.outstanding(), self.granted);
        if tasks > 0 {
            self.granted += tasks;
            let _ = self.to_service.send(AgentMessage::Credit { tasks }.into());
        }
    }

    /// Stores results, then sends them; they stay journaled until
    /// acknowledged. A result over the service's size limit is failed here,
    /// before it takes journal space or a frame.
    fn finish(&mut self, mut results: Vec<TaskResult>) -> anyhow::Result<()> {
        cap_results(&mut results, self.max_result_bytes);
        self.journal.store_results(&results);
        self.send_results(results);
        Ok(())
    }

    fn resend_results(&mut self) -> anyhow::Result<()> {
        let results = self.journal.unacknowledged()?;
        self.send_results(results);
        Ok(())
    }

    /// Sends results in frames of about [`RESULT_FRAME_BYTES`], each below
    /// the service's message limit, moving them (results carry user
    /// payloads; no copy on the result path but their encoding).
    fn send_results(&self, results: Vec<TaskResult>) {
        for frame in result_frames(results, RESULT_FRAME_BYTES, self.max_message_bytes) {
            let _ = self.to_service.send(Outgoing::Text(frame));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};

    use super::*;
    use blocks::fake::{FakeClock, FakeProvider, Queue};
    use blocks::record::{self, Record, Saved};

    #[test]
    fn the_agent_estimates_workers_by_the_managers_rule() {
        let engine = |text: &str| EndpointConfig::parse(text).unwrap().engine;
        assert_eq!(workers_estimate(&engine(""), 16), 16);
        let capped =
            "[engine]\nmax_workers_per_node = 8\navailable_accelerators = [\"0\", \"1\"]\n";
        assert_eq!(workers_estimate(&engine(capped), 16), 2);
        // A cpu list names the workers itself, whatever the node's cores.
        let listed = "[engine]\ncpu_affinity = \"list:0:1:2\"\n";
        assert_eq!(workers_estimate(&engine(listed), 16), 3);
    }

    fn spec_in(dir: &std::path::Path) -> AgentSpec {
        AgentSpec {
            name: "stop".into(),
            dir: dir.to_path_buf(),
            config: EndpointConfig::parse("").unwrap(),
            service_url: "http://127.0.0.1:9".into(),
            owner_token: None,
            reregister: false,
            hpfaas_exe: "hpfaas".into(),
        }
    }

    /// What a test looks at once the agent has stopped.
    struct Seen {
        /// The batch system's record of cancels.
        queue: Arc<Mutex<Queue>>,
        /// Closed once the broker task has ended.
        broker: mpsc::UnboundedSender<BrokerCommand>,
        /// Feeds the agent's service link; kept open, as a live link is.
        link: mpsc::UnboundedSender<LinkEvent>,
    }

    /// A running agent with a real broker on loopback, blocks over an
    /// in-memory provider, and one block (job 4242) a previous agent left.
    /// The link's news that it connected to a service speaking the oldest
    /// protocol (no flow control, no events).
    fn connected() -> LinkEvent {
        LinkEvent::Connected {
            heartbeat_period: 1.0,
            max_result_bytes: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            flow_control: false,
            events: false,
        }
    }

    fn running(spec: &AgentSpec) -> (Running<'_>, Seen) {
        let dir = spec.dir.as_path();
        record::save(
            dir,
            &Saved {
                next_id: 1,
                blocks: vec![Record {
                    block_id: "0".into(),
                    job_id: "4242".into(),
                    submitted_at: 0.0,
                }],
            },
        );
        let queue = Arc::new(Mutex::new(Queue::default()));
        let blocks = BlocksHandle::start(BlocksSetup {
            provider: Box::new(FakeProvider {
                queue: queue.clone(),
                clock: FakeClock::new(),
            }),
            scaling: Scaling {
                init_blocks: 0,
                min_blocks: 0,
                max_blocks: 1,
                slots_per_block: 1,
                parallelism: 1.0,
                max_idletime: Duration::from_secs(3600),
            },
            nodes: 1,
            manager_command: Box::new(|_| Vec::new()),
            job_prefix: "hpfaas-stop".into(),
            dir: dir.to_path_buf(),
            poll_period: Duration::from_secs(3600),
            keep_finished: 20,
        })
        .unwrap();
        let broker = broker::start(BrokerConfig::loopback(
            Duration::from_secs(1),
            Duration::from_secs(10),
            None,
        ))
        .unwrap();
        let (to_service, _) = mpsc::unbounded_channel();
        let (link, from_service) = mpsc::unbounded_channel();
        let journal = Journal::open(&dir.join("journal.log")).unwrap();
        let agent = Agent::new(spec, journal, to_service, broker.commands.clone(), 0);
        let seen = Seen {
            queue,
            broker: broker.commands.clone(),
            link,
        };
        let running = Running {
            agent,
            state: AgentState::default(),
            from_service,
            broker,
            blocks,
            link: None,
            exporter: None,
        };
        (running, seen)
    }

    fn cancels(seen: &Seen) -> Vec<Vec<String>> {
        seen.queue.lock().unwrap().cancels.clone()
    }

    fn stopping(dir: &std::path::Path) -> bool {
        AgentState::read(dir).is_some_and(|s| s.state == "stopping")
    }

    /// What a full stop leaves: the block cancelled and forgotten, the
    /// broker ended, `agent.json` saying so.
    fn assert_stopped_with_the_blocks(dir: &std::path::Path, seen: &Seen) {
        assert_eq!(cancels(seen), [["4242"]], "the blocks are cancelled");
        assert!(record::load(dir, "fake").blocks.is_empty());
        assert!(seen.broker.is_closed(), "the broker has stopped");
        assert!(stopping(dir));
    }

    #[tokio::test]
    async fn an_error_in_the_loop_still_stops_the_broker_and_cancels_the_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let (running, seen) = running(&spec);
        // A whole line the journal cannot read (a damaged disk, a stray
        // writer): re-sending results on connecting fails.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal.log"))
            .unwrap()
            .write_all(b"not a record\n")
            .unwrap();
        seen.link.send(connected()).unwrap();
        let outcome = running.run(std::future::pending()).await;

        let error = format!("{:#}", outcome.unwrap_err());
        assert!(error.contains("is corrupt at byte 0"), "{error}");
        assert_stopped_with_the_blocks(dir.path(), &seen);
    }

    /// Runs an agent (see [`running`]) asked at once to stop `how`.
    async fn stopped(how: Shutdown) -> (tempfile::TempDir, Seen) {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let (running, seen) = running(&spec);
        running.run(std::future::ready(how)).await.unwrap();
        (dir, seen)
    }

    #[tokio::test]
    async fn a_stop_stops_the_broker_and_cancels_the_blocks() {
        let (dir, seen) = stopped(Shutdown::Stop).await;
        assert_stopped_with_the_blocks(dir.path(), &seen);
    }

    #[tokio::test]
    async fn a_restart_leaves_the_blocks_recorded_for_the_next_agent() {
        let (dir, seen) = stopped(Shutdown::KeepBlocks).await;
        assert!(cancels(&seen).is_empty());
        let kept = record::load(dir.path(), "fake").blocks;
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].job_id, "4242");
        assert!(
            !seen.broker.is_closed(),
            "the broker is not told to stop (its managers stay)"
        );
        assert!(stopping(dir.path()));
    }

    #[tokio::test]
    async fn events_wait_for_a_service_that_said_it_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let journal = Journal::open(&dir.path().join("journal.log")).unwrap();
        let (to_service, mut sent) = mpsc::unbounded_channel();
        let (broker, _) = mpsc::unbounded_channel();
        let mut agent = Agent::new(&spec, journal, to_service, broker, 0);
        let event = |message: &str| {
            EndpointEvent::new(1.0, EventKind::BlockFailed, message).block("0", None)
        };
        // Not connected, or connected to an older service: nothing is sent.
        agent.record_events(vec![event("sbatch: error: invalid partition")]);
        assert!(sent.try_recv().is_err());
        // A service whose welcome said `events`: what waited goes first.
        agent.events_link = true;
        agent.send_events();
        agent.record_events(vec![event("later")]);
        let messages: Vec<String> = std::iter::from_fn(|| sent.try_recv().ok())
            .flat_map(|frame| match frame {
                Outgoing::Message(AgentMessage::Events { events }) => events,
                other => panic!("{other:?}"),
            })
            .map(|e| e.message)
            .collect();
        assert_eq!(messages, ["sbatch: error: invalid partition", "later"]);
    }

    /// agent.json once `pred` holds for it.
    async fn agent_json_when(
        dir: &std::path::Path,
        what: &str,
        pred: impl Fn(&AgentState) -> bool,
    ) -> AgentState {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = AgentState::read(dir).filter(|s| pred(s)) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn connecting_keeps_the_schedulers_error_in_agent_json() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path());
        let (running, seen) = running(&spec);
        seen.queue.lock().unwrap().refuse_status = Some("squeue: the controller is down".into());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let check = async {
            agent_json_when(dir.path(), "the scheduler's error", |s| {
                s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("controller is down"))
            })
            .await;
            seen.link.send(connected()).unwrap();
            let online = agent_json_when(dir.path(), "online", |s| s.state == "online").await;
            let _ = stop.send(Shutdown::KeepBlocks);
            online
        };
        let run = running.run(async { stopped.await.unwrap_or(Shutdown::KeepBlocks) });
        let (outcome, online) = tokio::join!(run, check);
        outcome.unwrap();
        let error = online.last_error.unwrap_or_default();
        assert!(error.contains("controller is down"), "{error:?}");
    }
}
