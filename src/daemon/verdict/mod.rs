//! A verdict on every commit: what became of it on each cluster, told where the commit lives.
//!
//! `Verdicts` follows every cluster's status and the source's head. For each cluster whose
//! desired revision is a commit it posts a commit status named `drover/<cluster>`: pending
//! while the revision rolls out, success once every node runs it healthy, failure when the
//! cluster is stalled; and failure on a head commit whose definition of a cluster is invalid
//! (the last good one stays). A status is posted once per change: the newest verdict of a
//! cluster replaces one still waiting to go. A forge that is down is retried with capped
//! backoff and never holds anything else up: the posts run in this task alone.
//!
//! With notes on, the same verdicts are written as a note on each commit under
//! `refs/notes/drover` (a line per cluster) and pushed to the source's remote, on top of the
//! notes already there.

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
use crate::source::{Mirror, NOTES_REF};

/// The first wait after a failed post, and the longest.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);
/// Posts in flight at once.
const PARALLEL_POSTS: usize = 4;
/// The longest a note's fetch, write and push may take.
const NOTE_TIMEOUT: Duration = Duration::from_secs(60);

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
        let stalled = status.condition(ConditionType::Stalled);
        let why = stalled.map(|c| c.message.clone()).unwrap_or_default();
        let how = match status.hold {
            Some(_) => "held",
            None => "stalled",
        };
        (State::Failure, format!("{name}: {how}: {why}"))
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

/// The note on each commit that has a verdict: a line per cluster, by commit.
fn notes(verdicts: &BTreeMap<String, Status>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for v in verdicts.values() {
        let state = match v.state {
            State::Pending => "pending",
            State::Success => "success",
            State::Failure => "failure",
        };
        let line = format!("{} {state}: {}\n", v.context, v.description);
        out.entry(v.commit.clone()).or_default().push_str(&line);
    }
    out
}

/// What became of one delivery.
enum Delivery {
    Posted,
    /// Worth trying again later.
    Retry(String),
    /// Not worth trying again until what is wanted changes.
    Refused(String),
}

/// Something waiting to be delivered.
struct Waiting<T> {
    item: T,
    due: Instant,
    backoff: Backoff,
}

/// Deliveries by key: each change delivered once, a newer one replacing one still waiting,
/// a failure worth retrying waiting its backoff.
struct Outbox<T> {
    /// What was last delivered (or refused), by key.
    posted: BTreeMap<String, T>,
    waiting: BTreeMap<String, Waiting<T>>,
}

impl<T: Clone + PartialEq> Outbox<T> {
    fn new() -> Outbox<T> {
        Outbox {
            posted: BTreeMap::new(),
            waiting: BTreeMap::new(),
        }
    }

    fn want(&mut self, wanted: BTreeMap<String, T>) {
        self.posted.retain(|key, _| wanted.contains_key(key));
        for (key, item) in wanted {
            if self.posted.get(&key) == Some(&item) {
                self.waiting.remove(&key);
                continue;
            }
            match self.waiting.get_mut(&key) {
                Some(w) => w.item = item,
                None => {
                    let backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
                    let due = Instant::now();
                    self.waiting.insert(key, Waiting { item, due, backoff });
                }
            }
        }
    }

    fn due(&self) -> Vec<(String, T)> {
        let now = Instant::now();
        self.waiting
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(k, w)| (k.clone(), w.item.clone()))
            .collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.due).min()
    }

    /// Records what became of delivering `item` under `key`; the wait before the next try
    /// when it is to be retried.
    fn done(&mut self, key: String, item: T, delivery: &Delivery) -> Option<Duration> {
        if let Delivery::Retry(_) = delivery {
            let w = self.waiting.get_mut(&key)?;
            let wait = w.backoff.next_delay().max(RETRY_BASE);
            w.due = Instant::now() + wait;
            return Some(wait);
        }
        let replaced = self.waiting.get(&key).is_some_and(|w| w.item != item);
        if !replaced {
            self.waiting.remove(&key);
        }
        self.posted.insert(key, item);
        None
    }
}

/// Where the verdicts go: the forge's commit statuses, and notes on the commits.
pub struct Verdicts {
    forge: Option<ForgeClient>,
    notes: Option<Mirror>,
    dashboard: Option<url::Url>,
    statuses: Outbox<Status>,
    commit_notes: Outbox<String>,
}

impl Verdicts {
    pub fn new(
        forge: Option<ForgeClient>,
        notes: Option<Mirror>,
        dashboard: Option<url::Url>,
    ) -> Verdicts {
        Verdicts {
            forge,
            notes,
            dashboard,
            statuses: Outbox::new(),
            commit_notes: Outbox::new(),
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
            let wanted = verdicts(&controller.statuses(), &state, self.dashboard.as_ref());
            if self.notes.is_some() {
                self.commit_notes.want(notes(&wanted));
            }
            if self.forge.is_some() {
                self.statuses.want(wanted);
            }
            self.post_due().await;
            self.note_due().await;
            let next = [self.statuses.next_due(), self.commit_notes.next_due()]
                .into_iter()
                .flatten()
                .min();
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

    /// Posts the statuses that are due, a few at once.
    async fn post_due(&mut self) {
        use futures::StreamExt as _;
        let Some(client) = &self.forge else { return };
        let outcomes: Vec<_> = futures::stream::iter(self.statuses.due())
            .map(|(key, status)| async move {
                let delivery = match client.post(&status).await {
                    Ok(()) => Delivery::Posted,
                    Err(e) if e.is_transient() => Delivery::Retry(crate::error_chain(&e)),
                    Err(e) => Delivery::Refused(crate::error_chain(&e)),
                };
                (key, status, delivery)
            })
            .buffer_unordered(PARALLEL_POSTS)
            .collect()
            .await;
        for (key, status, delivery) in outcomes {
            let retry = self.statuses.done(key, status.clone(), &delivery);
            log(
                "commit status",
                &status.commit,
                &status.context,
                &delivery,
                retry,
            );
        }
    }

    /// Writes and pushes the notes that are due, one at a time (they share the mirror).
    async fn note_due(&mut self) {
        let Some(mirror) = &self.notes else { return };
        for (commit, text) in self.commit_notes.due() {
            let delivery = push_note(mirror.clone(), &commit, &text).await;
            let retry = self.commit_notes.done(commit.clone(), text, &delivery);
            log("note", &commit, NOTES_REF, &delivery, retry);
        }
    }
}

/// Writes `text` as the note on `commit` and pushes it, off the async workers.
async fn push_note(mirror: Mirror, commit: &str, text: &str) -> Delivery {
    let Ok(oid) = git2::Oid::from_str(commit) else {
        return Delivery::Refused(format!("{commit} is not a commit id"));
    };
    let text = text.to_string();
    let task = tokio::task::spawn_blocking(move || mirror.push_note(oid, &text));
    match tokio::time::timeout(NOTE_TIMEOUT, task).await {
        Ok(Ok(Ok(()))) => Delivery::Posted,
        Ok(Ok(Err(e))) => Delivery::Retry(crate::error_chain(&e)),
        Ok(Err(e)) => Delivery::Retry(format!("the git task failed: {e}")),
        Err(_) => Delivery::Retry(format!("no answer within {NOTE_TIMEOUT:?}")),
    }
}

fn log(what: &str, commit: &str, at: &str, delivery: &Delivery, retry: Option<Duration>) {
    match (delivery, retry) {
        (Delivery::Posted, _) => tracing::debug!(commit, at, "{what} posted"),
        (Delivery::Retry(error), Some(wait)) => {
            tracing::warn!(commit, at, retry_in = ?wait, error, "cannot post the {what}; trying again")
        }
        (Delivery::Retry(_), None) => {}
        (Delivery::Refused(error), _) => {
            tracing::error!(
                commit,
                at,
                error,
                "the {what} was refused; the next verdict tries again"
            )
        }
    }
}

#[cfg(test)]
mod tests;
