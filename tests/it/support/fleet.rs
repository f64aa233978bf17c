//! A daemon's agent server and simulated nodes on one machine: each agent has its own data
//! directory, host root and 127.x address, and all share the real Docker engine (container
//! names carry the node). Everything a fleet starts is stopped when it drops: agents, the
//! server, and every container of its cluster.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, SystemTime};

use drover::agent::executor::ExecutorSettings;
use drover::agent::session::Dial;
use drover::agent::{AgentError, AgentSettings};
use drover::join::{create_token, TokenRules};
use drover::model::{load_sources, ClusterName, SourceFile};
use drover::nodeplan::NodeSpec;
use drover::plan::container::desired_nodes;
use drover::reconcile::NodeReport;
use drover::secret::Secret;
use drover::server::{AgentServer, Hub, Settings};
use drover::state::StateDir;
use drover::store::DurableState;
use tempfile::TempDir;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::AbortOnDropHandle;

use super::logs::{capture_logs, Logs};
use super::net::unique_loopback;
use super::unique_token;
use super::wait::poll_until;

/// Removes every container of a cluster, even when the test panics.
pub struct ClusterCleanup(pub String);

impl Drop for ClusterCleanup {
    fn drop(&mut self) {
        for id in containers_of(&self.0) {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
    }
}

/// The ids of every container, running or not, of `cluster`.
pub fn containers_of(cluster: &str) -> Vec<String> {
    containers_with(&[format!("label=drover.dev/cluster={cluster}")])
}

/// The ids of every container, running or not, of `node` in `cluster`.
pub fn containers_of_node(cluster: &str, node: &str) -> Vec<String> {
    containers_with(&[
        format!("label=drover.dev/cluster={cluster}"),
        format!("label=drover.dev/node={node}"),
    ])
}

fn containers_with(filters: &[String]) -> Vec<String> {
    let filters = filters.iter().flat_map(|f| ["--filter", f.as_str()]);
    Command::new("docker")
        .arg("ps")
        .arg("-aq")
        .args(filters)
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A cluster name no other test uses (a DNS label).
pub fn unique_cluster(prefix: &str) -> String {
    let token: String = unique_token()
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let name = format!("{prefix}-{token}");
    name[..name.len().min(40)].to_string()
}

/// A simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub roles: &'static str,
}

/// The daemon side and the cluster's declared nodes.
pub struct Fleet {
    pub cluster: String,
    pub nodes: Vec<SimNode>,
    pub state: TempDir,
    pub logs: Logs,
    server: Option<AgentServer>,
    listen: SocketAddr,
    configure: fn(&mut Settings),
    _cleanup: ClusterCleanup,
}

impl Fleet {
    /// Starts an agent server for a new cluster of `nodes` (name, roles).
    pub async fn start(prefix: &str, nodes: &[(&str, &'static str)]) -> Fleet {
        Self::start_configured(prefix, nodes, |_| {}).await
    }

    /// Like `start`, with `configure` applied to the server's settings at every start.
    pub async fn start_configured(
        prefix: &str,
        nodes: &[(&str, &'static str)],
        configure: fn(&mut Settings),
    ) -> Fleet {
        let logs = capture_logs();
        let cluster = unique_cluster(prefix);
        let nodes = nodes
            .iter()
            .map(|(name, roles)| SimNode {
                name: name.to_string(),
                ip: unique_loopback(&[8080, 2379, 2380]),
                roles,
            })
            .collect();
        let daemon_ip = unique_loopback(&[]);
        let state = super::private_tempdir();
        let mut fleet = Fleet {
            _cleanup: ClusterCleanup(cluster.clone()),
            cluster,
            nodes,
            state,
            logs,
            server: None,
            listen: SocketAddr::from((daemon_ip, 0)),
            configure,
        };
        fleet.start_server().await;
        fleet
    }

    /// Starts the server on the fleet's address and state (after `stop_server`).
    pub async fn start_server(&mut self) {
        let mut settings = Settings::new(self.listen);
        settings.heartbeat = Duration::from_millis(500);
        settings.retry_after = Duration::from_secs(1);
        settings.bindings_refresh = Duration::from_millis(200);
        (self.configure)(&mut settings);
        let server = AgentServer::start(self.state(), settings)
            .await
            .expect("the agent server starts");
        self.listen = server.local_addr();
        self.server = Some(server);
    }

    /// Stops the server (every session ends) and starts it again on the same address and state.
    pub async fn restart_server(&mut self) {
        self.stop_server().await;
        self.start_server().await;
    }

    /// Stops the server: every session ends and nothing listens on its address. `hub`, `pin`
    /// and `report` need it running.
    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub fn hub(&self) -> &Hub {
        self.server.as_ref().expect("the server runs").hub()
    }

    pub fn url(&self) -> String {
        format!("wss://{}", self.listen)
    }

    pub fn pin(&self) -> String {
        self.server
            .as_ref()
            .expect("the server runs")
            .ca_pin()
            .to_string()
    }

    /// The daemon's durable state, on its state directory.
    pub fn state(&self) -> DurableState {
        StateDir::new(self.state.path()).into()
    }

    /// A join token for the fleet's cluster.
    pub fn token(&self, single_use: bool, ttl: Duration) -> Secret {
        self.token_with(TokenRules {
            ttl,
            single_use,
            node: None,
        })
    }

    /// A join token for the fleet's cluster with `rules`.
    pub fn token_with(&self, rules: TokenRules) -> Secret {
        let cluster = ClusterName::parse(&self.cluster).expect("a valid cluster name");
        create_token(&self.state(), &cluster, rules, SystemTime::now())
            .expect("a token")
            .0
    }

    pub fn node(&self, name: &str) -> &SimNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Each node's plan when the cluster's nodes are `names` and its roles run `components`
    /// (YAML lines under `components:`, indented four spaces).
    pub fn specs(&self, names: &[&str], components: &str) -> BTreeMap<String, NodeSpec> {
        let file = SourceFile {
            path: "clusters/t.yaml".into(),
            bytes: self.cluster_yaml(names, components).into_bytes(),
        };
        let repo = load_sources(vec![file], Vec::new());
        assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
        desired_nodes(&repo.clusters[0])
    }

    /// The cluster file that declares nodes `names` with `components` (see `specs`).
    pub fn cluster_yaml(&self, names: &[&str], components: &str) -> String {
        let mut text = format!(
            "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: {}}}\nspec:\n  nodes:\n",
            self.cluster
        );
        for n in self
            .nodes
            .iter()
            .filter(|n| names.contains(&n.name.as_str()))
        {
            text.push_str(&format!(
                "    - {{name: {}, address: {}, roles: [{}]}}\n",
                n.name, n.ip, n.roles
            ));
        }
        text.push_str(&format!(
            "  etcd: {{image: 'drover-test/etcd:3.4.23'}}\n  components:\n{components}"
        ));
        text
    }

    /// Declares nodes `names` with `components` as the whole desired state.
    pub fn declare(&self, names: &[&str], components: &str) -> BTreeMap<String, NodeSpec> {
        let specs = self.specs(names, components);
        let desired = BTreeMap::from([(self.cluster.clone(), specs.clone())]);
        self.hub()
            .set_desired(&desired)
            .expect("the desired state is set");
        specs
    }

    pub fn report(&self, node: &str) -> NodeReport {
        self.hub()
            .report(&self.cluster, node)
            .unwrap_or_else(|| panic!("node {node} is not declared"))
    }

    /// Waits until `node` reports a failed step about `subject`, and returns its error.
    pub async fn failed_step(&self, node: &str, subject: &str, limit: Duration) -> String {
        let what = format!("a failed step of {node}'s {subject} at the server");
        super::wait::eventually(&what, limit, || async {
            let report = self.report(node);
            report
                .steps
                .iter()
                .find(|s| s.subject == subject && s.error.is_some())
                .and_then(|s| s.error.clone())
                .ok_or(report)
        })
        .await
    }

    /// Waits until `node` reports it applied its current generation without a failed step,
    /// and runs every planned container with the planned spec.
    pub async fn converged(&self, node: &str, spec: &NodeSpec, limit: Duration) {
        let want: BTreeMap<String, String> = spec
            .containers
            .iter()
            .map(|(c, s)| (c.clone(), s.hash()))
            .collect();
        let outcome = poll_until(limit, || async {
            let report = self.report(node);
            let generation = self.hub().generation(&self.cluster, node);
            let applied = report.applied.as_ref().map(|a| a.generation);
            let failed: Vec<_> = report.steps.iter().filter(|s| s.error.is_some()).collect();
            let have: BTreeMap<String, String> = report
                .containers
                .iter()
                .filter(|(_, s)| s.running)
                .map(|(c, s)| (c.clone(), s.spec_hash.clone()))
                .collect();
            if applied == generation && failed.is_empty() && have == want {
                Ok(())
            } else {
                Err(format!(
                    "generation {generation:?}, applied {applied:?}, failed steps {failed:?}, running {have:?}, want {want:?}"
                ))
            }
        })
        .await;
        if let Err(t) = outcome {
            panic!(
                "node {node} did not converge within {limit:?}: {:?}",
                t.last_error
            );
        }
    }
}

impl Drop for Fleet {
    /// A failing test shows what the daemon and agents logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon and agent logs ---\n{}", self.logs.text());
        }
    }
}

/// An agent for a simulated node, running in this process.
pub struct TestAgent {
    pub node: String,
    pub data: TempDir,
    pub host_root: TempDir,
    shutdown: DropGuard,
    task: AbortOnDropHandle<Result<(), AgentError>>,
}

impl TestAgent {
    /// Starts the agent of `node` with fresh directories.
    pub async fn start(fleet: &Fleet, node: &str, token: Option<Secret>) -> TestAgent {
        let data = super::private_tempdir();
        let host_root = tempfile::tempdir().expect("a host root");
        Self::start_with(fleet, node, token, &fleet.pin(), data, host_root).await
    }

    /// Starts the agent of `node`, with fresh directories, dialling `url` (a proxy of the
    /// fleet's server, say) instead of the server itself.
    pub async fn start_via(
        fleet: &Fleet,
        node: &str,
        token: Option<Secret>,
        url: &str,
    ) -> TestAgent {
        let data = super::private_tempdir();
        let host_root = tempfile::tempdir().expect("a host root");
        Self::launch(url, node, token, &fleet.pin(), data, host_root).await
    }

    /// Starts the agent of `node` with the given directories (a restart keeps them).
    pub async fn start_with(
        fleet: &Fleet,
        node: &str,
        token: Option<Secret>,
        pin: &str,
        data: TempDir,
        host_root: TempDir,
    ) -> TestAgent {
        Self::launch(&fleet.url(), node, token, pin, data, host_root).await
    }

    /// Starts the agent of `node`, with fresh directories, resyncing with Docker every
    /// `resync` (5 s otherwise): a test that must tell a probe from a resync sets it long.
    pub async fn start_resyncing_every(
        fleet: &Fleet,
        node: &str,
        token: Option<Secret>,
        resync: Duration,
    ) -> TestAgent {
        let data = super::private_tempdir();
        let host_root = tempfile::tempdir().expect("a host root");
        let url = fleet.url();
        Self::launch_with(&url, node, token, &fleet.pin(), data, host_root, resync).await
    }

    async fn launch(
        url: &str,
        node: &str,
        token: Option<Secret>,
        pin: &str,
        data: TempDir,
        host_root: TempDir,
    ) -> TestAgent {
        Self::launch_with(
            url,
            node,
            token,
            pin,
            data,
            host_root,
            Duration::from_secs(5),
        )
        .await
    }

    async fn launch_with(
        url: &str,
        node: &str,
        token: Option<Secret>,
        pin: &str,
        data: TempDir,
        host_root: TempDir,
        resync: Duration,
    ) -> TestAgent {
        let docker = super::docker::connect().await.expect("docker");
        let dial = Dial::new(url, pin).expect("a valid server URL");
        let mut settings = AgentSettings::new(dial, node, data.path().to_path_buf(), docker);
        settings.token = token;
        settings.host_root = host_root.path().to_path_buf();
        settings.reconnect_base = Duration::from_millis(50);
        settings.reconnect_cap = Duration::from_millis(500);
        settings.executor = ExecutorSettings {
            resync,
            retry_base: Duration::from_millis(200),
            retry_cap: Duration::from_secs(2),
            probe_concurrency: 4,
        };
        let shutdown = CancellationToken::new();
        let task =
            AbortOnDropHandle::new(tokio::spawn(drover::agent::run(settings, shutdown.clone())));
        TestAgent {
            node: node.to_string(),
            data,
            host_root,
            shutdown: shutdown.drop_guard(),
            task,
        }
    }

    /// Stops the agent cleanly and hands back its directories.
    pub async fn stop(self) -> (TempDir, TempDir) {
        drop(self.shutdown);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        (self.data, self.host_root)
    }

    /// Kills the agent where it stands (as a crash would) and hands back its directories.
    pub async fn kill(self) -> (TempDir, TempDir) {
        self.task.abort();
        let _ = self.task.await;
        (self.data, self.host_root)
    }

    /// The agent's outcome, when it stops by itself (a refusal) within `limit`.
    pub async fn outcome(self, limit: Duration) -> Result<(), AgentError> {
        match tokio::time::timeout(limit, self.task).await {
            Ok(joined) => joined.expect("the agent task does not panic"),
            Err(_) => panic!("agent {} kept running for {limit:?}", self.node),
        }
    }
}
