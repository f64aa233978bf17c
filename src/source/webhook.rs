//! Webhook receivers, as an axum [`Router`] to mount on the daemon's HTTP listener.
//!
//! | route | provider | check |
//! |---|---|---|
//! | `POST /hooks/github` | GitHub | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` |
//! | `POST /hooks/gitlab` | GitLab | `X-Gitlab-Token` equal to the secret (constant time) |
//! | `POST /hooks/gitea` | Gitea, Forgejo | `X-Gitea-Signature` or `X-Forgejo-Signature`: hex HMAC-SHA256 |
//! | `POST /hooks/generic` | anything | `X-Drover-Signature-256: sha256=<hex HMAC-SHA256 of the body>` |
//!
//! Only providers with a secret are routed. A verified request fires the [`Trigger`] (the
//! source checks at once; a burst coalesces into one check) and gets 202. A bad or missing
//! signature gets 401 and is counted; a body over the limit gets 413. The payload is not
//! trusted for anything else: the check itself asks the remote.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use super::{Secret, Trigger};

/// Largest webhook body accepted, unless configured otherwise. GitHub caps payloads at 25 MB,
/// but a push notification needs none of it: the check asks the remote.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The secret of each provider; a provider without one has no route.
#[derive(Debug, Clone, Default)]
pub struct WebhookSecrets {
    pub github: Option<Secret>,
    pub gitlab: Option<Secret>,
    pub gitea: Option<Secret>,
    pub generic: Option<Secret>,
}

/// How many recent deliveries are kept for the dashboard.
pub const RECENT_DELIVERIES: usize = 20;
/// The longest delivery id kept; a longer one is cut.
const MAX_DELIVERY_ID: usize = 64;

/// Counters for status and metrics, and the last deliveries for the dashboard.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Verified requests (each fired the trigger).
    pub accepted: AtomicU64,
    /// Requests refused for a missing or wrong signature or token.
    pub rejected: AtomicU64,
    recent: std::sync::Mutex<std::collections::VecDeque<Delivery>>,
}

/// One webhook request that reached its route (bodies over the limit never do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub at: std::time::SystemTime,
    pub provider: &'static str,
    /// The provider's delivery id, when it sent one (printable ASCII, cut to 64 bytes).
    pub id: Option<String>,
    pub accepted: bool,
}

impl WebhookStats {
    /// The last deliveries, newest first.
    pub fn recent(&self) -> Vec<Delivery> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().cloned().collect()
    }

    fn record(&self, delivery: Delivery) {
        let counter = match delivery.accepted {
            true => &self.accepted,
            false => &self.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_DELIVERIES {
            recent.pop_front();
        }
        recent.push_back(delivery);
    }
}

#[derive(Clone, Copy, Debug)]
enum Provider {
    GitHub,
    GitLab,
    Gitea,
    Generic,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Generic => "generic",
        }
    }

    /// The header that carries the provider's id of a delivery.
    fn delivery_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-github-delivery",
            Provider::GitLab => "x-gitlab-event-uuid",
            Provider::Gitea => "x-gitea-delivery",
            Provider::Generic => "x-drover-delivery",
        }
    }
}

/// The delivery id `headers` carry for `provider`, when it is printable ASCII; cut to
/// `MAX_DELIVERY_ID` bytes.
fn delivery_id(provider: Provider, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(provider.delivery_header())?.to_str().ok()?;
    let value: String = value.chars().take(MAX_DELIVERY_ID).collect();
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())).then_some(value)
}

struct Hook {
    provider: Provider,
    secret: Secret,
    trigger: Trigger,
    stats: Arc<WebhookStats>,
}

/// The webhook routes, refusing bodies over `max_body_bytes` with 413.
pub fn router(
    secrets: WebhookSecrets,
    max_body_bytes: usize,
    trigger: Trigger,
    stats: Arc<WebhookStats>,
) -> Router {
    let routes = [
        ("/hooks/github", Provider::GitHub, secrets.github),
        ("/hooks/gitlab", Provider::GitLab, secrets.gitlab),
        ("/hooks/gitea", Provider::Gitea, secrets.gitea),
        ("/hooks/generic", Provider::Generic, secrets.generic),
    ];
    let mut router = Router::new();
    for (path, provider, secret) in routes {
        let Some(secret) = secret else { continue };
        let hook = Arc::new(Hook {
            provider,
            secret,
            trigger: trigger.clone(),
            stats: Arc::clone(&stats),
        });
        router = router.route(path, post(receive).with_state(hook));
    }
    router.layer(DefaultBodyLimit::max(max_body_bytes))
}

async fn receive(State(hook): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let accepted = verify(hook.provider, &hook.secret, &headers, &body);
    hook.stats.record(Delivery {
        at: std::time::SystemTime::now(),
        provider: hook.provider.name(),
        id: delivery_id(hook.provider, &headers),
        accepted,
    });
    if accepted {
        tracing::debug!(provider = ?hook.provider, "webhook verified; checking the source");
        hook.trigger.fire();
        StatusCode::ACCEPTED
    } else {
        tracing::warn!(provider = ?hook.provider, "webhook refused: missing or wrong signature");
        StatusCode::UNAUTHORIZED
    }
}

/// True when the request carries the provider's proof of the secret.
fn verify(provider: Provider, secret: &Secret, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match provider {
        Provider::GitHub => header("x-hub-signature-256")
            .and_then(|v| v.strip_prefix("sha256="))
            .is_some_and(|sig| hmac_matches(secret, body, sig)),
        Provider::Generic => header("x-drover-signature-256")
            .and_then(|v| v.strip_prefix("sha256="))
            .is_some_and(|sig| hmac_matches(secret, body, sig)),
        Provider::Gitea => header("x-gitea-signature")
            .or_else(|| header("x-forgejo-signature"))
            .is_some_and(|sig| hmac_matches(secret, body, sig)),
        Provider::GitLab => header("x-gitlab-token")
            .is_some_and(|token| bool::from(token.as_bytes().ct_eq(secret.expose().as_bytes()))),
    }
}

/// Constant-time comparison of a hex HMAC-SHA256 signature of `body`.
fn hmac_matches(secret: &Secret, body: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// The hex HMAC-SHA256 of `body` under `secret`, as providers send it (for tests and tools).
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signature_from_its_docs() {
        // The example from GitHub's "Validating webhook deliveries".
        let secret = Secret::new("It's a Secret to Everybody");
        assert_eq!(
            sign(&secret, b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
