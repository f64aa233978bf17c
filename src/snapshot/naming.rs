//! Where a snapshot's objects live, and new snapshot ids. The model only parses ids; making one
//! needs the clock and randomness, so it happens here.

use std::time::SystemTime;

use object_store::path::Path;

use crate::model::{ClusterName, SnapshotId};

use super::MANIFEST_SUFFIX;

/// The suffix of a snapshot's data object, after its id.
pub const DATA_SUFFIX: &str = ".db.zst";

/// A fresh id for a snapshot of `revision` started at `now`, with 8 random hex digits so that
/// two saves in the same second never share an id.
pub fn new_id(now: SystemTime, revision: u64) -> Result<SnapshotId, getrandom::Error> {
    let mut random = [0u8; 4];
    getrandom::fill(&mut random)?;
    Ok(id_from_parts(now, revision, random))
}

/// `<UTC time>-<revision>-<hex of random>`, as [`SnapshotId::parse`] reads it.
pub fn id_from_parts(at: SystemTime, revision: u64, random: [u8; 4]) -> SnapshotId {
    // `2026-11-25T06:00:00Z` -> `20261125T060000Z`
    let stamp: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let text = format!("{stamp}-{revision}-{}", hex::encode(random));
    SnapshotId::parse(&text).unwrap_or_else(|| panic!("{text} is not a snapshot id"))
}

/// `<cluster>/<id>.db.zst`
pub fn data_path(cluster: &ClusterName, id: &SnapshotId) -> Path {
    Path::from(format!("{cluster}/{id}{DATA_SUFFIX}"))
}

/// `<cluster>/<id>.db.zst.json`
pub fn manifest_path(cluster: &ClusterName, id: &SnapshotId) -> Path {
    Path::from(format!("{cluster}/{id}{MANIFEST_SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn ids_are_time_revision_and_random_hex() {
        // 2026-11-25T06:00:00Z
        let at = UNIX_EPOCH + Duration::from_secs(1_795_586_400);
        let id = id_from_parts(at, 48_213, [0x9f, 0x3a, 0x61, 0xc2]);
        assert_eq!(id.as_str(), "20261125T060000Z-48213-9f3a61c2");
        let cluster = ClusterName::parse("dev").unwrap();
        assert_eq!(
            manifest_path(&cluster, &id).as_ref(),
            "dev/20261125T060000Z-48213-9f3a61c2.db.zst.json"
        );
        assert_eq!(
            data_path(&cluster, &id).as_ref(),
            "dev/20261125T060000Z-48213-9f3a61c2.db.zst"
        );
        assert_ne!(new_id(at, 1).unwrap(), new_id(at, 1).unwrap());
    }
}
