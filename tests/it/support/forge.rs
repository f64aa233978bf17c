//! A forge in the test suite: the commit status endpoints of GitHub, GitLab and Gitea/Forgejo
//! as their documentation gives them, on a loopback port. Every request is checked against
//! that documentation (method and path, authentication, headers, the body's fields and their
//! values) and recorded; a request that breaks a rule is answered as the forge would (401,
//! 404, 422) and its violation kept for the test to show. It can be taken down (503).
//!
//! - GitHub, "Create a commit status": `POST /repos/{owner}/{repo}/statuses/{sha}`,
//!   `Authorization: Bearer`, `Accept: application/vnd.github+json`, `X-GitHub-Api-Version`,
//!   a `User-Agent`; `state` one of error, failure, pending, success; `target_url`,
//!   `description`, `context` optional strings. Answers 201.
//! - GitLab, "Set the pipeline status of a commit": `POST /projects/{id}/statuses/{sha}`, the
//!   id a number or the URL-encoded path, `PRIVATE-TOKEN`; `state` one of pending, running,
//!   success, failed, canceled, skipped; `ref`, `name`, `context`, `target_url`,
//!   `description`, `coverage`, `pipeline_id` optional. Answers 201.
//! - Gitea and Forgejo, "Create a commit status": `POST /repos/{owner}/{repo}/statuses/{sha}`,
//!   `Authorization: token`; `state` one of pending, success, error, failure, warning;
//!   `target_url`, `description`, `context` optional. Answers 201.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// One status the forge accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub forge: &'static str,
    pub repository: String,
    pub commit: String,
    pub state: String,
    /// `context` (GitHub, Gitea) or `name` (GitLab).
    pub context: String,
    pub description: String,
    pub target_url: Option<String>,
}

#[derive(Default)]
struct Shared {
    token: String,
    accepted: Mutex<Vec<Recorded>>,
    violations: Mutex<Vec<String>>,
    down: AtomicBool,
    refused_while_down: Mutex<usize>,
}

/// The running forge; stopped when dropped.
pub struct TestForge {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl TestForge {
    /// Starts the forge on `ip`, accepting `token`.
    pub async fn start(ip: std::net::Ipv4Addr, token: &str) -> TestForge {
        let shared = Arc::new(Shared {
            token: token.to_string(),
            ..Shared::default()
        });
        let app = Router::new()
            .route("/github/repos/{owner}/{repo}/statuses/{sha}", post(github))
            .route("/gitlab/api/v4/projects/{id}/statuses/{sha}", post(gitlab))
            .route(
                "/gitea/api/v1/repos/{owner}/{repo}/statuses/{sha}",
                post(gitea),
            )
            .fallback(unknown)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        TestForge { addr, shared, stop }
    }

    /// The API base URL of `forge` (`github`, `gitlab` or `gitea`).
    pub fn api_url(&self, forge: &str) -> String {
        match forge {
            "github" => format!("http://{}/github", self.addr),
            "gitlab" => format!("http://{}/gitlab/api/v4", self.addr),
            "gitea" => format!("http://{}/gitea/api/v1", self.addr),
            other => panic!("no forge {other}"),
        }
    }

    pub fn accepted(&self) -> Vec<Recorded> {
        self.shared.accepted.lock().unwrap().clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }

    /// While down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    pub fn refused_while_down(&self) -> usize {
        *self.shared.refused_while_down.lock().unwrap()
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}

type Answer = (StatusCode, String);

fn violation(shared: &Shared, code: StatusCode, what: String) -> Answer {
    shared.violations.lock().unwrap().push(what.clone());
    (code, serde_json::json!({ "message": what }).to_string())
}

async fn unknown(State(shared): State<Arc<Shared>>, uri: Uri) -> Answer {
    violation(
        &shared,
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {uri}"),
    )
}

/// The rules every forge shares: up, a 40-hex commit, a JSON object body.
fn common(
    shared: &Shared,
    headers: &HeaderMap,
    sha: &str,
    body: &[u8],
) -> Result<serde_json::Map<String, Value>, Answer> {
    if shared.down.load(Ordering::SeqCst) {
        *shared.refused_while_down.lock().unwrap() += 1;
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "down for maintenance".into(),
        ));
    }
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(violation(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a commit sha: {sha}"),
        ));
    }
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(violation(
            shared,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body is not declared JSON".into(),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(violation(
            shared,
            StatusCode::BAD_REQUEST,
            "the body is not a JSON object".into(),
        )),
    }
}

/// Checks `body`'s fields: `state` among `states`, every other field in `optional` and a
/// string (`coverage` and `pipeline_id` are numbers on GitLab).
fn fields(
    shared: &Shared,
    body: &serde_json::Map<String, Value>,
    states: &[&str],
    optional: &[&str],
) -> Result<String, Answer> {
    let state = body
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !states.contains(&state) {
        return Err(violation(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("state {state:?} is not one of {states:?}"),
        ));
    }
    for (key, value) in body {
        if key == "state" {
            continue;
        }
        if !optional.contains(&key.as_str()) {
            return Err(violation(
                shared,
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("unknown field {key}"),
            ));
        }
        let number = matches!(key.as_str(), "coverage" | "pipeline_id");
        if (number && !value.is_number()) || (!number && !value.is_string()) {
            return Err(violation(
                shared,
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("field {key} has the wrong type: {value}"),
            ));
        }
    }
    if body
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.chars().count() > 140)
    {
        return Err(violation(
            shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            "description longer than 140 characters".into(),
        ));
    }
    Ok(state.to_string())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn record(
    shared: &Shared,
    forge: &'static str,
    repository: String,
    commit: String,
    state: String,
    body: &serde_json::Map<String, Value>,
    name_key: &str,
) -> Answer {
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(String::from);
    shared.accepted.lock().unwrap().push(Recorded {
        forge,
        repository,
        commit,
        state,
        context: text(name_key).unwrap_or_else(|| "default".into()),
        description: text("description").unwrap_or_default(),
        target_url: text("target_url"),
    });
    (StatusCode::CREATED, r#"{"id":1}"#.into())
}

/// GitHub's and Gitea's body: `state` among `states`, the status named by `context`.
fn context_status(
    shared: &Shared,
    forge: &'static str,
    repository: String,
    sha: String,
    body: &serde_json::Map<String, Value>,
    states: &[&str],
) -> Answer {
    match fields(
        shared,
        body,
        states,
        &["target_url", "description", "context"],
    ) {
        Ok(state) => record(shared, forge, repository, sha, state, body, "context"),
        Err(a) => a,
    }
}

async fn github(
    State(shared): State<Arc<Shared>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let body = match common(&shared, &headers, &sha, &body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    if header(&headers, "authorization") != Some(format!("Bearer {}", shared.token).as_str()) {
        return violation(
            &shared,
            StatusCode::UNAUTHORIZED,
            "GitHub: no valid bearer token".into(),
        );
    }
    if header(&headers, "accept") != Some("application/vnd.github+json") {
        return violation(
            &shared,
            StatusCode::UNPROCESSABLE_ENTITY,
            "GitHub: Accept must be application/vnd.github+json".into(),
        );
    }
    if header(&headers, "x-github-api-version") != Some("2022-11-28") {
        return violation(
            &shared,
            StatusCode::BAD_REQUEST,
            "GitHub: X-GitHub-Api-Version must name a version".into(),
        );
    }
    if header(&headers, "user-agent").is_none_or(str::is_empty) {
        return violation(
            &shared,
            StatusCode::FORBIDDEN,
            "GitHub: a User-Agent is required".into(),
        );
    }
    let states = ["error", "failure", "pending", "success"];
    context_status(
        &shared,
        "github",
        format!("{owner}/{repo}"),
        sha,
        &body,
        &states,
    )
}

async fn gitlab(
    State(shared): State<Arc<Shared>>,
    Path((id, sha)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let body = match common(&shared, &headers, &sha, &body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    if header(&headers, "private-token") != Some(shared.token.as_str()) {
        return violation(
            &shared,
            StatusCode::UNAUTHORIZED,
            "GitLab: no valid PRIVATE-TOKEN".into(),
        );
    }
    // A project path is one URL-encoded path segment.
    if id.contains('/') && !uri.path().contains("%2F") {
        return violation(
            &shared,
            StatusCode::NOT_FOUND,
            format!("GitLab: the project path {id} is not URL-encoded"),
        );
    }
    let states = [
        "pending", "running", "success", "failed", "canceled", "skipped",
    ];
    let optional = [
        "ref",
        "name",
        "context",
        "target_url",
        "description",
        "coverage",
        "pipeline_id",
    ];
    match fields(&shared, &body, &states, &optional) {
        Ok(state) => record(&shared, "gitlab", id, sha, state, &body, "name"),
        Err(a) => a,
    }
}

async fn gitea(
    State(shared): State<Arc<Shared>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let body = match common(&shared, &headers, &sha, &body) {
        Ok(b) => b,
        Err(a) => return a,
    };
    if header(&headers, "authorization") != Some(format!("token {}", shared.token).as_str()) {
        return violation(
            &shared,
            StatusCode::UNAUTHORIZED,
            "Gitea: no valid token".into(),
        );
    }
    let states = ["pending", "success", "error", "failure", "warning"];
    context_status(
        &shared,
        "gitea",
        format!("{owner}/{repo}"),
        sha,
        &body,
        &states,
    )
}
