//! `agent.json` in the endpoint directory: how a running agent looks from
//! outside (pid, connection state, last error, where its metrics are). The agent rewrites it on
//! every change; `hpfaas endpoint start|stop|list|status` read it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::pid::pid_alive;

/// File name inside the endpoint directory.
pub const FILE: &str = "agent.json";

/// A running agent's public state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Process id of the agent.
    pub pid: u32,
    /// Endpoint id, once registered.
    pub endpoint_id: Option<String>,
    /// `starting`, `connecting`, `online` or `stopping`.
    pub state: String,
    /// Service URL.
    pub service_url: String,
    /// Blocks pending or running.
    pub active_blocks: u32,
    /// The last error worth showing (provider or connection).
    pub last_error: Option<String>,
    /// Every live block.
    #[serde(default)]
    pub blocks: Vec<crate::agent::blocks::BlockStatus>,
    /// Where the agent serves Prometheus `/metrics` (`[metrics] listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
}

impl AgentState {
    /// Writes the file atomically (0600).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        crate::private::write(&dir.join(FILE), &serde_json::to_vec_pretty(self)?, false)
    }

    /// Reads the file if present and well-formed.
    pub fn read(dir: &Path) -> Option<AgentState> {
        serde_json::from_slice(&std::fs::read(dir.join(FILE)).ok()?).ok()
    }

    /// True if the process named in the file is alive.
    pub fn is_alive(&self) -> bool {
        pid_alive(self.pid)
    }

    /// Removes the file.
    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(FILE));
    }
}
