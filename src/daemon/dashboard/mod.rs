//! The dashboard: HTML pages served by the daemon on the operator API's TLS listener, read-only
//! but for two actions, readable with scripts off, and live with them on.
//!
//! - `GET /ui/` the clusters (search `q`, filter `condition`, pages of `PAGE_SIZE`);
//!   `GET /ui/clusters/{name}` one cluster; `GET /ui/clusters/{name}/nodes/{node}` one node;
//!   `GET /ui/daemon` the source, agents and webhooks.
//! - `GET /ui/sign-in` and `POST /ui/sign-in` (the operator token, once): a session whose id
//!   travels in an HttpOnly, Secure, SameSite=Strict cookie; `POST /ui/sign-out` ends it.
//! - `POST /ui/clusters/{name}/reconcile` and `POST /ui/clusters/{name}/snapshot`: "reconcile
//!   now" and "snapshot now", each with the session's CSRF token in the form and, when the
//!   browser sends one, an `Origin` of this host.
//! - `GET /ui/events`: server-sent events, one `changed` whenever a cluster's status changes
//!   (at most one per `EVENT_GAP`); `live.js` then fetches the page again and swaps its
//!   `<main>` in.
//! - `GET /ui/assets/{name}`: the stylesheet and the script, from the binary.
//!
//! Sessions live in the daemon's memory (a restart signs everyone out), at most
//! `MAX_SESSIONS`, each for `SESSION_LIFETIME`. Nothing the operator token protects is shown
//! without a session.

mod pages;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use subtle::ConstantTimeEq as _;

use crate::daemon::operator::Operator;
use crate::secret::Secret;
use crate::store::DurableState;

/// Where the dashboard lives.
pub const UI_PATH: &str = "/ui";
/// The session cookie's name.
const COOKIE: &str = "drover_session";
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// How long a session lasts after sign-in.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most bytes of a form (a sign-in or an action).
const MAX_FORM_BYTES: usize = 4096;
/// Clusters per page.
pub const PAGE_SIZE: usize = 50;
/// Fewest milliseconds between two `changed` events.
const EVENT_GAP: Duration = Duration::from_millis(500);

/// What the pages read, and the sessions.
pub struct Dashboard {
    pub operator: Operator,
    pub state: DurableState,
    sessions: Mutex<HashMap<String, Session>>,
}

struct Session {
    csrf: String,
    expires: Instant,
}

impl Dashboard {
    pub fn new(operator: Operator, state: DurableState) -> Dashboard {
        Dashboard {
            operator,
            state,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The CSRF token of the request's session, if it has a live one.
    fn session(&self, headers: &HeaderMap) -> Option<String> {
        let id = session_id(headers)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.get(&id).map(|s| s.csrf.clone())
    }

    /// A new session; its id, for the cookie.
    fn open(&self) -> String {
        let (id, csrf) = (random_hex(), random_hex());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        let expires = Instant::now() + SESSION_LIFETIME;
        sessions.insert(id.clone(), Session { csrf, expires });
        id
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(id) = session_id(headers) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(&id);
        }
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    hex::encode(bytes)
}

/// The session id the request's cookie carries.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route(&format!("{UI_PATH}/"), get(clusters))
        .route(UI_PATH, get(|| async { Redirect::to("/ui/") }))
        .route(&format!("{UI_PATH}/clusters/{{name}}"), get(cluster))
        .route(
            &format!("{UI_PATH}/clusters/{{name}}/nodes/{{node}}"),
            get(node),
        )
        .route(&format!("{UI_PATH}/daemon"), get(daemon))
        .route(
            &format!("{UI_PATH}/sign-in"),
            get(sign_in_page).post(sign_in),
        )
        .route(&format!("{UI_PATH}/sign-out"), post(sign_out))
        .route(
            &format!("{UI_PATH}/clusters/{{name}}/reconcile"),
            post(reconcile),
        )
        .route(
            &format!("{UI_PATH}/clusters/{{name}}/snapshot"),
            post(snapshot),
        )
        .route(&format!("{UI_PATH}/events"), get(events))
        .route(&format!("{UI_PATH}/assets/{{name}}"), get(asset))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .with_state(dashboard)
}

/// Refuses a body announced over `MAX_FORM_BYTES` on its length alone, before a byte of it is
/// read (one without a length is cut at the limit by `DefaultBodyLimit`). A refused body
/// leaves the connection mid-request: it is closed after the answer, and the client told so
/// rather than sending its next request into it.
async fn refuse_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut response = match announced {
        Some(n) if n > MAX_FORM_BYTES as u64 => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
        _ => next.run(request).await,
    };
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The sign-in page, for a request without a session.
fn signed_out() -> Response {
    Redirect::to(&format!("{UI_PATH}/sign-in")).into_response()
}

/// The query of the clusters page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ClustersQuery {
    #[serde(default)]
    pub q: String,
    /// `ready`, `reconciling`, `stalled` or `overdue`.
    #[serde(default)]
    pub condition: String,
    #[serde(default)]
    pub page: usize,
}

async fn clusters(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(query): Query<ClustersQuery>,
) -> Response {
    let Some(csrf) = d.session(&headers) else {
        return signed_out();
    };
    pages::clusters(&d.operator, &query, &csrf).into_response()
}

async fn cluster(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(csrf) = d.session(&headers) else {
        return signed_out();
    };
    match pages::cluster(&d.operator, &name, &csrf).await {
        Some(page) => page.into_response(),
        None => (StatusCode::NOT_FOUND, pages::not_found(&name, &csrf)).into_response(),
    }
}

async fn node(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path((name, node)): Path<(String, String)>,
) -> Response {
    let Some(csrf) = d.session(&headers) else {
        return signed_out();
    };
    match pages::node(&d.operator, &name, &node, &csrf) {
        Some(page) => page.into_response(),
        None => (
            StatusCode::NOT_FOUND,
            pages::not_found(&format!("{name}/{node}"), &csrf),
        )
            .into_response(),
    }
}

async fn daemon(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let Some(csrf) = d.session(&headers) else {
        return signed_out();
    };
    pages::daemon(&d.operator, &csrf).into_response()
}

async fn sign_in_page() -> Response {
    pages::sign_in(None).into_response()
}

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(State(d): State<Arc<Dashboard>>, Form(form): Form<SignIn>) -> Response {
    let presented = Secret::new(form.token.trim());
    let state = d.state.clone();
    let checked = tokio::task::spawn_blocking(move || {
        crate::api::check_operator_token(&state, presented.expose())
    })
    .await;
    match checked {
        Ok(Ok(Some(true))) => {
            let id = d.open();
            let cookie = cookie::Cookie::build((COOKIE, id))
                .path(UI_PATH)
                .http_only(true)
                .secure(true)
                .same_site(cookie::SameSite::Strict)
                .max_age(cookie::time::Duration::seconds(
                    SESSION_LIFETIME.as_secs() as i64
                ))
                .build();
            (
                [(header::SET_COOKIE, cookie.to_string())],
                Redirect::to(&format!("{UI_PATH}/")),
            )
                .into_response()
        }
        Ok(Ok(_)) => {
            tracing::info!("dashboard sign-in with a wrong operator token");
            (
                StatusCode::UNAUTHORIZED,
                pages::sign_in(Some("That is not this daemon's operator token.")),
            )
                .into_response()
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::sign_in(Some(
                "The daemon cannot read its operator token; see its log.",
            )),
        )
            .into_response(),
    }
}

async fn sign_out(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Form(form): Form<Action>,
) -> Response {
    if let Err(refused) = check_action(&d, &headers, &form) {
        return refused.into_response();
    }
    d.close(&headers);
    let gone = cookie::Cookie::build((COOKIE, ""))
        .path(UI_PATH)
        .http_only(true)
        .secure(true)
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    (
        [(header::SET_COOKIE, gone.to_string())],
        Redirect::to(&format!("{UI_PATH}/sign-in")),
    )
        .into_response()
}

/// Why an action was refused.
struct Refused(&'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, pages::refused(self.0)).into_response()
    }
}

/// A form that changes something: the session's CSRF token.
#[derive(serde::Deserialize)]
pub struct Action {
    csrf: String,
}

/// Lets an action through only with a live session, its CSRF token, and, when the browser
/// names the origin, this host's; else why not, for a 403 page.
fn check_action(d: &Dashboard, headers: &HeaderMap, form: &Action) -> Result<(), Refused> {
    let refuse = |why: &'static str| Err(Refused(why));
    let Some(csrf) = d.session(headers) else {
        return refuse("You are not signed in.");
    };
    if !bool::from(csrf.as_bytes().ct_eq(form.csrf.as_bytes())) {
        tracing::info!("dashboard action refused: a wrong CSRF token");
        return refuse("This form is not from this dashboard (a wrong CSRF token).");
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if let (Some(origin), Some(host)) = (origin, host) {
        let same = origin
            .strip_prefix("https://")
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            tracing::info!(origin, "dashboard action refused: another origin");
            return refuse("This form was sent from another site.");
        }
    }
    Ok(())
}

async fn reconcile(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Action>,
) -> Response {
    if let Err(refused) = check_action(&d, &headers, &form) {
        return refused.into_response();
    }
    let asked = d
        .operator
        .controller
        .get()
        .is_some_and(|c| c.reconcile_now(&name));
    if !asked {
        return (StatusCode::NOT_FOUND, pages::refused("No such cluster.")).into_response();
    }
    Redirect::to(&pages::cluster_href(&name)).into_response()
}

async fn snapshot(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Action>,
) -> Response {
    if let Err(refused) = check_action(&d, &headers, &form) {
        return refused.into_response();
    }
    let Some(scheduler) = d.operator.snapshots.get().cloned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            pages::refused("The daemon is starting."),
        )
            .into_response();
    };
    let target = name.clone();
    // The save runs on; the page shows it running, then its outcome.
    tokio::spawn(async move {
        if let Err(e) = scheduler.save_now(&target).await {
            tracing::warn!(cluster = target, error = %crate::error_chain(&e), "a snapshot asked for on the dashboard failed");
        }
    });
    Redirect::to(&pages::cluster_href(&name)).into_response()
}

async fn events(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if d.session(&headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(controller) = d.operator.controller.get().cloned() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let changes = controller.changes();
    let stream = futures::stream::unfold(changes, |mut changes| async move {
        changes.changed().await.ok()?;
        tokio::time::sleep(EVENT_GAP).await;
        let n = *changes.borrow_and_update();
        Some((
            Ok::<_, Infallible>(Event::default().event("changed").data(n.to_string())),
            changes,
        ))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    let (kind, body) = match name.as_str() {
        "style.css" => ("text/css; charset=utf-8", include_str!("style.css")),
        "live.js" => ("text/javascript; charset=utf-8", include_str!("live.js")),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
