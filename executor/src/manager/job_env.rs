//! The environment the manager gives every child it starts (workers, shell
//! and MPI tasks): the job script's environment as it was before the
//! launcher started the managers, so a user's own `mpiexec`, `srun` or
//! mpi4py sees the batch job and not the managers' MPI job.
//!
//! The job script saves that environment (`env -0`) to the file named by
//! `HPFAAS_JOB_ENV` just before its launch line
//! (`scheduler-adapters/src/script.rs`). Without that file (the local
//! provider, a manager started by hand) the manager's own environment is
//! used, less the variables launchers add ([`is_launcher_variable`]).
//!
//! No `HPFAAS_*` variable reaches a child from either source: they name the
//! endpoint's private files or hold the owner's secrets, and a task may be
//! someone else's code. The manager sets the few a child needs
//! (`HPFAAS_WORKER_RANK`, `HPFAAS_MPI_PREFIX`, ...) itself. Children start
//! in a neutral directory ([`working_directory`]), not where the block runs.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::OnceLock;

/// Names the file holding the job script's environment.
pub const JOB_ENV_VAR: &str = "HPFAAS_JOB_ENV";

/// The environment for a child of this manager (read once, then shared).
/// Start children with `env_clear()` and these, then add their own.
pub fn child_environment() -> &'static [(OsString, OsString)] {
    static ENV: OnceLock<Vec<(OsString, OsString)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let saved = std::env::var_os(JOB_ENV_VAR).and_then(|path| match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(
                    "cannot read the job environment {}: {e}; children get this manager's \
                     environment less the launcher's variables",
                    path.to_string_lossy()
                );
                None
            }
        });
        compose(saved.as_deref(), std::env::vars_os().collect())
    })
}

/// Children's environment from the saved job environment, if usable, and
/// the manager's own.
fn compose(saved: Option<&[u8]>, own: Vec<(OsString, OsString)>) -> Vec<(OsString, OsString)> {
    let saved = saved.map(parse_env_file).unwrap_or_default();
    // An empty file means the script could not write it; starting children
    // with no PATH at all would be worse than the fallback.
    let mut env = if saved.is_empty() {
        own.into_iter()
            .filter(|(name, _)| !is_launcher_variable(name))
            .collect()
    } else {
        let mut env = saved;
        for (name, value) in own.into_iter().filter(|(n, _)| kept_from_manager(n)) {
            set(&mut env, name, value);
        }
        env
    };
    env.retain(|(name, _)| !is_hpfaas_variable(name));
    env
}

/// True for hpfaas's own variables (`HPFAAS_*`), which no child inherits.
fn is_hpfaas_variable(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"HPFAAS_")
}

/// Where children start: the user's home directory (from their
/// environment) as a batch job would, else `/`; never the block's own
/// directory, which holds the endpoint's job scripts, logs and saved
/// environments.
pub fn working_directory() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        child_environment()
            .iter()
            .find(|(name, _)| name == "HOME")
            .map(|(_, home)| std::path::PathBuf::from(home))
            .filter(|home| home.is_absolute() && home.is_dir())
            .unwrap_or_else(|| std::path::PathBuf::from("/"))
    })
}

/// Parses `env -0` output: `NAME=value` entries separated by NUL bytes
/// (values may hold newlines). Entries without a name are skipped; a
/// repeated name keeps its last value.
pub fn parse_env_file(bytes: &[u8]) -> Vec<(OsString, OsString)> {
    let mut env = Vec::new();
    for entry in bytes.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        if eq == 0 {
            continue;
        }
        set(
            &mut env,
            OsString::from_vec(entry[..eq].to_vec()),
            OsString::from_vec(entry[eq + 1..].to_vec()),
        );
    }
    env
}

fn set(env: &mut Vec<(OsString, OsString)>, name: OsString, value: OsString) {
    match env.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    }
}

/// Variables children take from the manager even when the job environment
/// is saved: those naming the node, which differ from the node that wrote
/// the file when a block spans several.
fn kept_from_manager(name: &OsStr) -> bool {
    [&b"HOSTNAME"[..], b"SLURMD_NODENAME", b"SLURM_TOPOLOGY_ADDR"].contains(&name.as_bytes())
}

/// True for a variable a launcher (OpenMPI's `mpiexec`, Hydra, `srun`, PMIx)
/// sets for the processes it starts. Passed on, they would make a user's MPI
/// program join the managers' job, or fail to start. Settings a user
/// exports (`OMPI_MCA_*` preferences, `OMPI_ALLOW_RUN_AS_ROOT*`) stay,
/// except the `OMPI_MCA_*` names OpenMPI's launcher itself sets per job.
pub fn is_launcher_variable(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    if let Some(mca) = name.strip_prefix("OMPI_MCA_") {
        // Found by diffing `env` inside and outside `mpiexec` (OpenMPI 4.1):
        // with these left in, MPI_Init in a child fails ("Unreachable").
        return mca == "ess"
            || mca == "pmix"
            || mca == "initial_wdir"
            || mca == "mpi_oversubscribe"
            || mca == "hwloc_base_binding_policy"
            || mca == "shmem_RUNTIME_QUERY_hint"
            || mca.starts_with("ess_base_")
            || mca.starts_with("orte_");
    }
    if name.starts_with("OMPI_") {
        return !name.starts_with("OMPI_ALLOW_RUN_AS_ROOT");
    }
    const PREFIXES: &[&str] = &[
        "PMIX_",
        "PMI_",
        "HYDRA_",
        "SLURM_STEP_",
        "SLURM_CPU_BIND",
        "SLURM_PMIX",
        "SLURM_SRUN_COMM_",
    ];
    const NAMES: &[&str] = &[
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "SLURM_NODEID",
        "SLURM_TASK_PID",
        "SLURM_STEPID",
        "SLURM_GTIDS",
        "SLURM_LAUNCH_NODE_IPADDR",
        "SRUN_DEBUG",
        "MPI_LOCALRANKID",
        "MPI_LOCALNRANKS",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn get<'a>(env: &'a [(OsString, OsString)], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn env_files_parse_with_newlines_and_odd_entries() {
        let bytes = b"PATH=/usr/bin\0F=a\nb=c\0EMPTY=\0noequals\0=nameless\0PATH=/bin\0";
        let env = parse_env_file(bytes);
        assert_eq!(get(&env, "PATH"), Some("/bin"));
        assert_eq!(get(&env, "F"), Some("a\nb=c"));
        assert_eq!(get(&env, "EMPTY"), Some(""));
        assert_eq!(env.len(), 3);
        assert!(parse_env_file(b"").is_empty());
    }

    /// What `mpiexec` (OpenMPI 4.1) and `srun --mpi=pmix` add, captured here.
    #[test]
    fn launcher_variables_are_dropped_and_user_settings_kept() {
        for launcher in [
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE",
            "OMPI_UNIVERSE_SIZE",
            "OMPI_ARGV",
            "OMPI_MCA_ess",
            "OMPI_MCA_ess_base_jobid",
            "OMPI_MCA_orte_hnp_uri",
            "OMPI_MCA_pmix",
            "PMIX_RANK",
            "PMIX_SERVER_URI4",
            "PMI_FD",
            "HYDRA_CONTROL_FD",
            "SLURM_STEP_ID",
            "SLURM_STEPID",
            "SLURM_PROCID",
            "SLURM_LOCALID",
            "SLURM_NODEID",
            "SLURM_TASK_PID",
            "SLURM_SRUN_COMM_PORT",
            "SLURM_CPU_BIND",
            "SLURM_PMIXP_ABORT_AGENT_PORT",
            "MPI_LOCALRANKID",
            "MPI_LOCALNRANKS",
        ] {
            assert!(is_launcher_variable(OsStr::new(launcher)), "{launcher}");
        }
        for user in [
            "OMPI_MCA_btl_tcp_if_include",
            "OMPI_MCA_rmaps_base_oversubscribe",
            "OMPI_ALLOW_RUN_AS_ROOT",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
            "SLURM_JOB_ID",
            "SLURM_JOB_NODELIST",
            "SLURM_NTASKS",
            "PATH",
            "PMIXED",
            "CUDA_VISIBLE_DEVICES",
        ] {
            assert!(!is_launcher_variable(OsStr::new(user)), "{user}");
        }
    }

    #[test]
    fn without_a_saved_file_the_own_environment_is_filtered() {
        let own = pairs(&[
            ("PATH", "/usr/bin"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_MCA_btl", "self,tcp"),
            ("PMIX_RANK", "1"),
        ]);
        let env = compose(None, own.clone());
        assert_eq!(
            env,
            pairs(&[("PATH", "/usr/bin"), ("OMPI_MCA_btl", "self,tcp")])
        );
        // An empty file (the script could not write it) counts as none.
        assert_eq!(compose(Some(b""), own), env);
    }

    /// The owner's token, the endpoint's paths and any other `HPFAAS_*`
    /// variable never reach a task, from the saved file or the manager.
    #[test]
    fn hpfaas_variables_never_reach_children() {
        let saved = b"PATH=/job/bin\0HPFAAS_TOKEN=t1\0HPFAAS_JOB_ENV=/e/b.env\0";
        let own = pairs(&[
            ("PATH", "/usr/bin"),
            ("HPFAAS_TOKEN", "t2"),
            ("HPFAAS_HOME", "/h"),
            ("HPFAAS_URL", "https://s"),
        ]);
        for env in [compose(Some(saved), own.clone()), compose(None, own)] {
            let names: Vec<_> = env.iter().map(|(n, _)| n.to_str().unwrap()).collect();
            assert!(names.iter().all(|n| !n.starts_with("HPFAAS_")), "{names:?}");
            assert!(names.contains(&"PATH"), "{names:?}");
        }
    }

    #[test]
    fn a_saved_file_wins_but_the_node_settings_stay() {
        let saved = b"PATH=/job/bin\0HOSTNAME=node1\0SLURM_JOB_ID=7\0OMPI_MCA_btl=tcp\0";
        let own = pairs(&[
            ("PATH", "/launcher/bin"),
            ("HOSTNAME", "node2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("SLURM_STEP_ID", "0"),
            ("HPFAAS_HOME", "/h"),
        ]);
        let env = compose(Some(saved), own);
        assert_eq!(get(&env, "PATH"), Some("/job/bin"));
        assert_eq!(get(&env, "HOSTNAME"), Some("node2"));
        assert_eq!(get(&env, "SLURM_JOB_ID"), Some("7"));
        assert_eq!(get(&env, "OMPI_MCA_btl"), Some("tcp"));
        assert_eq!(get(&env, "HPFAAS_HOME"), None);
        assert_eq!(get(&env, "OMPI_COMM_WORLD_RANK"), None);
        assert_eq!(get(&env, "SLURM_STEP_ID"), None);
    }
}
