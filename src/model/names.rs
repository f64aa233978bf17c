//! Names and identifiers, parsed once at the boundary so the rest of drover never handles an
//! unchecked string: cluster, node, component and store names (DNS labels), node addresses,
//! snapshot ids and restore request ids.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::diagnostic::NameError;

/// Checks an RFC 1123 DNS label: 1 to 63 of `a-z 0-9 -`, starting and ending alphanumeric.
pub fn check_dns_label(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 63 {
        return Err(NameError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NameError::BadChar);
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(NameError::BadEdge);
    }
    Ok(())
}

macro_rules! dns_label {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// What this name is, for messages.
            pub const WHAT: &'static str = $what;

            pub fn parse(s: &str) -> Result<Self, NameError> {
                check_dns_label(s).map(|()| Self(s.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Parsed on the way in, so a stored name is checked like any other.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(|e| serde::de::Error::custom(format!("{}: {e}", Self::WHAT)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

dns_label!(
    /// A cluster's name, unique in the repository.
    ClusterName,
    "cluster name"
);
dns_label!(
    /// A node's name, unique in its cluster; the identity an agent joins under.
    NodeName,
    "node name"
);
dns_label!(
    /// A component's name, unique in its role.
    ComponentName,
    "component name"
);
dns_label!(
    /// The name of a snapshot store configured in the daemon.
    StoreName,
    "store name"
);

/// A node's address: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeAddress(String);

impl NodeAddress {
    pub fn parse(s: &str) -> Option<Self> {
        if s.parse::<IpAddr>().is_ok() || is_dns_name(s) {
            Some(NodeAddress(s.to_string()))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form two addresses are compared in: IPs canonical, names lower-case.
    pub fn canonical(&self) -> String {
        match self.0.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => self.0.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // An all-numeric dotted name is a malformed IPv4 address, not a host name.
        && !s.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// A snapshot's id: `<UTC time>-<etcd revision>-<short id>`, such as
/// `20261125T060000Z-48213-9f3a61c2`. Snapshot objects are named after it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '-');
        let (time, rev, id) = (parts.next()?, parts.next()?, parts.next()?);
        let ok = is_utc_stamp(time)
            && !rev.is_empty()
            && rev.len() <= 20
            && rev.bytes().all(|b| b.is_ascii_digit())
            && id.len() == 8
            && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| SnapshotId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `YYYYMMDDTHHMMSSZ` with plausible field ranges.
fn is_utc_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (Some(month), Some(day), Some(hour), Some(min), Some(sec), Some(_year)) = (
        digits(4..6),
        digits(6..8),
        digits(9..11),
        digits(11..13),
        digits(13..15),
        digits(0..4),
    ) else {
        return false;
    };
    (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && min < 60 && sec < 61
}

/// An operator's name for one restore request; a restore runs once per request id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    pub fn parse(s: &str) -> Option<Self> {
        let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        let ok = first_ok
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| RequestId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A container image reference as `docker pull` takes it: `[registry/]repository[:tag][@digest]`.
/// Parsed once; the planner, the Docker driver and the registry credentials all read its parts
/// from here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ImageRef(String);

impl ImageRef {
    /// Any non-empty text without whitespace; the registry is the judge of the rest.
    pub fn parse(s: &str) -> Option<Self> {
        (!s.is_empty() && !s.chars().any(char::is_whitespace)).then(|| ImageRef(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The repository path's last part, with its tag (`busybox:1` of `r.io/lib/busybox:1`).
    fn last_part(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    fn is_digest(&self) -> bool {
        self.0.contains('@')
    }

    /// The tag, when the reference names one (a port in the registry host is not a tag).
    pub fn tag(&self) -> Option<&str> {
        if self.is_digest() {
            return None;
        }
        self.last_part().rsplit_once(':').map(|(_, tag)| tag)
    }

    /// `name` and `tag` for the engine's pull: a digest reference is pulled as it is; a name
    /// without a tag means `latest`, as with `docker pull` (the engine would pull every tag).
    pub fn pull_parts(&self) -> (&str, Option<&str>) {
        if self.is_digest() {
            return (&self.0, None);
        }
        match self.tag() {
            Some(tag) => (&self.0[..self.0.len() - tag.len() - 1], Some(tag)),
            None => (&self.0, Some("latest")),
        }
    }

    /// Whether the reference can move under the same text: `latest`, or no tag and no digest.
    pub fn is_mutable(&self) -> bool {
        !self.is_digest() && self.tag().is_none_or(|tag| tag == "latest")
    }

    /// The registry the image is pulled from, as `docker pull` decides it: the first path part
    /// when it names a host (a dot, a port, or `localhost`), else Docker Hub.
    pub fn registry(&self) -> &str {
        match self.0.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
                if first == "index.docker.io" {
                    "docker.io"
                } else {
                    first
                }
            }
            _ => "docker.io",
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImageRef::parse(&s).ok_or_else(|| serde::de::Error::custom("not an image reference"))
    }
}

/// A file's permission bits, from octal text such as `644` or `0644`. On the wire, the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct FileMode(u32);

impl FileMode {
    /// Files a component lists without a mode.
    pub const DEFAULT: FileMode = FileMode(0o644);

    pub fn parse(mode: &str) -> Option<Self> {
        let digits = mode
            .strip_prefix('0')
            .filter(|d| d.len() == 3)
            .unwrap_or(mode);
        if digits.len() != 3 {
            return None;
        }
        u32::from_str_radix(digits, 8).ok().map(FileMode)
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl<'de> serde::Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bits = u32::deserialize(d)?;
        if bits > 0o777 {
            return Err(serde::de::Error::custom(
                "a file mode has permission bits only",
            ));
        }
        Ok(FileMode(bits))
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        let cases = [
            ("node-1", Ok(())),
            ("a", Ok(())),
            ("", Err(NameError::Empty)),
            ("Node", Err(NameError::BadChar)),
            ("node_1", Err(NameError::BadChar)),
            ("-node", Err(NameError::BadEdge)),
            ("node-", Err(NameError::BadEdge)),
        ];
        for (input, want) in cases {
            assert_eq!(check_dns_label(input), want, "{input:?}");
        }
        assert_eq!(check_dns_label(&"a".repeat(64)), Err(NameError::TooLong));
        assert_eq!(check_dns_label(&"a".repeat(63)), Ok(()));
    }

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.2",
            "::1",
            "node-1.example.internal",
            "Host.Example.",
        ] {
            assert!(NodeAddress::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "127.0.0.256", "a..b", "-a.b", "has space", "1.2.3"] {
            assert!(NodeAddress::parse(bad).is_none(), "{bad}");
        }
        let a = NodeAddress::parse("Host.Example.").unwrap();
        assert_eq!(a.canonical(), "host.example");
    }

    #[test]
    fn snapshot_ids() {
        assert!(SnapshotId::parse("20261125T060000Z-48213-9f3a61c2").is_some());
        for bad in [
            "",
            "latest",
            "20261125T060000Z-48213",
            "20261125T060000Z-48213-9F3A61C2",
            "20261325T060000Z-48213-9f3a61c2",
            "20261125 060000Z-48213-9f3a61c2",
            "20261125T060000Z--9f3a61c2",
            "20261125T060000Z-1-9f3a61c2-extra",
        ] {
            assert!(SnapshotId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn image_references_parse_as_docker_pull_reads_them() {
        // (image, pull name, pull tag, registry, mutable)
        let cases = [
            ("busybox", "busybox", Some("latest"), "docker.io", true),
            ("busybox:1", "busybox", Some("1"), "docker.io", false),
            (
                "busybox:latest",
                "busybox",
                Some("latest"),
                "docker.io",
                true,
            ),
            (
                "library/busybox:1",
                "library/busybox",
                Some("1"),
                "docker.io",
                false,
            ),
            (
                "index.docker.io/library/busybox",
                "index.docker.io/library/busybox",
                Some("latest"),
                "docker.io",
                true,
            ),
            (
                "registry.k8s.io/etcd:3.5.16-0",
                "registry.k8s.io/etcd",
                Some("3.5.16-0"),
                "registry.k8s.io",
                false,
            ),
            (
                "127.64.0.9:5000/app",
                "127.64.0.9:5000/app",
                Some("latest"),
                "127.64.0.9:5000",
                true,
            ),
            (
                "localhost:5000/app:2",
                "localhost:5000/app",
                Some("2"),
                "localhost:5000",
                false,
            ),
            (
                "localhost/app",
                "localhost/app",
                Some("latest"),
                "localhost",
                true,
            ),
            (
                "r.io/app@sha256:abcd",
                "r.io/app@sha256:abcd",
                None,
                "r.io",
                false,
            ),
            (
                "app:1@sha256:abcd",
                "app:1@sha256:abcd",
                None,
                "docker.io",
                false,
            ),
        ];
        for (text, name, tag, registry, mutable) in cases {
            let image = ImageRef::parse(text).unwrap();
            assert_eq!(image.pull_parts(), (name, tag), "{text}");
            assert_eq!(image.registry(), registry, "{text}");
            assert_eq!(image.is_mutable(), mutable, "{text}");
            assert_eq!(image.to_string(), text);
        }
        for bad in ["", "a b", "busybox\n"] {
            assert!(
                ImageRef::parse(&bad.replace("\\n", "\n")).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn file_modes() {
        assert_eq!(FileMode::parse("0644"), Some(FileMode(0o644)));
        assert_eq!(FileMode::parse("600"), Some(FileMode(0o600)));
        for bad in [
            "",
            "0",
            "64",
            "0x644",
            "0888",
            "00644",
            "+644",
            "1644",
            "rw-r--r--",
            "1777a",
        ] {
            assert_eq!(FileMode::parse(bad), None, "{bad}");
        }
        assert_eq!(FileMode::parse("600").unwrap().to_string(), "0600");
    }

    #[test]
    fn request_ids() {
        assert!(RequestId::parse("incident-2026-11-25").is_some());
        assert!(RequestId::parse("Restore_1.b").is_some());
        for bad in ["", "-x", "a b", &"x".repeat(64)] {
            assert!(RequestId::parse(bad).is_none(), "{bad}");
        }
    }
}
