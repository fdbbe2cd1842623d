//! The endpoint's ZeroMQ broker: a ROUTER socket that managers connect to.
//!
//! Managers register, the broker pushes tasks to them while they have free
//! capacity ([`dispatch::Dispatcher`]), collects results, and declares a
//! manager lost after `heartbeat_threshold` of silence (its tasks are then
//! retried or failed with `ManagerLost`). MPI tasks get whole nodes of one
//! block ([`placement`]). The agent talks to the broker through
//! [`BrokerCommand`]s and [`BrokerEvent`]s. The link is CurveZMQ-encrypted
//! by default, with a ZAP handler admitting only the endpoint's client key
//! ([`curve`]). Where it listens is recorded in the endpoint directory
//! ([`record`]).

pub mod address;
pub mod curve;
pub mod dispatch;
pub mod placement;
pub mod record;

use std::time::{Duration, Instant};

use hpfaas_protocol::broker::{decode, encode_sized, BrokerMessage, ManagerMessage};
use hpfaas_protocol::task::{now_unix, FunctionCode, TaskResult, TaskSpec, TaskState};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::zmq_bridge::{self, BridgeSender, Multipart};
use dispatch::{Dispatcher, Identity, Load};

/// How the broker listens and judges liveness.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Interface address to bind (e.g. `127.0.0.1`, `0.0.0.0`), or a whole
    /// `ipc://` endpoint (a Unix socket; no port).
    pub address: String,
    /// Inclusive port range to bind in; any free port when `None`.
    pub port_range: Option<(u16, u16)>,
    /// Port to try first: the one a previous run of this endpoint used, so
    /// managers of blocks that outlived a restart find the broker again.
    pub preferred_port: Option<u16>,
    /// Heartbeat interval towards managers.
    pub heartbeat_period: Duration,
    /// Silence after which a manager is lost.
    pub heartbeat_threshold: Duration,
    /// Re-runs after `ManagerLost`/`WorkerLost`.
    pub max_retries: u32,
    /// Seconds before a block's walltime ends when it stops getting work.
    pub drain_period: f64,
    /// Nodes per block as configured: an MPI task needing more fails at once.
    pub nodes_per_block: u32,
    /// Walltime of the endpoint's blocks, when a batch system enforces one.
    pub block_walltime: Option<Duration>,
    /// CurveZMQ keys: the broker encrypts the link and admits only the
    /// endpoint's client keys; `None` (`engine.encrypted = false`) runs in clear.
    pub curve: Option<curve::ServerKeys>,
}

impl BrokerConfig {
    /// A broker on 127.0.0.1 (any free port) with no retries, drain period
    /// or walltime: what benchmarks and tests that drive it directly need.
    pub fn loopback(
        heartbeat_period: Duration,
        heartbeat_threshold: Duration,
        curve: Option<curve::ServerKeys>,
    ) -> Self {
        BrokerConfig {
            address: "127.0.0.1".into(),
            port_range: None,
            preferred_port: None,
            heartbeat_period,
            heartbeat_threshold,
            max_retries: 0,
            drain_period: 0.0,
            nodes_per_block: 1,
            block_walltime: None,
            curve,
        }
    }
}

/// What the agent asks of the broker.
#[derive(Debug)]
pub enum BrokerCommand {
    /// Run these tasks.
    Submit {
        /// Code of functions the tasks use (may repeat known ones).
        functions: Vec<FunctionCode>,
        /// The tasks.
        tasks: Vec<TaskSpec>,
    },
    /// A block's job ended: its managers are gone even if they did not say so.
    BlockEnded {
        /// The block.
        block_id: String,
        /// How it ended, for the `ManagerLost` message.
        reason: String,
    },
    /// The owner cancelled these tasks: drop them if queued, have their
    /// managers kill them if running.
    Cancel {
        /// Cancelled task ids.
        task_ids: Vec<Uuid>,
    },
    /// Tell every manager to exit, then stop.
    Shutdown,
}

/// What the broker tells the agent.
#[derive(Debug)]
pub enum BrokerEvent {
    /// Tasks started on workers.
    Running(Vec<Uuid>),
    /// Tasks finished (or failed for good).
    Results(Vec<TaskResult>),
    /// Other state changes (`waiting-for-nodes` of MPI tasks).
    States(Vec<(Uuid, TaskState)>),
    /// Periodic load figures.
    Load(Load),
    /// A manager stopped answering and was given up.
    ManagerLost {
        /// Its block.
        block_id: Option<String>,
        /// Why, in words.
        why: String,
    },
}

/// A running broker.
pub struct BrokerHandle {
    /// Address managers connect to, e.g. `tcp://127.0.0.1:55001`.
    pub url: String,
    /// Commands to the broker.
    pub commands: mpsc::UnboundedSender<BrokerCommand>,
    /// Events from the broker.
    pub events: mpsc::UnboundedReceiver<BrokerEvent>,
    /// The broker task; ends after [`BrokerCommand::Shutdown`].
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the ROUTER socket and starts the broker task.
pub fn start(config: BrokerConfig) -> anyhow::Result<BrokerHandle> {
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER)?;
    router.set_router_mandatory(true)?;
    // Capacity already bounds what is in flight; a high-water mark would only
    // drop or block messages that are within it.
    router.set_sndhwm(0)?;
    router.set_rcvhwm(0)?;
    router.set_linger(1000)?;
    // The ZAP handler must be bound before the socket accepts connections.
    let zap = match &config.curve {
        Some(keys) => {
            let zap = curve::start_zap(&context, keys.clients.clone())?;
            curve::make_server(&router, keys)?;
            Some(zap)
        }
        None => None,
    };
    let url = bind(&router, &config)?;
    let bridge = zmq_bridge::spawn(router, "broker")?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(config, bridge, cmd_rx, ev_tx, (context, zap)));
    Ok(BrokerHandle {
        url,
        commands: cmd_tx,
        events: ev_rx,
        task,
    })
}

fn bind(router: &zmq::Socket, config: &BrokerConfig) -> anyhow::Result<String> {
    let addr = &config.address;
    if addr.starts_with("ipc://") {
        // libzmq replaces a socket file a previous run left behind.
        router
            .bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        return Ok(addr.clone());
    }
    let in_range = |p: u16| {
        config
            .port_range
            .is_none_or(|(lo, hi)| (lo..=hi).contains(&p))
    };
    let reused = config
        .preferred_port
        .filter(|&p| in_range(p))
        .is_some_and(|p| router.bind(&format!("tcp://{addr}:{p}")).is_ok());
    match config.port_range {
        _ if reused => {}
        None => router.bind(&format!("tcp://{addr}:*"))?,
        Some((lo, hi)) => {
            let free = (lo..=hi).find(|port| router.bind(&format!("tcp://{addr}:{port}")).is_ok());
            if free.is_none() {
                anyhow::bail!(
                    "no free port for the broker on {addr} in engine.port_range {lo}-{hi}"
                );
            }
        }
    }
    let endpoint = router
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("broker endpoint is not UTF-8"))?;
    Ok(endpoint)
}

struct Broker {
    dispatcher: Dispatcher,
    out: BridgeSender,
    events: mpsc::UnboundedSender<BrokerEvent>,
    config: BrokerConfig,
}

async fn run(
    config: BrokerConfig,
    mut bridge: zmq_bridge::Bridge,
    mut commands: mpsc::UnboundedReceiver<BrokerCommand>,
    events: mpsc::UnboundedSender<BrokerEvent>,
    _keep: (zmq::Context, Option<curve::ZapHandler>),
) {
    let mut broker = Broker {
        dispatcher: Dispatcher::new(
            config.max_retries,
            config.heartbeat_threshold,
            config.drain_period,
        )
        .with_nodes_per_block(config.nodes_per_block)
        .with_block_walltime(config.block_walltime.map(|w| w.as_secs_f64())),
        out: bridge.sender.clone(),
        events,
        config: config.clone(),
    };
    let mut tick = tokio::time::interval(config.heartbeat_period);
    loop {
        tokio::select! {
            Some(message) = bridge.incoming.recv() => broker.on_frame(message),
            command = commands.recv() => match command {
                Some(BrokerCommand::Submit { functions, tasks }) => {
                    broker.dispatcher.advance_clock(now_unix());
                    let refused = broker.dispatcher.submit(functions, tasks);
                    broker.report(refused);
                }
                Some(BrokerCommand::BlockEnded { block_id, reason }) => broker.block_ended(&block_id, &reason),
                Some(BrokerCommand::Cancel { task_ids }) => {
                    for (identity, message) in broker.dispatcher.cancel(&task_ids) {
                        broker.send(identity, &message);
                    }
                }
                Some(BrokerCommand::Shutdown) | None => break,
            },
            _ = tick.tick() => broker.on_tick(),
        }
        broker.dispatch();
    }
    for identity in broker.dispatcher.all_managers() {
        broker.send(identity, &BrokerMessage::Shutdown);
    }
    bridge.sender.close();
    let _ = bridge.task.await;
}

impl Broker {
    fn send(&self, identity: Identity, message: &BrokerMessage) {
        self.out
            .send(vec![identity, encode_sized(message, message.size_hint())]);
    }

    fn report(&self, results: Vec<TaskResult>) {
        if !results.is_empty() {
            let _ = self.events.send(BrokerEvent::Results(results));
        }
    }

    fn dispatch(&mut self) {
        for (identity, message) in self.dispatcher.dispatch(now_unix()) {
            self.send(identity, &message);
        }
        let states = self.dispatcher.take_states();
        if !states.is_empty() {
            let _ = self.events.send(BrokerEvent::States(states));
        }
    }

    fn on_frame(&mut self, mut frames: Multipart) {
        if frames.len() != 2 {
            tracing::warn!(
                "dropping a message with {} frames from a manager",
                frames.len()
            );
            return;
        }
        let payload = frames.pop().unwrap_or_default();
        let identity = frames.pop().unwrap_or_default();
        let message: ManagerMessage = match decode(&payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("dropping an undecodable message from a manager: {e}");
                return;
            }
        };
        let now = Instant::now();
        if let ManagerMessage::Register(info) = message {
            let (id, block, host) = (
                info.manager_id.clone(),
                info.block_id.clone(),
                info.host.clone(),
            );
            match self.dispatcher.register(identity.clone(), info, now) {
                Ok(()) => {
                    tracing::info!("manager {id} of block {block} on {host} registered");
                    self.send(
                        identity,
                        &BrokerMessage::Registered {
                            heartbeat_period: self.config.heartbeat_period.as_secs_f64(),
                            heartbeat_threshold: self.config.heartbeat_threshold.as_secs_f64(),
                        },
                    );
                }
                Err(reason) => {
                    tracing::warn!("refused manager {id} of block {block}: {reason}");
                    self.send(identity, &BrokerMessage::Refused { reason });
                }
            }
            return;
        }
        if !self.dispatcher.is_registered(&identity) {
            // The agent restarted (or declared this manager lost): let the
            // manager register again instead of abandoning a live block.
            self.send(identity, &BrokerMessage::Reregister);
            return;
        }
        self.dispatcher.seen(&identity, now);
        match message {
            ManagerMessage::Register(_) | ManagerMessage::Heartbeat => {}
            ManagerMessage::Running { task_ids } => {
                let _ = self.events.send(BrokerEvent::Running(task_ids));
            }
            ManagerMessage::Results { results } => {
                let done = self.dispatcher.complete(&identity, results);
                self.report(done);
            }
            ManagerMessage::Bye => {
                let failed = self
                    .dispatcher
                    .remove_manager(&identity, "the manager exited");
                self.report(failed);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        for identity in self.dispatcher.silent_managers(now) {
            let why = format!(
                "no heartbeat for {:.1} s (heartbeat_threshold)",
                self.config.heartbeat_threshold.as_secs_f64()
            );
            tracing::warn!("declaring a manager lost: {why}");
            let block_id = self.dispatcher.manager_block(&identity);
            let _ = self.events.send(BrokerEvent::ManagerLost {
                block_id,
                why: why.clone(),
            });
            let failed = self.dispatcher.remove_manager(&identity, &why);
            self.report(failed);
        }
        for identity in self.dispatcher.all_managers() {
            self.send(identity, &BrokerMessage::Heartbeat);
        }
        let _ = self
            .events
            .send(BrokerEvent::Load(self.dispatcher.load(now_unix())));
    }

    fn block_ended(&mut self, block_id: &str, reason: &str) {
        for identity in self.dispatcher.managers_of_block(block_id) {
            let failed = self
                .dispatcher
                .remove_manager(&identity, &format!("its block ended ({reason})"));
            self.report(failed);
        }
    }
}
