//! `hpfaas dashboard`: a one-time login link to the service's web dashboard
//! (`/ui/`), for the service `HPFAAS_URL`/`HPFAAS_TOKEN` name, else the
//! running `hpfaas up`'s; `hpfaas up` makes one at start for `up.json`.

use std::time::Duration;

use anyhow::Context as _;

use crate::output::{self, Format};

/// Options of `hpfaas dashboard`.
#[derive(clap::Args)]
pub struct DashboardArgs {
    /// Seconds the link stays valid (it works once), at most a day.
    #[arg(long, default_value_t = 600.0)]
    ttl: f64,
}

/// Asks the service at `url` for a login link for `token`'s user, valid
/// `ttl` seconds; the link's full URL.
pub fn login_link(url: &str, token: &str, ttl: f64) -> anyhow::Result<String> {
    let base = url.trim_end_matches('/');
    let agent = hpfaas_executor::tls::ureq_agent(None)?
        .timeout(Duration::from_secs(10))
        .build();
    let answer: serde_json::Value = match agent
        .post(&format!("{base}/v3/ui/login_link"))
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(serde_json::json!({ "ttl": ttl }))
    {
        Ok(r) => r.into_json().context("the service's answer is not JSON")?,
        Err(ureq::Error::Status(code, r)) => anyhow::bail!(
            "the service at {base} refused a login link ({code}): {}",
            r.into_string().unwrap_or_default()
        ),
        Err(e) => anyhow::bail!("cannot reach the service at {base}: {e}"),
    };
    let path = answer["path"]
        .as_str()
        .context("the service's answer has no path")?;
    Ok(format!("{base}{path}"))
}

/// Runs `hpfaas dashboard`.
pub fn run(args: DashboardArgs, format: Format) -> anyhow::Result<()> {
    let (url, token) = service()?;
    let link = login_link(&url, &token, args.ttl)?;
    match format {
        Format::Text => output::line(&format!(
            "{link}\n(open it once, within {} s; it logs this browser in)",
            args.ttl
        )),
        Format::Json => {
            output::print_json(&serde_json::json!({"url": link, "expires_in": args.ttl}))
        }
    }
}

/// The service and token: `HPFAAS_URL` and `HPFAAS_TOKEN`, else `up.json`.
fn service() -> anyhow::Result<(String, String)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(url), Some(token)) = (env("HPFAAS_URL"), env("HPFAAS_TOKEN")) {
        return Ok((url, token));
    }
    let up = hpfaas_executor::lifecycle::hpfaas_home().join("up.json");
    let text = std::fs::read_to_string(&up).with_context(|| {
        format!(
            "set HPFAAS_URL and HPFAAS_TOKEN, or start `hpfaas up` (no {})",
            up.display()
        )
    })?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", up.display()))?;
    match (doc["url"].as_str(), doc["token"].as_str()) {
        (Some(url), Some(token)) => Ok((url.to_string(), token.to_string())),
        _ => anyhow::bail!("{} has no url and token", up.display()),
    }
}
