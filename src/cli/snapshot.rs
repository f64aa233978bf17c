//! `drover snapshot list|save|verify|prune|restore|restores CLUSTER`: a cluster's etcd snapshots, through the
//! daemon's operator API (the daemon holds the store's credentials; this command never does).
//! Text tables by default, the API's documents with `--format json`; a spinner with the time
//! elapsed while the daemon works, on a terminal.

use std::io::{IsTerminal as _, Write};
use std::time::Duration;

use super::client::{Client, ClientError, Target};
use super::status::{fail, table};
use super::Exit;
use crate::api::snapshots::{
    PruneDocument, RestorePhase, RestoreRequestBody, RestoreRun, RestoresDocument, SnapshotView,
    SnapshotsDocument, Verification, MAX_SNAPSHOTS_DOCUMENT_BYTES, SNAPSHOTS_FORMAT_VERSION,
};
use crate::api::CLUSTERS_PATH;

/// The longest a save or a verification is waited for: etcd's largest database on a slow link.
pub const LONG_WAIT: Duration = Duration::from_secs(6 * 3600);
/// Most bytes of a single snapshot's document.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The cluster's snapshots in its store, newest first, and its schedule.
    List(ListArgs),
    /// Take a snapshot now, through the daemon, and wait until it is stored.
    Save(ClusterArgs),
    /// Download a snapshot and check its manifest, both sha256s and etcd's own hash; the
    /// outcome is recorded (retention never deletes the newest snapshot that passed).
    Verify(VerifyArgs),
    /// Apply the cluster's retention now.
    Prune(PruneArgs),
    /// Restore the cluster's etcd from a snapshot: verify it, stop etcd on every member,
    /// restore it on each, start etcd again; the data each member had is kept beside its new
    /// one. Waits until it ends (`--no-wait` to return once it started).
    Restore(RestoreArgs),
    /// The cluster's restores, newest first, with their steps.
    Restores(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    cluster: String,
    /// The snapshot's id, as `drover snapshot list` shows it.
    id: String,
    /// Return once the restore started.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    cluster: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    cluster: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    cluster: String,
    /// The snapshot's id; the newest when left out.
    id: Option<String>,
    /// Also restore it into a throwaway etcd (on one of the cluster's members, with the
    /// cluster's etcd image) and report its revision and key count.
    #[arg(long)]
    deep: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    cluster: String,
    /// Show what would be deleted, and delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

pub fn run(command: &Command, out: &mut dyn Write) -> Exit {
    let target = match command {
        Command::List(a) => &a.target,
        Command::Save(a) => &a.target,
        Command::Verify(a) => &a.target,
        Command::Prune(a) => &a.target,
        Command::Restore(a) => &a.target,
        Command::Restores(a) => &a.target,
    };
    let client = match Client::new(target) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let answered = runtime.block_on(async {
        match command {
            Command::List(a) => list(&client, a).await,
            Command::Save(a) => save(&client, a).await,
            Command::Verify(a) => verify(&client, a).await,
            Command::Prune(a) => prune(&client, a).await,
            Command::Restore(a) => restore(&client, a).await,
            Command::Restores(a) => restores(&client, a).await,
        }
    });
    match answered {
        Ok((text, exit)) => {
            let _ = write!(out, "{text}");
            exit
        }
        Err(e) => fail(&e),
    }
}

fn path(cluster: &str, tail: &str) -> String {
    format!("{CLUSTERS_PATH}/{cluster}/snapshots{tail}")
}

async fn list(client: &Client, a: &ListArgs) -> Result<(String, Exit), ClientError> {
    let doc: SnapshotsDocument = client
        .get(&path(&a.cluster, ""), MAX_SNAPSHOTS_DOCUMENT_BYTES)
        .await?;
    if doc.format_version != SNAPSHOTS_FORMAT_VERSION {
        let message = format!(
            "the daemon speaks snapshots document version {}, this drover {}",
            doc.format_version, SNAPSHOTS_FORMAT_VERSION
        );
        return Err(ClientError::Refused {
            status: 200,
            message,
        });
    }
    let text = match a.format {
        Format::Json => json(&doc),
        Format::Text => list_text(&doc),
    };
    Ok((text, Exit::Ok))
}

async fn save(client: &Client, a: &ClusterArgs) -> Result<(String, Exit), ClientError> {
    let waiting = spinner(&format!("taking a snapshot of {}", a.cluster));
    let save_path = path(&a.cluster, "");
    let saving = client.post_for::<SnapshotView>(&save_path, MAX_ANSWER_BYTES, LONG_WAIT);
    let saved = match &waiting {
        None => saving.await,
        Some(bar) => {
            // On a terminal: the bytes received so far, as the cluster's status says them.
            tokio::pin!(saving);
            loop {
                tokio::select! {
                    saved = &mut saving => break saved,
                    () = tokio::time::sleep(PROGRESS_POLL) => {
                        let status: Result<crate::api::ClusterStatus, _> = client
                            .get(&format!("{CLUSTERS_PATH}/{}", a.cluster), MAX_SNAPSHOTS_DOCUMENT_BYTES)
                            .await;
                        if let Some(n) = status.ok().and_then(|s| s.snapshots?.received_bytes) {
                            bar.set_message(format!("taking a snapshot of {}: {} received", a.cluster, bytes(n)));
                        }
                    }
                }
            }
        }
    };
    drop(waiting);
    let saved = saved?;
    let text = match a.format {
        Format::Json => json(&saved),
        Format::Text => format!(
            "saved {} from {} at revision {}: {} ({} raw) in {:.1}s\n",
            saved.id,
            saved.member,
            saved.revision,
            bytes(saved.compressed_size),
            bytes(saved.raw_size),
            saved.duration_ms as f64 / 1000.0
        ),
    };
    Ok((text, Exit::Ok))
}

async fn verify(client: &Client, a: &VerifyArgs) -> Result<(String, Exit), ClientError> {
    let id = a.id.as_deref().unwrap_or("newest");
    let waiting = spinner(&format!("verifying {}'s snapshot {id}", a.cluster));
    let query = if a.deep { "?deep=true" } else { "" };
    let verified: Result<Verification, _> = client
        .post_for(
            &path(&a.cluster, &format!("/{id}/verify{query}")),
            MAX_ANSWER_BYTES,
            LONG_WAIT,
        )
        .await;
    drop(waiting);
    let v = verified?;
    let exit = if v.passed { Exit::Ok } else { Exit::Invalid };
    let text = match a.format {
        Format::Json => json(&v),
        Format::Text if v.passed && v.deep => format!(
            "{} passed: restored by {} into a throwaway etcd: revision {}, {} keys ({})\n",
            v.id,
            v.by,
            v.revision.map_or("?".into(), |r| r.to_string()),
            v.keys.map_or("?".into(), |k| k.to_string()),
            v.bytes.map_or("?".into(), bytes),
        ),
        Format::Text if v.passed => format!(
            "{} passed: {} restored, revision {}\n",
            v.id,
            v.bytes.map_or("?".into(), bytes),
            v.revision.map_or("?".into(), |r| r.to_string())
        ),
        Format::Text => format!(
            "{} FAILED: {}\n",
            v.id,
            v.error.as_deref().unwrap_or("no reason given")
        ),
    };
    Ok((text, exit))
}

async fn prune(client: &Client, a: &PruneArgs) -> Result<(String, Exit), ClientError> {
    let query = if a.dry_run {
        "/prune?dryRun=true"
    } else {
        "/prune"
    };
    let doc: PruneDocument = client
        .post_for(
            &path(&a.cluster, query),
            MAX_SNAPSHOTS_DOCUMENT_BYTES,
            LONG_WAIT,
        )
        .await?;
    let failed = doc.deletions.iter().any(|d| {
        !matches!(
            d.outcome.as_str(),
            "deleted" | "would delete" | "deferred to the next run"
        )
    });
    let text = match a.format {
        Format::Json => json(&doc),
        Format::Text => prune_text(&doc),
    };
    Ok((text, if failed { Exit::Io } else { Exit::Ok }))
}

/// How often `save` looks at the bytes received, on a terminal.
const PROGRESS_POLL: Duration = Duration::from_millis(500);

async fn restore(client: &Client, a: &RestoreArgs) -> Result<(String, Exit), ClientError> {
    let body = RestoreRequestBody {
        snapshot: a.id.clone(),
    };
    let started: serde_json::Value = client
        .post_json(
            &format!("{CLUSTERS_PATH}/{}/restores", a.cluster),
            &body,
            MAX_ANSWER_BYTES,
        )
        .await?;
    let request = started["requestId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if a.no_wait {
        return Ok((
            format!(
                "restore {request} of {} from {} started; `drover snapshot restores {}` shows it\n",
                a.cluster, a.id, a.cluster
            ),
            Exit::Ok,
        ));
    }
    let waiting = spinner(&format!("restoring {} from {}", a.cluster, a.id));
    let mut printed = 0;
    let mut out = String::new();
    let run = loop {
        let run: RestoreRun = client
            .get(
                &format!(
                    "{CLUSTERS_PATH}/{}/restores/{request}?afterSteps={printed}",
                    a.cluster
                ),
                MAX_SNAPSHOTS_DOCUMENT_BYTES,
            )
            .await?;
        for step in run.steps.iter().skip(printed) {
            match &waiting {
                Some(bar) => bar.println(step),
                None => out.push_str(&format!("{step}\n")),
            }
        }
        printed = printed.max(run.steps.len());
        if let Some(bar) = &waiting {
            bar.set_message(format!(
                "restoring {} from {}: {:?}",
                a.cluster, a.id, run.phase
            ));
        }
        if run.phase.is_final() {
            break run;
        }
    };
    drop(waiting);
    let exit = if run.phase == RestorePhase::Done {
        let down = run
            .etcd_down_ms
            .map(|ms| {
                format!(
                    " (etcd was down {})",
                    humantime::format_duration(Duration::from_millis(ms))
                )
            })
            .unwrap_or_default();
        out.push_str(&format!("{} restored from {}{down}\n", a.cluster, a.id));
        Exit::Ok
    } else {
        out.push_str(&format!(
            "the restore FAILED: {}\n",
            run.error.as_deref().unwrap_or("no reason given")
        ));
        Exit::Invalid
    };
    Ok((out, exit))
}

async fn restores(client: &Client, a: &ListArgs) -> Result<(String, Exit), ClientError> {
    let doc: RestoresDocument = client
        .get(
            &format!("{CLUSTERS_PATH}/{}/restores", a.cluster),
            MAX_SNAPSHOTS_DOCUMENT_BYTES,
        )
        .await?;
    let text = match a.format {
        Format::Json => json(&doc),
        Format::Text => restores_text(&doc.restores),
    };
    Ok((text, Exit::Ok))
}

fn restores_text(runs: &[RestoreRun]) -> String {
    if runs.is_empty() {
        return "no restore was requested\n".into();
    }
    let mut out = String::new();
    for r in runs {
        out.push_str(&format!(
            "{} ({}): {:?}, snapshot {}, started {}{}\n",
            r.request_id,
            r.by,
            r.phase,
            r.snapshot,
            r.started_at,
            r.finished_at
                .as_ref()
                .map(|f| format!(", ended {f}"))
                .unwrap_or_default()
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("  error: {e}\n"));
        }
        for step in &r.steps {
            out.push_str(&format!("  {step}\n"));
        }
    }
    out
}

fn list_text(doc: &SnapshotsDocument) -> String {
    let mut out = String::new();
    if let Some(s) = &doc.schedule {
        out.push_str(&format!(
            "{} snapshots {} to store {}",
            doc.cluster, s.schedule, s.store
        ));
        if let Some(next) = &s.next_run {
            out.push_str(&format!(", next at {next}"));
        }
        out.push('\n');
        if let Some(why) = &s.blocked {
            out.push_str(&format!("blocked: {why}\n"));
        }
        if let Some(f) = &s.last_failure {
            out.push_str(&format!("last failure at {}: {}\n", f.at, f.reason));
        }
        out.push('\n');
    }
    if doc.snapshots.is_empty() {
        out.push_str(&format!("{} has no snapshot in its store\n", doc.cluster));
        return out;
    }
    let mut rows = vec![[
        "ID", "MEMBER", "REVISION", "SIZE", "RAW", "TOOK", "COMMIT", "VERIFIED",
    ]
    .map(String::from)
    .to_vec()];
    for s in &doc.snapshots {
        rows.push(vec![
            s.id.clone(),
            s.member.clone(),
            s.revision.to_string(),
            bytes(s.compressed_size),
            bytes(s.raw_size),
            format!("{:.1}s", s.duration_ms as f64 / 1000.0),
            s.git_commit.chars().take(12).collect(),
            match &s.verification {
                Some(v) if v.passed => format!("passed {}", v.at),
                Some(v) => format!("FAILED {}", v.at),
                None => "-".into(),
            },
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn prune_text(doc: &PruneDocument) -> String {
    let mut out = String::new();
    if doc.dry_run {
        out.push_str("dry run: nothing was deleted\n");
    }
    for k in &doc.kept {
        out.push_str(&format!("keep    {}  ({})\n", k.id, k.reasons.join(", ")));
    }
    for d in &doc.deletions {
        out.push_str(&format!("delete  {}  {}\n", d.target, d.outcome));
    }
    if doc.deletions.is_empty() {
        out.push_str("nothing to delete\n");
    }
    out
}

/// `1.2 GiB`, `340 KiB`, `12 B`.
fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

fn json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("API documents are JSON");
    text.push('\n');
    text
}

/// A spinner with the time elapsed on stderr while the daemon works, when stderr is a
/// terminal; its line is cleared when it is dropped.
fn spinner(what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let style = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let bar = indicatif::ProgressBar::new_spinner()
        .with_style(style)
        .with_message(what.to_string())
        .with_finish(indicatif::ProgressFinish::AndClear);
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}
