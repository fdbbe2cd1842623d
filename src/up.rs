//! `hpfaas up`: the embedded default. The service and one local endpoint
//! run in this process on loopback; `$HPFAAS_HOME/up.json` (0600) tells the
//! SDK where they are and which token to use, and disappears again when
//! `up` stops. Its data directory `$HPFAAS_HOME/up/` is 0700, and the owner
//! token is kept there (`up/token`, 0600) and re-used at the next start,
//! rather than a new never-expiring token minted each time.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use hpfaas_executor::agent::{self, registration, AgentSpec};
use hpfaas_executor::config::EndpointConfig;
use hpfaas_executor::lifecycle::{self, hpfaas_home};
use hpfaas_scheduler_adapters::ProviderKind;
use serde_json::json;

/// Options of `hpfaas up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Warm Python workers (default: cores on this machine).
    #[arg(long)]
    workers: Option<u32>,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Endpoint configuration file for the local endpoint (its [engine] keys apply).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also print `export HPFAAS_URL=... HPFAAS_TOKEN=...` (the token is
    /// otherwise only in up.json, which only you can read).
    #[arg(long)]
    print_env: bool,
    /// Where Prometheus /metrics is served (plain HTTP; a scrape carries the token in
    /// up/metrics-token); written to up.json as metrics_url and metrics_token_file.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    limits: crate::connection_limits::ConnectionLimits,
    #[command(flatten)]
    audit: crate::audit_flags::AuditFlags,
    #[command(flatten)]
    cache: crate::cache_flags::CacheFlags,
    /// Write no audit log (a personal engine may not need one).
    #[arg(long)]
    no_audit: bool,
    /// Delete finished tasks whose result was fetched after this long (e.g. 2m, 1h, 30d);
    /// unfetched results are kept for the service's result TTL (7d) whatever this says.
    #[arg(long, default_value = "2m", value_parser = hpfaas_registry::parse_duration)]
    fetched_retention: std::time::Duration,
}

/// File in the data directory that keeps the owner token between starts.
const TOKEN_FILE: &str = "token";
/// File in the data directory with the token a metrics scrape carries.
const METRICS_TOKEN_FILE: &str = "metrics-token";

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: UpArgs, format: crate::output::Format) -> anyhow::Result<()> {
    // Caught from the start: a signal arriving once up.json exists must
    // stop everything and remove it, not kill the process on the spot.
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let home = hpfaas_home();
    let data_dir = home.join("up");
    let up_file = home.join("up.json");
    let endpoint_dir = data_dir.join("endpoint");
    hpfaas_executor::private::dirs(&home, &endpoint_dir)?;
    if let Some(pid) = live_up_pid(&up_file) {
        anyhow::bail!(
            "hpfaas up is already running for {} (pid {pid})",
            home.display()
        );
    }
    let mut config = match &args.config {
        Some(path) => lifecycle::load_config(path)?,
        None => EndpointConfig::default(),
    };
    if args.workers.is_some() {
        config.engine.max_workers_per_node = args.workers;
    }
    // The embedded endpoint always keeps its one block warm.
    config.provider.max_blocks = config.provider.max_blocks.max(1);
    config.provider.init_blocks = config.provider.init_blocks.max(1);
    config.provider.min_blocks = config.provider.min_blocks.max(1);

    let mut service_config = hpfaas_registry::ServiceConfig::new(args.listen, data_dir.clone());
    args.limits.apply(&mut service_config);
    service_config.metrics_listen = Some(args.metrics_listen);
    // Other users of this machine reach loopback too: scrapes need a token.
    let metrics_token_file = data_dir.join(METRICS_TOKEN_FILE);
    if !metrics_token_file.exists() {
        let token = hpfaas_registry::token::new_token();
        hpfaas_executor::private::write(&metrics_token_file, token.as_bytes(), true)?;
    }
    service_config.metrics_token_hash = Some(hpfaas_registry::metrics::token_hash_from_file(
        &metrics_token_file,
    )?);
    args.audit.apply(&mut service_config);
    args.cache.apply(&mut service_config);
    if args.no_audit {
        service_config.audit = None;
    }
    service_config.fetched_retention = Some(args.fetched_retention);
    // Fetched tasks are deleted every second (registry purge::PACE); the
    // sweep that returns their pages runs at least twice per retention.
    service_config.purge_interval = (args.fetched_retention / 2).clamp(
        std::time::Duration::from_secs(1),
        hpfaas_registry::ServiceConfig::DEFAULT_PURGE_INTERVAL,
    );
    let service = hpfaas_registry::Service::bind(service_config).await?;
    let url = format!("http://{}", service.local_addr());
    let metrics_url = service.metrics_url();
    let token = owner_token(&data_dir, !args.no_audit)?;
    let (stop_service, service_stopped) = tokio::sync::oneshot::channel::<()>();
    let service_task = tokio::spawn(service.run(async {
        let _ = service_stopped.await;
    }));

    // Its managers run here: the broker listens on a Unix socket in the
    // endpoint's private directory, which needs no CurveZMQ (the cost of
    // encrypting every argument twice on one machine), unless the
    // configuration names an address or the path is too long for a socket.
    let socket_fits = hpfaas_executor::broker::address::socket_path(&endpoint_dir).is_ok();
    if config.engine.address.is_none() && config.provider.kind == ProviderKind::Local && socket_fits
    {
        config.engine.address = Some(hpfaas_executor::config::UNIX_ADDRESS.into());
    }
    let previous = registration::load(&endpoint_dir)
        .ok()
        .flatten()
        .map(|c| c.endpoint_id);
    let credential = {
        let (dir, url, token) = (endpoint_dir.clone(), url.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            registration::register(
                &dir,
                &url,
                &token,
                "local",
                "hpfaas up",
                previous.as_deref(),
            )
        })
        .await??
    };
    // The link works once; `hpfaas dashboard` makes more.
    let dashboard_url = {
        let (url, token) = (url.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            crate::dashboard::login_link(&url, &token, UP_LINK_TTL.as_secs_f64())
        })
        .await?
        .inspect_err(|e| tracing::warn!("no dashboard login link: {e:#}"))
        .ok()
    };
    let info = json!({
        "url": url,
        "token": token,
        "endpoint_id": credential.endpoint_id,
        "pid": std::process::id(),
        "dashboard_url": dashboard_url,
        "metrics_url": metrics_url,
        "metrics_token_file": metrics_token_file,
    });
    hpfaas_executor::private::write(
        &up_file,
        serde_json::to_string_pretty(&info)?.as_bytes(),
        true,
    )?;
    announce(&info, &up_file, args.print_env, format)?;

    let spec = AgentSpec {
        name: "local".into(),
        dir: endpoint_dir,
        config,
        service_url: url,
        owner_token: Some(token),
        reregister: false,
        hpfaas_exe: std::env::current_exe().context("cannot find the hpfaas binary")?,
    };
    let outcome = agent::run(spec, async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        agent::Shutdown::Stop
    })
    .await;
    let _ = std::fs::remove_file(&up_file);
    let _ = stop_service.send(());
    service_task.await??;
    outcome
}

/// Life of the login link `hpfaas up` prints: the longest the service allows.
const UP_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Says where the service and the endpoint are, once: sentences, or with
/// `--output json` one document, `{url, endpoint_id, pid, up_file}` and the
/// `token` only with `--print-env`.
fn announce(
    info: &serde_json::Value,
    up_file: &std::path::Path,
    print_env: bool,
    format: crate::output::Format,
) -> anyhow::Result<()> {
    let (url, token) = (&info["url"], &info["token"]);
    let (url_text, token_text) = (url.as_str().unwrap_or(""), token.as_str().unwrap_or(""));
    match format {
        crate::output::Format::Json => {
            let mut doc = json!({
                "url": url,
                "endpoint_id": info["endpoint_id"],
                "pid": info["pid"],
                "up_file": up_file,
                "dashboard_url": info["dashboard_url"],
                "metrics_url": info["metrics_url"],
            });
            if print_env {
                doc["token"] = token.clone();
            }
            crate::output::print_json(&doc)
        }
        crate::output::Format::Text => {
            let mut text = format!(
                "hpfaas up: service {url_text}, endpoint {}\n",
                info["endpoint_id"].as_str().unwrap_or("")
            );
            if let Some(link) = info["dashboard_url"].as_str() {
                text += &format!("dashboard (this link logs in once): {link}\n");
            }
            if print_env {
                text += &format!("export HPFAAS_URL={url_text} HPFAAS_TOKEN={token_text}\n");
            }
            text += &format!(
                "(the SDK finds it through {}; Ctrl-C stops everything)",
                up_file.display()
            );
            crate::output::line(&text)
        }
    }
}

/// The pid in an existing up.json, if that process is alive.
fn live_up_pid(path: &std::path::Path) -> Option<u32> {
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let pid = u32::try_from(info["pid"].as_u64()?).ok()?;
    (pid != std::process::id() && hpfaas_executor::agent::pid::pid_alive(pid)).then_some(pid)
}

/// The owner token of `hpfaas up`: the one kept in the data directory while
/// the database still holds it unrevoked, else a new one, kept there.
fn owner_token(data_dir: &std::path::Path, audit: bool) -> anyhow::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    let kept = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if let Some(token) = kept.filter(|t| !t.is_empty()) {
        let id: String = hpfaas_registry::token::hash_token(&token)
            .chars()
            .take(hpfaas_registry::db::catalog::TOKEN_ID_CHARS)
            .collect();
        let live = hpfaas_registry::list_tokens(data_dir, "local")
            .map(|tokens| tokens.iter().any(|t| t.id == id && t.revoked.is_none()))
            .unwrap_or(false);
        if live {
            return Ok(token);
        }
        tracing::info!(
            "the token in {} is no longer valid; making a new one",
            path.display()
        );
    }
    let token = hpfaas_registry::create_token_audited(data_dir, "local", audit)?;
    hpfaas_executor::private::write(&path, token.as_bytes(), true)?;
    Ok(token)
}
