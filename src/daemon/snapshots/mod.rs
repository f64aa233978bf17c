//! The daemon's etcd snapshots: each cluster's scheduled snapshots (`Scheduler`), snapshots and
//! prunes an operator asks for, and what status and metrics show of them.
//!
//! - One run per cluster at a time, scheduled or asked for; a scheduled run that fails is
//!   retried after 10 s, then twice as long each time, up to the schedule's period.
//! - After each snapshot saved, the cluster's retention runs, keeping the newest verified one.
//! - When the scheduler first sees a cluster it reads the newest snapshot in the store, so a
//!   restarted daemon keeps the schedule rather than start it over. With several daemons it
//!   reads it again each time this daemon takes the cluster (a new fence): another daemon may
//!   have run the schedule meanwhile, and a run it took must not be taken again here.

pub mod offer;
pub mod record;
pub mod routes;
pub mod take;
pub mod verify;
pub mod views;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use object_store::ObjectStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::take::{take, TakeError};
use crate::api::snapshots::{SnapshotFailure, SnapshotSchedule, Verification};
use crate::api::{ClusterStatus, Condition, ConditionType};
use crate::daemon::metrics::Metrics;
use crate::model::{ClusterName, Role, SnapshotPolicy, StoreName};
use crate::snapshot::manifest::Manifest;
use crate::snapshot::retention::{self, PruneReport};
use crate::snapshot::{download, schedule, StoreError};
use crate::source::{ClusterEntry, DesiredState};
use crate::state::StateError;
use crate::store::{DurableState, Fence};

/// How often the scheduler looks for due snapshots.
const TICK: Duration = Duration::from_secs(1);
/// The first retry after a failed run; each next one waits twice as long, up to the
/// schedule's own period.
const RETRY_BASE: Duration = Duration::from_secs(10);

/// Why a snapshot, a prune or a listing an operator asked for was not done.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no cluster named {0} is declared in Git")]
    UnknownCluster(String),
    #[error("cluster {0} has no snapshot policy (spec.etcd.snapshots names its store)")]
    NoPolicy(String),
    #[error("cluster {cluster}'s snapshot policy names store {store}, which the daemon's configuration does not define")]
    NoStore { cluster: String, store: String },
    #[error("`{0}` is not a snapshot id (`<UTC time>-<revision>-<8 hex digits>`)")]
    BadId(String),
    #[error("cluster {0} has no snapshot in its store")]
    NoSnapshot(String),
    #[error("a snapshot of {0} is being taken now; ask again when it is done")]
    Busy(String),
    #[error("the daemon is stopping")]
    Stopping,
    #[error(
        "a restore of {0} is running; its snapshots are neither taken nor pruned until it ends"
    )]
    Restoring(String),
    #[error("the snapshot was not taken: {0}")]
    Take(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Download(#[from] download::DownloadError),
    #[error("the daemon's snapshot record")]
    State(#[from] StateError),
}

/// What the scheduler knows of one cluster's snapshots.
#[derive(Debug, Clone, Default)]
struct ClusterSnapshots {
    /// When the last run started, whatever came of it.
    last_run: Option<SystemTime>,
    /// The newest snapshot saved (this run of the daemon, or found in the store).
    last_success: Option<Manifest>,
    last_failure: Option<(SystemTime, String)>,
    /// Runs failed in a row since the last success.
    failures: u32,
    last_verification: Option<Verification>,
    /// When the scheduler first saw the cluster's policy.
    since: Option<SystemTime>,
    running: bool,
    /// Bytes received from the member by the run in progress.
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The newest snapshot in the store was looked up (or could not be).
    seeded: bool,
    seeding: bool,
    /// Why no snapshot can be taken at all.
    blocked: Option<String>,
    /// The `SnapshotOverdue` condition's status, and since when it holds.
    condition: Option<(bool, SystemTime)>,
    /// A restore holds the cluster: no snapshot is taken or pruned.
    restoring: bool,
    /// The newest restore drill (a deep verification the policy asks for), and whether one
    /// runs now.
    last_drill: Option<Verification>,
    drilling: bool,
    /// The fence this daemon held the cluster under when it last forgot what it knew of the
    /// runs, to read the schedule from the store again (`None` on a state one daemon uses).
    fence: Option<Fence>,
}

impl ClusterSnapshots {
    /// The cluster was taken under `fence`, a newer one than the schedule was read under:
    /// forget what this daemon knew of the runs, which another daemon may have continued, so
    /// that the schedule is read from the store again. What runs here now is kept.
    fn retake(&mut self, fence: Option<Fence>) {
        *self = ClusterSnapshots {
            running: self.running,
            received: self.received.take(),
            restoring: self.restoring,
            drilling: self.drilling,
            condition: self.condition,
            blocked: self.blocked.take(),
            fence,
            ..ClusterSnapshots::default()
        };
    }

    /// When the next run is due: on the schedule after a success, sooner after a failure.
    fn next_due(&self, policy: &SnapshotPolicy, cluster: &str, now: SystemTime) -> SystemTime {
        let since = self.since.unwrap_or(now);
        let on_schedule = schedule::next_due(&policy.schedule, cluster, self.last_run, since, now);
        match (self.failures, self.last_run) {
            (0, _) | (_, None) => on_schedule,
            (n, Some(last)) => {
                let retry = RETRY_BASE.saturating_mul(1 << (n - 1).min(16));
                on_schedule.min(last + retry)
            }
        }
    }

    /// When the next restore drill is due, if the policy asks for drills: `every` after the
    /// last one (or after the policy was first seen).
    fn next_drill(&self, policy: &SnapshotPolicy, now: SystemTime) -> Option<SystemTime> {
        let every = policy.drill_every?;
        let last = self
            .last_drill
            .as_ref()
            .and_then(|v| humantime::parse_rfc3339(&v.at).ok());
        Some(last.or(self.since).unwrap_or(now) + every)
    }

    /// How long past twice the schedule's period the newest snapshot is.
    fn overdue(&self, policy: &SnapshotPolicy, now: SystemTime) -> Option<Duration> {
        let newest = self.last_success.as_ref().map(|m| m.finished_at);
        schedule::overdue(&policy.schedule, newest, self.since.unwrap_or(now), now)
    }
}

/// What one snapshot of a cluster needs.
struct Target {
    cluster: ClusterName,
    image: String,
    policy: SnapshotPolicy,
    store: Arc<dyn ObjectStore>,
    members: Vec<String>,
    commit: String,
}

/// Takes each cluster's snapshots on its policy's schedule (and when asked), one at a time per
/// cluster, into the store the policy names, and prunes after each one saved.
pub struct Scheduler {
    hub: Arc<crate::server::Hub>,
    stores: BTreeMap<StoreName, Arc<dyn ObjectStore>>,
    state: DurableState,
    desired: watch::Receiver<Arc<DesiredState>>,
    metrics: Arc<Metrics>,
    clusters: Mutex<BTreeMap<String, ClusterSnapshots>>,
    runs: TaskTracker,
    cancel: CancellationToken,
}

impl Scheduler {
    pub fn new(
        hub: Arc<crate::server::Hub>,
        stores: BTreeMap<StoreName, Arc<dyn ObjectStore>>,
        state: DurableState,
        desired: watch::Receiver<Arc<DesiredState>>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            hub,
            stores,
            state,
            desired,
            metrics,
            clusters: Mutex::new(BTreeMap::new()),
            runs: TaskTracker::new(),
            cancel,
        })
    }

    /// Starts every due snapshot, each second, until cancelled; then waits for the runs.
    pub async fn run(self: Arc<Self>) {
        loop {
            let state = self.desired.borrow().clone();
            for entry in state.clusters.values() {
                self.start_if_due(entry);
            }
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(TICK) => {}
            }
        }
        self.runs.close();
        self.runs.wait().await;
    }

    /// Takes a snapshot of `cluster` now and answers its manifest once it is stored.
    pub async fn save_now(self: &Arc<Self>, cluster: &str) -> Result<Manifest, RequestError> {
        let target = self.target(cluster)?;
        self.begin(cluster, SystemTime::now())?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        // A task of its own: the save goes on (and is recorded) if the asker goes away.
        self.runs.spawn(async move {
            let _ = tx.send(me.run_once(target).await);
        });
        match rx.await {
            Ok(outcome) => outcome.map_err(RequestError::Take),
            Err(_) => Err(RequestError::Stopping),
        }
    }

    /// Runs `cluster`'s retention now; with `dry_run`, deletes nothing.
    pub async fn prune_now(
        &self,
        cluster: &str,
        dry_run: bool,
    ) -> Result<PruneReport, RequestError> {
        let target = self.target(cluster)?;
        self.prune(&target, dry_run).await
    }

    /// The manifests of `cluster`'s snapshots, newest first, and its record.
    pub async fn list(
        &self,
        cluster: &str,
    ) -> Result<(Vec<Manifest>, record::SnapshotRecord), RequestError> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let target = self.target(cluster)?;
        let ids = crate::snapshot::list(target.store.as_ref(), &target.cluster).await?;
        let store = target.store.clone();
        let name = target.cluster.clone();
        let manifests: Vec<Manifest> = futures::stream::iter(ids.into_iter().rev())
            .map(|id| {
                let (store, name) = (store.clone(), name.clone());
                async move { download::read_manifest(store.as_ref(), &name, &id).await }
            })
            .buffered(16)
            .try_collect()
            .await?;
        let record = record::load(&self.state, cluster).await?;
        Ok((manifests, record))
    }

    /// Records a verification of one of `cluster`'s snapshots, in the record and the metrics.
    pub async fn verified(
        &self,
        cluster: &str,
        verification: Verification,
    ) -> Result<(), StateError> {
        let label = crate::daemon::metrics::OutcomeLabel {
            cluster: cluster.to_string(),
            outcome: if verification.passed {
                "passed"
            } else {
                "failed"
            },
        };
        self.metrics.verifications.get_or_create(&label).inc();
        record::add(&self.state, cluster, verification.clone()).await?;
        let mut clusters = self.lock();
        clusters
            .entry(cluster.to_string())
            .or_default()
            .last_verification = Some(verification);
        Ok(())
    }

    /// The store `cluster`'s policy names, and the cluster's name.
    pub fn store_of(
        &self,
        cluster: &str,
    ) -> Result<(ClusterName, Arc<dyn ObjectStore>), RequestError> {
        let target = self.target(cluster)?;
        Ok((target.cluster, target.store))
    }

    /// What status shows of `entry`'s snapshots; `None` without a policy.
    pub fn schedule_of(&self, entry: &ClusterEntry, now: SystemTime) -> Option<SnapshotSchedule> {
        let cluster = &entry.cluster;
        let policy = cluster.etcd.snapshots.as_ref()?;
        let state = self
            .lock()
            .get(cluster.name.as_str())
            .cloned()
            .unwrap_or_default();
        let blocked = self.target_of(entry).err().map(|e| e.to_string());
        let next_run = (blocked.is_none())
            .then(|| views::time(state.next_due(policy, cluster.name.as_str(), now).max(now)));
        Some(SnapshotSchedule {
            store: policy.store.to_string(),
            schedule: views::schedule(&policy.schedule),
            blocked,
            last_success: state.last_success.as_ref().map(views::run),
            last_failure: state
                .last_failure
                .as_ref()
                .map(|(at, reason)| SnapshotFailure {
                    at: views::time(*at),
                    reason: reason.clone(),
                }),
            failures: state.failures,
            running: state.running,
            received_bytes: state
                .received
                .as_ref()
                .map(|r| r.load(std::sync::atomic::Ordering::Relaxed)),
            next_run,
            overdue_ms: state.overdue(policy, now).map(views::millis),
            last_verification: state.last_verification.clone(),
            next_drill: state
                .next_drill(policy, now)
                .map(|at| views::time(at.max(now))),
            last_drill: state.last_drill.clone(),
        })
    }

    /// Adds `entry`'s snapshots and the `SnapshotOverdue` condition to its status.
    pub fn decorate(&self, status: &mut ClusterStatus, entry: &ClusterEntry, now: SystemTime) {
        status.snapshots = self.schedule_of(entry, now);
        status
            .conditions
            .retain(|c| c.kind != ConditionType::SnapshotOverdue);
        if let Some(view) = &status.snapshots {
            let mut condition = overdue_condition(view);
            let mut clusters = self.lock();
            let state = clusters.entry(status.name.clone()).or_default();
            let since = match state.condition {
                Some((held, since)) if held == condition.status => since,
                _ => now,
            };
            state.condition = Some((condition.status, since));
            condition.since = views::time(since);
            status.conditions.push(condition);
        }
    }

    /// Whether `entry`'s cluster has the `SnapshotOverdue` condition, without a status.
    pub fn overdue(&self, entry: &ClusterEntry, now: SystemTime) -> bool {
        self.schedule_of(entry, now)
            .is_some_and(|view| overdue_condition(&view).status)
    }

    /// Sets the snapshot metrics of every cluster with a policy.
    pub fn export(&self, now: SystemTime) {
        let desired = self.desired.borrow().clone();
        for entry in desired.clusters.values() {
            let Some(view) = self.schedule_of(entry, now) else {
                continue;
            };
            let label = crate::daemon::metrics::ClusterLabel {
                cluster: entry.cluster.name.to_string(),
            };
            let newest = self
                .lock()
                .get(entry.cluster.name.as_str())
                .and_then(|s| s.last_success.as_ref().map(|m| m.finished_at));
            let age = newest.map_or(-1.0, |at| {
                now.duration_since(at).unwrap_or_default().as_secs_f64()
            });
            self.metrics.snapshot_age.get_or_create(&label).set(age);
            if let Some(drill) = &view.last_drill {
                self.metrics
                    .drill_passed
                    .get_or_create(&label)
                    .set(i64::from(drill.passed));
            }
            let overdue = view.overdue_ms.is_some() || view.blocked.is_some();
            self.metrics
                .snapshot_overdue
                .get_or_create(&label)
                .set(i64::from(overdue));
        }
    }

    fn start_if_due(self: &Arc<Self>, entry: &ClusterEntry) {
        let Some(policy) = &entry.cluster.etcd.snapshots else {
            return;
        };
        let name = entry.cluster.name.as_str();
        if !self.state.serves(name) {
            // Several daemons share the state: the cluster's owner takes its snapshots.
            return;
        }
        let target = match self.target_of(entry) {
            Ok(target) => target,
            Err(e) => {
                self.block(name, e.to_string());
                return;
            }
        };
        let now = SystemTime::now();
        let fence = self.state.fence(name);
        {
            let mut clusters = self.lock();
            let state = clusters.entry(name.to_string()).or_default();
            if state.fence != fence && !state.seeding {
                state.retake(fence);
            }
            state.blocked = None;
            state.since.get_or_insert(now);
            let drill_due = state.seeded
                && !state.restoring
                && !state.drilling
                && state.last_success.is_some()
                && state.next_drill(policy, now).is_some_and(|due| due <= now);
            if drill_due {
                state.drilling = true;
                let (me, cluster) = (self.clone(), name.to_string());
                self.runs.spawn(async move { me.drill(cluster).await });
            }
            if !state.seeded {
                if !state.seeding {
                    state.seeding = true;
                    let me = self.clone();
                    let (cluster, store) = (target.cluster.clone(), target.store.clone());
                    self.runs
                        .spawn(async move { me.seed(cluster, store).await });
                }
                return;
            }
            if state.running || state.restoring || state.next_due(policy, name, now) > now {
                return;
            }
            state.running = true;
            state.last_run = Some(now);
        }
        let me = self.clone();
        self.runs.spawn(async move {
            let _ = me.run_once(target).await;
        });
    }

    /// A restore drill: the newest snapshot restored into a throwaway etcd by a member's
    /// agent, recorded as a deep verification.
    async fn drill(self: Arc<Self>, cluster: String) {
        let drilled = tokio::select! {
            () = self.cancel.cancelled() => return,
            drilled = self.verify_deep(&cluster, None) => drilled,
        };
        let verification = match drilled {
            Ok(v) => v,
            Err(e) => Verification {
                id: String::new(),
                at: views::time(SystemTime::now()),
                deep: true,
                passed: false,
                bytes: None,
                revision: None,
                keys: None,
                error: Some(crate::error_chain(&e)),
                by: "nobody".into(),
            },
        };
        match &verification.error {
            None => tracing::info!(
                cluster,
                id = verification.id,
                node = verification.by,
                keys = verification.keys,
                "restore drill passed"
            ),
            Some(error) => {
                tracing::warn!(cluster, id = verification.id, error, "restore drill failed")
            }
        }
        let mut clusters = self.lock();
        let state = clusters.entry(cluster).or_default();
        state.drilling = false;
        state.last_drill = Some(verification);
    }

    /// Notes why `cluster`'s snapshots cannot be taken, warning once.
    fn block(&self, cluster: &str, why: String) {
        let mut clusters = self.lock();
        let state = clusters.entry(cluster.to_string()).or_default();
        if state.blocked.as_deref() != Some(why.as_str()) {
            tracing::warn!(cluster, reason = why, "snapshots cannot be taken");
            state.blocked = Some(why);
        }
    }

    /// Reads the newest snapshot in the store and the record, so the schedule resumes.
    async fn seed(self: Arc<Self>, cluster: ClusterName, store: Arc<dyn ObjectStore>) {
        let newest = async {
            let ids = crate::snapshot::list(store.as_ref(), &cluster).await?;
            match ids.last() {
                Some(id) => Ok::<_, RequestError>(Some(
                    download::read_manifest(store.as_ref(), &cluster, id).await?,
                )),
                None => Ok(None),
            }
        };
        let newest = match newest.await {
            Ok(newest) => newest,
            Err(e) => {
                tracing::warn!(cluster = %cluster, error = %crate::error_chain(&e), "cannot read the newest snapshot; the schedule starts now");
                None
            }
        };
        let verification = match record::load(&self.state, cluster.as_str()).await {
            Ok(record) => {
                let drill = record.verifications.iter().rev().find(|v| v.deep).cloned();
                let mut clusters = self.lock();
                let state = clusters.entry(cluster.to_string()).or_default();
                state.last_drill = state.last_drill.take().or(drill);
                record.newest().cloned()
            }
            Err(e) => {
                tracing::warn!(cluster = %cluster, error = %crate::error_chain(&e), "cannot read the snapshot record");
                None
            }
        };
        let mut clusters = self.lock();
        let state = clusters.entry(cluster.to_string()).or_default();
        state.seeded = true;
        state.seeding = false;
        state.last_verification = state.last_verification.take().or(verification);
        if let Some(m) = newest {
            state.last_run = state.last_run.max(Some(m.started_at));
            if state.last_success.is_none() {
                state.last_success = Some(m);
            }
        }
    }

    /// Holds `cluster`'s snapshots (none taken, none pruned) while a restore runs.
    pub fn pause(&self, cluster: &str, paused: bool) {
        self.lock()
            .entry(cluster.to_string())
            .or_default()
            .restoring = paused;
    }

    /// Marks a run of `cluster` started now, unless one is running.
    fn begin(&self, cluster: &str, now: SystemTime) -> Result<(), RequestError> {
        let mut clusters = self.lock();
        let state = clusters.entry(cluster.to_string()).or_default();
        if state.restoring {
            return Err(RequestError::Restoring(cluster.to_string()));
        }
        if state.running {
            return Err(RequestError::Busy(cluster.to_string()));
        }
        state.running = true;
        state.last_run = Some(now);
        Ok(())
    }

    /// One run: a snapshot, its record and metrics, then the cluster's retention.
    async fn run_once(&self, target: Target) -> Result<Manifest, String> {
        let left = crate::snapshot::upload::retry_abandoned().await;
        if left > 0 {
            tracing::warn!(
                left,
                "snapshot uploads whose abort failed are still in their stores"
            );
        }
        let started = Instant::now();
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.lock()
            .entry(target.cluster.to_string())
            .or_default()
            .received = Some(received.clone());
        let taken = tokio::select! {
            () = self.cancel.cancelled() => Err("the daemon is stopping".to_string()),
            taken = take::take_counted(
                &self.hub,
                target.store.as_ref(),
                &target.cluster,
                &target.members,
                &target.commit,
                &received,
            ) => taken.map_err(|e| crate::error_chain(&e)),
        };
        self.finish(&target.cluster, &taken, started.elapsed());
        if taken.is_ok() {
            if let Err(e) = self.prune(&target, false).await {
                tracing::warn!(cluster = %target.cluster, error = %crate::error_chain(&e), "pruning snapshots failed");
            }
        }
        taken
    }

    /// Records how a run of `cluster` ended.
    fn finish(&self, cluster: &ClusterName, outcome: &Result<Manifest, String>, took: Duration) {
        let label = crate::daemon::metrics::ClusterLabel {
            cluster: cluster.to_string(),
        };
        let outcome_label = crate::daemon::metrics::OutcomeLabel {
            cluster: cluster.to_string(),
            outcome: if outcome.is_ok() { "saved" } else { "failed" },
        };
        self.metrics.snapshots.get_or_create(&outcome_label).inc();
        let mut clusters = self.lock();
        let state = clusters.entry(cluster.to_string()).or_default();
        state.running = false;
        state.received = None;
        match outcome {
            Ok(manifest) => {
                tracing::info!(cluster = %cluster, id = %manifest.id, member = %manifest.member, bytes = manifest.compressed_size, seconds = took.as_secs_f64(), "snapshot saved");
                self.metrics
                    .snapshot_bytes
                    .get_or_create(&label)
                    .inc_by(manifest.compressed_size);
                self.metrics
                    .snapshot_seconds
                    .get_or_create(&label)
                    .observe(took.as_secs_f64());
                state.last_success = Some(manifest.clone());
                state.failures = 0;
            }
            Err(reason) => {
                tracing::warn!(cluster = %cluster, reason, "snapshot failed");
                state.last_failure = Some((SystemTime::now(), reason.clone()));
                state.failures = state.failures.saturating_add(1);
            }
        }
    }

    /// The cluster's retention, keeping the newest snapshot whose verification passed.
    async fn prune(&self, target: &Target, dry_run: bool) -> Result<PruneReport, RequestError> {
        let record = record::load(&self.state, target.cluster.as_str()).await?;
        let verified = record.verified();
        let policy = retention::Policy::new(target.policy.retention);
        let report = retention::prune(
            target.store.as_ref(),
            &target.cluster,
            &policy,
            &verified,
            SystemTime::now(),
            dry_run,
        )
        .await?;
        Ok(report)
    }

    fn target(&self, cluster: &str) -> Result<Target, RequestError> {
        let desired = self.desired.borrow().clone();
        let entry = ClusterName::parse(cluster)
            .ok()
            .and_then(|name| desired.clusters.get(&name))
            .ok_or_else(|| RequestError::UnknownCluster(cut(cluster)))?;
        self.target_of(entry)
    }

    fn target_of(&self, entry: &ClusterEntry) -> Result<Target, RequestError> {
        let cluster = &entry.cluster;
        let policy = cluster
            .etcd
            .snapshots
            .clone()
            .ok_or_else(|| RequestError::NoPolicy(cluster.name.to_string()))?;
        let store =
            self.stores
                .get(&policy.store)
                .cloned()
                .ok_or_else(|| RequestError::NoStore {
                    cluster: cluster.name.to_string(),
                    store: policy.store.to_string(),
                })?;
        Ok(Target {
            cluster: cluster.name.clone(),
            image: cluster.etcd.image.to_string(),
            members: cluster
                .nodes
                .iter()
                .filter(|n| n.roles.contains(&Role::Etcd))
                .map(|n| n.name.to_string())
                .collect(),
            commit: entry.revision.to_string(),
            policy,
            store,
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ClusterSnapshots>> {
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A name from a request, cut to what an error message repeats.
fn cut(name: &str) -> String {
    crate::protocol::cut_text(name, crate::protocol::MAX_REFUSAL_TEXT_BYTES).to_string()
}

/// `SnapshotOverdue`: true while the newest snapshot is late or none can be taken.
fn overdue_condition(view: &SnapshotSchedule) -> Condition {
    let (status, reason, message) = match (&view.blocked, view.overdue_ms) {
        (Some(why), _) => (true, "SnapshotsBlocked", why.clone()),
        (None, Some(late)) => {
            let late = humantime::format_duration(Duration::from_secs(late / 1000));
            let newest = match &view.last_success {
                Some(run) => format!("the newest snapshot is from {}", run.at),
                None => "no snapshot was taken yet".to_string(),
            };
            let failure = match &view.last_failure {
                Some(f) => format!("; the last run failed: {}", f.reason),
                None => String::new(),
            };
            (
                true,
                "SnapshotOverdue",
                format!(
                    "{newest}, {late} past twice the schedule ({}){failure}",
                    view.schedule
                ),
            )
        }
        (None, None) => (false, "OnSchedule", String::new()),
    };
    Condition {
        kind: ConditionType::SnapshotOverdue,
        status,
        reason: reason.to_string(),
        message,
        since: String::new(),
    }
}
