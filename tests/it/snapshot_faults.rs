//! Snapshots when the store goes away mid-upload: a daemon whose S3 store (Garage) is reached
//! through a proxy the test cuts while parts are uploading.

use std::process::Output;
use std::time::Duration;

use drover::api::snapshots::{SnapshotView, SnapshotsDocument};
use drover::model::ClusterName;

use crate::serve::{ready_at, CONVERGE};
use crate::snapshot_store::{multipart_uploads, write_keys};
use crate::support::daemon::{etcd_client, tail, AgentProcess, Layout, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::ClusterCleanup;
use crate::support::garage::S3Prefix;
use crate::support::git::TestRepo;
use crate::support::net::unique_loopback;
use crate::support::proxy::CuttingProxy;
use crate::support::{require, test_name};

/// `drover snapshot save CLUSTER` in the background.
fn save_in_background(daemon: &TestDaemon, cluster: &str) -> tokio::task::JoinHandle<Output> {
    let state = daemon.state_dir();
    let cluster = cluster.to_string();
    tokio::spawn(async move {
        crate::support::cli::command()
            .args(["snapshot", "save", &cluster, "--state-dir"])
            .arg(state)
            .output()
            .await
            .unwrap()
    })
}

/// Waits until more than `bytes` went to the store through `proxy` since `from`.
async fn await_upstream(proxy: &CuttingProxy, from: u64, bytes: u64) {
    crate::support::wait::poll_until(Duration::from_secs(120), || async {
        match proxy.upstream_bytes() - from {
            n if n > bytes => Ok(()),
            n => Err(n),
        }
    })
    .await
    .expect("parts go to the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_gone_mid_upload_leaves_no_snapshot_and_the_next_run_cleans_up() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let s3 = require!(S3Prefix::new(&test_name!()).await);
    let proxy = CuttingProxy::start(unique_loopback(&[]).into(), s3.settings.socket_addr()).await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("access-key-id");
    std::fs::write(&key_file, &s3.settings.access_key_id).unwrap();
    let store = format!(
        "garage: {{url: 's3://{}/{}', endpoint: 'http://{}', region: '{}', pathStyle: true, allowHttp: true, credentials: {{accessKeyIdFile: '{}', secretAccessKeyFile: '{}'}}}}",
        s3.settings.bucket,
        s3.prefix,
        proxy.addr,
        s3.settings.region,
        key_file.display(),
        s3.settings.secret_access_key_file,
    );

    let layout = Layout::new("faults");
    let _cleanup = ClusterCleanup(layout.cluster.clone());
    let repo = TestRepo::init();
    let yaml = layout
        .yaml_with_snapshots("v1", "24h", 5)
        .replace("store: backups", "store: garage");
    let first = repo.commit_files(&[(&layout.path(), &yaml)], "dev, snapshots to Garage");
    let mut daemon = TestDaemon::start_with_stores(&repo.url(), &[store]).await;
    let token = daemon.token_file(&layout.cluster).await;
    let mut agents: Vec<AgentProcess> = layout
        .nodes
        .iter()
        .map(|(n, _, _)| AgentProcess::start(&daemon, n, &token))
        .collect();
    let cluster = layout.cluster.as_str();
    let name = ClusterName::parse(cluster).unwrap();
    daemon
        .await_status(
            "the cluster to converge",
            cluster,
            CONVERGE,
            ready_at(first.to_string()),
        )
        .await;
    // 48 MiB of incompressible values: six parts of 8 MiB.
    let mut etcd = etcd_client(&layout, &agents[0]).await;
    write_keys(&mut etcd, 384, 128 * 1024).await;
    drop(etcd);

    // The store goes away once more than a part went to it.
    let save = save_in_background(&daemon, cluster);
    await_upstream(&proxy, 0, 10 << 20).await;
    // Held there, the save shows as running with the bytes received so far.
    proxy.pause();
    let status = daemon.status(cluster).await.unwrap();
    let schedule = status.snapshots.expect("a policy");
    assert!(schedule.running, "{schedule:?}");
    assert!(schedule.received_bytes >= Some(10 << 20), "{schedule:?}");
    proxy.cut();
    proxy.resume();
    let failed = save.await.unwrap();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(77), "{err}");
    assert!(err.contains("the snapshot was not taken"), "{err}");

    // The failure and its reason are in the cluster's status.
    let status = daemon.status(cluster).await.unwrap();
    let schedule = status.snapshots.expect("a policy");
    let failure = schedule.last_failure.expect("the failure is shown");
    assert!(
        !failure.reason.is_empty() && schedule.failures >= 1,
        "{failure:?}"
    );
    assert_eq!(schedule.last_success, None);

    // Back: nothing was listed, since no manifest was written; the parts sent are still in
    // Garage, since the abort could not reach it either.
    proxy.mend();
    let (code, text, err) = daemon
        .cli(&["snapshot", "list", cluster, "--format", "json"])
        .await;
    assert_eq!(code, Some(0), "{text}{err}");
    let listed: SnapshotsDocument = serde_json::from_str(&text).unwrap();
    assert!(listed.snapshots.is_empty(), "{text}");
    assert!(
        !multipart_uploads(&s3, &name).is_empty(),
        "the abort reached the store"
    );

    // The next run aborts the abandoned upload first, then saves.
    let (code, text, err) = daemon
        .cli(&["snapshot", "save", cluster, "--format", "json"])
        .await;
    assert_eq!(code, Some(0), "{text}{err}\n{}", tail(&daemon.log(), 30));
    let saved: SnapshotView = serde_json::from_str(&text).unwrap();
    assert_eq!(multipart_uploads(&s3, &name), Vec::<String>::new());
    let (_, text, _) = daemon
        .cli(&["snapshot", "list", cluster, "--format", "json"])
        .await;
    let listed: SnapshotsDocument = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = listed.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [saved.id.as_str()]);
    assert!(daemon
        .log()
        .contains("an abandoned snapshot upload was aborted"));

    // A daemon killed mid-upload leaves nothing listed once it is back.
    let before = proxy.upstream_bytes();
    let save = save_in_background(&daemon, cluster);
    await_upstream(&proxy, before, 10 << 20).await;
    daemon.kill();
    let cut_off = save.await.unwrap();
    assert_ne!(cut_off.status.code(), Some(0));
    daemon.spawn().await;
    let (code, text, err) = daemon
        .cli(&["snapshot", "list", cluster, "--format", "json"])
        .await;
    assert_eq!(code, Some(0), "{text}{err}");
    let listed: SnapshotsDocument = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = listed.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [saved.id.as_str()]);
    for agent in &mut agents {
        agent.stop();
    }
    let exit = daemon.terminate();
    assert!(exit.success(), "{exit}\n{}", tail(&daemon.log(), 30));
}
