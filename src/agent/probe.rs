//! Health probes the agent runs for its components: an HTTP GET answering 2xx or 3xx, a TCP
//! connection accepted, or a command in the container exiting 0. Every probe is bounded by its
//! timeout, and an unhealthy result says why in a short text.

use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use futures::StreamExt;

use crate::error_chain;
use crate::nodeplan::Probe;

/// Most bytes of a probe's output kept for the reason text.
const MAX_DETAIL: usize = 200;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy(String),
}

/// Runs probes; cheap to clone, build one per agent.
#[derive(Clone)]
pub struct Prober {
    docker: Docker,
    http: reqwest::Client,
    /// Where the node's etcd certificates are, for `Probe::Etcd`.
    etcd_pki: Option<std::path::PathBuf>,
}

/// Why a prober could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for health probes")]
pub struct ProberError(#[source] reqwest::Error);

impl Prober {
    pub fn new(docker: Docker) -> Result<Prober, ProberError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ProberError)?;
        Ok(Prober {
            docker,
            http,
            etcd_pki: None,
        })
    }

    /// Lets the prober check the node's etcd member with the certificates in `dir`.
    pub fn with_etcd_pki(mut self, dir: std::path::PathBuf) -> Prober {
        self.etcd_pki = Some(dir);
        self
    }

    /// Runs `probe` for the component in `container`, for at most `timeout`.
    pub async fn check(&self, probe: &Probe, container: &str, timeout: Duration) -> Health {
        let run = async {
            match probe {
                Probe::Http(url) => self.http_get(url).await,
                Probe::Tcp(addr) => tcp_connect(addr).await,
                Probe::Exec(cmd) => self.exec(container, cmd).await,
                Probe::Etcd(url) => match &self.etcd_pki {
                    Some(dir) => match super::etcd::health(url, dir).await {
                        Ok(()) => Health::Healthy,
                        Err(why) => Health::Unhealthy(short(&why)),
                    },
                    None => Health::Unhealthy("no etcd certificates on this agent".into()),
                },
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(health) => health,
            Err(_) => Health::Unhealthy(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    async fn http_get(&self, url: &str) -> Health {
        match self.http.get(url).send().await {
            Ok(r) if r.status().is_success() || r.status().is_redirection() => Health::Healthy,
            Ok(r) => Health::Unhealthy(format!("HTTP {}", r.status())),
            Err(e) => Health::Unhealthy(short(&error_chain(&e))),
        }
    }

    async fn exec(&self, container: &str, cmd: &[String]) -> Health {
        let options = CreateExecOptions {
            cmd: Some(cmd.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let exec = match self.docker.create_exec(container, options).await {
            Ok(e) => e,
            Err(e) => return Health::Unhealthy(short(&e.to_string())),
        };
        let mut output = String::new();
        let start = StartExecOptions {
            detach: false,
            ..Default::default()
        };
        match self.docker.start_exec(&exec.id, Some(start)).await {
            Ok(StartExecResults::Attached {
                output: mut stream, ..
            }) => {
                while let Some(Ok(chunk)) = stream.next().await {
                    if output.len() < MAX_DETAIL {
                        output.push_str(&chunk.to_string());
                    }
                }
            }
            Ok(StartExecResults::Detached) => {}
            Err(e) => return Health::Unhealthy(short(&e.to_string())),
        }
        match self.docker.inspect_exec(&exec.id).await {
            Ok(info) => match info.exit_code {
                Some(0) => Health::Healthy,
                Some(code) => {
                    let out = output.trim();
                    let detail = if out.is_empty() {
                        format!("exit status {code}")
                    } else {
                        format!("exit status {code}: {out}")
                    };
                    Health::Unhealthy(short(&detail))
                }
                None => Health::Unhealthy("the command did not finish".into()),
            },
            Err(e) => Health::Unhealthy(short(&e.to_string())),
        }
    }
}

async fn tcp_connect(addr: &str) -> Health {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => Health::Healthy,
        Err(e) => Health::Unhealthy(short(&format!("connect {addr}: {e}"))),
    }
}

fn short(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}
