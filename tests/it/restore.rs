//! Restoring a cluster's etcd from a snapshot, all real: a daemon, three etcd members and a
//! worker run by agents on Docker, snapshots in the daemon's file store.

use drover::api::snapshots::{RestorePhase, RestoresDocument, SnapshotView, Verification};
use drover::api::ConditionType;

use crate::serve::{ready_at, CONVERGE};
use crate::support::daemon::{etcd_client, tail, AgentProcess, Layout, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::{containers_of, ClusterCleanup};
use crate::support::git::TestRepo;
use crate::support::require;

async fn value(etcd: &mut etcd_client::Client, key: &str) -> Option<String> {
    let answer = etcd.get(key, None).await.unwrap();
    answer
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_in_git_brings_back_a_wiped_cluster_once_across_a_restart() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let layout = Layout::new("restore");
    let _cleanup = ClusterCleanup(layout.cluster.clone());
    let repo = TestRepo::init();
    let with_snapshots = layout
        .yaml_with_snapshots("v1", "24h", 5)
        .replace("store: backups,", "store: backups, drillEvery: 1m,");
    let first = repo.commit_files(&[(&layout.path(), &with_snapshots)], "dev");
    let mut daemon = TestDaemon::start(&repo.url()).await;
    let token = daemon.token_file(&layout.cluster).await;
    let mut agents = AgentProcess::start_all(&daemon, &layout, &token);
    let cluster = layout.cluster.as_str();
    daemon
        .await_status(
            "the cluster to converge",
            cluster,
            CONVERGE,
            ready_at(first.to_string()),
        )
        .await;

    // A key before the snapshot, one after it.
    let mut etcd = etcd_client(&layout, &agents[0]).await;
    etcd.put("before", "kept", None).await.unwrap();
    let (code, text, err) = daemon
        .cli(&["snapshot", "save", cluster, "--format", "json"])
        .await;
    assert_eq!(code, Some(0), "{text}{err}");
    let saved: SnapshotView = serde_json::from_str(&text).unwrap();
    etcd.put("after", "lost", None).await.unwrap();
    drop(etcd);

    // Restored into a throwaway etcd on a member, it holds the key and the revision saved;
    // nothing of the drill is left on the node.
    let (code, text, err) = daemon
        .cli(&[
            "snapshot", "verify", cluster, &saved.id, "--deep", "--format", "json",
        ])
        .await;
    assert_eq!(code, Some(0), "{text}{err}");
    let deep: Verification = serde_json::from_str(&text).unwrap();
    assert!(deep.passed && deep.deep, "{deep:?}");
    assert_eq!(deep.revision, Some(saved.revision), "{deep:?}");
    assert!(deep.keys >= Some(1), "{deep:?}");
    assert!(["n1", "n2", "n3"].contains(&deep.by.as_str()), "{deep:?}");
    let tasks = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=drover.dev/task"])
        .output()
        .unwrap();
    assert!(tasks.stdout.is_empty(), "{tasks:?}");

    // Every member's machine is lost: its containers, its data, its agent's credential. New
    // machines of the same names join with new keys (after `drover node reset`) and come up
    // empty; the worker keeps its own.
    for agent in &mut agents {
        agent.stop();
    }
    for id in containers_of(cluster) {
        let out = std::process::Command::new("docker")
            .args(["rm", "-f", &id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    for agent in agents.iter().filter(|a| a.node.starts_with('n')) {
        std::fs::remove_dir_all(&agent.dir).unwrap();
        let (code, text, err) = daemon.cli(&["node", "reset", cluster, &agent.node]).await;
        assert_eq!(code, Some(0), "{text}{err}");
    }
    let mut agents = AgentProcess::start_all(&daemon, &layout, &token);

    // The restore, committed to Git.
    let request = with_snapshots.replace(
        "  components:\n",
        &format!(
            "    restore: {{snapshot: {}, requestId: wiped-1}}\n  components:\n",
            saved.id
        ),
    );
    let second = repo.commit_files(&[(&layout.path(), &request)], "restore dev");
    daemon.hook().await;
    daemon
        .await_status(
            "the restore and the cluster back",
            cluster,
            CONVERGE * 2,
            ready_at(second.to_string()),
        )
        .await;
    let mut etcd = etcd_client(&layout, &agents[0]).await;
    assert_eq!(
        value(&mut etcd, "before").await.as_deref(),
        Some("kept"),
        "{}",
        tail(&daemon.log(), 80)
    );
    assert_eq!(value(&mut etcd, "after").await, None);
    etcd.put("written-after-the-restore", "stays", None)
        .await
        .unwrap();
    drop(etcd);

    // Recorded once, done, with a reason at every step; each member kept the data it had.
    let (code, text, err) = daemon
        .cli(&["snapshot", "restores", cluster, "--format", "json"])
        .await;
    assert_eq!(code, Some(0), "{text}{err}");
    let doc: RestoresDocument = serde_json::from_str(&text).unwrap();
    assert_eq!(doc.restores.len(), 1, "{text}");
    let run = &doc.restores[0];
    assert_eq!(
        (run.request_id.as_str(), run.phase, run.by.as_str()),
        ("wiped-1", RestorePhase::Done, "git")
    );
    for step in [
        "verified",
        "etcd stopped on every member",
        "n1: restored",
        "restored",
    ] {
        assert!(
            run.steps.iter().any(|s| s.contains(step)),
            "{step}: {:#?}",
            run.steps
        );
    }

    // A restarted daemon never runs it again: what was written after it stays.
    let exit = daemon.terminate();
    assert!(exit.success(), "{exit}\n{}", tail(&daemon.log(), 30));
    daemon.spawn().await;
    daemon
        .await_status(
            "the cluster after the restart",
            cluster,
            CONVERGE,
            ready_at(second.to_string()),
        )
        .await;
    let mut etcd = etcd_client(&layout, &agents[0]).await;
    assert_eq!(
        value(&mut etcd, "written-after-the-restore")
            .await
            .as_deref(),
        Some("stays")
    );
    let status = daemon.status(cluster).await.unwrap();
    let ready = status.condition(ConditionType::Ready).unwrap();
    assert!(ready.status, "{ready:?}");
    let (_, text, _) = daemon
        .cli(&["snapshot", "restores", cluster, "--format", "json"])
        .await;
    let doc: RestoresDocument = serde_json::from_str(&text).unwrap();
    assert_eq!(doc.restores.len(), 1, "{text}");

    // An operator's restore of a snapshot whose data was damaged is refused before etcd stops.
    let (code, text, err) = daemon
        .cli(&["snapshot", "save", cluster, "--format", "json"])
        .await;
    assert_eq!(code, Some(0), "{text}{err}");
    let damaged: SnapshotView = serde_json::from_str(&text).unwrap();
    let data = daemon
        .snapshots_dir()
        .join(cluster)
        .join(format!("{}.db.zst", damaged.id));
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&data, &bytes).unwrap();
    let (code, text, err) = daemon
        .cli(&["snapshot", "restore", cluster, &damaged.id])
        .await;
    assert_eq!(code, Some(1), "{text}{err}");
    assert!(
        text.contains("FAILED") && text.contains("fails verification"),
        "{text}"
    );
    let status = daemon.status(cluster).await.unwrap();
    assert!(
        status.condition(ConditionType::Ready).unwrap().status,
        "{status:?}"
    );

    // An operator's restore of the good one takes the cluster back to it.
    let (code, text, err) = daemon
        .cli(&["snapshot", "restore", cluster, &saved.id])
        .await;
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("restored from"), "{text}");
    assert!(text.contains("etcd was down"), "{text}");
    daemon
        .await_status(
            "the cluster after the operator's restore",
            cluster,
            CONVERGE,
            ready_at(second.to_string()),
        )
        .await;
    let mut etcd = etcd_client(&layout, &agents[0]).await;
    assert_eq!(value(&mut etcd, "before").await.as_deref(), Some("kept"));
    assert_eq!(value(&mut etcd, "written-after-the-restore").await, None);
    drop(etcd);
    // Each member kept the data the restore replaced.
    let (_, text, _) = daemon
        .cli(&["snapshot", "restores", cluster, "--format", "json"])
        .await;
    let doc: RestoresDocument = serde_json::from_str(&text).unwrap();
    let by_operator = doc
        .restores
        .iter()
        .find(|r| r.by == "operator" && r.phase == RestorePhase::Done)
        .expect("the operator's restore is recorded done");
    // etcd was down only for the swap and its start: the fetch and the restore into a fresh
    // directory came before the stop, while it served.
    assert!(by_operator.etcd_down_ms.is_some(), "{by_operator:?}");
    let stopped = by_operator
        .steps
        .iter()
        .position(|s| s.contains("stopping etcd"))
        .expect("a stop step");
    let fetched = by_operator
        .steps
        .iter()
        .filter(|s| s.contains("fetched and checked") && s.contains("restored beside"))
        .count();
    assert_eq!(
        fetched, 3,
        "every member prepared its data: {:?}",
        by_operator.steps
    );
    assert!(
        by_operator.steps[..stopped]
            .iter()
            .filter(|s| s.contains("restored beside"))
            .count()
            == 3,
        "the members' data was restored before etcd stopped: {:?}",
        by_operator.steps
    );
    for agent in agents.iter().take(3) {
        let replaced = agent
            .dir
            .join("root")
            .join(drover::nodeplan::etcd_data_dir(cluster).trim_start_matches('/'))
            .with_file_name(format!("etcd.replaced-{}", by_operator.request_id));
        assert!(
            replaced.join("member").is_dir(),
            "{} kept nothing",
            agent.node
        );
    }
    // Restore drills: a minute after the last deep verification (the one above counts), the
    // newest snapshot (the damaged one) is restored into a throwaway etcd, fails, and says so.
    let status = daemon
        .await_status(
            "a restore drill of the newest",
            cluster,
            CONVERGE,
            |s| match s.snapshots.as_ref().and_then(|s| s.last_drill.as_ref()) {
                Some(d) if d.id == damaged.id => Ok(()),
                other => Err(format!("last drill {other:?}")),
            },
        )
        .await;
    let drill = status.snapshots.unwrap().last_drill.unwrap();
    assert_eq!(
        (drill.deep, drill.passed, drill.id.as_str()),
        (true, false, damaged.id.as_str()),
        "{drill:?}"
    );
    assert!(
        drill
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("sha256"),
        "{drill:?}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed = format!("drover_snapshot_drill_passed{{cluster=\"{cluster}\"}} 0");
    assert!(
        metrics.contains(&failed),
        "{failed} missing from:\n{metrics}"
    );
    for agent in &mut agents {
        agent.stop();
    }
    let exit = daemon.terminate();
    assert!(exit.success(), "{exit}\n{}", tail(&daemon.log(), 30));
}
