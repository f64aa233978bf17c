//! The operator API as `drover status` reads it, for the benchmarks that watch a daemon: TLS
//! with the daemon's CA pinned, and the local operator token the daemon left in its state
//! directory.

use std::path::Path;
use std::time::Duration;

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

/// A client of one daemon's operator API. It keeps its connection between requests.
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Client {
    /// `server` is the agents' listener (`ip:port`), `pin` the daemon CA's hash and `state` the
    /// daemon's state directory. Reads the token file: call it off the async threads.
    pub fn new(server: &str, pin: &str, state: &Path) -> Client {
        let tls = drover::pki::agent_config(pin, None).expect("a pinned TLS client");
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        let token = std::fs::read_to_string(state.join(drover::daemon::LOCAL_TOKEN_FILE))
            .expect("the daemon's operator token");
        Client {
            base: format!("https://{server}"),
            http,
            token: token.trim().to_string(),
        }
    }

    /// `GET path`, its JSON body decoded; an error for a failed request or a non-2xx status.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| chain(&e))?;
        if !response.status().is_success() {
            return Err(response.status().to_string());
        }
        let body = response.bytes().await.map_err(|e| chain(&e))?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}
