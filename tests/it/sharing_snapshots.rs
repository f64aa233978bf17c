//! Scheduled snapshots with several daemons on one etcd: each scheduled run of a cluster is
//! taken once, by the cluster's owner, whatever the number of daemons, and also across an
//! ownership move (a daemon joining, the owner killed): the new owner keeps the schedule the
//! store shows, rather than run again what the old owner ran.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use drover::model::ClusterName;

use crate::sharing::{await_sharing, cluster_yaml, key_file, state_config};
use crate::support::daemon::{tail, AgentProcess, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::{unique_cluster, ClusterCleanup};
use crate::support::git::TestRepo;
use crate::support::net::unique_loopback;
use crate::support::{etcd, require};

/// Up to a minute until the next run, plus a takeover or a first rollout.
const NEXT_RUN: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_scheduled_snapshot_is_taken_once_by_the_owner_across_ownership_moves() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let members = require!(etcd::start_cluster(&engine, "sharing-snapshots", 3).await);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();

    // A cluster daemon-a owns when all three run, and daemon-b when only b and c do.
    let ids: Vec<String> = ["daemon-a", "daemon-b", "daemon-c"]
        .map(String::from)
        .to_vec();
    let cluster = loop {
        let name = unique_cluster("snapshare");
        let owner =
            |live: &[String]| drover::daemon::ownership::owner(&name, live).map(str::to_string);
        if owner(&ids) == Some(ids[0].clone()) && owner(&ids[1..]) == Some(ids[1].clone()) {
            break name;
        }
    };
    let _cleanup = ClusterCleanup(cluster.clone());
    let name = ClusterName::parse(&cluster).unwrap();
    // Every minute (cron's finest), into one store all the daemons use; nothing pruned.
    let ip = unique_loopback(&[2379, 2380, 9090]);
    let yaml = cluster_yaml(&cluster, "n1", ip, "v1").replace(
        &format!("etcd: {{image: {ETCD_IMAGE}}}"),
        &format!("etcd: {{image: {ETCD_IMAGE}, snapshots: {{schedule: '* * * * *', store: shared, retention: {{last: 50}}}}}}"),
    );
    let repo = TestRepo::init();
    let first = repo.commit_files(&[(&format!("clusters/{cluster}.yaml"), &yaml)], "v1");
    let work = crate::support::private_tempdir();
    let key = key_file(work.path());
    let store_dir = work.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let store = format!("shared: {{url: 'file://{}'}}", store_dir.display());
    let url = repo.url();
    let start = |id: &str| {
        let mut daemon = TestDaemon::unstarted(&url, Some("5m"));
        daemon.extra_config = state_config(&endpoints, &key, id);
        daemon.extra_stores = vec![store.clone()];
        async move {
            daemon.spawn().await;
            daemon
        }
    };

    // daemon-b and daemon-c first: daemon-b takes the cluster and sees its schedule.
    let (b, c) = tokio::join!(start(&ids[1]), start(&ids[2]));
    await_sharing(&b, "daemon-b owning the cluster", |v| {
        v.daemons.len() == 2 && !v.settling && v.owners.get(&cluster) == Some(&ids[1])
    })
    .await;
    let token = b.token_file(&cluster).await;
    let servers = format!("{},{}", b.agents_url(), c.agents_url());
    let mut agent = AgentProcess::start_with(&b, &servers, "n1", &token);

    // daemon-a joins: the cluster is drained to it, and it takes the runs.
    let mut a = start(&ids[0]).await;
    await_sharing(&a, "the cluster drained to daemon-a", |v| {
        v.daemons.len() == 3 && !v.settling && v.owners.get(&cluster) == Some(&ids[0])
    })
    .await;
    a.await_status(
        "the cluster Ready on daemon-a",
        &cluster,
        NEXT_RUN,
        crate::serve::ready_at(first.to_string()),
    )
    .await;
    let first_run = next_saved(&a, &cluster, &[], "daemon-a's first run").await;

    // daemon-a dies just after its run: daemon-b takes the cluster back within the same
    // minute, and must not run that minute again; it takes the next minute's run, once.
    let before: Vec<String> = saved_by(&b, &cluster);
    a.kill();
    await_sharing(&b, "daemon-b owning the cluster again", |v| {
        v.daemons.len() == 2 && v.owners.get(&cluster) == Some(&ids[1])
    })
    .await;
    let next_run = next_saved(&b, &cluster, &before, "daemon-b's first run after").await;
    b.await_status("daemon-b's next run planned", &cluster, NEXT_RUN, |s| {
        let Some(view) = &s.snapshots else {
            return Err("no snapshot schedule".into());
        };
        let planned = view.next_run.as_deref().map(|at| minute(&id_time(at)));
        match (&view.last_success, planned) {
            (Some(run), Some(next)) if run.id == next_run && !view.running => {
                if next > minute(&next_run) {
                    Ok(())
                } else {
                    Err(format!("next run {next}, in the minute of {next_run}"))
                }
            }
            _ => Err(format!("{view:?}")),
        }
    })
    .await;

    // Every snapshot in the store was logged saved by exactly one daemon, and a minute holds
    // one at most: daemon-a's run, then daemon-b's in the next minute; daemon-c took none.
    let stored = stored(&store_dir, &name).await;
    let savers: BTreeMap<&str, Vec<&str>> = stored
        .iter()
        .map(|id| {
            let by = [(&a, "daemon-a"), (&b, "daemon-b"), (&c, "daemon-c")]
                .into_iter()
                .filter(|(d, _)| saved_by(d, &cluster).contains(id))
                .map(|(_, n)| n)
                .collect();
            (id.as_str(), by)
        })
        .collect();
    let logs = || {
        format!(
            "daemon-a:\n{}\ndaemon-b:\n{}",
            tail(&a.log(), 30),
            tail(&b.log(), 30)
        )
    };
    for (id, by) in &savers {
        assert_eq!(by.len(), 1, "{id} saved by {by:?}\n{}", logs());
    }
    assert_eq!(savers[first_run.as_str()], ["daemon-a"]);
    assert_eq!(savers[next_run.as_str()], ["daemon-b"]);
    assert!(saved_by(&c, &cluster).is_empty(), "{}", c.log());
    let mut per_minute: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for id in &stored {
        per_minute.entry(minute(id)).or_default().push(id);
    }
    let doubled: Vec<_> = per_minute.values().filter(|ids| ids.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "runs taken twice: {doubled:?}\n{}",
        logs()
    );
    assert_eq!(
        minute(&next_run),
        minute_after(&first_run),
        "daemon-b's run {next_run} is not the minute after daemon-a's {first_run}"
    );
    eprintln!("snapshots, each by the one daemon that saved it: {savers:?}");
    agent.stop();
}

/// The first snapshot of `cluster` `daemon` logs saved that is not in `seen`.
async fn next_saved(daemon: &TestDaemon, cluster: &str, seen: &[String], what: &str) -> String {
    let saved = crate::support::wait::poll_until(NEXT_RUN, || async {
        saved_by(daemon, cluster)
            .into_iter()
            .find(|id| !seen.contains(id))
            .ok_or("none yet")
    })
    .await;
    saved.unwrap_or_else(|_| panic!("no snapshot: {what}\n{}", tail(&daemon.log(), 60)))
}

/// The ids of `cluster`'s snapshots `daemon` logged saved, oldest first.
fn saved_by(daemon: &TestDaemon, cluster: &str) -> Vec<String> {
    let cluster = format!("cluster={cluster}");
    without_colours(&daemon.log())
        .lines()
        .filter(|l| l.contains("snapshot saved") && l.contains(&cluster))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

/// `text` without ANSI colour sequences (`ESC [ ... m`), as the log's fields may carry.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The snapshot ids in the store, oldest first.
async fn stored(dir: &Path, cluster: &ClusterName) -> Vec<String> {
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap();
    let ids = drover::snapshot::list(&store, cluster).await.unwrap();
    ids.into_iter().map(|id| id.to_string()).collect()
}

/// The minute a snapshot started in, `YYYYMMDDTHHMM`, from its id (`<UTC time>-...`).
fn minute(id: &str) -> String {
    id[..13].to_string()
}

/// The minute after the one `id` started in.
fn minute_after(id: &str) -> String {
    let stamp = &id[..16];
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:00Z",
        &stamp[..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13]
    );
    let at = humantime::parse_rfc3339(&rfc3339).unwrap() + Duration::from_secs(60);
    minute(&id_time_of(at))
}

/// An RFC 3339 time in the ids' form (`20261125T060000Z`).
fn id_time(rfc3339: &str) -> String {
    id_time_of(humantime::parse_rfc3339(rfc3339).unwrap())
}

fn id_time_of(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect()
}
