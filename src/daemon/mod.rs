//! `drover serve`: the daemon that runs everything else. It reads the source (a Git remote or a
//! watched directory), runs one reconciler per declared cluster (`reconcile`), serves agents
//! and the operator API over TLS (`server`, with `operator`'s routes), and webhooks, health and
//! metrics over plain HTTP (`http`).
//!
//! Start-up checks everything it can before a port is bound (the state directory, secret files,
//! the source's settings), so a mistake is one clear error and nothing half-started. It then
//! publishes every saved rollout record (agents get their plans back while the source loads),
//! and lets agents in once the source's first state is followed.

pub mod controller;
pub mod dashboard;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod owners;
pub mod ownership;
pub mod restore;
pub mod snapshots;
pub mod verdict;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::metrics::Metrics;
use crate::config::{self, DaemonConfig, GitCredentials, GitReference, SourceConfig};
use crate::daemon::controller::Controller;
use crate::model::StoreName;
use crate::secret::{Secret, SecretError};
use crate::server::{AgentServer, Hub, ServerError, Settings};
use crate::source::webhook::{self, WebhookSecrets, WebhookStats};
use crate::source::{
    Auth, DesiredState, GitError, GitRef, GitSource, GitSourceConfig, LocalSource, PollPolicy,
    RemoteUrl, SourceStatus, Trigger,
};
use crate::state::{StateDir, StateError};
use crate::store::DurableState;

/// How long a stopping daemon waits for its tasks before it exits anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a watched directory is re-read when no change event arrives.
pub const LOCAL_RESCAN: Duration = Duration::from_secs(30);
/// The file, in the state directory, where `drover status` finds the daemon.
pub const ENDPOINT_FILE: &str = "endpoint.json";
/// The operator token the daemon made for local use, in the state directory (mode 0600).
pub const LOCAL_TOKEN_FILE: &str = "operator-token";

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A setting is wrong: the operator must change it (exit 64).
    #[error("{0}")]
    Usage(String),
    #[error("the state directory")]
    State(#[source] StateError),
    #[error("the state in etcd")]
    StateEtcd(#[source] crate::store::etcd::EtcdStateError),
    #[error("{what}")]
    Secret {
        what: String,
        #[source]
        source: SecretError,
    },
    #[error("the Git source")]
    Git(#[source] GitError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the local operator token")]
    Token(#[source] crate::api::ApiError),
    #[error("snapshot store {name}")]
    Store {
        name: String,
        #[source]
        source: Box<crate::snapshot::StoreError>,
    },
}

/// Where `drover status` on this machine finds the daemon.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `https://host:port` of the operator API.
    pub url: String,
    /// The daemon CA's pin.
    pub ca_pin: String,
}

/// The desired state's source, ready to run.
enum Source {
    Git(Box<GitSource>),
    Local(Box<LocalSource>),
}

impl Source {
    fn desired(&self) -> watch::Receiver<Arc<DesiredState>> {
        match self {
            Source::Git(s) => s.desired(),
            Source::Local(s) => s.desired(),
        }
    }

    fn status(&self) -> watch::Receiver<SourceStatus> {
        match self {
            Source::Git(s) => s.status(),
            Source::Local(s) => s.status(),
        }
    }

    async fn run(self, cancel: CancellationToken) {
        match self {
            Source::Git(s) => s.run(cancel).await,
            Source::Local(s) => {
                if let Err(e) = s.run(cancel).await {
                    tracing::error!(error = %crate::error_chain(&e), "the local source stopped");
                }
            }
        }
    }
}

/// Everything checked and read before a port is bound.
struct Prepared {
    state: StateDir,
    /// The durable state: on the state directory, or in etcd.
    shared: DurableState,
    /// The etcd the state is in, when it is: several daemons may share it.
    etcd: Option<Arc<crate::store::etcd::EtcdStore>>,
    source: Source,
    location: String,
    trigger: Trigger,
    hooks: WebhookSecrets,
    stores: BTreeMap<StoreName, Arc<dyn object_store::ObjectStore>>,
    verdicts: Option<verdict::Verdicts>,
}

/// A running daemon.
pub struct Daemon {
    pub agents_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub ca_pin: String,
    server: AgentServer,
    controller: Arc<Controller>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Daemon {
    /// Checks the configuration, binds, and starts every task.
    pub async fn start(config: &DaemonConfig) -> Result<Daemon, DaemonError> {
        let prepared = prepare(config).await?;
        let Prepared {
            state,
            shared,
            etcd,
            source,
            location,
            trigger,
            hooks,
            stores,
            verdicts,
        } = prepared;
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let stats = Arc::new(WebhookStats::default());
        let http_listener =
            http::bind(config.listen_http)
                .await
                .map_err(|source| DaemonError::Listen {
                    addr: config.listen_http,
                    source,
                })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| DaemonError::Listen {
                addr: config.listen_http,
                source,
            })?;

        let controller_cell = Arc::new(std::sync::OnceLock::<Arc<Controller>>::new());
        let snapshots_cell = Arc::new(std::sync::OnceLock::<Arc<snapshots::Scheduler>>::new());
        let source_status = source.status();
        let operator_state = operator::Operator {
            controller: controller_cell.clone(),
            snapshots: snapshots_cell.clone(),
            source: source_status.clone(),
            location: location.clone(),
            desired: source.desired(),
            webhooks: stats.clone(),
            forge: config.verdicts.forge.clone(),
            sharing: Arc::new(std::sync::OnceLock::new()),
        };
        let sharing_cell = operator_state.sharing.clone();
        let operator = operator::router(operator_state.clone());
        let mut settings = Settings::new(config.listen_agents);
        settings.names = config.tls_names.clone();
        // The durable state (on the state directory or in etcd); the directory also holds
        // this machine's own files (where the API is, the local operator token, the source's
        // clone).
        let dashboard = dashboard::router(Arc::new(dashboard::Dashboard::new(
            operator_state,
            shared.clone(),
        )));
        let server = AgentServer::start_with(shared.clone(), settings, operator, dashboard).await?;
        let hub = server.hub().clone();
        let controller = Controller::new(
            hub.clone(),
            shared.clone(),
            metrics.clone(),
            config.require_approved_plan.clone(),
            shutdown.clone(),
        );
        let _ = controller_cell.set(controller.clone());
        let snapshots = snapshots::Scheduler::new(
            hub.clone(),
            stores,
            shared.clone(),
            source.desired(),
            metrics.clone(),
            shutdown.clone(),
        );
        let _ = snapshots_cell.set(snapshots.clone());
        let controller_ref = Arc::downgrade(&controller);
        let restores = restore::Restores::new(
            hub.clone(),
            snapshots.clone(),
            shared.clone(),
            Box::new(move |cluster| {
                if let Some(controller) = controller_ref.upgrade() {
                    controller.reconcile_now(cluster);
                }
            }),
            shutdown.clone(),
        );
        controller.set_restores(restores.clone());
        let resumed = {
            let controller = controller.clone();
            tokio::task::spawn_blocking(move || controller.resume())
                .await
                .expect("resuming does not panic")
                .map_err(DaemonError::State)?
        };
        let endpoint = Endpoint {
            url: format!("https://{}", server.local_addr()),
            ca_pin: server.ca_pin().to_string(),
        };
        write_local_access(&state, &shared, &endpoint, daemon_id(config)).await?;

        let tasks = TaskTracker::new();
        let desired = source.desired();
        let mut webhook_trigger = trigger.clone();
        if let Some(store) = etcd {
            let me = crate::store::lease::MemberInfo {
                id: daemon_id(config),
                agents_url: agents_url(config, server.local_addr()),
            };
            tracing::info!(
                daemon = me.id,
                agents = me.agents_url,
                "sharing the work with the daemons on the same etcd"
            );
            let parts = owners::Parts {
                state: shared.clone(),
                hub: hub.clone(),
                controller: controller.clone(),
                metrics: metrics.clone(),
                source: trigger,
            };
            let owners = owners::Owners::new(store, me, owners::Timing::default(), parts);
            webhook_trigger = owners.webhook_trigger();
            let _ = sharing_cell.set(owners.view());
            tasks.spawn(owners.run(desired.clone(), shutdown.clone()));
        }
        tasks.spawn(source.run(shutdown.clone()));
        tasks.spawn(controller.clone().run(desired.clone()));
        tasks.spawn(snapshots.clone().run());
        if let Some(verdicts) = verdicts {
            tasks.spawn(verdicts.run(controller.clone(), desired.clone(), shutdown.clone()));
        }
        let stopping = shutdown.clone();
        tasks.spawn(async move {
            stopping.cancelled().await;
            restores.wait().await;
        });
        tasks.spawn(admit_when_loaded(hub.clone(), desired, shutdown.clone()));
        let probe = Arc::new(DaemonProbe {
            hub: hub.clone(),
            controller: controller.clone(),
            snapshots,
            source: source_status,
            metrics: metrics.clone(),
            stats: stats.clone(),
        });
        let hooks = webhook::router(
            hooks,
            webhook::DEFAULT_MAX_BODY_BYTES,
            webhook_trigger,
            stats,
        );
        tasks.spawn(http::serve(
            http_listener,
            http::router(probe, hooks),
            shutdown.clone(),
        ));
        tracing::info!(
            agents = %server.local_addr(),
            http = %http_addr,
            source = location,
            resumed,
            "drover is serving"
        );
        Ok(Daemon {
            agents_addr: server.local_addr(),
            http_addr,
            ca_pin: server.ca_pin().to_string(),
            server,
            controller,
            shutdown,
            tasks,
        })
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    pub fn hub(&self) -> &Arc<Hub> {
        self.server.hub()
    }

    /// Stops every task and the listeners, within `DRAIN_TIMEOUT`; true when all stopped in
    /// time.
    pub async fn stop(self) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        let drained = async {
            self.tasks.wait().await;
            self.server.shutdown().await;
        };
        tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_ok()
    }
}

/// Lets agents in once the source's first state was loaded (and so followed): until then a
/// node a new definition declares would be refused as undeclared.
async fn admit_when_loaded(
    hub: Arc<Hub>,
    mut desired: watch::Receiver<Arc<DesiredState>>,
    shutdown: CancellationToken,
) {
    let loaded = tokio::select! {
        r = desired.wait_for(|d| d.revision.is_some()) => r.is_ok(),
        () = shutdown.cancelled() => false,
    };
    if loaded {
        // The controller follows the same channel; give its tasks a moment to declare.
        tokio::time::sleep(Duration::from_millis(200)).await;
        hub.mark_ready();
        tracing::info!("the source loaded; agents are admitted");
    }
}

/// Checks and reads everything that needs no port. Nothing is written before every setting
/// was checked; then the state directory is made (owner-only) before anything goes in it.
async fn prepare(config: &DaemonConfig) -> Result<Prepared, DaemonError> {
    let hooks = read_hooks(config)?;
    let forge = forge_client(config)?;
    let Some(source) = &config.source else {
        return Err(DaemonError::Usage(
            "no source: give --source (a directory or a Git URL) or `source:` in the configuration"
                .into(),
        ));
    };
    let git = match source {
        SourceConfig::Local { path, clusters_dir } => {
            if !path.join(clusters_dir).is_dir() {
                return Err(DaemonError::Usage(format!(
                    "the source directory {} has no {clusters_dir}/ directory",
                    path.display()
                )));
            }
            None
        }
        SourceConfig::Git(g) => Some(git_config(config, g)?),
    };
    let state = StateDir::new(&config.state_dir);
    {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.ensure())
            .await
            .expect("making a directory does not panic")
            .map_err(DaemonError::State)?;
    }
    let (source, location, trigger) = match (source, git) {
        (SourceConfig::Git(g), Some(git)) => {
            let source = GitSource::new(git).map_err(DaemonError::Git)?;
            let trigger = source.trigger();
            (Source::Git(Box::new(source)), g.url.clone(), trigger)
        }
        (SourceConfig::Local { path, clusters_dir }, _) => {
            let local = LocalSource::new(path.clone(), clusters_dir.clone(), LOCAL_RESCAN);
            (
                Source::Local(Box::new(local)),
                path.display().to_string(),
                Trigger::default(),
            )
        }
        (SourceConfig::Git(_), None) => unreachable!("a Git source was checked above"),
    };
    let stores = open_stores(config).await?;
    let verdicts = verdicts(config, forge, &source);
    let (shared, etcd) = open_state(config, &state).await?;
    Ok(Prepared {
        state,
        shared,
        etcd,
        source,
        location,
        trigger,
        hooks,
        stores,
        verdicts,
    })
}

/// The durable state: in etcd when the configuration says so (connected, and the key read,
/// before a port is bound), else on the state directory.
async fn open_state(
    config: &DaemonConfig,
    dir: &StateDir,
) -> Result<(DurableState, Option<Arc<crate::store::etcd::EtcdStore>>), DaemonError> {
    let Some(etcd) = config.state_etcd.clone() else {
        return Ok((DurableState::from(dir.clone()), None));
    };
    let store = tokio::task::spawn_blocking(move || crate::store::etcd::EtcdStore::open(&etcd))
        .await
        .expect("opening the state store does not panic")
        .map_err(DaemonError::StateEtcd)?;
    tracing::info!(store = ?store, "the durable state is in etcd");
    let store = Arc::new(store);
    Ok((DurableState::new(store.clone()), Some(store)))
}

/// This daemon's id among those sharing the state: the configured one, else the host's name
/// and the agents' listen address.
fn daemon_id(config: &DaemonConfig) -> String {
    if let Some(id) = &config.peer.daemon_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "drover".into());
    format!("{host}/{}", config.listen_agents)
}

/// The URL the other daemons send this one's agents to: the configured one, else the agents'
/// listen address (its first TLS name when that is a wildcard).
fn agents_url(config: &DaemonConfig, bound: SocketAddr) -> String {
    if let Some(url) = &config.peer.advertise {
        return url.clone();
    }
    match (bound.ip().is_unspecified(), config.tls_names.first()) {
        (true, Some(name)) => format!("wss://{name}:{}", bound.port()),
        _ => format!("wss://{bound}"),
    }
}

/// Opens every configured snapshot store (credentials read now, a file store's directory
/// made owner-only if missing), before a port is bound.
async fn open_stores(
    config: &DaemonConfig,
) -> Result<BTreeMap<StoreName, Arc<dyn object_store::ObjectStore>>, DaemonError> {
    let mut stores = BTreeMap::new();
    for (name, store) in &config.stores {
        let failed = |source| DaemonError::Store {
            name: name.to_string(),
            source: Box::new(source),
        };
        if let config::Store::File { root } = store {
            let root = root.clone();
            let made = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&root)
            })
            .await
            .expect("making a directory does not panic");
            if let Err(e) = made {
                return Err(DaemonError::Usage(format!(
                    "stores.{name}: cannot make the directory: {e}"
                )));
            }
        }
        stores.insert(name.clone(), crate::snapshot::open(store).map_err(failed)?);
    }
    Ok(stores)
}

/// The Git source's settings, its credentials read.
fn git_config(
    config: &DaemonConfig,
    g: &config::GitSource,
) -> Result<GitSourceConfig, DaemonError> {
    let url =
        RemoteUrl::parse(&g.url).map_err(|e| DaemonError::Usage(format!("source.git.url: {e}")))?;
    let reference = match &g.reference {
        GitReference::Branch(b) => GitRef::Branch(b.clone()),
        GitReference::Tag(t) => GitRef::Tag(t.clone()),
        GitReference::Commit(c) => GitRef::Commit(c.clone()),
    };
    Ok(GitSourceConfig {
        url,
        auth: git_auth(&g.auth)?,
        reference,
        subdir: g.subdir.clone(),
        clusters_dir: g.clusters_dir.clone(),
        state_dir: config.state_dir.join("git"),
        poll: PollPolicy {
            interval: g.poll_interval,
            ..PollPolicy::default()
        },
    })
}

fn git_auth(auth: &GitCredentials) -> Result<Auth, DaemonError> {
    Ok(match auth {
        GitCredentials::None => Auth::None,
        GitCredentials::Token { username, file } => Auth::Token {
            username: username.clone(),
            token: read_secret("source.git.auth.tokenFile", file)?,
        },
        GitCredentials::SshKey {
            username,
            key_file,
            known_hosts,
        } => Auth::SshKey {
            username: username.clone(),
            private_key: key_file.clone(),
            passphrase: None,
            known_hosts: known_hosts.clone(),
        },
    })
}

/// The forge's client for the commits' verdicts, when the configuration names a forge; a
/// refusal of notes without a Git source. Checked before anything is written.
fn forge_client(config: &DaemonConfig) -> Result<Option<verdict::forge::ForgeClient>, DaemonError> {
    if config.verdicts.notes && matches!(config.source, Some(SourceConfig::Local { .. })) {
        return Err(DaemonError::Usage(
            "verdicts.notes needs a Git source: a watched directory has no commits to note".into(),
        ));
    }
    let Some(forge) = &config.verdicts.forge else {
        return Ok(None);
    };
    let token = read_secret("verdicts.forge.tokenFile", &forge.token_file)?;
    verdict::forge::ForgeClient::new(forge.clone(), token)
        .map(Some)
        .map_err(|e| DaemonError::Usage(format!("cannot make the forge's client: {e}")))
}

/// Where the commits' verdicts go: the forge, and notes through the source's mirror.
fn verdicts(
    config: &DaemonConfig,
    forge: Option<verdict::forge::ForgeClient>,
    source: &Source,
) -> Option<verdict::Verdicts> {
    let notes = match source {
        Source::Git(git) if config.verdicts.notes => Some(git.mirror()),
        _ => None,
    };
    (forge.is_some() || notes.is_some())
        .then(|| verdict::Verdicts::new(forge, notes, config.verdicts.dashboard_url.clone()))
}

fn read_hooks(config: &DaemonConfig) -> Result<WebhookSecrets, DaemonError> {
    let w = &config.webhooks;
    let read = |what: &str, path: &Option<PathBuf>| {
        path.as_deref().map(|p| read_secret(what, p)).transpose()
    };
    Ok(WebhookSecrets {
        github: read("webhooks.githubSecretFile", &w.github_secret_file)?,
        gitlab: read("webhooks.gitlabSecretFile", &w.gitlab_secret_file)?,
        gitea: read("webhooks.giteaSecretFile", &w.gitea_secret_file)?,
        generic: read("webhooks.genericSecretFile", &w.generic_secret_file)?,
    })
}

fn read_secret(what: &str, path: &Path) -> Result<Secret, DaemonError> {
    Secret::from_file(path).map_err(|source| DaemonError::Secret {
        what: what.to_string(),
        source,
    })
}

/// Writes where the operator API is (and, the first time, an operator token for this
/// machine's root), so `drover status` here needs no flags.
async fn write_local_access(
    state: &StateDir,
    shared: &DurableState,
    endpoint: &Endpoint,
    daemon: String,
) -> Result<(), DaemonError> {
    let (state, shared) = (state.clone(), shared.clone());
    let endpoint = endpoint.clone();
    tokio::task::spawn_blocking(move || -> Result<(), DaemonError> {
        state
            .save(ENDPOINT_FILE, &endpoint)
            .map_err(DaemonError::State)?;
        let token_file = state.path(LOCAL_TOKEN_FILE);
        if !token_file.exists() {
            let token = if shared.shared() {
                crate::api::create_machine_token(&shared, &daemon)
            } else {
                crate::api::create_operator_token(&shared)
            }
            .map_err(DaemonError::Token)?;
            crate::state::write_atomically(&token_file, token.expose().as_bytes(), 0o600).map_err(
                |source| {
                    DaemonError::State(StateError::Write {
                        path: token_file.clone(),
                        source,
                    })
                },
            )?;
        }
        Ok(())
    })
    .await
    .expect("writing does not panic")
}

/// Answers `/readyz` and `/metrics`.
struct DaemonProbe {
    hub: Arc<Hub>,
    controller: Arc<Controller>,
    snapshots: Arc<snapshots::Scheduler>,
    source: watch::Receiver<SourceStatus>,
    metrics: Arc<Metrics>,
    stats: Arc<WebhookStats>,
}

impl http::Probe for DaemonProbe {
    fn ready(&self) -> Result<(), String> {
        if !self.hub.is_ready() {
            return Err("not ready: the source has not loaded yet".into());
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        use std::sync::atomic::Ordering;
        let m = &self.metrics;
        let source = self.source.borrow().clone();
        m.source_up.set(i64::from(
            source.last_error.is_none() && source.revision.is_some(),
        ));
        m.source_revision.clear();
        if let Some(revision) = &source.revision {
            m.source_revision
                .get_or_create(&metrics::RevisionLabel {
                    revision: revision.to_string(),
                })
                .set(1);
        }
        m.source_failures
            .set(i64::from(source.consecutive_failures));
        m.agents_connected
            .set(self.hub.count_reports(|r| r.connected) as i64);
        for status in self.controller.statuses() {
            let lag = status
                .nodes
                .iter()
                .filter(|n| n.generation.is_some() && n.generation != n.applied_generation)
                .count();
            m.generation_lag
                .get_or_create(&metrics::ClusterLabel {
                    cluster: status.name.clone(),
                })
                .set(lag as i64);
        }
        for ((action, failed), count) in self.hub.step_counts() {
            let label = metrics::StepLabel {
                action,
                outcome: if failed { "failed" } else { "ok" },
            };
            let counter = m.steps.get_or_create(&label);
            counter.inc_by(count.saturating_sub(counter.get()));
        }
        self.snapshots.export(std::time::SystemTime::now());
        let refused = self.hub.fenced_count();
        let counted = m.fencing_refusals.get();
        m.fencing_refusals.inc_by(refused.saturating_sub(counted));
        m.clusters_owned
            .set(self.controller.statuses().len() as i64);
        let accepted = self.stats.accepted.load(Ordering::Relaxed);
        let seen = m.webhooks_accepted.get();
        m.webhooks_accepted.inc_by(accepted.saturating_sub(seen));
        m.encode()
    }
}
