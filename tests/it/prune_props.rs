//! Properties of the retention plan over generated stores shared by several clusters: the
//! newest snapshot, the newest `last` and the newest verified are always kept, and deletions
//! name only the pruned cluster's own snapshot objects, a manifest before its data; and a
//! second prune after the first deletes nothing.
//! `PROPTEST_CASES` sets the number of cases (default 256).

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use drover::model::{ClusterName, Retention, SnapshotId};
use drover::snapshot::retention::{plan, Fate, Object, Policy, Target};
use object_store::path::Path;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    crate::support::props::cases(256)
}

/// Where an object is: the pruned cluster's directory, or places that only look close to it.
const DIRS: [&str; 5] = ["dev", "dev", "dev2", "de", "dev/old"];

/// What an object is named like.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A manifest and its data.
    Snapshot,
    ManifestOnly,
    DataOnly,
    /// A name whose time is no real time (February 30).
    Unreadable,
    Stranger,
}

#[derive(Debug, Clone)]
struct Generated {
    dir: usize,
    kind: Kind,
    /// Minutes after 2026-01-01T00:00:00Z (within 60 days).
    minute: u32,
    revision: u32,
    verified: bool,
    /// Minutes before `now` it was last written.
    age: u32,
}

fn generated() -> impl Strategy<Value = Generated> {
    let kind = prop_oneof![
        6 => Just(Kind::Snapshot),
        1 => Just(Kind::ManifestOnly),
        1 => Just(Kind::DataOnly),
        1 => Just(Kind::Unreadable),
        1 => Just(Kind::Stranger),
    ];
    (
        0..DIRS.len(),
        kind,
        0u32..60 * 24 * 60,
        0u32..5,
        any::<bool>(),
        0u32..240,
    )
        .prop_map(|(dir, kind, minute, revision, verified, age)| Generated {
            dir,
            kind,
            minute,
            revision,
            verified,
            age,
        })
}

fn tier() -> impl Strategy<Value = Option<NonZeroU32>> {
    prop::option::of((1u32..6).prop_map(|n| NonZeroU32::new(n).unwrap()))
}

fn retention() -> impl Strategy<Value = Retention> {
    (1u32..6, tier(), tier(), tier()).prop_map(|(last, hourly, daily, weekly)| Retention {
        last: NonZeroU32::new(last).unwrap(),
        hourly,
        daily,
        weekly,
    })
}

/// The snapshot id of a generated object, and its order key (time, then revision).
fn id(g: &Generated, n: usize) -> String {
    let minute = g.minute;
    let (day, hour, min) = (minute / (24 * 60), minute / 60 % 24, minute % 60);
    let (month, day) = (1 + day / 28, 1 + day % 28);
    let (month, day) = match g.kind {
        Kind::Unreadable => (2, 30),
        _ => (month, day),
    };
    format!(
        "2026{month:02}{day:02}T{hour:02}{min:02}00Z-{}-{n:08x}",
        g.revision
    )
}

fn order(id: &str) -> (String, u32, String) {
    let mut parts = id.splitn(3, '-');
    let time = parts.next().unwrap().to_string();
    let revision = parts.next().unwrap().parse().unwrap();
    (time, revision, parts.next().unwrap().to_string())
}

struct Store {
    objects: Vec<Object>,
    verified: BTreeSet<SnapshotId>,
    /// `dev`'s snapshots (a manifest with a real time), with whether each is verified.
    snapshots: Vec<(String, bool)>,
}

fn store(generated: &[Generated], now: SystemTime) -> Store {
    let mut store = Store {
        objects: Vec::new(),
        verified: BTreeSet::new(),
        snapshots: Vec::new(),
    };
    for (n, g) in generated.iter().enumerate() {
        let id = id(g, n);
        let names: Vec<String> = match g.kind {
            Kind::Snapshot | Kind::Unreadable => {
                vec![format!("{id}.db.zst.json"), format!("{id}.db.zst")]
            }
            Kind::ManifestOnly => vec![format!("{id}.db.zst.json")],
            Kind::DataOnly => vec![format!("{id}.db.zst")],
            Kind::Stranger => vec![format!("{id}.tmp")],
        };
        for name in names {
            store.objects.push(Object {
                location: Path::from(format!("{}/{name}", DIRS[g.dir])),
                last_modified: now - Duration::from_secs(60 * u64::from(g.age)),
            });
        }
        if g.verified {
            store.verified.insert(SnapshotId::parse(&id).unwrap());
        }
        let a_snapshot = matches!(g.kind, Kind::Snapshot | Kind::ManifestOnly);
        if DIRS[g.dir] == "dev" && a_snapshot {
            store.snapshots.push((id, g.verified));
        }
    }
    store
        .snapshots
        .sort_by_key(|(id, _)| std::cmp::Reverse(order(id)));
    store
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn retention_keeps_the_newest_and_touches_only_its_own_cluster(
        generated in prop::collection::vec(generated(), 0..40),
        retention in retention(),
        grace_minutes in 0u64..180,
    ) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let store = store(&generated, now);
        let mut policy = Policy::new(retention);
        policy.orphan_grace = Duration::from_secs(60 * grace_minutes);
        let dev = ClusterName::parse("dev").unwrap();
        let plan = plan(&dev, &store.objects, &store.verified, &policy, now);

        let fate = |id: &str| {
            plan.snapshots
                .iter()
                .find(|v| v.id.as_str() == id)
                .map(|v| v.fate.clone())
                .unwrap_or_else(|| panic!("{id} is not in the plan"))
        };
        let kept = |id: &str| matches!(fate(id), Fate::Keep(_));
        // The newest `last` (so the newest of all) are kept.
        for (id, _) in store.snapshots.iter().take(retention.last.get() as usize) {
            prop_assert!(kept(id), "{id} is among the newest {} but {:?}", retention.last, fate(id));
        }
        // The newest verified is kept.
        if let Some((id, _)) = store.snapshots.iter().find(|(_, verified)| *verified) {
            prop_assert!(kept(id), "{id} is the newest verified but {:?}", fate(id));
        }
        // Every snapshot is judged; those whose time is no real time are left alone.
        for verdict in &plan.snapshots {
            let unreadable = verdict.id.as_str().starts_with("20260230T");
            prop_assert_eq!(verdict.fate == Fate::Untouched, unreadable, "{}", verdict.id);
        }
        let dated = plan.snapshots.iter().filter(|v| v.fate != Fate::Untouched);
        prop_assert_eq!(dated.count(), store.snapshots.len());

        // Deletions name only `dev/<name>` objects that were listed, never an untouched one,
        // and each snapshot's manifest before its data.
        let listed: BTreeSet<&Path> = store.objects.iter().map(|o| &o.location).collect();
        for target in plan.deletions() {
            let objects = target.objects();
            if let Target::Snapshot { id, .. } = &target {
                prop_assert!(objects[0].as_ref().ends_with(".db.zst.json"));
                prop_assert_eq!(fate(id.as_str()), Fate::Delete);
            }
            for location in objects {
                let parts: Vec<_> = location.parts().collect();
                prop_assert_eq!(parts.len(), 2, "{} is not a direct child", location);
                prop_assert_eq!(parts[0].as_ref(), "dev", "{} is another cluster's", location);
                prop_assert!(listed.contains(location), "{} was never listed", location);
                prop_assert!(!plan.untouched.contains(location));
                prop_assert!(!location.as_ref().contains("20260230T"), "{} has no real time", location);
            }
        }
        // Orphans go only once older than the grace period.
        for orphan in &plan.orphans {
            prop_assert_eq!(orphan.expired, orphan.age > policy.orphan_grace);
        }

        // Pruning is idempotent: once the plan's deletions are done, the next plan deletes
        // nothing and keeps the same snapshots.
        let doomed: BTreeSet<Path> = plan
            .deletions()
            .iter()
            .flat_map(|target| target.objects().into_iter().cloned())
            .collect();
        let left: Vec<Object> = store
            .objects
            .iter()
            .filter(|o| !doomed.contains(&o.location))
            .cloned()
            .collect();
        let again = drover::snapshot::retention::plan(&dev, &left, &store.verified, &policy, now);
        prop_assert!(again.deletions().is_empty(), "{:?}", again.deletions());
        let kept: Vec<_> = plan.snapshots.iter().filter(|v| v.fate != Fate::Delete).collect();
        let kept_again: Vec<_> = again.snapshots.iter().collect();
        prop_assert_eq!(kept, kept_again);
    }
}
