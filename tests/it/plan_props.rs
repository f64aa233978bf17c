//! Properties of the planner over generated clusters: a plan converges (running it and planning
//! again gives nothing to do), and no etcd step sequence goes below quorum unless the plan says
//! so. `PROPTEST_CASES` sets the number of cases (default 256).

use std::collections::BTreeMap;

use drover::model::{load_sources, Cluster, SourceFile};
use drover::plan::{
    as_if_running, plan, plan_cluster, quorum, simulate, Desired, Finding, InitialState, Observed,
    ObservedCluster, Planner, Step,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    crate::support::props::cases(256)
}

/// The knobs of a generated cluster; `render` turns them into a valid cluster file.
#[derive(Debug, Clone)]
struct Shape {
    /// Per node slot (up to 7): absent, or its roles (etcd, controlplane, worker).
    nodes: Vec<Option<(bool, bool, bool)>>,
    /// Per slot: whether the address moved.
    moved: Vec<bool>,
    etcd_version: u8,
    etcd_flag: bool,
    api: Option<u8>,
    app: Option<(u8, bool, u8)>,
    snapshots: Option<u8>,
    worker_percent: u8,
}

fn shape() -> impl Strategy<Value = Shape> {
    let role = (any::<bool>(), any::<bool>(), any::<bool>());
    (
        prop::collection::vec(prop::option::weighted(0.8, role), 7),
        prop::collection::vec(prop::bool::weighted(0.1), 7),
        0u8..2,
        any::<bool>(),
        prop::option::of(0u8..2),
        prop::option::of((0u8..2, any::<bool>(), 0u8..2)),
        prop::option::of(0u8..2),
        1u8..=100,
    )
        .prop_map(
            |(nodes, moved, etcd_version, etcd_flag, api, app, snapshots, worker_percent)| Shape {
                nodes,
                moved,
                etcd_version,
                etcd_flag,
                api,
                app,
                snapshots,
                worker_percent,
            },
        )
}

fn render(s: &Shape) -> String {
    let mut nodes = String::new();
    let mut etcd = 0;
    for (i, slot) in s.nodes.iter().enumerate() {
        let Some((e, c, w)) = *slot else { continue };
        let mut roles: Vec<&str> = Vec::new();
        if e {
            roles.push("etcd");
            etcd += 1;
        }
        if c {
            roles.push("controlplane");
        }
        if w || roles.is_empty() {
            roles.push("worker");
        }
        let host = if s.moved[i] { 100 + i } else { 2 + i };
        nodes.push_str(&format!(
            "    - {{name: n{i}, address: 127.0.3.{host}, roles: [{}]}}\n",
            roles.join(", ")
        ));
    }
    if etcd == 0 {
        // Every cluster needs an etcd member: slot 7 is one.
        nodes.push_str("    - {name: n7, address: 127.0.3.9, roles: [etcd]}\n");
    }
    let flag = if s.etcd_flag {
        ", extraArgs: {snapshot-count: '5000'}"
    } else {
        ""
    };
    let snap = match s.snapshots {
        None => String::new(),
        Some(0) => ", snapshots: {every: 6h, store: local, retention: {last: 6}}".into(),
        Some(_) => {
            ", snapshots: {schedule: '0 * * * *', store: s3, retention: {last: 3, daily: 7}}".into()
        }
    };
    let mut text = format!(
        "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: p}}\nspec:\n  nodes:\n{nodes}  etcd: {{image: 'drover-test/etcd:3.4.2{}'{flag}{snap}}}\n  components:\n",
        s.etcd_version
    );
    if let Some(v) = s.api {
        text.push_str(&format!(
            "    controlplane: [{{name: api, image: 'busybox:{v}', command: [httpd, -p, '{{{{ node.address }}}}:80']}}]\n"
        ));
    }
    if let Some((v, file, content)) = s.app {
        let files = if file {
            format!(", files: [{{path: /etc/app, content: 'v{content}'}}]")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "    worker: [{{name: app, image: 'app:{v}', env: {{NODE: '{{{{ node.name }}}}'}}{files}}}]\n"
        ));
    }
    text.push_str(&format!(
        "  rollout: {{maxUnavailable: {{worker: '{}%', controlplane: 1}}}}\n",
        s.worker_percent
    ));
    text
}

fn load(s: &Shape) -> Cluster {
    let text = render(s);
    let file = SourceFile {
        path: "clusters/p.yaml".into(),
        bytes: text.clone().into_bytes(),
    };
    let mut repo = load_sources(vec![file], Vec::new());
    assert!(!repo.has_errors(), "{text}\n{}", repo.render_diagnostics());
    repo.clusters.remove(0)
}

/// Walks the etcd steps of a plan and returns the steps at which fewer members are healthy
/// than a quorum of the membership.
fn quorum_violations(start: &ObservedCluster, steps: &[&Step]) -> Vec<String> {
    let mut members: BTreeMap<String, bool> = start
        .etcd_members
        .iter()
        .map(|(n, m)| (n.clone(), m.healthy))
        .collect();
    let mut violations = Vec::new();
    let check = |members: &BTreeMap<String, bool>, what: String, out: &mut Vec<String>| {
        let healthy = members.values().filter(|h| **h).count();
        if !members.is_empty() && healthy < quorum(members.len()) {
            out.push(format!("{what}: {healthy} of {} healthy", members.len()));
        }
    };
    for step in steps {
        match step {
            Step::AddEtcdMember { node, .. } => {
                members.insert(node.clone(), false);
                check(&members, format!("add {node}"), &mut violations);
            }
            Step::StartEtcdMember {
                node,
                initial_state: InitialState::Existing,
                ..
            } => {
                members.insert(node.clone(), true);
            }
            Step::StartEtcdMember { node, .. } => {
                // Bootstrap: members start together and elect a leader once a quorum is up.
                members.insert(node.clone(), true);
            }
            Step::RemoveEtcdMember { node } => {
                members.remove(node.as_str());
                check(&members, format!("remove {node}"), &mut violations);
            }
            Step::RecreateContainer {
                node, component, ..
            }
            | Step::StartContainer {
                node, component, ..
            } if component == "etcd" => {
                // While the container restarts, the member is down.
                members.insert(node.clone(), false);
                check(&members, format!("restart {node}"), &mut violations);
                members.insert(node.clone(), true);
            }
            _ => {}
        }
    }
    violations
}

proptest! {
    #![proptest_config(config())]

    /// Running a plan and planning again gives nothing to do, and the state reached is the one
    /// the head converges to.
    #[test]
    fn plans_converge(base in prop::option::of(shape()), head in shape()) {
        let head = load(&head);
        let start = base.map(|b| as_if_running(&load(&b))).unwrap_or_default();
        let plan = plan_cluster(&head, &start, None);
        let reached = simulate(&head, &start, &plan);
        let again = plan_cluster(&head, &reached, None);
        let leftover: Vec<&Step> = again.steps().collect();
        prop_assert!(leftover.is_empty(), "steps left after running the plan: {leftover:#?}");
        let target = as_if_running(&head);
        prop_assert_eq!(&reached.nodes, &target.nodes);
        prop_assert_eq!(&reached.etcd_members, &target.etcd_members);
        prop_assert_eq!(&reached.snapshot_policy, &target.snapshot_policy);
    }

    /// No etcd step goes below quorum unless the plan warns or refuses; from three or more
    /// healthy members, a plan that is not refused never does.
    #[test]
    fn etcd_steps_keep_quorum(base in shape(), head in shape()) {
        let (base, head) = (load(&base), load(&head));
        let start = as_if_running(&base);
        let plan = plan_cluster(&head, &start, None);
        let refused = plan.errors.iter().any(|e| {
            matches!(e, Finding::EtcdQuorumLost { .. })
        });
        let steps: Vec<&Step> = plan.steps().collect();
        let violations = quorum_violations(&start, &steps);
        if refused || violations.is_empty() {
            return Ok(());
        }
        prop_assert!(start.etcd_members.len() < 3, "below quorum from {} members: {violations:?}", start.etcd_members.len());
        let warned = plan.warnings.iter().any(|w| {
            matches!(w, Finding::EtcdAddLosesQuorum { .. } | Finding::EtcdRestartLosesQuorum { .. })
        });
        prop_assert!(warned, "below quorum without a warning: {violations:?}\n{:#?}", plan.warnings);
    }

    /// The caching planner gives exactly the plan `plan` gives, across a sequence of changes to
    /// the definitions and to what is observed.
    #[test]
    fn the_cache_never_changes_a_plan(steps in prop::collection::vec((shape(), any::<bool>()), 1..5)) {
        let mut planner = Planner::default();
        let mut observed = Observed::default();
        let mut generation = 0u64;
        for (shape, observe) in steps {
            let cluster = load(&shape);
            if observe {
                observed.clusters.insert("p".into(), as_if_running(&cluster));
                generation += 1;
            }
            let keys = [("p".to_string(), generation)].into_iter().collect();
            let desired = Desired {
                clusters: vec![&cluster],
                ..Desired::default()
            };
            let now = std::time::SystemTime::UNIX_EPOCH;
            let cached = planner.plan(&desired, &observed, &keys, now);
            prop_assert_eq!(cached, plan(&desired, &observed, now));
        }
    }
}
