//! The Git source against real remotes: `file://`, smart HTTP (nginx + git-http-backend with
//! basic auth) and SSH (sshd with a test key), plus webhooks on a loopback listener and local
//! mode on a real directory. Every wait is bounded and says what hung.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use drover::source::webhook::{self, WebhookSecrets, WebhookStats};
use drover::source::{
    Auth, DesiredState, ErrorReason, GitRef, GitSource, GitSourceConfig, LocalSource, PollPolicy,
    RemoteUrl, Revision, Secret, SourceStatus, Trigger,
};
use git2::Oid;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::git::TestRepo;
use crate::support::git_remote::{HttpRemote, SshRemote};
use crate::support::logs::capture_logs;
use crate::support::net::unique_loopback;
use crate::support::require;
use crate::support::wait::eventually;

/// Bound on every wait for the source to reach a state.
const WAIT: Duration = Duration::from_secs(15);

// --- cluster files ------------------------------------------------------------------------

/// A valid cluster with one etcd/control-plane node and `workers` workers: the worker count is
/// how a test tells two versions of a cluster apart.
fn cluster_yaml(name: &str, workers: usize) -> String {
    let mut text = format!(
        "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  nodes:\n    - {{name: n0, address: 127.0.0.2, roles: [etcd, controlplane]}}\n"
    );
    for i in 1..=workers {
        text.push_str(&format!(
            "    - {{name: w{i}, address: 127.0.1.{i}, roles: [worker]}}\n"
        ));
    }
    text.push_str("  etcd: {image: drover-test/etcd:3.4.23}\n");
    text
}

/// A cluster file that fails validation (an unknown role).
fn broken_yaml(name: &str) -> String {
    format!(
        "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  nodes:\n    - {{name: n0, address: 127.0.0.2, roles: [etcd, master]}}\n  etcd: {{image: drover-test/etcd:3.4.23}}\n"
    )
}

/// Node count of cluster `name` in `state`, `None` if absent.
fn nodes(state: &DesiredState, name: &str) -> Option<usize> {
    state
        .clusters
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, e)| e.cluster.nodes.len())
}

fn commit_rev(oid: Oid) -> Option<Revision> {
    Some(Revision::Commit(oid.to_string()))
}

// --- running a source ---------------------------------------------------------------------

fn fast_poll() -> PollPolicy {
    PollPolicy {
        interval: Duration::from_millis(100),
        jitter: 0.1,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        timeout: Duration::from_secs(10),
    }
}

fn config(url: &str, auth: Auth, state: &Path) -> GitSourceConfig {
    GitSourceConfig {
        url: RemoteUrl::parse(url).expect("a valid remote URL"),
        auth,
        reference: GitRef::Branch("main".to_owned()),
        subdir: None,
        clusters_dir: "clusters".to_owned(),
        state_dir: state.to_path_buf(),
        poll: fast_poll(),
    }
}

/// A running [`GitSource`]: cancelled on drop.
struct Running {
    desired: watch::Receiver<Arc<DesiredState>>,
    status: watch::Receiver<SourceStatus>,
    trigger: Trigger,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn start(config: GitSourceConfig) -> Self {
        let source = GitSource::new(config).expect("opening the mirror");
        let cancel = CancellationToken::new();
        Self {
            desired: source.desired(),
            status: source.status(),
            trigger: source.trigger(),
            task: Some(tokio::spawn(source.run(cancel.clone()))),
            cancel,
        }
    }

    async fn desired_until(
        &self,
        what: &str,
        pred: impl Fn(&DesiredState) -> bool,
    ) -> Arc<DesiredState> {
        until(what, &self.desired, |s| pred(s)).await
    }

    async fn status_until(&self, what: &str, pred: impl Fn(&SourceStatus) -> bool) -> SourceStatus {
        until(what, &self.status, pred).await
    }

    /// Cancels the loop and waits for it to end.
    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the source loop did not stop after cancellation")
                .expect("the source loop panicked");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Waits until `pred` holds for the channel's current value.
async fn until<T: Clone + std::fmt::Debug>(
    what: &str,
    rx: &watch::Receiver<T>,
    pred: impl Fn(&T) -> bool,
) -> T {
    eventually(what, WAIT, || {
        let value = rx.borrow().clone();
        let ok = pred(&value);
        async move {
            if ok {
                Ok(value)
            } else {
                Err(format!("{value:?}"))
            }
        }
    })
    .await
}

fn state_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("drover-source-state-")
        .tempdir()
        .expect("a temporary state directory")
}

// --- webhooks over loopback ---------------------------------------------------------------

/// Serves `router` on a unique loopback address until `cancel` fires.
async fn serve(router: axum::Router, cancel: CancellationToken) -> SocketAddr {
    let ip = unique_loopback(&[]);
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .expect("binding the webhook listener");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
            .expect("serving webhooks");
    });
    addr
}

/// A raw HTTP/1.1 POST; returns the status code.
async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to the webhook listener {addr}: {e}"));
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer 413 and close before reading a large body.
    let _ = stream.write_all(&bytes).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the webhook response did not arrive");
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

// --- tests --------------------------------------------------------------------------------

#[tokio::test]
async fn file_remote_new_commit_is_detected_under_a_subdirectory() {
    let repo = TestRepo::init();
    let first = repo.commit_files(&[("deploy/clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let state = state_dir();
    let mut config = config(&repo.url(), Auth::None, state.path());
    config.subdir = Some("deploy".to_owned());
    let source = Running::start(config);
    let loaded = source
        .desired_until("the first commit to load", |s| {
            s.revision == commit_rev(first)
        })
        .await;
    assert_eq!(nodes(&loaded, "a"), Some(2));
    let entry = loaded.clusters.values().next().expect("cluster a");
    assert_eq!(
        entry.cluster.source.file, "clusters/a.yaml",
        "paths are relative to the subdirectory"
    );

    let second = repo.commit_files(
        &[("deploy/clusters/a.yaml", &cluster_yaml("a", 3))],
        "grow a",
    );
    let loaded = source
        .desired_until("the second commit to be detected by polling", |s| {
            s.revision == commit_rev(second)
        })
        .await;
    assert_eq!(nodes(&loaded, "a"), Some(4));
    let status = source.status.borrow().clone();
    assert_eq!(status.revision, commit_rev(second));
    assert!(status.last_change.is_some() && status.last_check.is_some());
    assert_eq!(status.consecutive_failures, 0);
    source.stop().await;
}

#[tokio::test]
async fn file_remote_tag_and_pinned_commit() {
    let repo = TestRepo::init();
    let first = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let tag_target = repo.repo().find_object(first, None).expect("the commit");
    let signature = crate::support::git::signature();
    repo.repo()
        .tag("v1", &tag_target, &signature, "release v1", false)
        .expect("an annotated tag");
    repo.commit_files(
        &[("clusters/a.yaml", &cluster_yaml("a", 2))],
        "after the tag",
    );

    let state = state_dir();
    let mut tag_config = config(&repo.url(), Auth::None, state.path());
    tag_config.reference = GitRef::Tag("v1".to_owned());
    let by_tag = Running::start(tag_config);
    let loaded = by_tag
        .desired_until("the tagged commit", |s| s.revision == commit_rev(first))
        .await;
    assert_eq!(nodes(&loaded, "a"), Some(2));

    let mut pinned_config = config(&repo.url(), Auth::None, state.path());
    pinned_config.reference = GitRef::Commit(first.to_string());
    let pinned = Running::start(pinned_config);
    pinned
        .desired_until("the pinned commit", |s| s.revision == commit_rev(first))
        .await;
    by_tag.stop().await;
    pinned.stop().await;
}

/// A no-change poll only lists refs: the server sees `GET info/refs` and no `POST
/// git-upload-pack`. A change costs exactly one upload-pack exchange more.
#[tokio::test]
async fn http_no_change_poll_fetches_nothing() {
    let logs = capture_logs();
    let remote = require!(HttpRemote::start());
    let repo = TestRepo::init();
    let first = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let state = state_dir();
    let auth = Auth::Basic {
        username: remote.username.clone(),
        password: Secret::new(remote.password.clone()),
    };
    let mut source = GitSource::new(config(&remote.url(repo.path()), auth, state.path()))
        .expect("opening the mirror");
    let desired = source.desired();
    assert!(
        source.check().await,
        "the first check loads the first commit: {:?}",
        source.status().borrow()
    );
    assert_eq!(desired.borrow().revision, commit_rev(first));
    let posts = remote.upload_pack_posts();
    assert!(
        posts >= 1,
        "the first fetch made no upload-pack request:\n{}",
        remote.access_log()
    );

    let gets = remote.info_refs_gets();
    for _ in 0..5 {
        assert!(
            !source.check().await,
            "a check without a new commit reported a change"
        );
    }
    assert_eq!(
        remote.upload_pack_posts(),
        posts,
        "a no-change poll transferred objects:\n{}",
        remote.access_log()
    );
    assert!(
        remote.info_refs_gets() >= gets + 5,
        "each poll lists refs once:\n{}",
        remote.access_log()
    );
    let status = source.status().borrow().clone();
    assert_eq!(
        (status.changes, status.consecutive_failures),
        (1, 0),
        "{status:?}"
    );

    let second = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 2))], "grow a");
    assert!(source.check().await, "a new commit was not detected");
    assert_eq!(desired.borrow().revision, commit_rev(second));
    assert!(
        remote.upload_pack_posts() > posts,
        "the new commit was not fetched"
    );
    logs.assert_free_of(&[&remote.password]);
}

/// The remote goes away (an error in the status, backoff, the desired state kept), then comes
/// back (the error clears).
#[tokio::test]
async fn http_remote_down_and_back() {
    let logs = capture_logs();
    let mut remote = require!(HttpRemote::start());
    let repo = TestRepo::init();
    let first = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let state = state_dir();
    let auth = Auth::Token {
        username: remote.username.clone(),
        token: Secret::new(remote.password.clone()),
    };
    let source = Running::start(config(&remote.url(repo.path()), auth, state.path()));
    source
        .desired_until("the first commit", |s| s.revision == commit_rev(first))
        .await;

    remote.down();
    let failing = source
        .status_until("three consecutive failures while the remote is down", |s| {
            s.consecutive_failures >= 3
        })
        .await;
    let error = failing.last_error.expect("an error in the status");
    assert_eq!(error.reason, ErrorReason::Unreachable, "{error:?}");
    assert!(!error.message.contains(&remote.password));
    let kept = source.desired.borrow().clone();
    assert_eq!(
        kept.revision,
        commit_rev(first),
        "the desired state changed while the remote was down"
    );
    assert_eq!(nodes(&kept, "a"), Some(2));

    let second = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 2))], "grow a");
    require!(remote.up());
    source
        .desired_until("the commit made while the remote was down", |s| {
            s.revision == commit_rev(second)
        })
        .await;
    let status = source
        .status_until("the error to clear", |s| s.last_error.is_none())
        .await;
    assert_eq!(status.consecutive_failures, 0);
    source.stop().await;
    logs.assert_free_of(&[&remote.password]);
}

/// Wrong credentials: an auth error in the status, and the password in no log line.
#[tokio::test]
async fn http_wrong_password_is_an_auth_error_and_never_logged() {
    let logs = capture_logs();
    let remote = require!(HttpRemote::start());
    let repo = TestRepo::init();
    repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let state = state_dir();
    let wrong = format!("wrong-{}", remote.password);
    let auth = Auth::Basic {
        username: remote.username.clone(),
        password: Secret::new(wrong.clone()),
    };
    let config = config(&remote.url(repo.path()), auth, state.path());
    assert!(
        !format!("{config:?}").contains(&wrong),
        "the config's Debug shows the password"
    );
    let source = Running::start(config);
    let status = source
        .status_until("an authentication failure", |s| s.last_error.is_some())
        .await;
    let error = status.last_error.expect("an error");
    assert_eq!(error.reason, ErrorReason::Auth, "{error:?}");
    assert!(source.desired.borrow().clusters.is_empty());
    source.stop().await;
    assert!(!error.message.contains(&wrong));
    logs.assert_free_of(&[&wrong, &remote.password]);
}

#[tokio::test]
async fn ssh_remote_new_commit_and_host_key_check() {
    let logs = capture_logs();
    let remote = require!(SshRemote::start());
    let repo = TestRepo::init();
    let first = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let state = state_dir();
    let auth = |known_hosts: &Path| Auth::SshKey {
        username: "root".to_owned(),
        private_key: remote.private_key.clone(),
        passphrase: None,
        known_hosts: known_hosts.to_path_buf(),
    };
    let source = Running::start(config(
        &remote.url(repo.path()),
        auth(&remote.known_hosts),
        state.path(),
    ));
    let loaded = until("the first commit over SSH", &source.desired, |s| {
        s.revision == commit_rev(first)
    })
    .await;
    assert_eq!(nodes(&loaded, "a"), Some(2), "sshd log:\n{}", remote.log());
    let second = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 2))], "grow a");
    source
        .desired_until("the second commit over SSH", |s| {
            s.revision == commit_rev(second)
        })
        .await;
    source.stop().await;

    // A server whose key is not in known_hosts is refused.
    let other_state = state_dir();
    let impostor = Running::start(config(
        &remote.url(repo.path()),
        auth(&remote.wrong_known_hosts),
        other_state.path(),
    ));
    let status = impostor
        .status_until("the unknown host key to be refused", |s| {
            s.last_error.is_some()
        })
        .await;
    assert_eq!(
        status.last_error.map(|e| e.reason),
        Some(ErrorReason::HostKey)
    );
    assert!(impostor.desired.borrow().clusters.is_empty());
    impostor.stop().await;

    let key = remote.private_key_text();
    let key_body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    logs.assert_free_of(&key_body);
}

/// One cluster's file breaks while another cluster changes: the broken one stays at its last
/// good definition, the other advances. Deleting a file then removes its cluster.
#[tokio::test]
async fn bad_commit_keeps_last_good_while_another_cluster_advances() {
    let repo = TestRepo::init();
    let first = repo.commit_files(
        &[
            ("clusters/a.yaml", &cluster_yaml("a", 1)),
            ("clusters/b.yaml", &cluster_yaml("b", 1)),
        ],
        "a and b",
    );
    let state = state_dir();
    let source = Running::start(config(&repo.url(), Auth::None, state.path()));
    source
        .desired_until("both clusters", |s| s.revision == commit_rev(first))
        .await;

    let bad = repo.commit_files(
        &[
            ("clusters/a.yaml", &broken_yaml("a")),
            ("clusters/b.yaml", &cluster_yaml("b", 2)),
        ],
        "break a, grow b",
    );
    let state = source
        .desired_until("the bad commit", |s| s.revision == commit_rev(bad))
        .await;
    assert_eq!(
        nodes(&state, "a"),
        Some(2),
        "a lost its last good definition"
    );
    assert_eq!(nodes(&state, "b"), Some(3), "b did not advance");
    let held: Vec<&str> = state.held_back().map(|n| n.as_str()).collect();
    assert_eq!(held, ["a"]);
    let a = state
        .clusters
        .values()
        .find(|e| e.cluster.name.as_str() == "a")
        .expect("a");
    assert_eq!(
        a.revision,
        Revision::Commit(first.to_string()),
        "a's definition comes from the first commit"
    );
    assert!(
        state
            .diagnostics
            .iter()
            .any(|d| d.location.file == "clusters/a.yaml"),
        "the current commit's diagnostics name the broken file: {:?}",
        state.diagnostics
    );

    repo.remove("clusters/a.yaml");
    let deleted = repo.commit_all("delete a");
    let state = source
        .desired_until("the deletion", |s| s.revision == commit_rev(deleted))
        .await;
    assert_eq!(
        nodes(&state, "a"),
        None,
        "a cluster whose file was deleted stays"
    );
    assert_eq!(nodes(&state, "b"), Some(3));
    source.stop().await;
}

#[tokio::test]
async fn force_push_is_the_new_desired_state() {
    let logs = capture_logs();
    let repo = TestRepo::init();
    let base = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "base");
    let ahead = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 2))], "ahead");
    let state = state_dir();
    let source = Running::start(config(&repo.url(), Auth::None, state.path()));
    source
        .desired_until("the first head", |s| s.revision == commit_rev(ahead))
        .await;

    // Rewrite history: main goes back to `base` and gets a different commit.
    repo.repo()
        .reference("refs/heads/main", base, true, "force-push")
        .expect("resetting main");
    let rewritten = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 5))], "rewritten");
    let state = source
        .desired_until("the force-pushed head", |s| {
            s.revision == commit_rev(rewritten)
        })
        .await;
    assert_eq!(nodes(&state, "a"), Some(6));
    source.stop().await;
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("force-push")),
        "no force-push warning in the log:\n{text}"
    );
}

#[tokio::test]
async fn deleted_branch_is_an_error_and_keeps_the_desired_state() {
    let repo = TestRepo::init();
    let first = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let state = state_dir();
    let source = Running::start(config(&repo.url(), Auth::None, state.path()));
    source
        .desired_until("the first commit", |s| s.revision == commit_rev(first))
        .await;

    let git = repo.repo();
    let commit = git.find_commit(first).expect("the commit");
    git.branch("other", &commit, false).expect("another branch");
    git.set_head("refs/heads/other")
        .expect("moving HEAD off main");
    git.find_branch("main", git2::BranchType::Local)
        .and_then(|mut b| b.delete())
        .expect("deleting main");

    let status = source
        .status_until("the missing branch to show in the status", |s| {
            s.last_error
                .as_ref()
                .is_some_and(|e| e.reason == ErrorReason::RefNotFound)
        })
        .await;
    assert!(status
        .last_error
        .expect("error")
        .message
        .contains("refs/heads/main"));
    let kept = source.desired.borrow().clone();
    assert_eq!(kept.revision, commit_rev(first));
    assert_eq!(
        nodes(&kept, "a"),
        Some(2),
        "the source vanished and the desired state went with it"
    );
    source.stop().await;
}

/// A commit without the clusters directory (a wrong subdirectory, a bad merge) is an error, not
/// a repository without clusters: nothing is torn down.
#[tokio::test]
async fn missing_clusters_directory_is_an_error_not_an_empty_state() {
    let repo = TestRepo::init();
    let first = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let state = state_dir();
    let source = Running::start(config(&repo.url(), Auth::None, state.path()));
    source
        .desired_until("the first commit", |s| s.revision == commit_rev(first))
        .await;
    repo.remove("clusters/a.yaml");
    repo.commit_files(
        &[("README.md", "moved elsewhere")],
        "drop the clusters directory",
    );
    let status = source
        .status_until("the missing directory to show in the status", |s| {
            s.last_error
                .as_ref()
                .is_some_and(|e| e.reason == ErrorReason::Tree)
        })
        .await;
    assert!(status
        .last_error
        .expect("error")
        .message
        .contains("clusters"));
    let kept = source.desired.borrow().clone();
    assert_eq!(kept.revision, commit_rev(first));
    assert_eq!(nodes(&kept, "a"), Some(2));
    source.stop().await;
}

/// Each provider's signature scheme, valid and invalid, against a source that only checks when
/// triggered; oversized bodies get 413.
#[tokio::test]
async fn webhooks_trigger_a_check_only_when_verified() {
    let repo = TestRepo::init();
    let first = repo.commit_files(&[("clusters/a.yaml", &cluster_yaml("a", 1))], "a");
    let state = state_dir();
    let mut config = config(&repo.url(), Auth::None, state.path());
    config.poll.interval = Duration::from_secs(3600);
    let source = Running::start(config);
    source
        .desired_until("the first commit", |s| s.revision == commit_rev(first))
        .await;

    let secret = |name: &str| Secret::new(format!("{name}-secret"));
    let secrets = WebhookSecrets {
        github: Some(secret("github")),
        gitlab: Some(secret("gitlab")),
        gitea: Some(secret("gitea")),
        generic: Some(secret("generic")),
    };
    let stats = Arc::new(WebhookStats::default());
    let cancel = CancellationToken::new();
    let router = webhook::router(secrets, 4096, source.trigger.clone(), Arc::clone(&stats));
    let addr = serve(router, cancel.clone()).await;

    let body = br#"{"ref":"refs/heads/main"}"#;
    let good = |name: &str| webhook::sign(&secret(name), body);
    let bad = webhook::sign(&Secret::new("not-the-secret"), body);
    let cases: Vec<(&str, &str, String, String)> = vec![
        (
            "/hooks/github",
            "X-Hub-Signature-256",
            format!("sha256={}", good("github")),
            format!("sha256={bad}"),
        ),
        (
            "/hooks/gitlab",
            "X-Gitlab-Token",
            "gitlab-secret".to_owned(),
            "gitlab-wrong".to_owned(),
        ),
        (
            "/hooks/gitea",
            "X-Gitea-Signature",
            good("gitea"),
            bad.clone(),
        ),
        (
            "/hooks/gitea",
            "X-Forgejo-Signature",
            good("gitea"),
            bad.clone(),
        ),
        (
            "/hooks/generic",
            "X-Drover-Signature-256",
            format!("sha256={}", good("generic")),
            format!("sha256={bad}"),
        ),
    ];
    let mut workers = 1;
    for (path, header, valid, invalid) in &cases {
        let checks_before = source.status.borrow().checks;
        assert_eq!(
            post(addr, path, &[(header, invalid)], body).await,
            401,
            "{path} {header} accepted a bad signature"
        );
        assert_eq!(
            post(addr, path, &[], body).await,
            401,
            "{path} accepted a request without {header}"
        );
        assert_eq!(
            source.status.borrow().checks,
            checks_before,
            "a refused webhook triggered a check"
        );

        workers += 1;
        let commit = repo.commit_files(
            &[("clusters/a.yaml", &cluster_yaml("a", workers))],
            "grow a",
        );
        assert_eq!(
            post(addr, path, &[(header, valid)], body).await,
            202,
            "{path} {header} refused a valid signature"
        );
        source
            .desired_until(
                &format!("{path} ({header}) to trigger the check that loads {commit}"),
                |s| s.revision == commit_rev(commit),
            )
            .await;
    }
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 5);
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 10);

    let large = vec![b' '; 8192];
    let signature = format!("sha256={}", webhook::sign(&secret("github"), &large));
    assert_eq!(
        post(
            addr,
            "/hooks/github",
            &[("X-Hub-Signature-256", &signature)],
            &large
        )
        .await,
        413,
        "an oversized body was not refused"
    );

    // A burst of valid requests coalesces: far fewer checks than requests.
    let checks_before = source.status.borrow().checks;
    let signature = format!("sha256={}", good("github"));
    let headers = [("X-Hub-Signature-256", signature.as_str())];
    let burst: Vec<_> = (0..50)
        .map(|_| post(addr, "/hooks/github", &headers, body))
        .collect();
    for code in futures::future::join_all(burst).await {
        assert_eq!(code, 202);
    }
    let after = source
        .status_until("the burst's checks to run", |s| s.checks > checks_before)
        .await;
    assert!(
        after.checks - checks_before < 50,
        "50 webhooks made {} checks",
        after.checks - checks_before
    );
    cancel.cancel();
    source.stop().await;
}

/// Local mode: the working tree as it is (nothing committed) becomes the desired state within a
/// second of an edit; a broken edit keeps the last good definition.
#[tokio::test]
async fn local_mode_edit_becomes_desired_state_within_a_second() {
    let dir = tempfile::Builder::new()
        .prefix("drover-local-")
        .tempdir()
        .expect("a temporary directory");
    let write = |name: &str, text: &str| {
        let path = dir.path().join("clusters").join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(text.as_bytes()).expect("write");
    };
    write("a.yaml", &cluster_yaml("a", 1));
    let source = LocalSource::new(
        dir.path().to_path_buf(),
        "clusters".to_owned(),
        Duration::from_secs(3600),
    );
    let desired = source.desired();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source.run(cancel.clone()));
    until("the working tree to load", &desired, |s| {
        nodes(s, "a") == Some(2)
    })
    .await;

    for (workers, file) in [(3, "a.yaml"), (4, "a.yaml")] {
        write(file, &cluster_yaml("a", workers));
        let started = std::time::Instant::now();
        until("an edit to become the desired state", &desired, |s| {
            nodes(s, "a") == Some(workers + 1)
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "an edit took {:?}",
            started.elapsed()
        );
    }

    write("b.yaml", &cluster_yaml("b", 1));
    write("a.yaml", &broken_yaml("a"));
    let state = until("b to appear while a breaks", &desired, |s| {
        nodes(s, "b") == Some(2) && !s.diagnostics.is_empty()
    })
    .await;
    assert_eq!(
        nodes(&state, "a"),
        Some(5),
        "a lost its last good definition"
    );
    cancel.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("local mode did not stop after cancellation")
        .expect("local mode panicked")
        .expect("local mode failed");
}

// --- benchmark (ignored; run by scripts/bench-source) -------------------------------------

/// Median and a high percentile of `samples`.
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

fn time_git(args: &[&str], dir: &Path) -> Duration {
    let started = std::time::Instant::now();
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("running git");
    assert!(
        output.status.success(),
        "git {}: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

/// A drover no-change poll against `git fetch` of the same smart-HTTP remote, on the repository
/// `DROVER_BENCH_REPO` names (scripts/bench-source builds it: 10,000 commits, ~100 MB).
#[tokio::test]
#[ignore = "benchmark: run by scripts/bench-source"]
async fn bench_source_no_change_poll_against_git_fetch() {
    let Some(bench_repo) = std::env::var_os("DROVER_BENCH_REPO") else {
        panic!("DROVER_BENCH_REPO is not set; run scripts/bench-source");
    };
    let bench_repo = std::path::PathBuf::from(bench_repo);
    let rounds: usize = std::env::var("DROVER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let remote = HttpRemote::start().expect("nginx + git-http-backend");
    let url = remote.url(&bench_repo);
    let state = state_dir();
    let auth = Auth::Basic {
        username: remote.username.clone(),
        password: Secret::new(remote.password.clone()),
    };
    let mut source = GitSource::new(config(&url, auth, state.path())).expect("the mirror");

    let bytes0 = remote.bytes_sent();
    let started = std::time::Instant::now();
    assert!(
        source.check().await,
        "first check: {:?}",
        source.status().borrow()
    );
    let drover_first = started.elapsed();
    let drover_first_bytes = remote.bytes_sent() - bytes0;

    let posts = remote.upload_pack_posts();
    let bytes0 = remote.bytes_sent();
    let mut drover_polls = Vec::new();
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        assert!(!source.check().await, "a no-change poll saw a change");
        drover_polls.push(started.elapsed());
    }
    let drover_poll_bytes = (remote.bytes_sent() - bytes0) / rounds as u64;
    assert_eq!(
        remote.upload_pack_posts(),
        posts,
        "a no-change poll fetched"
    );

    // git: a full fetch into an empty repository (what a poller without a mirror does), then
    // no-change fetches into the up-to-date one.
    let scratch = state_dir();
    let credentialed = url.replacen(
        "http://",
        &format!("http://{}:{}@", remote.username, remote.password),
        1,
    );
    time_git(&["init", "-q", "--bare", "clone.git"], scratch.path());
    let clone = scratch.path().join("clone.git");
    let fetch_args = [
        "fetch",
        "-q",
        credentialed.as_str(),
        "+refs/heads/main:refs/heads/main",
    ];
    let bytes0 = remote.bytes_sent();
    let git_full = time_git(&fetch_args, &clone);
    let git_full_bytes = remote.bytes_sent() - bytes0;
    let bytes0 = remote.bytes_sent();
    let mut git_noop = Vec::new();
    for _ in 0..rounds {
        git_noop.push(time_git(&fetch_args, &clone));
    }
    let git_noop_bytes = (remote.bytes_sent() - bytes0) / rounds as u64;

    let p50 = |v: &mut Vec<Duration>| percentile(v, 0.5);
    let drover_p50 = p50(&mut drover_polls);
    let git_noop_p50 = p50(&mut git_noop);
    println!("source bench: repository {}", bench_repo.display());
    println!(
        "  {:<44} {:>12} {:>14}",
        "operation", "wall", "bytes served"
    );
    println!(
        "  {:<44} {:>12.1?} {:>14}",
        "drover first check (shallow fetch)", drover_first, drover_first_bytes
    );
    println!(
        "  {:<44} {:>12.1?} {:>14}",
        format!("drover no-change poll (p50 of {rounds})"),
        drover_p50,
        drover_poll_bytes
    );
    println!(
        "  {:<44} {:>12.1?} {:>14}",
        "git fetch into an empty repository", git_full, git_full_bytes
    );
    println!(
        "  {:<44} {:>12.1?} {:>14}",
        format!("git fetch, nothing new (p50 of {rounds})"),
        git_noop_p50,
        git_noop_bytes
    );
    println!(
        "  no-change poll vs full git fetch: {:.0}x less time, {:.0}x fewer bytes",
        git_full.as_secs_f64() / drover_p50.as_secs_f64(),
        git_full_bytes as f64 / drover_poll_bytes.max(1) as f64
    );
    println!(
        "  no-change poll vs no-change git fetch: {:.1}x less time",
        git_noop_p50.as_secs_f64() / drover_p50.as_secs_f64()
    );
}

/// Webhook to new desired state over loopback for a 100-cluster repository, through each
/// transport (smart HTTP, SSH, file://): p50 and p99 over `DROVER_BENCH_WEBHOOKS` commits
/// (default 200) each.
#[tokio::test]
#[ignore = "benchmark: run by scripts/bench-source"]
async fn bench_source_webhook_to_desired_state() {
    let commits: usize = std::env::var("DROVER_BENCH_WEBHOOKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let repo = TestRepo::init();
    let files: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                format!("clusters/c{i:03}.yaml"),
                cluster_yaml(&format!("c{i:03}"), 1),
            )
        })
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    repo.commit_files(&borrowed, "100 clusters");
    // A server keeps its repositories packed; commits made below arrive as loose objects, as
    // small pushes do.
    time_git(&["repack", "-adq"], repo.path());

    let http = HttpRemote::start().expect("nginx + git-http-backend");
    let http_auth = Auth::Basic {
        username: http.username.clone(),
        password: Secret::new(http.password.clone()),
    };
    let ssh = SshRemote::start().expect("sshd");
    let ssh_auth = Auth::SshKey {
        username: "root".to_owned(),
        private_key: ssh.private_key.clone(),
        passphrase: None,
        known_hosts: ssh.known_hosts.clone(),
    };
    let transports = [
        (
            "smart HTTP (nginx + git-http-backend)",
            http.url(repo.path()),
            http_auth,
        ),
        ("SSH (sshd)", ssh.url(repo.path()), ssh_auth),
        ("file://", repo.url(), Auth::None),
    ];
    for (transport, url, auth) in transports {
        let (p50, p99, max) = webhook_latency(&repo, &url, auth, commits).await;
        println!(
            "source bench: webhook -> new desired state, 100 clusters, {transport}, {commits} commits: p50 {p50:.1?}, p99 {p99:.1?}, max {max:.1?}"
        );
    }
    if std::env::var_os("DROVER_BENCH_ACCESS_LOG").is_some() {
        eprintln!("{}", http.access_log());
    }
}

/// Runs a source on `url` behind a webhook listener and times `commits` commits from webhook
/// to desired state.
async fn webhook_latency(
    repo: &TestRepo,
    url: &str,
    auth: Auth,
    commits: usize,
) -> (Duration, Duration, Duration) {
    let head = repo.head_commit().expect("a commit").id();
    let state = state_dir();
    let mut config = config(url, auth, state.path());
    config.poll.interval = Duration::from_secs(3600);
    let source = Running::start(config);
    source
        .desired_until("the 100-cluster repository", |s| {
            s.revision == commit_rev(head)
        })
        .await;
    assert_eq!(source.desired.borrow().clusters.len(), 100);

    let secret = Secret::new("bench-secret");
    let secrets = WebhookSecrets {
        github: Some(secret.clone()),
        ..WebhookSecrets::default()
    };
    let cancel = CancellationToken::new();
    let stats = Arc::new(WebhookStats::default());
    let router = webhook::router(
        secrets,
        webhook::DEFAULT_MAX_BODY_BYTES,
        source.trigger.clone(),
        stats,
    );
    let addr = serve(router, cancel.clone()).await;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = format!("sha256={}", webhook::sign(&secret, body));
    let headers = [("X-Hub-Signature-256", signature.as_str())];
    let mut desired = source.desired.clone();
    let mut latencies = Vec::with_capacity(commits);
    for i in 0..commits {
        let name = format!("c{:03}", i % 100);
        let text = cluster_yaml(&name, 2 + i % 3);
        let commit = repo.commit_files(
            &[(&format!("clusters/{name}.yaml"), &text)],
            "change one cluster",
        );
        desired.borrow_and_update();
        let started = std::time::Instant::now();
        assert_eq!(post(addr, "/hooks/github", &headers, body).await, 202);
        tokio::time::timeout(WAIT, async {
            while desired.borrow_and_update().revision != commit_rev(commit) {
                desired.changed().await.expect("the source is running");
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("commit {i} did not become the desired state after its webhook")
        });
        latencies.push(started.elapsed());
    }
    cancel.cancel();
    source.stop().await;
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    let max = latencies.iter().max().copied().unwrap_or_default();
    (p50, p99, max)
}
