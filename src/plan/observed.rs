//! What runs: per cluster, each node's containers and files, the etcd members, the snapshot
//! policy in effect and the restores already done. Agents report it; `as_if_running` derives
//! the state a desired cluster converges to (how `drover plan` treats the base revision), and
//! `simulate` applies a plan's steps to a state, which tests use to prove convergence.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::container::{desired_nodes, peer_url};
use super::{ClusterPlan, Step};
use crate::model::{Cluster, Retention, Role, Schedule, SnapshotPolicy};
use crate::nodeplan::{ContainerSpec, NodeSpec, ETCD_COMPONENT};

/// Everything observed, by cluster name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observed {
    pub clusters: BTreeMap<String, ObservedCluster>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedCluster {
    pub nodes: BTreeMap<String, ObservedNode>,
    /// etcd members by node name.
    pub etcd_members: BTreeMap<String, Member>,
    pub snapshot_policy: Option<PolicyState>,
    pub restores_done: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub peer_url: String,
    pub healthy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedNode {
    /// The address and roles the node was last planned with.
    pub address: String,
    pub roles: BTreeSet<Role>,
    /// Managed containers by component name (`etcd` for the member).
    pub containers: BTreeMap<String, ObservedContainer>,
    /// Managed files by path, with the digest of their content and mode.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub spec: ContainerSpec,
    pub running: bool,
}

/// A snapshot policy as a value that can be compared and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyState {
    /// `cron 0 */6 * * *` or `every 6h`.
    pub schedule: String,
    pub store: String,
    pub retention: RetentionState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionState {
    pub last: u32,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
}

impl PolicyState {
    pub fn of(policy: &SnapshotPolicy) -> PolicyState {
        let schedule = match &policy.schedule {
            Schedule::Cron { expression, .. } => format!("cron {expression}"),
            Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
        };
        let Retention {
            last,
            hourly,
            daily,
            weekly,
        } = policy.retention;
        PolicyState {
            schedule,
            store: policy.store.to_string(),
            retention: RetentionState {
                last: last.get(),
                hourly: hourly.map(|n| n.get()),
                daily: daily.map(|n| n.get()),
                weekly: weekly.map(|n| n.get()),
            },
        }
    }
}

impl std::fmt::Display for PolicyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.retention;
        write!(
            f,
            "{} to store {}, keep last {}",
            self.schedule, self.store, r.last
        )?;
        for (tier, n) in [
            ("hourly", r.hourly),
            ("daily", r.daily),
            ("weekly", r.weekly),
        ] {
            if let Some(n) = n {
                write!(f, ", {tier} {n}")?;
            }
        }
        Ok(())
    }
}

/// The state `cluster` converges to once every plan for it has run.
pub fn as_if_running(cluster: &Cluster) -> ObservedCluster {
    let specs = desired_nodes(cluster);
    let nodes = cluster
        .nodes
        .iter()
        .map(|node| {
            let spec = &specs[node.name.as_str()];
            let observed = ObservedNode {
                address: node.address.to_string(),
                roles: node.roles.clone(),
                containers: spec
                    .containers
                    .iter()
                    .map(|(name, spec)| {
                        let c = ObservedContainer {
                            spec: spec.clone(),
                            running: true,
                        };
                        (name.clone(), c)
                    })
                    .collect(),
                files: spec
                    .files
                    .iter()
                    .map(|(path, f)| (path.clone(), f.digest.clone()))
                    .collect(),
            };
            (node.name.to_string(), observed)
        })
        .collect();
    ObservedCluster {
        nodes,
        etcd_members: cluster
            .nodes_with(Role::Etcd)
            .map(|n| {
                let member = Member {
                    peer_url: peer_url(cluster, n),
                    healthy: true,
                };
                (n.name.to_string(), member)
            })
            .collect(),
        snapshot_policy: cluster.etcd.snapshots.as_ref().map(PolicyState::of),
        restores_done: cluster
            .etcd
            .restore
            .iter()
            .map(|r| r.request_id.to_string())
            .collect(),
    }
}

/// The state after every step of `plan` ran successfully against `observed`, for `desired`.
pub fn simulate(
    desired: &Cluster,
    observed: &ObservedCluster,
    plan: &ClusterPlan,
) -> ObservedCluster {
    let specs = desired_nodes(desired);
    let mut state = observed.clone();
    for step in plan.steps() {
        apply(&mut state, step, desired, &specs);
    }
    // The daemon records every node it planned, with the address and roles it planned it with.
    for node in &desired.nodes {
        let n = state.nodes.entry(node.name.to_string()).or_default();
        n.address = node.address.to_string();
        n.roles = node.roles.clone();
    }
    state
}

/// The effect of one step that succeeded on `state`.
fn apply(
    state: &mut ObservedCluster,
    step: &Step,
    desired: &Cluster,
    specs: &BTreeMap<String, NodeSpec>,
) {
    match step {
        Step::RestoreSnapshot { request_id, .. } => {
            state.restores_done.insert(request_id.clone());
        }
        Step::AddEtcdMember { node, peer_url } => {
            let member = Member {
                peer_url: peer_url.clone(),
                healthy: false,
            };
            state.etcd_members.insert(node.clone(), member);
        }
        Step::StartEtcdMember { node, .. } => {
            run_container(state, specs, node, ETCD_COMPONENT);
            let peer_url = peer_url(desired, &desired.nodes[node_index(desired, node)]);
            let member = Member {
                peer_url,
                healthy: true,
            };
            state.etcd_members.insert(node.clone(), member);
        }
        Step::UpdateEtcdMember { node, peer_url } => {
            if let Some(m) = state.etcd_members.get_mut(node.as_str()) {
                m.peer_url = peer_url.clone();
            }
        }
        Step::RemoveEtcdMember { node } => {
            state.etcd_members.remove(node.as_str());
        }
        Step::CreateContainer {
            node, component, ..
        }
        | Step::RecreateContainer {
            node, component, ..
        }
        | Step::StartContainer {
            node, component, ..
        } => run_container(state, specs, node, component),
        Step::RemoveContainer {
            node, component, ..
        } => {
            if let Some(n) = state.nodes.get_mut(node.as_str()) {
                n.containers.remove(component.as_str());
            }
        }
        Step::WriteFile {
            node, path, digest, ..
        } => {
            let n = state.nodes.entry(node.to_string()).or_default();
            n.files.insert(path.clone(), digest.clone());
        }
        Step::RemoveFile { node, path } => {
            if let Some(n) = state.nodes.get_mut(node.as_str()) {
                n.files.remove(path.as_str());
            }
        }
        Step::DecommissionNode { node } => {
            state.nodes.remove(node.as_str());
        }
        Step::UpdateSnapshotPolicy { to, .. } => {
            state.snapshot_policy = to.clone();
        }
        Step::AwaitHealthy { .. } => {}
    }
}

/// A node's component container now runs with its desired spec.
fn run_container(
    state: &mut ObservedCluster,
    specs: &BTreeMap<String, NodeSpec>,
    node: &str,
    component: &str,
) {
    let spec = specs[node].containers[component].clone();
    let n = state.nodes.entry(node.to_string()).or_default();
    let c = ObservedContainer {
        spec,
        running: true,
    };
    n.containers.insert(component.to_string(), c);
}

/// The index of the node named `name` in the cluster's nodes.
fn node_index(cluster: &Cluster, name: &str) -> usize {
    cluster
        .nodes
        .iter()
        .position(|n| n.name.as_str() == name)
        .expect("plans start members of their own cluster")
}
