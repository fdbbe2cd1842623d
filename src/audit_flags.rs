//! How the service's audit log rotates, shared by `hpfaas service` and
//! `hpfaas up` (docs/configuration.md, "Service"; docs/api.md, "Audit log").

use hpfaas_registry::audit::{AuditLimits, DEFAULT_LIMITS};
use hpfaas_registry::ServiceConfig;

/// Flags of the audit log's rotation.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditFlags {
    /// Start a new audit.log before it would pass this many bytes (a new one starts each day too).
    #[arg(long, default_value_t = DEFAULT_LIMITS.max_bytes,
          value_parser = clap::value_parser!(u64).range(1024..))]
    audit_max_bytes: u64,
    /// Rotated audit logs kept (audit.log.1 newest ... audit.log.N); older ones are deleted.
    #[arg(long, default_value_t = DEFAULT_LIMITS.keep,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    audit_keep: u32,
}

impl AuditFlags {
    /// Sets the audit log's rotation in `config`.
    pub fn apply(&self, config: &mut ServiceConfig) {
        config.audit = Some(AuditLimits {
            max_bytes: self.audit_max_bytes,
            keep: self.audit_keep,
            daily: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        audit: AuditFlags,
    }

    fn parse(args: &[&str]) -> Result<Option<AuditLimits>, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("hpfaas").chain(args.iter().copied()))?;
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap(), "/nonexistent");
        config.audit = None;
        cli.audit.apply(&mut config);
        Ok(config.audit)
    }

    #[test]
    fn defaults_and_given_values_reach_the_config() {
        assert_eq!(parse(&[]).unwrap(), Some(DEFAULT_LIMITS));
        let given = parse(&["--audit-max-bytes", "4096", "--audit-keep", "2"]).unwrap();
        assert_eq!(
            given,
            Some(AuditLimits {
                max_bytes: 4096,
                keep: 2,
                daily: true
            })
        );
    }

    #[test]
    fn nonsense_limits_are_refused_naming_the_flag() {
        for args in [["--audit-keep", "0"], ["--audit-max-bytes", "10"]] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(args[0]), "{err}");
        }
    }
}
