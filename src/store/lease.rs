//! Daemons sharing the state in etcd: each holds a lease it keeps alive and a member key under
//! it; a cluster's owner key is bound to its owner's lease and claimed only when absent. The
//! owner key's create revision is the cluster's **fence**: every write for the cluster is a
//! transaction that holds only while the owner key still has that create revision, so a
//! daemon that lost the cluster (its lease expired, another claimed it) can write nothing.
//!
//! A daemon must stop acting before its lease can have expired. etcd restarts a lease's TTL
//! when it handles a keep-alive, which is after the daemon sent it: so a keep-alive answered
//! keeps the lease until at least the sending instant plus the TTL, on the daemon's monotonic
//! clock, and `acting_until` is that instant minus a margin.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::etcd::EtcdStore;
pub use super::Fence;
use super::Store as _;
use crate::state::StateError;

/// Where daemons register, under the store's prefix.
const MEMBERS: &str = "members/";
/// Where clusters' owner keys live, under the store's prefix.
pub(super) const OWNERS: &str = "owners/";

/// Where a webhook that reached one daemon is announced to the others.
const SOURCE_POKE: &str = "hooks/source";

/// Announces that the source changed (a webhook reached this daemon): every daemon sharing the
/// state checks its source on seeing it (`source_pokes`). Blocks.
pub fn poke_source(store: &EtcdStore, by: &str) -> Result<(), StateError> {
    store.put_raw(SOURCE_POKE, &store.key(SOURCE_POKE), by.as_bytes(), None)
}

/// The revision of the last announcement (`poke_source`); 0 when none was made. Blocks.
pub fn source_pokes(store: &EtcdStore) -> Result<i64, StateError> {
    let options = GetOptions::new().with_keys_only();
    let answer = store.get_raw(SOURCE_POKE, &store.key(SOURCE_POKE), Some(options))?;
    Ok(answer.kvs().first().map_or(0, |kv| kv.mod_revision()))
}

/// What a daemon registers under its lease: its id and the URL its agents reach it at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub id: String,
    pub agents_url: String,
}

/// This daemon's registration: its lease and member key.
#[derive(Debug)]
pub struct Membership {
    store: Arc<EtcdStore>,
    id: String,
    lease: i64,
    ttl: Duration,
    margin: Duration,
    /// When the last answered keep-alive (or the grant) was sent.
    renewed_from: Mutex<Instant>,
}

impl Membership {
    /// Grants a lease of `ttl` and registers `id` under it. `margin` is how long before the
    /// lease could expire the daemon stops acting. Blocks.
    pub fn join(
        store: Arc<EtcdStore>,
        id: &str,
        ttl: Duration,
        margin: Duration,
    ) -> Result<Membership, StateError> {
        let info = MemberInfo {
            id: id.to_string(),
            agents_url: String::new(),
        };
        Membership::register(store, &info, ttl, margin)
    }

    /// `join`, registering `info`.
    pub fn register(
        store: Arc<EtcdStore>,
        info: &MemberInfo,
        ttl: Duration,
        margin: Duration,
    ) -> Result<Membership, StateError> {
        let id = info.id.as_str();
        let sent = Instant::now();
        let seconds = ttl.as_secs().max(1) as i64;
        let granted = store.call(
            id,
            |mut c| async move { c.lease_grant(seconds, None).await },
        )?;
        let membership = Membership {
            store,
            id: id.to_string(),
            lease: granted.id(),
            ttl,
            margin,
            renewed_from: Mutex::new(sent),
        };
        let key = membership.store.key(&format!("{MEMBERS}{id}"));
        let options = PutOptions::new().with_lease(membership.lease);
        let value = serde_json::to_vec(info).expect("a member is JSON");
        membership.store.put_raw(id, &key, &value, Some(options))?;
        Ok(membership)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Keeps the lease alive once. On success, the daemon may act until `acting_until`.
    pub fn renew(&self) -> Result<(), StateError> {
        let sent = Instant::now();
        let lease = self.lease;
        let answer = self.store.call(&self.id, |mut c| async move {
            let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            answers.message().await
        })?;
        match answer {
            Some(a) if a.ttl() > 0 => {
                *self.renewed_from.lock().unwrap_or_else(|e| e.into_inner()) = sent;
                Ok(())
            }
            _ => Err(StateError::Backend {
                document: self.store.locate(&format!("{MEMBERS}{}", self.id)),
                why: "the lease has expired".into(),
            }),
        }
    }

    /// The instant after which this daemon must not act: the lease may have expired by then.
    pub fn acting_until(&self) -> Instant {
        let from = *self.renewed_from.lock().unwrap_or_else(|e| e.into_inner());
        from + self.ttl.saturating_sub(self.margin)
    }

    /// The live daemons' ids, sorted.
    pub fn members(&self) -> Result<Vec<String>, StateError> {
        Ok(self.member_infos()?.into_iter().map(|m| m.id).collect())
    }

    /// The live daemons, by id.
    pub fn member_infos(&self) -> Result<Vec<MemberInfo>, StateError> {
        let options = GetOptions::new().with_prefix();
        let prefix = self.store.key(MEMBERS);
        let answer = self.store.get_raw(MEMBERS, &prefix, Some(options))?;
        let mut members: Vec<MemberInfo> = answer
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    /// The other daemons that have not renewed their lease for about `quiet` or longer: most
    /// likely gone, though their keys stay until the lease runs out. etcd counts a lease's time
    /// left in whole seconds.
    pub fn silent(&self, quiet: Duration) -> Result<BTreeSet<String>, StateError> {
        let options = GetOptions::new().with_prefix();
        let prefix = self.store.key(MEMBERS);
        let answer = self.store.get_raw(MEMBERS, &prefix, Some(options))?;
        let mut silent = BTreeSet::new();
        for kv in answer.kvs() {
            let Ok(member) = serde_json::from_slice::<MemberInfo>(kv.value()) else {
                continue;
            };
            if member.id == self.id {
                continue;
            }
            let lease = kv.lease();
            let left = self.store.call(&member.id, |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })?;
            // -1 once expired: silent too, until its key goes.
            if left.ttl() < left.granted_ttl() - quiet.as_secs() as i64 {
                silent.insert(member.id);
            }
        }
        Ok(silent)
    }

    /// Every owned cluster's owner: its daemon id, and whether that is this daemon under its
    /// current lease (a restarted daemon's old lease may still hold keys with its id).
    pub fn owners(&self) -> Result<BTreeMap<String, (String, bool)>, StateError> {
        let options = GetOptions::new().with_prefix();
        let prefix = self.store.key(OWNERS);
        let answer = self.store.get_raw(OWNERS, &prefix, Some(options))?;
        Ok(answer
            .kvs()
            .iter()
            .filter_map(|kv| {
                let cluster = kv.key_str().ok()?.strip_prefix(&prefix)?.to_string();
                let owner = kv.value_str().ok()?.to_string();
                let ours = kv.lease() == self.lease && owner == self.id;
                Some((cluster, (owner, ours)))
            })
            .collect())
    }

    /// This daemon's lease and its time to live.
    pub fn lease(&self) -> (i64, Duration) {
        (self.lease, self.ttl)
    }

    /// Claims `cluster` when nobody owns it (or this daemon already does): its fence, or
    /// `None` when another daemon owns it.
    pub fn claim(&self, cluster: &str) -> Result<Option<Fence>, StateError> {
        let key = self.store.owner_key(cluster);
        let absent = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
        let options = PutOptions::new().with_lease(self.lease);
        let txn = Txn::new()
            .when([absent])
            .and_then([TxnOp::put(
                key.clone(),
                self.id.as_bytes().to_vec(),
                Some(options),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = self.store.txn_raw(cluster, &txn)?;
        if answer.succeeded() {
            let revision = answer.header().map_or(0, |h| h.revision());
            return Ok(Some(Fence(revision)));
        }
        let owner = answer.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                (
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.lease() == self.lease,
                )
            }),
            _ => None,
        });
        Ok(match owner {
            Some((id, revision, ours)) if ours && id == self.id.as_bytes() => Some(Fence(revision)),
            _ => None,
        })
    }

    /// Gives `cluster` up, if this fence still owns it.
    pub fn release(&self, cluster: &str, fence: Fence) -> Result<(), StateError> {
        let key = self.store.owner_key(cluster);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                fence.0,
            )])
            .and_then([TxnOp::delete(key, None)]);
        self.store.txn_raw(cluster, &txn)?;
        Ok(())
    }

    /// Leaves at once: the lease is revoked, and every owner key under it goes with it.
    pub fn leave(self) -> Result<(), StateError> {
        let lease = self.lease;
        self.store
            .call(&self.id, |mut c| async move { c.lease_revoke(lease).await })?;
        Ok(())
    }
}
