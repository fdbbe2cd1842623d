//! Batch-system providers: each one starts, watches and cancels *blocks*
//! (pilot jobs) that run `hpfaas manager`.
//!
//! A provider only talks to its batch system; deciding how many blocks to run
//! is the endpoint's strategy (`executor/src/strategy.rs`). Calls may block on
//! scheduler commands (each bounded by `provider.cmd_timeout`), so the
//! endpoint runs them off its event loop.
//!
//! `local` runs blocks as process groups; `slurm`, `pbs` and `lsf` share one
//! flow ([`batch::BatchProvider`]) over their own commands and formats
//! ([`slurm`], [`pbs`], [`lsf`]), with job scripts laid out by [`script`] and
//! commands run by [`command`]. What every provider is (the [`Provider`]
//! trait and its types) is [`provider`]; [`secrets`] keeps the agent's
//! secrets from blocks, and [`private`] makes the files only they may read.
//! This file only picks the provider a configuration asks for.

pub mod batch;
pub mod command;
pub mod config;
pub mod kind;
pub mod launcher;
pub mod local;
pub mod lsf;
pub mod pbs;
pub mod private;
pub mod provider;
pub mod quote;
pub mod script;
pub mod secrets;
pub mod slurm;

use batch::BatchProvider;
pub use config::ProviderConfig;
pub use kind::ProviderKind;
pub use private::create_private;
pub use provider::{BlockRequest, JobId, JobState, Provider, ProviderError};
pub use secrets::{is_secret_variable, strip_secrets};

/// The provider a configuration asks for.
pub fn build(config: &ProviderConfig) -> Result<Box<dyn Provider>, String> {
    config.validate()?;
    match config.kind {
        ProviderKind::Local => Ok(Box::new(local::LocalProvider::new(config.clone()))),
        ProviderKind::Slurm => Ok(Box::new(BatchProvider::<slurm::Slurm>::new(
            config.clone(),
        )?)),
        ProviderKind::Pbs => Ok(Box::new(BatchProvider::<pbs::Pbs>::new(config.clone())?)),
        ProviderKind::Lsf => Ok(Box::new(BatchProvider::<lsf::Lsf>::new(config.clone())?)),
    }
}

/// A captured scheduler output from `tests/fixtures/` (e.g. `pbs/qsub.txt`).
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
