//! Commit statuses on the forge that hosts the source repository, one per cluster, through
//! each forge's documented endpoint:
//!
//! - GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, a bearer token, the
//!   `application/vnd.github+json` media type and API version header; `state` is `pending`,
//!   `success`, `failure` or `error`; `context` names the status.
//! - GitLab: `POST {api}/projects/{id}/statuses/{sha}` (the project's path, URL-encoded, as its
//!   id), the token in `PRIVATE-TOKEN`; `state` is `pending`, `running`, `success`, `failed` or
//!   `canceled`; `name` names the status.
//! - Gitea and Forgejo: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: token
//!   ...`; `state` is `pending`, `success`, `error`, `failure` or `warning`; `context` names it.
//!
//! Every request has a timeout and reads at most `MAX_ANSWER_BYTES` of the answer; the token
//! is sent only in its header and never logged.

use std::time::Duration;

use serde::Serialize;

use crate::config::{Forge, ForgeKind};
use crate::secret::Secret;

/// How long one status request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read of a forge's answer (only its status code matters).
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// GitHub's limit on a description, the smallest of the three.
pub const MAX_DESCRIPTION_CHARS: usize = 140;
/// The API version GitHub's documentation asks clients to name.
const GITHUB_API_VERSION: &str = "2022-11-28";

/// What became of a commit on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// Rolling out, or waiting for its turn.
    Pending,
    /// Applied to every node, and healthy.
    Success,
    /// Held, stalled or invalid: not applied.
    Failure,
}

/// One commit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub commit: String,
    pub state: State,
    /// `drover/<cluster>`: one status per cluster.
    pub context: String,
    pub description: String,
    pub target_url: Option<String>,
}

/// Why a status was not posted.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("cannot reach the forge at {api}")]
    Unreachable {
        api: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the forge answered {code} to the status of {commit}: {body}")]
    Refused {
        code: u16,
        commit: String,
        body: String,
    },
}

impl ForgeError {
    /// Whether trying again later can help: not for a refusal of the request itself.
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::Unreachable { .. } => true,
            ForgeError::Refused { code, .. } => *code == 429 || *code >= 500 || *code == 408,
        }
    }
}

/// A client of one forge's commit statuses.
pub struct ForgeClient {
    forge: Forge,
    token: Secret,
    http: reqwest::Client,
}

impl ForgeClient {
    pub fn new(forge: Forge, token: Secret) -> Result<ForgeClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ForgeClient { forge, token, http })
    }

    /// Posts `status` on the forge.
    pub async fn post(&self, status: &Status) -> Result<(), ForgeError> {
        let request = self.request(status);
        let api = self.forge.api.to_string();
        let unreachable = |source| ForgeError::Unreachable {
            api: api.clone(),
            source,
        };
        let mut response = request.send().await.map_err(unreachable)?;
        let code = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        if code.is_success() {
            return Ok(());
        }
        Err(ForgeError::Refused {
            code: code.as_u16(),
            commit: status.commit.clone(),
            body: crate::protocol::short_text(&String::from_utf8_lossy(&body)),
        })
    }

    fn request(&self, status: &Status) -> reqwest::RequestBuilder {
        let description = cut(&status.description, MAX_DESCRIPTION_CHARS);
        let token = self.token.expose();
        match self.forge.kind {
            ForgeKind::Github => self
                .http
                .post(self.url(&["repos", &self.forge.repository, "statuses", &status.commit]))
                .bearer_auth(token)
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", GITHUB_API_VERSION)
                .json(&ContextBody::of(status, &description)),
            ForgeKind::Gitea => self
                .http
                .post(self.url(&["repos", &self.forge.repository, "statuses", &status.commit]))
                .header(reqwest::header::AUTHORIZATION, format!("token {token}"))
                .header(reqwest::header::ACCEPT, "application/json")
                .json(&ContextBody::of(status, &description)),
            ForgeKind::Gitlab => {
                let project = urlencoding(&self.forge.repository);
                self.http
                    .post(self.url(&["projects", &project, "statuses", &status.commit]))
                    .header("PRIVATE-TOKEN", token)
                    .header(reqwest::header::ACCEPT, "application/json")
                    .json(&GitlabBody {
                        state: match status.state {
                            State::Pending => "running",
                            State::Success => "success",
                            State::Failure => "failed",
                        },
                        target_url: status.target_url.as_deref(),
                        description: &description,
                        name: &status.context,
                    })
            }
        }
    }

    /// The forge's API URL with `parts` appended; a part is taken as it is (the repository's
    /// `owner/name` keeps its slash; GitLab's project id comes encoded).
    fn url(&self, parts: &[&str]) -> String {
        let base = self.forge.api.as_str().trim_end_matches('/');
        format!("{base}/{}", parts.join("/"))
    }
}

/// The body GitHub and Gitea take.
#[derive(Serialize)]
struct ContextBody<'a> {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    description: &'a str,
    context: &'a str,
}

impl<'a> ContextBody<'a> {
    fn of(status: &'a Status, description: &'a str) -> ContextBody<'a> {
        ContextBody {
            state: match status.state {
                State::Pending => "pending",
                State::Success => "success",
                State::Failure => "failure",
            },
            target_url: status.target_url.as_deref(),
            description,
            context: &status.context,
        }
    }
}

/// The body GitLab takes.
#[derive(Serialize)]
struct GitlabBody<'a> {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    description: &'a str,
    name: &'a str,
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A GitLab project path as its id in a URL: every character but unreserved ones encoded.
fn urlencoding(path: &str) -> String {
    url::form_urlencoded::byte_serialize(path.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_cut_to_the_forges_limit() {
        let cases = [
            (
                "dev: applied to 4/4 nodes, healthy",
                "dev: applied to 4/4 nodes, healthy",
            ),
            (&"x".repeat(140), &"x".repeat(140)),
        ];
        for (text, want) in cases {
            assert_eq!(cut(text, MAX_DESCRIPTION_CHARS), want);
        }
        let long = "é".repeat(200);
        let cut = cut(&long, MAX_DESCRIPTION_CHARS);
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION_CHARS);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn gitlab_project_paths_are_encoded_as_ids() {
        assert_eq!(
            urlencoding("group/sub group/repo"),
            "group%2Fsub%20group%2Frepo"
        );
        assert_eq!(urlencoding("ops/clusters"), "ops%2Fclusters");
    }

    #[test]
    fn only_refusals_a_retry_can_cure_are_transient() {
        let refused = |code| ForgeError::Refused {
            code,
            commit: "c".into(),
            body: String::new(),
        };
        for (code, transient) in [
            (401, false),
            (404, false),
            (422, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
        ] {
            assert_eq!(refused(code).is_transient(), transient, "{code}");
        }
    }
}
