//! The daemon's side of the agent protocol: a TLS listener (rustls, the daemon CA's serving
//! certificate, optional client certificates) serving one WebSocket per agent at `/v1/agent`,
//! and the operator API's nodes document at `/v1/nodes` (see `api`).
//!
//! - `hub`: declared nodes, their plans and generations, live sessions, agents' reports.
//! - `session`: one agent's session: join or hello, then plans, heartbeats, reports, renewal.
//!
//! Everything a peer can do before it is admitted is bounded:
//! - at most `Settings::max_pending` connections wait for a TLS handshake slot, and one over
//!   that is closed at once; the wait for a slot and the handshake together, and then the
//!   request head, are each bounded by `Settings::handshake_timeout`;
//! - TLS handshakes run at most `Settings::max_handshakes` at a time;
//! - a WebSocket without a client certificate may send messages of `MAX_UNADMITTED_MESSAGE_BYTES`
//!   at most (a join is far smaller), checked by the WebSocket layer before any parsing;
//! - at most `Settings::max_unadmitted` sessions wait for their first message to be handled.
//!
//! So a flood of slow or silent clients can neither starve established sessions nor exhaust
//! file descriptors or memory. Node bindings are re-read by a background task on a blocking
//! thread, so a session's checks never touch the disk. Connections and WebSocket sessions share
//! one task tracker, which `AgentServer::shutdown` waits for.

pub mod hub;
pub mod session;
pub mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use hub::Hub;
use session::{Context, Peer};

use crate::pki::{self, DaemonCa, PkiError};
use crate::protocol::{MAX_MESSAGE_BYTES, READ_BUFFER_BYTES};

/// Largest message a WebSocket without a client certificate may send: its only valid message
/// is a `Join` (a node name, a token and a CSR of about a kilobyte).
pub const MAX_UNADMITTED_MESSAGE_BYTES: usize = 64 * 1024;
use crate::secret::Secret;
use crate::store::DurableState;

/// The agent server's knobs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// DNS names and IP addresses agents dial; the serving certificate is issued for them.
    pub names: Vec<String>,
    pub heartbeat: Duration,
    /// A credential older than this is renewed in-band.
    pub renew_after: Duration,
    /// What `RetryAfter` asks of agents while the desired state is not read yet.
    pub retry_after: Duration,
    pub max_handshakes: usize,
    /// Most connections waiting for a handshake slot; more are closed at once.
    pub max_pending: usize,
    /// Most WebSocket sessions whose first message is not handled yet.
    pub max_unadmitted: usize,
    /// How long a client has for its TLS handshake (including the wait for a slot), and then
    /// for its request head.
    pub handshake_timeout: Duration,
    /// How long one send to an agent may take; a peer that stops reading is dropped after it.
    pub send_timeout: Duration,
    /// How often the node bindings are checked for changes by another process.
    pub bindings_refresh: Duration,
    /// Most refusals logged a second; the others are counted in the next line logged.
    pub refusal_logs_per_second: u32,
    /// Most bytes one transfer (a snapshot) may carry: etcd's largest database and a margin.
    pub max_transfer_bytes: u64,
    /// How long the bytes of a transfer may stop moving, either way.
    pub transfer_stall: Duration,
}

impl Settings {
    pub fn new(listen: SocketAddr) -> Settings {
        Settings {
            listen,
            names: vec![listen.ip().to_string(), "localhost".into()],
            heartbeat: Duration::from_secs(10),
            renew_after: pki::NODE_CERT_VALIDITY / 2,
            retry_after: Duration::from_secs(5),
            max_handshakes: 256,
            max_pending: 1024,
            max_unadmitted: 1024,
            handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            bindings_refresh: Duration::from_secs(1),
            refusal_logs_per_second: 20,
            max_transfer_bytes: 9 << 30,
            transfer_stall: Duration::from_secs(30),
        }
    }
}

/// Why the agent server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running agent server.
pub struct AgentServer {
    hub: Arc<Hub>,
    ca_pin: String,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    accept: JoinHandle<()>,
    sessions: tokio_util::task::TaskTracker,
}

impl AgentServer {
    /// Loads (or makes) the CA and the state in `state`, and listens.
    pub async fn start(
        state: DurableState,
        settings: Settings,
    ) -> Result<AgentServer, ServerError> {
        Self::start_with(state, settings, Router::new(), Router::new()).await
    }

    /// Like `start`, also serving `operator`'s routes (already given their state) behind the
    /// operator token, beside `/v1/nodes`, and `public`'s routes, which authenticate their
    /// requests themselves (the dashboard's session cookie).
    pub async fn start_with(
        state: DurableState,
        settings: Settings,
        operator: Router,
        public: Router,
    ) -> Result<AgentServer, ServerError> {
        let (ca, hub) = tokio::task::spawn_blocking({
            let state = state.clone();
            move || -> Result<_, ServerError> { Ok((DaemonCa::ensure(&state)?, Hub::new(state)?)) }
        })
        .await
        .expect("the state loader does not panic")?;
        let identity = ca.server_identity(&settings.names, SystemTime::now())?;
        let tls = TlsAcceptor::from(pki::server_config(&ca, identity)?);
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: settings.listen,
                source,
            })?;
        let hub = Arc::new(hub);
        let shutdown = CancellationToken::new();
        let ca_pin = ca.pin().to_string();
        let sessions = tokio_util::task::TaskTracker::new();
        let cx = Arc::new(Context {
            hub: hub.clone(),
            ca: Arc::new(ca),
            settings: settings.clone(),
            shutdown: shutdown.clone(),
            sessions: sessions.clone(),
            unadmitted: Arc::new(Semaphore::new(settings.max_unadmitted)),
            refusal_log: session::LogBudget::new(settings.refusal_logs_per_second),
        });
        sessions.spawn(refresh_bindings(
            hub.clone(),
            settings.bindings_refresh,
            shutdown.clone(),
        ));
        let operator = Router::new()
            .route(crate::api::NODES_PATH, get(nodes))
            .with_state(cx.clone())
            .merge(operator)
            .layer(axum::middleware::from_fn_with_state(
                cx.clone(),
                require_operator,
            ));
        let router = Router::new()
            .route("/v1/agent", get(upgrade))
            .route(
                &format!("{}{{id}}", crate::protocol::TRANSFER_PATH),
                axum::routing::put(transfer::receive).get(transfer::send_out),
            )
            .with_state(cx.clone())
            .merge(operator)
            .merge(public);
        let accept = tokio::spawn(accept_loop(
            listener,
            tls,
            router,
            settings,
            shutdown.clone(),
            sessions.clone(),
        ));
        tracing::info!(addr = %local_addr, ca = ca_pin, "agent server listening");
        Ok(AgentServer {
            hub,
            ca_pin,
            local_addr,
            shutdown,
            accept,
            sessions,
        })
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The pin agents use: `sha256:` over the daemon CA's public key.
    pub fn ca_pin(&self) -> &str {
        &self.ca_pin
    }

    /// Stops listening, ends every session and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.accept.await;
        self.sessions.close();
        self.sessions.wait().await;
    }
}

async fn upgrade(
    ws: WebSocketUpgrade,
    Extension(peer): Extension<Peer>,
    State(cx): State<Arc<Context>>,
) -> Response {
    let tracker = cx.sessions.clone();
    // A peer without a credential can only join: its messages are held to a join's size.
    let limit = match peer.identity {
        Some(_) => MAX_MESSAGE_BYTES,
        None => MAX_UNADMITTED_MESSAGE_BYTES,
    };
    // Frames are written straight to the socket: no write buffer is kept per session.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| tracker.track_future(session::run(cx, peer, socket)))
}

/// `GET /v1/nodes`: the nodes document (behind `require_operator`).
async fn nodes(State(cx): State<Arc<Context>>) -> Response {
    let body = serde_json::to_vec(&cx.hub.nodes_document()).expect("the nodes document is JSON");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Lets a request through to the operator API only when it bears the operator token.
async fn require_operator(
    State(cx): State<Arc<Context>>,
    Extension(peer): Extension<Peer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Secret::new(t.trim()));
    let Some(presented) = presented else {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "this request needs the operator token: Authorization: Bearer <token>",
        );
    };
    let state = cx.hub.state().clone();
    let verdict = tokio::task::spawn_blocking(move || {
        crate::api::check_operator_token(&state, presented.expose())
    })
    .await;
    match verdict {
        Ok(Ok(Some(true))) => {}
        Ok(Ok(Some(false))) => {
            tracing::info!(peer = %peer.addr, "operator API request with a wrong token");
            return api_error(StatusCode::UNAUTHORIZED, "the operator token is not valid");
        }
        Ok(Ok(None)) => {
            return api_error(
                StatusCode::UNAUTHORIZED,
                "this daemon has no operator token yet; make one with `drover token operator` on the daemon",
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %crate::error_chain(&e), "cannot read the operator token");
            return api_error(StatusCode::INTERNAL_SERVER_ERROR, "the daemon cannot read its operator token; see its log");
        }
        Err(_) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
    next.run(request).await
}

/// A JSON error body, `{"error": message}`, with its status: the operator API's one shape of
/// error.
pub fn api_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Re-reads the node bindings when another process (`drover node reset`) changed them, on a
/// blocking thread, until shutdown.
async fn refresh_bindings(hub: Arc<Hub>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let hub = hub.clone();
        let _ = tokio::task::spawn_blocking(move || hub.refresh_bindings()).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: TlsAcceptor,
    router: Router,
    settings: Settings,
    shutdown: CancellationToken,
    sessions: tokio_util::task::TaskTracker,
) {
    let handshakes = Arc::new(Semaphore::new(settings.max_handshakes));
    let pending = Arc::new(Semaphore::new(settings.max_pending));
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: say so, and slow down.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // Over the count of connections waiting for a handshake: closed at once (dropped).
        let Ok(waiting) = pending.clone().try_acquire_owned() else {
            tracing::debug!(peer = %addr, "too many connections waiting for a TLS handshake");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            tls: tls.clone(),
            router: router.clone(),
            handshakes: handshakes.clone(),
            timeout: settings.handshake_timeout,
        };
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            let Some(stream) = connection.handshake(tcp, addr, waiting).await else {
                return;
            };
            let peer = Peer::from_certificates(addr, stream.get_ref().1.peer_certificates());
            let service = TowerToHyperService::new(connection.router.layer(Extension(peer)));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(connection.timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %addr, error = %e, "connection ended");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// What one accepted connection needs for its handshake and its requests.
struct Connection {
    tls: TlsAcceptor,
    router: Router,
    handshakes: Arc<Semaphore>,
    timeout: Duration,
}

impl Connection {
    /// Waits for a handshake slot and runs the TLS handshake, both within the timeout. The
    /// `waiting` permit (the connection's place among those pending) is held until then.
    async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        addr: SocketAddr,
        waiting: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
        let handshake = async {
            let _slot = self.handshakes.acquire().await.ok()?;
            Some(self.tls.accept(tcp).await)
        };
        let outcome = tokio::time::timeout(self.timeout, handshake).await;
        drop(waiting);
        match outcome {
            Ok(Some(Ok(stream))) => Some(stream),
            Ok(Some(Err(e))) => {
                tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                None
            }
            Ok(None) => None,
            Err(_) => {
                tracing::debug!(peer = %addr, "TLS handshake timed out");
                None
            }
        }
    }
}
