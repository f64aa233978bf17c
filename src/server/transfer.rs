//! Transfers: bytes an agent sends the daemon on an HTTPS connection of their own (a member's
//! snapshot, `protocol::EtcdTask::Snapshot`), handed to whoever in the daemon asked for them.
//! The daemon first `expect`s a transfer from one node, under an unguessable id that it sends
//! in the task; the agent `PUT`s the bytes to `TRANSFER_PATH` + id with its node credential.
//! Only that node may send them, once, before the id expires. The bytes go through a short
//! queue, so a reader slower than the agent holds the agent back through TCP; no more than
//! the transfer limit is read, and a stall of either side ends the transfer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::Extension;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use super::session::{Context, Peer};
use crate::protocol::{SNAPSHOT_REVISION_HEADER, SNAPSHOT_VERSION_HEADER};

/// Transfers expected at once; more are refused to the daemon's own caller.
pub const MAX_EXPECTED: usize = 1024;
/// Pieces queued between the agent's connection and the reader.
const QUEUE: usize = 8;
/// Longest etcd version header kept.
const MAX_VERSION_BYTES: usize = 64;

/// Why a transfer did not arrive whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("no bytes moved for {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    #[error("the transfer is over the {0}-byte limit")]
    TooLarge(u64),
    #[error("the agent's connection broke: {0}")]
    Broken(String),
    #[error("{MAX_EXPECTED} transfers are expected already")]
    Busy,
}

/// A transfer as it arrives: what the agent said of it, then its bytes. The channel closes
/// after the last piece; a piece that is an error ends the transfer.
#[derive(Debug)]
pub struct Incoming {
    pub revision: i64,
    pub etcd_version: String,
    pub bytes: mpsc::Receiver<Result<Bytes, TransferError>>,
}

struct Expected {
    cluster: String,
    node: String,
    expires: Instant,
    deliver: oneshot::Sender<Incoming>,
}

/// The transfers the daemon waits for, by id.
#[derive(Default)]
pub struct Transfers {
    expected: Mutex<HashMap<String, Expected>>,
}

impl Transfers {
    /// Expects a transfer from `cluster`'s `node` within `ttl`: its id (to send in the task),
    /// and where it arrives.
    pub fn expect(
        &self,
        cluster: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<(String, oneshot::Receiver<Incoming>), TransferError> {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| TransferError::Broken(e.to_string()))?;
        let id = hex::encode(random);
        let (deliver, arrives) = oneshot::channel();
        let mut expected = self.lock();
        let now = Instant::now();
        expected.retain(|_, e| e.expires > now && !e.deliver.is_closed());
        if expected.len() >= MAX_EXPECTED {
            return Err(TransferError::Busy);
        }
        let entry = Expected {
            cluster: cluster.to_string(),
            node: node.to_string(),
            expires: now + ttl,
            deliver,
        };
        expected.insert(id.clone(), entry);
        Ok((id, arrives))
    }

    /// The transfer `id`, if `cluster`'s `node` may send it now; it cannot be taken again.
    fn take(&self, id: &str, cluster: &str, node: &str) -> Option<oneshot::Sender<Incoming>> {
        let mut expected = self.lock();
        let mine = expected
            .get(id)
            .is_some_and(|e| e.cluster == cluster && e.node == node);
        if !mine {
            // Another node cannot take (or cancel) what was asked of this one.
            return None;
        }
        let entry = expected.remove(id)?;
        (entry.expires > Instant::now()).then_some(entry.deliver)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expected>> {
        self.expected.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `PUT TRANSFER_PATH{id}`: an agent sends the bytes of a transfer the daemon expects.
pub(super) async fn receive(
    State(cx): State<Arc<Context>>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(identity) = peer.identity else {
        return answer(
            StatusCode::UNAUTHORIZED,
            "a transfer needs a node credential",
        );
    };
    let bindings = cx.hub.bindings();
    if bindings
        .check(&identity.cluster, &identity.node, &identity.key_pin)
        .is_err()
    {
        return answer(StatusCode::FORBIDDEN, "this credential is not valid");
    }
    let Some((revision, etcd_version)) = described(&headers) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "the transfer's headers are missing or malformed",
        );
    };
    let transfers = cx.hub.transfers();
    let Some(deliver) = transfers.take(&id, &identity.cluster, &identity.node) else {
        // Unknown, expired, taken, or another node's: one answer for all.
        return answer(
            StatusCode::NOT_FOUND,
            "no such transfer is expected from this node",
        );
    };
    let (tx, bytes) = mpsc::channel(QUEUE);
    let incoming = Incoming {
        revision,
        etcd_version,
        bytes,
    };
    if deliver.send(incoming).is_err() {
        return answer(
            StatusCode::GONE,
            "the daemon no longer waits for this transfer",
        );
    }
    let limits = (cx.settings.max_transfer_bytes, cx.settings.transfer_stall);
    match pump(body, &tx, limits).await {
        Ok(total) => {
            tracing::info!(
                cluster = identity.cluster,
                node = identity.node,
                bytes = total,
                "transfer received"
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            tracing::warn!(cluster = identity.cluster, node = identity.node, error = %e, "transfer failed");
            let status = match e {
                TransferError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            let _ = tx.try_send(Err(e.clone()));
            answer(status, &e.to_string())
        }
    }
}

/// The revision and version headers of a transfer, when well formed.
fn described(headers: &HeaderMap) -> Option<(i64, String)> {
    let text = |name| headers.get(name)?.to_str().ok();
    let revision = text(SNAPSHOT_REVISION_HEADER)?;
    let revision = (revision.len() <= 20)
        .then(|| revision.parse::<i64>().ok())
        .flatten()
        .filter(|r| *r >= 0)?;
    let version = text(SNAPSHOT_VERSION_HEADER)?;
    let printable = version.bytes().all(|b| b.is_ascii_graphic());
    (version.len() <= MAX_VERSION_BYTES && printable).then(|| (revision, version.to_string()))
}

/// Moves the body's pieces to the reader, at most `limit` bytes, each piece within `stall`
/// both ways; the total.
async fn pump(
    body: Body,
    tx: &mpsc::Sender<Result<Bytes, TransferError>>,
    (limit, stall): (u64, Duration),
) -> Result<u64, TransferError> {
    let mut pieces = body.into_data_stream();
    let mut total = 0u64;
    loop {
        let next = tokio::time::timeout(stall, pieces.next())
            .await
            .map_err(|_| TransferError::Stalled(stall))?;
        let piece = match next {
            None => return Ok(total),
            Some(Err(e)) => return Err(TransferError::Broken(e.to_string())),
            Some(Ok(piece)) => piece,
        };
        total += piece.len() as u64;
        if total > limit {
            return Err(TransferError::TooLarge(limit));
        }
        match tokio::time::timeout(stall, tx.send(Ok(piece))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(TransferError::Broken("the daemon stopped reading".into())),
            Err(_) => return Err(TransferError::Stalled(stall)),
        }
    }
}

fn answer(status: StatusCode, text: &str) -> Response {
    (status, text.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_headers_describe_a_transfer() {
        type Case = (
            Option<&'static str>,
            Option<&'static str>,
            Option<(i64, &'static str)>,
        );
        let cases: [Case; 7] = [
            (Some("42"), Some("3.4.23"), Some((42, "3.4.23"))),
            (Some("0"), Some("3.5.16"), Some((0, "3.5.16"))),
            (None, Some("3.4.23"), None),
            (Some("42"), None, None),
            (Some("-1"), Some("3.4.23"), None),
            (Some("123456789012345678901"), Some("3.4.23"), None),
            (Some("42"), Some("3.4 23"), None),
        ];
        for (revision, version, want) in cases {
            let mut headers = HeaderMap::new();
            if let Some(r) = revision {
                headers.insert(SNAPSHOT_REVISION_HEADER, r.parse().unwrap());
            }
            if let Some(v) = version {
                headers.insert(SNAPSHOT_VERSION_HEADER, v.parse().unwrap());
            }
            let got = described(&headers);
            let want = want.map(|(r, v)| (r, v.to_string()));
            assert_eq!(got, want, "{revision:?} {version:?}");
        }
        let mut long = HeaderMap::new();
        long.insert(SNAPSHOT_REVISION_HEADER, "1".parse().unwrap());
        let version = "3".repeat(MAX_VERSION_BYTES + 1);
        long.insert(SNAPSHOT_VERSION_HEADER, version.parse().unwrap());
        assert_eq!(described(&long), None);
    }

    #[test]
    fn an_expected_transfer_is_taken_once_and_only_by_its_node() {
        let transfers = Transfers::default();
        let (id, _arrives) = transfers
            .expect("dev", "n1", Duration::from_secs(60))
            .unwrap();
        assert!(transfers.take(&id, "dev", "n2").is_none());
        assert!(transfers.take(&id, "other", "n1").is_none());
        assert!(transfers.take(&id, "dev", "n1").is_some());
        assert!(transfers.take(&id, "dev", "n1").is_none(), "taken twice");
        let (expired, _arrives) = transfers.expect("dev", "n1", Duration::ZERO).unwrap();
        assert!(transfers.take(&expired, "dev", "n1").is_none());
    }
}
