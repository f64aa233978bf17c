//! Pruning, one contract for every store: the same test runs on the local file store and on a
//! real S3 server (Garage). Two clusters (`dev` and `dev2`) share the store; pruning `dev`
//! removes only its own old snapshots and expired orphans, a dry run deletes nothing and
//! reports the same plan, and the bound on deletions defers the rest to the next run.
//!
//! Garage's objects cannot be backdated, so the grace period is driven by `now`: it is set from
//! the store's own last-modified times, one grace period after the fresh orphan was written.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use drover::config::Store;
use drover::model::{ClusterName, Retention, SnapshotId};
use drover::snapshot;
use drover::snapshot::retention::{prune, Outcome, Policy, PruneReport, Target};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::support::garage::S3Prefix;
use crate::support::{require, test_name};

const GRACE: Duration = Duration::from_secs(3600);
/// How long the fresh orphan may take to get a later last-modified time than the old one
/// (S3 times have whole seconds).
const LATER_TIMEOUT: Duration = Duration::from_secs(10);

const S1: &str = "20261125T060000Z-1-aaaaaaaa";
const S2: &str = "20261125T070000Z-2-bbbbbbbb";
const S3: &str = "20261125T080000Z-3-cccccccc";
const S4: &str = "20261125T090000Z-4-dddddddd";
const OLD_ORPHAN: &str = "20261125T100000Z-5-eeeeeeee";
const FRESH_ORPHAN: &str = "20261125T110000Z-6-ffffffff";

async fn put(store: &dyn ObjectStore, name: &str) {
    store
        .put(&Path::from(name), PutPayload::from_static(b"{}"))
        .await
        .unwrap_or_else(|e| panic!("put {name}: {e}"));
}

async fn last_modified(store: &dyn ObjectStore, name: &str) -> SystemTime {
    let meta = store
        .head(&Path::from(name))
        .await
        .unwrap_or_else(|e| panic!("head {name}: {e}"));
    meta.last_modified.into()
}

async fn everything(store: &dyn ObjectStore) -> BTreeSet<String> {
    let listing = store.list(None).map_ok(|meta| meta.location.to_string());
    listing.try_collect().await.expect("list the store")
}

/// Both clusters' snapshots (the same names in each), strangers, and `dev`'s orphans: the old
/// one first, then the fresh one, written again until its time is later. Returns the `now` at
/// which the old orphan is past the grace period and the fresh one is not.
async fn populate(store: &dyn ObjectStore) -> SystemTime {
    for cluster in ["dev", "dev2"] {
        for id in [S1, S2, S3, S4] {
            put(store, &format!("{cluster}/{id}.db.zst")).await;
            put(store, &format!("{cluster}/{id}.db.zst.json")).await;
        }
        put(store, &format!("{cluster}/{OLD_ORPHAN}.db.zst")).await;
    }
    put(store, "dev/notes.txt").await;
    put(store, &format!("dev/old/{S1}.db.zst.json")).await;
    put(store, &format!("dev/old/{OLD_ORPHAN}.db.zst")).await;
    put(store, &format!("de/{S1}.db.zst.json")).await;

    let old = last_modified(store, &format!("dev/{OLD_ORPHAN}.db.zst")).await;
    let fresh = format!("dev/{FRESH_ORPHAN}.db.zst");
    let later = async {
        loop {
            put(store, &fresh).await;
            let written = last_modified(store, &fresh).await;
            if written > old {
                return written;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let fresh_written = tokio::time::timeout(LATER_TIMEOUT, later)
        .await
        .unwrap_or_else(|_| {
            panic!("the fresh orphan's last-modified time never passed the old one's within {LATER_TIMEOUT:?}")
        });
    fresh_written + GRACE
}

fn policy() -> Policy {
    let retention = Retention {
        last: NonZeroU32::new(2).unwrap(),
        hourly: None,
        daily: None,
        weekly: None,
    };
    Policy::new(retention)
}

/// Each deletion, as `<what> <outcome>`.
fn outcomes(report: &PruneReport) -> Vec<String> {
    report
        .deletions
        .iter()
        .map(|(target, outcome)| {
            let what = match target {
                Target::Snapshot { id, .. } => format!("snapshot {id}"),
                Target::Orphan(location) => format!("orphan {location}"),
            };
            let outcome = match outcome {
                Outcome::Deleted => "deleted".to_string(),
                Outcome::WouldDelete => "would delete".to_string(),
                Outcome::Deferred => "deferred".to_string(),
                Outcome::Failed(error) => format!("failed: {error}: {}", error.source),
            };
            format!("{what} {outcome}")
        })
        .collect()
}

async fn check_prune(store: Arc<dyn ObjectStore>) {
    let store = store.as_ref();
    let now = populate(store).await;
    let dev = ClusterName::parse("dev").unwrap();
    // The oldest snapshot is the one verified: kept beside the newest two.
    let verified: BTreeSet<SnapshotId> = [SnapshotId::parse(S1).unwrap()].into();
    let before = everything(store).await;

    let dry = prune(store, &dev, &policy(), &verified, now, true)
        .await
        .expect("dry run");
    assert_eq!(
        everything(store).await,
        before,
        "a dry run deleted something"
    );
    let doomed = [
        format!("snapshot {S2}"),
        format!("orphan dev/{OLD_ORPHAN}.db.zst"),
    ];
    let want: Vec<String> = doomed.iter().map(|d| format!("{d} would delete")).collect();
    assert_eq!(outcomes(&dry), want);
    let fresh = dry
        .plan
        .orphans
        .iter()
        .find(|o| o.location.as_ref() == format!("dev/{FRESH_ORPHAN}.db.zst"));
    assert!(!fresh.expect("the fresh orphan is planned").expired);
    assert_eq!(dry.plan.untouched, vec![Path::from("dev/notes.txt")]);

    // One deletion per run: the snapshot goes, the orphan waits.
    let mut bounded = policy();
    bounded.max_deletions = 1;
    let first = prune(store, &dev, &bounded, &verified, now, false)
        .await
        .expect("first prune");
    assert_eq!(first.plan, dry.plan, "a real run planned differently");
    let want = [
        format!("{} deleted", doomed[0]),
        format!("{} deferred", doomed[1]),
    ];
    assert_eq!(outcomes(&first), want);

    let second = prune(store, &dev, &policy(), &verified, now, false)
        .await
        .expect("second prune");
    assert_eq!(outcomes(&second), [format!("{} deleted", doomed[1])]);

    let gone: BTreeSet<String> = [
        format!("dev/{S2}.db.zst.json"),
        format!("dev/{S2}.db.zst"),
        format!("dev/{OLD_ORPHAN}.db.zst"),
    ]
    .into();
    let left: BTreeSet<String> = before.difference(&gone).cloned().collect();
    assert_eq!(everything(store).await, left);

    let third = prune(store, &dev, &policy(), &verified, now, false)
        .await
        .expect("third prune");
    assert!(third.deletions.is_empty(), "{:?}", outcomes(&third));
}

#[tokio::test]
async fn the_file_store_prunes_only_the_clusters_own_old_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::File {
        root: dir.path().to_path_buf(),
    };
    check_prune(snapshot::open(&store).expect("open")).await;
}

#[tokio::test]
async fn the_s3_store_prunes_only_the_clusters_own_old_objects() {
    let s3 = require!(S3Prefix::new(&test_name!()).await);
    check_prune(s3.dyn_store()).await;
}
