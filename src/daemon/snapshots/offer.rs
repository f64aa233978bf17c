//! A stored snapshot handed to one node's agent for a task (a restore, a verification): the
//! daemon offers a transfer, fills it from the store as the agent reads it (the download
//! verifies both hashes and etcd's as it goes; a failure ends the transfer), and waits for the
//! agent's answer to the task.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use object_store::ObjectStore;

use crate::model::{ClusterName, SnapshotId};
use crate::protocol::{EtcdTask, EtcdTaskOutcome};
use crate::server::transfer::TransferError;
use crate::server::Hub;
use crate::snapshot::download;

/// How long an agent has to start fetching the snapshot offered to it.
pub const OFFER_TTL: Duration = Duration::from_secs(120);

/// Why a task with a snapshot did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The stored snapshot is damaged or missing: trying again cannot help.
    #[error("the stored snapshot cannot be used: {0}")]
    Damaged(String),
    /// The task could not run or failed on the node.
    #[error("{0}")]
    Task(String),
}

/// Offers `node` the snapshot `id` of `cluster` and runs the task `task` makes of the
/// transfer's id, within `limit`.
pub async fn run_with_snapshot(
    hub: &Hub,
    store: Arc<dyn ObjectStore>,
    cluster: &ClusterName,
    id: &SnapshotId,
    node: &str,
    task: impl FnOnce(String) -> EtcdTask,
    limit: Duration,
) -> Result<EtcdTaskOutcome, OfferError> {
    let (manifest, bytes) = download::download_verified(store, cluster, id)
        .await
        .map_err(|e| match e {
            download::DownloadError::Store(_) => OfferError::Task(crate::error_chain(&e)),
            damaged => OfferError::Damaged(crate::error_chain(&damaged)),
        })?;
    let (transfer, fill) = hub
        .transfers()
        .offer(
            cluster.as_str(),
            node,
            OFFER_TTL,
            &manifest.raw_sha256.to_string(),
        )
        .map_err(|e| OfferError::Task(e.to_string()))?;
    // What went wrong with the stored bytes, which the agent only sees as a transfer cut off.
    let damaged = Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = damaged.clone();
    let pump = tokio::spawn(async move {
        let mut bytes = std::pin::pin!(bytes);
        while let Some(piece) = bytes.next().await {
            let piece = piece.map_err(|e| {
                let why = crate::error_chain(&e);
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                TransferError::Broken(why)
            });
            let failed = piece.is_err();
            if fill.send(piece).await.is_err() || failed {
                break;
            }
        }
    });
    let outcome = hub
        .etcd_task(cluster.as_str(), node, task(transfer), limit)
        .await;
    pump.abort();
    if let Some(why) = damaged.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(OfferError::Damaged(why));
    }
    match outcome {
        Ok(EtcdTaskOutcome::Failed { error }) => Err(OfferError::Task(error)),
        Ok(outcome) => Ok(outcome),
        Err(e) => Err(OfferError::Task(e.to_string())),
    }
}
