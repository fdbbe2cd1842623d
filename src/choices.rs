//! Options whose values come from a fixed set: `--help`, man pages and
//! shell completions list the values, and each is still read by the same
//! parser as its configuration key (the agent writes a manager's options
//! from the configuration, and the manager reads them back), so a wrong
//! value gets the configuration's message.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::str::FromStr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::ErrorKind;
use hpfaas_executor::config::cpu_affinity::CpuAffinity;
use hpfaas_executor::config::mpi_launcher::MpiLauncher;

/// A parser through `T`'s `FromStr` that names the values it accepts.
pub struct Listed<T> {
    values: &'static [(&'static str, &'static str)],
    parsed: PhantomData<fn() -> T>,
}

impl<T> Clone for Listed<T> {
    fn clone(&self) -> Self {
        Listed {
            values: self.values,
            parsed: PhantomData,
        }
    }
}

impl<T> TypedValueParser for Listed<T>
where
    T: FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let option = arg.map_or_else(|| "the value".to_string(), |a| format!("'{a}'"));
        let Some(text) = value.to_str() else {
            return Err(clap::Error::raw(
                ErrorKind::InvalidUtf8,
                format!("{option} is not UTF-8\n"),
            )
            .with_cmd(cmd));
        };
        text.parse().map_err(|message: String| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value '{text}' for {option}: {message}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            self.values
                .iter()
                .map(|(name, help)| PossibleValue::new(*name).help(*help)),
        ))
    }
}

/// `--cpu-affinity`: the named modes (a `list:` value is accepted too, and
/// described in the option's own help, as it is no fixed value).
pub fn cpu_affinity() -> Listed<CpuAffinity> {
    Listed {
        values: &[
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
        parsed: PhantomData,
    }
}

/// `--mpi-launcher`: every launcher there is.
pub fn mpi_launcher() -> Listed<MpiLauncher> {
    Listed {
        values: &[
            ("mpiexec", "OpenMPI's mpiexec"),
            ("mpiexec-mpich", "MPICH's (Hydra) mpiexec"),
            (
                "srun",
                "Slurm's srun, in a step overlapping the managers' (Slurm blocks only)",
            ),
        ],
        parsed: PhantomData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value listed is one the configuration's parser takes, and the
    /// list of launchers is the configuration's whole list.
    #[test]
    fn listed_values_are_the_parsers_values() {
        for (name, _) in cpu_affinity().values {
            let mode: CpuAffinity = name.parse().unwrap();
            assert_eq!(mode.to_string(), *name);
        }
        let names: Vec<&str> = mpi_launcher().values.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, MpiLauncher::NAMES);
        for name in names {
            assert_eq!(name.parse::<MpiLauncher>().unwrap().name(), name);
        }
    }
}
