//! `drover serve` at scale: the daemon (in a child process, started in-process there with
//! `Daemon::start`) follows a local source of `DROVER_BENCH_CLUSTERS` (default 100) cluster
//! files of `DROVER_BENCH_NODES` (default 100) nodes, and one protocol-level agent per node
//! (light clients in this process: TLS, WebSocket, no Docker) applies every plan at once, or
//! after `DROVER_BENCH_APPLY_MS`. Prints figures; asserts nothing. Run with
//! `cargo bench --bench reconcile`.
//!
//! Each cluster has three control-plane nodes (all three etcd members in even clusters, one in
//! odd ones) and workers, every component with a health check, and
//! `rollout.maxUnavailable: {controlplane: 1, worker: 10%}`. Nodes have unique 127.x addresses
//! that nothing ever dials. Credentials are issued up front into the daemon's state (as joins
//! would have left them), so agents connect with hello.
//!
//! A fake agent answers a plan with `Applied` (the plan's generation and checksum) and
//! `Observed` (every container of the plan running with `spec.container_hash`, healthy where
//! the plan has a probe). It answers the daemon's etcd `MemberList` with the members its plan's
//! `--initial-cluster` names (a plausible list: what etcd would list once they started), and
//! any other etcd task with `Failed`. A node is *down* from receiving a plan that changes or
//! removes a container it runs until it reports the plan applied and healthy; the largest
//! number of one cluster's nodes down at once, per rollout role, is compared with that
//! cluster's maxUnavailable.
//!
//! Measured, with the operator API (`GET /v1/clusters`, polled every 100 ms, the CA pinned)
//! and `/metrics`:
//! 1. from the daemon's start until every cluster is Ready;
//! 2. after an edit of every cluster file (new image tags for the control plane and a worker
//!    component) until every cluster is Ready at the new revision, and the daemon's peak RSS
//!    meanwhile;
//! 3. after an edit of one cluster file until that cluster is Ready at the new revision
//!    (polled every 10 ms), and until every cluster is;
//! 4. the daemon's RSS idle and at its peaks;
//! 5. reconcile passes and their durations (the `drover_reconcile_duration_seconds`
//!    histogram: quantiles are bucket bounds).
//!
//! 6. the dashboard, signed in as an operator: the clusters page (first page, a search, a
//!    condition filter's last page), a cluster's page and a node's, against the operator API's
//!    clusters document that `drover status` reads; the median and slowest of 20 requests each.
//!
//! `DROVER_BENCH_NO_AGENTS=1` starts no agent: the daemon holds every cluster waiting for its
//! agents, and only the time until every cluster has a status and the dashboard are measured
//! (so 1,000 clusters of 100 nodes fit on one machine).
//!
//! The daemon logs as `drover serve` does (`DROVER_LOG`, default info) to a file;
//! `DROVER_BENCH_LOG=PATH` keeps a copy. `DROVER_BENCH_TIMEOUT_S` (default 300) bounds each
//! phase.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover::agent::session::{send, Dial, Socket};
use drover::api::{ClusterStatus, ClustersDocument, ConditionType, CLUSTERS_PATH};
use drover::backoff::Backoff;
use drover::config::{DaemonConfig, SourceConfig};
use drover::model::{load_sources, Role, SourceFile};
use drover::nodeplan::NodeSpec;
use drover::pki::Identity;
use drover::protocol::{
    AgentMessage, EtcdMemberInfo, EtcdTask, EtcdTaskOutcome, Refusal, ServerMessage,
};
use drover::state::StateDir;
use futures::StreamExt as _;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/fake.rs"]
mod fake;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/operator.rs"]
mod operator;
#[path = "support/synthetic.rs"]
mod synthetic;

use fleet::mib;
use operator::{chain, Client};
use synthetic::{env, memory_kib_of};

/// Where the daemon listens: loopback, away from 127.0.0.1 and the agents benchmark.
const LISTEN_IP: &str = "127.77.1.1";
/// Connections being set up at once, below the server's handshake limit (256).
const DIAL_CONCURRENCY: usize = 200;
/// How often the clusters document is polled.
const POLL: Duration = Duration::from_millis(100);
/// How often one cluster's status is polled after a change of that cluster.
const POLL_ONE: Duration = Duration::from_millis(10);
/// Control-plane nodes per cluster; the rest are workers.
const CONTROLPLANE: usize = 3;
/// Rollout roles, as the planner phases nodes: by their highest role.
const ROLES: [&str; 2] = ["controlplane", "worker"];

fn main() {
    // `cargo bench` passes `--bench`; the daemon child is started with
    // `--daemon STATE_DIR SOURCE_DIR`.
    let args: Vec<String> = std::env::args().collect();
    let clusters = env("DROVER_BENCH_CLUSTERS", 100);
    let nodes = env("DROVER_BENCH_NODES", 100);
    assert!(
        nodes > CONTROLPLANE,
        "DROVER_BENCH_NODES must be above {CONTROLPLANE}"
    );
    if std::env::var_os("DROVER_BENCH_NO_AGENTS").is_none() {
        fleet::raise_fd_limit(clusters * nodes);
    }
    if let Some(i) = args.iter().position(|a| a == "--daemon") {
        let usage = "--daemon STATE_DIR SOURCE_DIR";
        let state = args.get(i + 1).expect(usage);
        let source = args.get(i + 2).expect(usage);
        return daemon(Path::new(state), Path::new(source));
    }
    let apply = Duration::from_millis(env("DROVER_BENCH_APPLY_MS", 0) as u64);
    let timeout = Duration::from_secs(env("DROVER_BENCH_TIMEOUT_S", 300) as u64);
    drive(clusters, nodes, apply, timeout);
}

// --- the daemon child ------------------------------------------------------------------------

/// `drover serve` in-process, logging as it does (`DROVER_LOG`, default info) to stderr, which
/// the driver sends to a file. Prints `ready AGENTS HTTP PIN`, and stops when stdin closes.
fn daemon(state: &Path, source: &Path) {
    // As `drover serve` logs.
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let ip: IpAddr = LISTEN_IP.parse().expect("an address");
        let config = DaemonConfig {
            source: Some(SourceConfig::Local {
                path: source.to_path_buf(),
                clusters_dir: "clusters".into(),
            }),
            listen_agents: SocketAddr::new(ip, 0),
            listen_http: SocketAddr::new(ip, 0),
            state_dir: state.to_path_buf(),
            tls_names: vec![LISTEN_IP.into()],
            ..DaemonConfig::default()
        };
        let daemon = drover::daemon::Daemon::start(&config)
            .await
            .unwrap_or_else(|e| panic!("the daemon starts: {}", chain(&e)));
        println!(
            "ready {} {} {}",
            daemon.agents_addr, daemon.http_addr, daemon.ca_pin
        );
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
        daemon.stop().await;
    });
}

// --- the repository --------------------------------------------------------------------------

/// Cluster `c`: `nodes` nodes with unique loopback addresses, three control-plane nodes (three
/// etcd members in even clusters, one in odd ones), workers; `version` is in the control
/// plane's and the `app` component's image tags. Every component has a health check.
fn cluster_yaml(c: usize, nodes: usize, version: usize) -> String {
    let members = if c % 2 == 0 { 3 } else { 1 };
    let mut s = format!(
        "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: c{c}}}\nspec:\n  nodes:\n"
    );
    for n in 0..nodes {
        let roles = match n {
            n if n < members => "[etcd, controlplane]",
            n if n < CONTROLPLANE => "[controlplane]",
            _ => "[worker]",
        };
        let g = c * nodes + n;
        s.push_str(&format!(
            "    - {{name: n{n}, address: 127.{}.{}.{}, roles: {roles}, labels: {{zone: z{}}}}}\n",
            10 + g / 62_500,
            g / 250 % 250,
            g % 250 + 1,
            n % 3
        ));
    }
    s.push_str(&format!(
        "  etcd: {{image: 'registry.example/etcd:3.5.16', extraArgs: {{election-timeout: '5000'}}}}
  components:
    controlplane:
      - name: apiserver
        image: registry.example/kube-apiserver:v1.31.{version}
        args:
          - --advertise-address={{{{ node.address }}}}
          - --etcd-servers={{% for m in cluster.etcd %}}https://{{{{ m.address }}}}:2379{{% if not loop.last %}},{{% endif %}}{{% endfor %}}
        health: {{http: 'https://{{{{ node.address }}}}:6443/healthz', interval: 2s}}
    worker:
      - name: kubelet
        image: registry.example/kubelet:v1.31.4
        args: ['--hostname-override={{{{ node.name }}}}', '--node-ip={{{{ node.address }}}}']
        files: [{{path: /etc/kubelet.conf, content: 'node: {{{{ node.name }}}}\\nzone: {{{{ node.labels.zone }}}}\\n', mode: '0600'}}]
        health: {{tcp: '{{{{ node.address }}}}:10250'}}
      - name: app
        image: registry.example/app:1.0.{version}
        env: {{NODE: '{{{{ node.name }}}}'}}
        health: {{http: 'http://{{{{ node.address }}}}:8080/healthz'}}
  rollout: {{maxUnavailable: {{controlplane: 1, worker: '10%'}}}}
"
    ));
    s
}

/// The version a node plan rolls out: the tag suffix of its control-plane or `app` image.
fn version_of(spec: &NodeSpec) -> Option<usize> {
    ["apiserver", "app"]
        .iter()
        .find_map(|c| spec.containers.get(*c))
        .and_then(|c| c.image.tag()?.rsplit('.').next()?.parse().ok())
}

/// The source's files: every cluster at `version(c)`.
struct Source {
    root: PathBuf,
    scratch: PathBuf,
    clusters: usize,
    nodes: usize,
}

impl Source {
    /// A source under `work` with every cluster's file at version 1.
    fn first(work: &Path, clusters: usize, nodes: usize) -> Source {
        let source = Source {
            root: work.join("source"),
            scratch: work.to_path_buf(),
            clusters,
            nodes,
        };
        std::fs::create_dir_all(source.root.join("clusters")).expect("the source directory");
        for c in 0..clusters {
            source.write(c, 1);
        }
        source
    }

    /// Writes cluster `c`'s file at `version`, atomically (a rename from outside the tree).
    fn write(&self, c: usize, version: usize) {
        let tmp = self.scratch.join(format!("c{c}.yaml"));
        std::fs::write(&tmp, cluster_yaml(c, self.nodes, version)).expect("a cluster file");
        std::fs::rename(&tmp, self.root.join(format!("clusters/c{c}.yaml")))
            .expect("a cluster file");
    }

    /// Each cluster's maxUnavailable per rollout role, as the planner reads it.
    fn limits(&self) -> Vec<[usize; 2]> {
        let files = (0..self.clusters)
            .map(|c| SourceFile {
                path: format!("clusters/c{c}.yaml"),
                bytes: cluster_yaml(c, self.nodes, 1).into_bytes(),
            })
            .collect();
        let repo = load_sources(files, Vec::new());
        assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
        let mut limits = vec![[0; 2]; self.clusters];
        for cluster in &repo.clusters {
            let c: usize = cluster.name.as_str()[1..].parse().expect("c<number>");
            let cp = cluster.nodes_with(Role::Controlplane).count();
            let workers = cluster.nodes.len() - cp;
            limits[c] = [
                cluster.rollout.batch_size(Role::Controlplane, cp),
                cluster.rollout.batch_size(Role::Worker, workers),
            ];
        }
        limits
    }
}

// --- what the fake agents saw ----------------------------------------------------------------

#[derive(Default)]
struct ClusterTally {
    /// Nodes down now and at most, per rollout role.
    down: [AtomicUsize; 2],
    peak: [AtomicUsize; 2],
    /// Agents that acknowledged a plan at the target version.
    at_target: AtomicUsize,
}

struct Tally {
    started: Instant,
    clusters: Vec<ClusterTally>,
    /// The version the current phase rolls out.
    target: AtomicUsize,
    at_target: AtomicUsize,
    /// When the last agent acknowledged a plan at the target version (µs since `started`).
    last_at_target: AtomicU64,
    plans: AtomicUsize,
    etcd_tasks: AtomicUsize,
    /// Hellos answered with retry-after or undeclared-node, then tried again.
    retries: AtomicUsize,
}

impl Tally {
    fn new(clusters: usize) -> Tally {
        Tally {
            started: Instant::now(),
            clusters: (0..clusters).map(|_| ClusterTally::default()).collect(),
            target: AtomicUsize::new(1),
            at_target: AtomicUsize::new(0),
            last_at_target: AtomicU64::new(0),
            plans: AtomicUsize::new(0),
            etcd_tasks: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        }
    }

    /// Starts a phase that rolls out `version`: counts and peaks start again.
    fn aim(&self, version: usize) {
        self.target.store(version, Ordering::SeqCst);
        self.at_target.store(0, Ordering::SeqCst);
        for c in &self.clusters {
            c.at_target.store(0, Ordering::SeqCst);
            for p in &c.peak {
                p.store(0, Ordering::SeqCst);
            }
        }
    }

    /// The phase's largest number of nodes down at once, per role, by cluster.
    fn peaks(&self) -> Vec<[usize; 2]> {
        self.clusters
            .iter()
            .map(|c| [0, 1].map(|r| c.peak[r].load(Ordering::SeqCst)))
            .collect()
    }

    /// When every one of `agents` acknowledged the target, as time since `since`.
    fn all_at_target(&self, agents: usize, since: Instant) -> Option<Duration> {
        if self.at_target.load(Ordering::SeqCst) < agents {
            return None;
        }
        let at = self.started + Duration::from_micros(self.last_at_target.load(Ordering::SeqCst));
        Some(at.saturating_duration_since(since))
    }
}

/// One fake agent's node.
struct Node {
    cluster: usize,
    /// 0: control plane, 1: worker.
    role: usize,
}

/// A fake agent: takes every plan, reports it applied, its containers running and healthy
/// (after `apply`), answers etcd tasks, and keeps the heartbeat.
async fn agent(mut socket: Socket, node: Node, apply: Duration, tally: Arc<Tally>) {
    let cluster = &tally.clusters[node.cluster];
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let mut seq = 0;
    // What runs: each container's hash; and the members its plan started etcd with.
    let mut running: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut members: Option<Vec<EtcdMemberInfo>> = None;
    let mut down = false;
    let mut acked = None;
    let mut pending: Option<(tokio::time::Instant, u64, String, NodeSpec)> = None;
    loop {
        let due = pending.as_ref().map(|p| p.0);
        let ready = tokio::select! {
            frame = socket.next() => {
                let Some(Ok(Message::Text(text))) = frame else { return };
                match drover::protocol::decode::<ServerMessage>(text.as_str()) {
                    Ok(ServerMessage::Plan { generation, checksum, spec, .. }) => {
                        tally.plans.fetch_add(1, Ordering::Relaxed);
                        let changes = running
                            .iter()
                            .any(|(c, hash)| spec.container_hash(c) != *hash);
                        if changes && !down {
                            down = true;
                            let now = cluster.down[node.role].fetch_add(1, Ordering::SeqCst) + 1;
                            cluster.peak[node.role].fetch_max(now, Ordering::SeqCst);
                        }
                        let at = tokio::time::Instant::now() + apply;
                        pending = Some((at, generation, checksum, spec));
                        apply.is_zero()
                    }
                    Ok(ServerMessage::EtcdTask { id, task, .. }) => {
                        tally.etcd_tasks.fetch_add(1, Ordering::Relaxed);
                        let outcome = match (&task, &members) {
                            (EtcdTask::MemberList, Some(members)) => {
                                EtcdTaskOutcome::Members { members: members.clone() }
                            }
                            _ => EtcdTaskOutcome::Failed {
                                error: "the benchmark's agents run no etcd".into(),
                            },
                        };
                        let result = AgentMessage::EtcdTaskResult { id, outcome };
                        if send(&mut socket, &result).await.is_err() {
                            return;
                        }
                        false
                    }
                    _ => false,
                }
            }
            () = sleep_until(due) => true,
            _ = ticker.tick() => {
                seq += 1;
                if send(&mut socket, &AgentMessage::Heartbeat { seq }).await.is_err() {
                    return;
                }
                false
            }
        };
        if !ready {
            continue;
        }
        let Some((_, generation, checksum, spec)) = pending.take() else {
            continue;
        };
        let containers = fake::observed(&spec);
        let applied = AgentMessage::Applied {
            generation,
            checksum,
            steps: Vec::new(),
        };
        if send(&mut socket, &applied).await.is_err()
            || send(&mut socket, &AgentMessage::Observed { containers })
                .await
                .is_err()
        {
            return;
        }
        if down {
            down = false;
            cluster.down[node.role].fetch_sub(1, Ordering::SeqCst);
        }
        running = spec
            .containers
            .keys()
            .map(|c| (c.clone(), spec.container_hash(c)))
            .collect();
        members = fake::members(&spec);
        let version = version_of(&spec);
        let target = tally.target.load(Ordering::SeqCst);
        if version == Some(target) && acked != Some(target) {
            cluster.at_target.fetch_add(1, Ordering::SeqCst);
            tally.at_target.fetch_add(1, Ordering::SeqCst);
            let micros = tally.started.elapsed().as_micros() as u64;
            tally.last_at_target.fetch_max(micros, Ordering::SeqCst);
        }
        acked = version;
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Connects one node's agent, as a real agent would: retry-after and an undeclared node (the
/// daemon has not declared it yet) are tried again, the latter with the agent's backoff.
async fn connect(
    dial: &Dial,
    dials: &Semaphore,
    cluster: &str,
    node: &str,
    identity: &Identity,
    tally: &Tally,
) -> Socket {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let answer = {
            let _permit = dials.acquire().await.expect("the semaphore stays");
            fleet::hello(dial, cluster, node, identity.clone()).await
        };
        let wait = match answer {
            Ok(socket) => return socket,
            Err(ServerMessage::RetryAfter { seconds, .. }) => Duration::from_secs(seconds),
            Err(ServerMessage::Refused {
                reason: Refusal::UndeclaredNode { .. },
            }) => backoff.next_delay(),
            Err(other) => panic!("{cluster}/{node}: expected welcome, got {other:?}"),
        };
        tally.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
}

// --- the daemon's figures --------------------------------------------------------------------

/// The reconcile passes' histogram, summed over clusters.
#[derive(Debug, Clone, Default)]
struct Passes {
    count: f64,
    sum: f64,
    /// Cumulative counts by upper bound.
    buckets: Vec<(f64, f64)>,
}

impl Passes {
    async fn read(http: SocketAddr) -> Passes {
        let text = match reqwest::get(format!("http://{http}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut out = Passes::default();
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("drover_reconcile_duration_seconds_") else {
                continue;
            };
            let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if rest.starts_with("count") {
                out.count += value;
            } else if rest.starts_with("sum") {
                out.sum += value;
            } else if let Some(le) = rest.split("le=\"").nth(1) {
                let le: f64 = le
                    .split('"')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(f64::INFINITY);
                buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
            }
        }
        out.buckets = buckets.into_values().collect();
        out.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    fn since(&self, before: &Passes) -> Passes {
        let bucket = |le: f64| {
            before
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |b| b.1)
        };
        Passes {
            count: self.count - before.count,
            sum: self.sum - before.sum,
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, n - bucket(*le)))
                .collect(),
        }
    }

    /// The bucket bound under which a fraction `q` of the passes took.
    fn quantile(&self, q: f64) -> String {
        let want = self.count * q;
        match self.buckets.iter().find(|(_, n)| *n >= want && *n > 0.0) {
            Some((le, _)) if le.is_finite() => format!("≤ {}", ms(Duration::from_secs_f64(*le))),
            Some(_) => "> 2 min".into(),
            None => "-".into(),
        }
    }

    fn mean(&self) -> String {
        if self.count == 0.0 {
            return "-".into();
        }
        ms(Duration::from_secs_f64(self.sum / self.count))
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1e3)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// Samples the daemon's RSS while a phase runs; `peak` is the largest sample or VmHWM after
/// it was reset (`/proc/PID/clear_refs`), whichever is larger.
struct RssWatch {
    pid: u32,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    hwm_reset: bool,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let peak = Arc::new(AtomicU64::new(memory_kib_of(pid).0));
        let task = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(memory_kib_of(pid).0, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        RssWatch {
            pid,
            peak,
            task,
            hwm_reset,
        }
    }

    fn stop(self) -> u64 {
        self.task.abort();
        let (rss, hwm) = memory_kib_of(self.pid);
        let sampled = self.peak.load(Ordering::Relaxed).max(rss);
        if self.hwm_reset {
            sampled.max(hwm)
        } else {
            sampled
        }
    }
}

fn is_ready(status: &ClusterStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.kind == ConditionType::Ready && c.status)
}

/// Every one of `clusters` is Ready at the source's revision, which is not `old`.
fn all_ready(doc: &ClustersDocument, clusters: usize, old: Option<&str>) -> bool {
    let Some(revision) = doc.source.revision.as_deref() else {
        return false;
    };
    Some(revision) != old
        && doc.clusters.len() == clusters
        && doc.clusters.iter().all(|c| {
            is_ready(c)
                && c.desired_revision.as_deref() == Some(revision)
                && c.applied_revision.as_deref() == Some(revision)
        })
}

/// Where the slowest clusters stand, for a phase that did not finish.
fn stuck(doc: Option<&ClustersDocument>) -> String {
    let Some(doc) = doc else {
        return "no clusters document was read".into();
    };
    let not_ready: Vec<&ClusterStatus> = doc.clusters.iter().filter(|c| !is_ready(c)).collect();
    let first = not_ready.first().map(|c| {
        let why = c
            .plan
            .as_ref()
            .and_then(|p| p.waiting_on.clone())
            .unwrap_or_default();
        format!("; {} at {:?}: {why}", c.name, c.applied_revision)
    });
    format!(
        "{} of {} clusters not Ready (source at {:?}){}",
        not_ready.len(),
        doc.clusters.len(),
        doc.source.revision,
        first.unwrap_or_default()
    )
}

/// Polls the clusters document until `done`; the time since `since`, or `None` after `limit`.
async fn poll_clusters(
    client: &Client,
    since: Instant,
    limit: Duration,
    done: impl Fn(&ClustersDocument) -> bool,
) -> (Option<Duration>, Option<ClustersDocument>) {
    let mut last = None;
    loop {
        if let Ok(doc) = client.get::<ClustersDocument>(CLUSTERS_PATH).await {
            let finished = done(&doc);
            last = Some(doc);
            if finished {
                return (Some(since.elapsed()), last);
            }
        }
        if since.elapsed() > limit {
            return (None, last);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The max-unavailable verdict of a phase: "kept" with the largest number down at once per
/// role, or every cluster and role that went over.
fn unavailable(peaks: &[[usize; 2]], limits: &[[usize; 2]], only: Option<usize>) -> String {
    let mut worst = [0, 0];
    let mut over = Vec::new();
    for (c, (peak, limit)) in peaks.iter().zip(limits).enumerate() {
        if only.is_some_and(|o| o != c) {
            continue;
        }
        for r in 0..2 {
            worst[r] = worst[r].max(peak[r]);
            if peak[r] > limit[r] {
                over.push(format!("c{c} {} {} > {}", ROLES[r], peak[r], limit[r]));
            }
        }
    }
    let limit = |r: usize| {
        let l: Vec<usize> = limits.iter().map(|l| l[r]).collect();
        let (lo, hi) = (l.iter().min().copied(), l.iter().max().copied());
        match (lo, hi) {
            (Some(lo), Some(hi)) if lo != hi => format!("{lo}–{hi}"),
            (Some(lo), _) => lo.to_string(),
            _ => "-".into(),
        }
    };
    if over.is_empty() {
        format!(
            "kept (cp {}/{}, worker {}/{})",
            worst[0],
            limit(0),
            worst[1],
            limit(1)
        )
    } else {
        format!("VIOLATED: {}", over.join(", "))
    }
}

/// The daemon's CPU time so far (user and system), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, in clock ticks of 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

// --- the driver ------------------------------------------------------------------------------

/// The daemon child and where it serves.
struct DaemonChild {
    child: tokio::process::Child,
    pid: u32,
    agents: String,
    http: SocketAddr,
    pin: String,
}

impl DaemonChild {
    /// Starts the daemon and waits until it admits agents; also returns when it listened and
    /// when it admitted, since `started`.
    async fn start(
        state: &Path,
        source: &Path,
        log: &Path,
        started: Instant,
    ) -> (DaemonChild, Duration, Duration) {
        let exe = std::env::current_exe().expect("the bench binary");
        let log_file = std::fs::File::create(log).expect("the daemon's log");
        let mut child = tokio::process::Command::new(exe)
            .arg("--daemon")
            .arg(state)
            .arg(source)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("the daemon child starts");
        let pid = child.id().expect("a pid");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = stdout
            .next_line()
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("the daemon did not start; see {}", log.display()));
        let words: Vec<&str> = ready.split_whitespace().collect();
        let ["ready", agents, http, pin] = words.as_slice() else {
            panic!("the daemon said {ready:?}");
        };
        let http: SocketAddr = http.parse().expect("an address");
        let listening = started.elapsed();
        loop {
            let answer = reqwest::get(format!("http://{http}/readyz")).await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let daemon = DaemonChild {
            child,
            pid,
            agents: agents.to_string(),
            http,
            pin: pin.to_string(),
        };
        (daemon, listening, started.elapsed())
    }

    /// Closes its stdin (it stops), and kills it if it has not stopped within 15 s.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let stopped = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        if stopped.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Only the daemon and its dashboard, every cluster waiting for agents that never come.
fn without_agents(clusters: usize, nodes: usize, timeout: Duration) {
    println!(
        "dashboard benchmark: drover serve with {clusters} clusters of {nodes} nodes, no agents"
    );
    let work = tempfile::tempdir().expect("a work directory");
    let source = Source::first(work.path(), clusters, nodes);
    let state_dir = fleet::owner_only_tempdir();
    let log_path = work.path().join("daemon.log");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let started = Instant::now();
        let (daemon, _, _) =
            DaemonChild::start(state_dir.path(), &source.root, &log_path, started).await;
        let client = Client::new(&daemon.agents, &daemon.pin, state_dir.path());
        let (took, _) = poll_clusters(&client, started, timeout, |d| {
            d.clusters.len() == clusters && d.clusters.iter().all(|c| c.nodes.len() == nodes)
        })
        .await;
        println!(
            "every cluster has a status {} after the daemon's start; daemon RSS {}",
            took.map_or("not reached".into(), ms),
            mib(memory_kib_of(daemon.pid).0)
        );
        dashboard(&daemon, state_dir.path(), clusters).await;
        daemon.stop().await;
    });
}

/// Requests per page in the dashboard's table; the first of each is not counted.
const DASHBOARD_REQUESTS: usize = 21;

/// Signs in to the dashboard and times its pages against the operator API's clusters
/// document; prints a table.
async fn dashboard(daemon: &DaemonChild, state: &Path, clusters: usize) {
    use reqwest::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
    let token = std::fs::read_to_string(state.join("operator-token")).expect("the operator token");
    let tls = drover::pki::agent_config(&daemon.pin, None).expect("the pinned CA");
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client");
    let base = format!("https://{}", daemon.agents);
    let signed = http
        .post(format!("{base}/ui/sign-in"))
        .form(&[("token", token.trim())])
        .send()
        .await
        .expect("signed in");
    let cookie = signed.headers()[SET_COOKIE]
        .to_str()
        .expect("a cookie")
        .split(';')
        .next()
        .expect("a session")
        .to_string();
    let last = clusters.div_ceil(50).saturating_sub(1);
    let pages = [
        (
            format!("{CLUSTERS_PATH} (operator API, JSON)"),
            CLUSTERS_PATH.to_string(),
            true,
        ),
        ("clusters page 1".into(), "/ui/".into(), false),
        ("search `c99`".into(), "/ui/?q=c99".into(), false),
        (
            format!("filter reconciling, page {}", last + 1),
            format!("/ui/?condition=reconciling&page={last}"),
            false,
        ),
        ("a cluster's page".into(), "/ui/clusters/c0".into(), false),
        (
            "a node's page".into(),
            "/ui/clusters/c0/nodes/n5".into(),
            false,
        ),
    ];
    println!("\n| request | p50 | slowest | bytes |");
    println!("|---|---:|---:|---:|");
    for (what, path, api) in pages {
        let mut times = Vec::with_capacity(DASHBOARD_REQUESTS);
        let mut bytes = 0;
        for _ in 0..DASHBOARD_REQUESTS {
            let request = http.get(format!("{base}{path}"));
            let request = match api {
                true => request.header(AUTHORIZATION, format!("Bearer {}", token.trim())),
                false => request.header(COOKIE, &cookie),
            };
            let began = Instant::now();
            let answer = request.send().await.expect("an answer");
            assert!(answer.status().is_success(), "{path}: {}", answer.status());
            bytes = answer.bytes().await.expect("a body").len();
            times.push(began.elapsed());
        }
        times.remove(0);
        times.sort();
        println!(
            "| {what} | {} | {} | {bytes} |",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
}

/// One row of the table.
struct Row {
    what: String,
    took: Option<Duration>,
    target: &'static str,
    passes: Passes,
    plans: usize,
    tasks: usize,
    unavailable: String,
    cpu: f64,
    rss: u64,
}

/// What a phase measures from its start: passes, the daemon's CPU time and peak RSS.
struct Phase {
    passes: Passes,
    cpu: f64,
    rss: RssWatch,
}

impl Phase {
    async fn start(daemon: &DaemonChild) -> Phase {
        Phase {
            passes: Passes::read(daemon.http).await,
            cpu: cpu_seconds(daemon.pid),
            rss: RssWatch::start(daemon.pid),
        }
    }

    async fn finish(
        self,
        daemon: &DaemonChild,
        tally: &Tally,
        what: String,
        took: Option<Duration>,
        target: &'static str,
        unavailable: String,
    ) -> Row {
        Row {
            what,
            took,
            target,
            passes: Passes::read(daemon.http).await.since(&self.passes),
            plans: tally.plans.swap(0, Ordering::SeqCst),
            tasks: tally.etcd_tasks.swap(0, Ordering::SeqCst),
            unavailable,
            cpu: cpu_seconds(daemon.pid) - self.cpu,
            rss: self.rss.stop(),
        }
    }
}

fn drive(clusters: usize, nodes: usize, apply: Duration, timeout: Duration) {
    if std::env::var_os("DROVER_BENCH_NO_AGENTS").is_some() {
        return without_agents(clusters, nodes, timeout);
    }
    let agents = clusters * nodes;
    println!(
        "reconcile benchmark: drover serve with {clusters} clusters of {nodes} nodes ({agents} fake agents), apply delay {} ms",
        apply.as_millis()
    );
    let work = tempfile::tempdir().expect("a work directory");
    let source = Source::first(work.path(), clusters, nodes);
    let limits = source.limits();
    let state_dir = fleet::owner_only_tempdir();
    let started = Instant::now();
    let names: Vec<(String, String)> = (0..clusters)
        .flat_map(|c| (0..nodes).map(move |n| (format!("c{c}"), format!("n{n}"))))
        .collect();
    let identities = fleet::credentials(&StateDir::new(state_dir.path()).into(), names);
    println!(
        "issued {agents} node credentials in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let log_path = work.path().join("daemon.log");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        // (1) From the daemon's start until every cluster is Ready.
        let started = Instant::now();
        let (daemon, listening, admitted) =
            DaemonChild::start(state_dir.path(), &source.root, &log_path, started).await;
        let loaded_rss = memory_kib_of(daemon.pid).0;
        let client = Client::new(&daemon.agents, &daemon.pin, state_dir.path());
        let dial = Dial::new(&format!("wss://{}", daemon.agents), &daemon.pin)
            .expect("a server URL");
        let tally = Arc::new(Tally::new(clusters));
        let dials = Arc::new(Semaphore::new(DIAL_CONCURRENCY));
        let connected = Arc::new(AtomicUsize::new(0));
        let all_connected = Arc::new(std::sync::OnceLock::<Duration>::new());
        let phase = Phase::start(&daemon).await;
        let mut tasks = tokio::task::JoinSet::new();
        for ((cluster, node), identity) in identities {
            let (dial, dials, tally) = (dial.clone(), dials.clone(), tally.clone());
            let (connected, all_connected) = (connected.clone(), all_connected.clone());
            let index = |name: &str| -> usize { name[1..].parse().expect("a numbered name") };
            let place = Node {
                cluster: index(&cluster),
                role: usize::from(index(&node) >= CONTROLPLANE),
            };
            tasks.spawn(async move {
                let socket = connect(&dial, &dials, &cluster, &node, &identity, &tally).await;
                if connected.fetch_add(1, Ordering::SeqCst) + 1 == agents {
                    let _ = all_connected.set(started.elapsed());
                }
                agent(socket, place, apply, tally).await
            });
        }
        let (took, doc) =
            poll_clusters(&client, started, timeout, |d| all_ready(d, clusters, None)).await;
        let acked = tally.all_at_target(agents, started);
        let verdict = unavailable(&tally.peaks(), &limits, None);
        let what = "initial convergence (daemon start → all Ready)".to_string();
        let mut rows = vec![phase.finish(&daemon, &tally, what, took, "", verdict).await];
        println!(
            "daemon listening {} after start, admitting agents after {}; {} agents connected after {} ({} hellos retried); every agent acknowledged its final plan after {}",
            ms(listening),
            ms(admitted),
            connected.load(Ordering::SeqCst),
            all_connected.get().map_or("-".into(), |d| ms(*d)),
            tally.retries.load(Ordering::SeqCst),
            acked.map_or("-".into(), ms),
        );
        let revision = doc.as_ref().and_then(|d| d.source.revision.clone());
        if took.is_none() {
            println!("NOT converged within {timeout:?}: {}", stuck(doc.as_ref()));
        }

        // Idle: every cluster converged, nothing to do.
        let idle_cpu = cpu_seconds(daemon.pid);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle_cpu = cpu_seconds(daemon.pid) - idle_cpu;
        let idle_rss = memory_kib_of(daemon.pid).0;
        dashboard(&daemon, state_dir.path(), clusters).await;

        if took.is_some() {
            // (2) A commit that changes every cluster.
            tally.aim(2);
            let phase = Phase::start(&daemon).await;
            let edited = Instant::now();
            for c in 0..clusters {
                source.write(c, 2);
            }
            let (took, doc) = poll_clusters(&client, edited, timeout, |d| {
                all_ready(d, clusters, revision.as_deref())
            })
            .await;
            let acked = tally.all_at_target(agents, edited);
            let verdict = unavailable(&tally.peaks(), &limits, None);
            let what = format!("edit of all {clusters} clusters → all Ready at it");
            rows.push(phase.finish(&daemon, &tally, what, took, "< 10 s", verdict).await);
            println!(
                "all clusters edited: every agent acknowledged its new plan after {}",
                acked.map_or("-".into(), ms)
            );
            if took.is_none() {
                println!("NOT converged within {timeout:?}: {}", stuck(doc.as_ref()));
            }
            let revision = doc.as_ref().and_then(|d| d.source.revision.clone());

            // (3) A commit that changes one cluster.
            tokio::time::sleep(Duration::from_secs(2)).await;
            tally.aim(3);
            let phase = Phase::start(&daemon).await;
            let edited = Instant::now();
            source.write(0, 3);
            let took = loop {
                let status = client
                    .get::<ClusterStatus>(&format!("{CLUSTERS_PATH}/c0"))
                    .await;
                if let Ok(s) = status {
                    let new = s.desired_revision.is_some() && s.desired_revision != revision;
                    if new && is_ready(&s) && s.applied_revision == s.desired_revision {
                        break Some(edited.elapsed());
                    }
                }
                if edited.elapsed() > timeout {
                    break None;
                }
                tokio::time::sleep(POLL_ONE).await;
            };
            let acked = tally.clusters[0].at_target.load(Ordering::SeqCst);
            let acked_at = (acked == nodes).then(|| {
                let at = Duration::from_micros(tally.last_at_target.load(Ordering::SeqCst));
                (tally.started + at).saturating_duration_since(edited)
            });
            let (all, _) = poll_clusters(&client, edited, timeout, |d| {
                all_ready(d, clusters, revision.as_deref())
            })
            .await;
            let verdict = unavailable(&tally.peaks(), &limits, Some(0));
            let what = "edit of one cluster → it Ready at it".to_string();
            rows.push(phase.finish(&daemon, &tally, what, took, "< 1 s", verdict).await);
            println!(
                "one cluster edited: its {nodes} agents acknowledged their new plan after {}; every cluster Ready at the new revision after {}",
                acked_at.map_or("-".into(), ms),
                all.map_or("-".into(), ms)
            );
        }

        let peak = memory_kib_of(daemon.pid).1;
        println!(
            "\n| {clusters} clusters × {nodes} nodes, apply {} ms | time | target | passes | pass mean | p50 | p99 | plans received | etcd tasks | max unavailable | daemon CPU | daemon peak RSS |",
            apply.as_millis()
        );
        println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} s | {} |",
                r.what,
                r.took.map_or("not reached".into(), ms),
                r.target,
                r.passes.count,
                r.passes.mean(),
                r.passes.quantile(0.5),
                r.passes.quantile(0.99),
                r.plans,
                r.tasks,
                r.unavailable,
                r.cpu,
                mib(r.rss)
            );
        }
        println!(
            "daemon RSS: {} with the source loaded, {} idle after convergence, {} peak during the edit of every cluster (target < 1 GiB), {} peak overall; daemon CPU while idle: {idle_cpu:.1} s in 5 s",
            mib(loaded_rss),
            mib(idle_rss),
            mib(rows.get(1).map_or(0, |r| r.rss)),
            mib(peak)
        );
        if let Ok(keep) = std::env::var("DROVER_BENCH_LOG") {
            let _ = std::fs::copy(&log_path, &keep);
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let problems: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        println!(
            "daemon log (before the agents stop): {} lines, {} warnings or errors{}",
            log.lines().count(),
            problems.len(),
            problems
                .first()
                .map_or(String::new(), |l| format!(", the first: {l}"))
        );
        tasks.abort_all();
        daemon.stop().await;
    });
}
