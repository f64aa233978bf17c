//! The daemon's side of the agent protocol: a TLS listener (rustls, the daemon CA's serving
//! certificate, optional client certificates) serving one WebSocket per agent at `/v1/agent`,
//! and the operator API's nodes document at `/v1/nodes` (see `api`).
//!
//! - `hub`: declared nodes, their plans and generations, live sessions, agents' reports.
//! - `session`: one agent's session: join or hello, then plans, heartbeats, reports, renewal.
//!
//! TLS handshakes run at most `Settings::max_handshakes` at a time. The handshake and then the
//! request head are each bounded by `Settings::handshake_timeout`, so a flood of slow or silent
//! clients can neither starve established sessions nor hold connections open. Connections and
//! WebSocket sessions share one task tracker, which `AgentServer::shutdown` waits for.

pub mod hub;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
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

pub use hub::{Hub, NodeReport};
use session::{Context, Peer};

use crate::pki::{self, DaemonCa, PkiError};
use crate::protocol::{MAX_MESSAGE_BYTES, READ_BUFFER_BYTES};
use crate::secret::Secret;
use crate::state::StateDir;

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
    /// How long a client has for its TLS handshake, and then for its request head.
    pub handshake_timeout: Duration,
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
            handshake_timeout: Duration::from_secs(10),
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
    pub async fn start(state: StateDir, settings: Settings) -> Result<AgentServer, ServerError> {
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
        });
        let router = Router::new()
            .route("/v1/agent", get(upgrade))
            .route(crate::api::NODES_PATH, get(nodes))
            .with_state(cx.clone());
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
    // Frames are written straight to the socket: no write buffer is kept per session.
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| tracker.track_future(session::run(cx, peer, socket)))
}

/// `GET /v1/nodes`: the nodes document, for a request bearing the operator token.
async fn nodes(
    Extension(peer): Extension<Peer>,
    State(cx): State<Arc<Context>>,
    headers: HeaderMap,
) -> Response {
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
    let body = serde_json::to_vec(&cx.hub.nodes_document()).expect("the nodes document is JSON");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn api_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
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
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let router = router.clone();
        let handshakes = handshakes.clone();
        let shutdown = shutdown.clone();
        let timeout = settings.handshake_timeout;
        sessions.spawn(async move {
            let Ok(permit) = handshakes.acquire_owned().await else {
                return;
            };
            let stream = match tokio::time::timeout(timeout, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            drop(permit);
            let peer = Peer::from_certificates(addr, stream.get_ref().1.peer_certificates());
            let service = TowerToHyperService::new(router.layer(Extension(peer)));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
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
