//! drover: a declarative GitOps reconciler for self-managed clusters. Operators describe clusters
//! (nodes, roles, components, etcd and its snapshot policy) as YAML in Git; drover drives every
//! node to that description. See ARCHITECTURE.md for the map of this crate.

pub mod agent;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod drift;
pub mod etcd_pki;
pub mod heartbeat;
pub mod join;
pub mod model;
pub mod nodeplan;
pub mod pki;
pub mod plan;
pub mod protocol;
pub mod reconcile;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod store;

/// An error and its causes, on one line: for messages at the edges (CLI output, step reports).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
