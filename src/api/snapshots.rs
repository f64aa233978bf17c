//! The operator API's snapshot documents:
//!
//! - `GET /v1/clusters/{name}/snapshots`: a `SnapshotsDocument`, the cluster's snapshots in its
//!   store (newest first) and what the daemon knows of their schedule;
//! - `POST /v1/clusters/{name}/snapshots`: a snapshot now; answers its `SnapshotView` once it is
//!   stored (201), or 409 while another snapshot of the cluster is being taken;
//! - `POST /v1/clusters/{name}/snapshots/prune[?dryRun=true]`: the cluster's retention now,
//!   answered as a `PruneDocument`;
//! - `POST /v1/clusters/{name}/snapshots/{id}/verify[?deep=true]`: a `Verification`;
//! - `POST /v1/clusters/{name}/restores` with a `RestoreRequestBody`: a restore of the cluster
//!   from that snapshot starts (202, its `RestoreRun`); 409 while another runs;
//! - `GET /v1/clusters/{name}/restores`: a `RestoresDocument`;
//! - `GET /v1/clusters/{name}/restores/{request}[?afterSteps=N]`: that request's `RestoreRun`,
//!   answered once it has more than N steps or has ended, or as it is after ten seconds.
//!
//! Times are RFC 3339; durations are milliseconds.

use serde::{Deserialize, Serialize};

/// The version of `SnapshotsDocument`.
pub const SNAPSHOTS_FORMAT_VERSION: u32 = 1;
/// Most bytes a client reads of a snapshots document (100,000 manifests' summaries).
pub const MAX_SNAPSHOTS_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// A cluster's snapshots and their schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotsDocument {
    pub format_version: u32,
    pub cluster: String,
    /// What the daemon knows of the cluster's scheduled snapshots; `None` without a policy.
    pub schedule: Option<SnapshotSchedule>,
    /// Newest first.
    pub snapshots: Vec<SnapshotView>,
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotView {
    pub id: String,
    /// The node whose member streamed it.
    pub member: String,
    pub revision: u64,
    pub etcd_version: String,
    /// Bytes as etcd sent them, and as stored.
    pub raw_size: u64,
    pub compressed_size: u64,
    pub git_commit: String,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// The last verification of it, if one was recorded.
    pub verification: Option<Verification>,
}

/// What the scheduler knows of one cluster's snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSchedule {
    /// The store the policy names.
    pub store: String,
    /// The schedule as written (`every 6h`, `cron 0 */6 * * *`).
    pub schedule: String,
    /// Why no snapshot can be taken at all (a store the daemon's configuration lacks).
    pub blocked: Option<String>,
    pub last_success: Option<SnapshotRun>,
    pub last_failure: Option<SnapshotFailure>,
    /// Runs failed in a row since the last success.
    pub failures: u32,
    pub running: bool,
    /// Bytes of the running snapshot received from its member so far.
    #[serde(default)]
    pub received_bytes: Option<u64>,
    pub next_run: Option<String>,
    /// How long past twice the schedule's period the newest snapshot is; `None` while on time.
    pub overdue_ms: Option<u64>,
    /// The newest verification recorded.
    pub last_verification: Option<Verification>,
    /// Restore drills, when the policy asks for them: the next and the newest.
    #[serde(default)]
    pub next_drill: Option<String>,
    #[serde(default)]
    pub last_drill: Option<Verification>,
}

/// A snapshot saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRun {
    pub id: String,
    pub at: String,
    pub revision: u64,
    pub compressed_size: u64,
    pub duration_ms: u64,
}

/// A run that saved nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFailure {
    pub at: String,
    pub reason: String,
}

/// How a verification of a snapshot went: both hashes checked on download, and with `deep`
/// the snapshot restored into a throwaway etcd that reported its revision and key count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub id: String,
    pub at: String,
    pub deep: bool,
    pub passed: bool,
    /// Bytes of the snapshot as restored (the raw size).
    pub bytes: Option<u64>,
    /// What the restored etcd reported (`deep` only).
    pub revision: Option<u64>,
    pub keys: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Where it ran: `daemon`, or the node whose agent restored it.
    pub by: String,
}

/// What a prune did or, on a dry run, would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneDocument {
    pub cluster: String,
    pub dry_run: bool,
    /// Snapshots kept, newest first, each with why.
    pub kept: Vec<Kept>,
    /// Each deletion and its outcome: `deleted`, `would delete`, `deferred`, or the failure.
    pub deletions: Vec<Deletion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kept {
    pub id: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deletion {
    /// A snapshot id, or an orphan's object path.
    pub target: String,
    pub outcome: String,
}

/// The phases of a restore, in order; `Done` and `Failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestorePhase {
    /// Each member's agent fetches the snapshot, checked as it streams (both hashes and
    /// etcd's), and restores it into a fresh directory beside etcd's data; etcd still runs.
    Verifying,
    /// Every member's etcd is stopped.
    Stopping,
    /// Each member's agent puts the restored data in place of etcd's, keeping the old.
    Restoring,
    /// etcd starts from the restored data; every member must answer healthy.
    Starting,
    Done,
    Failed,
}

impl RestorePhase {
    pub fn is_final(self) -> bool {
        matches!(self, RestorePhase::Done | RestorePhase::Failed)
    }
}

/// One restore of a cluster, as the daemon records it (once per request id) and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRun {
    pub request_id: String,
    pub snapshot: String,
    /// `git` for a request committed to the cluster's definition, `operator` for one made
    /// with `drover snapshot restore`.
    pub by: String,
    pub phase: RestorePhase,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long etcd was down, from the stop to every member healthy (milliseconds), when
    /// one daemon ran those phases without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_down_ms: Option<u64>,
    /// What happened, a line a step, oldest first.
    pub steps: Vec<String>,
}

/// A cluster's restores, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoresDocument {
    pub cluster: String,
    pub restores: Vec<RestoreRun>,
}

/// The body of `POST /v1/clusters/{name}/restores`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreRequestBody {
    pub snapshot: String,
}
