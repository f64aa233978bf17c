//! What the benchmarks' protocol-level agents report for a plan: its containers running and
//! healthy, and the etcd membership its bootstrap names.

// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;

use drover::nodeplan::NodeSpec;
use drover::protocol::{ContainerState, EtcdMemberInfo};

/// Every container of `spec`, running its spec and healthy where it is probed.
pub fn observed(spec: &NodeSpec) -> BTreeMap<String, ContainerState> {
    spec.containers
        .keys()
        .map(|c| {
            let state = ContainerState {
                running: true,
                spec_hash: spec.container_hash(c).unwrap_or_default(),
                healthy: spec.health.contains_key(c).then_some(true),
                reason: None,
            };
            (c.clone(), state)
        })
        .collect()
}

/// The members `spec`'s etcd bootstrap starts with, as a member list answers them.
pub fn members(spec: &NodeSpec) -> Option<Vec<EtcdMemberInfo>> {
    spec.etcd_bootstrap.as_ref().map(|b| {
        b.initial_cluster
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .map(|(name, url)| EtcdMemberInfo {
                id: format!("{:016x}", fnv(name)),
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
                client_urls: Vec::new(),
            })
            .collect()
    })
}

/// A member id, stable per name.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
