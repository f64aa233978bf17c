//! An owner killed in the middle of an etcd membership change, with three daemons sharing the
//! state (a real 3-member etcd) and the test cluster's agents as processes: a surviving daemon
//! takes the cluster once the dead one's lease expired and finishes the change, and what it
//! leaves is what a crash must never leave (`support::crash`): no member added twice or never
//! started, no container nothing plans, no generation reused for another plan or gone back.

use std::collections::BTreeMap;
use std::time::Duration;

use drover::api::SharingView;

use crate::sharing::{await_sharing, key_file, shared_state, state_config, TAKEOVER};
use crate::support::crash::{
    check_containers, check_generations, check_members, etcd_members, generations, random_delay,
};
use crate::support::daemon::{AgentProcess, Layout, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::ClusterCleanup;
use crate::support::git::TestRepo;
use crate::support::{etcd, require};

/// A membership change of the four-node test cluster, taken over or not.
const CONVERGE: Duration = Duration::from_secs(150);
/// How long after the new node's agent starts the kill may land. On loopback the member is
/// added (listed, unnamed) within about 0.1 s and started (named) about 0.4 s later: most
/// kills land between the two, where a second addition would happen.
const KILL_ADD_WITHIN: Duration = Duration::from_millis(600);
/// How long after the webhook the kill may land: the member is removed within about 0.1 s,
/// its container just after.
const KILL_REMOVE_WITHIN: Duration = Duration::from_millis(300);

/// Trials, adding then removing a member in turn: `DROVER_FAILOVER_TRIALS`, 2 by default.
fn trials() -> usize {
    std::env::var("DROVER_FAILOVER_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_killed_mid_membership_change_leaves_no_member_added_twice() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let members = require!(etcd::start_cluster(&engine, "sharing-members", 3).await);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();

    let mut layout = Layout::new("sfail");
    let _cleanup = ClusterCleanup(layout.cluster.clone());
    let cluster = layout.cluster.clone();
    let repo = TestRepo::init();
    let first = repo.commit_files(&[(&layout.path(), &layout.yaml("v0", BUSYBOX_IMAGE))], "v0");
    let work = crate::support::private_tempdir();
    let key = key_file(work.path());
    let ids: Vec<String> = ["daemon-a", "daemon-b", "daemon-c"]
        .map(String::from)
        .to_vec();
    let url = repo.url();
    let configs: Vec<String> = ids
        .iter()
        .map(|id| state_config(&endpoints, &key, id))
        .collect();
    let (a, b, c) = tokio::join!(
        TestDaemon::start_with_config(&url, None, &configs[0]),
        TestDaemon::start_with_config(&url, None, &configs[1]),
        TestDaemon::start_with_config(&url, None, &configs[2]),
    );
    let mut daemons = [a, b, c];
    let state = shared_state(&endpoints, &key).await;
    let servers: Vec<String> = daemons.iter().map(TestDaemon::agents_url).collect();
    let servers = servers.join(",");
    let token = daemons[0].token_file(&cluster).await;
    let mut agents: BTreeMap<String, AgentProcess> = layout
        .nodes
        .iter()
        .map(|(n, _, _)| {
            let agent = AgentProcess::start_with(&daemons[0], &servers, n, &token);
            (n.clone(), agent)
        })
        .collect();
    let mut applied = first;
    // The member the last trial added, which the next one removes.
    let mut extra: Option<String> = None;
    for trial in 0..trials() {
        // The owner, as the daemons say (GET /v1/daemons), with all three live and settled,
        // and the cluster Ready on it (after the first rollout, or taken back by a restarted
        // daemon).
        let owner = settled_owner(&daemons[0], &ids, &cluster).await;
        daemons[owner]
            .await_status(
                "the cluster Ready on its settled owner",
                &cluster,
                CONVERGE,
                crate::serve::ready_at(applied.to_string()),
            )
            .await;
        let before = generations(&state, &cluster).await;
        let (what, within) = match extra.take() {
            None => {
                let name = format!("e{trial}");
                layout.add(&name, "[etcd]");
                extra = Some(name.clone());
                (format!("add etcd member {name}"), KILL_ADD_WITHIN)
            }
            Some(name) => {
                layout.remove(&name);
                (format!("remove etcd member {name}"), KILL_REMOVE_WITHIN)
            }
        };
        let yaml = layout.yaml(&format!("t{trial}"), BUSYBOX_IMAGE);
        let commit = repo.commit_files(&[(&layout.path(), &yaml)], &what);
        daemons[owner].hook().await;
        if let Some(name) = extra.as_ref().filter(|n| !agents.contains_key(*n)) {
            // As an operator does: the node joins once the daemons read the commit that
            // declares it.
            let revision = commit.to_string();
            daemons[owner]
                .await_status("the commit to be read", &cluster, CONVERGE, |s| {
                    match s.desired_revision.as_deref() == Some(revision.as_str()) {
                        true => Ok(()),
                        false => Err(format!("desired {:?}", s.desired_revision)),
                    }
                })
                .await;
            let agent = AgentProcess::start_with(&daemons[0], &servers, name, &token);
            agents.insert(name.clone(), agent);
        }
        // A random point of the change: the join, the member's addition or removal, its
        // container's start or removal, or just after.
        let delay = random_delay(within);
        tokio::time::sleep(delay).await;
        daemons[owner].kill();
        // What the kill left, for the record: the members, the new one named once started.
        let mut core = layout.clone();
        core.nodes
            .retain(|(n, _, _)| n.starts_with('n') || n.starts_with('w'));
        let at_kill = match etcd_members(&core, &agents["n1"]).await {
            Ok(members) => format!("{:?}", members.iter().map(|(n, _)| n).collect::<Vec<_>>()),
            Err(e) => format!("not listed: {e}"),
        };

        // A survivor takes the cluster once the lease expired and finishes the change.
        let survivor = (owner + 1) % ids.len();
        let view = await_sharing(&daemons[survivor], "a survivor owning the cluster", |v| {
            v.daemons.len() == 2 && v.owners.get(&cluster).is_some_and(|o| *o != ids[owner])
        })
        .await;
        let taker = index_of(&ids, &view, &cluster);
        let done = crate::support::wait::poll_until(TAKEOVER + CONVERGE, || async {
            let status = daemons[taker].status(&cluster).await?;
            crate::serve::ready_at(commit.to_string())(&status)
        })
        .await;
        if let Err(e) = done {
            let agent_logs: Vec<String> = agents
                .values()
                .map(|a| {
                    let log = crate::support::daemon::tail(&a.log(), 15);
                    format!("--- agent {}:\n{log}", a.node)
                })
                .collect();
            panic!(
                "trial {trial} ({what}, {} killed after {delay:.1?}): {} did not finish: {:?}\n{}\n{}",
                ids[owner],
                ids[taker],
                e.last_error,
                crate::support::daemon::tail(&daemons[taker].log(), 60),
                agent_logs.join("\n")
            );
        }
        applied = commit;
        check_members(&layout, &agents).await;
        check_containers(&layout);
        check_generations(&before, &generations(&state, &cluster).await);
        eprintln!(
            "trial {trial}: {what}, {} killed after {delay:.1?} (members just after: {at_kill}), {} finished",
            ids[owner], ids[taker]
        );

        // The killed daemon comes back, so the next trial has three daemons again.
        daemons[owner].spawn().await;
    }
    for agent in agents.values_mut() {
        agent.stop();
    }
}

/// The index of the daemon owning `cluster` once all three are live, the membership settled
/// and the cluster with the owner the assignment names (any move back drained).
async fn settled_owner(daemon: &TestDaemon, ids: &[String], cluster: &str) -> usize {
    let view = await_sharing(
        daemon,
        "three daemons and the cluster's owner settled",
        |v| {
            let assigned = drover::daemon::ownership::owner(cluster, ids);
            v.daemons.len() == ids.len()
                && !v.settling
                && v.owners.get(cluster).map(String::as_str) == assigned
        },
    )
    .await;
    index_of(ids, &view, cluster)
}

/// The index in `ids` of the daemon `view` names as `cluster`'s owner.
fn index_of(ids: &[String], view: &SharingView, cluster: &str) -> usize {
    let owner = &view.owners[cluster];
    ids.iter()
        .position(|id| id == owner)
        .unwrap_or_else(|| panic!("{cluster} owned by an unknown daemon {owner}"))
}
