//! A verdict on every commit: the commit status client against a forge in the test suite that
//! checks each request against GitHub's, GitLab's and Gitea's documentation, and the daemon
//! posting what became of each commit of a real Git repository as its agents converge.

use std::time::Duration;

use drover::config::{Forge, ForgeKind};
use drover::daemon::verdict::forge::{ForgeClient, ForgeError, State, Status};
use drover::secret::Secret;

use crate::serve::{ready_at, CONVERGE};
use crate::support::daemon::{tail, AgentProcess, Layout, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::ClusterCleanup;
use crate::support::forge::{Recorded, TestForge};
use crate::support::git::TestRepo;
use crate::support::git_remote::HttpRemote;
use crate::support::net::unique_loopback;
use crate::support::require;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn client(forge: &TestForge, kind: ForgeKind, repository: &str, token: &str) -> ForgeClient {
    let name = match kind {
        ForgeKind::Github => "github",
        ForgeKind::Gitlab => "gitlab",
        ForgeKind::Gitea => "gitea",
    };
    let forge = Forge {
        kind,
        api: url::Url::parse(&forge.api_url(name)).unwrap(),
        repository: repository.into(),
        token_file: "/unused".into(),
    };
    ForgeClient::new(forge, Secret::new(token)).unwrap()
}

fn status(state: State, description: &str) -> Status {
    Status {
        commit: COMMIT.into(),
        state,
        context: "drover/dev".into(),
        description: description.into(),
        target_url: Some("https://drover.example/clusters/dev".into()),
    }
}

#[tokio::test]
async fn the_status_client_speaks_each_forges_documented_api() {
    let forge = TestForge::start(unique_loopback(&[]), "forge-token-1").await;
    // (kind, repository, the forge's names for pending, success and failure)
    let cases = [
        (
            ForgeKind::Github,
            "ops/clusters",
            ["pending", "success", "failure"],
        ),
        (
            ForgeKind::Gitlab,
            "ops/infra/clusters",
            ["running", "success", "failed"],
        ),
        (
            ForgeKind::Gitea,
            "ops/clusters",
            ["pending", "success", "failure"],
        ),
    ];
    for (kind, repository, names) in cases {
        let client = client(&forge, kind, repository, "forge-token-1");
        let long = "x".repeat(300);
        for (state, description) in [
            (State::Pending, "dev: rolling out, 1/4 nodes ready"),
            (State::Success, "dev: applied to 4/4 nodes, healthy"),
            (State::Failure, long.as_str()),
        ] {
            client.post(&status(state, description)).await.unwrap();
        }
        let got: Vec<Recorded> = forge
            .accepted()
            .into_iter()
            .filter(|r| r.repository == repository && format!("{kind:?}").to_lowercase() == r.forge)
            .collect();
        let states: Vec<&str> = got.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(states, names, "{kind:?}");
        for r in &got {
            assert_eq!(
                (r.commit.as_str(), r.context.as_str()),
                (COMMIT, "drover/dev")
            );
            assert_eq!(
                r.target_url.as_deref(),
                Some("https://drover.example/clusters/dev")
            );
        }
        assert_eq!(got[1].description, "dev: applied to 4/4 nodes, healthy");
        assert_eq!(got[2].description.chars().count(), 140, "cut to the limit");
    }
    assert_eq!(forge.violations(), Vec::<String>::new());

    // A wrong token is refused for good; a forge that is down is worth trying again.
    let wrong = client(&forge, ForgeKind::Github, "ops/clusters", "not-the-token");
    match wrong.post(&status(State::Pending, "x")).await {
        Err(e @ ForgeError::Refused { code: 401, .. }) => assert!(!e.is_transient()),
        other => panic!("{other:?}"),
    }
    forge.set_down(true);
    let right = client(&forge, ForgeKind::Gitea, "ops/clusters", "forge-token-1");
    match right.post(&status(State::Pending, "x")).await {
        Err(e @ ForgeError::Refused { code: 503, .. }) => assert!(e.is_transient()),
        other => panic!("{other:?}"),
    }
    let addr = forge.addr;
    forge.stop();
    // Nothing listens any more: unreachable, and transient.
    let gone = Forge {
        kind: ForgeKind::Github,
        api: url::Url::parse(&format!("http://{addr}/github")).unwrap(),
        repository: "ops/clusters".into(),
        token_file: "/unused".into(),
    };
    let gone = ForgeClient::new(gone, Secret::new("t")).unwrap();
    let mut outcome = gone.post(&status(State::Pending, "x")).await;
    for _ in 0..50 {
        if matches!(outcome, Err(ForgeError::Unreachable { .. })) {
            break;
        }
        // The server's shutdown is graceful: wait for the listener to close.
        tokio::time::sleep(Duration::from_millis(20)).await;
        outcome = gone.post(&status(State::Pending, "x")).await;
    }
    match outcome {
        Err(e @ ForgeError::Unreachable { .. }) => assert!(e.is_transient()),
        other => panic!("{other:?}"),
    }
}

/// The statuses the forge accepted on `commit`, oldest first, as (state, description).
fn on(forge: &TestForge, commit: &str) -> Vec<(String, String)> {
    forge
        .accepted()
        .into_iter()
        .filter(|r| r.commit == commit)
        .map(|r| (r.state, r.description))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_is_told_what_became_of_it() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let layout = Layout::new("verdict");
    let cluster = layout.cluster.clone();
    let _cleanup = ClusterCleanup(cluster.clone());
    let token = format!("forge-secret-{}", crate::support::unique_token());
    let forge = TestForge::start(unique_loopback(&[]), &token).await;
    let repo = TestRepo::init();
    // Someone's note on an earlier commit stays when the daemon adds its own.
    let readme = repo.commit_files(&[("README.md", "clusters\n")], "readme");
    let alice = git2::Signature::now("alice", "alice@example.com").unwrap();
    repo.repo()
        .note(
            &alice,
            &alice,
            Some("refs/notes/drover"),
            readme,
            "reviewed by alice",
            false,
        )
        .unwrap();
    let first = repo.commit_files(
        &[(&layout.path(), &layout.yaml("v1", BUSYBOX_IMAGE))],
        "dev",
    );
    let work = crate::support::private_tempdir();
    let token_file = work.path().join("forge-token");
    std::fs::write(&token_file, &token).unwrap();
    let config = format!(
        "verdicts:\n  forge: {{kind: github, apiUrl: '{}', repository: ops/clusters, tokenFile: {}}}\n  dashboardUrl: 'https://drover.example/'\n  notes: true\n",
        forge.api_url("github"),
        token_file.display()
    );
    // The remote is smart HTTP with basic auth: notes are pushed the way a forge takes them.
    let remote = require!(HttpRemote::start());
    let password = work.path().join("git-password");
    std::fs::write(&password, &remote.password).unwrap();
    let auth = format!(
        "{{username: {}, tokenFile: {}}}",
        remote.username,
        password.display()
    );
    let mut daemon =
        TestDaemon::start_with_config(&remote.url(repo.path()), Some(&auth), &config).await;
    let join = daemon.token_file(&cluster).await;
    let agents = AgentProcess::start_all(&daemon, &layout, &join);

    // Rolling out, then applied: pending first, success last.
    daemon
        .await_status(
            "the first commit",
            &cluster,
            CONVERGE,
            ready_at(first.to_string()),
        )
        .await;
    let success = format!("{cluster}: applied to 4/4 nodes, healthy");
    let first_hex = first.to_string();
    crate::support::wait::poll_until(CONVERGE, || async {
        let seen = on(&forge, &first_hex);
        match seen.last() {
            Some((state, d)) if state == "success" && *d == success => Ok(()),
            _ => Err(format!("{seen:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{:?}\n{}", e.last_error, tail(&daemon.log(), 30)));
    let seen = on(&forge, &first_hex);
    assert_eq!(seen[0].0, "pending", "{seen:?}");
    assert!(
        seen[0].1.starts_with(&format!("{cluster}: rolling out")),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|(s, _)| s == "success").count(),
        1,
        "posted once per change: {seen:?}"
    );
    let posted = forge.accepted();
    assert!(posted
        .iter()
        .all(|r| r.context == format!("drover/{cluster}")));
    assert!(posted
        .iter()
        .all(|r| r.target_url.as_deref()
            == Some(&format!("https://drover.example/clusters/{cluster}"))));

    // The forge goes down while the next commit rolls out: reconciling never waits for it,
    // and the verdict arrives once it is back.
    forge.set_down(true);
    let second = repo.commit_files(&[(&layout.path(), &layout.yaml("v2", BUSYBOX_IMAGE))], "v2");
    daemon.hook().await;
    daemon
        .await_status(
            "the second commit, forge down",
            &cluster,
            CONVERGE,
            ready_at(second.to_string()),
        )
        .await;
    crate::support::wait::poll_until(CONVERGE, || async {
        match forge.refused_while_down() {
            0 => Err("no attempt yet".to_string()),
            _ => Ok(()),
        }
    })
    .await
    .expect("the daemon tried the forge while it was down");
    forge.set_down(false);
    let second_hex = second.to_string();
    crate::support::wait::poll_until(CONVERGE, || async {
        let seen = on(&forge, &second_hex);
        match seen.last() {
            Some((state, _)) if state == "success" => Ok(()),
            _ => Err(format!("{seen:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{:?}\n{}", e.last_error, tail(&daemon.log(), 30)));

    // An invalid definition: that commit fails, and the last good one keeps running.
    let broken = repo.commit_files(
        &[(
            &layout.path(),
            "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {name: [\n",
        )],
        "broken",
    );
    daemon.hook().await;
    let broken_hex = broken.to_string();
    crate::support::wait::poll_until(CONVERGE, || async {
        let seen = on(&forge, &broken_hex);
        match seen.last() {
            Some((state, d)) if state == "failure" && d.contains("held back") => Ok(()),
            _ => Err(format!("{seen:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{:?}\n{}", e.last_error, tail(&daemon.log(), 30)));

    assert_eq!(forge.violations(), Vec::<String>::new());

    // The same verdicts, as notes on the commits in the remote, beside alice's.
    let note = |commit: git2::Oid| {
        repo.repo()
            .find_note(Some("refs/notes/drover"), commit)
            .ok()
            .and_then(|n| n.message().ok().map(String::from))
    };
    crate::support::wait::poll_until(CONVERGE, || async {
        let text = note(broken).unwrap_or_default();
        match text.contains("failure") && text.contains("held back") {
            true => Ok(()),
            false => Err(text),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{:?}\n{}", e.last_error, tail(&daemon.log(), 30)));
    assert_eq!(
        note(first).as_deref(),
        Some(format!("drover/{cluster} success: {success}\n").as_str())
    );
    assert_eq!(note(readme).as_deref(), Some("reviewed by alice"));
    drop(agents);
    let exit = daemon.terminate();
    assert!(exit.success(), "{exit}");
    let log = daemon.log();
    assert!(
        !log.contains(&token),
        "the forge token is in the daemon's log"
    );
    forge.stop();
}
