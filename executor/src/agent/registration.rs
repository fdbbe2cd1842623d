//! The endpoint's identity: at first start the agent trades the owner's
//! token for an endpoint credential that can act only as this endpoint, and
//! keeps it (0600) in `endpoint.json` in the endpoint's directory.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Contents of `endpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    /// The endpoint's id.
    pub endpoint_id: String,
    /// Token that can act only as this endpoint.
    pub credential: String,
    /// Service that issued it.
    pub service_url: String,
}

/// File name of the credential inside the endpoint directory.
pub const FILE: &str = "endpoint.json";

/// Reads the stored credential, if any.
pub fn load(dir: &Path) -> anyhow::Result<Option<Credential>> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("{} is not a valid credential file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Registers with the service using the owner's token (re-using `endpoint_id`
/// when given) and stores the credential.
pub fn register(
    dir: &Path,
    service_url: &str,
    owner_token: &str,
    name: &str,
    display_name: &str,
    endpoint_id: Option<&str>,
) -> anyhow::Result<Credential> {
    let url = format!("{}/v3/endpoints", service_url.trim_end_matches('/'));
    let mut body = serde_json::json!({"endpoint_name": name, "display_name": display_name});
    if let Some(id) = endpoint_id {
        body["endpoint_id"] = serde_json::Value::String(id.to_string());
    }
    let agent = crate::tls::ureq_agent(None)?.build();
    let reply: serde_json::Value = match agent
        .post(&url)
        .set("Authorization", &format!("Bearer {owner_token}"))
        .send_json(body)
    {
        Ok(response) => response
            .into_json()
            .context("the service's registration answer is not JSON")?,
        Err(ureq::Error::Status(code, response)) => {
            let text = response.into_string().unwrap_or_default();
            anyhow::bail!("the service refused to register endpoint {name} ({code}): {text}");
        }
        Err(e) => anyhow::bail!("cannot reach the service at {service_url} to register: {e}"),
    };
    let field = |key: &str| -> anyhow::Result<String> {
        reply[key]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the service's registration answer has no {key}: {reply}"))
    };
    let credential = Credential {
        endpoint_id: field("endpoint_id")?,
        credential: field("credential")?,
        service_url: service_url.to_string(),
    };
    store(dir, &credential)?;
    Ok(credential)
}

fn store(dir: &Path, credential: &Credential) -> anyhow::Result<()> {
    crate::private::write(
        &dir.join(FILE),
        serde_json::to_string_pretty(credential)?.as_bytes(),
        true,
    )
}
