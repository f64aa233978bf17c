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

pub mod approval;
pub mod certs;
pub mod health;
pub mod intent;
pub mod membership;
pub mod progress;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use self::health::NodeReport;
use self::health::{judge_sealed, NodeHealth};
use self::intent::Intent;
pub use self::membership::TaskCall;
use crate::api::{ClusterNode, ClusterStatus, Condition, ConditionType};
use crate::backoff::Backoff;
use crate::etcd_pki::ClusterCa;
use crate::model::Cluster;
use crate::nodeplan::{NodeSpec, SealedSpec};
use crate::plan::container::desired_nodes;
use crate::plan::{ClusterPlan, Planner};
use crate::protocol::{EtcdMemberInfo, EtcdTaskOutcome};
use crate::source::ClusterEntry;

/// How soon to look again while a rollout is under way (reports also wake the reconciler).
pub const REQUEUE_BUSY: Duration = Duration::from_secs(5);
/// How soon to look again when the cluster is converged or stalled.
pub const REQUEUE_IDLE: Duration = Duration::from_secs(60);

/// The first retry of a failed etcd task comes within this; each failure doubles it.
const TASK_RETRY_BASE: Duration = Duration::from_secs(2);
/// Retries of a failing etcd task never wait longer than this.
const TASK_RETRY_CAP: Duration = Duration::from_secs(60);
/// After this many failures in a row, the cluster is Stalled (it still retries).
const TASK_FAILURES_STALL: u32 = 5;

/// What a pass reads.
pub struct Inputs<'a> {
    pub entry: &'a ClusterEntry,
    /// The cluster's nodes' latest reports, by node name.
    pub reports: &'a BTreeMap<String, NodeReport>,
    /// The membership as etcd lists it, when a healthy member could be asked.
    pub members: Option<&'a [EtcdMemberInfo]>,
    /// The cluster's etcd CA, which issues and renews node certificates.
    pub ca: Option<&'a ClusterCa>,
    pub now: SystemTime,
}

/// What the loop around `reconcile` must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The record changed: save it, then publish the nodes' plans.
    pub save: bool,
    /// Look again after this long at the latest.
    pub requeue: Duration,
    /// Run this etcd task, then hand its outcome to `Reconciler::task_done`.
    pub task: Option<TaskCall>,
    /// The restore the plan starts with: run it (once per request id), then hand its outcome
    /// to `restore_done` or `restore_failed`.
    pub restore: Option<RestoreCall>,
}

/// A restore requested in Git, as the plan's first step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreCall {
    pub snapshot: String,
    pub request_id: String,
}

/// The rest of a batch, waiting for its membership task.
#[derive(Debug, Clone)]
struct Pending {
    steps: Vec<crate::plan::Step>,
    revision: String,
    what: String,
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
    specs: Option<(String, std::sync::Arc<BTreeMap<String, NodeSpec>>)>,
    conditions: Vec<Condition>,
    status: ClusterStatus,
    pending: Option<Pending>,
    /// The last plan, for the status of a pass that only finished a task.
    last_plan: Option<Arc<ClusterPlan>>,
    /// Delays between attempts of a failing etcd task; reset when one succeeds.
    task_retry: Backoff,
    /// A restore request that ended in failure, and why: the cluster stalls on it until Git
    /// changes the request.
    failed_restore: Option<(String, String)>,
    /// The record changed outside a pass (an operator's request): the next pass saves it.
    unsaved: bool,
    /// The record's encoder, which keeps each node's encoded part between saves.
    encoder: std::sync::Arc<std::sync::Mutex<intent::RecordEncoder>>,
    /// Each recorded node's plan with its checksum, resealed only when the plan changed.
    sealed: std::sync::Mutex<BTreeMap<String, SealedSpec>>,
    /// A revision's plan runs only when its commit approves it (`requireApprovedPlan`).
    require_approval: bool,
    /// The revision and definition the cluster last converged at since the daemon started:
    /// the base of the plan a reviewer saw.
    converged: Option<(String, std::sync::Arc<Cluster>)>,
    /// Why the last pass held the revision for an approved plan.
    hold: Option<crate::api::PlanHold>,
    /// The revision being rolled out and its plan when the rollout started, to draw each
    /// step's state; cleared once the cluster is ready.
    rollout: Option<(String, Arc<ClusterPlan>)>,
    /// What runs as the planner sees it, kept between passes.
    observed: intent::ObservedCache,
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
            pending: None,
            last_plan: None,
            task_retry: Backoff::new(TASK_RETRY_BASE, TASK_RETRY_CAP),
            failed_restore: None,
            unsaved: false,
            encoder: std::sync::Arc::default(),
            sealed: std::sync::Mutex::new(BTreeMap::new()),
            require_approval: false,
            converged: None,
            hold: None,
            rollout: None,
            observed: intent::ObservedCache::default(),
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
                snapshots: None,
                hold: None,
            },
        }
    }

    /// From now on, a revision's plan runs only when its commit approves that plan.
    pub fn require_approved_plan(&mut self, on: bool) {
        self.require_approval = on;
    }

    pub fn intent(&self) -> &Intent {
        &self.intent
    }

    /// What encodes the record for a save (`RecordEncoder::encode`), off the async workers.
    pub fn record_encoder(&self) -> std::sync::Arc<std::sync::Mutex<intent::RecordEncoder>> {
        self.encoder.clone()
    }

    pub fn status(&self) -> &ClusterStatus {
        &self.status
    }

    /// What each declared node should be told: its recorded plan, or `None` for a node the
    /// rollout has not reached (it is admitted and waits). Nodes being decommissioned are
    /// still listed.
    pub fn declared(&self, cluster: &Cluster) -> BTreeMap<String, Option<SealedSpec>> {
        let mut out: BTreeMap<String, Option<SealedSpec>> = cluster
            .nodes
            .iter()
            .map(|n| (n.name.to_string(), None))
            .collect();
        for name in self.intent.nodes.keys() {
            out.insert(name.clone(), self.sealed(name));
        }
        self.lock_sealed()
            .retain(|name, _| self.intent.nodes.contains_key(name));
        out
    }

    /// Whether `declared(cluster)` lists exactly `names`; cheaper than asking it.
    pub fn declares_exactly(&self, cluster: &Cluster, names: &BTreeSet<String>) -> bool {
        let new = cluster
            .nodes
            .iter()
            .filter(|n| !self.intent.nodes.contains_key(n.name.as_str()))
            .count();
        names.len() == self.intent.nodes.len() + new
            && self.intent.nodes.keys().all(|n| names.contains(n))
            && cluster
                .nodes
                .iter()
                .all(|n| names.contains(n.name.as_str()))
    }

    /// `node`'s recorded plan, sealed: its checksum is computed again only when it changed.
    fn sealed(&self, node: &str) -> Option<SealedSpec> {
        let spec = &self.intent.nodes.get(node)?.spec;
        let mut memo = self.lock_sealed();
        if let Some(memo) = memo.get_mut(node) {
            *memo = SealedSpec::reseal(Some(memo), spec);
            return Some(memo.clone());
        }
        let sealed = SealedSpec::reseal(None, spec);
        memo.insert(node.to_string(), sealed.clone());
        Some(sealed)
    }

    fn lock_sealed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SealedSpec>> {
        self.sealed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every node's etcd certificates are to be issued anew (`drover cert rotate`): nodes
    /// that run no member at once, running members one at a time while every node is ready,
    /// each restarting on its new certificates. The request is saved with the next pass.
    pub fn request_rotation(&mut self) {
        self.intent.cert_rotation += 1;
        self.unsaved = true;
    }

    /// The restore of `request_id` completed: the plan no longer starts with it. Saved with
    /// the next pass.
    pub fn restore_done(&mut self, request_id: &str) {
        if self.intent.restores_done.insert(request_id.to_string()) {
            self.unsaved = true;
        }
        self.failed_restore = None;
    }

    /// The restore of `request_id` failed for good: the cluster is Stalled with `reason`
    /// while Git still asks for it.
    pub fn restore_failed(&mut self, request_id: &str, reason: &str) {
        self.failed_restore = Some((request_id.to_string(), reason.to_string()));
    }

    /// Follows a new revision whose definition of this cluster is the one the last pass
    /// found converged: the status takes the revision without a pass (no planning, no etcd
    /// round trip, no write). False, changing nothing, when a pass is needed.
    pub fn follow_unchanged(&mut self, entry: &ClusterEntry) -> bool {
        let ready = self
            .status
            .conditions
            .iter()
            .any(|c| c.kind == ConditionType::Ready && c.status);
        let same = self
            .specs
            .as_ref()
            .is_some_and(|(digest, _)| *digest == entry.cluster.source.digest);
        if !ready || !same || entry.held_back || self.status.held_back || self.unsaved {
            return false;
        }
        let revision = entry.revision.to_string();
        self.intent.applied_revision = Some(revision.clone());
        self.status.desired_revision = Some(revision.clone());
        self.status.applied_revision = Some(revision.clone());
        self.converged = Some((revision, entry.cluster.clone()));
        true
    }

    /// One pass.
    pub fn reconcile(&mut self, inputs: &Inputs<'_>) -> Action {
        let cluster = &inputs.entry.cluster;
        let revision = inputs.entry.revision.to_string();
        let before = self.intent.clone();
        let desired = self.desired_specs(cluster);
        self.intent.sync_probes(&desired);
        let health = self.judge(inputs.reports);
        let renewal = inputs
            .ca
            .and_then(|ca| certs::issue(&mut self.intent, cluster, ca, &health, inputs.now));
        let plan = self.plan(cluster, &health, inputs.members);
        self.pending = None;
        let (mut task, mut restore) = (None, None);
        let verdict = match renewal {
            Some(verdict) => verdict,
            None => self.decide(
                cluster,
                &desired,
                &plan,
                &health,
                inputs,
                &revision,
                &mut task,
                &mut restore,
            ),
        };
        Action {
            restore,
            ..self.finish(inputs, &plan, &verdict, &health, before, task)
        }
    }

    /// Hands the outcome of the task the last pass asked for to the rest of its batch.
    pub fn task_done(
        &mut self,
        inputs: &Inputs<'_>,
        outcome: Result<EtcdTaskOutcome, String>,
    ) -> Action {
        let cluster = &inputs.entry.cluster;
        let before = self.intent.clone();
        let health = self.judge(inputs.reports);
        let plan = self
            .last_plan
            .clone()
            .unwrap_or_else(|| self.plan(cluster, &health, inputs.members));
        let Some(pending) = self.pending.take() else {
            // Nothing waited for it (a pass ran in between): look afresh.
            return self.reconcile(inputs);
        };
        let failed = match outcome {
            Ok(EtcdTaskOutcome::Failed { error }) => Some(error),
            Err(error) => Some(error),
            Ok(_) => None,
        };
        let Some(error) = failed else {
            self.task_retry.reset();
            let desired = self.desired_specs(cluster);
            let verdict =
                match self
                    .intent
                    .advance(cluster, &desired, &pending.steps, &pending.revision)
                {
                    Ok(_) => Verdict::Progressing {
                        reason: "RollingOut",
                        message: format!("{}: done", pending.what),
                    },
                    Err(e) => Verdict::Stalled {
                        reason: "Unsupported",
                        message: e.to_string(),
                    },
                };
            return self.finish(inputs, &plan, &verdict, &health, before, None);
        };
        // A failed task changed nothing we know of: the next pass lists the members again and
        // asks afresh, after a backoff.
        let delay = self.task_retry.next_delay().max(Duration::from_millis(100));
        let failures = self.task_retry.attempt();
        let message = format!(
            "{} failed ({failures} in a row; retrying within {}s): {error}",
            pending.what,
            delay.as_secs().max(1)
        );
        let verdict = if failures >= TASK_FAILURES_STALL {
            Verdict::Stalled {
                reason: "EtcdTaskFailed",
                message,
            }
        } else {
            Verdict::Progressing {
                reason: "EtcdTaskFailed",
                message,
            }
        };
        Action {
            requeue: delay,
            ..self.finish(inputs, &plan, &verdict, &health, before, None)
        }
    }

    /// Saves when the record changed, updates the status, and says when to look again.
    fn finish(
        &mut self,
        inputs: &Inputs<'_>,
        plan: &Arc<ClusterPlan>,
        verdict: &Verdict,
        health: &BTreeMap<String, NodeHealth>,
        before: Intent,
        task: Option<TaskCall>,
    ) -> Action {
        // The applied revision alone is not worth a write: after a restart the first pass
        // that finds the cluster converged sets it again. A cluster whose definition a commit
        // did not change thus costs no write at all.
        let save = {
            let mut was = before;
            was.applied_revision
                .clone_from(&self.intent.applied_revision);
            self.intent != was || std::mem::take(&mut self.unsaved)
        };
        if save {
            self.version += 1;
        }
        let requeue = match verdict {
            Verdict::Progressing { .. } => REQUEUE_BUSY,
            Verdict::Ready | Verdict::Stalled { .. } => REQUEUE_IDLE,
        };
        self.update_status(
            inputs.entry,
            plan,
            verdict,
            health,
            inputs.reports,
            inputs.now,
        );
        self.last_plan = Some(plan.clone());
        Action {
            save,
            requeue,
            task,
            restore: None,
        }
    }

    /// A healthy etcd member's node to ask (the membership, tasks), other than `except`.
    pub fn member_agent(
        &self,
        reports: &BTreeMap<String, NodeReport>,
        except: Option<&str>,
    ) -> Option<String> {
        self.intent
            .members
            .keys()
            .filter(|m| Some(m.as_str()) != except)
            .find(|m| self.judge_node(m, reports).is_some_and(|h| h.is_ready()))
            .cloned()
    }

    /// Every node's full plan for this definition, rebuilt only when the definition changed.
    fn desired_specs(&mut self, cluster: &Cluster) -> std::sync::Arc<BTreeMap<String, NodeSpec>> {
        let digest = &cluster.source.digest;
        match &self.specs {
            Some((d, specs)) if d == digest => specs.clone(),
            _ => {
                let specs = std::sync::Arc::new(desired_nodes(cluster));
                self.specs = Some((digest.clone(), specs.clone()));
                specs
            }
        }
    }

    /// Each recorded node against its plan.
    fn judge(&self, reports: &BTreeMap<String, NodeReport>) -> BTreeMap<String, NodeHealth> {
        self.intent
            .nodes
            .keys()
            .filter_map(|name| Some((name.clone(), self.judge_node(name, reports)?)))
            .collect()
    }

    /// One recorded node against its plan; `None` when it has no record.
    fn judge_node(&self, name: &str, reports: &BTreeMap<String, NodeReport>) -> Option<NodeHealth> {
        let sealed = self.sealed(name)?;
        Some(judge_sealed(name, &sealed, reports.get(name)))
    }

    /// The plan from the record, cached while neither the definition, the record nor the
    /// members' health changed.
    fn plan(
        &mut self,
        cluster: &Cluster,
        health: &BTreeMap<String, NodeHealth>,
        listed: Option<&[EtcdMemberInfo]>,
    ) -> Arc<ClusterPlan> {
        let healthy = |node: &str| health.get(node).is_some_and(NodeHealth::is_ready);
        let members = membership::observed(listed, &self.intent, cluster, healthy);
        let mut key = DefaultHasher::new();
        self.version.hash(&mut key);
        for (name, member) in &members {
            (name, member.healthy).hash(&mut key);
        }
        let specs = self.desired_specs(cluster);
        let (intent, cache) = (&self.intent, &mut self.observed);
        self.planner.plan_one(cluster, &specs, key.finish(), || {
            intent.observed_in(members, cache)
        })
    }

    /// Runs the plan's first batch when its gate allows, and says where that leaves the cluster.
    /// A batch that starts with a membership change asks for its task (`task`) and keeps the
    /// rest for `task_done`.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        cluster: &Cluster,
        desired: &BTreeMap<String, NodeSpec>,
        plan: &ClusterPlan,
        health: &BTreeMap<String, NodeHealth>,
        inputs: &Inputs<'_>,
        revision: &str,
        task: &mut Option<TaskCall>,
        restore: &mut Option<RestoreCall>,
    ) -> Verdict {
        if let Some(hold) = self.unapproved(inputs.entry, plan) {
            let message = approval::summary(&hold);
            self.hold = Some(hold);
            return Verdict::Stalled {
                reason: "PlanNotApproved",
                message,
            };
        }
        if let Some(verdict) = self.restore_first(plan, restore) {
            return verdict;
        }
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
                    self.converged = Some((revision.to_string(), inputs.entry.cluster.clone()));
                    Verdict::Ready
                }
                Some((_, h)) => waiting(h),
            };
        };
        if let Some((_, h)) = unready.find(|(n, _)| !batch.nodes.contains(n)) {
            return waiting(h);
        }
        if let Some(first) = batch.steps.first() {
            let target = batch.nodes.first().map(String::as_str);
            let agent = self.member_agent(inputs.reports, target);
            let call = match (
                membership::task_for(first, inputs.members, cluster, ""),
                agent,
            ) {
                (None, _) => None,
                (Some(_), None) => {
                    return Verdict::Progressing {
                        reason: "Waiting",
                        message: "waiting for a healthy etcd member to run the membership change"
                            .into(),
                    }
                }
                (Some(Err(why)), _) => {
                    return Verdict::Stalled {
                        reason: "EtcdMembership",
                        message: why,
                    }
                }
                (Some(Ok(call)), Some(agent)) => Some(TaskCall { agent, ..call }),
            };
            if let Some(call) = call {
                let message = call.what.clone();
                self.pending = Some(Pending {
                    steps: batch.steps.clone(),
                    revision: revision.to_string(),
                    what: call.what.clone(),
                });
                *task = Some(call);
                return Verdict::Progressing {
                    reason: "EtcdMembership",
                    message,
                };
            }
        }
        let advanced = match self
            .intent
            .advance(cluster, desired, &batch.steps, revision)
        {
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
            message: format!("rolling out to {}", batch.nodes.join(", ")),
        }
    }

    /// What holds the plan back: nothing, unless an approval is required and the revision
    /// does not approve it. Clears the last hold.
    fn unapproved(
        &mut self,
        entry: &ClusterEntry,
        plan: &ClusterPlan,
    ) -> Option<crate::api::PlanHold> {
        self.hold = None;
        if !self.require_approval {
            return None;
        }
        let converged = self.converged.as_ref().map(|(r, c)| (r.as_str(), &**c));
        approval::hold(&mut self.intent, entry, plan, converged)
    }

    /// A plan that starts with a restore runs it first, whatever else it finds (a lost quorum
    /// is what a restore is for): the loop runs it, or the cluster stalls on its failure.
    fn restore_first(
        &self,
        plan: &ClusterPlan,
        restore: &mut Option<RestoreCall>,
    ) -> Option<Verdict> {
        let first = plan.phases.first()?.batches.first()?.steps.first()?;
        let crate::plan::Step::RestoreSnapshot {
            snapshot,
            request_id,
        } = first
        else {
            return None;
        };
        if let Some((failed, reason)) = &self.failed_restore {
            if failed == request_id {
                return Some(Verdict::Stalled {
                    reason: "RestoreFailed",
                    message: format!(
                        "the restore of snapshot {snapshot} (request {request_id}) failed: {reason}; commit a new request id to try again"
                    ),
                });
            }
        }
        *restore = Some(RestoreCall {
            snapshot: snapshot.clone(),
            request_id: request_id.clone(),
        });
        Some(Verdict::Progressing {
            reason: "Restoring",
            message: format!("restoring etcd from snapshot {snapshot} (request {request_id})"),
        })
    }

    fn update_status(
        &mut self,
        entry: &ClusterEntry,
        plan: &Arc<ClusterPlan>,
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
        let revision = entry.revision.to_string();
        match verdict {
            Verdict::Ready => self.rollout = None,
            _ if plan.steps().next().is_some()
                && self.rollout.as_ref().is_none_or(|(r, _)| *r != revision) =>
            {
                self.rollout = Some((revision, plan.clone()));
            }
            _ => {}
        }
        let started = self.rollout.as_ref().map(|(_, p)| &**p);
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
            plan: progress::progress(started, plan, health, waiting_on),
            findings: plan
                .errors
                .iter()
                .map(|e| format!("error: {e}"))
                .chain(plan.warnings.iter().map(|w| format!("warning: {w}")))
                .collect(),
            nodes,
            snapshots: None,
            hold: self.hold.clone(),
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
