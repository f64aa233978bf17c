//! Helpers for tests against real components, one file per component.
//!
//! A test asks for a component with [`require!`]. If the component cannot be
//! had (no Docker engine, `scripts/test` not run, ...) the test prints a loud
//! `SKIPPED: <test>: <why>` line and returns early, so `cargo test` works on a
//! bare machine. With `CI=true` it panics instead: in CI a missing component is
//! a failure, never a silent pass.

// Each test module uses a different subset of these helpers; an unused one is
// not a mistake in the suite.
#![allow(dead_code)]

pub mod browser;
pub mod cli;
pub mod crash;
pub mod daemon;
pub mod docker;
pub mod etcd;
pub mod fleet;
pub mod forge;
pub mod garage;
pub mod git;
pub mod git_remote;
pub mod logs;
pub mod net;
pub mod process;
pub mod props;
pub mod proxy;
pub mod registry;
pub mod wait;

use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A temporary directory that only its owner may use, as drover's state and data
/// directories must be (`tempfile::tempdir` follows the umask, which usually lets others read).
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("a temporary directory")
}

/// Why a component a test needs is not there.
#[derive(Debug)]
pub struct Unavailable {
    pub component: &'static str,
    pub why: String,
}

impl Unavailable {
    pub fn new(component: &'static str, why: impl fmt::Display) -> Self {
        Self {
            component,
            why: why.to_string(),
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} unavailable: {}", self.component, self.why)
    }
}

/// True when running in CI (`CI=true`, set by `.ci/run`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The skip policy: fail in CI, skip loudly elsewhere. Used by [`require!`].
///
/// Test runners hide a passing test's output, so the `SKIPPED:` line is also
/// appended to the file named by `DROVER_TEST_SKIP_LOG` when set;
/// `scripts/test` prints that file after the run.
pub fn skip_or_fail(test: &str, unavailable: &Unavailable) {
    if in_ci() {
        panic!(
            "{test}: {unavailable} (CI=true: a missing component is a failure; \
             run `bash scripts/test` to start the components)"
        );
    }
    let line = format!("SKIPPED: {test}: {unavailable} (run `bash scripts/test` to start it)");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("DROVER_TEST_SKIP_LOG") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(e) = appended {
            eprintln!("warning: cannot append to {}: {e}", path.to_string_lossy());
        }
    }
}

/// `require!(expr)` evaluates a `Result<T, Unavailable>`: on `Ok` it yields
/// the value, on `Err` it applies [`skip_or_fail`] and returns from the test.
macro_rules! require {
    ($component:expr) => {
        match $component {
            Ok(value) => value,
            Err(unavailable) => {
                $crate::support::skip_or_fail(&$crate::support::test_name!(), &unavailable);
                return;
            }
        }
    };
}
pub(crate) use require;

/// The name of the enclosing test function, module path included but crate
/// name left out (`smoke::etcd_put_then_get`), for messages and unique names.
macro_rules! test_name {
    () => {{
        fn here() {}
        $crate::support::test_name_from_type_name(::std::any::type_name_of_val(&here))
    }};
}
pub(crate) use test_name;

/// Turns `it::smoke::name::{{closure}}::here` into `smoke::name`.
pub fn test_name_from_type_name(type_name: &str) -> String {
    let parts: Vec<&str> = type_name
        .split("::")
        .filter(|part| *part != "{{closure}}")
        .collect();
    let without_here = &parts[..parts.len().saturating_sub(1)];
    without_here
        .iter()
        .skip(1) // the test binary's crate name
        .copied()
        .collect::<Vec<_>>()
        .join("::")
}

/// A token unique across processes, runs and calls: pid, a per-process
/// counter and the wall clock in nanoseconds.
pub fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{n}-{nanos:x}", std::process::id())
}

/// `text` reduced to `[a-z0-9-]`, for container names and object keys.
pub fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}
