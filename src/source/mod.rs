//! The Git source: where the daemon's desired state comes from.
//!
//! A [`GitSource`] watches one remote and one ref (branch, tag or pinned commit). Each check
//! lists the remote's refs (one round trip, no objects) and fetches only when the ref moved,
//! only that ref, shallow on the first fetch, into a bare mirror under the state directory.
//! The cluster files are read from the commit's tree without a checkout and loaded with
//! [`crate::model::load_sources`]. A [`LocalSource`] watches a working tree instead and reads
//! it as it is on disk, **uncommitted files included**: it is meant for editing and trying
//! definitions locally, not for production.
//!
//! Both publish an `Arc<DesiredState>` on a `tokio::sync::watch` channel and a
//! [`SourceStatus`]. A commit whose cluster files fail validation keeps those clusters at their
//! last good definition while the others advance; an unreachable remote or a deleted branch is
//! an error in the status and never an empty desired state. Webhooks ([`webhook::router`])
//! trigger an immediate check through a [`Trigger`]; bursts coalesce into one check.
//!
//! libgit2 is blocking: every git operation runs on `spawn_blocking`, never on the async
//! workers. Credentials are [`Secret`]s, read from files or the environment, and never appear
//! in logs, errors or status.

pub mod approval;
mod local;
mod poll;
mod remote;
mod state;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::secret::{Secret, SecretError};
pub use local::LocalSource;
pub use poll::{GitSource, Trigger};
pub use remote::{GitError, Mirror, NOTES_REF};
pub use state::{ClusterEntry, DesiredState, ErrorReason, Revision, SourceStatus, StatusError};

/// Where a remote lives. Credentials are never part of the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    /// `https://` or `http://` (smart HTTP).
    Http(String),
    /// `ssh://user@host[:port]/path` or `user@host:path`.
    Ssh(String),
    /// A local path or a `file://` URL.
    File(PathBuf),
}

/// Why a remote URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error(
        "remote URL must not contain a password; give credentials from a file or the environment"
    )]
    PasswordInUrl,
    #[error(
        "an http(s) remote URL must not contain a user name (tokens are often passed that way); \
         give credentials from a file or the environment"
    )]
    UserInHttpUrl,
    #[error("unsupported remote URL scheme `{scheme}` (expected https, http, ssh or file)")]
    Scheme { scheme: String },
}

impl RemoteUrl {
    /// Parses a remote as an operator writes it.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(Self::File(PathBuf::from(path)));
        }
        if text.starts_with('/') || text.starts_with('.') {
            return Ok(Self::File(PathBuf::from(text)));
        }
        match url::Url::parse(text) {
            Ok(url) => {
                if url.password().is_some() {
                    return Err(UrlError::PasswordInUrl);
                }
                match url.scheme() {
                    "https" | "http" if !url.username().is_empty() => Err(UrlError::UserInHttpUrl),
                    "https" | "http" => Ok(Self::Http(text.to_owned())),
                    "ssh" => Ok(Self::Ssh(text.to_owned())),
                    scheme => Err(UrlError::Scheme {
                        scheme: scheme.to_owned(),
                    }),
                }
            }
            // scp-like `git@host:path`
            Err(_) if text.contains('@') && text.contains(':') => Ok(Self::Ssh(text.to_owned())),
            Err(_) => Ok(Self::File(PathBuf::from(text))),
        }
    }

    /// The URL handed to libgit2.
    pub fn as_git_url(&self) -> String {
        match self {
            Self::Http(url) | Self::Ssh(url) => url.clone(),
            Self::File(path) => format!("file://{}", path.display()),
        }
    }
}

/// How to authenticate to a remote.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// HTTP basic authentication.
    Basic { username: String, password: Secret },
    /// An HTTP access token, sent as the basic-auth password (GitHub, GitLab, Gitea accept
    /// any user name with a token).
    Token { username: String, token: Secret },
    /// An SSH key file, and the known_hosts file the server's key must appear in.
    SshKey {
        username: String,
        private_key: PathBuf,
        passphrase: Option<Secret>,
        known_hosts: PathBuf,
    },
}

/// What to follow in the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    Branch(String),
    Tag(String),
    /// A pinned commit (full hex id): fetched once, never moves.
    Commit(String),
}

impl GitRef {
    /// The full ref name advertised by the remote; `None` for a pinned commit.
    pub fn ref_name(&self) -> Option<String> {
        match self {
            Self::Branch(name) => Some(format!("refs/heads/{name}")),
            Self::Tag(name) => Some(format!("refs/tags/{name}")),
            Self::Commit(_) => None,
        }
    }
}

/// Timing of the poll loop.
#[derive(Debug, Clone, Copy)]
pub struct PollPolicy {
    /// Time between two checks while the remote answers.
    pub interval: Duration,
    /// Fraction of `interval` (0.0 to 1.0) added or removed at random, to spread load.
    pub jitter: f64,
    /// First delay after a failure; it doubles with each consecutive failure.
    pub backoff_min: Duration,
    /// Largest delay after failures.
    pub backoff_max: Duration,
    /// A check (list refs, fetch, read) that takes longer fails with a timeout.
    pub timeout: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            jitter: 0.1,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Everything a [`GitSource`] needs.
#[derive(Debug, Clone)]
pub struct GitSourceConfig {
    pub url: RemoteUrl,
    pub auth: Auth,
    pub reference: GitRef,
    /// A directory of the repository that holds the clusters directory; `None` is the root.
    pub subdir: Option<String>,
    /// The directory (under `subdir`) whose `*.yaml` / `*.yml` files define clusters.
    pub clusters_dir: String,
    /// Where the bare mirror lives (one directory per source under it).
    pub state_dir: PathBuf,
    pub poll: PollPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            RemoteUrl::parse("file:///srv/repo"),
            Ok(RemoteUrl::File("/srv/repo".into()))
        );
        assert_eq!(
            RemoteUrl::parse("/srv/repo"),
            Ok(RemoteUrl::File("/srv/repo".into()))
        );
        assert!(matches!(
            RemoteUrl::parse("https://h/r.git"),
            Ok(RemoteUrl::Http(_))
        ));
        assert!(matches!(
            RemoteUrl::parse("git@h:r.git"),
            Ok(RemoteUrl::Ssh(_))
        ));
        assert_eq!(
            RemoteUrl::parse("https://u:p@h/r.git"),
            Err(UrlError::PasswordInUrl)
        );
        assert_eq!(
            RemoteUrl::parse("https://ghp_token@h/r.git"),
            Err(UrlError::UserInHttpUrl)
        );
        assert!(matches!(
            RemoteUrl::parse("ssh://git@h:2222/r.git"),
            Ok(RemoteUrl::Ssh(_))
        ));
        assert!(matches!(
            RemoteUrl::parse("ftp://h/r"),
            Err(UrlError::Scheme { .. })
        ));
    }
}
