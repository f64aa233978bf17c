//! The operator API's snapshot routes (documents in `api::snapshots`), behind the operator
//! token like every route of the operator API. `newest` stands for the newest snapshot's id.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;

use super::{views, RequestError, Scheduler};
use crate::api::snapshots::{SnapshotsDocument, SNAPSHOTS_FORMAT_VERSION};
use crate::api::CLUSTERS_PATH;
use crate::server::api_error;

/// The scheduler, set once the daemon made it.
pub type Cell = Arc<OnceLock<Arc<Scheduler>>>;

pub fn router(cell: Cell) -> Router {
    let at = |tail: &str| format!("{CLUSTERS_PATH}/{{name}}/snapshots{tail}");
    Router::new()
        .route(&at(""), post(save).get(list))
        .route(&at("/prune"), post(prune))
        .route(&at("/{id}/verify"), post(verify))
        .with_state(cell)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PruneQuery {
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyQuery {
    #[serde(default)]
    deep: bool,
}

async fn list(State(cell): State<Cell>, Path(name): Path<String>) -> Response {
    let Some(scheduler) = cell.get() else {
        return starting();
    };
    let (manifests, record) = match scheduler.list(&name).await {
        Ok(listed) => listed,
        Err(e) => return refused(&e),
    };
    let desired = scheduler.desired.borrow().clone();
    let entry = crate::model::ClusterName::parse(&name)
        .ok()
        .and_then(|n| desired.clusters.get(&n).cloned());
    let schedule = entry.and_then(|e| scheduler.schedule_of(&e, std::time::SystemTime::now()));
    let snapshots = manifests
        .iter()
        .map(|m| views::snapshot(m, record.of(m.id.as_str()).cloned()))
        .collect();
    crate::daemon::operator::json(&SnapshotsDocument {
        format_version: SNAPSHOTS_FORMAT_VERSION,
        cluster: name,
        schedule,
        snapshots,
    })
}

async fn save(State(cell): State<Cell>, Path(name): Path<String>) -> Response {
    let Some(scheduler) = cell.get() else {
        return starting();
    };
    match scheduler.save_now(&name).await {
        Ok(manifest) => (
            StatusCode::CREATED,
            crate::daemon::operator::json(&views::snapshot(&manifest, None)),
        )
            .into_response(),
        Err(e) => refused(&e),
    }
}

async fn prune(
    State(cell): State<Cell>,
    Path(name): Path<String>,
    Query(query): Query<PruneQuery>,
) -> Response {
    let Some(scheduler) = cell.get() else {
        return starting();
    };
    match scheduler.prune_now(&name, query.dry_run).await {
        Ok(report) => crate::daemon::operator::json(&views::prune(&name, &report)),
        Err(e) => refused(&e),
    }
}

async fn verify(
    State(cell): State<Cell>,
    Path((name, id)): Path<(String, String)>,
    Query(query): Query<VerifyQuery>,
) -> Response {
    let Some(scheduler) = cell.get() else {
        return starting();
    };
    let id = (id != "newest").then_some(id.as_str());
    let verified = if query.deep {
        scheduler.verify_deep(&name, id).await
    } else {
        scheduler.verify(&name, id).await
    };
    match verified {
        Ok(verification) => crate::daemon::operator::json(&verification),
        Err(e) => refused(&e),
    }
}

fn starting() -> Response {
    api_error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is starting")
}

/// The status and message of a request that could not be done.
fn refused(e: &RequestError) -> Response {
    let status = match e {
        RequestError::UnknownCluster(_)
        | RequestError::NoSnapshot(_)
        | RequestError::Download(crate::snapshot::download::DownloadError::NotFound { .. }) => {
            StatusCode::NOT_FOUND
        }
        RequestError::NoPolicy(_) | RequestError::NoStore { .. } | RequestError::BadId(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        RequestError::Busy(_) | RequestError::Restoring(_) => StatusCode::CONFLICT,
        RequestError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::Take(_)
        | RequestError::Store(_)
        | RequestError::Download(_)
        | RequestError::State(_) => StatusCode::BAD_GATEWAY,
    };
    api_error(status, &crate::error_chain(e))
}
