//! Benchmark, run by `scripts/bench-apply`: converging a node of 10 busybox containers with
//! `Driver::apply` against the bash script a user would otherwise write with the docker CLI,
//! side by side in one run, on the shared engine:
//!
//! - (a) from nothing: `apply` against 10 `docker run -d`;
//! - (b) nothing changed: `apply`'s no-op pass against a script that lists containers once
//!   (`docker ps -a`) and runs only the missing ones (fast, but blind to changed specs), and
//!   against `docker rm -f` of all 10 then 10 `docker run -d` (what makes a plain script
//!   re-runnable and spec-faithful);
//! - (c) one container's env changed: `apply` against `docker rm -f` + `docker run -d` of that one
//!   container (a user who knows which one changed; a script that does not is the
//!   rm-all-and-run row of (b)).
//!
//! Containers run `sleep 3600` with host networking, three env vars, a label and a bind under a
//! temporary host root. Every container carries the label `drover-bench=<prefix>` and is removed
//! at the end, also on a panic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover::agent::docker::{Action, Driver, StepResult};
use drover::model::ImageRef;
use drover::nodeplan::{ContainerSpec, NetworkMode, NodeSpec, RestartPolicy};

use crate::support::docker::{require_image, BUSYBOX_IMAGE};
use crate::support::{docker, require, slug, unique_token};

const CONTAINERS: usize = 10;
/// The component whose env changes in (c).
const CHANGED: &str = "c03";
const BENCH_LABEL: &str = "drover-bench";

#[tokio::test]
#[ignore = "benchmark: run by scripts/bench-apply"]
async fn bench_apply_driver_against_docker_run() {
    let client = require!(docker::connect().await);
    require!(require_image(&client, BUSYBOX_IMAGE).await);
    let rounds: usize = env_or("DROVER_BENCH_ROUNDS", 5);
    let prefix = std::env::var("DROVER_BENCH_PREFIX")
        .unwrap_or_else(|_| format!("dbench-{}", slug(&unique_token())));
    let _cleanup = Cleanup(prefix.clone());
    let work = tempfile::tempdir().unwrap();
    let host_root = work.path().join("root");
    let driver = Driver::new(client, &prefix, "w1", host_root.clone());
    let plan = node_spec(&prefix, "info");
    let changed = node_spec(&prefix, "debug");
    let scripts = Scripts::write(work.path(), &prefix, &host_root, &plan, &changed);
    if std::env::var_os("DROVER_BENCH_SHOW_SCRIPT").is_some() {
        for line in std::fs::read_to_string(&scripts.run_all).unwrap().lines() {
            println!("apply script|{line}");
        }
    }

    let mut times: BTreeMap<(&str, &str), Vec<Duration>> = BTreeMap::new();
    for _ in 0..rounds {
        // drover, from nothing each round.
        remove_all(&prefix);
        let (t, results) = timed_apply(&driver, &plan).await;
        assert_all(&results, |_| Action::Created);
        record(&mut times, A, DRIVER, t);
        let (t, results) = timed_apply(&driver, &plan).await;
        assert_all(&results, |_| Action::Unchanged);
        record(&mut times, B, DRIVER, t);
        let (t, results) = timed_apply(&driver, &changed).await;
        assert_all(&results, |c| {
            if c == CHANGED {
                Action::Recreated
            } else {
                Action::Unchanged
            }
        });
        record(&mut times, C, DRIVER, t);

        // The docker CLI, from nothing each round.
        remove_all(&prefix);
        record(&mut times, A, RUN_ALL, run_script(&scripts.run_all));
        assert_eq!(running(&prefix), CONTAINERS, "after {RUN_ALL}");
        record(&mut times, B, CHECK_RUN, run_script(&scripts.check_run));
        record(&mut times, B, RM_RUN_ALL, run_script(&scripts.rm_run_all));
        assert_eq!(running(&prefix), CONTAINERS, "after {RM_RUN_ALL}");
        record(&mut times, C, RM_RUN_ONE, run_script(&scripts.rm_run_one));
        assert_eq!(running(&prefix), CONTAINERS, "after {RM_RUN_ONE}");
    }
    // drover's row first in each scenario.
    let mut rows: Vec<_> = times.iter().collect();
    rows.sort_by_key(|((scenario, tool), _)| (*scenario, *tool != DRIVER, *tool));
    for ((scenario, tool), samples) in rows {
        let (median, min) = median_min(samples);
        println!(
            "apply bench|{scenario}|{tool}|{:.3}|{:.3}|{}",
            median.as_secs_f64(),
            min.as_secs_f64(),
            samples.len()
        );
    }
}

const A: &str = "(a) from nothing";
const B: &str = "(b) nothing changed";
const C: &str = "(c) one env changed";
const DRIVER: &str = "drover Driver::apply";
const RUN_ALL: &str = "bash: 10x docker run -d";
const CHECK_RUN: &str = "bash: docker ps -a, run missing (none)";
const RM_RUN_ALL: &str = "bash: docker rm -f all, 10x docker run -d";
const RM_RUN_ONE: &str = "bash: docker rm -f + docker run -d of c03";

/// The node's plan: components `c00`..`c09`, `LEVEL` of `c03` set to `level`.
fn node_spec(prefix: &str, level: &str) -> NodeSpec {
    let containers = (0..CONTAINERS)
        .map(|i| {
            let component = format!("c{i:02}");
            let level = if component == CHANGED { level } else { "info" };
            let env = BTreeMap::from([
                ("COMPONENT".to_string(), component.clone()),
                ("LEVEL".to_string(), level.to_string()),
                ("REGION".to_string(), "loopback".to_string()),
            ]);
            let spec = ContainerSpec {
                image: ImageRef::parse(BUSYBOX_IMAGE).unwrap(),
                command: Some(vec!["sleep".to_string(), "3600".to_string()]),
                args: Vec::new(),
                env,
                binds: vec![format!("/var/lib/bench/{component}:/data")],
                network_mode: NetworkMode::Host,
                pid_mode: None,
                privileged: false,
                restart_policy: RestartPolicy::No,
                user: None,
                labels: BTreeMap::from([(BENCH_LABEL.to_string(), prefix.to_string())]),
                files: BTreeMap::new(),
            };
            (component, spec)
        })
        .collect();
    NodeSpec {
        containers,
        ..NodeSpec::default()
    }
}

/// The bash scripts, written from the same specs as the plan.
struct Scripts {
    run_all: std::path::PathBuf,
    check_run: std::path::PathBuf,
    rm_run_all: std::path::PathBuf,
    rm_run_one: std::path::PathBuf,
}

impl Scripts {
    fn write(
        dir: &Path,
        prefix: &str,
        host_root: &Path,
        plan: &NodeSpec,
        changed: &NodeSpec,
    ) -> Scripts {
        let name = |component: &str| format!("{prefix}-sh-{component}");
        let run = |component: &str, spec: &ContainerSpec| {
            let mut line = format!(
                "docker run -d --name {} --network host --restart no",
                name(component)
            );
            for (k, v) in &spec.labels {
                write!(line, " --label {k}={v}").unwrap();
            }
            for (k, v) in &spec.env {
                write!(line, " -e {k}={v}").unwrap();
            }
            for bind in &spec.binds {
                write!(line, " -v {}{bind}", host_root.display()).unwrap();
            }
            write!(line, " {}", spec.image).unwrap();
            for arg in spec.command.iter().flatten().chain(&spec.args) {
                write!(line, " {arg}").unwrap();
            }
            line.push_str(" >/dev/null\n");
            line
        };
        let header = "#!/usr/bin/env bash\nset -euo pipefail\n";
        let mut run_all = header.to_string();
        let mut check_run = format!("{header}existing=$(docker ps -a --format '{{{{.Names}}}}')\n");
        let mut rm_run_all = header.to_string();
        rm_run_all.push_str("docker rm -f");
        for component in plan.containers.keys() {
            write!(rm_run_all, " {}", name(component)).unwrap();
        }
        rm_run_all.push_str(" >/dev/null\n");
        for (component, spec) in &plan.containers {
            run_all.push_str(&run(component, spec));
            rm_run_all.push_str(&run(component, spec));
            write!(
                check_run,
                "grep -qx {} <<<\"$existing\" || {}",
                name(component),
                run(component, spec)
            )
            .unwrap();
        }
        let rm_run_one = format!(
            "{header}docker rm -f {} >/dev/null\n{}",
            name(CHANGED),
            run(CHANGED, &changed.containers[CHANGED])
        );
        let save = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path
        };
        Scripts {
            run_all: save("run-all.sh", &run_all),
            check_run: save("check-run.sh", &check_run),
            rm_run_all: save("rm-run-all.sh", &rm_run_all),
            rm_run_one: save("rm-run-one.sh", &rm_run_one),
        }
    }
}

async fn timed_apply(driver: &Driver, spec: &NodeSpec) -> (Duration, Vec<StepResult>) {
    let started = Instant::now();
    let results = driver
        .apply(spec, 1, &Default::default())
        .await
        .expect("observing containers");
    (started.elapsed(), results)
}

/// Every step succeeded, each component with the action `expected` gives it.
fn assert_all(results: &[StepResult], expected: impl Fn(&str) -> Action) {
    assert_eq!(results.len(), CONTAINERS, "{results:?}");
    for r in results {
        assert_eq!(r.error, None, "{r:?}");
        assert_eq!(r.action, expected(&r.subject), "{r:?}");
    }
}

fn run_script(path: &Path) -> Duration {
    let started = Instant::now();
    let out = Command::new("bash").arg(path).output().unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn record<'a>(
    times: &mut BTreeMap<(&'a str, &'a str), Vec<Duration>>,
    scenario: &'a str,
    tool: &'a str,
    elapsed: Duration,
) {
    times.entry((scenario, tool)).or_default().push(elapsed);
}

fn median_min(samples: &[Duration]) -> (Duration, Duration) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    (sorted[sorted.len() / 2], sorted[0])
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The ids of this run's containers (`-a`: running or not).
fn bench_containers(prefix: &str, all: bool) -> Vec<String> {
    let filter = format!("label={BENCH_LABEL}={prefix}");
    let mut args = vec!["ps", "-q", "--filter", &filter];
    if all {
        args.push("-a");
    }
    let out = Command::new("docker").args(&args).output().unwrap();
    assert!(out.status.success(), "docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn running(prefix: &str) -> usize {
    bench_containers(prefix, false).len()
}

fn remove_all(prefix: &str) {
    let ids = bench_containers(prefix, true);
    if !ids.is_empty() {
        let out = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker rm -f");
    }
}

/// Removes every container of the run, even when the benchmark panics.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={BENCH_LABEL}={}", self.0);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}
