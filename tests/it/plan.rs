//! The planner as reviewers see it: a base and a head revision of a cluster repository in, the
//! rendered plan out. Each test is one scenario; refresh the expectations with
//! `UPDATE_EXPECT=1 cargo test` and review the diff. The base is treated as running.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use drover::model::{load_sources, Cluster, Repository, SnapshotId, SourceFile};
use drover::plan::{self, as_if_running, render, Desired, Observed};
use expect_test::{expect, Expect};

fn load(text: &str) -> Repository {
    let file = SourceFile {
        path: "clusters/c.yaml".into(),
        bytes: text.as_bytes().to_vec(),
    };
    let repo = load_sources(vec![file], Vec::new());
    assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
    repo
}

fn observed_from(repo: &Repository) -> Observed {
    Observed {
        clusters: repo
            .clusters
            .iter()
            .map(|c| (c.name.to_string(), as_if_running(c)))
            .collect(),
    }
}

/// The plan text without its digest line (digests are tested on their own).
fn render_plan(head: &Repository, observed: &Observed, known: Option<&[&str]>) -> String {
    let known_snapshots = known.map(|ids| {
        let set: BTreeSet<SnapshotId> = ids.iter().map(|i| SnapshotId::parse(i).unwrap()).collect();
        head.clusters
            .iter()
            .map(|c| (c.name.to_string(), set.clone()))
            .collect::<BTreeMap<_, _>>()
    });
    let desired = Desired {
        clusters: head.clusters.iter().collect(),
        known_snapshots,
        held_back: BTreeSet::new(),
    };
    let p = plan::plan(&desired, observed, SystemTime::UNIX_EPOCH);
    let text = render::text(&p);
    text.lines()
        .filter(|l| !l.starts_with("plan digest:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Plans `head` as if `base` were running, with the etcd members of `unhealthy` reported
/// unhealthy.
fn check_unhealthy(base: &str, unhealthy: &[&str], head: &str, expect: Expect) {
    let mut observed = observed_from(&load(base));
    for cluster in observed.clusters.values_mut() {
        for name in unhealthy {
            cluster
                .etcd_members
                .get_mut(*name)
                .expect("a member")
                .healthy = false;
        }
    }
    expect.assert_eq(&render_plan(&load(head), &observed, None));
}

/// Plans `head` as if `base` were running (`None`: nothing runs yet).
fn check(base: Option<&str>, head: &str, expect: Expect) {
    let observed = base.map(|b| observed_from(&load(b))).unwrap_or_default();
    expect.assert_eq(&render_plan(&load(head), &observed, None));
}

const HEADER: &str =
    "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {name: dev}\nspec:\n";

/// A cluster: `nodes` lines, then the rest of the spec.
fn cluster(nodes: &[&str], rest: &str) -> String {
    let mut s = format!("{HEADER}  nodes:\n");
    for n in nodes {
        s.push_str(&format!("    - {n}\n"));
    }
    s.push_str(rest);
    s
}

fn etcd_cp(i: u32) -> String {
    format!(
        "{{name: cp-{i}, address: 127.0.0.{}, roles: [etcd, controlplane]}}",
        i + 1
    )
}

fn worker(i: u32) -> String {
    format!("{{name: w-{i}, address: 127.0.1.{i}, roles: [worker]}}")
}

const ETCD: &str = "  etcd: {image: drover-test/etcd:3.4.23}\n";

fn components(api_image: &str, worker_image: &str) -> String {
    format!(
        "  components:
    controlplane:
      - name: api
        image: {api_image}
        command: [httpd, -f, -p, '{{{{ node.address }}}}:8080']
        health: {{http: 'http://{{{{ node.address }}}}:8080/'}}
    worker:
      - name: app
        image: {worker_image}
        command: [httpd, -f, -p, '{{{{ node.address }}}}:9090']
"
    )
}

/// Three etcd + control-plane nodes and `workers` workers.
fn standard(workers: u32, rest: &str) -> String {
    let mut nodes: Vec<String> = (1..=3).map(etcd_cp).collect();
    nodes.extend((1..=workers).map(worker));
    let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    cluster(&refs, rest)
}

fn std_rest() -> String {
    format!(
        "{ETCD}{}",
        components("drover-test/busybox:1", "drover-test/busybox:1")
    )
}

#[test]
fn a_new_cluster_starts_etcd_together_then_everything_else() {
    check(
        None,
        &standard(1, &std_rest()),
        expect![[r#"
            cluster dev: new cluster, 7 steps in 3 phases
              1. etcd
                 - cp-1: start etcd member (new cluster; members cp-1, cp-2, cp-3)
                 - cp-2: start etcd member (new cluster; members cp-1, cp-2, cp-3)
                 - cp-3: start etcd member (new cluster; members cp-1, cp-2, cp-3)
                 - wait until etcd members cp-1, cp-2, cp-3 are healthy
              2. control plane
                 - cp-1: create api container (drover-test/busybox:1)
                 - cp-2: create api container (drover-test/busybox:1)
                 - cp-3: create api container (drover-test/busybox:1)
                 - wait until nodes cp-1, cp-2, cp-3 are healthy
              3. workers
                 - w-1: create app container (drover-test/busybox:1)
                 - wait until nodes w-1 are healthy
        "#]],
    );
}

#[test]
fn an_unchanged_cluster_has_an_empty_plan() {
    let text = standard(2, &std_rest());
    check(
        Some(&text),
        &text,
        expect![[r#"
        cluster dev: no changes
    "#]],
    );
}

#[test]
fn adding_a_worker_touches_only_that_node() {
    check(
        Some(&standard(1, &std_rest())),
        &standard(2, &std_rest()),
        expect![[r#"
            cluster dev: 1 step in 1 phase
              1. workers
                 - w-2: create app container (drover-test/busybox:1)
                 - wait until nodes w-2 are healthy
        "#]],
    );
}

#[test]
fn removing_a_worker_decommissions_it() {
    check(
        Some(&standard(2, &std_rest())),
        &standard(1, &std_rest()),
        expect![[r#"
            cluster dev: 2 steps in 1 phase
              1. decommission
                 - w-2: remove app container
                 - w-2: decommission: forget the node and revoke its credential
        "#]],
    );
}

#[test]
fn scaling_workers_3_to_10_starts_new_nodes_in_one_batch() {
    let rest = format!(
        "{}  rollout: {{maxUnavailable: {{worker: '25%'}}}}\n",
        std_rest()
    );
    check(
        Some(&standard(3, &rest)),
        &standard(10, &rest),
        expect![[r#"
        cluster dev: 7 steps in 1 phase
          1. workers
             - w-4: create app container (drover-test/busybox:1)
             - w-5: create app container (drover-test/busybox:1)
             - w-6: create app container (drover-test/busybox:1)
             - w-7: create app container (drover-test/busybox:1)
             - w-8: create app container (drover-test/busybox:1)
             - w-9: create app container (drover-test/busybox:1)
             - w-10: create app container (drover-test/busybox:1)
             - wait until nodes w-4, w-5, w-6, w-7, w-8, w-9, w-10 are healthy
    "#]],
    );
}

#[test]
fn a_worker_image_change_rolls_in_batches_of_25_percent() {
    let rollout = "  rollout: {maxUnavailable: {worker: '25%'}}\n";
    let base = format!(
        "{ETCD}{}{rollout}",
        components("drover-test/busybox:1", "drover-test/busybox:1")
    );
    let head = format!(
        "{ETCD}{}{rollout}",
        components("drover-test/busybox:1", "drover-test/busybox:2")
    );
    check(
        Some(&standard(10, &base)),
        &standard(10, &head),
        expect![[r#"
        cluster dev: 10 steps in 1 phase
          1. workers
             batch 1 of 5
             - w-1: recreate app container: image changed
             - w-2: recreate app container: image changed
             - wait until nodes w-1, w-2 are healthy
             batch 2 of 5
             - w-3: recreate app container: image changed
             - w-4: recreate app container: image changed
             - wait until nodes w-3, w-4 are healthy
             batch 3 of 5
             - w-5: recreate app container: image changed
             - w-6: recreate app container: image changed
             - wait until nodes w-5, w-6 are healthy
             batch 4 of 5
             - w-7: recreate app container: image changed
             - w-8: recreate app container: image changed
             - wait until nodes w-7, w-8 are healthy
             batch 5 of 5
             - w-9: recreate app container: image changed
             - w-10: recreate app container: image changed
             - wait until nodes w-9, w-10 are healthy
    "#]],
    );
}

#[test]
fn a_control_plane_change_goes_one_node_at_a_time_by_default() {
    let base = format!(
        "{ETCD}{}",
        components("drover-test/busybox:1", "drover-test/busybox:1")
    );
    let head = format!(
        "{ETCD}{}",
        components("drover-test/busybox:2", "drover-test/busybox:1")
    );
    check(
        Some(&standard(1, &base)),
        &standard(1, &head),
        expect![[r#"
        cluster dev: 3 steps in 1 phase
          1. control plane
             batch 1 of 3
             - cp-1: recreate api container: image changed
             - wait until nodes cp-1 are healthy
             batch 2 of 3
             - cp-2: recreate api container: image changed
             - wait until nodes cp-2 are healthy
             batch 3 of 3
             - cp-3: recreate api container: image changed
             - wait until nodes cp-3 are healthy
    "#]],
    );
}

#[test]
fn maximum_unavailable_100_percent_updates_all_workers_at_once() {
    let rollout = "  rollout: {maxUnavailable: {worker: '100%', controlplane: 3}}\n";
    let base = format!(
        "{ETCD}{}{rollout}",
        components("drover-test/busybox:1", "drover-test/busybox:1")
    );
    let head = format!(
        "{ETCD}{}{rollout}",
        components("drover-test/busybox:2", "drover-test/busybox:2")
    );
    check(
        Some(&standard(4, &base)),
        &standard(4, &head),
        expect![[r#"
        cluster dev: 7 steps in 2 phases
          1. control plane
             - cp-1: recreate api container: image changed
             - cp-2: recreate api container: image changed
             - cp-3: recreate api container: image changed
             - wait until nodes cp-1, cp-2, cp-3 are healthy
          2. workers
             - w-1: recreate app container: image changed
             - w-2: recreate app container: image changed
             - w-3: recreate app container: image changed
             - w-4: recreate app container: image changed
             - wait until nodes w-1, w-2, w-3, w-4 are healthy
    "#]],
    );
}

#[test]
fn changing_the_etcd_image_recreates_members_one_at_a_time() {
    let head = std_rest().replace("etcd:3.4.23", "etcd:3.4.24");
    check(
        Some(&standard(0, &std_rest())),
        &standard(0, &head),
        expect![[r#"
        cluster dev: 3 steps in 1 phase
          1. etcd
             batch 1 of 3
             - cp-1: recreate etcd container: image changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
             batch 2 of 3
             - cp-2: recreate etcd container: image changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
             batch 3 of 3
             - cp-3: recreate etcd container: image changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
    "#]],
    );
}

#[test]
fn changing_etcd_flags_recreates_members_one_at_a_time() {
    let head = std_rest().replace(
        "{image: drover-test/etcd:3.4.23}",
        "{image: drover-test/etcd:3.4.23, extraArgs: {snapshot-count: '5000'}}",
    );
    check(
        Some(&standard(0, &std_rest())),
        &standard(0, &head),
        expect![[r#"
        cluster dev: 3 steps in 1 phase
          1. etcd
             batch 1 of 3
             - cp-1: recreate etcd container: args changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
             batch 2 of 3
             - cp-2: recreate etcd container: args changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
             batch 3 of 3
             - cp-3: recreate etcd container: args changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
    "#]],
    );
}

#[test]
fn replacing_an_etcd_member_adds_the_new_one_before_removing_the_old() {
    let base = cluster(&[&etcd_cp(1), &etcd_cp(2), &etcd_cp(3)], &std_rest());
    let head = cluster(&[&etcd_cp(1), &etcd_cp(2), &etcd_cp(4)], &std_rest());
    check(
        Some(&base),
        &head,
        expect![[r#"
            cluster dev: 7 steps in 3 phases
              1. etcd
                 batch 1 of 2
                 - cp-4: add etcd member at https://127.0.0.5:2380
                 - cp-4: start etcd member (joining; members cp-1, cp-2, cp-3, cp-4)
                 - wait until etcd members cp-1, cp-2, cp-3, cp-4 are healthy
                 batch 2 of 2
                 - cp-3: remove etcd member
                 - cp-3: remove etcd container
                 - wait until etcd members cp-1, cp-2, cp-4 are healthy
              2. control plane
                 - cp-4: create api container (drover-test/busybox:1)
                 - wait until nodes cp-4 are healthy
              3. decommission
                 - cp-3: remove api container
                 - cp-3: decommission: forget the node and revoke its credential
        "#]],
    );
}

#[test]
fn growing_etcd_from_three_to_five_adds_one_member_at_a_time() {
    let base = standard(0, &std_rest());
    let five: Vec<String> = (1..=5).map(etcd_cp).collect();
    let refs: Vec<&str> = five.iter().map(String::as_str).collect();
    check(
        Some(&base),
        &cluster(&refs, &std_rest()),
        expect![[r#"
            cluster dev: 6 steps in 2 phases
              1. etcd
                 batch 1 of 2
                 - cp-4: add etcd member at https://127.0.0.5:2380
                 - cp-4: start etcd member (joining; members cp-1, cp-2, cp-3, cp-4)
                 - wait until etcd members cp-1, cp-2, cp-3, cp-4 are healthy
                 batch 2 of 2
                 - cp-5: add etcd member at https://127.0.0.6:2380
                 - cp-5: start etcd member (joining; members cp-1, cp-2, cp-3, cp-4, cp-5)
                 - wait until etcd members cp-1, cp-2, cp-3, cp-4, cp-5 are healthy
              2. control plane
                 - cp-4: create api container (drover-test/busybox:1)
                 - cp-5: create api container (drover-test/busybox:1)
                 - wait until nodes cp-4, cp-5 are healthy
        "#]],
    );
}

#[test]
fn shrinking_etcd_from_five_to_three_keeps_quorum() {
    let five: Vec<String> = (1..=5).map(etcd_cp).collect();
    let refs: Vec<&str> = five.iter().map(String::as_str).collect();
    check(
        Some(&cluster(&refs, &std_rest())),
        &standard(0, &std_rest()),
        expect![[r#"
            cluster dev: 8 steps in 2 phases
              warning: etcd shrinks from 5 to 3 members, one removal at a time: it then tolerates 1 failures instead of 2
              1. etcd
                 batch 1 of 2
                 - cp-4: remove etcd member
                 - cp-4: remove etcd container
                 - wait until etcd members cp-1, cp-2, cp-3, cp-5 are healthy
                 batch 2 of 2
                 - cp-5: remove etcd member
                 - cp-5: remove etcd container
                 - wait until etcd members cp-1, cp-2, cp-3 are healthy
              2. decommission
                 batch 1 of 2
                 - cp-4: remove api container
                 - cp-4: decommission: forget the node and revoke its credential
                 batch 2 of 2
                 - cp-5: remove api container
                 - cp-5: decommission: forget the node and revoke its credential
        "#]],
    );
}

#[test]
fn removing_two_of_three_healthy_etcd_members_goes_one_at_a_time_with_a_warning() {
    check(
        Some(&standard(0, &std_rest())),
        &cluster(&[&etcd_cp(1)], &std_rest()),
        expect![[r#"
            cluster dev: 8 steps in 2 phases
              warning: etcd shrinks from 3 to 1 members, one removal at a time: it then tolerates 0 failures instead of 1
              warning: a single etcd member: losing it loses the cluster, and adding a second loses quorum until it starts
              1. etcd
                 batch 1 of 2
                 - cp-2: remove etcd member
                 - cp-2: remove etcd container
                 - wait until etcd members cp-1, cp-3 are healthy
                 batch 2 of 2
                 - cp-3: remove etcd member
                 - cp-3: remove etcd container
                 - wait until etcd members cp-1 are healthy
              2. decommission
                 batch 1 of 2
                 - cp-2: remove api container
                 - cp-2: decommission: forget the node and revoke its credential
                 batch 2 of 2
                 - cp-3: remove api container
                 - cp-3: decommission: forget the node and revoke its credential
        "#]],
    );
}

#[test]
fn replacing_every_etcd_member_adds_the_new_ones_before_it_removes_the_old() {
    let head = cluster(&[&etcd_cp(4), &etcd_cp(5), &etcd_cp(6)], &std_rest());
    check(
        Some(&standard(0, &std_rest())),
        &head,
        expect![[r#"
            cluster dev: 21 steps in 3 phases
              1. etcd
                 batch 1 of 6
                 - cp-4: add etcd member at https://127.0.0.5:2380
                 - cp-4: start etcd member (joining; members cp-1, cp-2, cp-3, cp-4)
                 - wait until etcd members cp-1, cp-2, cp-3, cp-4 are healthy
                 batch 2 of 6
                 - cp-5: add etcd member at https://127.0.0.6:2380
                 - cp-5: start etcd member (joining; members cp-1, cp-2, cp-3, cp-4, cp-5)
                 - wait until etcd members cp-1, cp-2, cp-3, cp-4, cp-5 are healthy
                 batch 3 of 6
                 - cp-6: add etcd member at https://127.0.0.7:2380
                 - cp-6: start etcd member (joining; members cp-1, cp-2, cp-3, cp-4, cp-5, cp-6)
                 - wait until etcd members cp-1, cp-2, cp-3, cp-4, cp-5, cp-6 are healthy
                 batch 4 of 6
                 - cp-1: remove etcd member
                 - cp-1: remove etcd container
                 - wait until etcd members cp-2, cp-3, cp-4, cp-5, cp-6 are healthy
                 batch 5 of 6
                 - cp-2: remove etcd member
                 - cp-2: remove etcd container
                 - wait until etcd members cp-3, cp-4, cp-5, cp-6 are healthy
                 batch 6 of 6
                 - cp-3: remove etcd member
                 - cp-3: remove etcd container
                 - wait until etcd members cp-4, cp-5, cp-6 are healthy
              2. control plane
                 - cp-4: create api container (drover-test/busybox:1)
                 - cp-5: create api container (drover-test/busybox:1)
                 - cp-6: create api container (drover-test/busybox:1)
                 - wait until nodes cp-4, cp-5, cp-6 are healthy
              3. decommission
                 batch 1 of 3
                 - cp-1: remove api container
                 - cp-1: decommission: forget the node and revoke its credential
                 batch 2 of 3
                 - cp-2: remove api container
                 - cp-2: decommission: forget the node and revoke its credential
                 batch 3 of 3
                 - cp-3: remove api container
                 - cp-3: decommission: forget the node and revoke its credential
        "#]],
    );
}

#[test]
fn removing_every_control_plane_node_is_refused() {
    let etcd_only = |i: u32| {
        format!(
            "{{name: cp-{i}, address: 127.0.0.{}, roles: [etcd]}}",
            i + 1
        )
    };
    let nodes: Vec<String> = (1..=3).map(etcd_only).collect();
    let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
    check(
        Some(&standard(0, &std_rest())),
        &cluster(&refs, &std_rest()),
        expect![[r#"
        cluster dev: 3 steps in 1 phase
          error: every control-plane node would be removed
          1. etcd-only nodes
             batch 1 of 3
             - cp-1: remove api container
             - wait until nodes cp-1 are healthy
             batch 2 of 3
             - cp-2: remove api container
             - wait until nodes cp-2 are healthy
             batch 3 of 3
             - cp-3: remove api container
             - wait until nodes cp-3 are healthy
    "#]],
    );
}

#[test]
fn a_node_that_leaves_etcd_stops_its_member_first() {
    let nodes = [
        etcd_cp(1),
        etcd_cp(2),
        etcd_cp(3),
        "{name: cp-4, address: 127.0.0.5, roles: [etcd, controlplane]}".to_string(),
        "{name: cp-5, address: 127.0.0.6, roles: [etcd, controlplane]}".to_string(),
    ];
    let mut head_nodes = nodes.clone();
    head_nodes[4] = "{name: cp-5, address: 127.0.0.6, roles: [controlplane]}".into();
    let refs = |v: &[String]| {
        v.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n    - ")
    };
    let base = cluster(&[refs(&nodes).as_str()], &std_rest());
    let head = cluster(&[refs(&head_nodes).as_str()], &std_rest());
    check(
        Some(&base),
        &head,
        expect![[r#"
            cluster dev: 2 steps in 1 phase
              warning: etcd shrinks from 5 to 4 members, one removal at a time: it then tolerates 1 failures instead of 2
              warning: 4 etcd members tolerate no more failures than 3; prefer an odd count
              1. etcd
                 - cp-5: remove etcd member
                 - cp-5: remove etcd container
                 - wait until etcd members cp-1, cp-2, cp-3, cp-4 are healthy
        "#]],
    );
}

#[test]
fn removing_a_component_removes_its_containers() {
    let head = format!("{ETCD}{}", components("drover-test/busybox:1", "drover-test/busybox:1"))
        .replace("    worker:\n      - name: app\n        image: drover-test/busybox:1\n        command: [httpd, -f, -p, '{{ node.address }}:9090']\n", "");
    check(
        Some(&standard(2, &std_rest())),
        &standard(2, &head),
        expect![[r#"
        cluster dev: 2 steps in 1 phase
          1. workers
             batch 1 of 2
             - w-1: remove app container
             - wait until nodes w-1 are healthy
             batch 2 of 2
             - w-2: remove app container
             - wait until nodes w-2 are healthy
    "#]],
    );
}

#[test]
fn an_env_change_recreates_and_names_the_field() {
    let head = std_rest().replace(
        "        command: [httpd, -f, -p, '{{ node.address }}:9090']\n",
        "        command: [httpd, -f, -p, '{{ node.address }}:9090']\n        env: {LOG_LEVEL: debug}\n",
    );
    check(
        Some(&standard(1, &std_rest())),
        &standard(1, &head),
        expect![[r#"
        cluster dev: 1 step in 1 phase
          1. workers
             - w-1: recreate app container: env changed
             - wait until nodes w-1 are healthy
    "#]],
    );
}

#[test]
fn a_file_change_writes_it_and_recreates_its_container() {
    let with_file = |content: &str| {
        std_rest().replace(
            "        command: [httpd, -f, -p, '{{ node.address }}:9090']\n",
            &format!("        command: [httpd, -f, -p, '{{{{ node.address }}}}:9090']\n        files: [{{path: /etc/app.conf, content: '{content}', mode: '0600'}}]\n"),
        )
    };
    check(
        Some(&standard(1, &with_file("level=info"))),
        &standard(1, &with_file("level=debug")),
        expect![[r#"
            cluster dev: 2 steps in 1 phase
              1. workers
                 - w-1: write file /etc/app.conf (mode 0600)
                 - w-1: recreate app container: files changed
                 - wait until nodes w-1 are healthy
        "#]],
    );
}

#[test]
fn a_file_dropped_from_the_plan_is_removed() {
    let with_file = std_rest().replace(
        "        command: [httpd, -f, -p, '{{ node.address }}:9090']\n",
        "        command: [httpd, -f, -p, '{{ node.address }}:9090']\n        files: [{path: /etc/app.conf, content: x}]\n",
    );
    check(
        Some(&standard(1, &with_file)),
        &standard(1, &std_rest()),
        expect![[r#"
        cluster dev: 2 steps in 1 phase
          1. workers
             - w-1: recreate app container: files changed
             - w-1: remove file /etc/app.conf
             - wait until nodes w-1 are healthy
    "#]],
    );
}

#[test]
fn an_address_change_warns_and_recreates_templated_containers() {
    let base = standard(1, &std_rest());
    let head = base.replace("address: 127.0.1.1", "address: 127.0.1.99");
    check(
        Some(&base),
        &head,
        expect![[r#"
        cluster dev: 1 step in 1 phase
          warning: node w-1 changes address from 127.0.1.1 to 127.0.1.99; its containers are recreated and peers must reach the new address
          1. workers
             - w-1: recreate app container: command changed
             - wait until nodes w-1 are healthy
    "#]],
    );
}

#[test]
fn snapshot_policy_added_changed_and_removed() {
    let with = |snap: &str| {
        std_rest().replace(
            "{image: drover-test/etcd:3.4.23}",
            &format!("{{image: drover-test/etcd:3.4.23, snapshots: {snap}}}"),
        )
    };
    let six = with("{schedule: '0 */6 * * *', store: local, retention: {last: 6}}");
    let hourly = with("{every: 1h, store: backups, retention: {last: 24, daily: 7}}");
    check(
        Some(&standard(0, &std_rest())),
        &standard(0, &six),
        expect![[r#"
        cluster dev: 1 step in 1 phase
          1. snapshot policy
             - start snapshots: cron 0 */6 * * * to store local, keep last 6
    "#]],
    );
    check(
        Some(&standard(0, &six)),
        &standard(0, &hourly),
        expect![[r#"
        cluster dev: 1 step in 1 phase
          1. snapshot policy
             - snapshots: cron 0 */6 * * * to store local, keep last 6 -> every 1h to store backups, keep last 24, daily 7
    "#]],
    );
    check(
        Some(&standard(0, &hourly)),
        &standard(0, &std_rest()),
        expect![[r#"
        cluster dev: 1 step in 1 phase
          1. snapshot policy
             - stop snapshots (were: every 1h to store backups, keep last 24, daily 7)
    "#]],
    );
}

fn with_restore(request: &str) -> String {
    std_rest().replace(
        "{image: drover-test/etcd:3.4.23}",
        &format!("{{image: drover-test/etcd:3.4.23, snapshots: {{every: 6h, store: local, retention: {{last: 6}}}}, restore: {{snapshot: 20261125T060000Z-48213-9f3a61c2, requestId: {request}}}}}"),
    )
}

#[test]
fn a_restore_request_runs_first_and_once() {
    let plain = std_rest().replace(
        "{image: drover-test/etcd:3.4.23}",
        "{image: drover-test/etcd:3.4.23, snapshots: {every: 6h, store: local, retention: {last: 6}}}",
    );
    check(
        Some(&standard(0, &plain)),
        &standard(0, &with_restore("incident-1")),
        expect![[r#"
        cluster dev: 1 step in 1 phase
          1. restore
             - restore etcd from snapshot 20261125T060000Z-48213-9f3a61c2 (request incident-1)
    "#]],
    );
    // Already done in the base: nothing to do.
    let done = standard(0, &with_restore("incident-1"));
    check(
        Some(&done),
        &done,
        expect![[r#"
        cluster dev: no changes
    "#]],
    );
}

#[test]
fn a_restore_of_a_snapshot_the_store_lacks_is_refused() {
    let head = load(&standard(0, &with_restore("incident-2")));
    let observed = observed_from(&load(&standard(0, &std_rest())));
    let unknown = render_plan(&head, &observed, Some(&["20261124T000000Z-1-00000000"]));
    expect![[r#"
        cluster dev: 2 steps in 2 phases
          error: restore requests snapshot 20261125T060000Z-48213-9f3a61c2, which store local does not hold
          1. restore
             - restore etcd from snapshot 20261125T060000Z-48213-9f3a61c2 (request incident-2)
          2. snapshot policy
             - start snapshots: every 6h to store local, keep last 6
    "#]].assert_eq(&unknown);
    let known = render_plan(&head, &observed, Some(&["20261125T060000Z-48213-9f3a61c2"]));
    assert!(!known.contains("error:"), "{known}");
}

#[test]
fn a_restore_without_a_snapshot_store_is_refused() {
    let head = std_rest().replace(
        "{image: drover-test/etcd:3.4.23}",
        "{image: drover-test/etcd:3.4.23, restore: {snapshot: 20261125T060000Z-48213-9f3a61c2, requestId: r1}}",
    );
    check(
        Some(&standard(0, &std_rest())),
        &standard(0, &head),
        expect![[r#"
        cluster dev: 1 step in 1 phase
          error: restore requests snapshot 20261125T060000Z-48213-9f3a61c2 but the cluster has no snapshot store
          1. restore
             - restore etcd from snapshot 20261125T060000Z-48213-9f3a61c2 (request r1)
    "#]],
    );
}

#[test]
fn a_single_etcd_member_and_an_even_count_warn() {
    check(
        None,
        &cluster(&[&etcd_cp(1)], &std_rest()),
        expect![[r#"
        cluster dev: new cluster, 2 steps in 2 phases
          warning: a single etcd member: losing it loses the cluster, and adding a second loses quorum until it starts
          1. etcd
             - cp-1: start etcd member (new cluster; members cp-1)
             - wait until etcd members cp-1 are healthy
          2. control plane
             - cp-1: create api container (drover-test/busybox:1)
             - wait until nodes cp-1 are healthy
    "#]],
    );
    check(
        None,
        &cluster(&[&etcd_cp(1), &etcd_cp(2)], &std_rest()),
        expect![[r#"
        cluster dev: new cluster, 4 steps in 2 phases
          warning: 2 etcd members tolerate no more failures than 1; prefer an odd count
          1. etcd
             - cp-1: start etcd member (new cluster; members cp-1, cp-2)
             - cp-2: start etcd member (new cluster; members cp-1, cp-2)
             - wait until etcd members cp-1, cp-2 are healthy
          2. control plane
             - cp-1: create api container (drover-test/busybox:1)
             - cp-2: create api container (drover-test/busybox:1)
             - wait until nodes cp-1, cp-2 are healthy
    "#]],
    );
}

#[test]
fn mutable_image_tags_warn() {
    let rest = format!(
        "{ETCD}{}",
        components("drover-test/busybox:latest", "busybox")
    );
    check(
        Some(&standard(1, &rest)),
        &standard(1, &rest),
        expect![[r#"
        cluster dev: no changes
          warning: image busybox has a mutable tag: nodes may run different builds of it; pin a version or digest
          warning: image drover-test/busybox:latest has a mutable tag: nodes may run different builds of it; pin a version or digest
    "#]],
    );
}

#[test]
fn a_stopped_container_is_started_and_a_missing_one_created() {
    let text = standard(1, &std_rest());
    let repo = load(&text);
    let mut observed = observed_from(&repo);
    let dev = observed.clusters.get_mut("dev").unwrap();
    dev.nodes
        .get_mut("w-1")
        .unwrap()
        .containers
        .get_mut("app")
        .unwrap()
        .running = false;
    dev.nodes.get_mut("cp-2").unwrap().containers.remove("api");
    dev.nodes
        .get_mut("cp-3")
        .unwrap()
        .containers
        .get_mut("etcd")
        .unwrap()
        .running = false;
    expect![[r#"
        cluster dev: 3 steps in 3 phases
          1. etcd
             - cp-3: start stopped etcd container
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
          2. control plane
             - cp-2: create api container (drover-test/busybox:1)
             - wait until nodes cp-2 are healthy
          3. workers
             - w-1: start stopped app container
             - wait until nodes w-1 are healthy
    "#]]
    .assert_eq(&render_plan(&repo, &observed, None));
}

#[test]
fn a_cluster_removed_from_git_is_left_alone() {
    let other = standard(0, &std_rest()).replace("name: dev", "name: other");
    let observed = observed_from(&load(&other));
    let head = load(&standard(0, &std_rest()));
    let mut both = observed.clone();
    both.clusters.extend(observed_from(&head).clusters);
    expect![[r#"
        cluster dev: no changes
        cluster other: runs but is no longer declared; drover leaves it as it is
    "#]]
    .assert_eq(&render_plan(&head, &both, None));
}

#[test]
fn only_the_changed_cluster_of_two_has_steps() {
    let a = standard(1, &std_rest());
    let b = standard(1, &std_rest()).replace("name: dev", "name: prod");
    let b2 = b.replace("busybox:1", "busybox:2");
    let both = |x: &str, y: &str| format!("{x}---\n{y}");
    check(
        Some(&both(&a, &b)),
        &both(&a, &b2),
        expect![[r#"
        cluster dev: no changes
        cluster prod: 4 steps in 2 phases
          1. control plane
             batch 1 of 3
             - cp-1: recreate api container: image changed
             - wait until nodes cp-1 are healthy
             batch 2 of 3
             - cp-2: recreate api container: image changed
             - wait until nodes cp-2 are healthy
             batch 3 of 3
             - cp-3: recreate api container: image changed
             - wait until nodes cp-3 are healthy
          2. workers
             - w-1: recreate app container: image changed
             - wait until nodes w-1 are healthy
    "#]],
    );
}

#[test]
fn recreating_a_member_of_two_warns_about_quorum() {
    let two = cluster(&[&etcd_cp(1), &etcd_cp(2)], &std_rest());
    let head = two.replace("etcd:3.4.23", "etcd:3.4.24");
    check(
        Some(&two),
        &head,
        expect![[r#"
        cluster dev: 2 steps in 1 phase
          warning: 2 etcd members tolerate no more failures than 1; prefer an odd count
          warning: recreating etcd member cp-1 of 2 loses quorum while it restarts
          warning: recreating etcd member cp-2 of 2 loses quorum while it restarts
          1. etcd
             batch 1 of 2
             - cp-1: recreate etcd container: image changed
             - wait until etcd members cp-1, cp-2 are healthy
             batch 2 of 2
             - cp-2: recreate etcd container: image changed
             - wait until etcd members cp-1, cp-2 are healthy
    "#]],
    );
}

#[test]
fn markdown_and_json_forms() {
    let base = load(&standard(2, &std_rest()));
    let head = load(&standard(
        3,
        &std_rest().replace("etcd:3.4.23", "etcd:3.4.24"),
    ));
    let desired = Desired {
        clusters: head.clusters.iter().collect::<Vec<&Cluster>>(),
        known_snapshots: None,
        held_back: BTreeSet::new(),
    };
    let p = plan::plan(&desired, &observed_from(&base), SystemTime::UNIX_EPOCH);
    let md = render::markdown(&p);
    let md: String = md
        .lines()
        .filter(|l| !l.starts_with("Plan digest"))
        .map(|l| format!("{l}\n"))
        .collect();
    expect![[r#"
        ### drover plan

        | cluster | change | etcd | control plane | workers | steps | errors | warnings |
        |---|---|---|---|---|---:|---:|---:|
        | `dev` | changes | 3 nodes | - | 1 node | 4 | 0 | 0 |

        <details><summary><code>dev</code>: 4 steps in 2 phases</summary>

        1. **etcd**
           - batch 1 of 3
             - cp-1: recreate etcd container: image changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
           - batch 2 of 3
             - cp-2: recreate etcd container: image changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
           - batch 3 of 3
             - cp-3: recreate etcd container: image changed
             - wait until etcd members cp-1, cp-2, cp-3 are healthy
        2. **workers**
           - w-3: create app container (drover-test/busybox:1)
           - wait until nodes w-3 are healthy

        </details>

    "#]]
    .assert_eq(&md);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["formatVersion"], 1);
    assert_eq!(json["clusters"][0]["phases"][0]["kind"], "etcd");
    assert_eq!(
        json["clusters"][0]["phases"][0]["batches"][0]["steps"][0]["action"],
        "recreateContainer"
    );
    assert_eq!(
        json["clusters"][0]["phases"][0]["batches"][0]["steps"][0]["changed"][0],
        "image"
    );
}

#[test]
fn the_digest_is_stable_and_tracks_the_plan() {
    let base = load(&standard(1, &std_rest()));
    let head = load(&standard(2, &std_rest()));
    let run = |head: &Repository| {
        let desired = Desired {
            clusters: head.clusters.iter().collect(),
            known_snapshots: None,
            held_back: BTreeSet::new(),
        };
        plan::plan(&desired, &observed_from(&base), SystemTime::UNIX_EPOCH)
    };
    let (a, b) = (run(&head), run(&head));
    assert_eq!(a, b);
    assert_eq!(a.digest, b.digest);
    assert!(
        a.digest.starts_with("sha256:") && a.digest.len() == 71,
        "{}",
        a.digest
    );
    let other = run(&load(&standard(3, &std_rest())));
    assert_ne!(a.digest, other.digest);
    // Byte for byte: the JSON of two runs is identical.
    assert_eq!(
        serde_json::to_vec(&a).unwrap(),
        serde_json::to_vec(&b).unwrap()
    );
}

#[test]
fn an_etcd_member_that_moves_updates_its_peer_url_before_restarting() {
    let base = standard(0, &std_rest());
    let head = base.replace("address: 127.0.0.3,", "address: 127.0.0.30,");
    check(
        Some(&base),
        &head,
        expect![[r#"
            cluster dev: 3 steps in 2 phases
              warning: node cp-2 changes address from 127.0.0.3 to 127.0.0.30; its containers are recreated and peers must reach the new address
              1. etcd
                 - cp-2: update etcd member's peer URL to https://127.0.0.30:2380
                 - cp-2: recreate etcd container: args changed
                 - wait until etcd members cp-1, cp-2, cp-3 are healthy
              2. control plane
                 - cp-2: recreate api container: command changed
                 - wait until nodes cp-2 are healthy
        "#]],
    );
}

/// Scaling a healthy two-member etcd down to one removes a member: the quorum shrinks with it.
#[test]
fn scaling_a_healthy_two_member_etcd_down_to_one_is_a_removal_not_a_loss() {
    let two = cluster(&[&etcd_cp(1), &etcd_cp(2)], &std_rest());
    check(
        Some(&two),
        &cluster(&[&etcd_cp(1)], &std_rest()),
        expect![[r#"
            cluster dev: 4 steps in 2 phases
              warning: a single etcd member: losing it loses the cluster, and adding a second loses quorum until it starts
              1. etcd
                 - cp-2: remove etcd member
                 - cp-2: remove etcd container
                 - wait until etcd members cp-1 are healthy
              2. decommission
                 - cp-2: remove api container
                 - cp-2: decommission: forget the node and revoke its credential
        "#]],
    );
}

/// With one of two members down, nothing can commit a removal: the quorum is lost.
#[test]
fn removing_a_member_while_the_quorum_is_lost_is_refused() {
    let two = cluster(&[&etcd_cp(1), &etcd_cp(2)], &std_rest());
    check_unhealthy(
        &two,
        &["cp-2"],
        &cluster(&[&etcd_cp(1)], &std_rest()),
        expect![[r#"
            cluster dev: 4 steps in 2 phases
              error: etcd quorum is lost: 1 of 2 members are healthy, fewer than the 2 a membership change needs; restore from a snapshot instead
              warning: a single etcd member: losing it loses the cluster, and adding a second loses quorum until it starts
              1. etcd
                 - cp-2: remove etcd member
                 - cp-2: remove etcd container
                 - wait until etcd members cp-1 are healthy
              2. decommission
                 - cp-2: remove api container
                 - cp-2: decommission: forget the node and revoke its credential
        "#]],
    );
}

/// One unhealthy member of three leaves a quorum: removing it is the repair.
#[test]
fn removing_the_unhealthy_member_of_three_is_allowed() {
    check_unhealthy(
        &standard(0, &std_rest()),
        &["cp-3"],
        &cluster(&[&etcd_cp(1), &etcd_cp(2)], &std_rest()),
        expect![[r#"
            cluster dev: 4 steps in 2 phases
              warning: etcd shrinks from 3 to 2 members, one removal at a time: it then tolerates 0 failures instead of 1
              warning: 2 etcd members tolerate no more failures than 1; prefer an odd count
              1. etcd
                 - cp-3: remove etcd member
                 - cp-3: remove etcd container
                 - wait until etcd members cp-1, cp-2 are healthy
              2. decommission
                 - cp-3: remove api container
                 - cp-3: decommission: forget the node and revoke its credential
        "#]],
    );
}

/// Adding a member also needs a quorum to commit.
#[test]
fn adding_a_member_while_the_quorum_is_lost_is_refused() {
    check_unhealthy(
        &standard(0, &std_rest()),
        &["cp-2", "cp-3"],
        &cluster(
            &[&etcd_cp(1), &etcd_cp(2), &etcd_cp(3), &etcd_cp(4)],
            &std_rest(),
        ),
        expect![[r#"
            cluster dev: 3 steps in 2 phases
              error: etcd quorum is lost: 1 of 3 members are healthy, fewer than the 2 a membership change needs; restore from a snapshot instead
              warning: 4 etcd members tolerate no more failures than 3; prefer an odd count
              1. etcd
                 - cp-4: add etcd member at https://127.0.0.5:2380
                 - cp-4: start etcd member (joining; members cp-1, cp-2, cp-3, cp-4)
                 - wait until etcd members cp-1, cp-2, cp-3, cp-4 are healthy
              2. control plane
                 - cp-4: create api container (drover-test/busybox:1)
                 - wait until nodes cp-4 are healthy
        "#]],
    );
}
