//! A real etcd (Debian's 3.4.23, as an image): members in containers, each on its own
//! loopback address, ready when they serve a read. `start_cluster` starts plain-HTTP clusters;
//! `TlsCluster` starts clusters with TLS only, for clients and peers, from certificates a
//! `drover::etcd_pki::ClusterCa` issues (in a private directory mounted into each container).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use drover::etcd_pki::ClusterCa;
use drover::nodeplan::{
    PKI_CA, PKI_CLIENT_CERT, PKI_CLIENT_KEY, PKI_PEER_CERT, PKI_PEER_KEY, PKI_SERVER_CERT,
    PKI_SERVER_KEY,
};
use drover::state::StateDir;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tempfile::TempDir;
use tokio::net::TcpStream;

use super::docker::{Container, ContainerSpec, ETCD_IMAGE};
use super::{net, private_tempdir, slug, Unavailable};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// From `docker create` to a served read; etcd itself needs about a second.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A running member; the container goes away when this is dropped.
#[derive(Debug)]
pub struct EtcdMember {
    pub ip: Ipv4Addr,
    /// `http://<ip>:2379`
    pub endpoint: String,
    container: Container,
}

impl EtcdMember {
    /// Starts a fresh member (data on a tmpfs) and waits until it serves a
    /// read. `Unavailable` when Docker or the etcd image is missing; a member
    /// that does not come up panics with its logs.
    pub async fn start(docker: &Docker, test: &str) -> Result<EtcdMember, Unavailable> {
        let mut members = start_members(docker, test, 1).await?;
        Ok(members.remove(0))
    }

    /// A client with bounded connect and request timeouts.
    pub async fn client(&self) -> Client {
        connect(&self.endpoint)
            .await
            .unwrap_or_else(|e| panic!("connecting to etcd at {}: {e}", self.endpoint))
    }

    pub fn container(&self) -> &Container {
        &self.container
    }

    /// Ready = the port accepts and a linearizable read succeeds (which needs
    /// a leader).
    async fn await_ready(&self) {
        let addr = net::addr(self.ip, CLIENT_PORT);
        let what = format!("etcd to serve a read at {}", self.endpoint);
        self.container
            .eventually(&what, STARTUP_TIMEOUT, || async {
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let mut client = connect(&self.endpoint)
                    .await
                    .map_err(|e| format!("etcd client: {e}"))?;
                client
                    .get("drover-test/readiness-probe", None)
                    .await
                    .map_err(|e| format!("get: {e}"))
            })
            .await;
    }
}

/// A real etcd cluster of `n` members, each on its own loopback address, started together and
/// each ready (serving a linearizable read, so with a leader).
pub async fn start_cluster(
    docker: &Docker,
    test: &str,
    n: usize,
) -> Result<Vec<EtcdMember>, Unavailable> {
    start_members(docker, test, n).await
}

/// Each member's name is `member-<i>`, from 1.
async fn start_members(
    docker: &Docker,
    test: &str,
    n: usize,
) -> Result<Vec<EtcdMember>, Unavailable> {
    let ips: Vec<Ipv4Addr> = (0..n)
        .map(|_| net::unique_loopback(&[CLIENT_PORT, PEER_PORT]))
        .collect();
    let initial_cluster = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("member-{}=http://{ip}:{PEER_PORT}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let cluster_token = format!("drover-test-{}", slug(test));
    let mut members = Vec::with_capacity(n);
    for (i, ip) in ips.into_iter().enumerate() {
        let endpoint = format!("http://{ip}:{CLIENT_PORT}");
        let peer = format!("http://{ip}:{PEER_PORT}");
        let name = format!("member-{}", i + 1);
        let cmd = [
            "etcd",
            "--name",
            &name,
            "--data-dir",
            "/var/lib/etcd",
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial_cluster,
            "--initial-cluster-token",
            &cluster_token,
            "--initial-cluster-state",
            "new",
        ];
        let spec = ContainerSpec::new(ETCD_IMAGE, &cmd).tmpfs("/var/lib/etcd");
        let container = Container::start(docker, test, spec).await?;
        members.push(EtcdMember {
            ip,
            endpoint,
            container,
        });
    }
    for member in &members {
        member.await_ready().await;
    }
    Ok(members)
}

async fn connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    Client::connect([endpoint], Some(options)).await
}

/// Where a TLS member's certificates are mounted in its container.
const PKI_MOUNT: &str = "/etc/drover-etcd-pki";

/// A member of a `TlsCluster`: its address, its certificates and, while it runs, its container
/// (removed when this is dropped or stopped).
#[derive(Debug)]
pub struct TlsMember {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `https://<ip>:2379`
    pub client_url: String,
    /// `https://<ip>:2380`
    pub peer_url: String,
    pki: TempDir,
    container: Option<Container>,
}

impl TlsMember {
    /// The member's certificates and keys, by `nodeplan::PKI_*` names, as a node holds them.
    pub fn pki_dir(&self) -> &Path {
        self.pki.path()
    }

    /// Stops the member for good: its container is removed, its certificates stay.
    pub fn stop(&mut self) {
        self.container = None;
    }

    /// A client with the member's client certificate, with bounded timeouts; independent of
    /// drover's etcd tasks.
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        let read = |file: &str| {
            std::fs::read_to_string(self.pki_dir().join(file))
                .unwrap_or_else(|e| panic!("reading {file} of {}: {e}", self.name))
        };
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(PKI_CA)))
            .identity(Identity::from_pem(
                read(PKI_CLIENT_CERT),
                read(PKI_CLIENT_KEY),
            ));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        Client::connect([&self.client_url], Some(options)).await
    }

    /// Waits until the member serves a linearizable read over TLS.
    pub async fn await_ready(&self) {
        let container = self
            .container
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let addr = net::addr(self.ip, CLIENT_PORT);
        let what = format!("etcd {} to serve a read at {}", self.name, self.client_url);
        container
            .eventually(&what, STARTUP_TIMEOUT, || async {
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let mut client = self.client().await.map_err(|e| format!("client: {e}"))?;
                client
                    .get("drover-test/readiness-probe", None)
                    .await
                    .map_err(|e| format!("get: {e}"))
            })
            .await;
    }
}

/// A real etcd cluster with TLS only, for clients and peers, whose certificates a `ClusterCa`
/// (in a private state directory) issued for each member's address. Members elect fast
/// (heartbeat 100 ms, election timeout 1 s).
pub struct TlsCluster {
    pub ca: ClusterCa,
    pub members: Vec<TlsMember>,
    test: String,
    token: String,
    _state: TempDir,
}

impl TlsCluster {
    /// Starts `n` members, `member-1` .. `member-<n>`, together, and waits until each serves a
    /// linearizable read.
    pub async fn start(docker: &Docker, test: &str, n: usize) -> Result<TlsCluster, Unavailable> {
        let state = private_tempdir();
        let ca = ClusterCa::ensure(&StateDir::new(state.path()).into(), "test")
            .unwrap_or_else(|e| panic!("making the cluster's etcd CA: {e}"));
        let mut cluster = TlsCluster {
            ca,
            members: Vec::with_capacity(n),
            test: test.to_string(),
            token: format!("drover-test-{}", slug(test)),
            _state: state,
        };
        for i in 1..=n {
            let member = cluster.new_member(&format!("member-{i}"));
            cluster.members.push(member);
        }
        let initial = initial_cluster(cluster.members.iter());
        let mut members = std::mem::take(&mut cluster.members);
        for member in &mut members {
            cluster
                .start_member(docker, member, &initial, "new")
                .await?;
        }
        for member in &members {
            member.await_ready().await;
        }
        cluster.members = members;
        Ok(cluster)
    }

    /// A member with its own address and certificates from the cluster's CA, not started.
    pub fn new_member(&self, name: &str) -> TlsMember {
        let ip = net::unique_loopback(&[CLIENT_PORT, PEER_PORT]);
        let pki = private_tempdir();
        // With --peer-client-cert-auth, etcd checks a dialling peer's certificate against the
        // connection's source address, and on loopback every connection comes from 127.0.0.1
        // (on a network it is the node's own address): that is one of the node's addresses here.
        let addresses = [ip.to_string(), "127.0.0.1".to_string()];
        let files = self
            .ca
            .issue(name, &addresses, SystemTime::now())
            .unwrap_or_else(|e| panic!("issuing {name}'s certificates: {e}"));
        for (file, spec) in &files {
            drover::state::write_atomically(
                &pki.path().join(file),
                spec.content.as_bytes(),
                spec.mode.bits(),
            )
            .unwrap_or_else(|e| panic!("writing {name}'s {file}: {e}"));
        }
        TlsMember {
            name: name.to_string(),
            ip,
            client_url: format!("https://{ip}:{CLIENT_PORT}"),
            peer_url: format!("https://{ip}:{PEER_PORT}"),
            pki,
            container: None,
        }
    }

    /// Starts `member` with `--initial-cluster` `initial` and `--initial-cluster-state`
    /// `state` (`new` or `existing`), without waiting for it to serve.
    pub async fn start_member(
        &self,
        docker: &Docker,
        member: &mut TlsMember,
        initial: &str,
        state: &str,
    ) -> Result<(), Unavailable> {
        let file = |name: &str| format!("{PKI_MOUNT}/{name}");
        let args = [
            ("--name", member.name.clone()),
            ("--data-dir", "/var/lib/etcd".to_string()),
            ("--listen-client-urls", member.client_url.clone()),
            ("--advertise-client-urls", member.client_url.clone()),
            ("--listen-peer-urls", member.peer_url.clone()),
            ("--initial-advertise-peer-urls", member.peer_url.clone()),
            ("--initial-cluster", initial.to_string()),
            ("--initial-cluster-token", self.token.clone()),
            ("--initial-cluster-state", state.to_string()),
            ("--cert-file", file(PKI_SERVER_CERT)),
            ("--key-file", file(PKI_SERVER_KEY)),
            ("--trusted-ca-file", file(PKI_CA)),
            ("--peer-cert-file", file(PKI_PEER_CERT)),
            ("--peer-key-file", file(PKI_PEER_KEY)),
            ("--peer-trusted-ca-file", file(PKI_CA)),
            ("--heartbeat-interval", "100".to_string()),
            ("--election-timeout", "1000".to_string()),
        ];
        let mut cmd = vec!["etcd".to_string()];
        for (flag, value) in args {
            cmd.push(flag.to_string());
            cmd.push(value);
        }
        cmd.push("--client-cert-auth".to_string());
        cmd.push("--peer-client-cert-auth".to_string());
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let spec = ContainerSpec::new(ETCD_IMAGE, &cmd)
            .tmpfs("/var/lib/etcd")
            .bind_ro(member.pki_dir(), PKI_MOUNT);
        member.container = Some(Container::start(docker, &self.test, spec).await?);
        Ok(())
    }
}

/// `--initial-cluster` for `members`: `name=peer_url`, comma-separated.
pub fn initial_cluster<'a>(members: impl IntoIterator<Item = &'a TlsMember>) -> String {
    members
        .into_iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",")
}
