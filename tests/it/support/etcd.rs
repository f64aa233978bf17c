//! A real single-member etcd (Debian's 3.4.23, as an image) in a container on
//! its own loopback address, ready when it serves a read.

use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::Docker;
use etcd_client::{Client, ConnectOptions};
use tokio::net::TcpStream;

use super::docker::{Container, ContainerSpec, ETCD_IMAGE};
use super::{net, slug, Unavailable};

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
