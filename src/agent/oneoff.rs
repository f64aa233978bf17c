//! Containers an agent runs for a task rather than for its plan: `etcdutl snapshot restore`, a
//! throwaway etcd a snapshot is verified in. They carry the cluster and node labels (so a node
//! reset finds them) but no component label, so the executor never counts them as its own,
//! and they are removed whatever happens.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt as _;

use super::docker::{Driver, StepError, LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_NODE, MANAGED_BY};
use crate::model::names::ImageRef;

/// The label that marks a task's container.
pub const LABEL_TASK: &str = "drover.dev/task";
/// Most bytes of a container's output kept for an error message.
const MAX_OUTPUT_BYTES: usize = 4096;

/// A container to run for a task.
#[derive(Debug, Clone)]
pub struct OneOff {
    /// What it is for (`restore`, `verify`), in its name and label.
    pub task: &'static str,
    pub image: ImageRef,
    pub entrypoint: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// `host:container` binds, host paths already under the host root.
    pub binds: Vec<String>,
    /// `none`, or `container:<name>` to share another's network.
    pub network: String,
}

/// How a one-off container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub code: i64,
    /// The end of what it wrote to stdout and stderr.
    pub output: String,
}

/// Why a one-off container could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum OneOffError {
    #[error(transparent)]
    Image(#[from] StepError),
    #[error("the Docker engine refused the {task} container")]
    Docker {
        task: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the {task} container did not end within {}", humantime::format_duration(*limit))]
    Timeout { task: &'static str, limit: Duration },
}

impl OneOffError {
    /// True when the image has no such executable (an etcd image without `etcdutl`).
    pub fn is_missing_executable(&self) -> bool {
        match self {
            OneOffError::Docker { source, .. } => {
                let text = source.to_string();
                text.contains("executable file not found") || text.contains("no such file")
            }
            _ => false,
        }
    }
}

/// A started one-off container, removed (forcibly) by `remove` or when dropped.
pub struct Running {
    driver: Driver,
    pub name: String,
    removed: bool,
}

impl Running {
    /// Removes the container, whatever its state.
    pub async fn remove(mut self) {
        remove(&self.driver, &self.name).await;
        self.removed = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (driver, name) = (self.driver.clone(), self.name.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { remove(&driver, &name).await });
        }
    }
}

async fn remove(driver: &Driver, name: &str) {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    if let Err(e) = driver.docker().remove_container(name, Some(options)).await {
        tracing::warn!(container = name, error = %e, "cannot remove a task's container");
    }
}

/// Creates and starts `job`'s container; the image is pulled first if the engine lacks it.
pub async fn start(driver: &Driver, job: &OneOff) -> Result<Running, OneOffError> {
    driver.ensure_image(&job.image).await?;
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).map_err(|e| OneOffError::Docker {
        task: job.task,
        source: bollard::errors::Error::IOError {
            err: std::io::Error::other(e.to_string()),
        },
    })?;
    let name = format!(
        "drover-{}-{}-{}-{}",
        driver.cluster(),
        driver.node(),
        job.task,
        hex::encode(random)
    );
    let labels = HashMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_CLUSTER.to_string(), driver.cluster().to_string()),
        (LABEL_NODE.to_string(), driver.node().to_string()),
        (LABEL_TASK.to_string(), job.task.to_string()),
    ]);
    let body = ContainerCreateBody {
        image: Some(job.image.to_string()),
        entrypoint: Some(job.entrypoint.clone()),
        cmd: Some(job.args.clone()),
        env: Some(job.env.clone()),
        labels: Some(labels),
        host_config: Some(HostConfig {
            binds: Some(job.binds.clone()),
            network_mode: Some(job.network.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let docker_error = |source| OneOffError::Docker {
        task: job.task,
        source,
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    driver
        .docker()
        .create_container(Some(options), body)
        .await
        .map_err(docker_error)?;
    let running = Running {
        driver: driver.clone(),
        name: name.clone(),
        removed: false,
    };
    driver
        .docker()
        .start_container(&name, None)
        .await
        .map_err(docker_error)?;
    Ok(running)
}

/// Runs `job` to its end within `limit`, and removes its container.
pub async fn run(driver: &Driver, job: &OneOff, limit: Duration) -> Result<Ended, OneOffError> {
    let running = start(driver, job).await?;
    let ended = tokio::time::timeout(limit, wait(driver, &running.name)).await;
    let output = output(driver, &running.name).await;
    running.remove().await;
    match ended {
        Err(_) => Err(OneOffError::Timeout {
            task: job.task,
            limit,
        }),
        Ok(Err(source)) => Err(OneOffError::Docker {
            task: job.task,
            source,
        }),
        Ok(Ok(code)) => Ok(Ended { code, output }),
    }
}

/// The container's exit code, once it stopped.
async fn wait(driver: &Driver, name: &str) -> Result<i64, bollard::errors::Error> {
    let mut waiting = driver.docker().wait_container(name, None);
    match waiting.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(e),
        None => Ok(-1),
    }
}

/// The end of what the container wrote, at most `MAX_OUTPUT_BYTES`.
pub async fn output(driver: &Driver, name: &str) -> String {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("40")
        .build();
    let mut logs = driver.docker().logs(name, Some(options));
    let mut text = String::new();
    while let Some(Ok(piece)) = logs.next().await {
        text.push_str(&String::from_utf8_lossy(&piece.into_bytes()));
    }
    let cut = text.len().saturating_sub(MAX_OUTPUT_BYTES);
    let start = (cut..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].trim().to_string()
}
