//! Verifying a stored snapshot: its manifest read and checked to name it, its data downloaded,
//! both sha256s and etcd's own trailing hash checked (`snapshot::download`), and the outcome
//! recorded, so retention keeps the newest snapshot that passed. A deep verification (and a
//! restore drill) has one of the cluster's members' agents restore it into a throwaway etcd
//! with the cluster's image and report its revision and key count.

use std::sync::Arc;
use std::time::SystemTime;

use futures::TryStreamExt as _;

use super::{offer, views, RequestError, Scheduler};
use crate::api::snapshots::Verification;
use crate::model::SnapshotId;
use crate::protocol::{EtcdTask, EtcdTaskOutcome};

/// The longest a deep verification may take: fetching the snapshot, restoring it, starting
/// etcd on it.
const DEEP_LIMIT: std::time::Duration = std::time::Duration::from_secs(3 * 3600);
use crate::snapshot::download;

impl Scheduler {
    /// Verifies `cluster`'s snapshot `id` (its newest when `None`) and records the outcome. A
    /// snapshot that fails is an `Ok` verification that did not pass; errors are for a request
    /// that could not run (no such cluster or snapshot, a store that cannot be listed).
    pub async fn verify(
        self: &Arc<Self>,
        cluster: &str,
        id: Option<&str>,
    ) -> Result<Verification, RequestError> {
        let (name, store) = self.store_of(cluster)?;
        let id = self.snapshot_id(&name, &store, id).await?;
        let at = SystemTime::now();
        let checked = async {
            let (manifest, bytes) = download::download_verified(store, &name, &id).await?;
            let size = bytes
                .try_fold(0u64, |n, piece| async move { Ok(n + piece.len() as u64) })
                .await?;
            Ok::<_, download::DownloadError>((manifest, size))
        };
        let verification = match checked.await {
            Err(download::DownloadError::NotFound { id }) => {
                return Err(RequestError::Download(download::DownloadError::NotFound {
                    id,
                }))
            }
            outcome => Verification {
                id: id.to_string(),
                at: views::time(at),
                deep: false,
                passed: outcome.is_ok(),
                bytes: outcome.as_ref().ok().map(|(_, size)| *size),
                revision: outcome.as_ref().ok().map(|(m, _)| m.revision),
                keys: None,
                error: outcome.as_ref().err().map(|e| crate::error_chain(e)),
                by: "daemon".to_string(),
            },
        };
        self.verified(cluster, verification.clone()).await?;
        Ok(verification)
    }

    /// Verifies `cluster`'s snapshot `id` (its newest when `None`) deeply: one of its
    /// members' agents restores it into a throwaway etcd; the outcome is recorded.
    pub async fn verify_deep(
        self: &Arc<Self>,
        cluster: &str,
        id: Option<&str>,
    ) -> Result<Verification, RequestError> {
        let target = self.target(cluster)?;
        let (name, store) = (target.cluster.clone(), target.store.clone());
        let id = self.snapshot_id(&name, &store, id).await?;
        download::read_manifest(store.as_ref(), &name, &id).await?;
        let at = SystemTime::now();
        let node = self.agent_for(&target).await;
        let outcome = match &node {
            Some(node) => {
                let image = target.image.clone();
                offer::run_with_snapshot(
                    &self.hub,
                    store,
                    &name,
                    &id,
                    node,
                    |transfer| EtcdTask::Verify { transfer, image },
                    DEEP_LIMIT,
                )
                .await
                .map_err(|e| e.to_string())
            }
            None => Err("no member's agent is connected to run it".to_string()),
        };
        let (passed, bytes, revision, keys, error) = match outcome {
            Ok(EtcdTaskOutcome::Verified {
                bytes,
                revision,
                keys,
            }) => (
                true,
                Some(bytes),
                u64::try_from(revision).ok(),
                u64::try_from(keys).ok(),
                None,
            ),
            Ok(other) => (
                false,
                None,
                None,
                None,
                Some(format!("unexpected answer {other:?}")),
            ),
            Err(e) => (false, None, None, None, Some(e)),
        };
        let verification = Verification {
            id: id.to_string(),
            at: views::time(at),
            deep: true,
            passed,
            bytes,
            revision,
            keys,
            error,
            by: node.unwrap_or_else(|| "nobody".to_string()),
        };
        self.verified(cluster, verification.clone()).await?;
        Ok(verification)
    }

    /// A member whose agent can run a deep verification: a healthy follower when there is
    /// one, else any member whose agent is connected.
    async fn agent_for(&self, target: &super::Target) -> Option<String> {
        if let Ok(node) =
            super::take::choose(&self.hub, target.cluster.as_str(), &target.members).await
        {
            return Some(node);
        }
        target
            .members
            .iter()
            .find(|n| {
                self.hub
                    .node_status(target.cluster.as_str(), n)
                    .is_some_and(|s| s.connected)
            })
            .cloned()
    }

    /// The snapshot `id` names, or the newest of `cluster` when `None`.
    async fn snapshot_id(
        &self,
        name: &crate::model::ClusterName,
        store: &Arc<dyn object_store::ObjectStore>,
        id: Option<&str>,
    ) -> Result<SnapshotId, RequestError> {
        match id {
            Some(text) => SnapshotId::parse(text).ok_or_else(|| {
                RequestError::BadId(crate::protocol::cut_text(text, 200).to_string())
            }),
            None => crate::snapshot::list(store.as_ref(), name)
                .await?
                .last()
                .cloned()
                .ok_or_else(|| RequestError::NoSnapshot(name.to_string())),
        }
    }
}
