//! The manager: what a block runs on each node (`hpfaas manager`).
//!
//! It registers with the endpoint's broker, receives tasks up to its
//! capacity (workers + prefetch), runs Python tasks on warm worker processes
//! (one [`slot`] each) and shell tasks directly ([`shell`]), launches the MPI tasks
//! the broker makes it lead ([`mpi_task`]), and sends results and
//! state changes back in batches. A cancelled task is dropped from the queue,
//! or killed where it runs (its Python worker, or its command's process
//! group), and reported as failed with `TaskCancelled`. It exits when told to, on SIGTERM (after
//! saying goodbye), or when the broker has been silent past the threshold.

pub mod affinity;
pub mod block;
pub mod container;
pub mod job_env;
pub mod mpi_task;
pub mod runtime;
pub mod shell;
pub mod simulate;
pub mod slot;
pub mod worker;

use hpfaas_protocol::failure::SystemFailure;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hpfaas_protocol::broker::{decode, encode, BrokerMessage, ManagerInfo, ManagerMessage};
use hpfaas_protocol::mpi::{is_mpi_function, MpiNode};
use hpfaas_protocol::payload::{self, STRATEGY_SHELL_FUNCTION};
use hpfaas_protocol::task::{now_unix, ExceptionInfo, Outcome, Placement, TaskResult, TaskSpec};
use hpfaas_protocol::PROTOCOL_VERSION;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::zmq_bridge::{self, BridgeSender, Multipart};
use mpi_task::MpiSettings;
use shell::ShellSpec;
use slot::{Done, Finished, SlotHandle};
use worker::{PythonJob, WorkerSettings};

/// Everything a manager needs to know, from its command line.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Broker address, e.g. `tcp://10.0.0.1:55001`.
    pub broker_url: String,
    /// Block this manager belongs to.
    pub block_id: String,
    /// Batch-system job id of the block, if any.
    pub job_id: Option<String>,
    /// Worker slots; default: cores available.
    pub workers: Option<u32>,
    /// Tasks held beyond free workers.
    pub prefetch: u32,
    /// Interpreter for Python workers.
    pub worker_python: String,
    /// How long to wait for the broker's answer to registration.
    pub register_timeout: Duration,
    /// The block's walltime, counted from this manager's start; the broker
    /// stops giving work within its drain period of the end.
    pub walltime: Option<Duration>,
    /// `engine.cpu_affinity`: how workers are pinned.
    pub cpu_affinity: crate::config::cpu_affinity::CpuAffinity,
    /// `engine.available_accelerators`: one per worker; caps the worker count.
    pub accelerators: Vec<String>,
    /// Rank of this manager in its block (from [`block::Membership`]).
    pub rank: u32,
    /// `engine.mpi_launcher`: how this manager starts the MPI tasks it leads.
    pub mpi_launcher: crate::config::mpi_launcher::MpiLauncher,
    /// `engine.launcher_options`: extra arguments for that launcher.
    pub launcher_options: String,
    /// `engine.run_in_sandbox`: each task runs in `<sandbox_dir>/<task_id>/`
    /// (the agent gives `<endpoint dir>/tasks`).
    pub sandbox_dir: Option<std::path::PathBuf>,
    /// CurveZMQ keys for the broker link; `None` connects in clear (to a
    /// broker with `engine.encrypted = false`).
    pub curve: Option<crate::broker::curve::ClientKeys>,
    /// Private directory (0700, this user's) for the worker runtime and MPI
    /// hostfiles; the agent gives `<endpoint dir>/runtime`.
    pub runtime_base: std::path::PathBuf,
    /// `engine.shell_output_limit`: bytes of each output stream a shell or
    /// MPI task keeps.
    pub shell_output_limit: usize,
    /// `engine.container_type` and its URI and options: workers and shell
    /// tasks run in it.
    pub container: Option<crate::config::container::Container>,
    /// `engine.python_output_limit`: bytes of each output stream a Python
    /// task's worker keeps and returns with the result (0: none).
    pub python_output_limit: usize,
}

/// The batch-system job id from the job's environment, if any.
pub fn job_id_from_env() -> Option<String> {
    ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|id| !id.is_empty()))
}

/// A function as the manager runs it.
enum Function {
    Python(Arc<str>),
    Shell(Arc<ShellSpec>),
    /// A shell function run under the MPI launcher (`"mpi": true`).
    Mpi(Arc<ShellSpec>),
}

impl Function {
    fn parse(code: &str) -> Result<Function, String> {
        let buffers = payload::unpack(code).map_err(|e| format!("bad function code: {e}"))?;
        let first = buffers.first().ok_or("empty function code")?;
        match first.strip_prefix(STRATEGY_SHELL_FUNCTION) {
            Some(json) => {
                let spec = serde_json::from_str(json)
                    .map_err(|e| format!("bad shell function definition: {e}"))?;
                if is_mpi_function(code) {
                    Ok(Function::Mpi(Arc::new(spec)))
                } else {
                    Ok(Function::Shell(Arc::new(spec)))
                }
            }
            None => Ok(Function::Python(code.into())),
        }
    }
}

/// A duration the broker sent, kept within sane bounds: a forged or corrupt
/// frame must not crash the manager (NaN and infinities included).
fn seconds_from_broker(seconds: f64, least: f64) -> Duration {
    let bounded = if seconds.is_nan() {
        least
    } else {
        seconds.clamp(least, 1e6)
    };
    Duration::from_secs_f64(bounded)
}

/// Runs a manager until it is told to stop; an error explains why it could not run.
pub async fn run(config: ManagerConfig) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    // Refuse an impossible placement before registering; this reads the
    // CPUs this process may use, so any pinning of the manager comes first.
    let request = crate::config::cpu_affinity::WorkerRequest::new(
        config.cpu_affinity.clone(),
        config.workers,
        config.accelerators.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let placements = affinity::plan_here(&request, cores).map_err(anyhow::Error::msg)?;
    let workers = placements.len() as u32;
    let runtime_dir = runtime::install(&config.runtime_base)
        .map_err(|e| anyhow::anyhow!("cannot install the Python worker runtime: {e}"))?;
    let mpi = MpiSettings::new(
        config.mpi_launcher,
        &config.launcher_options,
        &config.runtime_base,
    )
    .map_err(anyhow::Error::msg)?;
    let info = manager_info(&config, cores, workers, config.rank);
    let context = zmq::Context::new();
    let (mut bridge, link) = connect(&context, &config, info).await?;
    tracing::info!(
        "manager {} registered with {} ({} workers, prefetch {})",
        link.info.manager_id,
        config.broker_url,
        workers,
        config.prefetch
    );

    let settings = Arc::new(WorkerSettings {
        python: config.worker_python.clone(),
        runtime_dir,
        count: workers,
        placements,
        sandbox_root: sandbox_root(config.sandbox_dir.as_deref())?,
        container: match config.container.clone() {
            Some(c) => Some(tokio::task::spawn_blocking(move || container::prepare(c)).await?),
            None => None,
        },
        output_limit: config.python_output_limit,
    });
    if let Some(Ok(c)) = settings.container.clone() {
        // Off the start's path: listing containers can take a second.
        std::thread::spawn(move || container::sweep(&c));
    }
    let mut manager = Manager::new(workers as usize, settings, link, mpi);
    manager.shell_output_limit = config.shell_output_limit;
    let result = manager.serve(&mut bridge.incoming).await;
    manager.shutdown().await;
    bridge.sender.close();
    let _ = bridge.task.await;
    result
}

/// Who this manager is, as it registers: `workers` slots on `cores` cores,
/// at `rank` in its block.
pub(crate) fn manager_info(
    config: &ManagerConfig,
    cores: u32,
    workers: u32,
    rank: u32,
) -> ManagerInfo {
    ManagerInfo {
        version: PROTOCOL_VERSION,
        manager_id: Uuid::new_v4().to_string(),
        block_id: config.block_id.clone(),
        job_id: config.job_id.clone().or_else(job_id_from_env),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        rank,
        pid: std::process::id(),
        cores,
        workers,
        prefetch: config.prefetch,
        deadline: config.walltime.map(|w| now_unix() + w.as_secs_f64()),
    }
}

/// Opens a DEALER on `context` to the broker (with CURVE keys when
/// configured), registers as `info` and waits for the answer; a refused
/// registration, key or handshake is an error naming the cause.
pub(crate) async fn connect(
    context: &zmq::Context,
    config: &ManagerConfig,
    info: ManagerInfo,
) -> anyhow::Result<(zmq_bridge::Bridge, BrokerLink)> {
    let dealer = context.socket(zmq::DEALER)?;
    dealer.set_identity(info.manager_id.as_bytes())?;
    dealer.set_linger(2000)?;
    dealer.set_sndhwm(0)?;
    dealer.set_rcvhwm(0)?;
    if let Some(keys) = &config.curve {
        crate::broker::curve::make_client(&dealer, keys)
            .context("cannot set the manager's CURVE keys")?;
    }
    let mut handshake = watch_handshake(context, &dealer)?;
    dealer
        .connect(&config.broker_url)
        .with_context(|| format!("cannot connect to the broker at {}", config.broker_url))?;
    let mut bridge = zmq_bridge::spawn(dealer, "manager")?;
    let out = bridge.sender.clone();
    send(&out, &ManagerMessage::Register(info.clone()));

    let wait = async {
        tokio::select! {
            answer = bridge.incoming.recv() => answer.context("the broker connection closed"),
            Some(why) = handshake.failures.recv() => Err(anyhow::anyhow!(
                "cannot register with the broker at {}: {why}",
                config.broker_url
            )),
        }
    };
    let answer = tokio::time::timeout(config.register_timeout, wait)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the broker at {} did not answer within {:?}{}",
                config.broker_url,
                config.register_timeout,
                if config.curve.is_some() {
                    " (is it the endpoint's broker, with this endpoint's CURVE keys?)"
                } else {
                    " (an encrypted endpoint's manager needs its keys: --curve-file or --endpoint)"
                }
            )
        })??;
    drop(handshake);
    let (period, threshold) = match decode_frame(&answer)? {
        BrokerMessage::Registered {
            heartbeat_period,
            heartbeat_threshold,
        } => (
            seconds_from_broker(heartbeat_period, 0.01),
            seconds_from_broker(heartbeat_threshold, 0.02),
        ),
        BrokerMessage::Refused { reason } => {
            anyhow::bail!("the broker refused this manager: {reason}")
        }
        other => anyhow::bail!("unexpected first message from the broker: {other:?}"),
    };
    let link = BrokerLink {
        out,
        info,
        period,
        threshold,
        last_heard: Instant::now(),
    };
    Ok((bridge, link))
}

/// A registered manager's side of the broker link: the frames that concern
/// the link itself (heartbeats, re-registration, refusal) are handled here,
/// so the real manager and [`simulate`] speak the protocol the same way.
pub(crate) struct BrokerLink {
    out: BridgeSender,
    info: ManagerInfo,
    /// Heartbeat interval the broker asked for.
    pub(crate) period: Duration,
    threshold: Duration,
    last_heard: Instant,
}

/// What a broker message asks of the manager's tasks.
pub(crate) enum Order {
    /// Run these tasks (an MPI task comes with the nodes it leads).
    Tasks {
        functions: Vec<hpfaas_protocol::task::FunctionCode>,
        tasks: Vec<TaskSpec>,
        mpi_nodes: Option<Vec<MpiNode>>,
    },
    /// Drop or kill these tasks.
    Cancel(Vec<Uuid>),
    /// The broker asked this manager to exit.
    Shutdown,
}

impl BrokerLink {
    /// Takes one message from the broker (`None`: the bridge closed); the
    /// order it carries for the tasks, if any. A refusal is an error.
    pub(crate) fn on_message(
        &mut self,
        frames: Option<Multipart>,
    ) -> anyhow::Result<Option<Order>> {
        let frames = frames.context("the broker connection closed")?;
        self.last_heard = Instant::now();
        let order = match decode_frame(&frames) {
            Ok(BrokerMessage::Tasks { functions, tasks }) => Order::Tasks {
                functions,
                tasks,
                mpi_nodes: None,
            },
            Ok(BrokerMessage::MpiTask {
                functions,
                task,
                nodes,
            }) => Order::Tasks {
                functions,
                tasks: vec![task],
                mpi_nodes: Some(nodes),
            },
            Ok(BrokerMessage::Cancel { task_ids }) => Order::Cancel(task_ids),
            Ok(BrokerMessage::Heartbeat | BrokerMessage::Registered { .. }) => return Ok(None),
            Ok(BrokerMessage::Reregister) => {
                tracing::info!("the broker restarted; registering again");
                send(&self.out, &ManagerMessage::Register(self.info.clone()));
                return Ok(None);
            }
            Ok(BrokerMessage::Shutdown) => {
                tracing::info!("the broker asked this manager to shut down");
                Order::Shutdown
            }
            Ok(BrokerMessage::Refused { reason }) => {
                anyhow::bail!("the broker dropped this manager: {reason}")
            }
            Err(e) => {
                tracing::warn!("ignoring an undecodable message from the broker: {e}");
                return Ok(None);
            }
        };
        Ok(Some(order))
    }

    /// Once per heartbeat period: an error once the broker has been silent
    /// past the threshold, else a heartbeat to it.
    pub(crate) fn on_tick(&self) -> anyhow::Result<()> {
        if self.last_heard.elapsed() > self.threshold {
            anyhow::bail!(
                "no word from the broker for {:.1} s; assuming the endpoint is gone",
                self.threshold.as_secs_f64()
            );
        }
        send(&self.out, &ManagerMessage::Heartbeat);
        Ok(())
    }

    /// Reports started tasks and results, each kind in one message, and
    /// empties both lists.
    pub(crate) fn flush(&self, started: &mut Vec<Uuid>, results: &mut Vec<TaskResult>) {
        if !started.is_empty() {
            let task_ids = std::mem::take(started);
            send(&self.out, &ManagerMessage::Running { task_ids });
        }
        if !results.is_empty() {
            let results = std::mem::take(results);
            send(&self.out, &ManagerMessage::Results { results });
        }
    }

    /// Tells the broker this manager is leaving.
    /// Fills in where this manager is: its block, its id and its node.
    pub(crate) fn place(&self, placement: &mut Placement) {
        placement.block_id.clone_from(&self.info.block_id);
        placement.manager_id.clone_from(&self.info.manager_id);
        placement.host.clone_from(&self.info.host);
    }

    pub(crate) fn bye(&self) {
        send(&self.out, &ManagerMessage::Bye);
    }
}

/// Where tasks' own directories go with `run_in_sandbox`, created and made
/// absolute (a task's `chdir` must not depend on the one before).
fn sandbox_root(dir: Option<&std::path::Path>) -> anyhow::Result<Option<std::path::PathBuf>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let root = std::env::current_dir()
        .context("cannot read the manager's working directory")?
        .join(dir);
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create the sandbox directory {}", root.display()))?;
    Ok(Some(root))
}

/// Handshake failures on the broker link, from a socket monitor, while
/// registering: a refused CURVE key fails at once instead of at the timeout.
struct HandshakeWatch {
    failures: mpsc::UnboundedReceiver<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for HandshakeWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn watch_handshake(context: &zmq::Context, socket: &zmq::Socket) -> anyhow::Result<HandshakeWatch> {
    let address = format!("inproc://hpfaas-monitor-{}", Uuid::new_v4());
    socket.monitor(
        &address,
        (zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32)
            | (zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32)
            | (zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32),
    )?;
    let monitor = context.socket(zmq::PAIR)?;
    monitor.set_linger(0)?;
    monitor.connect(&address)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("zmq-monitor".into())
        .spawn(move || {
            let mut unexplained = 0;
            while !flag.load(Ordering::Acquire) {
                if !matches!(monitor.poll(zmq::POLLIN, 200), Ok(n) if n > 0) {
                    continue;
                }
                let Ok(frames) = monitor.recv_multipart(0) else {
                    break;
                };
                let Some(head) = frames.first().filter(|h| h.len() >= 6) else {
                    continue;
                };
                let event = u16::from_le_bytes([head[0], head[1]]);
                let value = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
                let why = if event == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16 {
                    format!(
                        "the broker refused this manager's CURVE key (ZAP status {value}); \
                         a manager needs the endpoint's own keys (--curve-file or --endpoint)"
                    )
                } else if event == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16 {
                    "the handshake failed: the manager and the broker disagree on encryption \
                     (engine.encrypted, --curve-file) or on the broker's public key"
                        .to_string()
                } else {
                    // A dropped handshake can be a broker restart; a few in a
                    // row are a key the broker cannot read.
                    unexplained += 1;
                    if unexplained < 3 {
                        continue;
                    }
                    "the broker keeps dropping the handshake: wrong broker public key?".to_string()
                };
                if tx.send(why).is_err() {
                    break;
                }
            }
        })?;
    Ok(HandshakeWatch { failures: rx, stop })
}

fn send(out: &BridgeSender, message: &ManagerMessage) {
    out.send(vec![encode(message)]);
}

fn decode_frame(frames: &[Vec<u8>]) -> anyhow::Result<BrokerMessage> {
    let payload = frames.last().context("empty message from the broker")?;
    Ok(decode(payload)?)
}

/// How long a worker killed by SIGTERM waits for the manager's own SIGTERM.
const SIGTERM_GRACE: Duration = Duration::from_secs(1);

struct Manager {
    /// Results of workers killed by SIGTERM, held for [`SIGTERM_GRACE`].
    lost_to_sigterm: Vec<TaskResult>,
    /// When the held results are released, if any are held.
    sigterm_grace: Option<Instant>,
    link: BrokerLink,
    functions: HashMap<Uuid, Function>,
    queue: VecDeque<TaskSpec>,
    /// One handle per worker slot, by slot number.
    slots: Vec<SlotHandle>,
    /// Per-task working directories' parent (`run_in_sandbox`), if on.
    sandbox_root: Option<std::path::PathBuf>,
    /// Python tasks whose worker was killed to cancel them: whatever result
    /// comes back for them is reported as `TaskCancelled`.
    cancelled: HashSet<Uuid>,
    /// Running shell and MPI tasks; aborting one drops its command, which
    /// kills the command's process group.
    commands: HashMap<Uuid, tokio::task::AbortHandle>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    results: Vec<TaskResult>,
    started: Vec<Uuid>,
    /// How MPI tasks led by this manager are launched.
    mpi: Arc<MpiSettings>,
    /// Nodes of the MPI tasks this manager leads, until each starts.
    mpi_nodes: HashMap<Uuid, Vec<MpiNode>>,
    /// Bytes of each output stream a shell or MPI task keeps.
    shell_output_limit: usize,
    /// The container shell tasks run in, or why it cannot be used.
    container: Option<Result<Arc<crate::config::container::Container>, String>>,
}

impl Manager {
    fn new(
        workers: usize,
        settings: Arc<WorkerSettings>,
        link: BrokerLink,
        mpi: MpiSettings,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let sandbox_root = settings.sandbox_root.clone();
        let container = settings.container.clone().map(|c| c.map(Arc::new));
        let slots = (0..workers)
            .map(|slot| SlotHandle::spawn(slot, settings.clone(), done_tx.clone()))
            .collect();
        Manager {
            lost_to_sigterm: Vec::new(),
            sigterm_grace: None,
            link,
            functions: HashMap::new(),
            queue: VecDeque::new(),
            slots,
            sandbox_root,
            cancelled: HashSet::new(),
            commands: HashMap::new(),
            done_tx,
            done_rx,
            results: Vec::new(),
            started: Vec::new(),
            mpi: Arc::new(mpi),
            mpi_nodes: HashMap::new(),
            shell_output_limit: crate::config::DEFAULT_SHELL_OUTPUT_LIMIT,
            container,
        }
    }

    async fn serve(
        &mut self,
        incoming: &mut mpsc::UnboundedReceiver<Multipart>,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.link.period);
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                frames = incoming.recv() => match self.link.on_message(frames)? {
                    Some(Order::Tasks { functions, tasks, mpi_nodes }) => {
                        if let (Some(nodes), Some(task)) = (mpi_nodes, tasks.first()) {
                            self.mpi_nodes.insert(task.task_id, nodes);
                        }
                        self.accept(functions, tasks);
                    }
                    Some(Order::Cancel(task_ids)) => self.cancel(&task_ids),
                    Some(Order::Shutdown) => return Ok(()),
                    None => {}
                },
                Some(done) = self.done_rx.recv() => self.finish(done),
                _ = slot::sleep_until(self.sigterm_grace), if self.sigterm_grace.is_some() => {
                    // No SIGTERM for this manager: the workers' deaths were their own.
                    self.sigterm_grace = None;
                    self.results.append(&mut self.lost_to_sigterm);
                }
                _ = tick.tick() => self.link.on_tick()?,
                _ = sigterm.recv() => {
                    tracing::info!("SIGTERM: leaving");
                    // Tasks whose workers the same SIGTERM killed are the
                    // broker's to settle as ManagerLost (retried if allowed).
                    self.lost_to_sigterm.clear();
                    self.link.bye();
                    return Ok(());
                }
            }
            // Collect whatever else finished meanwhile, so one message carries
            // a whole burst of results instead of one each.
            while let Ok(done) = self.done_rx.try_recv() {
                self.finish(done);
            }
            self.start_tasks();
            self.link.flush(&mut self.started, &mut self.results);
        }
    }

    fn accept(
        &mut self,
        functions: Vec<hpfaas_protocol::task::FunctionCode>,
        tasks: Vec<TaskSpec>,
    ) {
        for f in functions {
            match Function::parse(&f.code) {
                Ok(function) => {
                    self.functions.insert(f.function_id, function);
                }
                Err(e) => tracing::warn!("function {}: {e}", f.function_id),
            }
        }
        self.queue.extend(tasks);
    }

    fn finish(&mut self, done: Done) {
        let Done {
            slot,
            mut result,
            killed_by_sigterm,
        } = done;
        match self.slots[slot].finished(result.task_id) {
            Finished::Ran { next: Some(next) } => self.started.push(next),
            Finished::Ran { next: None } | Finished::Waited => {}
            Finished::Unknown => return,
        }
        self.commands.remove(&result.task_id);
        if self.cancelled.remove(&result.task_id) {
            // Killing the worker shows up as WorkerLost, which the broker
            // would retry; the owner asked for the task to stop.
            let placement = result.placement.take();
            result = cancelled(result.task_id);
            result.placement = placement;
        }
        if let Some(placement) = &mut result.placement {
            self.link.place(placement);
        }
        if killed_by_sigterm && !matches!(result.outcome, Outcome::Success { .. }) {
            // A batch system ending the job signals every process at once:
            // the worker may die before this manager sees its own SIGTERM.
            // Wait briefly, so a block's end is reported as the block's.
            self.sigterm_grace
                .get_or_insert(Instant::now() + SIGTERM_GRACE);
            self.lost_to_sigterm.push(result);
            return;
        }
        self.results.push(result);
    }

    /// Drops queued tasks and kills running ones; every task this manager
    /// holds is reported (now, or when its killed worker reports) as
    /// `TaskCancelled`, so the broker frees its capacity.
    fn cancel(&mut self, task_ids: &[Uuid]) {
        let ids: HashSet<Uuid> = task_ids.iter().copied().collect();
        let mut dropped = Vec::new();
        self.queue.retain(|t| {
            let keep = !ids.contains(&t.task_id);
            if !keep {
                dropped.push(t.task_id);
            }
            keep
        });
        for id in dropped {
            self.mpi_nodes.remove(&id);
            self.results.push(cancelled(id));
        }
        for &id in &ids {
            // Ids neither queued nor running here finished already (their
            // result is on its way) or never came: nothing to do.
            let Some(slot) = self
                .slots
                .iter()
                .position(|s| s.running == Some(id))
                .or_else(|| self.slots.iter().position(|s| s.next == Some(id)))
            else {
                continue;
            };
            match self.commands.remove(&id) {
                Some(command) => {
                    command.abort();
                    self.slots[slot].running = None;
                    self.results.push(cancelled(id));
                }
                // Whatever result comes back for it is reported cancelled.
                None if self.cancelled.insert(id) => {
                    self.slots[slot].cancel(id);
                }
                None => {}
            }
        }
    }

    /// Hands each slot running a Python task, with none behind it, the next
    /// queued Python task.
    fn hand_next_tasks(&mut self) {
        for slot in 0..self.slots.len() {
            let Some(running) = self.slots[slot].running else {
                continue;
            };
            if self.slots[slot].next.is_some() || self.commands.contains_key(&running) {
                continue; // one behind already, or a shell/MPI command
            }
            let Some(head) = self.queue.front() else {
                return;
            };
            let Some(Function::Python(code)) = self.functions.get(&head.function_id) else {
                return; // start_tasks gives it a free slot
            };
            let job = PythonJob {
                code: code.clone(),
                spec: self.queue.pop_front().expect("not empty"),
            };
            let task_id = job.spec.task_id;
            if self.hand_to_slot(slot, job) {
                self.slots[slot].next = Some(task_id);
            }
        }
    }

    /// Sends a Python job to slot `slot`; false (and the task failed) if the
    /// slot has stopped.
    fn hand_to_slot(&mut self, slot: usize, job: PythonJob) -> bool {
        match self.slots[slot].hand(job) {
            Ok(()) => true,
            Err(failed) => {
                self.results.push(failed);
                false
            }
        }
    }

    fn start_tasks(&mut self) {
        while !self.queue.is_empty() {
            let Some(slot) = self.slots.iter().position(|s| s.running.is_none()) else {
                self.hand_next_tasks();
                return;
            };
            let spec = self.queue.pop_front().expect("not empty");
            let task_id = spec.task_id;
            match self.functions.get(&spec.function_id) {
                None => {
                    let e = ExceptionInfo::system(
                        SystemFailure::FunctionNotFound,
                        format!(
                            "the code of function {} did not reach this manager",
                            spec.function_id
                        ),
                    );
                    self.results.push(TaskResult::failed(task_id, e));
                    continue;
                }
                Some(Function::Python(code)) => {
                    let job = PythonJob {
                        spec,
                        code: code.clone(),
                    };
                    if !self.hand_to_slot(slot, job) {
                        continue;
                    }
                }
                Some(Function::Shell(shell_spec)) => {
                    let function = shell_spec.clone();
                    let Some(mut shell_spec) = self.shell_for_task(&function, &spec) else {
                        continue;
                    };
                    match &self.container {
                        None => {}
                        Some(Ok(c)) => shell_spec.container = Some(c.clone()),
                        Some(Err(e)) => {
                            let e = ExceptionInfo::system(
                                SystemFailure::ShellFunctionError,
                                format!("cannot run the command in its container: {e}"),
                            );
                            self.results.push(TaskResult::failed(task_id, e));
                            continue;
                        }
                    }
                    self.spawn_command(slot, task_id, async move {
                        shell::run(&shell_spec, &spec.payload).await
                    });
                }
                Some(Function::Mpi(shell_spec)) => {
                    // Only the broker's MpiTask carries nodes; an MPI task
                    // reaching a manager any other way cannot be placed.
                    let nodes = self.mpi_nodes.remove(&task_id).unwrap_or_default();
                    let function = shell_spec.clone();
                    let Some(shell_spec) = self.shell_for_task(&function, &spec) else {
                        continue;
                    };
                    let settings = self.mpi.clone();
                    self.spawn_command(slot, task_id, async move {
                        mpi_task::run(&shell_spec, &spec, &nodes, &settings).await
                    });
                }
            }
            self.slots[slot].running = Some(task_id);
            self.started.push(task_id);
        }
    }

    /// Runs a shell or MPI task's command on its own, reporting its outcome
    /// for `slot` when done; the command can be aborted through `commands`.
    fn spawn_command(
        &mut self,
        slot: usize,
        task_id: Uuid,
        run: impl std::future::Future<Output = Outcome> + Send + 'static,
    ) {
        let done = self.done_tx.clone();
        let placement = Placement {
            started_at: now_unix(),
            worker: slot as u32,
            ..Placement::default()
        };
        let command = tokio::spawn(async move {
            let outcome = run.await;
            let result = TaskResult {
                task_id,
                outcome,
                output: None,
                completed_at: now_unix(),
                placement: Some(Box::new(placement)),
            };
            let _ = done.send(Done::new(slot, result));
        });
        self.commands.insert(task_id, command.abort_handle());
    }

    /// A shell or MPI function's spec for one task: the task's own walltime
    /// applies too (the smaller wins), and with `run_in_sandbox` it runs in
    /// the task's directory. `None` (the task failed) if that cannot be made.
    fn shell_for_task(&mut self, shell_spec: &ShellSpec, spec: &TaskSpec) -> Option<ShellSpec> {
        let cwd = match &self.sandbox_root {
            Some(root) => match worker::sandbox_dir(root, spec.task_id) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    let e = ExceptionInfo::system(
                        SystemFailure::SandboxError,
                        format!("cannot create the task's sandbox directory: {e}"),
                    );
                    self.results.push(TaskResult::failed(spec.task_id, e));
                    return None;
                }
            },
            None => None,
        };
        let mut for_task = shell_spec.for_task(spec.walltime().ok().flatten(), cwd);
        for_task.output_limit = self.shell_output_limit;
        Some(for_task)
    }

    async fn shutdown(&mut self) {
        // Every slot is closed before any is awaited, so they stop together.
        let serving: Vec<_> = self.slots.drain(..).map(SlotHandle::close).collect();
        for task in serving {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// The result reported for a task cancelled on this manager.
fn cancelled(task_id: Uuid) -> TaskResult {
    TaskResult::failed(
        task_id,
        ExceptionInfo::system(
            SystemFailure::TaskCancelled,
            "the task was cancelled by its owner and stopped on the endpoint",
        ),
    )
}
