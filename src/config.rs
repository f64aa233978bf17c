//! The daemon's own configuration, which never lives in Git: where the cluster definitions come
//! from, where the daemon listens, its state directory, the names agents dial, webhook secrets
//! and the snapshot stores that cluster files name. It holds no secret: credentials and webhook
//! secrets are read from files or the environment, and the configuration says only where.
//! Every field has a default that serves a local trial.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::diagnostic::{Diagnostic, Severity};
use crate::model::document::{
    parse_documents, read_limited, Checker, LoadError, SourceFile, MAX_FILE_BYTES,
};
use crate::model::names::StoreName;

/// `kind` of a daemon configuration file.
pub const KIND: &str = "DaemonConfig";

/// The file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonConfigFile {
    pub api_version: String,
    pub kind: String,
    /// Where cluster definitions come from: a Git remote, or a local directory to watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    #[serde(default)]
    pub listen: ListenSpec,
    /// The daemon's state: its CA, node credentials, tokens and rollout records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The names (DNS or IP) agents and operators dial; the serving certificate carries them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_names: Vec<String>,
    #[serde(default)]
    pub webhooks: WebhooksSpec,
    /// Snapshot stores by name; cluster files refer to them by that name.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreSpec>,
    /// Where the daemon tells each commit what became of it.
    #[serde(default)]
    pub verdicts: VerdictsSpec,
    /// Clusters whose revisions run only when the commit approves the plan the daemon computes
    /// against what runs (a `Drover-Plan: sha256:...` trailer, or the reviewed-digest file);
    /// `"*"` for every cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_approved_plan: Vec<String>,
    /// Where the daemon keeps its durable state (CAs, tokens, bindings, rollout records): the
    /// state directory (the default), or an etcd cluster several daemons share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateSpec {
    pub etcd: EtcdStateSpec,
}

/// An etcd cluster for the daemon's state, separate from the clusters drover manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdStateSpec {
    /// Client URLs: `https://host:2379` (plain `http` only to a loopback address).
    pub endpoints: Vec<String>,
    /// The CA of the etcd servers, and this daemon's client certificate and key (PEM files);
    /// required with https endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Every key starts with this; it starts and ends with `/` [default: `/drover/`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A file of 64 hex characters (`openssl rand -hex 32`): the key every value is sealed
    /// with. Every daemon sharing the state needs the same one.
    pub encryption_key_file: PathBuf,
    /// This daemon's name among those sharing the state; stable across restarts, so a
    /// restarted daemon gets its clusters back [default: the host name and the agents'
    /// listen address].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_id: Option<String>,
    /// The URL agents reach this very daemon at (`wss://host:port`), where the others send
    /// the agents of its clusters; never a name in front of several daemons [default: the
    /// agents' listen address, when it is not a wildcard].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
}

/// Where the daemon reports what became of each commit: a status per cluster on the forge
/// that hosts the repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerdictsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<ForgeSpec>,
    /// The dashboard's address, linked from every status (`<url>/clusters/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// Also write each commit's verdicts as a Git note under `refs/notes/drover`, pushed to
    /// the source's remote (with the source's credentials, which must allow pushing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notes: bool,
}

/// The forge that hosts the source repository, and a token that may post commit statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForgeSpec {
    pub kind: ForgeKind,
    /// The API's base URL: `https://api.github.com`, `https://gitlab.com/api/v4`,
    /// `https://gitea.example/api/v1`. Plain `http` only to a loopback address.
    pub api_url: String,
    /// `owner/name` on GitHub, Gitea and Forgejo; the project's path on GitLab.
    pub repository: String,
    /// A file holding the token (GitHub: a token with commit status write access; GitLab: one
    /// with the `api` scope; Gitea: one with repository write access).
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitlab,
    /// Gitea and Forgejo, which share the API.
    Gitea,
}

/// A checked `ForgeSpec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forge {
    pub kind: ForgeKind,
    pub api: url::Url,
    pub repository: String,
    pub token_file: PathBuf,
}

impl Forge {
    /// The forge's web page of `commit`, from the API URL: `api.github.com` is served from
    /// `github.com`, GitHub Enterprise's `/api/v3`, GitLab's `/api/v4` and Gitea's `/api/v1`
    /// from the host's root.
    pub fn commit_url(&self, commit: &str) -> String {
        let mut web = self.api.clone();
        if web.host_str() == Some("api.github.com") {
            let _ = web.set_host(Some("github.com"));
        }
        let suffix = match self.kind {
            ForgeKind::Github => "/api/v3",
            ForgeKind::Gitlab => "/api/v4",
            ForgeKind::Gitea => "/api/v1",
        };
        let path = web.path().trim_end_matches('/');
        let root = path.strip_suffix(suffix).unwrap_or(path).to_string();
        web.set_path(&root);
        let page = match self.kind {
            ForgeKind::Gitlab => "-/commit",
            ForgeKind::Github | ForgeKind::Gitea => "commit",
        };
        let base = web.as_str().trim_end_matches('/');
        format!("{base}/{}/{page}/{commit}", self.repository)
    }
}

/// Checked `VerdictsSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    pub forge: Option<Forge>,
    pub dashboard_url: Option<url::Url>,
    pub notes: bool,
}

/// Exactly one of `git` and `local`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitSpec {
    /// `https://`, `ssh://`, `user@host:path` or a local path; never with credentials.
    pub url: String,
    /// What to follow: one of `branch` (default `main`), `tag` and `commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The repository directory holding the clusters directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdir: Option<String>,
    /// Default `clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters_dir: Option<String>,
    /// Default `60s`; webhooks make checks sooner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<GitAuthSpec>,
}

/// Credentials for the remote, from files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitAuthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// An HTTP access token (GitHub, GitLab, Gitea) or password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_file: Option<PathBuf>,
    /// With `sshKeyFile`: the known_hosts the server's key must be in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalSpec {
    /// A directory (a working tree); edits roll out at once.
    pub path: PathBuf,
    /// Default `clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters_dir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenSpec {
    /// Agents and the operator API, over TLS. Default `127.0.0.1:7443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<String>,
    /// Webhooks, `/healthz`, `/readyz` and `/metrics`, plain HTTP. Default `127.0.0.1:7080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// Webhook secrets, each a file; a provider without one has no route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhooksSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitea_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_secret_file: Option<PathBuf>,
}

/// The defaults: a local trial on loopback.
pub const DEFAULT_AGENTS_LISTEN: &str = "127.0.0.1:7443";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7080";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/drover";
pub const DEFAULT_CLUSTERS_DIR: &str = "clusters";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest poll interval accepted: webhooks are for sooner.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreSpec {
    /// `file:///absolute/path` or `s3://bucket[/prefix]`.
    pub url: String,
    /// For S3-compatible servers: the endpoint URL, e.g. `http://127.0.0.1:3900`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible servers want.
    #[serde(default)]
    pub path_style: bool,
    /// Allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,
}

/// Where S3 credentials come from: files (one value each, e.g. mounted secrets) or the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub from_environment: bool,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub source: Option<SourceConfig>,
    pub listen_agents: SocketAddr,
    pub listen_http: SocketAddr,
    pub state_dir: PathBuf,
    pub tls_names: Vec<String>,
    pub webhooks: WebhooksSpec,
    pub stores: BTreeMap<StoreName, Store>,
    pub verdicts: Verdicts,
    pub require_approved_plan: RequireApproval,
    /// The durable state in etcd; `None`: in the state directory.
    pub state_etcd: Option<crate::store::etcd::EtcdStateConfig>,
    /// How this daemon presents itself to the others sharing the state in etcd.
    pub peer: PeerConfig,
}

/// The clusters that need an approved plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RequireApproval {
    #[default]
    None,
    Clusters(BTreeSet<String>),
    Every,
}

impl RequireApproval {
    pub fn applies_to(&self, cluster: &str) -> bool {
        match self {
            RequireApproval::None => false,
            RequireApproval::Clusters(names) => names.contains(cluster),
            RequireApproval::Every => true,
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> DaemonConfig {
        DaemonConfig {
            source: None,
            listen_agents: DEFAULT_AGENTS_LISTEN.parse().expect("a socket address"),
            listen_http: DEFAULT_HTTP_LISTEN.parse().expect("a socket address"),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
            webhooks: WebhooksSpec::default(),
            stores: BTreeMap::new(),
            verdicts: Verdicts::default(),
            require_approved_plan: RequireApproval::None,
            state_etcd: None,
            peer: PeerConfig::default(),
        }
    }
}

/// Where the desired state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    Git(GitSource),
    Local { path: PathBuf, clusters_dir: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub reference: GitReference,
    pub subdir: Option<String>,
    pub clusters_dir: String,
    pub poll_interval: Duration,
    pub auth: GitCredentials,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitReference {
    Branch(String),
    Tag(String),
    Commit(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitCredentials {
    None,
    Token {
        username: String,
        file: PathBuf,
    },
    SshKey {
        username: String,
        key_file: PathBuf,
        known_hosts: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// Snapshots under a local directory.
    File {
        root: PathBuf,
    },
    S3(S3Store),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Store {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub endpoint: Option<url::Url>,
    pub region: String,
    pub path_style: bool,
    pub allow_http: bool,
    pub credentials: Credentials,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Files {
        access_key_id: PathBuf,
        secret_access_key: PathBuf,
    },
    Environment,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("invalid daemon configuration")]
    Invalid { diagnostics: Vec<Diagnostic> },
}

impl ConfigError {
    /// Every problem as `file:line:column: error: message`. The file's lines are never shown:
    /// the configuration sits beside credentials, and a value pasted into the wrong field must
    /// not reach a log.
    pub fn render(&self) -> String {
        match self {
            ConfigError::Load(e) => format!("error: {e}\n"),
            ConfigError::Invalid { diagnostics } => {
                diagnostics.iter().map(|d| d.render(None)).collect()
            }
        }
    }
}

/// Reads and checks a daemon configuration file.
pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let bytes = read_limited(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&path.display().to_string(), bytes)
}

/// Checks a daemon configuration from its bytes; `name` is how diagnostics refer to it.
pub fn parse(name: &str, bytes: Vec<u8>) -> Result<DaemonConfig, ConfigError> {
    debug_assert!(bytes.len() as u64 <= MAX_FILE_BYTES + 1);
    let file = SourceFile {
        path: name.to_string(),
        bytes,
    };
    let mut diagnostics = Vec::new();
    let parsed = parse_documents::<DaemonConfigFile>(&file, &mut diagnostics);
    let mut config = None;
    match parsed.documents.as_slice() {
        [(doc, index)] => {
            let mut c = Checker::new(name, index, &mut diagnostics);
            config = check(doc, &mut c);
        }
        [] => {}
        [_, (_, index), ..] => {
            let mut c = Checker::new(name, index, &mut diagnostics);
            c.at("", crate::model::diagnostic::Problem::ConfigDocuments);
        }
    }
    diagnostics.sort_by(|a, b| a.location.cmp(&b.location));
    let errors = diagnostics.iter().any(|d| d.severity() == Severity::Error);
    match config {
        Some(config) if !errors => Ok(config),
        _ => Err(ConfigError::Invalid { diagnostics }),
    }
}

fn check(doc: &DaemonConfigFile, c: &mut Checker<'_>) -> Option<DaemonConfig> {
    use crate::model::diagnostic::Problem;
    if doc.api_version != crate::model::spec::API_VERSION {
        let found = doc.api_version.clone();
        let expected = crate::model::spec::API_VERSION;
        c.at(
            "apiVersion",
            Problem::UnsupportedApiVersion { found, expected },
        );
    }
    if doc.kind != KIND {
        let found = doc.kind.clone();
        c.at("kind", Problem::UnsupportedConfigKind { found });
    }
    let mut stores = BTreeMap::new();
    for (name, spec) in &doc.stores {
        let at = format!("stores.{name}");
        let parsed_name = match StoreName::parse(name) {
            Ok(n) => Some(n),
            Err(reason) => {
                let value = name.clone();
                let what = StoreName::WHAT;
                c.at_key(
                    &at,
                    Problem::InvalidName {
                        what,
                        value,
                        reason,
                    },
                );
                None
            }
        };
        let store = check_store(&at, spec, c);
        if let (Some(n), Some(s)) = (parsed_name, store) {
            stores.insert(n, s);
        }
    }
    let source = doc.source.as_ref().and_then(|s| check_source(s, c));
    let verdicts = check_verdicts(&doc.verdicts, c);
    let require_approved_plan = check_approvals(&doc.require_approved_plan, c);
    let state_etcd = doc
        .state
        .as_ref()
        .and_then(|s| check_state_etcd(&s.etcd, c));
    let peer = doc
        .state
        .as_ref()
        .map(|s| check_peer(&s.etcd, c))
        .unwrap_or_default();
    let listen = |at: &str, value: &Option<String>, default: &str, c: &mut Checker<'_>| {
        let text = value.as_deref().unwrap_or(default);
        text.parse::<SocketAddr>().ok().or_else(|| {
            let reason = "a listen address is ip:port, e.g. 127.0.0.1:7443 or [::1]:7443";
            c.at(at, Problem::InvalidDaemonSetting { reason });
            None
        })
    };
    let listen_agents = listen(
        "listen.agents",
        &doc.listen.agents,
        DEFAULT_AGENTS_LISTEN,
        c,
    );
    let listen_http = listen("listen.http", &doc.listen.http, DEFAULT_HTTP_LISTEN, c);
    let defaults = DaemonConfig::default();
    let state_dir = doc.state_dir.clone().unwrap_or(defaults.state_dir);
    if !state_dir.is_absolute() {
        let reason = "stateDir must be an absolute path";
        c.at("stateDir", Problem::InvalidDaemonSetting { reason });
    }
    let tls_names = if doc.tls_names.is_empty() {
        defaults.tls_names
    } else {
        doc.tls_names.clone()
    };
    (c.errors == 0).then(|| DaemonConfig {
        source: doc.source.as_ref().and(source),
        listen_agents: listen_agents.expect("checked"),
        listen_http: listen_http.expect("checked"),
        state_dir,
        tls_names,
        webhooks: doc.webhooks.clone(),
        stores,
        verdicts,
        require_approved_plan,
        state_etcd,
        peer,
    })
}

/// This daemon among several sharing the state (`state.etcd.daemonId`, `.advertise`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerConfig {
    pub daemon_id: Option<String>,
    pub advertise: Option<String>,
}

fn check_peer(spec: &EtcdStateSpec, c: &mut Checker<'_>) -> PeerConfig {
    use crate::model::diagnostic::Problem;
    let bad = |reason| Problem::InvalidDaemonSetting { reason };
    if let Some(id) = &spec.daemon_id {
        let fine = !id.is_empty() && id.len() <= 128 && id.chars().all(|ch| ch.is_ascii_graphic());
        if !fine {
            c.at(
                "state.etcd.daemonId",
                bad("1 to 128 visible ASCII characters"),
            );
        }
    }
    if let Some(url) = &spec.advertise {
        let fine = url::Url::parse(url)
            .ok()
            .is_some_and(|u| u.scheme() == "wss" && u.host_str().is_some());
        if !fine {
            c.at("state.etcd.advertise", bad("a wss://host:port URL"));
        }
    }
    PeerConfig {
        daemon_id: spec.daemon_id.clone(),
        advertise: spec.advertise.clone(),
    }
}

fn check_state_etcd(
    spec: &EtcdStateSpec,
    c: &mut Checker<'_>,
) -> Option<crate::store::etcd::EtcdStateConfig> {
    use crate::model::diagnostic::Problem;
    use crate::store::etcd::{EtcdStateConfig, EtcdTls};
    let bad = |reason| Problem::InvalidDaemonSetting { reason };
    let mut ok = true;
    if spec.endpoints.is_empty() {
        c.at("state.etcd.endpoints", bad("at least one client URL"));
        ok = false;
    }
    let mut https = false;
    for (i, text) in spec.endpoints.iter().enumerate() {
        let url = url::Url::parse(text).ok().filter(|u| {
            u.host_str().is_some()
                && u.port().is_some()
                && matches!(u.path(), "" | "/")
                && match u.scheme() {
                    "https" => true,
                    "http" => is_loopback(u),
                    _ => false,
                }
        });
        match url {
            Some(u) => https |= u.scheme() == "https",
            None => {
                let reason = "https://host:port (plain http only to a loopback address)";
                c.at(&format!("state.etcd.endpoints[{i}]"), bad(reason));
                ok = false;
            }
        }
    }
    let tls = match (&spec.ca_file, &spec.cert_file, &spec.key_file) {
        (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
            ca_file: ca.clone(),
            cert_file: cert.clone(),
            key_file: key.clone(),
        }),
        (None, None, None) if !https => None,
        _ => {
            let reason = "https endpoints need caFile, certFile and keyFile, all three";
            c.at("state.etcd", bad(reason));
            ok = false;
            None
        }
    };
    let prefix = spec.prefix.clone().unwrap_or_else(|| "/drover/".into());
    if !(prefix.starts_with('/') && prefix.ends_with('/') && prefix.len() > 1) {
        c.at(
            "state.etcd.prefix",
            bad("a key prefix that starts and ends with /"),
        );
        ok = false;
    }
    ok.then(|| EtcdStateConfig {
        endpoints: spec.endpoints.clone(),
        tls,
        prefix,
        encryption_key_file: spec.encryption_key_file.clone(),
    })
}

fn check_approvals(names: &[String], c: &mut Checker<'_>) -> RequireApproval {
    use crate::model::diagnostic::Problem;
    if names.iter().any(|n| n == "*") {
        return RequireApproval::Every;
    }
    for (i, name) in names.iter().enumerate() {
        if crate::model::ClusterName::parse(name).is_err() {
            let reason = "a cluster name, or \"*\" for every cluster";
            c.at(
                &format!("requireApprovedPlan[{i}]"),
                Problem::InvalidDaemonSetting { reason },
            );
        }
    }
    match names.is_empty() {
        true => RequireApproval::None,
        false => RequireApproval::Clusters(names.iter().cloned().collect()),
    }
}

fn check_verdicts(v: &VerdictsSpec, c: &mut Checker<'_>) -> Verdicts {
    use crate::model::diagnostic::Problem;
    let bad = |reason| Problem::InvalidDaemonSetting { reason };
    let dashboard_url = v.dashboard_url.as_deref().and_then(|text| {
        let url = url::Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if url.is_none() {
            c.at("verdicts.dashboardUrl", bad("an http or https URL"));
        }
        url
    });
    let forge = v.forge.as_ref().and_then(|f| {
        let api = url::Url::parse(&f.api_url)
            .ok()
            .filter(|u| match u.scheme() {
                "https" => u.host_str().is_some(),
                "http" => is_loopback(u),
                _ => false,
            });
        if api.is_none() {
            let reason = "an https URL (plain http only to a loopback address)";
            c.at("verdicts.forge.apiUrl", bad(reason));
        }
        let parts: Vec<&str> = f.repository.split('/').collect();
        let well_formed = parts
            .iter()
            .all(|p| !p.is_empty() && !p.contains(['?', '#', '%']))
            && match f.kind {
                ForgeKind::Github | ForgeKind::Gitea => parts.len() == 2,
                ForgeKind::Gitlab => parts.len() >= 2,
            };
        if !well_formed {
            let reason = "owner/name (on GitLab, the project's path: group/.../name)";
            c.at("verdicts.forge.repository", bad(reason));
        }
        Some(Forge {
            kind: f.kind,
            api: api?,
            repository: well_formed.then(|| f.repository.clone())?,
            token_file: f.token_file.clone(),
        })
    });
    Verdicts {
        forge,
        dashboard_url,
        notes: v.notes,
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

fn check_source(s: &SourceSpec, c: &mut Checker<'_>) -> Option<SourceConfig> {
    use crate::model::diagnostic::Problem;
    let bad = |reason| Problem::InvalidDaemonSetting { reason };
    match (&s.git, &s.local) {
        (Some(git), None) => check_git(git, c).map(SourceConfig::Git),
        (None, Some(local)) => Some(SourceConfig::Local {
            path: local.path.clone(),
            clusters_dir: local
                .clusters_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_CLUSTERS_DIR.into()),
        }),
        _ => {
            c.at_key(
                "source",
                bad("give exactly one of source.git and source.local"),
            );
            None
        }
    }
}

fn check_git(g: &GitSpec, c: &mut Checker<'_>) -> Option<GitSource> {
    use crate::model::diagnostic::Problem;
    let bad = |reason| Problem::InvalidDaemonSetting { reason };
    let reference = match (&g.branch, &g.tag, &g.commit) {
        (None, None, None) => Some(GitReference::Branch("main".into())),
        (Some(b), None, None) => Some(GitReference::Branch(b.clone())),
        (None, Some(t), None) => Some(GitReference::Tag(t.clone())),
        (None, None, Some(id)) if id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(GitReference::Commit(id.to_ascii_lowercase()))
        }
        (None, None, Some(_)) => {
            c.at(
                "source.git.commit",
                bad("a commit is its full 40-digit hex id"),
            );
            None
        }
        _ => {
            c.at_key(
                "source.git",
                bad("give at most one of branch, tag and commit"),
            );
            None
        }
    };
    let poll_interval = match g.poll_interval.as_deref().map(humantime::parse_duration) {
        None => Some(DEFAULT_POLL_INTERVAL),
        Some(Ok(d)) if d >= MIN_POLL_INTERVAL => Some(d),
        Some(_) => {
            let reason = "pollInterval is a duration of at least 5s, e.g. 60s or 5m";
            c.at("source.git.pollInterval", bad(reason));
            None
        }
    };
    let auth = match &g.auth {
        None => Some(GitCredentials::None),
        Some(a) => check_git_auth(a, c),
    };
    Some(GitSource {
        url: g.url.clone(),
        reference: reference?,
        subdir: g.subdir.clone(),
        clusters_dir: g
            .clusters_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_CLUSTERS_DIR.into()),
        poll_interval: poll_interval?,
        auth: auth?,
    })
}

fn check_git_auth(a: &GitAuthSpec, c: &mut Checker<'_>) -> Option<GitCredentials> {
    use crate::model::diagnostic::Problem;
    let bad = |reason| Problem::InvalidDaemonSetting { reason };
    match (&a.token_file, &a.ssh_key_file, &a.known_hosts_file) {
        (Some(file), None, None) => Some(GitCredentials::Token {
            username: a.username.clone().unwrap_or_else(|| "drover".into()),
            file: file.clone(),
        }),
        (None, Some(key), Some(known)) => Some(GitCredentials::SshKey {
            username: a.username.clone().unwrap_or_else(|| "git".into()),
            key_file: key.clone(),
            known_hosts: known.clone(),
        }),
        _ => {
            let reason = "give tokenFile, or sshKeyFile with knownHostsFile";
            c.at_key("source.git.auth", bad(reason));
            None
        }
    }
}

fn check_store(at: &str, s: &StoreSpec, c: &mut Checker<'_>) -> Option<Store> {
    use crate::model::diagnostic::Problem;
    let bad = |reason: &'static str| Problem::InvalidStore { reason };
    let url = match url::Url::parse(&s.url) {
        Ok(u) => u,
        Err(_) => {
            c.at(&format!("{at}.url"), bad("not a URL"));
            return None;
        }
    };
    match url.scheme() {
        "file" => {
            let s3_only = s.endpoint.is_some()
                || s.region.is_some()
                || s.credentials.is_some()
                || s.path_style
                || s.allow_http;
            if s3_only {
                c.at_key(at, bad("endpoint, region, credentials, pathStyle and allowHttp are for s3:// stores"));
            }
            if url.host_str().is_some_and(|h| !h.is_empty()) || url.path().len() <= 1 {
                c.at(
                    &format!("{at}.url"),
                    bad("a file store is file:///absolute/path"),
                );
                return None;
            }
            let root = url.to_file_path().ok()?;
            Some(Store::File { root })
        }
        "s3" => check_s3(at, &url, s, c).map(Store::S3),
        _ => {
            c.at(&format!("{at}.url"), bad("the scheme must be file or s3"));
            None
        }
    }
}

fn check_s3(at: &str, url: &url::Url, s: &StoreSpec, c: &mut Checker<'_>) -> Option<S3Store> {
    use crate::model::diagnostic::Problem;
    let bad = |reason: &'static str| Problem::InvalidStore { reason };
    let bucket = url.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        c.at(
            &format!("{at}.url"),
            bad("an s3 store is s3://bucket[/prefix]"),
        );
    }
    let endpoint = match s.endpoint.as_deref().map(url::Url::parse) {
        None => None,
        Some(Ok(e)) if e.scheme() == "https" || (e.scheme() == "http" && s.allow_http) => Some(e),
        Some(Ok(e)) if e.scheme() == "http" => {
            c.at(
                &format!("{at}.endpoint"),
                bad("a plain http endpoint needs allowHttp: true"),
            );
            None
        }
        Some(_) => {
            c.at(
                &format!("{at}.endpoint"),
                bad("the endpoint must be an http(s) URL"),
            );
            None
        }
    };
    let credentials = match &s.credentials {
        Some(CredentialsSpec {
            access_key_id_file: Some(id),
            secret_access_key_file: Some(secret),
            from_environment: false,
        }) => Some(Credentials::Files {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
        }),
        Some(CredentialsSpec {
            access_key_id_file: None,
            secret_access_key_file: None,
            from_environment: true,
        }) => Some(Credentials::Environment),
        _ => {
            let reason = "give credentials: both accessKeyIdFile and secretAccessKeyFile, or fromEnvironment: true";
            c.at_key(&format!("{at}.credentials"), bad(reason));
            None
        }
    };
    Some(S3Store {
        bucket,
        prefix: url.path().trim_matches('/').to_string(),
        endpoint,
        region: s.region.clone().unwrap_or_else(|| "us-east-1".to_string()),
        path_style: s.path_style,
        allow_http: s.allow_http,
        credentials: credentials?,
    })
}
