//! The daemon's documents in an etcd cluster, for several daemons sharing them: a key per
//! document under a prefix, each value sealed (AES-256-GCM, the document's name as associated
//! data, so a value moved to another key does not open) with a key the operator gives as a
//! file. `modify` is a transaction comparing the key's mod revision (or its absence) and is
//! retried on conflict; `create` is thus create-if-absent across daemons.
//!
//! The client runs on a small runtime of the store's own, so every call blocks its caller
//! (always a blocking thread, per the `Store` contract) and never the daemon's workers; each
//! request has a timeout.

use std::path::PathBuf;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};

use super::lease::OWNERS;
use super::{Change, Decide, Guard, Stamp, Store};
use crate::secret::Secret;
use crate::state::{StateError, MAX_STATE_BYTES};

/// What a sealed value starts with: the format, for a later change of cipher.
const SEALED_V1: &[u8] = b"drover-sealed-v1\0";
/// Each request to etcd, connecting included, ends within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `modify` gives up after this many conflicting writes in a row.
const MAX_CONFLICTS: usize = 32;

/// Where the state lives in etcd, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdStateConfig {
    /// `https://host:port` (plain `http` only to a loopback address).
    pub endpoints: Vec<String>,
    /// The CA that signed the etcd servers' certificates, and the client's certificate and
    /// key; all three or none (plain http).
    pub tls: Option<EtcdTls>,
    /// Every key starts with this (e.g. `/drover/`).
    pub prefix: String,
    /// 64 hex characters: the AES-256 key values are sealed with.
    pub encryption_key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Why the etcd state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EtcdStateError {
    #[error("cannot read {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the encryption key in {path} is not 64 hex characters (make one with `openssl rand -hex 32`)")]
    BadKey { path: PathBuf },
    #[error("{path} has mode {mode:03o}: others may read the state's encryption key; run `chmod 600 {path}`")]
    LooseKey { path: PathBuf, mode: u32 },
    #[error("cannot connect to the state etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the state etcd at {endpoints} did not answer within {timeout:?}")]
    Timeout {
        endpoints: String,
        timeout: Duration,
    },
    #[error("cannot start the state store's runtime")]
    Runtime(#[source] std::io::Error),
}

/// The documents in etcd.
///
/// One client per endpoint, each connecting lazily, and requests go to the last endpoint that
/// answered; one that cannot be reached (refused, or silent for `REQUEST_TIMEOUT`) hands the
/// request to the next. etcd-client's own balanced channel fails requests while any endpoint
/// is down (etcdv3/etcd-client#39), which would make one lost member of the state's etcd stop
/// every daemon.
pub struct EtcdStore {
    clients: Vec<Client>,
    /// The endpoint requests go to first.
    current: std::sync::atomic::AtomicUsize,
    runtime: OwnRuntime,
    prefix: String,
    seal: LessSafeKey,
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Reads the key and the TLS files, connects, and checks etcd answers. Blocks.
    pub fn open(config: &EtcdStateConfig) -> Result<EtcdStore, EtcdStateError> {
        let seal = read_key(&config.encryption_key_file)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("drover-state-etcd")
            .enable_all()
            .build()
            .map_err(EtcdStateError::Runtime)?;
        let endpoints = config.endpoints.join(",");
        let options = connect_options(config)?;
        let mut clients = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let connect = Client::connect([endpoint.as_str()], Some(options.clone()));
            clients.push(first_answer(&runtime, endpoint, connect)?);
        }
        let store = EtcdStore {
            clients,
            current: std::sync::atomic::AtomicUsize::new(0),
            runtime: OwnRuntime(Some(runtime)),
            prefix: config.prefix.clone(),
            seal,
            endpoints,
        };
        // A read proves an endpoint, the certificates and a leader.
        let probe = GetOptions::new().with_count_only();
        let prefix = config.prefix.as_str();
        let read = store.try_endpoints(|mut c| {
            let probe = probe.clone();
            async move { c.get(prefix, Some(probe)).await }
        });
        match read {
            Ok(_) => Ok(store),
            Err(Failure::NoAnswer) => Err(EtcdStateError::Timeout {
                endpoints: store.endpoints.clone(),
                timeout: REQUEST_TIMEOUT,
            }),
            Err(Failure::Etcd(source)) => Err(EtcdStateError::Connect {
                endpoints: store.endpoints.clone(),
                source,
            }),
        }
    }

    /// `GET key`, with `options`.
    pub(super) fn get_raw(
        &self,
        name: &str,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, StateError> {
        self.call(name, |mut c| {
            let options = options.clone();
            async move { c.get(key, options).await }
        })
    }

    /// `PUT key value`, with `options`.
    pub(super) fn put_raw(
        &self,
        name: &str,
        key: &str,
        value: &[u8],
        options: Option<PutOptions>,
    ) -> Result<(), StateError> {
        self.call(name, |mut c| {
            let options = options.clone();
            async move { c.put(key, value, options).await }
        })?;
        Ok(())
    }

    /// One transaction.
    pub(super) fn txn_raw(
        &self,
        name: &str,
        txn: &Txn,
    ) -> Result<etcd_client::TxnResponse, StateError> {
        self.call(name, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
    }

    pub(super) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs one request (`make` builds it on an endpoint's client) on the store's runtime,
    /// within `REQUEST_TIMEOUT` per endpoint: the endpoint that answered last first, then the
    /// others in turn while an endpoint cannot be reached.
    pub(super) fn call<T, F, Fut>(&self, name: &str, make: F) -> Result<T, StateError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.try_endpoints(make)
            .map_err(|failure| StateError::Backend {
                document: self.locate(name),
                why: match failure {
                    Failure::NoAnswer => format!("no answer within {REQUEST_TIMEOUT:?}"),
                    Failure::Etcd(e) => e.to_string(),
                },
            })
    }

    /// `call`'s endpoints in turn, and how the last one failed.
    fn try_endpoints<T, F, Fut>(&self, make: F) -> Result<T, Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        use std::sync::atomic::Ordering;
        let first = self.current.load(Ordering::Relaxed);
        let mut failure = Failure::NoAnswer;
        for attempt in 0..self.clients.len() {
            let i = (first + attempt) % self.clients.len();
            let request = make(self.clients[i].clone());
            let outcome = self
                .runtime
                .get()
                .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, request).await });
            match outcome {
                Ok(Ok(value)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) if !unreachable(&e) => return Err(Failure::Etcd(e)),
                Ok(Err(e)) => failure = Failure::Etcd(e),
                Err(_) => failure = Failure::NoAnswer,
            }
        }
        Err(failure)
    }

    /// The key of `cluster`'s owner (see `lease`).
    pub(super) fn owner_key(&self, cluster: &str) -> String {
        self.key(&format!("{OWNERS}{cluster}"))
    }

    /// The comparison that holds while `guard`'s fence owns its cluster.
    fn owned(&self, guard: &Guard) -> Compare {
        Compare::create_revision(
            self.owner_key(&guard.cluster),
            CompareOp::Equal,
            guard.fence.0,
        )
    }

    fn fenced(&self, name: &str, guard: &Guard) -> StateError {
        StateError::Fenced {
            document: self.locate(name),
            cluster: guard.cluster.clone(),
        }
    }

    /// `modify`, its write also conditioned on `guard` when given: a conflict on the document
    /// is retried, a lost fence is not.
    fn modify_when(
        &self,
        name: &str,
        change: &mut Decide<'_>,
        guard: Option<&Guard>,
    ) -> Result<Option<Stamp>, StateError> {
        let key = self.key(name);
        for _ in 0..MAX_CONFLICTS {
            let current = self.get(name)?;
            let plain = match &current {
                Some((sealed, _)) => Some(self.open_sealed(name, sealed)?),
                None => None,
            };
            let bytes = match change(plain.as_deref())? {
                Change::Keep => {
                    return Ok(current.map(|(_, rev)| stamp_at(rev)));
                }
                Change::Write(bytes) => bytes,
            };
            // Unchanged since the read: the same mod revision, or still absent.
            let unchanged = match &current {
                Some((_, rev)) => Compare::mod_revision(key.clone(), CompareOp::Equal, *rev),
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            };
            let mut when = vec![unchanged];
            when.extend(guard.map(|g| self.owned(g)));
            let sealed = self.seal(name, &bytes)?;
            let mut txn = Txn::new()
                .when(when)
                .and_then([TxnOp::put(key.clone(), sealed, None)]);
            if let Some(g) = guard {
                txn = txn.or_else([TxnOp::get(self.owner_key(&g.cluster), None)]);
            }
            let answer = self.txn_raw(name, &txn)?;
            if answer.succeeded() {
                let revision = answer.header().map_or(0, |h| h.revision());
                return Ok(Some(stamp_at(revision)));
            }
            if let Some(g) = guard {
                if !still_owned(answer.op_responses(), g) {
                    return Err(self.fenced(name, g));
                }
            }
        }
        Err(StateError::Backend {
            document: self.locate(name),
            why: format!("{MAX_CONFLICTS} conflicting writes in a row"),
        })
    }

    /// The document's sealed bytes and mod revision.
    fn get(&self, name: &str) -> Result<Option<(Vec<u8>, i64)>, StateError> {
        let answer = self.get_raw(name, &self.key(name), None)?;
        let Some(found) = answer.kvs().first() else {
            return Ok(None);
        };
        let size = found.value().len() as u64;
        if size > MAX_STATE_BYTES + 64 {
            return Err(StateError::TooLarge {
                path: self.locate(name).into(),
                size,
                limit: MAX_STATE_BYTES,
            });
        }
        Ok(Some((found.value().to_vec(), found.mod_revision())))
    }

    pub(super) fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, StateError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| self.sealing(name, "no randomness"))?;
        let mut sealed = plain.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| self.sealing(name, "sealing failed"))?;
        Ok([SEALED_V1, &nonce, &sealed].concat())
    }

    fn open_sealed(&self, name: &str, stored: &[u8]) -> Result<Vec<u8>, StateError> {
        let body = stored
            .strip_prefix(SEALED_V1)
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or_else(|| self.sealing(name, "not a sealed drover document"))?;
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| self.sealing(name, "bad nonce"))?;
        let mut buffer = sealed.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer)
            .map_err(|_| {
                self.sealing(
                    name,
                    "it does not open with this encryption key (another key, or a value moved from another document)",
                )
            })?;
        Ok(plain.to_vec())
    }

    fn sealing(&self, name: &str, why: &str) -> StateError {
        StateError::Backend {
            document: self.locate(name),
            why: why.to_string(),
        }
    }
}

impl Store for EtcdStore {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self.get(name)? {
            Some((sealed, _)) => self.open_sealed(name, &sealed).map(Some),
            None => Ok(None),
        }
    }

    fn stamp(&self, name: &str) -> Result<Option<Stamp>, StateError> {
        let options = GetOptions::new().with_keys_only();
        let answer = self.get_raw(name, &self.key(name), Some(options))?;
        Ok(answer.kvs().first().map(revision_stamp))
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let sealed = self.seal(name, bytes)?;
        self.put_raw(name, &self.key(name), &sealed, None)?;
        Ok(())
    }

    fn names(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let options = GetOptions::new().with_prefix().with_keys_only();
        let answer = self.get_raw(prefix, &self.key(prefix), Some(options))?;
        let mut names: Vec<String> = answer
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter_map(|key| key.strip_prefix(&self.prefix))
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    fn stamps(&self, prefix: &str) -> Result<Vec<(String, Stamp)>, StateError> {
        let options = GetOptions::new().with_prefix().with_keys_only();
        let answer = self.get_raw(prefix, &self.key(prefix), Some(options))?;
        let mut stamps: Vec<(String, Stamp)> = answer
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(&self.prefix)?;
                Some((name.to_string(), revision_stamp(kv)))
            })
            .collect();
        stamps.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(stamps)
    }

    fn remove(&self, name: &str) -> Result<(), StateError> {
        let key = self.key(name);
        self.call(name, |mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })?;
        Ok(())
    }

    fn modify(&self, name: &str, change: &mut Decide<'_>) -> Result<Option<Stamp>, StateError> {
        self.modify_when(name, change, None)
    }

    fn shared(&self) -> bool {
        true
    }

    fn write_guarded(&self, name: &str, bytes: &[u8], guard: &Guard) -> Result<(), StateError> {
        let sealed = self.seal(name, bytes)?;
        let txn = Txn::new().when([self.owned(guard)]).and_then([TxnOp::put(
            self.key(name),
            sealed,
            None,
        )]);
        if self.txn_raw(name, &txn)?.succeeded() {
            return Ok(());
        }
        Err(self.fenced(name, guard))
    }

    fn modify_guarded(
        &self,
        name: &str,
        change: &mut Decide<'_>,
        guard: &Guard,
    ) -> Result<Option<Stamp>, StateError> {
        self.modify_when(name, change, Some(guard))
    }

    fn locate(&self, name: &str) -> String {
        format!("etcd key {} at {}", self.key(name), self.endpoints)
    }
}

/// How a request failed on the last endpoint tried.
enum Failure {
    /// No answer within `REQUEST_TIMEOUT`.
    NoAnswer,
    Etcd(etcd_client::Error),
}

/// Whether `e` says the endpoint could not be reached (so another may answer), rather than
/// that etcd refused the request.
/// A key's stamp: the revision that last changed it.
fn stamp_at(mod_revision: i64) -> Stamp {
    Stamp::new([mod_revision as u64, 0, 0])
}

fn revision_stamp(kv: &etcd_client::KeyValue) -> Stamp {
    stamp_at(kv.mod_revision())
}

fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            // gRPC's status codes: UNKNOWN, DEADLINE_EXCEEDED, UNAVAILABLE.
            const UNREACHABLE: [i32; 3] = [2, 4, 14];
            UNREACHABLE.contains(&i32::from(status.code()))
        }
        _ => false,
    }
}

/// Whether the owner key a failed guarded transaction read still has the guard's fence.
fn still_owned(responses: Vec<etcd_client::TxnOpResponse>, guard: &Guard) -> bool {
    responses.into_iter().any(|op| match op {
        etcd_client::TxnOpResponse::Get(get) => get
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == guard.fence.0),
        _ => false,
    })
}

/// A request made while opening the store, within `REQUEST_TIMEOUT`.
fn first_answer<T>(
    runtime: &tokio::runtime::Runtime,
    endpoints: &str,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdStateError> {
    runtime
        .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, request).await })
        .map_err(|_| EtcdStateError::Timeout {
            endpoints: endpoints.to_string(),
            timeout: REQUEST_TIMEOUT,
        })?
        .map_err(|source| EtcdStateError::Connect {
            endpoints: endpoints.to_string(),
            source,
        })
}

/// The store's runtime, shut down without waiting when the store goes: the store may be
/// dropped on an async worker, where a runtime must not block.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The AES-256 key from its file: 64 hex characters, a trailing newline allowed.
fn read_key(path: &std::path::Path) -> Result<LessSafeKey, EtcdStateError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| EtcdStateError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(EtcdStateError::LooseKey {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = Secret::from_file(path).map_err(|_| EtcdStateError::BadKey {
        path: path.to_path_buf(),
    })?;
    let bytes = hex::decode(text.expose().trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| EtcdStateError::BadKey {
            path: path.to_path_buf(),
        })?;
    let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| EtcdStateError::BadKey {
        path: path.to_path_buf(),
    })?;
    Ok(LessSafeKey::new(key))
}

fn connect_options(config: &EtcdStateConfig) -> Result<ConnectOptions, EtcdStateError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    let Some(tls) = &config.tls else {
        return Ok(options);
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| EtcdStateError::File {
            path: path.clone(),
            source,
        })
    };
    let tls_options = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca_file)?))
        .identity(Identity::from_pem(
            read(&tls.cert_file)?,
            read(&tls.key_file)?,
        ));
    Ok(options.with_tls(tls_options))
}
