//! `drover serve` end to end, as an operator runs it: the daemon as a process on a real Git
//! repository, agents as processes (one per node, each its own loopback address and host
//! root, one Docker engine), real etcd. Commits are announced with a signed webhook.

use std::collections::BTreeMap;
use std::time::Duration;

use drover::agent::docker::{LABEL_CLUSTER, LABEL_COMPONENT, LABEL_NODE};
use drover::api::{ClusterStatus, ConditionType, NodeView};

use crate::support::daemon::{
    etcd_client, etcd_client_with, pki_dir, tail, AgentProcess, Layout, TestDaemon,
};
use crate::support::docker::{self, ContainerEvent, EventLog, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::{containers_of_node, ClusterCleanup};
use crate::support::git::TestRepo;
use crate::support::require;

/// A rollout of the whole cluster, images present, is seconds; this bounds a hang.
pub(crate) const CONVERGE: Duration = Duration::from_secs(120);

/// The layout's `rollout.maxUnavailable` for control-plane nodes.
const MAX_UNAVAILABLE: usize = 1;

fn condition(status: &ClusterStatus) -> (ConditionType, String) {
    status
        .conditions
        .iter()
        .find(|c| c.status)
        .map(|c| (c.kind, c.message.clone()))
        .unwrap_or((ConditionType::Ready, "no condition yet".into()))
}

/// Ready at `revision`: every node ready, the revision applied.
pub(crate) fn ready_at(revision: String) -> impl Fn(&ClusterStatus) -> Result<(), String> {
    move |s| {
        let (kind, message) = condition(s);
        if kind != ConditionType::Ready {
            return Err(format!("{kind:?}: {message}"));
        }
        if s.applied_revision.as_deref() != Some(revision.as_str()) {
            return Err(format!("applied {:?}", s.applied_revision));
        }
        Ok(())
    }
}

async fn http_get(url: &str) -> Result<String, String> {
    let response = reqwest::get(url).await.map_err(|e| e.to_string())?;
    response.text().await.map_err(|e| e.to_string())
}

/// When each container of `names` last started, as Docker says.
fn started_at(names: &[String]) -> Vec<String> {
    inspect(names, "{{.State.StartedAt}}")
}

/// `docker inspect -f FORMAT` of each container of `names`.
fn inspect(names: &[String], format: &str) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let out = std::process::Command::new("docker")
                .args(["inspect", "-f", format, name])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect()
}

/// Records the engine's deaths and starts of `cluster`'s api containers from now on.
fn record_api_events(engine: &bollard::Docker, cluster: &str) -> EventLog {
    let (of_cluster, api) = (
        format!("{LABEL_CLUSTER}={cluster}"),
        format!("{LABEL_COMPONENT}=api"),
    );
    let filters = [
        ("label", of_cluster.as_str()),
        ("label", api.as_str()),
        ("event", "die"),
        ("event", "start"),
    ];
    EventLog::record(engine, &filters)
}

/// When each node's container was down (engine nanoseconds), once the log holds the start of
/// every container of `names` now running: from a death to the node's next start (a
/// replacement keeps the name, not the id), or to the end when none followed.
async fn downtimes(log: &EventLog, names: &[String]) -> BTreeMap<String, Vec<(i64, i64)>> {
    let ids = inspect(names, "{{.Id}}");
    let started = |seen: &[ContainerEvent]| {
        ids.iter()
            .all(|id| seen.iter().any(|e| e.action == "start" && e.id == *id))
    };
    let mut events = log
        .until("the replacements' starts", CONVERGE, started)
        .await;
    events.sort_by_key(|e| e.nanos);
    let mut down: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for e in events {
        let spans = down.entry(e.labels[LABEL_NODE].clone()).or_default();
        match (e.action.as_str(), spans.last_mut()) {
            ("die", _) => spans.push((e.nanos, i64::MAX)),
            ("start", Some(open)) if open.1 == i64::MAX => open.1 = e.nanos,
            _ => {}
        }
    }
    down
}

/// The most nodes down at the same time.
fn most_down_at_once(down: &BTreeMap<String, Vec<(i64, i64)>>) -> usize {
    // `(time, goes_down)`: an end sorts before a start at the same instant, so touching spans
    // do not overlap.
    let mut edges: Vec<(i64, bool)> = down
        .values()
        .flatten()
        .flat_map(|&(from, to)| [(from, true), (to, false)])
        .collect();
    edges.sort();
    let open = edges.iter().scan(0, |open, &(_, goes_down)| {
        *open = if goes_down { *open + 1 } else { *open - 1 };
        Some(*open)
    });
    open.max().unwrap_or(0)
}

/// A rolling replacement of n1..n3: each down once, in order, at most `MAX_UNAVAILABLE` at once
/// and at some point exactly that many.
fn assert_rolled(down: &BTreeMap<String, Vec<(i64, i64)>>) {
    let times: Vec<(&str, usize)> = down.iter().map(|(n, d)| (n.as_str(), d.len())).collect();
    assert_eq!(
        times,
        [("n1", 1), ("n2", 1), ("n3", 1)],
        "each node down once: {down:?}"
    );
    let mut order: Vec<&str> = down.keys().map(String::as_str).collect();
    order.sort_by_key(|n| down[*n][0].0);
    assert_eq!(order, ["n1", "n2", "n3"], "replaced in order: {down:?}");
    assert_eq!(
        most_down_at_once(down),
        MAX_UNAVAILABLE,
        "the most nodes down at once: {down:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_becomes_a_converged_cluster_and_every_change_after_it_rolls_out() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let mut layout = Layout::new("serve");
    let _cleanup = ClusterCleanup(layout.cluster.clone());
    let repo = TestRepo::init();
    let first = repo.commit_files(
        &[(&layout.path(), &layout.yaml("v1", BUSYBOX_IMAGE))],
        "dev",
    );
    let mut daemon = TestDaemon::start(&repo.url()).await;
    let token = daemon.token_file(&layout.cluster).await;
    let mut agents: Vec<AgentProcess> = layout
        .nodes
        .iter()
        .map(|(n, _, _)| AgentProcess::start(&daemon, n, &token))
        .collect();
    let cluster_name = layout.cluster.clone();
    let cluster = cluster_name.as_str();

    // The first commit: etcd bootstraps, then each node's components, gated.
    daemon
        .await_status(
            "the cluster to converge",
            cluster,
            CONVERGE,
            ready_at(first.to_string()),
        )
        .await;
    let mut etcd = etcd_client(&layout, &agents[0]).await;
    let members = etcd.member_list().await.unwrap();
    let mut names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);
    for m in members.members() {
        assert!(
            m.peer_urls().iter().all(|u| u.starts_with("https://")),
            "{m:?}"
        );
        assert!(
            m.client_urls().iter().all(|u| u.starts_with("https://")),
            "{m:?}"
        );
    }
    // TLS only: without a client certificate of the cluster's CA, etcd serves nothing.
    let anonymous = async {
        let mut c = etcd_client_with(&layout, &agents[0], false).await?;
        c.get("drover-test", None).await
    };
    assert!(
        anonymous.await.is_err(),
        "etcd served a client without a certificate"
    );
    etcd.put("drover-test", "written", None).await.unwrap();
    for i in 1..=3 {
        let page = http_get(&format!("http://{}:8080/", layout.ip(&format!("n{i}")))).await;
        assert_eq!(page.unwrap().trim(), format!("n{i} v1"));
    }

    // The agents' steps, by action and outcome, and no node behind its plan.
    let metrics = http_get(&format!("http://{}/metrics", daemon.http()))
        .await
        .unwrap();
    for expected in [
        "drover_agent_steps_total{action=\"created\",outcome=\"ok\"}",
        "drover_agent_steps_total{action=\"file-written\",outcome=\"ok\"}",
        &format!("drover_generation_lag_nodes{{cluster=\"{cluster}\"}} 0"),
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    // What n1's agent receives, as an operator sees it: certificates, never a key.
    let show = crate::support::cli::command()
        .args(["node", "show", cluster, "n1", "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&show.stderr)
    );
    for expected in [
        "etcd certificates:",
        "server.pem",
        "peer.pem",
        "client.pem",
        "expires",
        "keys (not shown)",
        "probe: etcd https://",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("PRIVATE KEY"), "a key was shown:\n{text}");

    // A change of the api: one control-plane node at a time (maxUnavailable), in order, as the
    // engine's events show.
    let events = record_api_events(&engine, cluster);
    let second = repo.commit_files(&[(&layout.path(), &layout.yaml("v2", BUSYBOX_IMAGE))], "v2");
    daemon.hook().await;
    daemon
        .await_status(
            "v2 to roll out",
            cluster,
            CONVERGE,
            ready_at(second.to_string()),
        )
        .await;
    let apis: Vec<String> = (1..=3)
        .map(|i| format!("drover.{cluster}.n{i}.api"))
        .collect();
    assert_rolled(&downtimes(&events, &apis).await);
    let v2_started = started_at(&apis);
    for i in 1..=3 {
        let page = http_get(&format!("http://{}:8080/", layout.ip(&format!("n{i}")))).await;
        assert_eq!(page.unwrap().trim(), format!("n{i} v2"));
    }

    // An invalid file: nothing changes, and status says why.
    let broken = repo.commit_files(&[(&layout.path(), "spec: [\n")], "broken");
    daemon.hook().await;
    let status = daemon
        .await_status("the broken file to be held back", cluster, CONVERGE, |s| {
            if s.held_back && s.desired_revision.as_deref() != Some(broken.to_string().as_str()) {
                Ok(())
            } else {
                Err(format!("held back: {}", s.held_back))
            }
        })
        .await;
    assert_eq!(
        status.applied_revision.as_deref(),
        Some(second.to_string().as_str())
    );
    let clusters = crate::support::cli::command()
        .args(["status", "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&clusters.stdout);
    assert!(
        text.contains(&format!("{}:2:1: error", layout.path())),
        "{text}"
    );
    assert!(text.contains("held back"), "{text}");
    assert_eq!(started_at(&apis), v2_started, "nothing restarted");

    // A bad image: Stalled with the engine's reason, and the fix recovers.
    let bad = repo.commit_files(
        &[(
            &layout.path(),
            &layout.yaml("v2", "127.0.0.1:1/drover-test/nope:1"),
        )],
        "bad image",
    );
    daemon.hook().await;
    let status = daemon
        .await_status(
            "the bad image to stall",
            cluster,
            CONVERGE,
            |s| match condition(s) {
                (ConditionType::Stalled, m) if m.contains("nope") => Ok(()),
                (kind, m) => Err(format!("{kind:?}: {m}")),
            },
        )
        .await;
    assert_eq!(
        status.desired_revision.as_deref(),
        Some(bad.to_string().as_str())
    );
    assert!(
        condition(&status).1.contains("failed on w1"),
        "{:?}",
        condition(&status)
    );
    let fixed = repo.commit_files(
        &[(&layout.path(), &layout.yaml("v2", BUSYBOX_IMAGE))],
        "fix",
    );
    daemon.hook().await;
    daemon
        .await_status(
            "the fix to roll out",
            cluster,
            CONVERGE,
            ready_at(fixed.to_string()),
        )
        .await;

    // An agent cut off: with n2's agent away, n2 already counts as the one node that may be
    // down, so a change waits at the gate with that reason and no node is told its new plan;
    // back with its credential, n2 lets the rollout go on, in order.
    agents[1].stop();
    let n2_away = |s: &ClusterStatus| match condition(s) {
        (ConditionType::Reconciling, m)
            if m.starts_with("n2's agent is away (last seen ")
                && m.ends_with("); waiting for it to reconnect") =>
        {
            Ok(())
        }
        (kind, m) => Err(format!("{kind:?}: {m}")),
    };
    daemon
        .await_status("n2's agent to be missed", cluster, CONVERGE, n2_away)
        .await;
    let held = started_at(&apis);
    let events = record_api_events(&engine, cluster);
    let v3 = repo.commit_files(&[(&layout.path(), &layout.yaml("v3", BUSYBOX_IMAGE))], "v3");
    daemon.hook().await;
    let waiting = daemon
        .await_status("v3 to wait for n2", cluster, CONVERGE, |s| {
            n2_away(s)?;
            match s.desired_revision.as_deref() {
                Some(r) if r == v3.to_string() => Ok(()),
                other => Err(format!("desired {other:?}")),
            }
        })
        .await;
    let told: Vec<&str> = waiting
        .nodes
        .iter()
        .filter(|n| n.revision.as_deref() == Some(v3.to_string().as_str()))
        .map(|n| n.name.as_str())
        .collect();
    assert!(told.is_empty(), "told v3 while n2 is away: {told:?}");
    assert_eq!(started_at(&apis), held, "no api replaced while n2 is away");
    agents[1] = AgentProcess::start(&daemon, "n2", &token);
    let before = daemon
        .await_status(
            "v3 to roll out",
            cluster,
            CONVERGE,
            ready_at(v3.to_string()),
        )
        .await;
    assert_rolled(&downtimes(&events, &apis).await);
    for i in 1..=3 {
        let page = http_get(&format!("http://{}:8080/", layout.ip(&format!("n{i}")))).await;
        assert_eq!(page.unwrap().trim(), format!("n{i} v3"));
    }
    let joins = agents[1].log().matches("joined the cluster").count();
    assert_eq!(joins, 1, "n2 came back with its credential, not a new join");

    // SIGTERM: the daemon drains and exits 0; started again, it resumes with nothing redone.
    let apis_started = started_at(&apis);
    let exit = daemon.terminate();
    assert!(exit.success(), "{exit}\n{}", tail(&daemon.log(), 30));
    daemon.spawn().await;
    let after = daemon
        .await_status("the restarted daemon to resume", cluster, CONVERGE, |s| {
            ready_at(v3.to_string())(s)?;
            if s.nodes.iter().all(|n| n.connected) {
                Ok(())
            } else {
                Err("agents reconnecting".into())
            }
        })
        .await;
    let generations =
        |s: &ClusterStatus| -> Vec<Option<u64>> { s.nodes.iter().map(|n| n.generation).collect() };
    assert_eq!(
        generations(&after),
        generations(&before),
        "no generation reused or bumped"
    );
    assert_eq!(started_at(&apis), apis_started, "nothing restarted");
    let value = etcd.get("drover-test", None).await.unwrap();
    assert_eq!(value.kvs()[0].value_str().unwrap(), "written");

    let mut logs_of_removed = Vec::new();
    // `drover cert rotate`: every member gets new certificates and restarts on them, gated,
    // and etcd still serves over TLS.
    let expiries = |view: &NodeView| -> Vec<String> {
        view.certificates
            .iter()
            .map(|c| format!("{} {}", c.file, c.not_after))
            .collect()
    };
    let old: Vec<Vec<String>> = {
        let mut out = Vec::new();
        for n in ["n1", "n2", "n3"] {
            out.push(expiries(&node_view(&daemon, cluster, n).await));
        }
        out
    };
    let rotate = crate::support::cli::command()
        .args(["cert", "rotate", cluster, "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .await
        .unwrap();
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    crate::support::wait::poll_until(CONVERGE, || async {
        let s = daemon.status(cluster).await?;
        ready_at(v3.to_string())(&s)?;
        for (i, n) in ["n1", "n2", "n3"].into_iter().enumerate() {
            if expiries(&node_view(&daemon, cluster, n).await) == old[i] {
                return Err(format!("{n} has its old certificates"));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("rotation: {:?}\n{}", e.last_error, tail(&daemon.log(), 40)));
    let mut renewed = etcd_client(&layout, &agents[0]).await;
    let value = renewed.get("drover-test", None).await.unwrap();
    assert_eq!(value.kvs()[0].value_str().unwrap(), "written");

    // A fourth etcd member: one member add through a running member, then the new member
    // starts and joins, gated. Its removal: the member leaves first, then its containers and
    // files go, then its credential is revoked and its agent says so and stops.
    layout.add("n4", "[etcd]");
    let grown = repo.commit_files(&[(&layout.path(), &layout.yaml("v3", BUSYBOX_IMAGE))], "n4");
    daemon.hook().await;
    let mut n4 = AgentProcess::start(&daemon, "n4", &token);
    daemon
        .await_status("n4 to join", cluster, CONVERGE, ready_at(grown.to_string()))
        .await;
    let mut names = member_names(&mut etcd_client(&layout, &agents[0]).await).await;
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3", "n4"]);
    let n4_pki = pki_dir(&layout, &n4);
    assert!(n4_pki.join("peer.pem").exists(), "{}", n4_pki.display());
    assert!(!containers_of_node(cluster, "n4").is_empty());

    layout.remove("n4");
    let shrunk = repo.commit_files(
        &[(&layout.path(), &layout.yaml("v3", BUSYBOX_IMAGE))],
        "-n4",
    );
    daemon.hook().await;
    daemon
        .await_status(
            "n4 to leave",
            cluster,
            CONVERGE,
            ready_at(shrunk.to_string()),
        )
        .await;
    let mut names = member_names(&mut etcd_client(&layout, &agents[0]).await).await;
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"]);
    let exit = n4
        .exited(CONVERGE)
        .await
        .expect("n4's agent stops dialling");
    assert!(!exit.success(), "{exit}");
    let said = n4.log();
    assert!(
        said.contains("revoked") || said.contains("left the cluster"),
        "{said}"
    );
    assert!(
        containers_of_node(cluster, "n4").is_empty(),
        "n4's containers stay"
    );
    assert!(!n4_pki.join("peer.pem").exists(), "n4's certificates stay");
    let list = crate::support::cli::command()
        .args(["node", "list", "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .await
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    let n4_line = list.lines().find(|l| l.contains("n4")).unwrap_or_default();
    assert!(n4_line.contains("revoked"), "{list}");
    logs_of_removed.push(n4.log());

    // Nothing secret in any log.
    let operator_token =
        std::fs::read_to_string(daemon.state_dir().join("operator-token")).unwrap();
    let join_token = std::fs::read_to_string(&token).unwrap();
    let mut logs = vec![daemon.log()];
    logs.append(&mut logs_of_removed);
    for agent in &mut agents {
        agent.stop();
        logs.push(agent.log());
    }
    for log in &logs {
        assert!(
            !log.contains(operator_token.trim()),
            "the operator token leaked"
        );
        assert!(!log.contains(join_token.trim()), "a join token leaked");
        assert!(!log.contains("PRIVATE KEY"), "a key leaked");
        assert!(
            !log.contains(&daemon.hook_secret),
            "the webhook secret leaked"
        );
    }
}

#[tokio::test]
async fn serve_refuses_bad_settings_before_it_binds() {
    let dir = crate::support::private_tempdir();
    let state = dir.path().join("state");
    let config = dir.path().join("daemon.yaml");
    std::fs::write(
        &config,
        "apiVersion: drover.dev/v1alpha1\nkind: DaemonConfig\nlisten: {http: 'nowhere'}\n",
    )
    .unwrap();
    let notes = dir.path().join("notes.yaml");
    std::fs::create_dir_all(dir.path().join("clusters")).unwrap();
    std::fs::write(
        &notes,
        format!(
            "apiVersion: drover.dev/v1alpha1\nkind: DaemonConfig\nsource: {{local: {{path: {}}}}}\nverdicts: {{notes: true}}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--config".into(), config.display().to_string()],
            "invalid daemon setting: a listen address is ip:port",
        ),
        (
            vec![
                "--config".into(),
                notes.display().to_string(),
                "--state-dir".into(),
                state.display().to_string(),
            ],
            "verdicts.notes needs a Git source",
        ),
        (
            vec!["--state-dir".into(), state.display().to_string()],
            "no source",
        ),
        (
            vec![
                "--source".into(),
                dir.path().display().to_string(),
                "--state-dir".into(),
                state.display().to_string(),
                "--listen-http".into(),
                "127.0.0.1".into(),
            ],
            "--listen-http `127.0.0.1` is not ip:port",
        ),
        (
            vec!["--state-dir".into(), "relative/state".into()],
            "--state-dir must be an absolute path",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["serve".to_string()];
        all.extend(args.iter().cloned());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = tokio::time::timeout(Duration::from_secs(30), crate::support::cli::drover(&refs))
            .await
            .expect("a refused start exits at once");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!state.exists(), "nothing was written for a refused start");
}

/// `drover node show CLUSTER NODE --format json`.
async fn node_view(daemon: &TestDaemon, cluster: &str, node: &str) -> NodeView {
    let out = crate::support::cli::command()
        .args([
            "node",
            "show",
            cluster,
            node,
            "--format",
            "json",
            "--state-dir",
        ])
        .arg(daemon.state_dir())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn member_names(etcd: &mut etcd_client::Client) -> Vec<String> {
    let list = etcd.member_list().await.unwrap();
    list.members()
        .iter()
        .map(|m| m.name().to_string())
        .collect()
}

/// The snapshots the daemon's `backups` store lists for `cluster`.
async fn stored_snapshots(
    daemon: &TestDaemon,
    cluster: &drover::model::ClusterName,
) -> Vec<drover::model::SnapshotId> {
    let dir = daemon.snapshots_dir();
    if !dir.exists() {
        return Vec::new();
    }
    let store = object_store::local::LocalFileSystem::new_with_prefix(&dir).unwrap();
    let ids = drover::snapshot::list(&store, cluster).await.unwrap();
    ids.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_snapshots_land_in_the_store_and_rotate() {
    use std::sync::Arc;

    use futures::TryStreamExt as _;

    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let layout = Layout::new("snap");
    let _cleanup = ClusterCleanup(layout.cluster.clone());
    let repo = TestRepo::init();
    let first = repo.commit_files(
        &[(&layout.path(), &layout.yaml_with_snapshots("v1", "1m", 1))],
        "dev with snapshots",
    );
    let mut daemon = TestDaemon::start(&repo.url()).await;
    let token = daemon.token_file(&layout.cluster).await;
    let mut agents: Vec<AgentProcess> = layout
        .nodes
        .iter()
        .map(|(n, _, _)| AgentProcess::start(&daemon, n, &token))
        .collect();
    let cluster = drover::model::ClusterName::parse(&layout.cluster).unwrap();
    daemon
        .await_status(
            "the cluster to converge",
            cluster.as_str(),
            CONVERGE,
            ready_at(first.to_string()),
        )
        .await;
    let mut etcd = etcd_client(&layout, &agents[0]).await;
    etcd.put("drover-test", "before", None).await.unwrap();

    // Snapshots every minute (the shortest interval), the newest kept: the first comes soon
    // after the cluster is up (a run that found no healthy member is retried within
    // seconds), and the second replaces it.
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    crate::support::wait::poll_until(CONVERGE, || async {
        let now = stored_snapshots(&daemon, &cluster).await;
        let mut seen = seen.lock().unwrap();
        seen.extend(now.iter().cloned());
        if seen.len() >= 2 && now.len() == 1 {
            Ok(())
        } else {
            Err(format!("seen {seen:?}, stored now {now:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("snapshots: {:?}\n{}", e.last_error, tail(&daemon.log(), 40)));

    // The newest is whole: both hashes and etcd's own check out, and etcd reads it.
    let newest = stored_snapshots(&daemon, &cluster).await.pop().unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(daemon.snapshots_dir()).unwrap(),
    );
    let (manifest, raw) = drover::snapshot::download::download_verified(store, &cluster, &newest)
        .await
        .unwrap();
    let raw: Vec<bytes::Bytes> = raw.try_collect().await.unwrap();
    let revision = crate::snapshot_store::etcdctl_status_revision(&raw.concat());
    assert!(
        revision >= manifest.revision,
        "{revision} < {}",
        manifest.revision
    );
    assert_eq!(manifest.git_commit, first.to_string());
    assert!(
        ["n1", "n2", "n3"].contains(&manifest.member.as_str()),
        "{}",
        manifest.member
    );
    let log = daemon.log();
    assert!(log.contains("snapshot saved"), "{}", tail(&log, 40));

    let metrics = http_get(&format!("http://{}/metrics", daemon.http()))
        .await
        .unwrap();
    for expected in [
        format!("drover_snapshots_total{{cluster=\"{cluster}\",outcome=\"saved\"}}"),
        format!("drover_snapshot_overdue{{cluster=\"{cluster}\"}} 0"),
        format!("drover_snapshot_newest_age_seconds{{cluster=\"{cluster}\"}}"),
        format!("drover_snapshot_duration_seconds_count{{cluster=\"{cluster}\"}}"),
    ] {
        assert!(
            metrics.contains(&expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    operator_snapshot_commands(&daemon, &cluster).await;
    for agent in &mut agents {
        agent.stop();
    }
    let exit = daemon.terminate();
    assert!(exit.success(), "{exit}\n{}", tail(&daemon.log(), 30));
}

#[tokio::test]
async fn a_policy_naming_a_store_the_daemon_lacks_is_shown_overdue_at_once() {
    let layout = Layout::new("nostore");
    let repo = TestRepo::init();
    let yaml = layout
        .yaml_with_snapshots("v1", "1h", 3)
        .replace("store: backups", "store: offsite");
    repo.commit_files(&[(&layout.path(), &yaml)], "a store nobody configured");
    let mut daemon = TestDaemon::start(&repo.url()).await;
    let status = daemon
        .await_status(
            "the snapshot condition",
            &layout.cluster,
            CONVERGE,
            |s| match s.condition(ConditionType::SnapshotOverdue) {
                Some(c) if c.status => Ok(()),
                other => Err(format!("SnapshotOverdue is {other:?}")),
            },
        )
        .await;
    let condition = status.condition(ConditionType::SnapshotOverdue).unwrap();
    assert_eq!(condition.reason, "SnapshotsBlocked");
    assert!(
        condition.message.contains("store offsite")
            && condition.message.contains("does not define"),
        "{condition:?}"
    );
    let snapshots = status.snapshots.expect("the policy is shown");
    assert_eq!(
        (snapshots.store.as_str(), snapshots.next_run),
        ("offsite", None)
    );
    let metrics = http_get(&format!("http://{}/metrics", daemon.http()))
        .await
        .unwrap();
    let overdue = format!(
        "drover_snapshot_overdue{{cluster=\"{}\"}} 1",
        layout.cluster
    );
    assert!(
        metrics.contains(&overdue),
        "{overdue} missing from:\n{metrics}"
    );
    crate::support::wait::poll_until(CONVERGE, || async {
        let log = daemon.log();
        match log.contains("snapshots cannot be taken") && log.contains("store offsite") {
            true => Ok(()),
            false => Err(tail(&log, 30)),
        }
    })
    .await
    .expect("the daemon warns");
    let exit = daemon.terminate();
    assert!(exit.success(), "{exit}\n{}", tail(&daemon.log(), 30));
}

/// `drover snapshot save|list|verify|prune` and `drover status` against a daemon whose cluster
/// takes snapshots every minute into a file store, keeping the newest.
async fn operator_snapshot_commands(daemon: &TestDaemon, cluster: &drover::model::ClusterName) {
    use drover::api::snapshots::{PruneDocument, SnapshotView, SnapshotsDocument, Verification};

    let state_dir = daemon.state_dir();
    let cli = |args: Vec<&str>| {
        let state_dir = state_dir.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let out = crate::support::cli::command()
                .args(&args)
                .arg("--state-dir")
                .arg(&state_dir)
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            (out.status.code(), text, err)
        }
    };
    let name = cluster.as_str();

    // A snapshot now, through the daemon: stored whole, newest in the listing. While a
    // scheduled one is being taken the daemon refuses, saying so.
    let saved = crate::support::wait::poll_until(Duration::from_secs(60), || async {
        match cli(vec!["snapshot", "save", name, "--format", "json"]).await {
            (Some(0), text, _) => Ok(serde_json::from_str::<SnapshotView>(&text).unwrap()),
            (Some(77), _, err) if err.contains("being taken now") => Err(err),
            (code, text, err) => panic!("{code:?}: {text}{err}"),
        }
    })
    .await
    .unwrap();
    let (code, text, err) = cli(vec!["snapshot", "list", name, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{text}{err}");
    let listed: SnapshotsDocument = serde_json::from_str(&text).unwrap();
    assert_eq!(
        listed.snapshots.first().map(|s| &s.id),
        Some(&saved.id),
        "{text}"
    );
    let schedule = listed.schedule.expect("the cluster has a policy");
    assert_eq!(schedule.last_success.map(|r| r.id), Some(saved.id.clone()));
    assert_eq!(
        (schedule.store.as_str(), schedule.blocked),
        ("backups", None)
    );

    // Verified: both hashes and etcd's; the record shows it and retention keeps it for it.
    let (code, text, err) = cli(vec![
        "snapshot", "verify", name, &saved.id, "--format", "json",
    ])
    .await;
    assert_eq!(code, Some(0), "{text}{err}");
    let verified: Verification = serde_json::from_str(&text).unwrap();
    assert!(verified.passed, "{verified:?}");
    assert_eq!(
        (verified.bytes, verified.revision),
        (Some(saved.raw_size), Some(saved.revision))
    );
    let (code, text, err) = cli(vec![
        "snapshot",
        "prune",
        name,
        "--dry-run",
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, Some(0), "{text}{err}");
    let pruned: PruneDocument = serde_json::from_str(&text).unwrap();
    let kept = pruned.kept.iter().find(|k| k.id == saved.id).expect("kept");
    assert!(
        kept.reasons.iter().any(|r| r.contains("verified")),
        "{kept:?}"
    );
    let (code, text, err) = cli(vec!["status", name]).await;
    assert_eq!(code, Some(0), "{text}{err}");
    for line in [
        "snapshots every 1m to store backups",
        "last verification",
        &saved.id,
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }

    // One byte of the stored data flipped: verify fails with the reason, exit 1.
    let data = daemon
        .snapshots_dir()
        .join(name)
        .join(format!("{}.db.zst", saved.id));
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    let (code, text, err) = cli(vec!["snapshot", "verify", name, &saved.id]).await;
    assert_eq!(code, Some(1), "{text}{err}");
    assert!(text.contains("FAILED") && text.contains("sha256"), "{text}");

    // Requests the daemon cannot serve say why.
    let (code, _, err) = cli(vec!["snapshot", "list", "nope"]).await;
    assert_eq!(code, Some(77), "{err}");
    assert!(err.contains("no cluster named nope"), "{err}");
    let (code, _, err) = cli(vec!["snapshot", "verify", name, "not-an-id"]).await;
    assert_eq!(code, Some(77), "{err}");
    assert!(err.contains("is not a snapshot id"), "{err}");
}
