//! Applies a node's plan with the Docker Engine API: every container the plan lists runs with
//! the plan's spec, nothing else that drover manages does, and the files it needs are in place.
//! Containers carry labels naming their cluster, node, component, spec hash and plan generation;
//! the spec hash (over `nodeplan::SPEC_FIELDS`) decides a recreate, so an agent that
//! restarts reconciles from what runs instead of redoing everything.
//!
//! An image the engine does not have is pulled before its container is created or replaced,
//! so a pull that fails leaves a running container as it is. Host paths (bind sources and
//! files) live under a host root: `/` on a real node, a directory of its own for each
//! simulated node sharing one machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy as DockerRestart};
use bollard::models::{ContainerSummaryStateEnum, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::registry::{AuthError, RegistryAuth};
use crate::model::names::ImageRef;
use crate::nodeplan::{
    container_name, etcd_pki_dir, FileSpec, NetworkMode, NodeSpec, PidMode, RestartPolicy,
    ETCD_COMPONENT,
};
use crate::state::write_atomically;

pub const LABEL_MANAGED_BY: &str = "drover.dev/managed-by";
pub const LABEL_CLUSTER: &str = "drover.dev/cluster";
pub const LABEL_NODE: &str = "drover.dev/node";
pub const LABEL_COMPONENT: &str = "drover.dev/component";
pub const LABEL_SPEC_HASH: &str = "drover.dev/spec-hash";
pub const LABEL_GENERATION: &str = "drover.dev/generation";
/// The value of [`LABEL_MANAGED_BY`] on every container drover manages.
pub const MANAGED_BY: &str = "drover";
/// A replacement is created under its container's name with this suffix while the container
/// it replaces is removed, then renamed; one left by a crash in between is removed.
const NEXT_SUFFIX: &str = ".next";

/// One managed container as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub id: String,
    pub spec_hash: String,
    pub running: bool,
}

/// What applying did for one container or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Recreated,
    Started,
    Removed,
    Unchanged,
    FileWritten,
    FileRemoved,
}

/// The result of one step: what it was about, what it did, or why it failed (Docker's reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// A component name, or a file's path.
    pub subject: String,
    pub action: Action,
    pub error: Option<String>,
}

/// Why one step failed. Its text (with its causes) is what the step reports: Docker's or the
/// registry's reason.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("inspecting image {image}")]
    InspectImage {
        image: ImageRef,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("pulling {image}")]
    PullCredentials {
        image: ImageRef,
        #[source]
        source: AuthError,
    },
    #[error("pulling {image}: {reason}")]
    Pull { image: ImageRef, reason: String },
    #[error("pulling {image}: abandoned, the agent is stopping")]
    PullAbandoned { image: ImageRef },
    #[error(
        "pulling {image} took longer than {}",
        humantime::format_duration(PULL_TIMEOUT)
    )]
    PullTimeout { image: ImageRef },
    #[error(transparent)]
    Docker(#[from] bollard::errors::Error),
    #[error(transparent)]
    File(#[from] std::io::Error),
    #[error("a blocking file task failed")]
    FileTask(#[source] tokio::task::JoinError),
}

/// Why Docker could not be asked what runs.
#[derive(Debug, thiserror::Error)]
#[error("listing containers from Docker")]
pub struct ObserveError(#[source] bollard::errors::Error);

/// How long one image pull may take before its step fails (and is retried with backoff).
pub const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Applies one node's plan.
#[derive(Clone)]
pub struct Driver {
    docker: Docker,
    cluster: String,
    node: String,
    host_root: PathBuf,
    stop: CancellationToken,
    auth: Option<RegistryAuth>,
}

impl Driver {
    pub fn new(docker: Docker, cluster: &str, node: &str, host_root: PathBuf) -> Driver {
        Driver {
            docker,
            cluster: cluster.to_string(),
            node: node.to_string(),
            host_root,
            stop: CancellationToken::new(),
            auth: None,
        }
    }

    /// Pulls with the credentials `auth` has for each image's registry.
    pub fn with_registry_auth(mut self, auth: RegistryAuth) -> Driver {
        self.auth = Some(auth);
        self
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Makes `stop` end an apply early: a pull in progress is abandoned (nothing was removed
    /// for it yet), and no further step starts. What is left undone, the next apply does.
    pub fn stopped_by(mut self, stop: CancellationToken) -> Driver {
        self.stop = stop;
        self
    }

    /// The containers drover manages on this node, by component.
    pub async fn observe(&self) -> Result<BTreeMap<String, Running>, ObserveError> {
        Ok(self.list().await?.0)
    }

    /// What `observe` says, and the ids of replacements a crash left under their temporary
    /// name (`NEXT_SUFFIX`).
    async fn list(&self) -> Result<(BTreeMap<String, Running>, Vec<String>), ObserveError> {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED_BY}={MANAGED_BY}"),
                format!("{LABEL_CLUSTER}={}", self.cluster),
                format!("{LABEL_NODE}={}", self.node),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(ObserveError)?;
        let mut out = BTreeMap::new();
        let mut leftovers = Vec::new();
        for c in list {
            let temporary = (c.names.iter().flatten()).any(|n| n.ends_with(NEXT_SUFFIX));
            if temporary {
                leftovers.extend(c.id);
                continue;
            }
            let labels = c.labels.unwrap_or_default();
            let Some(component) = labels.get(LABEL_COMPONENT) else {
                continue;
            };
            let running = Running {
                id: c.id.unwrap_or_default(),
                spec_hash: labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
                running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
            };
            out.insert(component.clone(), running);
        }
        Ok((out, leftovers))
    }

    /// Takes the node to `spec`: files first, then containers no longer planned are removed,
    /// then the `stale` files (written for an earlier plan, not in this one), then each planned
    /// container is created, recreated or started as needed. A failed step is reported and the
    /// others still run.
    pub async fn apply(
        &self,
        spec: &NodeSpec,
        generation: u64,
        stale: &BTreeSet<String>,
    ) -> Result<Vec<StepResult>, ObserveError> {
        let mut results = Vec::new();
        for (path, file) in spec.host_files(&self.cluster) {
            if let Some(r) = self.write_file(&path, file).await {
                results.push(r);
            }
        }
        let (running, leftovers) = self.list().await?;
        for id in &leftovers {
            if let Err(e) = self.remove(id).await {
                tracing::warn!(error = %crate::error_chain(&e), "cannot remove a replacement left by a crash");
            }
        }
        for (component, have) in &running {
            if !spec.containers.contains_key(component) {
                let error = self.remove(&have.id).await.err();
                results.push(step(component, Action::Removed, error));
            }
        }
        for path in stale {
            if let Some(r) = self.remove_file(path).await {
                results.push(r);
            }
        }
        for (component, want) in &spec.containers {
            if self.stop.is_cancelled() {
                break;
            }
            let hash = spec
                .container_hash(component)
                .unwrap_or_else(|| want.hash());
            let result = match running.get(component) {
                None => {
                    let error = match self.ensure_image(&want.image).await {
                        Ok(()) => self.create(spec, component, &hash, generation).await.err(),
                        Err(e) => Some(e),
                    };
                    step(component, Action::Created, error)
                }
                Some(have) if have.spec_hash != hash => {
                    // The image first: a pull that fails leaves the old container running.
                    let error = match self.ensure_image(&want.image).await {
                        Err(e) => Some(e),
                        Ok(()) => (self.replace(spec, component, &hash, generation, &have.id))
                            .await
                            .err(),
                    };
                    step(component, Action::Recreated, error)
                }
                Some(have) if !have.running => {
                    let started = self.docker.start_container(&have.id, None).await;
                    step(
                        component,
                        Action::Started,
                        started.err().map(StepError::from),
                    )
                }
                Some(_) => step(component, Action::Unchanged, None),
            };
            results.push(result);
        }
        Ok(results)
    }

    /// Creates and starts one container of `plan`.
    async fn create(
        &self,
        plan: &NodeSpec,
        component: &str,
        hash: &str,
        generation: u64,
    ) -> Result<(), StepError> {
        let name = container_name(&self.cluster, &self.node, component);
        self.create_as(plan, component, hash, generation, &name)
            .await?;
        Ok(self.docker.start_container(&name, None).await?)
    }

    /// Replaces container `old` with one of `plan`: the new one is created under a temporary
    /// name while the old one is removed (the engine does both at once), then takes its name
    /// and starts.
    async fn replace(
        &self,
        plan: &NodeSpec,
        component: &str,
        hash: &str,
        generation: u64,
        old: &str,
    ) -> Result<(), StepError> {
        let name = container_name(&self.cluster, &self.node, component);
        let next = format!("{name}{NEXT_SUFFIX}");
        let (removed, created) = tokio::join!(
            self.remove(old),
            self.create_as(plan, component, hash, generation, &next)
        );
        if let Err(e) = removed {
            if created.is_ok() {
                let _ = self.remove(&next).await;
            }
            return Err(e);
        }
        created?;
        let rename = RenameContainerOptionsBuilder::default().name(&name).build();
        self.docker.rename_container(&next, rename).await?;
        Ok(self.docker.start_container(&name, None).await?)
    }

    /// Creates (does not start) one container of `plan` named `name`. The etcd member gets its
    /// bootstrap flags (outside its spec hash: etcd ignores them once its data directory
    /// holds a member).
    async fn create_as(
        &self,
        plan: &NodeSpec,
        component: &str,
        hash: &str,
        generation: u64,
        name: &str,
    ) -> Result<(), StepError> {
        let spec = &plan.containers[component];
        let mut args = spec.args.clone();
        if let (ETCD_COMPONENT, Some(bootstrap)) = (component, &plan.etcd_bootstrap) {
            args.extend(bootstrap.args());
        }
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_CLUSTER.to_string(), self.cluster.clone()),
            (LABEL_NODE.to_string(), self.node.clone()),
            (LABEL_COMPONENT.to_string(), component.to_string()),
            (LABEL_SPEC_HASH.to_string(), hash.to_string()),
            (LABEL_GENERATION.to_string(), generation.to_string()),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.to_string()),
            entrypoint: spec.command.clone(),
            cmd: Some(args),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: spec.user.clone(),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(spec.binds.iter().map(|b| self.host_bind(b)).collect()),
                network_mode: Some(network_mode(spec.network_mode).to_string()),
                pid_mode: spec.pid_mode.map(|PidMode::Host| "host".to_string()),
                privileged: Some(spec.privileged),
                restart_policy: Some(DockerRestart {
                    name: Some(restart_policy(spec.restart_policy)),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker.create_container(Some(options), body).await?;
        Ok(())
    }

    /// Pulls `image` unless the engine has it already, within `PULL_TIMEOUT`. The error is the
    /// engine's or the registry's reason.
    pub(super) async fn ensure_image(&self, image: &ImageRef) -> Result<(), StepError> {
        match self.docker.inspect_image(image.as_str()).await {
            Ok(_) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(source) => {
                let image = image.clone();
                return Err(StepError::InspectImage { image, source });
            }
        }
        let credentials = match self.auth.clone() {
            // The credentials file is read on a blocking thread, never on the async workers.
            Some(auth) => {
                let of = image.clone();
                tokio::task::spawn_blocking(move || auth.for_image(&of))
                    .await
                    .map_err(StepError::FileTask)?
                    .map_err(|source| StepError::PullCredentials {
                        image: image.clone(),
                        source,
                    })?
            }
            None => None,
        };
        let (from_image, tag) = image.pull_parts();
        let options = CreateImageOptions {
            from_image: Some(from_image.to_string()),
            tag: tag.map(str::to_string),
            ..Default::default()
        };
        let pull = async {
            let credentials = credentials.as_ref().map(|c| c.docker());
            let mut progress = self.docker.create_image(Some(options), None, credentials);
            while let Some(update) = progress.next().await {
                let update = update.map_err(|e| e.to_string())?;
                if let Some(detail) = update.error_detail.and_then(|d| d.message) {
                    return Err(detail);
                }
            }
            Ok(())
        };
        tracing::info!(%image, "pulling image");
        let image = image.clone();
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(PULL_TIMEOUT, pull) => outcome,
            () = self.stop.cancelled() => return Err(StepError::PullAbandoned { image }),
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StepError::Pull { image, reason }),
            Err(_) => Err(StepError::PullTimeout { image }),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), StepError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        Ok(self.docker.remove_container(id, Some(options)).await?)
    }

    /// A bind whose host side lives under the host root.
    fn host_bind(&self, bind: &str) -> String {
        match bind.split_once(':') {
            Some((host, rest)) => format!("{}:{rest}", self.host_path(host).display()),
            None => bind.to_string(),
        }
    }

    /// Where the node's etcd certificates are written.
    pub fn etcd_pki_path(&self) -> PathBuf {
        self.host_path(&etcd_pki_dir(&self.cluster))
    }

    /// Where `path` (absolute, as plans name host paths) is under the host root.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.host_root.join(path.trim_start_matches('/'))
    }

    /// Removes a file an earlier plan wrote, on a blocking thread.
    async fn remove_file(&self, path: &str) -> Option<StepResult> {
        let target = self.host_path(path);
        let removed = tokio::task::spawn_blocking(move || remove_if_there(&target)).await;
        match removed {
            Ok(Ok(false)) => None,
            Ok(Ok(true)) => Some(step(path, Action::FileRemoved, None)),
            Ok(Err(e)) => Some(step(path, Action::FileRemoved, Some(e.into()))),
            Err(e) => Some(step(
                path,
                Action::FileRemoved,
                Some(StepError::FileTask(e)),
            )),
        }
    }

    /// Writes a file atomically with its mode, unless it already holds the planned content.
    /// The file system is touched on a blocking thread, never on the async workers.
    async fn write_file(&self, path: &str, file: &FileSpec) -> Option<StepResult> {
        let target = self.host_path(path);
        let file = file.clone();
        let written = tokio::task::spawn_blocking(move || write_if_changed(&target, &file)).await;
        match written {
            Ok(Ok(false)) => None,
            Ok(Ok(true)) => Some(step(path, Action::FileWritten, None)),
            Ok(Err(e)) => Some(step(path, Action::FileWritten, Some(e.into()))),
            Err(e) => Some(step(
                path,
                Action::FileWritten,
                Some(StepError::FileTask(e)),
            )),
        }
    }
}

/// Removes `target` if it is there; whether it removed it.
fn remove_if_there(target: &std::path::Path) -> std::io::Result<bool> {
    match std::fs::remove_file(target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `file` at `target` unless it holds that content with that mode; whether it wrote.
fn write_if_changed(target: &std::path::Path, file: &FileSpec) -> std::io::Result<bool> {
    let current = std::fs::read(target).ok();
    let mode_ok = std::fs::metadata(target)
        .map(|m| m.permissions().mode() & 0o7777 == file.mode.bits())
        .unwrap_or(false);
    if current.as_deref() == Some(file.content.as_bytes()) && mode_ok {
        return Ok(false);
    }
    write_atomically(target, file.content.as_bytes(), file.mode.bits())?;
    Ok(true)
}

/// A step's result; its error as the report's text, with its causes.
fn step(subject: &str, action: Action, error: Option<StepError>) -> StepResult {
    StepResult {
        subject: subject.to_string(),
        action,
        error: error.map(|e| crate::error_chain(&e)),
    }
}

fn network_mode(mode: NetworkMode) -> &'static str {
    match mode {
        NetworkMode::Host => "host",
        NetworkMode::None => "none",
        NetworkMode::Bridge => "bridge",
    }
}

fn restart_policy(policy: RestartPolicy) -> RestartPolicyNameEnum {
    match policy {
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        RestartPolicy::No => RestartPolicyNameEnum::NO,
    }
}
