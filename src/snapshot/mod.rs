//! Snapshot stores: opening a store the daemon's configuration names, and listing the snapshots
//! a cluster has there. A snapshot exists only once its manifest exists, so listing reads
//! manifests: `<cluster>/<snapshot id>.db.zst.json` under the store's prefix. `save` writes
//! snapshots, `download` reads them back verified.

pub mod call;
pub mod download;
pub mod integrity;
pub mod manifest;
pub mod naming;
pub mod retention;
pub mod save;
pub mod schedule;
pub mod upload;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectMeta, ObjectStore};

use crate::config::{Credentials, S3Store, Store};
use crate::model::{ClusterName, SnapshotId};
use crate::secret::{Secret, SecretError};

/// The suffix of a snapshot's manifest, after its id.
pub const MANIFEST_SUFFIX: &str = ".db.zst.json";
/// Most objects one listing of a cluster's snapshots reads.
pub const MAX_LISTED: usize = 100_000;
/// Longest wait for a connection to an S3 store.
pub const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one S3 request may take, a part upload included (`call::CALL_TIMEOUT` bounds it
/// again, with its retries).
pub const S3_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of one S3 request (a part, a manifest) that failed on the way or with a 5xx, and
/// how long they may go on: a store that stays away fails the save within this, and the
/// next scheduled run tries again.
pub const S3_RETRIES: usize = 5;
pub const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a store could not be opened or listed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the file store at {root}")]
    Local {
        root: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot read S3 credentials")]
    Credentials(#[from] SecretError),
    #[error("cannot configure the S3 store for bucket {bucket}")]
    S3 {
        bucket: String,
        #[source]
        source: object_store::Error,
    },
    #[error("listing the snapshots of cluster {cluster}")]
    List {
        cluster: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cluster {cluster} has more than {limit} objects in its store; listing stopped")]
    TooMany { cluster: String, limit: usize },
}

/// Opens a configured store. Credentials are read from their files or the environment here,
/// and kept in redacting types.
pub fn open(store: &Store) -> Result<Arc<dyn ObjectStore>, StoreError> {
    match store {
        Store::File { root } => {
            let local =
                LocalFileSystem::new_with_prefix(root).map_err(|source| StoreError::Local {
                    root: root.display().to_string(),
                    source,
                })?;
            Ok(Arc::new(local))
        }
        Store::S3(s3) => open_s3(s3),
    }
}

fn open_s3(s3: &S3Store) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let (key_id, secret) = match &s3.credentials {
        Credentials::Files {
            access_key_id,
            secret_access_key,
        } => (
            Secret::from_file(access_key_id)?,
            Secret::from_file(secret_access_key)?,
        ),
        Credentials::Environment => (
            Secret::from_env("AWS_ACCESS_KEY_ID")?,
            Secret::from_env("AWS_SECRET_ACCESS_KEY")?,
        ),
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_access_key_id(key_id.expose())
        .with_secret_access_key(secret.expose())
        .with_virtual_hosted_style_request(!s3.path_style)
        // Client options first: setting them replaces `allow_http` too.
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(S3_CONNECT_TIMEOUT)
                .with_timeout(S3_REQUEST_TIMEOUT),
        )
        .with_allow_http(s3.allow_http)
        .with_retry(object_store::RetryConfig {
            max_retries: S3_RETRIES,
            retry_timeout: S3_RETRY_TIMEOUT,
            ..Default::default()
        });
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint.as_str());
    }
    let bucket = builder.build().map_err(|source| StoreError::S3 {
        bucket: s3.bucket.clone(),
        source,
    })?;
    if s3.prefix.is_empty() {
        Ok(Arc::new(bucket))
    } else {
        Ok(Arc::new(PrefixStore::new(bucket, s3.prefix.as_str())))
    }
}

/// The ids of the snapshots `cluster` has in `store`: those whose manifest exists. Objects that
/// are not manifests (the data, uploads in progress, strangers) are ignored.
pub async fn list(
    store: &dyn ObjectStore,
    cluster: &ClusterName,
) -> Result<BTreeSet<SnapshotId>, StoreError> {
    let objects = list_objects(store, cluster).await?;
    let ids = objects.iter().filter_map(|meta| {
        let name = meta.location.filename()?;
        SnapshotId::parse(name.strip_suffix(MANIFEST_SUFFIX)?)
    });
    Ok(ids.collect())
}

/// Every object directly under `<cluster>/` in `store`, with its metadata: snapshot data,
/// manifests, orphans and strangers alike, but never another cluster's objects (`dev2/...` for
/// `dev`) nor deeper ones (`dev/old/...`). At most [`MAX_LISTED`] objects are read.
pub async fn list_objects(
    store: &dyn ObjectStore,
    cluster: &ClusterName,
) -> Result<Vec<ObjectMeta>, StoreError> {
    let prefix = Path::from(cluster.as_str());
    let mut listing = store.list(Some(&prefix));
    let mut objects = Vec::new();
    let mut seen = 0;
    let list_error = |source| StoreError::List {
        cluster: cluster.to_string(),
        source,
    };
    while let Some(meta) = listing.try_next().await.map_err(list_error)? {
        seen += 1;
        if seen > MAX_LISTED {
            return Err(StoreError::TooMany {
                cluster: cluster.to_string(),
                limit: MAX_LISTED,
            });
        }
        if is_direct_child(cluster, &meta.location) {
            objects.push(meta);
        }
    }
    Ok(objects)
}

/// Whether `location` is `<cluster>/<name>`: one of the cluster's own objects.
pub fn is_direct_child(cluster: &ClusterName, location: &Path) -> bool {
    let mut parts = location.parts();
    let first = parts.next();
    first.is_some_and(|part| part.as_ref() == cluster.as_str())
        && parts.next().is_some()
        && parts.next().is_none()
}
