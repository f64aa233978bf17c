//! drover: a declarative GitOps reconciler for self-managed clusters. Operators describe clusters
//! (nodes, roles, components, etcd and its snapshot policy) as YAML in Git; drover drives every
//! node to that description. See ARCHITECTURE.md for the map of this crate.

pub mod agent;
pub mod cli;
pub mod config;
pub mod diagnostic;
pub mod model;
pub mod plan;
pub mod snapshot;
pub mod source;
