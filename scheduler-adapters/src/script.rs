//! Job scripts for batch systems. Every provider's script has one layout:
//!
//! ```text
//! #!/bin/bash
//! #SBATCH --job-name=...          <- the provider's directives
//! #SBATCH --gres=gpu:4            <- provider.scheduler_options, verbatim
//!
//! # hpfaas block ...
//! export HPFAAS_...=...           <- script_preamble: exports, worker_init
//! cd /path/to/log_dir || exit 1   <- PBS and LSF only: their jobs start in $HOME
//! export HPFAAS_JOB_ENV=...       <- the environment before the launcher, for
//! (umask 077; env -0 > ...)          the managers' children (job_env.rs)
//! srun ... /abs/path/hpfaas manager ...
//! ```
//!
//! A provider supplies only its directive prefix and the directive arguments;
//! the layout, the options and the launch line are assembled here.

use std::time::Duration;

use crate::launcher::Launcher;
use crate::quote::shell_quote;
use crate::{BlockRequest, ProviderConfig};

/// Exports and `worker_init` for the top of a job script, shared by every provider.
pub fn script_preamble(request: &BlockRequest, worker_init: &str) -> String {
    let mut out = String::new();
    for (key, value) in &request.env {
        out.push_str(&format!("export {key}={}\n", shell_quote(&[value])));
    }
    if !worker_init.trim().is_empty() {
        out.push_str(worker_init.trim_end());
        out.push('\n');
    }
    out
}

/// How one batch system's scripts differ from the others'.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// Directive prefix, e.g. `#SBATCH`.
    pub prefix: &'static str,
    /// True when jobs start in `$HOME` rather than where they were submitted.
    pub starts_in_home: bool,
}

/// The complete job script for one block.
pub fn render(
    dialect: Dialect,
    directives: &[String],
    config: &ProviderConfig,
    launcher: &Launcher,
    request: &BlockRequest,
) -> String {
    let mut out = String::from("#!/bin/bash\n");
    for directive in directives {
        out.push_str(&format!("{} {}\n", dialect.prefix, one_line(directive)));
    }
    for line in config
        .scheduler_options
        .iter()
        .flat_map(|option| option.lines())
        .map(|line| one_line(line.trim()))
        .filter(|line| !line.is_empty())
    {
        // Users write whole directive lines; a bare option gets the prefix so
        // that `--constraint=cpu` (Parsl's habit) still works.
        if line.starts_with('#') {
            out.push_str(&line);
        } else {
            out.push_str(&format!("{} {line}", dialect.prefix));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# hpfaas block {} ({}), written by the endpoint agent\n",
        request.block_id, request.job_name
    ));
    out.push_str(&script_preamble(request, &config.worker_init));
    if dialect.starts_in_home {
        out.push_str(&format!(
            "cd {} || exit 1\n",
            word(&request.log_dir.display().to_string())
        ));
    }
    out.push_str(&save_environment(request));
    out.push_str(&launcher.line(
        config.nodes_per_block,
        &shell_quote(&request.manager_command),
    ));
    out.push('\n');
    out
}

/// A directive as one line whatever it holds: configurations are checked
/// at load ([`ProviderConfig::validate`]), but a control character that got
/// here anyway (a path, a job name) must not end the directive and have the
/// rest run as shell, so each becomes `?`.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Saves the job's environment just before the launcher adds its own
/// variables, so the managers can start their children (workers, user MPI
/// programs) as the job script would have. Private: it may hold secrets.
fn save_environment(request: &BlockRequest) -> String {
    format!(
        "export HPFAAS_JOB_ENV={}\n(umask 077; env -0 > \"$HPFAAS_JOB_ENV\")\n",
        word(&log_file(request, "env"))
    )
}

/// One directive value, quoted only when it needs to be.
pub fn word(value: &str) -> String {
    shell_quote(&[value])
}

/// The block's output file (`block-<id>.out`) or error file (`.err`).
pub fn log_file(request: &BlockRequest, extension: &str) -> String {
    request
        .log_dir
        .join(format!("block-{}.{extension}", request.block_id))
        .display()
        .to_string()
}

/// Whole minutes, rounded up: Slurm and LSF count walltime in minutes.
pub fn whole_minutes(walltime: Duration) -> u64 {
    walltime.as_secs().div_ceil(60)
}

/// `HH:MM:SS` (hours may exceed 99).
pub fn hh_mm_ss(seconds: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn request() -> BlockRequest {
        BlockRequest {
            block_id: "7".into(),
            job_name: "hpfaas-ep-7".into(),
            manager_command: vec!["/opt/hpfaas/bin/hpfaas".into(), "manager".into()],
            env: vec![("HPFAAS_X".into(), "a b".into())],
            log_dir: PathBuf::from("/home/u/.hpfaas/blocks"),
        }
    }

    #[test]
    fn layout_options_and_cd() {
        let config = ProviderConfig {
            kind: crate::ProviderKind::Pbs,
            scheduler_options: vec![
                "#PBS -l filesystems=home:eagle".into(),
                "  -l place=scatter  ".into(),
                "".into(),
            ],
            worker_init: "module load cray-python\n".into(),
            launcher: Some("single-node".into()),
            ..Default::default()
        };
        let dialect = Dialect {
            prefix: "#PBS",
            starts_in_home: true,
        };
        let launcher = config.launcher().unwrap();
        let script = render(
            dialect,
            &["-N hpfaas-ep-7".into()],
            &config,
            &launcher,
            &request(),
        );
        assert_eq!(
            script,
            "#!/bin/bash\n\
             #PBS -N hpfaas-ep-7\n\
             #PBS -l filesystems=home:eagle\n\
             #PBS -l place=scatter\n\
             \n\
             # hpfaas block 7 (hpfaas-ep-7), written by the endpoint agent\n\
             export HPFAAS_X='a b'\n\
             module load cray-python\n\
             cd /home/u/.hpfaas/blocks || exit 1\n\
             export HPFAAS_JOB_ENV=/home/u/.hpfaas/blocks/block-7.env\n\
             (umask 077; env -0 > \"$HPFAAS_JOB_ENV\")\n\
             /opt/hpfaas/bin/hpfaas manager\n"
        );
    }

    /// A control character that slipped past validation (here, a config
    /// built without it) cannot end a directive line.
    #[test]
    fn directives_stay_one_line_whatever_they_hold() {
        let config = ProviderConfig {
            kind: crate::ProviderKind::Slurm,
            partition: Some("debug\ntouch /tmp/pwned".into()),
            scheduler_options: vec!["--x=a\u{b}b\ntouch /tmp/pwned2".into()],
            ..Default::default()
        };
        let launcher = config.launcher().unwrap();
        let mut req = request();
        req.job_name = "ep\rtouch /tmp/pwned3".into();
        let dialect = Dialect {
            prefix: "#SBATCH",
            starts_in_home: false,
        };
        let directives =
            <crate::slurm::Slurm as crate::batch::Scheduler>::directives(&config, &req);
        let script = render(dialect, &directives, &config, &launcher, &req);
        for line in script.lines() {
            assert!(
                !line.trim_start().starts_with("touch"),
                "a value became a shell line: {line:?}\n{script}"
            );
        }
    }

    #[test]
    fn walltimes_round_up_to_minutes() {
        assert_eq!(whole_minutes(Duration::from_secs(1800)), 30);
        assert_eq!(whole_minutes(Duration::from_secs(1801)), 31);
        assert_eq!(whole_minutes(Duration::from_secs(1)), 1);
        assert_eq!(hh_mm_ss(3605), "01:00:05");
        assert_eq!(hh_mm_ss(100 * 3600), "100:00:00");
    }

    #[test]
    fn log_files_are_named_by_block() {
        assert_eq!(
            log_file(&request(), "out"),
            "/home/u/.hpfaas/blocks/block-7.out"
        );
    }
}
