//! A block that acts as one: when a launcher (mpiexec, srun --mpi=pmix)
//! starts the managers, they join one MPI communicator before anything else.
//! The block is ready once every rank is up (a barrier), each manager learns
//! its rank, and ranks sharing a node split its cores so that two managers on
//! one machine behave like two nodes with half the cores each.
//!
//! MPI is initialised only under a launcher and only on the main thread,
//! before the manager's runtime starts; it is never touched on the task path.
//! A plain `hpfaas manager` is a block of one. Losing a rank ends the MPI job
//! (the launcher aborts it), which the endpoint reports as the block lost.

/// This manager's place in its block.
pub struct Membership {
    /// Rank within the block.
    pub rank: u32,
    /// Managers in the block.
    pub size: u32,
    /// Rank among the managers on this node.
    pub local_rank: u32,
    /// Managers on this node.
    pub local_size: u32,
    /// Keeps MPI initialised until the manager is done (finalised on drop).
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// Variables a launcher sets for an MPI job: their presence means "join".
const LAUNCHER_VARIABLES: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"];

/// True when an MPI launcher started this process.
pub fn launched_by_mpi() -> bool {
    LAUNCHER_VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

impl Membership {
    /// A block of one: no launcher, no MPI.
    pub fn alone() -> Membership {
        Membership {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            #[cfg(feature = "mpi")]
            _universe: None,
        }
    }

    /// Joins the block's communicator when launched by MPI (call on the main
    /// thread, before any other thread starts); otherwise a block of one.
    pub fn join() -> anyhow::Result<Membership> {
        if !launched_by_mpi() {
            return Ok(Membership::alone());
        }
        Self::join_mpi()
    }

    #[cfg(feature = "mpi")]
    fn join_mpi() -> anyhow::Result<Membership> {
        use mpi::topology::Communicator;
        use mpi::traits::*;
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Single)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialised in this process"))?;
        let world = universe.world();
        let node = world.split_shared(world.rank());
        let membership = Membership {
            rank: world.rank() as u32,
            size: world.size() as u32,
            local_rank: node.rank() as u32,
            local_size: node.size() as u32,
            _universe: None,
        };
        // Every rank is up once all pass here: the block is ready as a whole.
        world.barrier();
        drop(node);
        Ok(Membership {
            _universe: Some(universe),
            ..membership
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn join_mpi() -> anyhow::Result<Membership> {
        anyhow::bail!(
            "this manager was started by an MPI launcher, but hpfaas was built without the `mpi` feature; \
             rebuild with default features or use launcher = \"single-node\""
        )
    }

    /// Pins this process to its share of the node's cores (when the node is
    /// shared with other ranks of the block); threads and children started
    /// afterwards inherit it. Returns the CPUs of the share.
    pub fn pin_to_share(&self) -> std::io::Result<Vec<u32>> {
        let allowed = super::affinity::allowed_cpus().map_err(std::io::Error::other)?;
        let share = share_of_node(&allowed, self.local_rank, self.local_size);
        if share.len() != allowed.len() {
            super::affinity::CpuMask::new(&share)
                .map_err(std::io::Error::other)?
                .apply()?;
        }
        Ok(share)
    }
}

/// The `local_rank`-th of `local_size` contiguous, near-equal slices of the
/// node's CPUs (the first ranks get the extra CPU when it does not divide).
/// Every rank gets at least one CPU, even when ranks outnumber CPUs.
pub fn share_of_node(cpus: &[u32], local_rank: u32, local_size: u32) -> Vec<u32> {
    let (n, size, rank) = (cpus.len(), local_size.max(1) as usize, local_rank as usize);
    if n == 0 {
        return Vec::new();
    }
    if size > n {
        return vec![cpus[rank % n]];
    }
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    cpus[start..start + len].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_node_evenly_and_cover_it() {
        let cpus: Vec<u32> = (0..10).collect();
        let shares: Vec<Vec<u32>> = (0..3).map(|r| share_of_node(&cpus, r, 3)).collect();
        assert_eq!(shares, vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]);
        assert_eq!(share_of_node(&cpus, 0, 1), cpus);
        assert_eq!(share_of_node(&[4, 6], 1, 2), vec![6]);
    }

    #[test]
    fn more_ranks_than_cpus_still_get_one_each() {
        assert_eq!(share_of_node(&[0, 1], 3, 4), vec![1]);
        assert!(share_of_node(&[], 0, 2).is_empty());
    }

    #[test]
    fn a_plain_manager_is_a_block_of_one() {
        let m = Membership::alone();
        assert_eq!((m.rank, m.size, m.local_rank, m.local_size), (0, 1, 0, 1));
        assert!(!super::super::affinity::allowed_cpus().unwrap().is_empty());
    }
}
