//! Quoting words for a POSIX shell: the one rule every job script, launch
//! line and logged command uses. It depends on nothing else in the crate, so
//! every module may use it without importing another's concerns.

/// Quotes words for a POSIX shell and joins them with spaces.
pub fn shell_quote<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| {
            let w = w.as_ref();
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
            {
                w.to_string()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote(&["a", "b c", "it's", ""]),
            r#"a 'b c' 'it'\''s' ''"#
        );
    }

    #[test]
    fn quoted_words_come_back_unchanged_from_a_shell() {
        let words = [
            "plain",
            "two words",
            "it's",
            "",
            "$HOME",
            "`id`",
            "a\nb",
            "*",
            "--x=\"y\"",
        ];
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\0' {}", shell_quote(&words)))
            .output()
            .unwrap();
        assert!(out.status.success());
        let back: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap()
            .strip_suffix('\0')
            .unwrap()
            .split('\0')
            .collect();
        assert_eq!(back, words);
    }
}
