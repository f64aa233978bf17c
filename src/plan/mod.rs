//! The planner: `plan(desired, observed, now)` says what must happen, in which order and behind
//! which gates, to take every cluster from what runs to what Git declares. It is a pure function
//! over owned data: no IO, no clock but `now`, and the same inputs give the same plan, byte for
//! byte. An empty observed state is a new cluster; there is no separate bootstrap path.
//!
//! Order, per cluster: a requested restore; etcd membership one change at a time (add, start,
//! health gate; a member is removed before its node stops) and etcd containers one at a time;
//! then control-plane nodes, then workers, in batches bounded by max-unavailable (new nodes,
//! which serve nothing yet, go in one batch); decommissioned nodes last; the snapshot policy.

pub mod container;
mod etcd;
pub mod observed;
pub mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};

use self::container::desired_nodes;
pub use self::observed::{as_if_running, simulate, Observed, ObservedCluster, PolicyState};
use crate::model::{Cluster, ImageRef, Role, SnapshotId};
use crate::nodeplan::{container_name, NodeSpec, ETCD_COMPONENT};

/// Version of the JSON form of a plan (`drover plan --format json`).
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// What is wanted: the clusters Git declares, and what is known about their snapshot stores.
#[derive(Debug, Clone, Default)]
pub struct Desired<'a> {
    pub clusters: Vec<&'a Cluster>,
    /// The snapshots each cluster's store holds, when known; a restore of any other is refused.
    pub known_snapshots: Option<BTreeMap<String, BTreeSet<SnapshotId>>>,
    /// Clusters Git still declares but whose definition is invalid at this revision: their last
    /// good definition stays, so nothing changes for them.
    pub held_back: BTreeSet<String>,
}

/// The plan for every cluster, in cluster-name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub format_version: u32,
    pub clusters: Vec<ClusterPlan>,
    /// Clusters whose definition is invalid at this revision: nothing changes for them.
    pub held_back: Vec<String>,
    /// Clusters that run but that Git no longer declares: drover leaves them as they are.
    pub unmanaged: Vec<String>,
    /// A stable hash of everything above.
    pub digest: String,
}

impl Plan {
    pub fn has_errors(&self) -> bool {
        self.clusters.iter().any(|c| !c.errors.is_empty())
    }

    pub fn has_changes(&self) -> bool {
        self.clusters.iter().any(|c| c.steps().next().is_some())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlan {
    pub cluster: String,
    /// The definition the plan takes the cluster to (`sha256:` over its canonical JSON): the
    /// digest pins what each step creates, not only which steps run.
    pub definition: String,
    /// True when nothing of the cluster runs yet.
    pub new_cluster: bool,
    pub phases: Vec<Phase>,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub digest: String,
}

impl ClusterPlan {
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.phases
            .iter()
            .flat_map(|p| p.batches.iter().flat_map(|b| b.steps.iter()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PhaseKind {
    Restore,
    Etcd,
    EtcdNodes,
    Controlplane,
    Workers,
    Decommission,
    Snapshots,
}

impl PhaseKind {
    pub fn title(self) -> &'static str {
        match self {
            PhaseKind::Restore => "restore",
            PhaseKind::Etcd => "etcd",
            PhaseKind::EtcdNodes => "etcd-only nodes",
            PhaseKind::Controlplane => "control plane",
            PhaseKind::Workers => "workers",
            PhaseKind::Decommission => "decommission",
            PhaseKind::Snapshots => "snapshot policy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phase {
    pub kind: PhaseKind,
    pub batches: Vec<Batch>,
}

/// Steps that run together; the next batch waits for this one's gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Batch {
    pub nodes: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    New,
    Existing,
}

/// What a gate waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Gate {
    /// Every listed etcd member reports healthy.
    EtcdHealthy,
    /// Every container on the listed nodes runs and passes its health check.
    NodesHealthy,
}

/// One action. Node, component and container names are those of the plan's cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Step {
    RestoreSnapshot {
        snapshot: String,
        request_id: String,
    },
    AddEtcdMember {
        node: String,
        peer_url: String,
    },
    /// Create and start the member's container with the bootstrap flags given here.
    StartEtcdMember {
        node: String,
        container: String,
        initial_cluster: Vec<String>,
        initial_state: InitialState,
    },
    /// Change a member's peer URL in the membership before it restarts on it.
    UpdateEtcdMember {
        node: String,
        peer_url: String,
    },
    RemoveEtcdMember {
        node: String,
    },
    WriteFile {
        node: String,
        path: String,
        mode: String,
        digest: String,
    },
    CreateContainer {
        node: String,
        component: String,
        container: String,
        image: String,
    },
    RecreateContainer {
        node: String,
        component: String,
        container: String,
        changed: Vec<String>,
    },
    /// The container exists with the wanted spec but is stopped.
    StartContainer {
        node: String,
        component: String,
        container: String,
    },
    RemoveContainer {
        node: String,
        component: String,
        container: String,
    },
    RemoveFile {
        node: String,
        path: String,
    },
    /// Forget the node: its credential is revoked and its agent refused from now on.
    DecommissionNode {
        node: String,
    },
    AwaitHealthy {
        gate: Gate,
        nodes: Vec<String>,
    },
    UpdateSnapshotPolicy {
        from: Option<PolicyState>,
        to: Option<PolicyState>,
    },
}

/// Something the plan's reader must know: errors make the plan unsafe to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(
    tag = "code",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum Finding {
    #[error("etcd quorum is lost: {healthy} of {members} members are healthy, fewer than the {quorum} a membership change needs; restore from a snapshot instead")]
    EtcdQuorumLost {
        members: usize,
        healthy: usize,
        quorum: usize,
    },
    #[error("etcd shrinks from {from} to {to} members, one removal at a time: it then tolerates {tolerated} failures instead of {before}")]
    EtcdFaultToleranceLost {
        from: usize,
        to: usize,
        before: usize,
        tolerated: usize,
    },
    #[error("every control-plane node would be removed")]
    NoControlPlaneLeft,
    #[error("restore requests snapshot {snapshot}, which store {store} does not hold")]
    UnknownSnapshot { snapshot: String, store: String },
    #[error("restore requests snapshot {snapshot} but the cluster has no snapshot store")]
    RestoreWithoutStore { snapshot: String },
    #[error("{count} etcd members tolerate no more failures than {fewer}; prefer an odd count")]
    EvenEtcdCount { count: usize, fewer: usize },
    #[error("a single etcd member: losing it loses the cluster, and adding a second loses quorum until it starts")]
    SingleEtcdMember,
    #[error("node {node} changes address from {from} to {to}; its containers are recreated and peers must reach the new address")]
    AddressChange {
        node: String,
        from: String,
        to: String,
    },
    #[error("image {image} has a mutable tag: nodes may run different builds of it; pin a version or digest")]
    MutableImageTag { image: String },
    #[error("adding etcd member {node} to {members} loses quorum until it starts")]
    EtcdAddLosesQuorum { node: String, members: usize },
    #[error("recreating etcd member {node} of {members} loses quorum while it restarts")]
    EtcdRestartLosesQuorum { node: String, members: usize },
}

/// A membership change commits only through a quorum of the current members: removing a
/// member shrinks the quorum with it, losing members does not. So a change is refused while
/// fewer than a quorum are healthy (the quorum is lost: restore); removals that leave fewer
/// failures tolerated are named. (Removing every member is refused by validation: a cluster
/// has at least one etcd node.)
fn check_membership(
    desired: &BTreeSet<&str>,
    observed: &ObservedCluster,
    errors: &mut Vec<Finding>,
    warnings: &mut Vec<Finding>,
) {
    let members = observed.etcd_members.len();
    let changes = desired.len() != members
        || observed
            .etcd_members
            .keys()
            .any(|m| !desired.contains(m.as_str()));
    if members == 0 || desired.is_empty() || !changes {
        return;
    }
    let healthy = observed.etcd_members.values().filter(|m| m.healthy).count();
    if healthy < quorum(members) {
        let quorum = quorum(members);
        errors.push(Finding::EtcdQuorumLost {
            members,
            healthy,
            quorum,
        });
    } else if tolerated(desired.len()) < tolerated(members) {
        warnings.push(Finding::EtcdFaultToleranceLost {
            from: members,
            to: desired.len(),
            before: tolerated(members),
            tolerated: tolerated(desired.len()),
        });
    }
}

/// How many of `n` members may fail with the cluster still serving.
fn tolerated(n: usize) -> usize {
    n - quorum(n)
}

/// The smallest majority of `n` members.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Plans every desired cluster against what is observed of it. `now` is accepted so time-based
/// decisions stay inside this pure function; no step depends on it yet.
pub fn plan(desired: &Desired<'_>, observed: &Observed, now: SystemTime) -> Plan {
    let _ = now;
    let clusters = desired
        .clusters
        .iter()
        .map(|cluster| {
            let (seen, known) = inputs(desired, observed, cluster);
            plan_cluster(cluster, seen, known.as_ref())
        })
        .collect();
    assemble(desired, observed, clusters)
}

/// Plans like [`plan`], but reuses the plan of every cluster whose inputs are unchanged since
/// the last call: its definition (by content digest), what is observed of it (by the caller's
/// key), and its known snapshots. The result is always equal to `plan`'s.
#[derive(Debug, Default)]
pub struct Planner {
    cache: HashMap<String, (CacheKey, Arc<ClusterPlan>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CacheKey {
    definition: String,
    observed: u64,
    known: Option<BTreeSet<SnapshotId>>,
}

impl Planner {
    /// `observed_keys` gives, per cluster, a value that changes whenever what is observed of it
    /// changes (a counter, or a digest); a cluster without one is always planned afresh.
    pub fn plan(
        &mut self,
        desired: &Desired<'_>,
        observed: &Observed,
        observed_keys: &BTreeMap<String, u64>,
        now: SystemTime,
    ) -> Plan {
        let _ = now;
        let mut fresh = HashMap::with_capacity(desired.clusters.len());
        let clusters = desired
            .clusters
            .iter()
            .map(|cluster| {
                let name = cluster.name.to_string();
                let (seen, known) = inputs(desired, observed, cluster);
                let key = observed_keys.get(&name).map(|&observed| CacheKey {
                    definition: cluster.source.digest.clone(),
                    observed,
                    known: known.clone(),
                });
                let cached = match (&key, self.cache.remove(&name)) {
                    (Some(key), Some((old, plan))) if *key == old => Some(plan),
                    _ => None,
                };
                let plan =
                    cached.unwrap_or_else(|| Arc::new(plan_cluster(cluster, seen, known.as_ref())));
                if let Some(key) = key {
                    fresh.insert(name, (key, plan.clone()));
                }
                Arc::unwrap_or_clone(plan)
            })
            .collect();
        self.cache = fresh;
        assemble(desired, observed, clusters)
    }
}

impl Planner {
    /// One cluster's plan, with no snapshots known, as `plan` gives it: reused while the
    /// definition and `observed_key` are unchanged, else planned from `specs` (its nodes' full
    /// plans, `desired_nodes(cluster)`) and `observed`, which is only then called. Forgets the
    /// plans of other clusters.
    pub fn plan_one<O: std::borrow::Borrow<ObservedCluster>>(
        &mut self,
        cluster: &Cluster,
        specs: &BTreeMap<String, NodeSpec>,
        observed_key: u64,
        observed: impl FnOnce() -> O,
    ) -> Arc<ClusterPlan> {
        let name = cluster.name.to_string();
        let key = CacheKey {
            definition: cluster.source.digest.clone(),
            observed: observed_key,
            known: None,
        };
        let plan = match self.cache.remove(&name) {
            Some((old, plan)) if old == key => plan,
            _ => Arc::new(plan_cluster_from(cluster, specs, observed().borrow(), None)),
        };
        self.cache = HashMap::from([(name, (key, plan.clone()))]);
        plan
    }
}

/// What is observed of `cluster` and the snapshots its store is known to hold.
fn inputs<'o>(
    desired: &Desired<'_>,
    observed: &'o Observed,
    cluster: &Cluster,
) -> (&'o ObservedCluster, Option<BTreeSet<SnapshotId>>) {
    static EMPTY: std::sync::OnceLock<ObservedCluster> = std::sync::OnceLock::new();
    let name = cluster.name.as_str();
    let seen = observed
        .clusters
        .get(name)
        .unwrap_or_else(|| EMPTY.get_or_init(ObservedCluster::default));
    let known = desired
        .known_snapshots
        .as_ref()
        .map(|k| k.get(name).cloned().unwrap_or_default());
    (seen, known)
}

/// The plan from its clusters' plans: sorted, with the clusters Git does not declare, and a
/// digest over the clusters' digests.
fn assemble(desired: &Desired<'_>, observed: &Observed, mut clusters: Vec<ClusterPlan>) -> Plan {
    clusters.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    let declared: BTreeSet<&str> = desired.clusters.iter().map(|c| c.name.as_str()).collect();
    let (held_back, unmanaged): (Vec<String>, Vec<String>) = observed
        .clusters
        .keys()
        .filter(|name| !declared.contains(name.as_str()))
        .cloned()
        .partition(|name| desired.held_back.contains(name));
    let parts: Vec<&str> = clusters.iter().map(|c| c.digest.as_str()).collect();
    let digest = digest(&(PLAN_FORMAT_VERSION, parts, &held_back, &unmanaged));
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        clusters,
        held_back,
        unmanaged,
        digest,
    }
}

/// Plans one cluster. Pure; exposed for callers that cache per cluster.
pub fn plan_cluster(
    cluster: &Cluster,
    observed: &ObservedCluster,
    known_snapshots: Option<&BTreeSet<SnapshotId>>,
) -> ClusterPlan {
    plan_cluster_from(cluster, &desired_nodes(cluster), observed, known_snapshots)
}

/// `plan_cluster`, given `specs`, the cluster's nodes' full plans (`desired_nodes(cluster)`),
/// which a caller that keeps them need not render again.
pub fn plan_cluster_from(
    cluster: &Cluster,
    specs: &BTreeMap<String, NodeSpec>,
    observed: &ObservedCluster,
    known_snapshots: Option<&BTreeSet<SnapshotId>>,
) -> ClusterPlan {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    check_safety(
        cluster,
        observed,
        known_snapshots,
        &mut errors,
        &mut warnings,
    );

    let mut phases = Vec::new();
    let mut push = |kind, batches: Vec<Batch>| {
        if !batches.is_empty() {
            phases.push(Phase { kind, batches });
        }
    };
    push(PhaseKind::Restore, restore(cluster, observed));
    push(
        PhaseKind::Etcd,
        etcd::phase(cluster, specs, observed, &mut warnings),
    );
    let by_role = node_batches(cluster, specs, observed);
    for (kind, batches) in by_role {
        push(kind, batches);
    }
    push(PhaseKind::Decommission, decommission(cluster, observed));
    push(PhaseKind::Snapshots, snapshot_policy(cluster, observed));

    let mut plan = ClusterPlan {
        cluster: cluster.name.to_string(),
        definition: format!("sha256:{}", cluster.source.digest),
        // Nodes that only hold files (certificates issued ahead of their first step) run
        // nothing yet.
        new_cluster: observed.nodes.values().all(|n| n.containers.is_empty())
            && observed.etcd_members.is_empty(),
        phases,
        errors,
        warnings,
        digest: String::new(),
    };
    plan.digest = digest(&plan);
    plan
}

fn check_safety(
    cluster: &Cluster,
    observed: &ObservedCluster,
    known_snapshots: Option<&BTreeSet<SnapshotId>>,
    errors: &mut Vec<Finding>,
    warnings: &mut Vec<Finding>,
) {
    let desired_members: BTreeSet<&str> = cluster
        .nodes_with(Role::Etcd)
        .map(|n| n.name.as_str())
        .collect();
    check_membership(&desired_members, observed, errors, warnings);
    let had_controlplane = observed
        .nodes
        .values()
        .any(|n| n.roles.contains(&Role::Controlplane));
    if had_controlplane && cluster.nodes_with(Role::Controlplane).next().is_none() {
        errors.push(Finding::NoControlPlaneLeft);
    }
    if let Some(restore) = &cluster.etcd.restore {
        let pending = !observed.restores_done.contains(restore.request_id.as_str());
        let snapshot = restore.snapshot.to_string();
        match (&cluster.etcd.snapshots, known_snapshots) {
            (None, _) if pending => errors.push(Finding::RestoreWithoutStore { snapshot }),
            (Some(policy), Some(known)) if pending && !known.contains(&restore.snapshot) => {
                let store = policy.store.to_string();
                errors.push(Finding::UnknownSnapshot { snapshot, store });
            }
            _ => {}
        }
    }
    match desired_members.len() {
        1 => warnings.push(Finding::SingleEtcdMember),
        n if n % 2 == 0 => warnings.push(Finding::EvenEtcdCount {
            count: n,
            fewer: n - 1,
        }),
        _ => {}
    }
    for node in &cluster.nodes {
        if let Some(seen) = observed.nodes.get(node.name.as_str()) {
            if !seen.address.is_empty() && seen.address != node.address.as_str() {
                warnings.push(Finding::AddressChange {
                    node: node.name.to_string(),
                    from: seen.address.clone(),
                    to: node.address.to_string(),
                });
            }
        }
    }
    let mut images: BTreeSet<&ImageRef> = BTreeSet::new();
    images.insert(&cluster.etcd.image);
    for list in cluster.components.values() {
        images.extend(list.iter().map(|c| &c.image));
    }
    for image in images.into_iter().filter(|i| i.is_mutable()) {
        let image = image.to_string();
        warnings.push(Finding::MutableImageTag { image });
    }
}

fn restore(cluster: &Cluster, observed: &ObservedCluster) -> Vec<Batch> {
    let Some(r) = &cluster.etcd.restore else {
        return Vec::new();
    };
    if observed.restores_done.contains(r.request_id.as_str()) {
        return Vec::new();
    }
    let nodes = cluster
        .nodes_with(Role::Etcd)
        .map(|n| n.name.to_string())
        .collect();
    vec![Batch {
        nodes,
        steps: vec![Step::RestoreSnapshot {
            snapshot: r.snapshot.to_string(),
            request_id: r.request_id.to_string(),
        }],
    }]
}

/// The steps that take one node's components and files from observed to desired.
fn node_steps(
    cluster: &str,
    node: &str,
    spec: &NodeSpec,
    seen: Option<&observed::ObservedNode>,
) -> Vec<Step> {
    let empty = observed::ObservedNode::default();
    let seen = seen.unwrap_or(&empty);
    let name = |component: &str| container_name(cluster, node, component);
    let mut steps = Vec::new();
    for (path, file) in &spec.files {
        if seen.files.get(path) != Some(&file.digest) {
            steps.push(Step::WriteFile {
                node: node.into(),
                path: path.clone(),
                mode: file.mode.to_string(),
                digest: file.digest.clone(),
            });
        }
    }
    for component in seen.containers.keys() {
        if component != ETCD_COMPONENT && !spec.containers.contains_key(component) {
            steps.push(Step::RemoveContainer {
                node: node.into(),
                component: component.clone(),
                container: name(component),
            });
        }
    }
    for (component, want) in &spec.containers {
        if component == ETCD_COMPONENT {
            continue;
        }
        let (node, component) = (node.to_string(), component.clone());
        let container = name(&component);
        match seen.containers.get(&component) {
            None => steps.push(Step::CreateContainer {
                node,
                component,
                container,
                image: want.image.to_string(),
            }),
            Some(have) if have.spec != *want => {
                let changed = want
                    .changed_fields(&have.spec)
                    .into_iter()
                    .map(String::from)
                    .collect();
                steps.push(Step::RecreateContainer {
                    node,
                    component,
                    container,
                    changed,
                });
            }
            Some(have) if !have.running => steps.push(Step::StartContainer {
                node,
                component,
                container,
            }),
            Some(_) => {}
        }
    }
    for path in seen.files.keys() {
        if !spec.files.contains_key(path) {
            steps.push(Step::RemoveFile {
                node: node.into(),
                path: path.clone(),
            });
        }
    }
    steps
}

/// Component changes, grouped by the phase of each node's highest role and batched.
fn node_batches(
    cluster: &Cluster,
    specs: &BTreeMap<String, NodeSpec>,
    observed: &ObservedCluster,
) -> Vec<(PhaseKind, Vec<Batch>)> {
    let kinds = [
        (PhaseKind::EtcdNodes, Role::Etcd),
        (PhaseKind::Controlplane, Role::Controlplane),
        (PhaseKind::Workers, Role::Worker),
    ];
    let phase_of = |roles: &BTreeSet<Role>| {
        if roles.contains(&Role::Controlplane) {
            PhaseKind::Controlplane
        } else if roles.contains(&Role::Worker) {
            PhaseKind::Workers
        } else {
            PhaseKind::EtcdNodes
        }
    };
    let mut out = Vec::new();
    for (kind, role) in kinds {
        let in_phase: Vec<_> = cluster
            .nodes
            .iter()
            .filter(|n| phase_of(&n.roles) == kind)
            .collect();
        let mut fresh = Vec::new();
        let mut existing = Vec::new();
        for node in &in_phase {
            let seen = observed.nodes.get(node.name.as_str());
            let steps = node_steps(
                cluster.name.as_str(),
                node.name.as_str(),
                &specs[node.name.as_str()],
                seen,
            );
            if steps.is_empty() {
                continue;
            }
            let is_new = seen.is_none_or(|s| s.containers.is_empty());
            let entry = (node.name.to_string(), steps);
            if is_new {
                fresh.push(entry);
            } else {
                existing.push(entry);
            }
        }
        let size = cluster.rollout.batch_size(role, in_phase.len());
        let mut batches = Vec::new();
        if !fresh.is_empty() {
            batches.push(gated(fresh));
        }
        let mut rest = existing.into_iter().peekable();
        while rest.peek().is_some() {
            batches.push(gated(rest.by_ref().take(size).collect()));
        }
        if !batches.is_empty() {
            out.push((kind, batches));
        }
    }
    out
}

/// A batch of nodes' steps followed by a gate on those nodes.
fn gated(nodes: Vec<(String, Vec<Step>)>) -> Batch {
    let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    let mut steps: Vec<Step> = nodes.into_iter().flat_map(|(_, s)| s).collect();
    steps.push(Step::AwaitHealthy {
        gate: Gate::NodesHealthy,
        nodes: names.clone(),
    });
    Batch {
        nodes: names,
        steps,
    }
}

fn decommission(cluster: &Cluster, observed: &ObservedCluster) -> Vec<Batch> {
    let declared: BTreeSet<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    observed
        .nodes
        .iter()
        .filter(|(name, _)| !declared.contains(name.as_str()))
        .map(|(name, seen)| {
            let mut steps: Vec<Step> = seen
                .containers
                .keys()
                .filter(|c| c.as_str() != ETCD_COMPONENT)
                .map(|component| Step::RemoveContainer {
                    node: name.clone(),
                    component: component.clone(),
                    container: container_name(cluster.name.as_str(), name, component),
                })
                .collect();
            steps.extend(seen.files.keys().map(|path| Step::RemoveFile {
                node: name.clone(),
                path: path.clone(),
            }));
            steps.push(Step::DecommissionNode { node: name.clone() });
            Batch {
                nodes: vec![name.clone()],
                steps,
            }
        })
        .collect()
}

fn snapshot_policy(cluster: &Cluster, observed: &ObservedCluster) -> Vec<Batch> {
    let to = cluster.etcd.snapshots.as_ref().map(PolicyState::of);
    if to == observed.snapshot_policy {
        return Vec::new();
    }
    vec![Batch {
        nodes: Vec::new(),
        steps: vec![Step::UpdateSnapshotPolicy {
            from: observed.snapshot_policy.clone(),
            to,
        }],
    }]
}

/// `sha256:` and the hex digest of the value's JSON, without its own `digest` field.
fn digest<T: Serialize>(value: &T) -> String {
    let mut json = serde_json::to_value(value).expect("plans are JSON");
    if let Some(obj) = json.as_object_mut() {
        obj.remove("digest");
    }
    let bytes = serde_json::to_vec(&json).expect("plans are JSON");
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_sizes() {
        let cases = [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)];
        for (n, q) in cases {
            assert_eq!(quorum(n), q, "{n}");
        }
    }

    #[test]
    fn mutable_tags() {
        for m in [
            "busybox",
            "busybox:latest",
            "registry:5000/app",
            "r.io/a/b:latest",
        ] {
            assert!(ImageRef::parse(m).unwrap().is_mutable(), "{m}");
        }
        for p in [
            "busybox:1",
            "registry:5000/app:v2",
            "app@sha256:abc",
            "a/b:3.4.23",
        ] {
            assert!(!ImageRef::parse(p).unwrap().is_mutable(), "{p}");
        }
    }
}
