//! Pruning, one contract for every store: the same test runs on the local file store and on a
//! real S3 server (Garage). Two clusters (`dev` and `dev2`) share the store; pruning `dev`
//! removes only its own old snapshots and expired orphans, a dry run deletes nothing and
//! reports the same plan, and the bound on deletions defers the rest to the next run.
//!
//! A failed deletion is reported, the run goes on, and the next run finishes the job; the
//! failure comes from a wrapper around the real file store that refuses chosen deletes.
//!
//! Garage's objects cannot be backdated, so the grace period is driven by `now`: it is set from
//! the store's own last-modified times, one grace period after the fresh orphan was written.

use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use drover::config::Store;
use drover::model::{ClusterName, Retention, SnapshotId};
use drover::snapshot;
use drover::snapshot::retention::{prune, Outcome, Policy, PruneReport, Target};
use expect_test::expect;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

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
                Outcome::Failed(error) => format!("failed: {error}"),
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
    expect![[r#"
        keep       20261125T090000Z-4-dddddddd  newest 2
        keep       20261125T080000Z-3-cccccccc  newest 2
        delete     20261125T070000Z-2-bbbbbbbb  would delete
        keep       20261125T060000Z-1-aaaaaaaa  newest verified
        orphan     dev/20261125T100000Z-5-eeeeeeee.db.zst  past the grace period: would delete
        orphan     dev/20261125T110000Z-6-ffffffff.db.zst  within the grace period: kept
        untouched  dev/notes.txt  not a snapshot name
    "#]]
    .assert_eq(&dry.to_string());

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
    expect![[r#"
        keep       20261125T090000Z-4-dddddddd  newest 2
        keep       20261125T080000Z-3-cccccccc  newest 2
        delete     20261125T070000Z-2-bbbbbbbb  deleted
        keep       20261125T060000Z-1-aaaaaaaa  newest verified
        orphan     dev/20261125T100000Z-5-eeeeeeee.db.zst  past the grace period: deferred to the next run
        orphan     dev/20261125T110000Z-6-ffffffff.db.zst  within the grace period: kept
        untouched  dev/notes.txt  not a snapshot name
    "#]].assert_eq(&first.to_string());

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

#[tokio::test]
async fn a_failed_deletion_is_reported_and_the_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let file = Store::File {
        root: dir.path().to_path_buf(),
    };
    let inner = snapshot::open(&file).expect("open");
    for id in [S1, S2, S3, S4] {
        put(inner.as_ref(), &format!("dev/{id}.db.zst")).await;
        put(inner.as_ref(), &format!("dev/{id}.db.zst.json")).await;
    }
    // S2's manifest cannot go, so neither may its data; S3's data cannot go after its manifest.
    let refused: BTreeSet<Path> = [
        Path::from(format!("dev/{S2}.db.zst.json")),
        Path::from(format!("dev/{S3}.db.zst")),
    ]
    .into();
    let refusing = RefusingDeletes {
        inner: Arc::clone(&inner),
        refused: Arc::new(refused),
    };
    let dev = ClusterName::parse("dev").unwrap();
    let mut policy = policy();
    policy.retention.last = NonZeroU32::MIN;
    let none = BTreeSet::new();
    let now = SystemTime::now();

    let report = prune(&refusing, &dev, &policy, &none, now, false)
        .await
        .expect("prune");
    let failed = |name: String| format!("failed: cannot delete dev/{name}");
    let want = [
        format!("snapshot {S1} deleted"),
        format!("snapshot {S2} {}", failed(format!("{S2}.db.zst.json"))),
        format!("snapshot {S3} {}", failed(format!("{S3}.db.zst"))),
    ];
    assert_eq!(outcomes(&report), want);
    assert_eq!(report.failures().count(), 2);
    let left: BTreeSet<String> = [
        format!("dev/{S2}.db.zst"),
        format!("dev/{S2}.db.zst.json"),
        format!("dev/{S3}.db.zst"),
        format!("dev/{S4}.db.zst"),
        format!("dev/{S4}.db.zst.json"),
    ]
    .into();
    assert_eq!(everything(inner.as_ref()).await, left);

    // The next run, once the store deletes again, removes S2 and, past the grace period, the
    // data S3's manifest no longer names.
    let later = now + GRACE + Duration::from_secs(1);
    let report = prune(inner.as_ref(), &dev, &policy, &none, later, false)
        .await
        .expect("prune again");
    let want = [
        format!("snapshot {S2} deleted"),
        format!("orphan dev/{S3}.db.zst deleted"),
    ];
    assert_eq!(outcomes(&report), want);
    let left: BTreeSet<String> =
        [format!("dev/{S4}.db.zst"), format!("dev/{S4}.db.zst.json")].into();
    assert_eq!(everything(inner.as_ref()).await, left);
}

/// A real store whose deletes of the `refused` objects fail, as a store that lost a permission
/// would.
#[derive(Debug)]
struct RefusingDeletes {
    inner: Arc<dyn ObjectStore>,
    refused: Arc<BTreeSet<Path>>,
}

impl fmt::Display for RefusingDeletes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RefusingDeletes({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for RefusingDeletes {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = Arc::clone(&self.inner);
        let refused = Arc::clone(&self.refused);
        locations
            .then(move |location| {
                let inner = Arc::clone(&inner);
                let refused = Arc::clone(&refused);
                async move {
                    let location = location?;
                    if refused.contains(&location) {
                        return Err(object_store::Error::PermissionDenied {
                            path: location.to_string(),
                            source: "refused by the test".into(),
                        });
                    }
                    inner.delete(&location).await.map(|()| location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
