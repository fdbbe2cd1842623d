//! Where a key is in a configuration's text: the TOML parser's errors carry
//! a line, and a value it parsed but the checks refused
//! (`engine.max_workers_per_node must be at least 1`) gets one here, so that
//! every error about a file points into it.

/// Sections of an endpoint configuration, as messages name their keys.
const SECTIONS: [&str; 4] = ["endpoint", "engine", "provider", "logs"];

/// `message` prefixed with the line of the first `section.key` it names,
/// when that key is written in `text`; unchanged otherwise (a key left at
/// its default has no line).
pub fn at_line(text: &str, message: &str) -> String {
    match named_keys(message).find_map(|(section, key)| line_of(text, section, key)) {
        Some(line) => format!("line {line}: {message}"),
        None => message.to_string(),
    }
}

/// Every `section.key` in `message`, in order.
fn named_keys(message: &str) -> impl Iterator<Item = (&str, &str)> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|word| {
            let (section, key) = word.split_once('.')?;
            let key = key.trim_end_matches('.');
            let plain =
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (SECTIONS.contains(&section) && plain).then_some((section, key))
        })
}

/// The 1-based line where `key` of `[section]` is set, written either under
/// the section's header or as a dotted key (`section.key = ...`) before any
/// header.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut table = "";
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[') {
            table = header.split(']').next().unwrap_or("").trim();
            continue;
        }
        let Some((lhs, _)) = line.split_once('=') else {
            continue;
        };
        let lhs: String = lhs.chars().filter(|c| !c.is_whitespace()).collect();
        let lhs = lhs.trim_matches('"');
        let hit = if table.is_empty() {
            lhs.split_once('.') == Some((section, key))
        } else {
            table == section && lhs == key
        };
        if hit {
            return Some(n + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_under_headers_and_dotted_keys_get_their_line() {
        let text = "# comment\n[engine]\nprefetch_capacity = 3\nmax_workers_per_node = 0\n\n[provider]\ntype = \"slurm\"\n";
        assert_eq!(
            at_line(text, "engine.max_workers_per_node must be at least 1"),
            "line 4: engine.max_workers_per_node must be at least 1"
        );
        let dotted = "engine.heartbeat_period = 0\n[provider]\n";
        assert_eq!(
            at_line(dotted, "engine.heartbeat_period must be positive"),
            "line 1: engine.heartbeat_period must be positive"
        );
    }

    #[test]
    fn the_same_key_in_another_section_or_a_default_has_no_line() {
        let text = "[provider]\nmax_workers_per_node = 0\n";
        let message = "engine.max_workers_per_node must be at least 1";
        assert_eq!(at_line(text, message), message);
        assert_eq!(at_line("", message), message);
    }

    #[test]
    fn the_first_written_key_a_message_names_is_used() {
        let text = "[provider]\nmax_blocks = 1\nmin_blocks = 3\n";
        let message = "provider.init_blocks (0) and provider.min_blocks (3) must not exceed \
                       provider.max_blocks (1)";
        assert_eq!(at_line(text, message), format!("line 3: {message}"));
    }
}
