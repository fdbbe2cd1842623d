//! How long cached results are reused (docs/api.md, "Memoization"), shared
//! by `hpfaas service` and `hpfaas up`.

use std::time::Duration;

use hpfaas_registry::ServiceConfig;

/// The memoization cache's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheFlags {
    /// Reuse a cached result (functions registered with cache=True) this long after it was
    /// stored, then purge it (e.g. 90s, 12h, 7d).
    #[arg(long, default_value = "7d", value_parser = hpfaas_registry::parse_duration)]
    cache_ttl: Duration,
}

impl CacheFlags {
    /// Sets the cache's TTL in `config`.
    pub fn apply(&self, config: &mut ServiceConfig) {
        config.cache_ttl = self.cache_ttl;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cache: CacheFlags,
    }

    #[test]
    fn the_ttl_defaults_to_the_services_and_takes_units() {
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap(), "/nonexistent");
        Cli::parse_from(["x"]).cache.apply(&mut config);
        assert_eq!(config.cache_ttl, ServiceConfig::DEFAULT_CACHE_TTL);
        Cli::parse_from(["x", "--cache-ttl", "90s"])
            .cache
            .apply(&mut config);
        assert_eq!(config.cache_ttl, Duration::from_secs(90));
        assert!(Cli::try_parse_from(["x", "--cache-ttl", "0s"]).is_err());
    }
}
