//! A verdict on every commit: what became of it on each cluster, told where the commit lives.
//!
//! `Verdicts` follows every cluster's status and the source's head. For each cluster whose
//! desired revision is a commit it posts a commit status named `drover/<cluster>`: pending
//! while the revision rolls out, success once every node runs it healthy, failure when the
//! cluster is stalled; and failure on a head commit whose definition of a cluster is invalid
//! (the last good one stays). A status is posted once per change: the newest verdict of a
//! cluster replaces one still waiting to go. A forge that is down is retried with capped
//! backoff and never holds anything else up: the posts run in this task alone.

pub mod forge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::forge::{ForgeClient, State, Status};
use crate::api::{ClusterStatus, ConditionType};
use crate::backoff::Backoff;
use crate::daemon::controller::Controller;
use crate::source::{DesiredState, Revision};

/// The first wait after a failed post, and the longest.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);
/// Posts in flight at once.
const PARALLEL_POSTS: usize = 4;

/// The verdict on `status`'s desired revision, when it is a commit.
pub fn verdict(status: &ClusterStatus, dashboard: Option<&url::Url>) -> Option<Status> {
    let commit = status
        .desired_revision
        .as_deref()
        .filter(|r| is_commit(r))?;
    let name = &status.name;
    let holds = |kind| status.condition(kind).is_some_and(|c| c.status);
    let total = status.nodes.len();
    let ready = status.nodes.iter().filter(|n| n.ready).count();
    let (state, description) = if holds(ConditionType::Stalled) {
        let why = status
            .condition(ConditionType::Stalled)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        (State::Failure, format!("{name}: stalled: {why}"))
    } else if holds(ConditionType::Ready) && status.applied_revision.as_deref() == Some(commit) {
        (
            State::Success,
            format!("{name}: applied to {ready}/{total} nodes, healthy"),
        )
    } else {
        (
            State::Pending,
            format!("{name}: rolling out, {ready}/{total} nodes ready"),
        )
    };
    Some(Status {
        commit: commit.to_string(),
        state,
        context: context(name),
        description,
        target_url: link(dashboard, name),
    })
}

/// The verdict on a head commit whose definition of `cluster` is invalid.
pub fn held_back(cluster: &str, head: &str, dashboard: Option<&url::Url>) -> Status {
    Status {
        commit: head.to_string(),
        state: State::Failure,
        context: context(cluster),
        description: format!(
            "{cluster}: held back: this commit's definition is invalid (drover validate shows \
             why); the last good one stays"
        ),
        target_url: link(dashboard, cluster),
    }
}

fn context(cluster: &str) -> String {
    format!("drover/{cluster}")
}

fn link(dashboard: Option<&url::Url>, cluster: &str) -> Option<String> {
    let base = dashboard?.as_str().trim_end_matches('/');
    Some(format!("{base}/clusters/{cluster}"))
}

fn is_commit(revision: &str) -> bool {
    matches!(revision.len(), 40 | 64) && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Every verdict the daemon's state calls for now, by status context.
fn verdicts(
    statuses: &[ClusterStatus],
    desired: &DesiredState,
    dashboard: Option<&url::Url>,
) -> BTreeMap<String, Status> {
    let mut out = BTreeMap::new();
    for status in statuses {
        if let Some(v) = verdict(status, dashboard) {
            out.insert(v.context.clone(), v);
        }
    }
    if let Some(Revision::Commit(head)) = &desired.revision {
        for name in desired.held_back() {
            let v = held_back(name.as_str(), head, dashboard);
            out.insert(format!("{}@{head}", v.context), v);
        }
    }
    out
}

/// A status waiting to be posted.
struct Waiting {
    status: Status,
    due: Instant,
    backoff: Backoff,
}

/// Posts the verdicts of the daemon's clusters on the forge.
pub struct Verdicts {
    client: ForgeClient,
    dashboard: Option<url::Url>,
    /// What was last posted (or given up on), by key.
    posted: BTreeMap<String, Status>,
    waiting: BTreeMap<String, Waiting>,
}

impl Verdicts {
    pub fn new(client: ForgeClient, dashboard: Option<url::Url>) -> Verdicts {
        Verdicts {
            client,
            dashboard,
            posted: BTreeMap::new(),
            waiting: BTreeMap::new(),
        }
    }

    /// Follows the clusters' statuses and the source until `cancel`.
    pub async fn run(
        mut self,
        controller: Arc<Controller>,
        mut desired: watch::Receiver<Arc<DesiredState>>,
        cancel: CancellationToken,
    ) {
        let mut changes = controller.changes();
        loop {
            changes.borrow_and_update();
            let state = desired.borrow_and_update().clone();
            self.want(verdicts(
                &controller.statuses(),
                &state,
                self.dashboard.as_ref(),
            ));
            self.post_due().await;
            let next = self.waiting.values().map(|w| w.due).min();
            let sleep = async {
                match next {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                changed = desired.changed() => if changed.is_err() { return },
                () = sleep => {}
            }
        }
    }

    /// Queues every verdict that differs from what was posted; a newer verdict replaces one
    /// still waiting under the same key.
    fn want(&mut self, verdicts: BTreeMap<String, Status>) {
        self.posted.retain(|key, _| verdicts.contains_key(key));
        for (key, status) in verdicts {
            if self.posted.get(&key) == Some(&status) {
                self.waiting.remove(&key);
                continue;
            }
            match self.waiting.get_mut(&key) {
                Some(w) if w.status == status => {}
                Some(w) => w.status = status,
                None => {
                    let backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
                    let due = Instant::now();
                    self.waiting.insert(
                        key,
                        Waiting {
                            status,
                            due,
                            backoff,
                        },
                    );
                }
            }
        }
    }

    /// Posts what is due, a few at once; a transient failure waits its backoff.
    async fn post_due(&mut self) {
        use futures::StreamExt as _;
        let now = Instant::now();
        let due: Vec<(String, Status)> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(k, w)| (k.clone(), w.status.clone()))
            .collect();
        let client = &self.client;
        let outcomes: Vec<_> = futures::stream::iter(due)
            .map(|(key, status)| async move {
                let outcome = client.post(&status).await;
                (key, status, outcome)
            })
            .buffer_unordered(PARALLEL_POSTS)
            .collect()
            .await;
        for (key, status, outcome) in outcomes {
            self.posted_one(key, status, outcome);
        }
    }

    fn posted_one(&mut self, key: String, status: Status, outcome: Result<(), forge::ForgeError>) {
        let replaced = self.waiting.get(&key).is_some_and(|w| w.status != status);
        match outcome {
            Ok(()) => {
                tracing::debug!(commit = status.commit, context = status.context, state = ?status.state, "commit status posted");
            }
            Err(e) if e.is_transient() => {
                if let Some(w) = self.waiting.get_mut(&key) {
                    let wait = w.backoff.next_delay().max(RETRY_BASE);
                    w.due = Instant::now() + wait;
                    tracing::warn!(commit = status.commit, context = status.context, attempt = w.backoff.attempt(), retry_in = ?wait, error = %crate::error_chain(&e), "cannot post a commit status; trying again");
                }
                return;
            }
            Err(e) => {
                tracing::error!(commit = status.commit, context = status.context, error = %crate::error_chain(&e), "the forge refused a commit status; the next verdict tries again");
            }
        }
        self.posted.insert(key.clone(), status);
        if !replaced {
            self.waiting.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
