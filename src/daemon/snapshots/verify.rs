//! Verifying a stored snapshot: its manifest read and checked to name it, its data downloaded,
//! both sha256s and etcd's own trailing hash checked (`snapshot::download`), and the outcome
//! recorded, so retention keeps the newest snapshot that passed.

use std::sync::Arc;
use std::time::SystemTime;

use futures::TryStreamExt as _;

use super::{views, RequestError, Scheduler};
use crate::api::snapshots::Verification;
use crate::model::SnapshotId;
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
        let id = match id {
            Some(text) => SnapshotId::parse(text).ok_or_else(|| {
                RequestError::BadId(crate::protocol::cut_text(text, 200).to_string())
            })?,
            None => crate::snapshot::list(store.as_ref(), &name)
                .await?
                .last()
                .cloned()
                .ok_or_else(|| RequestError::NoSnapshot(name.to_string()))?,
        };
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
}
