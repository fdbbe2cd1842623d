//! `hpfaas endpoint status NAME_OR_ID [--remote]`: an endpoint's agent,
//! blocks and recent events. A configured endpoint is read from its
//! directory (`agent.json`) and, with its credential, from the service; an
//! endpoint id not configured here (or `--remote`) only from the service,
//! as `HPFAAS_URL` and the user token in `HPFAAS_TOKEN` reach it.

use std::time::Duration;

use anyhow::Context as _;
use hpfaas_executor::lifecycle;
use serde_json::{json, Value};

use crate::output::{self, Format};

/// Events shown.
const RECENT_EVENTS: usize = 20;

/// The options of `endpoint status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Endpoint name, or the id of an endpoint on the service (yours or
    /// shared with you).
    #[arg(add = crate::completions::endpoint_names())]
    name: String,
    /// Ask only the service: by id with HPFAAS_URL and the user token in
    /// HPFAAS_TOKEN, or by a configured name with its credential.
    #[arg(long)]
    remote: bool,
    /// Same as --output json (kept for scripts written before it).
    #[arg(long, hide = true)]
    json: bool,
}

/// Runs `endpoint status`.
pub fn run(args: &StatusArgs, format: Format) -> anyhow::Result<()> {
    let format = if args.json { Format::Json } else { format };
    let configured = lifecycle::endpoint_dir(&args.name)
        .map(|d| d.join("config.toml").exists())
        .unwrap_or(false);
    if !configured && uuid::Uuid::parse_str(&args.name).is_ok() {
        return remote_by_id(&args.name, format);
    }
    let local = lifecycle::describe(&args.name)?;
    let service = lifecycle::service_status(&args.name);
    let events = lifecycle::service_get(
        &args.name,
        &format!("/v3/endpoints/{{id}}/events?limit={RECENT_EVENTS}"),
    );
    let (local, events) = if args.remote {
        (None, events)
    } else {
        (Some(local), events)
    };
    show(local.as_ref(), service, events, format)
}

/// The status and events of endpoint `id` from the service, as the user
/// whose token is in `HPFAAS_TOKEN`.
fn remote_by_id(id: &str, format: Format) -> anyhow::Result<()> {
    let url = std::env::var("HPFAAS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .with_context(|| {
            format!("{id} is not an endpoint configured here; set HPFAAS_URL (and HPFAAS_TOKEN) to ask the service about it")
        })?;
    let token = std::env::var("HPFAAS_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .context("set HPFAAS_TOKEN to your user token to ask the service about an endpoint")?;
    let agent = hpfaas_executor::tls::ureq_agent(None)?
        .timeout(Duration::from_secs(10))
        .build();
    let get = |path: String| -> anyhow::Result<Value> {
        let full = format!("{}{path}", url.trim_end_matches('/'));
        match agent
            .get(&full)
            .set("Authorization", &format!("Bearer {token}"))
            .call()
        {
            Ok(r) => Ok(r.into_json()?),
            Err(ureq::Error::Status(code, r)) => anyhow::bail!(
                "the service answered {code}: {}",
                r.into_string().unwrap_or_default()
            ),
            Err(e) => anyhow::bail!("cannot reach the service at {url}: {e}"),
        }
    };
    // An unknown endpoint is an error here: there is nothing local to show.
    let service = get(format!("/v2/endpoints/{id}/status"))?;
    let events = get(format!("/v3/endpoints/{id}/events?limit={RECENT_EVENTS}"));
    show(None, Ok(service), events, format)
}

/// Prints what is known: the local row (when configured here), the
/// service's status and its events (or why they could not be had).
fn show(
    local: Option<&lifecycle::EndpointRow>,
    service: anyhow::Result<Value>,
    events: anyhow::Result<Value>,
    format: Format,
) -> anyhow::Result<()> {
    let blocks: Vec<Value> = match local {
        Some(row) if !row.blocks.is_empty() => row.blocks.iter().map(|b| json!(b)).collect(),
        _ => service
            .as_ref()
            .ok()
            .and_then(|s| s["details"]["blocks"].as_array().cloned())
            .unwrap_or_default(),
    };
    // The service keeps more history; the agent's file serves when the
    // service cannot be reached.
    let events: Vec<Value> = match &events {
        Ok(v) => v["events"].as_array().cloned().unwrap_or_default(),
        Err(_) => local
            .map(|row| {
                let dir = lifecycle::endpoint_dir(&row.name).ok();
                dir.and_then(|d| hpfaas_executor::agent::state_file::AgentState::read(&d))
                    .map(|s| s.events.iter().map(|e| json!(e)).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default(),
    };
    if format == Format::Json {
        let service = match &service {
            Ok(v) => v.clone(),
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        let mut doc = json!({"service": service, "blocks": blocks, "events": events});
        if let Some(row) = local {
            doc["local"] = json!(row);
        }
        return output::print_json(&doc);
    }
    let mut rows = Vec::new();
    if let Some(local) = local {
        rows.extend([
            vec!["name".into(), local.name.clone()],
            vec![
                "endpoint id".into(),
                local.endpoint_id.clone().unwrap_or_else(|| "-".into()),
            ],
            vec!["agent".into(), local.state.clone()],
            vec!["blocks".into(), local.active_blocks.to_string()],
            vec![
                "last error".into(),
                local.last_error.clone().unwrap_or_else(|| "-".into()),
            ],
        ]);
    }
    match &service {
        Ok(v) => {
            rows.push(vec![
                "service says".into(),
                v["status"].as_str().unwrap_or("?").to_string(),
            ]);
            if let Some(details) = v["details"].as_object() {
                for (k, val) in details.iter().filter(|(k, _)| *k != "blocks") {
                    rows.push(vec![
                        k.replace('_', " "),
                        val.to_string().trim_matches('"').to_string(),
                    ]);
                }
            }
        }
        Err(e) => rows.push(vec!["service says".into(), format!("unreachable: {e:#}")]),
    }
    output::print_table(&["FIELD", "VALUE"], &rows)?;
    if !blocks.is_empty() {
        output::line("")?;
        output::print_table(
            &[
                "BLOCK",
                "JOB ID",
                "SCHEDULER",
                "STATE",
                "NODES",
                "MANAGERS",
                "WORKERS",
                "AGE",
                "WALLTIME LEFT",
            ],
            &blocks.iter().map(block_row).collect::<Vec<_>>(),
        )?;
    }
    if !events.is_empty() {
        output::line("")?;
        output::print_table(
            &["TIME", "EVENT", "BLOCK", "MESSAGE"],
            &events.iter().map(event_row).collect::<Vec<_>>(),
        )?;
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Seconds as a short duration, `-` when unknown.
fn seconds(v: Option<f64>) -> String {
    v.map(|s| format!("{:.0}s", s.max(0.0)))
        .unwrap_or_else(|| "-".into())
}

fn block_row(b: &Value) -> Vec<String> {
    let now = hpfaas_protocol::task::now_unix();
    vec![
        text(&b["block_id"]),
        text(&b["job_id"]),
        text(&b["provider"]),
        text(&b["state"]),
        text(&b["nodes"]),
        text(&b["managers"]),
        text(&b["workers"]),
        seconds(b["submitted_at"].as_f64().map(|t| now - t)),
        seconds(b["deadline"].as_f64().map(|d| d - now)),
    ]
}

fn event_row(e: &Value) -> Vec<String> {
    let time = e["time"]
        .as_f64()
        .map(hpfaas_registry::time::rfc3339)
        .unwrap_or_else(|| "-".into());
    // One line per event in the table: a scheduler's message may have several.
    let message = text(&e["message"]).replace('\n', " | ");
    vec![time, text(&e["kind"]), text(&e["block_id"]), message]
}
