//! Bridges one ZeroMQ socket to tokio.
//!
//! `zmq` sockets are not async, but each exposes a descriptor (`ZMQ_FD`)
//! that becomes readable whenever its events may have changed. A tokio task
//! owns the socket, waits on that descriptor in the runtime's reactor and on
//! a channel of outgoing messages, and hands incoming multipart messages to
//! another channel. No thread of ours sits between the runtime and libzmq's
//! I/O thread, so a message crosses no extra thread wake-up on either side.

use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// One ZeroMQ message: its frames.
pub type Multipart = Vec<Vec<u8>>;

/// Most messages taken off the socket before other tasks get a turn.
const RECV_BURST: usize = 256;

enum Outgoing {
    Message(Multipart),
    Close,
}

/// Sending half: cheap to clone, usable from any thread or task.
#[derive(Clone)]
pub struct BridgeSender {
    queue: mpsc::UnboundedSender<Outgoing>,
}

impl BridgeSender {
    /// Queues a message; returns false once the bridge has stopped.
    pub fn send(&self, message: Multipart) -> bool {
        self.queue.send(Outgoing::Message(message)).is_ok()
    }

    /// Asks the bridge to close the socket (after sending what is queued).
    pub fn close(&self) {
        let _ = self.queue.send(Outgoing::Close);
    }
}

/// A running bridge: the sender, the receiver of incoming messages, and its task.
pub struct Bridge {
    /// Queue messages for the socket.
    pub sender: BridgeSender,
    /// Messages that arrived on the socket.
    pub incoming: mpsc::UnboundedReceiver<Multipart>,
    /// The socket's task; ends after [`BridgeSender::close`].
    pub task: tokio::task::JoinHandle<()>,
}

/// The socket's `ZMQ_FD`, registered with the reactor; libzmq owns and closes it.
struct SignalFd(RawFd);

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Moves `socket` into a task on the current tokio runtime and returns the bridge to it.
pub fn spawn(socket: zmq::Socket, name: &str) -> std::io::Result<Bridge> {
    let fd = socket.get_fd().map_err(std::io::Error::other)?;
    // SAFETY: the descriptor belongs to `socket`, which `run` owns and
    // drops only after this registration.
    let signal =
        unsafe { AsyncFd::register_with_interest(SignalFd(fd), tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::other)?;
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(socket, signal, queue_rx, in_tx, name.to_string()));
    Ok(Bridge {
        sender: BridgeSender { queue: queue_tx },
        incoming: in_rx,
        task,
    })
}

/// Drives the socket until it is closed or nobody listens; then
/// deregisters its descriptor while libzmq still has it open, and closes it.
async fn run(
    socket: zmq::Socket,
    signal: AsyncFd<SignalFd>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    incoming: mpsc::UnboundedSender<Multipart>,
    name: String,
) {
    // The socket is owned here and only borrowed between awaits: it is
    // `Send` but not `Sync`, so no reference to it may cross an await.
    'serve: loop {
        loop {
            match queue.try_recv() {
                Ok(Outgoing::Message(message)) => send(&socket, message, &name),
                Ok(Outgoing::Close) | Err(mpsc::error::TryRecvError::Disconnected) => break 'serve,
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        // `ZMQ_FD` is edge-triggered: it signals only after `ZMQ_EVENTS` has
        // been read, so every turn reads it (a send may have consumed the
        // signal of a message that arrived meanwhile) before waiting again.
        let mut taken = 0;
        while taken < RECV_BURST && readable(&socket) {
            match socket.recv_multipart(zmq::DONTWAIT) {
                Ok(message) => {
                    if incoming.send(message).is_err() {
                        break 'serve; // Nobody listens any more.
                    }
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        if taken == RECV_BURST {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            ready = signal.readable() => match ready {
                // Cleared before `ZMQ_EVENTS` is read again at the top, so a
                // signal that comes after that read wakes us once more.
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!("zmq-{name}: cannot wait on the socket: {e}");
                    break 'serve;
                }
            },
            item = queue.recv() => match item {
                Some(Outgoing::Message(message)) => send(&socket, message, &name),
                Some(Outgoing::Close) | None => break 'serve,
            },
        }
    }
    drop(signal);
    drop(socket);
}

fn readable(socket: &zmq::Socket) -> bool {
    socket
        .get_events()
        .is_ok_and(|events| events.contains(zmq::POLLIN))
}

fn send(socket: &zmq::Socket, message: Multipart, name: &str) {
    // The sockets have no high-water mark, so a send never has to wait; a
    // ROUTER with router_mandatory reports vanished peers here, and
    // heartbeats declare them lost, so just note it.
    if let Err(e) = socket.send_multipart(message, zmq::DONTWAIT) {
        tracing::debug!("zmq-{name}: send failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_cross_both_ways() {
        let ctx = zmq::Context::new();
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        dealer.set_sndhwm(0).unwrap();
        dealer.connect(&endpoint).unwrap();
        let mut r = spawn(router, "router").unwrap();
        let mut d = spawn(dealer, "dealer").unwrap();
        // More than one receive burst, so the bridge must come back for the rest.
        let count = 3 * RECV_BURST as u32 + 7;
        for i in 0..count {
            assert!(d.sender.send(vec![i.to_be_bytes().to_vec()]));
        }
        let mut identity = Vec::new();
        for i in 0..count {
            let msg = r.incoming.recv().await.unwrap();
            assert_eq!(msg[1], i.to_be_bytes().to_vec());
            identity = msg[0].clone();
        }
        // Replies interleaved with requests: each side sends while it receives.
        for i in 0..100u32 {
            r.sender
                .send(vec![identity.clone(), i.to_be_bytes().to_vec()]);
            d.sender.send(vec![i.to_be_bytes().to_vec()]);
        }
        for i in 0..100u32 {
            assert_eq!(
                d.incoming.recv().await.unwrap(),
                vec![i.to_be_bytes().to_vec()]
            );
            assert_eq!(
                r.incoming.recv().await.unwrap()[1],
                i.to_be_bytes().to_vec()
            );
        }
        r.sender.close();
        d.sender.close();
        r.task.await.unwrap();
        d.task.await.unwrap();
        assert!(
            !r.sender.send(vec![b"late".to_vec()]),
            "a closed bridge refuses"
        );
    }
}
