//! The load figures the broker reports to the agent, which scales blocks
//! and grants the service credit on them: managers, worker slots, queued
//! and in-hand tasks, overall and per block.

use super::managers::Managers;

/// One block as the broker sees it through its managers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockLoad {
    /// The block's id.
    pub block_id: String,
    /// Batch-system job id the managers reported.
    pub job_id: Option<String>,
    /// Connected managers of the block.
    pub managers: u32,
    /// Worker slots.
    pub workers: u32,
    /// Tasks in the managers' hands.
    pub in_hand: u64,
    /// True once the block is within its drain period: it takes no new work.
    pub draining: bool,
    /// Earliest walltime deadline of its managers (Unix seconds).
    pub deadline: Option<f64>,
}

/// Numbers the endpoint reports and scales on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Connected managers.
    pub managers: u32,
    /// Worker slots across managers.
    pub total_workers: u32,
    /// Worker slots without a task.
    pub idle_workers: u32,
    /// Tasks waiting for a manager.
    pub queued: u64,
    /// Tasks in managers' hands.
    pub in_hand: u64,
    /// Blocks with at least one registered manager.
    pub blocks: Vec<BlockLoad>,
}

impl Load {
    /// The load of these managers with `queued` tasks waiting, at wall time
    /// `now` (Unix seconds).
    pub fn of(managers: &Managers, queued: usize, now: f64) -> Load {
        let drain_period = managers.drain_period();
        let mut blocks: Vec<BlockLoad> = Vec::new();
        for m in managers.iter() {
            let i = match blocks.iter().position(|b| b.block_id == m.info.block_id) {
                Some(i) => i,
                None => {
                    blocks.push(BlockLoad {
                        block_id: m.info.block_id.clone(),
                        ..Default::default()
                    });
                    blocks.len() - 1
                }
            };
            let b = &mut blocks[i];
            b.job_id = b.job_id.take().or(m.info.job_id.clone());
            b.managers += 1;
            b.workers += m.info.workers;
            b.in_hand += m.in_hand.len() as u64;
            b.draining |= m.draining(drain_period, now);
            b.deadline = match (b.deadline, m.info.deadline) {
                (Some(a), Some(c)) => Some(a.min(c)),
                (a, c) => a.or(c),
            };
        }
        blocks.sort_by(|a, b| a.block_id.cmp(&b.block_id));
        let total: u32 = managers.iter().map(|m| m.info.workers).sum();
        // A manager held for an MPI task takes nothing else: none of its workers is free.
        let busy: u32 = managers
            .iter()
            .map(|m| match m.held_for {
                Some(_) => m.info.workers,
                None => (m.in_hand.len() as u32).min(m.info.workers),
            })
            .sum();
        Load {
            managers: managers.len() as u32,
            total_workers: total,
            idle_workers: total - busy,
            queued: queued as u64,
            in_hand: managers.iter().map(|m| m.in_hand.len() as u64).sum(),
            blocks,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use uuid::Uuid;

    use super::super::test_support::info;
    use super::*;

    #[test]
    fn blocks_sum_their_managers_and_keep_the_earliest_deadline() {
        let mut ms = Managers::new(Duration::from_secs(10), 60.0);
        let now = Instant::now();
        let mut a0 = info("a0", "a", 4, 0);
        a0.deadline = Some(500.0);
        let mut a1 = info("a1", "a", 2, 0);
        a1.deadline = Some(200.0);
        a1.job_id = Some("42".into());
        ms.register(b"a1".to_vec(), a1, now).unwrap();
        ms.register(b"a0".to_vec(), a0, now).unwrap();
        ms.register(b"b0".to_vec(), info("b0", "b", 3, 0), now)
            .unwrap();
        ms.get_mut(b"a0").unwrap().in_hand.insert(Uuid::new_v4());
        ms.get_mut(b"b0").unwrap().held_for = Some(Uuid::new_v4());
        let load = Load::of(&ms, 7, 150.0);
        assert_eq!(
            (load.managers, load.total_workers, load.idle_workers),
            (3, 9, 5),
            "a held manager has no idle worker"
        );
        assert_eq!((load.queued, load.in_hand), (7, 1));
        let ids: Vec<&str> = load.blocks.iter().map(|b| b.block_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let a = &load.blocks[0];
        assert_eq!(
            (a.job_id.as_deref(), a.managers, a.workers, a.in_hand),
            (Some("42"), 2, 6, 1)
        );
        assert_eq!(a.deadline, Some(200.0));
        assert!(a.draining, "a1 is within 60 s of its deadline");
        assert!(!load.blocks[1].draining);
    }
}
