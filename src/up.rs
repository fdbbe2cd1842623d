//! `hpfaas up`: the embedded default. The service and one local endpoint
//! run in this process on loopback; `$HPFAAS_HOME/up.json` tells the SDK
//! where they are, and disappears again when `up` stops.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use hpfaas_executor::agent::{self, registration, AgentSpec};
use hpfaas_executor::config::EndpointConfig;
use hpfaas_executor::lifecycle::hpfaas_home;
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
    #[command(flatten)]
    limits: crate::connection_limits::ConnectionLimits,
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let home = hpfaas_home();
    let data_dir = home.join("up");
    let up_file = home.join("up.json");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    if let Some(pid) = live_up_pid(&up_file) {
        anyhow::bail!(
            "hpfaas up is already running for {} (pid {pid})",
            home.display()
        );
    }
    let mut config = match &args.config {
        Some(path) => EndpointConfig::load(path)?,
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
    let service = hpfaas_registry::Service::bind(service_config).await?;
    let url = format!("http://{}", service.local_addr());
    let token = hpfaas_registry::create_token(&data_dir, "local")?;
    let (stop_service, service_stopped) = tokio::sync::oneshot::channel::<()>();
    let service_task = tokio::spawn(service.run(async {
        let _ = service_stopped.await;
    }));

    let endpoint_dir = data_dir.join("endpoint");
    std::fs::create_dir_all(&endpoint_dir)?;
    // Its managers run here: the broker listens on a Unix socket in the
    // endpoint's private directory, which needs no CurveZMQ (the cost of
    // encrypting every argument twice on one machine), unless the
    // configuration names an address or the path is too long for a socket.
    let socket_fits = hpfaas_executor::broker::address::socket_path(&endpoint_dir).is_ok();
    if config.engine.address.is_none() && config.provider.kind == "local" && socket_fits {
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
    let info = json!({
        "url": url,
        "token": token,
        "endpoint_id": credential.endpoint_id,
        "pid": std::process::id(),
    });
    write_private(&up_file, &serde_json::to_string_pretty(&info)?)?;
    println!(
        "hpfaas up: service {url}, endpoint {}",
        credential.endpoint_id
    );
    println!("export HPFAAS_URL={url} HPFAAS_TOKEN={token}");
    println!(
        "(also written to {}; Ctrl-C stops everything)",
        up_file.display()
    );

    let spec = AgentSpec {
        name: "local".into(),
        dir: endpoint_dir,
        config,
        service_url: url,
        owner_token: Some(token),
        reregister: false,
        hpfaas_exe: std::env::current_exe().context("cannot find the hpfaas binary")?,
    };
    let outcome = agent::run(spec, async {
        crate::shutdown_signal().await;
        agent::Shutdown::Stop
    })
    .await;
    let _ = std::fs::remove_file(&up_file);
    let _ = stop_service.send(());
    service_task.await??;
    outcome
}

/// The pid in an existing up.json, if that process is alive.
fn live_up_pid(path: &std::path::Path) -> Option<u32> {
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let pid = info["pid"].as_u64()? as u32;
    (pid != std::process::id() && hpfaas_executor::agent::state_file::pid_alive(pid)).then_some(pid)
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
