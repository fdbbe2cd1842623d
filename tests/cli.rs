//! The command line as its ecosystem expects it, through the real binary:
//! environment variables and fixed value sets named in `--help`, one
//! `--output json` (`HPFAAS_OUTPUT`) for every command that prints data,
//! `-v`/`-q`, shell completions that complete local endpoint names, and man
//! pages for every subcommand.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs `hpfaas ARGS` in the private `home`, without the caller's HPFAAS_* settings.
fn run(home: &Path, args: &[&str]) -> Output {
    bare().args(args).env("HPFAAS_HOME", home).output().unwrap()
}

/// `hpfaas` without any HPFAAS_* or RUST_LOG variable of the environment the tests run in.
fn bare() -> Command {
    let mut c = hpfaas();
    for var in [
        "HPFAAS_HOME",
        "HPFAAS_URL",
        "HPFAAS_TOKEN",
        "HPFAAS_OUTPUT",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    c
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout parsed as one JSON document, which it must be, whole.
#[track_caller]
fn json_out(out: &Output) -> Value {
    assert_success(out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            stdout(out),
            stderr(out)
        )
    })
}

/// Asserts that `doc` is an object with exactly `keys`.
#[track_caller]
fn has_keys(doc: &Value, keys: &[&str]) {
    let mut found: Vec<&str> = doc
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {doc}"))
        .keys()
        .map(String::as_str)
        .collect();
    found.sort_unstable();
    let mut expected = keys.to_vec();
    expected.sort_unstable();
    assert_eq!(found, expected, "{doc}");
}

/// A local endpoint that starts no block until work arrives.
const IDLE_LOCAL: &str = "[engine]\nheartbeat_period = 0.5\nheartbeat_threshold = 10.0\n\
                          [provider]\ntype = \"local\"\ninit_blocks = 0\nmin_blocks = 0\n";

/// A local endpoint that keeps one block of one worker.
const ONE_BLOCK: &str = "[engine]\nmax_workers_per_node = 1\nheartbeat_period = 0.5\n\
                         heartbeat_threshold = 10.0\n[provider]\ntype = \"local\"\n\
                         init_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n";

/// The keys of one `endpoint list --output json` row (docs/cli.md).
const ENDPOINT_ROW: &[&str] = &[
    "name",
    "endpoint_id",
    "state",
    "pid",
    "active_blocks",
    "service_url",
    "last_error",
    "blocks",
];

#[test]
fn help_names_the_environment_variables_and_value_sets() {
    let top = bare().arg("--help").output().unwrap();
    assert_success(&top);
    let text = stdout(&top);
    for name in [
        "[env: HPFAAS_HOME=",
        "[env: HPFAAS_OUTPUT=",
        "RUST_LOG",
        "--verbose",
        "--quiet",
    ] {
        assert!(text.contains(name), "hpfaas --help lacks {name}:\n{text}");
    }
    assert!(text.contains("- json") && text.contains("- text"), "{text}");

    // The token's value never shows, though its variable does.
    let start = bare()
        .args(["endpoint", "start", "--help"])
        .env("HPFAAS_URL", "http://service.example:8740")
        .env("HPFAAS_TOKEN", "secret-token-value")
        .output()
        .unwrap();
    assert_success(&start);
    let text = stdout(&start);
    assert!(
        text.contains("[env: HPFAAS_URL=http://service.example:8740]"),
        "{text}"
    );
    assert!(text.contains("[env: HPFAAS_TOKEN]"), "{text}");
    assert!(!text.contains("secret-token-value"), "{text}");
    let restart = bare()
        .args(["endpoint", "restart", "--help"])
        .output()
        .unwrap();
    assert!(stdout(&restart).contains("[env: HPFAAS_TOKEN]"));

    let manager = bare().args(["manager", "--help"]).output().unwrap();
    assert_success(&manager);
    let text = stdout(&manager);
    for value in [
        "none:",
        "block:",
        "block-reverse:",
        "alternating:",
        "list:CPUS",
        "mpiexec:",
        "mpiexec-mpich:",
        "srun:",
    ] {
        assert!(
            text.contains(value),
            "manager --help lacks {value}:\n{text}"
        );
    }
    let shells = bare().args(["completions", "--help"]).output().unwrap();
    assert!(
        stdout(&shells).contains("[possible values: bash, zsh, fish]")
            || ["bash:", "zsh:", "fish:"]
                .iter()
                .all(|s| stdout(&shells).contains(s)),
        "{}",
        stdout(&shells)
    );
}

#[test]
fn a_bad_value_gets_the_configuration_parsers_message() {
    let out = bare()
        .args([
            "manager",
            "--broker",
            "tcp://127.0.0.1:9",
            "--mpi-launcher",
            "aprun",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("engine.mpi_launcher = \"aprun\" is unknown"),
        "{}",
        stderr(&out)
    );
    let out = bare()
        .args(["endpoint", "list", "--output", "yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("'yaml'"), "{}", stderr(&out));
    // A wrong value from the environment names its variable.
    let out = bare()
        .args(["endpoint", "list"])
        .env("HPFAAS_OUTPUT", "yaml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("'yaml'")
            && stderr(&out).contains("environment variable HPFAAS_OUTPUT")
            && stderr(&out).contains("text, json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_token_on_the_command_line_is_refused() {
    let home = temp_dir("cli-token-argv");
    let out = run(
        &home,
        &["endpoint", "start", "nowhere", "--token", "abc123"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("HPFAAS_TOKEN in the environment"),
        "{}",
        stderr(&out)
    );
    // The same token from the environment passes that check (and the
    // command goes on to find no such endpoint).
    let out = bare()
        .args(["endpoint", "start", "nowhere"])
        .env("HPFAAS_HOME", &*home)
        .env("HPFAAS_TOKEN", "abc123")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("endpoint nowhere is not configured"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn home_option_and_variable_choose_the_same_directory() {
    let home = temp_dir("cli-home");
    let dir = home.join("endpoints").join("by-option");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), IDLE_LOCAL).unwrap();
    let by_option = bare()
        .arg("--home")
        .arg(&*home)
        .args(["endpoint", "list", "--output", "json"])
        .output()
        .unwrap();
    let by_variable = run(&home, &["endpoint", "list", "--output", "json"]);
    assert_eq!(json_out(&by_option), json_out(&by_variable));
    assert_eq!(json_out(&by_option)[0]["name"], "by-option");
}

#[test]
fn a_directory_no_command_accepts_is_listed_as_unusable_not_fatal() {
    let home = temp_dir("cli-bad-dir");
    for name in ["fine", "made by hand"] {
        let dir = home.join("endpoints").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), IDLE_LOCAL).unwrap();
    }
    let listed = run(&home, &["endpoint", "list", "--output", "json"]);
    assert_success(&listed);
    let rows = json_out(&listed);
    assert_eq!(rows[0]["name"], "fine", "{rows}");
    assert_eq!(rows[0]["state"], "stopped", "{rows}");
    assert_eq!(rows[1]["name"], "made by hand", "{rows}");
    let state = rows[1]["state"].as_str().unwrap();
    assert!(
        state.starts_with("unusable") && state.contains("invalid endpoint name"),
        "{state}"
    );
}

#[test]
fn a_manager_named_by_endpoint_says_its_broker_record_is_broken() {
    let home = temp_dir("cli-broken-broker");
    let dir = home.join("endpoints").join("ep");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), IDLE_LOCAL).unwrap();
    std::fs::write(dir.join("broker.json"), "{\"url\": ").unwrap();
    let out = run(&home, &["manager", "--endpoint", "ep"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broker.json is not a broker record"), "{err}");
}

#[test]
fn empty_variables_mean_unset() {
    let user_home = temp_dir("cli-empty-vars");
    let dir = user_home
        .join(".hpfaas")
        .join("endpoints")
        .join("in-default-home");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), IDLE_LOCAL).unwrap();
    let list = |extra: &[&str]| {
        bare()
            .args(["endpoint", "list"])
            .args(extra)
            .env("HOME", &*user_home)
            .env("HPFAAS_HOME", "")
            .env("HPFAAS_OUTPUT", "")
            .env("HPFAAS_URL", "")
            .env("HPFAAS_TOKEN", "")
            .output()
            .unwrap()
    };
    let text = list(&[]);
    assert_success(&text);
    assert!(
        stdout(&text).starts_with("NAME") && stdout(&text).contains("in-default-home"),
        "{}",
        stdout(&text)
    );
    let rows = json_out(&list(&["--output", "json"]));
    assert_eq!(rows[0]["name"], "in-default-home");
}

#[test]
fn local_commands_print_one_json_document() {
    let home = temp_dir("cli-json-local");
    let empty = json_out(&run(&home, &["endpoint", "list", "--output", "json"]));
    assert_eq!(empty, Value::Array(vec![]));

    let dir = home.join("endpoints").join("ep-a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), IDLE_LOCAL).unwrap();
    // The variable and the option say the same.
    let list = bare()
        .args(["endpoint", "list"])
        .env("HPFAAS_HOME", &*home)
        .env("HPFAAS_OUTPUT", "json")
        .output()
        .unwrap();
    let rows = json_out(&list);
    assert_eq!(rows.as_array().unwrap().len(), 1);
    has_keys(&rows[0], ENDPOINT_ROW);
    assert_eq!(rows[0]["name"], "ep-a");
    assert_eq!(rows[0]["state"], "stopped");
    // The option wins over the variable.
    let text = bare()
        .args(["endpoint", "list", "--output", "text"])
        .env("HPFAAS_HOME", &*home)
        .env("HPFAAS_OUTPUT", "json")
        .output()
        .unwrap();
    assert_success(&text);
    assert!(stdout(&text).starts_with("NAME"), "{}", stdout(&text));

    let script = json_out(
        &bare()
            .args(["endpoint", "job-script", "ep-a", "--output", "json"])
            .env("HPFAAS_HOME", &*home)
            .env("HPFAAS_URL", "http://127.0.0.1:9")
            .output()
            .unwrap(),
    );
    has_keys(&script, &["name", "job_script"]);
    assert!(script["job_script"].as_str().unwrap().contains("manager"));

    let man_dir = home.join("man");
    let man = json_out(
        &bare()
            .arg("man")
            .arg(&man_dir)
            .args(["--output", "json"])
            .output()
            .unwrap(),
    );
    has_keys(&man, &["pages"]);
    assert!(!man["pages"].as_array().unwrap().is_empty());

    // Tokens, straight on a service's data directory.
    let data = home.join("service-data");
    // `hpfaas token ARGS --data-dir DATA`, its one JSON document.
    let tokens = |args: &[&str]| {
        json_out(
            &bare()
                .arg("token")
                .args(args)
                .arg("--data-dir")
                .arg(&data)
                .output()
                .unwrap(),
        )
    };
    let created = tokens(&["create", "--user", "carol", "--output", "json"]);
    has_keys(&created, &["user", "token"]);
    assert_eq!(created["user"], "carol");
    let token = created["token"].as_str().unwrap().to_string();
    let listed = tokens(&["list", "--user", "carol", "--output", "json"]);
    let token_keys = ["id", "prefix", "user", "endpoint_id", "created", "revoked"];
    has_keys(&listed[0], &token_keys);
    assert!(listed[0]["revoked"].is_null());
    let revoked = tokens(&["revoke", &token, "--output", "json"]);
    has_keys(&revoked, &token_keys);
    assert_eq!(revoked["id"], listed[0]["id"]);
    assert!(revoked["revoked"].is_number());
    // The old --json flag still works, as --output json.
    let old = tokens(&["list", "--user", "carol", "--json"]);
    assert_eq!(old[0]["id"], listed[0]["id"]);
}

#[test]
fn endpoint_start_prints_the_endpoint_id_alone_as_json() {
    let svc = Service::start();
    let token = svc.token("dave");
    let ep = Endpoint::new(&svc, &token, "cli-json", ONE_BLOCK);
    let _guard = EndpointGuard {
        home: ep.home.to_path_buf(),
        name: "cli-json",
    };
    // `hpfaas endpoint --output json ARGS`, pointed at the service.
    let json = |args: &[&str]| {
        bare()
            .args(["endpoint", "--output", "json"])
            .args(args)
            .env("HPFAAS_HOME", &*ep.home)
            .env("HPFAAS_URL", &svc.url)
            .env("HPFAAS_TOKEN", &token)
            .output()
            .unwrap()
    };

    // -q reaches the agent started as a daemon: its log has no INFO lines.
    let started = json_out(&json(&["-q", "start", "cli-json"]));
    has_keys(&started, &["endpoint_id"]);
    assert_eq!(started["endpoint_id"], ep.endpoint_id().as_str());

    let rows = json_out(&json(&["list"]));
    has_keys(&rows[0], ENDPOINT_ROW);
    assert_eq!(rows[0]["endpoint_id"], started["endpoint_id"]);

    let status = wait_for(Duration::from_secs(60), "a block in the status", || {
        let status = json_out(&json(&["status", "cli-json"]));
        (!status["local"]["blocks"].as_array()?.is_empty()).then_some(status)
    });
    has_keys(&status, &["blocks", "events", "local", "service"]);
    has_keys(&status["local"], ENDPOINT_ROW);
    has_keys(
        &status["local"]["blocks"][0],
        &[
            "block_id",
            "job_id",
            "provider",
            "state",
            "nodes",
            "managers",
            "workers",
            "submitted_at",
            "started_at",
            "deadline",
        ],
    );
    assert_eq!(status["service"]["status"], "online", "{status}");

    let log_path = ep.dir().join("endpoint.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(" INFO "), "{log}");

    // Without -q, the next agent logs as usual. The service's address may
    // come as an option as well as from HPFAAS_URL.
    let restarted = json_out(
        &bare()
            .args(["endpoint", "restart", "cli-json", "--output", "json"])
            .args(["--service-url", &svc.url])
            .env("HPFAAS_HOME", &*ep.home)
            .output()
            .unwrap(),
    );
    assert_eq!(restarted, started);
    wait_for(Duration::from_secs(30), "the agent's INFO lines", || {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.contains(" INFO ").then_some(())
    });

    let stopped = json_out(&json(&["stop", "cli-json"]));
    has_keys(&stopped, &["name", "state"]);
    assert_eq!(stopped["state"], "stopped");
}

#[test]
fn a_restart_that_cannot_start_the_next_agent_leaves_the_running_one() {
    let svc = Service::start();
    let token = svc.token("erin");
    let ep = Endpoint::new(&svc, &token, "cli-restart", IDLE_LOCAL);
    let _guard = EndpointGuard {
        home: ep.home.to_path_buf(),
        name: "cli-restart",
    };
    ep.start();
    // No service URL anywhere: not in the configuration, the environment
    // or the options.
    let refused = bare()
        .args(["endpoint", "restart", "cli-restart"])
        .env("HPFAAS_HOME", &*ep.home)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("no service URL") && stderr(&refused).contains("HPFAAS_URL"),
        "{}",
        stderr(&refused)
    );
    let rows = json_out(&run(&ep.home, &["endpoint", "list", "--output", "json"]));
    assert_eq!(rows[0]["state"], "running (online)", "{rows}");
}

#[test]
fn up_prints_one_json_document_on_stdout() {
    let home = temp_dir("cli-up-json");
    let out_path = home.join("up.stdout");
    let err_path = home.join("up.stderr");
    // Stdout alone, apart from the log.
    let child = bare()
        .args([
            "up",
            "--workers",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--output",
            "json",
            "--print-env",
        ])
        .env("HPFAAS_HOME", &*home)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let _up = Interrupt(child);
    let doc: Value = wait_for(Duration::from_secs(60), "up's JSON document", || {
        serde_json::from_slice(&std::fs::read(&out_path).ok()?).ok()
    });
    has_keys(
        &doc,
        &[
            "url",
            "endpoint_id",
            "pid",
            "up_file",
            "token",
            "dashboard_url",
            "metrics_url",
        ],
    );
    let info: Value =
        serde_json::from_slice(&std::fs::read(home.join("up.json")).unwrap()).unwrap();
    assert_eq!(doc["endpoint_id"], info["endpoint_id"]);
    assert_eq!(doc["token"], info["token"]);
}

/// A process stopped on drop as a user would (SIGINT), killed if it lingers.
struct Interrupt(std::process::Child);

impl Drop for Interrupt {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this value owns.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let stopped = std::time::Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > stopped {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// True when `tool` runs here; otherwise says which check is skipped and why.
fn have(tool: &str, check: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("skipped {check}: `{tool}` is not installed");
    }
    found
}

/// Asks the bash completion script what completes the last word of `words`.
fn bash_complete(script: &Path, home: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let last = words.len() - 1;
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={last}\nCOMP_TYPE=9\n\
         _clap_complete_hpfaas hpfaas '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words[last],
        words[last - 1],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .env("HPFAAS_HOME", home)
        .env_remove("HPFAAS_OUTPUT")
        .output()
        .unwrap();
    assert_success(&out);
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn bash_completion_lists_the_local_endpoints() {
    let home = temp_dir("cli-completion");
    for name in ["alpha", "beta-2"] {
        let dir = home.join("endpoints").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), IDLE_LOCAL).unwrap();
    }
    let out = bare().args(["completions", "bash"]).output().unwrap();
    assert_success(&out);
    let script = home.join("hpfaas.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    assert!(stdout(&out).contains("complete "), "{}", stdout(&out));
    if !have("bash", "the bash completion checks") {
        return;
    }
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert_success(&syntax);

    // The names, then the options (which an empty word also completes).
    let words = bash_complete(&script, &home, &["hpfaas", "endpoint", "start", ""]);
    let names: Vec<&String> = words.iter().filter(|w| !w.starts_with('-')).collect();
    assert_eq!(names, ["alpha", "beta-2"], "{words:?}");
    assert!(words.iter().any(|w| w == "--foreground"), "{words:?}");
    let names = bash_complete(&script, &home, &["hpfaas", "endpoint", "status", "be"]);
    assert_eq!(names, ["beta-2"]);
    let commands = bash_complete(&script, &home, &["hpfaas", "endp"]);
    assert_eq!(commands, ["endpoint"]);
    let launchers = bash_complete(&script, &home, &["hpfaas", "manager", "--mpi-launcher", ""]);
    assert_eq!(launchers, ["mpiexec", "mpiexec-mpich", "srun"]);
    let formats = bash_complete(&script, &home, &["hpfaas", "--output", ""]);
    assert_eq!(formats, ["text", "json"]);
}

#[test]
fn zsh_and_fish_scripts_call_back_into_the_binary() {
    for (shell, check) in [("zsh", "zsh -n"), ("fish", "fish --no-execute")] {
        let out = bare().args(["completions", shell]).output().unwrap();
        assert_success(&out);
        let text = stdout(&out);
        assert!(text.contains(env!("CARGO_BIN_EXE_hpfaas")), "{text}");
        assert!(text.contains("_HPFAAS_COMPLETE"), "{text}");
        if have(shell, &format!("the {shell} syntax check")) {
            let dir = temp_dir("cli-shell");
            let script = dir.join("hpfaas.script");
            std::fs::write(&script, &out.stdout).unwrap();
            let mut words = check.split(' ');
            let syntax = Command::new(words.next().unwrap())
                .args(words)
                .arg(&script)
                .output()
                .unwrap();
            assert_success(&syntax);
        }
    }
}

#[test]
fn man_writes_a_formattable_page_per_subcommand() {
    let home = temp_dir("cli-man");
    let dir = home.join("man1");
    let out = bare().arg("man").arg(&dir).output().unwrap();
    assert_success(&out);
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    // Every command and subcommand that `--help` lists has its page.
    let mut expected = vec!["hpfaas.1".to_string()];
    for (path, listed) in subcommands(&[]) {
        if listed {
            expected.push(format!("hpfaas-{}.1", path.join("-")));
        }
    }
    expected.sort();
    assert_eq!(pages, expected);
    assert!(stdout(&out).contains(&format!("wrote {} man pages", pages.len())));

    let formatter = if have("man", "formatting the man pages with man -l") {
        Some(("man", vec!["-l"]))
    } else if have("groff", "formatting the man pages with groff") {
        Some(("groff", vec!["-man", "-Tutf8"]))
    } else {
        None
    };
    let Some((tool, flags)) = formatter else {
        return;
    };
    for page in &pages {
        let out = Command::new(tool)
            .args(&flags)
            .arg(dir.join(page))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert_success(&out);
        let text = stdout(&out);
        let title = page.trim_end_matches(".1");
        assert!(
            text.contains(title) && text.contains("SYNOPSIS"),
            "{page}:\n{text}"
        );
    }
    let start = std::fs::read_to_string(dir.join("hpfaas-endpoint-start.1")).unwrap();
    assert!(start.contains("HPFAAS_URL") && start.contains("HPFAAS_TOKEN"));
}

/// Every subcommand path below `path`, read from `--help` (true when it is
/// listed, i.e. not `help` itself).
fn subcommands(path: &[String]) -> Vec<(Vec<String>, bool)> {
    let out = bare().args(path).arg("--help").output().unwrap();
    assert_success(&out);
    let text = stdout(&out);
    let mut found = Vec::new();
    let Some(section) = text.split("Commands:\n").nth(1) else {
        return found;
    };
    for line in section.lines().take_while(|l| l.starts_with("  ")) {
        let name = line.split_whitespace().next().unwrap().to_string();
        if name == "help" {
            continue;
        }
        let mut sub = path.to_vec();
        sub.push(name);
        found.push((sub.clone(), true));
        found.extend(subcommands(&sub));
    }
    found
}
