//! `drover agent`: the node agent. Before it dials for good it checks its inputs, in order,
//! with one clear message per failure: the CA hash's form, the server URL and node name, the
//! token file (when there is no credential yet), the daemon reachable, the daemon's CA matching
//! the pin, and Docker reachable. The token is never printed.
//!
//! An unreachable daemon is final only before the first join. An agent that has joined
//! starts anyway: it applies the plan it saved and dials with backoff until the daemon is back.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use tokio_util::sync::CancellationToken;

use super::Exit;
use crate::agent::credential::DataDir;
use crate::agent::registry::RegistryAuth;
use crate::agent::session::{Dial, SessionError};
use crate::agent::{AgentError, AgentSettings};
use crate::model::NodeName;
use crate::pki;
use crate::secret::Secret;
use crate::state::StateDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's agent URL, e.g. `wss://drover.example.net:7443`. Where several daemons
    /// share the state, their URLs separated by commas (or one name in front of them all): the
    /// agent tries them in turn and goes where the daemon it reaches sends it.
    #[arg(long, env = "DROVER_SERVER")]
    server: String,
    /// The daemon CA's key hash, `sha256:<64 hex digits>`, as `drover token create` prints it.
    #[arg(long, env = "DROVER_CA_HASH")]
    ca_hash: String,
    /// This node's name in the cluster's Git definition.
    #[arg(long, env = "DROVER_NODE_NAME")]
    node_name: String,
    /// A file holding the join token; needed only until the agent has joined.
    #[arg(long, env = "DROVER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Where the agent keeps its key, credential and last plan.
    #[arg(long, default_value = "/var/lib/drover-agent", env = "DROVER_DATA_DIR")]
    data_dir: PathBuf,
    /// The Docker Engine socket.
    #[arg(
        long,
        default_value = "/var/run/docker.sock",
        env = "DROVER_DOCKER_SOCKET"
    )]
    docker_socket: PathBuf,
    /// The Docker client configuration whose `docker login` credentials image pulls use
    /// [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json].
    #[arg(long, env = "DROVER_DOCKER_CONFIG")]
    docker_config: Option<PathBuf>,
    /// The directory host paths (binds, files) are relative to: `/` on a real node.
    #[arg(long, default_value = "/", env = "DROVER_HOST_ROOT")]
    host_root: PathBuf,
}

const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: &Args, _out: &mut dyn Write) -> Exit {
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
    runtime.block_on(agent(args))
}

async fn agent(args: &Args) -> Exit {
    let settings = match preflight(args).await {
        Ok(s) => s,
        Err((exit, message)) => {
            eprintln!("error: {message}");
            return exit;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    match crate::agent::run(settings, shutdown).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            match e {
                AgentError::Session(SessionError::Refused(_)) | AgentError::NoToken => {
                    Exit::Refused
                }
                _ => Exit::Unavailable,
            }
        }
    }
}

/// Dials `dials` in turn until one answers with the pinned CA: a pin mismatch at once, else the
/// last one's error when none answers.
async fn reach<'d>(dials: impl IntoIterator<Item = &'d Dial>) -> Result<(), SessionError> {
    let mut outcome = Ok(());
    for dial in dials {
        outcome = match dial.tls(None).await {
            Ok(_) => return Ok(()),
            Err(SessionError::PinMismatch) => return Err(SessionError::PinMismatch),
            Err(e) => Err(e),
        };
    }
    outcome
}

async fn preflight(args: &Args) -> Result<AgentSettings, (Exit, String)> {
    let usage = |m: String| (Exit::Usage, m);
    if !pki::is_pin(&args.ca_hash) {
        return Err(usage(
            "--ca-hash must be `sha256:` and 64 lowercase hex digits, as `drover token create` prints it".into(),
        ));
    }
    let mut dials = args
        .server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Dial::new(s, &args.ca_hash).map_err(|e| usage(format!("--server: {e}"))))
        .collect::<Result<Vec<Dial>, _>>()?;
    if dials.is_empty() {
        return Err(usage("--server: no URL given".into()));
    }
    let dial = dials.remove(0);
    NodeName::parse(&args.node_name)
        .map_err(|e| usage(format!("--node-name `{}`: {e}", args.node_name)))?;
    let data = DataDir::new(StateDir::new(&args.data_dir));
    let credential = data.credential().map_err(|e| {
        (
            Exit::Io,
            format!(
                "the data directory {}: {}",
                args.data_dir.display(),
                super::error_chain(&e)
            ),
        )
    })?;
    let token = match (&credential, &args.token_file) {
        (Some(_), _) => None,
        (None, None) => {
            return Err(usage(format!(
                "this agent has not joined yet (no credential in {}); give the join token with --token-file",
                args.data_dir.display()
            )))
        }
        (None, Some(path)) => Some(Secret::from_file(path).map_err(|e| {
            (
                Exit::Usage,
                format!("--token-file: {}", super::error_chain(&e)),
            )
        })?),
    };
    // A daemon reachable (with several, any: a joining node must not wait on the first one
    // given while another is up), and its CA the pinned one.
    match reach(std::iter::once(&dial).chain(&dials)).await {
        Ok(()) => {}
        Err(SessionError::PinMismatch) => {
            return Err((
                Exit::Refused,
                format!(
                    "the daemon at {} presents a CA whose key hash is not {}; check --ca-hash against `drover token create` and that --server is the right daemon",
                    args.server, args.ca_hash
                ),
            ));
        }
        // A node that joined keeps its containers as planned while the daemon is away (a
        // node rebooting during a daemon outage): it applies its saved plan and dials on.
        Err(e) if credential.is_some() => {
            tracing::warn!(error = %super::error_chain(&e), "the daemon is not reachable yet; applying the saved plan and dialling with backoff");
        }
        Err(e) => {
            let none = match dials.is_empty() {
                true => "the daemon is not reachable",
                false => "no daemon of --server is reachable; the last one",
            };
            return Err((
                Exit::Unavailable,
                format!("{none}: {}", super::error_chain(&e)),
            ));
        }
    }
    let socket = args.docker_socket.display().to_string();
    let docker = Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
        .map_err(|e| (Exit::Unavailable, format!("Docker at {socket}: {e}")))?;
    let docker = match tokio::time::timeout(DOCKER_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            return Err((
                Exit::Unavailable,
                format!("Docker is not reachable at {socket}: {e}"),
            ))
        }
        Err(_) => {
            return Err((
                Exit::Unavailable,
                format!("Docker at {socket} did not answer within {DOCKER_TIMEOUT:?}"),
            ))
        }
    };
    let mut settings = AgentSettings::new(dial, &args.node_name, args.data_dir.clone(), docker);
    settings.also = dials;
    settings.token = token;
    settings.host_root = args.host_root.clone();
    settings.registry_auth = Some(match &args.docker_config {
        Some(path) => RegistryAuth::new(path),
        None => RegistryAuth::from_environment(),
    });
    Ok(settings)
}

pub(super) async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    shutdown.cancel();
}
