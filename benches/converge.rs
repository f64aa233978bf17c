//! Commit to converged: how long after a commit every node runs it, with `drover serve` on the
//! dev-shaped cluster of `tests/it/serve.rs`, against what a user would do by hand. Prints
//! figures; asserts nothing timed. Run with `cargo bench --bench converge`.
//!
//! Everything is real and on loopback: the daemon (`drover serve`) and one agent per node
//! (`drover agent`) run as processes; the agents drive the local Docker engine; the cluster
//! (`Layout` of the test support) has three etcd + control-plane nodes and one worker, each on
//! its own 127.x address, etcd 3.4 with TLS as the planner emits it (certificates from the
//! daemon's per-cluster CA), a busybox `api` (httpd) on each control-plane node behind an HTTP
//! probe and an `app` (httpd) on the worker behind a TCP probe, both probed every second, and
//! `rollout.maxUnavailable: {controlplane: 1, worker: 1}`. The daemon follows a Git repository
//! through libgit2 as it follows any remote (list the refs, fetch the one ref into its bare
//! mirror); the remote is a `file://` URL. The images are present locally: nothing is pulled.
//!
//! **The change.** Each round commits a new value of the environment variable `ROUND` of both
//! components. Every node's plan changes, and one container on every node is recreated (forced
//! removal, create, start): the `api` on n1, n2 and n3 one at a time (maxUnavailable 1, each
//! batch waiting for its node's report: plan applied, container running, probe passed), then
//! the `app` on w1. etcd is untouched.
//!
//! **Three modes, one after the other**, `DROVER_BENCH_ROUNDS` changes each (default 20):
//! 1. *webhook*: right after the commit the bench POSTs a signed generic webhook to the daemon
//!    (`/hooks/generic`), as a Git host would; the HTTP connection is kept between rounds.
//! 2. *polling*: no webhook. The daemon polls at its default interval (60 s) unless
//!    `DROVER_BENCH_POLL_INTERVAL` (a duration of at least 5 s, e.g. `10s`) sets another.
//!    Before each commit the bench waits a random time in `[0, interval)`, so commits land at
//!    random points of the poll cycle: the figures include a wait spread evenly over the
//!    interval. This mode takes about `DROVER_BENCH_ROUNDS` × the interval.
//! 3. *by hand*, the baseline a user would otherwise have: a clone (`git clone`) of another
//!    repository holding the same file, and the same four containers started with `docker run`
//!    on four other loopback addresses. Per round: commit; `git fetch`; then a naive loop over
//!    the nodes, `docker rm -f` and `docker run -d` of each node's container in turn; then the
//!    time until all four answer (the same HTTP and TCP checks, polled every 10 ms). The
//!    daemon and agents are stopped first (their containers stay, idle), so the baseline has
//!    the machine to itself.
//!
//! **What is measured.** For drover: from the moment the commit exists in the remote (the
//! commit call returned) until the operator API's `GET /v1/clusters/{name}` shows the cluster
//! Ready, applied at that commit, and every node connected, at its latest generation and
//! having applied it, its plan from that commit, and ready (the agents' reports as the daemon
//! judged them). Also *seen*: until the status's desired revision is the commit (the source
//! fetched and loaded it, and a pass ran on it); *rollout* is converged minus seen.
//!
//! **Resolution.** The status is polled every 10 ms over one kept-alive TLS connection on
//! loopback, and a time is taken when the response is in: a figure is late by at most 10 ms
//! and one request. The daemon publishes a cluster's status at the end
//! of each reconcile pass, which starts 20 ms (`daemon::controller::COALESCE`) after the report
//! that wakes it: that wait is drover's own and is in the figures. p50 and p99 are by nearest
//! rank: with 20 rounds, p99 is the slowest round.
//!
//! `DROVER_BENCH_LOG=DIR` keeps the daemon's and agents' logs (the daemon logs at debug, as
//! in the tests).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover::api::{ClusterStatus, ConditionType, CLUSTERS_PATH};
use drover::secret::Secret;
use tokio::process::Command;

#[path = "support/operator.rs"]
mod operator;
#[path = "../tests/it/support/mod.rs"]
mod support;

use support::daemon::{tail, AgentProcess, Layout, TestDaemon};
use support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use support::fleet::ClusterCleanup;
use support::git::TestRepo;
use support::net::unique_loopback;
use support::require;

/// How often the operator API (and, by hand, the containers) are polled.
const POLL: Duration = Duration::from_millis(10);
/// The first rollout bootstraps etcd: this bounds a hang.
const BOOTSTRAP_LIMIT: Duration = Duration::from_secs(180);
/// A round's rollout (after the change is seen) is seconds; this bounds a hang.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

fn main() {
    let settings = Settings::from_env();
    println!(
        "commit-to-converged benchmark: {} changes per mode; polling every {} ({})",
        settings.rounds,
        humantime::format_duration(settings.interval),
        if settings.poll.is_some() {
            "DROVER_BENCH_POLL_INTERVAL"
        } else {
            "the daemon's default"
        }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let engine = require!(runtime.block_on(docker::connect()));
    require!(runtime.block_on(docker::require_image(&engine, ETCD_IMAGE)));
    require!(runtime.block_on(docker::require_image(&engine, BUSYBOX_IMAGE)));

    // Declared in the order they must stop in reverse: agents, daemon, then the containers.
    let layout = Layout::new("c2c");
    let _containers = ClusterCleanup(layout.cluster.clone());
    let repo = Arc::new(Mutex::new(TestRepo::init()));
    let url = repo.lock().expect("the repository").url();
    let first = commit(&repo, &layout, 0);
    let started = Instant::now();
    let mut daemon = runtime.block_on(TestDaemon::start_polling(&url, settings.poll.as_deref()));
    let token = runtime.block_on(daemon.token_file(&layout.cluster));
    let mut agents: Vec<AgentProcess> = layout
        .nodes
        .iter()
        .map(|(node, _, _)| AgentProcess::start(&daemon, node, &token))
        .collect();
    let client = operator::Client::new(
        &SocketAddr::from((daemon.ip, daemon.agents_port)).to_string(),
        &daemon.pin(),
        &daemon.state_dir(),
    );
    let watch = Watch {
        client,
        path: format!("{CLUSTERS_PATH}/{}", layout.cluster),
    };

    let drover = runtime.block_on(async {
        let bootstrap = watch
            .converge(&first, started, BOOTSTRAP_LIMIT)
            .await
            .unwrap_or_else(|why| hung(&daemon, "the first rollout", &why));
        println!(
            "first rollout (daemon start, etcd bootstrap, every component): {}",
            show(bootstrap.converged)
        );
        let hook = Hook::new(&daemon);
        let before = Passes::read(&hook.http, daemon.http()).await;
        let mut webhook = Vec::new();
        for round in 1..=settings.rounds {
            let limit = ROUND_LIMIT;
            let timing =
                drover_round(&repo, &layout, &watch, &daemon, round, Some(&hook), limit).await;
            println!("webhook {round:>3}: {timing}");
            webhook.push(timing);
        }
        let after = Passes::read(&hook.http, daemon.http()).await;
        let webhook = Mode {
            rounds: webhook,
            passes: after.since(&before),
        };
        // A poll comes within the interval and its jitter (10 %).
        let limit = ROUND_LIMIT + settings.interval.mul_f64(1.1);
        let mut polling = Vec::new();
        for i in 1..=settings.rounds {
            tokio::time::sleep(random_below(settings.interval)).await;
            let round = settings.rounds + i;
            let timing = drover_round(&repo, &layout, &watch, &daemon, round, None, limit).await;
            println!("polling {i:>3}: {timing}");
            polling.push(timing);
        }
        let polling = Mode {
            rounds: polling,
            passes: Passes::read(&hook.http, daemon.http()).await.since(&after),
        };
        (webhook, polling)
    });
    for agent in &mut agents {
        agent.stop();
    }
    let exit = daemon.terminate();
    let logs = Logs::gather(&daemon, &agents);

    let hand = runtime.block_on(async {
        let hand = Hand::start(&layout).await;
        let mut rounds = Vec::new();
        for round in 1..=settings.rounds {
            let timing = hand.round(round).await;
            println!("by hand {round:>3}: {timing}");
            rounds.push(timing);
        }
        rounds
    });

    print_table(&settings, &drover.0, &drover.1, &hand);
    for (what, mode) in [("webhook", &drover.0), ("polling", &drover.1)] {
        println!("{what}: {}", mode.passes.summary(settings.rounds));
    }
    println!("daemon exit on SIGTERM: {exit}; {}", logs.summary());
    logs.keep();
}

/// The benchmark's settings, from the environment.
struct Settings {
    rounds: usize,
    /// `DROVER_BENCH_POLL_INTERVAL` as given; `None`: the daemon's default.
    poll: Option<String>,
    /// The poll interval in effect.
    interval: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let rounds = std::env::var("DROVER_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(20);
        let poll = std::env::var("DROVER_BENCH_POLL_INTERVAL").ok();
        let interval = match &poll {
            Some(text) => humantime::parse_duration(text).unwrap_or_else(|e| {
                panic!("DROVER_BENCH_POLL_INTERVAL={text:?} is not a duration: {e}")
            }),
            None => drover::config::DEFAULT_POLL_INTERVAL,
        };
        Settings {
            rounds,
            poll,
            interval,
        }
    }
}

/// The cluster file of round `round`: `Layout::yaml`'s cluster, with `ROUND` in the env of
/// both components, so that every node's container is recreated.
fn cluster_yaml(layout: &Layout, round: usize) -> String {
    let labels = docker::test_labels();
    let nodes: String = layout
        .nodes
        .iter()
        .map(|(name, ip, roles)| format!("    - {{name: {name}, address: {ip}, roles: {roles}}}\n"))
        .collect();
    format!(
        "apiVersion: drover.dev/v1alpha1
kind: Cluster
metadata: {{name: {cluster}}}
spec:
  nodes:
{nodes}  etcd:
    image: {ETCD_IMAGE}
    extraArgs: {{heartbeat-interval: '100', election-timeout: '1000'}}
  components:
    controlplane:
      - name: api
        image: {BUSYBOX_IMAGE}
        command: [sh, -c]
        args:
          - {api}
        env: {{ROUND: 'r{round}'}}
        health: {{http: 'http://{{{{ node.address }}}}:8080/', interval: 1s}}
        labels: {labels}
    worker:
      - name: app
        image: {BUSYBOX_IMAGE}
        command: [httpd, -f, -p, '{{{{ node.address }}}}:9090']
        env: {{ROUND: 'r{round}'}}
        health: {{tcp: '{{{{ node.address }}}}:9090', interval: 1s}}
        labels: {labels}
  rollout:
    maxUnavailable: {{controlplane: 1, worker: 1}}
",
        cluster = layout.cluster,
        api = api_command("{{ node.name }}", "{{ node.address }}"),
    )
}

/// The `api` component's shell command: a page naming the node, served on port 8080.
fn api_command(node: &str, address: &str) -> String {
    format!(
        "mkdir -p /www && echo '{node} c2c' > /www/index.html && exec httpd -f -p {address}:8080 -h /www"
    )
}

/// Commits round `round`'s cluster file (blocking: call it off the async threads, or before
/// the runtime runs); returns the commit id.
fn commit(repo: &Mutex<TestRepo>, layout: &Layout, round: usize) -> String {
    let repo = repo.lock().expect("the repository");
    let yaml = cluster_yaml(layout, round);
    repo.commit_files(&[(&layout.path(), &yaml)], &format!("round {round}"))
        .to_string()
}

/// One change through drover: commit, the webhook if there is one, then until converged.
async fn drover_round(
    repo: &Arc<Mutex<TestRepo>>,
    layout: &Layout,
    watch: &Watch,
    daemon: &TestDaemon,
    round: usize,
    hook: Option<&Hook>,
    limit: Duration,
) -> Timing {
    let (repo, layout) = (repo.clone(), layout.clone());
    let id = tokio::task::spawn_blocking(move || commit(&repo, &layout, round))
        .await
        .expect("the commit task");
    let committed = Instant::now();
    if let Some(hook) = hook {
        hook.post().await;
    }
    match watch.converge(&id, committed, limit).await {
        Ok(timing) => timing,
        Err(why) => hung(daemon, &format!("round {round} ({id})"), &why),
    }
}

/// Panics with what hung and the end of the daemon's log.
fn hung(daemon: &TestDaemon, what: &str, why: &str) -> ! {
    panic!(
        "{what} did not converge; last: {why}\ndaemon log:\n{}",
        tail(&daemon.log(), 60)
    )
}

/// A random duration in `[0, max)`, from the OS's randomness.
fn random_below(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("randomness");
    max.mul_f64((u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64)
}

/// The generic webhook, signed with the daemon's secret, over one kept-alive connection.
struct Hook {
    http: reqwest::Client,
    url: String,
    secret: Secret,
}

impl Hook {
    fn new(daemon: &TestDaemon) -> Hook {
        Hook {
            http: reqwest::Client::new(),
            url: format!("http://{}/hooks/generic", daemon.http()),
            secret: Secret::new(daemon.hook_secret.as_str()),
        }
    }

    async fn post(&self) {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let signature = drover::source::webhook::sign(&self.secret, body);
        let response = self
            .http
            .post(&self.url)
            .header("x-drover-signature-256", format!("sha256={signature}"))
            .body(body.to_vec())
            .send()
            .await
            .expect("the webhook is delivered");
        assert_eq!(response.status().as_u16(), 202, "the webhook is accepted");
    }
}

/// One round through drover: when the daemon had the commit, and when it converged.
#[derive(Debug, Clone, Copy)]
struct Timing {
    seen: Duration,
    converged: Duration,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seen {}, converged {} (rollout {})",
            show(self.seen),
            show(self.converged),
            show(self.converged.saturating_sub(self.seen))
        )
    }
}

/// One mode's rounds, and the daemon's reconcile passes meanwhile.
struct Mode {
    rounds: Vec<Timing>,
    passes: Passes,
}

/// The daemon's reconcile passes so far (`drover_reconcile_duration_seconds` on `/metrics`).
#[derive(Debug, Default, Clone, Copy)]
struct Passes {
    count: f64,
    seconds: f64,
}

impl Passes {
    async fn read(http: &reqwest::Client, daemon: SocketAddr) -> Passes {
        let text = match http.get(format!("http://{daemon}/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut passes = Passes::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("drover_reconcile_duration_seconds_") else {
                continue;
            };
            let value: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if rest.starts_with("count") {
                passes.count += value;
            } else if rest.starts_with("sum") {
                passes.seconds += value;
            }
        }
        passes
    }

    fn since(&self, before: &Passes) -> Passes {
        Passes {
            count: self.count - before.count,
            seconds: self.seconds - before.seconds,
        }
    }

    fn summary(&self, changes: usize) -> String {
        if self.count == 0.0 {
            return "no reconcile pass counted".into();
        }
        format!(
            "{:.0} reconcile passes, {:.1} per change, {} each on average",
            self.count,
            self.count / changes as f64,
            show(Duration::from_secs_f64(self.seconds / self.count))
        )
    }
}

/// The cluster's status through the operator API.
struct Watch {
    client: operator::Client,
    path: String,
}

impl Watch {
    /// Polls until the cluster has converged at `commit`; the times are since `since`. On a
    /// timeout, what the last status still lacked.
    async fn converge(
        &self,
        commit: &str,
        since: Instant,
        limit: Duration,
    ) -> Result<Timing, String> {
        let mut seen = None;
        loop {
            let last = match self.client.get::<ClusterStatus>(&self.path).await {
                Ok(status) => {
                    let at = since.elapsed();
                    if seen.is_none() && status.desired_revision.as_deref() == Some(commit) {
                        seen = Some(at);
                    }
                    match converged(&status, commit) {
                        Ok(()) => {
                            return Ok(Timing {
                                seen: seen.unwrap_or(at),
                                converged: at,
                            })
                        }
                        Err(why) => why,
                    }
                }
                Err(e) => e,
            };
            if since.elapsed() > limit {
                return Err(last);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Converged at `commit`: Ready, applied there, and every node's agent reports its latest
/// plan, from that commit, applied and ready. Otherwise what is missing.
fn converged(status: &ClusterStatus, commit: &str) -> Result<(), String> {
    if !status
        .condition(ConditionType::Ready)
        .is_some_and(|c| c.status)
    {
        let holding: Vec<String> = status
            .conditions
            .iter()
            .filter(|c| c.status)
            .map(|c| format!("{:?} {}: {}", c.kind, c.reason, c.message))
            .collect();
        return Err(format!("not Ready: {}", holding.join("; ")));
    }
    if status.applied_revision.as_deref() != Some(commit) {
        return Err(format!("applied revision {:?}", status.applied_revision));
    }
    for n in &status.nodes {
        let applied = n.generation.is_some() && n.applied_generation == n.generation;
        if !(n.connected && applied && n.ready && n.revision.as_deref() == Some(commit)) {
            return Err(format!(
                "{}: connected {}, generation {:?} applied {:?}, revision {:?}, ready {} {}",
                n.name,
                n.connected,
                n.generation,
                n.applied_generation,
                n.revision,
                n.ready,
                n.reason.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

// --- by hand --------------------------------------------------------------------------------

/// The baseline: a repository and its clone, and one container per node started with the
/// docker CLI, on addresses of its own.
struct Hand {
    repo: Arc<Mutex<TestRepo>>,
    layout: Layout,
    clone: tempfile::TempDir,
    http: reqwest::Client,
    /// Removes the containers on drop. Declared last: it outlives the rest.
    containers: HandContainers,
}

/// The baseline's containers, removed on drop, also on a panic.
struct HandContainers(Vec<String>);

impl Drop for HandContainers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", name])
                .output();
        }
    }
}

/// One round by hand, each time since the commit.
#[derive(Debug, Clone, Copy)]
struct HandTiming {
    fetched: Duration,
    /// `git fetch`, then `docker rm -f` + `docker run` of the first node's container.
    one: Duration,
    /// ... and of every node's, in turn.
    all: Duration,
    /// ... and until every container answers.
    serving: Duration,
}

impl std::fmt::Display for HandTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fetched {}, one container {}, all four {}, all serving {}",
            show(self.fetched),
            show(self.one),
            show(self.all),
            show(self.serving)
        )
    }
}

impl Hand {
    /// Commits round 0 to a new repository, clones it, and starts round 0's containers.
    async fn start(drover: &Layout) -> Hand {
        let nodes = drover
            .nodes
            .iter()
            .map(|(name, _, roles)| (name.clone(), unique_loopback(&[8080, 9090]), *roles))
            .collect();
        let layout = Layout {
            cluster: format!("{}-hand", drover.cluster),
            nodes,
        };
        let names = layout
            .nodes
            .iter()
            .map(|(node, _, _)| format!("drover-bench-{}-{node}", layout.cluster))
            .collect();
        let containers = HandContainers(names);
        let repo = Arc::new(Mutex::new(TestRepo::init()));
        let (r, l) = (repo.clone(), layout.clone());
        let url = tokio::task::spawn_blocking(move || {
            commit(&r, &l, 0);
            r.lock().expect("the repository").url()
        })
        .await
        .expect("the first commit");
        let clone = tempfile::Builder::new()
            .prefix("drover-bench-clone-")
            .tempdir()
            .expect("a directory for the clone");
        run(Command::new("git")
            .args(["clone", "--quiet", &url])
            .arg(clone.path().join("repo")))
        .await;
        let hand = Hand {
            repo,
            layout,
            clone,
            http: reqwest::Client::new(),
            containers,
        };
        for i in 0..hand.layout.nodes.len() {
            hand.replace(i, 0).await;
        }
        hand.serving().await;
        hand
    }

    async fn round(&self, round: usize) -> HandTiming {
        let (repo, layout) = (self.repo.clone(), self.layout.clone());
        tokio::task::spawn_blocking(move || commit(&repo, &layout, round))
            .await
            .expect("the commit task");
        let committed = Instant::now();
        run(Command::new("git")
            .arg("-C")
            .arg(self.clone.path().join("repo"))
            .args(["fetch", "--quiet", "origin"]))
        .await;
        let fetched = committed.elapsed();
        let mut one = None;
        for i in 0..self.layout.nodes.len() {
            self.replace(i, round).await;
            one.get_or_insert(committed.elapsed());
        }
        let all = committed.elapsed();
        self.serving().await;
        HandTiming {
            fetched,
            one: one.unwrap_or(all),
            all,
            serving: committed.elapsed(),
        }
    }

    /// `docker rm -f` and `docker run -d` of node `i`'s container at `round`.
    async fn replace(&self, i: usize, round: usize) {
        let (node, ip, roles) = &self.layout.nodes[i];
        let name = &self.containers.0[i];
        run(Command::new("docker").args(["rm", "-f", name])).await;
        let mut command = Command::new("docker");
        command
            .args(["run", "-d", "--name", name, "--network", "host"])
            .args(["--label", "drover-test=1", "--label"])
            .arg(format!("drover-test.pid={}", std::process::id()))
            .arg("-e")
            .arg(format!("ROUND=r{round}"))
            .arg(BUSYBOX_IMAGE);
        if roles.contains("controlplane") {
            command
                .args(["sh", "-c"])
                .arg(api_command(node, &ip.to_string()));
        } else {
            command
                .args(["httpd", "-f", "-p"])
                .arg(format!("{ip}:9090"));
        }
        run(&mut command).await;
    }

    /// Waits until every container answers: HTTP on the api nodes, TCP on the worker.
    async fn serving(&self) {
        let deadline = Instant::now() + ROUND_LIMIT;
        for (node, ip, roles) in &self.layout.nodes {
            loop {
                if self.answers(*ip, roles).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{node}'s container (by hand) did not answer within {ROUND_LIMIT:?}"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }

    async fn answers(&self, ip: Ipv4Addr, roles: &str) -> bool {
        if roles.contains("controlplane") {
            let url = format!("http://{ip}:8080/");
            matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
        } else {
            tokio::net::TcpStream::connect((ip, 9090)).await.is_ok()
        }
    }
}

/// Runs a command to its end; panics with its output when it fails.
async fn run(command: &mut Command) {
    let out = command.output().await.expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- figures --------------------------------------------------------------------------------

/// Order statistics of one column.
struct Stats(Vec<Duration>);

impl Stats {
    fn of(values: impl Iterator<Item = Duration>) -> Stats {
        let mut v: Vec<Duration> = values.collect();
        v.sort();
        Stats(v)
    }

    /// The nearest-rank quantile `q`.
    fn quantile(&self, q: f64) -> Duration {
        let rank = (q * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    fn row(&self) -> String {
        format!(
            "{} | {} | {} | {}",
            show(self.quantile(0.5)),
            show(self.quantile(0.99)),
            show(self.0[0]),
            show(self.0[self.0.len() - 1])
        )
    }
}

/// Milliseconds below 10 s, seconds above.
fn show(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn print_table(settings: &Settings, webhook: &Mode, polling: &Mode, hand: &[HandTiming]) {
    let n = settings.rounds;
    println!(
        "\n| commit → converged, {n} changes (4 nodes, a container recreated on each) | p50 | p99 | min | max | seen p50 | rollout p50 | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let drover = |what: &str, rounds: &[Timing], target: &str| {
        let seen = Stats::of(rounds.iter().map(|t| t.seen));
        let rollout = Stats::of(rounds.iter().map(|t| t.converged.saturating_sub(t.seen)));
        println!(
            "| {what} | {} | {} | {} | {target} |",
            Stats::of(rounds.iter().map(|t| t.converged)).row(),
            show(seen.quantile(0.5)),
            show(rollout.quantile(0.5)),
        );
    };
    drover("drover serve, webhook", &webhook.rounds, "p50 < 1 s");
    let interval = humantime::format_duration(settings.interval);
    let default = if settings.poll.is_some() {
        ""
    } else {
        ", the default"
    };
    drover(
        &format!("drover serve, polling every {interval}{default}"),
        &polling.rounds,
        "",
    );
    let by_hand = |what: &str, pick: fn(&HandTiming) -> Duration| {
        println!(
            "| by hand: {what} | {} | - | - | |",
            Stats::of(hand.iter().map(pick)).row()
        );
    };
    by_hand("`git fetch`", |t| t.fetched);
    by_hand(
        "`git fetch`, `docker rm -f` + `docker run` of one container",
        |t| t.one,
    );
    by_hand(
        "`git fetch`, then that on each of the 4 nodes in turn",
        |t| t.all,
    );
    by_hand("… until all 4 answer", |t| t.serving);
}

// --- logs -----------------------------------------------------------------------------------

/// The daemon's and agents' logs, read once they stopped.
struct Logs {
    daemon: PathBuf,
    agents: Vec<(String, PathBuf)>,
}

impl Logs {
    fn gather(daemon: &TestDaemon, agents: &[AgentProcess]) -> Logs {
        Logs {
            daemon: daemon.log_path(),
            agents: agents
                .iter()
                .map(|a| (a.node.clone(), a.dir.join("agent.log")))
                .collect(),
        }
    }

    /// How many warnings and errors each log has, and the first of them.
    fn summary(&self) -> String {
        let count = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let bad: Vec<String> = text
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .map(str::to_string)
                .collect();
            (bad.len(), bad.into_iter().next())
        };
        let mut parts = Vec::new();
        let mut first = None;
        let logs = std::iter::once(("daemon".to_string(), self.daemon.clone()))
            .chain(self.agents.iter().cloned());
        for (who, path) in logs {
            let (n, line) = count(&path);
            parts.push(format!("{who} {n}"));
            first = first.or(line);
        }
        format!(
            "warnings and errors logged: {}{}",
            parts.join(", "),
            first.map_or(String::new(), |l| format!("; the first: {l}"))
        )
    }

    /// Copies the logs into `DROVER_BENCH_LOG` when it names a directory.
    fn keep(&self) {
        let Some(dir) = std::env::var_os("DROVER_BENCH_LOG") else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("the log directory");
        let _ = std::fs::copy(&self.daemon, dir.join("daemon.log"));
        for (node, path) in &self.agents {
            let _ = std::fs::copy(path, dir.join(format!("agent-{node}.log")));
        }
        println!("logs kept in {}", dir.display());
    }
}
