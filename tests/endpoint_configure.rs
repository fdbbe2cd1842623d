//! `hpfaas endpoint configure` through the real binary: a config for every
//! provider, from a shipped site (`--site`, `--site list`), or copied from
//! the user's file (`--from`), and the refusals, each naming what is wrong.
//! Every written file is read back by `hpfaas endpoint job-script`, which
//! loads it as `endpoint start` does; nothing is started.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// `hpfaas endpoint ARGS` in `home`, with `HPFAAS_URL` set to `url` or unset.
fn endpoint(home: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut c = hpfaas();
    c.arg("endpoint")
        .args(args)
        .env("HPFAAS_HOME", home)
        .env_remove("HPFAAS_TOKEN");
    match url {
        Some(url) => c.env("HPFAAS_URL", url),
        None => c.env_remove("HPFAAS_URL"),
    };
    c.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn config_path(home: &Path, name: &str) -> PathBuf {
    home.join("endpoints").join(name).join("config.toml")
}

fn site_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("site-configs")
}

/// The shipped site names, from the repository's directory.
fn site_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(site_configs())
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}

/// The written file loads as `endpoint start` loads it.
fn assert_loads(home: &Path, name: &str) {
    let out = endpoint(home, Some("http://127.0.0.1:9"), &["job-script", name]);
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    assert!(stdout(&out).contains("hpfaas"), "{}", stdout(&out));
}

#[test]
fn every_provider_gets_a_config_that_loads() {
    let home = temp_dir("configure-providers");
    for provider in ["local", "slurm", "pbs", "lsf"] {
        let name = format!("ep-{provider}");
        let out = endpoint(&home, None, &["configure", &name, "--provider", provider]);
        assert!(out.status.success(), "{provider}: {}", stderr(&out));
        assert!(stdout(&out).contains("edit "), "{}", stdout(&out));
        let text = std::fs::read_to_string(config_path(&home, &name)).unwrap();
        assert!(
            text.contains(&format!("\ntype = \"{provider}\"")),
            "{provider}:\n{text}"
        );
        assert!(text.contains("# walltime = \"00:30:00\""), "{text}");
        assert_loads(&home, &name);
    }
    // Without --provider: local, as before.
    let out = endpoint(&home, Some("http://127.0.0.1:9"), &["configure", "plain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(config_path(&home, "plain")).unwrap();
    assert!(text.contains("\ntype = \"local\""), "{text}");
    assert!(
        text.contains("\nservice_url = \"http://127.0.0.1:9\""),
        "{text}"
    );
}

#[test]
fn help_lists_the_providers_and_an_unknown_one_is_refused() {
    let out = hpfaas()
        .args(["endpoint", "configure", "--help"])
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("[possible values: local, slurm, pbs, lsf]"),
        "{}",
        stdout(&out)
    );
    let home = temp_dir("configure-bad-provider");
    let out = endpoint(&home, None, &["configure", "x", "--provider", "cobalt"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cobalt"), "{}", stderr(&out));
    assert!(!home.join("endpoints").exists());
}

#[test]
fn site_list_names_every_site_with_a_line() {
    let home = temp_dir("configure-list");
    let out = endpoint(&home, None, &["configure", "--site", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    let names = site_names();
    assert_eq!(listed.lines().count(), names.len(), "{listed}");
    for (line, name) in listed.lines().zip(&names) {
        let (listed_name, summary) = line.split_once(' ').unwrap();
        assert_eq!(listed_name, name, "{listed}");
        let first = std::fs::read_to_string(site_configs().join(format!("{name}.toml")))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim_start_matches('#')
            .trim()
            .to_string();
        assert_eq!(summary.trim(), first);
    }
}

#[test]
fn a_site_config_is_written_as_shipped() {
    let home = temp_dir("configure-site");
    let out = endpoint(&home, None, &["configure", "cpu", "--site", "slurm-cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shipped = std::fs::read_to_string(site_configs().join("slurm-cpu.toml")).unwrap();
    let written = std::fs::read_to_string(config_path(&home, "cpu")).unwrap();
    assert_eq!(written, shipped);
    assert_loads(&home, "cpu");
    // With HPFAAS_URL known, the site's service_url is that URL.
    let url = "http://127.0.0.1:8740";
    let out = endpoint(
        &home,
        Some(url),
        &["configure", "gpu", "--site", "slurm-gpu"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(config_path(&home, "gpu")).unwrap();
    assert!(
        written.contains(&format!("\nservice_url = \"{url}\"\n")),
        "{written}"
    );
    for site in site_names() {
        let name = format!("site-{site}");
        let out = endpoint(&home, None, &["configure", &name, "--site", &site]);
        assert!(out.status.success(), "{site}: {}", stderr(&out));
        assert_loads(&home, &name);
    }
}

#[test]
fn an_unknown_site_names_the_known_ones() {
    let home = temp_dir("configure-unknown-site");
    let out = endpoint(&home, None, &["configure", "x", "--site", "frontier"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"frontier\""), "{err}");
    for name in site_names() {
        assert!(err.contains(&name), "{name} missing: {err}");
    }
    assert!(!config_path(&home, "x").exists());
}

#[test]
fn from_copies_the_users_file_byte_for_byte() {
    let home = temp_dir("configure-from");
    let mine = home.join("mine.toml");
    let text = "# my cluster\n[engine]\nmax_workers_per_node = 2 # two\n\n[provider]\ntype = \"slurm\"\npartition = \"debug\"\n";
    std::fs::write(&mine, text).unwrap();
    let out = endpoint(
        &home,
        Some("http://127.0.0.1:9"),
        &["configure", "copy", "--from", mine.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(config_path(&home, "copy")).unwrap(),
        text
    );
    assert_loads(&home, "copy");
}

#[test]
fn a_bad_from_file_is_refused_naming_the_file_key_and_line() {
    let home = temp_dir("configure-bad-from");
    let bad = home.join("bad.toml");
    std::fs::write(
        &bad,
        "[engine]\nworker_python = \"python3\"\nmax_worker_per_node = 4\n",
    )
    .unwrap();
    let out = endpoint(
        &home,
        None,
        &["configure", "bad", "--from", bad.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(bad.to_str().unwrap())
            && err.contains("max_worker_per_node")
            && err.contains("line 3"),
        "{err}"
    );
    assert!(!config_path(&home, "bad").exists());
    // A value the validator refuses, and a file that is not there.
    std::fs::write(&bad, "[provider]\ntype = \"pbs\"\npartition = \"x\"\n").unwrap();
    let out = endpoint(
        &home,
        None,
        &["configure", "bad", "--from", bad.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("provider.partition"),
        "{}",
        stderr(&out)
    );
    let missing = home.join("missing.toml");
    let out = endpoint(
        &home,
        None,
        &["configure", "bad", "--from", missing.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    // A path that is no configuration at all (a device with no end) is
    // refused after a bounded read, not read forever.
    let out = endpoint(&home, None, &["configure", "bad", "--from", "/dev/zero"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/dev/zero is larger than"),
        "{}",
        stderr(&out)
    );
    assert!(!config_path(&home, "bad").exists());
}

#[test]
fn sources_are_exclusive_and_a_configured_endpoint_is_kept() {
    let home = temp_dir("configure-exclusive");
    let out = endpoint(
        &home,
        None,
        &["configure", "x", "--provider", "slurm", "--site", "laptop"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    let out = endpoint(&home, None, &["configure", "x", "--provider", "pbs"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = std::fs::read_to_string(config_path(&home, "x")).unwrap();
    let out = endpoint(&home, None, &["configure", "x", "--site", "laptop"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already configured"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(config_path(&home, "x")).unwrap(),
        before
    );
}

/// The README's walk-through up to the first call: configure with
/// `--provider slurm`, set the two values it marks (partition, account),
/// start, and stop. No task is sent, so no block is submitted and no Slurm
/// is needed; the batch tests run tasks in real pilot jobs.
#[test]
fn the_readme_walk_through_starts_and_stops_a_slurm_endpoint() {
    let svc = Service::start();
    let token = svc.token("alice");
    let home = temp_dir("configure-walk-through");
    let name = "cluster";
    let _guard = EndpointGuard {
        home: home.to_path_buf(),
        name,
    };
    let out = endpoint_cmd(
        &home,
        &svc.url,
        &token,
        &["configure", name, "--provider", "slurm"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let path = config_path(&home, name);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut edited = 0;
    let text: String = text
        .lines()
        .map(|line| {
            let set = [
                ("# partition = ", "partition = \"debug\""),
                ("# account = ", "account = \"alice\""),
            ]
            .into_iter()
            .find(|(prefix, _)| line.starts_with(prefix) && line.contains("# SET: "));
            match set {
                Some((_, value)) => {
                    edited += 1;
                    format!("{value}\n")
                }
                None => format!("{line}\n"),
            }
        })
        .collect();
    assert_eq!(edited, 2, "{text}");
    std::fs::write(&path, text).unwrap();

    let out = endpoint_cmd(&home, &svc.url, &token, &["start", name]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let credential: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.join("endpoints").join(name).join("endpoint.json")).unwrap(),
    )
    .unwrap();
    let endpoint_id = credential["endpoint_id"].as_str().unwrap();
    assert!(stdout(&out).contains(endpoint_id), "{}", stdout(&out));
    let script = endpoint_cmd(&home, &svc.url, &token, &["job-script", name]);
    let script = stdout(&script);
    assert!(
        script.contains("#SBATCH --partition=debug") && script.contains("#SBATCH --account=alice"),
        "{script}"
    );
    let out = endpoint_cmd(&home, &svc.url, &token, &["stop", name]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Under `--output json` configure prints a document, not a sentence: the
/// name and the file written; `--site list` gives the sites as an array.
#[test]
fn configure_speaks_json_when_asked() {
    let home = temp_dir("configure-json");
    let mut c = hpfaas();
    c.args([
        "--output",
        "json",
        "endpoint",
        "configure",
        "j",
        "--provider",
        "pbs",
    ])
    .env("HPFAAS_HOME", &*home)
    .env_remove("HPFAAS_URL");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["name"], "j");
    assert_eq!(
        doc["config"].as_str().map(PathBuf::from),
        Some(config_path(&home, "j"))
    );
    let mut c = hpfaas();
    c.args([
        "--output",
        "json",
        "endpoint",
        "configure",
        "--site",
        "list",
    ])
    .env("HPFAAS_HOME", &*home);
    let out = c.output().unwrap();
    let sites: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = sites.iter().filter_map(|s| s["site"].as_str()).collect();
    assert_eq!(listed, site_names());
    assert!(sites
        .iter()
        .all(|s| s["summary"].as_str().is_some_and(|t| !t.is_empty())));
}
