//! The endpoint side of hpfaas: the agent that runs on a login node, its
//! ZeroMQ broker, the managers that pilot jobs run, and the block strategy.

pub mod agent;
pub mod broker;
pub mod check;
pub mod config;
pub mod lifecycle;
pub mod log_rotation;
pub mod manager;
pub mod private;
pub mod strategy;
pub mod tls;
pub mod zmq_bridge;
