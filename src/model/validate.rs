//! Semantic checks of one cluster document: from what the file says (`spec::ClusterFile`) to a
//! checked `Cluster`, or to every problem found, each pointing at the text that causes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::time::Duration;

use super::diagnostic::Problem;
use super::document::Checker;
use super::names::{
    ClusterName, ComponentName, FileMode, ImageRef, NodeAddress, NodeName, RequestId, SnapshotId,
    StoreName,
};
use super::spec::{self, ClusterFile, IntOrPercent, Role};
use super::template::{RenderedComponent, Renderer, Scope};
use super::{
    Cluster, Component, ComponentFile, Etcd, MaxUnavailable, Node, RestoreRequest, Retention,
    Rollout, Schedule, SnapshotPolicy, SourceRef, ETCD_CLIENT_PORT, ETCD_PEER_PORT, MAX_NODE_ITEMS,
};

/// Shortest interval between two snapshots.
const MIN_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);
/// etcd flags drover derives from the cluster definition.
const RESERVED_ETCD_FLAGS: &[&str] = &[
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    // etcd serves clients and peers over TLS only, with certificates drover issues.
    "cert-file",
    "key-file",
    "client-cert-auth",
    "trusted-ca-file",
    "peer-cert-file",
    "peer-key-file",
    "peer-client-cert-auth",
    "peer-trusted-ca-file",
    "auto-tls",
    "peer-auto-tls",
];

/// Checks one parsed document; the cluster comes back only if no error was found in it.
pub(super) fn check(file: &ClusterFile, c: &mut Checker<'_>) -> Option<Cluster> {
    if file.api_version != spec::API_VERSION {
        let found = file.api_version.clone();
        let expected = spec::API_VERSION;
        c.at(
            "apiVersion",
            Problem::UnsupportedApiVersion { found, expected },
        );
    }
    if file.kind != spec::KIND {
        let found = file.kind.clone();
        c.at("kind", Problem::UnsupportedKind { found });
    }
    let name = c.name(
        "metadata.name",
        &file.metadata.name,
        ClusterName::WHAT,
        ClusterName::parse,
    );
    let spec = &file.spec;
    let nodes = check_nodes(&spec.nodes, c);
    let etcd = check_etcd(&spec.etcd, c);
    let components = check_components(&spec.components, &nodes, c);
    let rollout = check_rollout(spec.rollout.as_ref(), c);
    if c.errors > 0 {
        return None;
    }
    let cluster = Cluster {
        name: name?,
        source: SourceRef {
            file: c.file.to_string(),
            line: c.index.value("metadata.name").pos.line,
            digest: content_digest(file),
        },
        nodes,
        etcd: etcd?,
        components,
        rollout,
    };
    check_templates(&cluster, c);
    (c.errors == 0).then_some(cluster)
}

/// sha256 of a definition's canonical JSON.
fn content_digest(file: &ClusterFile) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(file).expect("a cluster file is always JSON");
    hex::encode(Sha256::digest(json))
}

/// Checks every node, and that there is an odd number of etcd nodes; returns the valid ones.
fn check_nodes(nodes: &[spec::NodeSpec], c: &mut Checker<'_>) -> Vec<Node> {
    let mut out = Vec::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<String, &str> = HashMap::new();
    let mut etcd = 0;
    for (i, n) in nodes.iter().enumerate() {
        let at = format!("spec.nodes[{i}]");
        let name = check_node_name(&at, i, n, &mut names, c);
        let (address, internal) = check_node_addresses(&at, n, &mut addresses, c);
        let roles = check_roles(&at, n, c);
        if roles.contains(&Role::Etcd) {
            etcd += 1;
        }
        check_labels(&format!("{at}.labels"), &n.labels, c);
        check_taints(&at, &n.taints, c);
        if let (Some(name), Some(address), Some(internal_address)) = (name, address, internal) {
            out.push(Node {
                name,
                address,
                internal_address,
                roles,
                labels: n.labels.clone(),
                taints: n.taints.clone(),
            });
        }
    }
    check_etcd_count(etcd, c);
    out
}

/// Parses node `i`'s name and reports it if an earlier node (in `names`) has it already.
fn check_node_name<'n>(
    at: &str,
    i: usize,
    n: &'n spec::NodeSpec,
    names: &mut HashMap<&'n str, usize>,
    c: &mut Checker<'_>,
) -> Option<NodeName> {
    let name = c.name(
        &format!("{at}.name"),
        &n.name,
        NodeName::WHAT,
        NodeName::parse,
    );
    let first = *names.entry(&n.name).or_insert(i);
    if first != i {
        let first_line = c.index.value(&format!("spec.nodes[{first}].name")).pos.line;
        let name = n.name.clone();
        c.at(
            &format!("{at}.name"),
            Problem::DuplicateNodeName { name, first_line },
        );
    }
    name
}

/// Parses a node's address and internal address (which defaults to the address), and reports
/// one another node (in `addresses`, by canonical form) uses already.
fn check_node_addresses<'n>(
    at: &str,
    n: &'n spec::NodeSpec,
    addresses: &mut HashMap<String, &'n str>,
    c: &mut Checker<'_>,
) -> (Option<NodeAddress>, Option<NodeAddress>) {
    let address = check_address(&format!("{at}.address"), &n.address, c);
    let internal = match &n.internal_address {
        Some(a) => check_address(&format!("{at}.internalAddress"), a, c),
        None => address.clone(),
    };
    // A node may use one address for both purposes, but never another node's.
    let mine: BTreeSet<String> = [&address, &internal]
        .into_iter()
        .flatten()
        .map(NodeAddress::canonical)
        .collect();
    for canon in mine {
        if let Some(other) = addresses.insert(canon.clone(), &n.name) {
            let field = if address.as_ref().map(NodeAddress::canonical) == Some(canon.clone()) {
                "address"
            } else {
                "internalAddress"
            };
            let problem = Problem::DuplicateAddress {
                address: canon,
                other: other.to_string(),
            };
            c.at(&format!("{at}.{field}"), problem);
        }
    }
    (address, internal)
}

/// A node's roles as a set; reports a node without roles and a role listed twice.
fn check_roles(at: &str, n: &spec::NodeSpec, c: &mut Checker<'_>) -> BTreeSet<Role> {
    let mut roles = BTreeSet::new();
    if n.roles.is_empty() {
        let node = n.name.clone();
        c.at(&format!("{at}.roles"), Problem::NoRoles { node });
    }
    for (j, role) in n.roles.iter().enumerate() {
        if !roles.insert(*role) {
            c.at(
                &format!("{at}.roles[{j}]"),
                Problem::DuplicateRole { role: *role },
            );
        }
    }
    roles
}

/// Checks each taint's key and value with the label rules.
fn check_taints(at: &str, taints: &[spec::TaintSpec], c: &mut Checker<'_>) {
    for (j, t) in taints.iter().enumerate() {
        let tp = format!("{at}.taints[{j}]");
        if let Err(reason) = check_label_key(&t.key) {
            let key = t.key.clone();
            c.at(&format!("{tp}.key"), Problem::InvalidLabel { key, reason });
        }
        if let Some(Err(reason)) = t.value.as_deref().map(check_label_value) {
            let key = t.key.clone();
            c.at(
                &format!("{tp}.value"),
                Problem::InvalidLabel { key, reason },
            );
        }
    }
}

/// etcd needs at least one member, and an even count tolerates no more failures than one fewer.
fn check_etcd_count(etcd: usize, c: &mut Checker<'_>) {
    match etcd {
        0 => c.at_key("spec.nodes", Problem::NoEtcdNode),
        n if n % 2 == 0 => c.at_key(
            "spec.nodes",
            Problem::EvenEtcdCount {
                count: n,
                fewer: n - 1,
            },
        ),
        _ => {}
    }
}

fn check_address(path: &str, value: &str, c: &mut Checker<'_>) -> Option<NodeAddress> {
    let parsed = NodeAddress::parse(value);
    if parsed.is_none() {
        let value = value.to_string();
        c.at(path, Problem::InvalidAddress { value });
    }
    parsed
}

fn check_etcd(e: &spec::EtcdSpec, c: &mut Checker<'_>) -> Option<Etcd> {
    let image = check_image("spec.etcd.image", &e.image, c);
    for name in e.extra_args.keys() {
        let path = format!("spec.etcd.extraArgs.{name}");
        let well_formed = !name.is_empty()
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !well_formed {
            let name = name.clone();
            c.at_key(&path, Problem::InvalidFlag { name });
        } else if RESERVED_ETCD_FLAGS.contains(&name.as_str()) {
            let name = name.clone();
            c.at_key(&path, Problem::ReservedFlag { name });
        }
    }
    let client_port = port(e.client_port, "spec.etcd.clientPort", ETCD_CLIENT_PORT, c);
    let peer_port = port(e.peer_port, "spec.etcd.peerPort", ETCD_PEER_PORT, c);
    if client_port == peer_port {
        let given = if e.peer_port.is_some() {
            "peerPort"
        } else {
            "clientPort"
        };
        c.at(&format!("spec.etcd.{given}"), Problem::PortClash);
    }
    let snapshots = e.snapshots.as_ref().and_then(|s| check_snapshots(s, c));
    let restore = e.restore.as_ref().and_then(|r| check_restore(r, c));
    let snapshots_ok = e.snapshots.is_none() || snapshots.is_some();
    let restore_ok = e.restore.is_none() || restore.is_some();
    let image = image?;
    (snapshots_ok && restore_ok).then(|| Etcd {
        image,
        extra_args: e.extra_args.clone(),
        client_port,
        peer_port,
        snapshots,
        restore,
    })
}

fn port(value: Option<u16>, path: &str, default: u16, c: &mut Checker<'_>) -> u16 {
    match value {
        Some(0) => {
            c.at(path, Problem::InvalidPort);
            default
        }
        Some(p) => p,
        None => default,
    }
}

fn check_snapshots(s: &spec::SnapshotSpec, c: &mut Checker<'_>) -> Option<SnapshotPolicy> {
    let at = "spec.etcd.snapshots";
    let schedule = match (&s.schedule, &s.every) {
        (Some(_), Some(_)) => {
            c.at_key(&format!("{at}.every"), Problem::ScheduleConflict);
            None
        }
        (None, None) => {
            c.at_key(at, Problem::ScheduleMissing);
            None
        }
        (Some(expr), None) => check_cron(&format!("{at}.schedule"), expr, c),
        (None, Some(every)) => check_interval(&format!("{at}.every"), every, c),
    };
    let store = c.name(
        &format!("{at}.store"),
        &s.store,
        StoreName::WHAT,
        StoreName::parse,
    );
    let retention = check_retention(&s.retention, c);
    let drill_every = match &s.drill_every {
        None => Some(None),
        Some(every) => match check_interval(&format!("{at}.drillEvery"), every, c)? {
            Schedule::Every(d) => Some(Some(d)),
            Schedule::Cron { .. } => None,
        },
    };
    Some(SnapshotPolicy {
        schedule: schedule?,
        store: store?,
        retention: retention?,
        drill_every: drill_every?,
    })
}

fn check_cron(path: &str, expr: &str, c: &mut Checker<'_>) -> Option<Schedule> {
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build();
    match parser.parse(expr) {
        Ok(cron) => Some(Schedule::Cron {
            expression: expr.to_string(),
            cron: Box::new(cron),
        }),
        Err(e) => {
            let problem = Problem::InvalidCron {
                value: expr.to_string(),
                reason: e.to_string(),
            };
            c.at(path, problem);
            None
        }
    }
}

fn check_interval(path: &str, every: &str, c: &mut Checker<'_>) -> Option<Schedule> {
    match humantime::parse_duration(every) {
        Ok(d) if d < MIN_SNAPSHOT_INTERVAL => {
            let value = every.to_string();
            c.at(path, Problem::IntervalTooShort { value, min: "1m" });
            None
        }
        Ok(d) => Some(Schedule::Every(d)),
        Err(e) => {
            let problem = Problem::InvalidInterval {
                value: every.to_string(),
                reason: e.to_string(),
            };
            c.at(path, problem);
            None
        }
    }
}

fn check_retention(r: &spec::RetentionSpec, c: &mut Checker<'_>) -> Option<Retention> {
    let at = "spec.etcd.snapshots.retention";
    let last = NonZeroU32::new(r.last);
    if last.is_none() {
        c.at(&format!("{at}.last"), Problem::RetentionLastZero);
    }
    let mut ok = last.is_some();
    let mut tier = |name: &'static str, v: Option<u32>| match v {
        Some(0) => {
            c.at(
                &format!("{at}.{name}"),
                Problem::RetentionTierZero { tier: name },
            );
            ok = false;
            None
        }
        v => v.and_then(NonZeroU32::new),
    };
    let hourly = tier("hourly", r.hourly);
    let daily = tier("daily", r.daily);
    let weekly = tier("weekly", r.weekly);
    ok.then(|| Retention {
        last: last.expect("checked above"),
        hourly,
        daily,
        weekly,
    })
}

fn check_restore(r: &spec::RestoreSpec, c: &mut Checker<'_>) -> Option<RestoreRequest> {
    let at = "spec.etcd.restore";
    let snapshot = SnapshotId::parse(&r.snapshot);
    if snapshot.is_none() {
        let value = r.snapshot.clone();
        c.at(
            &format!("{at}.snapshot"),
            Problem::InvalidSnapshotId { value },
        );
    }
    let request_id = RequestId::parse(&r.request_id);
    if request_id.is_none() {
        let value = r.request_id.clone();
        c.at(
            &format!("{at}.requestId"),
            Problem::InvalidRequestId { value },
        );
    }
    Some(RestoreRequest {
        snapshot: snapshot?,
        request_id: request_id?,
    })
}

fn check_components(
    by_role: &BTreeMap<Role, Vec<spec::ComponentSpec>>,
    nodes: &[Node],
    c: &mut Checker<'_>,
) -> BTreeMap<Role, Vec<Component>> {
    let mut out = BTreeMap::new();
    // Component name -> the first role defining it, to find clashes on nodes with both roles.
    let mut roles_of: BTreeMap<&str, Vec<(Role, String)>> = BTreeMap::new();
    for (role, list) in by_role {
        let mut seen = BTreeSet::new();
        let mut checked = Vec::new();
        for (i, comp) in list.iter().enumerate() {
            let at = format!("spec.components.{role}[{i}]");
            let name_path = format!("{at}.name");
            if comp.name == "etcd" {
                c.at(&name_path, Problem::ReservedComponentName);
            }
            let name = c.name(
                &name_path,
                &comp.name,
                ComponentName::WHAT,
                ComponentName::parse,
            );
            if !seen.insert(comp.name.as_str()) {
                let problem = Problem::DuplicateComponent {
                    role: *role,
                    name: comp.name.clone(),
                };
                c.at(&name_path, problem);
            } else {
                roles_of
                    .entry(comp.name.as_str())
                    .or_default()
                    .push((*role, name_path));
            }
            let typed = check_component(&at, comp, c);
            if let (Some(name), Some((image, files))) = (name, typed) {
                checked.push(Component {
                    name,
                    image,
                    files,
                    spec: comp.clone(),
                });
            }
        }
        out.insert(*role, checked);
    }
    for (name, defs) in &roles_of {
        for pair in defs.windows(2) {
            let ((first, _), (second, path)) = (&pair[0], &pair[1]);
            let both = nodes
                .iter()
                .find(|n| n.has_role(*first) && n.has_role(*second));
            if let Some(node) = both {
                let problem = Problem::ComponentClash {
                    name: name.to_string(),
                    first: *first,
                    second: *second,
                    node: node.name.to_string(),
                };
                c.at(path, problem);
            }
        }
    }
    out
}

/// Checks one component; returns its image and files, typed, when both are well formed.
fn check_component(
    at: &str,
    comp: &spec::ComponentSpec,
    c: &mut Checker<'_>,
) -> Option<(ImageRef, Vec<ComponentFile>)> {
    let image = check_image(&format!("{at}.image"), &comp.image, c);
    for key in comp.env.keys() {
        let ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            let name = key.clone();
            c.at_key(&format!("{at}.env.{key}"), Problem::InvalidEnvName { name });
        }
    }
    for (i, bind) in comp.binds.iter().enumerate() {
        if let Err(reason) = check_bind(bind) {
            let value = bind.clone();
            c.at(
                &format!("{at}.binds[{i}]"),
                Problem::InvalidBind { value, reason },
            );
        }
    }
    let files = check_files(at, comp, c);
    for key in comp.labels.keys() {
        if key.starts_with("drover.dev/") {
            c.at_key(&format!("{at}.labels.{key}"), Problem::ReservedLabel);
        }
    }
    check_labels(&format!("{at}.labels"), &comp.labels, c);
    if let Some(h) = &comp.health {
        check_health(at, h, c);
    }
    Some((image?, files?))
}

fn check_health(at: &str, h: &spec::HealthSpec, c: &mut Checker<'_>) {
    let kinds = [h.http.is_some(), h.tcp.is_some(), h.exec.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        c.at_key(&format!("{at}.health"), Problem::ProbeKind);
    }
    if h.exec.as_ref().is_some_and(|e| e.is_empty()) {
        let problem = Problem::InvalidProbe {
            value: "[]".into(),
            reason: "the command is empty",
        };
        c.at(&format!("{at}.health.exec"), problem);
    }
    for (field, value) in [("interval", &h.interval), ("timeout", &h.timeout)] {
        let Some(value) = value else { continue };
        let reason = match humantime::parse_duration(value) {
            Ok(d) if d < Duration::from_millis(100) => "must be at least 100ms",
            Ok(d) if d > Duration::from_secs(3600) => "must be at most 1h",
            Ok(_) => continue,
            Err(_) => "expected a duration such as 10s",
        };
        let value = value.clone();
        c.at(
            &format!("{at}.health.{field}"),
            Problem::InvalidProbe { value, reason },
        );
    }
}

/// A component's files with their modes parsed (`FileMode::DEFAULT` when none is given); `None`
/// when any mode is malformed, which is reported.
fn check_files(
    at: &str,
    comp: &spec::ComponentSpec,
    c: &mut Checker<'_>,
) -> Option<Vec<ComponentFile>> {
    let mut files = Vec::with_capacity(comp.files.len());
    for (i, f) in comp.files.iter().enumerate() {
        if !is_clean_absolute(&f.path) {
            let value = f.path.clone();
            c.at(
                &format!("{at}.files[{i}].path"),
                Problem::InvalidFilePath { value },
            );
        }
        let mode = match &f.mode {
            None => Some(FileMode::DEFAULT),
            Some(mode) => {
                let parsed = FileMode::parse(mode);
                if parsed.is_none() {
                    let value = mode.clone();
                    c.at(
                        &format!("{at}.files[{i}].mode"),
                        Problem::InvalidFileMode { value },
                    );
                }
                parsed
            }
        };
        files.push(mode.map(|mode| ComponentFile {
            path: f.path.clone(),
            mode,
            content: f.content.clone(),
        }));
    }
    files.into_iter().collect()
}

/// Renders every component for every node that runs it, so template mistakes surface in
/// `drover validate` and not on a node. One diagnostic per field, naming the first failing node.
fn check_templates(cluster: &Cluster, c: &mut Checker<'_>) {
    let renderer = Renderer::default();
    let mut once = ReportOnce::default();
    let scope = Scope::new(cluster);
    for (n, node) in cluster.nodes.iter().enumerate() {
        let ctx = scope.node(node);
        let mut files: BTreeSet<String> = BTreeSet::new();
        check_node_items(cluster, n, node, c);
        for (role, comp) in cluster.components_of(node) {
            let at = component_path(cluster, role, comp);
            match renderer.component(comp, &ctx) {
                Ok(rendered) => check_rendered(&at, node, &rendered, &mut files, &mut once, c),
                Err(e) => once.at(c, format!("{at}.{}", e.field), || Problem::Template {
                    node: node.name.to_string(),
                    reason: e.error.to_string(),
                }),
            }
        }
    }
}

/// Reports at most one problem per path: the first node that fails a field names it.
#[derive(Default)]
struct ReportOnce {
    reported: BTreeSet<String>,
}

impl ReportOnce {
    /// Reports the problem `problem` makes at `path`, unless one was reported there already.
    fn at(&mut self, c: &mut Checker<'_>, path: String, problem: impl FnOnce() -> Problem) {
        if self.reported.insert(path.clone()) {
            c.at(&path, problem());
        }
    }
}

/// The path of a component in the file: `spec.components.<role>[<index>]`.
fn component_path(cluster: &Cluster, role: Role, comp: &Component) -> String {
    let index = cluster.components[&role]
        .iter()
        .position(|x| x.name == comp.name)
        .expect("component comes from this cluster");
    format!("spec.components.{role}[{index}]")
}

/// An agent reports one step per container and file; reports node `n` if it would need more
/// than `MAX_NODE_ITEMS`.
fn check_node_items(cluster: &Cluster, n: usize, node: &Node, c: &mut Checker<'_>) {
    let count = cluster.components_of(node).count()
        + usize::from(node.roles.contains(&Role::Etcd))
        + cluster
            .components_of(node)
            .map(|(_, comp)| comp.files.len())
            .sum::<usize>();
    if count > MAX_NODE_ITEMS {
        let problem = Problem::TooManySteps {
            node: node.name.to_string(),
            count,
            limit: MAX_NODE_ITEMS,
        };
        c.at(&format!("spec.nodes[{n}].name"), problem);
    }
}

/// Checks one component as rendered for `node`: file paths unique on the node (`files` holds
/// those seen so far), binds and health probes well formed.
fn check_rendered(
    at: &str,
    node: &Node,
    rendered: &RenderedComponent,
    files: &mut BTreeSet<String>,
    once: &mut ReportOnce,
    c: &mut Checker<'_>,
) {
    for (i, f) in rendered.files.iter().enumerate() {
        if !files.insert(f.path.clone()) {
            once.at(c, format!("{at}.files[{i}].path"), || {
                Problem::DuplicateFile {
                    path: f.path.clone(),
                    node: node.name.to_string(),
                }
            });
        }
    }
    for (i, b) in rendered.spec.binds.iter().enumerate() {
        if let Err(reason) = check_bind(b) {
            let value = b.clone();
            once.at(c, format!("{at}.binds[{i}]"), || Problem::InvalidBind {
                value,
                reason,
            });
        }
    }
    if let Some((field, value, reason)) = rendered.spec.health.as_ref().and_then(bad_probe) {
        let value = value.to_string();
        once.at(c, format!("{at}.health.{field}"), || {
            Problem::InvalidProbe { value, reason }
        });
    }
}

/// The first malformed probe of a health check: its field, its value and why.
fn bad_probe(h: &spec::HealthSpec) -> Option<(&'static str, &str, &'static str)> {
    h.http
        .as_deref()
        .and_then(|u| check_http_probe(u).err().map(|r| ("http", u, r)))
        .or_else(|| {
            h.tcp
                .as_deref()
                .and_then(|t| check_tcp_probe(t).err().map(|r| ("tcp", t, r)))
        })
}

fn check_rollout(r: Option<&spec::RolloutSpec>, c: &mut Checker<'_>) -> Rollout {
    let mut out = Rollout::default();
    let Some(r) = r else { return out };
    for (role, value) in &r.max_unavailable {
        let path = format!("spec.rollout.maxUnavailable.{role}");
        if *role == Role::Etcd {
            c.at_key(&path, Problem::EtcdMaxUnavailable);
            continue;
        }
        let parsed = match value {
            IntOrPercent::Int(n) => NonZeroU32::new(*n).map(MaxUnavailable::Count),
            IntOrPercent::Percent(s) => s
                .strip_suffix('%')
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| (1..=100).contains(p))
                .map(MaxUnavailable::Percent),
        };
        match parsed {
            Some(m) => {
                out.max_unavailable.insert(*role, m);
            }
            None => {
                let value = match value {
                    IntOrPercent::Int(n) => n.to_string(),
                    IntOrPercent::Percent(s) => s.clone(),
                };
                c.at(&path, Problem::InvalidMaxUnavailable { value });
            }
        }
    }
    out
}

fn check_image(path: &str, image: &str, c: &mut Checker<'_>) -> Option<ImageRef> {
    let parsed = ImageRef::parse(image);
    if parsed.is_none() {
        c.at(path, Problem::InvalidImage);
    }
    parsed
}

fn check_labels(at: &str, labels: &BTreeMap<String, String>, c: &mut Checker<'_>) {
    for (key, value) in labels {
        if let Err(reason) = check_label_key(key) {
            let key = key.clone();
            c.at_key(
                &format!("{at}.{key}"),
                Problem::InvalidLabel { key, reason },
            );
        } else if let Err(reason) = check_label_value(value) {
            let k = key.clone();
            c.at(
                &format!("{at}.{key}"),
                Problem::InvalidLabel { key: k, reason },
            );
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn check_label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.')
                .all(|l| super::names::check_dns_label(l).is_ok());
        if !ok {
            return Err("the prefix before '/' must be a lower-case DNS name");
        }
    }
    if name.is_empty() {
        return Err("the name is empty");
    }
    check_label_value(name)
}

fn check_label_value(v: &str) -> Result<(), &'static str> {
    if v.len() > 63 {
        return Err("longer than 63 characters");
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed");
    }
    let edge_ok = |b: Option<u8>| b.is_none_or(|b| b.is_ascii_alphanumeric());
    if !edge_ok(v.bytes().next()) || !edge_ok(v.bytes().last()) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

fn check_bind(bind: &str) -> Result<(), &'static str> {
    if bind.contains("{{") || bind.contains("{%") {
        return Ok(()); // checked again once rendered
    }
    let parts: Vec<&str> = bind.split(':').collect();
    let (src, dst) = match parts.as_slice() {
        [s, d] | [s, d, _] => (*s, *d),
        _ => return Err("expected host-path:container-path[:options]"),
    };
    if !is_clean_absolute(src) || !is_clean_absolute(dst) {
        return Err("both paths must be absolute and normalized");
    }
    if let [_, _, opts] = parts.as_slice() {
        const OPTS: &[&str] = &[
            "ro", "rw", "z", "Z", "shared", "rshared", "slave", "rslave", "private", "rprivate",
            "nocopy",
        ];
        if opts.is_empty() || !opts.split(',').all(|o| OPTS.contains(&o)) {
            return Err("options are a comma-separated list of ro, rw, z, Z and propagation modes");
        }
    }
    Ok(())
}

fn is_clean_absolute(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && !p.ends_with('/')
            && p[1..]
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\0')))
}

fn check_http_probe(u: &str) -> Result<(), &'static str> {
    match url::Url::parse(u) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(_) => Err("expected an http:// or https:// URL with a host"),
        Err(_) => Err("not a URL"),
    }
}

fn check_tcp_probe(t: &str) -> Result<(), &'static str> {
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err("expected host:port");
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if NodeAddress::parse(host).is_none() {
        return Err("the host is not an IP address or DNS name");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("the port must be between 1 and 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds() {
        assert!(check_bind("/var/lib/x:/data").is_ok());
        assert!(check_bind("/var/lib/x:/data:ro,z").is_ok());
        for bad in [
            "x:/data",
            "/a:b",
            "/a",
            "/a:/b:bogus",
            "/a/../b:/c",
            "/a:/b:",
        ] {
            assert!(check_bind(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probes() {
        assert!(check_http_probe("http://127.0.0.2:8080/healthz").is_ok());
        assert!(check_http_probe("ftp://x/").is_err());
        assert!(check_tcp_probe("127.0.0.2:2379").is_ok());
        assert!(check_tcp_probe("[::1]:2379").is_ok());
        assert!(check_tcp_probe("127.0.0.2").is_err());
        assert!(check_tcp_probe("127.0.0.2:0").is_err());
    }

    #[test]
    fn label_keys() {
        assert!(check_label_key("zone").is_ok());
        assert!(check_label_key("topology.kubernetes.io/zone").is_ok());
        assert!(check_label_key("Bad_Prefix/x").is_err());
        assert!(check_label_key("x/").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("-a").is_err());
    }
}
