//! Options whose values come from a fixed set: `--help`, man pages and
//! shell completions list the values, and a wrong value's error says where
//! it came from (an environment variable is named). Engine options are
//! still read by the same parser as their configuration key (the agent
//! writes a manager's options from the configuration, and the manager
//! reads them back), so a wrong value gets the configuration's message.

use std::ffi::OsStr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::ErrorKind;
use clap::ValueEnum;
use hpfaas_executor::config::container::ContainerType;
use hpfaas_executor::config::cpu_affinity::CpuAffinity;
use hpfaas_executor::config::mpi_launcher::MpiLauncher;

/// A parser that names the values it accepts and reads them with `parse`.
pub struct Listed<T> {
    values: Vec<PossibleValue>,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Clone for Listed<T> {
    fn clone(&self) -> Self {
        Listed {
            values: self.values.clone(),
            parse: self.parse,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Listed<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let mut option = arg.map_or_else(|| "the value".to_string(), |a| format!("'{a}'"));
        let from_env = arg
            .and_then(clap::Arg::get_env)
            .filter(|var| std::env::var_os(var).as_deref() == Some(value));
        let mut value = value;
        if let Some(var) = from_env {
            // An empty variable means unset, as with every HPFAAS_* variable.
            if value.is_empty() {
                if let Some(default) = arg.and_then(|a| a.get_default_values().first()) {
                    value = default;
                }
            }
            // A wrong value names its variable: the user may not remember
            // setting it.
            option += &format!(" (from the environment variable {})", var.to_string_lossy());
        }
        let Some(text) = value.to_str() else {
            return Err(clap::Error::raw(
                ErrorKind::InvalidUtf8,
                format!("{option} is not UTF-8\n"),
            )
            .with_cmd(cmd));
        };
        (self.parse)(text).map_err(|message| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value '{text}' for {option}: {message}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.values.iter().cloned()))
    }
}

/// A `ValueEnum` (its variants and their doc comments listed), with an
/// error that says where a wrong value came from.
pub fn value_enum<T: ValueEnum + Clone + Send + Sync + 'static>() -> Listed<T> {
    fn parse<T: ValueEnum>(text: &str) -> Result<T, String> {
        T::from_str(text, false).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|v| v.get_name().to_string())
                .collect();
            format!("use one of {}", names.join(", "))
        })
    }
    Listed {
        values: T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .collect(),
        parse: parse::<T>,
    }
}

/// A fixed list of `(value, meaning)` read by a configuration parser.
fn listed<T>(
    values: &[(&'static str, &'static str)],
    parse: fn(&str) -> Result<T, String>,
) -> Listed<T> {
    Listed {
        values: values
            .iter()
            .map(|(name, help)| PossibleValue::new(*name).help(*help))
            .collect(),
        parse,
    }
}

/// `--cpu-affinity`: the named modes (a `list:` value is accepted too, and
/// described in the option's own help, as it is no fixed value).
pub fn cpu_affinity() -> Listed<CpuAffinity> {
    listed(
        &[
            (
                "none",
                "no pinning: every worker may use all of the manager's CPUs",
            ),
            ("block", "worker i gets the i-th contiguous block of cores"),
            ("block-reverse", "as block, counting from the last core"),
            (
                "alternating",
                "cores dealt round-robin: worker i gets i, i+n, ...",
            ),
        ],
        CpuAffinity::parse,
    )
}

/// `--mpi-launcher`: every launcher there is.
pub fn mpi_launcher() -> Listed<MpiLauncher> {
    listed(
        &[
            ("mpiexec", "OpenMPI's mpiexec"),
            ("mpiexec-mpich", "MPICH's (Hydra) mpiexec"),
            (
                "srun",
                "Slurm's srun, in a step overlapping the managers' (Slurm blocks only)",
            ),
        ],
        MpiLauncher::parse,
    )
}

/// `--container-type`: every container runtime there is.
pub fn container_type() -> Listed<ContainerType> {
    listed(
        &[
            (
                "podman",
                "podman run: an image, an image archive, or a root directory",
            ),
            ("docker", "docker run: an image"),
            (
                "apptainer",
                "apptainer exec: a .sif, a sandbox directory, or an image URI",
            ),
            ("singularity", "singularity exec: as apptainer"),
            (
                "bwrap",
                "bubblewrap: a root directory, or this node's / read-only",
            ),
        ],
        ContainerType::parse,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value listed is one the configuration's parser takes, and the
    /// list of launchers is the configuration's whole list.
    #[test]
    fn listed_values_are_the_parsers_values() {
        for value in cpu_affinity().values {
            let mode: CpuAffinity = value.get_name().parse().unwrap();
            assert_eq!(mode.to_string(), value.get_name());
        }
        let launchers = mpi_launcher().values;
        let names: Vec<&str> = launchers.iter().map(PossibleValue::get_name).collect();
        assert_eq!(names, MpiLauncher::NAMES);
        for name in names {
            assert_eq!(name.parse::<MpiLauncher>().unwrap().name(), name);
        }
        let runtimes = container_type().values;
        let names: Vec<&str> = runtimes.iter().map(PossibleValue::get_name).collect();
        assert_eq!(names, ContainerType::NAMES);
    }
}
