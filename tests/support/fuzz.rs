//! What the proptest fuzz targets of every crate share (each includes this
//! file with `#[path]`): how many cases to run.

use proptest::prelude::ProptestConfig;

/// `FUZZ_CASES` cases (default 2,000), without failure files in the tree.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
