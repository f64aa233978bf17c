//! What each node should run: the etcd member and the components of its roles, built as the
//! node plan agents receive (`nodeplan::NodeSpec`), with templates rendered, plus the files they
//! need.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::spec::{self, HealthSpec};
use crate::model::template::{RenderedComponent, Renderer, Scope};
use crate::model::{Cluster, Component, Node, Role};
use crate::nodeplan::{
    ContainerSpec, FileSpec, HealthCheck, NetworkMode, NodeRole, NodeSpec, PidMode, Probe,
    RestartPolicy, ETCD_COMPONENT,
};

/// Probe timing when the file gives none.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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
        spec.roles.insert(ETCD_COMPONENT.into(), NodeRole::Etcd);
        spec.health
            .insert(ETCD_COMPONENT.into(), etcd_health(cluster, node));
        spec.etcd_client_url = Some(client_url(cluster, node));
    }
    let ctx = scope.node(node);
    for (role, component) in cluster.components_of(node) {
        let rendered = renderer
            .component(component, &ctx)
            .expect("validated clusters render on every node");
        add_component(&mut spec, role, component, rendered);
    }
    spec
}

/// Adds one rendered component to a node's plan: its container, files and health check.
fn add_component(spec: &mut NodeSpec, role: Role, component: &Component, r: RenderedComponent) {
    let mut files = BTreeMap::new();
    for f in r.files {
        let file = FileSpec::new(f.content, f.mode);
        files.insert(f.path.clone(), file.digest.clone());
        spec.files.insert(f.path, file);
    }
    let name = component.name.to_string();
    if let Some(check) = r.spec.health.as_ref().and_then(health_check) {
        spec.health.insert(name.clone(), check);
    }
    let c = r.spec;
    let container = ContainerSpec {
        image: component.image.clone(),
        command: c.command,
        args: c.args,
        env: c.env,
        binds: c.binds,
        network_mode: c.network_mode.map_or(NetworkMode::Host, network_mode),
        pid_mode: c.pid_mode.map(|spec::PidMode::Host| PidMode::Host),
        privileged: c.privileged,
        restart_policy: c
            .restart_policy
            .map_or(RestartPolicy::Always, restart_policy),
        user: c.user,
        labels: c.labels,
        files,
    };
    spec.roles.insert(name.clone(), node_role(role));
    spec.containers.insert(name, container);
}

fn health_check(h: &HealthSpec) -> Option<HealthCheck> {
    let probe = match (&h.http, &h.tcp, &h.exec) {
        (Some(url), _, _) => Probe::Http(url.clone()),
        (_, Some(addr), _) => Probe::Tcp(addr.clone()),
        (_, _, Some(cmd)) => Probe::Exec(cmd.clone()),
        _ => return None,
    };
    let duration = |d: &Option<String>, default| {
        d.as_deref()
            .and_then(|d| humantime::parse_duration(d).ok())
            .unwrap_or(default)
    };
    Some(HealthCheck {
        probe,
        interval: duration(&h.interval, DEFAULT_PROBE_INTERVAL),
        timeout: duration(&h.timeout, DEFAULT_PROBE_TIMEOUT),
    })
}

fn network_mode(m: spec::NetworkMode) -> NetworkMode {
    match m {
        spec::NetworkMode::Host => NetworkMode::Host,
        spec::NetworkMode::None => NetworkMode::None,
        spec::NetworkMode::Bridge => NetworkMode::Bridge,
    }
}

fn restart_policy(p: spec::RestartPolicy) -> RestartPolicy {
    match p {
        spec::RestartPolicy::Always => RestartPolicy::Always,
        spec::RestartPolicy::UnlessStopped => RestartPolicy::UnlessStopped,
        spec::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
        spec::RestartPolicy::No => RestartPolicy::No,
    }
}

fn node_role(r: Role) -> NodeRole {
    match r {
        Role::Etcd => NodeRole::Etcd,
        Role::Controlplane => NodeRole::Controlplane,
        Role::Worker => NodeRole::Worker,
    }
}

/// How often a member's health is probed.
pub const ETCD_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Where the member's certificates are mounted inside its container.
const ETCD_PKI_MOUNT: &str = "/etc/etcd/pki";

/// The client URL of an etcd member: TLS only.
pub fn client_url(cluster: &Cluster, node: &Node) -> String {
    format!("https://{}:{}", node.address, cluster.etcd.client_port)
}

/// A member's health: the agent asks it over TLS with the node's client certificate.
fn etcd_health(cluster: &Cluster, node: &Node) -> HealthCheck {
    HealthCheck {
        probe: Probe::Etcd(client_url(cluster, node)),
        interval: ETCD_PROBE_INTERVAL,
        timeout: DEFAULT_PROBE_TIMEOUT,
    }
}

/// The peer URL of an etcd member, as `--initial-cluster` lists it: TLS only.
pub fn peer_url(cluster: &Cluster, node: &Node) -> String {
    format!(
        "https://{}:{}",
        node.internal_address, cluster.etcd.peer_port
    )
}

/// etcd's TLS flags: clients and peers present certificates of the cluster's CA.
fn tls_args() -> Vec<String> {
    use crate::nodeplan::{PKI_CA, PKI_PEER_CERT, PKI_PEER_KEY, PKI_SERVER_CERT, PKI_SERVER_KEY};
    let at = |file: &str| format!("{ETCD_PKI_MOUNT}/{file}");
    vec![
        format!("--cert-file={}", at(PKI_SERVER_CERT)),
        format!("--key-file={}", at(PKI_SERVER_KEY)),
        "--client-cert-auth=true".into(),
        format!("--trusted-ca-file={}", at(PKI_CA)),
        format!("--peer-cert-file={}", at(PKI_PEER_CERT)),
        format!("--peer-key-file={}", at(PKI_PEER_KEY)),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-trusted-ca-file={}", at(PKI_CA)),
    ]
}

/// The etcd member container. Flags read only when a member bootstraps (`--initial-cluster`,
/// `--initial-cluster-state`) are not part of the spec: they travel on the step that starts the
/// member, so a membership change never recreates the other members.
fn etcd_member(cluster: &Cluster, node: &Node) -> ContainerSpec {
    let client = client_url(cluster, node);
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
    args.extend(tls_args());
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
        binds: vec![
            format!(
                "{}:/var/lib/etcd",
                crate::model::etcd_data_dir(cluster.name.as_str())
            ),
            format!(
                "{}:{ETCD_PKI_MOUNT}:ro",
                crate::nodeplan::etcd_pki_dir(cluster.name.as_str())
            ),
        ],
        network_mode: NetworkMode::Host,
        pid_mode: None,
        privileged: false,
        restart_policy: RestartPolicy::Always,
        user: None,
        labels: BTreeMap::new(),
        files: BTreeMap::new(),
    }
}
