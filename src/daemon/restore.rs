//! Restoring a cluster's etcd from a snapshot: a state machine recorded once per request id
//! (`restores-<cluster>.json`; a request id never runs twice, across restarts and daemons) with
//! a reason at every step and a final `Failed` state:
//!
//! 1. **Verifying**: each member's agent fetches the snapshot while etcd still runs (a
//!    transfer the daemon fills from the store, both hashes and etcd's checked as it streams);
//!    a snapshot that fails stops nothing and is never restored.
//! 2. **Stopping**: the cluster is held (`Hold`): its members' plans are published without the
//!    etcd container, and the runner waits until every agent applied that and runs none.
//! 3. **Restoring**: each member's agent restores its copy with the cluster's etcd image, its
//!    member name and peer URL, every member in `--initial-cluster`, and a new cluster token;
//!    the data directory it replaces is kept on the node.
//! 4. **Starting**: the members' plans have etcd again; every member must answer healthy.
//!
//! While a restore holds a cluster its reconciler runs no plan, and its snapshots are neither
//! taken nor pruned (the snapshot being restored must not be pruned under it). A daemon that
//! stops mid-restore resumes at the recorded phase; each phase can run again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::snapshots::{RestorePhase, RestoreRun};
use crate::daemon::snapshots::{offer, views, Scheduler};
use crate::model::{Cluster, Role, SnapshotId};
use crate::protocol::{EtcdTask, EtcdTaskOutcome, RestoreMember};
use crate::server::Hub;
use crate::state::StateError;
use crate::store::DurableState;

/// How long the members' agents have to be connected when a restore starts.
const CONNECT_LIMIT: Duration = Duration::from_secs(300);
/// How long the members' agents have to stop etcd, and to start it again healthy.
const STOP_LIMIT: Duration = Duration::from_secs(300);
const START_LIMIT: Duration = Duration::from_secs(300);
/// The longest one member's fetch and restore may take.
const RESTORE_TASK_LIMIT: Duration = Duration::from_secs(3 * 3600);
/// Attempts at one member's restore before the restore fails.
const MEMBER_ATTEMPTS: u32 = 3;
/// Runs a record keeps, the oldest dropped first.
const MAX_RUNS: usize = 50;
/// How often the phases that wait look again, besides the agents' reports.
const LOOK_AGAIN: Duration = Duration::from_millis(250);
/// How often the starting members are asked whether they serve: the cluster is down until
/// they do, and a health task is one round trip to each agent.
const HEALTH_AGAIN: Duration = Duration::from_millis(50);

/// The document of `cluster`'s restores.
pub fn record_name(cluster: &str) -> String {
    format!("restores-{cluster}.json")
}

/// A cluster's restores, by request id.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRecord {
    pub runs: BTreeMap<String, RestoreRun>,
}

/// What a restore holds of its cluster's plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub request_id: String,
    /// True while etcd must not run on the members.
    pub etcd_down: bool,
    /// What the restore is doing, for status.
    pub message: String,
}

/// Why a restore could not be asked for.
#[derive(Debug, thiserror::Error)]
pub enum RestoreRequestError {
    #[error("a restore of {cluster} (request {request_id}) is running")]
    Busy { cluster: String, request_id: String },
    #[error("`{0}` is not a snapshot id")]
    BadId(String),
    #[error(transparent)]
    Snapshots(#[from] crate::daemon::snapshots::RequestError),
    #[error("the daemon's restore record")]
    State(#[from] StateError),
}

/// Runs restores and holds their clusters while they run.
pub struct Restores {
    hub: Arc<Hub>,
    scheduler: Arc<Scheduler>,
    state: DurableState,
    /// Asks for a pass of a cluster (to publish a hold, or after one ends).
    wake: Box<dyn Fn(&str) + Send + Sync>,
    holds: Mutex<BTreeMap<String, Hold>>,
    /// Clusters with a restore running, and its request id.
    running: Mutex<BTreeMap<String, String>>,
    runs: TaskTracker,
    cancel: CancellationToken,
    /// Counts the recorded changes of any run, for those who wait on one.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Restores {
    pub fn new(
        hub: Arc<Hub>,
        scheduler: Arc<Scheduler>,
        state: DurableState,
        wake: Box<dyn Fn(&str) + Send + Sync>,
        cancel: CancellationToken,
    ) -> Arc<Restores> {
        Arc::new(Restores {
            hub,
            scheduler,
            state,
            wake,
            holds: Mutex::new(BTreeMap::new()),
            running: Mutex::new(BTreeMap::new()),
            runs: TaskTracker::new(),
            cancel,
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// What a restore holds of `cluster`, if one runs.
    pub fn hold(&self, cluster: &str) -> Option<Hold> {
        lock(&self.holds).get(cluster).cloned()
    }

    /// A restore of `cluster` from `snapshot` as request `request_id`: started unless one is
    /// running; `Some(run)` when this request id already ran to its end (it never runs again).
    pub async fn request(
        self: &Arc<Self>,
        cluster: Arc<Cluster>,
        snapshot: &str,
        request_id: &str,
        by: &str,
    ) -> Result<Option<RestoreRun>, RestoreRequestError> {
        let name = cluster.name.to_string();
        if let Some(running) = lock(&self.running).get(&name) {
            if running == request_id {
                return Ok(None);
            }
            return Err(RestoreRequestError::Busy {
                cluster: name,
                request_id: running.clone(),
            });
        }
        let id = SnapshotId::parse(snapshot)
            .ok_or_else(|| RestoreRequestError::BadId(crate::protocol::short_text(snapshot)))?;
        let (_, store) = self.scheduler.store_of(&name)?;
        let run = self.begin(&name, snapshot, request_id, by).await?;
        if run.phase.is_final() {
            return Ok(Some(run));
        }
        {
            let mut running = lock(&self.running);
            if let Some(other) = running.get(&name) {
                return Err(RestoreRequestError::Busy {
                    cluster: name,
                    request_id: other.clone(),
                });
            }
            running.insert(name.clone(), request_id.to_string());
        }
        let runner = Runner {
            restores: self.clone(),
            cluster,
            id,
            store,
            run,
            fetched: false,
            stopped_at: None,
        };
        self.runs.spawn(runner.run());
        Ok(None)
    }

    /// `cluster`'s restores, newest first.
    pub async fn list(&self, cluster: &str) -> Result<Vec<RestoreRun>, StateError> {
        let (state, name) = (self.state.clone(), record_name(cluster));
        let record = tokio::task::spawn_blocking(move || state.load::<RestoreRecord>(&name))
            .await
            .expect("loading does not panic")?
            .unwrap_or_default();
        let mut runs: Vec<RestoreRun> = record.runs.into_values().collect();
        runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        Ok(runs)
    }

    /// The run of `request_id` of `cluster`, once it has more than `after_steps` steps or has
    /// ended, or as it is after `limit`; `None` when no such run is recorded.
    pub async fn watch(
        &self,
        cluster: &str,
        request_id: &str,
        after_steps: usize,
        limit: Duration,
    ) -> Result<Option<RestoreRun>, StateError> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            changes.borrow_and_update();
            let run = self
                .list(cluster)
                .await?
                .into_iter()
                .find(|r| r.request_id == request_id);
            let moved = run
                .as_ref()
                .is_none_or(|r| r.phase.is_final() || r.steps.len() > after_steps);
            if moved {
                return Ok(run);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Ok(run);
            }
        }
    }

    /// Waits for the running restores (after the daemon's cancel).
    pub async fn wait(&self) {
        self.runs.close();
        self.runs.wait().await;
    }

    /// The run of `request_id`, recorded now in the `Verifying` phase unless it was recorded
    /// before (create-if-absent: of two daemons, one starts it).
    async fn begin(
        &self,
        cluster: &str,
        snapshot: &str,
        request_id: &str,
        by: &str,
    ) -> Result<RestoreRun, StateError> {
        let fresh = RestoreRun {
            request_id: request_id.to_string(),
            snapshot: snapshot.to_string(),
            by: by.to_string(),
            phase: RestorePhase::Verifying,
            started_at: views::time(SystemTime::now()),
            finished_at: None,
            error: None,
            etcd_down_ms: None,
            steps: vec![format!("requested by {by}: restore snapshot {snapshot}")],
        };
        let (state, name) = (self.state.clone(), record_name(cluster));
        let cluster = cluster.to_string();
        let updated = tokio::task::spawn_blocking(move || {
            state.update_for(&cluster, &name, |record: &mut RestoreRecord| {
                let run = record
                    .runs
                    .entry(fresh.request_id.clone())
                    .or_insert_with(|| fresh.clone())
                    .clone();
                trim(record);
                Ok::<_, std::convert::Infallible>(run)
            })
        })
        .await
        .expect("saving does not panic")?;
        Ok(updated.expect("the change cannot fail").result)
    }

    /// Saves `run` in `cluster`'s record.
    async fn save(&self, cluster: &str, run: &RestoreRun) -> Result<(), StateError> {
        let (state, name, run) = (self.state.clone(), record_name(cluster), run.clone());
        let cluster = cluster.to_string();
        tokio::task::spawn_blocking(move || {
            state
                .update_for(&cluster, &name, |record: &mut RestoreRecord| {
                    record.runs.insert(run.request_id.clone(), run.clone());
                    trim(record);
                    Ok::<_, std::convert::Infallible>(())
                })
                .map(drop)
        })
        .await
        .expect("saving does not panic")?;
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    fn set_hold(&self, cluster: &str, hold: Option<Hold>) {
        match hold {
            Some(hold) => lock(&self.holds).insert(cluster.to_string(), hold),
            None => lock(&self.holds).remove(cluster),
        };
        (self.wake)(cluster);
    }
}

/// Drops the oldest finished runs beyond `MAX_RUNS`.
fn trim(record: &mut RestoreRecord) {
    while record.runs.len() > MAX_RUNS {
        let oldest = record
            .runs
            .values()
            .filter(|r| r.phase.is_final())
            .min_by(|a, b| a.started_at.cmp(&b.started_at))
            .map(|r| r.request_id.clone());
        match oldest {
            Some(id) => record.runs.remove(&id),
            None => break,
        };
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One restore, from its recorded phase to its end.
struct Runner {
    restores: Arc<Restores>,
    cluster: Arc<Cluster>,
    id: SnapshotId,
    store: Arc<dyn ObjectStore>,
    run: RestoreRun,
    /// Every member fetched the snapshot in this run.
    fetched: bool,
    /// When this run stopped etcd.
    stopped_at: Option<std::time::Instant>,
}

impl Runner {
    async fn run(mut self) {
        let name = self.cluster.name.to_string();
        self.restores.scheduler.pause(&name, true);
        let cancel = self.restores.cancel.clone();
        let ended = tokio::select! {
            () = cancel.cancelled() => None,
            ended = self.phases() => Some(ended),
        };
        let finished = ended.is_some();
        match ended {
            None => {
                tracing::info!(cluster = name, request = self.run.request_id, phase = ?self.run.phase, "the daemon is stopping; the restore resumes at this phase")
            }
            Some(Ok(())) => {
                self.run.phase = RestorePhase::Done;
                self.run.etcd_down_ms = self.stopped_at.map(|at| views::millis(at.elapsed()));
                self.note("etcd answers healthy on every member: restored");
                tracing::info!(cluster = name, request = self.run.request_id, snapshot = %self.id, "restore done");
            }
            Some(Err(reason)) => {
                tracing::error!(cluster = name, request = self.run.request_id, phase = ?self.run.phase, reason, "restore failed");
                self.note(&format!("failed while {:?}: {reason}", self.run.phase).to_lowercase());
                self.run.phase = RestorePhase::Failed;
                self.run.error = Some(reason);
            }
        }
        if finished {
            self.run.finished_at = Some(views::time(SystemTime::now()));
            self.record().await;
        }
        self.restores.scheduler.pause(&name, false);
        lock(&self.restores.running).remove(&name);
        self.restores.set_hold(&name, None);
    }

    /// Every phase from the recorded one.
    async fn phases(&mut self) -> Result<(), String> {
        loop {
            let next = match self.run.phase {
                RestorePhase::Verifying => {
                    self.fetch().await?;
                    RestorePhase::Stopping
                }
                RestorePhase::Stopping => {
                    self.stop().await?;
                    RestorePhase::Restoring
                }
                RestorePhase::Restoring => {
                    if !self.fetched {
                        // Resumed after a restart: the members' copies may be gone.
                        self.fetch().await?;
                    }
                    self.restore_members().await?;
                    RestorePhase::Starting
                }
                RestorePhase::Starting => {
                    self.start().await?;
                    return Ok(());
                }
                RestorePhase::Done | RestorePhase::Failed => return Ok(()),
            };
            self.run.phase = next;
            self.record().await;
        }
    }

    /// Every member's agent fetches the snapshot while etcd still runs; each copy is checked
    /// as it streams (both hashes and etcd's), so a damaged snapshot stops nothing.
    async fn fetch(&mut self) -> Result<(), String> {
        let members = self.members();
        self.note(&format!(
            "fetching snapshot {} to {}, checked as it streams",
            self.id,
            members.join(", ")
        ));
        let hub = self.restores.hub.clone();
        let cluster = self.cluster.name.to_string();
        let connected = self
            .wait_for(CONNECT_LIMIT, || {
                members
                    .iter()
                    .filter(|n| hub.node_status(&cluster, n).is_none_or(|s| !s.connected))
                    .cloned()
                    .collect()
            })
            .await;
        if let Err(away) = connected {
            return Err(format!(
                "the agents of {} did not connect within {}",
                away.join(", "),
                humantime::format_duration(CONNECT_LIMIT)
            ));
        }
        let fetches = self
            .restore_members_as()
            .into_iter()
            .map(|(node, member)| self.fetch_member(node, member));
        let mut failures = Vec::new();
        for outcome in futures::future::join_all(fetches).await {
            match outcome {
                Ok((node, bytes)) => self.note(&format!(
                    "{node}: fetched and checked ({bytes} bytes), restored beside etcd's data"
                )),
                Err(why) => failures.push(why),
            }
        }
        if !failures.is_empty() {
            return Err(format!(
                "snapshot {} fails verification, or cannot be fetched or restored: {}",
                self.id,
                failures.join("; ")
            ));
        }
        self.fetched = true;
        self.note("verified: every member holds the snapshot, checked");
        Ok(())
    }

    /// One member's fetch, tried up to `MEMBER_ATTEMPTS` times unless the snapshot itself is
    /// damaged.
    async fn fetch_member(
        &self,
        node: String,
        member: RestoreMember,
    ) -> Result<(String, u64), String> {
        let mut last = String::new();
        for attempt in 1..=MEMBER_ATTEMPTS {
            let fetched = offer::run_with_snapshot(
                &self.restores.hub,
                self.store.clone(),
                &self.cluster.name,
                &self.id,
                &node,
                |transfer| EtcdTask::Fetch {
                    transfer,
                    request_id: self.run.request_id.clone(),
                    member: member.clone(),
                },
                RESTORE_TASK_LIMIT,
            )
            .await;
            match fetched {
                Ok(EtcdTaskOutcome::Fetched { bytes }) => return Ok((node, bytes)),
                Ok(other) => last = format!("unexpected answer {other:?}"),
                Err(offer::OfferError::Damaged(why)) => return Err(format!("{node}: {why}")),
                Err(offer::OfferError::Task(why)) => last = why,
            }
            tracing::warn!(cluster = %self.cluster.name, node, attempt, reason = last, "a member's fetch failed");
        }
        Err(format!("{node}: {last}"))
    }

    async fn stop(&mut self) -> Result<(), String> {
        self.stopped_at = Some(std::time::Instant::now());
        let members = self.members();
        self.hold(true, format!("stopping etcd on {}", members.join(", ")));
        let hub = self.restores.hub.clone();
        let cluster = self.cluster.name.to_string();
        let stopped = self
            .wait_for(STOP_LIMIT, || {
                let still: Vec<String> = members
                    .iter()
                    .filter(|n| {
                        // Stopped: the agent applied the held plan, and runs no etcd.
                        hub.node_status(&cluster, n).is_none_or(|s| {
                            let applied = s.applied.as_ref().map(|a| a.generation);
                            !s.connected
                                || s.generation.is_none()
                                || applied != s.generation
                                || s.containers.contains_key(crate::nodeplan::ETCD_COMPONENT)
                        })
                    })
                    .cloned()
                    .collect();
                still
            })
            .await;
        match stopped {
            Ok(()) => {
                self.note("etcd stopped on every member");
                Ok(())
            }
            Err(still) => Err(format!(
                "etcd did not stop within {} on {} (each needs its agent connected)",
                humantime::format_duration(STOP_LIMIT),
                still.join(", ")
            )),
        }
    }

    async fn restore_members(&mut self) -> Result<(), String> {
        let members = self.members();
        self.hold(
            true,
            format!(
                "putting snapshot {}'s restored data in place on {}",
                self.id,
                members.join(", ")
            ),
        );
        let tasks = self.restore_members_as().into_iter().map(|(node, member)| {
            let task = EtcdTask::Restore {
                request_id: self.run.request_id.clone(),
                member,
            };
            self.restore_member(node, task)
        });
        let outcomes = futures::future::join_all(tasks).await;
        let mut failures = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok((node, _)) => self.note(&format!("{node}: restored")),
                Err(why) => failures.push(why),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// One member's restore from its fetched copy, tried up to `MEMBER_ATTEMPTS` times.
    async fn restore_member(&self, node: String, task: EtcdTask) -> Result<(String, u64), String> {
        let mut last = String::new();
        for attempt in 1..=MEMBER_ATTEMPTS {
            let restored = self
                .restores
                .hub
                .etcd_task(
                    self.cluster.name.as_str(),
                    &node,
                    task.clone(),
                    RESTORE_TASK_LIMIT,
                )
                .await;
            match restored {
                Ok(EtcdTaskOutcome::Restored) => return Ok((node, 0)),
                Ok(EtcdTaskOutcome::Failed { error }) => last = error,
                Ok(other) => last = format!("unexpected answer {other:?}"),
                Err(e) => last = e.to_string(),
            }
            tracing::warn!(cluster = %self.cluster.name, node, attempt, reason = last, "a member's restore failed");
        }
        Err(format!("{node}: {last}"))
    }

    async fn start(&mut self) -> Result<(), String> {
        let members = self.members();
        self.hold(
            false,
            format!(
                "starting etcd from the restored data on {}",
                members.join(", ")
            ),
        );
        let hub = self.restores.hub.clone();
        let cluster = self.cluster.name.to_string();
        let limit = START_LIMIT;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut unhealthy = Vec::new();
            for node in &members {
                let health = hub
                    .etcd_task(&cluster, node, EtcdTask::Health, Duration::from_secs(10))
                    .await;
                if !matches!(health, Ok(EtcdTaskOutcome::Healthy)) {
                    unhealthy.push(format!("{node}: {}", answer(health)));
                }
            }
            if unhealthy.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "etcd is not healthy after {}: {}",
                    humantime::format_duration(limit),
                    unhealthy.join("; ")
                ));
            }
            tokio::time::sleep(HEALTH_AGAIN).await;
        }
    }

    /// Waits until `pending` (what is still not there) is empty, waking on the agents'
    /// reports; `Err` with the last `pending` after `limit`.
    async fn wait_for(
        &self,
        limit: Duration,
        pending: impl Fn() -> Vec<String>,
    ) -> Result<(), Vec<String>> {
        let mut changes = self.restores.hub.watch_cluster(self.cluster.name.as_str());
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let still = pending();
            if still.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(still);
            }
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(LOOK_AGAIN) => {}
            }
        }
    }

    /// How each member's data is restored: the cluster's image, its own name and peer URL,
    /// every member, and a cluster token new with this request.
    fn restore_members_as(&self) -> Vec<(String, RestoreMember)> {
        let peer = |n| crate::plan::container::peer_url(&self.cluster, n);
        let etcd = || self.cluster.nodes_with(Role::Etcd);
        let initial: Vec<String> = etcd().map(|n| format!("{}={}", n.name, peer(n))).collect();
        let token = format!("{}-{}", self.cluster.name, self.run.request_id);
        etcd()
            .map(|n| {
                let member = RestoreMember {
                    image: self.cluster.etcd.image.to_string(),
                    name: n.name.to_string(),
                    initial_cluster: initial.clone(),
                    peer_url: peer(n),
                    token: token.clone(),
                };
                (n.name.to_string(), member)
            })
            .collect()
    }

    fn members(&self) -> Vec<String> {
        self.cluster
            .nodes_with(Role::Etcd)
            .map(|n| n.name.to_string())
            .collect()
    }

    fn hold(&mut self, etcd_down: bool, message: String) {
        self.note(&message);
        let hold = Hold {
            request_id: self.run.request_id.clone(),
            etcd_down,
            message,
        };
        self.restores
            .set_hold(self.cluster.name.as_str(), Some(hold));
    }

    fn note(&mut self, step: &str) {
        let at = views::time(SystemTime::now());
        self.run.steps.push(format!("{at} {step}"));
    }

    /// Saves the run; a failure is logged (the restore goes on, and is recorded at its end).
    async fn record(&self) {
        if let Err(e) = self
            .restores
            .save(self.cluster.name.as_str(), &self.run)
            .await
        {
            tracing::error!(cluster = %self.cluster.name, error = %crate::error_chain(&e), "cannot record the restore's progress");
        }
    }
}

/// An etcd task's answer in a few words.
fn answer(outcome: Result<EtcdTaskOutcome, crate::server::hub::TaskError>) -> String {
    match outcome {
        Ok(EtcdTaskOutcome::Failed { error }) => error,
        Ok(other) => format!("{other:?}"),
        Err(e) => e.to_string(),
    }
}
