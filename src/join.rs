//! Joining a node: each cluster's certificate authority, which an agent pins by the hash of its
//! public key, and short-lived join tokens. The daemon keeps both in its state directory; a
//! token is stored only as a hash, expires, and is single-use unless made reusable. Presented
//! tokens are compared in constant time, and every refusal says why.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::ClusterName;
use crate::secret::Secret;
use crate::state::{StateDir, StateError};

/// Longest a join token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most unexpired tokens kept per daemon.
pub const MAX_TOKENS: usize = 1000;

/// A cluster's CA as the daemon stores it; the key never leaves the state directory.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// What an agent needs to trust the daemon: the CA certificate and its public-key pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaInfo {
    pub cert_pem: String,
    /// `sha256:` and the hex digest of the CA's SubjectPublicKeyInfo.
    pub pin: String,
}

/// Why joining state could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot create the certificate authority of cluster {cluster}")]
    Ca {
        cluster: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("no randomness from the operating system")]
    Random(#[source] getrandom::Error),
    #[error("a token lives at most {} (asked for {})", humantime::format_duration(MAX_TOKEN_TTL), humantime::format_duration(*.asked))]
    TtlTooLong { asked: Duration },
    #[error("more than {MAX_TOKENS} unexpired join tokens; wait for some to expire")]
    TooManyTokens,
}

/// Why a presented token is refused. The text never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the join token is malformed")]
    Malformed,
    #[error("the join token is unknown")]
    Unknown,
    #[error("the join token is for another cluster")]
    WrongCluster,
    #[error("the join token expired")]
    Expired,
    #[error("the join token was already used")]
    AlreadyUsed,
}

/// The CA of `cluster`, created on first use.
pub fn ensure_ca(state: &StateDir, cluster: &ClusterName) -> Result<CaInfo, JoinError> {
    let name = format!("ca-{cluster}.json");
    let stored = match state.load::<StoredCa>(&name)? {
        Some(ca) => ca,
        None => {
            let ca_error = |source| JoinError::Ca {
                cluster: cluster.to_string(),
                source,
            };
            let key = KeyPair::generate().map_err(ca_error)?;
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(ca_error)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, format!("drover {cluster} CA"));
            let cert = params.self_signed(&key).map_err(ca_error)?;
            let ca = StoredCa {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            };
            state.save(&name, &ca)?;
            ca
        }
    };
    let key = KeyPair::from_pem(&stored.key_pem).map_err(|source| JoinError::Ca {
        cluster: cluster.to_string(),
        source,
    })?;
    Ok(CaInfo {
        pin: pin(&key.subject_public_key_info()),
        cert_pem: stored.cert_pem,
    })
}

/// The pin of a public key: `sha256:` and the hex digest of its SubjectPublicKeyInfo DER.
pub fn pin(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(spki_der)))
}

/// Whether `text` has the form of a pin.
pub fn is_pin(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
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
    let mut records: Vec<TokenRecord> = state.load(TOKENS)?.unwrap_or_default();
    records.retain(|r| r.expires_at > secs(now) && !(r.single_use && r.used));
    if records.len() >= MAX_TOKENS {
        return Err(JoinError::TooManyTokens);
    }
    records.push(record.clone());
    state.save(TOKENS, &records)?;
    Ok((Secret::new(format!("{id}.{secret}")), record))
}

/// Checks a presented token for `cluster` and, if it is single-use, spends it.
pub fn redeem(
    state: &StateDir,
    cluster: &ClusterName,
    presented: &Secret,
    now: SystemTime,
) -> Result<Result<TokenRecord, TokenRefusal>, JoinError> {
    let Some((id, secret)) = presented.expose().split_once('.') else {
        return Ok(Err(TokenRefusal::Malformed));
    };
    let mut records: Vec<TokenRecord> = state.load(TOKENS)?.unwrap_or_default();
    let Some(record) = records.iter_mut().find(|r| r.id == id) else {
        return Ok(Err(TokenRefusal::Unknown));
    };
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    if !bool::from(hash.as_bytes().ct_eq(record.hash.as_bytes())) {
        return Ok(Err(TokenRefusal::Unknown));
    }
    let refusal = if record.cluster != cluster.as_str() {
        Some(TokenRefusal::WrongCluster)
    } else if record.expires_at <= secs(now) {
        Some(TokenRefusal::Expired)
    } else if record.single_use && record.used {
        Some(TokenRefusal::AlreadyUsed)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        return Ok(Err(refusal));
    }
    record.used = true;
    let redeemed = record.clone();
    state.save(TOKENS, &records)?;
    Ok(Ok(redeemed))
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

    #[test]
    fn the_ca_is_made_once_and_pinned_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let first = ensure_ca(&state, &dev()).unwrap();
        let again = ensure_ca(&state, &dev()).unwrap();
        assert_eq!(first, again);
        assert!(is_pin(&first.pin), "{}", first.pin);
        assert!(first.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let other = ensure_ca(&state, &ClusterName::parse("prod").unwrap()).unwrap();
        assert_ne!(first.pin, other.pin);
    }

    #[test]
    fn tokens_are_stored_hashed_and_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
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

        let prod = ClusterName::parse("prod").unwrap();
        let wrong = Secret::new(format!("{}.{}", record.id, "0".repeat(64)));
        let cases = [
            (&dev(), Secret::new("no-dot"), t0, TokenRefusal::Malformed),
            (
                &dev(),
                Secret::new("ffffffff.abc"),
                t0,
                TokenRefusal::Unknown,
            ),
            (&dev(), wrong, t0, TokenRefusal::Unknown),
            (&prod, token.clone(), t0, TokenRefusal::WrongCluster),
            (&dev(), token.clone(), t0 + hour, TokenRefusal::Expired),
        ];
        for (cluster, presented, now, want) in cases {
            assert_eq!(redeem(&state, cluster, &presented, now).unwrap(), Err(want));
        }
        assert!(redeem(&state, &dev(), &token, t0).unwrap().is_ok());
        assert_eq!(
            redeem(&state, &dev(), &token, t0).unwrap(),
            Err(TokenRefusal::AlreadyUsed)
        );
        let (reusable, _) = create_token(&state, &dev(), hour, false, t0).unwrap();
        for _ in 0..3 {
            assert!(redeem(&state, &dev(), &reusable, t0).unwrap().is_ok());
        }
        let week = MAX_TOKEN_TTL + Duration::from_secs(1);
        assert!(matches!(
            create_token(&state, &dev(), week, true, t0),
            Err(JoinError::TtlTooLong { .. })
        ));
    }
}
