//! `agent.json` in the endpoint directory: how a running agent looks from
//! outside (pid, connection state, last error). The agent rewrites it on
//! every change; `hpfaas endpoint start|stop|list|status` read it.

use std::path::Path;

use serde::{Deserialize, Serialize};

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

/// `pid` as kill(2) takes it, if it can name one process other than init.
/// A pid read from a file is checked first: as an `i32`, 0 and anything
/// above `i32::MAX` (negative) would signal a whole process group or every
/// process the user may signal, and 1 is init.
pub fn signalable(pid: u32) -> Option<i32> {
    i32::try_from(pid).ok().filter(|p| *p > 1)
}

/// Sends `signal` to the one process `pid`; refuses a pid that is not one
/// ([`signalable`]).
pub fn send_signal(pid: u32, signal: i32) -> anyhow::Result<()> {
    let Some(target) = signalable(pid) else {
        anyhow::bail!("{pid} is not the process id of an agent; refusing to signal it");
    };
    // SAFETY: kill(2) on a single, positive pid.
    if unsafe { libc::kill(target, signal) } != 0 {
        return Err(std::io::Error::last_os_error())
            .map_err(|e| anyhow::anyhow!("cannot signal process {pid}: {e}"));
    }
    Ok(())
}

/// True if process `pid` is alive: a killed process not yet reaped by its
/// parent is a zombie, and not alive.
pub fn pid_alive(pid: u32) -> bool {
    let Some(target) = signalable(pid) else {
        return false;
    };
    // SAFETY: signal 0 on a single, positive pid performs only the existence
    // and permission check.
    if unsafe { libc::kill(target, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name, which may hold spaces.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    state != Some('Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pids_of_single_processes_other_than_init_are_signalled() {
        for bad in [0, 1, i32::MAX as u32 + 1, u32::MAX] {
            assert_eq!(signalable(bad), None, "{bad}");
            assert!(!pid_alive(bad), "{bad}");
            assert!(send_signal(bad, 0).is_err(), "{bad}");
        }
        assert_eq!(
            signalable(std::process::id()),
            Some(std::process::id() as i32)
        );
        assert!(pid_alive(std::process::id()));
        send_signal(std::process::id(), 0).unwrap();
    }
}
