//! The `[provider]` section of an endpoint configuration: where blocks run,
//! how big they are, and how many. Key names follow Parsl's providers and
//! Globus Compute's endpoint configs; `docs/configuration.md` lists them all.

use std::time::Duration;

use serde::Deserialize;

use crate::kind::ProviderKind;
use crate::launcher::Launcher;

/// `[provider]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `local`, `slurm`, `pbs` or `lsf`.
    #[serde(rename = "type", default)]
    pub kind: ProviderKind,
    /// Slurm partition (`--partition`).
    pub partition: Option<String>,
    /// PBS or LSF queue (`-q`).
    pub queue: Option<String>,
    /// Slurm or PBS account (`--account`, `-A`).
    pub account: Option<String>,
    /// LSF project (`-P`).
    pub project: Option<String>,
    /// Slurm quality of service (`--qos`).
    pub qos: Option<String>,
    /// Slurm constraint (`--constraint`).
    pub constraint: Option<String>,
    /// Extra PBS `select` resources, e.g. `system=polaris` or `ngpus=4`.
    pub select_options: Option<String>,
    /// Nodes per block.
    #[serde(default = "one")]
    pub nodes_per_block: u32,
    /// Blocks started with the endpoint.
    #[serde(default)]
    pub init_blocks: u32,
    /// Blocks kept at all times.
    #[serde(default)]
    pub min_blocks: u32,
    /// Most blocks at once.
    #[serde(default = "one")]
    pub max_blocks: u32,
    /// Walltime of each block, `HH:MM:SS`.
    #[serde(default = "default_walltime")]
    pub walltime: String,
    /// Seconds a block may sit idle before it is cancelled (down to `min_blocks`).
    #[serde(default = "default_max_idletime")]
    pub max_idletime: f64,
    /// Fraction of the outstanding tasks to provision slots for (0..=1).
    #[serde(default = "default_parallelism")]
    pub parallelism: f64,
    /// Seconds before a block's walltime ends when its managers stop taking tasks.
    #[serde(default = "default_drain_period")]
    pub drain_period: f64,
    /// Extra scheduler directives, copied verbatim into the job script.
    #[serde(default)]
    pub scheduler_options: Vec<String>,
    /// Shell lines run before the managers start.
    #[serde(default)]
    pub worker_init: String,
    /// How the managers are started: `srun`, `mpiexec`, `single-node`, `custom`.
    pub launcher: Option<String>,
    /// The launch line for `launcher = "custom"`: `{cmd}`, `{nodes}` are filled in.
    pub launcher_template: Option<String>,
    /// Seconds a scheduler command may take before it counts as failed.
    #[serde(default = "default_cmd_timeout")]
    pub cmd_timeout: f64,
    /// Seconds between status queries to the scheduler (one batched command
    /// each); default 10 for batch systems, 1 for `local`.
    pub poll_period: Option<f64>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: ProviderKind::default(),
            partition: None,
            queue: None,
            account: None,
            project: None,
            qos: None,
            constraint: None,
            select_options: None,
            nodes_per_block: 1,
            init_blocks: 0,
            min_blocks: 0,
            max_blocks: 1,
            walltime: default_walltime(),
            max_idletime: default_max_idletime(),
            parallelism: default_parallelism(),
            drain_period: default_drain_period(),
            scheduler_options: Vec::new(),
            worker_init: String::new(),
            launcher: None,
            launcher_template: None,
            cmd_timeout: default_cmd_timeout(),
            poll_period: None,
        }
    }
}

fn one() -> u32 {
    1
}
fn default_walltime() -> String {
    "00:30:00".into()
}
fn default_max_idletime() -> f64 {
    120.0
}
fn default_parallelism() -> f64 {
    1.0
}
fn default_drain_period() -> f64 {
    60.0
}
fn default_cmd_timeout() -> f64 {
    30.0
}

/// `[provider]` keys only some kinds of provider use, with those kinds; every
/// other key applies to all. The validator refuses such a key set for another
/// kind, and the template `hpfaas endpoint configure` writes lists a kind's
/// keys from this table.
pub const KIND_SPECIFIC_KEYS: &[(&str, &[ProviderKind])] = &[
    ("partition", &[ProviderKind::Slurm]),
    ("qos", &[ProviderKind::Slurm]),
    ("constraint", &[ProviderKind::Slurm]),
    ("queue", &[ProviderKind::Pbs, ProviderKind::Lsf]),
    ("account", &[ProviderKind::Slurm, ProviderKind::Pbs]),
    ("project", &[ProviderKind::Lsf]),
    ("select_options", &[ProviderKind::Pbs]),
];

/// Whether `provider.KEY` may be set when `provider.type` is `kind`.
pub fn key_applies(key: &str, kind: ProviderKind) -> bool {
    KIND_SPECIFIC_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .is_none_or(|(_, kinds)| kinds.contains(&kind))
}

/// Longest duration any provider key accepts, in seconds (about 31 years):
/// every accepted value is then a valid `Duration` (`from_secs_f64` panics
/// on values beyond `u64` seconds).
pub const MAX_SECONDS: f64 = 1e9;

/// Parses `HH:MM:SS` (or `MM:SS`, or whole minutes) into a duration.
pub fn parse_walltime(text: &str) -> Result<Duration, String> {
    let bad = || format!("provider.walltime = {text:?} is not HH:MM:SS");
    let parts: Vec<u64> = text
        .split(':')
        .map(|p| p.trim().parse::<u64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    // Checked: a huge field is an error, not an arithmetic overflow.
    let seconds = match parts[..] {
        [m] => m.checked_mul(60),
        [m, s] if s < 60 => m.checked_mul(60).and_then(|t| t.checked_add(s)),
        [h, m, s] if m < 60 && s < 60 => {
            h.checked_mul(3600).and_then(|t| t.checked_add(m * 60 + s))
        }
        _ => return Err(bad()),
    }
    .ok_or_else(bad)?;
    if seconds == 0 || seconds as f64 > MAX_SECONDS {
        return Err(bad());
    }
    Ok(Duration::from_secs(seconds))
}

impl ProviderConfig {
    /// Seconds between status queries: controllers of real clusters ask
    /// users not to poll more often than every few seconds.
    pub fn poll_period(&self) -> Duration {
        let default = match self.kind {
            ProviderKind::Local => 1.0,
            ProviderKind::Slurm | ProviderKind::Pbs | ProviderKind::Lsf => 10.0,
        };
        Duration::from_secs_f64(self.poll_period.unwrap_or(default))
    }

    /// The block walltime (validated by [`ProviderConfig::validate`]).
    pub fn walltime(&self) -> Duration {
        parse_walltime(&self.walltime).unwrap_or(Duration::from_secs(1800))
    }

    /// Checks that no value holds a control character: one would end a
    /// `#SBATCH`/`#PBS`/`#BSUB` line and run the rest as shell. Only the keys
    /// made of lines (`scheduler_options`, `worker_init`) may hold line
    /// breaks and tabs.
    fn check_characters(&self) -> Result<(), String> {
        let single = [
            ("partition", self.partition.as_ref()),
            ("queue", self.queue.as_ref()),
            ("account", self.account.as_ref()),
            ("project", self.project.as_ref()),
            ("qos", self.qos.as_ref()),
            ("constraint", self.constraint.as_ref()),
            ("select_options", self.select_options.as_ref()),
            ("walltime", Some(&self.walltime)),
            ("launcher", self.launcher.as_ref()),
            ("launcher_template", self.launcher_template.as_ref()),
        ];
        let lines = std::iter::once(("worker_init", &self.worker_init)).chain(
            self.scheduler_options
                .iter()
                .map(|o| ("scheduler_options", o)),
        );
        let values = single
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?, false)))
            .chain(lines.map(|(key, value)| (key, value, true)));
        for (key, value, multiline) in values {
            if let Some(c) = value
                .chars()
                .find(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
            {
                return Err(format!(
                    "provider.{key} holds the control character {c:?}; it would end a \
                     job script line{}",
                    if multiline {
                        ""
                    } else {
                        " (one line, no tabs or line breaks)"
                    }
                ));
            }
        }
        Ok(())
    }

    /// Checks values and that each key suits the provider; names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.check_characters()?;
        parse_walltime(&self.walltime)?;
        if self.min_blocks > self.max_blocks || self.init_blocks > self.max_blocks {
            return Err(format!(
                "provider.init_blocks ({}) and provider.min_blocks ({}) must not exceed provider.max_blocks ({})",
                self.init_blocks, self.min_blocks, self.max_blocks
            ));
        }
        if self.nodes_per_block == 0 {
            return Err("provider.nodes_per_block must be at least 1".into());
        }
        if !(self.parallelism > 0.0 && self.parallelism <= 1.0) {
            return Err(format!(
                "provider.parallelism = {} must be in (0, 1]",
                self.parallelism
            ));
        }
        if let Some(p) = self.poll_period {
            if !(p > 0.0 && p <= MAX_SECONDS) {
                return Err(format!(
                    "provider.poll_period = {p} must be a positive number of seconds"
                ));
            }
        }
        if !(self.cmd_timeout > 0.0 && self.cmd_timeout <= MAX_SECONDS) {
            // Zero would fail every scheduler command.
            return Err(format!(
                "provider.cmd_timeout = {} must be a positive number of seconds",
                self.cmd_timeout
            ));
        }
        for (key, value) in [
            ("max_idletime", self.max_idletime),
            ("drain_period", self.drain_period),
        ] {
            if !(0.0..=MAX_SECONDS).contains(&value) {
                return Err(format!(
                    "provider.{key} = {value} must be a non-negative number of seconds up to {MAX_SECONDS}"
                ));
            }
        }
        let set = [
            ("partition", self.partition.is_some()),
            ("qos", self.qos.is_some()),
            ("constraint", self.constraint.is_some()),
            ("queue", self.queue.is_some()),
            ("account", self.account.is_some()),
            ("project", self.project.is_some()),
            ("select_options", self.select_options.is_some()),
        ];
        for (key, kinds) in KIND_SPECIFIC_KEYS {
            let is_set = set.iter().any(|(k, s)| k == key && *s);
            if is_set && !kinds.contains(&self.kind) {
                return Err(format!(
                    "provider.{key} does not apply to provider.type = \"{}\" (it is for {})",
                    self.kind,
                    ProviderKind::names(kinds)
                ));
            }
        }
        self.launcher().map(|_| ())
    }

    /// The launcher of this provider's blocks (`provider.launcher`, else the
    /// kind's default).
    pub fn launcher(&self) -> Result<Launcher, String> {
        Launcher::choose(
            self.kind,
            self.launcher.as_deref(),
            self.launcher_template.as_deref(),
            self.nodes_per_block,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walltimes() {
        assert_eq!(
            parse_walltime("00:30:00").unwrap(),
            Duration::from_secs(1800)
        );
        assert_eq!(
            parse_walltime("1:00:05").unwrap(),
            Duration::from_secs(3605)
        );
        assert_eq!(parse_walltime("10").unwrap(), Duration::from_secs(600));
        for bad in [
            "",
            "0",
            "00:61:00",
            "a:b:c",
            "1:2:3:4",
            // Overflowing or absurd values are errors, not panics.
            "18446744073709551615",
            "18446744073709551615:00:00",
            "300000:00:00",
        ] {
            assert!(parse_walltime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_must_suit_the_provider() {
        let c = ProviderConfig {
            kind: ProviderKind::Pbs,
            partition: Some("x".into()),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("partition"));
        let c = ProviderConfig {
            kind: ProviderKind::Slurm,
            partition: Some("x".into()),
            ..Default::default()
        };
        c.validate().unwrap();
        // An unknown kind cannot be built any more; it is refused where it is read.
        let err = toml::from_str::<ProviderConfig>("type = \"cobalt\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cobalt"), "{err}");
        let c = ProviderConfig {
            cmd_timeout: 0.0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("cmd_timeout"));
    }

    /// The table the template is written from is the one the validator
    /// enforces: each kind-specific key is accepted exactly for its kinds.
    #[test]
    fn kind_specific_keys_are_accepted_exactly_for_their_kinds() {
        for (key, kinds) in KIND_SPECIFIC_KEYS {
            for kind in ProviderKind::ALL {
                let text = format!("type = \"{kind}\"\n{key} = \"x\"\n");
                let config: ProviderConfig = toml::from_str(&text).unwrap();
                assert_eq!(
                    config.validate().is_ok(),
                    kinds.contains(&kind),
                    "{key} with {kind}: {:?}",
                    config.validate()
                );
                assert_eq!(key_applies(key, kind), kinds.contains(&kind));
            }
        }
        assert!(key_applies("walltime", ProviderKind::Local));
    }

    #[test]
    fn control_characters_are_refused_with_the_key() {
        let slurm = |f: &dyn Fn(&mut ProviderConfig)| {
            let mut c = ProviderConfig {
                kind: ProviderKind::Slurm,
                ..Default::default()
            };
            f(&mut c);
            c.validate()
        };
        let err = slurm(&|c| c.partition = Some("debug\nrm -rf ~".into())).unwrap_err();
        assert!(
            err.contains("provider.partition") && err.contains("\\n"),
            "{err}"
        );
        let err = slurm(&|c| c.account = Some("a\rb".into())).unwrap_err();
        assert!(err.contains("provider.account"), "{err}");
        let err = slurm(&|c| c.qos = Some("a\u{0}".into())).unwrap_err();
        assert!(err.contains("provider.qos"), "{err}");
        let err = slurm(&|c| c.scheduler_options = vec!["--x\u{1b}[2J".into()]).unwrap_err();
        assert!(err.contains("provider.scheduler_options"), "{err}");
        // Keys made of lines keep their line breaks.
        slurm(&|c| {
            c.scheduler_options = vec!["--constraint=cpu\n#SBATCH --exclusive".into()];
            c.worker_init = "module load x\n\texport Y=1\r\n".into();
        })
        .unwrap();
    }
}
