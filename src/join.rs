//! Joining a node: short-lived join tokens and node credential bindings, both kept in the
//! daemon's state directory and changed under a lock (the daemon and `drover token create` or
//! `drover node reset` may change them at the same time).
//!
//! A token is stored only as a hash, expires, names its cluster (and, if made so, the one node
//! it may join), and is single-use unless made reusable. Presented tokens are compared in
//! constant time, and every refusal says why without the token. A token is spent only when
//! the whole join succeeded: the credential issued and the node bound.
//!
//! A binding ties `cluster/node` to the key of its credential (see `pki`): a bound node
//! accepts no other key until an operator resets it, a renewed key is staged until first
//! used, and a node that leaves Git has its binding revoked. Each cluster's bindings are one
//! document (`bindings_name`), so a document grows with a cluster, not with the fleet.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{ClusterName, NodeName};
use crate::protocol::{Refusal, TokenRefusal};
use crate::secret::Secret;
use crate::state::StateError;
use crate::store::DurableState;

/// Longest a join token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most unexpired tokens kept per daemon.
pub const MAX_TOKENS: usize = 1000;

/// Why joining state could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no randomness from the operating system")]
    Random(#[source] getrandom::Error),
    #[error("a token lives at most {} (asked for {})", humantime::format_duration(MAX_TOKEN_TTL), humantime::format_duration(*.asked))]
    TtlTooLong { asked: Duration },
    #[error("more than {MAX_TOKENS} unexpired join tokens; revoke some (`drover token list`, `drover token revoke`) or wait for them to expire")]
    TooManyTokens,
}

/// A token as stored: its id, the hash of its secret, and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    hash: String,
    pub cluster: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    pub single_use: bool,
    pub used: bool,
    /// The only node the token joins; any node of the cluster when `None` (and in files
    /// written before tokens could be bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
}

/// What a new token allows, besides its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// How long it lives, at most `MAX_TOKEN_TTL`.
    pub ttl: Duration,
    /// Spent by the first join that succeeds.
    pub single_use: bool,
    /// The only node it joins.
    pub node: Option<NodeName>,
}

const TOKENS: &str = "join-tokens.json";

/// Creates a join token for `cluster`. The token itself is returned once and never stored.
pub fn create_token(
    state: &DurableState,
    cluster: &ClusterName,
    rules: TokenRules,
    now: SystemTime,
) -> Result<(Secret, TokenRecord), JoinError> {
    let TokenRules {
        ttl,
        single_use,
        node,
    } = rules;
    if ttl > MAX_TOKEN_TTL {
        return Err(JoinError::TtlTooLong { asked: ttl });
    }
    let mut random = [0u8; 36];
    getrandom::fill(&mut random).map_err(JoinError::Random)?;
    let id = hex::encode(&random[..4]);
    let secret = hex::encode(&random[4..]);
    let record = TokenRecord {
        id: id.clone(),
        hash: hex::encode(Sha256::digest(secret.as_bytes())),
        cluster: cluster.to_string(),
        expires_at: secs(now) + ttl.as_secs(),
        single_use,
        used: false,
        node,
    };
    state.update(TOKENS, |records: &mut Vec<TokenRecord>| {
        // Spent tokens stay until they expire, so presenting one again says "already used".
        records.retain(|r| r.expires_at > secs(now));
        if records.len() >= MAX_TOKENS {
            return Err(JoinError::TooManyTokens);
        }
        records.push(record.clone());
        Ok(())
    })??;
    Ok((Secret::new(format!("{id}.{secret}")), record))
}

/// The cluster a presented token names, without checking or spending it: where a daemon that
/// shares its state sends the join (the owner of that cluster checks it). `None` when no token
/// has its id.
pub fn token_cluster(
    state: &DurableState,
    presented: &Secret,
) -> Result<Option<String>, JoinError> {
    let Some((id, _)) = presented.expose().split_once('.') else {
        return Ok(None);
    };
    let records: Vec<TokenRecord> = state.load(TOKENS)?.unwrap_or_default();
    Ok(records.into_iter().find(|r| r.id == id).map(|r| r.cluster))
}

/// Checks a token presented to join `node`; when it is good, spends it and runs `join` with its
/// record (which names the cluster). `join` admits the node, issues its credential and binds
/// it. The token is spent first, in one atomic change of the tokens document, so of two joins
/// racing on a single-use token (through two daemons, even) one wins and the other is told
/// "already used"; a join that then fails (a mistyped node name, a credential that could not be
/// saved) gives the token back.
pub fn redeem<R>(
    state: &DurableState,
    presented: &Secret,
    node: &NodeName,
    now: SystemTime,
    join: impl FnOnce(&TokenRecord) -> Result<R, Refusal>,
) -> Result<Result<R, Refusal>, JoinError> {
    let Some((id, secret)) = presented.expose().split_once('.') else {
        return Ok(Err(token_refusal(TokenRefusal::Malformed)));
    };
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    let spent = state.update(TOKENS, |records: &mut Vec<TokenRecord>| {
        let record = records
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or(token_refusal(TokenRefusal::Unknown))?;
        record.admits(&hash, node, now).map_err(token_refusal)?;
        let first_use = !record.used;
        record.used = true;
        Ok::<_, Refusal>((record.clone(), first_use))
    })?;
    let (record, first_use) = match spent {
        Ok(updated) => updated.result,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let joined = join(&record);
    if joined.is_err() && first_use {
        give_back(state, &record.id)?;
    }
    Ok(joined)
}

/// Marks the token with `id` unused again, after the join that spent it failed.
fn give_back(state: &DurableState, id: &str) -> Result<(), JoinError> {
    let outcome = state.update(TOKENS, |records: &mut Vec<TokenRecord>| {
        if let Some(record) = records.iter_mut().find(|r| r.id == id) {
            record.used = false;
        }
        Ok::<_, std::convert::Infallible>(())
    })?;
    let Ok(_) = outcome;
    Ok(())
}

fn token_refusal(problem: TokenRefusal) -> Refusal {
    Refusal::Token { problem }
}

/// The join tokens the daemon keeps, oldest first (hashes only: a token cannot be recovered).
pub fn list_tokens(state: &DurableState) -> Result<Vec<TokenRecord>, JoinError> {
    Ok(state.load(TOKENS)?.unwrap_or_default())
}

/// Revokes the token with `id` at once: the next join that presents it is refused as unknown.
/// Returns whether there was such a token.
pub fn revoke_token(state: &DurableState, id: &str) -> Result<bool, JoinError> {
    let outcome = state.update(TOKENS, |records: &mut Vec<TokenRecord>| {
        let before = records.len();
        records.retain(|r| r.id != id);
        Ok::<_, std::convert::Infallible>(records.len() != before)
    })?;
    let Ok(found) = outcome;
    Ok(found.result)
}

impl TokenRecord {
    /// Whether the token whose secret hashes to `hash` may join `node` at `now`.
    fn admits(&self, hash: &str, node: &NodeName, now: SystemTime) -> Result<(), TokenRefusal> {
        if !bool::from(hash.as_bytes().ct_eq(self.hash.as_bytes())) {
            return Err(TokenRefusal::Unknown);
        }
        if self.expires_at <= secs(now) {
            return Err(TokenRefusal::Expired);
        }
        if self.single_use && self.used {
            return Err(TokenRefusal::AlreadyUsed);
        }
        match &self.node {
            Some(own) if own != node => Err(TokenRefusal::OtherNode {
                node: own.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether a join could still redeem this token at `now`.
    pub fn status(&self, now: SystemTime) -> TokenStatus {
        if self.single_use && self.used {
            TokenStatus::Used
        } else if self.expires_at <= secs(now) {
            TokenStatus::Expired
        } else {
            TokenStatus::Valid
        }
    }

    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires_at)
    }
}

/// Whether a stored token can still be redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    Valid,
    Expired,
    Used,
}

impl std::fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenStatus::Valid => "valid",
            TokenStatus::Expired => "expired",
            TokenStatus::Used => "used",
        })
    }
}

/// A node's credential binding: the key its credential is for, a renewed key not yet used,
/// and why it was revoked, if it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub key_pin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_pin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

/// Node bindings by `cluster/node`: one cluster's, as its document holds them, or several
/// clusters' when listed (`load_all_bindings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bindings {
    pub nodes: BTreeMap<String, Binding>,
}

/// The start of every cluster's bindings document.
pub const BINDINGS_PREFIX: &str = "node-credentials-";
/// The one document that held every cluster's bindings before they were split by cluster.
const FLEET_BINDINGS: &str = "node-credentials.json";

/// The state document of `cluster`'s node bindings.
pub fn bindings_name(cluster: &str) -> String {
    format!("{BINDINGS_PREFIX}{cluster}.json")
}

/// The cluster whose bindings document is `name`.
pub fn bindings_cluster(name: &str) -> Option<&str> {
    name.strip_prefix(BINDINGS_PREFIX)?.strip_suffix(".json")
}

/// Every cluster's bindings, document by document (and those of a state no daemon of this
/// version has opened yet): for listing, not for a hot path.
pub fn load_all_bindings(state: &DurableState) -> Result<Bindings, StateError> {
    let mut all: Bindings = state.load(FLEET_BINDINGS)?.unwrap_or_default();
    for name in state.names(BINDINGS_PREFIX)? {
        if bindings_cluster(&name).is_some() {
            let cluster: Bindings = state.load(&name)?.unwrap_or_default();
            all.nodes.extend(cluster.nodes);
        }
    }
    Ok(all)
}

/// Moves the bindings of a state written by an earlier drover, all in one document, into a
/// document per cluster, then removes the old one. A binding the cluster's document already
/// has is newer and kept. Safe to run from several processes at once; nothing to do (one
/// read) once done. Returns how many bindings moved.
pub fn split_fleet_bindings(state: &DurableState) -> Result<usize, StateError> {
    let Some(fleet) = state.load::<Bindings>(FLEET_BINDINGS)? else {
        return Ok(0);
    };
    let mut by_cluster: BTreeMap<&str, Vec<(&String, &Binding)>> = BTreeMap::new();
    for (key, binding) in &fleet.nodes {
        if let Some((cluster, _)) = key.split_once('/') {
            by_cluster.entry(cluster).or_default().push((key, binding));
        }
    }
    for (cluster, moved) in &by_cluster {
        let merged = state.update(&bindings_name(cluster), |held: &mut Bindings| {
            for (key, binding) in moved {
                held.nodes
                    .entry((*key).clone())
                    .or_insert_with(|| (*binding).clone());
            }
            Ok::<(), std::convert::Infallible>(())
        })?;
        let Ok(_) = merged;
    }
    state.remove(FLEET_BINDINGS)?;
    Ok(fleet.nodes.len())
}

fn binding_key(cluster: &str, node: &str) -> String {
    format!("{cluster}/{node}")
}

/// How a presented credential relates to its node's binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialUse {
    /// The bound key.
    Current,
    /// The renewed key, used for the first time: it becomes the bound one.
    Renewed,
}

impl Bindings {
    /// Whether `key_pin` may join as `cluster/node`: a node never bound, or whose binding was
    /// revoked, takes any key; a bound node only its own.
    pub fn admits_join(&self, cluster: &str, node: &str, key_pin: &str) -> Result<(), Refusal> {
        match self.nodes.get(&binding_key(cluster, node)) {
            Some(b) if b.revoked.is_none() && b.key_pin != key_pin => {
                Err(Refusal::BoundToAnotherKey {
                    cluster: cluster.to_string(),
                    node: node.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether a connection with a credential for `key_pin` is `cluster/node`'s.
    pub fn check(
        &self,
        cluster: &str,
        node: &str,
        key_pin: &str,
    ) -> Result<CredentialUse, Refusal> {
        let Some(b) = self.nodes.get(&binding_key(cluster, node)) else {
            return Err(Refusal::UnknownCredential);
        };
        if let Some(why) = &b.revoked {
            return Err(Refusal::Revoked {
                cluster: cluster.to_string(),
                node: node.to_string(),
                why: why.clone(),
            });
        }
        if b.key_pin == key_pin {
            Ok(CredentialUse::Current)
        } else if b.next_pin.as_deref() == Some(key_pin) {
            Ok(CredentialUse::Renewed)
        } else {
            Err(Refusal::UnknownCredential)
        }
    }

    /// Binds `cluster/node` to `key_pin` (after a successful join).
    pub fn bind(&mut self, cluster: &str, node: &str, key_pin: &str) {
        self.nodes.insert(
            binding_key(cluster, node),
            Binding {
                key_pin: key_pin.to_string(),
                next_pin: None,
                revoked: None,
            },
        );
    }

    /// Records a renewed key, accepted alongside the current one until it is first used.
    pub fn stage(&mut self, cluster: &str, node: &str, next_pin: &str) {
        if let Some(b) = self.nodes.get_mut(&binding_key(cluster, node)) {
            b.next_pin = Some(next_pin.to_string());
        }
    }

    /// Makes the renewed key the bound one.
    pub fn promote(&mut self, cluster: &str, node: &str) {
        if let Some(b) = self.nodes.get_mut(&binding_key(cluster, node)) {
            if let Some(next) = b.next_pin.take() {
                b.key_pin = next;
            }
        }
    }

    /// Revokes the credentials of every node of `cluster` that `declared` does not list
    /// (`None`: the cluster left Git). Returns the nodes revoked now.
    pub fn revoke_undeclared(
        &mut self,
        cluster: &str,
        declared: Option<&std::collections::BTreeSet<String>>,
    ) -> Vec<String> {
        let revoked = self.undeclared(cluster, declared);
        let why = match declared {
            Some(_) => "the node left the cluster's definition in Git",
            None => "the cluster left Git",
        };
        for node in &revoked {
            if let Some(b) = self.nodes.get_mut(&binding_key(cluster, node)) {
                b.revoked = Some(why.to_string());
            }
        }
        revoked
    }

    /// The nodes of `cluster` bound, not yet revoked, and not in `declared` (`None`: the
    /// cluster left Git): what `revoke_undeclared` would revoke.
    pub fn undeclared(
        &self,
        cluster: &str,
        declared: Option<&std::collections::BTreeSet<String>>,
    ) -> Vec<String> {
        let prefix = format!("{cluster}/");
        self.nodes
            .range(prefix.clone()..)
            .map_while(|(key, b)| key.strip_prefix(&prefix).map(|node| (node, b)))
            .filter(|(node, b)| b.revoked.is_none() && !declared.is_some_and(|d| d.contains(*node)))
            .map(|(node, _)| node.to_string())
            .collect()
    }

    /// Forgets `cluster/node`'s binding, so the next join may bring a new key. Returns whether
    /// there was one.
    pub fn reset(&mut self, cluster: &str, node: &str) -> bool {
        self.nodes.remove(&binding_key(cluster, node)).is_some()
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> ClusterName {
        ClusterName::parse("dev").unwrap()
    }

    fn node(name: &str) -> NodeName {
        NodeName::parse(name).unwrap()
    }

    fn rules(single_use: bool, bound: Option<&str>) -> TokenRules {
        TokenRules {
            ttl: Duration::from_secs(3600),
            single_use,
            node: bound.map(node),
        }
    }

    fn admit_all(_: &TokenRecord) -> Result<(), Refusal> {
        Ok(())
    }

    #[test]
    fn tokens_are_stored_hashed_and_refused_with_a_reason() {
        let dir = crate::state::private_tempdir();
        let dir_state = crate::state::StateDir::new(dir.path());
        let state: DurableState = dir_state.clone().into();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hour = Duration::from_secs(3600);
        let (token, record) = create_token(&state, &dev(), rules(true, None), t0).unwrap();
        let (bound, _) = create_token(&state, &dev(), rules(true, Some("n4")), t0).unwrap();
        let stored = std::fs::read_to_string(dir_state.path(TOKENS)).unwrap();
        let secret = token.expose().split_once('.').unwrap().1;
        assert!(!stored.contains(secret), "the token's secret is stored");
        assert!(
            !format!("{token:?} {token}").contains(secret),
            "the token prints"
        );
        assert_eq!(record.expires_at, 1_800_003_600);

        let wrong = Secret::new(format!("{}.{}", record.id, "0".repeat(64)));
        let other_node = TokenRefusal::OtherNode { node: "n4".into() };
        let cases = [
            (Secret::new("no-dot"), "n1", t0, TokenRefusal::Malformed),
            (Secret::new("ffffffff.abc"), "n1", t0, TokenRefusal::Unknown),
            (wrong, "n1", t0, TokenRefusal::Unknown),
            (token.clone(), "n1", t0 + hour, TokenRefusal::Expired),
            (bound.clone(), "n1", t0, other_node.clone()),
        ];
        for (presented, joining, now, want) in cases {
            let got = redeem(&state, &presented, &node(joining), now, admit_all).unwrap();
            assert_eq!(got, Err(Refusal::Token { problem: want }));
        }
        assert_eq!(other_node.to_string(), "this join token is for node n4");
        // A join refused for another reason, or failing after the token was checked, does
        // not spend the token.
        let undeclared = |r: &TokenRecord| {
            Err::<(), _>(Refusal::UndeclaredNode {
                cluster: r.cluster.clone(),
                node: "x".into(),
            })
        };
        assert!(matches!(
            redeem(&state, &token, &node("n1"), t0, undeclared).unwrap(),
            Err(Refusal::UndeclaredNode { .. })
        ));
        let joined = |r: &TokenRecord| Ok(r.cluster.clone());
        let redeemed = redeem(&state, &token, &node("n1"), t0, joined).unwrap();
        assert_eq!(redeemed, Ok("dev".to_string()));
        let used = Err(Refusal::Token {
            problem: TokenRefusal::AlreadyUsed,
        });
        assert_eq!(
            redeem(&state, &token, &node("n1"), t0, admit_all).unwrap(),
            used
        );
        // The bound token, refused for n1 above, still joins its own node, once.
        assert_eq!(
            redeem(&state, &bound, &node("n4"), t0, admit_all).unwrap(),
            Ok(())
        );
        assert_eq!(
            redeem(&state, &bound, &node("n4"), t0, admit_all).unwrap(),
            used
        );
        let (reusable, _) = create_token(&state, &dev(), rules(false, None), t0).unwrap();
        assert_eq!(
            redeem(&state, &token, &node("n1"), t0, admit_all).unwrap(),
            used,
            "a spent token is still known after the next one is made"
        );
        for n in ["n1", "n2", "n3"] {
            assert!(redeem(&state, &reusable, &node(n), t0, admit_all)
                .unwrap()
                .is_ok());
        }
        let week = TokenRules {
            ttl: MAX_TOKEN_TTL + Duration::from_secs(1),
            ..rules(true, None)
        };
        assert!(matches!(
            create_token(&state, &dev(), week, t0),
            Err(JoinError::TtlTooLong { .. })
        ));
    }

    #[test]
    fn token_files_from_before_node_binding_still_load() {
        let dir = crate::state::private_tempdir();
        let dir_state = crate::state::StateDir::new(dir.path());
        let state: DurableState = dir_state.clone().into();
        let old = r#"[{"id": "0011aabb", "hash": "00", "cluster": "dev",
            "expiresAt": 1800003600, "singleUse": true, "used": false}]"#;
        std::fs::write(dir_state.path(TOKENS), old).unwrap();
        let tokens = list_tokens(&state).unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].node, None);
        // And a stored node name is parsed like any other.
        let bad = old.replace(r#""used": false"#, r#""used": false, "node": "Not_A_Name""#);
        std::fs::write(dir_state.path(TOKENS), bad).unwrap();
        assert!(list_tokens(&state).is_err());
    }

    #[test]
    fn an_earlier_drovers_one_bindings_document_is_split_by_cluster() {
        let dir = crate::state::private_tempdir();
        let state: DurableState = crate::state::StateDir::new(dir.path()).into();
        let mut fleet = Bindings::default();
        fleet.bind("a", "n1", "sha256:old-a1");
        fleet.bind("a", "n2", "sha256:a2");
        fleet.bind("b", "n1", "sha256:b1");
        state.save(FLEET_BINDINGS, &fleet).unwrap();
        // Listed before any daemon of this version split them.
        assert_eq!(load_all_bindings(&state).unwrap(), fleet);
        // `a/n1` rejoined under this version already: its newer binding stays.
        let mut newer = Bindings::default();
        newer.bind("a", "n1", "sha256:new-a1");
        state.save(&bindings_name("a"), &newer).unwrap();

        assert_eq!(split_fleet_bindings(&state).unwrap(), 3);
        let a: Bindings = state.load(&bindings_name("a")).unwrap().unwrap();
        let b: Bindings = state.load(&bindings_name("b")).unwrap().unwrap();
        let keys = |b: &Bindings| -> Vec<(String, String)> {
            b.nodes
                .iter()
                .map(|(k, v)| (k.clone(), v.key_pin.clone()))
                .collect()
        };
        assert_eq!(
            keys(&a),
            [
                ("a/n1".to_string(), "sha256:new-a1".to_string()),
                ("a/n2".to_string(), "sha256:a2".to_string())
            ]
        );
        assert_eq!(keys(&b), [("b/n1".to_string(), "sha256:b1".to_string())]);
        assert_eq!(state.load::<Bindings>(FLEET_BINDINGS).unwrap(), None);
        assert_eq!(split_fleet_bindings(&state).unwrap(), 0, "split twice");
        assert_eq!(load_all_bindings(&state).unwrap().nodes.len(), 3);
        assert_eq!(bindings_cluster(&bindings_name("a")), Some("a"));
        assert_eq!(bindings_cluster(FLEET_BINDINGS), None);
    }

    #[test]
    fn a_binding_admits_its_own_key_renews_and_revokes() {
        let mut b = Bindings::default();
        assert!(b.admits_join("dev", "n1", "sha256:a").is_ok());
        b.bind("dev", "n1", "sha256:a");
        assert!(b.admits_join("dev", "n1", "sha256:a").is_ok());
        assert!(matches!(
            b.admits_join("dev", "n1", "sha256:b"),
            Err(Refusal::BoundToAnotherKey { .. })
        ));
        assert_eq!(b.check("dev", "n1", "sha256:a"), Ok(CredentialUse::Current));
        assert_eq!(
            b.check("dev", "n1", "sha256:b"),
            Err(Refusal::UnknownCredential)
        );
        assert_eq!(
            b.check("dev", "n2", "sha256:a"),
            Err(Refusal::UnknownCredential)
        );

        b.stage("dev", "n1", "sha256:b");
        assert_eq!(b.check("dev", "n1", "sha256:a"), Ok(CredentialUse::Current));
        assert_eq!(b.check("dev", "n1", "sha256:b"), Ok(CredentialUse::Renewed));
        b.promote("dev", "n1");
        assert_eq!(
            b.check("dev", "n1", "sha256:a"),
            Err(Refusal::UnknownCredential)
        );
        assert_eq!(b.check("dev", "n1", "sha256:b"), Ok(CredentialUse::Current));

        b.bind("dev", "n2", "sha256:c");
        b.bind("devx", "n1", "sha256:d");
        let declared = ["n2".to_string()].into_iter().collect();
        assert_eq!(b.revoke_undeclared("dev", Some(&declared)), vec!["n1"]);
        assert!(matches!(
            b.check("dev", "n1", "sha256:b"),
            Err(Refusal::Revoked { .. })
        ));
        assert_eq!(
            b.check("devx", "n1", "sha256:d"),
            Ok(CredentialUse::Current)
        );
        // A revoked node may join again (with a new token) with any key.
        assert!(b.admits_join("dev", "n1", "sha256:z").is_ok());
        assert!(b.reset("dev", "n2"));
        assert!(b.admits_join("dev", "n2", "sha256:z").is_ok());
    }
}
