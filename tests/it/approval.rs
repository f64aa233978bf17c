//! `requireApprovedPlan` end to end: a real Git repository, the daemon and its agents, and the
//! reviewer's `drover plan` run against the same repository. A revision runs only when its
//! commit carries the digest of the plan the daemon computes against what runs; otherwise the
//! cluster is held, with the plan, the approvals and the difference in its status and verdict.

use drover::api::{ClusterStatus, ConditionType, PlanHold};
use git2::Oid;

use crate::serve::{ready_at, CONVERGE};
use crate::support::daemon::{tail, AgentProcess, Layout, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::ClusterCleanup;
use crate::support::forge::TestForge;
use crate::support::git::TestRepo;
use crate::support::net::unique_loopback;
use crate::support::require;

/// `drover plan --base BASE --head HEAD` on `repo` with `format` (`--format json`, or text
/// without colour): its standard output, once it said the plan has changes (exit 2).
async fn plan(repo: &TestRepo, base: Oid, head: Oid, format: &[&str]) -> Vec<u8> {
    let (base, head) = (base.to_string(), head.to_string());
    let mut args = vec!["plan", "--repo", repo.path().to_str().unwrap()];
    args.extend(["--base", &base, "--head", &head]);
    args.extend(format);
    let out = crate::support::cli::drover(&args).await;
    assert_eq!(out.status.code(), Some(2), "the plan has changes: {out:?}");
    out.stdout
}

/// The digest of `cluster`'s plan from `base` to `head`, as a reviewer's CI job computes it.
async fn reviewed_digest(repo: &TestRepo, base: Oid, head: Oid, cluster: &str) -> String {
    let out = plan(repo, base, head, &["--format", "json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let plans = report["plan"]["clusters"].as_array().unwrap();
    let plan = plans.iter().find(|c| c["cluster"] == cluster).unwrap();
    plan["digest"].as_str().unwrap().to_string()
}

/// The text form of the same plan ends with the trailer that approves it.
async fn proposed_trailer(repo: &TestRepo, base: Oid, head: Oid) -> String {
    let out = plan(repo, base, head, &["--color", "never"]).await;
    let text = String::from_utf8(out).unwrap();
    text.lines()
        .find(|l| l.starts_with("Drover-Plan: sha256:"))
        .unwrap_or_else(|| panic!("no trailer in:\n{text}"))
        .to_string()
}

/// The status is held at `revision` for an approval.
fn held_at(revision: Oid) -> impl Fn(&ClusterStatus) -> Result<(), String> {
    let revision = revision.to_string();
    move |s| {
        let stalled = s.condition(ConditionType::Stalled).filter(|c| c.status);
        match (stalled, &s.hold) {
            (Some(c), Some(hold)) if c.reason == "PlanNotApproved" && hold.revision == revision => {
                Ok(())
            }
            _ => Err("not held at that revision".into()),
        }
    }
}

/// Commits the work tree as it is, with `message`: how a merge adds a trailer to a tree that
/// was already reviewed.
fn merge_with(repo: &TestRepo, message: &str) -> Oid {
    repo.commit_all(message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_plan_a_commit_approves_runs() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let layout = Layout::new("approve");
    let cluster = layout.cluster.clone();
    let _cleanup = ClusterCleanup(cluster.clone());
    let token = format!("forge-secret-{}", crate::support::unique_token());
    let forge = TestForge::start(unique_loopback(&[]), &token).await;
    let work = crate::support::private_tempdir();
    let token_file = work.path().join("forge-token");
    std::fs::write(&token_file, &token).unwrap();
    let repo = TestRepo::init();
    let readme = repo.commit_files(&[("README.md", "clusters\n")], "readme");
    let first = repo.commit_files(
        &[(&layout.path(), &layout.yaml("v1", BUSYBOX_IMAGE))],
        "dev",
    );
    let config = format!(
        "requireApprovedPlan: [{cluster}]\nverdicts:\n  forge: {{kind: gitea, apiUrl: '{}', repository: ops/clusters, tokenFile: {}}}\n",
        forge.api_url("gitea"),
        token_file.display()
    );
    let daemon = TestDaemon::start_with_config(&repo.url(), None, &config).await;
    let join = daemon.token_file(&cluster).await;
    let _agents = AgentProcess::start_all(&daemon, &layout, &join);

    // A commit that approves nothing: the new cluster is held, and no node is told anything.
    let status = daemon
        .await_status(
            "the unapproved first commit",
            &cluster,
            CONVERGE,
            held_at(first),
        )
        .await;
    let hold = status.hold.clone().unwrap();
    assert!(hold.approved.is_empty(), "{hold:?}");
    assert!(hold.reviewed.is_none(), "never converged: {hold:?}");
    assert!(!hold.steps.is_empty());
    assert_eq!(
        hold.digest,
        reviewed_digest(&repo, readme, first, &cluster).await
    );
    // Nodes hold their certificates ahead of their first step; no step of the plan ran.
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.revision.as_deref().unwrap_or("").is_empty()),
        "a held plan reached a node: {:?}",
        status.nodes
    );
    let message = &status.condition(ConditionType::Stalled).unwrap().message;
    assert!(message.contains("the commit approves no plan"), "{message}");
    await_verdict(
        &forge,
        &daemon,
        first,
        "failure",
        &format!("{cluster}: held: plan sha256:"),
    )
    .await;

    // Merged with the trailer `drover plan` proposed: that plan runs.
    let trailer = proposed_trailer(&repo, readme, first).await;
    assert_eq!(trailer, format!("Drover-Plan: {}", hold.digest));
    let approved = merge_with(
        &repo,
        &format!("Merge dev\n\nReviewed-by: alice\n{trailer}\n"),
    );
    daemon.hook().await;
    daemon
        .await_status(
            "the approved commit",
            &cluster,
            CONVERGE,
            ready_at(approved.to_string()),
        )
        .await;
    await_verdict(&forge, &daemon, approved, "success", "applied to 4/4 nodes").await;

    // A change without approval is held, showing the plan a reviewer sees: the same one, as
    // nothing drifted from the applied revision.
    let change = repo.commit_files(&[(&layout.path(), &layout.yaml("v2", BUSYBOX_IMAGE))], "v2");
    daemon.hook().await;
    let status = daemon
        .await_status("the unapproved change", &cluster, CONVERGE, held_at(change))
        .await;
    let hold: PlanHold = status.hold.clone().unwrap();
    let wanted = reviewed_digest(&repo, approved, change, &cluster).await;
    assert_eq!(hold.digest, wanted);
    let reviewed = hold
        .reviewed
        .clone()
        .expect("the applied revision is known");
    assert_eq!(reviewed.base, approved.to_string());
    assert_eq!(reviewed.digest, wanted);
    assert!(
        reviewed.only_running.is_empty() && reviewed.only_reviewed.is_empty(),
        "{reviewed:?}"
    );
    assert_eq!(
        status.applied_revision,
        Some(approved.to_string()),
        "the applied revision stays"
    );

    // A stale approval: the commit approves the plan for v2, but its tree is v3, so the plan
    // against what runs is another one. Held, naming what it approves.
    repo.write(&layout.path(), layout.yaml("v3", BUSYBOX_IMAGE));
    let stale = merge_with(&repo, &format!("v3\n\nDrover-Plan: {wanted}\n"));
    daemon.hook().await;
    let status = daemon
        .await_status("the stale approval", &cluster, CONVERGE, held_at(stale))
        .await;
    let hold = status.hold.clone().unwrap();
    assert_eq!(hold.approved, vec![wanted.clone()]);
    assert_ne!(hold.digest, wanted);
    let message = &status.condition(ConditionType::Stalled).unwrap().message;
    assert!(
        message.contains(&format!("the commit approves {}", &wanted[..19])),
        "{message}"
    );

    // The reviewed-digest file approves as well as a trailer does.
    std::fs::create_dir_all(repo.path().join(".drover")).unwrap();
    let file = format!("# reviewed in pull request 7\n{}\n", hold.digest);
    let filed = repo.commit_files(&[(".drover/approved-plans", &file)], "approve v3");
    daemon.hook().await;
    daemon
        .await_status(
            "the approved v3",
            &cluster,
            CONVERGE,
            ready_at(filed.to_string()),
        )
        .await;
    assert_eq!(forge.violations(), Vec::<String>::new());
}

/// Waits until the forge has a status for `commit` in `state` whose description contains
/// `text`.
async fn await_verdict(
    forge: &TestForge,
    daemon: &TestDaemon,
    commit: Oid,
    state: &str,
    text: &str,
) {
    let commit = commit.to_string();
    crate::support::wait::poll_until(CONVERGE, || async {
        let seen: Vec<(String, String)> = forge
            .accepted()
            .into_iter()
            .filter(|r| r.commit == commit)
            .map(|r| (r.state, r.description))
            .collect();
        match seen.last() {
            Some((s, d)) if s == state && d.contains(text) => Ok(()),
            _ => Err(format!("{seen:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{:?}\n{}", e.last_error, tail(&daemon.log(), 30)));
}
