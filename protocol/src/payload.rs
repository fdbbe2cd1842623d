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
/// Strategy id of an args buffer whose pickle travels as the task's blob,
/// raw bytes beside the text; the buffer's body is the blob's length in
/// bytes (hpfaas extension; docs/api.md, "Binary arguments").
pub const STRATEGY_PICKLE_BLOB: &str = "pb\n";

/// Most buffers one packed string may hold. A task's payload has two (args
/// and kwargs), a function or a result one; the cap bounds what a decoder
/// allocates for a payload of millions of empty buffers (docs/api.md,
/// "Limits").
pub const MAX_BUFFERS: usize = 1024;

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
    /// More buffers than [`MAX_BUFFERS`].
    #[error("more than {limit} packed buffers (the limit per payload)")]
    TooManyBuffers {
        /// The limit, [`MAX_BUFFERS`].
        limit: usize,
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

/// The blob length a task payload announces (its args buffer is
/// `pb\n<length>`), `None` for a payload without a blob; an error says
/// what is malformed.
pub fn blob_length(payload: &str) -> Result<Option<usize>, String> {
    // Cheap refusal first: most payloads are large base64 text.
    let Some(nl) = payload.find('\n') else {
        return Ok(None);
    };
    if !payload[nl + 1..].starts_with(STRATEGY_PICKLE_BLOB) {
        return Ok(None);
    }
    let buffers = unpack(payload).map_err(|e| e.to_string())?;
    let Some(body) = buffers[0].strip_prefix(STRATEGY_PICKLE_BLOB) else {
        return Ok(None);
    };
    body.parse::<usize>().map(Some).map_err(|_| {
        format!("the args buffer {STRATEGY_PICKLE_BLOB:?} must hold the blob's length in bytes, not {body:?}")
    })
}

/// Splits a packed string into its buffers (inverse of [`pack`]), at most
/// [`MAX_BUFFERS`] of them.
///
/// Linear in the input: each byte is looked at a bounded number of times,
/// whatever the lengths announced.
pub fn unpack(packed: &str) -> Result<Vec<&str>, FramingError> {
    let mut out = Vec::new();
    let mut rest = packed;
    let mut offset = 0;
    while !rest.is_empty() {
        if out.len() == MAX_BUFFERS {
            return Err(FramingError::TooManyBuffers { limit: MAX_BUFFERS });
        }
        let nl = rest.find('\n').ok_or(FramingError::BadLength { offset })?;
        let len = parse_length(&rest[..nl]).ok_or(FramingError::BadLength { offset })?;
        let body = &rest[nl + 1..];
        let end = char_end(body, len).ok_or_else(|| FramingError::Truncated {
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

/// A length prefix as [`pack`] writes it: decimal digits, no sign, no
/// leading zero (so that unpacking and packing again gives the same text).
fn parse_length(digits: &str) -> Option<usize> {
    let canonical =
        digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// Byte offset just past the first `chars` characters of `text`, `None`
/// if it holds fewer. Looks at no byte beyond that offset.
fn char_end(text: &str, chars: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let head = &bytes[..chars.min(bytes.len())];
    // Lengths count characters; in an ASCII prefix that is its byte count.
    let ascii = head
        .iter()
        .position(|b| !b.is_ascii())
        .unwrap_or(head.len());
    if ascii == chars {
        return Some(chars);
    }
    text[ascii..]
        .char_indices()
        .map(|(i, _)| ascii + i)
        .chain(std::iter::once(text.len()))
        .nth(chars - ascii)
}

/// The 3-character strategy identifier a serialized buffer opens with.
pub fn strategy_of(buffer: &str) -> Option<&str> {
    buffer.get(..3).filter(|s| s.ends_with('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_lengths_are_read_from_the_args_buffer() {
        assert_eq!(
            blob_length(&pack(&["pb\n1048576", "00\nxyz"])),
            Ok(Some(1_048_576))
        );
        assert_eq!(blob_length(&pack(&["00\nabc", "pb\n5"])), Ok(None));
        assert_eq!(blob_length("no framing"), Ok(None));
        assert_eq!(blob_length(""), Ok(None));
        assert!(blob_length(&pack(&["pb\nmany", "00\n"]))
            .unwrap_err()
            .contains("\"many\""));
        assert!(blob_length("99\npb\n12").is_err(), "truncated framing");
    }

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
        // Only the lengths `pack` writes: no sign, space or leading zero.
        for bad in ["+1\na", " 1\na", "01\na", "1 \na", "\na", "-0\n"] {
            assert_eq!(
                unpack(bad),
                Err(FramingError::BadLength { offset: 0 }),
                "{bad:?}"
            );
        }
        assert_eq!(unpack("0\n1\na"), Ok(vec!["", "a"]));
    }

    #[test]
    fn the_buffer_count_is_capped() {
        let most = "0\n".repeat(MAX_BUFFERS);
        assert_eq!(unpack(&most).map(|b| b.len()), Ok(MAX_BUFFERS));
        let err = unpack(&format!("{most}1\nx")).unwrap_err();
        assert_eq!(err, FramingError::TooManyBuffers { limit: MAX_BUFFERS });
        assert!(err.to_string().contains("1024"), "{err}");
    }

    #[test]
    fn lengths_count_characters_past_a_multibyte_one() {
        assert_eq!(char_end("aéb", 2), Some(3));
        assert_eq!(char_end("aéb", 3), Some(4));
        assert_eq!(char_end("aéb", 4), None);
        assert_eq!(char_end("ab", 3), None);
        assert_eq!(char_end("", 0), Some(0));
        assert_eq!(unpack("2\naé1\nb"), Ok(vec!["aé", "b"]));
    }

    #[test]
    fn strategy_ids() {
        assert_eq!(strategy_of("st\nf:def f(): pass"), Some("st\n"));
        assert_eq!(strategy_of("ab"), None);
        assert_eq!(strategy_of("abcd"), None);
    }
}
