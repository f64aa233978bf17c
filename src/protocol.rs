//! The agent protocol's messages: typed and versioned serde enums, one JSON text frame each, at
//! most `MAX_MESSAGE_BYTES`. Unknown message types and fields are refused, never guessed at.
//! A node plan travels with a daemon-owned generation and a checksum of its content, which the
//! agent echoes when it reports what it applied.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::nodeplan::NodeSpec;
use crate::secret::Secret;

/// The protocol version both sides speak; a connection with another is refused with a reason.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest message either side sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most steps an `Applied` report, and most containers an `Observed` report, may list. A node
/// plan is far smaller; a report over this is refused.
pub const MAX_REPORT_ITEMS: usize = crate::model::MAX_NODE_ITEMS;
/// Longest text of a report's field (a step's error, a health reason, a name), in bytes.
/// Longer text is cut at a character boundary, so 10,000 nodes' reports stay small.
pub const MAX_REPORT_TEXT_BYTES: usize = 1024;

/// The WebSocket read buffer of either side. A session carries a plan now and then, not a
/// stream, so it stays small: a larger message is assembled outside it, up to the limit above.
/// The libraries' default (128 KiB) would cost a daemon with 10,000 agents over a gigabyte.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

/// From an agent to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum AgentMessage {
    /// The first message on a connection made without a credential: the join token (presented
    /// once) and a certificate signing request for the agent's own key, whose signature proves
    /// the agent holds that key. The token names the cluster.
    Join {
        protocol: u32,
        node: String,
        token: Secret,
        csr_pem: String,
    },
    /// The first message on a connection made with a node credential (a client certificate).
    /// The cluster and node must be the credential's own.
    Hello {
        protocol: u32,
        cluster: String,
        node: String,
        agent_version: String,
        /// What the agent applied last, as it persisted it.
        applied: Option<AppliedMark>,
    },
    /// A new key for the node's credential, answering `RenewCredential`.
    Renew {
        csr_pem: String,
    },
    Heartbeat {
        seq: u64,
    },
    /// The generation the agent applied, with the checksum it received and each step's result.
    Applied {
        generation: u64,
        checksum: String,
        steps: Vec<StepReport>,
    },
    /// What runs on the node now.
    Observed {
        containers: BTreeMap<String, ContainerState>,
    },
    /// The outcome of the etcd task `id`.
    EtcdTaskResult {
        id: u64,
        outcome: EtcdTaskOutcome,
    },
    /// A plan or task was refused, not run: its fencing token (`None`: it had none) is older
    /// than the newest this agent has seen. `what` names it (`plan generation 7`, `etcd task
    /// 12`).
    Fenced {
        what: String,
        fence: Option<u64>,
        newest: u64,
    },
}

/// Etcd tasks one session may have in flight: the daemon queues no more, and the agent runs no
/// more at once.
pub const MAX_ETCD_TASKS: usize = 16;

/// A task an agent runs against its own node's etcd member (etcd-client over TLS with the
/// node's client certificate, a single endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "task",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum EtcdTask {
    /// Whether the member serves: it answers a status request and knows a leader.
    Health,
    /// The member's status: who it is, who leads, its revision, database size and version
    /// (a snapshot is taken from a follower when one is healthy).
    Status,
    MemberList,
    /// Adds a member that will start on `peer_url` (it joins with `existing` state).
    MemberAdd {
        peer_url: String,
    },
    /// Removes the member `id` (hex, as etcdctl prints it).
    MemberRemove {
        id: String,
    },
    /// Moves member `id` to `peer_url`.
    MemberUpdate {
        id: String,
        peer_url: String,
    },
    /// Streams the member's snapshot to the daemon: an HTTPS `PUT` of the bytes to
    /// `TRANSFER_PATH` + `transfer` on a connection of its own, made with the node's
    /// credential. The session's heartbeats and plans never wait behind the bytes, and TCP
    /// holds the member back when the daemon reads slower than it sends.
    Snapshot {
        transfer: String,
    },
    /// Fetches the daemon's transfer `transfer` (a snapshot to restore, its sha256 in a
    /// header) into a private directory beside the member's data directory and restores it
    /// there for `member`, ready for the `Restore` of the same `request_id`. etcd still runs
    /// meanwhile: it stops only once every member holds the snapshot, checked and restored, so
    /// the time etcd is down is the swap and its start.
    Fetch {
        transfer: String,
        request_id: String,
        member: RestoreMember,
    },
    /// Puts the data restored for `request_id` in place of the member's data directory, which
    /// is kept as `etcd.replaced-<request_id>`; the fetched snapshot is restored again first
    /// when what `Fetch` prepared is missing or was made for another `member`. Refused while
    /// the node's etcd container exists: the daemon stops every member first.
    Restore {
        request_id: String,
        member: RestoreMember,
    },
    /// Restores the snapshot of transfer `transfer` into a scratch directory with `image`,
    /// starts a throwaway etcd from it with no network, and reports its revision and key
    /// count; nothing of it is left on the node.
    Verify {
        transfer: String,
        image: String,
    },
}

/// How one member's data is restored from a snapshot: `etcdutl snapshot restore` (or, in an
/// image without it, `etcdctl snapshot restore`) in a container of the cluster's etcd `image`,
/// with the member's `name` and `peer_url`, every member in `initial_cluster`, and the new
/// cluster `token`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreMember {
    pub image: String,
    pub name: String,
    pub initial_cluster: Vec<String>,
    pub peer_url: String,
    pub token: String,
}

/// Where an agent sends the bytes of a transfer the daemon asked for (`EtcdTask::Snapshot`).
pub const TRANSFER_PATH: &str = "/v1/transfers/";
/// The etcd revision and server version a snapshot was taken at, as headers of its transfer.
pub const SNAPSHOT_REVISION_HEADER: &str = "drover-etcd-revision";
pub const SNAPSHOT_VERSION_HEADER: &str = "drover-etcd-version";
/// The sha256 (hex) of the bytes of a transfer the daemon offers an agent, as a header.
pub const TRANSFER_SHA256_HEADER: &str = "drover-sha256";

/// One etcd member as the membership lists it. An added member that never started has no
/// name yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdMemberInfo {
    /// Hex, as etcdctl prints it.
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// What an etcd task came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "outcome",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum EtcdTaskOutcome {
    /// The member serves (`Health`).
    Healthy,
    /// The membership after the task (`MemberList`, `MemberAdd`).
    Members { members: Vec<EtcdMemberInfo> },
    /// The change committed (`MemberRemove`, `MemberUpdate`).
    Done,
    /// The member's status (`Status`). Ids are hex, as etcdctl prints them.
    Status {
        member_id: String,
        leader_id: String,
        revision: i64,
        db_size: i64,
        version: String,
    },
    /// The snapshot was sent whole (`Snapshot`): `bytes` of it, at etcd `revision`.
    Sent { revision: i64, bytes: u64 },
    /// The snapshot of `bytes` was fetched and checked (`Fetch`).
    Fetched { bytes: u64 },
    /// The snapshot was restored into the member's data directory (`Restore`).
    Restored,
    /// The throwaway etcd restored from the snapshot serves `keys` keys at `revision`
    /// (`Verify`).
    Verified {
        bytes: u64,
        revision: i64,
        keys: i64,
    },
    /// The task failed, with etcd's or the agent's reason (cut to `MAX_REPORT_TEXT_BYTES`).
    Failed { error: String },
}

/// From the daemon to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum ServerMessage {
    Welcome {
        protocol: u32,
        heartbeat_interval_ms: u64,
    },
    /// The answer to `Join`: the node's credential (a client certificate for the agent's key) and
    /// the CA certificate the agent pinned.
    Joined {
        cluster: String,
        cert_pem: String,
        ca_pem: String,
    },
    /// Asks the agent to move its credential to a fresh key (it answers with `Renew`).
    RenewCredential {},
    /// The renewed credential; the old one stays valid until the new one is first used.
    Credential {
        cert_pem: String,
    },
    Heartbeat {
        seq: u64,
    },
    /// Run an etcd task; the agent answers `EtcdTaskResult` with the same `id`. `fence` as in
    /// `Plan`.
    EtcdTask {
        id: u64,
        task: EtcdTask,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<u64>,
    },
    /// The node's plan. `generation` only ever grows; `checksum` is `spec.checksum()`.
    /// `fence` is the cluster's fencing token when several daemons share the state: the agent
    /// refuses a plan or task whose token is older than the newest it has seen (`Fenced`).
    Plan {
        generation: u64,
        checksum: String,
        spec: NodeSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<u64>,
    },
    /// Another daemon owns this agent's cluster: dial `url` (a `wss://` URL) instead. Sent
    /// instead of `Welcome`, or when the cluster moves away during a session.
    Redirect {
        url: String,
        reason: String,
    },
    /// Come back later: the daemon is busy or starting.
    RetryAfter {
        seconds: u64,
        reason: String,
    },
    /// The connection is refused, and why.
    Refused {
        reason: Refusal,
    },
}

/// Why the daemon refuses an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(
    tag = "code",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum Refusal {
    #[error("protocol version {theirs} is not spoken here (this daemon speaks {ours})")]
    ProtocolVersion { theirs: u32, ours: u32 },
    #[error("node {node} is not declared in cluster {cluster}'s definition in Git")]
    UndeclaredNode { cluster: String, node: String },
    #[error("the credential of node {node} in cluster {cluster} was revoked ({why}); join again with a new token")]
    Revoked {
        cluster: String,
        node: String,
        why: String,
    },
    #[error("{problem}")]
    Token { problem: TokenRefusal },
    #[error("node {node} of cluster {cluster} is bound to another key; run `drover node reset {cluster} {node}` on the daemon to allow a new one")]
    BoundToAnotherKey { cluster: String, node: String },
    #[error(
        "this credential is for node {own_node} of cluster {own_cluster}, not {node} of {cluster}"
    )]
    NotYourNode {
        own_cluster: String,
        own_node: String,
        cluster: String,
        node: String,
    },
    #[error("no node credential was presented; join with a token first")]
    CredentialRequired,
    #[error("the credential is not known to this daemon; join again with a new token")]
    UnknownCredential,
    #[error("bad request: {detail}")]
    BadRequest { detail: String },
}

/// Why a presented token is refused. The text never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenRefusal {
    #[error("the join token is malformed")]
    Malformed,
    #[error("the join token is unknown")]
    Unknown,
    #[error("the join token expired")]
    Expired,
    #[error("the join token was already used")]
    AlreadyUsed,
    #[error("this join token is for node {node}")]
    OtherNode { node: String },
}

impl Refusal {
    /// A bad request, its detail cut to `MAX_REFUSAL_TEXT_BYTES`.
    pub fn bad_request(detail: impl AsRef<str>) -> Refusal {
        Refusal::BadRequest {
            detail: cut_text(detail.as_ref(), MAX_REFUSAL_TEXT_BYTES),
        }
    }

    /// This refusal with every text a peer may have supplied cut to `MAX_REFUSAL_TEXT_BYTES`.
    pub fn bounded(self) -> Refusal {
        let cut = |s: String| cut_text(&s, MAX_REFUSAL_TEXT_BYTES);
        match self {
            Refusal::UndeclaredNode { cluster, node } => Refusal::UndeclaredNode {
                cluster: cut(cluster),
                node: cut(node),
            },
            Refusal::Revoked { cluster, node, why } => Refusal::Revoked {
                cluster: cut(cluster),
                node: cut(node),
                why: cut(why),
            },
            Refusal::BoundToAnotherKey { cluster, node } => Refusal::BoundToAnotherKey {
                cluster: cut(cluster),
                node: cut(node),
            },
            Refusal::NotYourNode {
                own_cluster,
                own_node,
                cluster,
                node,
            } => Refusal::NotYourNode {
                own_cluster: cut(own_cluster),
                own_node: cut(own_node),
                cluster: cut(cluster),
                node: cut(node),
            },
            Refusal::BadRequest { detail } => Refusal::bad_request(detail),
            other @ (Refusal::ProtocolVersion { .. }
            | Refusal::Token { .. }
            | Refusal::CredentialRequired
            | Refusal::UnknownCredential) => other,
        }
    }
}

/// The plan generation and checksum an agent applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppliedMark {
    pub generation: u64,
    pub checksum: String,
}

/// One step's outcome as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepReport {
    pub subject: String,
    pub action: String,
    /// A short error text when the step failed.
    pub error: Option<String>,
}

/// One managed container as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerState {
    pub running: bool,
    pub spec_hash: String,
    /// `None` until the first probe; the reason when unhealthy.
    pub healthy: Option<bool>,
    pub reason: Option<String>,
}

/// Longest text of a refusal's field. Refusals quote what a peer sent (a node name, a parse
/// error) before it is authenticated, so what they echo and what the daemon logs stays short.
pub const MAX_REFUSAL_TEXT_BYTES: usize = 256;

/// `text`, cut to `MAX_REPORT_TEXT_BYTES` at a character boundary, with `…` when cut.
pub fn short_text(text: &str) -> String {
    cut_text(text, MAX_REPORT_TEXT_BYTES)
}

/// `text`, cut to `limit` bytes at a character boundary, with `…` when cut.
pub fn cut_text(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl StepReport {
    /// This report with every text within `MAX_REPORT_TEXT_BYTES`.
    pub fn bounded(self) -> StepReport {
        StepReport {
            subject: short_text(&self.subject),
            action: short_text(&self.action),
            error: self.error.as_deref().map(short_text),
        }
    }
}

impl ContainerState {
    /// This state with every text within `MAX_REPORT_TEXT_BYTES`.
    pub fn bounded(self) -> ContainerState {
        ContainerState {
            spec_hash: short_text(&self.spec_hash),
            reason: self.reason.as_deref().map(short_text),
            ..self
        }
    }
}

/// Why a message could not be sent or read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("message of {size} bytes is over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed message")]
    Malformed(#[source] serde_json::Error),
}

/// A message as one text frame.
pub fn encode<T: Serialize>(message: &T) -> Result<String, ProtocolError> {
    let text = serde_json::to_string(message).map_err(ProtocolError::Malformed)?;
    check_size(text.len())?;
    Ok(text)
}

/// A message from one text frame; the size is checked before anything is parsed.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, ProtocolError> {
    check_size(text.len())?;
    serde_json::from_str(text).map_err(ProtocolError::Malformed)
}

fn check_size(size: usize) -> Result<(), ProtocolError> {
    if size > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLarge {
            size,
            limit: MAX_MESSAGE_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_report_text_is_cut_at_a_character_boundary() {
        assert_eq!(short_text("short"), "short");
        let exact = "x".repeat(MAX_REPORT_TEXT_BYTES);
        assert_eq!(short_text(&exact), exact);
        for long in [
            "é".repeat(MAX_REPORT_TEXT_BYTES),
            "a".repeat(5 * MAX_REPORT_TEXT_BYTES),
        ] {
            let cut = short_text(&long);
            assert!(cut.len() <= MAX_REPORT_TEXT_BYTES, "{}", cut.len());
            assert!(cut.ends_with('…'));
            assert!(long.starts_with(cut.trim_end_matches('…')));
        }
    }
}
