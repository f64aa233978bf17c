//! Joining a node: short-lived join tokens and node credential bindings, both kept in the
//! daemon's state directory and changed under a lock (the daemon and `drover token create` or
//! `drover node reset` may change them at the same time).
//!
//! A token is stored only as a hash, expires, names its cluster, and is single-use unless made
//! reusable. Presented tokens are compared in constant time, and every refusal says why without
//! the token. A binding ties `cluster/node` to the key of its credential (see `pki`): a bound
//! node accepts no other key until an operator resets it, a renewed key is staged until first
//! used, and a node that leaves Git has its binding revoked.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::ClusterName;
use crate::protocol::{Refusal, TokenRefusal};
use crate::secret::Secret;
use crate::state::{StateDir, StateError};

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
}

const TOKENS: &str = "join-tokens.json";

/// Creates a join token for `cluster`. The token itself is returned once and never stored.
pub fn create_token(
    state: &StateDir,
    cluster: &ClusterName,
    ttl: Duration,
    single_use: bool,
    now: SystemTime,
) -> Result<(Secret, TokenRecord), JoinError> {
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

/// Checks a presented token; when it is good, runs `admit` on its record (which names the
/// cluster) and, if that admits the agent too, spends a single-use token. A token is spent
/// only by a join that succeeds, so a mistyped node name does not burn it.
pub fn redeem(
    state: &StateDir,
    presented: &Secret,
    now: SystemTime,
    admit: impl FnOnce(&TokenRecord) -> Result<(), Refusal>,
) -> Result<Result<TokenRecord, Refusal>, JoinError> {
    let Some((id, secret)) = presented.expose().split_once('.') else {
        return Ok(Err(Refusal::Token {
            problem: TokenRefusal::Malformed,
        }));
    };
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    let outcome = state.update(TOKENS, |records: &mut Vec<TokenRecord>| {
        let Some(record) = records.iter_mut().find(|r| r.id == id) else {
            return Err(Refusal::Token {
                problem: TokenRefusal::Unknown,
            });
        };
        if !bool::from(hash.as_bytes().ct_eq(record.hash.as_bytes())) {
            return Err(Refusal::Token {
                problem: TokenRefusal::Unknown,
            });
        }
        if record.expires_at <= secs(now) {
            return Err(Refusal::Token {
                problem: TokenRefusal::Expired,
            });
        }
        if record.single_use && record.used {
            return Err(Refusal::Token {
                problem: TokenRefusal::AlreadyUsed,
            });
        }
        admit(record)?;
        record.used = true;
        Ok(record.clone())
    })?;
    Ok(outcome)
}

/// The join tokens the daemon keeps, oldest first (hashes only: a token cannot be recovered).
pub fn list_tokens(state: &StateDir) -> Result<Vec<TokenRecord>, JoinError> {
    Ok(state.load(TOKENS)?.unwrap_or_default())
}

/// Revokes the token with `id` at once: the next join that presents it is refused as unknown.
/// Returns whether there was such a token.
pub fn revoke_token(state: &StateDir, id: &str) -> Result<bool, JoinError> {
    let outcome = state.update(TOKENS, |records: &mut Vec<TokenRecord>| {
        let before = records.len();
        records.retain(|r| r.id != id);
        Ok::<_, std::convert::Infallible>(records.len() != before)
    })?;
    let Ok(found) = outcome;
    Ok(found)
}

impl TokenRecord {
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

/// Every node binding the daemon knows, by `cluster/node`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bindings {
    pub nodes: BTreeMap<String, Binding>,
}

/// The state document of node bindings.
pub const BINDINGS: &str = "node-credentials.json";

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
        let prefix = format!("{cluster}/");
        let mut revoked = Vec::new();
        for (key, b) in self.nodes.range_mut(prefix.clone()..) {
            let Some(node) = key.strip_prefix(&prefix) else {
                break;
            };
            let listed = declared.is_some_and(|d| d.contains(node));
            if !listed && b.revoked.is_none() {
                b.revoked = Some(match declared {
                    Some(_) => "the node left the cluster's definition in Git".to_string(),
                    None => "the cluster left Git".to_string(),
                });
                revoked.push(node.to_string());
            }
        }
        revoked
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

    fn admit_all(_: &TokenRecord) -> Result<(), Refusal> {
        Ok(())
    }

    #[test]
    fn tokens_are_stored_hashed_and_refused_with_a_reason() {
        let dir = crate::state::private_tempdir();
        let state = StateDir::new(dir.path());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hour = Duration::from_secs(3600);
        let (token, record) = create_token(&state, &dev(), hour, true, t0).unwrap();
        let stored = std::fs::read_to_string(state.path(TOKENS)).unwrap();
        let secret = token.expose().split_once('.').unwrap().1;
        assert!(!stored.contains(secret), "the token's secret is stored");
        assert!(
            !format!("{token:?} {token}").contains(secret),
            "the token prints"
        );
        assert_eq!(record.expires_at, 1_800_003_600);

        let wrong = Secret::new(format!("{}.{}", record.id, "0".repeat(64)));
        let cases = [
            (Secret::new("no-dot"), t0, TokenRefusal::Malformed),
            (Secret::new("ffffffff.abc"), t0, TokenRefusal::Unknown),
            (wrong, t0, TokenRefusal::Unknown),
            (token.clone(), t0 + hour, TokenRefusal::Expired),
        ];
        for (presented, now, want) in cases {
            assert_eq!(
                redeem(&state, &presented, now, admit_all).unwrap(),
                Err(Refusal::Token { problem: want })
            );
        }
        // A join refused for another reason does not spend the token.
        let undeclared = |r: &TokenRecord| {
            Err(Refusal::UndeclaredNode {
                cluster: r.cluster.clone(),
                node: "x".into(),
            })
        };
        assert!(matches!(
            redeem(&state, &token, t0, undeclared).unwrap(),
            Err(Refusal::UndeclaredNode { .. })
        ));
        let redeemed = redeem(&state, &token, t0, admit_all).unwrap().unwrap();
        assert_eq!(redeemed.cluster, "dev");
        assert_eq!(
            redeem(&state, &token, t0, admit_all).unwrap(),
            Err(Refusal::Token {
                problem: TokenRefusal::AlreadyUsed
            })
        );
        let (reusable, _) = create_token(&state, &dev(), hour, false, t0).unwrap();
        assert_eq!(
            redeem(&state, &token, t0, admit_all).unwrap(),
            Err(Refusal::Token {
                problem: TokenRefusal::AlreadyUsed
            }),
            "a spent token is still known after the next one is made"
        );
        for _ in 0..3 {
            assert!(redeem(&state, &reusable, t0, admit_all).unwrap().is_ok());
        }
        let week = MAX_TOKEN_TTL + Duration::from_secs(1);
        assert!(matches!(
            create_token(&state, &dev(), week, true, t0),
            Err(JoinError::TtlTooLong { .. })
        ));
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
