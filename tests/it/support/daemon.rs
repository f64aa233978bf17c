//! `drover serve` and `drover agent` as processes, the way an operator runs them: a daemon on
//! a Git repository with a generic webhook (so a commit is picked up at once), and one agent
//! per node, each with its own data directory and host root. Everything is stopped on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use drover::api::ClusterStatus;
use drover::secret::Secret;
use tempfile::TempDir;

use super::cli::BIN;
use super::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use super::fleet::unique_cluster;
use super::net::{free_port, unique_loopback};
use super::process::Process;
use super::{private_tempdir, unique_token};

/// Ports each test node's components use on its own address.
const NODE_PORTS: [u16; 4] = [2379, 2380, 8080, 9090];

/// The test cluster: three etcd + control-plane nodes and one worker, each on its own address.
#[derive(Clone)]
pub struct Layout {
    pub cluster: String,
    pub nodes: Vec<(String, Ipv4Addr, &'static str)>,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        let ports = [2379, 2380, 8080, 9090];
        let mut nodes = Vec::new();
        for i in 1..=3 {
            nodes.push((
                format!("n{i}"),
                unique_loopback(&ports),
                "[etcd, controlplane]",
            ));
        }
        nodes.push(("w1".to_string(), unique_loopback(&ports), "[worker]"));
        Layout {
            cluster: unique_cluster(prefix),
            nodes,
        }
    }

    /// The cluster file; `api_text` is what each api serves, `worker_image` the worker's image.
    pub fn yaml(&self, api_text: &str, worker_image: &str) -> String {
        let labels = docker::test_labels();
        let nodes: String = self
            .nodes
            .iter()
            .map(|(name, ip, roles)| {
                format!("    - {{name: {name}, address: {ip}, roles: {roles}}}\n")
            })
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
          - mkdir -p /www && echo '{{{{ node.name }}}} {api_text}' > /www/index.html && exec httpd -f -p {{{{ node.address }}}}:8080 -h /www
        health: {{http: 'http://{{{{ node.address }}}}:8080/', interval: 1s}}
        labels: {labels}
    worker:
      - name: app
        image: {worker_image}
        command: [httpd, -f, -p, '{{{{ node.address }}}}:9090']
        health: {{tcp: '{{{{ node.address }}}}:9090', interval: 1s}}
        labels: {labels}
  rollout:
    maxUnavailable: {{controlplane: 1, worker: 1}}
",
            cluster = self.cluster,
        )
    }

    /// `yaml`, with etcd snapshots every `every` into the daemon's store `backups`, the newest
    /// `last` kept.
    pub fn yaml_with_snapshots(&self, api_text: &str, every: &str, last: u32) -> String {
        self.yaml(api_text, BUSYBOX_IMAGE).replace(
            "  components:\n",
            &format!(
                "    snapshots: {{every: {every}, store: backups, retention: {{last: {last}}}}}\n  components:\n"
            ),
        )
    }

    pub fn path(&self) -> String {
        format!("clusters/{}.yaml", self.cluster)
    }

    /// Adds a node with `roles` (e.g. `[etcd]`) on a fresh address.
    pub fn add(&mut self, name: &str, roles: &'static str) {
        self.nodes
            .push((name.to_string(), unique_loopback(&NODE_PORTS), roles));
    }

    pub fn remove(&mut self, name: &str) {
        self.nodes.retain(|(n, _, _)| n != name);
    }

    /// The client URLs of the etcd members.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, _, roles)| roles.contains("etcd"))
            .map(|(_, ip, _)| format!("https://{ip}:2379"))
            .collect()
    }

    pub fn ip(&self, node: &str) -> Ipv4Addr {
        self.nodes.iter().find(|(n, _, _)| n == node).unwrap().1
    }
}

/// How long a daemon may take to answer on its HTTP listener.
pub const START: Duration = Duration::from_secs(20);

/// A running `drover serve`.
pub struct TestDaemon {
    process: Option<Process>,
    pub work: TempDir,
    pub ip: Ipv4Addr,
    pub agents_port: u16,
    pub http_port: u16,
    pub hook_secret: String,
    source: String,
    /// `source.git.pollInterval`; `None` leaves the daemon's default.
    poll_interval: Option<String>,
    /// More entries of `stores`, as YAML flow mappings (`name: {url: ...}`).
    pub extra_stores: Vec<String>,
    /// More top-level settings, YAML appended to the configuration.
    pub extra_config: String,
    /// `source.git.auth`, as a YAML flow mapping.
    pub source_auth: Option<String>,
}

impl TestDaemon {
    /// Starts a daemon following `source` (a Git URL or a directory) with a generic webhook.
    /// It polls only every 5 minutes: tests announce each commit with [`TestDaemon::hook`].
    pub async fn start(source: &str) -> TestDaemon {
        Self::start_polling(source, Some("5m")).await
    }

    /// Like [`TestDaemon::start`], polling `source` every `poll_interval` (a duration such as
    /// `30s`; `None`: the daemon's default).
    pub async fn start_polling(source: &str, poll_interval: Option<&str>) -> TestDaemon {
        let mut daemon = Self::unstarted(source, poll_interval);
        daemon.spawn().await;
        daemon
    }

    /// A daemon's addresses, secrets and work directory, its process not started yet: set its
    /// fields, then [`TestDaemon::spawn`].
    pub fn unstarted(source: &str, poll_interval: Option<&str>) -> TestDaemon {
        let ip = unique_loopback(&[]);
        let (agents_port, http_port) = (free_port(ip), free_port(ip));
        let work = private_tempdir();
        let hook_secret = format!("hook-{}", unique_token());
        std::fs::write(work.path().join("hook-secret"), &hook_secret).unwrap();
        TestDaemon {
            process: None,
            work,
            ip,
            agents_port,
            http_port,
            hook_secret,
            source: source.to_string(),
            poll_interval: poll_interval.map(str::to_string),
            extra_stores: Vec::new(),
            extra_config: String::new(),
            source_auth: None,
        }
    }

    /// Like [`TestDaemon::start`], with more snapshot stores (`name: {url: ...}` each).
    pub async fn start_with_stores(source: &str, stores: &[String]) -> TestDaemon {
        let mut daemon = Self::start(source).await;
        daemon.terminate();
        daemon.extra_stores = stores.to_vec();
        daemon.spawn().await;
        daemon
    }

    /// Like [`TestDaemon::start`], with `extra` (top-level YAML) in its configuration and
    /// `auth` (a YAML flow mapping) as the source's credentials.
    pub async fn start_with_config(source: &str, auth: Option<&str>, extra: &str) -> TestDaemon {
        let mut daemon = Self::unstarted_with_config(source, extra);
        daemon.source_auth = auth.map(str::to_string);
        daemon.spawn().await;
        daemon
    }

    /// `start_with_config`'s daemon, not started yet (`spawn` starts it): its addresses are
    /// known before it runs.
    pub fn unstarted_with_config(source: &str, extra: &str) -> TestDaemon {
        let mut daemon = Self::unstarted(source, Some("5m"));
        daemon.extra_config = extra.to_string();
        daemon
    }

    /// Writes the daemon's configuration file as the next start will read it; returns its
    /// path.
    pub fn write_config(&self) -> PathBuf {
        let config = self.work.path().join("daemon.yaml");
        let mut poll = match &self.poll_interval {
            Some(interval) => format!(", pollInterval: {interval}"),
            None => String::new(),
        };
        if let Some(auth) = &self.source_auth {
            poll.push_str(&format!(", auth: {auth}"));
        }
        let text = format!(
            "apiVersion: drover.dev/v1alpha1
kind: DaemonConfig
source:
  git: {{url: '{}', branch: main{}}}
listen: {{agents: '{}:{}', http: '{}:{}'}}
stateDir: {}
tlsNames: ['{}']
webhooks: {{genericSecretFile: {}}}
stores: {{backups: {{url: 'file://{}'}}{}}}
{}",
            self.source,
            poll,
            self.ip,
            self.agents_port,
            self.ip,
            self.http_port,
            self.state_dir().display(),
            self.ip,
            self.work.path().join("hook-secret").display(),
            self.snapshots_dir().display(),
            self.extra_stores
                .iter()
                .map(|s| format!(", {s}"))
                .collect::<String>(),
            self.extra_config,
        );
        std::fs::write(&config, text).unwrap();
        config
    }

    pub fn state_dir(&self) -> PathBuf {
        self.work.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.work.path().join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn agents_url(&self) -> String {
        format!("wss://{}:{}", self.ip, self.agents_port)
    }

    pub fn http(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.http_port))
    }

    /// Where the daemon's snapshot store `backups` keeps its objects (a `file://` store).
    pub fn snapshots_dir(&self) -> std::path::PathBuf {
        self.work.path().join("snapshots")
    }

    /// Writes the configuration and starts the process; returns once `/healthz` answers.
    pub async fn spawn(&mut self) {
        let config = self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(BIN);
        clear_drover_env(&mut command);
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("DROVER_LOG", "info,drover=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.process = Some(Process::spawn("drover serve", &mut command).expect("drover serve"));
        let url = format!("http://{}/healthz", self.http());
        let deadline = std::time::Instant::now() + START;
        loop {
            let process = self.process.as_mut().expect("just spawned");
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!("drover serve exited ({status}):\n{}", self.log());
            }
            if reqwest::get(&url).await.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "drover serve did not answer /healthz within {START:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit; returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut process = self.process.take().expect("a running daemon");
        let pid = process.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = process.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "drover serve did not stop within 30 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon with SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// Signs and posts a generic webhook: the daemon checks its source at once.
    pub async fn hook(&self) {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let signature = drover::source::webhook::sign(&Secret::new(&self.hook_secret), body);
        let response = reqwest::Client::new()
            .post(format!("http://{}/hooks/generic", self.http()))
            .header("x-drover-signature-256", format!("sha256={signature}"))
            .body(body.to_vec())
            .send()
            .await
            .expect("the webhook is delivered");
        assert_eq!(response.status().as_u16(), 202, "the webhook is accepted");
    }

    /// `drover status CLUSTER --format json`, through the operator API as an operator runs it.
    pub async fn status(&self, cluster: &str) -> Result<ClusterStatus, String> {
        let out = super::cli::command()
            .args(["status", cluster, "--format", "json", "--state-dir"])
            .arg(self.state_dir())
            .output()
            .await
            .expect("drover status runs");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Waits until `cluster`'s status satisfies `check` (which says what is missing).
    pub async fn await_status(
        &self,
        what: &str,
        cluster: &str,
        limit: Duration,
        check: impl Fn(&ClusterStatus) -> Result<(), String>,
    ) -> ClusterStatus {
        let outcome = super::wait::poll_until(limit, || async {
            let status = self.status(cluster).await?;
            check(&status).map_err(|e| format!("{e}; status: {status:#?}"))?;
            Ok::<_, String>(status)
        })
        .await;
        match outcome {
            Ok(status) => status,
            Err(timed_out) => panic!(
                "timed out after {:.1?} waiting for {what}; last: {}\ndaemon log:\n{}",
                timed_out.after,
                timed_out.last_error.unwrap_or_default(),
                tail(&self.log(), 60)
            ),
        }
    }

    /// Runs `drover ARGS --state-dir <this daemon's>` to its end: exit code, stdout, stderr.
    pub async fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = super::cli::command()
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .await
            .expect("drover runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A reusable join token for `cluster`, in a file.
    /// Made where the daemon keeps its state: its state directory, or the etcd its
    /// configuration names.
    pub async fn token_file(&self, cluster: &str) -> PathBuf {
        let file = self.work.path().join(format!("token-{cluster}"));
        let (flag, at) = if self.extra_config.contains("etcd:") {
            ("--config", self.write_config())
        } else {
            ("--state-dir", self.state_dir())
        };
        let out = super::cli::command()
            .args(["token", "create", cluster, "--reusable", "--server"])
            .arg(self.agents_url())
            .arg(flag)
            .arg(at)
            .arg("--out")
            .arg(&file)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        file
    }

    /// The daemon CA's pin, from the file the daemon wrote for local tools.
    pub fn pin(&self) -> String {
        let endpoint: drover::daemon::Endpoint =
            serde_json::from_slice(&std::fs::read(self.state_dir().join("endpoint.json")).unwrap())
                .unwrap();
        endpoint.ca_pin
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn clear_drover_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DROVER_") {
            command.env_remove(name);
        }
    }
}

/// A running `drover agent` for one node, with its own data directory and host root.
pub struct AgentProcess {
    process: Option<Process>,
    pub node: String,
    pub dir: PathBuf,
}

impl AgentProcess {
    pub fn start(daemon: &TestDaemon, node: &str, token: &Path) -> AgentProcess {
        AgentProcess::start_with(daemon, &daemon.agents_url(), node, token)
    }

    /// Like `start`, dialling `server` (several daemons' URLs, separated by commas).
    pub fn start_with(daemon: &TestDaemon, server: &str, node: &str, token: &Path) -> AgentProcess {
        let dir = daemon.work.path().join(format!("node-{node}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        let mut command = Command::new(BIN);
        clear_drover_env(&mut command);
        command
            .args(["agent", "--server", server, "--ca-hash", &daemon.pin()])
            .args(["--node-name", node, "--token-file"])
            .arg(token)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--host-root")
            .arg(dir.join("root"))
            .env("DROVER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        let process = Process::spawn("drover agent", &mut command).expect("drover agent");
        AgentProcess {
            process: Some(process),
            node: node.to_string(),
            dir,
        }
    }

    /// An agent for every node of `layout`, joining with `token`.
    pub fn start_all(daemon: &TestDaemon, layout: &Layout, token: &Path) -> Vec<AgentProcess> {
        layout
            .nodes
            .iter()
            .map(|(n, _, _)| AgentProcess::start(daemon, n, token))
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Waits up to `limit` for the agent to exit on its own; its exit status, if it did.
    pub async fn exited(&mut self, limit: Duration) -> Option<ExitStatus> {
        let process = self.process.as_mut()?;
        crate::support::wait::poll_until(limit, || {
            let status = process.child.try_wait();
            async move {
                match status {
                    Ok(Some(status)) => Ok(status),
                    _ => Err("still running"),
                }
            }
        })
        .await
        .ok()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where an agent wrote its node's etcd certificates (under its host root).
pub fn pki_dir(layout: &Layout, agent: &AgentProcess) -> PathBuf {
    let dir = drover::nodeplan::etcd_pki_dir(&layout.cluster);
    agent.dir.join("root").join(dir.trim_start_matches('/'))
}

/// An etcd client of the cluster's members, with the client certificate drover issued to
/// `agent`'s node (`identity: false`: with the CA only, as a client without a certificate).
pub async fn etcd_client_with(
    layout: &Layout,
    agent: &AgentProcess,
    identity: bool,
) -> Result<etcd_client::Client, etcd_client::Error> {
    use drover::nodeplan::{PKI_CA, PKI_CLIENT_CERT, PKI_CLIENT_KEY};
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let dir = pki_dir(layout, agent);
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("reading {file} in {}: {e}", dir.display()))
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(PKI_CA)));
    if identity {
        tls = tls.identity(Identity::from_pem(
            read(PKI_CLIENT_CERT),
            read(PKI_CLIENT_KEY),
        ));
    }
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10));
    etcd_client::Client::connect(layout.etcd_endpoints(), Some(options)).await
}

/// `etcd_client_with` the node's certificate; panics when it cannot connect.
pub async fn etcd_client(layout: &Layout, agent: &AgentProcess) -> etcd_client::Client {
    etcd_client_with(layout, agent, true)
        .await
        .expect("an etcd client with the node's certificate")
}
