//! A snapshot's manifest, `<cluster>/<id>.db.zst.json`: what the data object holds and how to
//! check it. It is written last, so a snapshot exists once its manifest does. Reading one is
//! bounded: an object larger than [`MAX_MANIFEST_BYTES`] is refused before it is parsed.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{ClusterName, NodeName, SnapshotId};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// Largest manifest read; a real one is well under 1 KiB.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Longest free-text field (the etcd version, the Git commit).
pub const MAX_FIELD_BYTES: usize = 128;

/// Everything known about one stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] when written by this build.
    pub format: u32,
    /// The cluster whose etcd this is; also the first part of the object's path.
    pub cluster: ClusterName,
    /// The snapshot's id; the rest of the object's path.
    #[serde(serialize_with = "id_ser", deserialize_with = "id_de")]
    pub id: SnapshotId,
    /// The node whose etcd member streamed the snapshot.
    pub member: NodeName,
    /// The etcd revision the snapshot holds.
    pub revision: u64,
    /// The version the member reported (`3.4.23`).
    pub etcd_version: String,
    /// Bytes of the snapshot as etcd sent it, its trailing sha256 included: what
    /// `etcdctl snapshot save` would have written.
    pub raw_size: u64,
    /// Bytes of the data object.
    pub compressed_size: u64,
    /// The sha256 of the raw snapshot.
    pub raw_sha256: Sha256,
    /// The sha256 of the data object.
    pub compressed_sha256: Sha256,
    /// How the data object is compressed, and at which level.
    pub compression: Compression,
    pub compression_level: i32,
    /// The commit of the cluster's definition when the snapshot was taken.
    pub git_commit: String,
    /// When the save started and when its data was stored (RFC 3339, milliseconds).
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub finished_at: SystemTime,
}

/// How the data object is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// One zstd frame.
    Zstd,
}

/// A sha256 digest, lowercase hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let lower = text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut digest = [0; 32];
        match hex::decode_to_slice(&text, &mut digest) {
            Ok(()) if lower => Ok(Sha256(digest)),
            _ => Err(serde::de::Error::custom(
                "a sha256 is 64 lowercase hex digits",
            )),
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("a manifest is at most {limit} bytes; this one is {size}")]
    TooLarge { size: usize, limit: usize },
    #[error("the manifest is not valid")]
    Invalid(#[source] serde_json::Error),
    #[error(
        "manifest format {found} is not supported (this build reads format {MANIFEST_FORMAT})"
    )]
    UnsupportedFormat { found: u32 },
    #[error("the manifest's {field} is longer than {MAX_FIELD_BYTES} bytes")]
    FieldTooLong { field: &'static str },
}

/// Only the version, read first so a newer format is named as such and not as invalid.
#[derive(Deserialize)]
struct Format {
    format: u32,
}

impl Manifest {
    /// Parses a manifest read from a store; bytes beyond [`MAX_MANIFEST_BYTES`] are refused
    /// before parsing.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                size: bytes.len(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let Format { format } = serde_json::from_slice(bytes).map_err(ManifestError::Invalid)?;
        if format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat { found: format });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::Invalid)?;
        manifest.check_fields()?;
        Ok(manifest)
    }

    /// The manifest as stored: pretty JSON, so an operator can read it from the bucket.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serialises")
    }

    fn check_fields(&self) -> Result<(), ManifestError> {
        for (field, value) in [
            ("etcdVersion", &self.etcd_version),
            ("gitCommit", &self.git_commit),
        ] {
            if value.len() > MAX_FIELD_BYTES {
                return Err(ManifestError::FieldTooLong { field });
            }
        }
        Ok(())
    }
}

fn id_ser<S: Serializer>(id: &SnapshotId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(id.as_str())
}

fn id_de<'de, D: Deserializer<'de>>(d: D) -> Result<SnapshotId, D::Error> {
    let text = String::deserialize(d)?;
    SnapshotId::parse(&text).ok_or_else(|| {
        serde::de::Error::custom("not a snapshot id (<UTC time>-<revision>-<8 hex>)")
    })
}

/// RFC 3339 in UTC with milliseconds (`2026-11-25T06:00:00.123Z`).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            cluster: ClusterName::parse("dev").unwrap(),
            id: SnapshotId::parse("20261125T060000Z-41-aaaaaaaa").unwrap(),
            member: NodeName::parse("node-1").unwrap(),
            revision: 41,
            etcd_version: "3.4.23".into(),
            raw_size: 20_512,
            compressed_size: 1_200,
            raw_sha256: Sha256([1; 32]),
            compressed_sha256: Sha256([2; 32]),
            compression: Compression::Zstd,
            compression_level: 3,
            git_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            started_at: UNIX_EPOCH + Duration::from_millis(1_764_050_400_123),
            finished_at: UNIX_EPOCH + Duration::from_millis(1_764_050_401_456),
        }
    }

    #[test]
    fn a_manifest_round_trips_in_camel_case() {
        let manifest = sample();
        let json = manifest.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        for field in [
            "\"format\": 1",
            "\"etcdVersion\"",
            "\"rawSha256\": \"0101",
            "\"compression\": \"zstd\"",
            "\"compressionLevel\": 3",
            "\"startedAt\": \"2025-11-25T06:00:00.123Z\"",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        assert_eq!(Manifest::parse(&json).unwrap(), manifest);
    }

    #[test]
    fn manifests_are_refused_with_a_typed_reason() {
        let good = serde_json::to_value(sample()).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[key] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let padded = {
            let mut bytes = serde_json::to_vec(&good).unwrap();
            bytes.resize(MAX_MANIFEST_BYTES + 1, b' ');
            bytes
        };
        type Check = fn(&ManifestError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            ("too large, even if valid JSON", padded, |e| {
                matches!(e, ManifestError::TooLarge { .. })
            }),
            ("not JSON", b"{".to_vec(), |e| {
                matches!(e, ManifestError::Invalid(_))
            }),
            ("a newer format", with("format", 2.into()), |e| {
                matches!(e, ManifestError::UnsupportedFormat { found: 2 })
            }),
            ("an unknown field", with("extra", 1.into()), |e| {
                matches!(e, ManifestError::Invalid(_))
            }),
            ("a bad id", with("id", "latest".into()), |e| {
                matches!(e, ManifestError::Invalid(_))
            }),
            (
                "an uppercase digest",
                with("rawSha256", "AB".repeat(32).into()),
                |e| matches!(e, ManifestError::Invalid(_)),
            ),
            ("a short digest", with("rawSha256", "ab".into()), |e| {
                matches!(e, ManifestError::Invalid(_))
            }),
            (
                "another compression",
                with("compression", "gzip".into()),
                |e| matches!(e, ManifestError::Invalid(_)),
            ),
            ("a bad time", with("startedAt", "yesterday".into()), |e| {
                matches!(e, ManifestError::Invalid(_))
            }),
            (
                "a long commit",
                with("gitCommit", "a".repeat(200).into()),
                |e| matches!(e, ManifestError::FieldTooLong { field: "gitCommit" }),
            ),
        ];
        for (what, bytes, check) in cases {
            let err = Manifest::parse(&bytes).expect_err(what);
            assert!(check(&err), "{what}: {err:?}");
        }
    }

    #[test]
    fn a_manifest_at_the_limit_is_parsed() {
        let mut bytes = serde_json::to_vec(&sample()).unwrap();
        bytes.resize(MAX_MANIFEST_BYTES, b' ');
        assert_eq!(Manifest::parse(&bytes).unwrap(), sample());
    }
}
