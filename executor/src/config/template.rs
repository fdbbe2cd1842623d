//! The configuration `hpfaas endpoint configure NAME --provider KIND` writes:
//! every key of `[endpoint]`, `[engine]`, KIND's `[provider]`, `[logs]` and `[metrics]`, each on
//! its own commented line with its default and one line of meaning, so that
//! uncommenting a line changes nothing until its value is edited.
//!
//! Defaults are rendered from the sections' `Default` values (and, for the
//! provider, from the scheduler adapters' per-kind choices), never restated,
//! so the file cannot drift from what the code does when a key is absent.
//! Which `[provider]` keys a kind takes comes from the validator's table
//! (`KIND_SPECIFIC_KEYS`).

use hpfaas_scheduler_adapters::config::key_applies;
use hpfaas_scheduler_adapters::launcher::Launcher;
use hpfaas_scheduler_adapters::{ProviderConfig, ProviderKind};

use super::{EndpointSection, EngineSection, LogsSection};

/// How a key's line is written.
enum Shown {
    /// Commented, with the value used when the key is absent.
    Default(String),
    /// Commented, with an example: absent means "unset" (no TOML value says that).
    Example(String),
    /// Commented, with an example, marked: a value sites usually need.
    Site(String),
    /// Written as a setting.
    Set(String),
}

/// One key of a section.
struct Key {
    name: &'static str,
    shown: Shown,
    meaning: String,
}

fn key(name: &'static str, shown: Shown, meaning: impl Into<String>) -> Key {
    Key {
        name,
        shown,
        meaning: meaning.into(),
    }
}

/// A TOML string literal (quoted and escaped).
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A TOML float literal (`2.0`, not `2`, which would be an integer).
fn float(value: f64) -> String {
    format!("{value:?}")
}

fn endpoint_keys(service_url: Option<&str>) -> Vec<Key> {
    use Shown::*;
    let d = EndpointSection::default();
    let url = match service_url {
        Some(u) => Set(quoted(u)),
        None => Example(quoted("https://faas.example.org")),
    };
    vec![
        key(
            "service_url",
            url,
            "base URL of the service; unset: $HPFAAS_URL",
        ),
        key(
            "token_file",
            Example(quoted("~/.hpfaas/token")),
            "owner's token for the first registration; unset: $HPFAAS_TOKEN",
        ),
        key(
            "allowed_functions",
            Default("[]".into()),
            "function ids this endpoint runs; empty: all of the owner's",
        ),
        key(
            "json_only",
            Default(d.json_only.to_string()),
            "true: JSON (11) arguments and results only, nothing unpickled here",
        ),
        key(
            "display_name",
            Example(quoted("my endpoint")),
            "shown in listings; unset: the endpoint's name",
        ),
        key(
            "ca_file",
            Example(quoted("/path/to/ca.pem")),
            "CA of an https:// service with a private CA; unset: $HPFAAS_CA_FILE",
        ),
    ]
}

fn logs_keys() -> Vec<Key> {
    use Shown::*;
    let d = LogsSection::default();
    vec![
        key(
            "max_bytes",
            Default(d.max_bytes.to_string()),
            "endpoint.log rotates before passing this size",
        ),
        key(
            "keep",
            Default(d.keep.to_string()),
            "rotated files kept: endpoint.log.1 (newest) and on",
        ),
        key(
            "daily",
            Default(d.daily.to_string()),
            "true: also a new file each day (UTC)",
        ),
        key(
            "keep_blocks",
            Default(d.keep_blocks.to_string()),
            "finished blocks whose scripts and logs stay in blocks/",
        ),
    ]
}

fn metrics_keys() -> Vec<Key> {
    use Shown::*;
    vec![
        key(
            "listen",
            Example(quoted("127.0.0.1:9464")),
            "serve Prometheus /metrics here (plain HTTP); unset: none",
        ),
        key(
            "token_file",
            Example(quoted("/path/to/metrics-token")),
            "scrapes must carry this file's token (Bearer); unset: none needed",
        ),
    ]
}

fn engine_keys(kind: ProviderKind) -> Vec<Key> {
    use Shown::*;
    let d = EngineSection::default();
    let address = if kind == ProviderKind::Local {
        key(
            "address",
            Example(quoted(super::UNIX_ADDRESS)),
            "where the broker listens: IP, interface, or \"unix\" (a private socket); \
             unset: loopback",
        )
    } else {
        key(
            "address",
            Site(quoted("ib0")),
            "interface or IP of this login node that the compute nodes reach; \
             unset: its first non-loopback interface",
        )
    };
    let srun = if kind == ProviderKind::Slurm {
        "srun"
    } else {
        "srun (Slurm only)"
    };
    vec![
        key(
            "max_workers_per_node",
            Example("4".into()),
            "warm workers per manager; unset: one per accelerator, else the node's cores",
        ),
        key(
            "cpu_affinity",
            Default(quoted(&d.cpu_affinity.to_string())),
            "worker pinning: none | block | block-reverse | alternating | \"list:0-3:4-7\"",
        ),
        key(
            "available_accelerators",
            Default("[]".into()),
            "accelerator ids, one per worker (e.g. [\"0\", \"1\"], or 2); caps the workers",
        ),
        key(
            "max_retries_on_system_failure",
            Default(d.max_retries_on_system_failure.to_string()),
            "re-runs of a task after ManagerLost or WorkerLost",
        ),
        key(
            "worker_python",
            Default(quoted(&d.worker_python)),
            "interpreter of the Python workers on the nodes",
        ),
        key(
            "prefetch_capacity",
            Default(d.prefetch_capacity.to_string()),
            "tasks a manager holds beyond its free workers",
        ),
        key(
            "heartbeat_period",
            Default(float(d.heartbeat_period)),
            "seconds between heartbeats (broker <-> managers, agent -> service)",
        ),
        key(
            "heartbeat_threshold",
            Default(float(d.heartbeat_threshold)),
            "seconds of silence after which a manager is lost (> heartbeat_period)",
        ),
        address,
        key(
            "port_range",
            Example(quoted("55000-55100")),
            "ports the broker may bind; unset: any free port",
        ),
        key(
            "mpi_launcher",
            Default(quoted(&d.mpi_launcher.to_string())),
            format!("how MPI tasks start: mpiexec (OpenMPI) | mpiexec-mpich | {srun}"),
        ),
        key(
            "launcher_options",
            Default(quoted(&d.launcher_options)),
            "extra words for every MPI task's launcher, e.g. \"--oversubscribe\"",
        ),
        key(
            "run_in_sandbox",
            Default(d.run_in_sandbox.to_string()),
            "true: each task runs in its own directory, tasks/<task_id>/",
        ),
        key(
            "shell_output_limit",
            Default(d.shell_output_limit.to_string()),
            "bytes of a shell or MPI task's stdout (and stderr) kept, head and tail",
        ),
        key(
            "encrypted",
            Default(d.encrypted.to_string()),
            "CurveZMQ between broker and managers; false only for debugging",
        ),
        key(
            "allow_unencrypted_tcp",
            Default(d.allow_unencrypted_tcp.to_string()),
            "true: accept encrypted = false on a TCP address",
        ),
        key(
            "container_type",
            Example(quoted("bwrap")),
            "workers and shell tasks run in: podman | docker | apptainer | singularity | bwrap; \
             unset: on the node",
        ),
        key(
            "container_uri",
            Example(quoted("localhost/science:1")),
            "image, image archive (.tar), root directory or .sif; bwrap: unset = this node's /",
        ),
        key(
            "container_cmd_options",
            Default(quoted(&d.container_cmd_options)),
            "the runtime's own options, e.g. \"--runtime runc\" or \"--nv\"",
        ),
    ]
}

/// The name `provider.launcher` takes for a launcher chosen by default.
fn launcher_name(launcher: &Launcher) -> &'static str {
    match launcher {
        Launcher::Srun => "srun",
        Launcher::Mpiexec => "mpiexec",
        Launcher::SingleNode => "single-node",
        Launcher::Custom(_) => "custom",
    }
}

/// Every `[provider]` key, in the order the file lists them; those that do
/// not apply to `kind` are dropped by [`provider_keys`].
fn all_provider_keys(kind: ProviderKind) -> Vec<Key> {
    use Shown::*;
    let d = ProviderConfig {
        kind,
        ..ProviderConfig::default()
    };
    let batch = kind != ProviderKind::Local;
    let (init_blocks, blocks_meaning) = if batch {
        (
            Default(d.init_blocks.to_string()),
            "blocks started with the endpoint; 0: the first task submits one",
        )
    } else {
        (
            Set("1".into()),
            "blocks started with the endpoint (default 0: the first task starts one)",
        )
    };
    let unused_here = |meaning: &str| {
        if batch {
            meaning.to_string()
        } else {
            format!("{meaning} (batch systems only; local blocks ignore it)")
        }
    };
    let queue_example = if kind == ProviderKind::Lsf {
        "batch"
    } else {
        "debug"
    };
    let directive = match kind {
        ProviderKind::Pbs => "#PBS -l filesystems=home",
        ProviderKind::Lsf => "#BSUB -alloc_flags smt4",
        ProviderKind::Slurm | ProviderKind::Local => "#SBATCH --exclusive",
    };
    // Validated defaults: a kind's default launcher always exists.
    let launcher = d
        .launcher()
        .map(|l| launcher_name(&l))
        .unwrap_or("single-node");
    vec![
        key(
            "type",
            Set(quoted(kind.name())),
            format!(
                "where blocks run: {}",
                ProviderKind::names(&ProviderKind::ALL).replace(", ", " | ")
            ),
        ),
        key(
            "partition",
            Site(quoted("compute")),
            "Slurm --partition; unset: the cluster's default partition",
        ),
        key(
            "queue",
            Site(quoted(queue_example)),
            "queue (-q); unset: the default queue",
        ),
        key(
            "account",
            Site(quoted("abc123")),
            "allocation charged (Slurm --account, PBS -A); unset: your default",
        ),
        key(
            "project",
            Site(quoted("ABC123")),
            "LSF project charged (-P); unset: your default",
        ),
        key(
            "qos",
            Example(quoted("normal")),
            "Slurm --qos; unset: the default",
        ),
        key(
            "constraint",
            Example(quoted("cpu")),
            "Slurm --constraint (node features); unset: none",
        ),
        key(
            "select_options",
            Example(quoted("system=polaris")),
            "extra PBS select resources (select=N:...); unset: none",
        ),
        key(
            "worker_init",
            Default(quoted(&d.worker_init)),
            "shell lines run before the managers, e.g. \"source ~/venv/bin/activate\"",
        ),
        key(
            "nodes_per_block",
            Default(d.nodes_per_block.to_string()),
            "nodes per block, one manager each",
        ),
        key("init_blocks", init_blocks, blocks_meaning),
        key(
            "min_blocks",
            Default(d.min_blocks.to_string()),
            "blocks kept at all times",
        ),
        key(
            "max_blocks",
            Default(d.max_blocks.to_string()),
            "most blocks at once",
        ),
        key(
            "walltime",
            Default(quoted(&d.walltime)),
            unused_here("walltime of each block, HH:MM:SS"),
        ),
        key(
            "max_idletime",
            Default(float(d.max_idletime)),
            "seconds a block may idle before it is cancelled (down to min_blocks)",
        ),
        key(
            "parallelism",
            Default(float(d.parallelism)),
            "fraction (0, 1] of the outstanding tasks to provision workers for",
        ),
        key(
            "drain_period",
            Default(float(d.drain_period)),
            unused_here("seconds before the walltime ends when managers stop taking tasks"),
        ),
        key(
            "scheduler_options",
            Default("[]".into()),
            unused_here(&format!(
                "extra directive lines, verbatim, e.g. [\"{directive}\"]"
            )),
        ),
        key(
            "launcher",
            Default(quoted(launcher)),
            "how one manager per node starts: srun | mpiexec | single-node | custom",
        ),
        key(
            "launcher_template",
            Example(quoted("jsrun -n {nodes} {cmd}")),
            "the launch line of launcher = \"custom\", with {cmd} and {nodes}",
        ),
        key(
            "cmd_timeout",
            Default(float(d.cmd_timeout)),
            unused_here("seconds a scheduler command may run before it counts as failed"),
        ),
        key(
            "poll_period",
            Default(float(d.poll_period().as_secs_f64())),
            "seconds between two status queries of the blocks",
        ),
    ]
}

fn provider_keys(kind: ProviderKind) -> Vec<Key> {
    all_provider_keys(kind)
        .into_iter()
        .filter(|k| key_applies(k.name, kind))
        .collect()
}

/// Column the meanings start at, so the file reads as a table.
const MEANING_COLUMN: usize = 40;

fn render_section(out: &mut String, name: &str, keys: &[Key]) {
    out.push_str(&format!("\n[{name}]\n"));
    for k in keys {
        let (prefix, value, mark) = match &k.shown {
            Shown::Default(v) => ("# ", v, ""),
            Shown::Example(v) => ("# ", v, ""),
            Shown::Site(v) => ("# ", v, "SET: "),
            Shown::Set(v) => ("", v, ""),
        };
        let setting = format!("{prefix}{} = {value}", k.name);
        let pad = MEANING_COLUMN.saturating_sub(setting.len()).max(1);
        out.push_str(&format!("{setting}{:pad$}  # {mark}{}\n", "", k.meaning));
    }
}

/// The configuration for a new endpoint whose blocks run on `kind`, with
/// `service_url` set when given (else `$HPFAAS_URL` applies at start).
pub fn template(kind: ProviderKind, service_url: Option<&str>) -> String {
    let mut out = format!(
        "# hpfaas endpoint configuration, provider {kind}; every key: docs/configuration.md\n\
         # A commented line shows a key and its default: uncomment it to change the value.\n\
         # Lines marked SET hold examples of what most sites need set: ask your centre.\n"
    );
    render_section(&mut out, "endpoint", &endpoint_keys(service_url));
    render_section(&mut out, "engine", &engine_keys(kind));
    render_section(&mut out, "provider", &provider_keys(kind));
    render_section(&mut out, "logs", &logs_keys());
    render_section(&mut out, "metrics", &metrics_keys());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointConfig;

    /// The keys `T`'s derived `Deserialize` accepts, as serde lists them:
    /// the code's own list, not one kept by hand.
    fn accepted_keys<T: for<'de> serde::Deserialize<'de>>() -> &'static [&'static str] {
        struct Fields(Option<&'static [&'static str]>);
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: serde::de::Visitor<'de>>(
                self,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                self.0 = Some(fields);
                Err(serde::de::Error::custom("fields read"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields = Fields(None);
        let _ = T::deserialize(&mut fields);
        fields.0.expect("a struct with named fields")
    }

    /// The key a template line sets or shows, if it is one.
    fn line_key(line: &str) -> Option<&str> {
        let setting = line.strip_prefix("# ").unwrap_or(line);
        let (name, _) = setting.split_once(" = ")?;
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
            .then_some(name)
    }

    /// The keys of `[section]` in `text`.
    fn keys_in_section<'a>(text: &'a str, section: &str) -> Vec<&'a str> {
        let header = format!("[{section}]");
        text.lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .filter_map(line_key)
            .collect()
    }

    #[test]
    fn every_accepted_key_is_in_each_providers_template() {
        for kind in ProviderKind::ALL {
            let text = template(kind, None);
            let endpoint = accepted_keys::<EndpointSection>();
            let engine = accepted_keys::<EngineSection>();
            let logs = accepted_keys::<LogsSection>();
            let metrics = accepted_keys::<crate::config::MetricsSection>();
            let provider: Vec<&str> = accepted_keys::<ProviderConfig>()
                .iter()
                .copied()
                .filter(|k| key_applies(k, kind))
                .collect();
            for (section, accepted) in [
                ("endpoint", endpoint.to_vec()),
                ("engine", engine.to_vec()),
                ("provider", provider),
                ("logs", logs.to_vec()),
                ("metrics", metrics.to_vec()),
            ] {
                let mut shown = keys_in_section(&text, section);
                let mut accepted = accepted;
                shown.sort();
                accepted.sort();
                assert_eq!(
                    shown, accepted,
                    "[{section}] of the {kind} template:\n{text}"
                );
            }
        }
    }

    #[test]
    fn each_template_loads_and_names_its_provider() {
        for kind in ProviderKind::ALL {
            for url in [None, Some("http://127.0.0.1:8740")] {
                let text = template(kind, url);
                let config = EndpointConfig::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                assert_eq!(config.provider.kind, kind);
                assert_eq!(config.endpoint.service_url.as_deref(), url);
            }
        }
    }

    /// Uncommenting every line that shows a default gives the same
    /// configuration as the file as written.
    #[test]
    fn uncommented_defaults_change_nothing() {
        for kind in ProviderKind::ALL {
            let text = template(kind, Some("http://127.0.0.1:8740"));
            let defaults: Vec<&str> = [
                endpoint_keys(None),
                engine_keys(kind),
                provider_keys(kind),
                logs_keys(),
                metrics_keys(),
            ]
            .iter()
            .flatten()
            .filter(|k| matches!(k.shown, Shown::Default(_)))
            .map(|k| k.name)
            .collect();
            let mut uncommented = 0;
            let all_on: String = text
                .lines()
                .map(|line| match line.strip_prefix("# ") {
                    Some(setting) if line_key(line).is_some_and(|k| defaults.contains(&k)) => {
                        uncommented += 1;
                        format!("{setting}\n")
                    }
                    _ => format!("{line}\n"),
                })
                .collect();
            assert_eq!(uncommented, defaults.len(), "{kind}:\n{text}");
            let written = EndpointConfig::parse(&text).unwrap();
            let mut on =
                EndpointConfig::parse(&all_on).unwrap_or_else(|e| panic!("{kind}: {e}\n{all_on}"));
            // Two keys the code fills in per kind when absent: the value
            // shown must be that choice.
            assert_eq!(
                on.provider.launcher(),
                written.provider.launcher(),
                "{kind}"
            );
            assert_eq!(
                on.provider.poll_period(),
                written.provider.poll_period(),
                "{kind}"
            );
            on.provider.launcher = None;
            on.provider.poll_period = None;
            assert_eq!(
                format!("{on:?}"),
                format!("{written:?}"),
                "{kind}:\n{all_on}"
            );
        }
    }

    /// Every commented example is a value the key accepts.
    #[test]
    fn every_example_is_accepted_on_its_own() {
        for kind in ProviderKind::ALL {
            let sections = [
                ("endpoint", endpoint_keys(None)),
                ("engine", engine_keys(kind)),
                ("provider", provider_keys(kind)),
                ("logs", logs_keys()),
                ("metrics", metrics_keys()),
            ];
            for (section, keys) in &sections {
                for k in keys {
                    let value = match &k.shown {
                        Shown::Example(v) | Shown::Site(v) => v,
                        Shown::Default(_) | Shown::Set(_) => continue,
                    };
                    let mut text = format!("[provider]\ntype = \"{kind}\"\n");
                    if k.name == "launcher_template" {
                        text.push_str("launcher = \"custom\"\n");
                    }
                    if *section == "provider" {
                        text.push_str(&format!("{} = {value}\n", k.name));
                    } else {
                        text.push_str(&format!("[{section}]\n{} = {value}\n", k.name));
                    }
                    if k.name == "container_uri" {
                        text.push_str("container_type = \"podman\"\n");
                    }
                    EndpointConfig::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                }
            }
        }
    }

    #[test]
    fn batch_templates_mark_what_a_site_sets() {
        let slurm = template(ProviderKind::Slurm, None);
        for wanted in ["# partition = ", "# account = ", "# address = "] {
            let line = slurm.lines().find(|l| l.starts_with(wanted)).unwrap();
            assert!(line.contains("# SET: "), "{line}");
        }
        let lsf = template(ProviderKind::Lsf, None);
        assert!(!lsf.contains("partition"), "{lsf}");
        assert!(lsf.contains("# project = "), "{lsf}");
    }

    #[test]
    fn a_service_url_is_quoted_as_toml() {
        let url = "http://h/\"\n[engine]\nworker_python = \"evil";
        let config = EndpointConfig::parse(&template(ProviderKind::Local, Some(url))).unwrap();
        assert_eq!(config.endpoint.service_url.as_deref(), Some(url));
        assert_eq!(config.engine.worker_python, "python3");
    }
}
