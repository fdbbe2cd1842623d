//! How many blocks to run: a pure function of the blocks the endpoint has,
//! the work outstanding, the configuration and the time, so it is tested
//! without any scheduler and cannot grow into a loop that owns everything.

use std::time::{Duration, Instant};

/// The scaling keys of `[provider]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// Blocks started when the endpoint starts.
    pub init_blocks: u32,
    /// Blocks kept at all times.
    pub min_blocks: u32,
    /// Most blocks at once (draining ones included).
    pub max_blocks: u32,
    /// Task slots one block brings (workers + prefetch per manager × nodes).
    pub slots_per_block: u32,
    /// Fraction of outstanding tasks to provision slots for, in (0, 1].
    pub parallelism: f64,
    /// Idle time after which a block is cancelled (down to `min_blocks`).
    pub max_idletime: Duration,
}

/// One block as the strategy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    /// Block id.
    pub id: String,
    /// Since when the block has had no task in hand (or since submission
    /// while it has none yet); `None` while it is busy.
    pub idle_since: Option<Instant>,
    /// Within its drain period: it takes no new work and will end soon.
    pub draining: bool,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Blocks to submit.
    pub submit: u32,
    /// Blocks to cancel, longest idle first.
    pub cancel: Vec<String>,
}

/// Decides submissions and cancellations. `first` is true on the endpoint's
/// first decision, when `init_blocks` applies.
pub fn decide(
    s: &Scaling,
    blocks: &[BlockView],
    outstanding: u64,
    first: bool,
    now: Instant,
) -> Decision {
    let floor = if first {
        s.init_blocks.max(s.min_blocks)
    } else {
        s.min_blocks
    };
    let demand = if outstanding == 0 {
        0
    } else {
        let slots = ((outstanding as f64) * s.parallelism).ceil().max(1.0) as u64;
        slots
            .div_ceil(u64::from(s.slots_per_block.max(1)))
            .min(u64::from(u32::MAX)) as u32
    };
    let target = floor.max(demand).min(s.max_blocks);
    let usable = blocks.iter().filter(|b| !b.draining).count() as u32;
    let room = s.max_blocks.saturating_sub(blocks.len() as u32);
    let submit = target.saturating_sub(usable).min(room);

    let mut idle: Vec<&BlockView> = blocks
        .iter()
        .filter(|b| {
            b.idle_since
                .is_some_and(|t| now.duration_since(t) >= s.max_idletime)
        })
        .collect();
    idle.sort_by_key(|b| b.idle_since);
    let keep = s.min_blocks.max(demand) as usize;
    let excess = blocks.len().saturating_sub(keep);
    let cancel = idle
        .into_iter()
        .take(excess)
        .map(|b| b.id.clone())
        .collect();
    Decision { submit, cancel }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Scaling = Scaling {
        init_blocks: 1,
        min_blocks: 0,
        max_blocks: 3,
        slots_per_block: 10,
        parallelism: 1.0,
        max_idletime: Duration::from_secs(60),
    };

    fn busy(id: &str) -> BlockView {
        BlockView {
            id: id.into(),
            idle_since: None,
            draining: false,
        }
    }

    fn idle(id: &str, since: Instant) -> BlockView {
        BlockView {
            id: id.into(),
            idle_since: Some(since),
            draining: false,
        }
    }

    #[test]
    fn starts_init_blocks_first() {
        let now = Instant::now();
        assert_eq!(decide(&S, &[], 0, true, now).submit, 1);
        assert_eq!(
            decide(&S, &[], 0, false, now).submit,
            0,
            "min_blocks is 0 after the start"
        );
    }

    #[test]
    fn keeps_min_blocks() {
        let now = Instant::now();
        let s = Scaling { min_blocks: 2, ..S };
        assert_eq!(decide(&s, &[busy("0")], 0, false, now).submit, 1);
        assert_eq!(decide(&s, &[busy("0"), busy("1")], 0, false, now).submit, 0);
    }

    #[test]
    fn scales_out_with_demand_up_to_max() {
        let now = Instant::now();
        assert_eq!(decide(&S, &[], 1, false, now).submit, 1);
        assert_eq!(decide(&S, &[busy("0")], 25, false, now).submit, 2);
        assert_eq!(
            decide(&S, &[busy("0")], 10_000, false, now).submit,
            2,
            "capped by max_blocks"
        );
        let all = [busy("0"), busy("1"), busy("2")];
        assert_eq!(decide(&S, &all, 10_000, false, now).submit, 0);
    }

    #[test]
    fn parallelism_provisions_a_fraction() {
        let now = Instant::now();
        let s = Scaling {
            parallelism: 0.5,
            ..S
        };
        assert_eq!(decide(&s, &[], 40, false, now).submit, 2);
        assert_eq!(
            decide(&s, &[], 1, false, now).submit,
            1,
            "any work gets a block"
        );
    }

    #[test]
    fn replaces_draining_blocks_within_max() {
        let now = Instant::now();
        let draining = BlockView {
            id: "0".into(),
            idle_since: None,
            draining: true,
        };
        assert_eq!(
            decide(&S, std::slice::from_ref(&draining), 5, false, now).submit,
            1
        );
        let s = Scaling { max_blocks: 1, ..S };
        assert_eq!(
            decide(&s, &[draining], 5, false, now).submit,
            0,
            "never above max_blocks"
        );
    }

    #[test]
    fn cancels_blocks_idle_too_long_down_to_min() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(61);
        let blocks = [
            idle("0", t0),
            idle("1", t0 + Duration::from_secs(30)),
            busy("2"),
        ];
        assert_eq!(
            decide(&S, &blocks, 0, false, t0).cancel,
            Vec::<String>::new(),
            "not idle long enough"
        );
        assert_eq!(
            decide(&S, &blocks, 0, false, later).cancel,
            vec!["0".to_string()]
        );
        let much_later = t0 + Duration::from_secs(200);
        assert_eq!(
            decide(&S, &blocks, 0, false, much_later).cancel,
            vec!["0".to_string(), "1".to_string()]
        );
        let s = Scaling { min_blocks: 2, ..S };
        assert_eq!(
            decide(&s, &blocks, 0, false, much_later).cancel,
            vec!["0".to_string()],
            "keeps min_blocks"
        );
        assert!(
            decide(&S, &blocks, 25, false, much_later).cancel.is_empty(),
            "demand keeps them"
        );
    }

    #[test]
    fn never_exceeds_max_even_with_a_larger_floor() {
        let now = Instant::now();
        let s = Scaling {
            init_blocks: 5,
            max_blocks: 2,
            ..S
        };
        assert_eq!(decide(&s, &[], 0, true, now).submit, 2);
        let none = Scaling { max_blocks: 0, ..S };
        assert_eq!(decide(&none, &[], 100, false, now).submit, 0);
    }
}
