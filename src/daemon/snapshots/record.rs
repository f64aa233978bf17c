//! What the daemon keeps of a cluster's snapshots beyond the store: the verifications that ran
//! (a snapshot whose verification passed is what retention keeps last), in one durable
//! document per cluster.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::api::snapshots::Verification;
use crate::model::SnapshotId;
use crate::state::StateError;
use crate::store::DurableState;

/// The document of `cluster`'s record.
pub fn record_name(cluster: &str) -> String {
    format!("snapshots-{cluster}.json")
}

/// The verifications a record keeps, newest last; older ones are dropped.
pub const MAX_VERIFICATIONS: usize = 100;

/// A cluster's snapshot record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    /// Newest last.
    pub verifications: Vec<Verification>,
}

impl SnapshotRecord {
    /// The snapshots whose newest verification passed.
    pub fn verified(&self) -> BTreeSet<SnapshotId> {
        let mut verified = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for v in self.verifications.iter().rev() {
            if seen.insert(v.id.as_str()) && v.passed {
                verified.extend(SnapshotId::parse(&v.id));
            }
        }
        verified
    }

    /// The newest verification of `id`.
    pub fn of(&self, id: &str) -> Option<&Verification> {
        self.verifications.iter().rev().find(|v| v.id == id)
    }

    pub fn newest(&self) -> Option<&Verification> {
        self.verifications.last()
    }

    fn push(&mut self, verification: Verification) {
        self.verifications.push(verification);
        let over = self.verifications.len().saturating_sub(MAX_VERIFICATIONS);
        self.verifications.drain(..over);
    }
}

/// Loads `cluster`'s record (empty when there is none), on a blocking thread.
pub async fn load(state: &DurableState, cluster: &str) -> Result<SnapshotRecord, StateError> {
    let (state, name) = (state.clone(), record_name(cluster));
    tokio::task::spawn_blocking(move || state.load::<SnapshotRecord>(&name))
        .await
        .expect("loading does not panic")
        .map(Option::unwrap_or_default)
}

/// Adds a verification to `cluster`'s record, on a blocking thread.
pub async fn add(
    state: &DurableState,
    cluster: &str,
    verification: Verification,
) -> Result<(), StateError> {
    let (state, name, cluster) = (state.clone(), record_name(cluster), cluster.to_string());
    tokio::task::spawn_blocking(move || {
        state
            .update_for(&cluster, &name, |record: &mut SnapshotRecord| {
                record.push(verification.clone());
                Ok::<_, std::convert::Infallible>(())
            })
            .map(|_| ())
    })
    .await
    .expect("saving does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, passed: bool) -> Verification {
        Verification {
            id: id.into(),
            at: String::new(),
            deep: false,
            passed,
            bytes: None,
            revision: None,
            keys: None,
            error: None,
            by: "daemon".into(),
        }
    }

    const A: &str = "20261125T060000Z-48213-9f3a61c2";
    const B: &str = "20261125T070000Z-48300-00000001";

    #[test]
    fn a_snapshot_counts_as_verified_by_its_newest_verification() {
        let cases = [
            (vec![check(A, true)], vec![A]),
            (vec![check(A, true), check(A, false)], vec![]),
            (vec![check(A, false), check(A, true)], vec![A]),
            (vec![check(A, true), check(B, false)], vec![A]),
            (vec![check(A, true), check(B, true)], vec![A, B]),
        ];
        for (checks, want) in cases {
            let record = SnapshotRecord {
                verifications: checks.clone(),
            };
            let got: Vec<String> = record.verified().iter().map(|i| i.to_string()).collect();
            assert_eq!(got, want, "{checks:?}");
        }
    }

    #[test]
    fn the_record_keeps_only_the_newest_verifications() {
        let mut record = SnapshotRecord::default();
        for n in 0..MAX_VERIFICATIONS + 5 {
            let mut v = check(A, true);
            v.at = n.to_string();
            record.push(v);
        }
        assert_eq!(record.verifications.len(), MAX_VERIFICATIONS);
        assert_eq!(record.verifications[0].at, "5");
        assert_eq!(
            record.newest().unwrap().at,
            (MAX_VERIFICATIONS + 4).to_string()
        );
    }
}
