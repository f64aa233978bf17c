//! `drover serve`: the daemon. The configuration file (a `DaemonConfig`) is optional; flags and
//! `DROVER_*` variables override it, and defaults serve a local trial on loopback. Everything
//! is checked before a port is bound: a bad setting is one message and exit 64.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::Exit;
use crate::config::{self, DaemonConfig, GitCredentials, GitReference, GitSource, SourceConfig};
use crate::daemon::{Daemon, DaemonError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's configuration (a DaemonConfig YAML file); without it, defaults and flags.
    #[arg(long, env = "DROVER_CONFIG")]
    config: Option<PathBuf>,
    /// Where cluster definitions come from: a directory to watch (a working tree; edits roll
    /// out at once) or a Git remote URL to poll. Overrides the configuration's `source`.
    #[arg(long, env = "DROVER_SOURCE")]
    source: Option<String>,
    /// With a Git --source: the branch to follow.
    #[arg(long, env = "DROVER_BRANCH", default_value = "main")]
    branch: String,
    /// With --source: the directory of cluster files in it.
    #[arg(long, env = "DROVER_CLUSTERS_DIR", default_value = config::DEFAULT_CLUSTERS_DIR)]
    clusters_dir: String,
    /// Where agents and the operator API connect (TLS), as ip:port.
    #[arg(long, env = "DROVER_LISTEN_AGENTS")]
    listen_agents: Option<String>,
    /// Where webhooks, /healthz, /readyz and /metrics are served (plain HTTP), as ip:port.
    #[arg(long, env = "DROVER_LISTEN_HTTP")]
    listen_http: Option<String>,
    /// The state directory (CA, node credentials, tokens, rollout records); mode 0700.
    #[arg(long, env = "DROVER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// A name agents dial (DNS name or IP), for the serving certificate; repeat or separate
    /// with commas.
    #[arg(long = "tls-name", env = "DROVER_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
}

pub fn run(args: &Args, _out: &mut dyn Write) -> Exit {
    let config = match configure(args) {
        Ok(c) => c,
        Err(message) => {
            eprint!("{message}");
            return Exit::Usage;
        }
    };
    super::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Io;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: DaemonConfig) -> Exit {
    let daemon = match Daemon::start(&config).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return match e {
                DaemonError::Usage(_)
                | DaemonError::Secret { .. }
                | DaemonError::Git(_)
                | DaemonError::Store { .. } => Exit::Usage,
                DaemonError::Listen { .. } => Exit::Unavailable,
                DaemonError::StateEtcd(e) => {
                    use crate::store::etcd::EtcdStateError as E;
                    match e {
                        E::File { .. } | E::BadKey { .. } | E::LooseKey { .. } => Exit::Usage,
                        E::Connect { .. } | E::Timeout { .. } => Exit::Unavailable,
                        E::Runtime(_) => Exit::Io,
                    }
                }
                DaemonError::State(_) | DaemonError::Token(_) | DaemonError::Server(_) => Exit::Io,
            };
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(super::agent::stop_on_signal(shutdown.clone()));
    shutdown.cancelled().await;
    if daemon.stop().await {
        tracing::info!("stopped");
    } else {
        tracing::warn!(
            "some tasks did not stop within {:?}; exiting anyway",
            crate::daemon::DRAIN_TIMEOUT
        );
    }
    Exit::Ok
}

/// The configuration: the file's (or defaults), then flags and environment over it. Errors are
/// rendered, ready to print.
fn configure(args: &Args) -> Result<DaemonConfig, String> {
    let mut config = match &args.config {
        Some(path) => config::load(path).map_err(|e| e.render())?,
        None => DaemonConfig::default(),
    };
    if let Some(source) = &args.source {
        config.source = Some(source_from_flag(source, args));
    }
    if let Some(a) = &args.listen_agents {
        config.listen_agents = address("--listen-agents", a)?;
    }
    if let Some(a) = &args.listen_http {
        config.listen_http = address("--listen-http", a)?;
    }
    if let Some(dir) = &args.state_dir {
        if !dir.is_absolute() {
            return Err("error: --state-dir must be an absolute path\n".into());
        }
        config.state_dir = dir.clone();
    }
    if !args.tls_names.is_empty() {
        config.tls_names = args.tls_names.clone();
    }
    Ok(config)
}

/// `--source`: a directory holding the clusters directory is watched (a working tree, edits
/// included); anything else is a Git remote.
fn source_from_flag(source: &str, args: &Args) -> SourceConfig {
    let path = Path::new(source);
    if path.join(&args.clusters_dir).is_dir() {
        return SourceConfig::Local {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            clusters_dir: args.clusters_dir.clone(),
        };
    }
    SourceConfig::Git(GitSource {
        url: source.to_string(),
        reference: GitReference::Branch(args.branch.clone()),
        subdir: None,
        clusters_dir: args.clusters_dir.clone(),
        poll_interval: config::DEFAULT_POLL_INTERVAL,
        auth: GitCredentials::None,
    })
}

fn address(flag: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("error: {flag} `{text}` is not ip:port, e.g. 127.0.0.1:7443\n"))
}
