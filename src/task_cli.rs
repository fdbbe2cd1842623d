//! `hpfaas task list|show|logs|cancel|wait`: a user's tasks on a service,
//! over its REST API. The service is `HPFAAS_URL` with the token in
//! `HPFAAS_TOKEN` (never on the command line: `ps` shows it to everyone),
//! else the `up.json` that `hpfaas up` wrote, as the Python SDK finds it.
//! Each command prints a table for people, or with `--output json` the
//! service's documents.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::output::{self, Format};

/// The task commands.
#[derive(clap::Subcommand)]
pub enum TaskCommand {
    /// List your tasks, newest first.
    List(ListArgs),
    /// Show a task: status, timeline, where it ran, result or traceback.
    Show {
        /// The task's id.
        id: String,
    },
    /// Print a task's captured output (stdout, then stderr).
    Logs {
        /// The task's id.
        id: String,
    },
    /// Cancel tasks that have not finished.
    Cancel {
        /// The tasks' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Wait until tasks finish; fails if any did not succeed or time ran out.
    Wait {
        /// The tasks' ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Give up after this many seconds (default: wait as long as it takes).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
}

/// Filters of `task list`.
#[derive(clap::Args)]
pub struct ListArgs {
    /// Only tasks in this state (received, waiting-for-ep, waiting-for-dependencies,
    /// waiting-for-nodes, waiting-for-launch, running, success, failed, cancelled).
    #[arg(long)]
    status: Option<String>,
    /// Only tasks on this endpoint: its id, or the name of a local endpoint.
    #[arg(long)]
    endpoint: Option<String>,
    /// Only tasks of this function (its id).
    #[arg(long)]
    function: Option<String>,
    /// Only tasks of this task group (its id).
    #[arg(long)]
    group: Option<String>,
    /// Only tasks submitted since: Unix seconds, or an age such as 90s, 15m, 2h, 3d.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only tasks submitted before: Unix seconds, or an age such as 90s, 15m, 2h, 3d.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Most tasks to print (pages of up to 1000 are fetched as needed).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    limit: u64,
    /// Continue a listing: the `next_cursor` a JSON listing printed.
    #[arg(long)]
    cursor: Option<String>,
}

/// Runs a task command.
pub fn run(command: TaskCommand, format: Format) -> anyhow::Result<()> {
    let service = Service::find()?;
    match command {
        TaskCommand::List(args) => list(&service, args, format),
        TaskCommand::Show { id } => show(&service, &id, format),
        TaskCommand::Logs { id } => logs(&service, &id, format),
        TaskCommand::Cancel { ids } => cancel(&service, &ids, format),
        TaskCommand::Wait { ids, timeout } => wait(&service, &ids, timeout, format),
    }
}

/// A service and the token to call it with.
struct Service {
    url: String,
    token: String,
    agent: ureq::Agent,
}

/// An answer other than 2xx: its status and the service's message.
struct Refused {
    status: u16,
    message: String,
}

impl Service {
    /// `HPFAAS_URL` and `HPFAAS_TOKEN`, else `$HPFAAS_HOME/up.json`.
    fn find() -> anyhow::Result<Service> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let up_path = hpfaas_executor::lifecycle::hpfaas_home().join("up.json");
        let up: Value = match std::fs::read(&up_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not valid JSON; remove it or run `hpfaas up`",
                    up_path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => return Err(e).context(format!("cannot read {}", up_path.display())),
        };
        let from_up = |key: &str| up[key].as_str().map(str::to_string);
        let url = var("HPFAAS_URL").or_else(|| from_up("url"));
        let token = var("HPFAAS_TOKEN").or_else(|| from_up("token"));
        let (Some(url), Some(token)) = (url, token) else {
            bail!(
                "no hpfaas service found: set HPFAAS_URL and HPFAAS_TOKEN, or run `hpfaas up` \
                 (which writes {})",
                up_path.display()
            );
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("service URL {url:?} is not an http:// or https:// URL");
        }
        let agent = hpfaas_executor::tls::ureq_agent(None)?
            .timeout(Duration::from_secs(60))
            .build();
        Ok(Service {
            url: url.trim_end_matches('/').to_string(),
            token,
            agent,
        })
    }

    /// Calls the service; `Err(Ok(refused))` for an answer other than 2xx,
    /// `Err(Err(e))` when there is no answer at all.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Result<Refused, anyhow::Error>> {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token));
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match answer {
            Ok(r) => r
                .into_json()
                .map_err(|e| Err(anyhow::anyhow!("unreadable answer from {path}: {e}"))),
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                Err(Ok(Refused { status, message }))
            }
            Err(e) => Err(Err(anyhow::anyhow!(
                "cannot reach the service at {}: {e}",
                self.url
            ))),
        }
    }

    /// Calls the service; any failure is an error naming the status.
    fn fetch(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        self.call(method, path, body).map_err(|e| match e {
            Ok(r) => anyhow::anyhow!("the service answered {}: {}", r.status, r.message),
            Err(e) => e,
        })
    }
}

/// A task id as the user typed it, checked before it goes in a URL.
fn task_id(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim();
    if raw.len() != 36 || !raw.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        bail!("{raw:?} is not a task id (a UUID such as 0b9c54d6-3f0e-4e4c-9d49-3c8b1b0f3f4e)");
    }
    Ok(raw.to_ascii_lowercase())
}

/// `--since`/`--until`: Unix seconds, or an age before now.
fn when(raw: &str, now: f64) -> anyhow::Result<f64> {
    let raw = raw.trim();
    if let Ok(t) = raw.parse::<f64>() {
        if t.is_finite() && t >= 0.0 {
            return Ok(t);
        }
    }
    let age = [('s', 1.0), ('m', 60.0), ('h', 3600.0), ('d', 86_400.0)]
        .into_iter()
        .find_map(|(suffix, unit)| Some((raw.strip_suffix(suffix)?.parse::<f64>().ok()?, unit)));
    match age {
        Some((n, unit)) if n.is_finite() && n >= 0.0 => Ok((now - n * unit).max(0.0)),
        _ => bail!("{raw:?} is neither Unix seconds nor an age such as 90s, 15m, 2h or 3d"),
    }
}

/// Percent-encodes a query value (ids and names are plain, a cursor is hex,
/// but what the user types is not to be trusted to be).
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `--endpoint`: an id as it is, a local endpoint's name as its id.
fn endpoint_id(raw: &str) -> anyhow::Result<String> {
    if raw.len() == 36 && raw.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Ok(raw.to_string());
    }
    let local = hpfaas_executor::lifecycle::describe(raw).with_context(|| {
        format!("--endpoint {raw:?} is neither an endpoint id nor a local endpoint")
    })?;
    local
        .endpoint_id
        .with_context(|| format!("local endpoint {raw} has not registered with a service yet"))
}

fn list(service: &Service, args: ListArgs, format: Format) -> anyhow::Result<()> {
    let now = hpfaas_protocol::task::now_unix();
    let mut query = Vec::new();
    let endpoint = args.endpoint.as_deref().map(endpoint_id).transpose()?;
    for (name, value) in [
        ("status", args.status.clone()),
        ("endpoint_id", endpoint),
        ("function_id", args.function.clone()),
        ("task_group_id", args.group.clone()),
        (
            "since",
            args.since
                .as_deref()
                .map(|s| when(s, now))
                .transpose()?
                .map(|t| t.to_string()),
        ),
        (
            "until",
            args.until
                .as_deref()
                .map(|s| when(s, now))
                .transpose()?
                .map(|t| t.to_string()),
        ),
    ] {
        if let Some(value) = value {
            query.push(format!("{name}={}", query_value(&value)));
        }
    }
    let mut tasks: Vec<Value> = Vec::new();
    let mut cursor = args.cursor.clone();
    let wanted = usize::try_from(args.limit).unwrap_or(usize::MAX);
    loop {
        let page = (wanted - tasks.len()).min(1000);
        let mut q = query.clone();
        q.push(format!("limit={page}"));
        if let Some(c) = &cursor {
            q.push(format!("cursor={}", query_value(c)));
        }
        let answer = service.fetch("GET", &format!("/v3/tasks?{}", q.join("&")), None)?;
        if let Some(page) = answer["tasks"].as_array() {
            tasks.extend(page.iter().cloned());
        }
        cursor = answer["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() || tasks.len() >= wanted {
            break;
        }
    }
    match format {
        Format::Json => output::print_json(&json!({"tasks": tasks, "next_cursor": cursor})),
        Format::Text => {
            let rows: Vec<Vec<String>> = tasks
                .iter()
                .map(|t| {
                    vec![
                        text(&t["task_id"]),
                        text(&t["status"]),
                        time(&t["created_t"]),
                        duration(&t["created_t"], &t["completion_t"]),
                        text(&t["function_id"]),
                        text(&t["exception_type"]),
                    ]
                })
                .collect();
            output::print_table(
                &[
                    "TASK ID",
                    "STATUS",
                    "SUBMITTED",
                    "TOOK",
                    "FUNCTION",
                    "ERROR",
                ],
                &rows,
            )?;
            if let Some(c) = cursor {
                output::line(&format!(
                    "more: hpfaas task list --cursor {c} (same filters)"
                ))?;
            }
            Ok(())
        }
    }
}

/// A JSON string as it is, anything else as JSON, `-` when absent.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Unix seconds as a decimal string (the task document's times) as a date.
fn seconds(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.parse().ok(),
        other => other.as_f64(),
    }
}

fn time(v: &Value) -> String {
    seconds(v).map_or_else(|| "-".into(), hpfaas_registry::time::rfc3339)
}

fn duration(from: &Value, to: &Value) -> String {
    match (seconds(from), seconds(to)) {
        (Some(a), Some(b)) => format!("{:.3}s", (b - a).max(0.0)),
        _ => "-".into(),
    }
}

/// What a result buffer holds, for people: JSON as it is, anything else by size.
fn result_text(result: &str) -> String {
    match result.split_once('\n') {
        Some(("11", json)) | Some(("sr", json)) => json.to_string(),
        _ => format!("({} bytes, serialized)", result.len()),
    }
}

fn show(service: &Service, raw: &str, format: Format) -> anyhow::Result<()> {
    let id = task_id(raw)?;
    let doc = service.fetch("GET", &format!("/v2/tasks/{id}"), None)?;
    if format == Format::Json {
        return output::print_json(&doc);
    }
    let timeline = &doc["timeline"];
    let placement = &doc["placement"];
    let mut rows = vec![
        vec!["task id".into(), text(&doc["task_id"])],
        vec!["status".into(), text(&doc["status"])],
        vec!["function".into(), text(&doc["function_id"])],
        vec!["endpoint".into(), text(&doc["endpoint_id"])],
        vec!["task group".into(), text(&doc["task_group_id"])],
        vec!["submitted".into(), time(&doc["created_t"])],
        vec!["dispatched".into(), time(&timeline["dispatched"])],
        vec!["started".into(), time(&timeline["started"])],
        vec!["finished".into(), time(&doc["completion_t"])],
        vec!["result fetched".into(), time(&timeline["result_fetched"])],
    ];
    if placement.is_object() {
        rows.push(vec!["block".into(), text(&placement["block_id"])]);
        rows.push(vec!["manager".into(), text(&placement["manager_id"])]);
        rows.push(vec!["worker".into(), text(&placement["worker"])]);
        rows.push(vec!["host".into(), text(&placement["host"])]);
    }
    if let Some(result) = doc["result"].as_str() {
        rows.push(vec!["result".into(), result_text(result)]);
    }
    if doc["exception_type"].is_string() {
        rows.push(vec!["error".into(), text(&doc["exception_type"])]);
        rows.push(vec!["message".into(), text(&doc["exception_message"])]);
    }
    output::print_table(&["FIELD", "VALUE"], &rows)?;
    if let Some(traceback) = doc["exception"].as_str().filter(|t| !t.is_empty()) {
        output::line("")?;
        output::raw(traceback)?;
        if !traceback.ends_with('\n') {
            output::line("")?;
        }
    }
    Ok(())
}

/// A task's captured output: `(stdout, stderr, bytes dropped from each)`.
/// A Python task's comes in the document's `output`, when the service keeps
/// one; a shell task's is in its result (`sr\n` JSON).
fn captured(doc: &Value) -> Option<(String, String, u64, u64)> {
    let from = |v: &Value| {
        let dropped = |k: &str| v[k].as_u64().unwrap_or(0);
        Some((
            v["stdout"].as_str().unwrap_or("").to_string(),
            v["stderr"].as_str().unwrap_or("").to_string(),
            dropped("stdout_dropped"),
            dropped("stderr_dropped"),
        ))
    };
    match &doc["output"] {
        Value::Object(_) => return from(&doc["output"]),
        Value::String(s) => return Some((s.clone(), String::new(), 0, 0)),
        _ => {}
    }
    let result = doc["result"].as_str()?;
    let shell: Value = serde_json::from_str(result.strip_prefix("sr\n")?).ok()?;
    from(&shell)
}

fn logs(service: &Service, raw: &str, format: Format) -> anyhow::Result<()> {
    let id = task_id(raw)?;
    let doc = service.fetch("GET", &format!("/v2/tasks/{id}"), None)?;
    let Some((stdout, stderr, out_dropped, err_dropped)) = captured(&doc) else {
        if doc["pending"] == json!(true) {
            bail!(
                "task {id} is {}: its output comes with its result",
                text(&doc["status"])
            );
        }
        bail!("task {id} has no captured output");
    };
    match format {
        Format::Json => output::print_json(&json!({
            "task_id": id,
            "stdout": stdout,
            "stderr": stderr,
            "stdout_dropped": out_dropped,
            "stderr_dropped": err_dropped,
        })),
        Format::Text => {
            output::raw(&stdout)?;
            if out_dropped > 0 {
                output::line(&format!("[{out_dropped} bytes of stdout not kept]"))?;
            }
            // stderr on stderr, so `task logs ID > out.txt` keeps stdout alone.
            eprint!("{stderr}");
            if err_dropped > 0 {
                eprintln!("[{err_dropped} bytes of stderr not kept]");
            }
            Ok(())
        }
    }
}

fn cancel(service: &Service, raw_ids: &[String], format: Format) -> anyhow::Result<()> {
    let ids = raw_ids
        .iter()
        .map(|r| task_id(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for id in &ids {
        let row = match service.call("POST", &format!("/v3/tasks/{id}/cancel"), None) {
            Ok(_) => json!({"task_id": id, "cancelled": true, "status": "cancelled"}),
            // Final already: nothing to cancel, which is not a failure.
            Err(Ok(r)) if r.status == 409 => {
                json!({"task_id": id, "cancelled": false, "reason": r.message})
            }
            Err(Ok(r)) => {
                failed += 1;
                json!({"task_id": id, "cancelled": false, "error": r.message})
            }
            Err(Err(e)) => return Err(e),
        };
        rows.push(row);
    }
    match format {
        Format::Json => output::print_json(&json!({"tasks": rows}))?,
        Format::Text => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let outcome = if r["cancelled"] == json!(true) {
                        "cancelled".to_string()
                    } else {
                        text(r.get("error").unwrap_or(&r["reason"]))
                    };
                    vec![text(&r["task_id"]), outcome]
                })
                .collect();
            output::print_table(&["TASK ID", "OUTCOME"], &table)?;
        }
    }
    if failed > 0 {
        bail!("{failed} of {} tasks could not be cancelled", ids.len());
    }
    Ok(())
}

fn wait(
    service: &Service,
    raw_ids: &[String],
    timeout: Option<f64>,
    format: Format,
) -> anyhow::Result<()> {
    let ids = raw_ids
        .iter()
        .map(|r| task_id(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let deadline = match timeout {
        Some(t) if t.is_finite() && (0.0..=1e9).contains(&t) => {
            Some(Instant::now() + Duration::from_secs_f64(t))
        }
        Some(t) => bail!("--timeout {t}: give a number of seconds from 0 to 1e9"),
        None => None,
    };
    let mut done: std::collections::BTreeMap<String, Value> = Default::default();
    let mut pause = Duration::from_millis(100);
    loop {
        // Only the tasks still pending: a large result crosses once.
        let pending: Vec<&String> = ids.iter().filter(|id| !done.contains_key(*id)).collect();
        if pending.is_empty() {
            break;
        }
        let answer = service.fetch(
            "POST",
            "/v2/batch_status",
            Some(&json!({"task_ids": pending})),
        )?;
        for id in pending {
            let doc = &answer["results"][id.as_str()];
            if doc["status"] == "unknown" {
                bail!("task {id} is not one of yours (unknown task id)");
            }
            if doc["pending"] == json!(false) {
                done.insert(id.clone(), doc.clone());
            }
        }
        if done.len() == ids.len() {
            break;
        }
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} of {} tasks still not finished after {} s",
                    ids.len() - done.len(),
                    ids.len(),
                    timeout.unwrap_or_default()
                );
            }
            pause = pause.min(left);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    let docs: Vec<&Value> = ids.iter().map(|id| &done[id]).collect();
    match format {
        Format::Json => output::print_json(&json!({"tasks": docs}))?,
        Format::Text => {
            let rows: Vec<Vec<String>> = docs
                .iter()
                .map(|d| {
                    vec![
                        text(&d["task_id"]),
                        text(&d["status"]),
                        duration(&d["created_t"], &d["completion_t"]),
                        text(&d["exception_type"]),
                    ]
                })
                .collect();
            output::print_table(&["TASK ID", "STATUS", "TOOK", "ERROR"], &rows)?;
        }
    }
    let unsuccessful = docs.iter().filter(|d| d["status"] != "success").count();
    if unsuccessful > 0 {
        bail!("{unsuccessful} of {} tasks did not succeed", ids.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_seconds_or_ages() {
        assert_eq!(when("1700000000.5", 0.0).unwrap(), 1_700_000_000.5);
        assert_eq!(when("90s", 1000.0).unwrap(), 910.0);
        assert_eq!(when("2h", 10_000.0).unwrap(), 2800.0);
        assert_eq!(when("1d", 10.0).unwrap(), 0.0);
        for bad in ["", "h", "yesterday", "-5", "5w", "NaNh", "é"] {
            assert!(when(bad, 1.0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn task_ids_are_checked_before_they_reach_a_url() {
        assert!(task_id("0B9C54D6-3F0E-4E4C-9D49-3C8B1B0F3F4E").is_ok());
        for bad in [
            "",
            "../../v2/endpoints",
            "0b9c54d6-3f0e-4e4c-9d49-3c8b1b0f3f4e?x",
        ] {
            assert!(task_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn output_comes_from_the_document_or_a_shell_result() {
        let python = json!({"output": {"stdout": "hi\n", "stderr": "", "stdout_dropped": 3}});
        assert_eq!(
            captured(&python),
            Some(("hi\n".into(), String::new(), 3, 0))
        );
        let shell = json!({"result": "sr\n{\"returncode\": 0, \"stdout\": \"a\", \"stderr\": \"b\", \"cmd\": \"x\"}"});
        assert_eq!(captured(&shell), Some(("a".into(), "b".into(), 0, 0)));
        assert_eq!(captured(&json!({"result": "11\n3"})), None);
        assert_eq!(captured(&json!({"status": "running"})), None);
    }
}
