//! Every endpoint config in `site-configs/` parses, validates, and renders the
//! job script checked in as `site-configs/expected/<name>.sh`, byte for byte.
//!
//! After an intended change, rewrite the expected scripts with
//! `UPDATE_EXPECTED=1 cargo test -p hpfaas-scheduler-adapters --test site_configs`
//! and review the diff: these are the scripts sites will see.

use std::path::{Path, PathBuf};

use hpfaas_scheduler_adapters::{build, BlockRequest, ProviderConfig};

/// The `[endpoint]` and `[engine]` keys the executor accepts
/// (`executor/src/config.rs`); the executor owns them, this list only
/// catches a site config drifting from them.
const ENDPOINT_KEYS: &[&str] = &[
    "service_url",
    "token_file",
    "allowed_functions",
    "display_name",
];
const ENGINE_KEYS: &[&str] = &[
    "max_workers_per_node",
    "cpu_affinity",
    "available_accelerators",
    "max_retries_on_system_failure",
    "worker_python",
    "prefetch_capacity",
    "heartbeat_period",
    "heartbeat_threshold",
    "address",
    "port_range",
];

fn site_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-configs")
}

/// A fixed block, with the paths of a typical user's installation.
fn request(name: &str) -> BlockRequest {
    BlockRequest {
        block_id: "1".into(),
        job_name: format!("hpfaas-{name}-1"),
        manager_command: [
            "/opt/hpfaas/bin/hpfaas",
            "manager",
            "--broker",
            "tcp://10.1.2.3:55001",
            "--prefetch",
            "8",
            "--worker-python",
            "python3",
            "--block-id",
            "1",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![("HPFAAS_HOME".into(), "/home/user/.hpfaas".into())],
        log_dir: PathBuf::from(format!("/home/user/.hpfaas/endpoints/{name}/blocks")),
    }
}

fn keys(table: &toml::Table) -> Vec<&str> {
    table.keys().map(String::as_str).collect()
}

/// Parses one site config's `[provider]` and renders its job script.
fn render(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
    for key in keys(&doc) {
        if !["endpoint", "engine", "provider"].contains(&key) {
            return Err(format!("unknown section [{key}]"));
        }
    }
    for (section, allowed) in [("endpoint", ENDPOINT_KEYS), ("engine", ENGINE_KEYS)] {
        let table = doc
            .get(section)
            .and_then(toml::Value::as_table)
            .ok_or(format!("no [{section}] table"))?;
        for key in keys(table) {
            if !allowed.contains(&key) {
                return Err(format!(
                    "[{section}] {key} is not a key the executor accepts"
                ));
            }
        }
    }
    let provider = doc.get("provider").cloned().ok_or("no [provider] table")?;
    let config: ProviderConfig = provider
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    config.validate()?;
    let provider = build(&config)?;
    let name = path.file_stem().unwrap().to_string_lossy();
    Ok(provider.job_script(&request(&name)))
}

#[test]
fn site_configs_render_their_expected_scripts() {
    let dir = site_configs();
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    let names: Vec<String> = configs
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "laptop",
        "slurm-cpu",
        "slurm-gpu",
        "pbs-polaris",
        "lsf-summit",
        "slurm-test",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "site-configs/{wanted}.toml is missing"
        );
    }

    let update = std::env::var_os("UPDATE_EXPECTED").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for (path, name) in configs.iter().zip(&names) {
        let script = match render(path) {
            Ok(script) => script,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let expected_path = dir.join("expected").join(format!("{name}.sh"));
        if update {
            std::fs::write(&expected_path, &script).unwrap();
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == script => {}
            Ok(expected) => failures.push(format!(
                "{name}: job script differs from {} (UPDATE_EXPECTED=1 rewrites it)\n--- expected\n{expected}--- rendered\n{script}",
                expected_path.display()
            )),
            Err(e) => failures.push(format!("{}: {e}", expected_path.display())),
        }
    }

    // No expected script without its config.
    for entry in std::fs::read_dir(dir.join("expected")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !names.contains(&stem) {
            failures.push(format!("{} has no site config", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_bad_site_config_is_refused_with_its_key() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("site-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[endpoint]\n[engine]\n[provider]\ntype = \"pbs\"\npartition = \"x\"\n",
    )
    .unwrap();
    assert!(render(&path).unwrap_err().contains("partition"));
    std::fs::write(&path, "[endpoint]\n[engine]\nworkers = 3\n[provider]\n").unwrap();
    assert!(render(&path).unwrap_err().contains("workers"));
    std::fs::remove_dir_all(&dir).unwrap();
}
