//! Pathological inputs for the payload decoder: payloads of several MiB
//! built to make a per-buffer rescan of the rest of the input blow up.
//! Each must be decoded (or refused) within a bound that is generous for a
//! linear decoder, seconds where milliseconds are expected, and hopeless
//! for a quadratic one.

use std::time::{Duration, Instant};

use hpfaas_protocol::payload::{self, FramingError, MAX_BUFFERS};

/// Far above what a linear pass over 10 MiB takes, even unoptimised on a
/// loaded machine; far below what a quadratic one takes (minutes).
const BOUND: Duration = Duration::from_secs(2);

const MIB: usize = 1 << 20;

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < BOUND, "{what} took {took:?}, more than {BOUND:?}");
    out
}

#[test]
fn millions_of_empty_buffers_are_refused_quickly() {
    // `pb\n5` then `0\n` five million times: 10 MiB.
    let mut text = String::from("4\npb\n5");
    text.push_str(&"0\n".repeat(5 * MIB));
    let err = timed("unpacking 5 Mi empty buffers", || payload::unpack(&text)).unwrap_err();
    assert_eq!(err, FramingError::TooManyBuffers { limit: MAX_BUFFERS });
    assert!(err.to_string().contains(&MAX_BUFFERS.to_string()), "{err}");
    let err = timed("blob_length of 5 Mi empty buffers", || {
        payload::blob_length(&text)
    })
    .unwrap_err();
    assert!(err.contains("more than 1024 packed buffers"), "{err}");
}

#[test]
fn the_most_buffers_before_a_large_one_decode_quickly() {
    // Every buffer the limit allows, the last one 10 MiB of ASCII: a
    // decoder that rescans the rest for each buffer reads 10 GiB.
    let big = "x".repeat(10 * MIB);
    let mut bufs: Vec<&str> = vec!["pb\n5"];
    bufs.extend(std::iter::repeat_n("", MAX_BUFFERS - 2));
    bufs.push(&big);
    let text = payload::pack(&bufs);
    let got = timed("unpacking 1,024 buffers over 10 MiB", || {
        payload::unpack(&text)
    })
    .unwrap();
    assert_eq!(got, bufs);
    assert_eq!(
        timed("blob_length over 10 MiB", || payload::blob_length(&text)),
        Ok(Some(5))
    );
    // One buffer more is refused, naming the limit.
    let over = format!("{text}0\n");
    assert_eq!(
        payload::unpack(&over),
        Err(FramingError::TooManyBuffers { limit: MAX_BUFFERS })
    );
}

#[test]
fn non_ascii_and_huge_announced_lengths_decode_quickly() {
    // Multi-byte characters everywhere, lengths counted in characters.
    let big = "é".repeat(5 * MIB);
    let bufs = ["00\nabc", big.as_str()];
    let text = payload::pack(&bufs);
    assert_eq!(
        timed("unpacking 10 MiB of two-byte characters", || {
            payload::unpack(&text)
        })
        .unwrap(),
        bufs
    );
    // A length announcing more than is there, after 10 MiB.
    let lying = format!("{}\n{}", usize::MAX, "x".repeat(10 * MIB));
    assert!(matches!(
        timed("a truncated 10 MiB buffer", || payload::unpack(&lying)),
        Err(FramingError::Truncated { .. })
    ));
    // A length prefix of 10 MiB of digits.
    let digits = format!("{}\n", "9".repeat(10 * MIB));
    assert_eq!(
        timed("a 10 MiB length prefix", || payload::unpack(&digits)),
        Err(FramingError::BadLength { offset: 0 })
    );
}
