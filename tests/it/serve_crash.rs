//! Crash safety: `kill -9` of the daemon at a random point of a rollout or an etcd membership
//! change, then a restart. Each trial commits a change (a component's new text, a new etcd
//! member, or that member's removal), kills the daemon after a random delay, starts it again
//! and waits until the cluster is Ready at the new revision. Then it checks what a crash must
//! never leave (`support::crash`): a duplicate or unstarted etcd member, a container nothing
//! plans, a generation handed out twice for different plans.
//!
//! `DROVER_CRASH_TRIALS` sets the number of trials (CI runs a few; `scripts/crash-trials` runs
//! 50 and prints how many converged).

use std::collections::BTreeMap;
use std::time::Duration;

use drover::api::{ClusterStatus, ConditionType};
use drover::state::StateDir;
use drover::store::DurableState;

use crate::support::crash::{
    check_containers, check_generations, check_members, generations, random_delay,
};
use crate::support::daemon::{AgentProcess, Layout, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::ClusterCleanup;
use crate::support::git::TestRepo;
use crate::support::require;

const CONVERGE: Duration = Duration::from_secs(180);

fn trials() -> usize {
    std::env::var("DROVER_CRASH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3)
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
    let state: DurableState = StateDir::new(daemon.state_dir()).into();
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
        let before = generations(&state, &cluster).await;
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
        check_generations(&before, &generations(&state, &cluster).await);
        eprintln!("trial {trial}: {what}, killed after {delay:.1?}: converged");
    }
    eprintln!("crash trials: {converged}/{total} converged");
    assert_eq!(converged, total);
}
