//! Several daemons on one etcd: how the clusters spread, and how long a killed owner's clusters
//! go unreconciled. Prints figures; asserts nothing timed. Run with
//! `cargo bench --bench failover`.
//!
//! Everything is real and on loopback: a 3-member etcd for the state (Debian's `etcd`, as
//! processes), three `drover serve` processes sharing it (lease TTL 10 s, the default), and
//! `DROVER_BENCH_CLUSTERS` clusters (default 100) of four nodes in a watched directory. No
//! agent runs: a cluster's reconciler starts, runs its first pass and waits for its agents,
//! which is all an owner change needs to show.
//!
//! 1. **Balance**: once the three have settled, how many clusters each owns.
//! 2. **Failover**, `DROVER_BENCH_KILLS` times (default 20), each daemon in turn: SIGKILL it,
//!    then poll the two others' operator API (`GET /v1/clusters`, every 20 ms) until every
//!    cluster it owned has run its first pass on a survivor (its status carries the desired
//!    revision). Then start it again (same id) and wait until the three have settled and own
//!    their shares again before the next kill. Printed: the time until the first and until the
//!    last of its clusters was taken over, p50 and p99 over the kills.
//!
//! What bounds it: the killed daemon's lease (10 s from its last renewal, renewed every second)
//! must expire before its owner keys go, then a survivor claims at its next renewal (within a
//! second). `DROVER_BENCH_LOG=DIR` keeps the daemons' and etcd's logs.

mod support {
    pub mod daemons;
    pub mod operator;
    pub mod synthetic;
}

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover::api::{ClustersDocument, CLUSTERS_PATH};
use support::daemons::{
    await_etcd, await_health, await_settled, spawn, start_daemons, start_etcd, write_private,
    Daemon, Procs, TIMEOUT,
};
use support::operator;
use support::synthetic::{self, env, Versions};

const DAEMONS: usize = 3;

fn main() {
    let clusters = env("DROVER_BENCH_CLUSTERS", 100);
    let kills = env("DROVER_BENCH_KILLS", 20);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(run(clusters, kills));
}

async fn run(clusters: usize, kills: usize) {
    let work = tempfile::Builder::new()
        .prefix("drover-bench-failover")
        .tempdir()
        .expect("a work directory");
    let block = (std::process::id() % 200) as u8 + 20;
    let etcd_ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(127, 93, block, i)).collect();
    let mut procs = Procs {
        etcd: start_etcd(work.path(), &etcd_ips, &[]),
        daemons: Vec::new(),
    };
    let endpoints: Vec<String> = etcd_ips
        .iter()
        .map(|ip| format!("http://{ip}:2379"))
        .collect();
    await_etcd(&endpoints).await;

    let source = work.path().join("source");
    std::fs::create_dir_all(source.join("clusters")).unwrap();
    for c in 0..clusters {
        let yaml = synthetic::cluster_yaml(
            c,
            4,
            Versions {
                app: 1,
                apiserver: 1,
            },
        );
        std::fs::write(source.join(format!("clusters/c{c}.yaml")), yaml).unwrap();
    }
    let key = work.path().join("state.key");
    write_private(&key, &"7e".repeat(32));
    let daemons = start_daemons(
        &mut procs,
        work.path(),
        (94, block),
        DAEMONS,
        (&source, &endpoints, &key),
    )
    .await;
    let ids: Vec<String> = daemons.iter().map(|d| d.id.clone()).collect();
    let names: Vec<String> = (0..clusters).map(|c| format!("c{c}")).collect();
    println!(
        "failover benchmark: {DAEMONS} drover serve on a 3-member etcd, {clusters} clusters, {kills} kills"
    );
    let settled = await_settled(&daemons, &ids, &names, &BTreeSet::new()).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in settled.owners.values() {
        *counts.entry(owner.as_str()).or_default() += 1;
    }
    println!("\n| daemon | clusters owned |\n|---|---:|");
    for (id, n) in &counts {
        println!("| {id} | {n} |");
    }
    let most = counts.values().max().copied().unwrap_or(0);
    let least = counts.values().min().copied().unwrap_or(0);
    println!(
        "balance: most {most}, least {least} (fair share {:.1})",
        clusters as f64 / DAEMONS as f64
    );

    let mut first = Vec::new();
    let mut last = Vec::new();
    for k in 0..kills {
        let victim = k % DAEMONS;
        let owned: BTreeSet<String> = settled
            .owners
            .iter()
            .filter(|(_, o)| **o == ids[victim])
            .map(|(c, _)| c.clone())
            .collect();
        let killed = Instant::now();
        if let Some(mut child) = procs.daemons[victim].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (to_first, to_last) = await_takeover(&daemons, victim, &owned, killed).await;
        println!(
            "kill {:2}: {} owned {:3}; first taken over after {:6.2} s, all after {:6.2} s",
            k + 1,
            ids[victim],
            owned.len(),
            to_first.as_secs_f64(),
            to_last.as_secs_f64()
        );
        first.push(to_first);
        last.push(to_last);
        procs.daemons[victim] = Some(spawn(&daemons[victim]));
        await_health(&daemons[victim]).await;
        await_settled(&daemons, &ids, &names, &BTreeSet::new()).await;
    }
    if kills > 0 {
        println!("\n| owner killed → new owner's first pass | p50 | p99 | min | max |\n|---|---:|---:|---:|---:|");
        for (what, mut times) in [
            ("first of its clusters", first),
            ("all of its clusters", last),
        ] {
            times.sort();
            println!(
                "| {what} | {} | {} | {} | {} |",
                secs(percentile(&times, 50)),
                secs(percentile(&times, 99)),
                secs(times[0]),
                secs(times[times.len() - 1])
            );
        }
    }
    if let Some(dir) = std::env::var_os("DROVER_BENCH_LOG") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for d in &daemons {
            let _ = std::fs::copy(d.log(), dir.join(format!("{}.log", d.id)));
        }
    }
    drop(procs);
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[i.min(sorted.len() - 1)]
}

/// The time from `killed` until the first, and until the last, of `owned` ran a pass on a
/// daemon other than `victim`.
async fn await_takeover(
    daemons: &[Daemon],
    victim: usize,
    owned: &BTreeSet<String>,
    killed: Instant,
) -> (Duration, Duration) {
    let clients: Vec<operator::Client> = (0..daemons.len())
        .filter(|i| *i != victim)
        .map(|i| daemons[i].client())
        .collect();
    let mut taken: BTreeMap<String, Duration> = BTreeMap::new();
    while taken.len() < owned.len() {
        assert!(
            killed.elapsed() < TIMEOUT,
            "the clusters were not taken over"
        );
        for client in &clients {
            let Ok(doc) = client.get::<ClustersDocument>(CLUSTERS_PATH).await else {
                continue;
            };
            for status in doc.clusters {
                if owned.contains(&status.name) && status.desired_revision.is_some() {
                    taken.entry(status.name).or_insert_with(|| killed.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = taken.values().min().copied().unwrap_or_default();
    let last = taken.values().max().copied().unwrap_or_default();
    (first, last)
}
