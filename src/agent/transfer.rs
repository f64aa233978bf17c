//! The agent's side of transfers, on an HTTPS connection of their own dialled as the session
//! is (the daemon's CA pinned, the node's credential as the client certificate): its member's
//! snapshot streamed up to the daemon (see `protocol::EtcdTask::Snapshot`), and a snapshot to
//! restore fetched down into a file. TCP holds the faster side back; a stall of either side
//! longer than `STALL_TIMEOUT` ends the transfer.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use super::etcd::{self, EtcdError, EtcdTaskError};
use super::session::{Dial, SessionError};
use crate::pki::Identity;
use crate::protocol::{
    short_text, EtcdTaskOutcome, SNAPSHOT_REVISION_HEADER, SNAPSHOT_VERSION_HEADER, TRANSFER_PATH,
    TRANSFER_SHA256_HEADER,
};

/// The longest etcd may take to send the next piece of its snapshot, or the daemon to take
/// the last one.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Etcd(#[from] EtcdTaskError),
    #[error("etcd's snapshot stream at {url}")]
    Stream {
        url: String,
        #[source]
        source: EtcdError,
    },
    #[error("etcd at {url} sent no snapshot")]
    Empty { url: String },
    #[error("cannot reach the daemon for the transfer")]
    Dial(#[source] SessionError),
    #[error("the transfer to the daemon failed")]
    Http(#[source] hyper::Error),
    #[error(
        "the transfer stalled for {}",
        humantime::format_duration(STALL_TIMEOUT)
    )]
    Stalled,
    #[error("the daemon refused the transfer: {status}")]
    Refused { status: hyper::StatusCode },
    #[error("the daemon's transfer has no valid sha256")]
    NoDigest,
    #[error("the transfer is over the {MAX_FETCH_BYTES}-byte limit")]
    TooLarge,
    #[error("the bytes received hash to {got}, not {want}")]
    Digest { want: String, got: String },
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The most bytes a fetch writes: etcd's largest database and a margin.
pub const MAX_FETCH_BYTES: u64 = 9 << 30;

/// What a fetch wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: u64,
    pub sha256: String,
}

/// Fetches the daemon's transfer `transfer` into a new file `dest` (mode 0600, made here; an
/// existing file is an error), synced, its sha256 checked against the daemon's. The file is
/// removed when anything fails.
pub async fn fetch_to_file(
    dial: &Dial,
    identity: Identity,
    transfer: &str,
    dest: &Path,
) -> Result<Fetched, TransferError> {
    let fetched = fetch(dial, identity, transfer, dest).await;
    if fetched.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    fetched
}

async fn fetch(
    dial: &Dial,
    identity: Identity,
    transfer: &str,
    dest: &Path,
) -> Result<Fetched, TransferError> {
    let request = hyper::Request::get(format!("{TRANSFER_PATH}{transfer}"))
        .header(
            hyper::header::HOST,
            dial.server.host_str().unwrap_or_default(),
        )
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("a transfer request is well formed");
    let (mut sender, driver) = connect(dial, identity).await?;
    let written = async {
        let response = within(sender.send_request(request))
            .await?
            .map_err(TransferError::Http)?;
        if response.status() != hyper::StatusCode::OK {
            return Err(TransferError::Refused {
                status: response.status(),
            });
        }
        let want = response
            .headers()
            .get(TRANSFER_SHA256_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(TransferError::NoDigest)?
            .to_ascii_lowercase();
        let fetched = write_body(response.into_body(), dest).await?;
        if fetched.sha256 != want {
            return Err(TransferError::Digest {
                want,
                got: fetched.sha256,
            });
        }
        Ok(fetched)
    }
    .await;
    driver.abort();
    written
}

/// Writes `body` into the new file `dest`, hashing it, and syncs it.
async fn write_body(
    mut body: hyper::body::Incoming,
    dest: &Path,
) -> Result<Fetched, TransferError> {
    use http_body_util::BodyExt as _;
    use sha2::{Digest as _, Sha256};
    use tokio::io::AsyncWriteExt as _;

    let write_error = |source| TransferError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .await
        .map_err(write_error)?;
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    while let Some(frame) = within(body.frame()).await? {
        let Ok(data) = frame.map_err(TransferError::Http)?.into_data() else {
            continue;
        };
        bytes += data.len() as u64;
        if bytes > MAX_FETCH_BYTES {
            return Err(TransferError::TooLarge);
        }
        hash.update(&data);
        file.write_all(&data).await.map_err(write_error)?;
    }
    file.sync_all().await.map_err(write_error)?;
    Ok(Fetched {
        bytes,
        sha256: hex::encode(hash.finalize()),
    })
}

/// Streams the snapshot of the member at `client_url` (dialled with the certificates in
/// `pki_dir`) to the daemon's transfer `transfer`.
pub async fn send_snapshot(
    dial: &Dial,
    identity: Identity,
    transfer: &str,
    client_url: &str,
    pki_dir: &Path,
) -> EtcdTaskOutcome {
    match send(dial, identity, transfer, client_url, pki_dir).await {
        Ok((revision, bytes)) => EtcdTaskOutcome::Sent { revision, bytes },
        Err(e) => EtcdTaskOutcome::Failed {
            error: short_text(&crate::error_chain(&e)),
        },
    }
}

async fn send(
    dial: &Dial,
    identity: Identity,
    transfer: &str,
    url: &str,
    pki_dir: &Path,
) -> Result<(i64, u64), TransferError> {
    let mut client = etcd::connect_streaming(url, pki_dir).await?;
    // The revision when the snapshot starts; the snapshot holds at least that. (etcd 3.4
    // leaves the header of a snapshot's pieces empty; a later etcd fills it.)
    let (version, at_start) = etcd::version_and_revision(&mut client, url).await?;
    let stream_error = |source| TransferError::Stream {
        url: url.to_string(),
        source: EtcdError::from(source),
    };
    let mut snapshot = within(client.snapshot()).await?.map_err(stream_error)?;
    // The revision travels ahead of the bytes, in the request's headers.
    let first = within(snapshot.message())
        .await?
        .map_err(stream_error)?
        .ok_or_else(|| TransferError::Empty {
            url: url.to_string(),
        })?;
    let revision = first.header().map_or(0, |h| h.revision()).max(at_start);
    let sent = Arc::new(AtomicU64::new(0));
    let pieces = futures::stream::once(futures::future::ready(Ok(first))).chain(
        futures::stream::unfold(snapshot, |mut s| async move {
            let next = tokio::time::timeout(STALL_TIMEOUT, s.message()).await;
            match next {
                Ok(Ok(Some(piece))) => Some((Ok(piece), s)),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((Err(e.to_string()), s)),
                Err(_) => Some((Err("etcd's snapshot stream stalled".to_string()), s)),
            }
        }),
    );
    let counter = sent.clone();
    let body = pieces.map(move |piece| match piece {
        Ok(piece) => {
            counter.fetch_add(piece.blob().len() as u64, Ordering::Relaxed);
            Ok::<_, BodyError>(Frame::data(Bytes::copy_from_slice(piece.blob())))
        }
        Err(reason) => Err(BodyError(reason)),
    });
    let request = hyper::Request::put(format!("{TRANSFER_PATH}{transfer}"))
        .header(
            hyper::header::HOST,
            dial.server.host_str().unwrap_or_default(),
        )
        .header(SNAPSHOT_REVISION_HEADER, revision.to_string())
        .header(SNAPSHOT_VERSION_HEADER, version)
        .body(StreamBody::new(body))
        .expect("a transfer request is well formed");
    let status = put(dial, identity, request, &sent).await?;
    if status != hyper::StatusCode::NO_CONTENT {
        return Err(TransferError::Refused { status });
    }
    Ok((revision, sent.load(Ordering::Relaxed)))
}

/// Why the body stopped: etcd's reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyError(String);

/// Sends `request` on a connection of its own and waits for the daemon's answer, as long as
/// bytes keep going out (`sent` grows) at least every `STALL_TIMEOUT`.
async fn put<B>(
    dial: &Dial,
    identity: Identity,
    request: hyper::Request<StreamBody<B>>,
    sent: &AtomicU64,
) -> Result<hyper::StatusCode, TransferError>
where
    B: futures::Stream<Item = Result<Frame<Bytes>, BodyError>> + Send + 'static,
{
    let (mut sender, driver) = connect(dial, identity).await?;
    let answer = sender.send_request(request);
    tokio::pin!(answer);
    let mut last = sent.load(Ordering::Relaxed);
    let outcome = loop {
        tokio::select! {
            answer = &mut answer => break answer.map(|r| r.status()).map_err(TransferError::Http),
            () = tokio::time::sleep(STALL_TIMEOUT) => {
                let now = sent.load(Ordering::Relaxed);
                if now == last {
                    break Err(TransferError::Stalled);
                }
                last = now;
            }
        }
    };
    driver.abort();
    outcome
}

/// An HTTP/1.1 connection of its own to the daemon, dialled as the session is, and the task
/// that drives it (abort it when done).
async fn connect<B>(
    dial: &Dial,
    identity: Identity,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<B>,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    ),
    TransferError,
>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = dial
        .tls(Some(identity))
        .await
        .map_err(TransferError::Dial)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(TransferError::Http)?;
    Ok((sender, tokio::spawn(connection)))
}

/// Runs `work` within `STALL_TIMEOUT`.
async fn within<T>(work: impl std::future::Future<Output = T>) -> Result<T, TransferError> {
    tokio::time::timeout(STALL_TIMEOUT, work)
        .await
        .map_err(|_| TransferError::Stalled)
}
