//! `hpfaas completions bash|zsh|fish`: a shell script that asks this binary
//! for completions while the user types (clap_complete's dynamic
//! completion), so subcommands, options, their values and the names of the
//! local endpoints (`$HPFAAS_HOME/endpoints/*`) all come from the one clap
//! definition and the files as they are at that moment.

use std::ffi::OsString;

use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
use clap_complete::CompleteEnv;

/// The environment variable the scripts set when they ask for completions:
/// a name no user sets by chance (the library's default is `COMPLETE`).
const REQUEST_VAR: &str = "_HPFAAS_COMPLETE";

/// Shells completions are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// bash 4.4 or later (3.2 works without sorting).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// Answers a completion request from one of the scripts and exits, when
/// this process is one; returns otherwise. Call first in `main`.
pub fn answer_if_asked(command: fn() -> clap::Command) {
    CompleteEnv::with_factory(command)
        .var(REQUEST_VAR)
        .complete();
}

/// Writes the script for `shell`. It runs the binary this process was
/// started as (`hpfaas` from the PATH, or the path it was started by).
pub fn write_script(shell: Shell, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let completer = invoked_as();
    let adapter: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
    };
    adapter.write_registration(REQUEST_VAR, "hpfaas", "hpfaas", &completer, out)?;
    out.flush()?;
    Ok(())
}

/// How this process was started: argv[0], made absolute when it is a
/// relative path (the shell may run the script from another directory).
fn invoked_as() -> String {
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("hpfaas"));
    let path = std::path::PathBuf::from(&argv0);
    let path = if path.components().count() > 1 {
        std::path::absolute(&path).unwrap_or(path)
    } else {
        path
    };
    path.to_string_lossy().into_owned()
}

/// Completes an endpoint NAME from the endpoints configured in `$HPFAAS_HOME`.
pub fn endpoint_names() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        hpfaas_executor::lifecycle::list()
            .unwrap_or_default()
            .into_iter()
            .map(|row| CompletionCandidate::new(row.name).help(Some(row.state.into())))
            .collect::<Vec<_>>()
    })
}
