//! Agent server at scale: 10,000 protocol-level agents (light clients in this process, no
//! Docker) connected over TLS and WebSocket to one agent server in a child process, all on
//! loopback. Prints figures; asserts nothing. Run with `cargo bench --bench agents`
//! (`DROVER_BENCH_AGENTS` and `DROVER_BENCH_ROUNDS` change the size). Each process holds one
//! socket per agent, so the open-file limit is raised to the hard limit, which must be above
//! the agent count.
//!
//! - the server's resident memory with its desired state loaded, with every agent connected,
//!   and at its peak;
//! - the time to connect every agent (TLS with client certificates, hello, welcome);
//! - per round: the time from a new desired state (every node's plan changed) until the
//!   server has every agent's acknowledgement of the new generation;
//! - then the same rounds again during a flood of `DROVER_BENCH_FLOOD` (default 3,000)
//!   misbehaving clients that redial as soon as they are dropped: a third connect and stay
//!   silent, a third finish TLS and the WebSocket and never send a first message, a third send
//!   a malformed first message. It reports the server's RSS and open files during the flood
//!   and the p50/p99 of each agent's plan delivery (from the moment the server starts to set
//!   the new desired state to the agent receiving its plan), beside the same figures without
//!   the flood;
//! - then `DROVER_BENCH_JOINS` (default 100) more nodes joining through the real join path
//!   (token, signing request, credential) while the others stay connected.
//!
//! The connected agents' credentials are issued up front with the daemon's CA, as joins would
//! have left them, so the first figures are of sessions and plan delivery.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use drover::agent::credential::DataDir;
use drover::agent::session::{send, Dial, Socket};
use drover::join::{create_token, TokenRules};
use drover::model::{load_sources, ClusterName};
use drover::nodeplan::NodeSpec;
use drover::plan::container::desired_nodes;
use drover::protocol::{AgentMessage, ServerMessage, StepReport};
use drover::server::{AgentServer, Settings};
use drover::state::StateDir;
use drover::store::DurableState;
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Nodes per synthetic cluster; the agents are spread over as many clusters as it takes.
const NODES_PER_CLUSTER: usize = 100;
/// Connections being set up at once, below the server's handshake limit.
const DIAL_CONCURRENCY: usize = 200;
/// Where the server listens: loopback, away from 127.0.0.1 where test services live.
const LISTEN: &str = "127.77.0.1:0";

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/synthetic.rs"]
mod synthetic;

use fleet::{credentials, mib, raise_fd_limit};
use synthetic::{env, memory_kib, repo, Versions};

fn main() {
    // `cargo bench` passes `--bench`; the child is started with
    // `--serve STATE_DIR DECLARED CONNECTED`.
    let args: Vec<String> = std::env::args().collect();
    let agents = env("DROVER_BENCH_AGENTS", 10_000);
    let joins = env("DROVER_BENCH_JOINS", 100);
    let flood = env("DROVER_BENCH_FLOOD", 3_000);
    raise_fd_limit(agents + joins + flood);
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let usage = "--serve STATE_DIR DECLARED CONNECTED";
        let state = args.get(i + 1).expect(usage);
        let number =
            |k: usize| -> usize { args.get(i + k).and_then(|a| a.parse().ok()).expect(usage) };
        return serve(state, number(2), number(3));
    }
    drive(agents, joins, flood, env("DROVER_BENCH_ROUNDS", 5));
}

/// The desired state of `agents` nodes in clusters of `NODES_PER_CLUSTER`. Every node's plan
/// is different in each `round`.
fn desired(agents: usize, round: usize) -> BTreeMap<String, BTreeMap<String, NodeSpec>> {
    let versions = Versions {
        app: round,
        apiserver: round,
    };
    let repo = load_sources(repo(agents, NODES_PER_CLUSTER, |_| versions), Vec::new());
    assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
    repo.clusters
        .iter()
        .map(|c| (c.name.to_string(), desired_nodes(c)))
        .collect()
}

// --- the server child ------------------------------------------------------------------------

/// The server side: listens, then answers the driver's lines on stdin.
/// `wait N GEN`: wait until N agents are connected and acknowledged generation GEN;
/// `round R`: set the desired state of round R and time until every agent acknowledged it.
fn serve(state: &str, declared: usize, agents: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listen: SocketAddr = LISTEN.parse().expect("an address");
        let mut settings = Settings::new(listen);
        settings.max_handshakes = DIAL_CONCURRENCY * 2;
        let server = AgentServer::start(StateDir::new(state).into(), settings)
            .await
            .expect("the agent server starts");
        let hub = server.hub().clone();
        hub.set_desired(&desired(declared, 0))
            .expect("the desired state is set");
        let (rss, _) = memory_kib();
        println!("ready {} {} {rss}", server.local_addr(), server.ca_pin());
        let mut stdin = BufReader::new(std::io::stdin());
        let mut line = String::new();
        while {
            line.clear();
            stdin.read_line(&mut line).unwrap_or(0) > 0
        } {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["wait", generation] => {
                    let generation: u64 = generation.parse().expect("a generation");
                    let started = Instant::now();
                    acknowledged(&hub, agents, generation).await;
                    let (rss, peak) = memory_kib();
                    println!("done {} {rss} {peak}", started.elapsed().as_micros());
                }
                ["round", round] => {
                    let round: usize = round.parse().expect("a round");
                    // Built before the clock starts: Git and the planner deliver it.
                    let next = desired(declared, round);
                    let started = Instant::now();
                    let wall = SystemTime::now();
                    hub.set_desired(&next).expect("the desired state is set");
                    let set = started.elapsed();
                    acknowledged(&hub, agents, round as u64 + 1).await;
                    let (rss, peak) = memory_kib();
                    let since_epoch = wall
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    println!(
                        "done {} {rss} {peak} {} {} {}",
                        started.elapsed().as_micros(),
                        set.as_micros(),
                        open_files(),
                        since_epoch.as_micros()
                    );
                }
                _ => panic!("unknown command {line:?}"),
            }
            std::io::stdout().flush().expect("stdout");
        }
        server.shutdown().await;
    });
}

/// How many files this process has open.
fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Waits until `agents` connected agents acknowledged `generation`.
async fn acknowledged(hub: &drover::server::Hub, agents: usize, generation: u64) {
    loop {
        let n = hub.count_reports(|r| {
            r.connected
                && r.applied
                    .as_ref()
                    .is_some_and(|a| a.generation == generation)
        });
        if n == agents {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// --- the driver and its light agents ---------------------------------------------------------

struct ServerChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ServerChild {
    fn ask(&mut self, line: &str) -> Vec<u64> {
        writeln!(self.stdin, "{line}").expect("the server reads");
        self.stdin.flush().expect("the server reads");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("the server answers");
        let words: Vec<&str> = answer.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"done"), "server said {answer:?}");
        words[1..]
            .iter()
            .map(|w| w.parse().expect("a number"))
            .collect()
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When each agent received each generation's plan (wall clock: the server, on the same
/// machine, says when it started to set the desired state).
type Receipts = Arc<std::sync::Mutex<Vec<(u64, SystemTime)>>>;

fn drive(agents: usize, joins: usize, flood: usize, rounds: usize) {
    println!("agent server benchmark: {agents} agents, {rounds} rounds, {rounds} more during a flood of {flood} clients, then {joins} joins");
    // Owner-only, as the daemon requires of its state directory.
    let state_dir = fleet::owner_only_tempdir();
    let state: DurableState = StateDir::new(state_dir.path()).into();
    let started = Instant::now();
    let mut nodes: Vec<(String, String)> = desired(agents + joins, 0)
        .into_iter()
        .flat_map(|(c, nodes)| nodes.into_keys().map(move |n| (c.clone(), n)))
        .collect();
    let joiners = nodes.split_off(agents);
    let identities = credentials(&state, nodes);
    println!(
        "issued {agents} node credentials in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().expect("the bench binary");
    let mut child = Command::new(exe)
        .arg("--serve")
        .arg(state_dir.path())
        .arg((agents + joins).to_string())
        .arg(agents.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server child starts");
    let stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut ready = String::new();
    stdout
        .read_line(&mut ready)
        .expect("the server says it is ready");
    let mut server = ServerChild {
        child,
        stdin,
        stdout,
    };
    let words: Vec<&str> = ready.split_whitespace().collect();
    let ["ready", addr, pin, rss] = words.as_slice() else {
        panic!("server said {ready:?}");
    };
    let loaded_rss: u64 = rss.parse().expect("a number");
    let dial = Dial::new(&format!("wss://{addr}"), pin).expect("a server URL");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let dials = Arc::new(Semaphore::new(DIAL_CONCURRENCY));
        let started = Instant::now();
        let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(agents);
        let receipts: Receipts = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        for ((cluster, node), identity) in identities {
            let dial = dial.clone();
            let dials = dials.clone();
            let connected = connected_tx.clone();
            let receipts = receipts.clone();
            tasks.spawn(async move {
                let permit = dials.acquire_owned().await.expect("the semaphore stays");
                let socket = fleet::hello(&dial, &cluster, &node, identity)
                    .await
                    .unwrap_or_else(|other| panic!("{cluster}/{node}: expected welcome, got {other:?}"));
                drop(permit);
                let _ = connected.send(()).await;
                agent(socket, receipts).await
            });
        }
        drop(connected_tx);
        for _ in 0..agents {
            connected_rx.recv().await.expect("every agent connects");
        }
        let connect = started.elapsed();
        let first = tokio::task::spawn_blocking(move || {
            let first = server.ask("wait 1");
            (server, first)
        })
        .await
        .expect("the driver thread");
        let (mut server, first) = first;
        println!(
            "connected {agents} agents in {:.2} s ({:.0} per second); all acknowledged their first plan {:.2} s later",
            connect.as_secs_f64(),
            agents as f64 / connect.as_secs_f64(),
            first[0] as f64 / 1e6
        );
        println!(
            "server RSS: {} with the desired state loaded, {} with {agents} agents connected",
            mib(loaded_rss),
            mib(first[1])
        );
        let mut peak = first[2];
        let calm = run_rounds(&mut server, 1..=rounds, agents, &receipts, &mut peak).await;
        let mut flooding = start_flood(&dial, addr.parse().expect("an address"), flood);
        let busy = run_rounds(&mut server, rounds + 1..=2 * rounds, agents, &receipts, &mut peak).await;
        flooding.abort_all();
        println!("\n| {agents} agents | plan delivery p50 | p99 | max | server RSS | server open files |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (what, r) in [("calm", &calm), (&*format!("flood of {flood}"), &busy)] {
            println!(
                "| {what} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} |",
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.max.as_secs_f64() * 1e3,
                mib(r.rss),
                r.files
            );
        }
        println!(
            "delivery to {agents} agents, all acknowledged: median round {:.0} ms (target < 5 s); server peak RSS {} (target < 1 GiB)",
            calm.round_median.as_secs_f64() * 1e3,
            mib(peak)
        );
        if joins > 0 {
            let started = Instant::now();
            join_all(&dial, &state, joiners).await;
            let took = started.elapsed();
            println!(
                "{joins} new nodes joined (token, signing request, credential) in {:.2} s ({:.0} per second) with {agents} nodes bound and connected",
                took.as_secs_f64(),
                joins as f64 / took.as_secs_f64()
            );
        }
        drop(server);
        tasks.abort_all();
    });
}

/// What a series of rounds measured.
struct Rounds {
    p50: Duration,
    p99: Duration,
    max: Duration,
    round_median: Duration,
    /// The server's largest RSS (KiB) and open files seen after a round.
    rss: u64,
    files: u64,
}

/// Runs `rounds` (each a new plan for every node, until all acknowledged) and measures each
/// agent's delivery from the receipts.
async fn run_rounds(
    server: &mut ServerChild,
    rounds: std::ops::RangeInclusive<usize>,
    agents: usize,
    receipts: &Receipts,
    peak: &mut u64,
) -> Rounds {
    let mut delivery = Vec::new();
    let mut totals = Vec::new();
    let (mut rss, mut files) = (0, 0);
    for round in rounds {
        let answer = tokio::task::block_in_place(|| server.ask(&format!("round {round}")));
        let started = SystemTime::UNIX_EPOCH + Duration::from_micros(answer[5]);
        let total = Duration::from_micros(answer[0]);
        *peak = (*peak).max(answer[2]);
        rss = rss.max(answer[1]);
        files = files.max(answer[4]);
        println!(
            "round {round}: new plan for {agents} nodes delivered and acknowledged in {:.0} ms (set_desired {:.0} ms), RSS {}, {} open files",
            total.as_secs_f64() * 1e3,
            answer[3] as f64 / 1e3,
            mib(answer[1]),
            answer[4]
        );
        totals.push(total);
        let generation = round as u64 + 1;
        let got = receipts.lock().expect("receipts");
        delivery.extend(
            got.iter()
                .filter(|(g, _)| *g == generation)
                .map(|(_, at)| at.duration_since(started).unwrap_or_default()),
        );
    }
    delivery.sort();
    totals.sort();
    let at = |q: f64| delivery[((delivery.len() - 1) as f64 * q) as usize];
    Rounds {
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        round_median: totals[totals.len() / 2],
        rss,
        files,
    }
}

/// `clients` misbehaving clients that redial as soon as the server drops them: silent TCP,
/// TLS and WebSocket without a first message, and a malformed first message, a third each.
fn start_flood(dial: &Dial, addr: SocketAddr, clients: usize) -> tokio::task::JoinSet<()> {
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..clients {
        let dial = dial.clone();
        flood.spawn(async move {
            loop {
                match i % 3 {
                    0 => {
                        use tokio::io::AsyncReadExt as _;
                        if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
                            let _ = tcp.read(&mut [0u8; 64]).await;
                        }
                    }
                    1 => {
                        if let Ok(mut s) = dial.connect(None).await {
                            while s.next().await.is_some_and(|f| f.is_ok()) {}
                        }
                    }
                    _ => {
                        if let Ok(mut s) = dial.connect(None).await {
                            let garbage = Message::Text(r#"{"type":"nonsense"}"#.into());
                            let _ = futures::SinkExt::send(&mut s, garbage).await;
                            while s.next().await.is_some_and(|f| f.is_ok()) {}
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    flood
}

/// Joins `nodes` through the daemon, `DIAL_CONCURRENCY` at a time, with one reusable token
/// per cluster.
async fn join_all(dial: &Dial, state: &DurableState, nodes: Vec<(String, String)>) {
    let mut tokens = BTreeMap::new();
    for (cluster, _) in &nodes {
        tokens.entry(cluster.clone()).or_insert_with(|| {
            let name = ClusterName::parse(cluster).expect("a cluster name");
            let rules = TokenRules {
                ttl: Duration::from_secs(3600),
                single_use: false,
                node: None,
            };
            create_token(state, &name, rules, SystemTime::now())
                .expect("a token")
                .0
        });
    }
    let dirs = tempfile::tempdir().expect("agents' data directories");
    let dials = Arc::new(Semaphore::new(DIAL_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (cluster, node) in nodes {
        let (dial, dials) = (dial.clone(), dials.clone());
        let token = tokens[&cluster].clone();
        let data = DataDir::new(StateDir::new(dirs.path().join(format!("{cluster}-{node}"))));
        tasks.spawn(async move {
            let _permit = dials.acquire_owned().await.expect("the semaphore stays");
            drover::agent::session::join(&dial, &data, &node, &token)
                .await
                .unwrap_or_else(|e| panic!("{cluster}/{node} cannot join: {e}"));
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a join task");
    }
}

/// A light agent: verifies each plan's checksum, acknowledges it with a step per container,
/// and keeps the heartbeat the server expects.
async fn agent(mut socket: Socket, receipts: Receipts) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let mut seq = 0;
    loop {
        tokio::select! {
            frame = socket.next() => {
                let Some(Ok(Message::Text(text))) = frame else { return };
                let Ok(ServerMessage::Plan { generation, checksum, spec, .. }) =
                    drover::protocol::decode::<ServerMessage>(text.as_str()) else { continue };
                receipts.lock().expect("receipts").push((generation, SystemTime::now()));
                assert_eq!(spec.checksum(), checksum, "the plan arrived intact");
                let steps = spec
                    .containers
                    .keys()
                    .map(|c| StepReport { subject: c.clone(), action: "unchanged".into(), error: None })
                    .collect();
                let applied = AgentMessage::Applied { generation, checksum, steps };
                if send(&mut socket, &applied).await.is_err() {
                    return;
                }
            }
            _ = ticker.tick() => {
                seq += 1;
                if send(&mut socket, &AgentMessage::Heartbeat { seq }).await.is_err() {
                    return;
                }
            }
        }
    }
}
