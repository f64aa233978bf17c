//! Retention: which of a cluster's snapshots to keep, and pruning the rest from its store.
//!
//! [`plan`] is pure: the cluster's listed objects, the ids known to be verified, the policy and
//! `now` in, a verdict for every object out. [`prune`] is the IO edge: it lists the cluster's
//! own objects, plans, and deletes what the plan dooms (a snapshot's manifest first, then its
//! data), a bounded number per run, reporting each deletion's outcome.
//!
//! The tiers follow restic's `forget --keep-*` policy: `--keep-hourly n` keeps, for the last `n`
//! hours that have one or more snapshots, the most recent snapshot of each hour (days and ISO
//! weeks alike, all in UTC, from the time in the snapshot's id). Each rule counts on its own (a
//! snapshot kept as one of the newest also fills its hour, unlike borg's rules, where a snapshot
//! kept by one rule does not count for the next), and a snapshot any rule keeps is kept. Unlike
//! restic 0.17, the oldest snapshot is not kept extra when a tier has fewer periods than asked.
//! On top of the tiers, the newest verified snapshot is never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use time::{Date, Month, PrimitiveDateTime, Time};

use super::naming::DATA_SUFFIX;
use super::{is_direct_child, list_objects, StoreError, MANIFEST_SUFFIX};
use crate::model::{ClusterName, Retention, SnapshotId};

/// How old a data object without a manifest must be before [`prune`] removes it by default.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(3600);
/// Most deletions one [`prune`] run makes by default; the rest wait for the next run.
pub const DEFAULT_MAX_DELETIONS: usize = 1000;

/// What [`prune`] follows: the cluster's retention and the limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub retention: Retention,
    /// How old a data object without a manifest (a crashed upload) must be before it is
    /// removed; a younger one may be an upload in progress. It must exceed the longest upload
    /// plus the manifest's write: S3 may date a multipart object from the upload's start.
    pub orphan_grace: Duration,
    /// Most deletions (a snapshot or an orphan each) one run makes.
    pub max_deletions: usize,
}

impl Policy {
    /// `retention` with the default grace period and bound on deletions.
    pub fn new(retention: Retention) -> Self {
        Self {
            retention,
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            max_deletions: DEFAULT_MAX_DELETIONS,
        }
    }
}

/// An object as listed: where it is (relative to the store) and when it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub location: Path,
    pub last_modified: SystemTime,
}

impl From<ObjectMeta> for Object {
    fn from(meta: ObjectMeta) -> Self {
        Self {
            location: meta.location,
            last_modified: meta.last_modified.into(),
        }
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// One of the newest `last`.
    Newest(NonZeroU32),
    Hourly,
    Daily,
    Weekly,
    /// The newest snapshot whose verification passed.
    NewestVerified,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Newest(n) => write!(f, "newest {n}"),
            Reason::Hourly => f.write_str("hourly"),
            Reason::Daily => f.write_str("daily"),
            Reason::Weekly => f.write_str("weekly"),
            Reason::NewestVerified => f.write_str("newest verified"),
        }
    }
}

/// What retention does with a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Kept, for these reasons (never empty).
    Keep(Vec<Reason>),
    Delete,
    /// Left alone: the time in its id is not a real UTC time.
    Untouched,
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Keep(reasons) => write!(f, "keep ({})", joined(reasons)),
            Fate::Delete => f.write_str("delete"),
            Fate::Untouched => f.write_str("untouched (its time is unreadable)"),
        }
    }
}

/// Reasons as `newest 6, hourly`.
fn joined(reasons: &[Reason]) -> String {
    let reasons: Vec<String> = reasons.iter().map(Reason::to_string).collect();
    reasons.join(", ")
}

/// A snapshot as the retention rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: SnapshotId,
    /// Whether a verification of it passed.
    pub verified: bool,
    /// When its manifest was written: of two snapshots of the same second and revision, the
    /// one written later is the newer.
    pub written: SystemTime,
}

/// The retention rule: the fate of each candidate, newest first (those whose time is
/// unreadable last). Pure; the tiers are counted from the newest snapshot, not from a clock.
pub fn decide(candidates: &[Candidate], retention: &Retention) -> Vec<(SnapshotId, Fate)> {
    let mut dated = Vec::with_capacity(candidates.len());
    let mut undated = Vec::new();
    for candidate in candidates {
        match Taken::of(&candidate.id) {
            Some(taken) => dated.push((taken, candidate)),
            None => undated.push(candidate.id.clone()),
        }
    }
    // Newest first: by time, then revision, then when written, then id.
    dated.sort_by(|(a, x), (b, y)| (b, y.written, &y.id).cmp(&(a, x.written, &x.id)));
    let mut tiers = Tiers::new(retention);
    let mut decided: Vec<(SnapshotId, Fate)> = Vec::with_capacity(candidates.len());
    let mut verified_seen = false;
    for (taken, candidate) in &dated {
        let mut reasons = tiers.keep(taken.at);
        if candidate.verified && !verified_seen {
            verified_seen = true;
            reasons.push(Reason::NewestVerified);
        }
        let fate = if reasons.is_empty() {
            Fate::Delete
        } else {
            Fate::Keep(reasons)
        };
        decided.push((candidate.id.clone(), fate));
    }
    undated.sort();
    decided.extend(undated.into_iter().map(|id| (id, Fate::Untouched)));
    decided
}

/// When a snapshot was taken and at which etcd revision, read from its id; ordered by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Taken {
    at: PrimitiveDateTime,
    revision: u128,
}

impl Taken {
    /// `None` unless the id's `YYYYMMDDTHHMMSSZ` is a real time (not February 30, not a leap
    /// second).
    fn of(id: &SnapshotId) -> Option<Taken> {
        let s = id.as_str();
        let field = |r: std::ops::Range<usize>| s.get(r)?.parse::<u8>().ok();
        let year: i32 = s.get(0..4)?.parse().ok()?;
        let month = Month::try_from(field(4..6)?).ok()?;
        let date = Date::from_calendar_date(year, month, field(6..8)?).ok()?;
        let time = Time::from_hms(field(9..11)?, field(11..13)?, field(13..15)?).ok()?;
        let revision = s.split('-').nth(1)?.parse().ok()?;
        Some(Taken {
            at: PrimitiveDateTime::new(date, time),
            revision,
        })
    }
}

/// The counters of each rule while snapshots are visited newest first.
struct Tiers {
    last: NonZeroU32,
    last_left: u32,
    periods: [Period; 3],
}

/// One calendar tier: how many periods it may still keep, and the last period it kept.
struct Period {
    reason: Reason,
    left: u32,
    kept: Option<i64>,
    of: fn(PrimitiveDateTime) -> i64,
}

impl Tiers {
    fn new(retention: &Retention) -> Self {
        let left = |n: Option<NonZeroU32>| n.map_or(0, NonZeroU32::get);
        let period = |reason, n, of| Period {
            reason,
            left: left(n),
            kept: None,
            of,
        };
        Self {
            last: retention.last,
            last_left: retention.last.get(),
            periods: [
                period(Reason::Hourly, retention.hourly, hour_of),
                period(Reason::Daily, retention.daily, day_of),
                period(Reason::Weekly, retention.weekly, week_of),
            ],
        }
    }

    /// The reasons to keep the next snapshot, taken at `at` (no later than the previous one).
    fn keep(&mut self, at: PrimitiveDateTime) -> Vec<Reason> {
        let mut reasons = Vec::new();
        if self.last_left > 0 {
            self.last_left -= 1;
            reasons.push(Reason::Newest(self.last));
        }
        for period in &mut self.periods {
            let this = (period.of)(at);
            if period.left > 0 && period.kept != Some(this) {
                period.left -= 1;
                period.kept = Some(this);
                reasons.push(period.reason);
            }
        }
        reasons
    }
}

fn day_of(at: PrimitiveDateTime) -> i64 {
    i64::from(at.date().to_julian_day())
}

fn hour_of(at: PrimitiveDateTime) -> i64 {
    day_of(at) * 24 + i64::from(at.hour())
}

fn week_of(at: PrimitiveDateTime) -> i64 {
    let (year, week, _) = at.date().to_iso_week_date();
    i64::from(year) * 100 + i64::from(week)
}

/// A snapshot of the plan: its objects and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub id: SnapshotId,
    pub manifest: Path,
    /// Its data object, if the listing had one.
    pub data: Option<Path>,
    pub fate: Fate,
}

/// A data object no manifest names: a crashed upload, or one in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub location: Path,
    /// How long ago it was last written (zero if its time is after `now`).
    pub age: Duration,
    /// Older than the grace period: it goes.
    pub expired: bool,
}

/// What retention would do with each of a cluster's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Snapshots (manifests whose name is an id), newest first.
    pub snapshots: Vec<Verdict>,
    /// Data objects without a manifest, oldest first.
    pub orphans: Vec<Orphan>,
    /// The cluster's other objects: not named like snapshot objects, or with an id whose time
    /// is unreadable (and the data of such a manifest). Never touched.
    pub untouched: Vec<Path>,
}

/// Something a prune deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A snapshot: its manifest, then its data.
    Snapshot {
        id: SnapshotId,
        manifest: Path,
        data: Option<Path>,
    },
    /// A data object without a manifest.
    Orphan(Path),
}

impl Target {
    /// Its objects, in the order they are deleted: a manifest before its data, so an
    /// interrupted prune never leaves a manifest naming missing data.
    pub fn objects(&self) -> Vec<&Path> {
        match self {
            Target::Snapshot { manifest, data, .. } => {
                std::iter::once(manifest).chain(data).collect()
            }
            Target::Orphan(location) => vec![location],
        }
    }
}

impl Plan {
    /// What the plan deletes, in order: snapshots oldest first, then expired orphans oldest
    /// first.
    pub fn deletions(&self) -> Vec<Target> {
        let snapshots = self
            .snapshots
            .iter()
            .rev()
            .filter(|v| v.fate == Fate::Delete);
        let snapshots = snapshots.map(|v| Target::Snapshot {
            id: v.id.clone(),
            manifest: v.manifest.clone(),
            data: v.data.clone(),
        });
        let orphans = self.orphans.iter().filter(|o| o.expired);
        snapshots
            .chain(orphans.map(|o| Target::Orphan(o.location.clone())))
            .collect()
    }
}

/// The retention plan for `cluster`'s objects: only direct children of `<cluster>/` are
/// considered (anything else in `objects` is ignored); a snapshot is a manifest whose name
/// parses as an id; a data object whose id parses and that no manifest names is an orphan,
/// expired once older than `policy.orphan_grace` at `now`. Pure.
pub fn plan(
    cluster: &ClusterName,
    objects: &[Object],
    verified: &BTreeSet<SnapshotId>,
    policy: &Policy,
    now: SystemTime,
) -> Plan {
    let mut sorted = Sorted::default();
    for object in objects
        .iter()
        .filter(|o| is_direct_child(cluster, &o.location))
    {
        sorted.add(object);
    }
    let candidates: Vec<Candidate> = sorted
        .manifests
        .iter()
        .map(|(id, manifest)| Candidate {
            id: id.clone(),
            verified: verified.contains(id),
            written: manifest.last_modified,
        })
        .collect();
    let snapshots = decide(&candidates, &policy.retention)
        .into_iter()
        .map(|(id, fate)| Verdict {
            manifest: sorted.manifests[&id].location.clone(),
            data: sorted.data.remove(&id).map(|o| o.location.clone()),
            id,
            fate,
        })
        .collect();
    let mut orphans = Vec::new();
    for (id, object) in sorted.data {
        match Taken::of(&id) {
            Some(_) => orphans.push(orphan(object, policy.orphan_grace, now)),
            None => sorted.untouched.push(object.location.clone()),
        }
    }
    orphans.sort_by(|a, b| b.age.cmp(&a.age).then(a.location.cmp(&b.location)));
    sorted.untouched.sort();
    Plan {
        snapshots,
        orphans,
        untouched: sorted.untouched,
    }
}

fn orphan(object: &Object, grace: Duration, now: SystemTime) -> Orphan {
    let age = now
        .duration_since(object.last_modified)
        .unwrap_or(Duration::ZERO);
    Orphan {
        location: object.location.clone(),
        age,
        expired: age > grace,
    }
}

/// A cluster's objects by kind.
#[derive(Default)]
struct Sorted<'a> {
    manifests: BTreeMap<SnapshotId, &'a Object>,
    data: BTreeMap<SnapshotId, &'a Object>,
    untouched: Vec<Path>,
}

impl<'a> Sorted<'a> {
    fn add(&mut self, object: &'a Object) {
        let name = object.location.filename().unwrap_or_default();
        let manifest = name
            .strip_suffix(MANIFEST_SUFFIX)
            .and_then(SnapshotId::parse);
        let data = name.strip_suffix(DATA_SUFFIX).and_then(SnapshotId::parse);
        match (manifest, data) {
            (Some(id), _) => {
                self.manifests.insert(id, object);
            }
            (None, Some(id)) => {
                self.data.insert(id, object);
            }
            (None, None) => self.untouched.push(object.location.clone()),
        }
    }
}

/// What became of one deletion.
#[derive(Debug)]
pub enum Outcome {
    Deleted,
    /// A dry run: nothing was deleted.
    WouldDelete,
    /// Beyond this run's bound on deletions; left for the next run.
    Deferred,
    /// An object could not be deleted; for a snapshot, its data is kept when its manifest
    /// could not be deleted.
    Failed(DeleteError),
}

/// An object the store would not delete.
#[derive(Debug, thiserror::Error)]
#[error("cannot delete {location}")]
pub struct DeleteError {
    pub location: Path,
    #[source]
    pub source: object_store::Error,
}

/// What a prune did: the plan (what is kept and why) and each deletion's outcome, in the order
/// they were tried.
#[derive(Debug)]
pub struct PruneReport {
    pub plan: Plan,
    pub dry_run: bool,
    pub deletions: Vec<(Target, Outcome)>,
}

impl PruneReport {
    /// The deletions that failed.
    pub fn failures(&self) -> impl Iterator<Item = (&Target, &DeleteError)> {
        self.deletions
            .iter()
            .filter_map(|(target, outcome)| match outcome {
                Outcome::Failed(error) => Some((target, error)),
                _ => None,
            })
    }

    /// What became of the deletion of the snapshot `id`, if the plan dooms it.
    fn snapshot_outcome(&self, id: &SnapshotId) -> Option<&Outcome> {
        self.deletions
            .iter()
            .find_map(|(target, outcome)| match target {
                Target::Snapshot { id: doomed, .. } if doomed == id => Some(outcome),
                _ => None,
            })
    }

    /// What became of the deletion of the orphan at `location`, if it is expired.
    fn orphan_outcome(&self, location: &Path) -> Option<&Outcome> {
        self.deletions
            .iter()
            .find_map(|(target, outcome)| match target {
                Target::Orphan(doomed) if doomed == location => Some(outcome),
                _ => None,
            })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Deleted => f.write_str("deleted"),
            Outcome::WouldDelete => f.write_str("would delete"),
            Outcome::Deferred => f.write_str("deferred to the next run"),
            Outcome::Failed(error) => write!(f, "failed: {}", crate::error_chain(error)),
        }
    }
}

/// One line per object: snapshots newest first with why each is kept or what became of its
/// deletion, then orphans, then the objects left alone.
impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for verdict in &self.plan.snapshots {
            let id = &verdict.id;
            match (&verdict.fate, self.snapshot_outcome(id)) {
                (Fate::Keep(reasons), _) => writeln!(f, "keep       {id}  {}", joined(reasons))?,
                (Fate::Untouched, _) => writeln!(f, "untouched  {id}  its time is unreadable")?,
                (Fate::Delete, Some(outcome)) => writeln!(f, "delete     {id}  {outcome}")?,
                (Fate::Delete, None) => writeln!(f, "delete     {id}")?,
            }
        }
        for orphan in &self.plan.orphans {
            match self.orphan_outcome(&orphan.location) {
                Some(outcome) => writeln!(
                    f,
                    "orphan     {}  past the grace period: {outcome}",
                    orphan.location
                )?,
                None => writeln!(
                    f,
                    "orphan     {}  within the grace period: kept",
                    orphan.location
                )?,
            }
        }
        for location in &self.plan.untouched {
            writeln!(f, "untouched  {location}  not a snapshot name")?;
        }
        Ok(())
    }
}

/// Applies `policy` to `cluster`'s snapshots in `store`: lists the cluster's own objects,
/// plans with [`plan`], and deletes what it dooms, at most `policy.max_deletions` targets (the
/// rest are reported `Deferred`). With `dry_run`, nothing is deleted and the report is the same
/// plan. `verified` names the snapshots whose verification passed. A failed deletion is
/// reported and the run goes on; only a failed listing is an error.
pub async fn prune(
    store: &dyn ObjectStore,
    cluster: &ClusterName,
    policy: &Policy,
    verified: &BTreeSet<SnapshotId>,
    now: SystemTime,
    dry_run: bool,
) -> Result<PruneReport, StoreError> {
    let objects: Vec<Object> = list_objects(store, cluster)
        .await?
        .into_iter()
        .map(Object::from)
        .collect();
    let plan = plan(cluster, &objects, verified, policy, now);
    let mut deletions = Vec::new();
    for (n, target) in plan.deletions().into_iter().enumerate() {
        let outcome = if n >= policy.max_deletions {
            Outcome::Deferred
        } else if dry_run {
            Outcome::WouldDelete
        } else {
            delete_target(store, cluster, &target).await
        };
        deletions.push((target, outcome));
    }
    let report = PruneReport {
        plan,
        dry_run,
        deletions,
    };
    let count =
        |wanted: fn(&Outcome) -> bool| report.deletions.iter().filter(|(_, o)| wanted(o)).count();
    tracing::info!(
        %cluster,
        dry_run,
        deleted = count(|o| matches!(o, Outcome::Deleted)),
        failed = count(|o| matches!(o, Outcome::Failed(_))),
        deferred = count(|o| matches!(o, Outcome::Deferred)),
        "snapshots pruned"
    );
    Ok(report)
}

/// Deletes a target's objects in order, stopping at the first failure.
async fn delete_target(store: &dyn ObjectStore, cluster: &ClusterName, target: &Target) -> Outcome {
    for location in target.objects() {
        match store.delete(location).await {
            // Already gone (a concurrent prune): what was asked holds.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                tracing::debug!(%cluster, object = %location, "snapshot object deleted");
            }
            Err(source) => {
                tracing::warn!(%cluster, object = %location, error = %source, "cannot delete snapshot object");
                return Outcome::Failed(DeleteError {
                    location: location.clone(),
                    source,
                });
            }
        }
    }
    Outcome::Deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn dev() -> ClusterName {
        ClusterName::parse("dev").unwrap()
    }

    /// `last=2 hourly=3 ...` as a policy; tiers not named are off.
    fn retention(text: &str) -> Retention {
        let mut retention = Retention {
            last: NonZeroU32::MIN,
            hourly: None,
            daily: None,
            weekly: None,
        };
        for setting in text.split_whitespace() {
            let (name, n) = setting.split_once('=').unwrap();
            let n = NonZeroU32::new(n.parse().unwrap());
            match name {
                "last" => retention.last = n.unwrap(),
                "hourly" => retention.hourly = n,
                "daily" => retention.daily = n,
                "weekly" => retention.weekly = n,
                _ => panic!("unknown setting {name}"),
            }
        }
        retention
    }

    /// A line's snapshot name: a bare `YYYYMMDDTHHMMSSZ` gets the revision `n` and a short id.
    fn name(written: &str, n: usize) -> String {
        if written.len() == 16 {
            format!("{written}-{n}-{n:08x}")
        } else {
            written.to_string()
        }
    }

    /// Plans `policy` over snapshots, one a line (`<name>`, then ` v` if verified), each a
    /// manifest and its data, and renders each line's fate in the order written.
    fn check(policy: &str, listing: &str, expect: Expect) {
        let lines: Vec<(String, &str, bool)> = listing
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .enumerate()
            .map(|(n, line)| {
                let (written, verified) = match line.strip_suffix(" v") {
                    Some(written) => (written, true),
                    None => (line, false),
                };
                (name(written, n + 1), line, verified)
            })
            .collect();
        let mut objects = Vec::new();
        let mut verified = BTreeSet::new();
        for (name, _, is_verified) in &lines {
            for suffix in [MANIFEST_SUFFIX, DATA_SUFFIX] {
                objects.push(Object {
                    location: Path::from(format!("dev/{name}{suffix}")),
                    last_modified: SystemTime::UNIX_EPOCH,
                });
            }
            if *is_verified {
                verified.insert(SnapshotId::parse(name).unwrap());
            }
        }
        let policy = Policy::new(retention(policy));
        let plan = plan(&dev(), &objects, &verified, &policy, SystemTime::UNIX_EPOCH);
        let mut out = String::new();
        for (name, line, _) in &lines {
            let fate = plan.snapshots.iter().find(|v| v.id.as_str() == name);
            let fate = match fate {
                Some(verdict) => verdict.fate.to_string(),
                None => {
                    let manifest = Path::from(format!("dev/{name}{MANIFEST_SUFFIX}"));
                    assert!(plan.untouched.contains(&manifest), "{name} is nowhere");
                    "not a snapshot name: untouched".to_string()
                }
            };
            out.push_str(&format!("{line:<30} {fate}\n"));
        }
        expect.assert_eq(&out);
    }

    #[test]
    fn of_two_snapshots_of_one_second_and_revision_the_later_written_is_newest() {
        // The random part of the ids orders them the other way round.
        let (early, late) = ("20261125T060000Z-7-ffffffff", "20261125T060000Z-7-00000000");
        for (first, second) in [(early, late), (late, early)] {
            let written = |name: &str| {
                let at = if name == late { 2 } else { 1 };
                SystemTime::UNIX_EPOCH + Duration::from_millis(at)
            };
            let objects: Vec<Object> = [first, second]
                .iter()
                .flat_map(|name| {
                    [MANIFEST_SUFFIX, DATA_SUFFIX].map(|suffix| Object {
                        location: Path::from(format!("dev/{name}{suffix}")),
                        last_modified: written(name),
                    })
                })
                .collect();
            let policy = Policy::new(retention("last=1"));
            let plan = plan(
                &dev(),
                &objects,
                &BTreeSet::new(),
                &policy,
                SystemTime::UNIX_EPOCH,
            );
            let fates: Vec<String> = plan
                .snapshots
                .iter()
                .map(|v| format!("{} {}", v.id, v.fate))
                .collect();
            assert_eq!(
                fates,
                [format!("{late} keep (newest 1)"), format!("{early} delete")]
            );
        }
    }

    #[test]
    fn fewer_snapshots_than_last_are_all_kept() {
        check(
            "last=6",
            "
            20261125T060000Z
            20261125T070000Z
            20261125T080000Z
            ",
            expect![[r#"
                20261125T060000Z               keep (newest 6)
                20261125T070000Z               keep (newest 6)
                20261125T080000Z               keep (newest 6)
            "#]],
        );
    }

    #[test]
    fn only_the_newest_last_are_kept_without_tiers() {
        check(
            "last=2",
            "
            20261125T080000Z
            20261125T060000Z
            20261125T070000Z
            20261124T070000Z
            ",
            expect![[r#"
                20261125T080000Z               keep (newest 2)
                20261125T060000Z               delete
                20261125T070000Z               keep (newest 2)
                20261124T070000Z               delete
            "#]],
        );
    }

    #[test]
    fn hourly_keeps_the_newest_of_each_of_the_last_hours_that_have_one() {
        check(
            "last=1 hourly=3",
            "
            20261125T090000Z
            20261125T081500Z
            20261125T073000Z
            20261125T070000Z
            20261125T065959Z
            20261125T060000Z
            ",
            expect![[r#"
                20261125T090000Z               keep (newest 1, hourly)
                20261125T081500Z               keep (hourly)
                20261125T073000Z               keep (hourly)
                20261125T070000Z               delete
                20261125T065959Z               delete
                20261125T060000Z               delete
            "#]],
        );
    }

    #[test]
    fn hours_without_a_snapshot_do_not_count() {
        check(
            "last=1 hourly=2",
            "
            20261125T090000Z
            20261125T030000Z
            20261125T025900Z
            20261125T020000Z
            ",
            expect![[r#"
                20261125T090000Z               keep (newest 1, hourly)
                20261125T030000Z               keep (hourly)
                20261125T025900Z               delete
                20261125T020000Z               delete
            "#]],
        );
    }

    #[test]
    fn daily_days_turn_at_midnight_utc() {
        check(
            "last=1 daily=2",
            "
            20261126T120000Z
            20261126T000000Z
            20261125T235959Z
            20261125T010000Z
            20261124T100000Z
            ",
            expect![[r#"
                20261126T120000Z               keep (newest 1, daily)
                20261126T000000Z               delete
                20261125T235959Z               keep (daily)
                20261125T010000Z               delete
                20261124T100000Z               delete
            "#]],
        );
    }

    #[test]
    fn weekly_weeks_are_iso_weeks_monday_to_sunday() {
        // 2026-11-29 is a Sunday (week 48), 2026-11-30 a Monday (week 49).
        check(
            "last=1 weekly=2",
            "
            20261130T010000Z
            20261129T230000Z
            20261123T000000Z
            20261122T230000Z
            ",
            expect![[r#"
                20261130T010000Z               keep (newest 1, weekly)
                20261129T230000Z               keep (weekly)
                20261123T000000Z               delete
                20261122T230000Z               delete
            "#]],
        );
    }

    #[test]
    fn an_iso_week_spans_the_new_year() {
        // 2026-12-31 to 2027-01-02 are all in week 53 of 2026.
        check(
            "last=1 weekly=2",
            "
            20270102T000000Z
            20270101T000000Z
            20261231T000000Z
            20261224T000000Z
            20261223T000000Z
            ",
            expect![[r#"
                20270102T000000Z               keep (newest 1, weekly)
                20270101T000000Z               delete
                20261231T000000Z               delete
                20261224T000000Z               keep (weekly)
                20261223T000000Z               delete
            "#]],
        );
    }

    #[test]
    fn tiers_count_on_their_own_and_combine() {
        check(
            "last=2 hourly=2 daily=2 weekly=2",
            "
            20261125T100000Z
            20261125T093000Z
            20261125T090000Z
            20261125T080000Z
            20261124T230000Z
            20261124T220000Z
            20261123T120000Z
            20261122T120000Z
            20261115T120000Z
            20261108T120000Z
            ",
            expect![[r#"
                20261125T100000Z               keep (newest 2, hourly, daily, weekly)
                20261125T093000Z               keep (newest 2, hourly)
                20261125T090000Z               delete
                20261125T080000Z               delete
                20261124T230000Z               keep (daily)
                20261124T220000Z               delete
                20261123T120000Z               delete
                20261122T120000Z               keep (weekly)
                20261115T120000Z               delete
                20261108T120000Z               delete
            "#]],
        );
    }

    #[test]
    fn the_newest_verified_is_kept_when_the_newest_is_not_verified() {
        check(
            "last=1",
            "
            20261125T090000Z
            20261125T080000Z v
            20261125T070000Z v
            20261125T060000Z
            ",
            expect![[r#"
                20261125T090000Z               keep (newest 1)
                20261125T080000Z v             keep (newest verified)
                20261125T070000Z v             delete
                20261125T060000Z               delete
            "#]],
        );
    }

    #[test]
    fn a_verified_newest_is_kept_for_both_reasons() {
        check(
            "last=1",
            "
            20261125T090000Z v
            20261125T080000Z v
            ",
            expect![[r#"
                20261125T090000Z v             keep (newest 1, newest verified)
                20261125T080000Z v             delete
            "#]],
        );
    }

    #[test]
    fn unparsable_ids_are_never_touched_nor_counted() {
        // February 30 and a leap second pass the name check but are no real time.
        check(
            "last=1",
            "
            20260230T010000Z-5-aaaaaaaa
            20261231T235960Z-6-bbbbbbbb
            latest
            20261125T090000Z-not-an-id
            20261125T080000Z
            20261125T070000Z
            ",
            expect![[r#"
                20260230T010000Z-5-aaaaaaaa    untouched (its time is unreadable)
                20261231T235960Z-6-bbbbbbbb    untouched (its time is unreadable)
                latest                         not a snapshot name: untouched
                20261125T090000Z-not-an-id     not a snapshot name: untouched
                20261125T080000Z               keep (newest 1)
                20261125T070000Z               delete
            "#]],
        );
    }

    #[test]
    fn in_the_same_second_the_higher_revision_is_newer() {
        check(
            "last=1",
            "
            20261125T090000Z-9-aaaaaaaa
            20261125T090000Z-10-aaaaaaaa
            ",
            expect![[r#"
                20261125T090000Z-9-aaaaaaaa    delete
                20261125T090000Z-10-aaaaaaaa   keep (newest 1)
            "#]],
        );
    }

    /// Plans over data objects alone, `<name> <age in minutes>` a line, with a 60-minute grace.
    fn check_orphans(listing: &str, expect: Expect) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let objects: Vec<Object> = listing
            .split_whitespace()
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|pair| Object {
                location: Path::from(format!("dev/{}", pair[0])),
                last_modified: now - Duration::from_secs(60 * pair[1].parse::<u64>().unwrap()),
            })
            .collect();
        let mut policy = Policy::new(retention("last=1"));
        policy.orphan_grace = Duration::from_secs(3600);
        let plan = plan(&dev(), &objects, &BTreeSet::new(), &policy, now);
        let mut out = String::new();
        for orphan in &plan.orphans {
            let fate = if orphan.expired {
                "delete"
            } else {
                "young: keep"
            };
            out.push_str(&format!("orphan {} {fate}\n", orphan.location));
        }
        for verdict in &plan.snapshots {
            out.push_str(&format!("snapshot {} {}\n", verdict.id, verdict.fate));
        }
        for location in &plan.untouched {
            out.push_str(&format!("untouched {location}\n"));
        }
        let deletions: Vec<String> = plan
            .deletions()
            .iter()
            .flat_map(Target::objects)
            .map(Path::to_string)
            .collect();
        out.push_str(&format!("deletes {deletions:?}\n"));
        expect.assert_eq(&out);
    }

    #[test]
    fn data_without_a_manifest_goes_after_the_grace_period() {
        check_orphans(
            "
            20261125T090000Z-3-cccccccc.db.zst 61
            20261125T090000Z-3-cccccccc.db.zst.json 61
            20261125T080000Z-2-bbbbbbbb.db.zst 60
            20261125T070000Z-1-aaaaaaaa.db.zst 120
            20260230T070000Z-1-aaaaaaaa.db.zst 120
            upload.db.zst 120
            20261125T060000Z-0-dddddddd.db.zst.json 200
            ",
            expect![[r#"
                orphan dev/20261125T070000Z-1-aaaaaaaa.db.zst delete
                orphan dev/20261125T080000Z-2-bbbbbbbb.db.zst young: keep
                snapshot 20261125T090000Z-3-cccccccc keep (newest 1)
                snapshot 20261125T060000Z-0-dddddddd delete
                untouched dev/20260230T070000Z-1-aaaaaaaa.db.zst
                untouched dev/upload.db.zst
                deletes ["dev/20261125T060000Z-0-dddddddd.db.zst.json", "dev/20261125T070000Z-1-aaaaaaaa.db.zst"]
            "#]],
        );
    }

    #[test]
    fn another_clusters_objects_are_ignored() {
        let old = SystemTime::UNIX_EPOCH;
        let now = old + Duration::from_secs(1_000_000);
        let objects: Vec<Object> = [
            "dev2/20261125T070000Z-1-aaaaaaaa.db.zst.json",
            "dev2/20261125T060000Z-1-aaaaaaaa.db.zst",
            "dev/old/20261125T050000Z-1-aaaaaaaa.db.zst.json",
            "de/20261125T040000Z-1-aaaaaaaa.db.zst",
            "20261125T030000Z-1-aaaaaaaa.db.zst",
        ]
        .into_iter()
        .map(|name| Object {
            location: Path::from(name),
            last_modified: old,
        })
        .collect();
        let plan = plan(
            &dev(),
            &objects,
            &BTreeSet::new(),
            &Policy::new(retention("last=1")),
            now,
        );
        assert_eq!(
            plan,
            Plan {
                snapshots: vec![],
                orphans: vec![],
                untouched: vec![]
            }
        );
    }
}
