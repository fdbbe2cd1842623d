//! The agent's WebSocket to the service: connects (through `HTTPS_PROXY`
//! when set), says hello, then carries frames both ways, reconnecting with
//! back-off whenever the connection drops. A refusal by the service (another
//! agent holds the endpoint, a rejected credential) ends the link for good.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hpfaas_protocol::endpoint::{
    from_json, to_json, AgentMessage, ServiceMessage, TasksFrame, DEFAULT_MAX_MESSAGE_BYTES,
};
use hpfaas_protocol::PROTOCOL_VERSION;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// What the link tells the agent.
#[derive(Debug)]
pub enum LinkEvent {
    /// Connected and welcomed; the agent should re-send unacknowledged
    /// results and heartbeat at the service's period.
    Connected {
        /// Seconds between heartbeats the service expects.
        heartbeat_period: f64,
        /// The service's result size limit, if it says.
        max_result_bytes: Option<u64>,
        /// The largest message the service reads.
        max_message_bytes: usize,
        /// The service honours credit: the agent must grant it.
        flow_control: bool,
        /// The service stores endpoint events: the agent may send them.
        events: bool,
    },
    /// A frame from the service.
    Message(ServiceMessage),
    /// The connection dropped; the link is reconnecting.
    Disconnected(String),
    /// The service will not take this agent; the link has stopped.
    Refused(String),
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct LinkTarget {
    /// Service base URL (`http://` or `https://`).
    pub service_url: String,
    /// This endpoint's id.
    pub endpoint_id: String,
    /// This endpoint's credential.
    pub credential: String,
    /// `endpoint.allowed_functions`, declared in the hello.
    pub allowed_functions: Vec<uuid::Uuid>,
    /// `endpoint.json_only`, declared in the hello.
    pub json_only: bool,
}

/// A frame for the service.
#[derive(Debug)]
pub enum Outgoing {
    /// A message, encoded by the link.
    Message(AgentMessage),
    /// A frame encoded already (results, packed by size).
    Text(String),
}

impl From<AgentMessage> for Outgoing {
    fn from(message: AgentMessage) -> Outgoing {
        Outgoing::Message(message)
    }
}

/// Frames queued while disconnected are dropped: results are re-sent from
/// the journal on reconnect, and the service re-sends unacknowledged tasks.
/// The task ends once the sender is dropped and what was queued is sent
/// (or at once while disconnected).
pub fn spawn(
    target: LinkTarget,
) -> (
    mpsc::UnboundedSender<Outgoing>,
    mpsc::UnboundedReceiver<LinkEvent>,
    tokio::task::JoinHandle<()>,
) {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(target, out_rx, ev_tx));
    (out_tx, ev_rx, task)
}

enum Ended {
    Retry(String),
    Refused(String),
    Stopped,
}

async fn run(
    target: LinkTarget,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect_and_serve(&target, &mut outgoing, &events, &mut backoff).await {
            Ended::Stopped => return,
            Ended::Refused(reason) => {
                let _ = events.send(LinkEvent::Refused(reason));
                return;
            }
            Ended::Retry(reason) => {
                if events.send(LinkEvent::Disconnected(reason)).is_err() {
                    return;
                }
            }
        }
        // Frames queued meanwhile are dropped; a stopping agent (its
        // sender gone) is not kept waiting for the back-off.
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                frame = outgoing.recv() => if frame.is_none() {
                    return;
                },
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// `ws(s)://host/v3/endpoints/{id}/connect` for a service base URL.
pub fn websocket_url(service_url: &str, endpoint_id: &str) -> Result<String, String> {
    let base = service_url.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        return Err(format!(
            "service URL {service_url:?} must start with http:// or https://"
        ));
    };
    Ok(format!("{rest}/v3/endpoints/{endpoint_id}/connect"))
}

async fn connect_and_serve(
    target: &LinkTarget,
    outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
    events: &mpsc::UnboundedSender<LinkEvent>,
    backoff: &mut Duration,
) -> Ended {
    let url = match websocket_url(&target.service_url, &target.endpoint_id) {
        Ok(url) => url,
        Err(e) => return Ended::Refused(e),
    };
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return Ended::Refused(format!("bad service URL {url}: {e}")),
    };
    let auth = format!("Bearer {}", target.credential);
    match auth.parse() {
        Ok(value) => {
            request.headers_mut().insert("Authorization", value);
        }
        Err(_) => {
            return Ended::Refused("the endpoint credential is not a valid header value".into())
        }
    }
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or("localhost").to_string();
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let stream = match open_tcp(&host, port, tls).await {
        Ok(s) => s,
        Err(e) => return Ended::Retry(format!("cannot reach {host}:{port}: {e}")),
    };
    // tungstenite zero-fills as much buffer as one read may take (this
    // size) before every read; 128 KiB (its default) of memset per small
    // frame was 2 % of `hpfaas up`.
    let config = WebSocketConfig::default()
        .read_buffer_size(32 << 10)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    // endpoint.ca_file (or HPFAAS_CA_FILE) is trusted besides the system roots.
    let tls = match crate::tls::configured_client_config() {
        Ok(tls) => tls.map(tokio_tungstenite::Connector::Rustls),
        Err(e) => return Ended::Refused(format!("{e:#}")),
    };
    let (mut ws, _) =
        match tokio_tungstenite::client_async_tls_with_config(request, stream, Some(config), tls)
            .await
        {
            Ok(pair) => pair,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let why =
                    format!("the service answered {status} to the endpoint connection: {body}");
                return if status.as_u16() == 401 || status.as_u16() == 403 || status.as_u16() == 404
                {
                    Ended::Refused(why)
                } else {
                    Ended::Retry(why)
                };
            }
            Err(e) => return Ended::Retry(format!("WebSocket handshake with {url} failed: {e}")),
        };
    let hello = AgentMessage::Hello {
        version: PROTOCOL_VERSION,
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        pid: std::process::id(),
        // Declared so the service refuses what this endpoint would refuse
        // anyway, at submit time instead of after a round trip.
        allowed_functions: target.allowed_functions.clone(),
        json_only: target.json_only,
        // The agent grants credit (agent::credit) once welcomed.
        flow_control: true,
        events: true,
    };
    if let Err(e) = ws.send(Message::text(to_json(&hello))).await {
        return Ended::Retry(format!("cannot send hello: {e}"));
    }
    let connected = match ws.next().await {
        Some(Ok(Message::Text(text))) => match from_json::<ServiceMessage>(&text) {
            Ok(ServiceMessage::Welcome {
                heartbeat_period,
                max_result_bytes,
                max_message_bytes,
                flow_control,
                events,
                ..
            }) => LinkEvent::Connected {
                heartbeat_period,
                max_result_bytes,
                flow_control,
                events,
                max_message_bytes: max_message_bytes.map_or(DEFAULT_MAX_MESSAGE_BYTES, |m| {
                    usize::try_from(m).unwrap_or(usize::MAX)
                }),
            },
            Ok(ServiceMessage::Refused { reason }) => return Ended::Refused(reason),
            Ok(other) => return Ended::Retry(format!("expected a welcome, got {other:?}")),
            Err(e) => return Ended::Retry(format!("bad welcome frame: {e}")),
        },
        Some(Ok(other)) => return Ended::Retry(format!("expected a welcome, got {other:?}")),
        Some(Err(e)) => return Ended::Retry(format!("connection failed before welcome: {e}")),
        None => return Ended::Retry("connection closed before welcome".into()),
    };
    *backoff = Duration::from_millis(100);
    if events.send(connected).is_err() {
        return Ended::Stopped;
    }
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => match from_json::<ServiceMessage>(&text) {
                    Ok(ServiceMessage::Refused { reason }) => return Ended::Refused(reason),
                    Ok(message) => {
                        if events.send(LinkEvent::Message(message)).is_err() {
                            return Ended::Stopped;
                        }
                    }
                    Err(e) => tracing::warn!("ignoring a malformed frame from the service: {e}"),
                },
                // Tasks with blobs (raw argument bytes) come as MessagePack.
                Some(Ok(Message::Binary(bytes))) => match TasksFrame::decode(&bytes) {
                    Ok(frame) => {
                        if events.send(LinkEvent::Message(frame.into())).is_err() {
                            return Ended::Stopped;
                        }
                    }
                    Err(e) => tracing::warn!("ignoring a malformed binary frame from the service: {e}"),
                },
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Ended::Retry(format!("the service closed the connection {why}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Retry(format!("connection lost: {e}")),
                None => return Ended::Retry("connection closed".into()),
            },
            message = outgoing.recv() => match message {
                Some(message) => {
                    // Batch whatever else is queued into one flush.
                    let mut batch = vec![message];
                    while let Ok(m) = outgoing.try_recv() {
                        batch.push(m);
                    }
                    for m in batch {
                        let text = match m {
                            Outgoing::Message(m) => to_json(&m),
                            Outgoing::Text(text) => text,
                        };
                        if let Err(e) = ws.feed(Message::text(text)).await {
                            return Ended::Retry(format!("send failed: {e}"));
                        }
                    }
                    if let Err(e) = ws.flush().await {
                        return Ended::Retry(format!("send failed: {e}"));
                    }
                }
                None => {
                    let _ = ws.close(None).await;
                    return Ended::Stopped;
                }
            },
        }
    }
}

/// Opens a TCP stream to `host:port`, tunnelled through the proxy named by
/// `HTTPS_PROXY` (for `wss`) or `HTTP_PROXY` (for `ws`) unless `NO_PROXY` matches.
async fn open_tcp(host: &str, port: u16, tls: bool) -> std::io::Result<TcpStream> {
    let proxy = proxy_for(host, tls);
    let stream = match &proxy {
        Some((phost, pport)) => TcpStream::connect((phost.as_str(), *pport)).await?,
        None => TcpStream::connect((host, port)).await?,
    };
    stream.set_nodelay(true)?;
    if proxy.is_some() {
        return connect_tunnel(stream, host, port).await;
    }
    Ok(stream)
}

fn env_any(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .filter(|v| !v.is_empty())
}

fn proxy_for(host: &str, tls: bool) -> Option<(String, u16)> {
    let names: &[&str] = if tls {
        &["HTTPS_PROXY", "https_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy"]
    };
    let proxy = env_any(names)?;
    if let Some(no_proxy) = env_any(&["NO_PROXY", "no_proxy"]) {
        let bypass = no_proxy
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .any(|p| {
                p == "*"
                    || host == p.trim_start_matches('.')
                    || host.ends_with(&format!(".{}", p.trim_start_matches('.')))
            });
        if bypass {
            return None;
        }
    }
    let rest = proxy
        .split("://")
        .last()
        .unwrap_or(&proxy)
        .trim_end_matches('/');
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((rest.to_string(), 3128)),
    }
}

async fn connect_tunnel(
    mut stream: TcpStream,
    host: &str,
    port: u16,
) -> std::io::Result<TcpStream> {
    let request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Err(std::io::Error::other(
                "the proxy closed the connection during CONNECT",
            ));
        }
        head.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default().to_string();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!(
            "the proxy refused CONNECT: {status_line}"
        )));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls() {
        assert_eq!(
            websocket_url("http://127.0.0.1:80/", "e").unwrap(),
            "ws://127.0.0.1:80/v3/endpoints/e/connect"
        );
        assert_eq!(
            websocket_url("https://faas.example.org", "e").unwrap(),
            "wss://faas.example.org/v3/endpoints/e/connect"
        );
        assert!(websocket_url("faas.example.org", "e").is_err());
    }

    #[tokio::test]
    async fn the_link_ends_when_its_agent_drops_it_even_while_reconnecting() {
        // Nothing listens there: every attempt fails and the link backs off.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let (to_service, mut events, task) = spawn(LinkTarget {
            service_url: format!("http://127.0.0.1:{port}"),
            endpoint_id: "e".into(),
            credential: "c".into(),
            allowed_functions: vec![],
            json_only: false,
        });
        match events.recv().await {
            Some(LinkEvent::Disconnected(why)) => assert!(why.contains("cannot reach"), "{why}"),
            other => panic!("{other:?}"),
        }
        drop(to_service);
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the link kept reconnecting for an agent that had stopped")
            .unwrap();
    }
}
