//! Transfers: bytes between an agent and the daemon on an HTTPS connection of their own, so a
//! session's heartbeats and plans never wait behind them. Up: a member's snapshot
//! (`protocol::EtcdTask::Snapshot`), handed to whoever in the daemon asked for it. Down: a
//! snapshot to restore, which the daemon offers one node.
//!
//! The daemon first `expect`s (or `offer`s) a transfer for one node, under an unguessable id
//! that it sends in the task; the agent `PUT`s (or `GET`s) `TRANSFER_PATH` + id with its node
//! credential. Only that node may use the id, once, before it expires. The bytes go through a
//! short queue, so the slower side holds the other back through TCP; no more than the
//! transfer limit is read, and a stall of either side ends the transfer.

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
use crate::protocol::{SNAPSHOT_REVISION_HEADER, SNAPSHOT_VERSION_HEADER, TRANSFER_SHA256_HEADER};

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

/// A transfer the daemon offers a node: the sha256 of its bytes, then the bytes. The daemon
/// fills the channel; a piece that is an error ends the transfer.
#[derive(Debug)]
pub struct Outgoing {
    pub sha256: String,
    pub bytes: mpsc::Receiver<Result<Bytes, TransferError>>,
}

/// Which way an expected transfer goes.
enum Way {
    Up(oneshot::Sender<Incoming>),
    Down(Outgoing),
}

struct Expected {
    cluster: String,
    node: String,
    expires: Instant,
    way: Way,
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
        let id = new_id()?;
        let (deliver, arrives) = oneshot::channel();
        self.insert(&id, cluster, node, ttl, Way::Up(deliver))?;
        Ok((id, arrives))
    }

    /// Offers `cluster`'s `node` a transfer of bytes whose sha256 is `sha256`, within `ttl`:
    /// its id (to send in the task), and the channel to fill with the bytes (a short queue:
    /// sends wait while the agent reads slower).
    pub fn offer(
        &self,
        cluster: &str,
        node: &str,
        ttl: Duration,
        sha256: &str,
    ) -> Result<(String, mpsc::Sender<Result<Bytes, TransferError>>), TransferError> {
        let id = new_id()?;
        let (fill, bytes) = mpsc::channel(QUEUE);
        let outgoing = Outgoing {
            sha256: sha256.to_string(),
            bytes,
        };
        self.insert(&id, cluster, node, ttl, Way::Down(outgoing))?;
        Ok((id, fill))
    }

    fn insert(
        &self,
        id: &str,
        cluster: &str,
        node: &str,
        ttl: Duration,
        way: Way,
    ) -> Result<(), TransferError> {
        let mut expected = self.lock();
        let now = Instant::now();
        expected.retain(|_, e| e.expires > now && !abandoned(&e.way));
        if expected.len() >= MAX_EXPECTED {
            return Err(TransferError::Busy);
        }
        let entry = Expected {
            cluster: cluster.to_string(),
            node: node.to_string(),
            expires: now + ttl,
            way,
        };
        expected.insert(id.to_string(), entry);
        Ok(())
    }

    /// The transfer `id` going the way `up` says, if `cluster`'s `node` may use it now; it
    /// cannot be taken again.
    fn take(&self, id: &str, cluster: &str, node: &str, up: bool) -> Option<Way> {
        let mut expected = self.lock();
        let mine = expected.get(id).is_some_and(|e| {
            e.cluster == cluster && e.node == node && matches!(e.way, Way::Up(_)) == up
        });
        if !mine {
            // Another node cannot take (or cancel) what was meant for this one.
            return None;
        }
        let entry = expected.remove(id)?;
        (entry.expires > Instant::now()).then_some(entry.way)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expected>> {
        self.expected.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An unguessable transfer id.
fn new_id() -> Result<String, TransferError> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| TransferError::Broken(e.to_string()))?;
    Ok(hex::encode(random))
}

/// Whether nobody waits for the transfer any more (an upload whose reader went away).
fn abandoned(way: &Way) -> bool {
    match way {
        Way::Up(deliver) => deliver.is_closed(),
        // Its bytes may still be queued after the daemon's last send.
        Way::Down(_) => false,
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
    let identity = match node_of(&cx, peer) {
        Ok(identity) => identity,
        Err((status, why)) => return answer(status, why),
    };
    let Some((revision, etcd_version)) = described(&headers) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "the transfer's headers are missing or malformed",
        );
    };
    let transfers = cx.hub.transfers();
    let Some(Way::Up(deliver)) = transfers.take(&id, &identity.cluster, &identity.node, true)
    else {
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

/// `GET TRANSFER_PATH{id}`: an agent fetches the bytes of a transfer the daemon offers it,
/// with their sha256 in `TRANSFER_SHA256_HEADER`.
pub(super) async fn send_out(
    State(cx): State<Arc<Context>>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
) -> Response {
    let identity = match node_of(&cx, peer) {
        Ok(identity) => identity,
        Err((status, why)) => return answer(status, why),
    };
    let transfers = cx.hub.transfers();
    let Some(Way::Down(outgoing)) = transfers.take(&id, &identity.cluster, &identity.node, false)
    else {
        return answer(
            StatusCode::NOT_FOUND,
            "no such transfer is offered to this node",
        );
    };
    tracing::info!(
        cluster = identity.cluster,
        node = identity.node,
        "transfer sending"
    );
    let stall = cx.settings.transfer_stall;
    let pieces = futures::stream::unfold(Some(outgoing.bytes), move |state| async move {
        let mut bytes = state?;
        let piece = match tokio::time::timeout(stall, bytes.recv()).await {
            Ok(Some(Ok(piece))) => Ok(piece),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => return None,
            Err(_) => Err(TransferError::Stalled(stall)),
        };
        // After an error the stream ends: the agent sees the body cut short.
        let next = piece.is_ok().then_some(bytes);
        Some((piece, next))
    });
    let body = Body::from_stream(pieces);
    ([(TRANSFER_SHA256_HEADER, outgoing.sha256)], body).into_response()
}

/// The node credential of `peer`, when it is still valid; else the refusal to answer.
fn node_of(
    cx: &Context,
    peer: Peer,
) -> Result<crate::pki::NodeIdentity, (StatusCode, &'static str)> {
    let Some(identity) = peer.identity else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "a transfer needs a node credential",
        ));
    };
    let valid = cx
        .hub
        .bindings(&identity.cluster)
        .check(&identity.cluster, &identity.node, &identity.key_pin)
        .is_ok();
    if valid {
        Ok(identity)
    } else {
        Err((StatusCode::FORBIDDEN, "this credential is not valid"))
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
    fn an_expected_transfer_is_taken_once_only_by_its_node_and_only_its_way() {
        let transfers = Transfers::default();
        let ttl = Duration::from_secs(60);
        let (id, _arrives) = transfers.expect("dev", "n1", ttl).unwrap();
        assert!(transfers.take(&id, "dev", "n2", true).is_none());
        assert!(transfers.take(&id, "other", "n1", true).is_none());
        assert!(
            transfers.take(&id, "dev", "n1", false).is_none(),
            "an upload fetched"
        );
        assert!(transfers.take(&id, "dev", "n1", true).is_some());
        assert!(
            transfers.take(&id, "dev", "n1", true).is_none(),
            "taken twice"
        );
        let (expired, _arrives) = transfers.expect("dev", "n1", Duration::ZERO).unwrap();
        assert!(transfers.take(&expired, "dev", "n1", true).is_none());
        let (offered, _fill) = transfers.offer("dev", "n1", ttl, "00").unwrap();
        assert!(
            transfers.take(&offered, "dev", "n1", true).is_none(),
            "an offer sent to"
        );
        assert!(transfers.take(&offered, "dev", "n1", false).is_some());
    }
}
