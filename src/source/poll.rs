//! The poll loop of a [`GitSource`]: check the remote every interval (with jitter), at once when
//! a [`Trigger`] fires, and with exponential backoff while checks fail. Each check runs on
//! `spawn_blocking` within the policy's timeout and updates the published status and state.

use std::collections::BTreeSet;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use git2::Oid;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::approval::Approvals;
use super::remote::{GitError, Mirror, Polled};
use super::state::{DesiredState, ErrorReason, LastGood, Revision, SourceStatus, StatusError};
use super::{GitRef, GitSourceConfig, PollPolicy};
use crate::error_chain;
use crate::model::{load_sources, Repository};

/// Asks a source for an immediate check. Cheap to clone; any number of calls made before the
/// source gets to them coalesce into one check.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    pub fn fire(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn fired(&self) {
        self.0.notified().await;
    }
}

/// Watches one ref of one remote and publishes its desired state.
pub struct GitSource {
    config: GitSourceConfig,
    mirror: Mirror,
    trigger: Trigger,
    last_good: LastGood,
    /// The commit the published state was loaded from.
    loaded: Option<Oid>,
    desired: watch::Sender<Arc<DesiredState>>,
    status: watch::Sender<SourceStatus>,
}

/// A failed check: a git error or a timeout.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("the check took longer than {0:?}")]
    Timeout(Duration),
    #[error("the git task panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

impl CheckError {
    /// The one place git errors map to status reasons.
    fn reason(&self) -> ErrorReason {
        match self {
            Self::Git(GitError::Connect { .. }) => ErrorReason::Unreachable,
            Self::Git(GitError::Auth { .. }) => ErrorReason::Auth,
            Self::Git(GitError::HostKey { .. }) => ErrorReason::HostKey,
            Self::Git(GitError::RefNotFound { .. }) => ErrorReason::RefNotFound,
            Self::Git(GitError::CommitMissing { .. } | GitError::BadCommitId { .. }) => {
                ErrorReason::CommitMissing
            }
            Self::Git(GitError::Fetch { .. }) => ErrorReason::Fetch,
            Self::Git(GitError::Tree { .. } | GitError::ClustersDirMissing { .. }) => {
                ErrorReason::Tree
            }
            Self::Git(GitError::Mirror { .. } | GitError::Note { .. } | GitError::Push { .. })
            | Self::Panicked(_) => ErrorReason::Local,
            Self::Timeout(_) | Self::Git(GitError::Busy) => ErrorReason::Timeout,
        }
    }
}

/// What a successful check found.
enum Checked {
    Unchanged,
    Changed {
        commit: Oid,
        loaded: Repository,
        /// The plan digests the commit approves.
        approvals: Approvals,
        present: BTreeSet<String>,
        force_pushed: bool,
        received_bytes: usize,
        /// Listing refs and fetching; reading and loading the files.
        fetch_time: Duration,
        load_time: Duration,
    },
}

impl GitSource {
    /// Opens (or creates) the mirror under the state directory. Blocks briefly on the disk.
    pub fn new(config: GitSourceConfig) -> Result<Self, GitError> {
        let mirror = Mirror::open(
            &config.state_dir,
            config.url.clone(),
            config.auth.clone(),
            &config.reference,
        )?;
        let (desired, _) = watch::channel(Arc::new(DesiredState::default()));
        let (status, _) = watch::channel(SourceStatus::default());
        Ok(Self {
            config,
            mirror,
            trigger: Trigger::default(),
            last_good: LastGood::default(),
            loaded: None,
            desired,
            status,
        })
    }

    /// The mirror, for writing notes on the commits it follows (it serialises its users).
    pub fn mirror(&self) -> Mirror {
        self.mirror.clone()
    }

    /// A handle that makes the loop check at once (webhooks use it).
    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    pub fn desired(&self) -> watch::Receiver<Arc<DesiredState>> {
        self.desired.subscribe()
    }

    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// Checks until `cancel` fires: at once, then every interval, on every trigger, and with
    /// backoff while checks fail.
    pub async fn run(mut self, cancel: CancellationToken) {
        let url = self.config.url.as_git_url();
        tracing::info!(%url, reference = ?self.config.reference, mirror = %self.mirror.path().display(), "git source started");
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = self.check() => {}
            }
            let failures = self.status.borrow().consecutive_failures;
            let delay = next_delay(&self.config.poll, failures, random_unit());
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = self.trigger.fired() => tracing::debug!("check triggered"),
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(%url, "git source stopped");
    }

    /// One check: list refs, fetch and load if the ref moved, publish.
    pub async fn check(&mut self) -> bool {
        let started = SystemTime::now();
        let result = self.check_blocking().await;
        let mut changed = false;
        match result {
            Ok(Checked::Unchanged) => {
                tracing::debug!(revision = ?self.loaded.map(|o| o.to_string()), "no change");
                self.record(started, None, false);
            }
            Ok(Checked::Changed {
                commit,
                loaded,
                approvals,
                present,
                force_pushed,
                received_bytes,
                fetch_time,
                load_time,
            }) => {
                let revision = Revision::Commit(commit.to_string());
                if force_pushed {
                    tracing::warn!(
                        previous = ?self.loaded.map(|o| o.to_string()),
                        %revision,
                        "force-push: the new commit does not descend from the last one; it is the new desired state"
                    );
                }
                let state = self
                    .last_good
                    .advance(revision.clone(), loaded, &present, approvals);
                let held: Vec<&str> = state.held_back().map(|n| n.as_str()).collect();
                if held.is_empty() {
                    tracing::info!(
                        %revision,
                        clusters = state.clusters.len(),
                        received_bytes,
                        fetch_ms = fetch_time.as_millis() as u64,
                        load_ms = load_time.as_millis() as u64,
                        "new revision"
                    );
                } else {
                    tracing::warn!(
                        %revision,
                        clusters = state.clusters.len(),
                        held_back = ?held,
                        diagnostics = state.diagnostics.len(),
                        "new revision; clusters whose files fail to load keep their last good definition"
                    );
                }
                self.desired.send_replace(Arc::new(state.clone()));
                self.loaded = Some(commit);
                changed = true;
                self.record(started, None, true);
            }
            Err(error) => {
                let failures = self.status.borrow().consecutive_failures + 1;
                let message = error_chain(&error);
                tracing::warn!(reason = ?error.reason(), failures, error = %message, "source check failed; desired state unchanged");
                let status_error = StatusError {
                    reason: error.reason(),
                    message,
                    at: started,
                };
                self.record(started, Some(status_error), false);
            }
        }
        changed
    }

    fn record(&self, at: SystemTime, error: Option<StatusError>, changed: bool) {
        let revision = self.loaded.map(|o| Revision::Commit(o.to_string()));
        self.status.send_modify(|status| {
            status.checks += 1;
            status.last_check = Some(at);
            status.revision = revision;
            if changed {
                status.changes += 1;
                status.last_change = Some(at);
            }
            match error {
                Some(error) => {
                    status.consecutive_failures += 1;
                    status.last_error = Some(error);
                }
                None => {
                    status.consecutive_failures = 0;
                    status.last_error = None;
                }
            }
        });
    }

    async fn check_blocking(&self) -> Result<Checked, CheckError> {
        let mirror = self.mirror.clone();
        let reference = self.config.reference.clone();
        let subdir = self.config.subdir.clone();
        let clusters_dir = self.config.clusters_dir.clone();
        let last = self.loaded;
        let task = tokio::task::spawn_blocking(move || {
            check_remote(&mirror, &reference, subdir.as_deref(), &clusters_dir, last)
        });
        let limit = self.config.poll.timeout;
        match tokio::time::timeout(limit, task).await {
            Err(_elapsed) => Err(CheckError::Timeout(limit)),
            Ok(Err(join)) => Err(CheckError::Panicked(join)),
            Ok(Ok(result)) => result.map_err(CheckError::Git),
        }
    }
}

/// The blocking body of a check.
fn check_remote(
    mirror: &Mirror,
    reference: &GitRef,
    subdir: Option<&str>,
    clusters_dir: &str,
    last: Option<Oid>,
) -> Result<Checked, GitError> {
    let started = Instant::now();
    let fetched = match mirror.poll(reference, last)? {
        Polled::Unchanged => return Ok(Checked::Unchanged),
        Polled::Fetched(fetched) if Some(fetched.commit) == last => return Ok(Checked::Unchanged),
        Polled::Fetched(fetched) => fetched,
    };
    let fetch_time = started.elapsed();
    let force_pushed = last.is_some_and(|old| !mirror.is_descendant(fetched.commit, old));
    let (files, diagnostics) = mirror.read_files(fetched.commit, subdir, clusters_dir)?;
    let present = files.iter().map(|f| f.path.clone()).collect();
    let loaded = load_sources(files, diagnostics);
    let approvals = mirror.approvals(fetched.commit, subdir)?;
    Ok(Checked::Changed {
        commit: fetched.commit,
        loaded,
        approvals,
        present,
        force_pushed,
        received_bytes: fetched.received_bytes,
        fetch_time,
        load_time: started.elapsed() - fetch_time,
    })
}

/// The wait before the next check. `failures` is the count of consecutive failed checks;
/// `unit` is a random number in `[0, 1)`.
///
/// While checks succeed: `interval`, plus or minus `jitter * interval`. After `n` failures:
/// `backoff_min * 2^(n-1)`, capped at `backoff_max`, then scaled into its upper half at random
/// (so failing sources spread out but never retry faster than half the step).
pub fn next_delay(policy: &PollPolicy, failures: u32, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    if failures == 0 {
        let jitter = policy.jitter.clamp(0.0, 1.0);
        return policy.interval.mul_f64(1.0 + jitter * (2.0 * unit - 1.0));
    }
    let step = crate::backoff::ceiling(policy.backoff_min, policy.backoff_max, failures - 1);
    step.mul_f64(0.5 + 0.5 * unit)
}

/// A random number in `[0, 1)` from std's randomly keyed hasher: enough to spread polls.
fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PollPolicy {
        PollPolicy {
            interval: Duration::from_secs(60),
            jitter: 0.1,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn interval_with_jitter_stays_in_its_band() {
        let p = policy();
        assert_eq!(next_delay(&p, 0, 0.0), Duration::from_secs(54));
        assert_eq!(next_delay(&p, 0, 0.5), Duration::from_secs(60));
        assert!(next_delay(&p, 0, 0.999_999) <= Duration::from_secs(66));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = policy();
        let top = |n| next_delay(&p, n, 1.0);
        assert_eq!(top(1), Duration::from_secs(1));
        assert_eq!(top(2), Duration::from_secs(2));
        assert_eq!(top(5), Duration::from_secs(16));
        assert_eq!(top(9), Duration::from_secs(256));
        assert_eq!(top(10), Duration::from_secs(300));
        assert_eq!(top(u32::MAX), Duration::from_secs(300));
        assert_eq!(next_delay(&p, 3, 0.0), Duration::from_secs(2));
    }

    #[test]
    fn random_unit_is_a_unit() {
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    /// The loop with paused time: a trigger cuts the interval short, and a burst of triggers
    /// while a check runs coalesces into one more check.
    #[tokio::test(start_paused = true)]
    async fn triggers_coalesce() {
        let trigger = Trigger::default();
        for _ in 0..10 {
            trigger.fire();
        }
        // One stored permit: the first wait returns at once, the second waits.
        tokio::time::timeout(Duration::from_millis(1), trigger.fired())
            .await
            .expect("a fired trigger wakes the loop");
        let second = tokio::time::timeout(Duration::from_secs(3600), trigger.fired()).await;
        assert!(second.is_err(), "ten fires made more than one wake-up");
    }
}
