//! The node plan as it travels to an agent: what one node should run (containers, files, health
//! checks), the names and labels its containers carry, and the checksum it travels with. The
//! planner builds it and the agent applies it; neither imports the other. Its enums are its own,
//! not the cluster file's, so a change to the file format never silently changes the wire.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::names::{FileMode, ImageRef};

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

/// A container's network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Host,
    None,
    Bridge,
}

/// A container's PID namespace, when not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PidMode {
    Host,
}

/// Docker's restart policy for a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    UnlessStopped,
    OnFailure,
    No,
}

/// The role a container of the plan comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Etcd,
    Controlplane,
    Worker,
}

/// One container as the plan wants it. Field names match `SPEC_FIELDS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub image: ImageRef,
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

/// A file a node should hold. Its `Debug` leaves the content out: a node's files include its
/// etcd keys.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileSpec {
    pub mode: FileMode,
    /// sha256 of content and mode.
    pub digest: String,
    pub content: String,
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("mode", &self.mode)
            .field("digest", &self.digest)
            .field("content", &format_args!("[{} bytes]", self.content.len()))
            .finish()
    }
}

impl FileSpec {
    /// The file with its digest over mode and content.
    pub fn new(content: String, mode: FileMode) -> FileSpec {
        let mut h = Sha256::new();
        h.update(format!("{:o}\n", mode.bits()));
        h.update(&content);
        FileSpec {
            mode,
            digest: hex::encode(&h.finalize()[..8]),
            content,
        }
    }
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
    /// The node's etcd member at this client URL serving (an etcd-client status request over
    /// TLS with the node's client certificate).
    Etcd(String),
}

/// Everything one node should run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeSpec {
    /// By component name (`etcd` for the etcd member).
    pub containers: BTreeMap<String, ContainerSpec>,
    /// Health checks by component name.
    pub health: BTreeMap<String, HealthCheck>,
    /// Which role each container comes from.
    pub roles: BTreeMap<String, NodeRole>,
    pub files: BTreeMap<String, FileSpec>,
    /// How the etcd member joins when its data directory is empty. etcd reads these flags only
    /// then, so they are not part of the container spec: a membership change elsewhere never
    /// recreates this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_bootstrap: Option<EtcdBootstrap>,
    /// The client URL of the node's etcd member, which the agent's etcd tasks dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_client_url: Option<String>,
    /// The node's etcd certificates and keys by file name (`ca.pem`, `server.pem`, ...),
    /// written to `etcd_pki_dir` under the host root. The daemon issues them; the planner never
    /// sees them, so a plan's digest never depends on a key. A change restarts the etcd member
    /// (its container hash includes them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pki: BTreeMap<String, FileSpec>,
}

pub use crate::model::{etcd_data_dir, etcd_pki_dir};

/// The certificate files every node of a cluster receives, by name.
pub const PKI_CA: &str = "ca.pem";
pub const PKI_SERVER_CERT: &str = "server.pem";
pub const PKI_SERVER_KEY: &str = "server-key.pem";
pub const PKI_PEER_CERT: &str = "peer.pem";
pub const PKI_PEER_KEY: &str = "peer-key.pem";
pub const PKI_CLIENT_CERT: &str = "client.pem";
pub const PKI_CLIENT_KEY: &str = "client-key.pem";

/// `--initial-cluster` and `--initial-cluster-state` of a member that starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBootstrap {
    /// `name=peer-url` of every member, this one included.
    pub initial_cluster: Vec<String>,
    /// True to join members that run already (`existing`), false to start a new cluster.
    pub existing: bool,
}

impl EtcdBootstrap {
    /// The flags etcd takes them as.
    pub fn args(&self) -> [String; 2] {
        let state = if self.existing { "existing" } else { "new" };
        [
            format!("--initial-cluster={}", self.initial_cluster.join(",")),
            format!("--initial-cluster-state={state}"),
        ]
    }
}

impl NodeSpec {
    /// Every file the agent writes on the host for this plan, by absolute path: the plan's
    /// files and the etcd certificates in `etcd_pki_dir(cluster)`.
    pub fn host_files(&self, cluster: &str) -> BTreeMap<String, &FileSpec> {
        let pki_dir = etcd_pki_dir(cluster);
        self.files
            .iter()
            .map(|(path, file)| (path.clone(), file))
            .chain(
                self.pki
                    .iter()
                    .map(|(name, file)| (format!("{pki_dir}/{name}"), file)),
            )
            .collect()
    }

    /// The hash a container of this plan runs with: its spec's, and for the etcd member also
    /// its certificates', so a renewal restarts it. The agent labels containers with it and the
    /// daemon compares agents' reports against it.
    pub fn container_hash(&self, component: &str) -> Option<String> {
        let spec = self.containers.get(component)?;
        if component != ETCD_COMPONENT || self.pki.is_empty() {
            return Some(spec.hash());
        }
        let mut h = Sha256::new();
        h.update(spec.hash());
        for (name, file) in &self.pki {
            h.update(format!("\n{name}:{}", file.digest));
        }
        Some(hex::encode(&h.finalize()[..8]))
    }

    /// The checksum a plan travels with: sha256 over its canonical JSON.
    pub fn checksum(&self) -> String {
        let json = serde_json::to_vec(self).expect("a node plan is always JSON");
        format!("sha256:{}", hex::encode(Sha256::digest(json)))
    }
}

/// A node plan with its checksum and its containers' hashes, computed once: a plan is judged
/// on every pass and published with every change of its cluster, and serialising it
/// (certificates and all) for the checksum, or hashing its containers, each time was most of a
/// pass's work. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSpec(std::sync::Arc<Sealed>);

#[derive(Debug, PartialEq, Eq)]
struct Sealed {
    spec: std::sync::Arc<NodeSpec>,
    checksum: String,
    /// `spec.container_hash(c)` of every container, by component.
    hashes: BTreeMap<String, String>,
}

impl SealedSpec {
    pub fn new(spec: NodeSpec) -> SealedSpec {
        SealedSpec::shared(std::sync::Arc::new(spec))
    }

    /// Seals a plan shared with its owner (the rollout record), without copying it.
    pub fn shared(spec: std::sync::Arc<NodeSpec>) -> SealedSpec {
        let checksum = spec.checksum();
        let hashes = spec
            .containers
            .keys()
            .filter_map(|c| Some((c.clone(), spec.container_hash(c)?)))
            .collect();
        SealedSpec(std::sync::Arc::new(Sealed {
            spec,
            checksum,
            hashes,
        }))
    }

    pub fn spec(&self) -> &NodeSpec {
        &self.0.spec
    }

    /// `spec().checksum()`.
    pub fn checksum(&self) -> &str {
        &self.0.checksum
    }

    /// `spec().container_hash(component)`.
    pub fn container_hash(&self, component: &str) -> Option<&str> {
        self.0.hashes.get(component).map(String::as_str)
    }

    /// This, if it seals `spec`; else `spec` sealed anew. The same plan (the pointer) or an
    /// equal one is far cheaper than the checksum.
    pub fn reseal(this: Option<&SealedSpec>, spec: &std::sync::Arc<NodeSpec>) -> SealedSpec {
        match this {
            Some(sealed) if std::sync::Arc::ptr_eq(&sealed.0.spec, spec) => sealed.clone(),
            Some(sealed) if *sealed.0.spec == **spec => sealed.clone(),
            _ => SealedSpec::shared(spec.clone()),
        }
    }
}

/// The container name for a component on a node. Names are DNS labels without dots, so the
/// dotted form is unambiguous.
pub fn container_name(cluster: &str, node: &str, component: &str) -> String {
    format!("drover.{cluster}.{node}.{component}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_spec_keeps_its_checksum_until_the_spec_changes() {
        let mut spec = std::sync::Arc::new(NodeSpec::default());
        let sealed = SealedSpec::new((*spec).clone());
        assert_eq!(sealed.checksum(), spec.checksum());
        let same = SealedSpec::reseal(Some(&sealed), &spec);
        assert!(
            std::sync::Arc::ptr_eq(&same.0, &sealed.0),
            "resealed an equal spec"
        );
        std::sync::Arc::make_mut(&mut spec).etcd_client_url = Some("https://127.0.0.1:2379".into());
        let changed = SealedSpec::reseal(Some(&sealed), &spec);
        assert_eq!(changed.checksum(), spec.checksum());
        assert_ne!(changed.checksum(), sealed.checksum());
    }
}
