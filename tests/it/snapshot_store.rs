//! Snapshot stores, one contract for every kind: the same listing test runs on the local file
//! store and on a real S3 server (Garage), each opened from a daemon configuration the way the
//! daemon opens it. And `drover plan --daemon-config` uses the listing to refuse a restore of a
//! snapshot the store does not hold.

use std::path::PathBuf;
use std::sync::Arc;

use drover::config::{self, Store};
use drover::model::{ClusterName, SnapshotId};
use drover::snapshot;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::support::garage::S3Prefix;
use crate::support::git::TestRepo;
use crate::support::{require, test_name};

const KEPT: &str = "20261125T060000Z-41-aaaaaaaa";

/// Writes a store's worth of objects for cluster `dev`: one complete snapshot, and everything
/// a listing must not mistake for one.
async fn populate(store: &dyn ObjectStore) {
    let objects = [
        format!("dev/{KEPT}.db.zst"),
        format!("dev/{KEPT}.db.zst.json"),
        // Data uploaded, manifest not yet written: not a snapshot.
        "dev/20261125T070000Z-42-bbbbbbbb.db.zst".to_string(),
        // Not a snapshot name at all.
        "dev/notes.json".to_string(),
        "dev/latest.db.zst.json".to_string(),
        // Deeper than a cluster's own snapshots.
        "dev/old/20261125T080000Z-43-cccccccc.db.zst.json".to_string(),
        // Another cluster, whose name starts like this one's.
        "dev2/20261125T090000Z-44-dddddddd.db.zst.json".to_string(),
    ];
    for name in objects {
        store
            .put(&Path::from(name.as_str()), PutPayload::from_static(b"{}"))
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
    }
}

async fn check_listing(store: Arc<dyn ObjectStore>) {
    populate(store.as_ref()).await;
    let dev = ClusterName::parse("dev").unwrap();
    let ids = snapshot::list(store.as_ref(), &dev).await.expect("list");
    let want = [SnapshotId::parse(KEPT).unwrap()].into_iter().collect();
    assert_eq!(ids, want);
    let none = ClusterName::parse("empty").unwrap();
    assert!(snapshot::list(store.as_ref(), &none)
        .await
        .unwrap()
        .is_empty());
}

fn daemon_config(stores: &str) -> config::DaemonConfig {
    let text = format!("apiVersion: drover.dev/v1alpha1\nkind: DaemonConfig\nstores:\n{stores}");
    config::parse("daemon.yaml", text.into_bytes()).unwrap_or_else(|e| panic!("{}", e.render()))
}

#[tokio::test]
async fn the_file_store_lists_only_complete_snapshots_of_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = daemon_config(&format!(
        "  local: {{url: 'file://{}'}}\n",
        dir.path().display()
    ));
    let store = &config.stores.values().next().unwrap();
    assert!(matches!(store, Store::File { .. }));
    check_listing(snapshot::open(store).expect("open")).await;
}

#[tokio::test]
async fn the_s3_store_lists_only_complete_snapshots_of_the_cluster() {
    let s3 = require!(S3Prefix::new(&test_name!()).await);
    let settings = &s3.settings;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("access-key-id");
    std::fs::write(&key_file, &settings.access_key_id).unwrap();
    let config = daemon_config(&format!(
        "  garage:\n    url: 's3://{}/{}'\n    endpoint: '{}'\n    region: '{}'\n    pathStyle: true\n    allowHttp: true\n    credentials: {{accessKeyIdFile: '{}', secretAccessKeyFile: '{}'}}\n",
        settings.bucket,
        s3.prefix,
        settings.endpoint,
        settings.region,
        key_file.display(),
        settings.secret_access_key_file,
    ));
    let store = config.stores.values().next().unwrap();
    check_listing(snapshot::open(store).expect("open")).await;
}

#[test]
fn plan_refuses_a_restore_of_a_snapshot_the_store_lacks() {
    let dev = include_str!("../../examples-repo/clusters/dev.yaml");
    let with_restore = |id: &str| {
        dev.replace(
            "    # restore: {snapshot: 20261125T060000Z-48213-9f3a61c2, requestId: incident-2026-11-25}",
            &format!("    restore: {{snapshot: {id}, requestId: incident-1}}"),
        )
    };
    let store = tempfile::tempdir().unwrap();
    let manifests = store.path().join("dev");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join(format!("{KEPT}.db.zst.json")), "{}").unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let config_file: PathBuf = config_dir.path().join("daemon.yaml");
    let text = format!(
        "apiVersion: drover.dev/v1alpha1\nkind: DaemonConfig\nstores:\n  local: {{url: 'file://{}'}}\n",
        store.path().display()
    );
    std::fs::write(&config_file, text).unwrap();

    let repo = TestRepo::init();
    let base = repo
        .commit_files(&[("clusters/dev.yaml", dev)], "base")
        .to_string();
    let plan = |id: &str| {
        let head = repo
            .commit_files(&[("clusters/dev.yaml", &with_restore(id))], "restore")
            .to_string();
        std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["plan", "--base", &base, "--head", &head, "--daemon-config"])
            .arg(&config_file)
            .current_dir(repo.path())
            .output()
            .expect("run drover")
    };
    let missing = plan("20261125T050000Z-40-eeeeeeee");
    let text = String::from_utf8_lossy(&missing.stdout);
    assert_eq!(missing.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error: restore requests snapshot 20261125T050000Z-40-eeeeeeee, which store local does not hold"),
        "{text}"
    );
    let held = plan(KEPT);
    let text = String::from_utf8_lossy(&held.stdout);
    assert_eq!(held.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "restore etcd from snapshot {KEPT} (request incident-1)"
        )),
        "{text}"
    );
}
