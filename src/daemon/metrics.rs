//! The daemon's Prometheus metrics (prometheus-client), served at `/metrics`: reconcile passes
//! and their durations, the source's state and revision, agents connected, per cluster the
//! nodes whose applied generation lags the one they should run, and snapshots (runs, bytes,
//! durations, the newest one's age, overdue, verifications).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::daemon::controller::Observer;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// A step agents report: its action (`created`, `recreated`, `removed`, `file-written`, ...)
/// and its outcome (`ok` or `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub action: &'static str,
    pub outcome: &'static str,
}

/// A cluster and how something ended (`saved`, `failed`, `passed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub cluster: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabel {
    pub revision: String,
}

/// Every metric, and the registry that encodes them.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconcile_seconds: Family<ClusterLabel, Histogram>,
    pub reconcile_errors: Family<ClusterLabel, Counter>,
    pub source_up: Gauge,
    pub source_revision: Family<RevisionLabel, Gauge>,
    pub source_failures: Gauge,
    pub agents_connected: Gauge,
    pub generation_lag: Family<ClusterLabel, Gauge>,
    pub webhooks_accepted: Counter<u64, AtomicU64>,
    pub steps: Family<StepLabel, Counter<u64, AtomicU64>>,
    pub snapshots: Family<OutcomeLabel, Counter<u64, AtomicU64>>,
    pub snapshot_bytes: Family<ClusterLabel, Counter<u64, AtomicU64>>,
    pub snapshot_seconds: Family<ClusterLabel, Histogram>,
    pub snapshot_age: Family<ClusterLabel, Gauge<f64, AtomicU64>>,
    pub snapshot_overdue: Family<ClusterLabel, Gauge>,
    pub verifications: Family<OutcomeLabel, Counter<u64, AtomicU64>>,
    pub drill_passed: Family<ClusterLabel, Gauge>,
    /// Several daemons sharing the state: clusters claimed or given up by this daemon.
    pub ownership_changes: Counter<u64, AtomicU64>,
    /// Plans and tasks of this daemon agents refused for an old fencing token.
    pub fencing_refusals: Counter<u64, AtomicU64>,
    pub lease_renew: Histogram,
    pub clusters_owned: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("drover");
        let reconcile_seconds = Family::<ClusterLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 4.0, 10))
        });
        let m = Metrics {
            reconcile_seconds,
            reconcile_errors: Family::default(),
            source_up: Gauge::default(),
            source_revision: Family::default(),
            source_failures: Gauge::default(),
            agents_connected: Gauge::default(),
            generation_lag: Family::default(),
            webhooks_accepted: Counter::default(),
            steps: Family::default(),
            snapshots: Family::default(),
            snapshot_bytes: Family::default(),
            snapshot_seconds: Family::<ClusterLabel, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.25, 2.0, 16))
            }),
            snapshot_age: Family::default(),
            snapshot_overdue: Family::default(),
            verifications: Family::default(),
            drill_passed: Family::default(),
            ownership_changes: Counter::default(),
            fencing_refusals: Counter::default(),
            lease_renew: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            clusters_owned: Gauge::default(),
            registry: Mutex::new(Registry::default()),
        };
        registry.register(
            "ownership_changes",
            "Clusters this daemon claimed or gave up (several daemons sharing the state)",
            m.ownership_changes.clone(),
        );
        registry.register(
            "fencing_refusals",
            "Plans and tasks agents refused because another daemon owns their cluster now",
            m.fencing_refusals.clone(),
        );
        registry.register(
            "lease_renew_duration_seconds",
            "Time to renew this daemon's lease in the state's etcd",
            m.lease_renew.clone(),
        );
        registry.register(
            "clusters_owned",
            "Clusters this daemon reconciles",
            m.clusters_owned.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass of a cluster",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile passes that could not save or publish",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "source_up",
            "1 when the last check of the source succeeded",
            m.source_up.clone(),
        );
        registry.register(
            "source_revision",
            "1 for the revision last loaded from the source",
            m.source_revision.clone(),
        );
        registry.register(
            "source_consecutive_failures",
            "Checks of the source that failed in a row",
            m.source_failures.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents holding a session",
            m.agents_connected.clone(),
        );
        registry.register(
            "generation_lag_nodes",
            "Nodes of a cluster that have not applied the plan generation they should run",
            m.generation_lag.clone(),
        );
        registry.register(
            "webhooks_accepted",
            "Webhook deliveries verified",
            m.webhooks_accepted.clone(),
        );
        registry.register(
            "agent_steps",
            "Steps agents reported doing, by action and outcome",
            m.steps.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshot runs, by cluster and outcome (saved or failed)",
            m.snapshots.clone(),
        );
        registry.register(
            "snapshot_stored_bytes",
            "Bytes of snapshots stored (compressed), by cluster",
            m.snapshot_bytes.clone(),
        );
        registry.register(
            "snapshot_duration_seconds",
            "Time of one snapshot, from asking a member to its manifest stored",
            m.snapshot_seconds.clone(),
        );
        registry.register(
            "snapshot_newest_age_seconds",
            "Age of a cluster's newest snapshot (-1 when it has none)",
            m.snapshot_age.clone(),
        );
        registry.register(
            "snapshot_overdue",
            "1 while a cluster's newest snapshot is more than twice its schedule's period old, or none can be taken",
            m.snapshot_overdue.clone(),
        );
        registry.register(
            "snapshot_verifications",
            "Verifications of snapshots (restore drills included), by cluster and outcome",
            m.verifications.clone(),
        );
        registry.register(
            "snapshot_drill_passed",
            "1 when a cluster's newest restore drill restored its newest snapshot, 0 when it failed",
            m.drill_passed.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        Arc::new(m)
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String does not fail");
        out
    }
}

impl Observer for Metrics {
    fn pass(&self, cluster: &str, elapsed: Duration, failed: bool) {
        let label = ClusterLabel {
            cluster: cluster.to_string(),
        };
        self.reconcile_seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        if failed {
            self.reconcile_errors.get_or_create(&label).inc();
        }
    }
}
