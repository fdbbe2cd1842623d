//! Flow control towards the service: how many tasks the agent asks for.
//!
//! The service sends no more tasks than the agent has granted (docs/api.md,
//! "Flow control"), so the broker never holds more than a window of them.
//! The window covers what the managers can hold (workers and prefetch,
//! twice over, so the next tasks are on their way while these run), and
//! never less than what the block strategy needs to see to ask for every
//! block it may run (a fresh endpoint has no managers yet), nor less than a
//! floor that keeps credit round trips rare. Credit is granted in batches of
//! at least a quarter window, not per task, so throughput does not wait on
//! round trips.

use crate::broker::dispatch::Load;
use crate::strategy::Scaling;

/// The smallest window, tasks.
pub const FLOOR: u64 = 4096;
/// The largest window, tasks, whatever the configuration says.
pub const CAP: u64 = 1 << 20;

/// Tasks the block strategy must see outstanding to run `max_blocks`.
pub fn strategy_need(s: &Scaling) -> u64 {
    let slots = u64::from(s.max_blocks) * u64::from(s.slots_per_block.max(1));
    let parallelism = if s.parallelism.is_finite() && s.parallelism > 0.0 {
        s.parallelism.min(1.0)
    } else {
        1.0
    };
    ((slots as f64) / parallelism).ceil().min(CAP as f64) as u64
}

/// How many tasks the agent may hold (outstanding plus granted) now.
pub fn window(load: &Load, prefetch: u32, strategy_need: u64) -> u64 {
    let capacity = u64::from(load.total_workers) + u64::from(load.managers) * u64::from(prefetch);
    (2 * capacity).max(strategy_need).clamp(FLOOR, CAP)
}

/// Credit to grant now, holding `outstanding` tasks with `granted` credit
/// not yet used: none unless at least a quarter window is free.
pub fn to_grant(window: u64, outstanding: u64, granted: u64) -> u64 {
    let want = window.saturating_sub(outstanding.saturating_add(granted));
    if want >= (window / 4).max(1) {
        want
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_window_covers_capacity_the_strategy_and_a_floor() {
        let scaling = Scaling {
            init_blocks: 0,
            min_blocks: 0,
            max_blocks: 4,
            slots_per_block: 1000,
            parallelism: 0.5,
            max_idletime: Duration::from_secs(1),
        };
        assert_eq!(strategy_need(&scaling), 8000);
        let none = Load::default();
        // No managers yet: enough for the strategy to ask for every block.
        assert_eq!(window(&none, 8, strategy_need(&scaling)), FLOOR.max(8000));
        assert_eq!(window(&none, 8, 10), FLOOR);
        let busy = Load {
            managers: 100,
            total_workers: 6400,
            ..Load::default()
        };
        assert_eq!(window(&busy, 8, 10), 2 * (6400 + 800));
        let huge = Scaling {
            max_blocks: u32::MAX,
            slots_per_block: u32::MAX,
            parallelism: 0.0,
            ..scaling
        };
        assert_eq!(window(&none, 8, strategy_need(&huge)), CAP);
    }

    #[test]
    fn credit_goes_in_batches_never_past_the_window() {
        assert_eq!(to_grant(1024, 0, 0), 1024);
        // Everything granted or held: nothing more.
        assert_eq!(to_grant(1024, 1000, 24), 0);
        // A few tasks finished: not worth a message yet.
        assert_eq!(to_grant(1024, 900, 0), 0);
        // A quarter window free: all of it at once.
        assert_eq!(to_grant(1024, 700, 68), 256);
        assert_eq!(to_grant(1024, 5000, 0), 0);
        assert_eq!(to_grant(1024, u64::MAX, u64::MAX), 0);
    }
}
