//! `hpfaas endpoint configure`: where a new endpoint's configuration comes
//! from (a provider's template, a shipped site, or a file of the user's),
//! and what it prints.

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::builder::PossibleValue;
use hpfaas_executor::config::sites::SITES;
use hpfaas_executor::lifecycle::{self, ConfigSource};
use hpfaas_scheduler_adapters::ProviderKind;

use crate::output::{self, Format};

/// `--site` value that lists the sites instead of choosing one.
const LIST: &str = "list";

/// Options of `hpfaas endpoint configure`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").args(["provider", "site", "from"])))]
pub struct ConfigureArgs {
    /// Endpoint name.
    #[arg(required_unless_present = "site")]
    name: Option<String>,
    /// Where blocks run: writes every key of this provider, [engine] and
    /// [endpoint], commented, with its default (default: local).
    #[arg(long, value_name = "PROVIDER")]
    provider: Option<Provider>,
    /// Start from a shipped site configuration; `--site list` names them.
    #[arg(long, value_name = "SITE")]
    site: Option<String>,
    /// Copy a configuration you already have (checked first).
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
}

/// A `--provider` value: the batch systems the scheduler adapters drive,
/// listed by `--help` from their own list.
#[derive(Clone, Copy)]
struct Provider(ProviderKind);

static PROVIDERS: LazyLock<Vec<Provider>> =
    LazyLock::new(|| ProviderKind::ALL.into_iter().map(Provider).collect());

impl clap::ValueEnum for Provider {
    fn value_variants<'a>() -> &'a [Self] {
        &PROVIDERS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()))
    }
}

/// Runs `hpfaas endpoint configure`.
pub fn run(args: ConfigureArgs, format: Format) -> anyhow::Result<()> {
    if args.site.as_deref() == Some(LIST) {
        return match format {
            Format::Text => output::raw(&site_list()),
            Format::Json => output::print_json(&serde_json::Value::Array(
                SITES
                    .iter()
                    .map(|s| serde_json::json!({"site": s.name, "summary": s.summary()}))
                    .collect(),
            )),
        };
    }
    let Some(name) = args.name else {
        anyhow::bail!("give the endpoint's name: hpfaas endpoint configure NAME ...");
    };
    let source = match (&args.provider, &args.site, &args.from) {
        (_, Some(site), _) => ConfigSource::Site(site),
        (_, _, Some(file)) => ConfigSource::File(file),
        (provider, None, None) => {
            ConfigSource::Provider(provider.map_or(ProviderKind::Local, |p| p.0))
        }
    };
    let path = lifecycle::configure(&name, source)?;
    match format {
        Format::Text => output::line(&format!(
            "configured endpoint {name}: edit {}, then `hpfaas endpoint check {name}` and \
             `hpfaas endpoint start {name}`",
            path.display()
        )),
        Format::Json => output::print_json(&serde_json::json!({"name": name, "config": path})),
    }
}

/// One line per site: its name and what it is.
fn site_list() -> String {
    let width = SITES.iter().map(|s| s.name.len()).max().unwrap_or(0);
    SITES
        .iter()
        .map(|s| format!("{:width$}  {}\n", s.name, s.summary()))
        .collect()
}
