use super::*;
use crate::api::{ClusterNode, Condition};

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";

fn node(name: &str, ready: bool) -> ClusterNode {
    ClusterNode {
        name: name.into(),
        address: "127.0.0.1".into(),
        connected: true,
        generation: Some(1),
        applied_generation: Some(1),
        revision: Some(A.into()),
        ready,
        reason: None,
    }
}

fn condition(kind: ConditionType, status: bool, message: &str) -> Condition {
    Condition {
        kind,
        status,
        reason: "R".into(),
        message: message.into(),
        since: "2026-12-03T00:00:00Z".into(),
    }
}

fn status(
    desired: &str,
    applied: Option<&str>,
    ready: bool,
    stalled: bool,
    nodes: &[bool],
) -> ClusterStatus {
    ClusterStatus {
        name: "dev".into(),
        desired_revision: Some(desired.into()),
        applied_revision: applied.map(String::from),
        held_back: false,
        conditions: vec![
            condition(ConditionType::Ready, ready, ""),
            condition(ConditionType::Reconciling, !ready && !stalled, ""),
            condition(
                ConditionType::Stalled,
                stalled,
                "step 4 failed on node-2: pull access denied",
            ),
        ],
        plan: None,
        findings: Vec::new(),
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, r)| node(&format!("node-{i}"), *r))
            .collect(),
        snapshots: None,
        hold: None,
    }
}

#[test]
fn a_status_becomes_the_verdict_on_its_commit() {
    let cases = [
        (
            status(A, Some(A), true, false, &[true, true, true, true]),
            Some((A, State::Success, "dev: applied to 4/4 nodes, healthy")),
        ),
        (
            status(B, Some(A), false, false, &[true, false, true, true]),
            Some((B, State::Pending, "dev: rolling out, 3/4 nodes ready")),
        ),
        // Ready at the old revision is not the new one applied.
        (
            status(B, Some(A), true, false, &[true, true]),
            Some((B, State::Pending, "dev: rolling out, 2/2 nodes ready")),
        ),
        (
            status(B, Some(A), false, true, &[true, true]),
            Some((
                B,
                State::Failure,
                "dev: stalled: step 4 failed on node-2: pull access denied",
            )),
        ),
        // A watched working tree has no commit to tell.
        (status("worktree#3", None, true, false, &[true]), None),
    ];
    for (status, want) in cases {
        let got = verdict(&status, None);
        let got = got
            .as_ref()
            .map(|v| (v.commit.as_str(), v.state, v.description.as_str()));
        assert_eq!(got, want, "{status:?}");
    }
}

#[test]
fn statuses_are_named_per_cluster_and_link_to_the_dashboard() {
    let dashboard = url::Url::parse("https://drover.example/ui/").unwrap();
    let v = verdict(&status(A, Some(A), true, false, &[true]), Some(&dashboard)).unwrap();
    assert_eq!(v.context, "drover/dev");
    assert_eq!(
        v.target_url.as_deref(),
        Some("https://drover.example/ui/clusters/dev")
    );
    let held = held_back("dev", B, None);
    assert_eq!((held.commit.as_str(), held.state), (B, State::Failure));
    assert!(
        held.description.starts_with("dev: held back"),
        "{}",
        held.description
    );
}
