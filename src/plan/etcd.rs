//! etcd membership and member containers, one change at a time, each behind a health gate. A
//! new cluster starts all its members together (they need each other to elect a leader). An
//! existing one first adds members (member add, start with `initial-cluster-state=existing`),
//! then recreates changed members while the membership is at its largest, then removes members
//! (member remove, then stop the container). From three healthy members up, no step leaves
//! fewer healthy members than a quorum; below that the plan says so in a warning.

use std::collections::{BTreeMap, VecDeque};

use super::container::peer_url;
use super::{quorum, Batch, Finding, Gate, InitialState, ObservedCluster, Step};
use crate::model::{Cluster, Node, Role};
use crate::nodeplan::{container_name, NodeSpec, ETCD_COMPONENT};

pub(super) fn phase(
    cluster: &Cluster,
    specs: &BTreeMap<String, NodeSpec>,
    observed: &ObservedCluster,
    warnings: &mut Vec<Finding>,
) -> Vec<Batch> {
    let desired: Vec<&Node> = cluster.nodes_with(Role::Etcd).collect();
    let entry = |n: &Node| format!("{}={}", n.name, peer_url(cluster, n));
    let container = |node: &str| container_name(cluster.name.as_str(), node, ETCD_COMPONENT);
    let mut batches = Vec::new();

    if observed.etcd_members.is_empty() {
        if desired.is_empty() {
            return batches;
        }
        let initial: Vec<String> = desired.iter().map(|n| entry(n)).collect();
        let mut steps: Vec<Step> = desired
            .iter()
            .map(|n| Step::StartEtcdMember {
                node: n.name.to_string(),
                container: container(n.name.as_str()),
                initial_cluster: initial.clone(),
                initial_state: InitialState::New,
            })
            .collect();
        let nodes: Vec<String> = desired.iter().map(|n| n.name.to_string()).collect();
        steps.push(gate(&nodes));
        batches.push(Batch { nodes, steps });
        return batches;
    }

    // Current members, in a stable order: desired ones in file order, then the others by name.
    let mut current: Vec<String> = desired
        .iter()
        .map(|n| n.name.to_string())
        .filter(|n| observed.etcd_members.contains_key(n))
        .collect();
    let kept = current.clone();
    let mut adds: VecDeque<&Node> = desired
        .iter()
        .copied()
        .filter(|n| !observed.etcd_members.contains_key(n.name.as_str()))
        .collect();
    let mut removes: VecDeque<String> = observed
        .etcd_members
        .keys()
        .filter(|m| !desired.iter().any(|n| n.name.as_str() == m.as_str()))
        .cloned()
        .collect();
    current.extend(removes.iter().cloned());
    // Every current member, leaving ones included, as `--initial-cluster` must list them.
    let peers = |current: &[String]| -> Vec<String> {
        current
            .iter()
            .map(|m| match desired.iter().find(|n| n.name.as_str() == m) {
                Some(n) => entry(n),
                None => format!("{m}={}", observed.etcd_members[m].peer_url),
            })
            .collect()
    };

    // Adds first, one at a time: the membership only grows.
    while let Some(node) = adds.pop_front() {
        let name = node.name.to_string();
        // Until it starts, the new member counts toward the quorum but is not up.
        if current.len() < quorum(current.len() + 1) {
            warnings.push(Finding::EtcdAddLosesQuorum {
                node: name.clone(),
                members: current.len(),
            });
        }
        let mut initial = peers(&current);
        initial.push(entry(node));
        current.push(name.clone());
        let steps = vec![
            Step::AddEtcdMember {
                node: name.clone(),
                peer_url: peer_url(cluster, node),
            },
            Step::StartEtcdMember {
                node: name.clone(),
                container: container(&name),
                initial_cluster: initial,
                initial_state: InitialState::Existing,
            },
            gate(&current),
        ];
        batches.push(Batch {
            nodes: vec![name],
            steps,
        });
    }

    // Then members that stay, at the largest membership: a moved peer URL is updated in the
    // membership before the member restarts on it; a changed, stopped or missing container is
    // recreated or started; one member at a time.
    for name in kept {
        let node = desired
            .iter()
            .find(|n| n.name.as_str() == name)
            .expect("kept members are desired");
        let mut steps = Vec::new();
        let url = peer_url(cluster, node);
        if observed.etcd_members[&name].peer_url != url {
            steps.push(Step::UpdateEtcdMember {
                node: name.clone(),
                peer_url: url,
            });
        }
        let want = &specs[name.as_str()].containers[ETCD_COMPONENT];
        let have = observed
            .nodes
            .get(&name)
            .and_then(|n| n.containers.get(ETCD_COMPONENT));
        match have {
            None => steps.push(Step::StartEtcdMember {
                node: name.clone(),
                container: container(&name),
                initial_cluster: peers(&current),
                initial_state: InitialState::Existing,
            }),
            Some(have) if have.spec != *want => steps.push(Step::RecreateContainer {
                node: name.clone(),
                component: ETCD_COMPONENT.into(),
                container: container(&name),
                changed: want
                    .changed_fields(&have.spec)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            }),
            Some(have) if !have.running => steps.push(Step::StartContainer {
                node: name.clone(),
                component: ETCD_COMPONENT.into(),
                container: container(&name),
            }),
            Some(_) => {}
        }
        if steps.is_empty() {
            continue;
        }
        if current.len() - 1 < quorum(current.len()) {
            warnings.push(Finding::EtcdRestartLosesQuorum {
                node: name.clone(),
                members: current.len(),
            });
        }
        steps.push(gate(&current));
        batches.push(Batch {
            nodes: vec![name],
            steps,
        });
    }

    // Removals last, one at a time: a member leaves the membership before its container stops.
    while let Some(name) = removes.pop_front() {
        current.retain(|m| *m != name);
        let mut steps = vec![Step::RemoveEtcdMember { node: name.clone() }];
        let runs_member = observed
            .nodes
            .get(&name)
            .is_some_and(|n| n.containers.contains_key(ETCD_COMPONENT));
        if runs_member {
            steps.push(Step::RemoveContainer {
                node: name.clone(),
                component: ETCD_COMPONENT.into(),
                container: container(&name),
            });
        }
        steps.push(gate(&current));
        batches.push(Batch {
            nodes: vec![name],
            steps,
        });
    }
    batches
}

fn gate(members: &[String]) -> Step {
    Step::AwaitHealthy {
        gate: Gate::EtcdHealthy,
        nodes: members.to_vec(),
    }
}
