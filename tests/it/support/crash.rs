//! What a daemon's crash must never leave behind, checked once the test cluster (`Layout`)
//! converged again: a duplicate or unstarted etcd member, a container nothing plans, a
//! generation handed out twice for different plans or going back. `serve_crash.rs` restarts
//! the one daemon; `sharing_failover.rs` has another daemon take the cluster over.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drover::protocol::AppliedMark;
use drover::store::DurableState;

use super::daemon::{etcd_client_with, AgentProcess, Layout};
use super::fleet::containers_of;

/// A random delay in `[0, max)`, from the OS's randomness: where in a change the kill lands.
pub fn random_delay(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    let fraction = u64::from_le_bytes(bytes) as f64 / u64::MAX as f64;
    max.mul_f64(fraction)
}

/// The generation each node of `cluster` was handed, from the daemons' durable state (a state
/// directory or the shared etcd).
pub async fn generations(state: &DurableState, cluster: &str) -> BTreeMap<String, AppliedMark> {
    let (state, name) = (state.clone(), format!("generations-{cluster}.json"));
    let loaded = tokio::task::spawn_blocking(move || state.load(&name))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("reading {cluster}'s generations: {e}"));
    let all: BTreeMap<String, AppliedMark> = loaded.unwrap_or_default();
    assert!(!all.is_empty(), "no generations saved for {cluster}");
    all
}

/// Exactly the declared etcd nodes are members, each started (named) once, at its own peer
/// address: a member added twice shows as a second one, unnamed until it starts.
pub async fn check_members(layout: &Layout, agents: &BTreeMap<String, AgentProcess>) {
    let members = etcd_members(layout, &agents["n1"]).await.unwrap();
    let mut want: Vec<(String, Vec<String>)> = layout
        .nodes
        .iter()
        .filter(|(_, _, roles)| roles.contains("etcd"))
        .map(|(n, ip, _)| (n.clone(), vec![format!("https://{ip}:2380")]))
        .collect();
    want.sort();
    assert_eq!(members, want, "etcd members (name, peer URLs)");
}

/// The etcd members of `layout`'s cluster (name, peer URLs), sorted, asked through its members'
/// client URLs with `agent`'s certificate. A member added but not started has no name yet.
pub async fn etcd_members(
    layout: &Layout,
    agent: &AgentProcess,
) -> Result<Vec<(String, Vec<String>)>, etcd_client::Error> {
    let mut client = etcd_client_with(layout, agent, true).await?;
    let list = client.member_list().await?;
    let mut members: Vec<(String, Vec<String>)> = list
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.peer_urls().to_vec()))
        .collect();
    members.sort();
    Ok(members)
}

/// Exactly the planned containers exist: each node's components and its etcd member.
pub fn check_containers(layout: &Layout) {
    let running = containers_of(&layout.cluster).len();
    let want: usize = layout
        .nodes
        .iter()
        .map(|(_, _, roles)| {
            usize::from(roles.contains("etcd"))
                + usize::from(roles.contains("controlplane") || roles.contains("worker"))
        })
        .sum();
    assert_eq!(running, want, "containers of {}", layout.cluster);
}

/// A node's generation never goes back, and a changed plan never reuses one.
pub fn check_generations(
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
