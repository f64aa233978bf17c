//! Saving one etcd snapshot: the bytes etcd streams are checked against etcd's trailing sha256,
//! hashed, compressed with zstd and uploaded as `<cluster>/<id>.db.zst` in one pass, with no
//! temporary file and memory bounded by the upload's parts whatever the database's size. The
//! manifest is written last, create-only, so a snapshot is listed only once it is whole.
//!
//! Compression is libzstd's streaming encoder (the `zstd` crate) with one worker thread of its
//! own, as the `zstd` command runs by default: the task hands each 32 KiB chunk over and takes
//! whatever compressed bytes are ready, so it never holds its async worker for the compression,
//! and the part uploads run as their own tasks meanwhile. libzstd compresses in jobs of
//! [`JOB_BYTES`], each primed with the whole window before it ([`OVERLAP_LOG`]): the memory is
//! two jobs' worth (about 7 MiB) where the command's 8 MiB jobs take 35, and the output is no
//! larger than `zstd -3`'s (the single-threaded encoder's is 0.3 % larger on etcd's pages).

use std::error::Error as StdError;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256 as Hasher};
use zstd::zstd_safe::CParameter;

use super::call::{bounded, Call, CallError};
use super::integrity::{EtcdChecksum, IntegrityError};
use super::manifest::{Compression, Manifest, Sha256, MANIFEST_FORMAT, MAX_FIELD_BYTES};
use super::naming;
use super::upload::Upload;
use crate::model::{ClusterName, NodeName, SnapshotId};

/// zstd's level for snapshots: most of the gain of higher levels at a fraction of their time.
pub const COMPRESSION_LEVEL: i32 = 3;
/// The size of libzstd's compression jobs (see the module's comment).
const JOB_BYTES: u32 = 2 << 20;
/// Each job is primed with a full window of the input before it (9 is the whole window).
const OVERLAP_LOG: u32 = 9;
/// Longest wait for the next chunk of the snapshot stream.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// What the caller knows about the snapshot it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The node whose etcd member sends the snapshot.
    pub member: NodeName,
    /// The revision the snapshot holds.
    pub revision: u64,
    /// The version the member reports.
    pub etcd_version: String,
    /// The commit of the cluster's definition.
    pub git_commit: String,
}

/// Why a snapshot was not saved. Nothing is listed after any of these: the manifest is written
/// last, and the data upload is aborted on every failure before it.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the {field} given for the manifest is longer than {MAX_FIELD_BYTES} bytes")]
    FieldTooLong { field: &'static str },
    #[error("cannot make a snapshot id")]
    Id(#[source] getrandom::Error),
    #[error("the snapshot stream failed")]
    Stream(#[source] Box<dyn StdError + Send + Sync>),
    #[error("the snapshot stream sent nothing for {}", humantime::format_duration(*.limit))]
    Stalled { limit: Duration },
    #[error("the snapshot stream is not a whole etcd snapshot")]
    Integrity(#[from] IntegrityError),
    #[error("compressing the snapshot")]
    Compress(#[source] io::Error),
    #[error("storing the snapshot")]
    Store(#[from] CallError),
    #[error("snapshot {id} already has objects in the store; nothing was overwritten")]
    AlreadyExists { id: SnapshotId },
}

/// Saves the snapshot `stream` yields (etcd's Maintenance Snapshot, its trailing sha256
/// included) as a new snapshot of `cluster` and returns its manifest.
pub async fn save<S, E>(
    store: &dyn ObjectStore,
    cluster: &ClusterName,
    source: &Source,
    stream: S,
) -> Result<Manifest, SaveError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    check_fields(source)?;
    let started_at = now_millis();
    let id = naming::new_id(started_at, source.revision).map_err(SaveError::Id)?;
    let data = naming::data_path(cluster, &id);
    let manifest_path = naming::manifest_path(cluster, &id);
    for path in [&data, &manifest_path] {
        refuse_existing(store, path, &id).await?;
    }
    let mut upload = Upload::start(store, &data).await?;
    let sums = match stream_into(&mut upload, stream).await {
        Ok(sums) => sums,
        Err(e) => {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(%cluster, %id, error = %abort, "aborting the snapshot upload failed");
            }
            return Err(e);
        }
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        cluster: cluster.clone(),
        id,
        member: source.member.clone(),
        revision: source.revision,
        etcd_version: source.etcd_version.clone(),
        raw_size: sums.raw_size,
        compressed_size: sums.compressed_size,
        raw_sha256: sums.raw_sha256,
        compressed_sha256: sums.compressed_sha256,
        compression: Compression::Zstd,
        compression_level: COMPRESSION_LEVEL,
        git_commit: source.git_commit.clone(),
        started_at,
        finished_at: now_millis(),
    };
    // A failure here leaves a data object without a manifest: not a snapshot, and removed by
    // retention after its grace period. It is not deleted here, as a manifest write that timed
    // out may still have landed.
    put_manifest(store, &manifest_path, &manifest).await?;
    Ok(manifest)
}

/// Writes a manifest create-only: never over an existing object.
///
/// `PutMode::Create` makes this atomic where the store honours it: the file store links the
/// file into place, and S3 stores that implement `If-None-Match: *` refuse a second write.
/// Garage 2.5 ignores `If-None-Match` on PutObject and overwrites (measured by the store
/// contract tests), so the write is preceded by a lookup: with random ids, the only writer of a
/// manifest is the save that made its id, and the lookup catches a repeated write.
pub async fn put_manifest(
    store: &dyn ObjectStore,
    path: &Path,
    manifest: &Manifest,
) -> Result<(), SaveError> {
    refuse_existing(store, path, &manifest.id).await?;
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let payload = PutPayload::from(manifest.to_json());
    match bounded(Call::PutManifest, store.put_opts(path, payload, options)).await {
        Ok(_) => Ok(()),
        Err(CallError::Failed {
            source: object_store::Error::AlreadyExists { .. },
            ..
        }) => Err(SaveError::AlreadyExists {
            id: manifest.id.clone(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Now, to the millisecond the manifest keeps, so the manifest returned is the one stored.
fn now_millis() -> SystemTime {
    let now = SystemTime::now();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    now - Duration::from_nanos(u64::from(since.subsec_nanos() % 1_000_000))
}

fn check_fields(source: &Source) -> Result<(), SaveError> {
    for (field, value) in [
        ("etcd version", &source.etcd_version),
        ("Git commit", &source.git_commit),
    ] {
        if value.len() > MAX_FIELD_BYTES {
            return Err(SaveError::FieldTooLong { field });
        }
    }
    Ok(())
}

async fn refuse_existing(
    store: &dyn ObjectStore,
    path: &Path,
    id: &SnapshotId,
) -> Result<(), SaveError> {
    match bounded(Call::Head, store.head(path)).await {
        Ok(_) => Err(SaveError::AlreadyExists { id: id.clone() }),
        Err(CallError::Failed {
            source: object_store::Error::NotFound { .. },
            ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Streams every chunk through the checks and the encoder into the upload, and completes it
/// only if etcd's checksum holds.
async fn stream_into<S, E>(upload: &mut Upload, stream: S) -> Result<Sums, SaveError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut pipeline = Pipeline::new().map_err(SaveError::Compress)?;
    loop {
        let next = tokio::time::timeout(CHUNK_TIMEOUT, stream.next())
            .await
            .map_err(|_| SaveError::Stalled {
                limit: CHUNK_TIMEOUT,
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| SaveError::Stream(e.into()))?;
        let compressed = pipeline.push(&chunk).map_err(SaveError::Compress)?;
        upload.write(&compressed).await?;
    }
    let (last, sums) = pipeline.finish()?;
    upload.write(&last).await?;
    upload.complete().await?;
    Ok(sums)
}

/// The sizes and digests of one saved snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    raw_size: u64,
    raw_sha256: Sha256,
    compressed_size: u64,
    compressed_sha256: Sha256,
}

/// The synchronous core of a save: bytes in, compressed bytes out, every digest kept.
struct Pipeline {
    /// etcd's check, and the raw sha256 with it.
    etcd: EtcdChecksum,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    compressed: Hasher,
    compressed_size: u64,
}

impl Pipeline {
    fn new() -> io::Result<Pipeline> {
        Ok(Pipeline {
            etcd: EtcdChecksum::default(),
            encoder: encoder()?,
            compressed: Hasher::new(),
            compressed_size: 0,
        })
    }

    /// Takes raw bytes; returns the compressed bytes the encoder produced from them (often none).
    fn push(&mut self, chunk: &[u8]) -> io::Result<Vec<u8>> {
        self.etcd.update(chunk);
        self.encoder.write_all(chunk)?;
        let out = std::mem::take(self.encoder.get_mut());
        self.count(&out);
        Ok(out)
    }

    /// Checks etcd's trailer, then ends the zstd frame; returns its last bytes and the sums.
    fn finish(self) -> Result<(Vec<u8>, Sums), SaveError> {
        let Pipeline {
            etcd,
            encoder,
            mut compressed,
            compressed_size,
        } = self;
        let raw_size = etcd.size();
        let raw_sha256 = Sha256(etcd.raw_sha256());
        etcd.finish()?;
        let out = encoder.finish().map_err(SaveError::Compress)?;
        compressed.update(&out);
        let sums = Sums {
            raw_size,
            raw_sha256,
            compressed_size: compressed_size + out.len() as u64,
            compressed_sha256: Sha256(compressed.finalize().into()),
        };
        Ok((out, sums))
    }

    fn count(&mut self, out: &[u8]) {
        self.compressed.update(out);
        self.compressed_size += out.len() as u64;
    }
}

/// libzstd's encoder at [`COMPRESSION_LEVEL`] with one worker thread (see the module's comment).
fn encoder() -> io::Result<zstd::stream::write::Encoder<'static, Vec<u8>>> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), COMPRESSION_LEVEL)?;
    encoder.multithread(1)?;
    encoder.set_parameter(CParameter::JobSize(JOB_BYTES))?;
    encoder.set_parameter(CParameter::OverlapSizeLog(OVERLAP_LOG))?;
    Ok(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(sectors: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..sectors * 512).map(|i| (i % 13) as u8).collect();
        let digest = Hasher::digest(&bytes);
        bytes.extend_from_slice(&digest);
        bytes
    }

    #[test]
    fn the_pipeline_output_decompresses_to_its_input_and_sums_both() {
        let raw = snapshot(64);
        let mut pipeline = Pipeline::new().unwrap();
        let mut compressed = Vec::new();
        for chunk in raw.chunks(1000) {
            compressed.extend(pipeline.push(chunk).unwrap());
        }
        let (last, sums) = pipeline.finish().unwrap();
        compressed.extend(last);
        assert_eq!(zstd::decode_all(compressed.as_slice()).unwrap(), raw);
        assert_eq!(sums.raw_size, raw.len() as u64);
        assert_eq!(sums.compressed_size, compressed.len() as u64);
        assert_eq!(sums.raw_sha256.0, <[u8; 32]>::from(Hasher::digest(&raw)));
        assert_eq!(
            sums.compressed_sha256.0,
            <[u8; 32]>::from(Hasher::digest(&compressed))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_stalls_is_refused_and_its_upload_aborted() {
        use futures::TryStreamExt;
        use object_store::memory::InMemory;

        let store = InMemory::new();
        let cluster = ClusterName::parse("dev").unwrap();
        let source = Source {
            member: NodeName::parse("node-1").unwrap(),
            revision: 1,
            etcd_version: "3.4.23".into(),
            git_commit: "0".repeat(40),
        };
        let first = futures::stream::iter([Ok::<_, io::Error>(Bytes::from(snapshot(4)))]);
        let stalled = first.chain(futures::stream::pending());
        let refused = save(&store, &cluster, &source, stalled).await;
        assert!(
            matches!(refused, Err(SaveError::Stalled { limit }) if limit == CHUNK_TIMEOUT),
            "{refused:?}"
        );
        let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert!(objects.is_empty(), "{objects:?}");
    }

    #[test]
    fn the_pipeline_refuses_a_stream_whose_checksum_fails() {
        let mut raw = snapshot(8);
        raw[10] ^= 0x80;
        let mut pipeline = Pipeline::new().unwrap();
        pipeline.push(&raw).unwrap();
        assert!(matches!(
            pipeline.finish(),
            Err(SaveError::Integrity(IntegrityError::Mismatch))
        ));
    }
}
