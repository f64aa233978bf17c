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
//!   server has every agent's acknowledgement of the new generation.
//!
//! The agents' credentials are issued up front with the daemon's CA, as joins would have
//! left them, so the figures are of sessions and plan delivery, not of joining.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use drover::agent::session::{recv, send, Dial, Socket};
use drover::join::{Bindings, BINDINGS};
use drover::model::{load_sources, SourceFile};
use drover::pki::{DaemonCa, Identity, NodeKey};
use drover::plan::container::{desired_nodes, NodeSpec};
use drover::protocol::{plan_checksum, AgentMessage, ServerMessage, StepReport, PROTOCOL_VERSION};
use drover::server::{AgentServer, Settings};
use drover::state::StateDir;
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Nodes per synthetic cluster; the agents are spread over as many clusters as it takes.
const NODES_PER_CLUSTER: usize = 100;
/// Connections being set up at once, below the server's handshake limit.
const DIAL_CONCURRENCY: usize = 200;
/// Where the server listens: loopback, away from 127.0.0.1 where test services live.
const LISTEN: &str = "127.77.0.1:0";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; the child is started with `--serve`.
    let args: Vec<String> = std::env::args().collect();
    let agents = env("DROVER_BENCH_AGENTS", 10_000);
    raise_fd_limit(agents);
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let state = args.get(i + 1).expect("--serve STATE_DIR");
        let agents: usize = args
            .get(i + 2)
            .and_then(|a| a.parse().ok())
            .expect("--serve STATE_DIR AGENTS");
        return serve(state, agents);
    }
    drive(
        env("DROVER_BENCH_AGENTS", 10_000),
        env("DROVER_BENCH_ROUNDS", 5),
    );
}

fn raise_fd_limit(agents: usize) {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let needed = agents as u64 + 1024;
    assert!(
        limit >= needed,
        "the open-file limit is {limit}, and {agents} agents need {needed}: raise the hard limit (ulimit -Hn)"
    );
}

/// The desired state of `agents` nodes, in clusters of `NODES_PER_CLUSTER`: three etcd and
/// control-plane nodes each, the rest workers; `round` is in every component's environment,
/// so each round changes every node's plan.
fn desired(agents: usize, round: usize) -> BTreeMap<String, BTreeMap<String, NodeSpec>> {
    let mut files = Vec::new();
    for c in 0..agents.div_ceil(NODES_PER_CLUSTER) {
        let nodes = NODES_PER_CLUSTER.min(agents - c * NODES_PER_CLUSTER);
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
                "    - {{name: n{n}, address: 127.1.{}.{}, roles: {roles}}}\n",
                n / 250,
                n % 250 + 1
            ));
        }
        s.push_str(&format!(
            "  etcd: {{image: 'drover-test/etcd:3.4.23'}}\n  components:\n    controlplane:\n      - name: api\n        image: drover-test/busybox:1\n        command: [httpd, -f, -p, '{{{{ node.address }}}}:8080']\n        env: {{ROUND: '{round}'}}\n        health: {{http: 'http://{{{{ node.address }}}}:8080/'}}\n    worker:\n      - name: worker-agent\n        image: drover-test/busybox:1\n        command: [sleep, infinity]\n        env: {{ROUND: '{round}', NODE: '{{{{ node.name }}}}'}}\n"
        ));
        files.push(SourceFile {
            path: format!("clusters/c{c}.yaml"),
            bytes: s.into_bytes(),
        });
    }
    let repo = load_sources(files, Vec::new());
    assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
    repo.clusters
        .iter()
        .map(|c| (c.name.to_string(), desired_nodes(c)))
        .collect()
}

/// Resident and peak resident memory of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

// --- the server child ------------------------------------------------------------------------

/// The server side: listens, then answers the driver's lines on stdin.
/// `wait N GEN`: wait until N agents are connected and acknowledged generation GEN;
/// `round R`: set the desired state of round R and time until every agent acknowledged it.
fn serve(state: &str, agents: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listen: SocketAddr = LISTEN.parse().expect("an address");
        let mut settings = Settings::new(listen);
        settings.max_handshakes = DIAL_CONCURRENCY * 2;
        let server = AgentServer::start(StateDir::new(state), settings)
            .await
            .expect("the agent server starts");
        let hub = server.hub().clone();
        hub.set_desired(&desired(agents, 0))
            .expect("the desired state is set");
        let (rss, _) = memory();
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
                    let (rss, peak) = memory();
                    println!("done {} {rss} {peak}", started.elapsed().as_micros());
                }
                ["round", round] => {
                    let round: usize = round.parse().expect("a round");
                    // Built before the clock starts: Git and the planner deliver it.
                    let next = desired(agents, round);
                    let started = Instant::now();
                    hub.set_desired(&next).expect("the desired state is set");
                    let set = started.elapsed();
                    acknowledged(&hub, agents, round as u64 + 1).await;
                    let (rss, peak) = memory();
                    println!(
                        "done {} {rss} {peak} {}",
                        started.elapsed().as_micros(),
                        set.as_micros()
                    );
                }
                _ => panic!("unknown command {line:?}"),
            }
            std::io::stdout().flush().expect("stdout");
        }
        server.shutdown().await;
    });
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

fn drive(agents: usize, rounds: usize) {
    println!("agent server benchmark: {agents} agents, {rounds} rounds");
    let state_dir = tempfile::tempdir().expect("a state directory");
    let state = StateDir::new(state_dir.path());
    let started = Instant::now();
    let identities = credentials(&state, agents);
    println!(
        "issued {agents} node credentials in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().expect("the bench binary");
    let mut child = Command::new(exe)
        .arg("--serve")
        .arg(state_dir.path())
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
        let mut tasks = tokio::task::JoinSet::new();
        for ((cluster, node), identity) in identities {
            let dial = dial.clone();
            let dials = dials.clone();
            let connected = connected_tx.clone();
            tasks.spawn(async move {
                let permit = dials.acquire_owned().await.expect("the semaphore stays");
                let socket = hello(&dial, &cluster, &node, identity).await;
                drop(permit);
                let _ = connected.send(()).await;
                agent(socket).await
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
        let mut times = Vec::new();
        let mut peak = first[2];
        for round in 1..=rounds {
            let (s, answer) = tokio::task::spawn_blocking(move || {
                let a = server.ask(&format!("round {round}"));
                (server, a)
            })
            .await
            .expect("the driver thread");
            server = s;
            let total = Duration::from_micros(answer[0]);
            let set = Duration::from_micros(answer[3]);
            peak = peak.max(answer[2]);
            println!(
                "round {round}: new plan for {agents} nodes delivered and acknowledged in {:.0} ms (set_desired {:.0} ms), RSS {}",
                total.as_secs_f64() * 1e3,
                set.as_secs_f64() * 1e3,
                mib(answer[1])
            );
            times.push(total);
        }
        times.sort();
        if let (Some(min), Some(median)) = (times.first(), times.get(times.len() / 2)) {
            println!(
                "delivery to {agents} agents: median {:.0} ms, min {:.0} ms (target < 5 s); server peak RSS {} (target < 1 GiB)",
                median.as_secs_f64() * 1e3,
                min.as_secs_f64() * 1e3,
                mib(peak)
            );
        }
        drop(server);
        tasks.abort_all();
    });
}

/// One credential per node, bound in the daemon's state as joins would have left them.
fn credentials(state: &StateDir, agents: usize) -> Vec<((String, String), Identity)> {
    let ca = DaemonCa::ensure(state).expect("the daemon CA");
    let now = SystemTime::now();
    let mut bindings = Bindings::default();
    let mut out = Vec::with_capacity(agents);
    for (cluster, nodes) in desired(agents, 0) {
        for node in nodes.keys() {
            let key = NodeKey::generate().expect("a key");
            let csr = key.csr_pem(node).expect("a CSR");
            let issued = ca
                .issue_node(&csr, &cluster, node, now)
                .expect("a certificate");
            bindings.bind(&cluster, node, &issued.key_pin);
            let identity = key.identity(&issued.cert_pem).expect("an identity");
            out.push(((cluster.clone(), node.clone()), identity));
        }
    }
    state
        .save(BINDINGS, &bindings)
        .expect("the bindings are saved");
    out
}

async fn hello(dial: &Dial, cluster: &str, node: &str, identity: Identity) -> Socket {
    let mut socket = dial
        .connect(Some(identity))
        .await
        .unwrap_or_else(|e| panic!("{cluster}/{node} cannot connect: {e}"));
    let hello = AgentMessage::Hello {
        protocol: PROTOCOL_VERSION,
        cluster: cluster.to_string(),
        node: node.to_string(),
        agent_version: "bench".into(),
        applied: None,
    };
    send(&mut socket, &hello).await.expect("hello is sent");
    match recv(&mut socket).await.expect("the server answers") {
        ServerMessage::Welcome { .. } => socket,
        other => panic!("{cluster}/{node}: expected welcome, got {other:?}"),
    }
}

/// A light agent: verifies each plan's checksum, acknowledges it with a step per container,
/// and keeps the heartbeat the server expects.
async fn agent(mut socket: Socket) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let mut seq = 0;
    loop {
        tokio::select! {
            frame = socket.next() => {
                let Some(Ok(Message::Text(text))) = frame else { return };
                let Ok(ServerMessage::Plan { generation, checksum, spec }) =
                    drover::protocol::decode::<ServerMessage>(text.as_str()) else { continue };
                assert_eq!(plan_checksum(&spec), checksum, "the plan arrived intact");
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
