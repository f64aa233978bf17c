//! Protocol-level agents over several daemons sharing one etcd: what each daemon carries and
//! how long until every cluster is Ready. Prints figures; asserts nothing timed. Run with
//! `cargo bench --bench scale_out` (as root, or with an open-file hard limit above the agents'
//! number: the bench raises it when it may).
//!
//! Three `drover serve` processes share a 3-member etcd (Debian's `etcd` as processes, with
//! its default request limit of 1.5 MiB: every document is per cluster). The source is a watched directory
//! of `DROVER_BENCH_CLUSTERS` (default 300) clusters of `DROVER_BENCH_NODES` (default 100)
//! nodes. The agents run in child processes of 10,000 each (a process here may open at most
//! 20,000 files). Each child issues and binds its nodes' credentials in the shared state up
//! front, as joins would have left them; once the daemons run, one light agent per node dials
//! the first daemon, follows its redirect to the cluster's owner, and there takes every plan,
//! reports it applied with its containers running and healthy, and answers member listings
//! from its plan.
//!
//! Printed: per daemon the clusters it owns, the agents it serves, and its resident memory
//! (now and peak); the time until every agent was welcomed by its owner, and until every
//! cluster was Ready (each node's plan delivered, applied and healthy); redirects followed.

mod support {
    pub mod daemons;
    pub mod fake;
    pub mod fleet;
    pub mod operator;
    pub mod synthetic;
}

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover::agent::session::{send, Dial, Socket};
use drover::api::{ClustersDocument, ConditionType, CLUSTERS_PATH};
use drover::backoff::Backoff;
use drover::pki::Identity;
use drover::protocol::{AgentMessage, EtcdTask, EtcdTaskOutcome, ServerMessage};
use drover::store::etcd::{EtcdStateConfig, EtcdStore};
use drover::store::DurableState;
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use support::daemons::{
    await_etcd, await_settled, start_daemons, start_etcd, write_private, Daemon, Procs, TIMEOUT,
};
use support::synthetic::{self, env, Versions};
use support::{fake, fleet};

const DAEMONS: usize = 3;
/// TLS handshakes in flight at once per agent process, as agents of a fleet that rebooted
/// would stagger them.
const DIALS: usize = 64;

/// Agents one child process runs.
const AGENTS_PER_PROCESS: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    if let Some(i) = args.iter().position(|a| a == "--agents") {
        let arg = |k: usize| -> usize { args[i + k].parse().expect("--agents FIRST COUNT NODES") };
        fleet::raise_fd_limit(arg(2) * arg(3) + 1024);
        return runtime.block_on(child(arg(1), arg(2), arg(3)));
    }
    let clusters = env("DROVER_BENCH_CLUSTERS", 300);
    let nodes = env("DROVER_BENCH_NODES", 100);
    raise_hard_fd_limit(AGENTS_PER_PROCESS * 2 + 4096);
    runtime.block_on(run(clusters, nodes));
}

/// Where it may, raises the open-file hard limit to `wanted` (the daemons and agent processes,
/// children of this one, inherit it); otherwise leaves it.
fn raise_hard_fd_limit(wanted: usize) {
    let wanted = wanted as u64;
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        if hard < wanted {
            let _ = rlimit::Resource::NOFILE.set(wanted, wanted);
        }
    }
}

/// How far the agents got.
#[derive(Default)]
struct Tally {
    welcomed: AtomicUsize,
    redirects: AtomicUsize,
    retries: AtomicUsize,
    plans: AtomicUsize,
}

async fn run(clusters: usize, nodes: usize) {
    let agents = clusters * nodes;
    let work = tempfile::Builder::new()
        .prefix("drover-bench-scale-out")
        .tempdir()
        .expect("a work directory");
    let block = (std::process::id() % 200) as u8 + 20;
    let etcd_ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(127, 95, block, i)).collect();
    let mut procs = Procs {
        etcd: start_etcd(
            work.path(),
            &etcd_ips,
            &["--quota-backend-bytes", "8589934592"],
        ),
        daemons: Vec::new(),
    };
    let endpoints: Vec<String> = etcd_ips
        .iter()
        .map(|ip| format!("http://{ip}:2379"))
        .collect();
    await_etcd(&endpoints).await;
    let source = work.path().join("source");
    std::fs::create_dir_all(source.join("clusters")).unwrap();
    for file in synthetic::repo(agents, nodes, |_| Versions {
        app: 1,
        apiserver: 1,
    }) {
        std::fs::write(source.join(&file.path), &file.bytes).unwrap();
    }
    let key = work.path().join("state.key");
    write_private(&key, &"5e".repeat(32));

    println!(
        "scale-out benchmark: {agents} protocol-level agents, {clusters} clusters of {nodes} nodes, {DAEMONS} drover serve on a 3-member etcd"
    );
    let issued = Instant::now();
    let per = (AGENTS_PER_PROCESS / nodes).max(1);
    let mut children = Vec::new();
    for first in (0..clusters).step_by(per) {
        // One at a time: issuing is CPU-bound, and the first child makes the CA.
        let count = per.min(clusters - first);
        children.push(AgentsChild::start(first, count, nodes, &endpoints, &key).await);
    }
    println!(
        "{agents} credentials issued and bound in {:.1} s by {} agent processes",
        issued.elapsed().as_secs_f64(),
        children.len()
    );

    let daemons = start_daemons(
        &mut procs,
        work.path(),
        (96, block),
        DAEMONS,
        (&source, &endpoints, &key),
    )
    .await;
    let ids: Vec<String> = daemons.iter().map(|d| d.id.clone()).collect();
    let names: Vec<String> = (0..clusters).map(|c| format!("c{c}")).collect();
    let settled = await_settled(&daemons, &ids, &names, &Default::default()).await;
    let pids: Vec<u32> = procs
        .daemons
        .iter()
        .map(|c| c.as_ref().expect("running").id())
        .collect();
    let idle: Vec<u64> = pids
        .iter()
        .map(|p| synthetic::memory_kib_of(*p).0)
        .collect();

    let go = format!(
        "go {} {}\n",
        daemons[0].pin(),
        daemons
            .iter()
            .map(|d| format!("wss://{}", d.server()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let started = Instant::now();
    for c in &mut children {
        c.send(&go).await;
    }
    let (mut redirects, mut retries) = (0, 0);
    for c in &mut children {
        let Some(line) = c.try_line().await else {
            panic!(
                "an agent process ended or hung before its agents were welcomed\n{}",
                support::daemons::log_tails(&daemons)
            );
        };
        let mut words = line
            .split_whitespace()
            .skip(1)
            .map(|w| w.parse::<usize>().unwrap());
        redirects += words.next().unwrap();
        retries += words.next().unwrap();
    }
    let welcomed = started.elapsed();
    let clients: Vec<support::operator::Client> = daemons.iter().map(Daemon::client).collect();
    let ready = loop {
        let mut n = 0;
        for client in &clients {
            if let Ok(doc) = client.get::<ClustersDocument>(CLUSTERS_PATH).await {
                n += doc.clusters.iter().filter(|s| is_ready(s)).count();
            }
        }
        if n == clusters {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{n} of {clusters} clusters Ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    println!("\n| daemon | clusters owned | agents served | RSS idle | RSS with agents | peak RSS |\n|---|---:|---:|---:|---:|---:|");
    for (i, d) in daemons.iter().enumerate() {
        let owned = settled.owners.values().filter(|o| **o == d.id).count();
        let (rss, peak) = synthetic::memory_kib_of(pids[i]);
        println!(
            "| {} | {owned} | {} | {} | {} | {} |",
            d.id,
            owned * nodes,
            fleet::mib(idle[i]),
            fleet::mib(rss),
            fleet::mib(peak)
        );
    }
    println!(
        "\nevery agent welcomed by its owner: {:.1} s ({redirects} redirects followed, {retries} retries); every cluster Ready (plans delivered, applied, healthy): {:.1} s",
        welcomed.as_secs_f64(),
        ready.as_secs_f64(),
    );
    drop(children);
    drop(procs);
}

/// An agent process: started with its clusters, it binds their nodes' credentials and says
/// `bound`; told `go PIN URL...`, it dials and says `welcomed REDIRECTS RETRIES` once every
/// agent is welcomed; it ends when its stdin closes.
struct AgentsChild {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl AgentsChild {
    async fn start(
        first: usize,
        count: usize,
        nodes: usize,
        endpoints: &[String],
        key: &std::path::Path,
    ) -> AgentsChild {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--agents",
                &first.to_string(),
                &count.to_string(),
                &nodes.to_string(),
            ])
            .env("DROVER_BENCH_ETCD", endpoints.join(","))
            .env("DROVER_BENCH_KEY", key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("an agent process");
        let stdin = child.stdin.take().unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut c = AgentsChild {
            child,
            stdin,
            lines,
        };
        assert_eq!(c.line().await, "bound");
        c
    }

    async fn send(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt as _;
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn line(&mut self) -> String {
        self.try_line()
            .await
            .expect("an agent process ended or hung")
    }

    /// The process's next line; `None` when it ended or said nothing for `TIMEOUT`.
    async fn try_line(&mut self) -> Option<String> {
        let next = tokio::time::timeout(TIMEOUT, self.lines.next_line()).await;
        next.ok()?.ok()?
    }
}

impl Drop for AgentsChild {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The agent process: `count` clusters from `first`, of `nodes` nodes each.
async fn child(first: usize, count: usize, nodes: usize) {
    let endpoints: Vec<String> = std::env::var("DROVER_BENCH_ETCD")
        .expect("DROVER_BENCH_ETCD")
        .split(',')
        .map(String::from)
        .collect();
    let config = EtcdStateConfig {
        endpoints,
        tls: None,
        prefix: "/drover-bench/".into(),
        encryption_key_file: std::env::var_os("DROVER_BENCH_KEY")
            .expect("DROVER_BENCH_KEY")
            .into(),
    };
    let pairs: Vec<(String, String)> = (first..first + count)
        .flat_map(|c| (0..nodes).map(move |n| (format!("c{c}"), format!("n{n}"))))
        .collect();
    let identities = tokio::task::spawn_blocking(move || {
        let store = EtcdStore::open(&config).expect("the state's etcd");
        fleet::credentials(&DurableState::new(Arc::new(store)), pairs)
    })
    .await
    .unwrap();
    println!("bound");
    // The stdin of a child is read on a blocking thread (tokio's is not built in).
    let read_line = || {
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let n = std::io::stdin().read_line(&mut line).unwrap_or(0);
            (n > 0).then_some(line)
        })
    };
    let go = read_line().await.unwrap().expect("go");
    let mut words = go.split_whitespace().skip(1);
    let pin = words.next().expect("the pin").to_string();
    let urls: Vec<String> = words.map(String::from).collect();
    let dials: HashMap<String, Dial> = urls
        .iter()
        .map(|u| (u.clone(), Dial::new(u, &pin).expect("a daemon URL")))
        .collect();
    let first_dial = dials[&urls[0]].clone();
    let dials = Arc::new(dials);
    let tally = Arc::new(Tally::default());
    let handshakes = Arc::new(Semaphore::new(DIALS));
    let total = identities.len();
    let mut tasks = tokio::task::JoinSet::new();
    for ((cluster, node), identity) in identities {
        let (first, dials, tally, handshakes) = (
            first_dial.clone(),
            dials.clone(),
            tally.clone(),
            handshakes.clone(),
        );
        tasks.spawn(async move {
            let socket = connect(
                first,
                &dials,
                &handshakes,
                &cluster,
                &node,
                &identity,
                &tally,
            )
            .await;
            agent(socket, &tally).await;
        });
    }
    await_count(
        &tally.welcomed,
        total,
        Instant::now(),
        "every agent welcomed",
    )
    .await;
    println!(
        "welcomed {} {}",
        tally.redirects.load(Ordering::Relaxed),
        tally.retries.load(Ordering::Relaxed)
    );
    // Until the bench closes stdin.
    while let Ok(Some(_)) = read_line().await {}
    tasks.abort_all();
}

fn is_ready(status: &drover::api::ClusterStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.kind == ConditionType::Ready && c.status)
}

async fn await_count(count: &AtomicUsize, want: usize, since: Instant, what: &str) -> Duration {
    loop {
        let now = count.load(Ordering::Relaxed);
        if now >= want {
            return since.elapsed();
        }
        assert!(since.elapsed() < TIMEOUT, "{what}: {now} of {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Dials `first`, and wherever it is sent, until its cluster's owner welcomes it.
async fn connect(
    first: Dial,
    dials: &HashMap<String, Dial>,
    handshakes: &Semaphore,
    cluster: &str,
    node: &str,
    identity: &Identity,
    tally: &Tally,
) -> Socket {
    let mut dial = first;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let answer = {
            let _permit = handshakes.acquire().await.expect("the semaphore stays");
            fleet::try_hello(&dial, cluster, node, identity.clone()).await
        };
        match answer {
            Ok(Ok(socket)) => {
                tally.welcomed.fetch_add(1, Ordering::Relaxed);
                return socket;
            }
            Ok(Err(ServerMessage::Redirect { url, .. })) => {
                tally.redirects.fetch_add(1, Ordering::Relaxed);
                dial = dials
                    .get(&url)
                    .cloned()
                    .unwrap_or_else(|| panic!("a redirect to an unknown daemon {url}"));
            }
            Ok(Err(ServerMessage::RetryAfter { seconds, .. })) => {
                tally.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(seconds)).await;
            }
            Ok(Err(other)) => panic!("{cluster}/{node}: expected welcome, got {other:?}"),
            // Too busy to answer: again later, as a real agent would.
            Err(_) => {
                tally.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Takes every plan and reports it applied, running and healthy; answers member listings from
/// its plan; keeps the heartbeat.
async fn agent(mut socket: Socket, tally: &Tally) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let mut seq = 0;
    let mut members = None;
    loop {
        let message = tokio::select! {
            frame = socket.next() => {
                let Some(Ok(Message::Text(text))) = frame else { return };
                drover::protocol::decode::<ServerMessage>(text.as_str()).ok()
            }
            _ = ticker.tick() => {
                seq += 1;
                if send(&mut socket, &AgentMessage::Heartbeat { seq }).await.is_err() {
                    return;
                }
                None
            }
        };
        let replies = match message {
            Some(ServerMessage::Plan {
                generation,
                checksum,
                spec,
                ..
            }) => {
                tally.plans.fetch_add(1, Ordering::Relaxed);
                members = fake::members(&spec);
                vec![
                    AgentMessage::Applied {
                        generation,
                        checksum,
                        steps: Vec::new(),
                    },
                    AgentMessage::Observed {
                        containers: fake::observed(&spec),
                    },
                ]
            }
            Some(ServerMessage::EtcdTask { id, task, .. }) => {
                let outcome = match (&task, &members) {
                    (EtcdTask::MemberList, Some(members)) => EtcdTaskOutcome::Members {
                        members: members.clone(),
                    },
                    _ => EtcdTaskOutcome::Failed {
                        error: "the benchmark's agents run no etcd".into(),
                    },
                };
                vec![AgentMessage::EtcdTaskResult { id, outcome }]
            }
            _ => Vec::new(),
        };
        for reply in &replies {
            if send(&mut socket, reply).await.is_err() {
                return;
            }
        }
    }
}
