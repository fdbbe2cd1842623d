//! The connection limits of the service, shared by `hpfaas service` and
//! `hpfaas up` (docs/configuration.md, "Service").

use std::time::Duration;

use hpfaas_registry::ServiceConfig;

/// Flags bounding what slow or greedy clients can hold.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionLimits {
    /// Most connections open at once (agent links included); more wait to be accepted.
    #[arg(long, default_value_t = ServiceConfig::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Time a client has to send a request's headers (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = hpfaas_registry::parse_duration)]
    header_read_timeout: Duration,
    /// Close a connection that sends and receives nothing for this long (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = hpfaas_registry::parse_duration)]
    idle_timeout: Duration,
    /// Time a client has to send a request's body (e.g. 60s); later gets 408.
    #[arg(long, default_value = "60s", value_parser = hpfaas_registry::parse_duration)]
    body_read_timeout: Duration,
    /// Most result streams open at once with one token; more get 429.
    #[arg(long, default_value_t = ServiceConfig::DEFAULT_MAX_STREAMS_PER_TOKEN)]
    max_streams_per_token: usize,
}

impl ConnectionLimits {
    /// Sets these limits in `config`.
    pub fn apply(&self, config: &mut ServiceConfig) {
        config.max_connections = self.max_connections;
        config.header_read_timeout = self.header_read_timeout;
        config.idle_timeout = self.idle_timeout;
        config.body_read_timeout = self.body_read_timeout;
        config.max_streams_per_token = self.max_streams_per_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: ConnectionLimits,
    }

    #[test]
    fn defaults_match_the_service_config() {
        let cli = Cli::parse_from(["x"]);
        let mut config = ServiceConfig::new("127.0.0.1:0".parse().unwrap(), "/nonexistent");
        let defaults = format!("{config:?}");
        cli.limits.apply(&mut config);
        assert_eq!(format!("{config:?}"), defaults);
        let cli = Cli::parse_from(["x", "--idle-timeout", "5s", "--max-connections", "7"]);
        cli.limits.apply(&mut config);
        assert_eq!(config.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.max_connections, 7);
    }
}
