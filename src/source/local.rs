//! Local mode: a working tree on disk, watched with `notify`, is the desired state.
//!
//! The tree is read **as it is on disk, uncommitted and untracked files included**; nothing
//! is fetched and no commit is involved. Events are debounced (a quiet period of
//! [`DEBOUNCE`], at most [`DEBOUNCE_MAX`] after the first event), so an edit is the new desired
//! state well within a second. A slow periodic rescan backs up the watcher. Broken files keep
//! their clusters at the last good definition, exactly as in Git mode.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::approval::{self, Approvals, APPROVALS_FILE};
use super::state::{DesiredState, ErrorReason, LastGood, Revision, SourceStatus, StatusError};
use crate::error_chain;
use crate::model::load::load_dir;

/// Quiet time after the last filesystem event before the tree is read.
pub const DEBOUNCE: Duration = Duration::from_millis(75);
/// Longest wait after the first event of a burst, however busy the tree is.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(400);

/// Why local mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot watch {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Watches a working tree and publishes its desired state.
pub struct LocalSource {
    root: PathBuf,
    clusters_dir: String,
    rescan: Duration,
    last_good: LastGood,
    generation: u64,
    /// What the last load read: its diagnostics and each cluster's definition digest.
    last_read: Option<Fingerprint>,
    desired: watch::Sender<Arc<DesiredState>>,
    status: watch::Sender<SourceStatus>,
}

impl LocalSource {
    /// `root` holds `clusters_dir`; `rescan` is the fallback period when no event arrives.
    pub fn new(root: PathBuf, clusters_dir: String, rescan: Duration) -> Self {
        let (desired, _) = watch::channel(Arc::new(DesiredState::default()));
        let (status, _) = watch::channel(SourceStatus::default());
        Self {
            root,
            clusters_dir,
            rescan,
            last_good: LastGood::default(),
            generation: 0,
            last_read: None,
            desired,
            status,
        }
    }

    pub fn desired(&self) -> watch::Receiver<Arc<DesiredState>> {
        self.desired.subscribe()
    }

    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// Reads the tree, then again after every debounced change, until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), LocalError> {
        let changed = Arc::new(Notify::new());
        let notifier = Arc::clone(&changed);
        // The watcher calls back on its own thread; a Notify holds at most one wake-up, so
        // nothing queues up however many events arrive.
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| changes_content(&e.kind)) {
                    notifier.notify_one();
                }
            })
            .map_err(|source| self.watch_error(source))?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|source| self.watch_error(source))?;
        tracing::info!(root = %self.root.display(), "watching the working tree (uncommitted files included)");
        loop {
            self.reload().await;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = changed.notified() => {
                    if !debounce(&changed, &cancel).await {
                        break;
                    }
                }
                () = tokio::time::sleep(self.rescan) => {}
            }
        }
        drop(watcher);
        tracing::info!(root = %self.root.display(), "stopped watching the working tree");
        Ok(())
    }

    fn watch_error(&self, source: notify::Error) -> LocalError {
        LocalError::Watch {
            path: self.root.clone(),
            source,
        }
    }

    async fn reload(&mut self) {
        let root = self.root.clone();
        let clusters_dir = self.clusters_dir.clone();
        let started = SystemTime::now();
        let result = tokio::task::spawn_blocking(move || {
            let present = present_files(&root, &clusters_dir);
            let approvals = read_approvals(&root);
            load_dir(&root, &clusters_dir).map(|loaded| (loaded, present, approvals))
        })
        .await;
        match result {
            Ok(Ok((loaded, present, approvals))) => {
                let read = fingerprint(&loaded, &approvals);
                if self.last_read.as_ref() == Some(&read) {
                    self.status.send_modify(|s| {
                        s.checks += 1;
                        s.last_check = Some(started);
                    });
                    return;
                }
                self.last_read = Some(read);
                self.generation += 1;
                let revision = Revision::WorkTree(self.generation);
                let state = self
                    .last_good
                    .advance(revision.clone(), loaded, &present, approvals);
                tracing::info!(%revision, clusters = state.clusters.len(), diagnostics = state.diagnostics.len(), "working tree loaded");
                self.desired.send_replace(Arc::new(state.clone()));
                self.status.send_modify(|s| {
                    s.checks += 1;
                    s.changes += 1;
                    s.last_check = Some(started);
                    s.last_change = Some(started);
                    s.revision = Some(revision);
                    s.consecutive_failures = 0;
                    s.last_error = None;
                });
            }
            Ok(Err(error)) => self.fail(started, &error),
            Err(join) => self.fail(started, &join),
        }
    }

    fn fail(&self, at: SystemTime, error: &dyn std::error::Error) {
        let message = error_chain(error);
        tracing::warn!(root = %self.root.display(), error = %message, "cannot read the working tree; desired state unchanged");
        self.status.send_modify(|s| {
            s.checks += 1;
            s.last_check = Some(at);
            s.consecutive_failures += 1;
            s.last_error = Some(StatusError {
                reason: ErrorReason::Local,
                message,
                at,
            });
        });
    }
}

/// What a load read, to tell a change from an event that changed nothing the loader sees
/// (a write to `.git/`, a rescan).
type Fingerprint = (
    Vec<crate::model::diagnostic::Diagnostic>,
    Vec<(String, String)>,
    Approvals,
);

fn fingerprint(loaded: &crate::model::Repository, approvals: &Approvals) -> Fingerprint {
    let clusters = loaded
        .clusters
        .iter()
        .map(|c| (c.name.to_string(), c.source.digest.clone()))
        .collect();
    (loaded.diagnostics.clone(), clusters, approvals.clone())
}

/// The reviewed-digest file's approvals; a working tree has no commit message. At most one
/// byte more than the file's limit is read, so an oversized file approves nothing.
fn read_approvals(root: &Path) -> Approvals {
    use std::io::Read as _;
    let mut text = String::new();
    let read = std::fs::File::open(root.join(APPROVALS_FILE)).and_then(|file| {
        file.take(approval::MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)
    });
    Approvals::read(None, read.ok().map(|_| text.as_str()))
}

/// Waits until events stop for [`DEBOUNCE`] (at most [`DEBOUNCE_MAX`]). False if cancelled.
async fn debounce(changed: &Notify, cancel: &CancellationToken) -> bool {
    let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep_until(deadline) => return true,
            () = changed.notified() => continue,
            () = tokio::time::sleep(DEBOUNCE) => return true,
        }
    }
}

/// The cluster file paths under `root/clusters_dir`, named as `load_dir` names them.
fn present_files(root: &Path, clusters_dir: &str) -> BTreeSet<String> {
    walkdir::WalkDir::new(root.join(clusters_dir))
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let rel = e.path().strip_prefix(root).ok()?;
            Some(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            )
        })
        .collect()
}

/// Whether a watcher event may mean a changed tree. Opening or reading a file does not: the
/// reload's own reads would otherwise wake it again, forever.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RemoveKind,
        RenameMode,
    };

    #[test]
    fn only_events_that_may_change_the_tree_wake_the_reload() {
        let cases = [
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Read), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), true),
            (EventKind::Remove(RemoveKind::File), true),
            (EventKind::Any, true),
        ];
        for (kind, wakes) in cases {
            assert_eq!(super::changes_content(&kind), wakes, "{kind:?}");
        }
    }
}
