//! The agent's Docker event watch against real engines: stopping and removing a managed container
//! by hand is noticed (and another node's containers are not), and the watch survives a real
//! Docker restart: `Lost` while the engine is away, `Resubscribed` when it is back, and events
//! flow again. The restart uses a private dockerd of its own (socket, data and exec roots in a
//! temporary directory): the shared engine at /var/run/docker.sock is never restarted, since
//! other tests use it at the same time.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::{Docker, API_DEFAULT_VERSION};
use drover::agent::docker::{
    Driver, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_NODE, MANAGED_BY,
};
use drover::agent::events::{watch, Notice};
use drover::backoff::Backoff;
use drover::model::ImageRef;
use drover::nodeplan::{container_name, ContainerSpec, NetworkMode, NodeSpec, RestartPolicy};
use tokio::sync::mpsc::Receiver;
use tokio::time::{timeout, timeout_at, Instant};

use crate::support::docker::{require_image, BUSYBOX_IMAGE};
use crate::support::wait::poll_until;
use crate::support::{docker, require, slug, unique_token, Unavailable};

/// How long any one awaited notice, start or stop may take.
const LIMIT: Duration = Duration::from_secs(60);

/// Quick retries: a test waits for the watch to come back, not for a production backoff.
fn test_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
}

#[tokio::test]
async fn stopping_and_removing_a_managed_container_is_noticed() {
    let client = require!(docker::connect().await);
    require!(require_image(&client, BUSYBOX_IMAGE).await);
    let cluster = cluster_name();
    let _cleanup = Cleanup {
        socket: None,
        cluster: cluster.clone(),
    };
    let host_root = tempfile::tempdir().unwrap();
    let (mut notices, task) = watch(client.clone(), &cluster, "w1", test_backoff());

    // Another node of the same cluster: the filters keep its events out. Its events come first,
    // so had one passed the filters it would be among the notices seen below.
    let other = Driver::new(client.clone(), &cluster, "w2", host_root.path().join("w2"));
    assert_applied(&other, &node_spec(&["other"])).await;
    let driver = Driver::new(client.clone(), &cluster, "w1", host_root.path().join("w1"));
    assert_applied(&driver, &node_spec(&["web"])).await;

    let mut seen = Vec::new();
    let web = |action: &'static str| {
        move |n: &Notice| {
            *n == Notice::Container {
                component: "web".to_string(),
                action: action.to_string(),
            }
        }
    };
    next_matching(&mut notices, &mut seen, "web created", web("create")).await;
    next_matching(&mut notices, &mut seen, "web started", web("start")).await;

    let name = container_name(&cluster, "w1", "web");
    docker_cli(&["stop", "-t", "0", &name]);
    next_matching(&mut notices, &mut seen, "web died", web("die")).await;
    next_matching(&mut notices, &mut seen, "web stopped", web("stop")).await;
    docker_cli(&["rm", &name]);
    next_matching(&mut notices, &mut seen, "web destroyed", web("destroy")).await;

    assert!(
        seen.iter()
            .all(|n| matches!(n, Notice::Container { component, .. } if component == "web")),
        "only this node's component, and no outage: {seen:?}"
    );

    // Dropping the receiver ends the watch.
    drop(notices);
    timeout(LIMIT, task)
        .await
        .expect("the watch ends when its receiver is dropped")
        .expect("the watch task does not panic");
}

#[tokio::test]
async fn the_watch_survives_a_docker_restart() {
    let shared = require!(docker::connect().await);
    require!(require_image(&shared, BUSYBOX_IMAGE).await);
    let mut dockerd = require!(PrivateDockerd::start().await);
    let client = dockerd.client().await;
    dockerd.load_image(BUSYBOX_IMAGE);
    let cluster = cluster_name();
    let _cleanup = Cleanup {
        socket: Some(dockerd.socket()),
        cluster: cluster.clone(),
    };

    let (mut notices, _task) = watch(client.clone(), &cluster, "w1", test_backoff());
    let mut seen = Vec::new();
    create_managed(&client, &cluster, "before").await;
    next_matching(&mut notices, &mut seen, "`before` created", |n| {
        is_container(n, "before", "create")
    })
    .await;

    dockerd.stop().await;
    next_matching(&mut notices, &mut seen, "Lost after dockerd stopped", |n| {
        matches!(n, Notice::Lost { .. })
    })
    .await;

    dockerd.restart().await;
    next_matching(&mut notices, &mut seen, "Resubscribed", |n| {
        *n == Notice::Resubscribed
    })
    .await;
    // The daemon that came back delivers events to the new subscription.
    let client = dockerd.client().await;
    create_managed(&client, &cluster, "after").await;
    next_matching(&mut notices, &mut seen, "`after` created", |n| {
        is_container(n, "after", "create")
    })
    .await;

    // Outages alternate Lost, Resubscribed, and the last one ended.
    let outages: Vec<&Notice> = seen
        .iter()
        .filter(|n| !matches!(n, Notice::Container { .. }))
        .collect();
    assert!(
        outages
            .chunks(2)
            .all(|pair| matches!(pair, [Notice::Lost { .. }, Notice::Resubscribed])),
        "{seen:?}"
    );
    let Some(Notice::Lost { reason }) = outages.first() else {
        panic!("{seen:?}");
    };
    assert!(!reason.is_empty(), "Lost says why");
}

/// Receives notices into `seen` until one satisfies `want`; panics naming `what` on a timeout
/// or when the watch ends.
async fn next_matching(
    notices: &mut Receiver<Notice>,
    seen: &mut Vec<Notice>,
    what: &str,
    want: impl Fn(&Notice) -> bool,
) {
    let deadline = Instant::now() + LIMIT;
    loop {
        match timeout_at(deadline, notices.recv()).await {
            Ok(Some(notice)) => {
                let done = want(&notice);
                seen.push(notice);
                if done {
                    return;
                }
            }
            Ok(None) => panic!("the watch ended while waiting for {what}; seen: {seen:?}"),
            Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}; seen: {seen:?}"),
        }
    }
}

fn is_container(notice: &Notice, name: &str, verb: &str) -> bool {
    matches!(notice, Notice::Container { component, action } if component == name && action == verb)
}

/// A cluster name of this test run: a DNS label.
fn cluster_name() -> String {
    let mut name = format!("ev-{}", slug(&unique_token()));
    name.truncate(40);
    name.trim_end_matches('-').to_string()
}

/// A node running one busybox `sleep` per component.
fn node_spec(components: &[&str]) -> NodeSpec {
    let containers = components
        .iter()
        .map(|c| {
            let spec = ContainerSpec {
                image: ImageRef::parse(BUSYBOX_IMAGE).unwrap(),
                command: Some(vec!["sleep".to_string(), "3600".to_string()]),
                args: Vec::new(),
                env: BTreeMap::new(),
                binds: Vec::new(),
                network_mode: NetworkMode::Host,
                pid_mode: None,
                privileged: false,
                restart_policy: RestartPolicy::No,
                user: None,
                labels: BTreeMap::new(),
                files: BTreeMap::new(),
            };
            (c.to_string(), spec)
        })
        .collect();
    NodeSpec {
        containers,
        ..NodeSpec::default()
    }
}

async fn assert_applied(driver: &Driver, spec: &NodeSpec) {
    let results = driver
        .apply(spec, 1, &Default::default())
        .await
        .expect("observing containers");
    let failed: Vec<_> = results.iter().filter(|r| r.error.is_some()).collect();
    assert!(failed.is_empty(), "{failed:?}");
}

/// Creates (without starting) a container labelled as drover's `component` on node `w1`.
async fn create_managed(client: &Docker, cluster: &str, component: &str) {
    let labels = [
        (LABEL_MANAGED_BY, MANAGED_BY),
        (LABEL_CLUSTER, cluster),
        (LABEL_NODE, "w1"),
        (LABEL_COMPONENT, component),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let body = ContainerCreateBody {
        image: Some(BUSYBOX_IMAGE.to_string()),
        cmd: Some(vec!["true".to_string()]),
        labels: Some(labels),
        ..Default::default()
    };
    let name = container_name(cluster, "w1", component);
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    client
        .create_container(Some(options), body)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
}

/// Runs the docker CLI against the shared engine; panics with its stderr on failure.
fn docker_cli(args: &[&str]) {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes every container of the test's cluster (on the shared engine, or on a private one
/// while it runs), even when the test panics.
struct Cleanup {
    socket: Option<PathBuf>,
    cluster: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let host = self
            .socket
            .as_ref()
            .map(|s| format!("unix://{}", s.display()));
        let docker = |args: &[&str]| {
            let mut command = Command::new("docker");
            if let Some(host) = &host {
                command.args(["-H", host]);
            }
            command.args(args).output()
        };
        let filter = format!("label={LABEL_CLUSTER}={}", self.cluster);
        let Ok(out) = docker(&["ps", "-aq", "--filter", &filter]) else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
    }
}

/// A dockerd of this test's own, with its own containerd, socket, data and exec roots in a short
/// temporary directory (unix socket paths are limited to about 100 bytes). Dropping it stops
/// the daemon (SIGTERM, then SIGKILL), its containerd, unmounts what they left and removes the
/// directory.
struct PrivateDockerd {
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl PrivateDockerd {
    async fn start() -> Result<PrivateDockerd, Unavailable> {
        let dir = tempfile::Builder::new()
            .prefix("dk")
            .tempdir_in("/tmp")
            .map_err(|e| Unavailable::new("private dockerd", format!("temporary dir: {e}")))?;
        let mut dockerd = PrivateDockerd { dir, child: None };
        dockerd.spawn()?;
        if let Err(timed_out) = poll_until(LIMIT, || dockerd.ping()).await {
            return Err(Unavailable::new(
                "private dockerd",
                format!(
                    "no answer on {} after {:?}: {:?}; log:\n{}",
                    dockerd.socket().display(),
                    timed_out.after,
                    timed_out.last_error,
                    dockerd.log_tail()
                ),
            ));
        }
        Ok(dockerd)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn spawn(&mut self) -> Result<(), Unavailable> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.path("log"))
            .map_err(|e| Unavailable::new("private dockerd", format!("log file: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Unavailable::new("private dockerd", format!("log file: {e}")))?;
        let child = tokio::process::Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["--data-root", &self.path("data")])
            .args(["--exec-root", &self.path("exec")])
            .args(["--pidfile", &self.path("docker.pid")])
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .arg("--storage-driver=vfs")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| Unavailable::new("private dockerd", format!("starting dockerd: {e}")))?;
        self.child = Some(child);
        Ok(())
    }

    async fn ping(&self) -> Result<(), String> {
        let client = self.connect()?;
        client.ping().await.map(drop).map_err(|e| e.to_string())
    }

    /// A client for the socket; `Err` while dockerd has not made it yet.
    fn connect(&self) -> Result<Docker, String> {
        let socket = self.socket();
        let socket = socket.to_str().expect("a UTF-8 temporary path");
        Docker::connect_with_unix(socket, 60, API_DEFAULT_VERSION).map_err(|e| e.to_string())
    }

    /// A client of the running daemon, its API version negotiated.
    async fn client(&self) -> Docker {
        let client = self
            .connect()
            .unwrap_or_else(|e| panic!("private dockerd: {e}"));
        match client.negotiate_version().await {
            Ok(client) => client,
            Err(e) => panic!("private dockerd: {e}; log:\n{}", self.log_tail()),
        }
    }

    /// Copies `image` from the shared engine (`docker save | docker load`).
    fn load_image(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = save.stdout.take().unwrap();
        let load = Command::new("docker")
            .args(["-H", &format!("unix://{}", self.socket().display())])
            .arg("load")
            .stdin(stdout)
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success(), "docker save {image}");
        assert!(
            load.status.success(),
            "docker load into the private dockerd: {}",
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// SIGTERM, then waits for dockerd to exit (it stops its containerd first).
    async fn stop(&mut self) {
        let mut child = self.child.take().expect("dockerd is running");
        signal(&child, "TERM");
        match timeout(LIMIT, child.wait()).await {
            Ok(Ok(_status)) => {}
            Ok(Err(e)) => panic!("waiting for dockerd: {e}"),
            Err(_) => {
                self.child = Some(child);
                panic!("dockerd did not exit within {LIMIT:?} of SIGTERM");
            }
        }
    }

    /// Starts dockerd again on the same socket and roots, and waits until it answers.
    async fn restart(&mut self) {
        if let Err(unavailable) = self.spawn() {
            panic!("{unavailable}");
        }
        if let Err(timed_out) = poll_until(LIMIT, || self.ping()).await {
            panic!(
                "the private dockerd did not come back within {:?}: {:?}; log:\n{}",
                timed_out.after,
                timed_out.last_error,
                self.log_tail()
            );
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.path("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            if !exited_within(&mut child, Duration::from_secs(30)) {
                signal(&child, "KILL");
                exited_within(&mut child, Duration::from_secs(10));
            }
        }
        // A containerd outliving its dockerd (killed) still holds the exec root.
        let containerd_pid = self.dir.path().join("exec/containerd/containerd.pid");
        if let Ok(pid) = std::fs::read_to_string(containerd_pid) {
            let pid = pid.trim();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&self.path("exec")) {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        unmount_under(self.dir.path());
    }
}

/// Sends `signal` (a name such as `TERM`) to a child process.
fn signal(child: &tokio::process::Child, signal: &str) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status();
    }
}

/// Polls a child for its exit, for use in `Drop` where nothing can be awaited.
fn exited_within(child: &mut tokio::process::Child, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Lazily unmounts everything mounted under `dir` (dockerd leaves its `netns/default`), deepest
/// first, so the directory can be removed.
fn unmount_under(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}
