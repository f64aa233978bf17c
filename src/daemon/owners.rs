//! Several daemons sharing the state in etcd: this daemon's side of it. It holds a lease and
//! registers under it (`store::lease`), renews it every `Timing::renew` on a thread of its own
//! (`Keeper`: no load of the async runtime, such as thousands of agents' handshakes or a long
//! drain, can hold a renewal up), and every `Timing::renew` too assigns the
//! declared clusters over the settled membership (`ownership`): it claims the clusters it
//! should own (the owner key's creation revision becomes the cluster's fence, which every state
//! write, plan and task of the cluster carries), and drains the ones it should not (their
//! reconciler finishes its pass and stops, their agents are sent to the new owner, then the key
//! is released). Clusters another daemon holds are left alone until that daemon releases them
//! or its lease expires.
//!
//! A daemon that cannot renew stops acting before its lease could have expired: at
//! `Membership::acting_until` every reconciler is stopped mid-pass and every fence dropped, and
//! if that takes longer than `Timing::stop_within` the process exits. It then joins again
//! under a new lease and claims afresh, with new fences.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::controller::Controller;
use super::metrics::Metrics;
use super::ownership::{owner, Settled};
use crate::api::{DaemonView, SharingView};
use crate::server::hub::Route;
use crate::server::Hub;
use crate::source::{DesiredState, Trigger};
use crate::state::StateError;
use crate::store::etcd::EtcdStore;
use crate::store::lease::{poke_source, source_pokes, Fence, MemberInfo, Membership};
use crate::store::DurableState;

/// The clocks of sharing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The lease's time to live.
    pub ttl: Duration,
    /// How long before the lease could expire this daemon stops acting.
    pub margin: Duration,
    /// How often the lease is renewed and the assignment looked at again.
    pub renew: Duration,
    /// How long a change of the membership must hold before clusters move.
    pub settle: Duration,
    /// How long stopping may take once the acting deadline passed, before the process exits.
    pub stop_within: Duration,
    /// How long another daemon goes without renewing before it counts as silent: its
    /// clusters' agents are told to retry until a live daemon owns them, rather than sent to a
    /// daemon that is most likely dead and would make them back off further each time.
    pub silent: Duration,
}

/// How long a stopping daemon lets its reconcilers finish their passes; within the daemon's
/// own `DRAIN_TIMEOUT`.
const GRACEFUL_STOP: Duration = Duration::from_secs(8);

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            ttl: Duration::from_secs(10),
            margin: Duration::from_secs(3),
            renew: Duration::from_secs(1),
            settle: Duration::from_secs(5),
            stop_within: Duration::from_secs(1),
            silent: Duration::from_secs(3),
        }
    }
}

/// The daemon's parts sharing acts on.
pub struct Parts {
    pub state: DurableState,
    pub hub: Arc<Hub>,
    pub controller: Arc<Controller>,
    pub metrics: Arc<Metrics>,
    /// Checks the daemon's source now.
    pub source: Trigger,
}

/// This daemon's part in sharing the work.
pub struct Owners {
    store: Arc<EtcdStore>,
    me: MemberInfo,
    timing: Timing,
    state: DurableState,
    hub: Arc<Hub>,
    controller: Arc<Controller>,
    metrics: Arc<Metrics>,
    view: watch::Sender<SharingView>,
    /// The clusters this daemon holds, with their fences.
    held: Mutex<BTreeMap<String, Fence>>,
    /// Checks this daemon's source now.
    source: Trigger,
    /// Fired by this daemon's webhooks: the source is checked here and announced to the others.
    relay: Trigger,
}

impl Owners {
    pub fn new(store: Arc<EtcdStore>, me: MemberInfo, timing: Timing, parts: Parts) -> Arc<Owners> {
        let Parts {
            state,
            hub,
            controller,
            metrics,
            source,
        } = parts;
        hub.share();
        Arc::new(Owners {
            store,
            me,
            timing,
            state,
            hub,
            controller,
            metrics,
            view: watch::Sender::new(SharingView::default()),
            held: Mutex::new(BTreeMap::new()),
            source,
            relay: Trigger::default(),
        })
    }

    /// The trigger this daemon's webhooks fire: the source is checked here, and every other
    /// daemon sharing the state checks its own within a renewal (a webhook may reach a daemon
    /// that owns none of the clusters the commit changes).
    pub fn webhook_trigger(&self) -> Trigger {
        self.relay.clone()
    }

    /// Passes this daemon's webhooks on: to its source, and to the others through etcd.
    async fn relay_webhooks(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = self.relay.fired() => {}
                () = cancel.cancelled() => return,
            }
            self.source.fire();
            let (store, me) = (self.store.clone(), self.me.id.clone());
            let poked = tokio::task::spawn_blocking(move || poke_source(&store, &me))
                .await
                .expect("poking does not panic");
            if let Err(e) = poked {
                tracing::warn!(error = %crate::error_chain(&e), "cannot tell the other daemons of a webhook; they find the commit at their next poll");
            }
        }
    }

    /// Checks the source when another daemon announced a webhook since `seen`.
    async fn follow_pokes(&self, seen: &mut Option<i64>) {
        let store = self.store.clone();
        let Ok(Ok(now)) = tokio::task::spawn_blocking(move || source_pokes(&store)).await else {
            return;
        };
        if seen.is_some_and(|s| s != now) {
            self.source.fire();
        }
        *seen = Some(now);
    }

    /// What the operator API shows.
    pub fn view(&self) -> watch::Receiver<SharingView> {
        self.view.subscribe()
    }

    /// Joins, then keeps the lease and the assignment until `cancel`; leaves at the end, so
    /// the clusters move at once rather than when the lease expires.
    pub async fn run(
        self: Arc<Self>,
        desired: watch::Receiver<Arc<DesiredState>>,
        cancel: CancellationToken,
    ) {
        let mut lost = self.controller.take_lost();
        tokio::spawn(self.clone().relay_webhooks(cancel.clone()));
        while !cancel.is_cancelled() {
            let Some(membership) = self.join(&cancel).await else {
                break;
            };
            let membership = Arc::new(membership);
            let ended = self
                .hold(&membership, &desired, lost.as_mut(), &cancel)
                .await;
            match ended {
                Held::Stopping(keeper) => {
                    self.stop_gracefully().await;
                    let left = tokio::task::spawn_blocking(move || {
                        // The keeper's clone of the membership goes with its thread.
                        keeper.stop();
                        match Arc::try_unwrap(membership) {
                            Ok(m) => m.leave().is_ok(),
                            Err(_) => false,
                        }
                    })
                    .await;
                    if !matches!(left, Ok(true)) {
                        tracing::warn!(
                            "could not revoke the lease; its clusters move when it expires"
                        );
                    }
                    break;
                }
                Held::LeaseLost(keeper) => {
                    drop(keeper);
                    self.stop_acting().await;
                    tracing::error!(
                        "this daemon's lease may have expired: it stopped acting, and joins again"
                    );
                }
            }
        }
    }

    /// Registers under a new lease, retrying until it works or the daemon stops.
    async fn join(&self, cancel: &CancellationToken) -> Option<Membership> {
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(500), self.timing.ttl);
        loop {
            let (store, me, timing) = (self.store.clone(), self.me.clone(), self.timing);
            let joined = tokio::task::spawn_blocking(move || {
                Membership::register(store, &me, timing.ttl, timing.margin)
            })
            .await
            .expect("joining does not panic");
            match joined {
                Ok(m) => {
                    tracing::info!(daemon = self.me.id, "joined the daemons sharing the state");
                    return Some(m);
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot register with the state's etcd; retrying")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = cancel.cancelled() => return None,
            }
        }
    }

    /// Keeps the lease on a `Keeper` and assigns every `Timing::renew` until the daemon stops
    /// or its acting deadline passes, which ends the hold even mid-assignment.
    async fn hold(
        &self,
        membership: &Arc<Membership>,
        desired: &watch::Receiver<Arc<DesiredState>>,
        mut lost: Option<&mut tokio::sync::mpsc::UnboundedReceiver<String>>,
        cancel: &CancellationToken,
    ) -> Held {
        let keeper = Keeper::start(membership.clone(), self.timing.renew, self.metrics.clone());
        let lapsed = lapse(membership);
        tokio::pin!(lapsed);
        let mut settled = Settled::new(self.timing.settle);
        let mut pokes = None;
        loop {
            let step = async {
                if let Err(e) = self.assign(membership, &mut settled, desired).await {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot look at the cluster owners; trying again");
                }
                self.follow_pokes(&mut pokes).await;
            };
            tokio::select! {
                () = step => {}
                () = &mut lapsed => return Held::LeaseLost(keeper),
                () = cancel.cancelled() => return Held::Stopping(keeper),
            }
            let next = tokio::time::sleep(self.timing.renew);
            tokio::pin!(next);
            loop {
                tokio::select! {
                    () = &mut next => break,
                    () = &mut lapsed => return Held::LeaseLost(keeper),
                    () = cancel.cancelled() => return Held::Stopping(keeper),
                    Some(cluster) = recv(&mut lost) => self.forget(&cluster, None).await,
                }
            }
        }
    }

    /// Claims the clusters this daemon should own and drains the others it holds.
    async fn assign(
        &self,
        membership: &Arc<Membership>,
        settled: &mut Settled,
        desired: &watch::Receiver<Arc<DesiredState>>,
    ) -> Result<(), StateError> {
        let (m, quiet) = (membership.clone(), self.timing.silent);
        let (members, owners, silent) = tokio::task::spawn_blocking(move || {
            Ok::<_, StateError>((m.member_infos()?, m.owners()?, m.silent(quiet)?))
        })
        .await
        .expect("reading does not panic")?;
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let assigned: Vec<String> = settled.observe(ids, Instant::now()).to_vec();
        let declared: BTreeSet<String> = {
            let d = desired.borrow();
            if d.revision.is_none() {
                return Ok(());
            }
            d.clusters.keys().map(|c| c.to_string()).collect()
        };
        // A silent daemon's agents wait for the next owner rather than go to it.
        let urls: HashMap<&str, &str> = members
            .iter()
            .filter(|m| !silent.contains(&m.id))
            .map(|m| (m.id.as_str(), m.agents_url.as_str()))
            .collect();
        let held: BTreeMap<String, Fence> = self.held().clone();
        for (cluster, fence) in &held {
            let wanted = owner(cluster, &assigned);
            if !declared.contains(cluster) || wanted != Some(self.me.id.as_str()) {
                let to = route_to(wanted, &urls);
                self.drain(membership, cluster, *fence, to).await;
            }
        }
        for cluster in &declared {
            let free = owners.get(cluster).is_none_or(|(_, ours)| *ours);
            if owner(cluster, &assigned) == Some(self.me.id.as_str())
                && free
                && !self.held().contains_key(cluster)
            {
                self.claim(membership, cluster).await;
            }
        }
        self.publish_routes(&owners, &urls);
        self.view.send_replace(SharingView {
            me: self.me.id.clone(),
            daemons: members
                .iter()
                .map(|m| DaemonView {
                    id: m.id.clone(),
                    agents_url: m.agents_url.clone(),
                    silent: silent.contains(&m.id),
                })
                .collect(),
            owners: owners
                .iter()
                .map(|(c, (o, _))| (c.clone(), o.clone()))
                .collect(),
            settling: settled.unsettled(),
            lease: format!("{:x}", membership.lease().0),
            lease_ttl_seconds: membership.lease().1.as_secs(),
        });
        Ok(())
    }

    /// Takes `cluster` when nobody holds it: its fence into the state, its generations read
    /// again, its reconciler started.
    async fn claim(&self, membership: &Arc<Membership>, cluster: &str) {
        let (m, c) = (membership.clone(), cluster.to_string());
        let claimed = tokio::task::spawn_blocking(move || m.claim(&c))
            .await
            .expect("claiming does not panic");
        let fence = match claimed {
            Ok(Some(fence)) => fence,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(cluster, error = %crate::error_chain(&e), "cannot claim the cluster");
                return;
            }
        };
        self.state.set_fence(cluster, Some(fence));
        let (hub, c) = (self.hub.clone(), cluster.to_string());
        let owned = tokio::task::spawn_blocking(move || hub.own(&c))
            .await
            .expect("reading does not panic");
        if let Err(e) = owned {
            tracing::error!(cluster, error = %crate::error_chain(&e), "cannot read the cluster's generations; giving it up");
            self.state.set_fence(cluster, None);
            let (m, c) = (membership.clone(), cluster.to_string());
            let _ = tokio::task::spawn_blocking(move || m.release(&c, fence)).await;
            return;
        }
        self.held().insert(cluster.to_string(), fence);
        self.metrics.ownership_changes.inc();
        tracing::info!(cluster, fence = fence.0, "this daemon owns the cluster now");
        self.controller.own(cluster);
    }

    /// Gives `cluster` up: its reconciler finishes its pass, its agents go to `to`, then the
    /// key is released for the next owner.
    async fn drain(&self, membership: &Arc<Membership>, cluster: &str, fence: Fence, to: Route) {
        tracing::info!(
            cluster,
            ?to,
            "the cluster moves to another daemon; draining it"
        );
        self.forget(cluster, Some(to)).await;
        let (m, c) = (membership.clone(), cluster.to_string());
        let released = tokio::task::spawn_blocking(move || m.release(&c, fence))
            .await
            .expect("releasing does not panic");
        if let Err(e) = released {
            tracing::warn!(cluster, error = %crate::error_chain(&e), "cannot release the cluster; it moves when this daemon's lease ends");
        }
        self.metrics.ownership_changes.inc();
    }

    /// Stops acting for `cluster`: its reconciler ended, its fence dropped, its agents sent on.
    async fn forget(&self, cluster: &str, to: Option<Route>) {
        self.controller.disown(cluster).await;
        self.state.set_fence(cluster, None);
        self.hub.disown(cluster, to.unwrap_or(Route::Unowned));
        self.held().remove(cluster);
    }

    /// The daemon stops: every reconciler finishes its pass (within `GRACEFUL_STOP`, else it
    /// is stopped mid-pass), then the fences go; the lease is revoked after, so the clusters
    /// move at once.
    async fn stop_gracefully(&self) {
        let clusters: Vec<String> = self.held().keys().cloned().collect();
        let draining = async {
            for cluster in &clusters {
                self.controller.disown(cluster).await;
            }
        };
        if tokio::time::timeout(GRACEFUL_STOP, draining).await.is_err() {
            self.controller.stop_all().await;
        }
        for cluster in &clusters {
            self.state.set_fence(cluster, None);
            self.hub.disown(cluster, Route::Unowned);
        }
        self.held().clear();
    }

    /// Stops every reconciler and drops every fence at once; exits the process if that does
    /// not finish within `Timing::stop_within`.
    async fn stop_acting(&self) {
        let clusters: Vec<String> = self.held().keys().cloned().collect();
        let stopping = async {
            self.controller.stop_all().await;
            for cluster in &clusters {
                self.state.set_fence(cluster, None);
                self.hub.disown(cluster, Route::Unowned);
            }
        };
        if tokio::time::timeout(self.timing.stop_within, stopping)
            .await
            .is_err()
        {
            tracing::error!("could not stop acting in time; exiting so that no late step runs");
            std::process::exit(75);
        }
        self.held().clear();
    }

    /// Tells the hub where the other clusters' agents go.
    fn publish_routes(
        &self,
        owners: &BTreeMap<String, (String, bool)>,
        urls: &HashMap<&str, &str>,
    ) {
        let elsewhere = owners
            .iter()
            .filter(|(_, (id, _))| *id != self.me.id)
            .filter_map(|(c, (id, _))| {
                let url = urls.get(id.as_str())?;
                Some((c.clone(), (id.clone(), url.to_string())))
            })
            .collect();
        self.hub.set_owners(elsewhere);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Fence>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How holding the lease ended, with the keeper of the lease held.
enum Held {
    Stopping(Keeper),
    LeaseLost(Keeper),
}

/// Resolves once `membership`'s acting deadline passed: the lease may have expired.
async fn lapse(membership: &Membership) {
    loop {
        let until = membership.acting_until();
        if Instant::now() >= until {
            return;
        }
        // A renewal meanwhile moves the deadline: look again when this one comes.
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
    }
}

/// Renews a lease every interval on a thread of its own, each renewal timed into the metrics,
/// until stopped or dropped.
struct Keeper {
    /// Dropped to stop the thread.
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Keeper {
    fn start(membership: Arc<Membership>, every: Duration, metrics: Arc<Metrics>) -> Keeper {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("drover-lease".into())
            .spawn(move || loop {
                let started = Instant::now();
                if let Err(e) = membership.renew() {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot renew this daemon's lease");
                }
                metrics.lease_renew.observe(started.elapsed().as_secs_f64());
                // Disconnected (the keeper dropped) ends it; a timeout is the next renewal.
                let wait = every.saturating_sub(started.elapsed());
                if stopped.recv_timeout(wait) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
            })
            .expect("a thread for the lease");
        Keeper { stop, thread }
    }

    /// Stops the thread and waits for it (at most one renewal). Blocking.
    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Where a drained cluster's agents go: its next owner, when known.
fn route_to(wanted: Option<&str>, urls: &HashMap<&str, &str>) -> Route {
    match wanted.and_then(|id| urls.get(id).map(|url| (id, url))) {
        Some((id, url)) => Route::Owner {
            daemon: id.to_string(),
            url: url.to_string(),
        },
        None => Route::Unowned,
    }
}

async fn recv(
    lost: &mut Option<&mut tokio::sync::mpsc::UnboundedReceiver<String>>,
) -> Option<String> {
    match lost {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
