//! `hpfaas manager --simulate`: managers that complete every task at once
//! with a successful `None` result instead of running it, to measure the
//! engine's own ceiling (broker, protocol, ZeroMQ) without Python or spawns.
//!
//! This module owns only the simulated task handling and running several
//! manager identities in one process. Registration, heartbeats,
//! re-registration and reporting are the real manager's ([`super::connect`],
//! [`super::BrokerLink`]), so the broker sees exactly what a real manager sends:
//! `Running`, then `Results`, for every batch of tasks, over the same
//! (encrypted or clear) ZeroMQ link.

use hpfaas_protocol::payload::STRATEGY_JSON;
use hpfaas_protocol::task::{now_unix, Outcome, TaskResult};
use tokio::sync::watch;

use super::{connect, manager_info, ManagerConfig, Order};

/// Simulated managers sharing one ZeroMQ context (and so its I/O thread):
/// each uses about five sockets, and the `zmq` crate cannot raise a
/// context's `ZMQ_MAX_SOCKETS` (default 1023), so more get more contexts.
const MANAGERS_PER_CONTEXT: usize = 128;

/// Runs `managers` simulated manager identities of `config`, each with its
/// own DEALER socket, registration and `config.workers` slots (default: the
/// cores available), until the broker shuts them down or SIGTERM.
pub async fn run(config: ManagerConfig, managers: u32) -> anyhow::Result<()> {
    anyhow::ensure!(managers > 0, "--simulate-managers must be at least 1");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let workers = config.workers.unwrap_or(cores).max(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut contexts = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    for i in 0..managers as usize {
        if i % MANAGERS_PER_CONTEXT == 0 {
            contexts.push(zmq::Context::new());
        }
        let context = contexts.last().expect("pushed above").clone();
        let rank = config.rank + i as u32;
        let info = manager_info(&config, cores, workers, rank);
        let config = config.clone();
        let stop = stop_rx.clone();
        running.spawn(async move { serve_one(&context, &config, info, stop).await });
    }
    tracing::info!(
        "simulating {managers} managers with {workers} slots each against {}",
        config.broker_url
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut first_error = None;
    loop {
        tokio::select! {
            joined = running.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    tracing::error!("a simulated manager stopped: {e:#}");
                    first_error.get_or_insert(e);
                }
                Some(Err(e)) => {
                    first_error.get_or_insert(anyhow::anyhow!("a simulated manager panicked: {e}"));
                }
            },
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: the simulated managers leave");
                let _ = stop_tx.send(true);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One simulated manager: registers, then completes each task on arrival.
async fn serve_one(
    context: &zmq::Context,
    config: &ManagerConfig,
    info: hpfaas_protocol::broker::ManagerInfo,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut bridge, mut link) = connect(context, config, info).await?;
    let mut tick = tokio::time::interval(link.period);
    let mut started = Vec::new();
    let mut results = Vec::new();
    let result = loop {
        tokio::select! {
            frames = bridge.incoming.recv() => match link.on_message(frames) {
                Err(e) => break Err(e),
                Ok(Some(Order::Tasks { tasks, .. })) => {
                    let completed_at = now_unix();
                    started.extend(tasks.iter().map(|t| t.task_id));
                    results.extend(tasks.into_iter().map(|t| TaskResult {
                        task_id: t.task_id,
                        outcome: Outcome::Success {
                            result: format!("{STRATEGY_JSON}null"),
                        },
                        output: None,
                        completed_at,
                        placement: None,
                    }));
                }
                // Every task finished on arrival, so none is held to cancel.
                Ok(Some(Order::Cancel(_)) | None) => {}
                Ok(Some(Order::Shutdown)) => break Ok(()),
            },
            _ = tick.tick() => {
                if let Err(e) = link.on_tick() {
                    break Err(e);
                }
            }
            _ = stop.changed() => {
                link.bye();
                break Ok(());
            }
        }
        link.flush(&mut started, &mut results);
    };
    bridge.sender.close();
    let _ = bridge.task.await;
    result
}
