//! When a cluster's next snapshot is due, from its policy's schedule and its last snapshot.
//! Pure: the caller gives the time.
//!
//! - `every: 6h` runs that long after the last snapshot; a cluster without one runs soon after
//!   the daemon starts, each cluster at its own offset in the first minutes so that a daemon of
//!   many clusters does not snapshot them all at once.
//! - A cron expression (UTC) runs at each occurrence plus the cluster's own offset, up to a
//!   tenth of the gap between occurrences and at most `MAX_SPREAD`: a hundred clusters on
//!   `0 */6 * * *` spread over five minutes instead of hitting their members and the store in
//!   the same second.
//! - A run missed while the daemon was down runs at once, once, not once per missed occurrence.
//!
//! A snapshot is overdue when none succeeded for twice the schedule's period after it was due.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use crate::model::Schedule;

/// The widest spread of clusters' runs around one occurrence.
pub const MAX_SPREAD: Duration = Duration::from_secs(300);

/// When the next snapshot of `cluster` is due, its last one (successful or not) at `last`; a
/// cluster without one is counted from `since`, when its policy was first seen (a fixed time:
/// the answer must not move with the clock).
pub fn next_due(
    schedule: &Schedule,
    cluster: &str,
    last: Option<SystemTime>,
    since: SystemTime,
    now: SystemTime,
) -> SystemTime {
    match schedule {
        Schedule::Every(period) => match last {
            Some(last) => last + *period,
            None => since + offset(cluster, (*period / 10).min(MAX_SPREAD)),
        },
        Schedule::Cron { cron, .. } => {
            let spread = |at: SystemTime| at + offset(cluster, cron_spread(cron, at));
            // The occurrence after the last snapshot (or after `since`, for a cluster without
            // one).
            let after = last.unwrap_or(since);
            match occurrence(cron, after) {
                // Missed while the daemon was down: at once.
                Some(due) if spread(due) <= now && last.is_some() => now,
                Some(due) => spread(due),
                None => now + Duration::from_secs(365 * 24 * 3600),
            }
        }
    }
}

/// How long past its due time a snapshot is, once that is more than twice the schedule's
/// period: `None` while it is not overdue. `last_success` is the newest snapshot that
/// succeeded; a cluster that never had one counts from `since` (when its policy was first seen).
pub fn overdue(
    schedule: &Schedule,
    last_success: Option<SystemTime>,
    since: SystemTime,
    now: SystemTime,
) -> Option<Duration> {
    let from = last_success.unwrap_or(since);
    let limit = 2 * period(schedule, from);
    let late = now.duration_since(from).ok()?;
    (late > limit).then(|| late - limit)
}

/// The gap between runs around `at`.
fn period(schedule: &Schedule, at: SystemTime) -> Duration {
    match schedule {
        Schedule::Every(period) => *period,
        Schedule::Cron { cron, .. } => gap(cron, at),
    }
}

/// The cron's first occurrence strictly after `after`.
fn occurrence(cron: &croner::Cron, after: SystemTime) -> Option<SystemTime> {
    let start: DateTime<Utc> = after.into();
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(SystemTime::from)
}

/// The gap from the cron's occurrence after `at` to the one after that.
fn gap(cron: &croner::Cron, at: SystemTime) -> Duration {
    let day = Duration::from_secs(24 * 3600);
    let Some(first) = occurrence(cron, at) else {
        return day;
    };
    occurrence(cron, first)
        .and_then(|second| second.duration_since(first).ok())
        .unwrap_or(day)
}

fn cron_spread(cron: &croner::Cron, at: SystemTime) -> Duration {
    (gap(cron, at) / 10).min(MAX_SPREAD)
}

/// The cluster's own offset within `spread`: the same on every start of every version of
/// the daemon (a digest of the name, not a hasher whose algorithm may change).
fn offset(cluster: &str, spread: Duration) -> Duration {
    let millis = spread.as_millis() as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    let digest = Sha256::digest(cluster.as_bytes());
    let word = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes of 32"));
    Duration::from_millis(word % millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    fn cron(expression: &str) -> Schedule {
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expression)
            .unwrap();
        Schedule::Cron {
            expression: expression.into(),
            cron: Box::new(parsed),
        }
    }

    #[test]
    fn runs_fall_on_the_schedule_with_the_clusters_own_offset() {
        let six_hourly = cron("0 */6 * * *");
        let now = at("2026-12-03T07:10:00Z");
        let last = at("2026-12-03T06:00:30Z");
        // (schedule, last, due at or after, due before)
        let cases = [
            (
                Schedule::Every(6 * HOUR),
                Some(last),
                last + 6 * HOUR,
                last + 6 * HOUR + Duration::from_millis(1),
            ),
            (Schedule::Every(6 * HOUR), None, now, now + MAX_SPREAD),
            (
                Schedule::Every(Duration::from_secs(60)),
                None,
                now,
                now + Duration::from_secs(6),
            ),
            (
                six_hourly.clone(),
                Some(last),
                at("2026-12-03T12:00:00Z"),
                at("2026-12-03T12:05:00Z"),
            ),
            (
                six_hourly.clone(),
                None,
                at("2026-12-03T12:00:00Z"),
                at("2026-12-03T12:05:00Z"),
            ),
        ];
        for (i, (schedule, last, from, before)) in cases.into_iter().enumerate() {
            let due = next_due(&schedule, "dev", last, now, now);
            assert!(due >= from && due < before, "case {i}: {due:?}");
        }
    }

    #[test]
    fn a_first_run_is_due_at_a_fixed_time_whatever_the_clock_says() {
        let since = at("2026-12-03T07:10:00Z");
        let every = Schedule::Every(HOUR);
        let first = next_due(&every, "dev", None, since, since);
        for later in [1, 30, 600] {
            let now = since + Duration::from_secs(later);
            assert_eq!(next_due(&every, "dev", None, since, now), first);
        }
    }

    #[test]
    fn a_run_missed_while_the_daemon_was_down_runs_at_once_and_once() {
        let six_hourly = cron("0 */6 * * *");
        let last = at("2026-12-01T00:00:10Z");
        let now = at("2026-12-03T07:10:00Z");
        assert_eq!(next_due(&six_hourly, "dev", Some(last), now, now), now);
        // Once it ran, the next is the next occurrence, not the other missed ones.
        let next = next_due(&six_hourly, "dev", Some(now), now, now);
        assert!(next >= at("2026-12-03T12:00:00Z"), "{next:?}");
    }

    #[test]
    fn clusters_spread_over_the_window_and_each_keeps_its_place() {
        let six_hourly = cron("0 */6 * * *");
        let now = at("2026-12-03T07:10:00Z");
        let due: Vec<SystemTime> = (0..100)
            .map(|c| next_due(&six_hourly, &format!("c{c}"), None, now, now))
            .collect();
        let distinct: std::collections::BTreeSet<_> = due.iter().collect();
        assert!(distinct.len() > 90, "{} distinct times", distinct.len());
        assert_eq!(due[7], next_due(&six_hourly, "c7", None, now, now));
    }

    #[test]
    fn a_snapshot_is_overdue_after_twice_its_period() {
        let last = at("2026-12-03T00:00:00Z");
        let every = Schedule::Every(6 * HOUR);
        assert_eq!(overdue(&every, Some(last), last, last + 12 * HOUR), None);
        assert_eq!(
            overdue(&every, Some(last), last, last + 13 * HOUR),
            Some(HOUR)
        );
        let since = at("2026-12-03T01:00:00Z");
        assert_eq!(overdue(&every, None, since, since + 11 * HOUR), None);
        let hourly = cron("0 * * * *");
        assert_eq!(
            overdue(&hourly, Some(last), last, last + 3 * HOUR),
            Some(HOUR)
        );
    }
}
