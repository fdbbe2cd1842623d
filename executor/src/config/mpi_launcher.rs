//! `engine.mpi_launcher`: how a manager starts the ranks of the MPI tasks
//! it leads. Read from the file by the agent, passed to each manager as
//! `--mpi-launcher` and read back there with the same parser.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// How MPI tasks are started (`engine.mpi_launcher`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum MpiLauncher {
    /// OpenMPI's `mpiexec`: `--host h1:R,h2:R --map-by ppr:R:node`.
    #[default]
    OpenMpi,
    /// MPICH's (Hydra) `mpiexec`: `-hosts h1,h2 -ppn R`.
    Mpich,
    /// Slurm's `srun`, in a step overlapping the managers' (Slurm blocks only).
    Srun,
}

impl MpiLauncher {
    /// The names `engine.mpi_launcher` accepts.
    pub const NAMES: [&'static str; 3] = ["mpiexec", "mpiexec-mpich", "srun"];

    /// Reads an `engine.mpi_launcher` value.
    pub fn parse(name: &str) -> Result<MpiLauncher, String> {
        match name {
            "mpiexec" => Ok(MpiLauncher::OpenMpi),
            "mpiexec-mpich" => Ok(MpiLauncher::Mpich),
            "srun" => Ok(MpiLauncher::Srun),
            other => Err(format!(
                "engine.mpi_launcher = {other:?} is unknown; use one of {}",
                MpiLauncher::NAMES.join(", ")
            )),
        }
    }

    /// The value `engine.mpi_launcher` takes for this launcher.
    pub fn name(self) -> &'static str {
        match self {
            MpiLauncher::OpenMpi => "mpiexec",
            MpiLauncher::Mpich => "mpiexec-mpich",
            MpiLauncher::Srun => "srun",
        }
    }
}

impl fmt::Display for MpiLauncher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MpiLauncher {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        MpiLauncher::parse(name)
    }
}

impl TryFrom<String> for MpiLauncher {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        MpiLauncher::parse(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_names() {
        assert_eq!(MpiLauncher::parse("srun"), Ok(MpiLauncher::Srun));
        let err = MpiLauncher::parse("aprun").unwrap_err();
        assert!(
            err.contains("aprun") && err.contains("mpiexec-mpich"),
            "{err}"
        );
    }

    #[test]
    fn every_name_reads_back_as_its_launcher() {
        for name in MpiLauncher::NAMES {
            let launcher: MpiLauncher = name.parse().unwrap();
            assert_eq!(launcher.to_string(), name);
        }
        assert_eq!(MpiLauncher::default().name(), "mpiexec");
        for bad in ["", "MPIEXEC", "mpiexec ", "srun;id"] {
            let err = bad.parse::<MpiLauncher>().unwrap_err();
            assert!(
                err.contains(&format!("engine.mpi_launcher = {bad:?} is unknown")),
                "{err}"
            );
        }
    }

    #[derive(Debug, Deserialize)]
    struct Engine {
        #[serde(default)]
        mpi_launcher: MpiLauncher,
    }

    #[test]
    fn a_bad_launcher_in_a_file_is_named_with_its_line() {
        let engine: Engine = toml::from_str("").unwrap();
        assert_eq!(engine.mpi_launcher, MpiLauncher::OpenMpi);
        let engine: Engine = toml::from_str("mpi_launcher = \"mpiexec-mpich\"\n").unwrap();
        assert_eq!(engine.mpi_launcher, MpiLauncher::Mpich);
        let err = toml::from_str::<Engine>("\nmpi_launcher = \"aprun\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.mpi_launcher = \"aprun\" is unknown") && err.contains("line 2"),
            "{err}"
        );
    }
}
