//! Process ids read from files (`agent.json`, a local block's job id in
//! `blocks.json`): checked to name one process before any signal is sent.

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
