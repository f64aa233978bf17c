//! The reconciler's decisions, pass by pass, against simulated agents: each agent applies the
//! plan it was declared (or not: it is away, or its steps fail) and reports as a real one
//! would. The loop around the reconciler (saving, the hub) is covered by `serve.rs` with real
//! processes; here every rule of the rollout is checked on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use drover::api::{ClusterStatus, ConditionType};
use drover::etcd_pki::ClusterCa;
use drover::model::{load_sources, Cluster, SourceFile};
use drover::nodeplan::{NodeSpec, ETCD_COMPONENT};
use drover::protocol::{
    AppliedMark, ContainerState, EtcdMemberInfo, EtcdTask, EtcdTaskOutcome, StepReport,
};
use drover::reconcile::intent::Intent;
use drover::reconcile::{Inputs, NodeReport, Reconciler, TaskCall};
use drover::source::{ClusterEntry, Revision};
use drover::state::StateDir;

fn load(text: &str) -> Arc<Cluster> {
    let file = SourceFile {
        path: "clusters/dev.yaml".into(),
        bytes: text.as_bytes().to_vec(),
    };
    let repo = load_sources(vec![file], Vec::new());
    assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
    Arc::new(repo.clusters.into_iter().next().expect("one cluster"))
}

/// Three etcd + control-plane nodes (their api probed), `workers` workers, `api` the api image.
fn definition(workers: usize, api: &str, extra_etcd: bool) -> String {
    let mut nodes = String::new();
    for i in 1..=3 {
        nodes.push_str(&format!(
            "    - {{name: node-{i}, address: 127.0.0.{}, roles: [etcd, controlplane]}}\n",
            i + 1
        ));
    }
    for i in 1..=workers {
        nodes.push_str(&format!(
            "    - {{name: w-{i}, address: 127.0.1.{i}, roles: [worker]}}\n"
        ));
    }
    if extra_etcd {
        nodes.push_str("    - {name: node-9, address: 127.0.0.9, roles: [etcd]}\n");
    }
    format!(
        "apiVersion: drover.dev/v1alpha1
kind: Cluster
metadata: {{name: dev}}
spec:
  nodes:
{nodes}  etcd: {{image: drover-test/etcd:3.4.23}}
  components:
    controlplane:
      - name: api
        image: {api}
        command: [httpd, -f, -p, '{{{{ node.address }}}}:8080']
        health: {{http: 'http://{{{{ node.address }}}}:8080/'}}
    worker:
      - name: app
        image: drover-test/busybox:1
        command: [httpd, -f, -p, '{{{{ node.address }}}}:9090']
  rollout:
    maxUnavailable: {{controlplane: 1, worker: 1}}
"
    )
}

fn entry(text: &str, revision: u64) -> ClusterEntry {
    ClusterEntry {
        cluster: load(text),
        revision: Revision::WorkTree(revision),
        held_back: false,
        approvals: Default::default(),
    }
}

/// How a simulated agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agent {
    /// Applies its plan and reports it running and healthy.
    Good,
    /// Holds no session.
    Away,
    /// Reports a failed pull for every container step.
    BadPull,
}

/// Simulated agents: what each was declared and how it behaves.
struct Fleet {
    agents: BTreeMap<String, Agent>,
    reports: BTreeMap<String, NodeReport>,
    /// The cluster's etcd CA, when the scenario issues certificates.
    ca: Option<ClusterCa>,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            agents: BTreeMap::new(),
            reports: BTreeMap::new(),
            ca: None,
        }
    }

    fn set(&mut self, node: &str, agent: Agent) {
        self.agents.insert(node.to_string(), agent);
    }

    /// Every agent takes the plan it is declared and reports.
    fn apply(&mut self, declared: &BTreeMap<String, Option<NodeSpec>>) {
        self.reports.clear();
        for (node, spec) in declared {
            let agent = self.agents.get(node).copied().unwrap_or(Agent::Good);
            let report = match (agent, spec) {
                (Agent::Away, _) => NodeReport::default(),
                (_, None) => NodeReport {
                    connected: true,
                    ..NodeReport::default()
                },
                (Agent::Good, Some(spec)) => running(spec),
                (Agent::BadPull, Some(spec)) => NodeReport {
                    steps: spec
                        .containers
                        .keys()
                        .map(|c| StepReport {
                            subject: c.clone(),
                            action: "created".into(),
                            error: Some("pull access denied for nope".into()),
                        })
                        .collect(),
                    containers: BTreeMap::new(),
                    ..running(spec)
                },
            };
            self.reports.insert(node.clone(), report);
        }
    }
}

/// The report of an agent that runs `spec`, every probe passing.
fn running(spec: &NodeSpec) -> NodeReport {
    NodeReport {
        connected: true,
        applied: Some(AppliedMark {
            generation: 1,
            checksum: spec.checksum(),
        }),
        steps: Vec::new(),
        containers: spec
            .containers
            .keys()
            .map(|name| {
                let state = ContainerState {
                    running: true,
                    // What the real agent reports: its certificates count for etcd's.
                    spec_hash: spec.container_hash(name).expect("a planned container"),
                    healthy: spec.health.contains_key(name).then_some(true),
                    reason: None,
                };
                (name.clone(), state)
            })
            .collect(),
        last_seen: None,
    }
}

/// What one pass changed: the nodes whose declared plan is new.
fn changed(
    before: &BTreeMap<String, Option<NodeSpec>>,
    after: &BTreeMap<String, Option<NodeSpec>>,
) -> BTreeSet<String> {
    after
        .iter()
        .filter(|(n, s)| before.get(*n) != Some(*s))
        .map(|(n, _)| n.clone())
        .chain(before.keys().filter(|n| !after.contains_key(*n)).cloned())
        .collect()
}

/// The membership etcd would list: the record's members, each named and known by its name.
fn listed(r: &Reconciler) -> Vec<EtcdMemberInfo> {
    r.intent()
        .members
        .iter()
        .map(|(name, url)| EtcdMemberInfo {
            id: name.clone(),
            name: name.clone(),
            peer_urls: vec![url.clone()],
            client_urls: Vec::new(),
        })
        .collect()
}

/// One pass; a membership task it asks for succeeds and is recorded in `tasks`.
fn pass(r: &mut Reconciler, entry: &ClusterEntry, fleet: &Fleet, tasks: &mut Vec<TaskCall>) {
    let members = listed(r);
    let inputs = Inputs {
        entry,
        reports: &fleet.reports,
        members: Some(&members),
        ca: fleet.ca.as_ref(),
        now: SystemTime::now(),
    };
    let action = r.reconcile(&inputs);
    if let Some(call) = action.task {
        tasks.push(call);
        r.task_done(&inputs, Ok(EtcdTaskOutcome::Done));
    }
}

/// Runs passes until one changes nothing; returns each pass's changed nodes (the rollout's
/// batches, in order) and the reconciler's status.
fn converge(
    r: &mut Reconciler,
    entry: &ClusterEntry,
    fleet: &mut Fleet,
) -> (Vec<BTreeSet<String>>, ClusterStatus) {
    let (batches, status, _) = converge_with_tasks(r, entry, fleet);
    (batches, status)
}

/// `converge`, with the membership tasks the passes ran.
fn converge_with_tasks(
    r: &mut Reconciler,
    entry: &ClusterEntry,
    fleet: &mut Fleet,
) -> (Vec<BTreeSet<String>>, ClusterStatus, Vec<TaskCall>) {
    let mut batches = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let before = declared(r, &entry.cluster);
        fleet.apply(&before);
        pass(r, entry, fleet, &mut tasks);
        let after = declared(r, &entry.cluster);
        let c = changed(&before, &after);
        if c.is_empty() {
            fleet.apply(&after);
            pass(r, entry, fleet, &mut tasks);
            return (batches, r.status().clone(), tasks);
        }
        batches.push(c);
    }
    panic!("no fixed point after 50 passes: {batches:?}");
}

/// What each declared node should be told, as plain plans.
fn declared(
    r: &Reconciler,
    cluster: &drover::model::Cluster,
) -> BTreeMap<String, Option<NodeSpec>> {
    r.declared(cluster)
        .into_iter()
        .map(|(n, s)| (n, s.map(|s| s.spec().clone())))
        .collect()
}

fn set(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.to_string()).collect()
}

/// The condition that holds, with its reason and message.
fn state(status: &ClusterStatus) -> (ConditionType, String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.status)
        .expect("one condition holds");
    (c.kind, c.reason.clone(), c.message.clone())
}

/// A reconciler that took `text` to Ready with good agents.
fn converged(text: &str) -> (Reconciler, Fleet) {
    let mut r = Reconciler::new("dev", Intent::default());
    let mut fleet = Fleet::new();
    let (_, status) = converge(&mut r, &entry(text, 1), &mut fleet);
    assert_eq!(state(&status).0, ConditionType::Ready, "{status:#?}");
    (r, fleet)
}

#[test]
fn a_new_cluster_starts_etcd_together_then_one_control_plane_node_at_a_time() {
    let mut r = Reconciler::new("dev", Intent::default());
    let mut fleet = Fleet::new();
    let e = entry(&definition(2, "drover-test/busybox:1", false), 1);
    let (batches, status) = converge(&mut r, &e, &mut fleet);
    assert_eq!(
        batches,
        vec![
            set(&["node-1", "node-2", "node-3"]),
            set(&["node-1"]),
            set(&["node-2"]),
            set(&["node-3"]),
            set(&["w-1", "w-2"]),
        ]
    );
    let (kind, reason, _) = state(&status);
    assert_eq!((kind, reason.as_str()), (ConditionType::Ready, "Converged"));
    assert_eq!(status.applied_revision.as_deref(), Some("worktree#1"));
    // The members bootstrapped together, as a new cluster.
    let declared = declared(&r, &e.cluster);
    let node1 = declared["node-1"].as_ref().unwrap();
    let bootstrap = node1.etcd_bootstrap.as_ref().expect("bootstrap flags");
    assert!(!bootstrap.existing);
    assert_eq!(bootstrap.initial_cluster.len(), 3);
    assert!(node1.containers.contains_key(ETCD_COMPONENT));
    assert!(node1.containers.contains_key("api"));
}

#[test]
fn the_first_batch_waits_for_every_member_healthy_before_any_component() {
    let mut r = Reconciler::new("dev", Intent::default());
    let mut fleet = Fleet::new();
    fleet.set("node-3", Agent::Away);
    let e = entry(&definition(1, "drover-test/busybox:1", false), 1);
    let (batches, status) = converge(&mut r, &e, &mut fleet);
    assert_eq!(batches, vec![set(&["node-1", "node-2", "node-3"])]);
    let (kind, reason, message) = state(&status);
    assert_eq!(kind, ConditionType::Reconciling);
    assert_eq!(reason, "Waiting");
    assert_eq!(message, "waiting for node-3's agent to connect");
    assert_eq!(status.applied_revision, None);
    // The agent comes back: the rollout goes on from where it waited.
    fleet.set("node-3", Agent::Good);
    let (batches, status) = converge(&mut r, &e, &mut fleet);
    assert_eq!(batches.len(), 4, "{batches:?}");
    assert_eq!(state(&status).0, ConditionType::Ready);
}

#[test]
fn an_image_change_rolls_one_node_at_a_time_and_an_away_agent_holds_it() {
    let text = definition(0, "drover-test/busybox:1", false);
    let (mut r, mut fleet) = converged(&text);
    fleet.set("node-2", Agent::Away);
    let next = entry(&definition(0, "drover-test/busybox:2", false), 2);
    let (batches, status) = converge(&mut r, &next, &mut fleet);
    // node-2 is away: nothing may go while it is down (it would be a second node down).
    assert_eq!(batches, Vec::<BTreeSet<String>>::new());
    assert_eq!(state(&status).2, "waiting for node-2's agent to connect");
    assert_eq!(status.applied_revision.as_deref(), Some("worktree#1"));
    fleet.set("node-2", Agent::Good);
    let (batches, status) = converge(&mut r, &next, &mut fleet);
    assert_eq!(
        batches,
        vec![set(&["node-1"]), set(&["node-2"]), set(&["node-3"])]
    );
    assert_eq!(status.applied_revision.as_deref(), Some("worktree#2"));
}

#[test]
fn a_failed_step_stalls_with_its_reason_and_the_fix_rolls_out() {
    let text = definition(0, "drover-test/busybox:1", false);
    let (mut r, mut fleet) = converged(&text);
    fleet.set("node-1", Agent::BadPull);
    let bad = entry(&definition(0, "127.0.0.1:1/nope:1", false), 2);
    let (batches, status) = converge(&mut r, &bad, &mut fleet);
    assert_eq!(batches, vec![set(&["node-1"])], "only the first batch goes");
    let (kind, reason, message) = state(&status);
    assert_eq!(kind, ConditionType::Stalled);
    assert_eq!(reason, "StepFailed");
    assert_eq!(
        message,
        "created api failed on node-1: pull access denied for nope"
    );
    // The fix replaces node-1's plan first: its failed node is in the batch, so it may go.
    fleet.set("node-1", Agent::Good);
    let fixed = entry(&definition(0, "drover-test/busybox:3", false), 3);
    let (batches, status) = converge(&mut r, &fixed, &mut fleet);
    assert_eq!(
        batches,
        vec![set(&["node-1"]), set(&["node-2"]), set(&["node-3"])]
    );
    assert_eq!(state(&status).0, ConditionType::Ready);
}

#[test]
fn an_unsafe_plan_never_runs() {
    let text = definition(0, "drover-test/busybox:1", false);
    let (mut r, mut fleet) = converged(&text);
    // Two of three members away (unhealthy), and the definition removes a member.
    fleet.set("node-2", Agent::Away);
    fleet.set("node-3", Agent::Away);
    let two = definition(0, "drover-test/busybox:1", false).replace(
        "    - {name: node-3, address: 127.0.0.4, roles: [etcd, controlplane]}\n",
        "",
    );
    let (batches, status) = converge(&mut r, &entry(&two, 2), &mut fleet);
    assert!(batches.is_empty(), "{batches:?}");
    let (kind, reason, message) = state(&status);
    assert_eq!(
        (kind, reason.as_str()),
        (ConditionType::Stalled, "UnsafePlan")
    );
    assert!(message.contains("etcd quorum is lost"), "{message}");
    assert_eq!(status.applied_revision.as_deref(), Some("worktree#1"));
}

#[test]
fn a_new_member_is_added_through_a_healthy_one_then_joins_and_leaves_the_same_way() {
    let text = definition(0, "drover-test/busybox:1", false);
    let (mut r, mut fleet) = converged(&text);
    let grown = entry(&definition(0, "drover-test/busybox:1", true), 2);
    let (batches, status, tasks) = converge_with_tasks(&mut r, &grown, &mut fleet);
    assert_eq!(batches, vec![set(&["node-9"])]);
    assert_eq!(state(&status).0, ConditionType::Ready, "{status:#?}");
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(
        tasks[0].task,
        EtcdTask::MemberAdd {
            peer_url: "https://127.0.0.9:2380".into()
        }
    );
    assert_ne!(tasks[0].agent, "node-9", "run by a member that runs");
    let spec = declared(&r, &grown.cluster)["node-9"].clone().unwrap();
    assert_eq!(
        spec.etcd_client_url.as_deref(),
        Some("https://127.0.0.9:2379"),
        "its agent's etcd tasks dial its member"
    );
    let bootstrap = spec.etcd_bootstrap.expect("bootstrap flags");
    assert!(bootstrap.existing, "it joins the running members");
    assert_eq!(bootstrap.initial_cluster.len(), 4);

    // And back: the member leaves before its container goes.
    let back = entry(&text, 3);
    let (batches, status, tasks) = converge_with_tasks(&mut r, &back, &mut fleet);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(
        tasks[0].task,
        EtcdTask::MemberRemove {
            id: "node-9".into()
        }
    );
    assert!(!r.intent().members.contains_key("node-9"));
    assert!(!declared(&r, &back.cluster).contains_key("node-9"));
    assert_eq!(batches.last(), Some(&set(&["node-9"])));
    assert_eq!(state(&status).0, ConditionType::Ready, "{status:#?}");
}

#[test]
fn a_failed_membership_task_is_retried_with_backoff_and_stalls_only_when_it_keeps_failing() {
    let (mut r, mut fleet) = converged(&definition(0, "drover-test/busybox:1", false));
    let grown = entry(&definition(0, "drover-test/busybox:1", true), 2);
    fleet.apply(&declared(&r, &grown.cluster));
    let members = listed(&r);
    let inputs = Inputs {
        entry: &grown,
        reports: &fleet.reports,
        members: Some(&members),
        ca: None,
        now: SystemTime::UNIX_EPOCH,
    };
    for attempt in 1..=6u32 {
        let call = r
            .reconcile(&inputs)
            .task
            .expect("the add is asked for again");
        assert!(matches!(call.task, EtcdTask::MemberAdd { .. }), "{call:?}");
        let failed = EtcdTaskOutcome::Failed {
            error: "etcdserver: too many requests".into(),
        };
        let action = r.task_done(&inputs, Ok(failed));
        assert!(action.task.is_none() && !action.save, "{action:?}");
        assert!(action.requeue <= Duration::from_secs(60), "{action:?}");
        let (kind, reason, message) = state(r.status());
        let want = if attempt >= 5 {
            ConditionType::Stalled
        } else {
            ConditionType::Reconciling
        };
        assert_eq!(
            (kind, reason.as_str()),
            (want, "EtcdTaskFailed"),
            "attempt {attempt}"
        );
        assert!(message.contains("too many requests"), "{message}");
        assert!(
            message.contains(&format!("{attempt} in a row")),
            "{message}"
        );
        assert!(
            !r.intent().members.contains_key("node-9"),
            "nothing recorded"
        );
    }
    // The task succeeds at last: the rollout goes on from where it was.
    let (batches, status, tasks) = converge_with_tasks(&mut r, &grown, &mut fleet);
    assert_eq!(batches, vec![set(&["node-9"])]);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(state(&status).0, ConditionType::Ready, "{status:#?}");
}

#[test]
fn a_requested_rotation_reissues_every_node_and_restarts_members_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let daemon_state = StateDir::new(dir.path().join("state")).into();
    let text = definition(2, "drover-test/busybox:1", false);
    let mut r = Reconciler::new("dev", Intent::default());
    let mut fleet = Fleet::new();
    fleet.ca = Some(ClusterCa::ensure(&daemon_state, "dev").unwrap());
    let first = entry(&text, 1);
    let (_, status) = converge(&mut r, &first, &mut fleet);
    assert_eq!(state(&status).0, ConditionType::Ready, "{status:#?}");
    let pki = |r: &Reconciler| -> BTreeMap<String, _> {
        r.intent()
            .nodes
            .iter()
            .map(|(n, i)| (n.clone(), i.spec.pki.clone()))
            .collect()
    };
    let before = pki(&r);
    assert!(
        before.values().all(|p| !p.is_empty()),
        "every node has certificates"
    );

    // Nothing due: a pass reissues nothing.
    let (batches, _) = converge(&mut r, &first, &mut fleet);
    assert!(batches.is_empty(), "{batches:?}");

    r.request_rotation();
    let (batches, status) = converge(&mut r, &first, &mut fleet);
    assert_eq!(state(&status).0, ConditionType::Ready, "{status:#?}");
    let after = pki(&r);
    for (node, files) in &after {
        assert_ne!(files, &before[node], "{node} kept its certificates");
    }
    // Members restart on theirs one at a time; a batch never holds two of them.
    let members: BTreeSet<String> = r.intent().members.keys().cloned().collect();
    assert_eq!(members.len(), 3);
    for batch in &batches {
        assert!(batch.intersection(&members).count() <= 1, "{batches:?}");
    }
    // And it is done: the next passes leave them alone.
    let (batches, _) = converge(&mut r, &first, &mut fleet);
    assert!(batches.is_empty(), "{batches:?}");
    assert_eq!(pki(&r), after);
}

#[test]
fn a_commit_that_leaves_a_converged_cluster_alone_is_followed_without_a_pass() {
    let text = definition(1, "drover-test/busybox:1", false);
    let (mut r, mut fleet) = converged(&text);
    let record = r.intent().clone();
    assert!(r.follow_unchanged(&entry(&text, 2)));
    let status = r.status();
    assert_eq!(status.desired_revision.as_deref(), Some("worktree#2"));
    assert_eq!(status.applied_revision.as_deref(), Some("worktree#2"));
    assert_eq!(state(status).0, ConditionType::Ready);
    assert_eq!(r.intent().nodes, record.nodes, "nothing else moved");

    // A changed definition needs a pass, and so does one not converged yet.
    let changed = entry(&definition(1, "drover-test/busybox:2", false), 3);
    assert!(!r.follow_unchanged(&changed));
    let mut tasks = Vec::new();
    fleet.apply(&declared(&r, &changed.cluster));
    pass(&mut r, &changed, &fleet, &mut tasks);
    assert_eq!(state(r.status()).0, ConditionType::Reconciling);
    assert!(!r.follow_unchanged(&entry(&definition(1, "drover-test/busybox:2", false), 4)));
}

#[test]
fn a_removed_node_is_cleaned_then_forgotten() {
    let text = definition(2, "drover-test/busybox:1", false);
    let (mut r, mut fleet) = converged(&text);
    let e = entry(&definition(1, "drover-test/busybox:1", false), 2);
    // w-2 is away: it is not forgotten before it applied its empty plan.
    fleet.set("w-2", Agent::Away);
    let (batches, status) = converge(&mut r, &e, &mut fleet);
    assert_eq!(batches, vec![set(&["w-2"])]);
    let told = declared(&r, &e.cluster);
    assert_eq!(told["w-2"], Some(NodeSpec::default()));
    assert_eq!(state(&status).2, "waiting for w-2's agent to connect");
    fleet.set("w-2", Agent::Good);
    let (batches, status) = converge(&mut r, &e, &mut fleet);
    assert_eq!(batches, vec![set(&["w-2"])]);
    assert!(!declared(&r, &e.cluster).contains_key("w-2"));
    assert_eq!(state(&status).0, ConditionType::Ready);
}

/// An added member that never started (a crash between the add and the start), as etcd
/// lists it: no name yet, only its peer URL.
fn unstarted(id: &str, peer_url: &str) -> EtcdMemberInfo {
    EtcdMemberInfo {
        id: id.into(),
        name: String::new(),
        peer_urls: vec![peer_url.into()],
        client_urls: Vec::new(),
    }
}

#[test]
fn a_member_added_but_never_started_is_started_not_added_twice() {
    let text = definition(0, "drover-test/busybox:1", false);
    let (mut r, mut fleet) = converged(&text);
    let grown = entry(&definition(0, "drover-test/busybox:1", true), 2);
    fleet.apply(&declared(&r, &grown.cluster));
    let mut members = listed(&r);
    members.push(unstarted("9e9e", "https://127.0.0.9:2380"));
    let inputs = Inputs {
        entry: &grown,
        reports: &fleet.reports,
        members: Some(&members),
        ca: None,
        now: SystemTime::UNIX_EPOCH,
    };
    let action = r.reconcile(&inputs);
    assert_eq!(action.task, None, "no second member add");
    let spec = declared(&r, &grown.cluster)["node-9"].clone().unwrap();
    let bootstrap = spec.etcd_bootstrap.expect("it starts, joining");
    assert!(bootstrap.existing);
    assert!(
        bootstrap
            .initial_cluster
            .contains(&"node-9=https://127.0.0.9:2380".to_string()),
        "{bootstrap:?}"
    );
}

#[test]
fn a_member_added_for_a_node_no_longer_wanted_is_removed() {
    let text = definition(0, "drover-test/busybox:1", false);
    let (mut r, mut fleet) = converged(&text);
    let e = entry(&text, 2);
    fleet.apply(&declared(&r, &e.cluster));
    let mut members = listed(&r);
    members.push(unstarted("7a7a", "https://127.0.0.77:2380"));
    let inputs = Inputs {
        entry: &e,
        reports: &fleet.reports,
        members: Some(&members),
        ca: None,
        now: SystemTime::UNIX_EPOCH,
    };
    let action = r.reconcile(&inputs);
    let call = action.task.expect("a membership task");
    assert_eq!(call.task, EtcdTask::MemberRemove { id: "7a7a".into() });
}
