//! The daemon's durable state behind one small interface: documents by name (CAs, node
//! bindings, join tokens, the operator token's hash, generations, rollout records), each read,
//! written, listed by prefix, stamped, changed atomically and removed. The state directory and
//! etcd (shared by several daemons) implement the same operations:
//!
//! | operation  | state directory                         | etcd                                  |
//! |------------|-----------------------------------------|---------------------------------------|
//! | `read`     | read the file                           | get the key                           |
//! | `stamp`    | the file's inode, mtime and size        | the key's mod revision                |
//! | `write`    | atomic replace                          | put                                   |
//! | `names`    | list the directory                      | get by prefix, keys only              |
//! | `stamps`   | list the directory, stat each           | get by prefix, keys only              |
//! | `remove`   | unlink                                  | delete the key                        |
//! | `modify`   | read, change, write under a file lock   | read, change, transaction comparing the mod revision; retried on conflict |
//!
//! So `modify`'s change may run more than once and must do nothing but compute the new
//! document; a side effect that must happen once (issuing a credential) happens after the
//! document recorded it (see `join::redeem`). Making a CA is `create`: create-if-absent, so two
//! writers racing on empty state keep one CA. Every call blocks: async callers run it on
//! `spawn_blocking` (a backend with an async client blocks on it from there).

pub mod etcd;
pub mod lease;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::state::Stamp;
use crate::state::{StateDir, StateError};

/// What a change of a document decided.
#[derive(Debug)]
pub enum Change {
    /// Replace the document with these bytes.
    Write(Vec<u8>),
    /// Leave it as it is.
    Keep,
}

/// How `Store::modify` decides on a document's current bytes (`None`: absent).
pub type Decide<'a> = dyn FnMut(Option<&[u8]>) -> Result<Change, StateError> + 'a;

/// A cluster's fencing token: the creation revision of its owner key (see `lease`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Fence(pub i64);

/// What a guarded write holds on to: `cluster` still owned under `fence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub cluster: String,
    pub fence: Fence,
}

/// A backend for the daemon's documents. Every method blocks.
pub trait Store: Send + Sync + fmt::Debug {
    /// The document's bytes; `None` when it was never written.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// The document's stamp, without its bytes; `None` when it was never written.
    fn stamp(&self, name: &str) -> Result<Option<Stamp>, StateError>;
    /// Replaces the document, whatever it holds.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StateError>;
    /// The names of the documents that start with `prefix`, sorted.
    fn names(&self, prefix: &str) -> Result<Vec<String>, StateError>;
    /// The stamps of the documents that start with `prefix`, sorted by name: one request
    /// where the backend can ask for all at once.
    fn stamps(&self, prefix: &str) -> Result<Vec<(String, Stamp)>, StateError> {
        let mut stamps = Vec::new();
        for name in self.names(prefix)? {
            // A document removed between the listing and its stamp is not listed.
            if let Some(stamp) = self.stamp(&name)? {
                stamps.push((name, stamp));
            }
        }
        Ok(stamps)
    }
    /// Removes the document; nothing to do when it is absent.
    fn remove(&self, name: &str) -> Result<(), StateError>;
    /// Reads the document, lets `change` decide, and writes what it decided, atomically: no
    /// other write of the document falls in between. `change` may run more than once. Returns
    /// the stamp of what the document holds afterwards.
    fn modify(&self, name: &str, change: &mut Decide<'_>) -> Result<Option<Stamp>, StateError>;
    /// Where the document is, for messages (a path, a key).
    fn locate(&self, name: &str) -> String;
    /// Whether several daemons may share this store, so that a cluster's documents are written
    /// only under its owner's fence (`write_guarded`, `modify_guarded`).
    fn shared(&self) -> bool {
        false
    }
    /// `write`, only while `guard` holds (`StateError::Fenced` otherwise). A store only one
    /// daemon uses has nothing to guard against.
    fn write_guarded(&self, name: &str, bytes: &[u8], guard: &Guard) -> Result<(), StateError> {
        let _ = guard;
        self.write(name, bytes)
    }
    /// `modify`, only while `guard` holds.
    fn modify_guarded(
        &self,
        name: &str,
        change: &mut Decide<'_>,
        guard: &Guard,
    ) -> Result<Option<Stamp>, StateError> {
        let _ = guard;
        self.modify(name, change)
    }
}

impl Store for StateDir {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.read_bytes(name)
    }

    fn stamp(&self, name: &str) -> Result<Option<Stamp>, StateError> {
        self.file_stamp(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        self.write_bytes(name, bytes)
    }

    fn names(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        StateDir::names(self, prefix)
    }

    fn remove(&self, name: &str) -> Result<(), StateError> {
        self.remove_file(name)
    }

    fn modify(&self, name: &str, change: &mut Decide<'_>) -> Result<Option<Stamp>, StateError> {
        // Under the document's lock the read and the write are one step; `change` runs once.
        self.with_lock(name, || {
            let current = self.read_bytes(name)?;
            if let Change::Write(bytes) = change(current.as_deref())? {
                self.write_bytes(name, &bytes)?;
            }
            self.file_stamp(name)
        })
    }

    fn locate(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// The daemon's state: typed JSON documents on a `Store`. Cheap to clone; clones share the
/// fences this daemon holds.
#[derive(Debug, Clone)]
pub struct DurableState {
    store: Arc<dyn Store>,
    fences: Arc<RwLock<HashMap<String, Fence>>>,
}

/// What `DurableState::update` did: the document as saved, the change's result, and the stamp.
#[derive(Debug)]
pub struct Updated<T, R> {
    pub value: T,
    pub result: R,
    pub stamp: Option<Stamp>,
}

impl From<StateDir> for DurableState {
    fn from(dir: StateDir) -> DurableState {
        DurableState::new(Arc::new(dir))
    }
}

impl DurableState {
    pub fn new(store: Arc<dyn Store>) -> DurableState {
        DurableState {
            store,
            fences: Arc::default(),
        }
    }

    /// Whether several daemons may share this state (and a cluster's writes need its fence).
    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// The fence this daemon holds `cluster` under (`None`: it does not own it), for the
    /// cluster's writes (`save_for`, `update_for`).
    pub fn set_fence(&self, cluster: &str, fence: Option<Fence>) {
        let mut fences = self.fences.write().unwrap_or_else(|e| e.into_inner());
        match fence {
            Some(f) => fences.insert(cluster.to_string(), f),
            None => fences.remove(cluster),
        };
    }

    /// Whether this daemon acts for `cluster`: always on a store one daemon uses, else while
    /// it holds the cluster's fence.
    pub fn serves(&self, cluster: &str) -> bool {
        !self.store.shared() || self.fence(cluster).is_some()
    }

    pub fn fence(&self, cluster: &str) -> Option<Fence> {
        let fences = self.fences.read().unwrap_or_else(|e| e.into_inner());
        fences.get(cluster).copied()
    }

    /// The guard of `cluster`'s writes: `None` on a store one daemon uses; refused when this
    /// daemon holds no fence for it.
    fn guard(&self, cluster: &str, name: &str) -> Result<Option<Guard>, StateError> {
        if !self.store.shared() {
            return Ok(None);
        }
        match self.fence(cluster) {
            Some(fence) => Ok(Some(Guard {
                cluster: cluster.to_string(),
                fence,
            })),
            None => Err(StateError::Fenced {
                document: self.store.locate(name),
                cluster: cluster.to_string(),
            }),
        }
    }

    /// `save` of a document of `cluster`: on a shared store, only while this daemon owns the
    /// cluster under the fence it holds (`StateError::Fenced` otherwise; nothing written).
    pub fn save_for<T: Serialize>(
        &self,
        cluster: &str,
        name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.save_encoded_for(cluster, name, &encode(value))
    }

    /// `update` of a document of `cluster`, guarded like `save_for`.
    pub fn update_for<T, R, E>(
        &self,
        cluster: &str,
        name: &str,
        change: impl FnMut(&mut T) -> Result<R, E>,
    ) -> Result<Result<Updated<T, R>, E>, StateError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let guard = self.guard(cluster, name)?;
        self.update_with(name, guard.as_ref(), change)
    }

    /// Document `name`; `None` when it was never saved.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        self.store
            .read(name)?
            .map(|bytes| self.decode(name, &bytes))
            .transpose()
    }

    /// Saves `value` as document `name`, whatever the document held.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        self.store.write(name, &encode(value))
    }

    /// `save_for` of `json`, a document encoded as `save` encodes it (pretty JSON): for a
    /// large document whose caller keeps its encoded parts between saves.
    pub fn save_encoded_for(
        &self,
        cluster: &str,
        name: &str,
        json: &[u8],
    ) -> Result<(), StateError> {
        match self.guard(cluster, name)? {
            Some(guard) => self.store.write_guarded(name, json, &guard),
            None => self.store.write(name, json),
        }
    }

    pub fn stamp(&self, name: &str) -> Result<Option<Stamp>, StateError> {
        self.store.stamp(name)
    }

    pub fn names(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        self.store.names(prefix)
    }

    /// The stamps of the documents that start with `prefix`, by name.
    pub fn stamps(&self, prefix: &str) -> Result<Vec<(String, Stamp)>, StateError> {
        self.store.stamps(prefix)
    }

    /// Removes document `name`, if it exists.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        self.store.remove(name)
    }

    /// Reads document `name` (its default when never saved), lets `change` edit it, and saves
    /// it atomically: two writers (the daemon and `drover token create`, or two daemons) never
    /// lose each other's edit. Nothing is saved when `change` fails. `change` may run more than
    /// once, each time on the document as it then is.
    pub fn update<T, R, E>(
        &self,
        name: &str,
        change: impl FnMut(&mut T) -> Result<R, E>,
    ) -> Result<Result<Updated<T, R>, E>, StateError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        self.update_with(name, None, change)
    }

    fn update_with<T, R, E>(
        &self,
        name: &str,
        guard: Option<&Guard>,
        mut change: impl FnMut(&mut T) -> Result<R, E>,
    ) -> Result<Result<Updated<T, R>, E>, StateError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let mut outcome = None;
        let mut decide = |current: Option<&[u8]>| {
            let mut value: T = match current {
                Some(bytes) => self.decode(name, bytes)?,
                None => T::default(),
            };
            let decided = change(&mut value);
            let write = decided.is_ok();
            let bytes = write.then(|| encode(&value));
            outcome = Some(decided.map(|r| (value, r)));
            Ok(bytes.map_or(Change::Keep, Change::Write))
        };
        let stamp = match guard {
            Some(guard) => self.store.modify_guarded(name, &mut decide, guard)?,
            None => self.store.modify(name, &mut decide)?,
        };
        let decided = outcome.expect("modify runs the change at least once");
        Ok(decided.map(|(value, result)| Updated {
            value,
            result,
            stamp,
        }))
    }

    /// Document `name`, made by `make` and saved if it does not exist yet: of two callers
    /// racing on an empty state, both get the one document saved.
    pub fn create<T, E>(&self, name: &str, make: impl Fn() -> Result<T, E>) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StateError>,
    {
        let mut made: Option<Result<T, E>> = None;
        self.store.modify(name, &mut |current| {
            if current.is_some() {
                made = None;
                return Ok(Change::Keep);
            }
            let value = make();
            let change = match &value {
                Ok(v) => Change::Write(encode(v)),
                Err(_) => Change::Keep,
            };
            made = Some(value);
            Ok(change)
        })?;
        match made {
            Some(value) => value,
            None => Ok(self
                .load(name)?
                .expect("a document that existed is never removed")),
        }
    }

    fn decode<T: DeserializeOwned>(&self, name: &str, bytes: &[u8]) -> Result<T, StateError> {
        serde_json::from_slice(bytes).map_err(|source| StateError::Corrupt {
            document: self.store.locate(name),
            source,
        })
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("state documents are JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, DurableState) {
        let dir = crate::state::private_tempdir();
        let state = DurableState::from(StateDir::new(dir.path().join("state")));
        (dir, state)
    }

    #[test]
    fn an_update_that_fails_saves_nothing_and_one_that_succeeds_changes_the_stamp() {
        let (_dir, state) = state();
        let first = state
            .update("doc.json", |v: &mut Vec<u32>| {
                v.push(1);
                Ok::<_, ()>(v.len())
            })
            .unwrap()
            .unwrap();
        assert_eq!((first.value.clone(), first.result), (vec![1], 1));
        assert_eq!(state.stamp("doc.json").unwrap(), first.stamp);
        let refused = state
            .update("doc.json", |v: &mut Vec<u32>| {
                v.push(2);
                Err::<(), _>("no")
            })
            .unwrap();
        assert!(refused.is_err());
        assert_eq!(state.load::<Vec<u32>>("doc.json").unwrap(), Some(vec![1]));
        assert_eq!(state.stamp("doc.json").unwrap(), first.stamp);
        let second = state
            .update("doc.json", |v: &mut Vec<u32>| {
                v.push(2);
                Ok::<_, ()>(())
            })
            .unwrap()
            .unwrap();
        assert_ne!(second.stamp, first.stamp);
    }

    #[test]
    fn concurrent_updates_from_separate_handles_lose_nothing() {
        let dir = crate::state::private_tempdir();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    // Each its own handle, as separate processes would have.
                    let state = DurableState::from(StateDir::new(dir.path()));
                    for _ in 0..10 {
                        state
                            .update("count.json", |n: &mut u64| {
                                *n += 1;
                                Ok::<_, ()>(())
                            })
                            .unwrap()
                            .unwrap();
                    }
                });
            }
        });
        let state = DurableState::from(StateDir::new(dir.path()));
        assert_eq!(state.load::<u64>("count.json").unwrap(), Some(80));
    }

    #[test]
    fn create_makes_one_document_whoever_races() {
        let dir = crate::state::private_tempdir();
        let made: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8u64)
                .map(|i| {
                    let dir = dir.path().to_path_buf();
                    scope.spawn(move || {
                        DurableState::from(StateDir::new(dir))
                            .create("ca.json", || Ok::<_, StateError>(i))
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(made.windows(2).all(|w| w[0] == w[1]), "{made:?}");
    }

    #[test]
    fn a_corrupt_document_names_where_it_is() {
        let (dir, state) = state();
        state.save("doc.json", &1u32).unwrap();
        std::fs::write(dir.path().join("state/doc.json"), b"{").unwrap();
        let error = state.load::<u32>("doc.json").unwrap_err();
        assert!(error.to_string().contains("state/doc.json"), "{error}");
    }
}
