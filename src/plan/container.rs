//! What each node should run: the etcd member and the components of its roles, as container
//! specs with their templates rendered, plus the files they need. The fields that decide whether
//! a container is recreated are an explicit, versioned list (`SPEC_FIELDS`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::spec::{NetworkMode, PidMode, RestartPolicy};
use crate::model::template::{Renderer, Scope};
use crate::model::{Cluster, Node, Role};

/// Version of the field list below; part of every spec hash, so changing the list changes
/// every hash on purpose.
pub const SPEC_VERSION: u32 = 1;
/// The fields compared to decide a recreate, in the order they are reported.
pub const SPEC_FIELDS: [&str; 12] = [
    "image",
    "command",
    "args",
    "env",
    "binds",
    "networkMode",
    "pidMode",
    "privileged",
    "restartPolicy",
    "user",
    "labels",
    "files",
];

/// The name drover's etcd member container carries in each node's plan.
pub const ETCD_COMPONENT: &str = "etcd";

/// One container as the plan wants it. Field names match `SPEC_FIELDS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub binds: Vec<String>,
    pub network_mode: NetworkMode,
    pub pid_mode: Option<PidMode>,
    pub privileged: bool,
    pub restart_policy: RestartPolicy,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The files this container needs, by path: the sha256 of their content and mode.
    pub files: BTreeMap<String, String>,
}

impl ContainerSpec {
    /// The fields of `SPEC_FIELDS` in which `self` and `other` differ.
    pub fn changed_fields(&self, other: &ContainerSpec) -> Vec<&'static str> {
        let same = [
            self.image == other.image,
            self.command == other.command,
            self.args == other.args,
            self.env == other.env,
            self.binds == other.binds,
            self.network_mode == other.network_mode,
            self.pid_mode == other.pid_mode,
            self.privileged == other.privileged,
            self.restart_policy == other.restart_policy,
            self.user == other.user,
            self.labels == other.labels,
            self.files == other.files,
        ];
        SPEC_FIELDS
            .iter()
            .zip(same)
            .filter(|(_, same)| !same)
            .map(|(field, _)| *field)
            .collect()
    }

    /// A stable hash of the spec, versioned by `SPEC_VERSION`.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(&(SPEC_VERSION, self)).expect("a spec is always JSON");
        hex::encode(&Sha256::digest(json)[..8])
    }
}

/// A file a node should hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileSpec {
    pub mode: u32,
    /// sha256 of content and mode.
    pub digest: String,
    pub content: String,
}

/// How the agent tells that a component is healthy, rendered for its node. Not part of the
/// container spec: changing a probe never recreates a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Probe {
    /// GET answering 2xx or 3xx.
    Http(String),
    /// `host:port` accepting a connection.
    Tcp(String),
    /// A command in the container exiting 0.
    Exec(Vec<String>),
}

/// Probe timing when the file gives none.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything one node should run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeSpec {
    /// By component name (`etcd` for the etcd member).
    pub containers: BTreeMap<String, ContainerSpec>,
    /// Health checks by component name.
    pub health: BTreeMap<String, HealthCheck>,
    /// Which role each container comes from.
    pub roles: BTreeMap<String, Role>,
    pub files: BTreeMap<String, FileSpec>,
}

/// The container name for a component on a node. Names are DNS labels without dots, so the
/// dotted form is unambiguous.
pub fn container_name(cluster: &str, node: &str, component: &str) -> String {
    format!("drover.{cluster}.{node}.{component}")
}

/// What every node of `cluster` should run. Templates are rendered with each node's facts;
/// a cluster that passed validation always renders.
pub fn desired_nodes(cluster: &Cluster) -> BTreeMap<String, NodeSpec> {
    let renderer = Renderer::default();
    let scope = Scope::new(cluster);
    cluster
        .nodes
        .iter()
        .map(|node| {
            let spec = node_spec(cluster, node, &renderer, &scope);
            (node.name.to_string(), spec)
        })
        .collect()
}

fn node_spec(cluster: &Cluster, node: &Node, renderer: &Renderer, scope: &Scope) -> NodeSpec {
    let mut spec = NodeSpec::default();
    if node.has_role(Role::Etcd) {
        spec.containers
            .insert(ETCD_COMPONENT.into(), etcd_member(cluster, node));
        spec.roles.insert(ETCD_COMPONENT.into(), Role::Etcd);
    }
    let ctx = scope.node(node);
    for (role, component) in cluster.components_of(node) {
        let rendered = renderer
            .component(component, &ctx)
            .expect("validated clusters render on every node");
        let mut files = BTreeMap::new();
        for f in &rendered.files {
            let mode = f
                .mode
                .as_deref()
                .and_then(crate::model::validate::parse_mode)
                .unwrap_or(0o644);
            let digest = file_digest(&f.content, mode);
            files.insert(f.path.clone(), digest.clone());
            spec.files.insert(
                f.path.clone(),
                FileSpec {
                    mode,
                    digest,
                    content: f.content.clone(),
                },
            );
        }
        let container = ContainerSpec {
            image: rendered.image,
            command: rendered.command,
            args: rendered.args,
            env: rendered.env,
            binds: rendered.binds,
            network_mode: rendered.network_mode.unwrap_or(NetworkMode::Host),
            pid_mode: rendered.pid_mode,
            privileged: rendered.privileged,
            restart_policy: rendered.restart_policy.unwrap_or(RestartPolicy::Always),
            user: rendered.user,
            labels: rendered.labels,
            files,
        };
        let name = component.name.to_string();
        if let Some(h) = &rendered.health {
            let probe = match (&h.http, &h.tcp, &h.exec) {
                (Some(url), _, _) => Some(Probe::Http(url.clone())),
                (_, Some(addr), _) => Some(Probe::Tcp(addr.clone())),
                (_, _, Some(cmd)) => Some(Probe::Exec(cmd.clone())),
                _ => None,
            };
            let duration = |d: &Option<String>, default| {
                d.as_deref()
                    .and_then(|d| humantime::parse_duration(d).ok())
                    .unwrap_or(default)
            };
            if let Some(probe) = probe {
                let check = HealthCheck {
                    probe,
                    interval: duration(&h.interval, DEFAULT_PROBE_INTERVAL),
                    timeout: duration(&h.timeout, DEFAULT_PROBE_TIMEOUT),
                };
                spec.health.insert(name.clone(), check);
            }
        }
        spec.roles.insert(name.clone(), role);
        spec.containers.insert(name, container);
    }
    spec
}

fn file_digest(content: &str, mode: u32) -> String {
    let mut h = Sha256::new();
    h.update(format!("{mode:o}\n"));
    h.update(content);
    hex::encode(&h.finalize()[..8])
}

/// The URL scheme of etcd's client or peer listener: https when its certificate is configured.
fn scheme(cluster: &Cluster, cert_flag: &str) -> &'static str {
    if cluster.etcd.extra_args.contains_key(cert_flag) {
        "https"
    } else {
        "http"
    }
}

/// The peer URL of an etcd member, as `--initial-cluster` lists it.
pub fn peer_url(cluster: &Cluster, node: &Node) -> String {
    format!(
        "{}://{}:{}",
        scheme(cluster, "peer-cert-file"),
        node.internal_address,
        cluster.etcd.peer_port
    )
}

/// The etcd member container. Flags read only when a member bootstraps (`--initial-cluster`,
/// `--initial-cluster-state`) are not part of the spec: they travel on the step that starts the
/// member, so a membership change never recreates the other members.
fn etcd_member(cluster: &Cluster, node: &Node) -> ContainerSpec {
    let client = format!(
        "{}://{}:{}",
        scheme(cluster, "cert-file"),
        node.address,
        cluster.etcd.client_port
    );
    let peer = peer_url(cluster, node);
    let mut args = vec![
        format!("--name={}", node.name),
        "--data-dir=/var/lib/etcd".to_string(),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster-token={}", cluster.name),
    ];
    args.extend(
        cluster
            .etcd
            .extra_args
            .iter()
            .map(|(k, v)| format!("--{k}={v}")),
    );
    ContainerSpec {
        image: cluster.etcd.image.clone(),
        command: Some(vec!["etcd".into()]),
        args,
        env: BTreeMap::new(),
        binds: vec![format!(
            "/var/lib/drover/{}/etcd:/var/lib/etcd",
            cluster.name
        )],
        network_mode: NetworkMode::Host,
        pid_mode: None,
        privileged: false,
        restart_policy: RestartPolicy::Always,
        user: None,
        labels: BTreeMap::new(),
        files: BTreeMap::new(),
    }
}
