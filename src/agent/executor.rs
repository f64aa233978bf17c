//! The agent's executor: one task that owns the node's plan and applies it with the Docker
//! driver whenever something may have drifted: a new plan, a Docker event, a periodic resync,
//! or a retry after a failed step (capped exponential backoff with full jitter). It runs the
//! plan's health probes on their interval and publishes two things the session forwards to
//! the daemon, also after a reconnect: the last application (generation, checksum, each step's
//! result) and what runs (each container's state and health).
//!
//! The executor outlives sessions: a lost connection never interrupts an apply, and a
//! restarted agent re-applies its saved plan at once, which redoes nothing that already runs
//! as planned (the driver compares spec hashes).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::credential::{DataDir, PlanRecord};
use super::docker::{Action, Driver, StepResult};
use super::probe::{Health, Prober};
use crate::backoff::Backoff;
use crate::nodeplan::{container_name, NodeSpec};
use crate::protocol::{AppliedMark, ContainerState, StepReport};

/// How the executor paces itself.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// Re-apply this often even when nothing was heard (a missed event, a hand edit).
    pub resync: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Most probes run at once.
    pub probe_concurrency: usize,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            resync: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(60),
            probe_concurrency: 8,
        }
    }
}

/// The last application, as reported to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub mark: AppliedMark,
    pub steps: Vec<StepReport>,
}

enum Command {
    Plan(Box<PlanRecord>),
    Reconcile,
}

/// A handle on the executor task.
pub struct Executor {
    commands: mpsc::Sender<Command>,
    applied: watch::Receiver<Option<Applied>>,
    observed: watch::Receiver<BTreeMap<String, ContainerState>>,
    etcd_url: watch::Receiver<Option<String>>,
    driver: Driver,
    task: JoinHandle<()>,
}

impl Executor {
    /// Starts the executor; it applies the plan saved in `data` first, if there is one.
    pub fn spawn(
        driver: Driver,
        prober: Prober,
        cluster: &str,
        node: &str,
        data: DataDir,
        settings: ExecutorSettings,
        shutdown: CancellationToken,
    ) -> Executor {
        let (commands, rx) = mpsc::channel(16);
        let (applied_tx, applied) = watch::channel(None);
        let (observed_tx, observed) = watch::channel(BTreeMap::new());
        let (etcd_url_tx, etcd_url) = watch::channel(None);
        let run = Run {
            driver: driver.clone(),
            prober,
            cluster: cluster.to_string(),
            node: node.to_string(),
            data,
            retry: Backoff::new(settings.retry_base, settings.retry_cap),
            settings,
            applied: applied_tx,
            observed: observed_tx,
            etcd_url: etcd_url_tx,
            health: BTreeMap::new(),
            starting_until: None,
        };
        let task = tokio::spawn(run.run(rx, shutdown));
        Executor {
            commands,
            applied,
            observed,
            etcd_url,
            driver,
            task,
        }
    }

    /// The Docker driver, for tasks that run containers of their own (a restore).
    pub fn driver(&self) -> Driver {
        self.driver.clone()
    }

    /// Hands over a new plan.
    pub async fn set_plan(&self, plan: PlanRecord) {
        let _ = self.commands.send(Command::Plan(Box::new(plan))).await;
    }

    /// Asks for a reconcile (something may have changed on the node); coalesced.
    pub fn poke(&self) {
        let _ = self.commands.try_send(Command::Reconcile);
    }

    pub fn applied(&self) -> watch::Receiver<Option<Applied>> {
        self.applied.clone()
    }

    pub fn observed(&self) -> watch::Receiver<BTreeMap<String, ContainerState>> {
        self.observed.clone()
    }

    /// The client URL of this node's etcd member in the plan being applied, if it runs one:
    /// what the daemon's etcd tasks dial.
    pub fn etcd_url(&self) -> Option<String> {
        self.etcd_url.borrow().clone()
    }

    /// Waits for the task to end (after shutdown).
    pub async fn join(self) {
        drop(self.commands);
        let _ = self.task.await;
    }
}

struct Run {
    driver: Driver,
    prober: Prober,
    cluster: String,
    node: String,
    data: DataDir,
    settings: ExecutorSettings,
    retry: Backoff,
    applied: watch::Sender<Option<Applied>>,
    observed: watch::Sender<BTreeMap<String, ContainerState>>,
    etcd_url: watch::Sender<Option<String>>,
    health: BTreeMap<String, Health>,
    /// Until then a container started by the last apply may still be coming up: probes run
    /// every `STARTING_PROBE` rather than every interval while any is not healthy, so a
    /// rollout gate opens when the container is ready, not an interval later.
    starting_until: Option<Instant>,
}

impl Run {
    async fn save_plan(&self, plan: &PlanRecord) -> Result<(), super::credential::DataError> {
        self.etcd_url
            .send_replace(plan.spec.etcd_client_url.clone());
        let plan = plan.clone();
        self.data.off_thread(move |d| d.save_plan(&plan)).await
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut plan = match self.data.off_thread(DataDir::plan).await {
            Ok(p) => {
                let url = p
                    .as_ref()
                    .and_then(|p: &PlanRecord| p.spec.etcd_client_url.clone());
                self.etcd_url.send_replace(url);
                p
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot read the saved plan; waiting for the daemon's");
                None
            }
        };
        let mut dirty = true;
        let mut retry_at: Option<Instant> = None;
        let mut resync = tokio::time::interval(self.settings.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        let mut probe_at = Instant::now();
        loop {
            if dirty {
                dirty = false;
                if let Some(p) = &plan {
                    retry_at = self
                        .apply(p)
                        .await
                        .then(|| Instant::now() + self.retry.next_delay());
                    if retry_at.is_none() {
                        self.retry.reset();
                    }
                    probe_at = Instant::now();
                }
            }
            let probe_interval = plan.as_ref().and_then(|p| min_interval(&p.spec));
            if let (Some(p), true) = (
                &plan,
                probe_interval.is_some() && probe_at <= Instant::now(),
            ) {
                self.probe(&p.spec).await;
                probe_at = Instant::now() + self.next_probe_in(probe_interval.unwrap_or_default());
            }
            let next_probe = probe_interval.map(|_| probe_at);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Plan(p)) => {
                        let p = *p;
                        if let Err(e) = self.save_plan(&p).await {
                            tracing::error!(error = %crate::error_chain(&e), "cannot save the plan; applying it anyway");
                        }
                        if plan.as_ref().is_some_and(|old| old.generation > p.generation) {
                            tracing::warn!(old = plan.as_ref().map(|o| o.generation), new = p.generation, "the daemon sent an older plan generation; following the daemon");
                        }
                        plan = Some(p);
                        self.retry.reset();
                        dirty = true;
                    }
                    Some(Command::Reconcile) => dirty = true,
                    None => return,
                },
                () = sleep_until(retry_at) => dirty = true,
                () = sleep_until(next_probe) => {}
                _ = resync.tick() => dirty = true,
                () = shutdown.cancelled() => return,
            }
            // Coalesce a burst of pokes into one pass.
            while let Ok(c) = commands.try_recv() {
                match c {
                    Command::Plan(p) => {
                        let p = *p;
                        if let Err(e) = self.save_plan(&p).await {
                            tracing::error!(error = %crate::error_chain(&e), "cannot save the plan; applying it anyway");
                        }
                        plan = Some(p);
                        self.retry.reset();
                        dirty = true;
                    }
                    Command::Reconcile => dirty = true,
                }
            }
        }
    }

    /// Applies `plan` once; true when a step failed (and a retry is due).
    /// Records the host files `spec` writes (before they are written, so a crash never leaves
    /// one unknown) and returns those an earlier plan wrote that `spec` drops.
    async fn track_host_files(
        &self,
        spec: &NodeSpec,
    ) -> Result<BTreeSet<String>, super::credential::DataError> {
        let wanted: BTreeSet<String> = spec.host_files(&self.cluster).into_keys().collect();
        self.data
            .off_thread(move |d| {
                let known = d.host_files()?;
                if !wanted.is_subset(&known) {
                    d.save_host_files(&known.union(&wanted).cloned().collect())?;
                }
                Ok(known.difference(&wanted).cloned().collect())
            })
            .await
    }

    /// Forgets the stale files the apply removed (or found gone); a failed removal is
    /// tried again with the next apply.
    async fn forget_removed(&self, stale: &BTreeSet<String>, results: &[StepResult]) {
        if stale.is_empty() {
            return;
        }
        let failed: BTreeSet<String> = results
            .iter()
            .filter(|r| r.action == Action::FileRemoved && r.error.is_some())
            .map(|r| r.subject.clone())
            .collect();
        let gone: BTreeSet<String> = stale.difference(&failed).cloned().collect();
        let saved = self
            .data
            .off_thread(move |d| {
                let known = d.host_files()?;
                d.save_host_files(&known.difference(&gone).cloned().collect())
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(error = %crate::error_chain(&e), "cannot record the removed host files");
        }
    }

    async fn apply(&mut self, plan: &PlanRecord) -> bool {
        let mark = AppliedMark {
            generation: plan.generation,
            checksum: plan.checksum.clone(),
        };
        let stale = match self.track_host_files(&plan.spec).await {
            Ok(stale) => stale,
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot record the host files the plan writes; will retry");
                return true;
            }
        };
        let outcome = self.driver.apply(&plan.spec, plan.generation, &stale).await;
        if let Ok(results) = &outcome {
            self.forget_removed(&stale, results).await;
        }
        let (steps, failed) = match outcome {
            Ok(results) => {
                let failed = results.iter().any(|r| r.error.is_some());
                // A container that was just (re)started has not been probed yet: its old
                // probe result must not vouch for it.
                for r in &results {
                    if matches!(
                        r.action,
                        Action::Created | Action::Recreated | Action::Started
                    ) {
                        self.health.remove(&r.subject);
                        self.starting_until = Some(Instant::now() + STARTING_WINDOW);
                    }
                }
                (results.iter().map(report).collect::<Vec<_>>(), failed)
            }
            Err(e) => {
                let step = StepReport {
                    subject: "docker".into(),
                    action: "observe".into(),
                    error: Some(crate::error_chain(&e)),
                };
                (vec![step], true)
            }
        };
        for s in steps.iter().filter(|s| s.error.is_some()) {
            tracing::warn!(
                generation = plan.generation,
                subject = s.subject,
                action = s.action,
                error = s.error.as_deref().unwrap_or_default(),
                "step failed; will retry"
            );
        }
        let changed = steps.iter().any(|s| s.action != "unchanged");
        if changed || failed {
            tracing::info!(
                generation = plan.generation,
                steps = steps.len(),
                failed,
                "applied the node plan"
            );
        }
        if !failed {
            let saved = mark.clone();
            if let Err(e) = self.data.off_thread(move |d| d.save_applied(&saved)).await {
                tracing::error!(error = %crate::error_chain(&e), "cannot save the applied generation");
            }
        }
        let applied = Applied { mark, steps };
        self.applied.send_if_modified(|old| {
            let same = old.as_ref().is_some_and(|o| {
                o.mark == applied.mark
                    && o.steps
                        .iter()
                        .all(|s| s.action == "unchanged" && s.error.is_none())
                    && applied
                        .steps
                        .iter()
                        .all(|s| s.action == "unchanged" && s.error.is_none())
            });
            if !same {
                *old = Some(applied);
            }
            !same
        });
        self.publish(&plan.spec).await;
        failed
    }

    /// Runs every health probe of the plan and republishes what runs.
    /// The wait before the next probe: the interval, or `STARTING_PROBE` while a container
    /// just started is not healthy yet.
    fn next_probe_in(&self, interval: Duration) -> Duration {
        let starting = self.starting_until.is_some_and(|t| Instant::now() < t);
        let all_healthy = self.health.values().all(|h| *h == Health::Healthy);
        if starting && !all_healthy {
            interval.min(STARTING_PROBE)
        } else {
            interval
        }
    }

    async fn probe(&mut self, spec: &NodeSpec) {
        let checks: Vec<_> = spec
            .health
            .iter()
            .map(|(component, check)| {
                let prober = self.prober.clone();
                let name = container_name(&self.cluster, &self.node, component);
                let component = component.clone();
                let check = check.clone();
                async move {
                    let health = prober.check(&check.probe, &name, check.timeout).await;
                    (component, health)
                }
            })
            .collect();
        self.health = futures::stream::iter(checks)
            .buffer_unordered(self.settings.probe_concurrency.max(1))
            .collect()
            .await;
        self.publish(spec).await;
    }

    async fn publish(&mut self, spec: &NodeSpec) {
        let running = match self.driver.observe().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot list containers");
                return;
            }
        };
        let observed: BTreeMap<String, ContainerState> = running
            .into_iter()
            .map(|(component, r)| {
                let health = spec
                    .health
                    .contains_key(&component)
                    .then(|| self.health.get(&component))
                    .flatten();
                let state = ContainerState {
                    running: r.running,
                    spec_hash: r.spec_hash,
                    healthy: health.map(|h| *h == Health::Healthy),
                    reason: match health {
                        Some(Health::Unhealthy(why)) => Some(why.clone()),
                        _ => None,
                    },
                };
                (component, state)
            })
            .collect();
        self.observed.send_if_modified(|old| {
            let changed = *old != observed;
            if changed {
                *old = observed;
            }
            changed
        });
    }
}

fn report(r: &StepResult) -> StepReport {
    StepReport {
        subject: r.subject.clone(),
        action: match r.action {
            Action::Created => "created",
            Action::Recreated => "recreated",
            Action::Started => "started",
            Action::Removed => "removed",
            Action::Unchanged => "unchanged",
            Action::FileWritten => "file-written",
            Action::FileRemoved => "file-removed",
        }
        .into(),
        error: r.error.as_deref().map(crate::protocol::short_text),
    }
}

/// How often a container just started is probed until it is healthy.
const STARTING_PROBE: Duration = Duration::from_millis(200);
/// How long after a start the quicker probes may go on.
const STARTING_WINDOW: Duration = Duration::from_secs(30);

fn min_interval(spec: &NodeSpec) -> Option<Duration> {
    spec.health.values().map(|h| h.interval).min()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
