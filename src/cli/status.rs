//! `drover status [CLUSTER]`: what the daemon is doing, as tables (`--format json`: the API's
//! documents). `--watch` redraws it every second until interrupted.

use std::io::{IsTerminal as _, Write};
use std::time::Duration;

use super::client::{Client, ClientError, Target};
use super::Exit;
use crate::api::{
    ClusterStatus, ClustersDocument, ConditionType, CLUSTERS_FORMAT_VERSION, CLUSTERS_PATH,
    MAX_CLUSTERS_DOCUMENT_BYTES,
};

/// How often `--watch` redraws.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One cluster, in detail: its conditions, plan and nodes.
    cluster: Option<String>,
    /// Redraw every second until interrupted.
    #[arg(long)]
    watch: bool,
    /// The daemons sharing the state (state in etcd): their leases and which owns each
    /// cluster.
    #[arg(long, conflicts_with = "cluster")]
    daemons: bool,
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

/// The daemons sharing the state, then each cluster's owner.
fn daemons_text(view: &crate::api::SharingView) -> String {
    let mut out = format!(
        "this daemon: {} (lease {}, {} s){}\n\nDAEMON\tAGENTS\tCLUSTERS\n",
        view.me,
        view.lease,
        view.lease_ttl_seconds,
        if view.settling {
            "; a membership change is settling"
        } else {
            ""
        }
    );
    for d in &view.daemons {
        let owned = view.owners.values().filter(|o| **o == d.id).count();
        let silent = if d.silent {
            " (silent: not renewing its lease)"
        } else {
            ""
        };
        out.push_str(&format!("{}\t{}\t{owned}{silent}\n", d.id, d.agents_url));
    }
    out.push_str("\nCLUSTER\tOWNER\n");
    for (cluster, owner) in &view.owners {
        out.push_str(&format!("{cluster}\t{owner}\n"));
    }
    out
}

pub fn run(args: &Args, out: &mut dyn Write) -> Exit {
    let client = match Client::new(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    runtime.block_on(async {
        let clear = args.watch && std::io::stdout().is_terminal();
        loop {
            let text = match fetch(&client, args).await {
                Ok(text) => text,
                Err(e) if args.watch => format!("error: {}\n", super::error_chain(&e)),
                Err(e) => return fail(&e),
            };
            if clear {
                let _ = write!(out, "\x1b[H\x1b[2J");
            }
            let _ = write!(out, "{text}");
            let _ = out.flush();
            if !args.watch {
                return Exit::Ok;
            }
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = tokio::signal::ctrl_c() => return Exit::Ok,
            }
        }
    })
}

pub(super) fn fail(e: &ClientError) -> Exit {
    eprintln!("error: {}", super::error_chain(e));
    match e {
        ClientError::NoEndpoint { .. }
        | ClientError::Server(_)
        | ClientError::CaHash
        | ClientError::Token(_) => Exit::Usage,
        ClientError::PinMismatch { .. } | ClientError::Refused { .. } => Exit::Refused,
        ClientError::Unreachable { .. } => Exit::Unavailable,
        ClientError::TooLarge { .. } | ClientError::Document(_) => Exit::Io,
    }
}

/// The rendered answer.
async fn fetch(client: &Client, args: &Args) -> Result<String, ClientError> {
    let limit = MAX_CLUSTERS_DOCUMENT_BYTES;
    if args.daemons {
        let view: crate::api::SharingView = client.get(crate::api::DAEMONS_PATH, limit).await?;
        return Ok(match args.format {
            Format::Json => json(&view),
            Format::Text => daemons_text(&view),
        });
    }
    match &args.cluster {
        Some(name) => {
            let path = format!("{CLUSTERS_PATH}/{name}");
            let status: ClusterStatus = client.get(&path, limit).await?;
            Ok(match args.format {
                Format::Json => json(&status),
                Format::Text => cluster_text(&status),
            })
        }
        None => {
            let doc: ClustersDocument = client.get(CLUSTERS_PATH, limit).await?;
            if doc.format_version != CLUSTERS_FORMAT_VERSION {
                let message = format!(
                    "the daemon speaks clusters document version {}, this drover {}",
                    doc.format_version, CLUSTERS_FORMAT_VERSION
                );
                return Err(ClientError::Refused {
                    status: 200,
                    message,
                });
            }
            Ok(match args.format {
                Format::Json => json(&doc),
                Format::Text => clusters_text(&doc),
            })
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("documents are JSON");
    text.push('\n');
    text
}

/// A revision as people read it: commits cut to 12 digits.
fn short(revision: Option<&str>) -> String {
    match revision {
        None => "-".into(),
        Some(r) if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) => r[..12].into(),
        Some(r) => r.into(),
    }
}

/// Rows as columns padded to their widest cell.
pub(super) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The one-line state of a cluster: the condition that holds, and its reason and message.
fn state(status: &ClusterStatus) -> (String, String) {
    for kind in [
        ConditionType::Stalled,
        ConditionType::Reconciling,
        ConditionType::Ready,
    ] {
        if let Some(c) = status.condition(kind).filter(|c| c.status) {
            let word = match kind {
                ConditionType::Ready => "Ready",
                ConditionType::Reconciling => "Reconciling",
                ConditionType::Stalled => "Stalled",
                ConditionType::SnapshotOverdue => "SnapshotOverdue",
            };
            return (word.into(), c.message.clone());
        }
    }
    ("Unknown".into(), "no pass yet".into())
}

fn clusters_text(doc: &ClustersDocument) -> String {
    let s = &doc.source;
    let mut out = format!(
        "source {}  revision {}  checked {}\n",
        s.location,
        short(s.revision.as_deref()),
        s.last_check.as_deref().unwrap_or("never")
    );
    if let Some(e) = &s.error {
        out.push_str(&format!("source error: {e}\n"));
    }
    for d in &s.diagnostics {
        out.push_str(d);
    }
    out.push('\n');
    let mut rows = vec![[
        "CLUSTER", "STATE", "NODES", "DESIRED", "APPLIED", "SNAPSHOT", "MESSAGE",
    ]
    .map(String::from)
    .to_vec()];
    for c in &doc.clusters {
        let (word, message) = state(c);
        let ready = c.nodes.iter().filter(|n| n.ready).count();
        rows.push(vec![
            c.name.clone(),
            if c.held_back {
                format!("{word} (held back)")
            } else {
                word
            },
            format!("{ready}/{}", c.nodes.len()),
            short(c.desired_revision.as_deref()),
            short(c.applied_revision.as_deref()),
            snapshot_cell(c),
            message,
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// The newest snapshot's time, and `overdue` when it is.
fn snapshot_cell(c: &ClusterStatus) -> String {
    let Some(s) = &c.snapshots else {
        return "-".into();
    };
    let newest = s.last_success.as_ref().map_or("none", |r| r.at.as_str());
    if s.blocked.is_some() || s.overdue_ms.is_some() {
        format!("{newest} (overdue)")
    } else {
        newest.to_string()
    }
}

/// The cluster's snapshot schedule, its last runs and verification.
/// A revision held for an approved plan: the trailer that would approve it, and how the plan
/// against what runs differs from the one a reviewer saw.
fn hold_text(hold: &crate::api::PlanHold) -> String {
    let mut out = format!(
        "\nheld: revision {} runs only with an approved plan; the commit must carry\n  {}: {}\n",
        &hold.revision[..hold.revision.len().min(12)],
        crate::source::approval::TRAILER,
        hold.digest
    );
    for d in &hold.approved {
        out.push_str(&format!("  it approves {d}\n"));
    }
    if let Some(r) = &hold.reviewed {
        out.push_str(&format!(
            "  against {} (as drover plan shows it) the plan is {}\n",
            &r.base[..r.base.len().min(12)],
            r.digest
        ));
        for step in &r.only_running {
            out.push_str(&format!("  + {step}\n"));
        }
        for step in &r.only_reviewed {
            out.push_str(&format!("  - {step}\n"));
        }
    }
    out
}

fn snapshots_text(s: &crate::api::snapshots::SnapshotSchedule) -> String {
    let mut out = format!(
        "
snapshots {} to store {}",
        s.schedule, s.store
    );
    if let Some(next) = &s.next_run {
        out.push_str(&format!(", next at {next}"));
    }
    if s.running {
        out.push_str(" (one is being taken now)");
    }
    out.push('\n');
    if let Some(why) = &s.blocked {
        out.push_str(&format!("  blocked: {why}\n"));
    }
    match &s.last_success {
        Some(r) => out.push_str(&format!(
            "  last saved: {} at {} (revision {}, {} bytes, {:.1}s)\n",
            r.id,
            r.at,
            r.revision,
            r.compressed_size,
            r.duration_ms as f64 / 1000.0
        )),
        None => out.push_str("  last saved: none yet\n"),
    }
    if let Some(f) = &s.last_failure {
        out.push_str(&format!(
            "  last failure: {} ({} in a row): {}\n",
            f.at, s.failures, f.reason
        ));
    }
    if let Some(d) = &s.last_drill {
        let verdict = match (&d.error, d.keys) {
            (None, Some(keys)) => format!("passed on {}: {keys} keys", d.by),
            (None, None) => format!("passed on {}", d.by),
            (Some(e), _) => format!("FAILED: {e}"),
        };
        out.push_str(&format!(
            "  last restore drill: {} of {} {verdict}\n",
            d.at, d.id
        ));
    }
    if let Some(next) = &s.next_drill {
        out.push_str(&format!("  next restore drill at {next}\n"));
    }
    if let Some(v) = &s.last_verification {
        let verdict = if v.passed { "passed" } else { "failed" };
        out.push_str(&format!(
            "  last verification: {} of {} {verdict}",
            v.at, v.id
        ));
        if let Some(e) = &v.error {
            out.push_str(&format!(": {e}"));
        }
        out.push('\n');
    }
    out
}

fn cluster_text(c: &ClusterStatus) -> String {
    let (word, _) = state(c);
    let mut out = format!(
        "cluster {}  {word}{}  desired {}  applied {}\n\n",
        c.name,
        if c.held_back {
            " (held back: its file is invalid)"
        } else {
            ""
        },
        short(c.desired_revision.as_deref()),
        short(c.applied_revision.as_deref()),
    );
    let mut rows = vec![["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"]
        .map(String::from)
        .to_vec()];
    for k in &c.conditions {
        rows.push(vec![
            format!("{:?}", k.kind),
            if k.status { "True" } else { "False" }.into(),
            k.reason.clone(),
            k.since.clone(),
            k.message.clone(),
        ]);
    }
    out.push_str(&table(&rows));
    if let Some(plan) = &c.plan {
        out.push_str(&format!("\nplan {}\n", plan.digest));
        for p in &plan.phases {
            out.push_str(&format!(
                "  {}: {} batches, {} steps\n",
                p.phase, p.batches, p.steps
            ));
        }
        if let Some(w) = &plan.waiting_on {
            out.push_str(&format!("  now: {w}\n"));
        }
    }
    for f in &c.findings {
        out.push_str(&format!("{f}\n"));
    }
    if let Some(hold) = &c.hold {
        out.push_str(&hold_text(hold));
    }
    if let Some(s) = &c.snapshots {
        out.push_str(&snapshots_text(s));
    }
    out.push('\n');
    let mut rows = vec![[
        "NODE", "ADDRESS", "AGENT", "GEN", "APPLIED", "REVISION", "READY", "REASON",
    ]
    .map(String::from)
    .to_vec()];
    for n in &c.nodes {
        let gen = |g: Option<u64>| g.map_or("-".to_string(), |g| g.to_string());
        rows.push(vec![
            n.name.clone(),
            n.address.clone(),
            if n.connected { "connected" } else { "away" }.into(),
            gen(n.generation),
            gen(n.applied_generation),
            short(n.revision.as_deref()),
            if n.ready { "yes" } else { "no" }.into(),
            n.reason.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// `drover reconcile CLUSTER`: asks the daemon for a pass of the cluster now.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    cluster: String,
    #[command(flatten)]
    target: Target,
}

pub fn reconcile(args: &ReconcileArgs, out: &mut dyn Write) -> Exit {
    let path = format!("{CLUSTERS_PATH}/{}/reconcile", args.cluster);
    let done = format!("asked for a reconcile of {}", args.cluster);
    post(&args.target, &path, &done, out)
}

/// `drover cert rotate CLUSTER`: new etcd certificates on every node of the cluster.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    cluster: String,
    #[command(flatten)]
    target: Target,
}

pub fn rotate(args: &RotateArgs, out: &mut dyn Write) -> Exit {
    let path = format!("{CLUSTERS_PATH}/{}/certificates/rotate", args.cluster);
    let done = format!(
        "asked for new etcd certificates on every node of {}: members restart on them one at \
         a time; `drover status {}` shows the progress",
        args.cluster, args.cluster
    );
    post(&args.target, &path, &done, out)
}

/// POSTs to `path` of the operator API and says `done` when the daemon accepted it.
fn post(target: &Target, path: &str, done: &str, out: &mut dyn Write) -> Exit {
    let client = match Client::new(target) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    match runtime.block_on(client.post(path)) {
        Ok(()) => {
            let _ = writeln!(out, "{done}");
            Exit::Ok
        }
        Err(e) => fail(&e),
    }
}

/// `drover node show CLUSTER NODE`: what that node's agent receives and its last report.
#[derive(Debug, clap::Args)]
pub struct NodeShowArgs {
    cluster: String,
    node: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    target: Target,
}

pub fn node_show(args: &NodeShowArgs, out: &mut dyn Write) -> Exit {
    let client = match Client::new(&args.target) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    let path = format!("{CLUSTERS_PATH}/{}/nodes/{}", args.cluster, args.node);
    let view: crate::api::NodeView =
        match runtime.block_on(client.get(&path, MAX_CLUSTERS_DOCUMENT_BYTES)) {
            Ok(v) => v,
            Err(e) => return fail(&e),
        };
    let text = match args.format {
        Format::Json => json(&view),
        Format::Text => node_text(&view),
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Io,
    }
}

fn node_text(v: &crate::api::NodeView) -> String {
    let gen = |g: Option<u64>| g.map_or("-".to_string(), |g| g.to_string());
    let mut out = format!(
        "node {} of cluster {}  generation {}  checksum {}\n",
        v.node,
        v.cluster,
        gen(v.generation),
        v.checksum.as_deref().unwrap_or("-")
    );
    if let Some(r) = &v.report {
        out.push_str(&format!(
            "agent {}  last seen {}  applied {}\n",
            if r.connected { "connected" } else { "away" },
            r.last_seen.as_deref().unwrap_or("never"),
            gen(r.applied.as_ref().map(|a| a.generation)),
        ));
    }
    out.push_str("\ncontainers:\n");
    for (name, c) in &v.containers {
        let state = v
            .report
            .as_ref()
            .and_then(|r| r.containers.get(name))
            .map(|s| match (s.running, s.healthy, &s.reason) {
                (false, _, _) => "stopped".to_string(),
                (true, Some(false), Some(why)) => format!("unhealthy: {why}"),
                (true, Some(true), _) => "running, healthy".to_string(),
                (true, _, _) => "running".to_string(),
            })
            .unwrap_or_else(|| "not reported".into());
        out.push_str(&format!("  {name}: {}  [{state}]\n", c.image));
        if let Some(cmd) = &c.command {
            out.push_str(&format!("    command: {}\n", cmd.join(" ")));
        }
        if !c.args.is_empty() {
            out.push_str(&format!("    args: {}\n", c.args.join(" ")));
        }
        for b in &c.binds {
            out.push_str(&format!("    bind: {b}\n"));
        }
        if let Some(p) = v.probes.get(name) {
            out.push_str(&format!("    probe: {p}\n"));
        }
    }
    if !v.files.is_empty() {
        out.push_str("\nfiles (contents not shown):\n");
        for f in &v.files {
            out.push_str(&format!(
                "  {} {} {} bytes, sha256 {}\n",
                f.mode, f.path, f.bytes, f.digest
            ));
        }
    }
    if !v.certificates.is_empty() {
        out.push_str("\netcd certificates:\n");
        for c in &v.certificates {
            out.push_str(&format!(
                "  {}: {}  names {}  expires {}\n",
                c.file,
                c.subject,
                c.names.join(","),
                c.not_after
            ));
        }
        out.push_str(&format!("  keys (not shown): {}\n", v.keys.join(", ")));
    }
    if let Some(r) = &v.report {
        for s in &r.failed_steps {
            out.push_str(&format!(
                "failed: {} {}: {}\n",
                s.action,
                s.subject,
                s.error.as_deref().unwrap_or("")
            ));
        }
    }
    out
}
