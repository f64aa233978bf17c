//! The cluster model as users meet it: YAML in, diagnostics and loaded clusters out. Each test is
//! one `check` over files and the exact text `drover validate` would print; refresh the
//! expectations with `UPDATE_EXPECT=1 cargo test` and review the diff.

use drover::model::{load_sources, SourceFile};
use expect_test::{expect, Expect};

/// Loads `files` (path, text) as one repository and compares the rendered report.
fn check_files(files: &[(&str, &str)], expect: Expect) {
    let sources = files
        .iter()
        .map(|(path, text)| SourceFile {
            path: path.to_string(),
            bytes: text.as_bytes().to_vec(),
        })
        .collect();
    let repo = load_sources(sources, Vec::new());
    let mut out = repo.render_diagnostics();
    for c in &repo.clusters {
        out.push_str(&format!("loaded: {} from {}\n", c.name, c.source.file));
    }
    expect.assert_eq(&out);
}

fn check(text: &str, expect: Expect) {
    check_files(&[("clusters/c.yaml", text)], expect);
}

const HEADER: &str = "apiVersion: drover.dev/v1alpha1\nkind: Cluster\n";

/// A valid cluster file around the given `spec` body (indented by two spaces).
fn cluster(name: &str, spec: &str) -> String {
    format!("{HEADER}metadata:\n  name: {name}\nspec:\n{spec}")
}

const NODES: &str = "  nodes:
    - {name: n1, address: 127.0.0.2, roles: [etcd, controlplane]}
    - {name: n2, address: 127.0.0.3, roles: [worker]}
";
const ETCD: &str = "  etcd: {image: drover-test/etcd:3.4.23}\n";

#[test]
fn a_minimal_cluster_loads() {
    check(
        &cluster("dev", &format!("{NODES}{ETCD}")),
        expect![[r#"
            loaded: dev from clusters/c.yaml
        "#]],
    );
}

#[test]
fn header_must_name_this_version_and_kind() {
    let text = format!(
        "apiVersion: drover.dev/v2\nkind: Clustr\nmetadata: {{name: dev}}\nspec:\n{NODES}{ETCD}"
    );
    check(
        &text,
        expect![[r#"
            clusters/c.yaml:1:13: error: unsupported apiVersion `drover.dev/v2`; this drover reads `drover.dev/v1alpha1`
              |
            1 | apiVersion: drover.dev/v2
              |             ^^^^^^^^^^^^^

            clusters/c.yaml:2:7: error: unsupported kind `Clustr`; a cluster file holds `Cluster`
              |
            2 | kind: Clustr
              |       ^^^^^^
        "#]],
    );
}

#[test]
fn unknown_fields_and_wrong_types_are_errors() {
    check(
        &cluster(
            "dev",
            "  nodes:\n    - name: n1\n      adress: 127.0.0.2\n      roles: [etcd]\n",
        ),
        expect![[r#"
            clusters/c.yaml:8:7: error: spec.nodes[0]: unknown field `adress`, expected one of `name`, `address`, `internalAddress`, `roles`, `labels`, `taints`
              |
            8 |       adress: 127.0.0.2
              |       ^^^^^^
        "#]],
    );
    check(
        &cluster(
            "dev",
            "  nodes:\n    - {name: n1, address: 127.0.0.2, roles: etcd}\n",
        ),
        expect![[r#"
            clusters/c.yaml:7:45: error: spec.nodes[0].roles: invalid type: string "etcd", expected a sequence
              |
            7 |     - {name: n1, address: 127.0.0.2, roles: etcd}
              |                                             ^^^^
        "#]],
    );
    check(
        &cluster(
            "dev",
            &format!("{NODES}  etcd:\n    image: e\n    snapshots: {{every: 1h, store: s, retention: {{last: six}}}}\n"),
        ),
        expect![[r#"
            clusters/c.yaml:11:56: error: spec.etcd.snapshots.retention.last: invalid type: string "six", expected u32
               |
            11 |     snapshots: {every: 1h, store: s, retention: {last: six}}
               |                                                        ^^^
        "#]],
    );
    check(
        &cluster("dev", ETCD),
        expect![[r#"
            clusters/c.yaml:6:3: error: spec: missing field `nodes`
              |
            6 |   etcd: {image: drover-test/etcd:3.4.23}
              |   ^^^^
        "#]],
    );
}

#[test]
fn nodes_need_unique_names_and_addresses_and_real_roles() {
    let spec = "  nodes:
    - {name: n1, address: 127.0.0.2, roles: [etcd, etcd]}
    - {name: n1, address: 127.0.0.3, roles: [etcd]}
    - {name: n3, address: 127.0.0.2, roles: [worker]}
    - {name: n4, address: 127.0.0.9, internalAddress: 127.0.0.3, roles: []}
    - {name: N_5, address: 'not an address', roles: [worker]}
";
    check(
        &cluster("dev", &format!("{spec}{ETCD}")),
        expect![[r#"
            clusters/c.yaml:6:3: warning: 2 etcd members tolerate no more failures than 1; prefer an odd count
              |
            6 |   nodes:
              |   ^^^^^

            clusters/c.yaml:7:52: error: role `etcd` is listed twice
              |
            7 |     - {name: n1, address: 127.0.0.2, roles: [etcd, etcd]}
              |                                                    ^^^^

            clusters/c.yaml:8:14: error: duplicate node name `n1` (first at line 7)
              |
            8 |     - {name: n1, address: 127.0.0.3, roles: [etcd]}
              |              ^^

            clusters/c.yaml:9:27: error: address `127.0.0.2` is already used by node `n1`
              |
            9 |     - {name: n3, address: 127.0.0.2, roles: [worker]}
              |                           ^^^^^^^^^

            clusters/c.yaml:10:55: error: address `127.0.0.3` is already used by node `n1`
               |
            10 |     - {name: n4, address: 127.0.0.9, internalAddress: 127.0.0.3, roles: []}
               |                                                       ^^^^^^^^^

            clusters/c.yaml:10:73: error: node `n4` has no roles; give at least one of etcd, controlplane, worker
               |
            10 |     - {name: n4, address: 127.0.0.9, internalAddress: 127.0.0.3, roles: []}
               |                                                                         ^

            clusters/c.yaml:11:14: error: invalid node name `N_5`: only lower-case letters, digits and '-' are allowed
               |
            11 |     - {name: N_5, address: 'not an address', roles: [worker]}
               |              ^^^

            clusters/c.yaml:11:28: error: invalid address `not an address`: expected an IP address or a DNS name
               |
            11 |     - {name: N_5, address: 'not an address', roles: [worker]}
               |                            ^^^^^^^^^^^^^^^^
        "#]],
    );
    check(
        &cluster(
            "dev",
            &format!("  nodes:\n    - {{name: w, address: 127.0.0.2, roles: [worker]}}\n{ETCD}"),
        ),
        expect![[r#"
            clusters/c.yaml:6:3: error: no node has the etcd role; a cluster needs at least one etcd member
              |
            6 |   nodes:
              |   ^^^^^
        "#]],
    );
}

#[test]
fn labels_and_taints_follow_kubernetes_syntax() {
    let spec = "  nodes:
    - name: n1
      address: 127.0.0.2
      roles: [etcd]
      labels: {topology.kubernetes.io/zone: a, Bad_Prefix/x: y, ok: -bad-}
      taints: [{key: dedicated, value: etcd, effect: NoSchedule}, {key: 'x y', effect: NoExecute}]
";
    check(
        &cluster("dev", &format!("{spec}{ETCD}")),
        expect![[r#"
            clusters/c.yaml:10:48: error: invalid label `Bad_Prefix/x`: the prefix before '/' must be a lower-case DNS name
               |
            10 |       labels: {topology.kubernetes.io/zone: a, Bad_Prefix/x: y, ok: -bad-}
               |                                                ^^^^^^^^^^^^

            clusters/c.yaml:10:69: error: invalid label `ok`: must start and end with a letter or digit
               |
            10 |       labels: {topology.kubernetes.io/zone: a, Bad_Prefix/x: y, ok: -bad-}
               |                                                                     ^^^^^

            clusters/c.yaml:11:73: error: invalid label `x y`: only letters, digits, '-', '_' and '.' are allowed
               |
            11 |       taints: [{key: dedicated, value: etcd, effect: NoSchedule}, {key: 'x y', effect: NoExecute}]
               |                                                                         ^^^^^
        "#]],
    );
}

#[test]
fn etcd_flags_ports_and_image() {
    let etcd = "  etcd:
    image: ''
    clientPort: 2380
    extraArgs: {initial-cluster: x, --dashed: y, snapshot-count: '10000'}
";
    check(
        &cluster("dev", &format!("{NODES}{etcd}")),
        expect![[r#"
            clusters/c.yaml:10:12: error: image must not be empty or contain whitespace
               |
            10 |     image: ''
               |            ^^

            clusters/c.yaml:11:17: error: client and peer ports must differ
               |
            11 |     clientPort: 2380
               |                 ^^^^

            clusters/c.yaml:12:17: error: flag `--initial-cluster` is set by drover and cannot be overridden
               |
            12 |     extraArgs: {initial-cluster: x, --dashed: y, snapshot-count: '10000'}
               |                 ^^^^^^^^^^^^^^^

            clusters/c.yaml:12:37: error: invalid etcd flag name `--dashed`: use the name without leading dashes
               |
            12 |     extraArgs: {initial-cluster: x, --dashed: y, snapshot-count: '10000'}
               |                                     ^^^^^^^^
        "#]],
    );
}

#[test]
fn snapshot_schedules_and_retention() {
    let with = |snap: &str| {
        cluster(
            "dev",
            &format!("{NODES}  etcd:\n    image: e\n    snapshots: {snap}\n"),
        )
    };
    check(
        &with("{schedule: '0 */6 * * *', store: local, retention: {last: 6, hourly: 24, daily: 7, weekly: 4}}"),
        expect![[r#"
            loaded: dev from clusters/c.yaml
        "#]],
    );
    check(
        &with("{every: 6h, store: local, retention: {last: 1}}"),
        expect![[r#"
            loaded: dev from clusters/c.yaml
        "#]],
    );
    check(
        &with("{every: 6h, store: local, retention: {last: 1}, drillEvery: 24h}"),
        expect![[r#"
            loaded: dev from clusters/c.yaml
        "#]],
    );
    check(
        &with("{every: 6h, store: local, retention: {last: 1}, drillEvery: 10s}"),
        expect![[r#"
            clusters/c.yaml:11:76: error: interval `10s` is shorter than the minimum of 1m
               |
            11 |     snapshots: {every: 6h, store: local, retention: {last: 1}, drillEvery: 10s}
               |                                                                            ^^^
        "#]],
    );
    check(
        &with("{schedule: '61 * * * *', store: local, retention: {last: 1}}"),
        expect![[r#"
            clusters/c.yaml:11:27: error: invalid cron schedule `61 * * * *`: Component error: Number out of bounds.
               |
            11 |     snapshots: {schedule: '61 * * * *', store: local, retention: {last: 1}}
               |                           ^^^^^^^^^^^^
        "#]],
    );
    check(
        &with("{schedule: '0 0 * * * *', store: local, retention: {last: 1}}"),
        expect![[r#"
            clusters/c.yaml:11:27: error: invalid cron schedule `0 0 * * * *`: Invalid pattern: Pattern must have 5 fields when seconds are disallowed.
               |
            11 |     snapshots: {schedule: '0 0 * * * *', store: local, retention: {last: 1}}
               |                           ^^^^^^^^^^^^^
        "#]],
    );
    check(
        &with("{schedule: '@daily', every: 1h, store: local, retention: {last: 1}}"),
        expect![[r#"
            clusters/c.yaml:11:37: error: give either `schedule` or `every`, not both
               |
            11 |     snapshots: {schedule: '@daily', every: 1h, store: local, retention: {last: 1}}
               |                                     ^^^^^
        "#]],
    );
    check(
        &with("{store: Local, retention: {last: 0, weekly: 0}}"),
        expect![[r#"
            clusters/c.yaml:11:5: error: snapshots need a `schedule` (cron) or an `every` interval
               |
            11 |     snapshots: {store: Local, retention: {last: 0, weekly: 0}}
               |     ^^^^^^^^^

            clusters/c.yaml:11:24: error: invalid store name `Local`: only lower-case letters, digits and '-' are allowed
               |
            11 |     snapshots: {store: Local, retention: {last: 0, weekly: 0}}
               |                        ^^^^^

            clusters/c.yaml:11:49: error: retention `last` must be at least 1: the newest snapshot is always kept
               |
            11 |     snapshots: {store: Local, retention: {last: 0, weekly: 0}}
               |                                                 ^

            clusters/c.yaml:11:60: error: retention tier `weekly` must be at least 1, or left out
               |
            11 |     snapshots: {store: Local, retention: {last: 0, weekly: 0}}
               |                                                            ^
        "#]],
    );
    check(
        &with("{every: 30s, store: local, retention: {last: 1}}"),
        expect![[r#"
            clusters/c.yaml:11:24: error: interval `30s` is shorter than the minimum of 1m
               |
            11 |     snapshots: {every: 30s, store: local, retention: {last: 1}}
               |                        ^^^
        "#]],
    );
    check(
        &with("{every: often, store: local, retention: {last: 1}}"),
        expect![[r#"
            clusters/c.yaml:11:24: error: invalid interval `often`: expected number at 0
               |
            11 |     snapshots: {every: often, store: local, retention: {last: 1}}
               |                        ^^^^^
        "#]],
    );
}

#[test]
fn restore_requests_must_be_well_formed() {
    let with = |restore: &str| {
        cluster(
            "dev",
            &format!("{NODES}  etcd:\n    image: e\n    restore: {restore}\n"),
        )
    };
    check(
        &with("{snapshot: 20261125T060000Z-48213-9f3a61c2, requestId: incident-2026-11-25}"),
        expect![[r#"
            loaded: dev from clusters/c.yaml
        "#]],
    );
    check(
        &with("{snapshot: latest, requestId: 'not ok'}"),
        expect![[r#"
            clusters/c.yaml:11:25: error: invalid snapshot id `latest`: expected <UTC time>-<revision>-<id>, e.g. 20261125T060000Z-48213-9f3a61c2
               |
            11 |     restore: {snapshot: latest, requestId: 'not ok'}
               |                         ^^^^^^

            clusters/c.yaml:11:44: error: invalid restore request id `not ok`: 1 to 63 of a-z A-Z 0-9 . _ -, starting with a letter or digit
               |
            11 |     restore: {snapshot: latest, requestId: 'not ok'}
               |                                            ^^^^^^^^
        "#]],
    );
    check(
        &with("{snapshot: 20261125T060000Z-48213-9f3a61c2}"),
        expect![[r#"
            clusters/c.yaml:11:14: error: spec.etcd.restore: missing field `requestId`
               |
            11 |     restore: {snapshot: 20261125T060000Z-48213-9f3a61c2}
               |              ^
        "#]],
    );
}

#[test]
fn components_are_checked_field_by_field() {
    let components = "  components:
    worker:
      - name: etcd
        image: busybox
      - name: app
        image: busybox
        env: {GOOD_1: x, 1BAD: y}
        binds: ['/data:/data:ro', 'data:/data', '/a:/b:sideways']
        files:
          - {path: /etc/app.conf, content: x, mode: '0640'}
          - {path: etc/rel, content: x, mode: '0999'}
        labels: {drover.dev/cluster: x}
        health: {http: 'http://x/', tcp: 'x:1'}
      - name: app
        image: busybox
      - name: probe
        image: busybox
        health: {exec: [], interval: 2h}
";
    check(
        &cluster("dev", &format!("{NODES}{ETCD}{components}")),
        expect![[r#"
            clusters/c.yaml:12:15: error: component name `etcd` is reserved for drover's etcd member
               |
            12 |       - name: etcd
               |               ^^^^

            clusters/c.yaml:16:26: error: invalid environment variable name `1BAD`
               |
            16 |         env: {GOOD_1: x, 1BAD: y}
               |                          ^^^^

            clusters/c.yaml:17:35: error: invalid bind `data:/data`: both paths must be absolute and normalized
               |
            17 |         binds: ['/data:/data:ro', 'data:/data', '/a:/b:sideways']
               |                                   ^^^^^^^^^^^^

            clusters/c.yaml:17:49: error: invalid bind `/a:/b:sideways`: options are a comma-separated list of ro, rw, z, Z and propagation modes
               |
            17 |         binds: ['/data:/data:ro', 'data:/data', '/a:/b:sideways']
               |                                                 ^^^^^^^^^^^^^^^^

            clusters/c.yaml:20:20: error: file path `etc/rel` must be absolute and normalized
               |
            20 |           - {path: etc/rel, content: x, mode: '0999'}
               |                    ^^^^^^^

            clusters/c.yaml:20:47: error: invalid file mode `0999`: expected octal permission bits such as "0644"
               |
            20 |           - {path: etc/rel, content: x, mode: '0999'}
               |                                               ^^^^^^

            clusters/c.yaml:21:18: error: label keys starting with `drover.dev/` are reserved
               |
            21 |         labels: {drover.dev/cluster: x}
               |                  ^^^^^^^^^^^^^^^^^^

            clusters/c.yaml:22:9: error: health check needs exactly one of `http`, `tcp`, `exec`
               |
            22 |         health: {http: 'http://x/', tcp: 'x:1'}
               |         ^^^^^^

            clusters/c.yaml:23:15: error: component `app` is defined twice for role worker
               |
            23 |       - name: app
               |               ^^^

            clusters/c.yaml:27:24: error: invalid health check `[]`: the command is empty
               |
            27 |         health: {exec: [], interval: 2h}
               |                        ^

            clusters/c.yaml:27:38: error: invalid health check `2h`: must be at most 1h
               |
            27 |         health: {exec: [], interval: 2h}
               |                                      ^^
        "#]],
    );
}

#[test]
fn a_component_in_two_roles_clashes_on_a_node_with_both() {
    let components = "  components:
    controlplane: [{name: shared, image: busybox}]
    worker: [{name: shared, image: busybox}]
";
    // n1 is etcd + controlplane, n2 worker: no node runs both, so no clash.
    check(
        &cluster("dev", &format!("{NODES}{ETCD}{components}")),
        expect![[r#"
            loaded: dev from clusters/c.yaml
        "#]],
    );
    let nodes =
        "  nodes:\n    - {name: n1, address: 127.0.0.2, roles: [etcd, controlplane, worker]}\n";
    check(
        &cluster("dev", &format!("{nodes}{ETCD}{components}")),
        expect![[r#"
            clusters/c.yaml:11:21: error: component `shared` is defined for both controlplane and worker, and node `n1` has both roles
               |
            11 |     worker: [{name: shared, image: busybox}]
               |                     ^^^^^^
        "#]],
    );
}

#[test]
fn templates_render_for_every_node_that_runs_them() {
    let components = "  components:
    controlplane:
      - name: api
        image: busybox
        command: [httpd, -f, -p, '{{ node.address }}:8080']
        env:
          ETCD: \"{% for m in cluster.etcd %}{{ m.address }}:{{ cluster.etcdClientPort }}{% endfor %}\"
        health: {http: 'http://{{ node.address }}:8080/'}
    worker:
      - name: bad
        image: busybox
        args: ['{{ node.adress }}']
        files: [{path: /etc/x, content: '{% if %}'}]
      - name: probe
        image: busybox
        health: {tcp: '{{ node.name }}'}
";
    check(
        &cluster("dev", &format!("{NODES}{ETCD}{components}")),
        expect![[r#"
            clusters/c.yaml:21:16: error: template error for node `n2`: undefined value; templates can use node.{name, address, internalAddress, roles, labels} and cluster.{name, etcd, controlplane, etcdClientPort, etcdPeerPort, etcdPki}
               |
            21 |         args: ['{{ node.adress }}']
               |                ^^^^^^^^^^^^^^^^^^^

            clusters/c.yaml:25:23: error: invalid health check `n2`: expected host:port
               |
            25 |         health: {tcp: '{{ node.name }}'}
               |                       ^^^^^^^^^^^^^^^^^
        "#]],
    );
}

#[test]
fn files_written_twice_on_one_node_are_refused() {
    let components = "  components:
    etcd: [{name: a, image: busybox, files: [{path: /etc/shared, content: a}]}]
    controlplane: [{name: b, image: busybox, files: [{path: /etc/shared, content: b}]}]
";
    check(
        &cluster("dev", &format!("{NODES}{ETCD}{components}")),
        expect![[r#"
            clusters/c.yaml:12:61: error: file `/etc/shared` is written twice on node `n1`
               |
            12 |     controlplane: [{name: b, image: busybox, files: [{path: /etc/shared, content: b}]}]
               |                                                             ^^^^^^^^^^^
        "#]],
    );
}

#[test]
fn a_node_runs_at_most_as_many_containers_and_files_as_an_agent_reports() {
    // 1,100 files on one worker: over the 1,024 steps an agent's report may carry.
    let files: Vec<String> = (0..1100)
        .map(|i| format!("{{path: /etc/f{i}, content: x}}"))
        .collect();
    let components = format!(
        "  components:\n    worker: [{{name: w, image: busybox, files: [{}]}}]\n",
        files.join(", ")
    );
    check(
        &cluster("dev", &format!("{NODES}{ETCD}{components}")),
        expect![[r#"
            clusters/c.yaml:8:14: error: node `n2` would run 1101 containers and files; a node runs at most 1024
              |
            8 |     - {name: n2, address: 127.0.0.3, roles: [worker]}
              |              ^^
        "#]],
    );
}

#[test]
fn rollout_limits() {
    let rollout = "  rollout:\n    maxUnavailable: {controlplane: 0, worker: '150%', etcd: 1}\n";
    check(
        &cluster("dev", &format!("{NODES}{ETCD}{rollout}")),
        expect![[r#"
            clusters/c.yaml:11:36: error: invalid maxUnavailable `0`: expected a count of at least 1 or a percentage from 1% to 100%
               |
            11 |     maxUnavailable: {controlplane: 0, worker: '150%', etcd: 1}
               |                                    ^

            clusters/c.yaml:11:47: error: invalid maxUnavailable `150%`: expected a count of at least 1 or a percentage from 1% to 100%
               |
            11 |     maxUnavailable: {controlplane: 0, worker: '150%', etcd: 1}
               |                                               ^^^^^^

            clusters/c.yaml:11:55: warning: etcd members are always replaced one at a time; maxUnavailable for etcd is not used
               |
            11 |     maxUnavailable: {controlplane: 0, worker: '150%', etcd: 1}
               |                                                       ^^^^
        "#]],
    );
}

#[test]
fn aliases_are_allowed_but_merge_keys_are_refused_clearly() {
    let spec = "  nodes:
    - {name: n1, address: 127.0.0.2, roles: &cp [etcd, controlplane]}
    - {name: n2, address: 127.0.0.3, roles: *cp}
    - {name: n3, address: 127.0.0.4, roles: *cp}
  etcd: {image: e}
";
    check(
        &cluster("dev", spec),
        expect![[r#"
            loaded: dev from clusters/c.yaml
        "#]],
    );
    let spec = "  nodes:
    - &node {name: n1, address: 127.0.0.2, roles: [etcd]}
    - {<<: *node, name: n2, address: 127.0.0.3}
  etcd: {image: e}
";
    check(
        &cluster("dev", spec),
        expect![[r#"
            clusters/c.yaml:8:8: error: merge keys (`<<`) are not supported; use a plain alias (`*name`) or repeat the fields
              |
            8 |     - {<<: *node, name: n2, address: 127.0.0.3}
              |        ^^
        "#]],
    );
}

#[test]
fn a_broken_document_does_not_hide_its_neighbours() {
    let good = cluster("good", &format!("{NODES}{ETCD}"));
    let bad = cluster("bad", "  nodes: []\n  etcd: {image: e}\n");
    check(
        &format!("{good}---\n{bad}---\n"),
        expect![[r#"
            clusters/c.yaml:16:3: error: no node has the etcd role; a cluster needs at least one etcd member
               |
            16 |   nodes: []
               |   ^^^^^
            loaded: good from clusters/c.yaml
        "#]],
    );
}

#[test]
fn one_broken_file_never_blocks_the_others() {
    let a = cluster("a", &format!("{NODES}{ETCD}"));
    let c = cluster("c", &format!("{NODES}{ETCD}"));
    check_files(
        &[
            ("clusters/a.yaml", &a),
            ("clusters/b.yaml", "apiVersion: [unclosed\n"),
            ("clusters/c.yaml", &c),
        ],
        expect![[r#"
            clusters/b.yaml:2:1: error: YAML syntax: while parsing a flow sequence, expected ',' or ']'
              |
            2 | 
              | ^
            loaded: a from clusters/a.yaml
            loaded: c from clusters/c.yaml
        "#]],
    );
}

#[test]
fn a_cluster_name_defined_twice_loads_neither() {
    let one = cluster("dev", &format!("{NODES}{ETCD}"));
    let other = cluster("other", &format!("{NODES}{ETCD}"));
    check_files(
        &[
            ("clusters/dev.yaml", &one),
            ("clusters/new/dev-copy.yaml", &one),
            ("clusters/other.yaml", &other),
        ],
        expect![[r#"
            clusters/dev.yaml:4:9: error: cluster `dev` is also defined at clusters/new/dev-copy.yaml:4:9
              |
            4 |   name: dev
              |         ^^^

            clusters/new/dev-copy.yaml:4:9: error: cluster `dev` is also defined at clusters/dev.yaml:4:9
              |
            4 |   name: dev
              |         ^^^
            loaded: other from clusters/other.yaml
        "#]],
    );
}

#[test]
fn empty_files_warn() {
    check_files(
        &[
            ("clusters/a.yaml", ""),
            ("clusters/b.yaml", "# nothing yet\n---\n"),
        ],
        expect![[r#"
            clusters/a.yaml:1:1: warning: file holds no cluster
              |
            1 | 
              | ^

            clusters/b.yaml:1:1: warning: file holds no cluster
              |
            1 | # nothing yet
              | ^
        "#]],
    );
}

#[test]
fn bytes_that_are_not_utf8_point_at_the_first_bad_one() {
    let mut bytes = cluster("dev", &format!("{NODES}{ETCD}")).into_bytes();
    bytes.splice(20..20, [b'x', 0xff, 0xfe]);
    let repo = load_sources(
        vec![SourceFile {
            path: "clusters/c.yaml".into(),
            bytes,
        }],
        Vec::new(),
    );
    expect![[r#"
        clusters/c.yaml:1:22: error: file is not valid UTF-8
          |
        1 | apiVersion: drover.dx��ev/v1alpha1
          |                      ^
    "#]]
    .assert_eq(&repo.render_diagnostics());
    assert!(repo.clusters.is_empty());
}

#[test]
fn oversized_files_are_refused_without_parsing() {
    let big = format!("# {}\n", "x".repeat(1024 * 1024));
    check(
        &big,
        expect![[r#"
            clusters/c.yaml: error: file is 1048579 bytes, over the 1048576-byte limit for a cluster file
        "#]],
    );
}

#[test]
fn an_alias_bomb_is_refused() {
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    check(
        &text,
        expect![[r#"
            clusters/c.yaml:6:10: error: aliases expand to more than 200000 nodes (an alias bomb?)
              |
            6 | a5: &a5 [*a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4]
              |          ^^^
        "#]],
    );
}

/// Found by the fuzzer: the first pass accepts this, libyaml does not, and serde_yaml's document
/// iterator used to repeat that error forever.
#[test]
fn a_syntax_error_only_libyaml_sees_is_reported_once() {
    check(
        "a:\n :\n---\nb: 1\n",
        expect![[r#"
            clusters/c.yaml:1:1: error: unknown field `a`, expected one of `apiVersion`, `kind`, `metadata`, `spec`
              |
            1 | a:
              | ^

            clusters/c.yaml:2:2: error: did not find expected key
              |
            2 |  :
              |  ^
        "#]],
    );
}

#[test]
fn deep_nesting_is_refused() {
    let deep: String = (0..200).map(|d| format!("{}k:\n", " ".repeat(d))).collect();
    let repo = load_sources(
        vec![SourceFile {
            path: "clusters/c.yaml".into(),
            bytes: deep.into_bytes(),
        }],
        Vec::new(),
    );
    let codes: Vec<&str> = repo.diagnostics.iter().map(|d| d.problem.code()).collect();
    assert_eq!(codes, ["too-deep"]);
}
