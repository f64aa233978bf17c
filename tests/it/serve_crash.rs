//! Crash safety: `kill -9` of the daemon at a random point of a rollout or an etcd membership
//! change, then a restart. Each trial commits a change (a component's new text, a new etcd
//! member, or that member's removal), kills the daemon after a random delay, starts it again
//! and waits until the cluster is Ready at the new revision. Then it checks what a crash must
//! never leave: a duplicate or unstarted etcd member, a container nothing plans, a generation
//! handed out twice for different plans.
//!
//! `DROVER_CRASH_TRIALS` sets the number of trials (CI runs a few; `scripts/crash-trials` runs
//! 50 and prints how many converged).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drover::api::{ClusterStatus, ConditionType};
use drover::protocol::AppliedMark;

use crate::support::daemon::{etcd_client, AgentProcess, Layout, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::{containers_of, ClusterCleanup};
use crate::support::git::TestRepo;
use crate::support::require;

const CONVERGE: Duration = Duration::from_secs(180);

fn trials() -> usize {
    std::env::var("DROVER_CRASH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3)
}

/// A random delay in `[0, max)`, from the OS's randomness.
fn random_delay(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    let fraction = u64::from_le_bytes(bytes) as f64 / u64::MAX as f64;
    max.mul_f64(fraction)
}

fn ready_at(revision: &str) -> impl Fn(&ClusterStatus) -> Result<(), String> + '_ {
    move |s| {
        let ready = s
            .conditions
            .iter()
            .any(|c| c.kind == ConditionType::Ready && c.status);
        if ready && s.applied_revision.as_deref() == Some(revision) {
            Ok(())
        } else {
            let holding: Vec<String> = s
                .conditions
                .iter()
                .filter(|c| c.status)
                .map(|c| format!("{:?} {}: {}", c.kind, c.reason, c.message))
                .collect();
            Err(format!(
                "applied {:?}; {}",
                s.applied_revision,
                holding.join("; ")
            ))
        }
    }
}

/// The generation each node was handed, from the daemon's state (one document per cluster).
fn generations(daemon: &TestDaemon) -> BTreeMap<String, AppliedMark> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(daemon.state_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("generations-") && name.ends_with(".json") {
            let cluster: BTreeMap<String, AppliedMark> =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            all.extend(cluster);
        }
    }
    assert!(!all.is_empty(), "no generations saved");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_of_rollouts_and_membership_changes() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let mut layout = Layout::new("crash");
    let _cleanup = ClusterCleanup(layout.cluster.clone());
    let repo = TestRepo::init();
    let first = repo.commit_files(&[(&layout.path(), &layout.yaml("v0", BUSYBOX_IMAGE))], "v0");
    let mut daemon = TestDaemon::start(&repo.url()).await;
    let token = daemon.token_file(&layout.cluster).await;
    let mut agents: BTreeMap<String, AgentProcess> = layout
        .nodes
        .iter()
        .map(|(n, _, _)| (n.clone(), AgentProcess::start(&daemon, n, &token)))
        .collect();
    let cluster = layout.cluster.clone();
    daemon
        .await_status(
            "the first rollout",
            &cluster,
            CONVERGE,
            ready_at(&first.to_string()),
        )
        .await;

    let total = trials();
    let mut converged = 0;
    let mut extra: Option<String> = None;
    for trial in 0..total {
        // The change: a rollout, a member added, that member removed, in turn.
        let what = match (trial % 3, &extra) {
            (1, None) => {
                let name = format!("e{trial}");
                layout.add(&name, "[etcd]");
                extra = Some(name.clone());
                format!("add etcd member {name}")
            }
            (2, Some(name)) => {
                let name = name.clone();
                layout.remove(&name);
                extra = None;
                format!("remove etcd member {name}")
            }
            _ => format!("roll out text t{trial}"),
        };
        let before = generations(&daemon);
        let commit = repo.commit_files(
            &[(
                &layout.path(),
                &layout.yaml(&format!("t{trial}"), BUSYBOX_IMAGE),
            )],
            &what,
        );
        daemon.hook().await;
        if let Some(name) = &extra {
            if !agents.contains_key(name) {
                // As an operator does: the node joins once the daemon reads the commit that
                // declares it (a join for an undeclared node is refused for good).
                let revision = commit.to_string();
                daemon
                    .await_status("the commit to be read", &cluster, CONVERGE, |s| {
                        match s.desired_revision.as_deref() == Some(revision.as_str()) {
                            true => Ok(()),
                            false => Err(format!("desired {:?}", s.desired_revision)),
                        }
                    })
                    .await;
                agents.insert(name.clone(), AgentProcess::start(&daemon, name, &token));
            }
        }
        let delay = random_delay(Duration::from_secs(4));
        tokio::time::sleep(delay).await;
        daemon.kill();
        daemon.spawn().await;
        let outcome = crate::support::wait::poll_until(CONVERGE, || async {
            let s = daemon.status(&cluster).await?;
            ready_at(&commit.to_string())(&s)
        })
        .await;
        match outcome {
            Ok(()) => converged += 1,
            Err(e) => {
                let agent_logs: Vec<String> = agents
                    .values()
                    .map(|a| {
                        format!(
                            "--- agent {}:\n{}",
                            a.node,
                            crate::support::daemon::tail(&a.log(), 15)
                        )
                    })
                    .collect();
                panic!(
                    "trial {trial} ({what}, killed after {delay:?}) did not converge: {:?}\n{}\n{}",
                    e.last_error,
                    crate::support::daemon::tail(&daemon.log(), 60),
                    agent_logs.join("\n")
                )
            }
        }
        check_members(&layout, &agents).await;
        check_containers(&layout);
        check_generations(&before, &generations(&daemon));
        eprintln!("trial {trial}: {what}, killed after {delay:.1?}: converged");
    }
    eprintln!("crash trials: {converged}/{total} converged");
    assert_eq!(converged, total);
}

/// Exactly the declared etcd nodes are members, each started (named) once.
async fn check_members(layout: &Layout, agents: &BTreeMap<String, AgentProcess>) {
    let mut client = etcd_client(layout, &agents["n1"]).await;
    let list = client.member_list().await.unwrap();
    let mut names: Vec<String> = list
        .members()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = layout
        .nodes
        .iter()
        .filter(|(_, _, roles)| roles.contains("etcd"))
        .map(|(n, _, _)| n.clone())
        .collect();
    want.sort();
    assert_eq!(names, want, "members after the crash");
}

/// Exactly the planned containers run: each node's components and its etcd member.
fn check_containers(layout: &Layout) {
    let running = containers_of(&layout.cluster).len();
    let want: usize = layout
        .nodes
        .iter()
        .map(|(_, _, roles)| {
            usize::from(roles.contains("etcd"))
                + usize::from(roles.contains("controlplane") || roles.contains("worker"))
        })
        .sum();
    assert_eq!(running, want, "containers after the crash");
}

/// A node's generation never goes back, and a changed plan never reuses one.
fn check_generations(
    before: &BTreeMap<String, AppliedMark>,
    after: &BTreeMap<String, AppliedMark>,
) {
    let nodes: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for node in nodes {
        let (Some(b), Some(a)) = (before.get(node), after.get(node)) else {
            continue;
        };
        assert!(a.generation >= b.generation, "{node}: {b:?} -> {a:?}");
        if a.checksum != b.checksum {
            assert!(a.generation > b.generation, "{node} reused {b:?} for {a:?}");
        }
    }
}
