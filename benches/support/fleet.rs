//! Protocol-level agents' pieces, shared by the benchmarks that run thousands of them: the
//! open-file limit, an owner-only state directory, node credentials issued up front with the
//! daemon's CA (as joins would have left them), and the hello that opens a session.

// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::SystemTime;

use drover::agent::session::{recv, send, Dial, SessionError, Socket};
use drover::join::{bindings_name, Bindings};
use drover::pki::{DaemonCa, Identity, NodeKey};
use drover::protocol::{AgentMessage, ServerMessage, PROTOCOL_VERSION};
use drover::store::DurableState;

/// Raises the open-file limit to the hard limit; panics when that is below `sockets` and a
/// margin.
pub fn raise_fd_limit(sockets: usize) {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let needed = sockets as u64 + 1024;
    assert!(
        limit >= needed,
        "the open-file limit is {limit}, and {sockets} sockets need {needed}: raise the hard limit (ulimit -Hn)"
    );
}

/// A temporary directory only its owner may use, as the daemon requires of its state.
pub fn owner_only_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("a state directory")
}

pub fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// One credential per `(cluster, node)`, bound in the daemon's state (beside the bindings it
/// holds, one document per cluster) as joins would have left them.
pub fn credentials(
    state: &DurableState,
    nodes: Vec<(String, String)>,
) -> Vec<((String, String), Identity)> {
    let ca = DaemonCa::ensure(state).expect("the daemon CA");
    let now = SystemTime::now();
    let mut bindings: BTreeMap<String, Bindings> = BTreeMap::new();
    let mut out = Vec::with_capacity(nodes.len());
    for (cluster, node) in nodes {
        let key = NodeKey::generate().expect("a key");
        let csr = key.csr_pem(&node).expect("a CSR");
        let issued = ca
            .issue_node(&csr, &cluster, &node, now)
            .expect("a certificate");
        bindings
            .entry(cluster.clone())
            .or_default()
            .bind(&cluster, &node, &issued.key_pin);
        let identity = key.identity(&issued.cert_pem).expect("an identity");
        out.push(((cluster, node), identity));
    }
    for (cluster, bound) in bindings {
        state
            .update(&bindings_name(&cluster), |held: &mut Bindings| {
                held.nodes.extend(bound.nodes.clone());
                Ok::<_, std::convert::Infallible>(())
            })
            .expect("the bindings are saved")
            .unwrap_or_else(|never| match never {});
    }
    out
}

/// Connects with the node's credential and says hello: the socket once welcomed, or what the
/// server answered instead (a refusal, or retry-after).
pub async fn hello(
    dial: &Dial,
    cluster: &str,
    node: &str,
    identity: Identity,
) -> Result<Socket, ServerMessage> {
    match try_hello(dial, cluster, node, identity).await {
        Ok(answer) => answer,
        Err(e) => panic!("{cluster}/{node} cannot connect: {e}"),
    }
}

/// `hello`, a connection or TLS failure returned rather than a panic (for agents that retry,
/// as real ones do, when a daemon is too busy to answer).
pub async fn try_hello(
    dial: &Dial,
    cluster: &str,
    node: &str,
    identity: Identity,
) -> Result<Result<Socket, ServerMessage>, SessionError> {
    let mut socket = dial.connect(Some(identity)).await?;
    let hello = AgentMessage::Hello {
        protocol: PROTOCOL_VERSION,
        cluster: cluster.to_string(),
        node: node.to_string(),
        agent_version: "bench".into(),
        applied: None,
    };
    send(&mut socket, &hello).await?;
    Ok(match recv(&mut socket).await? {
        ServerMessage::Welcome { .. } => Ok(socket),
        other => Err(other),
    })
}
