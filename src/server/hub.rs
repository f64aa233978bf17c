//! The server's table of nodes: which nodes Git declares, the plan each should run (with its
//! generation and checksum), the live session of each, and the latest each agent reported.
//!
//! Plans reach sessions through one `watch` channel per node, already encoded, so handing a new
//! plan to 10,000 agents is 10,000 channel sends. Generations only ever grow: they are kept in
//! the state directory and survive daemon restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};

use crate::join::{bindings_cluster, bindings_name, Bindings, BINDINGS_PREFIX};
use crate::nodeplan::{NodeSpec, SealedSpec};
use crate::protocol::{encode, AppliedMark, EtcdTask, EtcdTaskOutcome, Refusal, ServerMessage};
use crate::reconcile::NodeReport;
use crate::state::StateError;
use crate::store::{DurableState, Stamp};

/// Each cluster's nodes' generations are one document, `generations-{cluster}.json`: a publish
/// rewrites its own cluster's, never the whole table.
const GENERATIONS_PREFIX: &str = "generations-";

fn generations_name(cluster: &str) -> String {
    format!("{GENERATIONS_PREFIX}{cluster}.json")
}

/// A node's plan as sent: the message encoded once for every session that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFrame {
    pub generation: u64,
    pub checksum: String,
    /// The cluster's fencing token it carries.
    pub fence: Option<u64>,
    pub text: Arc<str>,
}

/// Why a session is told to end.
#[derive(Debug)]
pub enum Kick {
    /// A newer session of the same node took over.
    Replaced,
    Refused(Refusal),
    /// The cluster moved to another daemon (or is moving): the agent is sent there.
    Moved(Route),
}

/// Where an agent of a cluster is served, when several daemons share the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// By this daemon (always so when the state is not shared).
    Here,
    /// By the daemon whose agent URL this is.
    Owner { daemon: String, url: String },
    /// By nobody yet: the cluster is moving, or its owner has not claimed it.
    Unowned,
}

/// An etcd task on its way to a session, which sends it to its agent.
#[derive(Debug)]
pub struct TaskRequest {
    pub id: u64,
    pub task: EtcdTask,
    /// The cluster's fencing token when the task was asked for.
    pub fence: Option<u64>,
}

/// Why an etcd task got no outcome from its agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("node {node} is not declared")]
    Undeclared { node: String },
    #[error("{node}'s agent is not connected")]
    NotConnected { node: String },
    #[error("{node}'s agent has too many etcd tasks queued")]
    Busy { node: String },
    #[error("{node}'s agent disconnected before it answered")]
    SessionEnded { node: String },
    #[error("{node}'s agent did not answer within {limit:?}")]
    TimedOut {
        node: String,
        limit: std::time::Duration,
    },
}

/// A node's live session, as the hub holds it.
struct Live {
    id: u64,
    kick: oneshot::Sender<Kick>,
    tasks: mpsc::Sender<TaskRequest>,
}

/// What `Hub::attach` gives a new session.
pub struct Attached {
    pub id: u64,
    pub plans: watch::Receiver<Option<PlanFrame>>,
    pub kick: oneshot::Receiver<Kick>,
    pub tasks: mpsc::Receiver<TaskRequest>,
}

struct NodeEntry {
    plan: watch::Sender<Option<PlanFrame>>,
    report: NodeReport,
    session: Option<Live>,
}

impl NodeEntry {
    fn new() -> NodeEntry {
        NodeEntry {
            plan: watch::Sender::new(None),
            report: NodeReport::default(),
            session: None,
        }
    }
}

struct Nodes {
    /// Whether the desired state was ever set; until then agents are told to retry.
    ready: bool,
    /// Keyed by `(cluster, node)`; only declared nodes are present.
    /// By cluster, then node: one cluster's nodes are a range.
    nodes: BTreeMap<(String, String), NodeEntry>,
    generations: BTreeMap<String, AppliedMark>,
    next_session: u64,
    /// Bumped whenever a node of the cluster connects, leaves or reports.
    changes: HashMap<String, watch::Sender<u64>>,
    next_task: u64,
    /// Etcd tasks sent and not answered: the node they went to, and who waits.
    pending: HashMap<u64, ((String, String), oneshot::Sender<EtcdTaskOutcome>)>,
    /// Steps agents reported doing, by action and whether they failed, since the start.
    steps: BTreeMap<(&'static str, bool), u64>,
    /// When several daemons share the state: the clusters this daemon serves, and the
    /// owners of the others (`Route`).
    sharing: Option<Sharing>,
    /// Plans and tasks agents refused for an old fencing token, since the start.
    fenced: u64,
}

/// What the hub knows of the other daemons, when several share the state.
#[derive(Debug, Default)]
struct Sharing {
    /// Claimed by this daemon: served once its nodes are declared (`serving`); until then its
    /// agents are told to retry, not refused as undeclared.
    owned: BTreeSet<String>,
    serving: BTreeSet<String>,
    /// Other clusters' owners: daemon id and agent URL.
    owners: HashMap<String, (String, String)>,
}

impl Nodes {
    /// Tells whoever watches `cluster` that something of it changed.
    fn touch(&mut self, cluster: &str) {
        if let Some(tx) = self.changes.get(cluster) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Declares exactly `nodes` in `cluster`, each with its plan when it has one (a node
    /// without one is admitted and waits). Returns whether any generation changed.
    fn publish_cluster(
        &mut self,
        cluster: &str,
        nodes: &BTreeMap<String, Option<SealedSpec>>,
        fence: Option<u64>,
        revoked: &mut BTreeMap<(String, String), String>,
    ) -> bool {
        let mut changed = false;
        for (node, spec) in nodes {
            match spec {
                Some(spec) => changed |= self.publish_node(cluster, node, spec, fence),
                None => {
                    let key = (cluster.to_string(), node.clone());
                    self.nodes.entry(key).or_insert_with(NodeEntry::new);
                }
            }
        }
        let gone: Vec<(String, String)> = cluster_range(&self.nodes, cluster)
            .map(|(key, _)| key)
            .filter(|(_, n)| !nodes.contains_key(n))
            .cloned()
            .collect();
        self.drop_nodes(gone, revoked);
        self.touch(cluster);
        changed
    }

    /// Gives every declared node its plan; a changed plan gets the next generation. Returns
    /// whether any generation changed.
    fn publish(
        &mut self,
        desired: &BTreeMap<String, BTreeMap<String, NodeSpec>>,
    ) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        for (cluster, specs) in desired {
            for (node, spec) in specs {
                if self.publish_node(cluster, node, &SealedSpec::new(spec.clone()), None) {
                    changed.insert(cluster.clone());
                }
            }
        }
        changed
    }

    fn publish_node(
        &mut self,
        cluster: &str,
        node: &str,
        sealed: &SealedSpec,
        fence: Option<u64>,
    ) -> bool {
        let checksum = sealed.checksum();
        let gen_key = format!("{cluster}/{node}");
        let mark = self.generations.get(&gen_key);
        let generation = match mark {
            Some(m) if m.checksum == checksum => m.generation,
            Some(m) => m.generation + 1,
            None => 1,
        };
        let changed = mark.is_none_or(|m| m.generation != generation);
        if changed {
            let mark = AppliedMark {
                generation,
                checksum: checksum.to_string(),
            };
            self.generations.insert(gen_key, mark);
        }
        let key = (cluster.to_string(), node.to_string());
        let entry = self.nodes.entry(key).or_insert_with(NodeEntry::new);
        let current = entry
            .plan
            .borrow()
            .as_ref()
            .map(|f| (f.generation, f.fence));
        if current != Some((generation, fence)) {
            let message = ServerMessage::Plan {
                generation,
                checksum: checksum.to_string(),
                spec: sealed.spec().clone(),
                fence,
            };
            // A node plan is far below the frame limit; one that is not is a bug worth a
            // loud failure at the agent rather than a silent one here.
            let text = encode(&message).unwrap_or_else(|e| {
                tracing::error!(cluster, node, error = %e, "a node plan cannot be sent");
                String::new()
            });
            entry.plan.send_replace(Some(PlanFrame {
                generation,
                checksum: checksum.to_string(),
                fence,
                text: text.into(),
            }));
        }
        changed
    }

    /// Forgets nodes no longer declared and ends their sessions with the reason: revoked
    /// (`revoked` says why) or undeclared.
    fn drop_undeclared(
        &mut self,
        desired: &BTreeMap<String, BTreeMap<String, NodeSpec>>,
        revoked: &mut BTreeMap<(String, String), String>,
    ) {
        let declared = |(cluster, node): &(String, String)| {
            desired.get(cluster).is_some_and(|n| n.contains_key(node))
        };
        let gone: Vec<(String, String)> = self
            .nodes
            .keys()
            .filter(|k| !declared(k))
            .cloned()
            .collect();
        self.drop_nodes(gone, revoked);
    }

    /// Forgets `gone` and ends their sessions with the reason: revoked (`revoked` says why)
    /// or undeclared.
    fn drop_nodes(
        &mut self,
        gone: Vec<(String, String)>,
        revoked: &mut BTreeMap<(String, String), String>,
    ) {
        for key in gone {
            let Some(mut entry) = self.nodes.remove(&key) else {
                continue;
            };
            let (cluster, node) = key.clone();
            let refusal = match revoked.remove(&key) {
                Some(why) => Refusal::Revoked { cluster, node, why },
                None => Refusal::UndeclaredNode { cluster, node },
            };
            if let Some(live) = entry.session.take() {
                let _ = live.kick.send(Kick::Refused(refusal));
            }
        }
    }
}

/// One cluster's bindings as last read or written, and its document's stamp then (`None`:
/// re-read it).
#[derive(Default)]
struct BindingCache {
    bindings: Arc<Bindings>,
    stamp: Option<Stamp>,
    /// Bumped by every change of the cache, so a refresh that read the document while this
    /// process wrote it drops what it read instead of going back to it.
    version: u64,
}

/// Shared by the accept loop and every session.
pub struct Hub {
    state: DurableState,
    nodes: Mutex<Nodes>,
    /// By cluster.
    bindings: Mutex<HashMap<String, BindingCache>>,
    /// Held while the generations are saved, so saves land in the order they were taken.
    saving: Mutex<()>,
    transfers: super::transfer::Transfers,
}

/// Why the hub could not change its state.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    State(#[from] StateError),
}

impl Hub {
    pub fn new(state: DurableState) -> Result<Hub, HubError> {
        let mut generations = BTreeMap::new();
        for name in state.names(GENERATIONS_PREFIX)? {
            let cluster: BTreeMap<String, AppliedMark> = state.load(&name)?.unwrap_or_default();
            generations.extend(cluster);
        }
        let moved = crate::join::split_fleet_bindings(&state)?;
        if moved > 0 {
            tracing::info!(
                bindings = moved,
                "node credentials moved into a document per cluster"
            );
        }
        let hub = Hub {
            nodes: Mutex::new(Nodes {
                ready: false,
                nodes: BTreeMap::new(),
                generations,
                next_session: 1,
                changes: HashMap::new(),
                next_task: 1,
                pending: HashMap::new(),
                steps: BTreeMap::new(),
                sharing: None,
                fenced: 0,
            }),
            bindings: Mutex::new(HashMap::new()),
            saving: Mutex::new(()),
            transfers: super::transfer::Transfers::default(),
            state,
        };
        hub.read_bindings()?;
        Ok(hub)
    }

    /// The transfers (snapshots' bytes) the daemon waits for.
    pub fn transfers(&self) -> &super::transfer::Transfers {
        &self.transfers
    }

    pub fn state(&self) -> &DurableState {
        &self.state
    }

    fn lock(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the whole desired state: every declared node of every cluster with its plan. A node
    /// whose plan changed gets the next generation. Nodes no longer declared lose their plan,
    /// their credential is revoked and their session ends with the reason.
    ///
    /// Blocking (it writes the state directory): async callers run it on `spawn_blocking`. No
    /// lock that sessions take is held while it writes.
    pub fn set_desired(
        &self,
        desired: &BTreeMap<String, BTreeMap<String, NodeSpec>>,
    ) -> Result<(), HubError> {
        let mut revoked = self.revoke_undeclared(desired)?;
        let changed = {
            let mut nodes = self.lock();
            let changed = nodes.publish(desired);
            nodes.drop_undeclared(desired, &mut revoked);
            nodes.ready = true;
            changed
        };
        for cluster in &changed {
            self.save_generations(cluster)?;
        }
        Ok(())
    }

    /// Declares exactly `nodes` in `cluster`, each with its plan when it has one; a node with
    /// `None` is admitted and waits for its plan. A changed plan gets the next generation. Nodes
    /// of the cluster not listed lose their plan, their credential is revoked and their session
    /// ends with the reason; an empty map forgets the cluster.
    ///
    /// Blocking (it writes the state directory), like `set_desired`.
    pub fn set_cluster(
        &self,
        cluster: &str,
        nodes: &BTreeMap<String, Option<SealedSpec>>,
    ) -> Result<(), HubError> {
        let declared: BTreeSet<String> = nodes.keys().cloned().collect();
        self.refresh_cluster_bindings(cluster);
        let mut revoked = self.revoke(cluster, Some(&declared))?;
        let fence = self.fence(cluster);
        let generations_changed = {
            let mut table = self.lock();
            if let Some(sharing) = table.sharing.as_mut() {
                if sharing.owned.contains(cluster) {
                    sharing.serving.insert(cluster.to_string());
                }
            }
            table.publish_cluster(cluster, nodes, fence, &mut revoked)
        };
        if generations_changed {
            self.save_generations(cluster)?;
        }
        Ok(())
    }

    /// Lets agents in: until now they were told to retry, as the desired state was not known.
    pub fn mark_ready(&self) {
        self.lock().ready = true;
    }

    /// A channel whose value changes whenever a node of `cluster` connects, leaves, reports or
    /// gets a new plan.
    pub fn watch_cluster(&self, cluster: &str) -> watch::Receiver<u64> {
        self.lock()
            .changes
            .entry(cluster.to_string())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Revokes the credentials of nodes Git no longer declares, in every cluster with
    /// bindings; returns why, by node.
    fn revoke_undeclared(
        &self,
        desired: &BTreeMap<String, BTreeMap<String, NodeSpec>>,
    ) -> Result<BTreeMap<(String, String), String>, HubError> {
        self.refresh_bindings();
        let bound: Vec<String> = self.locked_bindings().keys().cloned().collect();
        let mut revoked = BTreeMap::new();
        for cluster in bound {
            let declared: Option<BTreeSet<String>> =
                desired.get(&cluster).map(|n| n.keys().cloned().collect());
            revoked.append(&mut self.revoke(&cluster, declared.as_ref())?);
        }
        Ok(revoked)
    }

    /// Revokes the nodes of `cluster` that `declared` does not list (`None`: the cluster left
    /// Git); returns why, by node. Most calls revoke nothing: the bindings as read (a stamp
    /// when unchanged) are asked before the document is rewritten.
    fn revoke(
        &self,
        cluster: &str,
        declared: Option<&BTreeSet<String>>,
    ) -> Result<BTreeMap<(String, String), String>, HubError> {
        let mut revoked = BTreeMap::new();
        if self
            .bindings(cluster)
            .undeclared(cluster, declared)
            .is_empty()
        {
            return Ok(revoked);
        }
        let outcome = self.update_bindings(cluster, |b| {
            // A change may run again on a newer document: count only the last run's.
            revoked.clear();
            for node in b.revoke_undeclared(cluster, declared) {
                let why = b.nodes[&format!("{cluster}/{node}")]
                    .revoked
                    .clone()
                    .unwrap_or_default();
                revoked.insert((cluster.to_string(), node), why);
            }
            Ok::<(), Refusal>(())
        })?;
        if let Err(r) = outcome {
            unreachable!("revoking undeclared nodes refuses nothing: {r}");
        }
        Ok(revoked)
    }

    /// Saves `cluster`'s generations as they are now. Saves are serialised and each copies
    /// the cluster's table when it starts, so a file never goes back to an older table.
    fn save_generations(&self, cluster: &str) -> Result<(), HubError> {
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = format!("{cluster}/");
        let generations: BTreeMap<String, AppliedMark> = self
            .lock()
            .generations
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.state
            .save_for(cluster, &generations_name(cluster), &generations)?;
        Ok(())
    }

    /// `cluster`'s fencing token, as plans and tasks carry it.
    fn fence(&self, cluster: &str) -> Option<u64> {
        self.state.fence(cluster).map(|f| f.0 as u64)
    }

    /// From now on agents are served only for the clusters this daemon owns (`own`); the
    /// others' are sent to their owners (`set_owners`).
    pub fn share(&self) {
        self.lock().sharing.get_or_insert_with(Sharing::default);
    }

    /// Where `cluster`'s agents are served.
    pub fn route(&self, cluster: &str) -> Route {
        let nodes = self.lock();
        let Some(sharing) = &nodes.sharing else {
            return Route::Here;
        };
        if sharing.serving.contains(cluster) {
            return Route::Here;
        }
        if sharing.owned.contains(cluster) {
            return Route::Unowned;
        }
        match sharing.owners.get(cluster) {
            Some((daemon, url)) => Route::Owner {
                daemon: daemon.clone(),
                url: url.clone(),
            },
            None => Route::Unowned,
        }
    }

    /// The other daemons' clusters, by name: owner id and agent URL.
    pub fn set_owners(&self, owners: HashMap<String, (String, String)>) {
        if let Some(sharing) = self.lock().sharing.as_mut() {
            sharing.owners = owners;
        }
    }

    /// Starts serving `cluster` (this daemon claimed it and holds its fence in the state): its
    /// generations are read again, as the daemon that owned it before may have moved them on.
    /// Blocking.
    pub fn own(&self, cluster: &str) -> Result<(), HubError> {
        // Its previous owner may have bound nodes since this daemon last looked.
        self.refresh_cluster_bindings(cluster);
        let saved: BTreeMap<String, AppliedMark> = self
            .state
            .load(&generations_name(cluster))?
            .unwrap_or_default();
        let mut nodes = self.lock();
        let prefix = format!("{cluster}/");
        nodes.generations.retain(|k, _| !k.starts_with(&prefix));
        nodes.generations.extend(saved);
        if let Some(sharing) = nodes.sharing.as_mut() {
            sharing.owned.insert(cluster.to_string());
            sharing.owners.remove(cluster);
        }
        Ok(())
    }

    /// Stops serving `cluster`: its nodes are forgotten and their sessions sent to `to`.
    pub fn disown(&self, cluster: &str, to: Route) {
        let mut nodes = self.lock();
        if let Some(sharing) = nodes.sharing.as_mut() {
            sharing.owned.remove(cluster);
            sharing.serving.remove(cluster);
        }
        let gone: Vec<(String, String)> = cluster_range(&nodes.nodes, cluster)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(mut entry) = nodes.nodes.remove(&key) {
                nodes.pending.retain(|_, (target, _)| *target != key);
                if let Some(live) = entry.session.take() {
                    let _ = live.kick.send(Kick::Moved(to.clone()));
                }
            }
        }
        let prefix = format!("{cluster}/");
        nodes.generations.retain(|k, _| !k.starts_with(&prefix));
        nodes.touch(cluster);
    }

    /// Notes that an agent refused a plan or task for its old fencing token.
    pub fn fenced(&self) {
        self.lock().fenced += 1;
    }

    /// How many plans and tasks agents refused for an old fencing token, since the start.
    pub fn fenced_count(&self) -> u64 {
        self.lock().fenced
    }

    /// Whether the desired state was set at least once.
    pub fn is_ready(&self) -> bool {
        self.lock().ready
    }

    /// Whether Git declares `cluster/node`.
    pub fn is_declared(&self, cluster: &str, node: &str) -> bool {
        self.lock()
            .nodes
            .contains_key(&(cluster.to_string(), node.to_string()))
    }

    /// Registers the session of a declared node, ending the one it replaces. Returns what the
    /// session needs: its id, the node's plan channel, its kick receiver and its task queue.
    pub fn attach(&self, cluster: &str, node: &str) -> Option<Attached> {
        let mut nodes = self.lock();
        let id = nodes.next_session;
        nodes.next_session += 1;
        let entry = nodes
            .nodes
            .get_mut(&(cluster.to_string(), node.to_string()))?;
        let (kick_tx, kick) = oneshot::channel();
        let (task_tx, tasks) = mpsc::channel(crate::protocol::MAX_ETCD_TASKS);
        let live = Live {
            id,
            kick: kick_tx,
            tasks: task_tx,
        };
        if let Some(old) = entry.session.replace(live) {
            let _ = old.kick.send(Kick::Replaced);
        }
        entry.report.connected = true;
        entry.report.last_seen = Some(SystemTime::now());
        let plans = entry.plan.subscribe();
        nodes.touch(cluster);
        Some(Attached {
            id,
            plans,
            kick,
            tasks,
        })
    }

    /// Ends session `id` of a node, unless a newer one replaced it. Its unanswered etcd tasks
    /// end with it.
    pub fn detach(&self, cluster: &str, node: &str, id: u64) {
        let mut nodes = self.lock();
        let key = (cluster.to_string(), node.to_string());
        let Some(entry) = nodes.nodes.get_mut(&key) else {
            return;
        };
        if entry.session.as_ref().is_none_or(|live| live.id != id) {
            return;
        }
        entry.session = None;
        entry.report.connected = false;
        nodes.pending.retain(|_, (target, _)| *target != key);
        nodes.touch(cluster);
    }

    /// Runs an etcd task on `node`'s agent and waits for its outcome, at most `limit`.
    pub async fn etcd_task(
        &self,
        cluster: &str,
        node: &str,
        task: EtcdTask,
        limit: std::time::Duration,
    ) -> Result<EtcdTaskOutcome, TaskError> {
        let key = (cluster.to_string(), node.to_string());
        let node_name = || node.to_string();
        let (tx, rx) = oneshot::channel();
        let (id, queue) = {
            let mut nodes = self.lock();
            let entry = nodes
                .nodes
                .get(&key)
                .ok_or_else(|| TaskError::Undeclared { node: node_name() })?;
            let queue = entry
                .session
                .as_ref()
                .ok_or_else(|| TaskError::NotConnected { node: node_name() })?
                .tasks
                .clone();
            let id = nodes.next_task;
            nodes.next_task += 1;
            nodes.pending.insert(id, (key.clone(), tx));
            (id, queue)
        };
        let fence = self.fence(cluster);
        if queue.try_send(TaskRequest { id, task, fence }).is_err() {
            self.lock().pending.remove(&id);
            return Err(TaskError::Busy { node: node_name() });
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(TaskError::SessionEnded { node: node_name() }),
            Err(_) => {
                self.lock().pending.remove(&id);
                Err(TaskError::TimedOut {
                    node: node_name(),
                    limit,
                })
            }
        }
    }

    /// Hands an agent's answer to whoever waits for task `id`; false when no task `id` was
    /// sent to that node (a late answer, or one the agent made up).
    pub fn complete_task(
        &self,
        cluster: &str,
        node: &str,
        id: u64,
        outcome: EtcdTaskOutcome,
    ) -> bool {
        let mut nodes = self.lock();
        let key = (cluster.to_string(), node.to_string());
        match nodes.pending.get(&id) {
            Some((target, _)) if *target == key => {}
            _ => return false,
        }
        let Some((_, waiter)) = nodes.pending.remove(&id) else {
            return false;
        };
        let _ = waiter.send(outcome);
        true
    }

    /// Records what an agent reported.
    pub fn record(&self, cluster: &str, node: &str, change: impl FnOnce(&mut NodeReport)) {
        let mut nodes = self.lock();
        if let Some(entry) = nodes
            .nodes
            .get_mut(&(cluster.to_string(), node.to_string()))
        {
            change(&mut entry.report);
            entry.report.last_seen = Some(SystemTime::now());
            nodes.touch(cluster);
        }
    }

    /// Records an agent's report of an application: its mark and steps. Steps that did
    /// something are counted by action and outcome, unless the report repeats the last one
    /// (an agent resends its last report when it reconnects).
    pub fn record_applied(
        &self,
        cluster: &str,
        node: &str,
        mark: AppliedMark,
        steps: Vec<crate::protocol::StepReport>,
    ) {
        let mut nodes = self.lock();
        let key = (cluster.to_string(), node.to_string());
        let Some(entry) = nodes.nodes.get_mut(&key) else {
            return;
        };
        let repeated = entry.report.applied.as_ref() == Some(&mark) && entry.report.steps == steps;
        let counted: Vec<(&'static str, bool)> = if repeated {
            Vec::new()
        } else {
            steps
                .iter()
                .filter(|s| s.action != "unchanged")
                .map(|s| (counted_action(&s.action), s.error.is_some()))
                .collect()
        };
        entry.report.applied = Some(mark);
        entry.report.steps = steps;
        entry.report.last_seen = Some(SystemTime::now());
        for step in counted {
            *nodes.steps.entry(step).or_default() += 1;
        }
        nodes.touch(cluster);
    }

    /// How many steps agents reported, by action and whether they failed.
    pub fn step_counts(&self) -> BTreeMap<(&'static str, bool), u64> {
        self.lock().steps.clone()
    }

    /// Notes that a node was heard from (a heartbeat): nothing it reports changed, so no
    /// watcher of its cluster is woken.
    pub fn seen(&self, cluster: &str, node: &str) {
        let mut nodes = self.lock();
        if let Some(entry) = nodes
            .nodes
            .get_mut(&(cluster.to_string(), node.to_string()))
        {
            entry.report.last_seen = Some(SystemTime::now());
        }
    }

    /// The latest reports of one cluster's declared nodes, by node.
    pub fn cluster_reports(&self, cluster: &str) -> BTreeMap<String, NodeReport> {
        let nodes = self.lock();
        cluster_range(&nodes.nodes, cluster)
            .map(|((_, n), e)| (n.clone(), e.report.clone()))
            .collect()
    }

    /// The latest report of one node.
    pub fn report(&self, cluster: &str, node: &str) -> Option<NodeReport> {
        self.lock()
            .nodes
            .get(&(cluster.to_string(), node.to_string()))
            .map(|e| e.report.clone())
    }

    /// Every declared node's latest report, by cluster and node.
    pub fn reports(&self) -> BTreeMap<(String, String), NodeReport> {
        self.lock()
            .nodes
            .iter()
            .map(|(k, e)| (k.clone(), e.report.clone()))
            .collect()
    }

    /// Every declared node with its agent's latest report, by cluster and node: the operator
    /// API's nodes document.
    pub fn nodes_document(&self) -> crate::api::NodesDocument {
        let nodes = self.lock();
        let mut out: Vec<crate::api::NodeStatus> = nodes
            .nodes
            .iter()
            .map(|((cluster, node), e)| node_status(cluster, node, e))
            .collect();
        drop(nodes);
        out.sort_by(|a, b| (&a.cluster, &a.node).cmp(&(&b.cluster, &b.node)));
        crate::api::NodesDocument {
            format_version: crate::api::NODES_FORMAT_VERSION,
            nodes: out,
        }
    }

    /// One declared node with its agent's latest report.
    pub fn node_status(&self, cluster: &str, node: &str) -> Option<crate::api::NodeStatus> {
        let nodes = self.lock();
        let entry = nodes.nodes.get(&(cluster.to_string(), node.to_string()))?;
        Some(node_status(cluster, node, entry))
    }

    /// How many declared nodes' latest reports satisfy `pred`, counted under the lock without
    /// copying any report: cheap enough to ask often while waiting for a fleet to catch up.
    pub fn count_reports(&self, pred: impl Fn(&NodeReport) -> bool) -> usize {
        self.lock()
            .nodes
            .values()
            .filter(|e| pred(&e.report))
            .count()
    }

    /// The plan a node is given now: generation, checksum and spec.
    pub fn plan_of(&self, cluster: &str, node: &str) -> Option<(u64, String, NodeSpec)> {
        let frame = self
            .lock()
            .nodes
            .get(&(cluster.to_string(), node.to_string()))?
            .plan
            .borrow()
            .clone()?;
        match crate::protocol::decode::<ServerMessage>(&frame.text) {
            Ok(ServerMessage::Plan {
                generation,
                checksum,
                spec,
                ..
            }) => Some((generation, checksum, spec)),
            _ => None,
        }
    }

    /// The plan generation a node should run.
    pub fn generation(&self, cluster: &str, node: &str) -> Option<u64> {
        self.lock()
            .nodes
            .get(&(cluster.to_string(), node.to_string()))
            .and_then(|e| e.plan.borrow().as_ref().map(|f| f.generation))
    }

    /// `cluster`'s node bindings as last read: no IO. `refresh_bindings` keeps them current.
    pub fn bindings(&self, cluster: &str) -> Arc<Bindings> {
        self.locked_bindings()
            .get(cluster)
            .map(|c| c.bindings.clone())
            .unwrap_or_default()
    }

    fn locked_bindings(&self) -> std::sync::MutexGuard<'_, HashMap<String, BindingCache>> {
        self.bindings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads every cluster's bindings (at start).
    fn read_bindings(&self) -> Result<(), StateError> {
        for (name, stamp) in self.state.stamps(BINDINGS_PREFIX)? {
            if let Some(cluster) = bindings_cluster(&name) {
                let bindings: Bindings = self.state.load(&name)?.unwrap_or_default();
                self.keep_bindings(cluster, bindings, Some(stamp));
            }
        }
        Ok(())
    }

    /// Re-reads the bindings of every cluster whose document changed since it was read
    /// (another process, such as `drover node reset` or another daemon, wrote it). Blocking:
    /// one listing of stamps, and a read of each changed document.
    pub fn refresh_bindings(&self) {
        let stamps = match self.state.stamps(BINDINGS_PREFIX) {
            Ok(stamps) => stamps,
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot look at node credentials; keeping the last read");
                return;
            }
        };
        let listed: HashMap<&str, Stamp> = stamps
            .iter()
            .filter_map(|(name, stamp)| Some((bindings_cluster(name)?, *stamp)))
            .collect();
        let known: Vec<String> = self.locked_bindings().keys().cloned().collect();
        let clusters: BTreeSet<&str> = listed
            .keys()
            .copied()
            .chain(known.iter().map(String::as_str))
            .collect();
        for cluster in clusters {
            self.refresh_with(cluster, listed.get(cluster).copied());
        }
    }

    /// `refresh_bindings` of one cluster: one stamp, and a read after a change.
    pub fn refresh_cluster_bindings(&self, cluster: &str) {
        match self.state.stamp(&bindings_name(cluster)) {
            Ok(now) => self.refresh_with(cluster, now),
            Err(e) => {
                tracing::error!(cluster, error = %crate::error_chain(&e), "cannot look at node credentials; keeping the last read")
            }
        }
    }

    /// Re-reads `cluster`'s bindings unless `now`, its document's stamp, is the one read. The
    /// stamp is taken before the document is read (and, after this process's own writes, as
    /// part of the write), so a write racing the read is seen on the next call, never lost.
    fn refresh_with(&self, cluster: &str, now: Option<Stamp>) {
        let (known, version) = match self.locked_bindings().get(cluster) {
            Some(c) => (c.stamp, c.version),
            None => (None, 0),
        };
        if known.is_some() && now == known {
            return;
        }
        if known.is_none() && now.is_none() {
            return;
        }
        match self.state.load::<Bindings>(&bindings_name(cluster)) {
            Ok(b) => {
                let mut caches = self.locked_bindings();
                let cache = caches.entry(cluster.to_string()).or_default();
                if cache.version == version {
                    cache.bindings = Arc::new(b.unwrap_or_default());
                    cache.stamp = now;
                    cache.version += 1;
                }
            }
            Err(e) => {
                tracing::error!(cluster, error = %crate::error_chain(&e), "cannot re-read node credentials; keeping the last read")
            }
        }
    }

    /// Changes `cluster`'s bindings atomically and keeps the result. `change` may run more
    /// than once (see `Store::modify`). Blocking.
    pub fn update_bindings<R>(
        &self,
        cluster: &str,
        change: impl FnMut(&mut Bindings) -> Result<R, Refusal>,
    ) -> Result<Result<R, Refusal>, StateError> {
        Ok(self
            .state
            .update(&bindings_name(cluster), change)?
            .map(|updated| {
                // The stamp is of exactly what this process wrote.
                self.keep_bindings(cluster, updated.value, updated.stamp);
                updated.result
            }))
    }

    /// Keeps `cluster`'s bindings this process read or wrote, with the stamp of the document
    /// then, taken before anyone else could write; a later write by another process changes
    /// the stamp.
    fn keep_bindings(&self, cluster: &str, bindings: Bindings, stamp: Option<Stamp>) {
        let mut caches = self.locked_bindings();
        let cache = caches.entry(cluster.to_string()).or_default();
        cache.bindings = Arc::new(bindings);
        cache.stamp = stamp;
        cache.version += 1;
    }
}

/// `cluster`'s nodes in `nodes`.
fn cluster_range<'n>(
    nodes: &'n BTreeMap<(String, String), NodeEntry>,
    cluster: &str,
) -> impl Iterator<Item = (&'n (String, String), &'n NodeEntry)> {
    let start = (cluster.to_string(), String::new());
    let cluster = cluster.to_string();
    nodes
        .range(start..)
        .take_while(move |((c, _), _)| *c == cluster)
}

/// The actions agents report, as counted; anything else (an agent of another version) is
/// `other`, so an agent cannot grow the metrics without bound.
const STEP_ACTIONS: [&str; 6] = [
    "created",
    "recreated",
    "started",
    "removed",
    "file-written",
    "file-removed",
];

fn counted_action(action: &str) -> &'static str {
    STEP_ACTIONS
        .into_iter()
        .find(|a| *a == action)
        .unwrap_or("other")
}

fn node_status(cluster: &str, node: &str, e: &NodeEntry) -> crate::api::NodeStatus {
    crate::api::NodeStatus {
        cluster: cluster.to_string(),
        node: node.to_string(),
        connected: e.report.connected,
        last_seen: e
            .report
            .last_seen
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        generation: e.plan.borrow().as_ref().map(|f| f.generation),
        applied: e.report.applied.clone(),
        containers: e.report.containers.clone(),
        failed_steps: e
            .report
            .steps
            .iter()
            .filter(|s| s.error.is_some())
            .cloned()
            .collect(),
    }
}
