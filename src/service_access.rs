//! How `endpoint start|restart` reach the service when the endpoint's
//! configuration does not say: `HPFAAS_URL` and `HPFAAS_TOKEN`, declared as
//! options so that `--help` names them. The executor reads both from the
//! environment, and the agent started as a daemon inherits it, so a value
//! given here is exported there. A token on the command line is refused:
//! every local user can read another's argv (`ps`).

/// The service's address and the owner token, for an endpoint's agent.
#[derive(clap::Args)]
pub struct ServiceAccess {
    /// Service URL, used when the configuration has no endpoint.service_url.
    #[arg(long, env = "HPFAAS_URL", value_name = "URL")]
    service_url: Option<String>,
    /// Owner token for the endpoint's first registration, used when the
    /// configuration has no endpoint.token_file. Give it in the environment:
    /// on the command line other users could read it, and it is refused.
    #[arg(
        long,
        env = "HPFAAS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

impl ServiceAccess {
    /// Exports the values for the executor and the agent it starts; refuses
    /// a token that came from the command line. Call before any thread starts.
    pub fn apply(&self) -> anyhow::Result<()> {
        if let Some(token) = &self.token {
            if std::env::var("HPFAAS_TOKEN").ok().as_ref() != Some(token) {
                anyhow::bail!(
                    "--token on the command line is visible to every user of this machine (ps); \
                     set HPFAAS_TOKEN in the environment or endpoint.token_file in the \
                     configuration instead"
                );
            }
        }
        if let Some(url) = self.service_url.as_ref().filter(|u| !u.is_empty()) {
            std::env::set_var("HPFAAS_URL", url);
        }
        Ok(())
    }
}
