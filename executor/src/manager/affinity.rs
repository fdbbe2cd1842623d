//! Where each worker of a manager runs: its CPUs (`engine.cpu_affinity`),
//! its `OMP_NUM_THREADS`, and its accelerator (`engine.available_accelerators`).
//!
//! hwloc reads the node once, in the manager, restricted to the CPUs the
//! manager itself may use ([`Topology::detect`]): when managers share a node,
//! each has already been pinned to its share, and that share is "the node"
//! here. Everything after that is a pure function of that small value
//! ([`plan`]), so it is tested with made-up machines. A worker's CPUs end up
//! as a precomputed [`CpuMask`] that the forked child applies with a bare
//! `sched_setaffinity` before it executes Python: between fork and exec only
//! async-signal-safe calls are allowed, which rules out hwloc and allocation.
//! What is asked for ([`WorkerRequest`]: the `cpu_affinity` mode, the worker
//! count, the accelerators) is parsed with the configuration, in
//! `config/cpu_affinity.rs`, and reaches the manager on its command line.

use std::collections::BTreeSet;

use crate::config::cpu_affinity::{fmt_cpus, CpuAffinity, WorkerRequest, CPU_SETSIZE};

/// One core this manager may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Core {
    /// Package (socket) it sits in, by hwloc logical index.
    pub package: u32,
    /// NUMA node local to it, by OS index.
    pub numa: u32,
    /// OS ids of its PUs (hardware threads) that this manager may use, ascending.
    pub pus: Vec<u32>,
}

/// The cores this manager may use, in hwloc's logical order (package,
/// NUMA node, core), so neighbours in the list are neighbours on the chip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The cores, each with at least one allowed PU.
    pub cores: Vec<Core>,
}

impl Topology {
    /// Reads this node with hwloc, keeping only the CPUs this process may
    /// use (`sched_getaffinity`).
    pub fn detect() -> Result<Topology, String> {
        let allowed: BTreeSet<u32> = allowed_cpus()?.into_iter().collect();
        let topology = hwloc2::Topology::new().ok_or("hwloc cannot read this node's topology")?;
        Topology::from_hwloc(&topology, &allowed)
    }

    /// The cores of an hwloc topology with at least one PU in `allowed`.
    fn from_hwloc(
        topology: &hwloc2::Topology,
        allowed: &BTreeSet<u32>,
    ) -> Result<Topology, String> {
        use hwloc2::ObjectType;
        let mut objects = topology
            .objects_with_type(&ObjectType::Core)
            .unwrap_or_default();
        if objects.is_empty() {
            // Some virtual machines report no cores; each PU stands for one.
            objects = topology
                .objects_with_type(&ObjectType::PU)
                .unwrap_or_default();
        }
        let mut cores = Vec::new();
        for object in objects {
            let pus: Vec<u32> = object
                .cpuset()
                .into_iter()
                .flatten()
                .filter(|pu| allowed.contains(pu))
                .collect();
            if pus.is_empty() {
                continue;
            }
            let numa = object.nodeset().map(|n| n.first()).unwrap_or(0).max(0) as u32;
            let mut package = 0;
            let mut up = object.parent();
            while let Some(parent) = up {
                if matches!(parent.object_type(), ObjectType::Package) {
                    package = parent.logical_index();
                    break;
                }
                up = parent.parent();
            }
            cores.push(Core { package, numa, pus });
        }
        if cores.is_empty() {
            return Err(format!(
                "none of the CPUs this manager may use ({}) appear in hwloc's topology",
                fmt_cpus(&allowed.iter().copied().collect::<Vec<_>>())
            ));
        }
        Ok(Topology { cores })
    }

    /// One core per CPU, all in one NUMA domain: what is known without hwloc.
    pub fn flat(cpus: &[u32]) -> Topology {
        Topology {
            cores: cpus
                .iter()
                .map(|&pu| Core {
                    package: 0,
                    numa: 0,
                    pus: vec![pu],
                })
                .collect(),
        }
    }

    /// Every allowed PU, ascending.
    pub fn pus(&self) -> Vec<u32> {
        let all: BTreeSet<u32> = self.cores.iter().flat_map(|c| c.pus.clone()).collect();
        all.into_iter().collect()
    }

    /// One line for the log: packages, NUMA domains, cores, PUs.
    pub fn summary(&self) -> String {
        let packages: BTreeSet<u32> = self.cores.iter().map(|c| c.package).collect();
        let numa: BTreeSet<u32> = self.cores.iter().map(|c| c.numa).collect();
        let pus = self.pus();
        format!(
            "{} packages, {} NUMA domains, {} cores, {} PUs (CPUs {})",
            packages.len(),
            numa.len(),
            self.cores.len(),
            pus.len(),
            fmt_cpus(&pus)
        )
    }
}

/// One worker's CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCpus {
    /// OS ids of the PUs it may run on, ascending.
    pub pus: Vec<u32>,
    /// How many cores those PUs belong to.
    pub cores: u32,
}

/// The CPUs of each of `workers` workers under `mode` on `topology`, or why
/// that cannot be done; `None` when the mode pins nothing.
pub fn assign(
    mode: &CpuAffinity,
    topology: &Topology,
    workers: u32,
) -> Result<Option<Vec<WorkerCpus>>, String> {
    let n = workers as usize;
    let cores = topology.cores.len();
    let order: Vec<usize> = match mode {
        CpuAffinity::None => return Ok(None),
        CpuAffinity::List(entries) => return list(entries, topology, n).map(Some),
        CpuAffinity::Block | CpuAffinity::Alternating => (0..cores).collect(),
        CpuAffinity::BlockReverse => (0..cores).rev().collect(),
    };
    if n > cores {
        let name = match mode {
            CpuAffinity::Block => "block",
            CpuAffinity::BlockReverse => "block-reverse",
            _ => "alternating",
        };
        return Err(format!(
            "engine.cpu_affinity = \"{name}\" needs at least one core per worker, but {n} workers \
             are asked for and this manager may use {cores} cores (CPUs {}); lower \
             engine.max_workers_per_node or use cpu_affinity = \"none\"",
            fmt_cpus(&topology.pus())
        ));
    }
    let groups = match mode {
        CpuAffinity::Alternating => (0..n)
            .map(|w| order.iter().copied().skip(w).step_by(n).collect())
            .collect(),
        _ => block(&order, topology, n),
    };
    Ok(Some(
        groups
            .into_iter()
            .map(|group: Vec<usize>| {
                let pus: BTreeSet<u32> = group
                    .iter()
                    .flat_map(|&c| topology.cores[c].pus.iter().copied())
                    .collect();
                WorkerCpus {
                    pus: pus.into_iter().collect(),
                    cores: group.len() as u32,
                }
            })
            .collect(),
    ))
}

/// Contiguous blocks of `order.len() / n` cores (leftover cores stay
/// unused, as in Parsl). With several NUMA domains, each worker is kept
/// inside one domain and workers are spread evenly over the domains, when
/// that gives every worker as many cores as the plain split does.
fn block(order: &[usize], topology: &Topology, n: usize) -> Vec<Vec<usize>> {
    let per = order.len() / n;
    let mut domains: Vec<(u32, Vec<usize>)> = Vec::new();
    for &c in order {
        let numa = topology.cores[c].numa;
        match domains.iter_mut().find(|(d, _)| *d == numa) {
            Some((_, cores)) => cores.push(c),
            None => domains.push((numa, vec![c])),
        }
    }
    let room: Vec<usize> = domains.iter().map(|(_, d)| d.len() / per).collect();
    if domains.len() > 1 && room.iter().sum::<usize>() >= n {
        let mut placed = vec![0; domains.len()];
        for _ in 0..n {
            // The emptiest domain with room left; ties go to the first.
            let d = (0..domains.len())
                .filter(|&d| placed[d] < room[d])
                .min_by_key(|&d| placed[d])
                .expect("the domains have room for every worker");
            placed[d] += 1;
        }
        return domains
            .iter()
            .zip(&placed)
            .flat_map(|((_, cores), &k)| {
                (0..k).map(move |i| cores[i * per..(i + 1) * per].to_vec())
            })
            .collect();
    }
    (0..n)
        .map(|w| order[w * per..(w + 1) * per].to_vec())
        .collect()
}

/// `list:` entries, checked against the CPUs this manager may use.
fn list(entries: &[Vec<u32>], topology: &Topology, n: usize) -> Result<Vec<WorkerCpus>, String> {
    if entries.len() < n {
        return Err(format!(
            "engine.cpu_affinity lists CPUs for {} workers but {n} workers are asked for; \
             give one ':'-separated entry per worker",
            entries.len()
        ));
    }
    let allowed = topology.pus();
    let foreign: Vec<u32> = entries[..n]
        .iter()
        .flatten()
        .copied()
        .filter(|pu| allowed.binary_search(pu).is_err())
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .collect();
    if !foreign.is_empty() {
        return Err(format!(
            "engine.cpu_affinity names CPUs {} that this manager may not use (it may use CPUs {})",
            fmt_cpus(&foreign),
            fmt_cpus(&allowed)
        ));
    }
    Ok(entries[..n]
        .iter()
        .map(|pus| WorkerCpus {
            pus: pus.clone(),
            cores: topology
                .cores
                .iter()
                .filter(|c| c.pus.iter().any(|pu| pus.contains(pu)))
                .count() as u32,
        })
        .collect())
}

/// Where one worker runs and what it is told.
#[derive(Debug, Clone)]
pub struct Placement {
    /// PUs it is pinned to; `None` leaves it on all of the manager's CPUs.
    pub pinned: Option<Vec<u32>>,
    /// Its `OMP_NUM_THREADS`: its cores (all the manager's when unpinned).
    pub omp_threads: u32,
    /// Its accelerator, exported as `CUDA_VISIBLE_DEVICES`,
    /// `ROCR_VISIBLE_DEVICES` and `ZE_AFFINITY_MASK`.
    pub accelerator: Option<String>,
    mask: Option<CpuMask>,
}

impl Placement {
    /// The CPU mask to apply in the child, if it is pinned.
    pub fn cpu_mask(&self) -> Option<CpuMask> {
        self.mask
    }
}

/// Every worker's placement for `request` on `topology`; `unpinned_default`
/// is the worker count when neither the request nor pinning sets one.
pub fn plan(
    request: &WorkerRequest,
    topology: &Topology,
    unpinned_default: u32,
) -> Result<Vec<Placement>, String> {
    let default = match request.mode {
        CpuAffinity::None => unpinned_default,
        _ => topology.cores.len() as u32,
    };
    let workers = request.workers(default);
    if let CpuAffinity::List(entries) = &request.mode {
        if (entries.len() as u32) < workers {
            return Err(request.list_too_short(entries.len(), workers));
        }
    }
    let cpus = assign(&request.mode, topology, workers)?;
    (0..workers as usize)
        .map(|w| {
            let accelerator = request.accelerators.get(w).cloned();
            Ok(match &cpus {
                None => Placement {
                    pinned: None,
                    omp_threads: topology.cores.len() as u32,
                    accelerator,
                    mask: None,
                },
                Some(cpus) => Placement {
                    mask: Some(CpuMask::new(&cpus[w].pus)?),
                    pinned: Some(cpus[w].pus.clone()),
                    omp_threads: cpus[w].cores.max(1),
                    accelerator,
                },
            })
        })
        .collect()
}

/// [`plan`] on this node as this process sees it. Without hwloc it falls
/// back to one core per allowed CPU, with a warning.
pub fn plan_here(request: &WorkerRequest, unpinned_default: u32) -> Result<Vec<Placement>, String> {
    let topology = match Topology::detect() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("{e}; placing workers as if each CPU were a core");
            Topology::flat(&allowed_cpus()?)
        }
    };
    tracing::info!("this manager may use {}", topology.summary());
    plan(request, &topology, unpinned_default)
}

/// For blocks that run on this very machine (the local provider): checks
/// `request` against it, so `hpfaas endpoint start` refuses what every
/// manager would. With `managers` > 1 the block's managers split the
/// machine's cores, so only the counts are checked.
pub fn check_this_machine(request: &WorkerRequest, managers: u32) -> Result<(), String> {
    if request.mode == CpuAffinity::None {
        return Ok(());
    }
    let Ok(topology) = Topology::detect() else {
        return Ok(()); // the managers will say so themselves
    };
    if managers <= 1 {
        return plan(request, &topology, 1).map(|_| ());
    }
    if matches!(request.mode, CpuAffinity::List(_)) {
        return Ok(());
    }
    let share = (topology.cores.len() as u32 / managers).max(1);
    let workers = request.workers(share);
    if workers > share {
        return Err(format!(
            "engine.cpu_affinity needs at least one core per worker, but {workers} workers are \
             asked for ({}) and each of the block's {managers} managers gets {share} of this \
             machine's {} cores",
            request.workers_source(),
            topology.cores.len()
        ));
    }
    Ok(())
}

/// A CPU set ready for `sched_setaffinity`, built before fork so that the
/// child only makes the system call.
#[derive(Clone, Copy)]
pub struct CpuMask(libc::cpu_set_t);

impl std::fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpus: Vec<u32> = (0..CPU_SETSIZE as u32)
            // SAFETY: reads a bit of an initialised set, index < CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &self.0) })
            .collect();
        write!(f, "CpuMask({})", fmt_cpus(&cpus))
    }
}

impl CpuMask {
    /// The set of `cpus` (OS ids).
    pub fn new(cpus: &[u32]) -> Result<CpuMask, String> {
        // SAFETY: cpu_set_t is plain bits; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus {
            if cpu as usize >= CPU_SETSIZE {
                return Err(format!(
                    "CPU {cpu} is beyond the {CPU_SETSIZE} CPUs a worker can be pinned to"
                ));
            }
            // SAFETY: index checked against CPU_SETSIZE above.
            unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        }
        Ok(CpuMask(set))
    }

    /// Binds the calling process. Async-signal-safe (one system call, no
    /// allocation), so it may run in a `pre_exec` hook.
    pub fn apply(&self) -> std::io::Result<()> {
        // SAFETY: a valid cpu_set_t of the size passed; the kernel only reads it.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Result<Vec<u32>, String> {
    // SAFETY: an all-zero cpu_set_t is valid; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes the set's true size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(format!(
            "cannot read this process's CPU affinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((0..CPU_SETSIZE)
        // SAFETY: index < CPU_SETSIZE of a set the kernel filled.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c as u32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `packages` × `numa_per_package` × `cores_per_numa` cores with `smt`
    /// PUs each, numbered as Linux does on x86: core c has PUs c, c+C, ...
    fn machine(packages: u32, numa_per_package: u32, cores_per_numa: u32, smt: u32) -> Topology {
        let total = packages * numa_per_package * cores_per_numa;
        Topology {
            cores: (0..total)
                .map(|c| Core {
                    package: c / (numa_per_package * cores_per_numa),
                    numa: c / cores_per_numa,
                    pus: (0..smt).map(|t| c + t * total).collect(),
                })
                .collect(),
        }
    }

    fn pus(mode: &str, topology: &Topology, workers: u32) -> Vec<Vec<u32>> {
        assign(&CpuAffinity::parse(mode).unwrap(), topology, workers)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|w| w.pus)
            .collect()
    }

    fn cores_of(topology: &Topology, pus: &[u32]) -> Vec<usize> {
        (0..topology.cores.len())
            .filter(|&c| topology.cores[c].pus.iter().all(|p| pus.contains(p)))
            .collect()
    }

    #[test]
    fn block_on_two_packages_two_numa_four_cores_two_pus() {
        let m = machine(2, 2, 4, 2);
        // One worker per NUMA domain: each gets its domain's 4 cores and their 8 PUs.
        let w = pus("block", &m, 4);
        assert_eq!(w[0], vec![0, 1, 2, 3, 16, 17, 18, 19]);
        assert_eq!(w[3], vec![12, 13, 14, 15, 28, 29, 30, 31]);
        // Two workers: one package each (the plain split; a domain is too small).
        let w = pus("block", &m, 2);
        assert_eq!(cores_of(&m, &w[0]), (0..8).collect::<Vec<_>>());
        assert_eq!(cores_of(&m, &w[1]), (8..16).collect::<Vec<_>>());
        // Six workers of 2 cores: spread 2,2,1,1 over the domains, none straddling one,
        // where the plain split would put two in domain 2 and leave domain 3 idle.
        let w = pus("block", &m, 6);
        let numa: Vec<Vec<u32>> = w
            .iter()
            .map(|p| cores_of(&m, p).iter().map(|&c| m.cores[c].numa).collect())
            .collect();
        assert_eq!(
            numa,
            vec![
                vec![0, 0],
                vec![0, 0],
                vec![1, 1],
                vec![1, 1],
                vec![2, 2],
                vec![3, 3]
            ]
        );
        // Five workers of 3 cores cannot each fit one domain of 4: plain contiguous blocks.
        let w = pus("block", &m, 5);
        assert_eq!(cores_of(&m, &w[2]), vec![6, 7, 8]);
        assert_eq!(cores_of(&m, &w[4]), vec![12, 13, 14]);
    }

    #[test]
    fn block_reverse_mirrors_block() {
        let m = machine(2, 2, 4, 2);
        let w = pus("block-reverse", &m, 6);
        assert_eq!(cores_of(&m, &w[0]), vec![14, 15]);
        assert_eq!(cores_of(&m, &w[1]), vec![12, 13]);
        assert_eq!(cores_of(&m, &w[5]), vec![2, 3]);
        // Leftover cores are at the start, as block leaves them at the end.
        let flat = machine(1, 1, 5, 1);
        assert_eq!(pus("block-reverse", &flat, 2), vec![vec![3, 4], vec![1, 2]]);
        assert_eq!(pus("block", &flat, 2), vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn alternating_deals_cores_round_robin() {
        let m = machine(1, 1, 5, 2);
        assert_eq!(
            pus("alternating", &m, 2),
            vec![vec![0, 2, 4, 5, 7, 9], vec![1, 3, 6, 8]]
        );
    }

    #[test]
    fn every_pinning_mode_gives_disjoint_cpusets() {
        for m in [
            machine(2, 2, 4, 2),
            machine(1, 1, 2, 1),
            machine(1, 3, 3, 1),
        ] {
            for mode in ["block", "block-reverse", "alternating"] {
                for n in 1..=m.cores.len() as u32 {
                    let w = pus(mode, &m, n);
                    let mut seen = BTreeSet::new();
                    for p in w.iter().flatten() {
                        assert!(seen.insert(*p), "{mode} {n}: PU {p} twice");
                    }
                    assert!(w.iter().all(|p| !p.is_empty()));
                }
            }
        }
    }

    #[test]
    fn list_pins_exactly_as_listed() {
        let m = machine(1, 1, 4, 2);
        let w = assign(&CpuAffinity::parse("list:1,5:0:3-4").unwrap(), &m, 2)
            .unwrap()
            .unwrap();
        assert_eq!(
            w[0],
            WorkerCpus {
                pus: vec![1, 5],
                cores: 1
            }
        );
        assert_eq!(
            w[1],
            WorkerCpus {
                pus: vec![0],
                cores: 1
            }
        );
    }

    #[test]
    fn impossible_requests_are_refused_with_the_numbers() {
        let m = machine(1, 1, 2, 1);
        let err = assign(&CpuAffinity::Block, &m, 3).unwrap_err();
        assert!(
            err.contains("3 workers") && err.contains("2 cores") && err.contains("CPUs 0-1"),
            "{err}"
        );
        assert!(assign(&CpuAffinity::Alternating, &m, 3).is_err());
        let err = assign(&CpuAffinity::parse("list:0:7").unwrap(), &m, 2).unwrap_err();
        assert!(err.contains("CPUs 7") && err.contains("0-1"), "{err}");
        let err = assign(&CpuAffinity::parse("list:0").unwrap(), &m, 2).unwrap_err();
        assert!(
            err.contains("1 workers") && err.contains("2 workers"),
            "{err}"
        );
        // The same shortness is caught without a node when the count is configured.
        let err = WorkerRequest::new(CpuAffinity::parse("list:0:1").unwrap(), Some(3), vec![])
            .unwrap_err();
        assert!(
            err.contains("2 workers") && err.contains("3 workers"),
            "{err}"
        );
        assert!(WorkerRequest::new(
            CpuAffinity::parse("list:0:1").unwrap(),
            None,
            vec!["a".into(), "b".into(), "c".into()]
        )
        .is_err());
        assert!(WorkerRequest::new(
            CpuAffinity::parse("none").unwrap(),
            None,
            vec!["0,1".into()]
        )
        .is_err());
    }

    #[test]
    fn plans_carry_threads_and_accelerators() {
        let m = machine(1, 2, 4, 2);
        let r = WorkerRequest::new(
            CpuAffinity::parse("block").unwrap(),
            None,
            vec!["0".into(), "1".into()],
        )
        .unwrap();
        let p = plan(&r, &m, 99).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].pinned.as_deref(),
            Some(&[0, 1, 2, 3, 8, 9, 10, 11][..])
        );
        assert_eq!(p[0].omp_threads, 4);
        assert_eq!(p[1].accelerator.as_deref(), Some("1"));
        assert!(p[1].cpu_mask().is_some());
        // Unpinned: the default count, every core as threads, no mask.
        let p = plan(
            &WorkerRequest::new(CpuAffinity::parse("none").unwrap(), None, vec![]).unwrap(),
            &m,
            3,
        )
        .unwrap();
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.pinned.is_none() && p.omp_threads == 8));
        // Pinned modes default to one worker per core, not per PU.
        assert_eq!(
            plan(
                &WorkerRequest::new(CpuAffinity::parse("alternating").unwrap(), None, vec![])
                    .unwrap(),
                &m,
                99
            )
            .unwrap()
            .len(),
            8
        );
    }

    #[test]
    fn cpu_ranges_print_compactly() {
        assert_eq!(fmt_cpus(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(fmt_cpus(&[]), "");
        assert_eq!(
            format!("{:?}", CpuMask::new(&[0, 2, 3]).unwrap()),
            "CpuMask(0,2-3)"
        );
    }

    #[test]
    fn this_node_is_read_with_hwloc() {
        let t = Topology::detect().unwrap();
        assert_eq!(t.pus(), allowed_cpus().unwrap());
        assert!(t.summary().contains("cores"));
    }

    /// hwloc reads `HWLOC_SYNTHETIC` from the environment, which a test must
    /// not change under its siblings' feet: the check runs in a child.
    #[test]
    fn a_synthetic_node_is_read_with_hwloc() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "manager::affinity::tests::synthetic_node",
                "--ignored",
            ])
            .env("HWLOC_SYNTHETIC", "pack:2 numa:2 core:4 pu:2")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }

    #[test]
    #[ignore = "run by a_synthetic_node_is_read_with_hwloc, with HWLOC_SYNTHETIC set"]
    fn synthetic_node() {
        if std::env::var_os("HWLOC_SYNTHETIC").is_none() {
            return;
        }
        let synthetic = hwloc2::Topology::new().unwrap();
        let all: BTreeSet<u32> = (0..32).collect();
        let t = Topology::from_hwloc(&synthetic, &all).unwrap();
        assert_eq!(t.cores.len(), 16);
        assert_eq!(
            t.cores[5],
            Core {
                package: 0,
                numa: 1,
                pus: vec![10, 11]
            }
        );
        assert_eq!(
            t.cores[15],
            Core {
                package: 1,
                numa: 3,
                pus: vec![30, 31]
            }
        );
        assert!(t
            .summary()
            .starts_with("2 packages, 4 NUMA domains, 16 cores, 32 PUs"));
        // Restricted to part of a core: the core stays, with its allowed PU only.
        let some: BTreeSet<u32> = [3, 8, 9].into();
        let t = Topology::from_hwloc(&synthetic, &some).unwrap();
        assert_eq!(t.cores.len(), 2);
        assert_eq!(t.cores[0].pus, vec![3]);
        assert_eq!(t.cores[1].numa, 1);
    }

    /// The mask reaches a real child before it runs anything.
    #[test]
    fn a_child_starts_with_its_mask() {
        use std::os::unix::process::CommandExt;
        let cpu = allowed_cpus().unwrap()[0];
        let mask = CpuMask::new(&[cpu]).unwrap();
        let mut cmd = std::process::Command::new("grep");
        cmd.args(["Cpus_allowed_list", "/proc/self/status"]);
        // SAFETY: apply() only makes one system call.
        unsafe { cmd.pre_exec(move || mask.apply()) };
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split_whitespace().last(),
            Some(cpu.to_string().as_str()),
            "{text}"
        );
    }
}
