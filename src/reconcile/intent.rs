//! A cluster's rollout record: what the daemon has told each node to run, the etcd members it
//! started, the snapshot policy in effect and the restores done. It is durable (saved before a
//! plan reaches an agent, so a restarted daemon resumes from it) and it is what the planner
//! plans from: the agents own converging to their plan, the daemon owns which plan each runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Cluster, Role};
use crate::nodeplan::{EtcdBootstrap, NodeSpec, ETCD_COMPONENT};
use crate::plan::container::peer_url;
use crate::plan::observed::{Member, ObservedContainer, ObservedNode};
use crate::plan::{InitialState, ObservedCluster, PolicyState, Step};

/// The rollout record of one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    pub nodes: BTreeMap<String, NodeIntent>,
    /// etcd members by node name: their peer URL.
    pub members: BTreeMap<String, String>,
    pub snapshot_policy: Option<PolicyState>,
    pub restores_done: BTreeSet<String>,
    /// The revision whose plan last completed with every node converged and healthy.
    pub applied_revision: Option<String>,
    /// The revision whose plan an approval let start (`requireApprovedPlan`): its rollout goes
    /// on without asking again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_revision: Option<String>,
    /// How many certificate rotations operators asked for; a node whose certificates were
    /// issued at a lower count gets new ones.
    #[serde(default)]
    pub cert_rotation: u64,
}

/// What one node was told to run, and from which definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeIntent {
    pub address: String,
    pub roles: BTreeSet<Role>,
    /// Shared with the plans sealed from it, and copied only when a step changes it: a pass
    /// clones and compares the record, which then costs a pointer per node.
    #[serde(with = "shared")]
    pub spec: Arc<NodeSpec>,
    /// The revision of the definition its spec last changed from.
    pub revision: String,
    /// `Intent::cert_rotation` when its certificates were issued.
    #[serde(default)]
    pub pki_rotation: u64,
}

/// `Intent::observed`, kept between passes by `Intent::observed_in`.
#[derive(Debug, Default)]
pub struct ObservedCache {
    /// The node records `cluster`'s nodes were made from.
    from: BTreeMap<String, NodeIntent>,
    cluster: ObservedCluster,
}

/// A step this daemon cannot run yet: the cluster stalls on it rather than skip it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action} on {subject} is not supported by this daemon yet")]
pub struct Unsupported {
    pub action: &'static str,
    pub subject: String,
}

impl Intent {
    /// What runs, as the planner sees it: every node as it was told to run, and `etcd_members`
    /// (see `membership::observed`).
    pub fn observed(&self, etcd_members: BTreeMap<String, Member>) -> ObservedCluster {
        let nodes = self
            .nodes
            .iter()
            .map(|(name, n)| (name.clone(), n.observed()))
            .collect();
        ObservedCluster {
            nodes,
            etcd_members,
            snapshot_policy: self.snapshot_policy.clone(),
            restores_done: self.restores_done.clone(),
        }
    }

    /// `observed(etcd_members)`, kept in `cache` between calls: only the nodes whose record
    /// changed since are made again (each is a copy of its containers' specs).
    pub fn observed_in<'c>(
        &self,
        etcd_members: BTreeMap<String, Member>,
        cache: &'c mut ObservedCache,
    ) -> &'c ObservedCluster {
        let ObservedCache { from, cluster } = cache;
        from.retain(|name, _| self.nodes.contains_key(name));
        cluster
            .nodes
            .retain(|name, _| self.nodes.contains_key(name));
        for (name, node) in &self.nodes {
            if from.get(name) != Some(node) {
                cluster.nodes.insert(name.clone(), node.observed());
                from.insert(name.clone(), node.clone());
            }
        }
        cluster.etcd_members = etcd_members;
        cluster.snapshot_policy.clone_from(&self.snapshot_policy);
        cluster.restores_done.clone_from(&self.restores_done);
        cluster
    }

    /// Takes the record through steps of `cluster`'s plan: each step changes what its node is
    /// told to run, toward `desired` (every node's full plan). Gates, and the etcd membership
    /// changes (agent tasks), are the caller's. Returns the nodes whose plan changed, and the
    /// nodes to decommission.
    pub fn advance(
        &mut self,
        cluster: &Cluster,
        desired: &BTreeMap<String, NodeSpec>,
        steps: &[Step],
        revision: &str,
    ) -> Result<Advanced, Unsupported> {
        let mut out = Advanced::default();
        for step in steps {
            if let Some(node) = self.step(cluster, desired, step, &mut out)? {
                let n = self.node_mut(cluster, &node);
                n.revision = revision.to_string();
                out.changed.insert(node);
            }
        }
        Ok(out)
    }

    /// Makes every node's probes those of `desired` for the containers it runs (probes live
    /// outside container specs, so no step changes them). Returns the nodes that changed.
    pub fn sync_probes(&mut self, desired: &BTreeMap<String, NodeSpec>) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        for (name, node) in &mut self.nodes {
            let Some(want) = desired.get(name) else {
                continue;
            };
            // Most passes change nothing: compare before building anything.
            let runs = |c: &String| node.spec.containers.contains_key(c);
            let wanted = want.health.keys().filter(|c| runs(c)).count();
            let same = node.spec.health.len() == wanted
                && node
                    .spec
                    .health
                    .iter()
                    .all(|(c, h)| runs(c) && want.health.get(c) == Some(h));
            if same {
                continue;
            }
            let health = want
                .health
                .iter()
                .filter(|(c, _)| node.spec.containers.contains_key(*c))
                .map(|(c, h)| (c.clone(), h.clone()))
                .collect();
            if node.spec.health != health {
                Arc::make_mut(&mut node.spec).health = health;
                changed.insert(name.clone());
            }
        }
        changed
    }

    /// Runs one step on the record; returns the node whose plan it changed.
    fn step(
        &mut self,
        cluster: &Cluster,
        desired: &BTreeMap<String, NodeSpec>,
        step: &Step,
        out: &mut Advanced,
    ) -> Result<Option<String>, Unsupported> {
        let unsupported = |action, subject: &str| Unsupported {
            action,
            subject: subject.to_string(),
        };
        let changed = match step {
            Step::RestoreSnapshot { snapshot, .. } => {
                return Err(unsupported("restoring a snapshot", snapshot))
            }
            // Membership changes ran as agent tasks before these steps; the record follows.
            Step::AddEtcdMember { node, peer_url } | Step::UpdateEtcdMember { node, peer_url } => {
                self.members.insert(node.clone(), peer_url.clone());
                None
            }
            Step::RemoveEtcdMember { node } => {
                self.members.remove(node);
                None
            }
            Step::StartEtcdMember {
                node,
                initial_cluster,
                initial_state,
                ..
            } => {
                let bootstrap = EtcdBootstrap {
                    initial_cluster: initial_cluster.clone(),
                    existing: *initial_state == InitialState::Existing,
                };
                self.copy_container(cluster, desired, node, ETCD_COMPONENT);
                self.spec_mut(cluster, node).etcd_bootstrap = Some(bootstrap);
                if let Some(def) = cluster.nodes.iter().find(|n| n.name.as_str() == node) {
                    self.members.insert(node.clone(), peer_url(cluster, def));
                }
                Some(node.clone())
            }
            Step::CreateContainer {
                node, component, ..
            }
            | Step::RecreateContainer {
                node, component, ..
            }
            | Step::StartContainer {
                node, component, ..
            } => {
                self.copy_container(cluster, desired, node, component);
                Some(node.clone())
            }
            Step::RemoveContainer {
                node, component, ..
            } => {
                let spec = self.spec_mut(cluster, node);
                spec.containers.remove(component);
                spec.health.remove(component);
                spec.roles.remove(component);
                if component == ETCD_COMPONENT {
                    spec.etcd_client_url = None;
                    spec.etcd_bootstrap = None;
                }
                Some(node.clone())
            }
            Step::WriteFile { node, path, .. } => {
                let file = desired.get(node).and_then(|s| s.files.get(path)).cloned();
                let spec = self.spec_mut(cluster, node);
                match file {
                    Some(file) => spec.files.insert(path.clone(), file),
                    None => spec.files.remove(path),
                };
                Some(node.clone())
            }
            Step::RemoveFile { node, path } => {
                self.spec_mut(cluster, node).files.remove(path);
                Some(node.clone())
            }
            Step::DecommissionNode { node } => {
                out.decommission.insert(node.clone());
                // Its certificates go with the rest of what it ran.
                let spec = self.nodes.get_mut(node).map(|n| &mut n.spec);
                match spec {
                    Some(spec) if !spec.pki.is_empty() => {
                        Arc::make_mut(spec).pki.clear();
                        Some(node.clone())
                    }
                    _ => None,
                }
            }
            Step::AwaitHealthy { .. } => None,
            Step::UpdateSnapshotPolicy { to, .. } => {
                self.snapshot_policy = to.clone();
                None
            }
        };
        Ok(changed)
    }

    /// Copies one container of a node's desired plan, with its probe and role, to its record.
    fn copy_container(
        &mut self,
        cluster: &Cluster,
        desired: &BTreeMap<String, NodeSpec>,
        node: &str,
        component: &str,
    ) {
        let Some(want) = desired.get(node) else {
            return;
        };
        let spec = self.spec_mut(cluster, node);
        if let Some(c) = want.containers.get(component) {
            spec.containers.insert(component.to_string(), c.clone());
        }
        match want.health.get(component) {
            Some(h) => spec.health.insert(component.to_string(), h.clone()),
            None => spec.health.remove(component),
        };
        if let Some(r) = want.roles.get(component) {
            spec.roles.insert(component.to_string(), *r);
        }
        if component == ETCD_COMPONENT {
            // What the node's etcd tasks dial goes with its member.
            spec.etcd_client_url.clone_from(&want.etcd_client_url);
        }
    }

    /// The record of `node`, made (with the address and roles `cluster` gives it) if new, and
    /// brought to them if they changed.
    fn node_mut(&mut self, cluster: &Cluster, node: &str) -> &mut NodeIntent {
        let def = cluster.nodes.iter().find(|n| n.name.as_str() == node);
        let entry = self
            .nodes
            .entry(node.to_string())
            .or_insert_with(|| NodeIntent {
                address: String::new(),
                roles: BTreeSet::new(),
                spec: Arc::default(),
                revision: String::new(),
                pki_rotation: 0,
            });
        if let Some(def) = def {
            entry.address = def.address.to_string();
            entry.roles = def.roles.clone();
        }
        entry
    }

    /// The plan of `node`, to change (made as `node_mut` makes it); copied first if a sealed
    /// plan shares it.
    fn spec_mut(&mut self, cluster: &Cluster, node: &str) -> &mut NodeSpec {
        Arc::make_mut(&mut self.node_mut(cluster, node).spec)
    }

    /// Gives `node` its certificates (made if the node is new to the record); whether they
    /// changed.
    pub fn set_pki(
        &mut self,
        cluster: &Cluster,
        node: &str,
        pki: BTreeMap<String, crate::nodeplan::FileSpec>,
    ) -> bool {
        let rotation = self.cert_rotation;
        let record = self.node_mut(cluster, node);
        record.pki_rotation = rotation;
        let changed = record.spec.pki != pki;
        if changed {
            Arc::make_mut(&mut record.spec).pki = pki;
        }
        changed
    }

    /// Whether `node` has certificates from before the last rotation operators asked for.
    pub fn rotation_due(&self, node: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| !n.spec.pki.is_empty() && n.pki_rotation < self.cert_rotation)
    }

    /// Forgets a decommissioned node.
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
        self.members.remove(node);
    }
}

impl NodeIntent {
    fn observed(&self) -> ObservedNode {
        ObservedNode {
            address: self.address.clone(),
            roles: self.roles.clone(),
            containers: self
                .spec
                .containers
                .iter()
                .map(|(c, spec)| {
                    let seen = ObservedContainer {
                        spec: spec.clone(),
                        running: true,
                    };
                    (c.clone(), seen)
                })
                .collect(),
            files: self
                .spec
                .files
                .iter()
                .map(|(p, f)| (p.clone(), f.digest.clone()))
                .collect(),
        }
    }
}

/// Encodes the record as `DurableState::save` would (pretty JSON), keeping each node's part
/// between saves: a batch changes a few nodes' plans, and encoding every node's plan (its
/// certificates and all) on every save was a large part of a rollout's work.
#[derive(Debug, Default)]
pub struct RecordEncoder {
    /// Each node's record as last encoded, and its part of the document.
    nodes: HashMap<String, (NodeIntent, Box<str>)>,
}

/// How the nodes' map of an encoded record opens; its nodes are at this indentation.
const NODES_OPEN: &str = "{\n  \"nodes\": {}";
const NODE_INDENT: &str = "\n    ";

impl RecordEncoder {
    /// `serde_json::to_vec_pretty(&intent)`, byte for byte.
    pub fn encode(&mut self, mut intent: Intent) -> Vec<u8> {
        let nodes = std::mem::take(&mut intent.nodes);
        let rest = to_pretty(&intent);
        let Some(tail) = rest.strip_prefix(NODES_OPEN.as_bytes()) else {
            intent.nodes = nodes;
            return to_pretty(&intent);
        };
        self.nodes.retain(|name, _| nodes.contains_key(name));
        let mut out =
            Vec::with_capacity(rest.len() + self.nodes.values().map(|n| n.1.len()).sum::<usize>());
        // The map's opening brace, without its closing one.
        out.extend_from_slice(&NODES_OPEN.as_bytes()[..NODES_OPEN.len() - 1]);
        for (i, (name, node)) in nodes.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(NODE_INDENT.as_bytes());
            out.extend_from_slice(&to_pretty(&name));
            out.extend_from_slice(b": ");
            let known = self.nodes.get(&name).is_some_and(|(was, _)| *was == node);
            if !known {
                // Alone, the node's record is at indentation 0: move it to its place.
                let alone = String::from_utf8(to_pretty(&node)).expect("JSON is UTF-8");
                let part = alone.replace('\n', NODE_INDENT).into_boxed_str();
                self.nodes.insert(name.clone(), (node, part));
            }
            out.extend_from_slice(self.nodes[&name].1.as_bytes());
        }
        if !self.nodes.is_empty() {
            out.extend_from_slice(b"\n  ");
        }
        out.push(b'}');
        out.extend_from_slice(tail);
        out
    }
}

fn to_pretty<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("the record is JSON")
}

/// `Arc<NodeSpec>` as a plain `NodeSpec` in the record.
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::nodeplan::NodeSpec;

    pub fn serialize<S: Serializer>(spec: &Arc<NodeSpec>, s: S) -> Result<S::Ok, S::Error> {
        NodeSpec::serialize(spec, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<NodeSpec>, D::Error> {
        NodeSpec::deserialize(d).map(Arc::new)
    }
}

/// What one batch changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Advanced {
    /// Nodes whose plan changed.
    pub changed: BTreeSet<String>,
    /// Nodes to forget, their credential revoked, once their empty plan is applied.
    pub decommission: BTreeSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodeplan::{FileSpec, NodeRole};

    fn node(address: &str, content: &str) -> NodeIntent {
        let mut spec = NodeSpec::default();
        spec.roles.insert("api".into(), NodeRole::Controlplane);
        spec.files.insert(
            "/etc/a".into(),
            FileSpec::new(
                content.into(),
                crate::model::names::FileMode::parse("0600").unwrap(),
            ),
        );
        NodeIntent {
            address: address.into(),
            roles: BTreeSet::from([Role::Controlplane]),
            spec: Arc::new(spec),
            revision: "rev\"1".into(),
            pki_rotation: 0,
        }
    }

    #[test]
    fn the_encoded_record_is_the_record_as_json_through_changes() {
        let mut encoder = RecordEncoder::default();
        let mut intent = Intent::default();
        assert_eq!(encoder.encode(intent.clone()), to_pretty(&intent), "empty");
        intent
            .nodes
            .insert("n1".into(), node("127.0.0.2", "one\ntwo"));
        intent
            .nodes
            .insert("n\"2".into(), node("127.0.0.3", "three"));
        intent
            .members
            .insert("n1".into(), "https://127.0.0.2:2380".into());
        intent.applied_revision = Some("r1".into());
        for _ in 0..2 {
            assert_eq!(
                encoder.encode(intent.clone()),
                to_pretty(&intent),
                "two nodes"
            );
        }
        intent
            .nodes
            .insert("n1".into(), node("127.0.0.2", "changed"));
        intent.nodes.remove("n\"2");
        intent.nodes.insert("n3".into(), node("127.0.0.4", "four"));
        intent.approved_revision = Some("r2".into());
        assert_eq!(
            encoder.encode(intent.clone()),
            to_pretty(&intent),
            "changed"
        );
        let decoded: Intent = serde_json::from_slice(&encoder.encode(intent.clone())).unwrap();
        assert_eq!(decoded, intent);
    }
}

#[cfg(test)]
mod observed_tests {
    use super::*;

    #[test]
    fn the_kept_observed_state_is_the_records_through_changes() {
        let mut cache = ObservedCache::default();
        let mut intent = Intent::default();
        let node = |address: &str| NodeIntent {
            address: address.into(),
            roles: BTreeSet::from([Role::Worker]),
            spec: Arc::default(),
            revision: "r1".into(),
            pki_rotation: 0,
        };
        intent.nodes.insert("n1".into(), node("127.0.0.2"));
        intent.nodes.insert("n2".into(), node("127.0.0.3"));
        let members = BTreeMap::new;
        assert_eq!(
            *intent.observed_in(members(), &mut cache),
            intent.observed(members())
        );
        intent.nodes.remove("n1");
        intent.nodes.insert("n2".into(), node("127.0.0.4"));
        intent.nodes.insert("n3".into(), node("127.0.0.5"));
        intent.restores_done.insert("x".into());
        assert_eq!(
            *intent.observed_in(members(), &mut cache),
            intent.observed(members())
        );
    }
}
