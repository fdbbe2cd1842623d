//! Launchers: the line in a job script that starts one `hpfaas manager` per
//! node of the block, unbound from cores (managers pin their workers
//! themselves) and, under Slurm, in a step that task steps may overlap.

use crate::kind::ProviderKind;

/// How a block's managers are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    /// `srun`, one task per node.
    Srun,
    /// OpenMPI's `mpiexec`, one rank per node.
    Mpiexec,
    /// The manager alone (one-node blocks).
    SingleNode,
    /// A site template with `{cmd}` and `{nodes}` (jsrun, aprun, ...).
    Custom(String),
}

impl Launcher {
    /// The launcher named by `provider.launcher` (with `launcher_template`
    /// for `custom`), or the default of `kind`, checked against the block's
    /// `nodes_per_block`.
    pub fn choose(
        kind: ProviderKind,
        name: Option<&str>,
        template: Option<&str>,
        nodes_per_block: u32,
    ) -> Result<Launcher, String> {
        let default = match kind {
            ProviderKind::Slurm => "srun",
            ProviderKind::Pbs | ProviderKind::Lsf => "mpiexec",
            ProviderKind::Local => "single-node",
        };
        let name = name.unwrap_or(default);
        let launcher = match name {
            "srun" => Launcher::Srun,
            "mpiexec" => Launcher::Mpiexec,
            "single-node" => Launcher::SingleNode,
            "custom" => {
                let template = template
                    .map(str::to_string)
                    .ok_or("provider.launcher = \"custom\" needs provider.launcher_template (with {cmd})")?;
                if !template.contains("{cmd}") {
                    return Err(format!("provider.launcher_template {template:?} must contain {{cmd}}"));
                }
                Launcher::Custom(template)
            }
            other => {
                return Err(format!(
                    "provider.launcher = {other:?} is unknown; use srun, mpiexec, single-node or custom"
                ))
            }
        };
        if template.is_some() && !matches!(launcher, Launcher::Custom(_)) {
            return Err(
                "provider.launcher_template is only used with provider.launcher = \"custom\""
                    .into(),
            );
        }
        if launcher == Launcher::SingleNode && nodes_per_block > 1 {
            return Err(
                "provider.launcher = \"single-node\" cannot start managers on several nodes".into(),
            );
        }
        Ok(launcher)
    }

    /// The launch line for `nodes` nodes running `cmd` (already shell-quoted).
    pub fn line(&self, nodes: u32, cmd: &str) -> String {
        match self {
            Launcher::Srun => format!(
                "srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpu-bind=none --overlap --kill-on-bad-exit=1 {cmd}"
            ),
            Launcher::Mpiexec => format!("mpiexec -n {nodes} --map-by ppr:1:node --bind-to none {cmd}"),
            Launcher::SingleNode => cmd.to_string(),
            Launcher::Custom(t) => t.replace("{nodes}", &nodes.to_string()).replace("{cmd}", cmd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launcher of a two-node block of `kind`.
    fn choose(
        kind: &str,
        launcher: Option<&str>,
        template: Option<&str>,
    ) -> Result<Launcher, String> {
        Launcher::choose(kind.parse().unwrap(), launcher, template, 2)
    }

    #[test]
    fn defaults_and_lines() {
        let srun = choose("slurm", None, None).unwrap();
        assert!(srun.line(2, "m").contains("--overlap"));
        assert!(srun.line(2, "m").contains("--cpu-bind=none"));
        let mpi = choose("pbs", None, None).unwrap();
        assert_eq!(
            mpi.line(2, "m"),
            "mpiexec -n 2 --map-by ppr:1:node --bind-to none m"
        );
        let custom = choose("lsf", Some("custom"), Some("jsrun -n {nodes} {cmd}")).unwrap();
        assert_eq!(custom.line(4, "m"), "jsrun -n 4 m");
    }

    #[test]
    fn bad_launchers_are_named() {
        assert!(choose("slurm", Some("aprun"), None)
            .unwrap_err()
            .contains("aprun"));
        assert!(choose("slurm", Some("custom"), None).is_err());
        assert!(choose("slurm", Some("custom"), Some("jsrun")).is_err());
        assert!(choose("slurm", Some("single-node"), None).is_err());
    }
}
