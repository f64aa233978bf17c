//! The reconciler: one per cluster, level-triggered. Each pass takes the cluster's desired
//! definition and its agents' latest reports, plans from the rollout record (`Intent`: what each
//! node was told to run) and either runs the plan's first batch, waits at its gate, or stalls:
//!
//! - a plan with an error finding never runs: the cluster is Stalled with it, at its last
//!   applied revision, until the definition changes;
//! - a batch runs only when every node that is not ready is one of its own: the previous
//!   batch's gate (its nodes converged and healthy) holds, a node whose agent is away holds the
//!   rollout with that reason, and a node that failed (a bad image) can still be fixed by the
//!   batch that replaces its plan;
//! - running a batch changes the record, which is saved before any agent sees the change.
//!
//! `Reconciler::reconcile` is the synchronous core (no IO); `task::run` is the loop around it
//! that saves, publishes to the hub, and waits for the next reason to look again.

pub mod health;
pub mod intent;
pub mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::time::{Duration, SystemTime};

use self::health::{judge, NodeHealth};
use self::intent::Intent;
use crate::api::{
    ClusterNode, ClusterStatus, Condition, ConditionType, PhaseProgress, PlanProgress,
};
use crate::model::Cluster;
use crate::nodeplan::NodeSpec;
use crate::plan::container::desired_nodes;
use crate::plan::{ClusterPlan, Desired, Observed, Planner};
use crate::server::NodeReport;
use crate::source::ClusterEntry;

/// How soon to look again while a rollout is under way (reports also wake the reconciler).
pub const REQUEUE_BUSY: Duration = Duration::from_secs(5);
/// How soon to look again when the cluster is converged or stalled.
pub const REQUEUE_IDLE: Duration = Duration::from_secs(60);

/// What the loop around `reconcile` must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The record changed: save it, then publish the nodes' plans.
    pub save: bool,
    /// Look again after this long at the latest.
    pub requeue: Duration,
}

/// Where a pass left the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ready,
    /// A batch ran, or the rollout waits at a gate; the reason says which.
    Progressing {
        reason: &'static str,
        message: String,
    },
    Stalled {
        reason: &'static str,
        message: String,
    },
}

/// One cluster's reconciler.
pub struct Reconciler {
    name: String,
    intent: Intent,
    /// Bumped whenever the record changes: the planner's cache key with the members' health.
    version: u64,
    planner: Planner,
    /// Every node's full plan, by the definition's digest it was built from.
    specs: Option<(String, BTreeMap<String, NodeSpec>)>,
    conditions: Vec<Condition>,
    status: ClusterStatus,
}

impl Reconciler {
    /// A reconciler resuming from its saved record.
    pub fn new(name: &str, intent: Intent) -> Reconciler {
        Reconciler {
            name: name.to_string(),
            intent,
            version: 0,
            planner: Planner::default(),
            specs: None,
            conditions: Vec::new(),
            status: ClusterStatus {
                name: name.to_string(),
                desired_revision: None,
                applied_revision: None,
                held_back: false,
                conditions: Vec::new(),
                plan: None,
                findings: Vec::new(),
                nodes: Vec::new(),
            },
        }
    }

    pub fn intent(&self) -> &Intent {
        &self.intent
    }

    pub fn status(&self) -> &ClusterStatus {
        &self.status
    }

    /// What each declared node should be told: its recorded plan, or `None` for a node the
    /// rollout has not reached (it is admitted and waits). Nodes being decommissioned are
    /// still listed.
    pub fn declared(&self, cluster: &Cluster) -> BTreeMap<String, Option<NodeSpec>> {
        let mut out: BTreeMap<String, Option<NodeSpec>> = cluster
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), None))
            .collect();
        for (name, node) in &self.intent.nodes {
            out.insert(name.clone(), Some(node.spec.clone()));
        }
        out
    }

    /// One pass. `reports` are the cluster's nodes' latest, by node name.
    pub fn reconcile(
        &mut self,
        entry: &ClusterEntry,
        reports: &BTreeMap<String, NodeReport>,
        now: SystemTime,
    ) -> Action {
        let cluster = &entry.cluster;
        let revision = entry.revision.to_string();
        let before = self.intent.clone();
        let desired = self.desired_specs(cluster);
        self.intent.sync_probes(&desired);
        let health = self.judge(reports);
        let plan = self.plan(cluster, &health);
        let verdict = self.decide(cluster, &desired, &plan, &health, &revision);
        let save = self.intent != before;
        if save {
            self.version += 1;
        }
        let requeue = match verdict {
            Verdict::Progressing { .. } => REQUEUE_BUSY,
            Verdict::Ready | Verdict::Stalled { .. } => REQUEUE_IDLE,
        };
        self.update_status(entry, &plan, &verdict, &health, reports, now);
        Action { save, requeue }
    }

    /// Every node's full plan for this definition, rebuilt only when the definition changed.
    fn desired_specs(&mut self, cluster: &Cluster) -> BTreeMap<String, NodeSpec> {
        let digest = &cluster.source.digest;
        match &self.specs {
            Some((d, specs)) if d == digest => specs.clone(),
            _ => {
                let specs = desired_nodes(cluster);
                self.specs = Some((digest.clone(), specs.clone()));
                specs
            }
        }
    }

    /// Each recorded node against its plan.
    fn judge(&self, reports: &BTreeMap<String, NodeReport>) -> BTreeMap<String, NodeHealth> {
        self.intent
            .nodes
            .iter()
            .map(|(name, node)| {
                let checksum = node.spec.checksum();
                (
                    name.clone(),
                    judge(name, &node.spec, &checksum, reports.get(name)),
                )
            })
            .collect()
    }

    /// The plan from the record, cached while neither the definition, the record nor the
    /// members' health changed.
    fn plan(&mut self, cluster: &Cluster, health: &BTreeMap<String, NodeHealth>) -> ClusterPlan {
        let healthy = |node: &str| health.get(node).is_some_and(NodeHealth::is_ready);
        let observed = self.intent.observed(healthy);
        let mut key = DefaultHasher::new();
        self.version.hash(&mut key);
        for (name, member) in &observed.etcd_members {
            (name, member.healthy).hash(&mut key);
        }
        let keys = BTreeMap::from([(self.name.clone(), key.finish())]);
        let observed = Observed {
            clusters: BTreeMap::from([(self.name.clone(), observed)]),
        };
        let desired = Desired {
            clusters: vec![cluster],
            known_snapshots: None,
            held_back: BTreeSet::new(),
        };
        let mut plan = self
            .planner
            .plan(&desired, &observed, &keys, SystemTime::now());
        plan.clusters.pop().expect("one cluster in, one plan out")
    }

    /// Runs the plan's first batch when its gate allows, and says where that leaves the cluster.
    fn decide(
        &mut self,
        cluster: &Cluster,
        desired: &BTreeMap<String, NodeSpec>,
        plan: &ClusterPlan,
        health: &BTreeMap<String, NodeHealth>,
        revision: &str,
    ) -> Verdict {
        if !plan.errors.is_empty() {
            let message = plan
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>();
            return Verdict::Stalled {
                reason: "UnsafePlan",
                message: format!("the plan is not safe to run: {}", message.join("; ")),
            };
        }
        let mut unready = health.iter().filter(|(_, h)| !h.is_ready());
        let Some(batch) = plan.phases.first().and_then(|p| p.batches.first()) else {
            return match unready.next() {
                None => {
                    self.intent.applied_revision = Some(revision.to_string());
                    Verdict::Ready
                }
                Some((_, h)) => waiting(h),
            };
        };
        if let Some((_, h)) = unready.find(|(n, _)| !batch.nodes.contains(n)) {
            return waiting(h);
        }
        let advanced = match self.intent.advance(cluster, desired, batch, revision) {
            Ok(a) => a,
            Err(e) => {
                return Verdict::Stalled {
                    reason: "Unsupported",
                    message: e.to_string(),
                }
            }
        };
        for node in &advanced.decommission {
            let ready = health.get(node).is_some_and(NodeHealth::is_ready);
            if advanced.changed.contains(node) || !ready {
                continue;
            }
            self.intent.forget(node);
            return Verdict::Progressing {
                reason: "Decommissioned",
                message: format!("{node} was cleaned and its credential revoked"),
            };
        }
        if let Some(node) = advanced.decommission.iter().next() {
            if advanced.changed.is_empty() {
                return match health.get(node) {
                    Some(h) if !h.is_ready() => waiting(h),
                    _ => Verdict::Progressing {
                        reason: "Decommissioning",
                        message: format!("waiting for {node} to be cleaned"),
                    },
                };
            }
        }
        Verdict::Progressing {
            reason: "RollingOut",
            message: format!(
                "rolling out to {}",
                batch.nodes.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn update_status(
        &mut self,
        entry: &ClusterEntry,
        plan: &ClusterPlan,
        verdict: &Verdict,
        health: &BTreeMap<String, NodeHealth>,
        reports: &BTreeMap<String, NodeReport>,
        now: SystemTime,
    ) {
        let (ready, progressing, stalled) = match verdict {
            Verdict::Ready => (
                (
                    true,
                    "Converged",
                    "every node runs its plan, healthy".to_string(),
                ),
                (false, "Converged", String::new()),
                (false, "Converged", String::new()),
            ),
            Verdict::Progressing { reason, message } => (
                (false, *reason, message.clone()),
                (true, *reason, message.clone()),
                (false, *reason, String::new()),
            ),
            Verdict::Stalled { reason, message } => (
                (false, *reason, message.clone()),
                (false, *reason, String::new()),
                (true, *reason, message.clone()),
            ),
        };
        for (kind, (status, reason, message)) in [
            (ConditionType::Ready, ready),
            (ConditionType::Reconciling, progressing),
            (ConditionType::Stalled, stalled),
        ] {
            self.set_condition(kind, status, reason, message, now);
        }
        let waiting_on = match verdict {
            Verdict::Ready => None,
            Verdict::Progressing { message, .. } | Verdict::Stalled { message, .. } => {
                Some(message.clone())
            }
        };
        let cluster = &entry.cluster;
        let mut nodes: Vec<ClusterNode> = cluster
            .nodes
            .iter()
            .map(|n| n.name.to_string())
            .chain(self.intent.nodes.keys().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|name| self.node_row(&name, cluster, health, reports))
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        self.status = ClusterStatus {
            name: self.name.clone(),
            desired_revision: Some(entry.revision.to_string()),
            applied_revision: self.intent.applied_revision.clone(),
            held_back: entry.held_back,
            conditions: self.conditions.clone(),
            plan: progress(plan, waiting_on),
            findings: plan
                .errors
                .iter()
                .map(|e| format!("error: {e}"))
                .chain(plan.warnings.iter().map(|w| format!("warning: {w}")))
                .collect(),
            nodes,
        };
    }

    fn node_row(
        &self,
        name: &str,
        cluster: &Cluster,
        health: &BTreeMap<String, NodeHealth>,
        reports: &BTreeMap<String, NodeReport>,
    ) -> ClusterNode {
        let report = reports.get(name);
        let intent = self.intent.nodes.get(name);
        let address = cluster
            .nodes
            .iter()
            .find(|n| n.name.as_str() == name)
            .map(|n| n.address.to_string())
            .or_else(|| intent.map(|i| i.address.clone()))
            .unwrap_or_default();
        let h = health.get(name);
        ClusterNode {
            name: name.to_string(),
            address,
            connected: report.is_some_and(|r| r.connected),
            generation: None,
            applied_generation: report.and_then(|r| r.applied.as_ref().map(|a| a.generation)),
            revision: intent.map(|i| i.revision.clone()),
            ready: h.is_some_and(NodeHealth::is_ready),
            reason: match h {
                Some(h) => h.reason().map(str::to_string),
                None => Some("not reached by the rollout yet".to_string()),
            },
        }
    }

    /// Sets a condition, keeping `since` while its status holds.
    fn set_condition(
        &mut self,
        kind: ConditionType,
        status: bool,
        reason: &str,
        message: String,
        now: SystemTime,
    ) {
        let since = humantime::format_rfc3339_seconds(now).to_string();
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(c) => {
                if c.status != status {
                    c.since = since;
                }
                c.status = status;
                c.reason = reason.to_string();
                c.message = message;
            }
            None => self.conditions.push(Condition {
                kind,
                status,
                reason: reason.to_string(),
                message,
                since,
            }),
        }
    }
}

/// The verdict while a node is not ready: waiting, or stalled when one of its steps failed.
fn waiting(h: &NodeHealth) -> Verdict {
    match h {
        NodeHealth::Failed(why) => Verdict::Stalled {
            reason: "StepFailed",
            message: why.clone(),
        },
        other => Verdict::Progressing {
            reason: "Waiting",
            message: other.reason().unwrap_or_default().to_string(),
        },
    }
}

/// The plan's phases still to run, or `None` when nothing is left.
fn progress(plan: &ClusterPlan, waiting_on: Option<String>) -> Option<PlanProgress> {
    if plan.phases.is_empty() && waiting_on.is_none() {
        return None;
    }
    Some(PlanProgress {
        digest: plan.digest.clone(),
        phases: plan
            .phases
            .iter()
            .map(|p| PhaseProgress {
                phase: p.kind.title().to_string(),
                batches: p.batches.len(),
                steps: p.batches.iter().map(|b| b.steps.len()).sum(),
            })
            .collect(),
        waiting_on,
    })
}
