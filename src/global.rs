//! The options every subcommand takes (`--home`, `--output`, `-v`, `-q`),
//! and what they set up before the subcommand runs: the home directory the
//! executor's functions and every child process read from `HPFAAS_HOME`, and
//! the log filter on stderr (or on a daemon's rotating `endpoint.log`).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::ArgAction;
use hpfaas_executor::log_rotation::LogWriter;

use crate::output::Format;

/// Options of every subcommand.
#[derive(clap::Args)]
pub struct GlobalArgs {
    /// Where hpfaas keeps its state: endpoints, the service's data, up.json [default: ~/.hpfaas].
    #[arg(
        long,
        global = true,
        env = "HPFAAS_HOME",
        value_name = "DIR",
        // An empty HPFAAS_HOME means unset, as it always has: not an error.
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    pub home: Option<PathBuf>,
    /// How commands print data: text (tables) or json (one document on stdout, keys in docs/cli.md).
    #[arg(
        long,
        global = true,
        env = "HPFAAS_OUTPUT",
        value_parser = crate::choices::value_enum::<Format>(),
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub output: Format,
    /// More logging on stderr: -v debug, -vv trace (also for the agent and
    /// managers started from here). RUST_LOG, when set, overrides it.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less logging on stderr: -q warnings and errors, -qq errors only
    /// (also for processes started from here). RUST_LOG, when set, overrides it.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,
}

impl GlobalArgs {
    /// Applies the options to this process before the subcommand runs. Call
    /// before any thread is started: it sets environment variables, which
    /// the executor's functions and every process started from here read.
    /// `daemon_log` is asked, once the home directory is set, for the
    /// rotating `endpoint.log` of a daemon (`endpoint start --rotate-log`):
    /// when it gives one, logs go there instead of stderr.
    pub fn apply(&self, daemon_log: impl FnOnce() -> Option<LogWriter>) {
        if let Some(home) = self.home.as_ref().filter(|h| !h.as_os_str().is_empty()) {
            // Absolute, so that a daemon or a job script elsewhere finds the same one.
            let home = std::path::absolute(home).unwrap_or_else(|_| home.clone());
            std::env::set_var("HPFAAS_HOME", home);
        }
        let rust_log = std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let level = self.level();
        if rust_log.is_none() && (self.verbose > 0 || self.quiet > 0) {
            // An agent started as a daemon, and its managers, log as asked too.
            std::env::set_var("RUST_LOG", level);
        }
        let filter = rust_log
            .and_then(|spec| tracing_subscriber::EnvFilter::try_new(spec).ok())
            .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
        let logs = tracing_subscriber::fmt().with_env_filter(filter);
        match daemon_log() {
            Some(log) => logs.with_writer(log).with_ansi(false).init(),
            None => logs
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init(),
        }
    }

    /// The log level `-v`/`-q` ask for.
    fn level(&self) -> &'static str {
        match (self.verbose, self.quiet) {
            (0, 0) => "info",
            (1, _) => "debug",
            (2.., _) => "trace",
            (0, 1) => "warn",
            (0, 2..) => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(verbose: u8, quiet: u8) -> GlobalArgs {
        GlobalArgs {
            home: None,
            output: Format::Text,
            verbose,
            quiet,
        }
    }

    #[test]
    fn verbosity_counts_map_to_levels() {
        assert_eq!(args(0, 0).level(), "info");
        assert_eq!(args(1, 0).level(), "debug");
        assert_eq!(args(3, 0).level(), "trace");
        assert_eq!(args(0, 1).level(), "warn");
        assert_eq!(args(0, 5).level(), "error");
    }
}
