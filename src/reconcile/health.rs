//! Whether a node runs what it was told to, healthy: the gate every batch waits on, judged from
//! its agent's latest report. A reason is always a sentence an operator can act on.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::nodeplan::{NodeSpec, SealedSpec};
use crate::protocol::{AppliedMark, ContainerState, StepReport};

/// What the daemon knows of one node from its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub connected: bool,
    /// The generation and checksum the agent last applied.
    pub applied: Option<AppliedMark>,
    /// The steps of that application, with their errors.
    pub steps: Vec<StepReport>,
    pub containers: BTreeMap<String, ContainerState>,
    pub last_seen: Option<SystemTime>,
}

/// A node's state against its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeHealth {
    /// It applied its plan; every container runs and passes its probe.
    Ready,
    /// Not yet, and why: it may still get there on its own.
    Waiting(String),
    /// A step of its plan failed, with the engine's reason: it needs a change.
    Failed(String),
}

impl NodeHealth {
    pub fn is_ready(&self) -> bool {
        matches!(self, NodeHealth::Ready)
    }

    /// The reason it is not ready.
    pub fn reason(&self) -> Option<&str> {
        match self {
            NodeHealth::Ready => None,
            NodeHealth::Waiting(r) | NodeHealth::Failed(r) => Some(r),
        }
    }
}

/// Why a node whose agent is not connected holds things up: it never came, or it went.
fn away(node: &str, last_seen: Option<SystemTime>) -> String {
    match last_seen {
        None => format!("waiting for {node}'s agent to connect"),
        Some(at) => format!(
            "{node}'s agent is away (last seen {}); waiting for it to reconnect",
            humantime::format_rfc3339_seconds(at)
        ),
    }
}

/// Judges `node` against the plan it was told to run (`spec`, with its checksum).
pub fn judge(
    node: &str,
    spec: &NodeSpec,
    checksum: &str,
    report: Option<&NodeReport>,
) -> NodeHealth {
    let runs = |c: &str, hash: &str| spec.container_hash(c).as_deref() == Some(hash);
    judge_with(node, spec, checksum, runs, report)
}

/// `judge` against a sealed plan, whose containers' hashes are computed already.
pub fn judge_sealed(node: &str, sealed: &SealedSpec, report: Option<&NodeReport>) -> NodeHealth {
    let runs = |c: &str, hash: &str| sealed.container_hash(c) == Some(hash);
    judge_with(node, sealed.spec(), sealed.checksum(), runs, report)
}

fn judge_with(
    node: &str,
    spec: &NodeSpec,
    checksum: &str,
    // Whether a container of the plan runs with this hash.
    runs: impl Fn(&str, &str) -> bool,
    report: Option<&NodeReport>,
) -> NodeHealth {
    let Some(report) = report.filter(|r| r.connected) else {
        return NodeHealth::Waiting(away(node, report.and_then(|r| r.last_seen)));
    };
    if report.applied.as_ref().map(|a| a.checksum.as_str()) != Some(checksum) {
        return NodeHealth::Waiting(format!("waiting for {node} to apply its new plan"));
    }
    if let Some(failed) = report.steps.iter().find(|s| s.error.is_some()) {
        let error = failed.error.as_deref().unwrap_or_default();
        return NodeHealth::Failed(format!(
            "{} {} failed on {node}: {error}",
            failed.action, failed.subject
        ));
    }
    for component in spec.containers.keys() {
        let Some(have) = report.containers.get(component) else {
            return NodeHealth::Waiting(format!("{component} on {node} is not running yet"));
        };
        if !runs(component, &have.spec_hash) {
            return NodeHealth::Waiting(format!("{component} on {node} is not replaced yet"));
        }
        if !have.running {
            return NodeHealth::Waiting(format!("{component} on {node} is not running"));
        }
        if spec.health.contains_key(component) && have.healthy != Some(true) {
            let why = match (&have.healthy, &have.reason) {
                (None, _) => "not probed yet".to_string(),
                (_, Some(reason)) => reason.clone(),
                (_, None) => "unhealthy".to_string(),
            };
            return NodeHealth::Waiting(format!("{component} on {node} is not healthy: {why}"));
        }
    }
    if let Some(extra) = report
        .containers
        .keys()
        .find(|c| !spec.containers.contains_key(*c))
    {
        return NodeHealth::Waiting(format!("{extra} on {node} is not removed yet"));
    }
    NodeHealth::Ready
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn an_agent_that_never_came_and_one_that_went_are_told_apart() {
        let spec = NodeSpec::default();
        let seen = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let went = NodeReport {
            last_seen: Some(seen),
            ..NodeReport::default()
        };
        let cases = [
            (None, "waiting for n2's agent to connect"),
            (
                Some(&went),
                "n2's agent is away (last seen 2027-01-15T08:00:00Z); waiting for it to reconnect",
            ),
        ];
        for (report, want) in cases {
            assert_eq!(
                judge("n2", &spec, "sum", report),
                NodeHealth::Waiting(want.to_string())
            );
        }
    }
}
