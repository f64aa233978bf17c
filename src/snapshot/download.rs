//! Reading a snapshot back, verified: the manifest first, then the data object in ranges of
//! [`RANGE_BYTES`], decompressed as it arrives into pieces of at most [`PIECE_BYTES`]. The
//! compressed sha256, the raw sha256 and etcd's trailing sha256 are all checked, and the sizes
//! against the manifest (so a decompression bomb stops at the manifest's size). Memory is
//! bounded whatever the snapshot's size. This serves `snapshot verify` and restore.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use futures::FutureExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256 as Hasher};
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use super::call::{bounded, within, Call, CallError};
use super::integrity::{EtcdChecksum, IntegrityError};
use super::manifest::{Manifest, ManifestError, MAX_MANIFEST_BYTES};
use super::naming;
use super::save::CHUNK_TIMEOUT;
use crate::model::{ClusterName, SnapshotId};

/// Bytes of the data object one GET asks for.
pub const RANGE_BYTES: u64 = 8 * 1024 * 1024;
/// Most raw bytes one item of the stream holds.
pub const PIECE_BYTES: usize = 256 * 1024;

/// Which bytes a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The data object as stored.
    Compressed,
    /// The snapshot as etcd sent it.
    Raw,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Compressed => "compressed",
            Layer::Raw => "raw",
        })
    }
}

/// Why a snapshot could not be read back intact.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("snapshot {id} has no manifest in the store")]
    NotFound { id: SnapshotId },
    #[error(transparent)]
    Store(#[from] CallError),
    #[error("the manifest of snapshot {id} is refused")]
    Manifest {
        id: SnapshotId,
        #[source]
        source: ManifestError,
    },
    #[error("the manifest at {path} describes another snapshot ({cluster}/{id})")]
    NotThisSnapshot {
        path: Path,
        cluster: ClusterName,
        id: SnapshotId,
    },
    #[error("the {layer} snapshot is {found} bytes where the manifest says {expected}")]
    Size {
        layer: Layer,
        expected: u64,
        found: u64,
    },
    #[error("the {layer} snapshot's sha256 differs from the manifest's")]
    Digest { layer: Layer },
    #[error("the data object is not a valid zstd stream")]
    Decompress(#[source] io::Error),
    #[error("the data object's zstd frame is cut short")]
    Incomplete,
    #[error("the decompressed snapshot fails etcd's own check")]
    Integrity(#[from] IntegrityError),
}

/// Reads the manifest of `cluster`'s snapshot `id`, bounded in size and checked to name it.
pub async fn read_manifest(
    store: &dyn ObjectStore,
    cluster: &ClusterName,
    id: &SnapshotId,
) -> Result<Manifest, DownloadError> {
    let path = naming::manifest_path(cluster, id);
    let bytes = read_small(store, &path, id).await?;
    let manifest = Manifest::parse(&bytes).map_err(|source| DownloadError::Manifest {
        id: id.clone(),
        source,
    })?;
    if &manifest.cluster != cluster || &manifest.id != id {
        return Err(DownloadError::NotThisSnapshot {
            path,
            cluster: manifest.cluster,
            id: manifest.id,
        });
    }
    Ok(manifest)
}

/// The manifest and the raw snapshot (what `etcdctl snapshot save` writes) as a stream.
///
/// Every check that needs the whole object ends the stream: its last item is an error if
/// anything fails, so a consumer must not use the bytes before the stream ended without one.
pub async fn download_verified(
    store: Arc<dyn ObjectStore>,
    cluster: &ClusterName,
    id: &SnapshotId,
) -> Result<
    (
        Manifest,
        impl Stream<Item = Result<Bytes, DownloadError>> + Send + 'static,
    ),
    DownloadError,
> {
    let manifest = read_manifest(store.as_ref(), cluster, id).await?;
    let path = naming::data_path(cluster, id);
    let meta = bounded(Call::Head, store.head(&path)).await?;
    if meta.size != manifest.compressed_size {
        return Err(DownloadError::Size {
            layer: Layer::Compressed,
            expected: manifest.compressed_size,
            found: meta.size,
        });
    }
    let reader = Reader::new(store, path, manifest.clone())?;
    let stream = futures::stream::try_unfold(reader, |mut reader| async move {
        Ok(reader.next_piece().await?.map(|piece| (piece, reader)))
    });
    Ok((manifest, stream))
}

/// Reads an object that must be at most [`MAX_MANIFEST_BYTES`], refusing a larger one before
/// reading its body.
async fn read_small(
    store: &dyn ObjectStore,
    path: &Path,
    id: &SnapshotId,
) -> Result<Vec<u8>, DownloadError> {
    let result = match bounded(
        Call::GetManifest,
        store.get_opts(path, GetOptions::default()),
    )
    .await
    {
        Ok(result) => result,
        Err(CallError::Failed {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return Err(DownloadError::NotFound { id: id.clone() }),
        Err(e) => return Err(e.into()),
    };
    let too_large = |size: u64| DownloadError::Manifest {
        id: id.clone(),
        source: ManifestError::TooLarge {
            size: usize::try_from(size).unwrap_or(usize::MAX),
            limit: MAX_MANIFEST_BYTES,
        },
    };
    if result.meta.size > MAX_MANIFEST_BYTES as u64 {
        return Err(too_large(result.meta.size));
    }
    let mut body = result.into_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = within(
        Call::ReadManifest,
        CHUNK_TIMEOUT,
        body.next().map(Option::transpose),
    )
    .await?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(too_large(bytes.len() as u64));
        }
    }
    Ok(bytes)
}

/// The state of one verified download.
struct Reader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    manifest: Manifest,
    /// The current range's body.
    body: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    /// Where the next range starts.
    requested: u64,
    received: u64,
    /// Compressed bytes not yet through the decoder.
    input: Bytes,
    decoder: Decoder<'static>,
    /// zstd's hint after the last call: 0 once a frame is whole.
    frame_hint: usize,
    compressed: Hasher,
    /// etcd's check, and the raw sha256 with it.
    etcd: EtcdChecksum,
    done: bool,
}

impl Reader {
    fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        manifest: Manifest,
    ) -> Result<Reader, DownloadError> {
        Ok(Reader {
            store,
            path,
            manifest,
            body: None,
            requested: 0,
            received: 0,
            input: Bytes::new(),
            decoder: Decoder::new().map_err(DownloadError::Decompress)?,
            frame_hint: 1,
            compressed: Hasher::new(),
            etcd: EtcdChecksum::default(),
            done: false,
        })
    }

    /// The next raw piece, `None` once everything is read and every check has passed.
    async fn next_piece(&mut self) -> Result<Option<Bytes>, DownloadError> {
        while !self.done {
            if !self.input.is_empty() {
                let piece = self.decode()?;
                if !piece.is_empty() {
                    return Ok(Some(piece));
                }
                continue;
            }
            match self.next_compressed().await? {
                Some(chunk) => {
                    self.received += chunk.len() as u64;
                    self.compressed.update(&chunk);
                    self.input = chunk;
                }
                None => {
                    // The decoder may still hold output the last call had no room for.
                    let piece = self.decode()?;
                    if !piece.is_empty() {
                        return Ok(Some(piece));
                    }
                    self.finish()?;
                    self.done = true;
                }
            }
        }
        Ok(None)
    }

    /// Runs the decoder on the pending input into one bounded piece.
    fn decode(&mut self) -> Result<Bytes, DownloadError> {
        let mut out = Vec::with_capacity(PIECE_BYTES);
        let mut input = InBuffer::around(&self.input);
        let mut output = OutBuffer::around(&mut out);
        let hint = self
            .decoder
            .run(&mut input, &mut output)
            .map_err(DownloadError::Decompress)?;
        let used = input.pos();
        // A call that did nothing (draining an ended frame) says nothing about the frame.
        if used > 0 || !out.is_empty() {
            self.frame_hint = hint;
        }
        let _ = self.input.split_to(used);
        self.etcd.update(&out);
        if self.etcd.size() > self.manifest.raw_size {
            return Err(DownloadError::Size {
                layer: Layer::Raw,
                expected: self.manifest.raw_size,
                found: self.etcd.size(),
            });
        }
        Ok(Bytes::from(out))
    }

    /// The next chunk of the data object, asking for the next range when one ends.
    async fn next_compressed(&mut self) -> Result<Option<Bytes>, DownloadError> {
        loop {
            if let Some(body) = &mut self.body {
                let next = within(
                    Call::ReadData,
                    CHUNK_TIMEOUT,
                    body.next().map(Option::transpose),
                );
                match next.await? {
                    Some(chunk) => return Ok(Some(chunk)),
                    None => self.body = None,
                }
            }
            let size = self.manifest.compressed_size;
            if self.requested >= size {
                return Ok(None);
            }
            let end = (self.requested + RANGE_BYTES).min(size);
            let options = GetOptions {
                range: Some(GetRange::Bounded(self.requested..end)),
                ..GetOptions::default()
            };
            let result = bounded(Call::GetData, self.store.get_opts(&self.path, options)).await?;
            self.body = Some(result.into_stream());
            self.requested = end;
        }
    }

    /// The checks that need everything: sizes, both digests, the frame's end and etcd's own.
    fn finish(&mut self) -> Result<(), DownloadError> {
        let manifest = &self.manifest;
        if self.received != manifest.compressed_size {
            return Err(DownloadError::Size {
                layer: Layer::Compressed,
                expected: manifest.compressed_size,
                found: self.received,
            });
        }
        if self.compressed.clone().finalize().as_slice() != manifest.compressed_sha256.0 {
            return Err(DownloadError::Digest {
                layer: Layer::Compressed,
            });
        }
        if self.frame_hint != 0 {
            return Err(DownloadError::Incomplete);
        }
        if self.etcd.size() != manifest.raw_size {
            return Err(DownloadError::Size {
                layer: Layer::Raw,
                expected: manifest.raw_size,
                found: self.etcd.size(),
            });
        }
        if self.etcd.raw_sha256() != manifest.raw_sha256.0 {
            return Err(DownloadError::Digest { layer: Layer::Raw });
        }
        std::mem::take(&mut self.etcd).finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use futures::TryStreamExt;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    use super::*;
    use crate::model::NodeName;
    use crate::snapshot::manifest::{Compression, Sha256, MANIFEST_FORMAT};

    /// Stores `compressed` as a snapshot whose manifest claims `raw_size` and matches the
    /// object's own size and digest; returns what reading it back gave.
    async fn read(compressed: Vec<u8>, raw_size: u64) -> (usize, Result<(), DownloadError>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let cluster = ClusterName::parse("dev").unwrap();
        let id = SnapshotId::parse("20261125T060000Z-41-aaaaaaaa").unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            cluster: cluster.clone(),
            id: id.clone(),
            member: NodeName::parse("node-1").unwrap(),
            revision: 41,
            etcd_version: "3.4.23".into(),
            raw_size,
            compressed_size: compressed.len() as u64,
            raw_sha256: Sha256([0; 32]),
            compressed_sha256: Sha256(Hasher::digest(&compressed).into()),
            compression: Compression::Zstd,
            compression_level: 3,
            git_commit: "0".repeat(40),
            started_at: UNIX_EPOCH,
            finished_at: UNIX_EPOCH,
        };
        let put = |path: Path, bytes: Vec<u8>| {
            let store = Arc::clone(&store);
            async move { store.put(&path, PutPayload::from(bytes)).await.unwrap() }
        };
        put(naming::manifest_path(&cluster, &id), manifest.to_json()).await;
        put(naming::data_path(&cluster, &id), compressed).await;
        let (_, stream) = download_verified(Arc::clone(&store), &cluster, &id)
            .await
            .unwrap();
        let mut stream = std::pin::pin!(stream);
        let mut largest = 0;
        loop {
            match stream.try_next().await {
                Ok(Some(piece)) => largest = largest.max(piece.len()),
                Ok(None) => return (largest, Ok(())),
                Err(e) => return (largest, Err(e)),
            }
        }
    }

    #[tokio::test]
    async fn a_decompression_bomb_stops_at_the_manifests_size() {
        let bomb = zstd::encode_all(vec![0u8; 256 * 1024 * 1024].as_slice(), 3).unwrap();
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
        let (largest, result) = read(bomb, 1024 * 1024).await;
        assert!(largest <= PIECE_BYTES);
        assert!(
            matches!(
                result,
                Err(DownloadError::Size {
                    layer: Layer::Raw,
                    expected: 1_048_576,
                    found,
                }) if found <= 1_048_576 + PIECE_BYTES as u64
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_cut_zstd_frame_is_refused() {
        let mut whole = zstd::encode_all(vec![7u8; 100_000].as_slice(), 3).unwrap();
        whole.truncate(whole.len() - 3);
        let (_, result) = read(whole, 100_000).await;
        assert!(
            matches!(
                result,
                Err(DownloadError::Incomplete | DownloadError::Decompress(_))
            ),
            "{result:?}"
        );
    }
}
