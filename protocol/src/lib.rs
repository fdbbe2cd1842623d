//! Message types shared by every hop of hpfaas.
//!
//! * [`payload`]: Globus Compute's buffer framing and strategy identifiers,
//!   the one wire format for functions, arguments and results.
//! * [`task`]: task states, task specifications and outcomes.
//! * [`endpoint`]: what the service and an endpoint agent say over the
//!   agent's WebSocket (JSON text frames).
//! * [`broker`]: what the endpoint's ZeroMQ broker and a manager say
//!   (MessagePack frames).
//! * [`mpi`]: MPI functions' resource specifications and placements.
//! * [`failure`]: the names of failures hpfaas reports in place of a result.
//! * [`priority`]: task priorities and the ordering rule of every queue.
//!
//! Every conversation opens with a message carrying [`PROTOCOL_VERSION`], so a
//! mismatched peer is refused with a clear error instead of misreading frames.

pub mod broker;
pub mod endpoint;
pub mod failure;
pub mod mpi;
pub mod payload;
pub mod priority;
pub mod task;

/// Version of the messages in this crate; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of hpfaas itself, as reported by `GET /v2/version`.
pub const HPFAAS_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Error decoding a frame received from a peer.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame was not valid JSON of the expected shape.
    #[error("malformed JSON message: {0}")]
    Json(#[from] serde_json::Error),
    /// The frame was not valid MessagePack of the expected shape.
    #[error("malformed MessagePack message: {0}")]
    MsgPack(#[from] rmp_serde::decode::Error),
}

/// Refusal text for a peer speaking another protocol version.
pub fn version_mismatch(peer_kind: &str, peer_version: u32) -> String {
    format!(
        "protocol version mismatch: the {peer_kind} speaks version {peer_version}, \
         this side speaks version {PROTOCOL_VERSION} (hpfaas {HPFAAS_VERSION}); \
         run the same hpfaas release on both sides"
    )
}
