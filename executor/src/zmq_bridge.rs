//! Bridges one blocking ZeroMQ socket to tokio.
//!
//! `zmq` sockets are neither thread-safe nor async, so each socket lives on
//! its own thread driving `zmq::poll`. Incoming multipart messages go to a
//! tokio channel; outgoing ones are queued on a std channel and the thread is
//! woken through an inproc PAIR socket, so no side ever polls on a timer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc as tokio_mpsc;

/// One ZeroMQ message: its frames.
pub type Multipart = Vec<Vec<u8>>;

enum Outgoing {
    Message(Multipart),
    Close,
}

/// Sending half: cheap to clone, usable from any thread or task.
#[derive(Clone)]
pub struct BridgeSender {
    queue: mpsc::Sender<Outgoing>,
    waker: Arc<Mutex<zmq::Socket>>,
    asleep: Arc<AtomicBool>,
}

impl BridgeSender {
    /// Queues a message; returns false once the bridge has stopped.
    pub fn send(&self, message: Multipart) -> bool {
        self.push(Outgoing::Message(message))
    }

    /// Asks the bridge thread to close the socket (after sending what is queued).
    pub fn close(&self) {
        self.push(Outgoing::Close);
    }

    fn push(&self, item: Outgoing) -> bool {
        if self.queue.send(item).is_err() {
            return false;
        }
        // Only wake the thread when it may be blocked in poll; a burst of
        // sends then costs one wake-up, not one per message.
        if self.asleep.swap(false, Ordering::AcqRel) {
            if let Ok(waker) = self.waker.lock() {
                let _ = waker.send(&[][..], zmq::DONTWAIT);
            }
        }
        true
    }
}

/// A running bridge: the sender, the receiver of incoming messages, and the thread.
pub struct Bridge {
    /// Queue messages for the socket.
    pub sender: BridgeSender,
    /// Messages that arrived on the socket.
    pub incoming: tokio_mpsc::UnboundedReceiver<Multipart>,
    /// The socket's thread; joins after [`BridgeSender::close`].
    pub thread: JoinHandle<()>,
}

/// Moves `socket` onto its own thread and returns the bridge to it.
pub fn spawn(context: &zmq::Context, socket: zmq::Socket, name: &str) -> std::io::Result<Bridge> {
    let address = format!("inproc://hpfaas-bridge-{}", uuid::Uuid::new_v4());
    let wake_rx = context.socket(zmq::PAIR).map_err(std::io::Error::other)?;
    wake_rx.bind(&address).map_err(std::io::Error::other)?;
    let wake_tx = context.socket(zmq::PAIR).map_err(std::io::Error::other)?;
    wake_tx.connect(&address).map_err(std::io::Error::other)?;
    let (queue_tx, queue_rx) = mpsc::channel();
    let (in_tx, in_rx) = tokio_mpsc::unbounded_channel();
    let asleep = Arc::new(AtomicBool::new(false));
    let thread_asleep = asleep.clone();
    let thread = std::thread::Builder::new()
        .name(format!("zmq-{name}"))
        .spawn(move || run(socket, wake_rx, queue_rx, in_tx, thread_asleep))?;
    Ok(Bridge {
        sender: BridgeSender {
            queue: queue_tx,
            waker: Arc::new(Mutex::new(wake_tx)),
            asleep,
        },
        incoming: in_rx,
        thread,
    })
}

fn run(
    socket: zmq::Socket,
    waker: zmq::Socket,
    queue: mpsc::Receiver<Outgoing>,
    incoming: tokio_mpsc::UnboundedSender<Multipart>,
    asleep: Arc<AtomicBool>,
) {
    loop {
        // Drain the outgoing queue before sleeping, then announce the sleep
        // and check once more so a message queued in between is not stranded.
        if !drain_outgoing(&socket, &queue) {
            return;
        }
        asleep.store(true, Ordering::Release);
        if !drain_outgoing(&socket, &queue) {
            return;
        }
        let mut items = [
            socket.as_poll_item(zmq::POLLIN),
            waker.as_poll_item(zmq::POLLIN),
        ];
        if zmq::poll(&mut items, -1).is_err() {
            continue; // EINTR: poll again.
        }
        let (socket_ready, waker_ready) = (items[0].is_readable(), items[1].is_readable());
        if waker_ready {
            while waker.recv_bytes(zmq::DONTWAIT).is_ok() {}
        }
        if socket_ready {
            while let Ok(message) = socket.recv_multipart(zmq::DONTWAIT) {
                if incoming.send(message).is_err() {
                    return; // Nobody listens any more.
                }
            }
        }
    }
}

/// Sends every queued message; false when the bridge should stop.
fn drain_outgoing(socket: &zmq::Socket, queue: &mpsc::Receiver<Outgoing>) -> bool {
    loop {
        match queue.try_recv() {
            Ok(Outgoing::Message(message)) => {
                if let Err(e) = socket.send_multipart(message, 0) {
                    // A ROUTER with router_mandatory reports vanished peers
                    // here; heartbeats declare them lost, so just note it.
                    tracing::debug!("zmq send failed: {e}");
                }
            }
            Ok(Outgoing::Close) | Err(mpsc::TryRecvError::Disconnected) => return false,
            Err(mpsc::TryRecvError::Empty) => return true,
        }
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
        dealer.connect(&endpoint).unwrap();
        let mut r = spawn(&ctx, router, "router").unwrap();
        let mut d = spawn(&ctx, dealer, "dealer").unwrap();
        for i in 0..1000u32 {
            assert!(d.sender.send(vec![i.to_be_bytes().to_vec()]));
        }
        let mut identity = Vec::new();
        for i in 0..1000u32 {
            let msg = r.incoming.recv().await.unwrap();
            assert_eq!(msg[1], i.to_be_bytes().to_vec());
            identity = msg[0].clone();
        }
        r.sender.send(vec![identity, b"pong".to_vec()]);
        assert_eq!(d.incoming.recv().await.unwrap(), vec![b"pong".to_vec()]);
        r.sender.close();
        d.sender.close();
        r.thread.join().unwrap();
        d.thread.join().unwrap();
    }
}
