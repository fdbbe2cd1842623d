//! MPI functions (`MPIFunction` in the SDK), started by the first manager
//! (the leader) of the nodes the broker held for the task. The command is
//! filled in as a shell function's and run by [`shell`] as
//! `$HPFAAS_MPI_PREFIX <cmd>`, as Globus Compute does, the prefix being the
//! endpoint's `mpi_launcher` aimed at the held hosts; the return code and the
//! output come back as a shell function's (`sr\n`).

use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::mpi::{MpiNode, MpiRequest};
use hpfaas_protocol::task::{ExceptionInfo, Outcome, TaskSpec};

use super::shell::{self, ShellSpec};
use crate::config::mpi_launcher::MpiLauncher;

/// The endpoint's MPI settings, as every manager is given them.
#[derive(Debug, Clone)]
pub struct MpiSettings {
    /// Which launcher starts the ranks.
    pub launcher: MpiLauncher,
    /// `engine.launcher_options`, placed before a task's own options.
    pub options: String,
    /// This user's private directory for hostfiles (the manager's runtime
    /// base): in the shared temp directory another user could swap one.
    pub hostfile_dir: std::path::PathBuf,
}

impl MpiSettings {
    /// Settings from the manager's `--mpi-launcher` and `--launcher-options`,
    /// with hostfiles written in `hostfile_dir`.
    pub fn new(
        launcher: MpiLauncher,
        options: &str,
        hostfile_dir: &std::path::Path,
    ) -> Result<MpiSettings, String> {
        let options = launcher_words(options)
            .map_err(|e| format!("engine.launcher_options: {e}"))?
            .join(" ");
        Ok(MpiSettings {
            launcher,
            options,
            hostfile_dir: hostfile_dir.to_path_buf(),
        })
    }
}

/// Characters a launcher option may hold besides ASCII letters and digits.
/// The prefix reaches the shell as `$HPFAAS_MPI_PREFIX`, unquoted, and user
/// scripts may `eval` it: so no quotes, no glob or shell metacharacters, no
/// control characters; spaces only separate words.
const OPTION_PUNCTUATION: &str = "_-.,:=/@%+^";

/// Splits launcher options into words, refusing any word the shell could
/// read as more than a plain argument; the error names the character.
pub fn launcher_words(options: &str) -> Result<Vec<&str>, String> {
    if let Some(bad) = options
        .chars()
        .find(|c| *c != ' ' && !c.is_ascii_alphanumeric() && !OPTION_PUNCTUATION.contains(*c))
    {
        return Err(format!(
            "launcher options may not contain {bad:?}; they are plain words of letters, digits \
             and {OPTION_PUNCTUATION} separated by spaces"
        ));
    }
    Ok(options.split(' ').filter(|w| !w.is_empty()).collect())
}

/// Hosts in order with their ranks; managers sharing a machine are one entry,
/// since launchers refuse a host named twice.
fn hosts(nodes: &[MpiNode]) -> Vec<(&str, u32)> {
    let mut out: Vec<(&str, u32)> = Vec::new();
    for n in nodes {
        match out.iter_mut().find(|(h, _)| *h == n.host) {
            Some((_, ranks)) => *ranks += n.ranks,
            None => out.push((n.host.as_str(), n.ranks)),
        }
    }
    out
}

/// The launcher command line that starts the task's ranks on `nodes`.
pub fn prefix(launcher: MpiLauncher, nodes: &[MpiNode], options: &str) -> String {
    let hosts = hosts(nodes);
    let ranks: u32 = hosts.iter().map(|(_, r)| r).sum();
    // Only the last node may have fewer ranks; the most on one host bounds all.
    let most = hosts.iter().map(|(_, r)| *r).max().unwrap_or(1);
    let uniform = hosts.iter().all(|(_, r)| *r == most);
    let names = || hosts.iter().map(|(h, _)| *h).collect::<Vec<_>>().join(",");
    let counted = || {
        hosts
            .iter()
            .map(|(h, r)| format!("{h}:{r}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut line = match launcher {
        // Launched unbound, like the managers: the ranks share cores the
        // managers' workers are pinned to, and binding them would fight that.
        MpiLauncher::OpenMpi => format!(
            "mpiexec -n {ranks} --host {} --map-by ppr:{most}:node --bind-to none",
            counted()
        ),
        MpiLauncher::Mpich if uniform => {
            format!("mpiexec -n {ranks} -hosts {} -ppn {most}", names())
        }
        MpiLauncher::Mpich => format!("mpiexec -n {ranks} -hosts {}", counted()),
        // With --ntasks, --ntasks-per-node is a maximum: the last node may have fewer.
        MpiLauncher::Srun => format!(
            "srun --overlap --mpi=pmix --nodes {} --ntasks-per-node {most} --ntasks {ranks} --nodelist {}",
            hosts.len(),
            names()
        ),
    };
    if !options.trim().is_empty() {
        line.push(' ');
        line.push_str(options.trim());
    }
    line
}

/// A hostfile (OpenMPI's syntax): one line per host, `host slots=R`.
pub fn hostfile(nodes: &[MpiNode]) -> String {
    hosts(nodes)
        .iter()
        .map(|(h, r)| format!("{h} slots={r}\n"))
        .collect()
}

/// Runs one MPI task across `nodes` and returns its outcome.
pub async fn run(
    spec: &ShellSpec,
    task: &TaskSpec,
    nodes: &[MpiNode],
    settings: &MpiSettings,
) -> Outcome {
    let fail = |message: String| Outcome::Failed {
        exception: ExceptionInfo::system(SystemFailure::MpiFunctionError, message),
    };
    let request = match MpiRequest::parse(task.resource_spec.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if nodes.is_empty() {
        return fail("the broker sent this MPI task without nodes".into());
    }
    let cmd = match shell::render_command(spec, &task.payload) {
        Ok(cmd) => cmd,
        Err(e) => return fail(e),
    };
    let own = match launcher_words(&request.launcher_options) {
        Ok(words) => words.join(" "),
        Err(e) => return fail(format!("resource_specification launcher_options: {e}")),
    };
    let options = format!("{} {own}", settings.options);
    let prefix = prefix(settings.launcher, nodes, &options);
    let path = settings
        .hostfile_dir
        .join(format!("hpfaas-mpi-{}.hosts", task.task_id));
    // A new 0600 file renamed over any left by a manager killed mid-task.
    if let Err(e) = crate::private::write(&path, hostfile(nodes).as_bytes(), false) {
        return fail(format!("{e:#}"));
    }
    let ranks: u32 = nodes.iter().map(|n| n.ranks).sum();
    let env = [
        ("HPFAAS_MPI_PREFIX", prefix.clone()),
        // Scripts written for Globus Compute (Parsl) read this name.
        ("PARSL_MPI_PREFIX", prefix.clone()),
        ("HPFAAS_MPI_HOSTFILE", path.display().to_string()),
        ("HPFAAS_NUM_RANKS", ranks.to_string()),
        ("HPFAAS_NUM_NODES", nodes.len().to_string()),
    ];
    // The variable, not its text, goes in the line: the shell splits it into
    // words without re-reading quotes, exactly as under Globus Compute.
    let line = format!("$HPFAAS_MPI_PREFIX {cmd}");
    let outcome = shell::run_line(spec, &line, &env, &format!("{prefix} {cmd}")).await;
    let _ = std::fs::remove_file(&path);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn nodes(list: &[(&str, u32)]) -> Vec<MpiNode> {
        list.iter()
            .map(|(h, r)| MpiNode {
                host: h.to_string(),
                ranks: *r,
            })
            .collect()
    }

    #[test]
    fn prefixes_per_launcher() {
        let two = nodes(&[("n1", 2), ("n2", 2)]);
        assert_eq!(
            prefix(MpiLauncher::OpenMpi, &two, ""),
            "mpiexec -n 4 --host n1:2,n2:2 --map-by ppr:2:node --bind-to none"
        );
        assert_eq!(
            prefix(MpiLauncher::Mpich, &two, " -genv A 1 "),
            "mpiexec -n 4 -hosts n1,n2 -ppn 2 -genv A 1"
        );
        assert_eq!(
            prefix(MpiLauncher::Srun, &two, ""),
            "srun --overlap --mpi=pmix --nodes 2 --ntasks-per-node 2 --ntasks 4 --nodelist n1,n2"
        );
        let uneven = nodes(&[("n1", 2), ("n2", 1)]);
        assert_eq!(
            prefix(MpiLauncher::Mpich, &uneven, ""),
            "mpiexec -n 3 -hosts n1:2,n2:1"
        );
    }

    #[test]
    fn managers_sharing_a_machine_merge_into_one_host() {
        let shared = nodes(&[("vm", 2), ("vm", 2)]);
        assert_eq!(
            prefix(MpiLauncher::OpenMpi, &shared, "--oversubscribe"),
            "mpiexec -n 4 --host vm:4 --map-by ppr:4:node --bind-to none --oversubscribe"
        );
        assert_eq!(hostfile(&shared), "vm slots=4\n");
        assert_eq!(
            hostfile(&nodes(&[("a", 2), ("b", 2), ("a", 1)])),
            "a slots=3\nb slots=2\n"
        );
    }

    #[test]
    fn launcher_options_are_plain_words() {
        assert_eq!(
            launcher_words("  --mca btl ^openib  -x OMP_NUM_THREADS=2 --map-by=ppr:1:node ")
                .unwrap(),
            [
                "--mca",
                "btl",
                "^openib",
                "-x",
                "OMP_NUM_THREADS=2",
                "--map-by=ppr:1:node"
            ]
        );
        for bad in [
            "--x; rm -rf ~",
            "$(id)",
            "`id`",
            "a|b",
            "a&b",
            "a>b",
            "a\nb",
            "a\tb",
            "'quoted'",
            "*",
            "--x=$HOME",
            "a\u{0}b",
        ] {
            let err = launcher_words(bad).unwrap_err();
            assert!(err.contains("may not contain"), "{bad:?}: {err}");
        }
        let err = MpiSettings::new(MpiLauncher::OpenMpi, "--x;id", Path::new("/x")).unwrap_err();
        assert!(
            err.contains("engine.launcher_options") && err.contains("';'"),
            "{err}"
        );
    }

    /// A task's own launcher options cannot inject a command: the task
    /// fails with a clear error before anything runs.
    #[tokio::test]
    async fn an_injected_launcher_option_fails_the_task() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-mpi-test-")
            .tempdir()
            .unwrap();
        let dir = scratch.path().join("private");
        let marker = dir.join("pwned");
        let settings = MpiSettings::new(MpiLauncher::OpenMpi, "", &dir).unwrap();
        let spec = ShellSpec {
            cmd: "true".into(),
            walltime: Some(10.0),
            snippet_lines: 10,
            cwd: None,
            quote_arguments: true,
            output_limit: crate::config::DEFAULT_SHELL_OUTPUT_LIMIT,
            container: None,
        };
        let options = format!("--x; touch {}", marker.display());
        let task = TaskSpec {
            task_id: uuid::Uuid::new_v4(),
            function_id: uuid::Uuid::new_v4(),
            payload: hpfaas_protocol::payload::pack(&["11\n[]", "11\n{}"]),
            blob: None,
            result_serializers: Vec::new(),
            resource_spec: Some(
                serde_json::json!({"num_ranks": 1, "launcher_options": options}).to_string(),
            ),
        };
        let outcome = run(&spec, &task, &nodes(&[("localhost", 1)]), &settings).await;
        match outcome {
            Outcome::Failed { exception } => {
                assert!(
                    exception.message.contains("launcher_options"),
                    "{exception:?}"
                )
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(!marker.exists());
    }
}
