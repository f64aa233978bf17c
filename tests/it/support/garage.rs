//! The real Garage S3 server `scripts/test` runs on 127.0.0.1, and a
//! per-test prefix in its bucket that is emptied when the test ends.
//!
//! Settings come from the environment `scripts/test` exports (from
//! `$DROVER_TEST_CACHE/garage-run/test.env`): `DROVER_TEST_S3_ENDPOINT`,
//! `_BUCKET`, `_REGION`, `_ACCESS_KEY_ID` and `_SECRET_ACCESS_KEY_FILE`, the
//! path of a 0600 file holding the secret. The store is built explicitly, not
//! `from_env`: this machine's AWS_CA_BUNDLE and friends must not leak in.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use tokio::net::TcpStream;

use super::{slug, unique_token, Unavailable};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A secret that never shows in `Debug` output or panic messages.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where and how to reach the test bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// The file the secret was read from, for code that takes a `*_FILE`.
    pub secret_access_key_file: String,
}

impl S3Settings {
    /// Reads the environment. `Unavailable` when a variable or the secret
    /// file is missing, i.e. `scripts/test` did not set Garage up.
    pub fn from_env() -> Result<Self, Unavailable> {
        let secret_access_key_file = var("DROVER_TEST_S3_SECRET_ACCESS_KEY_FILE")?;
        let secret = std::fs::read_to_string(&secret_access_key_file).map_err(|e| {
            Unavailable::new(
                "garage",
                format!("cannot read {secret_access_key_file}: {e}"),
            )
        })?;
        Ok(Self {
            endpoint: var("DROVER_TEST_S3_ENDPOINT")?,
            bucket: var("DROVER_TEST_S3_BUCKET")?,
            region: var("DROVER_TEST_S3_REGION")?,
            access_key_id: var("DROVER_TEST_S3_ACCESS_KEY_ID")?,
            secret_access_key: Secret(secret.trim().to_owned()),
            secret_access_key_file,
        })
    }

    /// The endpoint as a socket address; panics unless it is a plain-http
    /// loopback address, as test traffic must stay on 127.0.0.0/8.
    pub fn socket_addr(&self) -> SocketAddr {
        let authority = self
            .endpoint
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .unwrap_or_else(|| {
                panic!("DROVER_TEST_S3_ENDPOINT {:?} is not http://", self.endpoint)
            });
        let addr: SocketAddr = authority.parse().unwrap_or_else(|e| {
            panic!(
                "DROVER_TEST_S3_ENDPOINT {:?} is not http://IP:PORT: {e}",
                self.endpoint
            )
        });
        assert!(
            addr.ip().is_loopback(),
            "DROVER_TEST_S3_ENDPOINT {} is not on loopback; tests only talk to 127.0.0.0/8",
            self.endpoint
        );
        addr
    }

    /// A client for the whole bucket: path-style, plain http, short retries
    /// so a broken server fails a test quickly.
    pub fn bucket_store(&self) -> AmazonS3 {
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: REQUEST_TIMEOUT,
        };
        let client = ClientOptions::new()
            .with_allow_http(true)
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(self.secret_access_key.expose())
            .with_virtual_hosted_style_request(false)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .unwrap_or_else(|e| panic!("building an S3 client for {}: {e}", self.endpoint))
    }
}

fn var(name: &str) -> Result<String, Unavailable> {
    std::env::var(name).map_err(|_| Unavailable::new("garage", format!("{name} is not set")))
}

/// A unique prefix `drover-test/<pid>-<n>-<time>-<test>` in the test bucket;
/// everything under it is deleted when this is dropped (also on panic).
#[derive(Debug)]
pub struct S3Prefix {
    pub settings: S3Settings,
    /// The prefix inside the bucket, without a trailing slash.
    pub prefix: Path,
    store: Arc<PrefixStore<AmazonS3>>,
}

impl S3Prefix {
    /// `Unavailable` when the settings are missing or nothing listens on the
    /// endpoint.
    pub async fn new(test: &str) -> Result<Self, Unavailable> {
        let settings = S3Settings::from_env()?;
        let addr = settings.socket_addr();
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Unavailable::new("garage", format!("connect {addr}: {e}")));
            }
            Err(_) => {
                return Err(Unavailable::new(
                    "garage",
                    format!("connect {addr}: no answer within {PROBE_TIMEOUT:?}"),
                ));
            }
        }
        let prefix = Path::from(format!("drover-test/{}-{}", unique_token(), slug(test)));
        let store = Arc::new(PrefixStore::new(settings.bucket_store(), prefix.clone()));
        Ok(Self {
            settings,
            prefix,
            store,
        })
    }

    /// The store, rooted at the prefix: `a/b` here is `<prefix>/a/b` in the bucket.
    pub fn store(&self) -> Arc<PrefixStore<AmazonS3>> {
        Arc::clone(&self.store)
    }

    /// As [`S3Prefix::store`], type-erased for code that takes `Arc<dyn ObjectStore>`.
    pub fn dyn_store(&self) -> Arc<dyn ObjectStore> {
        self.store()
    }
}

impl Drop for S3Prefix {
    fn drop(&mut self) {
        let settings = self.settings.clone();
        let prefix = self.prefix.clone();
        let cleanup = std::thread::spawn(move || delete_prefix_blocking(&settings, &prefix)).join();
        match cleanup {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not empty S3 prefix {}: {e}", self.prefix),
            Err(_) => eprintln!("warning: emptying S3 prefix {} panicked", self.prefix),
        }
    }
}

/// Deletes every object under `prefix` with a fresh client on a private
/// runtime: the test's runtime may be the one running `Drop`.
fn delete_prefix_blocking(settings: &S3Settings, prefix: &Path) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building a runtime: {e}"))?;
    runtime.block_on(async {
        let store = settings.bucket_store();
        let locations = store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let deleting = store.delete_stream(locations).try_collect::<Vec<_>>();
        match tokio::time::timeout(CLEANUP_TIMEOUT, deleting).await {
            Ok(Ok(_deleted)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not done within {CLEANUP_TIMEOUT:?}")),
        }
    })
}
