//! Where the blocks get the time, so their decisions can be driven by a
//! hand-advanced clock in tests.

use std::time::Instant;

use hpfaas_protocol::task::now_unix;

/// Where the blocks get the time: the system clock in the agent, a
/// hand-advanced one in tests.
pub trait Clock {
    /// Now, for durations.
    fn now(&self) -> Instant;
    /// Now in Unix seconds, for what records and the status show.
    fn unix(&self) -> f64;
}

/// The real time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix(&self) -> f64 {
        now_unix()
    }
}
