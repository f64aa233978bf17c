//! etcd membership as the reconciler sees it: what etcd itself lists (asked through a healthy
//! member's agent) when it could be asked, else the rollout record; and the agent task that
//! carries out each membership step of a plan.
//!
//! Members are known by name once started. An added member that never started has no name
//! yet: it is matched to the desired node whose peer URL it carries, so a membership change a
//! crash interrupted (added, never started) is seen and finished (the planner starts it); one
//! matching no desired node is named by its id, and the planner removes it.

use std::collections::BTreeMap;

use crate::model::Cluster;
use crate::plan::container::peer_url;
use crate::plan::observed::Member;
use crate::plan::Step;
use crate::protocol::{EtcdMemberInfo, EtcdTask};

use super::intent::Intent;

/// A task the loop must run before the rest of a batch: on `agent`'s node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCall {
    /// The node whose agent runs it (a healthy member other than the one changed).
    pub agent: String,
    pub task: EtcdTask,
    /// What the status says meanwhile.
    pub what: String,
}

/// The members by the name the planner knows them by, with their health.
pub fn observed(
    listed: Option<&[EtcdMemberInfo]>,
    intent: &Intent,
    cluster: &Cluster,
    healthy: impl Fn(&str) -> bool,
) -> BTreeMap<String, Member> {
    let Some(listed) = listed else {
        return intent
            .members
            .iter()
            .map(|(name, url)| {
                let member = Member {
                    peer_url: url.clone(),
                    healthy: healthy(name),
                };
                (name.clone(), member)
            })
            .collect();
    };
    listed
        .iter()
        .map(|m| {
            let url = m.peer_urls.first().cloned().unwrap_or_default();
            let name = name_of(m, cluster);
            let member = Member {
                healthy: !m.name.is_empty() && healthy(&name),
                peer_url: url,
            };
            (name, member)
        })
        .collect()
}

/// The name the planner knows a listed member by.
fn name_of(m: &EtcdMemberInfo, cluster: &Cluster) -> String {
    if !m.name.is_empty() {
        return m.name.clone();
    }
    cluster
        .nodes
        .iter()
        .find(|n| m.peer_urls.iter().any(|u| *u == peer_url(cluster, n)))
        .map(|n| n.name.to_string())
        .unwrap_or_else(|| m.id.clone())
}

/// The listed member the planner calls `name`.
fn find<'l>(
    listed: Option<&'l [EtcdMemberInfo]>,
    name: &str,
    cluster: &Cluster,
) -> Option<&'l EtcdMemberInfo> {
    listed?.iter().find(|m| name_of(m, cluster) == name)
}

/// The agent task a membership step needs, run by `agent`; `None` for other steps. A step on a
/// member etcd does not list (or when nothing was listed) needs its id: `Err` says why.
pub fn task_for(
    step: &Step,
    listed: Option<&[EtcdMemberInfo]>,
    cluster: &Cluster,
    agent: &str,
) -> Option<Result<TaskCall, String>> {
    let id = |node: &str| {
        find(listed, node, cluster)
            .map(|m| m.id.clone())
            .ok_or_else(|| format!("etcd does not list member {node}, or could not be asked"))
    };
    let call = |task, what: String| TaskCall {
        agent: agent.to_string(),
        task,
        what,
    };
    Some(match step {
        Step::AddEtcdMember { node, peer_url } => Ok(call(
            EtcdTask::MemberAdd {
                peer_url: peer_url.clone(),
            },
            format!("adding etcd member {node} at {peer_url}"),
        )),
        Step::RemoveEtcdMember { node } => id(node).map(|id| {
            call(
                EtcdTask::MemberRemove { id },
                format!("removing etcd member {node}"),
            )
        }),
        Step::UpdateEtcdMember { node, peer_url } => id(node).map(|id| {
            call(
                EtcdTask::MemberUpdate {
                    id,
                    peer_url: peer_url.clone(),
                },
                format!("moving etcd member {node} to {peer_url}"),
            )
        }),
        _ => return None,
    })
}
