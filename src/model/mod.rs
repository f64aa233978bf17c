//! The desired state: clusters as a repository declares them, checked. `load` reads cluster files
//! into `Cluster`s plus diagnostics; a broken file yields its diagnostics and never hides the
//! clusters of the other files.

pub mod diagnostic;
pub mod document;
pub mod load;
pub mod names;
pub mod spec;
pub mod template;
pub mod tree;
pub(crate) mod validate;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::Duration;

pub use document::SourceFile;
pub use load::{load_dir, load_file, load_sources, Repository};
pub use names::{
    ClusterName, ComponentName, FileMode, ImageRef, NodeAddress, NodeName, RequestId, SnapshotId,
    StoreName,
};
pub use spec::Role;

/// Default etcd ports.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

/// Most containers and files one node may run. An agent reports one step per container and
/// file, and the agent protocol refuses a report listing more (`protocol::MAX_REPORT_ITEMS`),
/// so validation keeps every node's plan within it.
pub const MAX_NODE_ITEMS: usize = 1024;

/// One checked cluster definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: ClusterName,
    /// The file (relative to the repository root) and line that define it.
    pub source: SourceRef,
    pub nodes: Vec<Node>,
    pub etcd: Etcd,
    /// The components each role runs, in file order.
    pub components: BTreeMap<Role, Vec<Component>>,
    pub rollout: Rollout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub file: String,
    pub line: u32,
    /// sha256 of the definition's content (its canonical JSON, so comments and formatting do
    /// not count): equal digests, equal clusters.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: NodeName,
    pub address: NodeAddress,
    /// Equal to `address` unless the file gives one.
    pub internal_address: NodeAddress,
    pub roles: BTreeSet<Role>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<spec::TaintSpec>,
}

impl Node {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Etcd {
    pub image: ImageRef,
    pub extra_args: BTreeMap<String, String>,
    pub client_port: u16,
    pub peer_port: u16,
    pub snapshots: Option<SnapshotPolicy>,
    pub restore: Option<RestoreRequest>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotPolicy {
    pub schedule: Schedule,
    pub store: StoreName,
    pub retention: Retention,
    /// How often a restore drill verifies the newest snapshot in a throwaway etcd.
    pub drill_every: Option<Duration>,
}

/// When snapshots are taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// A five-field cron expression, evaluated in UTC.
    Cron {
        expression: String,
        cron: Box<croner::Cron>,
    },
    /// A fixed interval from the previous snapshot.
    Every(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub last: NonZeroU32,
    pub hourly: Option<NonZeroU32>,
    pub daily: Option<NonZeroU32>,
    pub weekly: Option<NonZeroU32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    pub snapshot: SnapshotId,
    pub request_id: RequestId,
}

/// A component as declared: its string fields are templates, rendered per node by
/// `template::Renderer::component`.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub name: ComponentName,
    pub image: ImageRef,
    /// The files of `spec.files`, with their modes parsed; contents are still templates.
    pub files: Vec<ComponentFile>,
    pub spec: spec::ComponentSpec,
}

/// A file a component needs on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentFile {
    pub path: String,
    pub mode: FileMode,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rollout {
    /// Roles without an entry update one node at a time.
    pub max_unavailable: BTreeMap<Role, MaxUnavailable>,
}

impl Rollout {
    /// How many of a role's `total` nodes may be updated at once.
    pub fn batch_size(&self, role: Role, total: usize) -> usize {
        match (role, self.max_unavailable.get(&role)) {
            (Role::Etcd, _) | (_, None) => 1,
            (_, Some(m)) => m.of(total),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(NonZeroU32),
    /// 1 to 100.
    Percent(u8),
}

impl MaxUnavailable {
    /// The number of nodes out of `total`: percentages round down, and never below 1.
    pub fn of(self, total: usize) -> usize {
        let n = match self {
            MaxUnavailable::Count(c) => c.get() as usize,
            MaxUnavailable::Percent(p) => total * p as usize / 100,
        };
        n.clamp(1, total.max(1))
    }
}

impl Cluster {
    pub fn nodes_with(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.has_role(role))
    }

    /// The components `node` runs, with the role each comes from, in role then file order.
    pub fn components_of<'a>(
        &'a self,
        node: &'a Node,
    ) -> impl Iterator<Item = (Role, &'a Component)> + 'a {
        self.components
            .iter()
            .filter(|(role, _)| node.has_role(**role))
            .flat_map(|(role, list)| list.iter().map(move |c| (*role, c)))
    }
}

/// Where a cluster's etcd certificates live on each of its nodes: the CA, the member's server
/// and peer certificates, and the node's client certificate for components.
pub fn etcd_pki_dir(cluster: &str) -> String {
    format!("/var/lib/drover/{cluster}/etcd-pki")
}

/// Where a cluster's etcd member keeps its data on each of its nodes; a restore swaps a new
/// one in and keeps the one it replaced beside it.
pub fn etcd_data_dir(cluster: &str) -> String {
    format!("/var/lib/drover/{cluster}/etcd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_rounds_down_with_minimum_one() {
        let pct = |p| MaxUnavailable::Percent(p);
        let count = |c| MaxUnavailable::Count(NonZeroU32::new(c).unwrap());
        let cases = [
            (pct(25), 10, 2),
            (pct(25), 3, 1),
            (pct(100), 7, 7),
            (pct(1), 1, 1),
            (count(2), 10, 2),
            (count(5), 3, 3),
            (count(1), 0, 1),
        ];
        for (m, total, want) in cases {
            assert_eq!(m.of(total), want, "{m:?} of {total}");
        }
    }
}
