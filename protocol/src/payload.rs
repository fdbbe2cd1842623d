//! Globus Compute's payload framing: buffers packed as `"{len}\n{buf}"`, each
//! buffer opening with a 3-character strategy identifier such as `00\n`.
//!
//! The service and the manager only ever need to split and join buffers and
//! read strategy identifiers; encoding and decoding of Python objects happens
//! in the SDK and the worker runtime (`python/hpfaas/serialize.py`).

/// Strategy id of a shell function's definition (hpfaas extension; JSON body).
pub const STRATEGY_SHELL_FUNCTION: &str = "sh\n";
/// Strategy id of a shell function's result (hpfaas extension; JSON body).
pub const STRATEGY_SHELL_RESULT: &str = "sr\n";
/// Strategy id of JSON data (Globus Compute `JSONData`).
pub const STRATEGY_JSON: &str = "11\n";

/// Error splitting a packed buffer string.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A length prefix was missing its newline or was not a number.
    #[error("malformed buffer framing at byte {offset}: expected \"<length>\\n\"")]
    BadLength {
        /// Byte offset of the bad prefix.
        offset: usize,
    },
    /// A length prefix claimed more characters than remain.
    #[error("truncated buffer at byte {offset}: {wanted} characters announced, {available} left")]
    Truncated {
        /// Byte offset of the buffer.
        offset: usize,
        /// Characters announced by the prefix.
        wanted: usize,
        /// Characters actually left.
        available: usize,
    },
}

/// Packs buffers the way Globus Compute's `pack_buffers` does.
///
/// Lengths count Unicode characters (Python `len` of a `str`), not bytes.
pub fn pack<S: AsRef<str>>(buffers: &[S]) -> String {
    let mut out = String::new();
    for b in buffers {
        let b = b.as_ref();
        out.push_str(&b.chars().count().to_string());
        out.push('\n');
        out.push_str(b);
    }
    out
}

/// Splits a packed string into its buffers (inverse of [`pack`]).
pub fn unpack(packed: &str) -> Result<Vec<&str>, FramingError> {
    let mut out = Vec::new();
    let mut rest = packed;
    let mut offset = 0;
    while !rest.is_empty() {
        let nl = rest.find('\n').ok_or(FramingError::BadLength { offset })?;
        let len: usize = rest[..nl]
            .parse()
            .map_err(|_| FramingError::BadLength { offset })?;
        let body = &rest[nl + 1..];
        // Advance `len` characters; ASCII fast path when the byte fits.
        let end = if body.is_ascii() {
            (len <= body.len()).then_some(len)
        } else {
            body.char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(body.len()))
                .nth(len)
        };
        let end = end.ok_or(FramingError::Truncated {
            offset,
            wanted: len,
            available: body.chars().count(),
        })?;
        out.push(&body[..end]);
        offset += nl + 1 + end;
        rest = &body[end..];
    }
    Ok(out)
}

/// The 3-character strategy identifier a serialized buffer opens with.
pub fn strategy_of(buffer: &str) -> Option<&str> {
    buffer.get(..3).filter(|s| s.ends_with('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_unpack_round_trip() {
        let bufs = ["00\nabc", "11\n{\"a\": \"é\\n\"}", ""];
        let packed = pack(&bufs);
        assert_eq!(packed, "6\n00\nabc15\n11\n{\"a\": \"é\\n\"}0\n");
        assert_eq!(unpack(&packed).unwrap(), bufs.to_vec());
    }

    #[test]
    fn non_ascii_lengths_count_characters() {
        let packed = pack(&["ééé", "x"]);
        assert_eq!(packed, "3\nééé1\nx");
        assert_eq!(unpack(&packed).unwrap(), vec!["ééé", "x"]);
    }

    #[test]
    fn bad_framing_is_reported() {
        assert_eq!(unpack("abc"), Err(FramingError::BadLength { offset: 0 }));
        assert_eq!(unpack("x\nabc"), Err(FramingError::BadLength { offset: 0 }));
        assert!(matches!(
            unpack("3\nab"),
            Err(FramingError::Truncated {
                wanted: 3,
                available: 2,
                ..
            })
        ));
        assert!(matches!(
            unpack("1\na5\nab"),
            Err(FramingError::Truncated { offset: 3, .. })
        ));
    }

    #[test]
    fn strategy_ids() {
        assert_eq!(strategy_of("st\nf:def f(): pass"), Some("st\n"));
        assert_eq!(strategy_of("ab"), None);
        assert_eq!(strategy_of("abcd"), None);
    }
}
