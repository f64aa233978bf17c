//! The real Docker engine through bollard, and a container guard that always
//! cleans up.
//!
//! Debian's engine (20.10) speaks API 1.41, older than bollard's default, so
//! [`connect`] negotiates the version. Test containers use host networking:
//! each listens on its own loopback address from [`super::net`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptions, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures::StreamExt;
use tokio_util::task::AbortOnDropHandle;

use super::wait::poll_until;
use super::{slug, unique_token, Unavailable};

/// Imported by `scripts/test` from Debian's busybox-static.
pub const BUSYBOX_IMAGE: &str = "drover-test/busybox:1";
/// Imported by `scripts/test` from Debian's etcd-server.
pub const ETCD_IMAGE: &str = "drover-test/etcd:3.4.23";

/// Every test container carries this label; `scripts/test` sweeps leftovers
/// whose test process (label `drover-test.pid`) is gone.
pub const LABEL: &str = "drover-test";
const PID_LABEL: &str = "drover-test.pid";

const SOCKET: &str = "/var/run/docker.sock";
/// bollard's per-request timeout, in seconds.
const REQUEST_TIMEOUT_SECS: u64 = 60;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the local engine, API version negotiated. `Unavailable` when
/// there is no socket or no engine answering on it.
pub async fn connect() -> Result<Docker, Unavailable> {
    let docker = Docker::connect_with_unix(SOCKET, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        .map_err(|e| Unavailable::new("docker", format!("cannot use {SOCKET}: {e}")))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(Unavailable::new(
            "docker",
            format!("no engine answering on {SOCKET}: {e}"),
        )),
        Err(_) => Err(Unavailable::new(
            "docker",
            format!("engine on {SOCKET} did not answer /version within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

/// `Unavailable` when `image` is not in the engine (`scripts/test` imports
/// the test images).
pub async fn require_image(docker: &Docker, image: &str) -> Result<(), Unavailable> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Err(Unavailable::new(
            "docker image",
            format!("{image} is not imported"),
        )),
        Err(e) => panic!("inspecting image {image} failed: {e}"),
    }
}

/// What to run: an image and its command, on the host network.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub image: String,
    pub cmd: Vec<String>,
    /// Paths mounted as tmpfs, e.g. a data directory that should not outlive
    /// the container or touch the image's layer.
    pub tmpfs: Vec<String>,
    /// Host directories mounted read-only: `(host, container)`.
    pub binds: Vec<(String, String)>,
}

impl ContainerSpec {
    pub fn new(image: &str, cmd: &[&str]) -> Self {
        Self {
            image: image.to_owned(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            tmpfs: Vec::new(),
            binds: Vec::new(),
        }
    }

    /// Mounts the host directory `host` read-only at `container`.
    pub fn bind_ro(mut self, host: &std::path::Path, container: &str) -> Self {
        self.binds
            .push((host.display().to_string(), container.to_owned()));
        self
    }

    pub fn tmpfs(mut self, path: &str) -> Self {
        self.tmpfs.push(path.to_owned());
        self
    }
}

/// A running container, force-removed when dropped, also when the test
/// panics. Removal runs on its own thread with its own runtime, so it works
/// from `Drop` in any context.
#[derive(Debug)]
pub struct Container {
    docker: Docker,
    name: String,
}

impl Container {
    /// Creates and starts a container named `drover-test-<pid>-<n>-<time>-<test>`.
    /// `Unavailable` if the image is missing; any other engine error panics.
    pub async fn start(
        docker: &Docker,
        test: &str,
        spec: ContainerSpec,
    ) -> Result<Container, Unavailable> {
        require_image(docker, &spec.image).await?;
        let mut name = format!("drover-test-{}-{}", unique_token(), slug(test));
        name.truncate(120);
        let labels = HashMap::from([
            (LABEL.to_owned(), "1".to_owned()),
            (PID_LABEL.to_owned(), std::process::id().to_string()),
        ]);
        let tmpfs = spec
            .tmpfs
            .iter()
            .map(|path| (path.clone(), String::new()))
            .collect::<HashMap<_, _>>();
        let binds = spec
            .binds
            .iter()
            .map(|(host, container)| format!("{host}:{container}:ro"))
            .collect::<Vec<_>>();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("host".to_owned()),
                tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
                binds: (!binds.is_empty()).then_some(binds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        docker
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|e| panic!("creating container {name} from {spec:?} failed: {e}"));
        // From here on the guard owns the container: a failed start still removes it.
        let container = Container {
            docker: docker.clone(),
            name,
        };
        if let Err(e) = docker.start_container(&container.name, None).await {
            panic!(
                "starting container {} failed: {e}\nlogs:\n{}",
                container.name,
                container.logs().await
            );
        }
        Ok(container)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the container's process is still running.
    pub async fn is_running(&self) -> bool {
        match self.docker.inspect_container(&self.name, None).await {
            Ok(info) => info.state.and_then(|s| s.running).unwrap_or(false),
            Err(e) => panic!("inspecting container {} failed: {e}", self.name),
        }
    }

    /// Polls `probe` until it succeeds, for at most `limit`, like
    /// [`super::wait::eventually`]; `what` names the awaited condition. Fails
    /// at once if the container exits meanwhile, and with its logs either way.
    pub async fn eventually<T, E, F, Fut>(&self, what: &str, limit: Duration, mut probe: F) -> T
    where
        E: Debug,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let outcome = poll_until(limit, || {
            let attempt = probe();
            async move {
                let error = match attempt.await {
                    Ok(value) => return Ok(value),
                    Err(error) => error,
                };
                if !self.is_running().await {
                    panic!(
                        "container {} exited while waiting for {what}; last error: {error:?}; logs:\n{}",
                        self.name,
                        self.logs().await
                    );
                }
                Err(error)
            }
        })
        .await;
        match outcome {
            Ok(value) => value,
            Err(timed_out) => panic!(
                "timed out after {:.1?} waiting for {what} (container {}); last error: {:?}; logs:\n{}",
                timed_out.after,
                self.name,
                timed_out.last_error,
                self.logs().await
            ),
        }
    }

    /// Stdout and stderr so far, for failure messages. Never panics.
    pub async fn logs(&self) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("100")
            .build();
        let mut stream = self.docker.logs(&self.name, Some(options));
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => out.push_str(&chunk.to_string()),
                Err(e) => {
                    out.push_str(&format!("<reading logs failed: {e}>"));
                    break;
                }
            }
        }
        out
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let name = self.name.clone();
        let removal = std::thread::spawn(move || remove_blocking(&name)).join();
        match removal {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!(
                "warning: could not remove test container {}: {e} \
                 (the next scripts/test run sweeps it)",
                self.name
            ),
            Err(_) => eprintln!("warning: removing test container {} panicked", self.name),
        }
    }
}

/// Force-removes a container (and its anonymous volumes) from a fresh client
/// on a private runtime: the test's runtime may be the one running `Drop`.
fn remove_blocking(name: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building a runtime: {e}"))?;
    runtime.block_on(async {
        let docker = connect().await.map_err(|e| e.to_string())?;
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// The labels every test container carries, as a YAML flow map for cluster files:
/// `scripts/test` sweeps containers whose test process is gone.
pub fn test_labels() -> String {
    format!(
        "{{drover-test: '1', drover-test.pid: '{}'}}",
        std::process::id()
    )
}

/// A container event, as the engine stamped it.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// `die`, `start`, ...
    pub action: String,
    pub id: String,
    pub labels: HashMap<String, String>,
    /// The engine's `timeNano`.
    pub nanos: i64,
}

/// The engine's container events matching `filters` (Docker's events filters: `label`,
/// `event`, ...), recorded from the moment this is made until it drops.
pub struct EventLog {
    seen: Arc<Mutex<Vec<ContainerEvent>>>,
    _task: AbortOnDropHandle<()>,
}

impl EventLog {
    pub fn record(docker: &Docker, filters: &[(&str, &str)]) -> EventLog {
        // Subscribing is asynchronous; `since` makes the engine replay what happens meanwhile.
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let mut by_kind: HashMap<String, Vec<String>> =
            HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        for (kind, value) in filters {
            by_kind
                .entry(kind.to_string())
                .or_default()
                .push(value.to_string());
        }
        let options = EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
            filters: Some(by_kind),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (docker, into) = (docker.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(docker.events(Some(options)));
            while let Some(event) = stream.next().await {
                let event = event.unwrap_or_else(|e| panic!("the engine's event stream: {e}"));
                let actor = event.actor.unwrap_or_default();
                into.lock().unwrap().push(ContainerEvent {
                    action: event.action.unwrap_or_default(),
                    id: actor.id.unwrap_or_default(),
                    labels: actor.attributes.unwrap_or_default(),
                    nanos: event.time_nano.unwrap_or_default(),
                });
            }
        });
        EventLog {
            seen,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// Waits until the events so far satisfy `done`, for at most `limit`; returns them.
    pub async fn until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[ContainerEvent]) -> bool,
    ) -> Vec<ContainerEvent> {
        let outcome = poll_until(limit, || async {
            let seen = self.seen.lock().unwrap().clone();
            if done(&seen) {
                Ok(seen)
            } else {
                Err(seen)
            }
        })
        .await;
        outcome.unwrap_or_else(|timed_out| {
            panic!(
                "timed out after {:.1?} waiting for {what}; events: {:#?}",
                timed_out.after, timed_out.last_error
            )
        })
    }
}
