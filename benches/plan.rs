//! Planner benchmark on synthetic repositories: 1,000 clusters of 100 nodes (100,000 nodes).
//! Prints figures; asserts nothing. Run with `cargo bench --bench plan`
//! (`DROVER_BENCH_CLUSTERS` and `DROVER_BENCH_NODES` change the size).
//!
//! - load: parse and check every cluster file;
//! - full plan of new clusters (nothing runs yet);
//! - full plan against the running state (every cluster unchanged);
//! - re-plan after one cluster changed, with `Planner` reusing the other clusters' plans;
//! - peak resident memory of the process.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use drover::model::{load_sources, Repository, SourceFile};
use drover::plan::{as_if_running, plan, Desired, Observed, Planner};

#[path = "support/synthetic.rs"]
mod synthetic;

use synthetic::{cluster_yaml, env, memory_kib, repo, Versions};

const V1: Versions = Versions {
    app: 1,
    apiserver: 1,
};

fn peak_rss_mib() -> f64 {
    memory_kib().1 as f64 / 1024.0
}

fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    println!(
        "{label:<52} {:>8.1} ms  (peak RSS so far {:>6.1} MiB)",
        start.elapsed().as_secs_f64() * 1000.0,
        peak_rss_mib()
    );
    out
}

fn main() {
    let clusters = env("DROVER_BENCH_CLUSTERS", 1000);
    let nodes = env("DROVER_BENCH_NODES", 100);
    println!(
        "planner: {clusters} clusters x {nodes} nodes = {} nodes",
        clusters * nodes
    );
    let files = repo(clusters * nodes, nodes, |_| V1);
    let loaded: Repository = timed("load (parse and check every cluster file)", || {
        load_sources(files, Vec::new())
    });
    assert!(!loaded.has_errors(), "{}", loaded.render_diagnostics());
    let desired = Desired {
        clusters: loaded.clusters.iter().collect(),
        ..Desired::default()
    };
    let now = SystemTime::now();

    let fresh = timed("full plan, new clusters (nothing runs)", || {
        plan(&desired, &Observed::default(), now)
    });
    let steps: usize = fresh.clusters.iter().map(|c| c.steps().count()).sum();
    println!("{:<58} {steps:>10}", "  steps");
    drop(fresh);

    let running = timed("observed state as if every cluster ran", || Observed {
        clusters: loaded
            .clusters
            .iter()
            .map(|c| (c.name.to_string(), as_if_running(c)))
            .collect(),
    });
    let steady = timed("full plan against the running state (no change)", || {
        plan(&desired, &running, now)
    });
    assert!(!steady.has_changes());

    // The planner's cache: observed keys stand for "this cluster's reports did not change".
    let keys: BTreeMap<String, u64> = running.clusters.keys().map(|k| (k.clone(), 1)).collect();
    let mut planner = Planner::default();
    timed("Planner: first plan (fills the cache)", || {
        planner.plan(&desired, &running, &keys, now)
    });

    let changed = clusters / 2;
    let one = SourceFile {
        path: format!("clusters/c{changed}.yaml"),
        bytes: cluster_yaml(changed, nodes, Versions { app: 2, ..V1 }).into_bytes(),
    };
    let reloaded = load_sources(vec![one], Vec::new());
    let mut clusters_now: Vec<_> = loaded.clusters.iter().collect();
    clusters_now[changed] = &reloaded.clusters[0];
    let desired_now = Desired {
        clusters: clusters_now,
        ..Desired::default()
    };
    let replan = timed("Planner: re-plan after one cluster changed", || {
        planner.plan(&desired_now, &running, &keys, now)
    });
    let changed_steps: usize = replan.clusters.iter().map(|c| c.steps().count()).sum();
    println!(
        "{:<58} {changed_steps:>10}",
        "  steps (one cluster's rollout)"
    );
    assert_eq!(
        replan,
        plan(&desired_now, &running, now),
        "the cache changed the plan"
    );
    println!(
        "{:<58} {:>10.1} MiB",
        "peak resident memory",
        peak_rss_mib()
    );
}
