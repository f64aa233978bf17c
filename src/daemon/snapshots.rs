//! Taking one snapshot of a cluster: a healthy member is chosen (a follower when there is
//! one, so the leader keeps its disk and network for the cluster), its agent streams the
//! member's snapshot to the daemon on a transfer (`server::transfer`), and `snapshot::save`
//! checks, compresses and stores it, manifest last.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use object_store::ObjectStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{ClusterName, NodeName, Retention, Role, SnapshotPolicy, StoreName};
use crate::protocol::{EtcdTask, EtcdTaskOutcome};
use crate::server::hub::TaskError;
use crate::server::transfer::TransferError;
use crate::server::Hub;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::save::{save, SaveError, Source};
use crate::snapshot::{retention, schedule};
use crate::source::{ClusterEntry, DesiredState};

/// How long a member has to answer its status.
const STATUS_LIMIT: Duration = Duration::from_secs(15);
/// How long the chosen agent has to start sending.
const START_LIMIT: Duration = Duration::from_secs(60);
/// The longest one snapshot may take end to end (etcd's largest database on a slow link).
const TAKE_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// Why no snapshot was taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("no etcd member could be asked for a snapshot: {0}")]
    NoMember(String),
    #[error("cannot wait for the transfer")]
    Transfer(#[source] TransferError),
    #[error(
        "{node}'s agent did not start sending within {}",
        humantime::format_duration(START_LIMIT)
    )]
    NeverStarted { node: String },
    #[error("{node}'s agent: {reason}")]
    Agent { node: String, reason: String },
    #[error("the snapshot from {node} was not saved")]
    Save {
        node: String,
        #[source]
        source: SaveError,
    },
}

/// Takes a snapshot of `cluster` from one of `members` (node names) and saves it in `store`,
/// its manifest naming `git_commit`.
pub async fn take(
    hub: &Hub,
    store: &dyn ObjectStore,
    cluster: &ClusterName,
    members: &[String],
    git_commit: &str,
) -> Result<Manifest, TakeError> {
    let node = choose(hub, cluster.as_str(), members).await?;
    let (id, arrives) = hub
        .transfers()
        .expect(cluster.as_str(), &node, START_LIMIT)
        .map_err(TakeError::Transfer)?;
    let task = EtcdTask::Snapshot { transfer: id };
    let sent = hub.etcd_task(cluster.as_str(), &node, task, TAKE_LIMIT);
    tokio::pin!(sent);
    // The agent answers only after the bytes went, so its answer is awaited beside them.
    let incoming = tokio::select! {
        incoming = tokio::time::timeout(START_LIMIT, arrives) => match incoming {
            Ok(Ok(incoming)) => incoming,
            _ => return Err(TakeError::NeverStarted { node: node.clone() }),
        },
        outcome = &mut sent => return Err(agent_failure(&node, outcome)),
    };
    let source = Source {
        member: NodeName::parse(&node).map_err(|e| TakeError::NoMember(e.to_string()))?,
        revision: u64::try_from(incoming.revision).unwrap_or(0),
        etcd_version: incoming.etcd_version,
        git_commit: git_commit.to_string(),
    };
    let bytes = futures::stream::unfold(incoming.bytes, |mut pieces| async move {
        pieces.recv().await.map(|piece| (piece, pieces))
    });
    let (saved, outcome) = tokio::join!(save(store, cluster, &source, bytes), sent);
    let manifest = saved.map_err(|source| TakeError::Save {
        node: node.clone(),
        source,
    })?;
    if !matches!(outcome, Ok(EtcdTaskOutcome::Sent { .. })) {
        // The stored bytes passed etcd's own checksum: they are whole whatever the agent said.
        tracing::warn!(cluster = %cluster, node, outcome = ?outcome, "the agent's answer to a saved snapshot was not `sent`");
    }
    Ok(manifest)
}

/// A healthy member of `members`, a follower when there is one.
async fn choose(hub: &Hub, cluster: &str, members: &[String]) -> Result<String, TakeError> {
    let mut leader = None;
    let mut problems = Vec::new();
    for node in members {
        match hub
            .etcd_task(cluster, node, EtcdTask::Status, STATUS_LIMIT)
            .await
        {
            Ok(EtcdTaskOutcome::Status {
                member_id,
                leader_id,
                ..
            }) if leader_id != "0" => {
                if member_id != leader_id {
                    return Ok(node.clone());
                }
                leader = Some(node.clone());
            }
            outcome => problems.push(agent_failure(node, outcome).to_string()),
        }
    }
    leader.ok_or_else(|| TakeError::NoMember(problems.join("; ")))
}

/// What an agent's answer that is not the one wanted says.
fn agent_failure(node: &str, outcome: Result<EtcdTaskOutcome, TaskError>) -> TakeError {
    let reason = match outcome {
        Ok(EtcdTaskOutcome::Failed { error }) => error,
        Ok(other) => format!("unexpected answer {other:?}"),
        Err(e) => e.to_string(),
    };
    TakeError::Agent {
        node: node.to_string(),
        reason,
    }
}

/// How often the scheduler looks for due snapshots.
const TICK: Duration = Duration::from_secs(1);

/// What the scheduler knows of one cluster's snapshots.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshots {
    /// When the last run started, whatever came of it.
    pub last_run: Option<SystemTime>,
    /// The newest snapshot saved, and when.
    pub last_success: Option<(SystemTime, Manifest)>,
    /// Why the last run failed, when it did.
    pub last_error: Option<String>,
    /// Runs failed in a row since the last success.
    pub failures: u32,
    /// When the scheduler first saw the cluster's policy.
    since: Option<SystemTime>,
    running: bool,
}

/// The first retry after a failed run; each next one waits twice as long, up to the
/// schedule's own period.
const RETRY_BASE: Duration = Duration::from_secs(10);

impl ClusterSnapshots {
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
}

/// Takes each cluster's snapshots on its policy's schedule, one at a time per cluster, into the
/// store the policy names, and prunes the cluster's snapshots after each one saved.
pub struct Scheduler {
    hub: Arc<Hub>,
    stores: BTreeMap<StoreName, Arc<dyn ObjectStore>>,
    clusters: Arc<Mutex<BTreeMap<String, ClusterSnapshots>>>,
}

impl Scheduler {
    pub fn new(hub: Arc<Hub>, stores: BTreeMap<StoreName, Arc<dyn ObjectStore>>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            hub,
            stores,
            clusters: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// What is known of `cluster`'s snapshots.
    pub fn status(&self, cluster: &str) -> Option<ClusterSnapshots> {
        self.lock().get(cluster).cloned()
    }

    /// Starts every due snapshot, each second, until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        desired: watch::Receiver<Arc<DesiredState>>,
        cancel: CancellationToken,
    ) {
        let runs = TaskTracker::new();
        loop {
            let state = desired.borrow().clone();
            for entry in state.clusters.values() {
                self.start_if_due(entry, &runs, &cancel);
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(TICK) => {}
            }
        }
        runs.close();
        runs.wait().await;
    }

    fn start_if_due(&self, entry: &ClusterEntry, runs: &TaskTracker, cancel: &CancellationToken) {
        let cluster = &entry.cluster;
        let Some(policy) = &cluster.etcd.snapshots else {
            return;
        };
        let Some(store) = self.stores.get(&policy.store).cloned() else {
            // A store the configuration does not name: skipped (status does not show it yet).
            return;
        };
        let now = SystemTime::now();
        {
            let mut clusters = self.lock();
            let state = clusters.entry(cluster.name.to_string()).or_default();
            state.since.get_or_insert(now);
            let due = state.next_due(policy, cluster.name.as_str(), now);
            if state.running || due > now {
                return;
            }
            state.running = true;
            state.last_run = Some(now);
        }
        let members: Vec<String> = cluster
            .nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Etcd))
            .map(|n| n.name.to_string())
            .collect();
        let run = Run {
            hub: self.hub.clone(),
            store,
            cluster: cluster.name.clone(),
            members,
            commit: entry.revision.to_string(),
            retention: policy.retention,
        };
        let (cancel, clusters) = (cancel.clone(), self.clusters.clone());
        runs.spawn(async move {
            let outcome = tokio::select! {
                () = cancel.cancelled() => Err("the daemon is stopping".to_string()),
                outcome = run.once() => outcome,
            };
            finish(&clusters, &run.cluster, outcome);
        });
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ClusterSnapshots>> {
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Records how a run of `cluster` ended.
fn finish(
    clusters: &Mutex<BTreeMap<String, ClusterSnapshots>>,
    cluster: &ClusterName,
    outcome: Result<Manifest, String>,
) {
    let mut clusters = clusters.lock().unwrap_or_else(|e| e.into_inner());
    let state = clusters.entry(cluster.to_string()).or_default();
    state.running = false;
    match outcome {
        Ok(manifest) => {
            tracing::info!(cluster = %cluster, id = %manifest.id, member = %manifest.member, bytes = manifest.compressed_size, "snapshot saved");
            state.last_success = Some((SystemTime::now(), manifest));
            state.last_error = None;
            state.failures = 0;
        }
        Err(reason) => {
            tracing::warn!(cluster = %cluster, reason, "snapshot failed");
            state.last_error = Some(reason);
            state.failures = state.failures.saturating_add(1);
        }
    }
}

/// One scheduled run: a snapshot, then the cluster's retention.
struct Run {
    hub: Arc<Hub>,
    store: Arc<dyn ObjectStore>,
    cluster: ClusterName,
    members: Vec<String>,
    commit: String,
    retention: Retention,
}

impl Run {
    async fn once(&self) -> Result<Manifest, String> {
        let manifest = take(
            &self.hub,
            &*self.store,
            &self.cluster,
            &self.members,
            &self.commit,
        )
        .await
        .map_err(|e| crate::error_chain(&e))?;
        let policy = retention::Policy::new(self.retention);
        // Verifications are not recorded yet: the newest `last` are what keeps snapshots.
        let verified = BTreeSet::new();
        let pruned = retention::prune(
            &*self.store,
            &self.cluster,
            &policy,
            &verified,
            SystemTime::now(),
            false,
        )
        .await;
        if let Err(e) = pruned {
            tracing::warn!(cluster = %self.cluster, error = %crate::error_chain(&e), "pruning snapshots failed");
        }
        Ok(manifest)
    }
}
