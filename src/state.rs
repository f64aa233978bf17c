//! Crash-safe state on disk: the daemon's state directory (what cannot be re-derived: CAs,
//! credentials, hashed join tokens, restore requests done, applied generations) and the files
//! the agent writes. A write goes to a new temporary file in the same directory, created with
//! its final mode under a random name (never through a file or symlink already there), is
//! synced and renamed over the target, and the directory is synced: after a crash a reader
//! sees the old content or the new, never a mix. A failed write removes its temporary file.
//!
//! A state directory holds keys, so it must be its owner's alone: one that grants anything to
//! group or others, or that another user owns, is refused rather than used.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Temporary files end with a random part and this suffix; one left by a crash is ignored.
const TMP_SUFFIX: &str = ".drover-tmp";
/// How many random temporary names are tried before giving up.
const TMP_ATTEMPTS: usize = 8;
/// Largest state document read.
pub const MAX_STATE_BYTES: u64 = 16 * 1024 * 1024;

/// Writes `content` to `target` atomically with permission bits `mode`. The temporary file
/// never has bits that `mode` lacks, and is removed when the write fails.
pub fn write_atomically(target: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("a file path has a parent"))?;
    std::fs::create_dir_all(dir)?;
    let (tmp, file) = create_temp(target, mode)?;
    let placed = fill_and_rename(file, content, mode, &tmp, target);
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed?;
    File::open(dir)?.sync_all()
}

/// Creates a new temporary file beside `target` with permission bits `mode` from the start
/// (the umask may take some away; none is ever added later). `create_new` is `O_EXCL`: a
/// file or a symlink already at the name is an error, never opened or followed.
fn create_temp(target: &Path, mode: u32) -> std::io::Result<(PathBuf, File)> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut taken = None;
    for _ in 0..TMP_ATTEMPTS {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".{name}.{}{TMP_SUFFIX}", hex::encode(random)));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp);
        match opened {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => taken = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(taken.unwrap_or_else(|| std::io::Error::other("no temporary file name was free")))
}

/// Gives the temporary file exactly `mode` (bits the umask removed), writes and syncs it, and
/// renames it over `target`.
fn fill_and_rename(
    mut file: File,
    content: &[u8],
    mode: u32,
    tmp: &Path,
    target: &Path,
) -> std::io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, target)
}

/// Tells writes of one document apart: it changes with every write. Compared for equality only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp([u64; 3]);

impl Stamp {
    pub fn new(parts: [u64; 3]) -> Stamp {
        Stamp(parts)
    }
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
    #[error("{path} has mode {mode:03o}, which lets other users read or change the keys kept there; run `chmod 700 {path}`")]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("{path} is owned by uid {owner}, not by uid {uid} that runs drover; run drover as its owner, or `chown -R {uid} {path}`")]
    OtherOwner { path: PathBuf, owner: u32, uid: u32 },
    #[error("{document}: {why}")]
    Backend { document: String, why: String },
    /// A write for `cluster` guarded by a fencing token that no longer owns the cluster (or by
    /// none): another daemon took it, or this one gave it up. Nothing was written.
    #[error("{document}: not written, this daemon no longer owns cluster {cluster}")]
    Fenced { document: String, cluster: String },
    #[error("{document} is not a valid state document; move it aside to start afresh")]
    Corrupt {
        document: String,
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

    /// Creates the directory, owner-only, if it does not exist; refuses one that is not the
    /// owner's alone. Blocking.
    pub fn ensure(&self) -> Result<(), StateError> {
        self.ensure_root()
    }

    /// Creates the directory, owner-only, if it does not exist; refuses one that is not the
    /// owner's alone.
    fn ensure_root(&self) -> Result<(), StateError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let write = |source| StateError::Write {
            path: self.root.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(write)?;
        let meta = std::fs::metadata(&self.root).map_err(write)?;
        self.check_root(&meta)
    }

    /// Refuses an existing directory that is not the owner's alone; a missing one is fine (a
    /// load finds nothing in it, a save creates it).
    fn check_existing_root(&self) -> Result<(), StateError> {
        match std::fs::metadata(&self.root) {
            Ok(meta) => self.check_root(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Read {
                path: self.root.clone(),
                source,
            }),
        }
    }

    fn check_root(&self, meta: &Metadata) -> Result<(), StateError> {
        let uid = rustix::process::geteuid().as_raw();
        root_problem(&self.root, meta.mode(), meta.uid(), uid).map_or(Ok(()), Err)
    }

    /// Saves `value` as document `name`, atomically, mode 0600.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(value).expect("state documents are JSON");
        self.write_bytes(name, &json)
    }

    /// Writes document `name`, atomically, mode 0600.
    pub(crate) fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        self.ensure_root()?;
        let path = self.path(name);
        write_atomically(&path, bytes, 0o600).map_err(|source| StateError::Write { path, source })
    }

    /// Removes document `name` (nothing when absent), durably: the directory is synced.
    pub(crate) fn remove_file(&self, name: &str) -> Result<(), StateError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StateError::Write { path, source }),
        }
        File::open(&self.root)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StateError::Write {
                path: self.root.clone(),
                source,
            })
    }

    /// The names of the documents whose name starts with `prefix`, sorted; none when the
    /// directory does not exist yet.
    pub fn names(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        self.check_existing_root()?;
        let read = |source| StateError::Read {
            path: self.root.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let name = entry.map_err(read)?.file_name();
            match name.to_str() {
                Some(n) if n.starts_with(prefix) && n.ends_with(".json") => {
                    names.push(n.to_string())
                }
                _ => {}
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads document `name`; `None` when it was never saved.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let Some(bytes) = self.read_bytes(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt {
                document: self.path(name).display().to_string(),
                source,
            })
    }

    /// The bytes of document `name`, at most `MAX_STATE_BYTES`; `None` when it was never saved.
    pub(crate) fn read_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.check_existing_root()?;
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
        std::fs::read(&path).map(Some).map_err(read)
    }

    /// How document `name`'s file looks: every atomic write makes a new inode, so the inode
    /// tells writes apart even within one tick of the modification time. `None` when absent.
    pub(crate) fn file_stamp(&self, name: &str) -> Result<Option<Stamp>, StateError> {
        let path = self.path(name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let modified = (meta.mtime() as u64) << 30 | meta.mtime_nsec() as u64;
        Ok(Some(Stamp::new([meta.ino(), modified, meta.len()])))
    }

    /// Runs `locked` holding an exclusive lock on `<name>.lock`, which every process and
    /// thread using document `name` takes (each `StateDir` value opens the file anew, so the
    /// lock holds between threads too). For a read-then-write that must not interleave.
    pub fn with_lock<R, E: From<StateError>>(
        &self,
        name: &str,
        locked: impl FnOnce() -> Result<R, E>,
    ) -> Result<R, E> {
        let lock_path = self.path(&format!("{name}.lock"));
        let lock_error = |source| StateError::Write {
            path: lock_path.clone(),
            source,
        };
        self.ensure_root()?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(lock_error)?;
        let mut lock = fd_lock::RwLock::new(file);
        let _held = lock.write().map_err(lock_error)?;
        locked()
    }
}

/// A temporary directory that only its owner may use, as a state directory must be
/// (`tempfile::tempdir` follows the umask, which usually lets others read).
#[cfg(test)]
pub(crate) fn private_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("a temporary directory")
}

/// What is wrong with a state directory at `path` with `mode`, owned by `owner`, for a process
/// running as `uid`: another owner, or any permission for group or others.
fn root_problem(path: &Path, mode: u32, owner: u32, uid: u32) -> Option<StateError> {
    if owner != uid {
        return Some(StateError::OtherOwner {
            path: path.to_path_buf(),
            owner,
            uid,
        });
    }
    (mode & 0o077 != 0).then(|| StateError::LoosePermissions {
        path: path.to_path_buf(),
        mode: mode & 0o7777,
    })
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
        let dir = private_tempdir();
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
        let dir = private_tempdir();
        let state = StateDir::new(dir.path());
        let old = Doc {
            generation: 1,
            done: vec![],
        };
        state.save("applied.json", &old).unwrap();
        // What a crash before the rename leaves behind: a partial temporary file (with the
        // fixed name older versions used, and with a random one).
        for leftover in [
            ".applied.json.drover-tmp",
            ".applied.json.0123456789abcdef.drover-tmp",
        ] {
            std::fs::write(dir.path().join(leftover), b"{\"generat").unwrap();
        }
        assert_eq!(state.load::<Doc>("applied.json").unwrap(), Some(old));
        let new = Doc {
            generation: 2,
            done: vec![],
        };
        state.save("applied.json", &new).unwrap();
        assert_eq!(state.load::<Doc>("applied.json").unwrap(), Some(new));
    }

    /// The temporary files in `dir`.
    fn temporaries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(TMP_SUFFIX))
            .collect()
    }

    #[test]
    fn a_symlink_planted_at_a_temporary_name_is_never_written_through() {
        let dir = private_tempdir();
        let elsewhere = private_tempdir();
        let victim = elsewhere.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // The name a temporary file of applied.json used to have, always.
        std::os::unix::fs::symlink(&victim, dir.path().join(".applied.json.drover-tmp")).unwrap();
        let state = StateDir::new(dir.path());
        let doc = Doc {
            generation: 3,
            done: vec![],
        };
        state.save("applied.json", &doc).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "the symlink's target was chmodded");
        assert_eq!(state.load::<Doc>("applied.json").unwrap(), Some(doc));
        assert!(std::fs::symlink_metadata(state.path("applied.json"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn a_file_has_its_mode_from_creation_and_exactly_in_the_end() {
        let dir = private_tempdir();
        for mode in [0o600, 0o640, 0o604, 0o644, 0o666, 0o755] {
            let target = dir.path().join(format!("f{mode:o}"));
            // No window: the temporary file is created with no bit `mode` lacks.
            let (tmp, file) = create_temp(&target, mode).unwrap();
            let at_open = file.metadata().unwrap().permissions().mode() & 0o7777;
            assert_eq!(at_open & !mode, 0, "{mode:o}: created {at_open:o}");
            drop(file);
            std::fs::remove_file(tmp).unwrap();
            // And the umask does not change the final mode.
            write_atomically(&target, b"x", mode).unwrap();
            let got = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
            assert_eq!(got, mode, "{mode:o}");
        }
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = private_tempdir();
        // A rename over a non-empty directory fails after the temporary file was written.
        let target = dir.path().join("occupied");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), b"").unwrap();
        assert!(write_atomically(&target, b"content", 0o600).is_err());
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_state_directory_others_may_use_is_refused_until_chmod_700() {
        let dir = private_tempdir();
        let root = dir.path().join("state");
        let state = StateDir::new(&root);
        let doc = Doc {
            generation: 1,
            done: vec![],
        };
        state.save("applied.json", &doc).unwrap();
        let chmod =
            |mode| std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
        for mode in [0o755, 0o750, 0o705, 0o770, 0o707, 0o711, 0o1777] {
            chmod(mode);
            let loaded = state.load::<Doc>("applied.json").unwrap_err();
            let saved = state.save("applied.json", &doc).unwrap_err();
            for err in [loaded, saved] {
                match &err {
                    StateError::LoosePermissions { path, mode: got } => {
                        assert_eq!((path, *got), (&root, mode));
                    }
                    other => panic!("{mode:o}: {other:?}"),
                }
                let hint = format!("run `chmod 700 {}`", root.display());
                assert!(err.to_string().contains(&hint), "{err}");
            }
        }
        chmod(0o700);
        assert_eq!(state.load::<Doc>("applied.json").unwrap(), Some(doc));
    }

    #[test]
    fn a_state_directory_must_be_its_owners_alone() {
        let path = Path::new("/var/lib/drover");
        let cases = [
            (0o40700, 1000, 1000, None),
            (0o40500, 1000, 1000, None),
            (0o40750, 1000, 1000, Some("mode 750")),
            (0o40701, 1000, 1000, Some("mode 701")),
            (0o40700, 0, 1000, Some("owned by uid 0, not by uid 1000")),
            (0o40755, 1000, 0, Some("owned by uid 1000, not by uid 0")),
        ];
        for (mode, owner, uid, want) in cases {
            let got = root_problem(path, mode, owner, uid).map(|e| e.to_string());
            match (want, got) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.contains(want), "{got}"),
                (want, got) => panic!("{mode:o} {owner} {uid}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_corrupt_document_is_a_clear_error() {
        let dir = private_tempdir();
        let state = StateDir::new(dir.path());
        std::fs::write(dir.path().join("applied.json"), b"{not json").unwrap();
        let err = state.load::<Doc>("applied.json").unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("move it aside"), "{err}");
    }
}
