//! The operator API's views of snapshots, made from manifests, prune reports and the
//! scheduler's state.

use std::time::{Duration, SystemTime};

use crate::api::snapshots::{
    Deletion, Kept, PruneDocument, SnapshotRun, SnapshotView, Verification,
};
use crate::model::Schedule;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::retention::{Fate, Outcome, PruneReport, Target};

/// RFC 3339 with seconds.
pub fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long a save took, by its manifest.
pub fn save_duration(m: &Manifest) -> Duration {
    m.finished_at
        .duration_since(m.started_at)
        .unwrap_or_default()
}

pub fn snapshot(m: &Manifest, verification: Option<Verification>) -> SnapshotView {
    SnapshotView {
        id: m.id.to_string(),
        member: m.member.to_string(),
        revision: m.revision,
        etcd_version: m.etcd_version.clone(),
        raw_size: m.raw_size,
        compressed_size: m.compressed_size,
        git_commit: m.git_commit.clone(),
        started_at: time(m.started_at),
        finished_at: time(m.finished_at),
        duration_ms: millis(save_duration(m)),
        verification,
    }
}

pub fn run(m: &Manifest) -> SnapshotRun {
    SnapshotRun {
        id: m.id.to_string(),
        at: time(m.finished_at),
        revision: m.revision,
        compressed_size: m.compressed_size,
        duration_ms: millis(save_duration(m)),
    }
}

/// The schedule as an operator wrote it.
pub fn schedule(s: &Schedule) -> String {
    match s {
        Schedule::Every(d) => format!("every {}", humantime::format_duration(*d)),
        Schedule::Cron { expression, .. } => format!("cron {expression}"),
    }
}

pub fn prune(cluster: &str, report: &PruneReport) -> PruneDocument {
    let kept = report
        .plan
        .snapshots
        .iter()
        .filter_map(|v| match &v.fate {
            Fate::Keep(reasons) => Some(Kept {
                id: v.id.to_string(),
                reasons: reasons.iter().map(ToString::to_string).collect(),
            }),
            Fate::Delete | Fate::Untouched => None,
        })
        .collect();
    let deletions = report
        .deletions
        .iter()
        .map(|(target, outcome)| Deletion {
            target: match target {
                Target::Snapshot { id, .. } => id.to_string(),
                Target::Orphan(path) => path.to_string(),
            },
            outcome: match outcome {
                Outcome::Deleted => "deleted".into(),
                Outcome::WouldDelete => "would delete".into(),
                Outcome::Deferred => "deferred to the next run".into(),
                Outcome::Failed(e) => crate::error_chain(e),
            },
        })
        .collect();
    PruneDocument {
        cluster: cluster.to_string(),
        dry_run: report.dry_run,
        kept,
        deletions,
    }
}
