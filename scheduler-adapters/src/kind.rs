//! Which batch system a provider drives (`provider.type`): a closed set,
//! read once from the file, so the rest of the code matches on it instead of
//! comparing strings.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// `provider.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum ProviderKind {
    /// Blocks are process groups on this machine.
    #[default]
    Local,
    /// Slurm (`sbatch`, `squeue`, `scancel`).
    Slurm,
    /// PBS Pro (`qsub`, `qstat`, `qdel`).
    Pbs,
    /// IBM Spectrum LSF (`bsub`, `bjobs`, `bkill`).
    Lsf,
}

impl ProviderKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Local,
        ProviderKind::Slurm,
        ProviderKind::Pbs,
        ProviderKind::Lsf,
    ];

    /// The value `provider.type` takes for this kind.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Slurm => "slurm",
            ProviderKind::Pbs => "pbs",
            ProviderKind::Lsf => "lsf",
        }
    }

    /// `a, b` list of the given kinds' names, for messages.
    pub fn names(kinds: &[ProviderKind]) -> String {
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProviderKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        ProviderKind::ALL
            .into_iter()
            .find(|k| k.name() == text)
            .ok_or_else(|| {
                format!(
                    "provider.type = {text:?} is unknown; use one of {}",
                    ProviderKind::names(&ProviderKind::ALL)
                )
            })
    }
}

impl TryFrom<String> for ProviderKind {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Section {
        #[serde(rename = "type", default)]
        kind: ProviderKind,
    }

    #[test]
    fn kinds_read_from_the_type_key() {
        for kind in ProviderKind::ALL {
            let text = format!("type = \"{kind}\"\n");
            assert_eq!(toml::from_str::<Section>(&text).unwrap().kind, kind);
            assert_eq!(kind.name().parse::<ProviderKind>(), Ok(kind));
        }
        let absent: Section = toml::from_str("").unwrap();
        assert_eq!(absent.kind, ProviderKind::Local);
    }

    #[test]
    fn an_unknown_kind_is_named_with_the_accepted_ones() {
        let err = toml::from_str::<Section>("type = \"cobalt\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "provider.type = \"cobalt\" is unknown; use one of local, slurm, pbs, lsf"
            ),
            "{err}"
        );
        assert!(err.contains("line 1"), "{err}");
        // Case and control characters are not forgiven; the value is escaped.
        for bad in ["Slurm", "slurm ", "slurm\n#SBATCH --x", ""] {
            let err = bad.parse::<ProviderKind>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let err = toml::from_str::<Section>("type = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
