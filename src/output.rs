//! `--output text|json` (`HPFAAS_OUTPUT`): how a command that prints data
//! prints it. Text is tables for people; JSON is one document on stdout, with
//! the keys `docs/cli.md` lists, for scripts. Writes go through here so that
//! a closed pipe (`hpfaas endpoint list | head -1`) is an error, not a panic.

use std::io::Write as _;

/// How data is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and sentences, for people.
    #[default]
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Prints one JSON document (indented, one trailing newline) on stdout.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    line(&text)
}

/// Prints one line of text on stdout.
pub fn line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Prints `text` as it is (no newline added) on stdout.
pub fn raw(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Prints a table: left-aligned columns two spaces apart, under `header`.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let render = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut text = render(header.to_vec());
    for row in rows {
        text.push('\n');
        text.push_str(&render(row.iter().map(String::as_str).collect()));
    }
    line(&text)
}
