//! Taking one snapshot of a cluster: a healthy member is chosen (a follower when there is
//! one, so the leader keeps its disk and network for the cluster), its agent streams the
//! member's snapshot to the daemon on a transfer (`server::transfer`), and `snapshot::save`
//! checks, compresses and stores it, manifest last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use object_store::ObjectStore;

use crate::model::{ClusterName, NodeName};
use crate::protocol::{EtcdTask, EtcdTaskOutcome};
use crate::server::hub::TaskError;
use crate::server::transfer::TransferError;
use crate::server::Hub;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::save::{save, SaveError, Source};

/// How long a member has to answer its status.
const STATUS_LIMIT: Duration = Duration::from_secs(15);
/// How long the chosen agent has to start sending.
const START_LIMIT: Duration = Duration::from_secs(60);
/// The longest one snapshot may take end to end (etcd's largest database on a slow link).
const TAKE_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// Why no snapshot was taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("no etcd member could be asked for a snapshot: {0}")]
    NoMember(String),
    #[error("cannot wait for the transfer")]
    Transfer(#[source] TransferError),
    #[error(
        "{node}'s agent did not start sending within {}",
        humantime::format_duration(START_LIMIT)
    )]
    NeverStarted { node: String },
    #[error("{node}'s agent: {reason}")]
    Agent { node: String, reason: String },
    #[error("the snapshot from {node} was not saved")]
    Save {
        node: String,
        #[source]
        source: SaveError,
    },
}

/// Takes a snapshot of `cluster` from one of `members` (node names) and saves it in `store`,
/// its manifest naming `git_commit`.
pub async fn take(
    hub: &Hub,
    store: &dyn ObjectStore,
    cluster: &ClusterName,
    members: &[String],
    git_commit: &str,
) -> Result<Manifest, TakeError> {
    take_counted(hub, store, cluster, members, git_commit, &AtomicU64::new(0)).await
}

/// `take`, adding the bytes received from the member to `received` as they arrive.
pub async fn take_counted(
    hub: &Hub,
    store: &dyn ObjectStore,
    cluster: &ClusterName,
    members: &[String],
    git_commit: &str,
    received: &AtomicU64,
) -> Result<Manifest, TakeError> {
    let node = choose(hub, cluster.as_str(), members).await?;
    let (id, arrives) = hub
        .transfers()
        .expect(cluster.as_str(), &node, START_LIMIT)
        .map_err(TakeError::Transfer)?;
    let task = EtcdTask::Snapshot { transfer: id };
    let sent = hub.etcd_task(cluster.as_str(), &node, task, TAKE_LIMIT);
    tokio::pin!(sent);
    let arrives = tokio::time::timeout(START_LIMIT, arrives);
    tokio::pin!(arrives);
    // The agent answers only after the bytes went, so its answer is awaited beside them; a
    // small snapshot's answer may come before the transfer is handed over here.
    let mut answered = None;
    let incoming = loop {
        tokio::select! {
            biased;
            incoming = &mut arrives => match incoming {
                Ok(Ok(incoming)) => break incoming,
                _ => return Err(TakeError::NeverStarted { node: node.clone() }),
            },
            outcome = &mut sent, if answered.is_none() => match outcome {
                Ok(EtcdTaskOutcome::Sent { .. }) => answered = Some(outcome),
                other => return Err(agent_failure(&node, other)),
            },
        }
    };
    let source = Source {
        member: NodeName::parse(&node).map_err(|e| TakeError::NoMember(e.to_string()))?,
        revision: u64::try_from(incoming.revision).unwrap_or(0),
        etcd_version: incoming.etcd_version,
        git_commit: git_commit.to_string(),
    };
    let bytes = futures::stream::unfold(incoming.bytes, |mut pieces| async move {
        pieces.recv().await.map(|piece| (piece, pieces))
    })
    .inspect(|piece| {
        if let Ok(piece) = piece {
            received.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
    });
    let answer = async {
        match answered {
            Some(outcome) => outcome,
            None => sent.await,
        }
    };
    let (saved, outcome) = tokio::join!(save(store, cluster, &source, bytes), answer);
    let manifest = saved.map_err(|source| TakeError::Save {
        node: node.clone(),
        source,
    })?;
    if !matches!(outcome, Ok(EtcdTaskOutcome::Sent { .. })) {
        // The stored bytes passed etcd's own checksum: they are whole whatever the agent said.
        tracing::warn!(cluster = %cluster, node, outcome = ?outcome, "the agent's answer to a saved snapshot was not `sent`");
    }
    Ok(manifest)
}

/// A healthy member of `members`, a follower when there is one.
pub(super) async fn choose(
    hub: &Hub,
    cluster: &str,
    members: &[String],
) -> Result<String, TakeError> {
    let mut leader = None;
    let mut problems = Vec::new();
    for node in members {
        match hub
            .etcd_task(cluster, node, EtcdTask::Status, STATUS_LIMIT)
            .await
        {
            Ok(EtcdTaskOutcome::Status {
                member_id,
                leader_id,
                ..
            }) if leader_id != "0" => {
                if member_id != leader_id {
                    return Ok(node.clone());
                }
                leader = Some(node.clone());
            }
            outcome => problems.push(agent_failure(node, outcome).to_string()),
        }
    }
    leader.ok_or_else(|| TakeError::NoMember(problems.join("; ")))
}

/// What an agent's answer that is not the one wanted says.
pub(super) fn agent_failure(node: &str, outcome: Result<EtcdTaskOutcome, TaskError>) -> TakeError {
    let reason = match outcome {
        Ok(EtcdTaskOutcome::Failed { error }) => error,
        Ok(other) => format!("unexpected answer {other:?}"),
        Err(e) => e.to_string(),
    };
    TakeError::Agent {
        node: node.to_string(),
        reason,
    }
}
