//! etcd membership and member containers, one change at a time, each behind a health gate. A
//! new cluster starts all its members together (they need each other to elect a leader). An
//! existing one first adds members (member add, start with `initial-cluster-state=existing`),
//! then recreates changed members while the membership is at its largest, then removes members
//! (member remove, then stop the container). From three healthy members up, no step leaves
//! fewer healthy members than a quorum; below that the plan says so in a warning.

use std::collections::BTreeMap;

use super::container::peer_url;
use super::{quorum, Batch, Finding, Gate, InitialState, ObservedCluster, Step};
use crate::model::{Cluster, Node, Role};
use crate::nodeplan::{container_name, NodeSpec, ETCD_COMPONENT};

/// The etcd batches: a new cluster starts all members together; an existing one adds members,
/// then updates the ones that stay, then removes the others, one member per batch.
pub(super) fn phase(
    cluster: &Cluster,
    specs: &BTreeMap<String, NodeSpec>,
    observed: &ObservedCluster,
    warnings: &mut Vec<Finding>,
) -> Vec<Batch> {
    let etcd = Membership {
        cluster,
        desired: cluster.nodes_with(Role::Etcd).collect(),
        observed,
    };
    if observed.etcd_members.is_empty() {
        return etcd.bootstrap().into_iter().collect();
    }

    let Changes {
        kept,
        adds,
        removes,
    } = etcd.changes();
    // Current members, in a stable order: desired ones in file order, then the others by name.
    let mut current: Vec<String> = kept.iter().chain(&removes).cloned().collect();
    let mut batches = Vec::new();
    // Adds first, one at a time: the membership only grows.
    for node in adds {
        batches.push(etcd.add(node, &mut current, warnings));
    }
    // Then members that stay, at the largest membership, one member at a time.
    for name in kept {
        batches.extend(etcd.update(&name, specs, &current, warnings));
    }
    // Removals last, one at a time.
    for name in removes {
        batches.push(etcd.remove(name, &mut current));
    }
    batches
}

/// What the etcd phase plans from: the desired members and what runs.
struct Membership<'a> {
    cluster: &'a Cluster,
    desired: Vec<&'a Node>,
    observed: &'a ObservedCluster,
}

/// How an existing membership must change, each list in the order its batches run.
struct Changes<'a> {
    /// Desired members already in the membership, in file order.
    kept: Vec<String>,
    /// Desired nodes not yet members, in file order.
    adds: Vec<&'a Node>,
    /// Members no longer desired, by name.
    removes: Vec<String>,
}

impl<'a> Membership<'a> {
    /// The `--initial-cluster` entry of a desired member: `name=peer-url`.
    fn entry(&self, node: &Node) -> String {
        format!("{}={}", node.name, peer_url(self.cluster, node))
    }

    /// The name of a node's etcd member container.
    fn container(&self, node: &str) -> String {
        container_name(self.cluster.name.as_str(), node, ETCD_COMPONENT)
    }

    /// The desired node of that name.
    fn desired(&self, name: &str) -> Option<&'a Node> {
        self.desired
            .iter()
            .copied()
            .find(|n| n.name.as_str() == name)
    }

    /// Every current member, leaving ones included, as `--initial-cluster` must list them.
    fn peers(&self, current: &[String]) -> Vec<String> {
        current
            .iter()
            .map(|m| match self.desired(m) {
                Some(n) => self.entry(n),
                None => format!("{m}={}", self.observed.etcd_members[m].peer_url),
            })
            .collect()
    }

    /// A new cluster: every desired member starts at once, then all must be healthy.
    fn bootstrap(&self) -> Option<Batch> {
        if self.desired.is_empty() {
            return None;
        }
        let initial: Vec<String> = self.desired.iter().map(|n| self.entry(n)).collect();
        let mut steps: Vec<Step> = self
            .desired
            .iter()
            .map(|n| Step::StartEtcdMember {
                node: n.name.to_string(),
                container: self.container(n.name.as_str()),
                initial_cluster: initial.clone(),
                initial_state: InitialState::New,
            })
            .collect();
        let nodes: Vec<String> = self.desired.iter().map(|n| n.name.to_string()).collect();
        steps.push(gate(&nodes));
        Some(Batch { nodes, steps })
    }

    /// Splits desired and observed members into those kept, added and removed.
    fn changes(&self) -> Changes<'a> {
        let members = &self.observed.etcd_members;
        let kept = self
            .desired
            .iter()
            .map(|n| n.name.to_string())
            .filter(|n| members.contains_key(n))
            .collect();
        let adds = self
            .desired
            .iter()
            .copied()
            .filter(|n| !members.contains_key(n.name.as_str()))
            .collect();
        let removes = members
            .keys()
            .filter(|m| self.desired(m).is_none())
            .cloned()
            .collect();
        Changes {
            kept,
            adds,
            removes,
        }
    }

    /// Adds one member (member add, then start with `initial-cluster-state=existing`).
    fn add(&self, node: &Node, current: &mut Vec<String>, warnings: &mut Vec<Finding>) -> Batch {
        let name = node.name.to_string();
        // Until it starts, the new member counts toward the quorum but is not up.
        if current.len() < quorum(current.len() + 1) {
            warnings.push(Finding::EtcdAddLosesQuorum {
                node: name.clone(),
                members: current.len(),
            });
        }
        let mut initial = self.peers(current);
        initial.push(self.entry(node));
        current.push(name.clone());
        let steps = vec![
            Step::AddEtcdMember {
                node: name.clone(),
                peer_url: peer_url(self.cluster, node),
            },
            Step::StartEtcdMember {
                node: name.clone(),
                container: self.container(&name),
                initial_cluster: initial,
                initial_state: InitialState::Existing,
            },
            gate(current),
        ];
        Batch {
            nodes: vec![name],
            steps,
        }
    }

    /// Brings a member that stays up to date: a moved peer URL is updated in the membership
    /// before the member restarts on it; a changed, stopped or missing container is recreated or
    /// started. `None` when nothing changes.
    fn update(
        &self,
        name: &str,
        specs: &BTreeMap<String, NodeSpec>,
        current: &[String],
        warnings: &mut Vec<Finding>,
    ) -> Option<Batch> {
        let node = self.desired(name).expect("kept members are desired");
        let mut steps = Vec::new();
        let url = peer_url(self.cluster, node);
        if self.observed.etcd_members[name].peer_url != url {
            steps.push(Step::UpdateEtcdMember {
                node: name.to_string(),
                peer_url: url,
            });
        }
        steps.extend(self.container_step(name, specs, current));
        if steps.is_empty() {
            return None;
        }
        if current.len() - 1 < quorum(current.len()) {
            warnings.push(Finding::EtcdRestartLosesQuorum {
                node: name.to_string(),
                members: current.len(),
            });
        }
        steps.push(gate(current));
        Some(Batch {
            nodes: vec![name.to_string()],
            steps,
        })
    }

    /// The step that makes a kept member's container match its spec and run, if any.
    fn container_step(
        &self,
        name: &str,
        specs: &BTreeMap<String, NodeSpec>,
        current: &[String],
    ) -> Option<Step> {
        let want = &specs[name].containers[ETCD_COMPONENT];
        let have = self
            .observed
            .nodes
            .get(name)
            .and_then(|n| n.containers.get(ETCD_COMPONENT));
        match have {
            None => Some(Step::StartEtcdMember {
                node: name.to_string(),
                container: self.container(name),
                initial_cluster: self.peers(current),
                initial_state: InitialState::Existing,
            }),
            Some(have) if have.spec != *want => Some(Step::RecreateContainer {
                node: name.to_string(),
                component: ETCD_COMPONENT.into(),
                container: self.container(name),
                changed: want
                    .changed_fields(&have.spec)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            }),
            Some(have) if !have.running => Some(Step::StartContainer {
                node: name.to_string(),
                component: ETCD_COMPONENT.into(),
                container: self.container(name),
            }),
            Some(_) => None,
        }
    }

    /// Removes one member: it leaves the membership before its container stops.
    fn remove(&self, name: String, current: &mut Vec<String>) -> Batch {
        current.retain(|m| *m != name);
        let mut steps = vec![Step::RemoveEtcdMember { node: name.clone() }];
        let runs_member = self
            .observed
            .nodes
            .get(&name)
            .is_some_and(|n| n.containers.contains_key(ETCD_COMPONENT));
        if runs_member {
            steps.push(Step::RemoveContainer {
                node: name.clone(),
                component: ETCD_COMPONENT.into(),
                container: self.container(&name),
            });
        }
        steps.push(gate(current));
        Batch {
            nodes: vec![name],
            steps,
        }
    }
}

/// The gate after each etcd batch: these members healthy.
fn gate(members: &[String]) -> Step {
    Step::AwaitHealthy {
        gate: Gate::EtcdHealthy,
        nodes: members.to_vec(),
    }
}
