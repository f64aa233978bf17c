//! Several `drover serve` on one etcd, for the benchmarks that run them: a 3-member etcd of
//! Debian's `etcd` as processes, each daemon's configuration, process and operator API, and
//! the wait until they agree on the clusters' owners.

// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover::api::{SharingView, DAEMONS_PATH};

use super::operator;

pub const TIMEOUT: Duration = Duration::from_secs(300);

/// The processes, killed when the bench ends however it ends.
pub struct Procs {
    pub etcd: Vec<Child>,
    pub daemons: Vec<Option<Child>>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self
            .etcd
            .iter_mut()
            .chain(self.daemons.iter_mut().flatten())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One daemon's addresses and files.
pub struct Daemon {
    pub id: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
}

impl Daemon {
    pub fn config(&self) -> PathBuf {
        self.dir.join("daemon.yaml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    pub fn server(&self) -> String {
        format!("{}:7443", self.ip)
    }

    pub fn pin(&self) -> String {
        let endpoint: drover::daemon::Endpoint = serde_json::from_slice(
            &std::fs::read(self.state().join(drover::daemon::ENDPOINT_FILE)).expect("endpoint"),
        )
        .expect("an endpoint file");
        endpoint.ca_pin
    }

    pub fn client(&self) -> operator::Client {
        operator::Client::new(&self.server(), &self.pin(), &self.state())
    }
}

pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn write_config(d: &Daemon, source: &Path, endpoints: &[String], key: &Path, work: &Path) {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("'{e}'")).collect();
    let text = format!(
        "apiVersion: drover.dev/v1alpha1
kind: DaemonConfig
source:
  local: {{path: {}}}
listen: {{agents: '{ip}:7443', http: '{ip}:8080'}}
tlsNames: ['{ip}']
stateDir: {}
stores: {{backups: {{url: 'file://{}'}}}}
state:
  etcd: {{endpoints: [{}], prefix: /drover-bench/, encryptionKeyFile: {}, daemonId: {}}}
",
        source.display(),
        d.state().display(),
        work.join("snapshots").display(),
        endpoints.join(", "),
        key.display(),
        d.id,
        ip = d.ip,
    );
    std::fs::write(d.config(), text).unwrap();
}

pub fn spawn(d: &Daemon) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.log())
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--config"])
        .arg(d.config())
        .env("DROVER_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("drover serve starts")
}

/// A member per address in `ips`, each with `extra` flags too.
pub fn start_etcd(work: &Path, ips: &[Ipv4Addr], extra: &[&str]) -> Vec<Child> {
    let initial: Vec<String> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("e{}=http://{ip}:2380", i + 1))
        .collect();
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            let name = format!("e{}", i + 1);
            let data = work.join(format!("etcd-{name}"));
            let log = std::fs::File::create(work.join(format!("etcd-{name}.log"))).unwrap();
            Command::new("etcd")
                .args(["--name", &name, "--data-dir"])
                .arg(&data)
                .args([
                    "--listen-client-urls",
                    &format!("http://{ip}:2379"),
                    "--advertise-client-urls",
                    &format!("http://{ip}:2379"),
                    "--listen-peer-urls",
                    &format!("http://{ip}:2380"),
                    "--initial-advertise-peer-urls",
                    &format!("http://{ip}:2380"),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (Debian's etcd-server) starts")
        })
        .collect()
}

pub async fn await_etcd(endpoints: &[String]) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(mut client) = etcd_client::Client::connect(endpoints, None).await {
            if client.get("ready", None).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn await_health(d: &Daemon) {
    let deadline = Instant::now() + TIMEOUT;
    let url = format!("http://{}:8080/healthz", d.ip);
    while reqwest::get(&url).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not start:\n{}",
            d.id,
            std::fs::read_to_string(d.log()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `count` daemons `d1`, `d2`, ... on `127.<net>.<block>.<i>`, following `source` with the
/// state in etcd at `endpoints` sealed with `key`, started (into `procs`) and answering.
pub async fn start_daemons(
    procs: &mut Procs,
    work: &Path,
    (net, block): (u8, u8),
    count: usize,
    (source, endpoints, key): (&Path, &[String], &Path),
) -> Vec<Daemon> {
    let daemons: Vec<Daemon> = (0..count)
        .map(|i| {
            let daemon = Daemon {
                id: format!("d{}", i + 1),
                ip: Ipv4Addr::new(127, net, block, i as u8 + 1),
                dir: work.join(format!("d{}", i + 1)),
            };
            std::fs::create_dir_all(&daemon.dir).unwrap();
            write_config(&daemon, source, endpoints, key, work);
            daemon
        })
        .collect();
    for d in &daemons {
        procs.daemons.push(Some(spawn(d)));
    }
    for d in &daemons {
        await_health(d).await;
    }
    daemons
}

/// Waits until the daemons not in `down` agree, settled, that every cluster is owned as the
/// rendezvous hash over them says.
pub async fn await_settled(
    daemons: &[Daemon],
    ids: &[String],
    clusters: &[String],
    down: &BTreeSet<usize>,
) -> SharingView {
    let live: Vec<String> = (0..daemons.len())
        .filter(|i| !down.contains(i))
        .map(|i| ids[i].clone())
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    let client = daemons[(0..daemons.len()).find(|i| !down.contains(i)).unwrap()].client();
    loop {
        let last = match client.get::<SharingView>(DAEMONS_PATH).await {
            Ok(view) => {
                let misplaced = clusters
                    .iter()
                    .filter(|c| {
                        view.owners.get(*c).map(String::as_str)
                            != drover::daemon::ownership::owner(c, &live)
                    })
                    .count();
                if !view.settling && view.daemons.len() == live.len() && misplaced == 0 {
                    return view;
                }
                format!(
                    "{} daemons, settling {}, {misplaced} clusters not with their owner",
                    view.daemons.len(),
                    view.settling
                )
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("the daemons did not settle: {last}\n{}", log_tails(daemons));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines of each daemon's log, for a bench that gives up.
pub fn log_tails(daemons: &[Daemon]) -> String {
    let tails: Vec<String> = daemons
        .iter()
        .map(|d| {
            let log = std::fs::read_to_string(d.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            format!(
                "{}:\n{}",
                d.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect();
    tails.join("\n")
}
