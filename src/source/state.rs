//! What a source publishes: the [`DesiredState`] (per-cluster last good definitions) and the
//! [`SourceStatus`]. [`LastGood::advance`] is the pure rule that turns a loaded revision into
//! the next desired state without ever dropping a cluster because its file broke.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use super::approval::Approvals;
use crate::model::diagnostic::{Diagnostic, Severity};
use crate::model::{Cluster, ClusterName, Repository};

/// The version of the source a state came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revision {
    /// A commit id (40 hex characters).
    Commit(String),
    /// The n-th read of a watched working tree (local mode).
    WorkTree(u64),
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Commit(id) => f.write_str(id),
            Self::WorkTree(n) => write!(f, "worktree#{n}"),
        }
    }
}

/// One cluster's desired definition and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterEntry {
    pub cluster: Arc<Cluster>,
    /// The revision this definition was loaded from.
    pub revision: Revision,
    /// True when the current revision's definition failed to load and this is the last good one.
    pub held_back: bool,
    /// The plan digests `revision` approves.
    pub approvals: Arc<Approvals>,
}

/// The desired state a source publishes. Never emptied because the source failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    /// The revision last loaded; `None` before the first successful load.
    pub revision: Option<Revision>,
    pub clusters: BTreeMap<ClusterName, ClusterEntry>,
    /// The diagnostics of `revision`'s cluster files.
    pub diagnostics: Vec<Diagnostic>,
    /// The text of each file that has diagnostics, to render them.
    pub sources: BTreeMap<String, String>,
}

impl DesiredState {
    /// Names of clusters held at an older definition because the current one is broken.
    pub fn held_back(&self) -> impl Iterator<Item = &ClusterName> {
        self.clusters
            .iter()
            .filter(|(_, e)| e.held_back)
            .map(|(n, _)| n)
    }
}

/// Keeps the last good definition of every cluster across revisions.
#[derive(Debug, Default)]
pub struct LastGood {
    state: DesiredState,
}

impl LastGood {
    /// Applies a loaded revision and returns the new desired state:
    /// - a cluster that loaded takes its new definition;
    /// - a cluster that did not load, but whose file (or any file with errors) may still define
    ///   it, keeps its last good definition (`held_back`);
    /// - a cluster whose file is gone or loaded cleanly without it is removed.
    ///
    /// `present` holds every cluster file path of the revision; `approvals` are the plan
    /// digests it approves.
    pub fn advance(
        &mut self,
        revision: Revision,
        loaded: Repository,
        present: &BTreeSet<String>,
        approvals: Approvals,
    ) -> &DesiredState {
        let approvals = Arc::new(approvals);
        let broken_files: BTreeSet<&str> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity() == Severity::Error)
            .map(|d| d.location.file.as_str())
            .collect();
        let mut clusters = BTreeMap::new();
        for cluster in loaded.clusters {
            let entry = ClusterEntry {
                cluster: Arc::new(cluster),
                revision: revision.clone(),
                held_back: false,
                approvals: approvals.clone(),
            };
            clusters.insert(entry.cluster.name.clone(), entry);
        }
        for (name, old) in &self.state.clusters {
            if clusters.contains_key(name) {
                continue;
            }
            let file = old.cluster.source.file.as_str();
            let own_file_broken = present.contains(file) && broken_files.contains(file);
            // A cluster moved into a broken file is not loaded either: keep it if any broken
            // file mentions its name.
            let named_in_broken = broken_files.iter().any(|f| {
                loaded
                    .sources
                    .get(*f)
                    .is_some_and(|text| text.contains(name.as_str()))
            });
            if own_file_broken || named_in_broken {
                let mut kept = old.clone();
                kept.held_back = true;
                clusters.insert(name.clone(), kept);
            }
        }
        self.state = DesiredState {
            revision: Some(revision),
            clusters,
            diagnostics: loaded.diagnostics,
            sources: loaded.sources,
        };
        &self.state
    }
}

/// Why the last check failed, as a stable label for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorReason {
    /// The remote could not be reached (network, DNS, server error).
    Unreachable,
    /// The remote refused the credentials.
    Auth,
    /// The SSH server's key is not in the configured known_hosts file.
    HostKey,
    /// The branch or tag is not on the remote (deleted or misspelt).
    RefNotFound,
    /// The pinned commit is not in the remote.
    CommitMissing,
    /// Listing refs succeeded but the fetch failed.
    Fetch,
    /// The commit's tree could not be read, or lacks the clusters directory.
    Tree,
    /// The check took longer than the policy's timeout.
    Timeout,
    /// The local mirror or working tree could not be used.
    Local,
}

/// The last failure, with its reason and a message free of secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusError {
    pub reason: ErrorReason,
    /// The error and its causes, joined with ": ".
    pub message: String,
    pub at: SystemTime,
}

/// How the source is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// The revision the desired state was last loaded from.
    pub revision: Option<Revision>,
    pub last_check: Option<SystemTime>,
    /// When the revision last changed.
    pub last_change: Option<SystemTime>,
    /// Set while checks fail; cleared by the next successful check.
    pub last_error: Option<StatusError>,
    pub consecutive_failures: u32,
    /// Checks made so far, and how many of them loaded a new revision.
    pub checks: u64,
    pub changes: u64,
}
