//! Prometheus metrics of a real service under a real workload: the counters
//! move by what was submitted and finished, the exposition passes
//! `promtool check metrics`, and the service's own port serves none.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::up::{Up, UpOptions, ENGINE};
use common::wait_for;

/// The body of `GET url`, with the bearer token in `token_file` if given.
fn scrape_with(url: &str, token_file: Option<&str>) -> String {
    let mut request = ureq::get(url).timeout(Duration::from_secs(30));
    if let Some(file) = token_file {
        let token = std::fs::read_to_string(file).unwrap();
        request = request.set("Authorization", &format!("Bearer {}", token.trim()));
    }
    request
        .call()
        .unwrap_or_else(|e| panic!("scraping {url}: {e}"))
        .into_string()
        .unwrap()
}

/// The value of the sample named exactly `series` (name and labels), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `promtool check metrics` on `text`; `false` (with the reason
/// printed) when promtool is not installed and this is not CI, where
/// `scripts/setup.sh` installs it.
fn promtool_accepts(text: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping the promtool check: promtool not runnable ({e}); scripts/setup.sh installs Debian's prometheus");
            return false;
        }
        Err(e) => panic!("promtool is needed in CI (Debian package prometheus): {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn counters_follow_a_real_workload_and_promtool_accepts_the_exposition() {
    let up = Up::start("metrics");
    let metrics_url = up.info["metrics_url"]
        .as_str()
        .expect("up.json has metrics_url")
        .to_string();
    assert!(
        metrics_url.starts_with("http://127.0.0.1:"),
        "{metrics_url}"
    );
    let token_file = up.info["metrics_token_file"].as_str().unwrap().to_string();
    let scrape = |url: &str| scrape_with(url, Some(&token_file));
    let ep = up.endpoint_id();

    // up.json is written while the agent's link may still be saying hello.
    let before = wait_for(Duration::from_secs(60), "the endpoint online", || {
        let text = scrape(&metrics_url);
        (sample(&text, "hpfaas_endpoints_online") == Some(1.0)).then_some(text)
    });
    assert_eq!(
        sample(
            &before,
            &format!("hpfaas_tasks_submitted_total{{endpoint=\"{ep}\"}}")
        ),
        None,
        "nothing submitted yet"
    );

    let double = up.register("double", "def double(x):\n    return 2 * x\n");
    let boom = up.register("boom", "def boom(x):\n    raise ValueError(x)\n");
    let args: Vec<_> = (0..5).map(|i| serde_json::json!([i])).collect();
    let mut ids = up.try_submit(&double, &args).unwrap();
    ids.extend(up.try_submit(&boom, &[serde_json::json!([1])]).unwrap());
    up.wait_all(&ids, Duration::from_secs(120));

    let series = |name: &str, state: Option<&str>| match state {
        Some(state) => format!("{name}{{endpoint=\"{ep}\",state=\"{state}\"}}"),
        None => format!("{name}{{endpoint=\"{ep}\"}}"),
    };
    // Counted as the results' commit becomes visible, which may trail a
    // reader seeing it by a moment.
    let after = wait_for(Duration::from_secs(30), "the finished counters", || {
        let text = scrape(&metrics_url);
        (sample(
            &text,
            &series("hpfaas_tasks_finished_total", Some("failed")),
        ) == Some(1.0))
        .then_some(text)
    });
    assert_eq!(
        sample(&after, &series("hpfaas_tasks_submitted_total", None)),
        Some(6.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            &series("hpfaas_tasks_finished_total", Some("success"))
        ),
        Some(5.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "hpfaas_task_end_to_end_seconds_count"),
        Some(6.0),
        "{after}"
    );
    assert!(
        sample(&after, "hpfaas_task_dispatch_to_start_seconds_count").unwrap_or(0.0) >= 1.0,
        "no task's start was timed:\n{after}"
    );
    assert!(
        sample(&after, "hpfaas_db_commit_seconds_count").unwrap_or(0.0) >= 1.0,
        "{after}"
    );
    // Nothing is left queued: no non-final tasks of the endpoint.
    assert_eq!(
        sample(&after, &series("hpfaas_endpoint_queue_depth", None)),
        None,
        "{after}"
    );
    assert_eq!(sample(&after, "hpfaas_endpoint_links_open"), Some(1.0));
    assert_eq!(sample(&after, "hpfaas_endpoints_online"), Some(1.0));
    // The heartbeat reports the one worker of `up --workers 1`, and its one
    // block by the state the agent gives it, once its blocks step has seen
    // the manager (a heartbeat may come first, with the block still pending).
    let workers = wait_for(Duration::from_secs(30), "a heartbeat report", || {
        let text = scrape(&metrics_url);
        let busy = sample(&text, &series("hpfaas_endpoint_workers", Some("busy")))?;
        let idle = sample(&text, &series("hpfaas_endpoint_workers", Some("idle")))?;
        let running = sample(&text, &series("hpfaas_endpoint_blocks", Some("running")))?;
        (busy + idle == 1.0 && running == 1.0).then_some(text)
    });
    assert_eq!(
        sample(&workers, &series("hpfaas_endpoint_blocks", Some("pending"))),
        Some(0.0),
        "{workers}"
    );
    promtool_accepts(&after);

    // A cancelled task counts as finished in state `cancelled`.
    let nap = up.register("nap", "def nap(s):\n    import time\n    time.sleep(s)\n");
    let napping = up.try_submit(&nap, &[serde_json::json!([600])]).unwrap();
    common::post(
        &format!("{}/v3/tasks/{}/cancel", up.url(), napping[0]),
        &up.token(),
        serde_json::json!({}),
    )
    .unwrap();
    wait_for(Duration::from_secs(30), "the cancelled counter", || {
        let text = scrape(&metrics_url);
        (sample(
            &text,
            &series("hpfaas_tasks_finished_total", Some("cancelled")),
        ) == Some(1.0))
        .then_some(())
    });
}

#[test]
fn the_service_port_serves_no_metrics_and_up_wants_a_token() {
    let up = Up::start("metrics-port");
    let url = format!("{}/metrics", up.url());
    match ureq::get(&url).timeout(Duration::from_secs(30)).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("{url} answered {other:?}"),
    }
    let metrics = up.info["metrics_url"].as_str().unwrap();
    // Other users of the machine reach loopback too.
    for token in [None, Some("Bearer wrong"), Some("wrong")] {
        let mut request = ureq::get(metrics).timeout(Duration::from_secs(30));
        if let Some(token) = token {
            request = request.set("Authorization", token);
        }
        match request.call() {
            Err(ureq::Error::Status(401, _)) => {}
            other => panic!("{metrics} with {token:?} answered {other:?}"),
        }
    }
    // The metrics listener serves nothing else.
    let other = metrics.replace("/metrics", "/v2/version");
    match ureq::get(&other).timeout(Duration::from_secs(30)).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other_answer => panic!("{other} answered {other_answer:?}"),
    }
}

#[test]
fn the_agent_exports_its_blocks_and_managers_when_configured() {
    let home = common::temp_dir("agent-metrics");
    let token_file = home.join("agent-metrics-token");
    std::fs::write(&token_file, "agent-scrape-token\n").unwrap();
    std::fs::write(
        home.join("engine.toml"),
        format!(
            "{ENGINE}[metrics]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let up = Up::start_with(
        "agent-metrics",
        UpOptions {
            home: Some(home.to_path_buf()),
            ..Default::default()
        },
    );
    let agent_json = up.endpoint_dir().join("agent.json");
    let url = wait_for(Duration::from_secs(60), "metrics_url in agent.json", || {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&agent_json).ok()?).ok()?;
        Some(state["metrics_url"].as_str()?.to_string())
    });
    match ureq::get(&url).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("a scrape without the token answered {other:?}"),
    }
    let token = token_file.to_str().unwrap();
    // The one block of `up` runs with its one manager and worker.
    let text = wait_for(Duration::from_secs(60), "the block running", || {
        let text = scrape_with(&url, Some(token));
        (sample(&text, "hpfaas_agent_blocks{state=\"running\"}") == Some(1.0)
            && sample(&text, "hpfaas_agent_managers") == Some(1.0))
        .then_some(text)
    });
    assert_eq!(sample(&text, "hpfaas_agent_connected"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "hpfaas_agent_workers{state=\"idle\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("hpfaas_agent_block_workers{block=") && l.ends_with(" 1")),
        "{text}"
    );
    promtool_accepts(&text);
    let other = url.replace("/metrics", "/");
    match ureq::get(&other).call() {
        Err(ureq::Error::Status(404, _)) => {}
        answer => panic!("{other} answered {answer:?}"),
    }
}
