//! `requireApprovedPlan`: a revision's plan runs only when its commit approves that very plan.
//!
//! The plan the daemon computes against what runs must have a digest the revision approves
//! (see [`crate::source::approval`]). Once it has, the revision is recorded as approved and its
//! rollout goes on, batch after batch, without asking again; so do repairs of a revision that
//! converged. Otherwise the cluster is held, and the hold says what would run, what the commit
//! approves, and how the plan against what runs differs from the plan a reviewer saw: this
//! revision against the last applied one, as `drover plan` prints it.

use std::collections::BTreeMap;

use crate::api::{PlanHold, ReviewedPlan};
use crate::model::Cluster;
use crate::plan::render::step_line;
use crate::plan::{as_if_running, plan_cluster, ClusterPlan, Step};
use crate::source::ClusterEntry;

use super::intent::Intent;

/// What holds `plan` back for `entry`'s revision, or `None` when it may run. Records the
/// approval in `intent` when the revision approves the plan.
pub fn hold(
    intent: &mut Intent,
    entry: &ClusterEntry,
    plan: &ClusterPlan,
    converged: Option<(&str, &Cluster)>,
) -> Option<PlanHold> {
    let revision = entry.revision.to_string();
    let already = [&intent.approved_revision, &intent.applied_revision]
        .iter()
        .any(|r| r.as_deref() == Some(revision.as_str()));
    if already || plan.steps().next().is_none() {
        return None;
    }
    if entry.approvals.approves(&plan.digest) {
        intent.approved_revision = Some(revision);
        return None;
    }
    let reviewed = converged.map(|(base, cluster)| {
        let reviewed = plan_cluster(&entry.cluster, &as_if_running(cluster), None);
        let (only_running, only_reviewed) = difference(plan, &reviewed);
        ReviewedPlan {
            base: base.to_string(),
            digest: reviewed.digest,
            only_running,
            only_reviewed,
        }
    });
    Some(PlanHold {
        revision,
        digest: plan.digest.clone(),
        steps: lines(plan).collect(),
        approved: entry.approvals.iter().map(str::to_string).collect(),
        reviewed,
    })
}

/// One line on why `hold` holds: the condition's message and the commit's verdict.
pub fn summary(hold: &PlanHold) -> String {
    let short = |d: &str| d[..d.len().min("sha256:".len() + 12)].to_string();
    let wanted = short(&hold.digest);
    let why = match (&hold.reviewed, hold.approved.is_empty()) {
        (_, true) => "the commit approves no plan".to_string(),
        (Some(r), false) if hold.approved.contains(&r.digest) => format!(
            "what runs differs from {}: {} more and {} fewer steps than the approved plan",
            &r.base[..r.base.len().min(12)],
            r.only_running.len(),
            r.only_reviewed.len()
        ),
        (_, false) => format!(
            "the commit approves {}",
            hold.approved
                .iter()
                .map(|d| short(d))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!("plan {wanted} is not approved: {why}")
}

/// The plan's steps as lines, gates left out.
fn lines(plan: &ClusterPlan) -> impl Iterator<Item = String> + '_ {
    plan.steps()
        .filter(|s| !matches!(s, Step::AwaitHealthy { .. }))
        .map(step_line)
}

/// The steps only `running` has, and those only `reviewed` has, each counted as often as it
/// occurs.
fn difference(running: &ClusterPlan, reviewed: &ClusterPlan) -> (Vec<String>, Vec<String>) {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for line in lines(running) {
        *counts.entry(line).or_default() += 1;
    }
    for line in lines(reviewed) {
        *counts.entry(line).or_default() -= 1;
    }
    let (mut more, mut fewer) = (Vec::new(), Vec::new());
    for (line, n) in counts {
        let side = if n > 0 { &mut more } else { &mut fewer };
        side.extend(std::iter::repeat_n(line, n.unsigned_abs() as usize));
    }
    (more, fewer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Batch, Phase, PhaseKind};

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn start(node: &str) -> Step {
        Step::StartContainer {
            node: node.into(),
            component: "api".into(),
            container: format!("c.{node}.api"),
        }
    }

    fn plan(steps: Vec<Step>) -> ClusterPlan {
        ClusterPlan {
            cluster: "dev".into(),
            definition: A.into(),
            new_cluster: false,
            phases: vec![Phase {
                kind: PhaseKind::Controlplane,
                batches: vec![Batch {
                    nodes: vec![],
                    steps,
                }],
            }],
            errors: vec![],
            warnings: vec![],
            digest: B.into(),
        }
    }

    #[test]
    fn the_difference_counts_each_step() {
        let running = plan(vec![start("n1"), start("n2"), start("n2")]);
        let reviewed = plan(vec![start("n2"), start("n3")]);
        let (more, fewer) = difference(&running, &reviewed);
        assert_eq!(
            more,
            [
                "n1: start stopped api container",
                "n2: start stopped api container"
            ]
        );
        assert_eq!(fewer, ["n3: start stopped api container"]);
    }

    #[test]
    fn the_summary_says_why() {
        let hold = |approved: &[&str], reviewed: Option<&str>| PlanHold {
            revision: "0123456789abcdef".into(),
            digest: B.into(),
            steps: vec![],
            approved: approved.iter().map(|s| s.to_string()).collect(),
            reviewed: reviewed.map(|digest| ReviewedPlan {
                base: "fedcba9876543210".into(),
                digest: digest.into(),
                only_running: vec!["n1: start api container".into()],
                only_reviewed: vec![],
            }),
        };
        let cases = [
            (hold(&[], None), "the commit approves no plan"),
            (hold(&[A], None), "the commit approves sha256:aaaaaaaaaaaa"),
            (
                hold(&[A], Some(A)),
                "what runs differs from fedcba987654: 1 more and 0 fewer steps than the approved plan",
            ),
            (hold(&[A], Some(B)), "the commit approves sha256:aaaaaaaaaaaa"),
        ];
        for (hold, why) in cases {
            assert_eq!(
                summary(&hold),
                format!("plan sha256:bbbbbbbbbbbb is not approved: {why}")
            );
        }
    }
}
