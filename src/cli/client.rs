//! The operator API's client for commands: TLS with the daemon's CA pinned, the operator token
//! as a bearer token, every answer read within a size limit and a timeout. On the daemon's own
//! machine it finds the address, pin and token in the state directory (`drover serve` writes
//! them there), so no flag is needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::{Endpoint, ENDPOINT_FILE, LOCAL_TOKEN_FILE};
use crate::pki;
use crate::secret::{Secret, SecretError};
use crate::state::{StateDir, StateError};

/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Where the daemon is, as flags give it; each missing part is read from the state directory.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The daemon's operator API, `https://host:port`.
    #[arg(long, env = "DROVER_SERVER")]
    pub server: Option<String>,
    /// The daemon CA's key hash, as `drover token create` prints it.
    #[arg(long, env = "DROVER_CA_HASH")]
    pub ca_hash: Option<String>,
    /// A file holding the operator token.
    #[arg(long, env = "DROVER_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// The daemon's state directory, where a local daemon leaves its address, pin and token.
    #[arg(long, env = "DROVER_STATE_DIR", default_value = crate::config::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon found: give --server, --ca-hash and --api-token-file, or run this on the daemon's machine (it reads {path})")]
    NoEndpoint {
        path: PathBuf,
        #[source]
        source: Option<StateError>,
    },
    #[error("--server `{0}` must be https://host:port")]
    Server(String),
    #[error("--ca-hash must be `sha256:` and 64 lowercase hex digits")]
    CaHash,
    #[error("the operator token file")]
    Token(#[source] SecretError),
    #[error("the daemon at {server} presents a CA whose key hash is not the pinned one")]
    PinMismatch { server: String },
    #[error("the daemon at {server} is not reachable")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the daemon answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the answer is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the answer is not what this drover reads")]
    Document(#[source] serde_json::Error),
}

/// A client for one daemon.
pub struct Client {
    base: url::Url,
    http: reqwest::Client,
    token: Secret,
}

impl Client {
    /// Resolves the target: flags first, then the state directory.
    pub fn new(target: &Target) -> Result<Client, ClientError> {
        let state = StateDir::new(&target.state_dir);
        let endpoint_path = state.path(ENDPOINT_FILE);
        let local = || -> Result<Endpoint, ClientError> {
            match state.load::<Endpoint>(ENDPOINT_FILE) {
                Ok(Some(e)) => Ok(e),
                Ok(None) => Err(ClientError::NoEndpoint {
                    path: endpoint_path.clone(),
                    source: None,
                }),
                Err(e) => Err(ClientError::NoEndpoint {
                    path: endpoint_path.clone(),
                    source: Some(e),
                }),
            }
        };
        let (server, pin) = match (&target.server, &target.ca_hash) {
            (Some(s), Some(p)) => (s.clone(), p.clone()),
            _ => {
                let e = local()?;
                (
                    target.server.clone().unwrap_or(e.url),
                    target.ca_hash.clone().unwrap_or(e.ca_pin),
                )
            }
        };
        let token_file: PathBuf = target
            .api_token_file
            .clone()
            .unwrap_or_else(|| state.path(LOCAL_TOKEN_FILE));
        let base = url::Url::parse(&server).map_err(|_| ClientError::Server(server.clone()))?;
        if base.scheme() != "https" || base.host_str().is_none() {
            return Err(ClientError::Server(server));
        }
        if !pki::is_pin(&pin) {
            return Err(ClientError::CaHash);
        }
        let token = Secret::from_file(Path::new(&token_file)).map_err(ClientError::Token)?;
        let tls = pki::agent_config(&pin, None).map_err(|_| ClientError::CaHash)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(TIMEOUT)
            .build()
            .map_err(|source| ClientError::Unreachable {
                server: server.clone(),
                source,
            })?;
        Ok(Client { base, http, token })
    }

    /// `GET path`, its body at most `limit` bytes, parsed as JSON.
    pub async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        limit: usize,
    ) -> Result<T, ClientError> {
        let request = self.http.get(self.url(path));
        let body = self.send(request, limit).await?;
        serde_json::from_slice(&body).map_err(ClientError::Document)
    }

    /// `POST path` with no body; the answer is ignored but for its status.
    pub async fn post(&self, path: &str) -> Result<(), ClientError> {
        let request = self.http.post(self.url(path));
        self.send(request, 64 * 1024).await.map(drop)
    }

    /// `POST path` with no body, waiting up to `timeout` for the answer, which is at most
    /// `limit` bytes of JSON.
    pub async fn post_for<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        limit: usize,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let request = self.http.post(self.url(path)).timeout(timeout);
        let body = self.send(request, limit).await?;
        serde_json::from_slice(&body).map_err(ClientError::Document)
    }

    /// `POST path` with `body` as JSON; the answer is at most `limit` bytes of JSON.
    pub async fn post_json<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        limit: usize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(ClientError::Document)?;
        let request = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let answer = self.send(request, limit).await?;
        serde_json::from_slice(&answer).map_err(ClientError::Document)
    }

    /// `path` may carry a query (`?dryRun=true`).
    fn url(&self, path: &str) -> url::Url {
        let mut url = self.base.clone();
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        url.set_path(path);
        url.set_query((!query.is_empty()).then_some(query));
        url
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let server = self.base.origin().ascii_serialization();
        let unreachable = |source: reqwest::Error| {
            if pki::is_pin_mismatch(&source) {
                ClientError::PinMismatch {
                    server: server.clone(),
                }
            } else {
                ClientError::Unreachable {
                    server: server.clone(),
                    source,
                }
            }
        };
        let mut response = request
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(&unreachable)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(&unreachable)? {
            if body.len() + chunk.len() > limit {
                return Err(ClientError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }
}
