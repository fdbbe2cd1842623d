//! How many blocks to start: a pure function of the blocks the endpoint has,
//! the work outstanding and the configuration, so it is tested without any
//! scheduler and cannot grow into a loop that owns everything.

/// The scaling keys of `[provider]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    /// Blocks started when the endpoint starts.
    pub init_blocks: u32,
    /// Blocks kept at all times.
    pub min_blocks: u32,
    /// Most blocks at once.
    pub max_blocks: u32,
    /// Task slots one block brings (workers + prefetch per manager × nodes).
    pub slots_per_block: u32,
}

/// What the endpoint sees right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Blocks submitted and not yet finished (pending or running).
    pub active_blocks: u32,
    /// Tasks accepted and not finished.
    pub outstanding_tasks: u64,
    /// True on the endpoint's first decision, when `init_blocks` applies.
    pub first: bool,
}

/// Blocks to submit now.
pub fn blocks_to_submit(scaling: &Scaling, now: &Snapshot) -> u32 {
    let floor = if now.first {
        scaling.init_blocks.max(scaling.min_blocks)
    } else {
        scaling.min_blocks
    };
    let demand = if now.outstanding_tasks == 0 {
        0
    } else {
        let per_block = u64::from(scaling.slots_per_block.max(1));
        now.outstanding_tasks
            .div_ceil(per_block)
            .min(u64::from(u32::MAX)) as u32
    };
    let target = floor.max(demand).min(scaling.max_blocks);
    target.saturating_sub(now.active_blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Scaling = Scaling {
        init_blocks: 1,
        min_blocks: 0,
        max_blocks: 3,
        slots_per_block: 10,
    };

    fn snap(active_blocks: u32, outstanding_tasks: u64, first: bool) -> Snapshot {
        Snapshot {
            active_blocks,
            outstanding_tasks,
            first,
        }
    }

    #[test]
    fn starts_init_blocks_first() {
        assert_eq!(blocks_to_submit(&S, &snap(0, 0, true)), 1);
        assert_eq!(
            blocks_to_submit(&S, &snap(0, 0, false)),
            0,
            "min_blocks is 0 after the start"
        );
    }

    #[test]
    fn keeps_min_blocks() {
        let s = Scaling { min_blocks: 2, ..S };
        assert_eq!(blocks_to_submit(&s, &snap(1, 0, false)), 1);
        assert_eq!(blocks_to_submit(&s, &snap(2, 0, false)), 0);
    }

    #[test]
    fn scales_out_with_demand_up_to_max() {
        assert_eq!(blocks_to_submit(&S, &snap(0, 1, false)), 1);
        assert_eq!(blocks_to_submit(&S, &snap(1, 25, false)), 2);
        assert_eq!(
            blocks_to_submit(&S, &snap(1, 10_000, false)),
            2,
            "capped by max_blocks"
        );
        assert_eq!(blocks_to_submit(&S, &snap(3, 10_000, false)), 0);
    }

    #[test]
    fn never_exceeds_max_even_with_a_larger_floor() {
        let s = Scaling {
            init_blocks: 5,
            max_blocks: 2,
            ..S
        };
        assert_eq!(blocks_to_submit(&s, &snap(0, 0, true)), 2);
        let none = Scaling { max_blocks: 0, ..S };
        assert_eq!(blocks_to_submit(&none, &snap(0, 100, false)), 0);
    }
}
