//! Where an MPI task runs: the choice of whole nodes of one block, a pure
//! function of the managers the broker could hold for it.
//!
//! A *node* is a manager: managers sharing a machine split its cores and
//! behave as separate nodes (DESIGN.md), so each counts as one here.

/// A manager that may be held for an MPI task: registered, not draining,
/// not already held for another one.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<K> {
    /// How the caller names the manager.
    pub key: K,
    /// The manager's block.
    pub block_id: String,
    /// The manager's rank within its block.
    pub rank: u32,
    /// Tasks in its hands; the MPI task starts once every chosen one has none.
    pub busy: usize,
}

/// Picks `nodes` candidates of one block, leader first; `None` if no block has enough.
///
/// The block chosen is the one whose idlest `nodes` managers are least busy
/// (fewest busy managers, then fewest tasks), so the task starts soonest;
/// then the one with fewest candidates to spare, so bigger blocks stay whole
/// for bigger tasks; then the lowest block id. The chosen managers are
/// returned in rank order (registration order among equal ranks).
pub fn choose<K: Clone>(candidates: &[Candidate<K>], nodes: usize) -> Option<Vec<K>> {
    if nodes == 0 {
        return None;
    }
    let mut blocks: Vec<&str> = candidates.iter().map(|c| c.block_id.as_str()).collect();
    blocks.sort_unstable();
    blocks.dedup();
    let mut best: Option<((usize, usize, usize), Vec<usize>)> = None;
    for block in blocks {
        let mut members: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].block_id == block)
            .collect();
        if members.len() < nodes {
            continue;
        }
        // Stable: among equals, the earlier-registered manager is taken.
        members.sort_by_key(|&i| {
            (
                candidates[i].busy > 0,
                candidates[i].busy,
                candidates[i].rank,
            )
        });
        let spare = members.len() - nodes;
        members.truncate(nodes);
        let busy_managers = members.iter().filter(|&&i| candidates[i].busy > 0).count();
        let busy_tasks = members.iter().map(|&i| candidates[i].busy).sum();
        let score = (busy_managers, busy_tasks, spare);
        // Blocks come in id order, so a strict improvement keeps the lowest id on ties.
        if best.as_ref().is_none_or(|(s, _)| score < *s) {
            best = Some((score, members));
        }
    }
    let (_, mut chosen) = best?;
    chosen.sort_by_key(|&i| (candidates[i].rank, i));
    Some(
        chosen
            .into_iter()
            .map(|i| candidates[i].key.clone())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &'static str, block: &str, rank: u32, busy: usize) -> Candidate<&'static str> {
        Candidate {
            key,
            block_id: block.into(),
            rank,
            busy,
        }
    }

    #[test]
    fn nodes_come_from_one_block() {
        let cs = [c("a0", "a", 0, 0), c("b0", "b", 0, 0), c("a1", "a", 1, 0)];
        assert_eq!(choose(&cs, 2), Some(vec!["a0", "a1"]));
        assert_eq!(
            choose(&cs, 3),
            None,
            "two blocks of 2 and 1 never make 3 nodes"
        );
        assert_eq!(choose(&cs, 0), None);
    }

    #[test]
    fn idle_blocks_win_then_the_tightest_fit() {
        let cs = [
            c("a0", "a", 0, 3),
            c("a1", "a", 1, 0),
            c("b0", "b", 0, 0),
            c("b1", "b", 1, 0),
            c("b2", "b", 2, 0),
            c("c0", "c", 0, 0),
            c("c1", "c", 1, 0),
        ];
        assert_eq!(
            choose(&cs, 2),
            Some(vec!["c0", "c1"]),
            "c fits exactly, b would leave a spare"
        );
        assert_eq!(choose(&cs, 3), Some(vec!["b0", "b1", "b2"]));
        assert_eq!(
            choose(&cs, 1),
            Some(vec!["a1"]),
            "an idle node, even in a busy block"
        );
        let busy = [c("x1", "x", 1, 2), c("x0", "x", 0, 1), c("x2", "x", 2, 0)];
        assert_eq!(
            choose(&busy, 2),
            Some(vec!["x0", "x2"]),
            "least busy, then rank order"
        );
    }
}
