//! etcd tasks: what the daemon asks an agent to do with its node's own etcd member (its health,
//! the membership, and membership changes). The agent dials only that member, one endpoint,
//! over TLS with the node's client certificate from its etcd PKI directory. Each task is
//! bounded by `TASK_TIMEOUT`, and every failure becomes `EtcdTaskOutcome::Failed` with etcd's
//! reason, cut to `protocol::MAX_REPORT_TEXT_BYTES`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Member, TlsOptions};

use crate::error_chain;
use crate::nodeplan::{PKI_CA, PKI_CLIENT_CERT, PKI_CLIENT_KEY};
use crate::pki::MAX_PEM_BYTES;
use crate::protocol::{short_text, EtcdMemberInfo, EtcdTask, EtcdTaskOutcome};
use crate::secret::Secret;

/// The most one task takes, from reading the certificates to etcd's answer.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(15);
/// The most the TCP connection and the TLS handshake take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most one request to etcd takes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The key a health check reads: a linearizable read proves the member reaches a quorum.
const HEALTH_KEY: &str = "health";

/// Why an etcd task failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdTaskError {
    #[error("cannot read {path}")]
    ReadPki {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is over the {limit}-byte limit for a certificate or key")]
    PkiTooLarge { path: PathBuf, limit: usize },
    #[error("reading the etcd certificates did not finish")]
    ReadAborted(#[source] tokio::task::JoinError),
    #[error("the etcd client URL {url:?} is not https:// (etcd is dialled with TLS only)")]
    NotHttps { url: String },
    #[error("cannot set up a client for etcd at {url}")]
    Client {
        url: String,
        #[source]
        source: EtcdError,
    },
    #[error("{request} at {url}")]
    Request {
        request: &'static str,
        url: String,
        #[source]
        source: EtcdError,
    },
    #[error("the member at {url} knows no leader")]
    NoLeader { url: String },
    #[error("the member at {url} reports: {errors}")]
    MemberErrors { url: String, errors: String },
    #[error("{id:?} is not a member id (hex, as etcdctl prints it)")]
    BadMemberId { id: String },
    #[error("a snapshot is streamed by the agent's session, not run on its own")]
    NeedsSession,
    #[error("etcd at {url} did not answer within {}", humantime::format_duration(*.limit))]
    TimedOut { url: String, limit: Duration },
}

impl EtcdTaskError {
    /// The error and its causes on one line, cut for a report.
    pub fn reason(&self) -> String {
        short_text(&error_chain(self))
    }
}

/// An error of the etcd client, shown as etcd's reason: a gRPC status as its code and message
/// or cause (without tonic's metadata), a transport error with its causes.
#[derive(Debug)]
pub struct EtcdError(etcd_client::Error);

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            // A status made from a transport error has that error as its message too.
            etcd_client::Error::GRpcStatus(status) => match std::error::Error::source(status) {
                Some(cause) => write!(f, "{:?}: {}", status.code(), error_chain(cause)),
                None => write!(f, "{:?}: {}", status.code(), status.message()),
            },
            etcd_client::Error::TransportError(e) => f.write_str(&error_chain(e)),
            other => write!(f, "{other}"),
        }
    }
}

/// The causes are in the text already.
impl std::error::Error for EtcdError {}

impl From<etcd_client::Error> for EtcdError {
    fn from(e: etcd_client::Error) -> EtcdError {
        EtcdError(e)
    }
}

/// Runs `task` against the member serving `client_url`, with the certificates in `pki_dir`
/// (`ca.pem`, `client.pem`, `client-key.pem`), within `TASK_TIMEOUT`.
pub async fn run(task: &EtcdTask, client_url: &str, pki_dir: &Path) -> EtcdTaskOutcome {
    let outcome = bounded(client_url, async {
        let mut client = connect(client_url, pki_dir).await?;
        perform(task, &mut client, client_url).await
    })
    .await;
    outcome.unwrap_or_else(|e| EtcdTaskOutcome::Failed { error: e.reason() })
}

/// Whether the member serving `client_url` is healthy: it answers a status request, knows a
/// leader, reports no errors (alarms), and serves a linearizable read. Within `TASK_TIMEOUT`.
pub async fn health(client_url: &str, pki_dir: &Path) -> Result<(), EtcdTaskError> {
    bounded(client_url, async {
        let mut client = connect(client_url, pki_dir).await?;
        check_health(&mut client, client_url).await
    })
    .await
}

async fn bounded<T>(
    client_url: &str,
    work: impl std::future::Future<Output = Result<T, EtcdTaskError>>,
) -> Result<T, EtcdTaskError> {
    tokio::time::timeout(TASK_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(EtcdTaskError::TimedOut {
                url: client_url.to_string(),
                limit: TASK_TIMEOUT,
            })
        })
}

async fn perform(
    task: &EtcdTask,
    client: &mut Client,
    url: &str,
) -> Result<EtcdTaskOutcome, EtcdTaskError> {
    match task {
        EtcdTask::Health => {
            check_health(client, url).await?;
            Ok(EtcdTaskOutcome::Healthy)
        }
        EtcdTask::Status => {
            let status = client.status().await.map_err(failed(url, "status"))?;
            let header = status.header();
            Ok(EtcdTaskOutcome::Status {
                member_id: format!("{:x}", header.map_or(0, |h| h.member_id())),
                leader_id: format!("{:x}", status.leader()),
                revision: header.map_or(0, |h| h.revision()),
                db_size: status.db_size(),
                version: short_text(status.version()),
            })
        }
        EtcdTask::MemberList => {
            let list = client
                .member_list()
                .await
                .map_err(failed(url, "member list"))?;
            Ok(members(list.members()))
        }
        EtcdTask::MemberAdd { peer_url } => {
            let added = client
                .member_add([peer_url.as_str()], None)
                .await
                .map_err(failed(url, "member add"))?;
            Ok(members(added.member_list()))
        }
        EtcdTask::MemberRemove { id } => {
            let id = member_id(id)?;
            client
                .member_remove(id)
                .await
                .map_err(failed(url, "member remove"))?;
            Ok(EtcdTaskOutcome::Done)
        }
        EtcdTask::MemberUpdate { id, peer_url } => {
            let id = member_id(id)?;
            client
                .member_update(id, vec![peer_url.clone()])
                .await
                .map_err(failed(url, "member update"))?;
            Ok(EtcdTaskOutcome::Done)
        }
        // It needs the daemon's address and the node's credential: the session sends it
        // through `transfer::send_snapshot`.
        EtcdTask::Snapshot { .. }
        | EtcdTask::Fetch { .. }
        | EtcdTask::Restore { .. }
        | EtcdTask::Verify { .. } => Err(EtcdTaskError::NeedsSession),
    }
}

async fn check_health(client: &mut Client, url: &str) -> Result<(), EtcdTaskError> {
    let status = client.status().await.map_err(failed(url, "status"))?;
    if status.leader() == 0 {
        return Err(EtcdTaskError::NoLeader {
            url: url.to_string(),
        });
    }
    if !status.errors().is_empty() {
        return Err(EtcdTaskError::MemberErrors {
            url: url.to_string(),
            errors: status.errors().join("; "),
        });
    }
    client
        .get(HEALTH_KEY, None)
        .await
        .map_err(failed(url, "linearizable read"))?;
    Ok(())
}

/// Turns the etcd client's error for `request` into the task's.
fn failed<'a>(
    url: &'a str,
    request: &'static str,
) -> impl FnOnce(etcd_client::Error) -> EtcdTaskError + 'a {
    move |e| EtcdTaskError::Request {
        request,
        url: url.to_string(),
        source: EtcdError(e),
    }
}

fn members(list: &[Member]) -> EtcdTaskOutcome {
    let members = list
        .iter()
        .map(|m| EtcdMemberInfo {
            id: format!("{:x}", m.id()),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
        })
        .collect();
    EtcdTaskOutcome::Members { members }
}

/// A member id as etcdctl prints it: 1 to 16 hex digits.
fn member_id(id: &str) -> Result<u64, EtcdTaskError> {
    let bad = || EtcdTaskError::BadMemberId { id: short_text(id) };
    if id.is_empty() || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(id, 16).map_err(|_| bad())
}

/// The CA certificate, the client certificate and its key, for dialling the member.
struct ClientPki {
    ca: String,
    cert: String,
    key: Secret,
}

/// A client for the one member at `url`, with the node's client certificate. Every request
/// requires the member to know a leader (etcd then answers "no leader" at once).
async fn connect(url: &str, pki_dir: &Path) -> Result<Client, EtcdTaskError> {
    dial(url, pki_dir, Some(REQUEST_TIMEOUT)).await
}

/// Like `connect`, without a bound on each request: a snapshot streams for as long as the
/// database takes (its caller bounds the stalls instead).
pub(super) async fn connect_streaming(url: &str, pki_dir: &Path) -> Result<Client, EtcdTaskError> {
    dial(url, pki_dir, None).await
}

/// The version of the member at `url` and its store's revision (its status), within
/// `REQUEST_TIMEOUT`.
pub(super) async fn version_and_revision(
    client: &mut Client,
    url: &str,
) -> Result<(String, i64), EtcdTaskError> {
    let status = tokio::time::timeout(REQUEST_TIMEOUT, client.status())
        .await
        .map_err(|_| EtcdTaskError::TimedOut {
            url: url.to_string(),
            limit: REQUEST_TIMEOUT,
        })?
        .map_err(|e| EtcdTaskError::Request {
            request: "status",
            url: url.to_string(),
            source: EtcdError(e),
        })?;
    let revision = status.header().map_or(0, |h| h.revision());
    Ok((status.version().to_string(), revision))
}

async fn dial(
    url: &str,
    pki_dir: &Path,
    request_timeout: Option<Duration>,
) -> Result<Client, EtcdTaskError> {
    if !url.starts_with("https://") {
        return Err(EtcdTaskError::NotHttps {
            url: url.to_string(),
        });
    }
    let dir = pki_dir.to_path_buf();
    let pki = tokio::task::spawn_blocking(move || read_pki(&dir))
        .await
        .map_err(EtcdTaskError::ReadAborted)??;
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .identity(Identity::from_pem(&pki.cert, pki.key.expose()));
    let mut options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_require_leader(true);
    if let Some(limit) = request_timeout {
        options = options.with_timeout(limit);
    }
    Client::connect([url], Some(options))
        .await
        .map_err(|e| EtcdTaskError::Client {
            url: url.to_string(),
            source: EtcdError(e),
        })
}

/// Blocking.
fn read_pki(dir: &Path) -> Result<ClientPki, EtcdTaskError> {
    Ok(ClientPki {
        ca: read_pem(&dir.join(PKI_CA))?,
        cert: read_pem(&dir.join(PKI_CLIENT_CERT))?,
        key: Secret::new(read_pem(&dir.join(PKI_CLIENT_KEY))?),
    })
}

/// A PEM file of at most `MAX_PEM_BYTES`. Blocking.
fn read_pem(path: &Path) -> Result<String, EtcdTaskError> {
    let read = |source| EtcdTaskError::ReadPki {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_PEM_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() > MAX_PEM_BYTES {
        return Err(EtcdTaskError::PkiTooLarge {
            path: path.to_path_buf(),
            limit: MAX_PEM_BYTES,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_hex_as_etcdctl_prints_them() {
        let cases = [
            ("8e9e05c52164694d", Some(0x8e9e05c52164694d)),
            ("1", Some(1)),
            ("ABCDEF", Some(0xabcdef)),
            ("", None),
            ("+1", None),
            ("0x1f", None),
            ("10a2 ", None),
            ("8e9e05c52164694d0", None),
            ("not-hex", None),
        ];
        for (id, want) in cases {
            assert_eq!(member_id(id).ok(), want, "{id:?}");
        }
    }

    #[tokio::test]
    async fn a_task_without_its_certificates_fails_with_the_file_it_could_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run(&EtcdTask::Health, "https://127.64.0.1:2379", dir.path()).await;
        let EtcdTaskOutcome::Failed { error } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(error.starts_with("cannot read "), "{error}");
        assert!(error.contains("ca.pem"), "{error}");

        let outcome = run(&EtcdTask::MemberList, "http://127.64.0.1:2379", dir.path()).await;
        assert!(
            matches!(&outcome, EtcdTaskOutcome::Failed { error } if error.contains("not https://")),
            "{outcome:?}"
        );
    }

    #[test]
    fn an_oversized_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PKI_CA);
        std::fs::write(&path, "A".repeat(MAX_PEM_BYTES + 1)).unwrap();
        assert!(matches!(
            read_pem(&path),
            Err(EtcdTaskError::PkiTooLarge { .. })
        ));
        std::fs::write(&path, "A".repeat(MAX_PEM_BYTES)).unwrap();
        assert!(read_pem(&path).is_ok());
    }
}
