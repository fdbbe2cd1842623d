//! CurveZMQ on the broker↔manager link: the endpoint's keys and the ZAP
//! handler that admits only the endpoint's client keys.
//!
//! Each endpoint has one server keypair (the broker's) and one client keypair
//! (its managers'), generated at the agent's first start and stored in the
//! endpoint directory as [`CURVE_FILE`] with mode 0600. CURVE alone admits
//! any client that knows the server's public key, so the broker runs a ZAP
//! handler ([`start_zap`]) that refuses every client key but the stored one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// File name of [`CurveFile`] in the endpoint directory.
pub const CURVE_FILE: &str = "curve.json";

/// The ZAP endpoint libzmq asks, in the broker's context.
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// A 32-byte CURVE key.
pub type Key = [u8; 32];

/// The keys as stored (Z85 text). A manager's own file may hold only the
/// client keypair (with the broker's public key given as `--server-key`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurveFile {
    /// The broker's public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_public: Option<String>,
    /// The broker's secret key (only in the endpoint's own file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_secret: Option<String>,
    /// The managers' public key: the one key the ZAP handler admits.
    pub client_public: String,
    /// The managers' secret key.
    pub client_secret: String,
}

/// What the broker needs: its keypair and the client keys it admits.
#[derive(Clone)]
pub struct ServerKeys {
    /// The broker's public key.
    pub public: Key,
    /// The broker's secret key.
    pub secret: Key,
    /// Client public keys the ZAP handler admits.
    pub clients: Vec<Key>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("public", &z85(&self.public))
            .field("clients", &self.clients.iter().map(z85).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a manager needs: the broker's public key and its own keypair.
#[derive(Clone)]
pub struct ClientKeys {
    /// The broker's public key.
    pub server_public: Key,
    /// This manager's public key.
    pub public: Key,
    /// This manager's secret key.
    pub secret: Key,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys")
            .field("server_public", &z85(&self.server_public))
            .field("public", &z85(&self.public))
            .finish_non_exhaustive()
    }
}

/// Z85 text of a key.
pub fn z85(key: &Key) -> String {
    zmq::z85_encode(key).unwrap_or_default()
}

/// A key from its Z85 text.
pub fn parse_key(text: &str, what: &str) -> anyhow::Result<Key> {
    let bytes = zmq::z85_decode(text.trim())
        .map_err(|e| anyhow::anyhow!("{what} is not a Z85 CURVE key: {e:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{what} is not a 32-byte CURVE key"))
}

fn keypair() -> anyhow::Result<(Key, Key)> {
    anyhow::ensure!(
        zmq::has("curve") == Some(true),
        "this libzmq has no CURVE support; set engine.encrypted = false to run unencrypted"
    );
    let pair = zmq::CurveKeyPair::new().context("cannot generate a CURVE keypair")?;
    Ok((pair.public_key, pair.secret_key))
}

impl CurveFile {
    /// A fresh file with a new server and a new client keypair.
    pub fn generate() -> anyhow::Result<CurveFile> {
        let (server_public, server_secret) = keypair()?;
        Ok(CurveFile {
            server_public: Some(z85(&server_public)),
            server_secret: Some(z85(&server_secret)),
            ..CurveFile::client_only()?
        })
    }

    /// A fresh client keypair alone (what an intruder, or a test, would have).
    pub fn client_only() -> anyhow::Result<CurveFile> {
        let (public, secret) = keypair()?;
        Ok(CurveFile {
            server_public: None,
            server_secret: None,
            client_public: z85(&public),
            client_secret: z85(&secret),
        })
    }

    /// Writes the file with mode 0600 (created so; never group- or world-readable).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        crate::private::write(path, &serde_json::to_vec_pretty(self)?, true)
    }

    /// Reads a key file, refusing one that others than its owner may read.
    pub fn read(path: &Path) -> anyhow::Result<CurveFile> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read the CURVE keys in {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{} holds secret keys but has mode {mode:04o}; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the CURVE keys in {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a CURVE key file", path.display()))
    }

    /// The broker's keys; fails on a file without the server secret.
    pub fn server_keys(&self) -> anyhow::Result<ServerKeys> {
        let public = self
            .server_public
            .as_deref()
            .context("the key file has no server_public")?;
        let secret = self
            .server_secret
            .as_deref()
            .context("the key file has no server_secret")?;
        Ok(ServerKeys {
            public: parse_key(public, "server_public")?,
            secret: parse_key(secret, "server_secret")?,
            clients: vec![parse_key(&self.client_public, "client_public")?],
        })
    }

    /// A manager's keys; `server_key` (from `--server-key`) overrides the file's.
    pub fn client_keys(&self, server_key: Option<&str>) -> anyhow::Result<ClientKeys> {
        let server = server_key
            .or(self.server_public.as_deref())
            .context("no broker public key: give --server-key or a key file with server_public")?;
        Ok(ClientKeys {
            server_public: parse_key(server, "the broker's public key")?,
            public: parse_key(&self.client_public, "client_public")?,
            secret: parse_key(&self.client_secret, "client_secret")?,
        })
    }
}

/// The key file of an endpoint directory.
pub fn endpoint_file(dir: &Path) -> PathBuf {
    dir.join(CURVE_FILE)
}

/// The endpoint's keys, generated and stored (0600) on first use.
pub fn load_or_create(dir: &Path) -> anyhow::Result<CurveFile> {
    let path = endpoint_file(dir);
    if path.exists() {
        let file = CurveFile::read(&path)?;
        file.server_keys()?;
        return Ok(file);
    }
    let file = CurveFile::generate()?;
    file.write(&path)?;
    tracing::info!("generated the endpoint's CURVE keys in {}", path.display());
    Ok(file)
}

/// A manager's keys for joining the endpoint in `dir` (`--endpoint NAME`):
/// `None` when its broker runs in clear (no key in `broker.json`); an error
/// if `broker.json` is unreadable, rather than a link in clear the broker
/// would refuse.
pub fn for_endpoint(dir: &Path, server_key: Option<&str>) -> anyhow::Result<Option<ClientKeys>> {
    let Some(recorded) = super::record::read(dir)?.and_then(|r| r.server_key) else {
        return Ok(None);
    };
    let file = CurveFile::read(&endpoint_file(dir))?;
    file.client_keys(Some(server_key.unwrap_or(&recorded)))
        .map(Some)
}

/// A manager's keys from its command line: `--curve-file` (with `--server-key`
/// overriding the file's broker key), else the endpoint directory's.
pub fn for_manager(
    curve_file: Option<&Path>,
    server_key: Option<&str>,
    endpoint_dir: Option<&Path>,
) -> anyhow::Result<Option<ClientKeys>> {
    match (curve_file, endpoint_dir) {
        (Some(path), _) => CurveFile::read(path)?.client_keys(server_key).map(Some),
        (None, Some(dir)) => for_endpoint(dir, server_key),
        (None, None) if server_key.is_some() => {
            anyhow::bail!("--server-key needs --curve-file with this manager's own keypair")
        }
        (None, None) => Ok(None),
    }
}

/// Makes `socket` a CURVE server with `keys`.
pub fn make_server(socket: &zmq::Socket, keys: &ServerKeys) -> zmq::Result<()> {
    socket.set_curve_server(true)?;
    socket.set_curve_secretkey(&keys.secret)?;
    socket.set_zap_domain("hpfaas")
}

/// Makes `socket` a CURVE client with `keys`.
pub fn make_client(socket: &zmq::Socket, keys: &ClientKeys) -> zmq::Result<()> {
    socket.set_curve_serverkey(&keys.server_public)?;
    socket.set_curve_publickey(&keys.public)?;
    socket.set_curve_secretkey(&keys.secret)
}

/// A ZAP verdict: status code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `200` admits, `400` refuses, `500` for a malformed request.
    pub status: &'static str,
    /// Why.
    pub text: String,
}

/// Decides a ZAP request (its frames): admit only CURVE clients whose public
/// key is in `admitted`.
pub fn decide(request: &[Vec<u8>], admitted: &[Key]) -> Verdict {
    let refuse = |status, text: String| Verdict { status, text };
    if request.len() < 6 || request[0] != b"1.0" {
        return refuse("500", "malformed ZAP request".into());
    }
    if request[5] != b"CURVE" {
        return refuse(
            "400",
            format!(
                "mechanism {} is not allowed: the broker requires CURVE",
                String::from_utf8_lossy(&request[5])
            ),
        );
    }
    let Some(key) = request
        .get(6)
        .and_then(|k| Key::try_from(k.as_slice()).ok())
    else {
        return refuse("500", "CURVE request without a 32-byte client key".into());
    };
    if admitted.contains(&key) {
        Verdict {
            status: "200",
            text: "OK".into(),
        }
    } else {
        refuse(
            "400",
            format!(
                "client key {} is not this endpoint's manager key",
                z85(&key)
            ),
        )
    }
}

/// The running ZAP handler; stops when dropped.
pub struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds the ZAP handler in `context` (before any CURVE server socket binds)
/// and answers requests on its own thread.
pub fn start_zap(context: &zmq::Context, admitted: Vec<Key>) -> anyhow::Result<ZapHandler> {
    let socket = context.socket(zmq::REP)?;
    socket.set_linger(0)?;
    socket
        .bind(ZAP_ENDPOINT)
        .context("cannot bind the ZAP handler")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("zmq-zap".into())
        .spawn(move || serve_zap(socket, admitted, flag))?;
    Ok(ZapHandler {
        stop,
        thread: Some(thread),
    })
}

fn serve_zap(socket: zmq::Socket, admitted: Vec<Key>, stop: Arc<AtomicBool>) {
    // A refused client retries its connection; say so once per key.
    let mut reported: HashSet<Vec<u8>> = HashSet::new();
    while !stop.load(Ordering::Acquire) {
        match socket.poll(zmq::POLLIN, 200) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        let request = match socket.recv_multipart(0) {
            Ok(r) => r,
            Err(_) => break,
        };
        let verdict = decide(&request, &admitted);
        if verdict.status != "200" {
            let who = request
                .get(3)
                .map(|a| String::from_utf8_lossy(a).into_owned());
            let key = request.get(6).cloned().unwrap_or_default();
            if reported.len() < 1024 && reported.insert(key) {
                tracing::warn!(
                    "refused a manager connection from {}: {}",
                    who.as_deref().unwrap_or("?"),
                    verdict.text
                );
            }
        }
        let id = request.get(1).cloned().unwrap_or_default();
        let user: &[u8] = if verdict.status == "200" {
            b"manager"
        } else {
            b""
        };
        let reply: [&[u8]; 6] = [
            b"1.0",
            &id,
            verdict.status.as_bytes(),
            verdict.text.as_bytes(),
            user,
            b"",
        ];
        if socket.send_multipart(reply, 0).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn request(mechanism: &str, key: &[u8]) -> Vec<Vec<u8>> {
        vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            b"hpfaas".to_vec(),
            b"127.0.0.1".to_vec(),
            Vec::new(),
            mechanism.as_bytes().to_vec(),
            key.to_vec(),
        ]
    }

    #[test]
    fn keys_are_stored_0600_and_reused() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-curve-")
            .tempdir()
            .unwrap();
        let dir = scratch.path().to_path_buf();
        let first = load_or_create(&dir).unwrap();
        let mode = std::fs::metadata(endpoint_file(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(&dir).unwrap();
        assert_eq!(first.server_secret, again.server_secret);
        assert_eq!(first.client_secret, again.client_secret);
        let server = again.server_keys().unwrap();
        let client = again.client_keys(None).unwrap();
        assert_eq!(server.public, client.server_public);
        assert_eq!(server.clients, vec![client.public]);
        // A readable copy is refused with the fix named.
        std::fs::set_permissions(endpoint_file(&dir), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = load_or_create(&dir).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn client_only_file_needs_a_server_key() {
        let file = CurveFile::client_only().unwrap();
        assert!(file.server_keys().is_err());
        assert!(file.client_keys(None).is_err());
        let server = CurveFile::generate().unwrap();
        let keys = file.client_keys(server.server_public.as_deref()).unwrap();
        assert_eq!(z85(&keys.public), file.client_public);
        assert!(parse_key("not a key", "x").is_err());
    }

    #[test]
    fn zap_admits_only_the_endpoint_client_key() {
        let ours = [1u8; 32];
        let theirs = [2u8; 32];
        assert_eq!(decide(&request("CURVE", &ours), &[ours]).status, "200");
        let refused = decide(&request("CURVE", &theirs), &[ours]);
        assert_eq!(refused.status, "400");
        assert!(refused.text.contains(&z85(&theirs)), "{}", refused.text);
        assert_eq!(decide(&request("NULL", b""), &[ours]).status, "400");
        assert_eq!(decide(&request("CURVE", b"short"), &[ours]).status, "500");
        assert_eq!(decide(&request("CURVE", &ours)[..3], &[ours]).status, "500");
        let mut old = request("CURVE", &ours);
        old[0] = b"0.9".to_vec();
        assert_eq!(decide(&old, &[ours]).status, "500");
    }

    #[test]
    fn curve_link_admits_only_the_stored_client() {
        let endpoint = CurveFile::generate().unwrap();
        let server_keys = endpoint.server_keys().unwrap();
        let context = zmq::Context::new();
        let _zap = start_zap(&context, server_keys.clients.clone()).unwrap();
        let router = context.socket(zmq::ROUTER).unwrap();
        make_server(&router, &server_keys).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let url = router.get_last_endpoint().unwrap().unwrap();

        let try_client = |keys: Option<ClientKeys>| {
            let dealer = context.socket(zmq::DEALER).unwrap();
            dealer.set_linger(0).unwrap();
            if let Some(k) = &keys {
                make_client(&dealer, k).unwrap();
            }
            dealer.connect(&url).unwrap();
            dealer.send("hello", 0).unwrap();
            let got = router.poll(zmq::POLLIN, 1500).unwrap() > 0;
            if got {
                let frames = router.recv_multipart(0).unwrap();
                assert_eq!(frames.last().unwrap(), b"hello");
            }
            got
        };
        let intruder = CurveFile::client_only().unwrap();
        let wrong = intruder
            .client_keys(endpoint.server_public.as_deref())
            .unwrap();
        assert!(!try_client(Some(wrong)), "a foreign client key got through");
        assert!(!try_client(None), "a plain client got through");
        assert!(try_client(Some(endpoint.client_keys(None).unwrap())));
    }

    #[test]
    fn a_broken_broker_record_is_an_error_not_a_clear_link() {
        let scratch = tempfile::Builder::new()
            .prefix("hpfaas-curve-")
            .tempdir()
            .unwrap();
        let dir = scratch.path();
        load_or_create(dir).unwrap();
        assert!(
            for_endpoint(dir, None).unwrap().is_none(),
            "no record yet: the agent never ran"
        );
        std::fs::write(
            dir.join("broker.json"),
            b"{\"url\": \"tcp://127.0.0.1:1\", \"server_",
        )
        .unwrap();
        let e = format!("{:#}", for_endpoint(dir, None).unwrap_err());
        assert!(e.contains("broker.json"), "{e}");
    }
}
