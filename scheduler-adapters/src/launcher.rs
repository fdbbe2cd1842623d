//! Launchers: the line in a job script that starts one `hpfaas manager` per
//! node of the block, unbound from cores (managers pin their workers
//! themselves) and, under Slurm, in a step that task steps may overlap.

use crate::config::ProviderConfig;

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
    /// The configured launcher, or the provider's default.
    pub fn from_config(config: &ProviderConfig) -> Result<Launcher, String> {
        let default = match config.kind.as_str() {
            "slurm" => "srun",
            "pbs" | "lsf" => "mpiexec",
            _ => "single-node",
        };
        let name = config.launcher.as_deref().unwrap_or(default);
        let launcher = match name {
            "srun" => Launcher::Srun,
            "mpiexec" => Launcher::Mpiexec,
            "single-node" => Launcher::SingleNode,
            "custom" => {
                let template = config
                    .launcher_template
                    .clone()
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
        if config.launcher_template.is_some() && !matches!(launcher, Launcher::Custom(_)) {
            return Err(
                "provider.launcher_template is only used with provider.launcher = \"custom\""
                    .into(),
            );
        }
        if launcher == Launcher::SingleNode && config.nodes_per_block > 1 {
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

/// Quotes words for a POSIX shell.
pub fn shell_quote<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| {
            let w = w.as_ref();
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
            {
                w.to_string()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: &str, launcher: Option<&str>, template: Option<&str>) -> ProviderConfig {
        ProviderConfig {
            kind: kind.into(),
            launcher: launcher.map(Into::into),
            launcher_template: template.map(Into::into),
            nodes_per_block: 2,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_lines() {
        let srun = Launcher::from_config(&config("slurm", None, None)).unwrap();
        assert!(srun.line(2, "m").contains("--overlap"));
        assert!(srun.line(2, "m").contains("--cpu-bind=none"));
        let mpi = Launcher::from_config(&config("pbs", None, None)).unwrap();
        assert_eq!(
            mpi.line(2, "m"),
            "mpiexec -n 2 --map-by ppr:1:node --bind-to none m"
        );
        let custom = Launcher::from_config(&config(
            "lsf",
            Some("custom"),
            Some("jsrun -n {nodes} {cmd}"),
        ))
        .unwrap();
        assert_eq!(custom.line(4, "m"), "jsrun -n 4 m");
    }

    #[test]
    fn bad_launchers_are_named() {
        assert!(Launcher::from_config(&config("slurm", Some("aprun"), None))
            .unwrap_err()
            .contains("aprun"));
        assert!(Launcher::from_config(&config("slurm", Some("custom"), None)).is_err());
        assert!(Launcher::from_config(&config("slurm", Some("custom"), Some("jsrun"))).is_err());
        assert!(Launcher::from_config(&config("slurm", Some("single-node"), None)).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote(&["a", "b c", "it's", ""]),
            r#"a 'b c' 'it'\''s' ''"#
        );
    }
}
