//! A one-member etcd cluster run by real drover processes, for the snapshot benchmark:
//! `drover serve` watching a local directory that holds the cluster file, with one S3 store,
//! `backups`, on the test Garage; and one `drover agent`
//! whose node runs the etcd member (TLS, the daemon's per-cluster CA) on the local Docker
//! engine, all on loopback. Processes, containers and the working directory (etcd's data lives
//! under the agent's host root) go on drop, in that order, also on a panic.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover::api::{ClusterStatus, ConditionType, CLUSTERS_PATH};
use object_store::ObjectStore;
use tempfile::TempDir;

use super::operator;
use super::support::cli::BIN;
use super::support::docker::ETCD_IMAGE;
use super::support::fleet::{unique_cluster, ClusterCleanup};
use super::support::garage::S3Settings;
use super::support::net::{free_port, unique_loopback};
use super::support::private_tempdir;
use super::support::process::Process;

/// The node's name: the cluster's only node and etcd member.
pub const NODE: &str = "n1";
/// How long the daemon may take to answer `/healthz`.
const START_LIMIT: Duration = Duration::from_secs(30);
/// The first rollout bootstraps etcd.
const READY_LIMIT: Duration = Duration::from_secs(180);

/// The running cluster. Fields drop in order: agent, daemon, containers, then the directory.
pub struct BenchCluster {
    agent: Option<Process>,
    daemon: Option<Process>,
    _containers: ClusterCleanup,
    work: TempDir,
    pub name: String,
    /// The node's address: etcd's client URL is `https://{ip}:2379`.
    pub ip: Ipv4Addr,
    daemon_ip: Ipv4Addr,
    agents_port: u16,
    http_port: u16,
    quota_bytes: u64,
    client: Option<operator::Client>,
}

impl BenchCluster {
    /// Starts the daemon on a store at `s3://{bucket}/{prefix}/drover` and the node's agent, and
    /// waits until the cluster is Ready (its etcd member healthy).
    pub async fn start(s3: &S3Settings, prefix: &str, quota_bytes: u64) -> BenchCluster {
        let name = unique_cluster("bsnap");
        let work = private_tempdir();
        let daemon_ip = unique_loopback(&[]);
        let mut cluster = BenchCluster {
            agent: None,
            daemon: None,
            _containers: ClusterCleanup(name.clone()),
            work,
            name,
            ip: unique_loopback(&[2379, 2380]),
            daemon_ip,
            agents_port: free_port(daemon_ip),
            http_port: free_port(daemon_ip),
            quota_bytes,
            client: None,
        };
        std::fs::create_dir_all(cluster.source_dir().join("clusters")).unwrap();
        cluster.write_cluster();
        cluster.write_daemon_config(s3, prefix);
        cluster.start_daemon().await;
        let token = cluster.token_file().await;
        cluster.start_agent(&token);
        let client = operator::Client::new(
            &SocketAddr::from((cluster.daemon_ip, cluster.agents_port)).to_string(),
            &cluster.pin(),
            &cluster.state_dir(),
        );
        cluster.client = Some(client);
        let ready = cluster.await_status("the cluster to be Ready", READY_LIMIT, |s| {
            let ready = s.condition(ConditionType::Ready).is_some_and(|c| c.status);
            ready.then_some(()).ok_or_else(|| "not Ready".to_string())
        });
        ready.await;
        cluster
    }

    pub fn state_dir(&self) -> PathBuf {
        self.work.path().join("state")
    }

    fn source_dir(&self) -> PathBuf {
        self.work.path().join("source")
    }

    pub fn config_path(&self) -> PathBuf {
        self.work.path().join("daemon.yaml")
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.work.path().join("daemon.log")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.work.path().join("agent.log")
    }

    fn agent_root(&self) -> PathBuf {
        self.work.path().join("node").join("root")
    }

    /// The node's etcd certificates (`ca.pem`, `client.pem`, ...), as its agent wrote them.
    pub fn pki_dir(&self) -> PathBuf {
        let dir = drover::nodeplan::etcd_pki_dir(&self.name);
        self.agent_root().join(dir.trim_start_matches('/'))
    }

    pub fn client_url(&self) -> String {
        format!("https://{}:2379", self.ip)
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("a running daemon").child.id()
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("a running agent").child.id()
    }

    /// Writes the cluster file. Its snapshot policy is a yearly cron occurrence months away,
    /// so the scheduler never runs during the benchmark: every save is the benchmark's.
    fn write_cluster(&self) {
        let snapshots = format!("schedule: '0 0 1 {} *'", far_month());
        let yaml = format!(
            "apiVersion: drover.dev/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  nodes:
    - {{name: {NODE}, address: {ip}, roles: [etcd]}}
  etcd:
    image: {ETCD_IMAGE}
    extraArgs: {{quota-backend-bytes: '{quota}'}}
    snapshots: {{{snapshots}, store: backups, retention: {{last: 100}}}}
",
            name = self.name,
            ip = self.ip,
            quota = self.quota_bytes,
        );
        let dir = self.source_dir().join("clusters");
        let temp = dir.join(".cluster.yaml.tmp");
        std::fs::write(&temp, yaml).unwrap();
        std::fs::rename(&temp, dir.join(format!("{}.yaml", self.name))).unwrap();
    }

    /// The daemon's configuration: the local source and the store `backups` on Garage, its
    /// credentials in files (the access key id copied here, the secret's own 0600 file).
    fn write_daemon_config(&self, s3: &S3Settings, prefix: &str) {
        let key_id = self.work.path().join("s3-access-key-id");
        std::fs::write(&key_id, &s3.access_key_id).unwrap();
        let text = format!(
            "apiVersion: drover.dev/v1alpha1
kind: DaemonConfig
source:
  local: {{path: '{source}'}}
listen: {{agents: '{ip}:{agents}', http: '{ip}:{http}'}}
stateDir: '{state}'
tlsNames: ['{ip}']
stores:
  backups:
    url: 's3://{bucket}/{prefix}/drover'
    endpoint: '{endpoint}'
    region: '{region}'
    pathStyle: true
    allowHttp: true
    credentials: {{accessKeyIdFile: '{key_id}', secretAccessKeyFile: '{secret}'}}
",
            source = self.source_dir().display(),
            ip = self.daemon_ip,
            agents = self.agents_port,
            http = self.http_port,
            state = self.state_dir().display(),
            bucket = s3.bucket,
            endpoint = s3.endpoint,
            region = s3.region,
            key_id = key_id.display(),
            secret = s3.secret_access_key_file,
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// The store `backups` opened from the daemon's configuration, as the daemon opens it.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        let config = drover::config::load(&self.config_path())
            .unwrap_or_else(|e| panic!("the bench's daemon configuration: {e}"));
        let store = config.stores.values().next().expect("the store backups");
        drover::snapshot::open(store).expect("the store opens")
    }

    async fn start_daemon(&mut self) {
        let log = append(&self.daemon_log());
        let mut command = drover();
        command
            .args(["serve", "--config"])
            .arg(self.config_path())
            .env("DROVER_LOG", "info,drover=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.daemon = Some(Process::spawn("drover serve", &mut command).expect("drover serve"));
        let url = format!("http://{}:{}/healthz", self.daemon_ip, self.http_port);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let daemon = self.daemon.as_mut().expect("just started");
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!("drover serve exited ({status}):\n{}", self.tail_daemon());
            }
            if reqwest::get(&url).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "drover serve did not answer /healthz within {START_LIMIT:?}:\n{}",
                self.tail_daemon()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A reusable join token for the node, in a file (tokens never go in argv).
    async fn token_file(&self) -> PathBuf {
        let file = self.work.path().join("join-token");
        let (url, path) = (self.agents_url(), file.display().to_string());
        let out = self
            .drover(&["token", "create", &self.name, "--reusable"])
            .args(["--server", &url, "--out", &path])
            .output()
            .expect("drover token create runs");
        assert!(out.status.success(), "drover token create: {out:?}");
        file
    }

    fn start_agent(&mut self, token: &Path) {
        let dir = self.work.path().join("node");
        std::fs::create_dir_all(&dir).unwrap();
        let log = append(&self.agent_log());
        let mut command = drover();
        command
            .args(["agent", "--server", &self.agents_url(), "--ca-hash"])
            .arg(self.pin())
            .args(["--node-name", NODE, "--token-file"])
            .arg(token)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--host-root")
            .arg(self.agent_root())
            .env("DROVER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        self.agent = Some(Process::spawn("drover agent", &mut command).expect("drover agent"));
    }

    fn agents_url(&self) -> String {
        format!("wss://{}:{}", self.daemon_ip, self.agents_port)
    }

    /// The daemon CA's pin, from the file the daemon wrote for local tools.
    fn pin(&self) -> String {
        let bytes = std::fs::read(self.state_dir().join("endpoint.json")).unwrap();
        let endpoint: drover::daemon::Endpoint = serde_json::from_slice(&bytes).unwrap();
        endpoint.ca_pin
    }

    /// A `drover ARGS... --state-dir STATE` command, as an operator on the daemon's machine
    /// runs it, without the caller's `DROVER_*` variables. More arguments may follow.
    pub fn drover(&self, args: &[&str]) -> Command {
        let mut command = drover();
        command
            .args(args)
            .arg(format!("--state-dir={}", self.state_dir().display()));
        command
    }

    /// The cluster's status through the operator API.
    pub async fn status(&self) -> Result<ClusterStatus, String> {
        let client = self.client.as_ref().expect("the operator client");
        client.get(&format!("{CLUSTERS_PATH}/{}", self.name)).await
    }

    /// Polls the status until `check` passes; panics with the daemon's log after `limit`.
    pub async fn await_status(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&ClusterStatus) -> Result<(), String>,
    ) -> ClusterStatus {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.status().await {
                Ok(status) => match check(&status) {
                    Ok(()) => return status,
                    Err(why) => format!("{why}; conditions {:?}", status.conditions),
                },
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; last: {last}\ndaemon log:\n{}",
                self.tail_daemon()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An etcd client of the member with the node's client certificate.
    pub async fn etcd(&self) -> etcd_client::Client {
        use drover::nodeplan::{PKI_CA, PKI_CLIENT_CERT, PKI_CLIENT_KEY};
        use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
        let dir = self.pki_dir();
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("reading {file} in {}: {e}", dir.display()))
        };
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(PKI_CA)))
            .identity(Identity::from_pem(
                read(PKI_CLIENT_CERT),
                read(PKI_CLIENT_KEY),
            ));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60));
        etcd_client::Client::connect([self.client_url()], Some(options))
            .await
            .expect("an etcd client with the node's certificate")
    }

    /// The last lines of the daemon's log.
    pub fn tail_daemon(&self) -> String {
        let text = std::fs::read_to_string(self.daemon_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Copies the daemon's and agent's logs into `dir`, under `tag`.
    pub fn keep_logs(&self, dir: &Path, tag: &str) {
        std::fs::create_dir_all(dir).expect("the log directory");
        let _ = std::fs::copy(self.daemon_log(), dir.join(format!("{tag}-daemon.log")));
        let _ = std::fs::copy(self.agent_log(), dir.join(format!("{tag}-agent.log")));
    }

    /// Stops the agent, then the daemon (SIGTERM, then SIGKILL to the process group).
    pub fn stop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
    }
}

/// The month (1-12) six months from now: a yearly cron occurrence that cannot come during a run.
fn far_month() -> u32 {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 86_400;
    // Months of 30.44 days from 1970-01: close enough to land far from the current month.
    let month = (days as f64 / 30.44) as u64 % 12;
    ((month + 6) % 12 + 1) as u32
}

/// The drover binary, without the caller's `DROVER_*` variables (flags fall back to them).
fn drover() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DROVER_") {
            command.env_remove(name);
        }
    }
    command
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}
