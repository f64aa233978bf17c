//! Synthetic cluster repositories and process figures, shared by the benchmarks.

// Each benchmark uses part of this module.
#![allow(dead_code)]

use drover::model::SourceFile;

pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a synthetic cluster's components run: changing `app` changes every worker's plan,
/// changing `apiserver` every control-plane node's.
#[derive(Debug, Clone, Copy)]
pub struct Versions {
    pub app: usize,
    pub apiserver: usize,
}

/// One cluster: three etcd + control-plane nodes, the rest workers, three templated components.
pub fn cluster_yaml(c: usize, nodes: usize, v: Versions) -> String {
    let mut s = format!(
        "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: c{c}}}\nspec:\n  nodes:\n"
    );
    for n in 0..nodes {
        let roles = if n < 3 {
            "[etcd, controlplane]"
        } else {
            "[worker]"
        };
        s.push_str(&format!(
            "    - {{name: n{n}, address: 127.1.{}.{}, roles: {roles}, labels: {{zone: z{}}}}}\n",
            n / 250,
            n % 250 + 1,
            n % 3
        ));
    }
    s.push_str(&format!(
        "  etcd: {{image: 'registry.example/etcd:3.5.16', extraArgs: {{election-timeout: '5000'}}, snapshots: {{every: 6h, store: backups, retention: {{last: 6, daily: 7}}}}}}
  components:
    controlplane:
      - name: apiserver
        image: registry.example/kube-apiserver:v1.31.4
        args:
          - --advertise-address={{{{ node.internalAddress }}}}
          - --etcd-servers={{% for m in cluster.etcd %}}https://{{{{ m.address }}}}:2379{{% if not loop.last %}},{{% endif %}}{{% endfor %}}
        env: {{REVISION: '{apiserver}'}}
        health: {{http: 'https://{{{{ node.address }}}}:6443/healthz'}}
    worker:
      - name: kubelet
        image: registry.example/kubelet:v1.31.4
        args: ['--hostname-override={{{{ node.name }}}}', '--node-ip={{{{ node.internalAddress }}}}']
        files: [{{path: /etc/kubelet.conf, content: 'node: {{{{ node.name }}}}\\nzone: {{{{ node.labels.zone }}}}\\n', mode: '0600'}}]
      - name: app
        image: registry.example/app:{app}
        env: {{NODE: '{{{{ node.name }}}}'}}
  rollout: {{maxUnavailable: {{worker: '25%'}}}}
",
        apiserver = v.apiserver,
        app = v.app,
    ));
    s
}

/// `nodes` nodes in clusters of `per_cluster` (the last one smaller when it does not divide),
/// each cluster's versions from `versions`.
pub fn repo(
    nodes: usize,
    per_cluster: usize,
    versions: impl Fn(usize) -> Versions,
) -> Vec<SourceFile> {
    (0..nodes.div_ceil(per_cluster))
        .map(|c| SourceFile {
            path: format!("clusters/c{c}.yaml"),
            bytes: cluster_yaml(c, per_cluster.min(nodes - c * per_cluster), versions(c))
                .into_bytes(),
        })
        .collect()
}

/// This process's resident and peak resident memory, in KiB.
pub fn memory_kib() -> (u64, u64) {
    status_memory_kib("self")
}

/// Process `pid`'s resident and peak resident memory, in KiB.
pub fn memory_kib_of(pid: u32) -> (u64, u64) {
    status_memory_kib(&pid.to_string())
}

fn status_memory_kib(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
