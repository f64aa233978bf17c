//! Crash-safe state on disk: the daemon's state directory (what cannot be re-derived: CAs,
//! credentials, hashed join tokens, restore requests done, applied generations) and the files
//! the agent writes. A write goes to a temporary file in the same directory, is synced, given its
//! mode and renamed over the target, and the directory is synced: after a crash a reader sees
//! the old content or the new, never a mix.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Temporary files carry this suffix; one left by a crash is ignored and later replaced.
const TMP_SUFFIX: &str = ".drover-tmp";
/// Largest state document read.
pub const MAX_STATE_BYTES: u64 = 16 * 1024 * 1024;

/// Writes `content` to `target` atomically with permission bits `mode`.
pub fn write_atomically(target: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("a file path has a parent"))?;
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TMP_SUFFIX}"));
    let mut f = std::fs::File::create(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(content)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, target)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Why a state document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, over the {limit}-byte limit for a state document")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{path} is not a valid state document; move it aside to start afresh")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A directory of JSON state documents, each readable by its owner only.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates the directory, owner-only, if it does not exist.
    fn ensure_root(&self) -> Result<(), StateError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|source| StateError::Write {
                path: self.root.clone(),
                source,
            })
    }

    /// Saves `value` as document `name`, atomically, mode 0600.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        self.ensure_root()?;
        let path = self.path(name);
        let json = serde_json::to_vec_pretty(value).expect("state documents are JSON");
        write_atomically(&path, &json, 0o600).map_err(|source| StateError::Write { path, source })
    }

    /// Loads document `name`; `None` when it was never saved.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.path(name);
        let read = |source| StateError::Read {
            path: path.clone(),
            source,
        };
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read(e)),
        };
        if size > MAX_STATE_BYTES {
            return Err(StateError::TooLarge {
                path,
                size,
                limit: MAX_STATE_BYTES,
            });
        }
        let bytes = std::fs::read(&path).map_err(read)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt { path, source })
    }

    /// Reads document `name` (its default when never saved), lets `change` edit it, and saves
    /// it, all under an exclusive lock on `<name>.lock`: the daemon and a command such as
    /// `drover token create` may change the same document, and neither loses the other's edit.
    /// Nothing is saved when `change` fails.
    pub fn update<T, R, E>(
        &self,
        name: &str,
        change: impl FnOnce(&mut T) -> Result<R, E>,
    ) -> Result<Result<R, E>, StateError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let lock_path = self.path(&format!("{name}.lock"));
        let lock_error = |source| StateError::Write {
            path: lock_path.clone(),
            source,
        };
        self.ensure_root()?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(lock_error)?;
        let mut lock = fd_lock::RwLock::new(file);
        let _held = lock.write().map_err(lock_error)?;
        let mut value: T = self.load(name)?.unwrap_or_default();
        match change(&mut value) {
            Ok(r) => {
                self.save(name, &value)?;
                Ok(Ok(r))
            }
            Err(e) => Ok(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Doc {
        generation: u64,
        done: Vec<String>,
    }

    #[test]
    fn documents_round_trip_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert_eq!(state.load::<Doc>("applied.json").unwrap(), None);
        let doc = Doc {
            generation: 7,
            done: vec!["incident-1".into()],
        };
        state.save("applied.json", &doc).unwrap();
        assert_eq!(state.load::<Doc>("applied.json").unwrap(), Some(doc));
        let mode = std::fs::metadata(state.path("applied.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_crash_mid_write_leaves_the_old_document() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let old = Doc {
            generation: 1,
            done: vec![],
        };
        state.save("applied.json", &old).unwrap();
        // What a crash before the rename leaves behind: a partial temporary file.
        std::fs::write(dir.path().join(".applied.json.drover-tmp"), b"{\"generat").unwrap();
        assert_eq!(state.load::<Doc>("applied.json").unwrap(), Some(old));
        let new = Doc {
            generation: 2,
            done: vec![],
        };
        state.save("applied.json", &new).unwrap();
        assert_eq!(state.load::<Doc>("applied.json").unwrap(), Some(new));
    }

    #[test]
    fn a_corrupt_document_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::write(dir.path().join("applied.json"), b"{not json").unwrap();
        let err = state.load::<Doc>("applied.json").unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("move it aside"), "{err}");
    }
}
