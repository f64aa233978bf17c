//! Snapshots restored on a node, with the cluster's own etcd image:
//!
//! - `fetch` (`EtcdTask::Fetch`): the snapshot fetched from the daemon into
//!   `<cluster dir>/restore-<request>/snapshot.db` (0600), checked, and restored beside it
//!   into `data/`, all while etcd still runs; `prepared.json` records for which member.
//! - `restore` (`EtcdTask::Restore`): `data/` swapped in for the member's data directory,
//!   which is kept as `etcd.replaced-<request>`; restored again first if what `fetch`
//!   prepared is missing or was made for another member. Run again for the same request (the
//!   daemon restarted before it recorded the answer), it replaces its own earlier result and
//!   keeps the original.
//! - `verify` (`EtcdTask::Verify`): the snapshot restored into a scratch directory, a
//!   throwaway etcd started on it with no network, and its revision and key count read with
//!   `etcdctl` in a second container sharing that etcd's network namespace. Nothing is left.
//!
//! etcd 3.5 and later restore with `etcdutl`; 3.4 images have only `etcdctl snapshot restore`,
//! tried first on images tagged 3.4 or older and whenever the image has no `etcdutl`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::docker::Driver;
use super::oneoff::{self, OneOff, OneOffError};
use super::session::Dial;
use super::transfer::{self, TransferError};
use crate::model::names::ImageRef;
use crate::pki::Identity;
use crate::protocol::{short_text, EtcdTaskOutcome, RestoreMember};

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

/// What `fetch` restored a snapshot for, beside the restored data.
const PREPARED: &str = "prepared.json";

/// Where the snapshot for `request_id` is fetched to and restored beside, and the member's
/// data directory.
fn restore_dirs(driver: &Driver, request_id: &str) -> (PathBuf, PathBuf, PathBuf) {
    let data = driver.host_path(&crate::nodeplan::etcd_data_dir(driver.cluster()));
    let parent = data.parent().unwrap_or(Path::new("/")).to_path_buf();
    let scratch = parent.join(format!("restore-{request_id}"));
    let replaced = parent.join(format!("etcd.replaced-{request_id}"));
    (scratch, data, replaced)
}

/// Fetches the snapshot of `transfer` for the restore `request_id` and restores it for
/// `member`, while etcd runs (see the module).
pub async fn fetch(
    driver: &Driver,
    dial: &Dial,
    identity: Identity,
    transfer_id: &str,
    request_id: &str,
    member: &RestoreMember,
) -> EtcdTaskOutcome {
    let (scratch, _, _) = restore_dirs(driver, request_id);
    let done = async {
        fresh_dir(&scratch).await?;
        let file = scratch.join("snapshot.db");
        let started = std::time::Instant::now();
        let fetched = transfer::fetch_to_file(dial, identity, transfer_id, &file).await?;
        tracing::info!(
            bytes = fetched.bytes,
            seconds = started.elapsed().as_secs_f64(),
            request = request_id,
            "snapshot fetched and checked"
        );
        prepare(driver, &scratch, member).await?;
        Ok::<_, RestoreError>(fetched)
    };
    match done.await {
        Ok(fetched) => EtcdTaskOutcome::Fetched {
            bytes: fetched.bytes,
        },
        Err(e) => failed(&e),
    }
}

/// Puts the data `fetch` restored for `request_id` in place of the node's etcd data
/// directory, restoring it again first when it is not there for `member` (see the module).
pub async fn restore(driver: &Driver, member: &RestoreMember, request_id: &str) -> EtcdTaskOutcome {
    let done = async {
        let running = driver.observe().await?;
        if let Some(etcd) = running.get(crate::nodeplan::ETCD_COMPONENT) {
            return Err(RestoreError::EtcdRunning(
                etcd.id.chars().take(12).collect(),
            ));
        }
        let (scratch, data, replaced) = restore_dirs(driver, request_id);
        let snapshot = scratch.join("snapshot.db");
        if !tokio::fs::try_exists(&snapshot).await.unwrap_or(false) {
            return Err(RestoreError::NotFetched(snapshot));
        }
        if !prepared_for(&scratch, member).await {
            prepare(driver, &scratch, member).await?;
        }
        swap(scratch, data, replaced).await
    };
    match done.await {
        Ok(()) => EtcdTaskOutcome::Restored,
        Err(e) => failed(&e),
    }
}

/// Restores `scratch/snapshot.db` into `scratch/data` for `member`, then records that in
/// `scratch/prepared.json`.
async fn prepare(
    driver: &Driver,
    scratch: &Path,
    member: &RestoreMember,
) -> Result<(), RestoreError> {
    let image = parse_image(&member.image)?;
    let marker = scratch.join(PREPARED);
    let _ = tokio::fs::remove_file(&marker).await;
    let _ = remove_dir(scratch.join("data")).await;
    let args = restore_args(
        &member.name,
        &member.initial_cluster,
        &member.peer_url,
        &member.token,
    );
    restore_into(driver, &image, scratch, args).await?;
    let record = serde_json::to_vec(member).expect("a member serializes");
    tokio::fs::write(&marker, record)
        .await
        .map_err(|source| RestoreError::Files {
            path: marker,
            source,
        })
}

/// Whether `scratch/data` holds the snapshot restored for `member`.
async fn prepared_for(scratch: &Path, member: &RestoreMember) -> bool {
    let Ok(record) = tokio::fs::read(scratch.join(PREPARED)).await else {
        return false;
    };
    let same = serde_json::from_slice::<RestoreMember>(&record).is_ok_and(|m| &m == member);
    same && tokio::fs::try_exists(scratch.join("data"))
        .await
        .unwrap_or(false)
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

/// A command that restores a snapshot: `etcdutl` from etcd 3.5 on, `etcdctl` before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Etcdutl,
    Etcdctl,
}

impl Tool {
    fn entrypoint(self) -> &'static str {
        match self {
            Tool::Etcdutl => "etcdutl",
            Tool::Etcdctl => "etcdctl",
        }
    }

    fn env(self) -> Vec<String> {
        match self {
            Tool::Etcdutl => Vec::new(),
            Tool::Etcdctl => vec!["ETCDCTL_API=3".into()],
        }
    }
}

/// The restore commands to try in `image`, the likelier first: an image tagged 3.4 or older
/// has no `etcdutl`. The other one is tried when the first is missing, so a tag that says
/// nothing (`latest`, a digest) only costs a container.
fn tools(image: &ImageRef) -> [Tool; 2] {
    let tag = image.tag().unwrap_or_default();
    let version = tag.strip_prefix('v').unwrap_or(tag);
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    let old = matches!((parts.next(), parts.next()), (Some(Ok(3)), Some(Ok(minor))) if minor <= 4)
        || matches!(version.split('.').next().map(str::parse::<u32>), Some(Ok(major)) if major < 3);
    if old {
        [Tool::Etcdctl, Tool::Etcdutl]
    } else {
        [Tool::Etcdutl, Tool::Etcdctl]
    }
}

/// Runs `snapshot restore` in a container of `image`, `scratch` mounted at `/restore`.
async fn restore_into(
    driver: &Driver,
    image: &ImageRef,
    scratch: &Path,
    args: Vec<String>,
) -> Result<(), RestoreError> {
    let [first, second] = tools(image);
    let job = |tool: Tool| OneOff {
        task: "restore",
        image: image.clone(),
        entrypoint: vec![tool.entrypoint().into()],
        args: args.clone(),
        env: tool.env(),
        binds: vec![format!("{}:/restore", scratch.display())],
        network: "none".into(),
    };
    let started = std::time::Instant::now();
    let (tool, ended) = match oneoff::run(driver, &job(first), RESTORE_LIMIT).await {
        Err(e) if e.is_missing_executable() => (
            second,
            oneoff::run(driver, &job(second), RESTORE_LIMIT).await?,
        ),
        other => (first, other?),
    };
    if ended.code != 0 {
        return Err(RestoreError::Failed {
            command: format!("{} snapshot restore", tool.entrypoint()),
            code: ended.code,
            output: ended.output,
        });
    }
    tracing::info!(
        tool = tool.entrypoint(),
        seconds = started.elapsed().as_secs_f64(),
        "snapshot restored into {}",
        scratch.display()
    );
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

    fn member(token: &str) -> RestoreMember {
        RestoreMember {
            image: "quay.io/coreos/etcd:v3.5.17".into(),
            name: "n1".into(),
            initial_cluster: vec!["n1=https://127.0.0.1:2380".into()],
            peer_url: "https://127.0.0.1:2380".into(),
            token: token.into(),
        }
    }

    #[test]
    fn images_tagged_3_4_or_older_restore_with_etcdctl_first() {
        let cases = [
            ("quay.io/coreos/etcd:v3.4.23", Tool::Etcdctl),
            ("drover-test/etcd:3.4.23", Tool::Etcdctl),
            ("registry:5000/etcd:v3.3.27", Tool::Etcdctl),
            ("quay.io/coreos/etcd:v3.5.17", Tool::Etcdutl),
            ("gcr.io/etcd-development/etcd:v3.6.0", Tool::Etcdutl),
            ("registry:5000/etcd", Tool::Etcdutl),
            ("etcd:latest", Tool::Etcdutl),
            (
                "etcd@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                Tool::Etcdutl,
            ),
        ];
        for (image, first) in cases {
            let tools = tools(&ImageRef::parse(image).unwrap());
            assert_eq!(tools[0], first, "{image}");
            assert_ne!(tools[1], first, "{image}: the other one is the fallback");
        }
    }

    #[tokio::test]
    async fn prepared_data_is_used_only_for_the_member_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path();
        assert!(
            !prepared_for(scratch, &member("t1")).await,
            "nothing prepared"
        );
        std::fs::write(
            scratch.join(PREPARED),
            serde_json::to_vec(&member("t1")).unwrap(),
        )
        .unwrap();
        assert!(
            !prepared_for(scratch, &member("t1")).await,
            "no data beside the record"
        );
        std::fs::create_dir(scratch.join("data")).unwrap();
        assert!(prepared_for(scratch, &member("t1")).await);
        assert!(
            !prepared_for(scratch, &member("t2")).await,
            "another cluster token"
        );
        std::fs::write(scratch.join(PREPARED), b"{").unwrap();
        assert!(!prepared_for(scratch, &member("t1")).await, "a torn record");
    }

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
