//! Where a rollout stands, step by step. The plan is recomputed at every pass and holds only
//! what is left, so the rollout is drawn from the plan as it was when the revision's rollout
//! started: a step still in the current plan is pending; one that left it was told to its
//! node, and is done once that node is ready (applying meanwhile, failed if the node failed).
//! A gate waits once its batch's steps left the plan, and is done when its nodes are ready.

use std::collections::{BTreeMap, HashMap};

use super::health::NodeHealth;
use crate::api::{PhaseProgress, PlanProgress, StepProgress, StepState};
use crate::plan::render::step_line;
use crate::plan::{ClusterPlan, Step};

/// The progress of the rollout that started with `started`, now that `remaining` is left;
/// `None` when nothing is left and nothing is waited on.
pub fn progress(
    started: Option<&ClusterPlan>,
    remaining: &ClusterPlan,
    health: &BTreeMap<String, NodeHealth>,
    waiting_on: Option<String>,
) -> Option<PlanProgress> {
    if remaining.phases.is_empty() && waiting_on.is_none() {
        return None;
    }
    Some(PlanProgress {
        digest: remaining.digest.clone(),
        phases: remaining
            .phases
            .iter()
            .map(|p| PhaseProgress {
                phase: p.kind.title().to_string(),
                batches: p.batches.len(),
                steps: p.batches.iter().map(|b| b.steps.len()).sum(),
            })
            .collect(),
        waiting_on,
        steps: started.map_or_else(Vec::new, |s| steps(s, remaining, health)),
    })
}

/// Each step of `started` with its state.
fn steps(
    started: &ClusterPlan,
    remaining: &ClusterPlan,
    health: &BTreeMap<String, NodeHealth>,
) -> Vec<StepProgress> {
    let mut left: HashMap<String, usize> = HashMap::new();
    for step in remaining.steps() {
        *left.entry(step_line(step)).or_default() += 1;
    }
    let mut take = |line: &str| match left.get_mut(line) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    let mut out = Vec::new();
    for phase in &started.phases {
        for (i, batch) in phase.batches.iter().enumerate() {
            let mut batch_pending = false;
            for step in &batch.steps {
                let line = step_line(step);
                let pending = take(&line);
                let state = match step {
                    Step::AwaitHealthy { nodes, .. } => gate(batch_pending, nodes, health),
                    _ if pending => StepState::Pending,
                    _ => told(node_of(step), health),
                };
                batch_pending |= pending && !matches!(step, Step::AwaitHealthy { .. });
                out.push(StepProgress {
                    phase: phase.kind.title().to_string(),
                    batch: i + 1,
                    node: node_of(step).map(str::to_string),
                    text: crate::plan::render::describe(step).1,
                    state,
                });
            }
        }
    }
    out
}

/// A step its node was told: done once the node is ready.
fn told(node: Option<&str>, health: &BTreeMap<String, NodeHealth>) -> StepState {
    match node.map(|n| health.get(n)) {
        None | Some(Some(NodeHealth::Ready)) => StepState::Done,
        Some(Some(NodeHealth::Failed(_))) => StepState::Failed,
        Some(_) => StepState::Applying,
    }
}

/// A gate: pending while its batch is, then waiting until every node it names is ready.
fn gate(batch_pending: bool, nodes: &[String], health: &BTreeMap<String, NodeHealth>) -> StepState {
    if batch_pending {
        return StepState::Pending;
    }
    let ready = |n: &String| health.get(n).is_some_and(NodeHealth::is_ready);
    if nodes.iter().all(ready) {
        StepState::Done
    } else {
        StepState::Waiting
    }
}

fn node_of(step: &Step) -> Option<&str> {
    crate::plan::render::describe(step).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Batch, Gate, Phase, PhaseKind};

    fn create(node: &str) -> Step {
        Step::CreateContainer {
            node: node.into(),
            component: "api".into(),
            container: format!("c.{node}.api"),
            image: "busybox:1".into(),
        }
    }

    fn gate(node: &str) -> Step {
        Step::AwaitHealthy {
            gate: Gate::NodesHealthy,
            nodes: vec![node.into()],
        }
    }

    fn plan(batches: &[&str]) -> ClusterPlan {
        ClusterPlan {
            cluster: "dev".into(),
            definition: String::new(),
            new_cluster: false,
            phases: vec![Phase {
                kind: PhaseKind::Controlplane,
                batches: batches
                    .iter()
                    .map(|n| Batch {
                        nodes: vec![n.to_string()],
                        steps: vec![create(n), gate(n)],
                    })
                    .collect(),
            }],
            errors: vec![],
            warnings: vec![],
            digest: String::new(),
        }
    }

    #[test]
    fn each_step_is_drawn_where_it_stands() {
        use NodeHealth::Ready;
        use StepState::{Applying, Done, Pending};
        let (waiting, failed) = (StepState::Waiting, StepState::Failed);
        let started = plan(&["n1", "n2", "n3"]);
        /// Name, the batches left, each node's health, each step's state.
        type Case<'a> = (
            &'a str,
            Vec<&'a str>,
            Vec<(&'a str, NodeHealth)>,
            [StepState; 6],
        );
        let cases: Vec<Case> = vec![
            (
                "nothing ran",
                vec!["n1", "n2", "n3"],
                vec![],
                [Pending, Pending, Pending, Pending, Pending, Pending],
            ),
            (
                "the first batch was told, its node converging",
                vec!["n2", "n3"],
                vec![("n1", NodeHealth::Waiting("pulling".into()))],
                [Applying, waiting, Pending, Pending, Pending, Pending],
            ),
            (
                "the first batch passed, the second failed",
                vec!["n3"],
                vec![
                    ("n1", Ready),
                    ("n2", NodeHealth::Failed("bad image".into())),
                ],
                [Done, Done, failed, waiting, Pending, Pending],
            ),
            (
                "all told, all ready",
                vec![],
                vec![("n1", Ready), ("n2", Ready), ("n3", Ready)],
                [Done, Done, Done, Done, Done, Done],
            ),
        ];
        for (name, left, health, want) in cases {
            let health: BTreeMap<String, NodeHealth> = health
                .into_iter()
                .map(|(n, h)| (n.to_string(), h))
                .collect();
            let remaining = if left.is_empty() {
                ClusterPlan {
                    phases: vec![],
                    ..plan(&[])
                }
            } else {
                plan(&left)
            };
            let got = progress(Some(&started), &remaining, &health, Some("x".into()))
                .expect("waiting on something");
            let states: Vec<StepState> = got.steps.iter().map(|s| s.state).collect();
            assert_eq!(states, want, "{name}");
        }
    }
}
