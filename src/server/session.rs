//! One agent's WebSocket session on the daemon side.
//!
//! The first message decides what the connection is: `Join` (no credential yet: a token and a
//! signing request) or `Hello` (a node credential was presented during the TLS handshake).
//! A session then carries the node's plan whenever its generation changes, heartbeats both
//! ways (`heartbeat::Liveness`), the agent's reports, and in-band credential renewal. Every
//! refusal is sent to the agent with its reason, bounded in length, before closing.
//!
//! Nothing a peer does can hold a session: every send is bounded by `Settings::send_timeout`,
//! the first message by `FIRST_MESSAGE_TIMEOUT`, and a peer silent for three heartbeat
//! intervals is dropped. Connections that have not yet been admitted are counted
//! (`Settings::max_unadmitted`); one over the count is closed at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::hub::{Attached, Hub, Kick, PlanFrame, Route};
use super::Settings;
use crate::heartbeat::{Beat, Liveness};
use crate::join::{redeem, CredentialUse, TokenRecord};
use crate::model::NodeName;
use crate::pki::{node_identity, DaemonCa, NodeIdentity};
use crate::protocol::{
    decode, encode, AgentMessage, AppliedMark, EtcdTaskOutcome, Refusal, ServerMessage, StepReport,
    MAX_REPORT_ITEMS, PROTOCOL_VERSION,
};
use crate::secret::Secret;

/// How long an agent has to send its first message.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Slots for sessions not admitted yet (no first message handled).
    pub unadmitted: Arc<Semaphore>,
    /// How many refusals a second are logged; a flood of bad peers costs little log volume.
    pub refusal_log: LogBudget,
}

/// At most `per_second` log lines a second; the rest are counted, and the count is logged with
/// the next line let through.
pub(super) struct LogBudget {
    per_second: u32,
    window: std::sync::Mutex<Window>,
}

struct Window {
    started: tokio::time::Instant,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub fn new(per_second: u32) -> LogBudget {
        let window = Window {
            started: tokio::time::Instant::now(),
            used: 0,
            suppressed: 0,
        };
        LogBudget {
            per_second,
            window: std::sync::Mutex::new(window),
        }
    }

    /// Whether a line may be logged now, and how many were suppressed before it.
    fn admit(&self) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.started.elapsed() >= Duration::from_secs(1) {
            w.started = tokio::time::Instant::now();
            w.used = 0;
        }
        if w.used >= self.per_second {
            w.suppressed += 1;
            return None;
        }
        w.used += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// A WebSocket with every send bounded in time: a peer that stops reading cannot hold a session.
struct Conn {
    socket: WebSocket,
    send_timeout: Duration,
}

/// Why a send did not complete.
#[derive(Debug)]
struct SendFailed;

impl Conn {
    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), SendFailed> {
        let sent = tokio::time::timeout(self.send_timeout, self.socket.send(Message::Text(text)));
        match sent.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(SendFailed),
        }
    }

    async fn send(&mut self, message: &ServerMessage) -> Result<(), SendFailed> {
        let text = encode(message).map_err(|_| SendFailed)?;
        self.send_text(text.into()).await
    }

    async fn close(&mut self) {
        let frame = Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: Utf8Bytes::from_static(""),
        }));
        let closing = async {
            let _ = self.socket.send(frame).await;
            let _ = self.socket.flush().await;
        };
        let _ = tokio::time::timeout(self.send_timeout, closing).await;
    }

    async fn refuse(&mut self, peer: &Peer, reason: Refusal, budget: &LogBudget) {
        let reason = reason.bounded();
        match budget.admit() {
            Some(0) => tracing::warn!(peer = %peer.addr, reason = %reason, "agent refused"),
            Some(suppressed) => {
                tracing::warn!(peer = %peer.addr, reason = %reason, suppressed, "agent refused (and more refusals not logged)")
            }
            None => {}
        }
        let _ = self.send(&ServerMessage::Refused { reason }).await;
        self.close().await;
    }

    /// The next protocol message; `None` when the peer closed; a refusal for a frame that is
    /// not a valid message.
    async fn next_message(&mut self) -> Result<Option<AgentMessage>, Refusal> {
        loop {
            match self.socket.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(Refusal::bad_request(format!("connection: {e}"))),
                Some(Ok(Message::Text(text))) => {
                    let decoded = decode(text.as_str());
                    return decoded
                        .map(Some)
                        .map_err(|e| Refusal::bad_request(crate::error_chain(&e)));
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(Refusal::bad_request("binary frames are not spoken here"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            }
        }
    }
}

/// Runs one session to its end.
pub(super) async fn run(cx: Arc<Context>, peer: Peer, socket: WebSocket) {
    let mut conn = Conn {
        socket,
        send_timeout: cx.settings.send_timeout,
    };
    let Ok(slot) = cx.unadmitted.clone().try_acquire_owned() else {
        tracing::debug!(peer = %peer.addr, "too many connections waiting for admission");
        return conn.close().await;
    };
    let first = tokio::select! {
        m = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, conn.next_message()) => m,
        () = cx.shutdown.cancelled() => return,
    };
    let first = match first {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return,
        Ok(Err(r)) => return conn.refuse(&peer, r, &cx.refusal_log).await,
        Err(_) => {
            let r =
                Refusal::bad_request(format!("no first message within {FIRST_MESSAGE_TIMEOUT:?}"));
            return conn.refuse(&peer, r, &cx.refusal_log).await;
        }
    };
    if !cx.hub.is_ready() {
        let m = ServerMessage::RetryAfter {
            seconds: cx.settings.retry_after.as_secs().max(1),
            reason: "the daemon has not read its desired state yet".into(),
        };
        let _ = conn.send(&m).await;
        return conn.close().await;
    }
    match first {
        AgentMessage::Join {
            protocol,
            node,
            token,
            csr_pem,
        } => on_join(&cx, &peer, conn, protocol, &node, &token, &csr_pem).await,
        AgentMessage::Hello {
            protocol,
            cluster,
            node,
            agent_version,
            applied,
        } => {
            let hello = Hello {
                protocol,
                cluster,
                node,
                agent_version,
                applied,
            };
            on_hello(&cx, &peer, conn, hello, slot).await;
        }
        other => {
            let detail = format!(
                "the first message must be join or hello, not {}",
                kind(&other)
            );
            conn.refuse(&peer, Refusal::bad_request(detail), &cx.refusal_log)
                .await;
        }
    }
}

fn check_protocol(theirs: u32) -> Result<(), Refusal> {
    if theirs == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Refusal::ProtocolVersion {
        theirs,
        ours: PROTOCOL_VERSION,
    })
}

async fn on_join(
    cx: &Arc<Context>,
    peer: &Peer,
    mut conn: Conn,
    protocol: u32,
    node: &str,
    token: &Secret,
    csr_pem: &str,
) {
    if let Err(r) = check_protocol(protocol) {
        return conn.refuse(peer, r, &cx.refusal_log).await;
    }
    match join(cx, node, token, csr_pem).await {
        Ok(joined) => {
            let _ = conn.send(&joined).await;
            conn.close().await;
        }
        Err(r) => conn.refuse(peer, r, &cx.refusal_log).await,
    }
}

/// The fields of a `Hello`.
struct Hello {
    protocol: u32,
    cluster: String,
    node: String,
    agent_version: String,
    applied: Option<AppliedMark>,
}

/// Admits a `Hello` (its credential, its node declared) and serves the session until it ends.
async fn on_hello(
    cx: &Arc<Context>,
    peer: &Peer,
    mut conn: Conn,
    hello: Hello,
    slot: OwnedSemaphorePermit,
) {
    // An agent of a cluster another daemon serves is sent there, once its credential says
    // it is of that cluster (the owner checks the rest).
    if peer
        .identity
        .as_ref()
        .is_some_and(|id| id.cluster == hello.cluster)
    {
        let route = cx.hub.route(&hello.cluster);
        if route != Route::Here {
            let _ = conn
                .send(&moved(&hello.cluster, &route, cx.settings.retry_after))
                .await;
            return conn.close().await;
        }
    }
    let id = match admit_hello(cx, peer, &hello).await {
        Ok(id) => id,
        Err(r) => return conn.refuse(peer, r, &cx.refusal_log).await,
    };
    let (cluster, node) = (hello.cluster, hello.node);
    let Some(attached) = cx.hub.attach(&cluster, &node) else {
        return conn
            .refuse(
                peer,
                Refusal::UndeclaredNode { cluster, node },
                &cx.refusal_log,
            )
            .await;
    };
    drop(slot);
    tracing::info!(cluster, node, agent_version = %crate::protocol::short_text(&hello.agent_version), peer = %peer.addr, "agent connected");
    let applied = hello.applied;
    cx.hub.record(&cluster, &node, |r| {
        if applied.is_some() {
            r.applied = applied;
        }
    });
    let session = attached.id;
    let end = serve(cx, &id, &mut conn, attached).await;
    cx.hub.detach(&cluster, &node, session);
    match end {
        End::Closed(why) => {
            tracing::info!(cluster, node, why, "agent disconnected");
            conn.close().await;
        }
        End::Refused(r) => conn.refuse(peer, r, &cx.refusal_log).await,
        End::Moved(route) => {
            tracing::info!(
                cluster,
                node,
                ?route,
                "the cluster moved; the agent is sent on"
            );
            let _ = conn
                .send(&moved(&cluster, &route, cx.settings.retry_after))
                .await;
            conn.close().await;
        }
    }
}

/// The credential's identity, when it speaks for the node it says hello as and is admitted.
async fn admit_hello(
    cx: &Arc<Context>,
    peer: &Peer,
    hello: &Hello,
) -> Result<NodeIdentity, Refusal> {
    check_protocol(hello.protocol)?;
    let Some(id) = peer.identity.clone() else {
        return Err(Refusal::CredentialRequired);
    };
    if id.cluster != hello.cluster || id.node != hello.node {
        return Err(Refusal::NotYourNode {
            own_cluster: id.cluster,
            own_node: id.node,
            cluster: hello.cluster.clone(),
            node: hello.node.clone(),
        });
    }
    admit(cx, &id).await?;
    Ok(id)
}

/// A credential presented with `Hello` is the node's bound key (or its renewed one, which then
/// becomes the bound key, saved on a blocking thread), and the node is declared in Git.
async fn admit(cx: &Arc<Context>, id: &NodeIdentity) -> Result<(), Refusal> {
    let used = cx
        .hub
        .bindings(&id.cluster)
        .check(&id.cluster, &id.node, &id.key_pin)?;
    if used == CredentialUse::Renewed {
        let hub = cx.hub.clone();
        let (cluster, node) = (id.cluster.clone(), id.node.clone());
        let promoted = tokio::task::spawn_blocking(move || {
            hub.update_bindings(&cluster, |b| {
                b.promote(&cluster, &node);
                Ok(())
            })
        })
        .await;
        match promoted {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot save a renewed credential")
            }
            Err(e) => tracing::error!(error = %e, "saving a renewed credential failed"),
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
    let node =
        NodeName::parse(node).map_err(|e| Refusal::bad_request(format!("node name: {e}")))?;
    let key_pin =
        crate::pki::csr_key_pin(csr_pem).map_err(|e| Refusal::bad_request(e.to_string()))?;
    let cx2 = cx.clone();
    let token = token.clone();
    let csr = csr_pem.to_string();
    // Token and binding files are read and written under a file lock: off the async threads.
    let retry_after = cx.settings.retry_after;
    let outcome = tokio::task::spawn_blocking(move || {
        // A cluster another daemon serves: the join goes there, the token unspent.
        if cx2.hub.state().shared() {
            let cluster =
                crate::join::token_cluster(cx2.hub.state(), &token).map_err(|e| internal(&e))?;
            if let Some(cluster) = cluster {
                let route = cx2.hub.route(&cluster);
                if route != Route::Here {
                    return Ok(moved(&cluster, &route, retry_after));
                }
            }
        }
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
    // A `drover node reset` may have just freed the node: decide on the document as it is.
    hub.refresh_cluster_bindings(cluster);
    hub.bindings(cluster).admits_join(cluster, node, key_pin)?;
    let issued = cx
        .ca
        .issue_node(csr, cluster, node, now)
        .map_err(|e| Refusal::bad_request(e.to_string()))?;
    hub.update_bindings(cluster, |b| {
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
    /// The cluster is another daemon's now (or moving).
    Moved(Route),
}

/// What an agent of `cluster` is told when another daemon serves it (or none does yet).
fn moved(cluster: &str, route: &Route, retry_after: Duration) -> ServerMessage {
    match route {
        Route::Owner { daemon, url } => ServerMessage::Redirect {
            url: url.clone(),
            reason: format!("cluster {cluster} is served by daemon {daemon}"),
        },
        Route::Here | Route::Unowned => ServerMessage::RetryAfter {
            seconds: retry_after.as_secs().max(1),
            reason: format!("cluster {cluster} is moving between daemons"),
        },
    }
}

/// What a session remembers between messages.
#[derive(Default)]
struct SessionState {
    /// A renewal was asked for and not answered yet: only then is `Renew` accepted.
    renewal_asked: bool,
}

/// The steady state of a session.
async fn serve(cx: &Context, id: &NodeIdentity, conn: &mut Conn, attached: Attached) -> End {
    let Attached {
        mut plans,
        mut kick,
        mut tasks,
        ..
    } = attached;
    let interval = cx.settings.heartbeat;
    let welcome = ServerMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        heartbeat_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
    };
    if conn.send(&welcome).await.is_err() {
        return End::Closed("send failed");
    }
    let mut state = SessionState::default();
    if let Err(end) = ask_renewal_if_due(cx, id, conn, &mut state).await {
        return end;
    }
    plans.mark_changed();
    let mut liveness = Liveness::new(interval);
    loop {
        let step = tokio::select! {
            changed = plans.changed() => on_plan(conn, &mut plans, &mut kick, changed.is_ok()).await,
            message = conn.next_message() => {
                liveness.heard();
                match message {
                    Ok(Some(m)) => handle(cx, id, conn, &mut state, m).await,
                    Ok(None) => Err(End::Closed("closed by the agent")),
                    Err(r) => Err(End::Refused(r)),
                }
            }
            beat = liveness.tick() => on_beat(cx, id, conn, beat).await,
            Some(request) = tasks.recv() => {
                let m = ServerMessage::EtcdTask { id: request.id, task: request.task, fence: request.fence };
                conn.send(&m).await.map_err(|_| End::Closed("send failed"))
            }
            k = &mut kick => Err(match k {
                Ok(Kick::Refused(r)) => End::Refused(r),
                Ok(Kick::Moved(route)) => End::Moved(route),
                Ok(Kick::Replaced) | Err(_) => End::Closed("replaced by a newer session"),
            }),
            () = cx.shutdown.cancelled() => Err(End::Closed("the daemon is stopping")),
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// Asks the agent to renew its credential when it is older than `Settings::renew_after`.
async fn ask_renewal_if_due(
    cx: &Context,
    id: &NodeIdentity,
    conn: &mut Conn,
    state: &mut SessionState,
) -> Result<(), End> {
    let age = SystemTime::now()
        .duration_since(id.not_before)
        .unwrap_or_default();
    if age < cx.settings.renew_after {
        return Ok(());
    }
    if conn.send(&ServerMessage::RenewCredential {}).await.is_err() {
        return Err(End::Closed("send failed"));
    }
    state.renewal_asked = true;
    Ok(())
}

/// Sends the node's new plan; ends the session when the node left the desired state.
async fn on_plan(
    conn: &mut Conn,
    plans: &mut watch::Receiver<Option<PlanFrame>>,
    kick: &mut oneshot::Receiver<Kick>,
    open: bool,
) -> Result<(), End> {
    if !open {
        // The node left the desired state. The hub sends the reason on the kick channel
        // before it drops the plan channel, so the reason is there.
        return Err(match kick.try_recv() {
            Ok(Kick::Refused(r)) => End::Refused(r),
            Ok(Kick::Moved(route)) => End::Moved(route),
            _ => End::Closed("the node left the desired state"),
        });
    }
    let frame = plans.borrow_and_update().clone();
    if let Some(frame) = frame {
        if conn.send_text(Utf8Bytes::from(&*frame.text)).await.is_err() {
            return Err(End::Closed("send failed"));
        }
    }
    Ok(())
}

/// A heartbeat tick: drop a silent agent, re-check its credential, send a heartbeat.
async fn on_beat(cx: &Context, id: &NodeIdentity, conn: &mut Conn, beat: Beat) -> Result<(), End> {
    let Beat::Send(seq) = beat else {
        return Err(End::Closed("silent for three heartbeat intervals"));
    };
    cx.hub
        .bindings(&id.cluster)
        .check(&id.cluster, &id.node, &id.key_pin)
        .map_err(End::Refused)?;
    if conn.send(&ServerMessage::Heartbeat { seq }).await.is_err() {
        return Err(End::Closed("send failed"));
    }
    Ok(())
}

/// Handles one message of an established session; `Err` ends it.
async fn handle(
    cx: &Context,
    id: &NodeIdentity,
    conn: &mut Conn,
    state: &mut SessionState,
    message: AgentMessage,
) -> Result<(), End> {
    let (cluster, node) = (id.cluster.as_str(), id.node.as_str());
    match message {
        AgentMessage::Heartbeat { .. } => cx.hub.seen(cluster, node),
        AgentMessage::EtcdTaskResult { id: task, outcome } => {
            if !cx
                .hub
                .complete_task(cluster, node, task, bounded_outcome(outcome))
            {
                tracing::debug!(cluster, node, task, "an etcd task result nobody waits for");
            }
        }
        AgentMessage::Applied {
            generation,
            checksum,
            steps,
        } => record_applied(cx, id, generation, &checksum, steps)?,
        AgentMessage::Observed { containers } => {
            if containers.len() > MAX_REPORT_ITEMS {
                return Err(over_limit(containers.len(), "containers"));
            }
            let containers = containers
                .into_iter()
                .map(|(c, state)| (crate::protocol::short_text(&c), state.bounded()))
                .collect();
            cx.hub.record(cluster, node, |r| r.containers = containers);
        }
        AgentMessage::Renew { csr_pem } => renew(cx, id, conn, state, csr_pem).await?,
        AgentMessage::Fenced {
            what,
            fence,
            newest,
        } => {
            cx.hub.fenced();
            tracing::warn!(
                cluster,
                node,
                what = crate::protocol::short_text(&what),
                ?fence,
                newest,
                "the agent refused a plan or task: it has seen a newer owner of this cluster"
            );
        }
        other @ (AgentMessage::Join { .. } | AgentMessage::Hello { .. }) => {
            let detail = format!("{} in an established session", kind(&other));
            return Err(End::Refused(Refusal::bad_request(detail)));
        }
    }
    Ok(())
}

fn over_limit(count: usize, what: &str) -> End {
    let detail = format!("a report of {count} {what} is over the limit of {MAX_REPORT_ITEMS}");
    End::Refused(Refusal::bad_request(detail))
}

/// Records an `Applied` report, bounded, and logs its failed steps.
fn record_applied(
    cx: &Context,
    id: &NodeIdentity,
    generation: u64,
    checksum: &str,
    steps: Vec<StepReport>,
) -> Result<(), End> {
    if steps.len() > MAX_REPORT_ITEMS {
        return Err(over_limit(steps.len(), "steps"));
    }
    let (cluster, node) = (id.cluster.as_str(), id.node.as_str());
    let steps: Vec<StepReport> = steps.into_iter().map(StepReport::bounded).collect();
    let checksum = crate::protocol::short_text(checksum);
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
    let mark = AppliedMark {
        generation,
        checksum,
    };
    cx.hub.record_applied(cluster, node, mark, steps);
    Ok(())
}

/// Answers a `Renew` the daemon asked for: a credential for the new key, staged beside the
/// bound one (saved on a blocking thread). An unasked or repeated `Renew` is refused.
async fn renew(
    cx: &Context,
    id: &NodeIdentity,
    conn: &mut Conn,
    state: &mut SessionState,
    csr_pem: String,
) -> Result<(), End> {
    if !std::mem::take(&mut state.renewal_asked) {
        let detail = "renew without a renew-credential request";
        return Err(End::Refused(Refusal::bad_request(detail)));
    }
    let (cluster, node) = (id.cluster.clone(), id.node.clone());
    let issued = cx
        .ca
        .issue_node(&csr_pem, &cluster, &node, SystemTime::now())
        .map_err(|e| End::Refused(Refusal::bad_request(e.to_string())))?;
    let hub = cx.hub.clone();
    let (pin, next) = (id.key_pin.clone(), issued.key_pin.clone());
    let staged = tokio::task::spawn_blocking(move || {
        hub.update_bindings(&cluster, |b| {
            b.check(&cluster, &node, &pin)?;
            b.stage(&cluster, &node, &next);
            Ok(())
        })
    })
    .await;
    match staged {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(r))) => return Err(End::Refused(r)),
        Ok(Err(e)) => {
            tracing::error!(error = %crate::error_chain(&e), "cannot save a renewed credential");
            return Ok(());
        }
        Err(e) => {
            tracing::error!(error = %e, "saving a renewed credential failed");
            return Ok(());
        }
    }
    tracing::info!(
        cluster = id.cluster,
        node = id.node,
        key = issued.key_pin,
        "credential renewed"
    );
    let m = ServerMessage::Credential {
        cert_pem: issued.cert_pem,
    };
    conn.send(&m).await.map_err(|_| End::Closed("send failed"))
}

fn kind(m: &AgentMessage) -> &'static str {
    match m {
        AgentMessage::Join { .. } => "join",
        AgentMessage::Hello { .. } => "hello",
        AgentMessage::Renew { .. } => "renew",
        AgentMessage::Heartbeat { .. } => "heartbeat",
        AgentMessage::Applied { .. } => "applied",
        AgentMessage::Observed { .. } => "observed",
        AgentMessage::EtcdTaskResult { .. } => "etcd-task-result",
        AgentMessage::Fenced { .. } => "fenced",
    }
}

/// An agent's task outcome with every text it carries cut to the report limit.
fn bounded_outcome(outcome: EtcdTaskOutcome) -> EtcdTaskOutcome {
    use crate::protocol::{short_text, EtcdMemberInfo};
    match outcome {
        EtcdTaskOutcome::Failed { error } => EtcdTaskOutcome::Failed {
            error: short_text(&error),
        },
        EtcdTaskOutcome::Members { members } => EtcdTaskOutcome::Members {
            members: members
                .into_iter()
                .take(crate::model::MAX_NODE_ITEMS)
                .map(|m| EtcdMemberInfo {
                    id: short_text(&m.id),
                    name: short_text(&m.name),
                    peer_urls: m.peer_urls.iter().take(8).map(|u| short_text(u)).collect(),
                    client_urls: m
                        .client_urls
                        .iter()
                        .take(8)
                        .map(|u| short_text(u))
                        .collect(),
                })
                .collect(),
        },
        other => other,
    }
}
