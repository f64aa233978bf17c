//! Drift: where what runs (the daemon's nodes document) differs from both the base and the
//! head revision. A difference the change itself makes (what runs is the base's, head changes
//! it) is the plan's business, not drift; a container that runs neither revision's spec, is
//! stopped or missing, an agent that is gone, a step that failed, are. Pure: no IO.

pub mod render;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::api::{NodeStatus, NodesDocument};
use crate::model::Cluster;
use crate::nodeplan::NodeSpec;
use crate::plan::container::desired_nodes;

/// What differs on one node, or one of its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum DriftKind {
    /// The base runs this node, and the daemon has no report of it: it does not declare it.
    NoReport,
    /// The node's agent holds no session.
    Disconnected { last_seen: Option<String> },
    /// The agent has not applied the daemon's current plan generation.
    Behind { applied: Option<u64>, wanted: u64 },
    /// A step of the last application failed.
    FailedStep { action: String, error: String },
    /// A container the base runs is not there.
    Missing,
    /// A planned container is stopped.
    Stopped,
    /// A container runs a spec that is neither the base's nor the head's.
    Differs { spec_hash: String },
    /// A container's health probe fails.
    Unhealthy { reason: Option<String> },
    /// A managed container that neither revision plans.
    Unplanned,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftItem {
    pub cluster: String,
    pub node: String,
    /// The component, for a container's drift; the failed step's subject, for a failed step.
    pub component: Option<String>,
    #[serde(flatten)]
    pub kind: DriftKind,
}

/// The drift of every node either revision declares.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// Nodes compared: those the base declares, and those the head declares that the daemon
    /// reports on (a node only the head adds is the plan's, until it runs).
    pub nodes: usize,
    /// Of those, the nodes without drift.
    pub in_sync: usize,
    pub items: Vec<DriftItem>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Compares what runs with the base and head revisions' clusters.
pub fn drift(base: &[&Cluster], head: &[&Cluster], running: &NodesDocument) -> Drift {
    let specs = |clusters: &[&Cluster]| -> BTreeMap<(String, String), NodeSpec> {
        clusters
            .iter()
            .flat_map(|c| {
                desired_nodes(c)
                    .into_iter()
                    .map(|(node, spec)| ((c.name.to_string(), node), spec))
            })
            .collect()
    };
    let (base, head) = (specs(base), specs(head));
    let reports: BTreeMap<(String, String), &NodeStatus> = running
        .nodes
        .iter()
        .map(|n| ((n.cluster.clone(), n.node.clone()), n))
        .collect();
    // A node only the head declares, with no report, is one the change adds: the plan's.
    let keys: BTreeSet<&(String, String)> = base
        .keys()
        .chain(head.keys().filter(|k| reports.contains_key(*k)))
        .collect();
    let mut out = Drift {
        nodes: keys.len(),
        ..Drift::default()
    };
    for key in keys {
        let before = out.items.len();
        let item = |component: Option<&str>, kind| DriftItem {
            cluster: key.0.clone(),
            node: key.1.clone(),
            component: component.map(str::to_string),
            kind,
        };
        let (base, head) = (base.get(key), head.get(key));
        let Some(status) = reports.get(key) else {
            out.items.push(item(None, DriftKind::NoReport));
            continue;
        };
        out.items
            .extend(node_drift(status).map(|(c, k)| item(c, k)));
        let hashes = |spec: Option<&NodeSpec>, c: &str| {
            spec.and_then(|s| s.containers.get(c)).map(|c| c.hash())
        };
        let planned: BTreeSet<&String> = base
            .iter()
            .chain(head.iter())
            .flat_map(|s| s.containers.keys())
            .collect();
        for component in &planned {
            let (base_hash, head_hash) = (hashes(base, component), hashes(head, component));
            let Some(seen) = status.containers.get(*component) else {
                if base_hash.is_some() {
                    out.items.push(item(Some(component), DriftKind::Missing));
                }
                continue;
            };
            if !seen.running {
                out.items.push(item(Some(component), DriftKind::Stopped));
                continue;
            }
            let known = [&base_hash, &head_hash]
                .iter()
                .any(|h| h.as_deref() == Some(seen.spec_hash.as_str()));
            if !known {
                let kind = DriftKind::Differs {
                    spec_hash: seen.spec_hash.clone(),
                };
                out.items.push(item(Some(component), kind));
            }
            if seen.healthy == Some(false) {
                let kind = DriftKind::Unhealthy {
                    reason: seen.reason.clone(),
                };
                out.items.push(item(Some(component), kind));
            }
        }
        for component in status.containers.keys() {
            if !planned.contains(component) {
                out.items.push(item(Some(component), DriftKind::Unplanned));
            }
        }
        if out.items.len() == before {
            out.in_sync += 1;
        }
    }
    out
}

/// The node-wide drift of one report: its session, its generation, its failed steps.
fn node_drift(status: &NodeStatus) -> impl Iterator<Item = (Option<&str>, DriftKind)> {
    let disconnected = (!status.connected).then(|| {
        let kind = DriftKind::Disconnected {
            last_seen: status.last_seen.clone(),
        };
        (None, kind)
    });
    let applied = status.applied.as_ref().map(|a| a.generation);
    let behind = status
        .generation
        .filter(|wanted| applied != Some(*wanted))
        .map(|wanted| (None, DriftKind::Behind { applied, wanted }));
    let failed = status.failed_steps.iter().map(|s| {
        let kind = DriftKind::FailedStep {
            action: s.action.clone(),
            error: s.error.clone().unwrap_or_default(),
        };
        (Some(s.subject.as_str()), kind)
    });
    disconnected.into_iter().chain(behind).chain(failed)
}

/// One line for an item, without its cluster and node.
pub fn describe(item: &DriftItem) -> String {
    let subject = item.component.as_deref().unwrap_or("node");
    match &item.kind {
        DriftKind::NoReport => {
            "the daemon has no report of this node (it does not declare it)".to_string()
        }
        DriftKind::Disconnected { last_seen } => match last_seen {
            Some(t) => format!("agent not connected (last seen {t})"),
            None => "agent never connected".to_string(),
        },
        DriftKind::Behind { applied, wanted } => match applied {
            Some(a) => format!("applied plan generation {a}, the daemon wants {wanted}"),
            None => format!("has not applied plan generation {wanted} yet"),
        },
        DriftKind::FailedStep { action, error } => {
            format!("{subject}: {action} failed: {error}")
        }
        DriftKind::Missing => format!("{subject}: container missing"),
        DriftKind::Stopped => format!("{subject}: container stopped"),
        DriftKind::Differs { spec_hash } => {
            format!("{subject}: runs spec {spec_hash}, which is neither the base's nor the head's")
        }
        DriftKind::Unhealthy { reason } => match reason {
            Some(r) => format!("{subject}: unhealthy: {r}"),
            None => format!("{subject}: unhealthy"),
        },
        DriftKind::Unplanned => format!("{subject}: a managed container neither revision plans"),
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::model::{load_sources, SourceFile};
    use crate::protocol::{AppliedMark, ContainerState, StepReport};

    fn cluster(nodes: &[&str], app: &str) -> crate::model::Repository {
        let mut text = String::from(
            "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  nodes:\n",
        );
        for (i, n) in nodes.iter().enumerate() {
            let roles = if *n == "n1" { "etcd" } else { "worker" };
            text.push_str(&format!(
                "    - {{name: {n}, address: 127.0.9.{}, roles: [{roles}]}}\n",
                i + 1
            ));
        }
        text.push_str(&format!(
            "  etcd: {{image: 'drover-test/etcd:3.4.23'}}\n  components:\n    worker:\n      - {{name: app, image: 'app:{app}'}}\n"
        ));
        let repo = load_sources(
            vec![SourceFile {
                path: "clusters/c.yaml".into(),
                bytes: text.into_bytes(),
            }],
            Vec::new(),
        );
        assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
        repo
    }

    fn status(node: &str, containers: &[(&str, bool, &str)]) -> NodeStatus {
        NodeStatus {
            cluster: "c".into(),
            node: node.into(),
            connected: true,
            last_seen: Some("2026-12-01T10:00:00Z".into()),
            generation: Some(1),
            applied: Some(AppliedMark {
                generation: 1,
                checksum: "sha256:00".into(),
            }),
            containers: containers
                .iter()
                .map(|(c, running, hash)| {
                    let state = ContainerState {
                        running: *running,
                        spec_hash: hash.to_string(),
                        healthy: None,
                        reason: None,
                    };
                    (c.to_string(), state)
                })
                .collect(),
            failed_steps: Vec::new(),
        }
    }

    #[test]
    fn every_kind_of_drift_and_what_is_not_drift() {
        let base = cluster(&["n1", "w1", "w2", "w3", "w4"], "1");
        let head = cluster(&["n1", "w1", "w2", "w3", "w5"], "2");
        let hash = |repo: &crate::model::Repository, node: &str, c: &str| {
            desired_nodes(&repo.clusters[0])[node].containers[c].hash()
        };
        let etcd = hash(&base, "n1", "etcd");
        let (old, new) = (hash(&base, "w1", "app"), hash(&head, "w1", "app"));
        let mut w3 = status("w3", &[("app", true, "ffff")]);
        w3.containers.get_mut("app").unwrap().healthy = Some(false);
        w3.containers.get_mut("app").unwrap().reason = Some("HTTP 503".into());
        w3.generation = Some(2);
        w3.failed_steps = vec![StepReport {
            subject: "app".into(),
            action: "recreate".into(),
            error: Some("No such image: app:2".into()),
        }];
        let mut gone = status("w1", &[("app", true, &new)]);
        gone.node = "w9".into();
        gone.connected = false;
        let running = NodesDocument {
            format_version: 1,
            nodes: vec![
                status("n1", &[("etcd", true, &etcd)]),
                // Runs the base's spec; the head changes it: the plan's business.
                status("w1", &[("app", true, &old)]),
                status("w2", &[("app", false, &new), ("debug", true, "abcd")]),
                w3,
                // Neither revision declares w9: the daemon's own business.
                gone,
            ],
        };
        let drift = drift(
            &base.clusters.iter().collect::<Vec<_>>(),
            &head.clusters.iter().collect::<Vec<_>>(),
            &running,
        );
        expect![[r#"
            drift at https://daemon: 2 of 5 nodes in sync with Git
              cluster c
              - w2: app: container stopped
              - w2: debug: a managed container neither revision plans
              - w3: applied plan generation 1, the daemon wants 2
              - w3: app: recreate failed: No such image: app:2
              - w3: app: runs spec ffff, which is neither the base's nor the head's
              - w3: app: unhealthy: HTTP 503
              - w4: the daemon has no report of this node (it does not declare it)
        "#]]
        .assert_eq(&super::render::drift_text("https://daemon", &drift));
    }
}
