//! Property tests' settings: `PROPTEST_CASES` overrides each suite's default number of cases.

use proptest::prelude::ProptestConfig;

/// `default` cases, or `PROPTEST_CASES`. Shrunk failures are written under
/// `tests/proptest-regressions/`; commit them as regressions.
pub fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}
