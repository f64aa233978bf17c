//! A secret value (token, password, webhook key) that never prints itself: `Debug` and
//! `Display` show `[redacted]`. Read from a file or the environment, never from arguments.

use std::fmt;
use std::path::{Path, PathBuf};

/// Bytes that must not reach logs, status or error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Why a secret could not be read. Never carries the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("environment variable {name} is not set or not UTF-8")]
    Env { name: String },
    #[error("secret from {origin} is empty")]
    Empty { origin: String },
}

impl Secret {
    /// Wraps a value already in memory (tests, or a value read by the caller).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The contents of `path`, with one trailing newline removed.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
            path: path.to_path_buf(),
            source,
        })?;
        let value = text.strip_suffix('\n').unwrap_or(&text);
        let value = value.strip_suffix('\r').unwrap_or(value);
        Self::non_empty(value, || path.display().to_string())
    }

    /// The value of the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, SecretError> {
        let value = std::env::var(name).map_err(|_| SecretError::Env {
            name: name.to_owned(),
        })?;
        Self::non_empty(&value, || format!("${name}"))
    }

    /// The secret itself. Call only where the value is handed to its consumer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn non_empty(value: &str, origin: impl FnOnce() -> String) -> Result<Self, SecretError> {
        if value.is_empty() {
            return Err(SecretError::Empty { origin: origin() });
        }
        Ok(Self(value.to_owned()))
    }
}

/// On the wire only (a join token in the agent protocol); it never prints.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").expect("write");
        assert_eq!(Secret::from_file(&path).expect("read").expose(), "abc");
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            Secret::from_file(&path),
            Err(SecretError::Empty { .. })
        ));
    }
}
