//! The daemon's operator API: what it serves to `drover plan --server` and other tools, and
//! the operator token that guards it.
//!
//! - `GET /v1/nodes` (served by `server`) answers a `NodesDocument`: every node the daemon
//!   declares, with what its agent last reported. The document is versioned by
//!   `formatVersion`; readers ignore fields they do not know.
//! - Requests carry `Authorization: Bearer <operator token>`. `create_operator_token` makes a
//!   new token (replacing the previous one) and keeps only its hash in the state directory.

pub mod snapshots;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::protocol::{AppliedMark, ContainerState, StepReport};
use crate::secret::Secret;
use crate::state::StateError;
use crate::store::DurableState;

/// The version of `NodesDocument`.
pub const NODES_FORMAT_VERSION: u32 = 1;
/// The path of the nodes document.
pub const NODES_PATH: &str = "/v1/nodes";
/// Most bytes a client reads of a nodes document (about 20,000 nodes of ten containers).
pub const MAX_NODES_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

const OPERATOR_TOKEN: &str = "operator-token.json";

/// The version of `ClustersDocument`.
pub const CLUSTERS_FORMAT_VERSION: u32 = 1;
/// The path of the clusters document; `/v1/clusters/{name}` is one cluster, and a `POST` to
/// `/v1/clusters/{name}/reconcile` asks for a reconcile now.
pub const CLUSTERS_PATH: &str = "/v1/clusters";
/// The daemons sharing the state (`SharingView`).
pub const DAEMONS_PATH: &str = "/v1/daemons";

/// What `drover status` shows of the daemons sharing the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharingView {
    /// This daemon's id.
    pub me: String,
    /// The live daemons, by id, with the URL their agents reach them at.
    pub daemons: Vec<DaemonView>,
    /// Each owned cluster's owner.
    pub owners: BTreeMap<String, String>,
    /// Whether a membership change waits to settle before clusters move.
    pub settling: bool,
    /// This daemon's lease (hex, as etcdctl prints it) and its time to live in seconds.
    pub lease: String,
    pub lease_ttl_seconds: u64,
}

/// One of the daemons sharing the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonView {
    pub id: String,
    /// Where its agents reach it.
    pub agents_url: String,
    /// It has not renewed its lease for a few seconds: most likely gone. Its clusters' agents
    /// are told to retry rather than sent to it.
    #[serde(default)]
    pub silent: bool,
}

/// Most bytes a client reads of a clusters document.
pub const MAX_CLUSTERS_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// Every cluster the daemon reconciles, and its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClustersDocument {
    pub format_version: u32,
    pub source: SourceView,
    pub clusters: Vec<ClusterStatus>,
}

/// Where the desired state comes from, and how the last checks went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    /// The remote URL or the watched directory.
    pub location: String,
    /// The revision last loaded.
    pub revision: Option<String>,
    pub last_check: Option<String>,
    /// The last error, while checks fail.
    pub error: Option<String>,
    /// Invalid cluster files of `revision`, rendered as `drover validate` prints them.
    pub diagnostics: Vec<String>,
}

/// One cluster as its reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    /// The revision of the definition being applied.
    pub desired_revision: Option<String>,
    /// The revision whose plan last completed, with every node converged and healthy.
    pub applied_revision: Option<String>,
    /// True when the current revision's file is invalid and its last good definition stays.
    pub held_back: bool,
    /// `Ready`, `Reconciling` and `Stalled`, each true or false with its reason.
    pub conditions: Vec<Condition>,
    /// The plan's phases and where the rollout stands, while there is one.
    pub plan: Option<PlanProgress>,
    /// The plan's warnings and errors, as sentences.
    pub findings: Vec<String>,
    pub nodes: Vec<ClusterNode>,
    /// Its scheduled snapshots, when its definition has a snapshot policy.
    #[serde(default)]
    pub snapshots: Option<snapshots::SnapshotSchedule>,
    /// Why the desired revision waits for an approved plan, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<PlanHold>,
}

/// A revision held because the plan against what runs is not one its commit approves
/// (`requireApprovedPlan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanHold {
    pub revision: String,
    /// The digest of the plan against what runs: the one the commit must approve.
    pub digest: String,
    /// That plan's steps.
    pub steps: Vec<String>,
    /// The digests the commit approves (`Drover-Plan:` trailers, the reviewed-digest file).
    pub approved: Vec<String>,
    /// The plan a reviewer sees: this revision against the last applied one, as `drover plan
    /// --base <applied> --head <revision>` prints it. Unknown until the daemon has seen the
    /// cluster converge since it started.
    pub reviewed: Option<ReviewedPlan>,
}

/// The reviewed plan, and how the plan against what runs differs from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewedPlan {
    /// The revision it treats as running.
    pub base: String,
    pub digest: String,
    /// Steps the plan against what runs has and the reviewed plan lacks: what drifted.
    pub only_running: Vec<String>,
    /// Steps the reviewed plan has and the plan against what runs lacks.
    pub only_reviewed: Vec<String>,
}

impl ClusterStatus {
    /// The condition of that type.
    pub fn condition(&self, kind: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionType {
    Ready,
    Reconciling,
    Stalled,
    /// True when the newest snapshot is more than twice the schedule's period old, or none can
    /// be taken (the policy names a store the daemon lacks).
    SnapshotOverdue,
}

/// A condition: its type, whether it holds, a reason code and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub status: bool,
    /// A stable code, e.g. `WaitingForAgent`, `StepFailed`, `UnsafePlan`.
    pub reason: String,
    pub message: String,
    /// When the condition last changed status (RFC 3339).
    pub since: String,
}

/// The plan in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanProgress {
    pub digest: String,
    /// The phases still to run, each with its number of batches and steps.
    pub phases: Vec<PhaseProgress>,
    /// What the rollout waits on now, if anything.
    pub waiting_on: Option<String>,
    /// Every step of the rollout since it started at this revision, in plan order, each with
    /// where it stands.
    #[serde(default)]
    pub steps: Vec<StepProgress>,
}

/// One step of a rollout and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepProgress {
    /// The phase's title (`etcd`, `control plane`, ...).
    pub phase: String,
    /// The batch within the phase, from 1.
    pub batch: usize,
    /// The node it acts on; none for a cluster-wide step or a gate.
    pub node: Option<String>,
    pub text: String,
    pub state: StepState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepState {
    /// Not reached yet.
    Pending,
    /// Its node was told; it has not converged yet.
    Applying,
    /// A gate whose batch ran, waiting for its nodes to be healthy.
    Waiting,
    /// Its node failed to apply it.
    Failed,
    Done,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Applying => "applying",
            StepState::Waiting => "waiting",
            StepState::Failed => "failed",
            StepState::Done => "done",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseProgress {
    pub phase: String,
    pub batches: usize,
    pub steps: usize,
}

/// What one node's agent receives, safe to show: its plan with every file's content left out
/// (only path, mode, digest and size), its certificates by subject, names and expiry (keys by
/// name only), and its last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub cluster: String,
    pub node: String,
    pub generation: Option<u64>,
    pub checksum: Option<String>,
    pub containers: BTreeMap<String, crate::nodeplan::ContainerSpec>,
    pub probes: BTreeMap<String, String>,
    pub files: Vec<FileView>,
    pub certificates: Vec<CertificateView>,
    /// Key files by name; their content never leaves the daemon but to the node.
    pub keys: Vec<String>,
    pub report: Option<NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileView {
    pub path: String,
    pub mode: String,
    pub digest: String,
    pub bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    pub file: String,
    pub subject: String,
    pub names: Vec<String>,
    /// RFC 3339.
    pub not_after: String,
}

impl NodeView {
    /// The view of `spec` as sent to `cluster/node`.
    pub fn of(
        cluster: &str,
        node: &str,
        plan: Option<(u64, String, crate::nodeplan::NodeSpec)>,
        report: Option<NodeStatus>,
    ) -> NodeView {
        let (generation, checksum, spec) = match plan {
            Some((g, c, s)) => (Some(g), Some(c), s),
            None => (None, None, crate::nodeplan::NodeSpec::default()),
        };
        let files = spec
            .files
            .iter()
            .map(|(path, f)| FileView {
                path: path.clone(),
                mode: f.mode.to_string(),
                digest: f.digest.clone(),
                bytes: f.content.len(),
            })
            .collect();
        let (certificates, keys) = certificates(&spec.pki);
        NodeView {
            cluster: cluster.to_string(),
            node: node.to_string(),
            generation,
            checksum,
            probes: spec
                .health
                .iter()
                .map(|(c, h)| (c.clone(), probe_text(&h.probe)))
                .collect(),
            containers: spec.containers,
            files,
            certificates,
            keys,
            report,
        }
    }
}

fn probe_text(probe: &crate::nodeplan::Probe) -> String {
    use crate::nodeplan::Probe;
    match probe {
        Probe::Http(url) => format!("http {url}"),
        Probe::Tcp(addr) => format!("tcp {addr}"),
        Probe::Exec(cmd) => format!("exec {}", cmd.join(" ")),
        Probe::Etcd(url) => format!("etcd {url}"),
    }
}

/// The certificates of a node's PKI files, and the names of its keys.
fn certificates(
    pki: &BTreeMap<String, crate::nodeplan::FileSpec>,
) -> (Vec<CertificateView>, Vec<String>) {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for (name, file) in pki {
        if file.content.contains("PRIVATE KEY") {
            keys.push(name.clone());
            continue;
        }
        let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(file.content.as_bytes()) else {
            continue;
        };
        let Ok((_, cert)) = X509Certificate::from_der(&pem.contents) else {
            continue;
        };
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::DNSName(d) => d.to_string(),
                        GeneralName::IPAddress(ip) => ip_text(ip),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let not_after = cert.validity().not_after.to_rfc2822().unwrap_or_default();
        certs.push(CertificateView {
            file: name.clone(),
            subject: cert.subject().to_string(),
            names,
            not_after,
        });
    }
    (certs, keys)
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => hex::encode(bytes),
    }
}

/// One node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    pub name: String,
    pub address: String,
    pub connected: bool,
    /// The generation the daemon wants it to run, and the one it applied.
    pub generation: Option<u64>,
    pub applied_generation: Option<u64>,
    /// The revision of the definition its plan comes from.
    pub revision: Option<String>,
    pub ready: bool,
    /// Why it is not ready.
    pub reason: Option<String>,
}

/// Every declared node and its agent's latest report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodesDocument {
    pub format_version: u32,
    pub nodes: Vec<NodeStatus>,
}

/// One node as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub cluster: String,
    pub node: String,
    /// Whether its agent holds a session now.
    pub connected: bool,
    /// When the daemon last heard from it (RFC 3339).
    pub last_seen: Option<String>,
    /// The plan generation the daemon wants it to run.
    pub generation: Option<u64>,
    /// What the agent last applied.
    pub applied: Option<AppliedMark>,
    /// Managed containers by component, as the agent last saw them.
    pub containers: BTreeMap<String, ContainerState>,
    /// The steps of the last application that failed, with their errors.
    pub failed_steps: Vec<StepReport>,
}

/// Why the operator token could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no randomness from the operating system")]
    Random(#[source] getrandom::Error),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredToken {
    /// The operator token's hash (empty: none made yet).
    hash: String,
    /// Where several daemons share the state: each daemon's own token for its machine's
    /// `drover status`, by daemon id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    machines: BTreeMap<String, String>,
}

/// Makes a new operator token and keeps its hash; the previous token stops working. Machine
/// tokens (`create_machine_token`) stay.
pub fn create_operator_token(state: &DurableState) -> Result<Secret, ApiError> {
    let token = random_token()?;
    let digest = hash(&token);
    state
        .update(OPERATOR_TOKEN, |stored: &mut StoredToken| {
            stored.hash = digest.clone();
            Ok::<_, std::convert::Infallible>(())
        })?
        .unwrap_or_else(|never| match never {});
    Ok(Secret::new(token))
}

/// Makes a new token for the daemon `daemon`'s own machine, beside the operator token, when
/// several daemons share the state: each one's local `drover status` keeps working whichever
/// started last. Its previous machine token stops working.
pub fn create_machine_token(state: &DurableState, daemon: &str) -> Result<Secret, ApiError> {
    let token = random_token()?;
    let digest = hash(&token);
    state
        .update(OPERATOR_TOKEN, |stored: &mut StoredToken| {
            stored.machines.insert(daemon.to_string(), digest.clone());
            Ok::<_, std::convert::Infallible>(())
        })?
        .unwrap_or_else(|never| match never {});
    Ok(Secret::new(token))
}

fn random_token() -> Result<String, ApiError> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(ApiError::Random)?;
    Ok(hex::encode(random))
}

/// Whether `presented` is the operator token, compared in constant time. `Ok(None)` when no
/// operator token was ever made.
pub fn check_operator_token(
    state: &DurableState,
    presented: &str,
) -> Result<Option<bool>, ApiError> {
    let Some(stored) = state.load::<StoredToken>(OPERATOR_TOKEN)? else {
        return Ok(None);
    };
    let presented = hash(presented);
    let mut matched = subtle::Choice::from(0);
    for known in std::iter::once(&stored.hash).chain(stored.machines.values()) {
        if !known.is_empty() {
            matched |= presented.as_bytes().ct_eq(known.as_bytes());
        }
    }
    Ok(Some(bool::from(matched)))
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_token_is_stored_hashed_and_replaced() {
        let dir = crate::state::private_tempdir();
        let state: DurableState = crate::state::StateDir::new(dir.path()).into();
        assert_eq!(check_operator_token(&state, "anything").unwrap(), None);
        let first = create_operator_token(&state).unwrap();
        let stored = std::fs::read_to_string(dir.path().join(OPERATOR_TOKEN)).unwrap();
        assert!(!stored.contains(first.expose()));
        assert_eq!(
            check_operator_token(&state, first.expose()).unwrap(),
            Some(true)
        );
        assert_eq!(check_operator_token(&state, "wrong").unwrap(), Some(false));
        let second = create_operator_token(&state).unwrap();
        assert_eq!(
            check_operator_token(&state, first.expose()).unwrap(),
            Some(false)
        );
        assert_eq!(
            check_operator_token(&state, second.expose()).unwrap(),
            Some(true)
        );
    }

    #[test]
    fn each_daemon_sharing_the_state_keeps_its_machine_token() {
        let dir = crate::state::private_tempdir();
        let state: DurableState = crate::state::StateDir::new(dir.path()).into();
        let a = create_machine_token(&state, "daemon-a").unwrap();
        let b = create_machine_token(&state, "daemon-b").unwrap();
        let operator = create_operator_token(&state).unwrap();
        for token in [&a, &b, &operator] {
            assert_eq!(
                check_operator_token(&state, token.expose()).unwrap(),
                Some(true)
            );
        }
        assert_eq!(check_operator_token(&state, "").unwrap(), Some(false));
        let a2 = create_machine_token(&state, "daemon-a").unwrap();
        assert_eq!(
            check_operator_token(&state, a.expose()).unwrap(),
            Some(false)
        );
        assert_eq!(
            check_operator_token(&state, a2.expose()).unwrap(),
            Some(true)
        );
        assert_eq!(
            check_operator_token(&state, b.expose()).unwrap(),
            Some(true)
        );
    }
}
