//! `hpfaas endpoint check NAME`: prints the executor's findings
//! (`hpfaas_executor::check`) for people or as JSON, and fails unless an
//! `endpoint start` would work.

use hpfaas_executor::check::{self, Verdict};

use crate::output::{self, Format};

/// Runs the check and prints the report; an error (exit status 1) when
/// `start` would fail.
pub fn run(name: &str, format: Format) -> anyhow::Result<()> {
    let report = check::check(name)?;
    match format {
        Format::Json => output::print_json(&serde_json::to_value(&report)?)?,
        Format::Text => {
            let mut text = String::new();
            for f in &report.findings {
                let verdict = match f.verdict {
                    Verdict::Ok => "ok",
                    Verdict::Warn => "warn",
                    Verdict::Fail => "FAIL",
                };
                let mut lines = f.detail.lines();
                let first = lines.next().unwrap_or("");
                text.push_str(&format!("{verdict:<4}  {:<14}  {first}\n", f.check));
                for line in lines {
                    text.push_str(&format!("{:22}{line}\n", ""));
                }
            }
            if let Some(script) = &report.job_script {
                text.push_str("\nThe job script of a block:\n\n");
                text.push_str(script);
                if !script.ends_with('\n') {
                    text.push('\n');
                }
            }
            output::raw(&text)?;
        }
    }
    let failed = report
        .findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    if failed > 0 {
        anyhow::bail!(
            "endpoint {name} would not start: {failed} check(s) failed, each says what to do"
        );
    }
    if format == Format::Text {
        output::line(&format!(
            "\nendpoint {name} is ready: `hpfaas endpoint start {name}`"
        ))?;
    }
    Ok(())
}
