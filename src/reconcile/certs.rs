//! The nodes' etcd certificates: issued by the cluster's CA when a node first enters the
//! rollout (before its member starts), reissued when its addresses change or it nears expiry.
//! A node that runs no member yet gets its certificates at once; a running member's are
//! replaced one node at a time, only while every node is ready, and the member restarts on them
//! (its container hash includes them): a gated rolling restart, so certificates never expire
//! under a running cluster.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::health::NodeHealth;
use super::intent::Intent;
use super::Verdict;
use crate::etcd_pki::{ClusterCa, Reissue};
use crate::model::{Cluster, Node};
use crate::nodeplan::ETCD_COMPONENT;

/// The names a node's certificates carry: its address and its internal address.
fn addresses(node: &Node) -> Vec<String> {
    let mut out = vec![node.address.to_string()];
    let internal = node.internal_address.to_string();
    if !out.contains(&internal) {
        out.push(internal);
    }
    out
}

/// Issues what is missing or due. Returns a verdict when a running member's certificates were
/// replaced (the rollout waits for it to come back), `None` otherwise.
pub(super) fn issue(
    intent: &mut Intent,
    cluster: &Cluster,
    ca: &ClusterCa,
    health: &BTreeMap<String, NodeHealth>,
    now: SystemTime,
) -> Option<Verdict> {
    let all_ready = health.values().all(NodeHealth::is_ready);
    for node in &cluster.nodes {
        let name = node.name.as_str();
        let addresses = addresses(node);
        let none = BTreeMap::new();
        let current = intent.nodes.get(name).map_or(&none, |n| &n.spec.pki);
        let reason = match ca.needs_reissue(current, &addresses, now) {
            Some(reason) => reason,
            None if intent.rotation_due(name) => Reissue::Requested,
            None => continue,
        };
        let runs_member = intent
            .nodes
            .get(name)
            .is_some_and(|n| n.spec.containers.contains_key(ETCD_COMPONENT));
        if runs_member && !all_ready {
            continue;
        }
        let files = match ca.issue(name, &addresses, now) {
            Ok(files) => files,
            Err(e) => {
                return Some(Verdict::Stalled {
                    reason: "CertificateError",
                    message: format!(
                        "cannot issue {name}'s etcd certificates: {}",
                        crate::error_chain(&e)
                    ),
                })
            }
        };
        intent.set_pki(cluster, name, files);
        if runs_member {
            return Some(Verdict::Progressing {
                reason: "RenewingCertificates",
                message: format!(
                    "renewing {name}'s etcd certificates ({reason}); its member restarts"
                ),
            });
        }
    }
    None
}
