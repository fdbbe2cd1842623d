//! The endpoint's blocks (pilot jobs). A dedicated thread owns the provider,
//! because scheduler commands block for up to `cmd_timeout`: it steps the
//! blocks' state ([`state::Blocks`]: what to submit or cancel, back-offs,
//! re-adoption from `blocks.json` via [`record`]) on the agent's request,
//! and reports blocks that ended so the broker can settle their tasks.

pub mod clock;
#[cfg(test)]
pub(crate) mod fake;
pub mod prune;
pub mod record;
pub mod state;

use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use hpfaas_protocol::endpoint::EndpointEvent;
use tokio::sync::mpsc;

use crate::broker::dispatch::Load;
use clock::SystemClock;
use state::Blocks;
pub use state::{BlockStatus, BlocksSetup, EndedBlock, ManagerCommand};

/// What the blocks thread reports.
#[derive(Debug)]
pub enum BlocksEvent {
    /// A block's job ended.
    Ended(EndedBlock),
    /// The blocks and the last provider error, after every step.
    Status {
        /// Every live block.
        blocks: Vec<BlockStatus>,
        /// The last scheduler error (e.g. sbatch's own message), if any.
        last_error: Option<String>,
        /// What happened in this step, oldest first.
        events: Vec<EndpointEvent>,
    },
}

/// The agent's handle on the blocks thread.
pub struct BlocksHandle {
    input: std_mpsc::Sender<Input>,
    /// Events from the thread.
    pub events: mpsc::UnboundedReceiver<BlocksEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Input {
    Step { outstanding: u64, load: Load },
    CancelAll,
}

impl BlocksHandle {
    /// Starts the thread; it re-adopts the jobs recorded in `blocks.json`.
    pub fn start(setup: BlocksSetup) -> std::io::Result<BlocksHandle> {
        let (input, rx) = std_mpsc::channel();
        let (tx, events) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("blocks".into())
            .spawn(move || run(Blocks::new(setup, Instant::now()), rx, tx))?;
        Ok(BlocksHandle {
            input,
            events,
            thread: Some(thread),
        })
    }

    /// Asks for one scaling step with the current work and load.
    pub fn step(&self, outstanding: u64, load: Load) {
        let _ = self.input.send(Input::Step { outstanding, load });
    }

    /// Cancels every block and waits for the thread to finish; returns
    /// the events of the cancels (and of steps not yet received).
    pub fn cancel_all(mut self) -> Vec<EndpointEvent> {
        let _ = self.input.send(Input::CancelAll);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let BlocksEvent::Status { events: more, .. } = event {
                events.extend(more);
            }
        }
        events
    }
}

/// The thread: steps the blocks until told to cancel them all, or until
/// the handle is dropped (then the blocks are left running and recorded,
/// for the next agent to re-adopt).
fn run(
    mut blocks: Blocks,
    input: std_mpsc::Receiver<Input>,
    events: mpsc::UnboundedSender<BlocksEvent>,
) {
    while let Ok(mut message) = input.recv() {
        // Steps queue up while a scheduler command is slow: act on the latest.
        while let Ok(next) = input.try_recv() {
            if matches!(message, Input::CancelAll) {
                break;
            }
            message = next;
        }
        match message {
            Input::Step { outstanding, load } => {
                for ended in blocks.step(outstanding, &load, &SystemClock) {
                    let _ = events.send(BlocksEvent::Ended(ended));
                }
                let _ = events.send(BlocksEvent::Status {
                    blocks: blocks.status(),
                    last_error: blocks.last_error().map(str::to_string),
                    events: blocks.take_events(),
                });
            }
            Input::CancelAll => {
                blocks.cancel_all(&SystemClock);
                let _ = events.send(BlocksEvent::Status {
                    blocks: blocks.status(),
                    last_error: blocks.last_error().map(str::to_string),
                    events: blocks.take_events(),
                });
                return;
            }
        }
    }
}
