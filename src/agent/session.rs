//! The agent's side of the protocol: dialling the daemon over TLS with the CA pinned, joining
//! once with a token, and the session that carries plans down and reports up.
//!
//! A session ends when the connection is lost, a peer falls silent for three heartbeat
//! intervals, the daemon says "retry after", or it refuses the agent. The caller redials with
//! capped exponential backoff and full jitter, except after a refusal that waiting cannot fix.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::credential::{Credential, DataDir, PlanRecord};
use super::executor::Executor;
use crate::heartbeat::{Beat, Liveness};
use crate::pki::{self, Identity, NodeKey};
use crate::protocol::{
    decode, encode, AgentMessage, EtcdTask, EtcdTaskOutcome, Refusal, ServerMessage,
    MAX_ETCD_TASKS, PROTOCOL_VERSION,
};
use crate::secret::Secret;

/// An agent's WebSocket to the daemon.
pub type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// Why dialling or a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the server URL {0} is not a wss:// URL with a host")]
    BadUrl(String),
    #[error("cannot reach the daemon at {addr}")]
    Unreachable {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("TLS with the daemon failed")]
    Tls(#[source] std::io::Error),
    #[error("{}", pki::PIN_MISMATCH)]
    PinMismatch,
    #[error("the WebSocket handshake with the daemon failed")]
    WebSocket(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("the daemon refused this agent: {0}")]
    Refused(Refusal),
    #[error("the daemon asks to retry in {seconds}s: {reason}")]
    RetryAfter { seconds: u64, reason: String },
    #[error("the daemon sends this agent to {url}: {reason}")]
    Redirect { url: String, reason: String },
    #[error("the connection was lost")]
    Lost(#[source] Lost),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Data(#[from] super::credential::DataError),
}

impl SessionError {
    /// Whether waiting and dialling again may help a join. A node the cluster does not
    /// declare is final here: it is most often a mistyped `--node-name`, and the operator
    /// should hear so at once rather than watch the agent retry until its token expires.
    pub fn is_transient_join(&self) -> bool {
        !matches!(self, SessionError::Refused(Refusal::UndeclaredNode { .. }))
            && self.is_transient()
    }

    /// Whether waiting and dialling again may help an established node: one that Git stops
    /// declaring without its credential being revoked may be declared again (a daemon that
    /// reads an older revision after a restart, say).
    pub fn is_transient(&self) -> bool {
        match self {
            SessionError::Refused(r) => matches!(r, Refusal::UndeclaredNode { .. }),
            SessionError::BadUrl(_)
            | SessionError::Pki(_)
            | SessionError::Data(_)
            | SessionError::PinMismatch => false,
            _ => true,
        }
    }
}

/// How an established connection ended, short of a refusal.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("closed by the daemon")]
    Closed,
    #[error("the connection failed")]
    Connection(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("a message could not be read or written")]
    Message(#[source] crate::protocol::ProtocolError),
    #[error("the daemon was silent for three heartbeat intervals")]
    Silent,
    #[error("a send to the daemon took longer than {SEND_TIMEOUT:?}")]
    SendTimeout,
    #[error("the daemon did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the daemon issued a credential for another key")]
    ForeignCredential,
}

impl From<Lost> for SessionError {
    fn from(lost: Lost) -> SessionError {
        SessionError::Lost(lost)
    }
}

/// Where and how to dial.
#[derive(Debug, Clone)]
pub struct Dial {
    pub server: Url,
    pub ca_pin: String,
    pub timeout: Duration,
}

impl Dial {
    pub fn new(server: &str, ca_pin: &str) -> Result<Dial, SessionError> {
        let mut url = Url::parse(server).map_err(|_| SessionError::BadUrl(server.into()))?;
        if url.scheme() != "wss" || url.host_str().is_none() {
            return Err(SessionError::BadUrl(server.into()));
        }
        if url.path() == "/" || url.path().is_empty() {
            url.set_path("/v1/agent");
        }
        Ok(Dial {
            server: url,
            ca_pin: ca_pin.to_string(),
            timeout: Duration::from_secs(10),
        })
    }

    /// The same daemon CA at another URL (where a redirect sends the agent).
    pub fn to(&self, server: &str) -> Result<Dial, SessionError> {
        let mut dial = Dial::new(server, &self.ca_pin)?;
        dial.timeout = self.timeout;
        Ok(dial)
    }

    fn addr(&self) -> String {
        let host = self.server.host_str().unwrap_or_default();
        let port = self.server.port_or_known_default().unwrap_or(443);
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    /// A TLS connection to the daemon whose CA matches the pin (the preflight check too).
    pub async fn tls(
        &self,
        client: Option<Identity>,
    ) -> Result<TlsStream<TcpStream>, SessionError> {
        let addr = self.addr();
        let timeout = self.timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| SessionError::Timeout {
                addr: addr.clone(),
                timeout,
            })?
            .map_err(|source| SessionError::Unreachable {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let config = pki::agent_config(&self.ca_pin, client)?;
        let host = self.server.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| SessionError::BadUrl(self.server.to_string()))?;
        tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp))
            .await
            .map_err(|_| SessionError::Timeout { addr, timeout })?
            .map_err(|e| {
                if pki::is_pin_mismatch(&e) {
                    SessionError::PinMismatch
                } else {
                    SessionError::Tls(e)
                }
            })
    }

    /// A WebSocket to the daemon over `tls`, with the protocol's size limits.
    pub async fn connect(&self, client: Option<Identity>) -> Result<Socket, SessionError> {
        let tls = self.tls(client).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(crate::protocol::READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(crate::protocol::MAX_MESSAGE_BYTES))
            .max_frame_size(Some(crate::protocol::MAX_MESSAGE_BYTES));
        let (socket, _) = tokio::time::timeout(
            self.timeout,
            tokio_tungstenite::client_async_with_config(self.server.as_str(), tls, Some(config)),
        )
        .await
        .map_err(|_| SessionError::Timeout {
            addr: self.addr(),
            timeout: self.timeout,
        })?
        .map_err(SessionError::WebSocket)?;
        Ok(socket)
    }
}

/// Joins as `node` with `token`: makes the agent's key, keeps it, and stores the credential
/// the daemon issues for it.
pub async fn join(
    dial: &Dial,
    data: &DataDir,
    node: &str,
    token: &Secret,
) -> Result<Credential, SessionError> {
    let key = NodeKey::generate()?;
    let csr_pem = key.csr_pem(node)?;
    let mut socket = dial.connect(None).await?;
    let join = AgentMessage::Join {
        protocol: PROTOCOL_VERSION,
        node: node.to_string(),
        token: token.clone(),
        csr_pem,
    };
    send(&mut socket, &join).await?;
    let answer = recv_within(&mut socket, dial.timeout).await?;
    let _ = socket.close(None).await;
    match answer {
        ServerMessage::Joined {
            cluster, cert_pem, ..
        } => {
            let cert = pki::pem_certificate(&cert_pem).ok_or(pki::PkiError::BadCertificate)?;
            if pki::cert_pin(&cert)? != key.pin() {
                return Err(Lost::ForeignCredential.into());
            }
            let credential = Credential {
                cluster,
                node: node.to_string(),
                key_pem: key.to_pem(),
                cert_pem,
            };
            let saved = credential.clone();
            data.off_thread(move |d| d.save_credential(&saved)).await?;
            Ok(credential)
        }
        ServerMessage::Refused { reason } => Err(SessionError::Refused(reason)),
        ServerMessage::RetryAfter { seconds, reason } => {
            Err(SessionError::RetryAfter { seconds, reason })
        }
        ServerMessage::Redirect { url, reason } => Err(SessionError::Redirect { url, reason }),
        other => Err(Lost::Unexpected {
            expected: "joined",
            got: server_kind(&other),
        }
        .into()),
    }
}

/// Runs an etcd task: against the member at `url`, or, for a snapshot, a restore or a
/// verification, with a transfer on a connection of its own (a restore and a verification run
/// whether or not the node's plan has a member now).
async fn run_task(
    task: &EtcdTask,
    url: Option<&str>,
    pki_dir: &std::path::Path,
    dial: &Dial,
    credential: &Credential,
    driver: &super::docker::Driver,
) -> EtcdTaskOutcome {
    let needs_transfer = matches!(
        task,
        EtcdTask::Snapshot { .. } | EtcdTask::Fetch { .. } | EtcdTask::Verify { .. }
    );
    let identity = match needs_transfer.then(|| DataDir::identity(credential)) {
        None => None,
        Some(Ok(identity)) => Some(identity),
        Some(Err(e)) => {
            return EtcdTaskOutcome::Failed {
                error: crate::protocol::short_text(&crate::error_chain(&e)),
            }
        }
    };
    match (task, url, identity) {
        (
            EtcdTask::Fetch {
                transfer,
                request_id,
                member,
            },
            _,
            Some(identity),
        ) => super::restore::fetch(driver, dial, identity, transfer, request_id, member).await,
        (EtcdTask::Restore { request_id, member }, _, _) => {
            super::restore::restore(driver, member, request_id).await
        }
        (EtcdTask::Verify { transfer, image }, _, Some(identity)) => {
            super::restore::verify(driver, dial, identity, transfer, image).await
        }
        (EtcdTask::Snapshot { transfer }, Some(url), Some(identity)) => {
            super::transfer::send_snapshot(dial, identity, transfer, url, pki_dir).await
        }
        (_, Some(url), _) => super::etcd::run(task, url, pki_dir).await,
        (_, None, _) => EtcdTaskOutcome::Failed {
            error: "this node runs no etcd member".into(),
        },
    }
}

/// One session with a credential, until it ends. `Ok` means the agent is shutting down;
/// `established` is set once the daemon welcomed the agent.
pub async fn session(
    dial: &Dial,
    data: &DataDir,
    credential: &Credential,
    executor: &Executor,
    pki_dir: &std::path::Path,
    established: &mut bool,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let identity = DataDir::identity(credential)?;
    let mut socket = dial.connect(Some(identity)).await?;
    let hello = AgentMessage::Hello {
        protocol: PROTOCOL_VERSION,
        cluster: credential.cluster.clone(),
        node: credential.node.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        applied: data.off_thread(DataDir::applied).await?,
    };
    send(&mut socket, &hello).await?;
    let interval = match recv_within(&mut socket, dial.timeout).await? {
        ServerMessage::Welcome {
            heartbeat_interval_ms,
            ..
        } => Duration::from_millis(heartbeat_interval_ms.clamp(100, 300_000)),
        ServerMessage::Refused { reason } => return Err(SessionError::Refused(reason)),
        ServerMessage::RetryAfter { seconds, reason } => {
            return Err(SessionError::RetryAfter { seconds, reason })
        }
        ServerMessage::Redirect { url, reason } => {
            return Err(SessionError::Redirect { url, reason })
        }
        other => {
            return Err(Lost::Unexpected {
                expected: "welcome",
                got: server_kind(&other),
            }
            .into())
        }
    };
    *established = true;
    tracing::info!(cluster = credential.cluster, node = credential.node, server = %dial.server, "connected to the daemon");
    let mut applied = executor.applied();
    let mut observed = executor.observed();
    applied.mark_changed();
    observed.mark_changed();
    let mut liveness = Liveness::new(interval);
    let (results_tx, mut results) = tokio::sync::mpsc::channel(MAX_ETCD_TASKS);
    loop {
        tokio::select! {
            frame = socket.next() => {
                liveness.heard();
                let Some(message) = read_frame(frame)? else { continue };
                match message {
                    ServerMessage::EtcdTask { id, task, fence } => {
                        if !admit_fence(&mut socket, data, fence, || format!("etcd task {id}")).await? {
                            let error = "refused: its fencing token is older than one this agent has seen".into();
                            send(&mut socket, &AgentMessage::EtcdTaskResult { id, outcome: EtcdTaskOutcome::Failed { error } }).await?;
                            continue;
                        }
                        let (url, dir, done) = (executor.etcd_url(), pki_dir.to_path_buf(), results_tx.clone());
                        let (dial, credential, driver) = (dial.clone(), credential.clone(), executor.driver());
                        // Off the session's loop: heartbeats and plans go on while it runs;
                        // it ends within `etcd::TASK_TIMEOUT`, a transfer when its bytes stop
                        // moving (`transfer::STALL_TIMEOUT`), a restore within its limits.
                        tokio::spawn(async move {
                            let outcome = run_task(&task, url.as_deref(), &dir, &dial, &credential, &driver).await;
                            let _ = done.send((id, outcome)).await;
                        });
                    }
                    message => handle(message, &mut socket, data, credential, executor).await?,
                }
            }
            Some((id, outcome)) = results.recv() => {
                send(&mut socket, &AgentMessage::EtcdTaskResult { id, outcome }).await?;
            }
            changed = applied.changed() => {
                if changed.is_err() { return Ok(()); }
                let a = applied.borrow_and_update().clone();
                if let Some(a) = a {
                    let m = AgentMessage::Applied { generation: a.mark.generation, checksum: a.mark.checksum, steps: a.steps };
                    send(&mut socket, &m).await?;
                }
            }
            changed = observed.changed() => {
                if changed.is_err() { return Ok(()); }
                let containers = observed.borrow_and_update().clone();
                send(&mut socket, &AgentMessage::Observed { containers }).await?;
            }
            beat = liveness.tick() => match beat {
                Beat::Send(seq) => send(&mut socket, &AgentMessage::Heartbeat { seq }).await?,
                Beat::Silent => return Err(Lost::Silent.into()),
            },
            () = shutdown.cancelled() => {
                let _ = socket.close(None).await;
                return Ok(());
            }
        }
    }
}

/// One frame from the daemon as a message; `None` for control frames.
fn read_frame(
    frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<ServerMessage>, Lost> {
    match frame {
        None | Some(Ok(Message::Close(_))) => Err(Lost::Closed),
        Some(Err(e)) => Err(Lost::Connection(e)),
        Some(Ok(Message::Text(text))) => decode(text.as_str()).map(Some).map_err(Lost::Message),
        Some(Ok(_)) => Ok(None),
    }
}

async fn handle(
    message: ServerMessage,
    socket: &mut Socket,
    data: &DataDir,
    credential: &Credential,
    executor: &Executor,
) -> Result<(), SessionError> {
    match message {
        ServerMessage::Plan {
            generation,
            checksum,
            spec,
            fence,
        } => {
            let actual = spec.checksum();
            if actual != checksum {
                // Not applied: what arrived is not what the daemon meant to send.
                tracing::error!(
                    generation,
                    "the plan's checksum does not match; ignoring it"
                );
                let m = AgentMessage::Applied {
                    generation,
                    checksum,
                    steps: vec![crate::protocol::StepReport {
                        subject: "plan".into(),
                        action: "verify".into(),
                        error: Some(format!(
                            "checksum mismatch: received content hashes to {actual}"
                        )),
                    }],
                };
                return send(socket, &m).await;
            }
            if !admit_fence(socket, data, fence, || {
                format!("plan generation {generation}")
            })
            .await?
            {
                return Ok(());
            }
            tracing::info!(generation, "received the node plan");
            executor
                .set_plan(PlanRecord {
                    generation,
                    checksum,
                    spec,
                })
                .await;
        }
        ServerMessage::Heartbeat { .. } => {}
        ServerMessage::RenewCredential {} => {
            let node = credential.node.clone();
            let csr_pem = data.off_thread(move |d| d.begin_renewal(&node)).await?;
            send(socket, &AgentMessage::Renew { csr_pem }).await?;
        }
        ServerMessage::Credential { cert_pem } => {
            data.off_thread(move |d| d.finish_renewal(&cert_pem))
                .await?;
            tracing::info!("node credential renewed; the next connection uses it");
        }
        ServerMessage::RetryAfter { seconds, reason } => {
            return Err(SessionError::RetryAfter { seconds, reason })
        }
        ServerMessage::Refused { reason } => return Err(SessionError::Refused(reason)),
        ServerMessage::Redirect { url, reason } => {
            return Err(SessionError::Redirect { url, reason })
        }
        other @ (ServerMessage::Welcome { .. }
        | ServerMessage::Joined { .. }
        | ServerMessage::EtcdTask { .. }) => {
            return Err(Lost::Unexpected {
                expected: "a session message",
                got: server_kind(&other),
            }
            .into())
        }
    }
    Ok(())
}

/// Judges a message's fencing token (see `super::fence`); false when it is refused, which the
/// daemon is told with `Fenced`.
async fn admit_fence(
    socket: &mut Socket,
    data: &DataDir,
    fence: Option<u64>,
    what: impl FnOnce() -> String,
) -> Result<bool, SessionError> {
    match data.off_thread(move |d| d.admit_fence(fence)).await? {
        super::fence::Verdict::Accept { .. } => Ok(true),
        super::fence::Verdict::Refuse { newest } => {
            let what = what();
            tracing::warn!(what, ?fence, newest, "refused: its fencing token is older than the newest this agent has seen; a daemon that lost this cluster sent it");
            send(
                socket,
                &AgentMessage::Fenced {
                    what,
                    fence,
                    newest,
                },
            )
            .await?;
            Ok(false)
        }
    }
}

fn server_kind(m: &ServerMessage) -> &'static str {
    match m {
        ServerMessage::Welcome { .. } => "welcome",
        ServerMessage::Joined { .. } => "joined",
        ServerMessage::RenewCredential {} => "renew-credential",
        ServerMessage::Credential { .. } => "credential",
        ServerMessage::Heartbeat { .. } => "heartbeat",
        ServerMessage::Plan { .. } => "plan",
        ServerMessage::EtcdTask { .. } => "etcd-task",
        ServerMessage::RetryAfter { .. } => "retry-after",
        ServerMessage::Redirect { .. } => "redirect",
        ServerMessage::Refused { .. } => "refused",
    }
}

/// How long one send to the daemon may take: a daemon that stops reading ends the session.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one protocol message, within `SEND_TIMEOUT`.
pub async fn send(socket: &mut Socket, message: &AgentMessage) -> Result<(), SessionError> {
    let text = encode(message).map_err(Lost::Message)?;
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
        Ok(sent) => sent.map_err(|e| Lost::Connection(e).into()),
        Err(_) => Err(Lost::SendTimeout.into()),
    }
}

/// The next protocol message from the daemon.
pub async fn recv(socket: &mut Socket) -> Result<ServerMessage, SessionError> {
    loop {
        if let Some(message) = read_frame(socket.next().await)? {
            return Ok(message);
        }
    }
}

/// The next protocol message from the daemon, within `limit`.
pub async fn recv_within(
    socket: &mut Socket,
    limit: Duration,
) -> Result<ServerMessage, SessionError> {
    tokio::time::timeout(limit, recv(socket))
        .await
        .unwrap_or(Err(Lost::NoAnswer(limit).into()))
}
