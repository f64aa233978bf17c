//! The loops around the reconcilers: `Controller` starts one task per cluster the source
//! declares and ends it when the cluster leaves Git; each task runs one pass at a time, saves
//! the rollout record before the hub publishes a plan from it, and sleeps until its definition
//! changes, one of its agents reports, an operator asks, or its requeue time comes. Errors
//! (the state directory cannot be written) back off exponentially.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::snapshots::RestorePhase;
use crate::api::{ClusterStatus, Condition, ConditionType};
use crate::backoff::Backoff;
use crate::daemon::restore::{Hold, RestoreRequestError, Restores};
use crate::etcd_pki::ClusterCa;
use crate::nodeplan::{SealedSpec, ETCD_COMPONENT};
use crate::protocol::{EtcdMemberInfo, EtcdTask, EtcdTaskOutcome};
use crate::reconcile::intent::{Intent, RecordEncoder};
use crate::reconcile::{Action, Inputs, Reconciler, RestoreCall, REQUEUE_BUSY, REQUEUE_IDLE};
use crate::server::Hub;
use crate::source::{ClusterEntry, DesiredState};
use crate::state::StateError;
use crate::store::DurableState;

/// Reports that arrive together are taken in one pass: a pass waits this long after the first.
pub const COALESCE: Duration = Duration::from_millis(20);
/// The first delay after a pass failed; it doubles up to `ERROR_BACKOFF_MAX`.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(500);
pub const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(60);

const RECORD_PREFIX: &str = "rollout-";
/// How long an etcd task may take, the agent's own bound included.
pub const TASK_LIMIT: Duration = Duration::from_secs(20);

/// The state document of a cluster's rollout record.
pub fn record_name(cluster: &str) -> String {
    format!("{RECORD_PREFIX}{cluster}.json")
}

/// Metrics the reconcilers feed; the daemon registers them.
pub trait Observer: Send + Sync {
    /// A pass of `cluster` took `elapsed`; `failed` when it could not save or publish.
    fn pass(&self, cluster: &str, elapsed: Duration, failed: bool);
}

/// One cluster's task, as the controller holds it.
struct Handle {
    entry: watch::Sender<Option<ClusterEntry>>,
    wake: Arc<Notify>,
    rotate: Arc<AtomicBool>,
    status: watch::Receiver<ClusterStatus>,
    /// Ends the task after its pass (a drain, or ownership lost).
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Starts and ends the per-cluster tasks, and answers for their status.
pub struct Controller {
    hub: Arc<Hub>,
    /// Set once the daemon made it (it needs the snapshot scheduler, made after).
    restores: std::sync::OnceLock<Arc<Restores>>,
    state: DurableState,
    observer: Arc<dyn Observer>,
    clusters: Mutex<HashMap<String, Handle>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Counts the changes of any cluster's status, for those who follow them all.
    changes: watch::Sender<u64>,
    /// The clusters whose revisions need an approved plan.
    approvals: crate::config::RequireApproval,
    /// When several daemons share the state: the clusters this one owns, the only ones it
    /// reconciles (`own`, `disown`). `None`: every declared cluster is this daemon's.
    owned: Option<Mutex<BTreeSet<String>>>,
    /// The desired state last followed, to start an owned cluster's task from.
    last: Mutex<Option<Arc<DesiredState>>>,
    /// Clusters whose task found its fence gone (a write refused): the ownership loop hears.
    lost: tokio::sync::mpsc::UnboundedSender<String>,
    lost_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
}

impl Controller {
    pub fn new(
        hub: Arc<Hub>,
        state: DurableState,
        observer: Arc<dyn Observer>,
        approvals: crate::config::RequireApproval,
        cancel: CancellationToken,
    ) -> Arc<Controller> {
        let (lost, lost_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Controller {
            owned: state.shared().then(|| Mutex::new(BTreeSet::new())),
            hub,
            restores: std::sync::OnceLock::new(),
            state,
            observer,
            clusters: Mutex::new(HashMap::new()),
            cancel,
            tasks: TaskTracker::new(),
            changes: watch::Sender::new(0),
            approvals,
            last: Mutex::new(None),
            lost,
            lost_rx: Mutex::new(Some(lost_rx)),
        })
    }

    /// The clusters whose tasks stopped because their fence was lost; taken once, by the
    /// ownership loop.
    pub fn take_lost(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        self.lost_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Whether this daemon reconciles `cluster` (always, unless several share the state).
    fn owns(&self, cluster: &str) -> bool {
        self.owned.as_ref().is_none_or(|owned| {
            owned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(cluster)
        })
    }

    /// Starts reconciling `cluster`, which this daemon now owns (its fence is in the state).
    pub fn own(self: &Arc<Self>, cluster: &str) {
        if let Some(owned) = &self.owned {
            owned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cluster.to_string());
        }
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(state) = last {
            self.follow(&state);
            self.changed();
        }
    }

    /// Stops reconciling `cluster`: its task finishes the pass it is in (a step sent is
    /// awaited, within the task limit) and ends. Returns once it has.
    pub async fn disown(&self, cluster: &str) {
        if let Some(owned) = &self.owned {
            owned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(cluster);
        }
        let handle = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cluster);
        if let Some(handle) = handle {
            handle.stop.cancel();
            let _ = handle.task.await;
        }
        self.changed();
    }

    /// Stops every cluster's task at once, mid-pass: this daemon may not act any more (its
    /// lease may expire). Returns once they have stopped.
    pub async fn stop_all(&self) {
        if let Some(owned) = &self.owned {
            owned.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        let handles: Vec<Handle> = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for handle in handles {
            handle.stop.cancel();
            handle.task.abort();
            let _ = handle.task.await;
        }
        self.changed();
    }

    /// Wakes on every change of a cluster's status, or of the set of clusters.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Publishes every saved rollout record to the hub, so agents get the plans they were
    /// given before a restart while the source loads. Blocking.
    pub fn resume(&self) -> Result<usize, StateError> {
        if self.owned.is_some() {
            // Shared state: a cluster's plans are published by its owner once it claimed it.
            return Ok(0);
        }
        let names = self.state.names(RECORD_PREFIX)?;
        for name in &names {
            let cluster = &name[RECORD_PREFIX.len()..name.len() - ".json".len()];
            let Some(intent) = self.state.load::<Intent>(name)? else {
                continue;
            };
            let nodes = intent
                .nodes
                .iter()
                .map(|(n, i)| (n.clone(), Some(SealedSpec::shared(i.spec.clone()))))
                .collect();
            if let Err(e) = self.hub.set_cluster(cluster, &nodes) {
                tracing::error!(cluster, error = %crate::error_chain(&e), "cannot publish a saved rollout");
            }
        }
        Ok(names.len())
    }

    /// Follows the source: a task per declared cluster, ended when the cluster leaves Git.
    pub async fn run(self: Arc<Self>, mut desired: watch::Receiver<Arc<DesiredState>>) {
        loop {
            let state = desired.borrow_and_update().clone();
            if state.revision.is_some() {
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(state.clone());
                self.follow(&state);
                self.changed();
            }
            tokio::select! {
                changed = desired.changed() => if changed.is_err() { break },
                () = self.cancel.cancelled() => break,
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn follow(self: &Arc<Self>, state: &DesiredState) {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        for (name, entry) in &state.clusters {
            let name = name.to_string();
            if !self.owns(&name) {
                continue;
            }
            match clusters.get(&name) {
                Some(handle) => {
                    handle.entry.send_if_modified(|old| {
                        let changed = old.as_ref() != Some(entry);
                        *old = Some(entry.clone());
                        changed
                    });
                }
                None => {
                    let handle = self.spawn(&name, entry.clone());
                    clusters.insert(name, handle);
                }
            }
        }
        clusters.retain(|name, handle| {
            let declared = state.clusters.keys().any(|n| n.as_str() == name);
            if !declared {
                handle.entry.send_replace(None);
            }
            declared
        });
    }

    fn spawn(self: &Arc<Self>, name: &str, entry: ClusterEntry) -> Handle {
        let (entry_tx, entry_rx) = watch::channel(Some(entry));
        let wake = Arc::new(Notify::new());
        let rotate = Arc::new(AtomicBool::new(false));
        let (status_tx, status_rx) =
            watch::channel(Reconciler::new(name, Intent::default()).status().clone());
        let stop = self.cancel.child_token();
        let task = ClusterTask {
            stop: stop.clone(),
            name: name.to_string(),
            controller: self.clone(),
            entry: entry_rx,
            wake: wake.clone(),
            rotate: rotate.clone(),
            status: status_tx,
            declared: None,
            held: false,
            ca: None,
        };
        let task = self.tasks.spawn(task.run());
        Handle {
            entry: entry_tx,
            wake,
            rotate,
            status: status_rx,
            stop,
            task,
        }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Hands over the restores, which hold clusters while they run.
    pub fn set_restores(&self, restores: Arc<Restores>) {
        let _ = self.restores.set(restores);
    }

    pub fn restores(&self) -> Option<&Arc<Restores>> {
        self.restores.get()
    }

    /// Every cluster's status, by name.
    pub fn statuses(&self) -> Vec<ClusterStatus> {
        let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ClusterStatus> = clusters
            .values()
            .map(|h| h.status.borrow().clone())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The statuses `keep` accepts, in name order: how many there are, and copies of those
    /// from the `skip`-th on, at most `take` (the last ones when `skip` is past the end). Only
    /// those are copied: a page of a large fleet costs a page, not the fleet.
    pub fn select(
        &self,
        keep: impl Fn(&ClusterStatus) -> bool,
        skip: usize,
        take: usize,
    ) -> (usize, Vec<ClusterStatus>) {
        let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = clusters.keys().collect();
        names.sort();
        let kept: Vec<&Handle> = names
            .into_iter()
            .map(|name| &clusters[name])
            .filter(|h| keep(&h.status.borrow()))
            .collect();
        let total = kept.len();
        let skip = match take {
            0 => skip,
            _ => skip.min(total.saturating_sub(1) / take * take),
        };
        let page = kept
            .into_iter()
            .skip(skip)
            .take(take)
            .map(|h| h.status.borrow().clone())
            .collect();
        (total, page)
    }

    pub fn status(&self, cluster: &str) -> Option<ClusterStatus> {
        let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.get(cluster).map(|h| h.status.borrow().clone())
    }

    /// Asks for a pass of `cluster` now; false when no such cluster is reconciled.
    pub fn reconcile_now(&self, cluster: &str) -> bool {
        let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.get(cluster).map(|h| h.wake.notify_one()).is_some()
    }

    /// Asks for new etcd certificates on every node of `cluster` (see
    /// `Reconciler::request_rotation`), from its next pass, now; false when no such cluster is
    /// reconciled.
    pub fn rotate_certificates(&self, cluster: &str) -> bool {
        let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters
            .get(cluster)
            .map(|h| {
                h.rotate.store(true, Ordering::SeqCst);
                h.wake.notify_one();
            })
            .is_some()
    }
}

struct ClusterTask {
    name: String,
    /// Ends the task between passes: the daemon stops, or the cluster moves away.
    stop: CancellationToken,
    controller: Arc<Controller>,
    entry: watch::Receiver<Option<ClusterEntry>>,
    wake: Arc<Notify>,
    /// An operator asked for new certificates.
    rotate: Arc<AtomicBool>,
    status: watch::Sender<ClusterStatus>,
    /// The nodes last declared to the hub.
    declared: Option<BTreeSet<String>>,
    /// The last pass published a restore's hold: the next one publishes the plans again.
    held: bool,
    ca: Option<Arc<ClusterCa>>,
}

impl ClusterTask {
    async fn run(mut self) {
        let cx = self.controller.clone();
        let mut reports = cx.hub.watch_cluster(&self.name);
        let mut reconciler = match self.load().await {
            Ok(r) => r,
            Err(e) => {
                self.fail_forever(&e);
                return;
            }
        };
        let mut backoff = Backoff::new(ERROR_BACKOFF, ERROR_BACKOFF_MAX);
        let mut only_the_entry_changed = false;
        loop {
            let Some(entry) = self.entry.borrow_and_update().clone() else {
                self.forget().await;
                return;
            };
            if std::mem::take(&mut only_the_entry_changed) && reconciler.follow_unchanged(&entry) {
                // A commit that left this cluster alone: no pass, no write, no etcd round trip.
                self.status.send_replace(self.status_of(&reconciler));
                self.controller.changed();
                tokio::select! {
                    changed = self.entry.changed() => if changed.is_err() { return },
                    changed = reports.changed() => if changed.is_err() { return },
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(REQUEUE_IDLE) => {}
                    () = self.stop.cancelled() => return,
                }
                only_the_entry_changed = self.entry.has_changed().unwrap_or(false);
                continue;
            }
            let started = std::time::Instant::now();
            let outcome = self.pass(&mut reconciler, &entry).await;
            cx.observer
                .pass(&self.name, started.elapsed(), outcome.is_err());
            let delay = match outcome {
                Ok(requeue) => {
                    backoff.reset();
                    requeue
                }
                Err(PassError {
                    fenced: true,
                    message,
                }) => {
                    // Another daemon owns the cluster now: stop at once, write nothing more.
                    tracing::warn!(
                        cluster = self.name,
                        error = message,
                        "this daemon no longer owns the cluster; its reconciler stops"
                    );
                    let _ = cx.lost.send(self.name.clone());
                    return;
                }
                Err(PassError { message, .. }) => {
                    tracing::error!(cluster = self.name, error = %message, "reconcile failed; retrying");
                    self.status.send_modify(|s| failed(s, &message));
                    self.controller.changed();
                    backoff.next_delay()
                }
            };
            tokio::select! {
                changed = self.entry.changed() => {
                    if changed.is_err() { return }
                    only_the_entry_changed = true;
                }
                changed = reports.changed() => {
                    if changed.is_err() { return }
                    tokio::time::sleep(COALESCE).await;
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => return,
            }
            reports.borrow_and_update();
        }
    }

    /// The reconciler, resumed from the saved record.
    async fn load(&self) -> Result<Reconciler, String> {
        let state = self.controller.state.clone();
        let name = record_name(&self.name);
        let intent = tokio::task::spawn_blocking(move || state.load::<Intent>(&name))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| crate::error_chain(&e))?;
        let mut reconciler = Reconciler::new(&self.name, intent.unwrap_or_default());
        reconciler.require_approved_plan(self.controller.approvals.applies_to(&self.name));
        Ok(reconciler)
    }

    /// One pass: ask etcd for its membership, reconcile, run the membership task the pass asks
    /// for (and finish its batch), then save the record and publish the plans when it changed
    /// (or when the definition's list of nodes did).
    async fn pass(
        &mut self,
        reconciler: &mut Reconciler,
        entry: &ClusterEntry,
    ) -> Result<Duration, PassError> {
        let cx = self.controller.clone();
        let restores = cx.restores.get().cloned();
        if let Some(hold) = restores.as_ref().and_then(|r| r.hold(&self.name)) {
            self.publish_held(reconciler, entry, &hold).await?;
            return Ok(REQUEUE_BUSY);
        }
        let ca = self.ca().await?;
        let reports = cx.hub.cluster_reports(&self.name);
        let members = self.members(reconciler, &reports).await;
        let inputs = Inputs {
            entry,
            reports: &reports,
            members: members.as_deref(),
            ca: Some(&ca),
            now: SystemTime::now(),
        };
        if self.rotate.swap(false, Ordering::SeqCst) {
            tracing::info!(cluster = self.name, "certificate rotation requested");
            reconciler.request_rotation();
        }
        let mut action = reconciler.reconcile(&inputs);
        if let (Some(call), Some(restores)) = (action.restore.take(), &restores) {
            if self.restore(reconciler, entry, restores, &call).await {
                action = reconciler.reconcile(&inputs);
                action.save = true;
            }
        }
        if let Some(call) = action.task.take() {
            tracing::info!(
                cluster = self.name,
                agent = call.agent,
                task = call.what,
                "etcd membership change"
            );
            let outcome = cx
                .hub
                .etcd_task(&self.name, &call.agent, call.task.clone(), TASK_LIMIT)
                .await
                .map_err(|e| e.to_string());
            if let Err(error) | Ok(EtcdTaskOutcome::Failed { error }) = &outcome {
                tracing::warn!(
                    cluster = self.name,
                    agent = call.agent,
                    task = call.what,
                    error,
                    "etcd membership change failed; retrying"
                );
            }
            let after = reconciler.task_done(&inputs, outcome);
            action = Action {
                save: action.save || after.save,
                ..after
            };
        }
        self.publish(reconciler, entry, action.save).await?;
        Ok(if action.save {
            Duration::ZERO
        } else {
            action.requeue
        })
    }

    /// Runs the restore Git asks for (once per request id), and hands the reconciler its
    /// outcome once it ended; true when that changed the reconciler.
    async fn restore(
        &self,
        reconciler: &mut Reconciler,
        entry: &ClusterEntry,
        restores: &Arc<Restores>,
        call: &RestoreCall,
    ) -> bool {
        let asked = restores
            .request(
                entry.cluster.clone(),
                &call.snapshot,
                &call.request_id,
                "git",
            )
            .await;
        match asked {
            Ok(None) => false,
            Ok(Some(run)) if run.phase == RestorePhase::Done => {
                reconciler.restore_done(&call.request_id);
                true
            }
            Ok(Some(run)) => {
                let reason = run.error.unwrap_or_else(|| "no reason recorded".into());
                reconciler.restore_failed(&call.request_id, &reason);
                true
            }
            Err(RestoreRequestError::Busy { .. }) => false,
            Err(e) => {
                reconciler.restore_failed(&call.request_id, &crate::error_chain(&e));
                true
            }
        }
    }

    /// Publishes the plans a restore holds the cluster at: with etcd stopped on its members,
    /// or started again; the status says what the restore does.
    async fn publish_held(
        &mut self,
        reconciler: &Reconciler,
        entry: &ClusterEntry,
        hold: &Hold,
    ) -> Result<(), PassError> {
        let mut declared = reconciler.declared(&entry.cluster);
        if hold.etcd_down {
            for sealed in declared.values_mut() {
                let Some(spec) = sealed.as_ref().map(SealedSpec::spec) else {
                    continue;
                };
                if spec.containers.contains_key(ETCD_COMPONENT) {
                    let mut stopped = spec.clone();
                    stopped.containers.remove(ETCD_COMPONENT);
                    stopped.health.remove(ETCD_COMPONENT);
                    stopped.roles.remove(ETCD_COMPONENT);
                    *sealed = Some(SealedSpec::new(stopped));
                }
            }
        }
        let names: BTreeSet<String> = declared.keys().cloned().collect();
        let (hub, name) = (self.controller.hub.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || hub.set_cluster(&name, &declared))
            .await
            .map_err(PassError::task)?
            .map_err(PassError::hub)?;
        self.declared = Some(names);
        self.held = true;
        let mut status = self.status_of(reconciler);
        restoring(&mut status, &hold.message);
        self.status.send_replace(status);
        self.controller.changed();
        Ok(())
    }

    /// The cluster's etcd CA, made the first time.
    async fn ca(&mut self) -> Result<Arc<ClusterCa>, PassError> {
        if let Some(ca) = &self.ca {
            return Ok(ca.clone());
        }
        let state = self.controller.state.clone();
        let name = self.name.clone();
        let ca = tokio::task::spawn_blocking(move || ClusterCa::ensure(&state, &name))
            .await
            .map_err(PassError::task)?
            .map_err(|e| PassError::other(&e))?;
        let ca = Arc::new(ca);
        self.ca = Some(ca.clone());
        Ok(ca)
    }

    /// The membership as a healthy member's agent lists it; `None` when none could be asked.
    async fn members(
        &self,
        reconciler: &Reconciler,
        reports: &BTreeMap<String, crate::reconcile::NodeReport>,
    ) -> Option<Vec<EtcdMemberInfo>> {
        let agent = reconciler.member_agent(reports, None)?;
        let hub = &self.controller.hub;
        match hub
            .etcd_task(&self.name, &agent, EtcdTask::MemberList, TASK_LIMIT)
            .await
        {
            Ok(EtcdTaskOutcome::Members { members }) => Some(members),
            Ok(other) => {
                tracing::debug!(
                    cluster = self.name,
                    agent,
                    ?other,
                    "cannot list etcd members"
                );
                None
            }
            Err(e) => {
                tracing::debug!(cluster = self.name, agent, error = %e, "cannot list etcd members");
                None
            }
        }
    }

    /// Saves the record (when it changed) and publishes the nodes' plans, then the status.
    async fn publish(
        &mut self,
        reconciler: &Reconciler,
        entry: &ClusterEntry,
        save: bool,
    ) -> Result<(), PassError> {
        let cx = self.controller.clone();
        // A restore that began during this pass holds the plans from now on: a pass that
        // started before it must not publish etcd back on the members.
        if let Some(hold) = cx.restores.get().and_then(|r| r.hold(&self.name)) {
            if save {
                self.save_record(reconciler).await?;
            }
            return self.publish_held(reconciler, entry, &hold).await;
        }
        let held = std::mem::take(&mut self.held);
        let same_nodes = (self.declared.as_ref())
            .is_some_and(|names| reconciler.declares_exactly(&entry.cluster, names));
        if save || held || !same_nodes {
            let declared = reconciler.declared(&entry.cluster);
            let names: BTreeSet<String> = declared.keys().cloned().collect();
            let state = cx.state.clone();
            let hub = cx.hub.clone();
            let name = self.name.clone();
            let intent = save.then(|| reconciler.intent().clone());
            let encoder = reconciler.record_encoder();
            tokio::task::spawn_blocking(move || -> Result<(), PassError> {
                if let Some(intent) = intent {
                    write_record(&state, &name, &encoder, intent)?;
                }
                hub.set_cluster(&name, &declared).map_err(PassError::hub)
            })
            .await
            .map_err(PassError::task)??;
            self.declared = Some(names);
        }
        self.status.send_replace(self.status_of(reconciler));
        self.controller.changed();
        Ok(())
    }

    /// Saves the rollout record.
    async fn save_record(&self, reconciler: &Reconciler) -> Result<(), PassError> {
        let (state, name) = (self.controller.state.clone(), self.name.clone());
        let intent = reconciler.intent().clone();
        let encoder = reconciler.record_encoder();
        tokio::task::spawn_blocking(move || write_record(&state, &name, &encoder, intent))
            .await
            .map_err(PassError::task)?
    }

    /// The reconciler's status with the generation the hub handed each node.
    fn status_of(&self, reconciler: &Reconciler) -> ClusterStatus {
        let mut status = reconciler.status().clone();
        for node in &mut status.nodes {
            node.generation = self.controller.hub.generation(&self.name, &node.name);
        }
        status
    }

    /// The cluster left Git: its nodes are refused from now on. What runs stays.
    async fn forget(&self) {
        let hub = self.controller.hub.clone();
        let name = self.name.clone();
        let outcome =
            tokio::task::spawn_blocking(move || hub.set_cluster(&name, &BTreeMap::new())).await;
        if let Ok(Err(e)) = outcome {
            tracing::error!(cluster = self.name, error = %crate::error_chain(&e), "cannot forget a cluster's nodes");
        }
        tracing::info!(
            cluster = self.name,
            "the cluster left Git; its nodes are no longer managed"
        );
    }

    /// The record cannot be read: nothing is safe to do for this cluster until an operator
    /// fixes it; say so and stay stalled.
    fn fail_forever(&self, error: &str) {
        tracing::error!(
            cluster = self.name,
            error,
            "cannot read the cluster's rollout record"
        );
        self.status.send_modify(|s| failed(s, error));
        self.controller.changed();
    }
}

/// Why a pass failed: `fenced` when a write was refused because the cluster is no longer
/// this daemon's (see `store`).
#[derive(Debug)]
struct PassError {
    message: String,
    fenced: bool,
}

impl PassError {
    fn other(e: &dyn std::error::Error) -> PassError {
        PassError {
            message: crate::error_chain(e),
            fenced: false,
        }
    }

    fn state(e: StateError) -> PassError {
        PassError {
            fenced: matches!(e, StateError::Fenced { .. }),
            message: crate::error_chain(&e),
        }
    }

    fn hub(e: crate::server::hub::HubError) -> PassError {
        match e {
            crate::server::hub::HubError::State(e) => PassError::state(e),
        }
    }

    fn task(e: tokio::task::JoinError) -> PassError {
        PassError::other(&e)
    }
}

/// Saves `cluster`'s rollout record, encoded by its reconciler's encoder, under the cluster's
/// fence. Blocking.
fn write_record(
    state: &DurableState,
    cluster: &str,
    encoder: &Mutex<RecordEncoder>,
    intent: Intent,
) -> Result<(), PassError> {
    let json = encoder
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .encode(intent);
    state
        .save_encoded_for(cluster, &record_name(cluster), &json)
        .map_err(PassError::state)
}

/// Marks a status as a restore's: Reconciling, with what the restore does.
fn restoring(status: &mut ClusterStatus, message: &str) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    for (kind, holds) in [
        (ConditionType::Ready, false),
        (ConditionType::Reconciling, true),
        (ConditionType::Stalled, false),
    ] {
        status.conditions.retain(|c| c.kind != kind);
        status.conditions.push(Condition {
            kind,
            status: holds,
            reason: "Restoring".into(),
            message: message.to_string(),
            since: now.clone(),
        });
    }
}

/// Marks a status stalled by an error of the daemon's own.
fn failed(status: &mut ClusterStatus, error: &str) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    status
        .conditions
        .retain(|c| c.kind != ConditionType::Stalled);
    status.conditions.push(Condition {
        kind: ConditionType::Stalled,
        status: true,
        reason: "DaemonError".into(),
        message: error.to_string(),
        since: now,
    });
}
