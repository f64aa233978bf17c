//! One agent's WebSocket session on the daemon side.
//!
//! The first message decides what the connection is: `Join` (no credential yet: a token and a
//! signing request) or `Hello` (a node credential was presented during the TLS handshake).
//! A session then carries the node's plan whenever its generation changes, heartbeats both
//! ways (a peer silent for three intervals is dropped), the agent's reports, and in-band
//! credential renewal. Every refusal is sent to the agent with its reason before closing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, Kick};
use super::Settings;
use crate::join::{redeem, CredentialUse, TokenRecord};
use crate::model::NodeName;
use crate::pki::{node_identity, DaemonCa, NodeIdentity};
use crate::protocol::{
    decode, encode, AgentMessage, Refusal, ServerMessage, StepReport, MAX_REPORT_ITEMS,
    PROTOCOL_VERSION,
};
use crate::secret::Secret;

/// How long an agent has to send its first message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the TLS handshake established about the peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The presented client certificate's identity, when there was one.
    pub identity: Option<NodeIdentity>,
}

impl Peer {
    pub fn from_certificates(
        addr: std::net::SocketAddr,
        certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Peer {
        let identity = certs
            .and_then(|c| c.first())
            .and_then(|leaf| node_identity(leaf));
        Peer { addr, identity }
    }
}

pub(super) struct Context {
    pub hub: Arc<Hub>,
    pub ca: Arc<DaemonCa>,
    pub settings: Settings,
    pub shutdown: CancellationToken,
    pub sessions: tokio_util::task::TaskTracker,
}

/// Runs one session to its end.
pub(super) async fn run(cx: Arc<Context>, peer: Peer, mut socket: WebSocket) {
    let first = tokio::select! {
        m = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, next_message(&mut socket)) => m,
        () = cx.shutdown.cancelled() => return,
    };
    let first = match first {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return,
        Ok(Err(detail)) => {
            return refuse(&mut socket, &peer, Refusal::BadRequest { detail }).await;
        }
        Err(_) => {
            let detail = format!("no first message within {FIRST_MESSAGE_TIMEOUT:?}");
            return refuse(&mut socket, &peer, Refusal::BadRequest { detail }).await;
        }
    };
    if !cx.hub.is_ready() {
        let m = ServerMessage::RetryAfter {
            seconds: cx.settings.retry_after.as_secs().max(1),
            reason: "the daemon has not read its desired state yet".into(),
        };
        let _ = send(&mut socket, &m).await;
        return close(&mut socket).await;
    }
    match first {
        AgentMessage::Join {
            protocol,
            node,
            token,
            csr_pem,
        } => {
            if protocol != PROTOCOL_VERSION {
                let r = Refusal::ProtocolVersion {
                    theirs: protocol,
                    ours: PROTOCOL_VERSION,
                };
                return refuse(&mut socket, &peer, r).await;
            }
            let answer = join(&cx, &node, &token, &csr_pem).await;
            match answer {
                Ok(joined) => {
                    let _ = send(&mut socket, &joined).await;
                    close(&mut socket).await;
                }
                Err(r) => refuse(&mut socket, &peer, r).await,
            }
        }
        AgentMessage::Hello {
            protocol,
            cluster,
            node,
            agent_version,
            applied,
        } => {
            if protocol != PROTOCOL_VERSION {
                let r = Refusal::ProtocolVersion {
                    theirs: protocol,
                    ours: PROTOCOL_VERSION,
                };
                return refuse(&mut socket, &peer, r).await;
            }
            let Some(id) = peer.identity.clone() else {
                return refuse(&mut socket, &peer, Refusal::CredentialRequired).await;
            };
            if id.cluster != cluster || id.node != node {
                let r = Refusal::NotYourNode {
                    own_cluster: id.cluster,
                    own_node: id.node,
                    cluster,
                    node,
                };
                return refuse(&mut socket, &peer, r).await;
            }
            if let Err(r) = admit(&cx, &id) {
                return refuse(&mut socket, &peer, r).await;
            }
            let Some((session, plans, kick)) = cx.hub.attach(&cluster, &node) else {
                let r = Refusal::UndeclaredNode { cluster, node };
                return refuse(&mut socket, &peer, r).await;
            };
            tracing::info!(cluster, node, agent_version, peer = %peer.addr, "agent connected");
            cx.hub.record(&cluster, &node, |r| {
                if applied.is_some() {
                    r.applied = applied;
                }
            });
            let end = serve(&cx, &id, &mut socket, plans, kick).await;
            cx.hub.detach(&cluster, &node, session);
            match end {
                End::Closed(why) => {
                    tracing::info!(cluster, node, why, "agent disconnected");
                    close(&mut socket).await;
                }
                End::Refused(r) => refuse(&mut socket, &peer, r).await,
            }
        }
        other => {
            let detail = format!(
                "the first message must be join or hello, not {}",
                kind(&other)
            );
            refuse(&mut socket, &peer, Refusal::BadRequest { detail }).await;
        }
    }
}

/// A credential presented with `Hello` is the node's bound key (or its renewed one, which then
/// becomes the bound key), and the node is declared in Git.
fn admit(cx: &Context, id: &NodeIdentity) -> Result<(), Refusal> {
    match cx
        .hub
        .bindings()
        .check(&id.cluster, &id.node, &id.key_pin)?
    {
        CredentialUse::Current => {}
        CredentialUse::Renewed => {
            let promoted = cx.hub.update_bindings(|b| {
                b.promote(&id.cluster, &id.node);
                Ok(())
            });
            if let Err(e) = promoted {
                tracing::error!(error = %crate::error_chain(&e), "cannot save a renewed credential");
            }
        }
    }
    if !cx.hub.is_declared(&id.cluster, &id.node) {
        return Err(Refusal::UndeclaredNode {
            cluster: id.cluster.clone(),
            node: id.node.clone(),
        });
    }
    Ok(())
}

/// Checks a join: the token, the node declared in the token's cluster, the node not bound to
/// another key; then issues the credential for the requester's key and binds the node to it.
/// The token is spent only when all of that succeeded.
async fn join(
    cx: &Arc<Context>,
    node: &str,
    token: &Secret,
    csr_pem: &str,
) -> Result<ServerMessage, Refusal> {
    let node = NodeName::parse(node).map_err(|e| Refusal::BadRequest {
        detail: format!("node name: {e}"),
    })?;
    let key_pin = crate::pki::csr_key_pin(csr_pem).map_err(|e| Refusal::BadRequest {
        detail: e.to_string(),
    })?;
    let cx2 = cx.clone();
    let token = token.clone();
    let csr = csr_pem.to_string();
    // Token and binding files are read and written under a file lock: off the async threads.
    let outcome = tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        let joined = redeem(cx2.hub.state(), &token, &node, now, |record| {
            let message = admit_and_bind(&cx2, record, &node, &key_pin, &csr, now)?;
            Ok((record.clone(), message))
        })
        .map_err(|e| internal(&e))?;
        let (record, message) = joined?;
        tracing::info!(
            cluster = record.cluster,
            node = %node,
            key = key_pin,
            token_id = record.id,
            "node joined"
        );
        Ok(message)
    })
    .await;
    outcome.unwrap_or_else(|e| Err(internal(&e)))
}

/// Under the tokens' lock, for a good token: admits `node` to the token's cluster, issues its
/// credential for the key in `csr` and binds the node to that key.
fn admit_and_bind(
    cx: &Context,
    record: &TokenRecord,
    node: &NodeName,
    key_pin: &str,
    csr: &str,
    now: SystemTime,
) -> Result<ServerMessage, Refusal> {
    let (hub, cluster, node) = (&cx.hub, &record.cluster, node.as_str());
    if !hub.is_declared(cluster, node) {
        return Err(Refusal::UndeclaredNode {
            cluster: cluster.clone(),
            node: node.to_string(),
        });
    }
    hub.bindings().admits_join(cluster, node, key_pin)?;
    let issued = cx
        .ca
        .issue_node(csr, cluster, node, now)
        .map_err(|e| Refusal::BadRequest {
            detail: e.to_string(),
        })?;
    hub.update_bindings(|b| {
        b.admits_join(cluster, node, &issued.key_pin)?;
        b.bind(cluster, node, &issued.key_pin);
        Ok(())
    })
    .map_err(|e| internal(&e))??;
    Ok(ServerMessage::Joined {
        cluster: cluster.clone(),
        cert_pem: issued.cert_pem,
        ca_pem: cx.ca.cert_pem().to_string(),
    })
}

fn internal(e: &dyn std::error::Error) -> Refusal {
    tracing::error!(error = %crate::error_chain(e), "a join failed inside the daemon");
    Refusal::BadRequest {
        detail: "the daemon could not complete the join; see its log".into(),
    }
}

enum End {
    Closed(&'static str),
    Refused(Refusal),
}

/// The steady state of a session.
async fn serve(
    cx: &Context,
    id: &NodeIdentity,
    socket: &mut WebSocket,
    mut plans: tokio::sync::watch::Receiver<Option<super::hub::PlanFrame>>,
    mut kick: tokio::sync::oneshot::Receiver<Kick>,
) -> End {
    let interval = cx.settings.heartbeat;
    let welcome = ServerMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        heartbeat_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
    };
    if send(socket, &welcome).await.is_err() {
        return End::Closed("send failed");
    }
    let age = SystemTime::now()
        .duration_since(id.not_before)
        .unwrap_or_default();
    if age >= cx.settings.renew_after
        && send(socket, &ServerMessage::RenewCredential {})
            .await
            .is_err()
    {
        return End::Closed("send failed");
    }
    plans.mark_changed();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let mut seq = 0u64;
    loop {
        tokio::select! {
            changed = plans.changed() => {
                if changed.is_err() {
                    // The node left the desired state. The hub sends the reason on the kick
                    // channel before it drops the plan channel, so the reason is there.
                    return match kick.try_recv() {
                        Ok(Kick::Refused(r)) => End::Refused(r),
                        _ => End::Closed("the node left the desired state"),
                    };
                }
                let frame = plans.borrow_and_update().clone();
                if let Some(frame) = frame {
                    if socket.send(Message::Text(Utf8Bytes::from(&*frame.text))).await.is_err() {
                        return End::Closed("send failed");
                    }
                }
            }
            message = next_message(socket) => {
                heard = tokio::time::Instant::now();
                match message {
                    Ok(Some(m)) => {
                        if let Some(end) = handle(cx, id, socket, m).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Closed("closed by the agent"),
                    Err(detail) => return End::Refused(Refusal::BadRequest { detail }),
                }
            }
            _ = ticker.tick() => {
                if heard.elapsed() > interval * 3 {
                    return End::Closed("silent for three heartbeat intervals");
                }
                if let Err(r) = cx.hub.bindings().check(&id.cluster, &id.node, &id.key_pin) {
                    return End::Refused(r);
                }
                seq += 1;
                if send(socket, &ServerMessage::Heartbeat { seq }).await.is_err() {
                    return End::Closed("send failed");
                }
            }
            k = &mut kick => {
                return match k {
                    Ok(Kick::Refused(r)) => End::Refused(r),
                    Ok(Kick::Replaced) | Err(_) => End::Closed("replaced by a newer session"),
                };
            }
            () = cx.shutdown.cancelled() => return End::Closed("the daemon is stopping"),
        }
    }
}

/// Handles one message of an established session; `Some` ends it.
async fn handle(
    cx: &Context,
    id: &NodeIdentity,
    socket: &mut WebSocket,
    message: AgentMessage,
) -> Option<End> {
    let (cluster, node) = (id.cluster.as_str(), id.node.as_str());
    match message {
        AgentMessage::Heartbeat { .. } => cx.hub.record(cluster, node, |_| {}),
        AgentMessage::Applied {
            generation,
            checksum,
            steps,
        } => {
            if steps.len() > MAX_REPORT_ITEMS {
                let detail = format!(
                    "a report of {} steps is over the limit of {MAX_REPORT_ITEMS}",
                    steps.len()
                );
                return Some(End::Refused(Refusal::BadRequest { detail }));
            }
            let steps: Vec<StepReport> = steps.into_iter().map(StepReport::bounded).collect();
            let checksum = crate::protocol::short_text(&checksum);
            for s in steps.iter().filter(|s| s.error.is_some()) {
                tracing::warn!(
                    cluster,
                    node,
                    generation,
                    subject = s.subject,
                    action = s.action,
                    error = s.error.as_deref().unwrap_or_default(),
                    "step failed on the node"
                );
            }
            cx.hub.record(cluster, node, |r| {
                r.applied = Some(crate::protocol::AppliedMark {
                    generation,
                    checksum,
                });
                r.steps = steps;
            });
        }
        AgentMessage::Observed { containers } => {
            if containers.len() > MAX_REPORT_ITEMS {
                let detail = format!(
                    "a report of {} containers is over the limit of {MAX_REPORT_ITEMS}",
                    containers.len()
                );
                return Some(End::Refused(Refusal::BadRequest { detail }));
            }
            let containers = containers
                .into_iter()
                .map(|(c, state)| (crate::protocol::short_text(&c), state.bounded()))
                .collect();
            cx.hub.record(cluster, node, |r| r.containers = containers);
        }
        AgentMessage::Renew { csr_pem } => {
            let issued = match cx.ca.issue_node(&csr_pem, cluster, node, SystemTime::now()) {
                Ok(issued) => issued,
                Err(e) => {
                    return Some(End::Refused(Refusal::BadRequest {
                        detail: e.to_string(),
                    }))
                }
            };
            let staged = cx.hub.update_bindings(|b| {
                b.check(cluster, node, &id.key_pin)?;
                b.stage(cluster, node, &issued.key_pin);
                Ok(())
            });
            match staged {
                Ok(Ok(())) => {}
                Ok(Err(r)) => return Some(End::Refused(r)),
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "cannot save a renewed credential");
                    return None;
                }
            }
            tracing::info!(cluster, node, key = issued.key_pin, "credential renewed");
            let m = ServerMessage::Credential {
                cert_pem: issued.cert_pem,
            };
            if send(socket, &m).await.is_err() {
                return Some(End::Closed("send failed"));
            }
        }
        other @ (AgentMessage::Join { .. } | AgentMessage::Hello { .. }) => {
            let detail = format!("{} in an established session", kind(&other));
            return Some(End::Refused(Refusal::BadRequest { detail }));
        }
    }
    None
}

fn kind(m: &AgentMessage) -> &'static str {
    match m {
        AgentMessage::Join { .. } => "join",
        AgentMessage::Hello { .. } => "hello",
        AgentMessage::Renew { .. } => "renew",
        AgentMessage::Heartbeat { .. } => "heartbeat",
        AgentMessage::Applied { .. } => "applied",
        AgentMessage::Observed { .. } => "observed",
    }
}

/// The next protocol message; `None` when the peer closed; `Err` with a reason for a frame
/// that is not a valid message.
async fn next_message(socket: &mut WebSocket) -> Result<Option<AgentMessage>, String> {
    loop {
        match socket.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(format!("connection: {e}")),
            Some(Ok(Message::Text(text))) => {
                return decode(text.as_str())
                    .map(Some)
                    .map_err(|e| crate::error_chain(&e));
            }
            Some(Ok(Message::Binary(_))) => return Err("binary frames are not spoken here".into()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        }
    }
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), ()> {
    let text = encode(message).map_err(|_| ())?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|_| ())
}

async fn refuse(socket: &mut WebSocket, peer: &Peer, reason: Refusal) {
    tracing::warn!(peer = %peer.addr, reason = %reason, "agent refused");
    let _ = send(socket, &ServerMessage::Refused { reason }).await;
    close(socket).await;
}

async fn close(socket: &mut WebSocket) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: Utf8Bytes::from_static(""),
        })))
        .await;
    let _ = socket.flush().await;
}
