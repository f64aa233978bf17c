//! etcd snapshots to S3 (issue 12): drover's save and restore beside what operators script
//! today, on a one-member cluster filled to each size with incompressible and with typical
//! values. Prints one table; asserts nothing timed. Run with `scripts/bench-snapshot` (which
//! checks the prerequisites) or `cargo bench --bench snapshot`.
//!
//! Everything is real and on loopback: `drover serve` (watching a local directory, its store
//! `backups` on the test Garage) and one `drover agent` as processes, the agent's node running
//! the etcd member (3.4, TLS with the daemon's per-cluster CA, `quota-backend-bytes` raised
//! through the cluster's `extraArgs`) on the local Docker engine. Each data set gets a cluster
//! of its own, and a prefix of its own in the test bucket, both removed when it is done.
//!
//! **Fill.** etcd-client with the node's client certificate puts values of
//! `DROVER_BENCH_VALUE_BYTES` (default 64 KiB), `FILL_IN_FLIGHT` at a time, until the values
//! written reach the size: *random* values are incompressible; *typical* values are JSON
//! arrays of Kubernetes-like objects (pods and config maps, their names, uids, addresses,
//! times and data random), which zstd -3 shrinks about sixfold (the ratio is printed).
//!
//! **Per round** (`DROVER_BENCH_ROUNDS`, default 3), on the filled member:
//! 1. *baseline save*: `etcdctl snapshot save` to a file (the etcdctl of the member's image,
//!    run on the host with the node's client certificate), then `rclone copyto` of that file
//!    to the same Garage bucket, a new object each round (rclone's S3 remote given in
//!    `RCLONE_CONFIG_*` variables, the secret never in argv); the wall time of both steps.
//! 2. *drover save*: `drover snapshot save CLUSTER --format json` (the operator API takes a
//!    snapshot now through the member's agent, which streams it to the daemon; the daemon
//!    compresses and uploads it, and answers the snapshot's document once stored); the
//!    command's wall time, and the daemon's own `durationMs` beside it. Meanwhile the
//!    daemon's and the agent's resident memory is watched: the peak (`VmHWM`, reset through
//!    `/proc/PID/clear_refs` before the save, and `VmRSS` sampled every 5 ms) above what each
//!    held before it. "n/a (not built)" when the command does not exist.
//! 3. *baseline restore*: `rclone copyto` of the object down, then `etcdctl snapshot restore`
//!    into a fresh data directory.
//! 4. *drover restore*: `drover snapshot restore CLUSTER ID` of that round's snapshot (it
//!    waits until the restore ended), then until the cluster is Ready again; "n/a (not
//!    built)" when the command does not exist.
//!
//! Bytes: the raw snapshot, the object drover stored (its size in the store), and `zstd -3`
//! of the baseline's file (the zstd CLI).
//!
//! Settings: `DROVER_BENCH_SIZES` (default `256MiB,1GiB`; `32MiB` for a quick run),
//! `DROVER_BENCH_KINDS` (default `random,typical`), `DROVER_BENCH_ROUNDS`,
//! `DROVER_BENCH_VALUE_BYTES`, and `DROVER_BENCH_LOG=DIR` to keep the
//! daemon's and agents' logs. SIGINT and SIGTERM stop the run and clean up.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover::model::{ClusterName, SnapshotId};
use futures::StreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt as _};
use tempfile::TempDir;
use tokio::process::Command;

#[path = "support/operator.rs"]
mod operator;
#[path = "support/snapshot_cluster.rs"]
mod snapshot_cluster;
#[path = "../tests/it/support/mod.rs"]
mod support;

use snapshot_cluster::{BenchCluster, NODE};
use support::docker::{self, ETCD_IMAGE};
use support::garage::{S3Prefix, S3Settings};
use support::{private_tempdir, require};

/// Puts in flight while filling.
const FILL_IN_FLIGHT: usize = 16;
/// The member's backend quota: etcd's largest (8 GiB), far above any size filled.
const QUOTA_BYTES: u64 = 8 << 30;
/// How long one save or restore may take before the run is called hung.
const STEP_LIMIT: Duration = Duration::from_secs(1800);
/// The targets of issue 12.
const SAVE_TARGET: f64 = 0.7;
const DAEMON_RSS_TARGET: u64 = 64 << 20;
const AGENT_RSS_TARGET: u64 = 32 << 20;
const RESTORE_TARGET: f64 = 1.1;

fn main() {
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let engine = require!(runtime.block_on(docker::connect()));
    require!(runtime.block_on(docker::require_image(&engine, ETCD_IMAGE)));
    let s3 = require!(S3Settings::from_env());
    let tools = runtime.block_on(Tools::prepare(s3));
    println!(
        "snapshot benchmark: sizes {}, {} values of {} each, {} rounds; drover save {}; \
         drover restore {}",
        settings
            .sizes
            .iter()
            .map(|&s| mib(s))
            .collect::<Vec<_>>()
            .join(", "),
        settings
            .kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" and "),
        mib(settings.value_bytes as u64),
        settings.rounds,
        if tools.cli_save {
            "through `drover snapshot save`"
        } else {
            "not built (`drover snapshot save` does not exist)"
        },
        if tools.cli_restore {
            "through `drover snapshot restore`"
        } else {
            "not built (`drover snapshot restore` does not exist)"
        },
    );
    println!(
        "typical values: zstd -3 shrinks them {:.1}x",
        typical_ratio(settings.value_bytes)
    );

    let rows = runtime.block_on(async {
        let all = async {
            let mut rows = Vec::new();
            for &size in &settings.sizes {
                for &kind in &settings.kinds {
                    rows.push(data_set(&settings, &tools, kind, size).await);
                }
            }
            rows
        };
        tokio::select! {
            rows = all => Some(rows),
            signal = stop_signal() => {
                eprintln!("{signal}: stopping and cleaning up");
                None
            }
        }
    });
    let Some(rows) = rows else {
        std::process::exit(130);
    };
    print_table(&settings, &rows);
}

// --- settings -------------------------------------------------------------------------------

struct Settings {
    sizes: Vec<u64>,
    kinds: Vec<Kind>,
    rounds: usize,
    value_bytes: usize,
    logs: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let sizes = var("DROVER_BENCH_SIZES")
            .unwrap_or_else(|| "256MiB,1GiB".into())
            .split(',')
            .map(|s| parse_size(s.trim()))
            .collect();
        let kinds = var("DROVER_BENCH_KINDS")
            .unwrap_or_else(|| "random,typical".into())
            .split(',')
            .map(|s| match s.trim() {
                "random" => Kind::Random,
                "typical" => Kind::Typical,
                other => panic!("DROVER_BENCH_KINDS: {other:?} is neither random nor typical"),
            })
            .collect();
        let rounds = var("DROVER_BENCH_ROUNDS")
            .map(|v| v.parse().expect("DROVER_BENCH_ROUNDS is a number"))
            .filter(|&n| n > 0)
            .unwrap_or(3);
        let value_bytes = var("DROVER_BENCH_VALUE_BYTES")
            .map(|v| parse_size(&v) as usize)
            .unwrap_or(64 << 10);
        assert!(
            (1024..=1 << 20).contains(&value_bytes),
            "DROVER_BENCH_VALUE_BYTES must be 1 KiB to 1 MiB (etcd takes requests up to 1.5 MiB)"
        );
        Settings {
            sizes,
            kinds,
            rounds,
            value_bytes,
            logs: var("DROVER_BENCH_LOG").map(PathBuf::from),
        }
    }
}

/// `32MiB`, `1GiB`, `65536`: bytes.
fn parse_size(text: &str) -> u64 {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a size such as 32MiB or 1GiB"));
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => panic!("{text:?}: the unit must be KiB, MiB or GiB"),
    };
    n << shift
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Random,
    Typical,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Random => "random",
            Kind::Typical => "typical",
        }
    }
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

// --- one data set ---------------------------------------------------------------------------

/// What one data set measured, round by round.
struct Row {
    kind: Kind,
    size: u64,
    fill: Duration,
    raw: u64,
    zstd: u64,
    zstd_time: Duration,
    rounds: Vec<Round>,
}

/// One round's figures.
struct Round {
    etcdctl_save: Duration,
    rclone_up: Duration,
    drover: Option<DroverSave>,
    rclone_down: Duration,
    etcdctl_restore: Duration,
    drover_restore: Option<Duration>,
    /// How long etcd was down in drover's restore, by the daemon's record of it.
    drover_down: Option<Duration>,
}

impl Round {
    fn baseline_save(&self) -> Duration {
        self.etcdctl_save + self.rclone_up
    }

    fn baseline_restore(&self) -> Duration {
        self.rclone_down + self.etcdctl_restore
    }
}

struct DroverSave {
    /// The command's wall time.
    time: Duration,
    /// The daemon's own account of the save (`durationMs`).
    daemon: Duration,
    /// The object's size in the store.
    stored: u64,
    /// Peak resident memory above what each held before the save.
    daemon_rss: u64,
    agent_rss: u64,
}

async fn data_set(settings: &Settings, tools: &Tools, kind: Kind, size: u64) -> Row {
    let tag = format!("{}-{}", kind.name(), mib(size).replace(' ', ""));
    println!("\n== {} values, {} ==", kind.name(), mib(size));
    let prefix = S3Prefix::new(&format!("bench-snapshot-{tag}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cluster =
        BenchCluster::start(&prefix.settings, prefix.prefix.as_ref(), QUOTA_BYTES).await;
    let outcome = async {
        let etcd = cluster.etcd().await;
        let fill = fill(&etcd, kind, size, settings.value_bytes).await;
        let files = private_tempdir();
        let store = cluster.store();
        let name = ClusterName::parse(&cluster.name).expect("a cluster name");
        let mut rounds = Vec::new();
        for i in 1..=settings.rounds {
            let saved = files.path().join(format!("save-{i}.db"));
            // A new object each round, as a dated name would be: rclone skips a copy whose
            // destination already holds the same bytes, and every round's snapshot is the same.
            let object = format!("{}/baseline/snapshot-{i}.db", prefix.prefix);
            let etcdctl_save = timed(tools.etcdctl_save(&cluster, &saved)).await;
            let rclone_up =
                timed(tools.rclone_copyto(&local(&saved), &tools.remote(&object))).await;
            let drover = match tools.cli_save {
                true => Some(cli_save(&cluster, &*store, &name).await),
                false => None,
            };
            let fetched = files.path().join(format!("restore-{i}.db"));
            let rclone_down =
                timed(tools.rclone_copyto(&tools.remote(&object), &local(&fetched))).await;
            let data = files.path().join(format!("restore-{i}.etcd"));
            let etcdctl_restore = timed(tools.etcdctl_restore(&cluster, &fetched, &data)).await;
            let _ = std::fs::remove_dir_all(&data);
            let _ = std::fs::remove_file(&fetched);
            let (drover_restore, drover_down) = match (&drover, tools.cli_restore) {
                (Some(d), true) => {
                    let took = cli_restore(&cluster, &d.id).await;
                    (Some(took), etcd_down(&cluster).await)
                }
                _ => (None, None),
            };
            let round = Round {
                etcdctl_save,
                rclone_up,
                drover: drover.map(|d| d.save),
                rclone_down,
                etcdctl_restore,
                drover_restore,
                drover_down,
            };
            println!("round {i}: {}", round_line(&round));
            rounds.push(round);
            if i < settings.rounds {
                let _ = std::fs::remove_file(&saved);
            }
        }
        let last = files.path().join(format!("save-{}.db", settings.rounds));
        let raw = std::fs::metadata(&last)
            .expect("the baseline's snapshot")
            .len();
        let (zstd, zstd_time) = tools.zstd3(&last).await;
        Row {
            kind,
            size,
            fill,
            raw,
            zstd,
            zstd_time,
            rounds,
        }
    }
    .await;
    cluster.stop();
    if let Some(dir) = &settings.logs {
        cluster.keep_logs(dir, &tag);
    }
    outcome
}

/// Runs a step to its end; its wall time.
async fn timed(step: impl std::future::Future<Output = ()>) -> Duration {
    let started = Instant::now();
    match tokio::time::timeout(STEP_LIMIT, step).await {
        Ok(()) => started.elapsed(),
        Err(_) => panic!("a step took more than {STEP_LIMIT:?}"),
    }
}

fn local(path: &Path) -> String {
    path.display().to_string()
}

fn round_line(r: &Round) -> String {
    let drover = match &r.drover {
        Some(d) => format!(
            "drover save {} (daemon's own {}; RSS daemon +{}, agent +{}; stored {})",
            show(d.time),
            show(d.daemon),
            mib(d.daemon_rss),
            mib(d.agent_rss),
            mib(d.stored)
        ),
        None => "drover save n/a".into(),
    };
    let restore = match (r.drover_restore, r.drover_down) {
        (Some(t), Some(down)) => format!("drover restore {} (etcd down {})", show(t), show(down)),
        (Some(t), None) => format!("drover restore {}", show(t)),
        _ => "drover restore n/a".into(),
    };
    format!(
        "etcdctl save {} + rclone up {} = {}; {drover}; rclone down {} + etcdctl restore {} = {}; {restore}",
        show(r.etcdctl_save),
        show(r.rclone_up),
        show(r.baseline_save()),
        show(r.rclone_down),
        show(r.etcdctl_restore),
        show(r.baseline_restore()),
    )
}

// --- fill -----------------------------------------------------------------------------------

/// Puts values of `kind` until their bytes reach `size`; the time it took.
async fn fill(etcd: &etcd_client::Client, kind: Kind, size: u64, value_bytes: usize) -> Duration {
    let started = Instant::now();
    let count = size.div_ceil(value_bytes as u64);
    let mut rng = Rng::seeded();
    let puts = futures::stream::iter(0..count)
        .map(|i| {
            let value = match kind {
                Kind::Random => rng.bytes(value_bytes),
                Kind::Typical => typical_value(&mut rng, value_bytes),
            };
            let key = format!("/registry/{}/ns-{:03}/obj-{i:08}", kind.name(), i % 97);
            let mut kv = etcd.kv_client();
            async move { kv.put(key, value, None).await }
        })
        .buffer_unordered(FILL_IN_FLIGHT);
    tokio::pin!(puts);
    while let Some(put) = puts.next().await {
        put.unwrap_or_else(|e| panic!("filling etcd: {e}"));
    }
    let took = started.elapsed();
    println!(
        "filled: {count} values, {} of values, in {}",
        mib(count * value_bytes as u64),
        show(took)
    );
    took
}

/// splitmix64: fast, and good enough to make values zstd cannot shrink.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("randomness");
        Rng(u64::from_le_bytes(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }

    fn hex(&mut self, digits: usize) -> String {
        hex::encode(self.bytes(digits.div_ceil(2)))[..digits].to_string()
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

const APPS: &[&str] = &[
    "web", "api", "worker", "cache", "ingest", "billing", "search", "auth", "gateway", "metrics",
];
const TEAMS: &[&str] = &[
    "payments", "platform", "data", "identity", "growth", "infra",
];

/// A JSON array of Kubernetes-like objects, about `len` bytes: pods and config maps whose
/// names, uids, addresses, times and data are random, the rest as an API server stores it.
fn typical_value(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 4096);
    out.push('[');
    while out.len() < len {
        if out.len() > 1 {
            out.push(',');
        }
        if rng.below(4) == 0 {
            config_map(rng, &mut out);
        } else {
            pod(rng, &mut out);
        }
    }
    out.push(']');
    out.into_bytes()
}

fn uid(rng: &mut Rng) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        rng.hex(8),
        rng.hex(4),
        rng.hex(4),
        rng.hex(4),
        rng.hex(12)
    )
}

fn time(rng: &mut Rng) -> String {
    format!(
        "2026-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60)
    )
}

fn pod(rng: &mut Rng, out: &mut String) {
    use std::fmt::Write as _;
    let app = rng.pick(APPS);
    let team = rng.pick(TEAMS);
    let hash = rng.hex(10);
    let name = format!("{app}-{hash}-{}", rng.hex(5));
    let (created, started) = (time(rng), time(rng));
    let _ = write!(
        out,
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","generateName":"{app}-{hash}-","namespace":"{team}","uid":"{uid}","resourceVersion":"{rv}","creationTimestamp":"{created}","labels":{{"app.kubernetes.io/name":"{app}","app.kubernetes.io/part-of":"{team}","pod-template-hash":"{hash}"}},"annotations":{{"kubectl.kubernetes.io/restartedAt":"{started}","prometheus.io/scrape":"true","prometheus.io/port":"9090"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"{app}-{hash}","uid":"{owner}","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"volumes":[{{"name":"kube-api-access-{v}","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}},{{"configMap":{{"name":"kube-root-ca.crt","items":[{{"key":"ca.crt","path":"ca.crt"}}]}}}}],"defaultMode":420}}}}],"containers":[{{"name":"{app}","image":"registry.example.com/{team}/{app}:1.{minor}.{patch}","ports":[{{"name":"http","containerPort":8080,"protocol":"TCP"}},{{"name":"metrics","containerPort":9090,"protocol":"TCP"}}],"env":[{{"name":"DATABASE_HOST","value":"db-{db}.{team}.svc.cluster.local"}},{{"name":"LOG_LEVEL","value":"info"}},{{"name":"POD_NAME","valueFrom":{{"fieldRef":{{"apiVersion":"v1","fieldPath":"metadata.name"}}}}}}],"resources":{{"limits":{{"cpu":"{cpu}m","memory":"{mem}Mi"}},"requests":{{"cpu":"{cpu}m","memory":"{mem}Mi"}}}},"livenessProbe":{{"httpGet":{{"path":"/healthz","port":8080,"scheme":"HTTP"}},"periodSeconds":10,"timeoutSeconds":1,"failureThreshold":3}},"terminationMessagePath":"/dev/termination-log","imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"{app}","nodeName":"node-{node}","schedulerName":"default-scheduler","priority":0}},"status":{{"phase":"Running","hostIP":"10.0.{h1}.{h2}","podIP":"10.{p1}.{p2}.{p3}","startTime":"{started}","qosClass":"Guaranteed","containerStatuses":[{{"name":"{app}","ready":true,"restartCount":{restarts},"image":"registry.example.com/{team}/{app}:1.{minor}.{patch}","imageID":"registry.example.com/{team}/{app}@sha256:{digest}","containerID":"containerd://{container}","started":true}}]}}}}"#,
        uid = uid(rng),
        rv = 1_000_000 + rng.below(90_000_000),
        owner = uid(rng),
        v = rng.hex(5),
        minor = rng.below(40),
        patch = rng.below(20),
        db = rng.below(8),
        cpu = 50 * (1 + rng.below(20)),
        mem = 64 * (1 + rng.below(32)),
        node = rng.below(500),
        h1 = rng.below(256),
        h2 = rng.below(256),
        p1 = rng.below(256),
        p2 = rng.below(256),
        p3 = rng.below(256),
        restarts = rng.below(3),
        digest = rng.hex(64),
        container = rng.hex(64),
    );
}

fn config_map(rng: &mut Rng, out: &mut String) {
    use base64::Engine as _;
    use std::fmt::Write as _;
    let app = rng.pick(APPS);
    let team = rng.pick(TEAMS);
    let blob_len = 64 + rng.below(256) as usize;
    let blob = base64::engine::general_purpose::STANDARD.encode(rng.bytes(blob_len));
    let _ = write!(
        out,
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{app}-config-{suffix}","namespace":"{team}","uid":"{uid}","resourceVersion":"{rv}","creationTimestamp":"{created}","labels":{{"app.kubernetes.io/name":"{app}","app.kubernetes.io/managed-by":"helm"}}}},"data":{{"config.yaml":"server:\n  port: 8080\n  readTimeout: 30s\nlogging:\n  level: info\n  format: json\ndatabase:\n  host: db-{db}.{team}.svc.cluster.local\n  pool: {pool}\n","bootstrap.token":"{blob}"}}}}"#,
        suffix = rng.hex(6),
        uid = uid(rng),
        rv = 1_000_000 + rng.below(90_000_000),
        created = time(rng),
        db = rng.below(8),
        pool = 5 + rng.below(50),
    );
}

/// How much zstd -3 shrinks typical values (16 MiB of them).
fn typical_ratio(value_bytes: usize) -> f64 {
    let mut rng = Rng::seeded();
    let mut sample = Vec::new();
    while sample.len() < 16 << 20 {
        sample.extend(typical_value(&mut rng, value_bytes));
    }
    let compressed = zstd::bulk::compress(&sample, 3).expect("zstd");
    sample.len() as f64 / compressed.len() as f64
}

// --- the baseline's tools -------------------------------------------------------------------

/// etcdctl (copied out of the member's image), rclone with its S3 remote in its environment,
/// and the zstd CLI; and whether drover has the commands to measure.
struct Tools {
    dir: TempDir,
    etcdctl: PathBuf,
    s3: S3Settings,
    cli_save: bool,
    cli_restore: bool,
}

/// The name of rclone's remote (`RCLONE_CONFIG_<NAME>_*`).
const REMOTE: &str = "benchs3";

impl Tools {
    async fn prepare(s3: S3Settings) -> Tools {
        for (tool, package) in [("rclone", "rclone"), ("zstd", "zstd")] {
            let found = Command::new(tool).arg("--version").output().await;
            assert!(
                found.is_ok_and(|o| o.status.success()),
                "{tool} is missing: install the Debian package {package} (scripts/bench-snapshot does)"
            );
        }
        let dir = private_tempdir();
        let container = format!("drover-bench-etcdctl-{}", support::unique_token());
        run(Command::new("docker").args(["create", "--name", &container, ETCD_IMAGE, "etcdctl"]))
            .await;
        let copied = Command::new("docker")
            .arg("cp")
            .arg(format!("{container}:/usr/local/bin/etcdctl"))
            .arg(dir.path().join("etcdctl"))
            .output()
            .await;
        run(Command::new("docker").args(["rm", &container])).await;
        let copied = copied.expect("docker cp runs");
        assert!(
            copied.status.success(),
            "copying etcdctl out of {ETCD_IMAGE}: {}",
            String::from_utf8_lossy(&copied.stderr)
        );
        // An empty configuration file: rclone reads its remote from the environment only.
        std::fs::write(dir.path().join("rclone.conf"), "").unwrap();
        let help = |args: &'static [&'static str]| async move {
            Command::new(support::cli::BIN)
                .args(args)
                .output()
                .await
                .is_ok_and(|o| o.status.success())
        };
        Tools {
            etcdctl: dir.path().join("etcdctl"),
            dir,
            s3,
            cli_save: help(&["snapshot", "save", "--help"]).await,
            cli_restore: help(&["snapshot", "restore", "--help"]).await,
        }
    }

    /// etcdctl against the cluster's member, with the node's client certificate.
    fn etcdctl(&self, cluster: &BenchCluster) -> Command {
        let pki = cluster.pki_dir();
        let mut command = Command::new(&self.etcdctl);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.client_url()))
            .arg(format!("--cacert={}", pki.join("ca.pem").display()))
            .arg(format!("--cert={}", pki.join("client.pem").display()))
            .arg(format!("--key={}", pki.join("client-key.pem").display()));
        command
    }

    async fn etcdctl_save(&self, cluster: &BenchCluster, file: &Path) {
        run(self.etcdctl(cluster).args(["snapshot", "save"]).arg(file)).await;
    }

    /// `etcdctl snapshot restore` into `data`, as the member it was (name and peer URL).
    async fn etcdctl_restore(&self, cluster: &BenchCluster, file: &Path, data: &Path) {
        let peer = format!("https://{}:2380", cluster.ip);
        run(Command::new(&self.etcdctl)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(file)
            .arg("--data-dir")
            .arg(data)
            .args(["--name", NODE, "--initial-cluster"])
            .arg(format!("{NODE}={peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(&peer))
        .await;
    }

    /// `remote:bucket/key` for rclone.
    fn remote(&self, key: &str) -> String {
        format!("{REMOTE}:{}/{key}", self.s3.bucket)
    }

    /// `rclone copyto FROM TO`, its S3 remote in the environment only; the CA bundle variables
    /// of this machine are removed (rclone fails on a plain-http endpoint with them).
    async fn rclone_copyto(&self, from: &str, to: &str) {
        let var = |field: &str| format!("RCLONE_CONFIG_{}_{field}", REMOTE.to_uppercase());
        let mut command = Command::new("rclone");
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("RCLONE_")
                || name.starts_with("AWS_")
                || name.ends_with("_CA_BUNDLE")
            {
                command.env_remove(name.as_ref());
            }
        }
        command
            .env_remove("SSL_CERT_FILE")
            .env("RCLONE_CONFIG", self.dir.path().join("rclone.conf"))
            .env(var("TYPE"), "s3")
            .env(var("PROVIDER"), "Other")
            .env(var("ENDPOINT"), &self.s3.endpoint)
            .env(var("REGION"), &self.s3.region)
            .env(var("FORCE_PATH_STYLE"), "true")
            .env(var("NO_CHECK_BUCKET"), "true")
            .env(var("ACCESS_KEY_ID"), &self.s3.access_key_id)
            .env(var("SECRET_ACCESS_KEY"), self.s3.secret_access_key.expose())
            .args(["copyto", from, to]);
        run(&mut command).await;
    }

    /// `zstd -3` of `file`: the output's size and the time it took.
    async fn zstd3(&self, file: &Path) -> (u64, Duration) {
        let out = file.with_extension("db.zst");
        let started = Instant::now();
        run(Command::new("zstd")
            .args(["-3", "-q", "-f", "-o"])
            .arg(&out)
            .arg(file))
        .await;
        let took = started.elapsed();
        let size = std::fs::metadata(&out).expect("zstd's output").len();
        let _ = std::fs::remove_file(&out);
        (size, took)
    }
}

/// Runs a command to its end; panics with its output when it fails.
async fn run(command: &mut Command) {
    let out = command.output().await.expect("the command runs");
    check(command, &out);
}

fn check(command: &Command, out: &Output) {
    assert!(
        out.status.success(),
        "{:?} failed ({}): {}{}",
        command.as_std().get_program(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- drover ---------------------------------------------------------------------------------

/// A save and the snapshot it made.
struct Saved {
    save: DroverSave,
    id: String,
}

/// `drover snapshot save CLUSTER --format json`, timed, with the memory watch around it.
async fn cli_save(cluster: &BenchCluster, store: &dyn ObjectStore, name: &ClusterName) -> Saved {
    let watch = RssWatch::start(&[cluster.daemon_pid(), cluster.agent_pid()]);
    let started = Instant::now();
    let mut command =
        Command::from(cluster.drover(&["snapshot", "save", &cluster.name, "--format", "json"]));
    let out = tokio::time::timeout(STEP_LIMIT, command.output())
        .await
        .expect("drover snapshot save within the step limit")
        .expect("drover snapshot save runs");
    let time = started.elapsed();
    let peaks = watch.finish();
    assert!(
        out.status.success(),
        "drover snapshot save failed ({}): {}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        cluster.tail_daemon()
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drover snapshot save --format json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let id = find_field(&json, "id")
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no snapshot id in {json}"))
        .to_string();
    let field = |key: &str| find_field(&json, key).and_then(|v| v.as_u64());
    let daemon = Duration::from_millis(field("durationMs").unwrap_or_default());
    Saved {
        save: DroverSave {
            time,
            daemon,
            stored: stored_size(store, name, &id).await,
            daemon_rss: peaks[0],
            agent_rss: peaks[1],
        },
        id,
    }
}

/// The first field `key` in `json`, at any depth (the manifest may be wrapped).
fn find_field<'a>(json: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match json {
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_field(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_field(v, key)),
        _ => None,
    }
}

/// The size of snapshot `id`'s data object in the store.
async fn stored_size(store: &dyn ObjectStore, name: &ClusterName, id: &str) -> u64 {
    let id = SnapshotId::parse(id).unwrap_or_else(|| panic!("{id:?} is not a snapshot id"));
    let path = drover::snapshot::naming::data_path(name, &id);
    store
        .head(&path)
        .await
        .unwrap_or_else(|e| panic!("HEAD {path}: {e}"))
        .size
}

/// `drover snapshot restore CLUSTER ID` (it waits until the restore ended), then until the
/// cluster is Ready again.
async fn cli_restore(cluster: &BenchCluster, id: &str) -> Duration {
    let started = Instant::now();
    let mut command = Command::from(cluster.drover(&["snapshot", "restore", &cluster.name, id]));
    let out = tokio::time::timeout(STEP_LIMIT, command.output())
        .await
        .expect("drover snapshot restore within the step limit")
        .expect("drover snapshot restore runs");
    assert!(
        out.status.success(),
        "drover snapshot restore failed ({}): {}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        cluster.tail_daemon()
    );
    cluster
        .await_status("Ready after the restore", STEP_LIMIT, |s| {
            let ready = s
                .condition(drover::api::ConditionType::Ready)
                .is_some_and(|c| c.status);
            ready.then_some(()).ok_or_else(|| "not Ready".to_string())
        })
        .await;
    started.elapsed()
}

/// How long etcd was down in the newest restore, as `drover snapshot restores` shows it.
async fn etcd_down(cluster: &BenchCluster) -> Option<Duration> {
    let mut command =
        Command::from(cluster.drover(&["snapshot", "restores", &cluster.name, "--format", "json"]));
    let out = tokio::time::timeout(STEP_LIMIT, command.output())
        .await
        .expect("drover snapshot restores within the step limit")
        .expect("drover snapshot restores runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    find_field(&json, "etcdDownMs")
        .and_then(|v| v.as_u64())
        .map(Duration::from_millis)
}

// --- memory ---------------------------------------------------------------------------------

/// Watches processes' resident memory: each one's peak above what it held at the start.
/// The kernel's high-water mark (`VmHWM`) is reset first through `/proc/PID/clear_refs`; a
/// thread samples `VmRSS` every 5 ms as well, in case the reset is refused.
struct RssWatch {
    base: Vec<u64>,
    reset: Vec<bool>,
    pids: Vec<u32>,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<Vec<u64>>,
}

impl RssWatch {
    fn start(pids: &[u32]) -> RssWatch {
        let base: Vec<u64> = pids.iter().map(|&p| status_bytes(p, "VmRSS")).collect();
        let reset = pids
            .iter()
            .map(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, watched) = (stop.clone(), pids.to_vec());
        let sampler = std::thread::spawn(move || {
            let mut peaks = vec![0; watched.len()];
            while !flag.load(Ordering::Relaxed) {
                for (peak, &pid) in peaks.iter_mut().zip(&watched) {
                    *peak = (*peak).max(status_bytes(pid, "VmRSS"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peaks
        });
        RssWatch {
            base,
            reset,
            pids: pids.to_vec(),
            stop,
            sampler,
        }
    }

    /// Each process's peak above its start.
    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self.sampler.join().expect("the memory sampler");
        self.pids
            .iter()
            .enumerate()
            .map(|(i, &pid)| {
                let hwm = if self.reset[i] {
                    status_bytes(pid, "VmHWM")
                } else {
                    0
                };
                hwm.max(sampled[i]).saturating_sub(self.base[i])
            })
            .collect()
    }
}

/// A `kB` field of `/proc/PID/status`, in bytes (0 when unreadable).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

// --- figures --------------------------------------------------------------------------------

fn median<T: Copy + Ord>(values: impl Iterator<Item = T>) -> Option<(T, T, T)> {
    let mut v: Vec<T> = values.collect();
    v.sort();
    let (first, last) = (*v.first()?, *v.last()?);
    Some((v[(v.len() - 1) / 2], first, last))
}

/// Milliseconds below 10 s, seconds above.
fn show(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes < 1 << 20 {
        format!("{} KiB", bytes >> 10)
    } else if bytes >= 10 << 20 {
        format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

fn times(values: impl Iterator<Item = Duration>) -> String {
    match median(values) {
        Some((m, min, _)) => format!("{} / {}", show(m), show(min)),
        None => "n/a".into(),
    }
}

fn print_table(settings: &Settings, rows: &[Row]) {
    let not_built = "n/a (not built)";
    println!(
        "\n| data, {} rounds | snapshot | etcdctl save + rclone copyto (median / min) | drover save (median / min) | save ratio (target ≤ {SAVE_TARGET}x) | daemon RSS + (max; ≤ {}) | agent RSS + (max; ≤ {}) | stored by drover | zstd -3 | stored / zstd -3 (≤ 1.0) | rclone copyto + etcdctl snapshot restore | drover restore | restore ratio (≤ {RESTORE_TARGET}x) |",
        settings.rounds,
        mib(DAEMON_RSS_TARGET),
        mib(AGENT_RSS_TARGET),
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let baseline = median(row.rounds.iter().map(Round::baseline_save));
        let drover: Vec<&DroverSave> = row
            .rounds
            .iter()
            .filter_map(|r| r.drover.as_ref())
            .collect();
        let (save_time, ratio, daemon, agent, stored, vs_zstd) =
            match median(drover.iter().map(|d| d.time)) {
                Some((m, _, _)) => {
                    let base = baseline.expect("baseline rounds").0;
                    let stored = median(drover.iter().map(|d| d.stored)).expect("saves").0;
                    let over = |pick: fn(&DroverSave) -> u64, target: u64| {
                        let (m, _, max) = median(drover.iter().map(|d| pick(d))).expect("saves");
                        let flag = if max > target { " (over)" } else { "" };
                        format!("{} ({}){flag}", mib(m), mib(max))
                    };
                    (
                        times(drover.iter().map(|d| d.time)),
                        format!("{:.2}x", m.as_secs_f64() / base.as_secs_f64()),
                        over(|d| d.daemon_rss, DAEMON_RSS_TARGET),
                        over(|d| d.agent_rss, AGENT_RSS_TARGET),
                        mib(stored),
                        format!("{:.3}", stored as f64 / row.zstd as f64),
                    )
                }
                None => (
                    not_built.to_string(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ),
            };
        let restores: Vec<Duration> = row.rounds.iter().filter_map(|r| r.drover_restore).collect();
        let base_restore = median(row.rounds.iter().map(Round::baseline_restore))
            .expect("rounds")
            .0;
        let (restore, restore_ratio) = match median(restores.iter().copied()) {
            Some((m, _, _)) => (
                times(restores.iter().copied()),
                format!("{:.2}x", m.as_secs_f64() / base_restore.as_secs_f64()),
            ),
            None => (not_built.to_string(), "-".into()),
        };
        println!(
            "| {} {} | {} | {} | {save_time} | {ratio} | {daemon} | {agent} | {stored} | {} | {vs_zstd} | {} | {restore} | {restore_ratio} |",
            mib(row.size),
            row.kind.name(),
            mib(row.raw),
            times(row.rounds.iter().map(Round::baseline_save)),
            mib(row.zstd),
            times(row.rounds.iter().map(Round::baseline_restore)),
        );
    }
    println!("\nRSS: median (max) over the rounds of the peak above what the process held before the save.");
    for row in rows {
        let step = |pick: fn(&Round) -> Duration| times(row.rounds.iter().map(pick));
        println!(
            "{} {}: fill {}; etcdctl save {}, rclone copyto up {}; rclone copyto down {}, \
             etcdctl snapshot restore {}; zstd -3 of the file {} ({:.1}x); drover save as the daemon timed it {}; \
             etcd down during drover's restore {}",
            mib(row.size),
            row.kind.name(),
            show(row.fill),
            step(|r| r.etcdctl_save),
            step(|r| r.rclone_up),
            step(|r| r.rclone_down),
            step(|r| r.etcdctl_restore),
            show(row.zstd_time),
            row.raw as f64 / row.zstd as f64,
            times(
                row.rounds
                    .iter()
                    .filter_map(|r| r.drover.as_ref().map(|d| d.daemon))
            ),
            times(row.rounds.iter().filter_map(|r| r.drover_down)),
        );
    }
}
