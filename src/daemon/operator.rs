//! The operator API's cluster routes, served by the agent server behind the operator token:
//!
//! - `GET /v1/clusters`: the `ClustersDocument`, every cluster's status and the source's;
//! - `GET /v1/clusters/{name}`: one cluster's `ClusterStatus`;
//! - `GET /v1/daemons`: the daemons sharing the state and each cluster's owner (`SharingView`);
//! - `POST /v1/clusters/{name}/reconcile`: a pass now (202), 404 for an unknown cluster;
//! - `POST /v1/clusters/{name}/certificates/rotate`: new etcd certificates for every node,
//!   members restarting one at a time (202), 404 for an unknown cluster;
//! - `GET /v1/clusters/{name}/nodes/{node}`: what that node's agent receives (`NodeView`:
//!   file contents and keys left out) and its last report;
//! - the snapshot routes, `/v1/clusters/{name}/snapshots...` (`daemon::snapshots::routes`).
//!
//! A cluster's status carries its snapshots and the `SnapshotOverdue` condition.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

use crate::api::{ClustersDocument, NodeView, SourceView, CLUSTERS_FORMAT_VERSION, CLUSTERS_PATH};
use crate::daemon::controller::Controller;
use crate::server::api_error;
use crate::source::{DesiredState, SourceStatus};

/// What the routes read.
#[derive(Clone)]
pub struct Operator {
    /// Set once the controller exists (it needs the server's hub, so it comes after).
    pub controller: Arc<OnceLock<Arc<Controller>>>,
    /// Set with the controller; serves the snapshot routes too.
    pub snapshots: crate::daemon::snapshots::routes::Cell,
    pub source: watch::Receiver<SourceStatus>,
    pub location: String,
    pub desired: watch::Receiver<Arc<DesiredState>>,
    /// Webhook deliveries, for the dashboard.
    pub webhooks: Arc<crate::source::webhook::WebhookStats>,
    /// The forge that hosts the source, to link each commit to its page.
    pub forge: Option<crate::config::Forge>,
    /// The daemons sharing the state and the clusters' owners, when several share it.
    pub sharing: Arc<OnceLock<watch::Receiver<crate::api::SharingView>>>,
}

pub fn router(operator: Operator) -> Router {
    Router::new()
        .route(CLUSTERS_PATH, get(clusters))
        .route(crate::api::DAEMONS_PATH, get(daemons))
        .route(&format!("{CLUSTERS_PATH}/{{name}}"), get(cluster))
        .route(
            &format!("{CLUSTERS_PATH}/{{name}}/reconcile"),
            post(reconcile),
        )
        .route(
            &format!("{CLUSTERS_PATH}/{{name}}/certificates/rotate"),
            post(rotate),
        )
        .route(
            &format!("{CLUSTERS_PATH}/{{name}}/nodes/{{node}}"),
            get(node),
        )
        .route(
            &format!("{CLUSTERS_PATH}/{{name}}/restores"),
            post(restore)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_RESTORE_BODY_BYTES))
                .get(restores),
        )
        .route(
            &format!("{CLUSTERS_PATH}/{{name}}/restores/{{request}}"),
            get(restore_run),
        )
        .with_state(Arc::new(operator.clone()))
        .merge(crate::daemon::snapshots::routes::router(
            operator.snapshots.clone(),
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(operator),
            at_owner,
        ))
}

/// With several daemons sharing the state, a cluster's routes are answered by its owner:
/// another daemon answers 409 naming the owner, or 503 while the cluster has none (it moves
/// between daemons). So a snapshot or a restore asked of the wrong daemon says where to go
/// rather than failing on a write this daemon may not make.
async fn at_owner(
    State(op): State<Arc<Operator>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let elsewhere = cluster_in(request.uri().path()).and_then(|name| elsewhere(&op, name));
    match elsewhere {
        Some(answer) => answer,
        None => next.run(request).await,
    }
}

/// The cluster a route under `/v1/clusters/{name}` is about.
fn cluster_in(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(CLUSTERS_PATH)?.strip_prefix('/')?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// The answer for cluster `name` when this daemon shares the state and another daemon owns
/// it, or none does while Git declares it; `None` when this daemon answers.
fn elsewhere(op: &Operator, name: &str) -> Option<Response> {
    let view = op.sharing.get()?.borrow().clone();
    let name = crate::protocol::cut_text(name, crate::protocol::MAX_REFUSAL_TEXT_BYTES);
    match view.owners.get(&name) {
        Some(owner) if *owner == view.me => None,
        Some(owner) => {
            let daemon = view.daemons.iter().find(|d| d.id == *owner);
            if daemon.is_some_and(|d| d.silent) {
                return Some(retry(&format!(
                    "cluster {name} is owned by daemon {owner}, which has not renewed its lease for a few seconds; the cluster moves when that lease ends: retry"
                )));
            }
            let url = daemon.map_or("unknown", |d| d.agents_url.as_str());
            Some(api_error(
                StatusCode::CONFLICT,
                &format!(
                    "cluster {name} is owned by daemon {owner} (agents at {url}); ask that daemon"
                ),
            ))
        }
        // Claimed since the view was published: this daemon runs it.
        None if op
            .controller
            .get()
            .is_some_and(|c| c.status(&name).is_some()) =>
        {
            None
        }
        None => {
            let declared = crate::model::ClusterName::parse(&name)
                .is_ok_and(|n| op.desired.borrow().clusters.contains_key(&n));
            declared.then(|| {
                retry(&format!(
                    "cluster {name} has no owner now: it moves between daemons; retry"
                ))
            })
        }
    }
}

/// 503 with `Retry-After`: the cluster is between owners.
fn retry(message: &str) -> Response {
    let mut answer = api_error(StatusCode::SERVICE_UNAVAILABLE, message);
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    answer
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("API documents are JSON");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /v1/daemons`: the daemons sharing the state, their leases, and each cluster's owner;
/// 404 when this daemon shares its state with none.
async fn daemons(State(op): State<Arc<Operator>>) -> Response {
    match op.sharing.get() {
        Some(view) => json(&*view.borrow()),
        None => api_error(
            StatusCode::NOT_FOUND,
            "this daemon keeps its state in a directory: it shares the work with no other",
        ),
    }
}

fn starting() -> Response {
    api_error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is starting")
}

async fn clusters(State(op): State<Arc<Operator>>) -> Response {
    let Some(controller) = op.controller.get() else {
        return starting();
    };
    let mut clusters = controller.statuses();
    for status in &mut clusters {
        with_snapshots(&op, status);
    }
    json(&ClustersDocument {
        format_version: CLUSTERS_FORMAT_VERSION,
        source: source_view(&op),
        clusters,
    })
}

async fn cluster(State(op): State<Arc<Operator>>, Path(name): Path<String>) -> Response {
    let Some(controller) = op.controller.get() else {
        return starting();
    };
    match controller.status(&name) {
        Some(mut status) => {
            with_snapshots(&op, &mut status);
            json(&status)
        }
        None => not_found(&name),
    }
}

async fn reconcile(State(op): State<Arc<Operator>>, Path(name): Path<String>) -> Response {
    let Some(controller) = op.controller.get() else {
        return starting();
    };
    if controller.reconcile_now(&name) {
        (
            StatusCode::ACCEPTED,
            json(&serde_json::json!({"cluster": name})),
        )
            .into_response()
    } else {
        not_found(&name)
    }
}

async fn rotate(State(op): State<Arc<Operator>>, Path(name): Path<String>) -> Response {
    let Some(controller) = op.controller.get() else {
        return starting();
    };
    if controller.rotate_certificates(&name) {
        (
            StatusCode::ACCEPTED,
            json(&serde_json::json!({"cluster": name, "rotation": "requested"})),
        )
            .into_response()
    } else {
        not_found(&name)
    }
}

async fn node(
    State(op): State<Arc<Operator>>,
    Path((name, node)): Path<(String, String)>,
) -> Response {
    let Some(controller) = op.controller.get() else {
        return starting();
    };
    let hub = controller.hub();
    let Some(report) = hub.node_status(&name, &node) else {
        let node = crate::protocol::cut_text(&node, crate::protocol::MAX_REFUSAL_TEXT_BYTES);
        let name = crate::protocol::cut_text(&name, crate::protocol::MAX_REFUSAL_TEXT_BYTES);
        return api_error(
            StatusCode::NOT_FOUND,
            &format!("no node {node} is declared in cluster {name}"),
        );
    };
    let plan = hub.plan_of(&name, &node);
    json(&NodeView::of(&name, &node, plan, Some(report)))
}

/// Most bytes of a restore request's body.
const MAX_RESTORE_BODY_BYTES: usize = 4096;

async fn restore(
    State(op): State<Arc<Operator>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    use crate::api::snapshots::RestoreRequestBody;
    use crate::daemon::restore::RestoreRequestError;
    let Some(restores) = op.controller.get().and_then(|c| c.restores().cloned()) else {
        return starting();
    };
    let Ok(request) = serde_json::from_slice::<RestoreRequestBody>(&body) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"snapshot\": \"<snapshot id>\"}",
        );
    };
    let desired = op.desired.borrow().clone();
    let Some(entry) = crate::model::ClusterName::parse(&name)
        .ok()
        .and_then(|n| desired.clusters.get(&n).cloned())
    else {
        return not_found(&name);
    };
    let request_id = format!(
        "operator-{}",
        crate::snapshot::naming::new_id(std::time::SystemTime::now(), 0)
            .map(|id| id.to_string())
            .unwrap_or_default()
    );
    let asked = restores
        .request(
            entry.cluster.clone(),
            &request.snapshot,
            &request_id,
            "operator",
        )
        .await;
    match asked {
        Ok(_) => (
            StatusCode::ACCEPTED,
            json(&serde_json::json!({"cluster": name, "requestId": request_id})),
        )
            .into_response(),
        Err(e @ RestoreRequestError::Busy { .. }) => {
            api_error(StatusCode::CONFLICT, &crate::error_chain(&e))
        }
        Err(e @ RestoreRequestError::State(_)) => {
            api_error(StatusCode::INTERNAL_SERVER_ERROR, &crate::error_chain(&e))
        }
        Err(e) => api_error(StatusCode::UNPROCESSABLE_ENTITY, &crate::error_chain(&e)),
    }
}

async fn restores(State(op): State<Arc<Operator>>, Path(name): Path<String>) -> Response {
    let Some(restores) = op.controller.get().and_then(|c| c.restores().cloned()) else {
        return starting();
    };
    if op.controller.get().and_then(|c| c.status(&name)).is_none() {
        return not_found(&name);
    }
    match restores.list(&name).await {
        Ok(runs) => json(&crate::api::snapshots::RestoresDocument {
            cluster: name,
            restores: runs,
        }),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &crate::error_chain(&e)),
    }
}

/// The query of `GET .../restores/{request}`: answer once the run has more steps than this.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestoreWatch {
    #[serde(default)]
    after_steps: usize,
}

/// The longest `GET .../restores/{request}` waits for the run to move.
const RESTORE_WATCH_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn restore_run(
    State(op): State<Arc<Operator>>,
    Path((name, request)): Path<(String, String)>,
    axum::extract::Query(watch): axum::extract::Query<RestoreWatch>,
) -> Response {
    let Some(restores) = op.controller.get().and_then(|c| c.restores().cloned()) else {
        return starting();
    };
    if op.controller.get().and_then(|c| c.status(&name)).is_none() {
        return not_found(&name);
    }
    let run = restores
        .watch(&name, &request, watch.after_steps, RESTORE_WATCH_LIMIT)
        .await;
    match run {
        Ok(Some(run)) => json(&run),
        Ok(None) => api_error(
            StatusCode::NOT_FOUND,
            &format!(
                "cluster {name} has no restore {}",
                crate::protocol::cut_text(&request, crate::protocol::MAX_REFUSAL_TEXT_BYTES)
            ),
        ),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, &crate::error_chain(&e)),
    }
}

/// Adds the cluster's snapshots and their condition to its status.
pub(crate) fn with_snapshots(op: &Operator, status: &mut crate::api::ClusterStatus) {
    let Some(scheduler) = op.snapshots.get() else {
        return;
    };
    let desired = op.desired.borrow().clone();
    let entry = crate::model::ClusterName::parse(&status.name)
        .ok()
        .and_then(|name| desired.clusters.get(&name).cloned());
    if let Some(entry) = entry {
        scheduler.decorate(status, &entry, std::time::SystemTime::now());
    }
}

/// 404 for a cluster Git does not declare (another daemon's is answered by `at_owner`).
fn not_found(name: &str) -> Response {
    let name = crate::protocol::cut_text(name, crate::protocol::MAX_REFUSAL_TEXT_BYTES);
    api_error(
        StatusCode::NOT_FOUND,
        &format!("no cluster named {name} is declared in Git"),
    )
}

pub(crate) fn source_view(op: &Operator) -> SourceView {
    let status = op.source.borrow().clone();
    let desired = op.desired.borrow().clone();
    let at = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    SourceView {
        location: op.location.clone(),
        revision: status.revision.as_ref().map(ToString::to_string),
        last_check: status.last_check.map(at),
        error: status.last_error.as_ref().map(|e| e.message.clone()),
        diagnostics: desired
            .diagnostics
            .iter()
            .map(|d| d.render(desired.sources.get(&d.location.file).map(String::as_str)))
            .collect(),
    }
}
