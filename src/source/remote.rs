//! The blocking git edge: list a remote's refs, fetch one ref into a bare mirror, and read the
//! cluster files of a commit's tree without a checkout. Everything here blocks; callers run it
//! on `spawn_blocking`. A [`Mirror`] holds paths and credentials, opening the repository per
//! operation, and serialises operations on one mirror with a lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorCode,
    FetchOptions, Oid, RemoteCallbacks, RemoteUpdateFlags, Repository,
};
use sha2::{Digest as _, Sha256};

use super::approval::{self, Approvals, APPROVALS_FILE};
use super::{Auth, GitRef, RemoteUrl};
use crate::model::diagnostic::Diagnostic;
use crate::model::tree::{read_tree, TreeError};
use crate::model::SourceFile;

/// The local ref a fetched branch or tag is stored under in the mirror.
const TIP_REF: &str = "refs/drover/tip";
/// How many times libgit2 may ask for credentials before the attempt counts as refused.
const MAX_CREDENTIAL_CALLS: u32 = 3;

/// A git operation that failed. Messages name the operation; the cause is the source.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open or create the mirror at {path}")]
    Mirror {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("cannot reach the remote")]
    Connect {
        #[source]
        source: git2::Error,
    },
    #[error("the server's host key is not in the known_hosts file")]
    HostKey {
        #[source]
        source: git2::Error,
    },
    #[error("the remote refused the credentials")]
    Auth {
        #[source]
        source: git2::Error,
    },
    #[error("the remote does not advertise {name}")]
    RefNotFound { name: String },
    #[error("fetching {what} failed")]
    Fetch {
        what: String,
        #[source]
        source: git2::Error,
    },
    #[error("commit {commit} is not in the remote")]
    CommitMissing { commit: String },
    #[error("`{commit}` is not a full commit id")]
    BadCommitId { commit: String },
    #[error("reading the tree of {commit} failed")]
    Tree {
        commit: String,
        #[source]
        source: git2::Error,
    },
    #[error("directory `{path}` is not in commit {commit}")]
    ClustersDirMissing { path: String, commit: String },
    #[error("an earlier git operation on this mirror is still running (it timed out)")]
    Busy,
    #[error("cannot write the note on {commit}")]
    Note {
        commit: String,
        #[source]
        source: git2::Error,
    },
    #[error("pushing {what} failed: {reason}")]
    Push { what: String, reason: String },
}

impl GitError {
    fn from_connect(source: git2::Error) -> Self {
        match source.code() {
            ErrorCode::Auth => Self::Auth { source },
            ErrorCode::Certificate => Self::HostKey { source },
            _ => Self::Connect { source },
        }
    }
}

/// The ref drover's notes on commits live under.
pub const NOTES_REF: &str = "refs/notes/drover";
/// Tries at pushing a note while other writers move the remote's notes ref.
const NOTE_ATTEMPTS: usize = 3;

/// What a poll found.
#[derive(Debug, Clone, Copy)]
pub enum Polled {
    /// The ref still points at the last commit: nothing was fetched.
    Unchanged,
    /// The commit the ref points at is in the mirror (fetched now or earlier).
    Fetched(Fetched),
}

/// What a fetch did.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    /// The commit now in the mirror.
    pub commit: Oid,
    /// Bytes received from the remote (0 when nothing had to be fetched).
    pub received_bytes: usize,
}

/// A bare repository under the state directory that mirrors one ref of one remote.
#[derive(Debug, Clone)]
pub struct Mirror {
    path: PathBuf,
    url: RemoteUrl,
    auth: Auth,
    lock: Arc<Mutex<()>>,
}

impl Mirror {
    /// Opens (creating if needed) the mirror for `url` and `reference` under `state_dir`.
    pub fn open(
        state_dir: &Path,
        url: RemoteUrl,
        auth: Auth,
        reference: &GitRef,
    ) -> Result<Self, GitError> {
        let key = format!("{}\n{reference:?}", url.as_git_url());
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        let path = state_dir.join("git").join(&digest[..16]);
        let mirror = Self {
            path,
            url,
            auth,
            lock: Arc::new(Mutex::new(())),
        };
        mirror.repo()?;
        Ok(mirror)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One poll over one connection: list the remote's refs (no objects) and, only when
    /// `reference` moved away from `last`, fetch that ref alone on the same connection (shallow
    /// the first time). A pinned commit is fetched once and then never asks the remote again.
    pub fn poll(&self, reference: &GitRef, last: Option<Oid>) -> Result<Polled, GitError> {
        let _guard = self.guard()?;
        let repo = self.repo()?;
        let Some(name) = reference.ref_name() else {
            if last.is_some() {
                return Ok(Polled::Unchanged);
            }
            let hex = match reference {
                GitRef::Commit(hex) => hex.as_str(),
                GitRef::Branch(name) | GitRef::Tag(name) => name.as_str(),
            };
            return self.fetch_pinned(&repo, hex).map(Polled::Fetched);
        };
        let mut remote = repo
            .remote_anonymous(&self.url.as_git_url())
            .map_err(GitError::from_connect)?;
        let mut connection = remote
            .connect_auth(Direction::Fetch, Some(self.callbacks()), None)
            .map_err(GitError::from_connect)?;
        let advertised = advertised(connection.list().map_err(GitError::from_connect)?, &name)?;
        if Some(advertised) == last {
            return Ok(Polled::Unchanged);
        }
        let tip = tip_commit(&repo);
        if tip == Some(advertised) {
            return Ok(Polled::Fetched(Fetched {
                commit: advertised,
                received_bytes: 0,
            }));
        }
        // Shallow only for the first fetch: later fetches negotiate from what the mirror
        // holds, so they transfer only new objects and keep enough history to tell a
        // fast-forward from a force-push.
        let shallow = tip.is_none() && !matches!(self.url, RemoteUrl::File(_));
        // Download on the listing connection: over SSH this saves a second handshake, over
        // smart HTTP a second ref advertisement.
        let refspec = format!("+{name}:{TIP_REF}");
        let remote = connection.remote();
        remote
            .download(&[refspec.as_str()], Some(&mut self.fetch_options(shallow)))
            .and_then(|()| {
                remote.update_tips(None, RemoteUpdateFlags::empty(), AutotagOption::None, None)
            })
            .map_err(|source| fetch_error(source, &name))?;
        let received_bytes = remote.stats().received_bytes();
        let commit = tip_commit(&repo).ok_or(GitError::RefNotFound { name })?;
        Ok(Polled::Fetched(Fetched {
            commit,
            received_bytes,
        }))
    }

    /// True when `new` descends from `old` (a fast-forward). False also when unknown.
    pub fn is_descendant(&self, new: Oid, old: Oid) -> bool {
        let Ok(_guard) = self.guard() else {
            return false;
        };
        self.repo()
            .and_then(|repo| {
                repo.graph_descendant_of(new, old)
                    .map_err(|source| GitError::Tree {
                        commit: new.to_string(),
                        source,
                    })
            })
            .unwrap_or(false)
    }

    /// The cluster files of `commit`: every `*.yaml` / `*.yml` under `subdir/clusters_dir`,
    /// named relative to `subdir`, with the limits and skips of [`crate::model::load_dir`].
    pub fn read_files(
        &self,
        commit: Oid,
        subdir: Option<&str>,
        clusters_dir: &str,
    ) -> Result<(Vec<SourceFile>, Vec<Diagnostic>), GitError> {
        let _guard = self.guard()?;
        let repo = self.repo()?;
        read_tree(&repo, commit, subdir, clusters_dir).map_err(|e| match e {
            TreeError::NotFound { path, commit } => GitError::ClustersDirMissing { path, commit },
            TreeError::Git { commit, source } => GitError::Tree { commit, source },
        })
    }

    /// The plan digests `commit` approves: its message's trailers and the reviewed-digest file
    /// under `subdir`. The file's size is checked before its content is read.
    pub fn approvals(&self, commit: Oid, subdir: Option<&str>) -> Result<Approvals, GitError> {
        let _guard = self.guard()?;
        let repo = self.repo()?;
        let tree_error = |source| GitError::Tree {
            commit: commit.to_string(),
            source,
        };
        let found = repo.find_commit(commit).map_err(tree_error)?;
        let message = found.message_raw().ok().map(str::to_owned);
        let path = match subdir.map(|s| s.trim_matches('/')) {
            Some(sub) if !sub.is_empty() => format!("{sub}/{APPROVALS_FILE}"),
            _ => APPROVALS_FILE.to_string(),
        };
        let tree = found.tree().map_err(tree_error)?;
        let file = match tree.get_path(Path::new(&path)) {
            Ok(entry) => small_blob(&repo, entry.id(), approval::MAX_FILE_BYTES),
            Err(_) => None,
        };
        Ok(Approvals::read(message.as_deref(), file.as_deref()))
    }

    fn fetch_pinned(&self, repo: &Repository, hex: &str) -> Result<Fetched, GitError> {
        let oid = Oid::from_str(hex)
            .ok()
            .filter(|_| hex.len() == 40)
            .ok_or_else(|| GitError::BadCommitId {
                commit: hex.to_owned(),
            })?;
        if repo.find_commit(oid).is_ok() {
            return Ok(Fetched {
                commit: oid,
                received_bytes: 0,
            });
        }
        let specs = [
            "+refs/heads/*:refs/drover/heads/*",
            "+refs/tags/*:refs/drover/tags/*",
        ];
        let received_bytes = self.fetch_refspecs(repo, &specs, false, hex)?;
        repo.find_commit(oid)
            .map(|_| Fetched {
                commit: oid,
                received_bytes,
            })
            .map_err(|_| GitError::CommitMissing {
                commit: hex.to_owned(),
            })
    }

    fn fetch_refspecs(
        &self,
        repo: &Repository,
        refspecs: &[&str],
        shallow: bool,
        what: &str,
    ) -> Result<usize, GitError> {
        let mut remote = repo
            .remote_anonymous(&self.url.as_git_url())
            .map_err(GitError::from_connect)?;
        remote
            .fetch(refspecs, Some(&mut self.fetch_options(shallow)), None)
            .map_err(|source| fetch_error(source, what))?;
        Ok(remote.stats().received_bytes())
    }

    fn fetch_options(&self, shallow: bool) -> FetchOptions<'static> {
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(self.callbacks())
            .download_tags(AutotagOption::None);
        if shallow {
            options.depth(1);
        }
        options
    }

    /// Sets the note on `commit` under [`NOTES_REF`] to `text` and pushes that ref to the
    /// remote. The remote's notes are fetched first and the note written on top of them, so
    /// the notes others pushed stay; a push that lost a race to another writer is tried
    /// again on the new tip.
    ///
    /// Notes live in a bare repository of their own beside the mirror, holding nothing but the
    /// notes ref: the mirror is shallow, and a push from it would walk past its boundary.
    pub fn push_note(&self, commit: Oid, text: &str) -> Result<(), GitError> {
        let _guard = self.guard()?;
        let repo = self.notes_repo()?;
        let note_error = |source| GitError::Note {
            commit: commit.to_string(),
            source,
        };
        let mut rejected = String::new();
        for _ in 0..NOTE_ATTEMPTS {
            self.fetch_notes(&repo)?;
            let signature =
                git2::Signature::now("drover", "drover@localhost").map_err(note_error)?;
            repo.note(&signature, &signature, Some(NOTES_REF), commit, text, true)
                .map_err(note_error)?;
            match self.push_notes(&repo)? {
                None => return Ok(()),
                Some(reason) => rejected = reason,
            }
        }
        Err(GitError::Push {
            what: NOTES_REF.into(),
            reason: rejected,
        })
    }

    /// The remote's notes, if it has any, in place of the mirror's.
    fn fetch_notes(&self, repo: &Repository) -> Result<(), GitError> {
        let mut remote = repo
            .remote_anonymous(&self.url.as_git_url())
            .map_err(GitError::from_connect)?;
        let refspec = format!("+{NOTES_REF}:{NOTES_REF}");
        remote
            .fetch(
                &[refspec.as_str()],
                Some(&mut self.fetch_options(false)),
                None,
            )
            .map_err(|source| fetch_error(source, NOTES_REF))
    }

    /// Pushes the notes ref; `Some(reason)` when the remote took another writer's update first.
    fn push_notes(&self, repo: &Repository) -> Result<Option<String>, GitError> {
        let mut remote = repo
            .remote_anonymous(&self.url.as_git_url())
            .map_err(GitError::from_connect)?;
        let refused = Arc::new(Mutex::new(None::<String>));
        let mut callbacks = self.callbacks();
        let seen = refused.clone();
        callbacks.push_update_reference(move |_name, status| {
            if let Some(status) = status {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.to_string());
            }
            Ok(())
        });
        let mut options = git2::PushOptions::new();
        options.remote_callbacks(callbacks);
        let refspec = format!("{NOTES_REF}:{NOTES_REF}");
        match remote.push(&[refspec.as_str()], Some(&mut options)) {
            Ok(()) => Ok(refused.lock().unwrap_or_else(|e| e.into_inner()).take()),
            Err(e) if e.code() == ErrorCode::NotFastForward => Ok(Some(e.message().to_string())),
            Err(source) => Err(match source.code() {
                ErrorCode::Auth | ErrorCode::Certificate => GitError::from_connect(source),
                _ => GitError::Push {
                    what: NOTES_REF.into(),
                    reason: source.message().to_string(),
                },
            }),
        }
    }

    /// Exclusive use of the mirror. An operation that timed out may still hold it: the next
    /// one fails fast rather than queueing blocked threads behind it.
    fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>, GitError> {
        match self.lock.try_lock() {
            Ok(guard) => Ok(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(GitError::Busy),
        }
    }

    fn notes_repo(&self) -> Result<Repository, GitError> {
        let path = self.path.with_extension("notes");
        let error = |source| GitError::Mirror {
            path: path.clone(),
            source,
        };
        match Repository::open_bare(&path) {
            Ok(repo) => Ok(repo),
            Err(_) => Repository::init_bare(&path).map_err(error),
        }
    }

    fn repo(&self) -> Result<Repository, GitError> {
        let error = |source| GitError::Mirror {
            path: self.path.clone(),
            source,
        };
        match Repository::open_bare(&self.path) {
            Ok(repo) => Ok(repo),
            Err(_) => Repository::init_bare(&self.path).map_err(error),
        }
    }

    fn callbacks(&self) -> RemoteCallbacks<'static> {
        let mut callbacks = RemoteCallbacks::new();
        let auth = self.auth.clone();
        let mut calls = 0;
        callbacks.credentials(move |_url, user_from_url, allowed| {
            calls += 1;
            if calls > MAX_CREDENTIAL_CALLS {
                return Err(git2::Error::new(
                    ErrorCode::Auth,
                    git2::ErrorClass::Callback,
                    "credentials refused",
                ));
            }
            credential(&auth, user_from_url, allowed)
        });
        if let Auth::SshKey { known_hosts, .. } = &self.auth {
            let known_hosts = known_hosts.clone();
            callbacks.certificate_check(move |cert, host| {
                let key = cert.as_hostkey().and_then(|k| k.hostkey());
                match key {
                    Some(key) if known_host(&known_hosts, host, key) => {
                        Ok(CertificateCheckStatus::CertificateOk)
                    }
                    _ => Err(git2::Error::new(
                        ErrorCode::Certificate,
                        git2::ErrorClass::Ssh,
                        format!("host key of {host} is not in {}", known_hosts.display()),
                    )),
                }
            });
        }
        callbacks
    }
}

/// The commit the remote advertises for `name`; for an annotated tag, the commit it points at
/// (advertised as `name^{}`).
fn advertised(heads: &[git2::RemoteHead<'_>], name: &str) -> Result<Oid, GitError> {
    let peeled = format!("{name}^{{}}");
    let mut found = None;
    for head in heads {
        if head.name() == peeled {
            return Ok(head.oid());
        }
        if head.name() == name {
            found = Some(head.oid());
        }
    }
    found.ok_or(GitError::RefNotFound {
        name: name.to_owned(),
    })
}

fn fetch_error(source: git2::Error, what: &str) -> GitError {
    match source.code() {
        ErrorCode::Auth => GitError::Auth { source },
        ErrorCode::Certificate => GitError::HostKey { source },
        _ => GitError::Fetch {
            what: what.to_owned(),
            source,
        },
    }
}

/// The credential libgit2 asked for, from the configured [`Auth`].
fn credential(
    auth: &Auth,
    user_from_url: Option<&str>,
    allowed: CredentialType,
) -> Result<Cred, git2::Error> {
    let refused = |why: &str| git2::Error::new(ErrorCode::Auth, git2::ErrorClass::Callback, why);
    match auth {
        Auth::None => Err(refused(
            "the remote asks for credentials; none are configured",
        )),
        Auth::Basic { username, password } => Cred::userpass_plaintext(username, password.expose()),
        Auth::Token { username, token } => Cred::userpass_plaintext(username, token.expose()),
        Auth::SshKey {
            username,
            private_key,
            passphrase,
            ..
        } => {
            let user = user_from_url.unwrap_or(username);
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user);
            }
            Cred::ssh_key(
                user,
                None,
                private_key,
                passphrase.as_ref().map(|p| p.expose()),
            )
        }
    }
}

/// True when `known_hosts` lists `key` for `host` (plain `host` or `[host]:port` patterns;
/// hashed entries are not supported).
fn known_host(known_hosts: &Path, host: &str, key: &[u8]) -> bool {
    let Ok(text) = std::fs::read_to_string(known_hosts) else {
        return false;
    };
    let bracketed = format!("[{host}]:");
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .filter(|(hosts, _, _)| {
            hosts
                .split(',')
                .any(|pattern| pattern == host || pattern.starts_with(&bracketed))
        })
        .filter_map(|(_, _, encoded)| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .any(|listed| listed == key)
}

fn tip_commit(repo: &Repository) -> Option<Oid> {
    repo.find_reference(TIP_REF)
        .and_then(|r| r.peel_to_commit())
        .map(|c| c.id())
        .ok()
}

/// The text of blob `id` when it is UTF-8 and at most `max` bytes; its size is read from the
/// object's header first.
fn small_blob(repo: &Repository, id: Oid, max: usize) -> Option<String> {
    let (size, kind) = repo.odb().ok()?.read_header(id).ok()?;
    if kind != git2::ObjectType::Blob || size > max {
        return None;
    }
    let blob = repo.find_blob(id).ok()?;
    String::from_utf8(blob.content().to_vec()).ok()
}
