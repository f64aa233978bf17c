//! Running the drover binary from tests, without the test environment's `DROVER_*` variables
//! (flags fall back to them, and a developer's shell may set some).

use std::path::Path;
use std::process::Output;

use tokio::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_drover");

/// A `drover` command with no `DROVER_*` variable inherited.
pub fn command() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DROVER_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `drover ARGS` to its end.
pub async fn drover(args: &[&str]) -> Output {
    command()
        .args(args)
        .output()
        .await
        .expect("the drover binary runs")
}

/// Runs `drover ARGS` in `dir` to its end.
pub async fn drover_in(dir: &Path, args: &[&str]) -> Output {
    command()
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .expect("the drover binary runs")
}

/// Standard output and standard error, as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
