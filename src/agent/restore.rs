//! Snapshots restored on a node, with the cluster's own etcd image:
//!
//! - `fetch` (`EtcdTask::Fetch`): the snapshot fetched from the daemon into
//!   `<cluster dir>/restore-<request>/snapshot.db` (0600), checked, while etcd still runs.
//! - `restore` (`EtcdTask::Restore`): that file restored beside it into `data/`, then swapped
//!   in for the member's data directory, which is kept as `etcd.replaced-<request>`. Run
//!   again for the same request (the daemon restarted before it recorded the answer), it
//!   replaces its own earlier result and keeps the original.
//! - `verify` (`EtcdTask::Verify`): the snapshot restored into a scratch directory, a
//!   throwaway etcd started on it with no network, and its revision and key count read with
//!   `etcdctl` in a second container sharing that etcd's network namespace. Nothing is left.
//!
//! etcd 3.5 and later restore with `etcdutl`; 3.4 images have only `etcdctl snapshot restore`,
//! which is used when the image has no `etcdutl`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::docker::Driver;
use super::oneoff::{self, OneOff, OneOffError};
use super::session::Dial;
use super::transfer::{self, TransferError};
use crate::model::names::ImageRef;
use crate::pki::Identity;
use crate::protocol::{short_text, EtcdTaskOutcome};

/// The longest a restore of the snapshot into a directory may take.
const RESTORE_LIMIT: Duration = Duration::from_secs(30 * 60);
/// The longest the throwaway etcd may take to answer.
const VERIFY_START_LIMIT: Duration = Duration::from_secs(120);
/// How long one `etcdctl` query of the throwaway etcd may take.
const QUERY_LIMIT: Duration = Duration::from_secs(30);
/// The throwaway etcd's peer URL, inside its own network namespace.
const SCRATCH_PEER: &str = "http://127.0.0.1:2380";
const SCRATCH_CLIENT: &str = "http://127.0.0.1:2379";

/// Why a restore or a verification failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("etcd still runs on this node ({0}); the daemon stops every member before a restore")]
    EtcdRunning(String),
    #[error("cannot ask Docker what runs")]
    Observe(#[from] super::docker::ObserveError),
    #[error("`{0}` is not an image reference")]
    Image(String),
    #[error("cannot prepare {path}")]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch the snapshot")]
    Fetch(#[from] TransferError),
    #[error("no snapshot was fetched for this restore ({0} is missing)")]
    NotFetched(PathBuf),
    #[error(transparent)]
    Container(#[from] OneOffError),
    #[error("`{command}` failed with exit code {code}: {output}")]
    Failed {
        command: String,
        code: i64,
        output: String,
    },
    #[error(
        "the throwaway etcd did not answer within {}: {last}",
        humantime::format_duration(VERIFY_START_LIMIT)
    )]
    NeverServed { last: String },
    #[error("the throwaway etcd's answer is not what etcdctl prints: {0}")]
    Answer(String),
    #[error("a blocking file task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// What a restore of a member needs.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub initial_cluster: Vec<String>,
    pub peer_url: String,
    pub token: String,
}

/// Where the snapshot for `request_id` is fetched to and restored beside, and the member's
/// data directory.
fn restore_dirs(driver: &Driver, request_id: &str) -> (PathBuf, PathBuf, PathBuf) {
    let data = driver.host_path(&crate::nodeplan::etcd_data_dir(driver.cluster()));
    let parent = data.parent().unwrap_or(Path::new("/")).to_path_buf();
    let scratch = parent.join(format!("restore-{request_id}"));
    let replaced = parent.join(format!("etcd.replaced-{request_id}"));
    (scratch, data, replaced)
}

/// Fetches the snapshot of `transfer` for the restore `request_id` (see the module).
pub async fn fetch(
    driver: &Driver,
    dial: &Dial,
    identity: Identity,
    transfer_id: &str,
    request_id: &str,
) -> EtcdTaskOutcome {
    let (scratch, _, _) = restore_dirs(driver, request_id);
    let done = async {
        fresh_dir(&scratch).await?;
        let file = scratch.join("snapshot.db");
        Ok::<_, RestoreError>(transfer::fetch_to_file(dial, identity, transfer_id, &file).await?)
    };
    match done.await {
        Ok(fetched) => EtcdTaskOutcome::Fetched {
            bytes: fetched.bytes,
        },
        Err(e) => failed(&e),
    }
}

/// Restores the snapshot fetched for `request_id` into the node's etcd data directory (see
/// the module).
pub async fn restore(
    driver: &Driver,
    image: &str,
    member: &Member,
    request_id: &str,
) -> EtcdTaskOutcome {
    let done = async {
        let running = driver.observe().await?;
        if let Some(etcd) = running.get(crate::nodeplan::ETCD_COMPONENT) {
            return Err(RestoreError::EtcdRunning(
                etcd.id.chars().take(12).collect(),
            ));
        }
        let image = parse_image(image)?;
        let (scratch, data, replaced) = restore_dirs(driver, request_id);
        let snapshot = scratch.join("snapshot.db");
        if !tokio::fs::try_exists(&snapshot).await.unwrap_or(false) {
            return Err(RestoreError::NotFetched(snapshot));
        }
        let _ = remove_dir(scratch.join("data")).await;
        let args = restore_args(
            &member.name,
            &member.initial_cluster,
            &member.peer_url,
            &member.token,
        );
        restore_into(driver, &image, &scratch, args).await?;
        swap(scratch, data, replaced).await
    };
    match done.await {
        Ok(()) => EtcdTaskOutcome::Restored,
        Err(e) => failed(&e),
    }
}

/// Verifies the snapshot of `transfer` in a throwaway etcd (see the module).
pub async fn verify(
    driver: &Driver,
    dial: &Dial,
    identity: Identity,
    transfer_id: &str,
    image: &str,
) -> EtcdTaskOutcome {
    let mut random = [0u8; 6];
    let _ = getrandom::fill(&mut random);
    let base = driver.host_path(&crate::nodeplan::etcd_data_dir(driver.cluster()));
    let scratch = base
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("verify-{}", hex::encode(random)));
    let done = async {
        let image = parse_image(image)?;
        fresh_dir(&scratch).await?;
        let bytes =
            transfer::fetch_to_file(dial, identity, transfer_id, &scratch.join("snapshot.db"))
                .await?
                .bytes;
        let initial = vec![format!("verify={SCRATCH_PEER}")];
        let args = restore_args("verify", &initial, SCRATCH_PEER, "verify");
        restore_into(driver, &image, &scratch, args).await?;
        let (revision, keys) = count_keys(driver, &image, &scratch).await?;
        Ok::<_, RestoreError>((bytes, revision, keys))
    };
    let outcome = match done.await {
        Ok((bytes, revision, keys)) => EtcdTaskOutcome::Verified {
            bytes,
            revision,
            keys,
        },
        Err(e) => failed(&e),
    };
    let _ = remove_dir(scratch).await;
    outcome
}

fn failed(e: &RestoreError) -> EtcdTaskOutcome {
    EtcdTaskOutcome::Failed {
        error: short_text(&crate::error_chain(e)),
    }
}

fn parse_image(image: &str) -> Result<ImageRef, RestoreError> {
    ImageRef::parse(image).ok_or_else(|| RestoreError::Image(short_text(image)))
}

/// `snapshot restore` arguments, the data directory `/restore/data`.
fn restore_args(name: &str, initial: &[String], peer: &str, token: &str) -> Vec<String> {
    vec![
        "snapshot".into(),
        "restore".into(),
        "/restore/snapshot.db".into(),
        format!("--name={name}"),
        format!("--initial-cluster={}", initial.join(",")),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster-token={token}"),
        "--data-dir=/restore/data".into(),
    ]
}

/// Runs `snapshot restore` in a container of `image`, `scratch` mounted at `/restore`.
async fn restore_into(
    driver: &Driver,
    image: &ImageRef,
    scratch: &Path,
    args: Vec<String>,
) -> Result<(), RestoreError> {
    let mut job = OneOff {
        task: "restore",
        image: image.clone(),
        entrypoint: vec!["etcdutl".into()],
        args,
        env: Vec::new(),
        binds: vec![format!("{}:/restore", scratch.display())],
        network: "none".into(),
    };
    let ended = match oneoff::run(driver, &job, RESTORE_LIMIT).await {
        Err(e) if e.is_missing_executable() => {
            job.entrypoint = vec!["etcdctl".into()];
            job.env = vec!["ETCDCTL_API=3".into()];
            oneoff::run(driver, &job, RESTORE_LIMIT).await?
        }
        other => other?,
    };
    if ended.code != 0 {
        return Err(RestoreError::Failed {
            command: format!("{} snapshot restore", job.entrypoint[0]),
            code: ended.code,
            output: ended.output,
        });
    }
    Ok(())
}

/// Starts etcd on `scratch/data` with no network and asks it, from a container in its network
/// namespace, for its revision and number of keys.
async fn count_keys(
    driver: &Driver,
    image: &ImageRef,
    scratch: &Path,
) -> Result<(i64, i64), RestoreError> {
    let etcd = OneOff {
        task: "verify",
        image: image.clone(),
        entrypoint: vec!["etcd".into()],
        args: vec![
            "--name=verify".into(),
            "--data-dir=/restore/data".into(),
            format!("--listen-client-urls={SCRATCH_CLIENT}"),
            format!("--advertise-client-urls={SCRATCH_CLIENT}"),
            format!("--listen-peer-urls={SCRATCH_PEER}"),
            format!("--initial-advertise-peer-urls={SCRATCH_PEER}"),
            format!("--initial-cluster=verify={SCRATCH_PEER}"),
        ],
        env: Vec::new(),
        binds: vec![format!("{}:/restore", scratch.display())],
        network: "none".into(),
    };
    let running = oneoff::start(driver, &etcd).await?;
    let query = OneOff {
        task: "verify-query",
        image: image.clone(),
        entrypoint: vec!["etcdctl".into()],
        args: vec![
            format!("--endpoints={SCRATCH_CLIENT}"),
            "--command-timeout=10s".into(),
            // etcd answers a range's total count whatever its limit; 3.4 has no --count-only.
            "get".into(),
            String::new(),
            "--from-key".into(),
            "--keys-only".into(),
            "--limit=1".into(),
            "--write-out=json".into(),
        ],
        env: vec!["ETCDCTL_API=3".into()],
        binds: Vec::new(),
        network: format!("container:{}", running.name),
    };
    let deadline = tokio::time::Instant::now() + VERIFY_START_LIMIT;
    let mut last: String;
    let answer = loop {
        match oneoff::run(driver, &query, QUERY_LIMIT).await {
            Ok(ended) if ended.code == 0 => break Ok(ended.output),
            // Only an etcd that does not answer yet is worth asking again.
            Ok(ended) if !not_yet(&ended.output) => {
                break Err(RestoreError::Failed {
                    command: "etcdctl get".into(),
                    code: ended.code,
                    output: short_text(&ended.output),
                })
            }
            Ok(ended) => last = ended.output,
            Err(e) => last = crate::error_chain(&e),
        }
        if tokio::time::Instant::now() >= deadline {
            let etcd_said = oneoff::output(driver, &running.name).await;
            break Err(RestoreError::NeverServed {
                last: short_text(&format!("{last}; etcd: {etcd_said}")),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    running.remove().await;
    parse_count(&answer?)
}

/// Whether etcdctl's complaint is that etcd does not answer (yet).
fn not_yet(output: &str) -> bool {
    let output = output.to_ascii_lowercase();
    [
        "deadline exceeded",
        "connection refused",
        "unavailable",
        "timed out",
    ]
    .iter()
    .any(|sign| output.contains(sign))
}

/// The revision and count of `etcdctl get -w json`.
fn parse_count(text: &str) -> Result<(i64, i64), RestoreError> {
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|_| RestoreError::Answer(short_text(text)))?;
    let revision = value["header"]["revision"].as_i64();
    let count = value["count"]
        .as_i64()
        .or(Some(0))
        .filter(|_| revision.is_some());
    match (revision, count) {
        (Some(revision), Some(count)) => Ok((revision, count)),
        _ => Err(RestoreError::Answer(short_text(text))),
    }
}

/// Makes `dir` anew (0700), removing what a failed attempt left there.
async fn fresh_dir(dir: &Path) -> Result<(), RestoreError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::DirBuilderExt as _;
        let files = |source| RestoreError::Files {
            path: dir.clone(),
            source,
        };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(files(e)),
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(files)
    })
    .await?
}

async fn remove_dir(dir: PathBuf) -> Result<(), RestoreError> {
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
        .await?
        .ok();
    Ok(())
}

/// Puts `scratch/data` in place of `data`: `data` is kept as `replaced` (the first time; a
/// repeated restore of the same request drops its own earlier result instead), then `scratch`
/// goes. The directory is synced after the renames.
async fn swap(scratch: PathBuf, data: PathBuf, replaced: PathBuf) -> Result<(), RestoreError> {
    tokio::task::spawn_blocking(move || {
        let files = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RestoreError::Files { path, source }
        };
        if data.exists() {
            if replaced.exists() {
                std::fs::remove_dir_all(&data).map_err(files(&data))?;
            } else {
                std::fs::rename(&data, &replaced).map_err(files(&data))?;
            }
        }
        std::fs::rename(scratch.join("data"), &data).map_err(files(&data))?;
        std::fs::remove_dir_all(&scratch).map_err(files(&scratch))?;
        if let Some(parent) = data.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(files(parent))?;
        }
        Ok(())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctl_counts_are_read_with_their_revision() {
        let cases = [
            (
                r#"{"header":{"revision":42},"kvs":[{"key":"YQ=="}],"more":true,"count":7}"#,
                Some((42, 7)),
            ),
            // etcdctl leaves `count` out when it is zero.
            (r#"{"header":{"revision":1}}"#, Some((1, 0))),
            (r#"{"count":7}"#, None),
            ("Error: context deadline exceeded", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_count(text).ok(), want, "{text}");
        }
    }

    #[test]
    fn restore_arguments_name_the_member_its_peers_and_the_new_token() {
        let args = restore_args(
            "n1",
            &[
                "n1=https://10.0.0.1:2380".into(),
                "n2=https://10.0.0.2:2380".into(),
            ],
            "https://10.0.0.1:2380",
            "dev-r1",
        );
        assert_eq!(
            args,
            [
                "snapshot",
                "restore",
                "/restore/snapshot.db",
                "--name=n1",
                "--initial-cluster=n1=https://10.0.0.1:2380,n2=https://10.0.0.2:2380",
                "--initial-advertise-peer-urls=https://10.0.0.1:2380",
                "--initial-cluster-token=dev-r1",
                "--data-dir=/restore/data",
            ]
        );
    }
}
