//! Which certificates the endpoint trusts when it talks to an `https://`
//! service: the system's roots, plus the PEM CA of `endpoint.ca_file` (or
//! `HPFAAS_CA_FILE`) when one is set, for a service with a private CA. Used by
//! the agent's WebSocket and by its REST calls (registration, status).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The CA file set for this process by the endpoint's configuration.
static CONFIGURED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Remember `endpoint.ca_file` for this process's connections to the service.
pub fn set_ca_file(path: Option<PathBuf>) {
    *CONFIGURED.lock().unwrap_or_else(|e| e.into_inner()) = path;
}

/// The CA file to trust: `configured`, else the process's, else `HPFAAS_CA_FILE`.
pub fn ca_file(configured: Option<&Path>) -> Option<PathBuf> {
    configured
        .map(Path::to_path_buf)
        .or_else(|| CONFIGURED.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .or_else(|| {
            std::env::var_os("HPFAAS_CA_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
}

/// A rustls client configuration trusting the system's roots and the
/// certificates of `ca_file`; fails naming the file when it holds none.
pub fn client_config(ca_file: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    // The system's roots too, as without a CA file; unreadable ones are skipped.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the CA file {}", ca_file.display()))?;
    if certs.is_empty() {
        anyhow::bail!("the CA file {} holds no PEM certificate", ca_file.display());
    }
    for cert in certs {
        roots.add(cert).with_context(|| {
            format!("the CA file {} holds a bad certificate", ca_file.display())
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls refused its default protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The configuration for the process's CA file, `None` when none is set
/// (the default trust of each client then applies).
pub fn configured_client_config() -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    ca_file(None).map(|f| client_config(&f)).transpose()
}

/// A ureq agent builder that trusts the CA file, if any, besides the system roots.
pub fn ureq_agent(configured: Option<&Path>) -> anyhow::Result<ureq::AgentBuilder> {
    let builder = ureq::AgentBuilder::new().try_proxy_from_env(true);
    Ok(match ca_file(configured) {
        Some(f) => builder.tls_config(client_config(&f)?),
        None => builder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_named() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-tls-")
            .tempdir()
            .unwrap();
        let dir = scratch.path();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.pem"), "{err}");
        let missing = dir.join("missing.pem");
        let err = format!("{:#}", client_config(&missing).unwrap_err());
        assert!(err.contains("missing.pem"), "{err}");
    }
}
