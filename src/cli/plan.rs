//! `drover plan`: what merging a change would do. The cluster files at the base revision are
//! treated as running and those at the head revision as desired, both read from Git without a
//! checkout. With `--server`, what the daemon's agents report is compared too, and its drift
//! (what runs, but neither revision wants) shown in a section of its own. Exit 0 when nothing
//! changes, 2 when something does or drifted, 1 on invalid files or an unsafe plan.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::Exit;
use crate::api::{NodesDocument, MAX_NODES_DOCUMENT_BYTES, NODES_FORMAT_VERSION, NODES_PATH};
use crate::config::{self, ConfigError};
use crate::drift::{self, Drift};
use crate::model::diagnostic::{DiagnosticJson, Severity};
use crate::model::load::DEFAULT_CLUSTERS_DIR;
use crate::model::tree::{read_tree, TreeError};
use crate::model::{load_sources, Repository, SnapshotId};
use crate::pki;
use crate::plan::render::Palette;
use crate::plan::{self, as_if_running, render, Desired, Observed, Plan};
use crate::secret::Secret;
use crate::snapshot::{self, StoreError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Git repository holding the cluster files.
    #[arg(long, default_value = ".", env = "DROVER_REPO")]
    repo: PathBuf,
    /// The revision treated as running [default: the merge-base of HEAD and the default branch].
    #[arg(long, env = "DROVER_PLAN_BASE")]
    base: Option<String>,
    /// The revision to plan.
    #[arg(long, default_value = "HEAD", env = "DROVER_PLAN_HEAD")]
    head: String,
    /// The directory of the repository that holds cluster files.
    #[arg(long, default_value = DEFAULT_CLUSTERS_DIR, env = "DROVER_CLUSTERS_DIR")]
    clusters_dir: String,
    /// Output format: text, markdown (a pull-request comment) or json.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "DROVER_FORMAT")]
    format: Format,
    /// The daemon's configuration. With it, a restore request is checked against the snapshots
    /// its cluster's store holds.
    #[arg(long, env = "DROVER_CONFIG")]
    daemon_config: Option<PathBuf>,
    /// Colour in the text format: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, env = "DROVER_COLOR")]
    color: ColorChoice,
    /// The daemon (`https://HOST:PORT`, the address agents dial) whose live state to compare:
    /// its drift is shown in a section of its own.
    #[arg(long, env = "DROVER_PLAN_SERVER", requires_all = ["ca_hash", "api_token_file"])]
    server: Option<String>,
    /// With --server: the daemon CA's key hash, as `drover token create` prints it.
    #[arg(long, env = "DROVER_CA_HASH")]
    ca_hash: Option<String>,
    /// With --server: a file holding the operator token (`drover token operator`).
    #[arg(long, env = "DROVER_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// The palette for standard output.
    fn palette(self) -> Palette {
        use std::io::IsTerminal as _;
        let auto = || {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
        };
        match self {
            ColorChoice::Always => Palette::ansi(),
            ColorChoice::Auto if auto() => Palette::ansi(),
            ColorChoice::Auto | ColorChoice::Never => Palette::plain(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Markdown,
    Json,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
enum PlanError {
    #[error("{path}: not a Git repository")]
    NotARepository {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("unknown revision `{rev}`")]
    UnknownRevision {
        rev: String,
        #[source]
        source: git2::Error,
    },
    #[error("no default branch to take the merge-base with (tried origin/HEAD, main, master); give --base")]
    NoDefaultBranch,
    #[error("no merge-base between HEAD and {branch}")]
    NoMergeBase {
        branch: String,
        #[source]
        source: git2::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{}", .0.render().trim_end())]
    Config(ConfigError),
    #[error("cluster {cluster} keeps snapshots in store `{store}`, which the daemon configuration does not define")]
    StoreNotConfigured { cluster: String, store: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the runtime that lists snapshot stores")]
    Runtime(#[source] std::io::Error),
    #[error("--server {0} is not an https:// (or wss://) URL with a host")]
    ServerUrl(String),
    #[error("--ca-hash must be `sha256:` and 64 lowercase hex digits, as `drover token create` prints it")]
    CaHash,
    #[error("--api-token-file")]
    TokenFile(#[source] crate::secret::SecretError),
    #[error("the daemon at {server} presents a CA whose key hash is not the --ca-hash given")]
    PinMismatch { server: String },
    #[error("cannot ask the daemon at {server}")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the daemon at {server} answered {status}: {message}")]
    Refused {
        server: String,
        status: u16,
        message: String,
    },
    #[error("the daemon's nodes document is over {limit} bytes")]
    DocumentTooLarge { limit: usize },
    #[error("the daemon's nodes document is not valid")]
    Document(#[source] serde_json::Error),
    #[error("the daemon's nodes document has format version {0}; this drover reads version {NODES_FORMAT_VERSION}")]
    DocumentVersion(u32),
}

impl PlanError {
    fn exit(&self) -> Exit {
        match self {
            PlanError::Tree(TreeError::Git { .. })
            | PlanError::Store(_)
            | PlanError::Runtime(_)
            | PlanError::DocumentTooLarge { .. }
            | PlanError::Document(_)
            | PlanError::DocumentVersion(_) => Exit::Io,
            PlanError::Unreachable { .. } => Exit::Unavailable,
            PlanError::PinMismatch { .. } | PlanError::Refused { .. } => Exit::Refused,
            _ => Exit::Usage,
        }
    }
}

/// One side of the comparison.
struct Side {
    commit: git2::Oid,
    repo: Repository,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Exit {
    let loaded = load_sides(args).and_then(|(base, head, label)| {
        let known = match &args.daemon_config {
            Some(path) => Some(known_snapshots(path, &head.repo)?),
            None => None,
        };
        let running = match &args.server {
            Some(server) => Some(fetch_nodes(server, args)?),
            None => None,
        };
        Ok((base, head, label, known, running))
    });
    let (base, head, base_label, known_snapshots, running) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return e.exit();
        }
    };
    let observed = Observed {
        clusters: base
            .repo
            .clusters
            .iter()
            .map(|c| (c.name.to_string(), as_if_running(c)))
            .collect(),
    };
    // A running cluster whose file has errors at head is held back, not removed.
    let invalid_files: BTreeSet<&str> = head
        .repo
        .diagnostics
        .iter()
        .filter(|d| d.severity() == Severity::Error)
        .map(|d| d.location.file.as_str())
        .collect();
    let desired = Desired {
        clusters: head.repo.clusters.iter().collect(),
        known_snapshots,
        held_back: base
            .repo
            .clusters
            .iter()
            .filter(|c| invalid_files.contains(c.source.file.as_str()))
            .map(|c| c.name.to_string())
            .collect(),
    };
    let plan = plan::plan(&desired, &observed, SystemTime::now());
    let drift = running.map(|(server, nodes)| {
        let base: Vec<_> = base.repo.clusters.iter().collect();
        let drift = drift::drift(&base, &desired.clusters, &nodes);
        (server, drift)
    });
    let drift = drift.as_ref().map(|(s, d)| (s.as_str(), d));
    let written = match args.format {
        Format::Text => {
            let palette = args.color.palette();
            write_text(out, &base, &head, &base_label, &plan, drift, &palette)
        }
        Format::Markdown => write_markdown(out, &base, &head, &plan, drift),
        Format::Json => write_json(out, &base, &head, &plan, drift),
    };
    if written.is_err() {
        return Exit::Io;
    }
    if head.repo.has_errors() || plan.has_errors() {
        Exit::Invalid
    } else if plan.has_changes() || drift.is_some_and(|(_, d)| !d.is_empty()) {
        Exit::Changes
    } else {
        Exit::Ok
    }
}

fn load_sides(args: &Args) -> Result<(Side, Side, String), PlanError> {
    let repo =
        git2::Repository::discover(&args.repo).map_err(|source| PlanError::NotARepository {
            path: args.repo.clone(),
            source,
        })?;
    let resolve = |rev: &str| {
        repo.revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map(|c| c.id())
            .map_err(|source| PlanError::UnknownRevision {
                rev: rev.to_string(),
                source,
            })
    };
    let head = resolve(&args.head)?;
    let (base, label) = match &args.base {
        Some(rev) => (resolve(rev)?, rev.clone()),
        None => {
            let branch = default_branch(&repo).ok_or(PlanError::NoDefaultBranch)?;
            let tip = resolve(&branch)?;
            let base = repo
                .merge_base(head, tip)
                .map_err(|source| PlanError::NoMergeBase {
                    branch: branch.clone(),
                    source,
                })?;
            (base, format!("merge-base of {} and {branch}", args.head))
        }
    };
    // A base without the clusters directory is a repository before its first cluster.
    let base_files = match read_tree(&repo, base, None, &args.clusters_dir) {
        Err(TreeError::NotFound { .. }) => (Vec::new(), Vec::new()),
        other => other?,
    };
    let (files, diagnostics) = read_tree(&repo, head, None, &args.clusters_dir)?;
    let base = Side {
        commit: base,
        repo: load_sources(base_files.0, base_files.1),
    };
    let head = Side {
        commit: head,
        repo: load_sources(files, diagnostics),
    };
    Ok((base, head, label))
}

/// The snapshots each cluster with a restore request has in its store.
fn known_snapshots(
    path: &std::path::Path,
    head: &Repository,
) -> Result<BTreeMap<String, BTreeSet<SnapshotId>>, PlanError> {
    let config = config::load(path).map_err(PlanError::Config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PlanError::Runtime)?;
    let mut known = BTreeMap::new();
    for cluster in head.clusters.iter().filter(|c| c.etcd.restore.is_some()) {
        let Some(policy) = &cluster.etcd.snapshots else {
            continue; // the planner refuses a restore without a store
        };
        let store =
            config
                .stores
                .get(&policy.store)
                .ok_or_else(|| PlanError::StoreNotConfigured {
                    cluster: cluster.name.to_string(),
                    store: policy.store.to_string(),
                })?;
        let store = snapshot::open(store)?;
        let ids = runtime.block_on(snapshot::list(store.as_ref(), &cluster.name))?;
        known.insert(cluster.name.to_string(), ids);
    }
    Ok(known)
}

/// The daemon's nodes document, and the URL it came from.
fn fetch_nodes(server: &str, args: &Args) -> Result<(String, NodesDocument), PlanError> {
    let mut url = url::Url::parse(server).map_err(|_| PlanError::ServerUrl(server.into()))?;
    if url.scheme() == "wss" {
        url.set_scheme("https")
            .map_err(|()| PlanError::ServerUrl(server.into()))?;
    }
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(PlanError::ServerUrl(server.into()));
    }
    url.set_path(NODES_PATH);
    let pin = args.ca_hash.as_deref().unwrap_or_default();
    if !pki::is_pin(pin) {
        return Err(PlanError::CaHash);
    }
    let token_file = args.api_token_file.as_deref().unwrap_or(Path::new(""));
    let token = Secret::from_file(token_file).map_err(PlanError::TokenFile)?;
    let tls = pki::agent_config(pin, None).map_err(|_| PlanError::CaHash)?;
    let shown = url.to_string();
    let unreachable = |source: reqwest::Error| {
        if pki::is_pin_mismatch(&source) {
            PlanError::PinMismatch {
                server: shown.clone(),
            }
        } else {
            PlanError::Unreachable {
                server: shown.clone(),
                source,
            }
        }
    };
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .timeout(SERVER_TIMEOUT)
        .build()
        .map_err(&unreachable)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PlanError::Runtime)?;
    let body = runtime.block_on(async {
        let mut response = client
            .get(url.clone())
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(&unreachable)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(&unreachable)? {
            if body.len() + chunk.len() > MAX_NODES_DOCUMENT_BYTES {
                return Err(PlanError::DocumentTooLarge {
                    limit: MAX_NODES_DOCUMENT_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
            return Err(PlanError::Refused {
                server: shown.clone(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    })?;
    Ok((url.origin().ascii_serialization(), parse_nodes(&body)?))
}

/// A nodes document from the daemon's answer. The version is read first, so a newer daemon's
/// document gets a clear error rather than a parse error.
fn parse_nodes(body: &[u8]) -> Result<NodesDocument, PlanError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Version {
        format_version: u32,
    }
    let version: Version = serde_json::from_slice(body).map_err(PlanError::Document)?;
    if version.format_version != NODES_FORMAT_VERSION {
        return Err(PlanError::DocumentVersion(version.format_version));
    }
    serde_json::from_slice(body).map_err(PlanError::Document)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_document_is_checked_before_use() {
        let ok = br#"{"formatVersion":1,"nodes":[{"cluster":"dev","node":"n1","connected":false,
            "lastSeen":null,"generation":1,"applied":null,"containers":{},"failedSteps":[],
            "aFieldFromANewerDaemon":true}]}"#;
        let nodes = parse_nodes(ok).expect("a valid document, unknown fields ignored");
        assert_eq!(nodes.nodes[0].node, "n1");
        let cases: [(&[u8], &str); 5] = [
            (b"<html>proxy error</html>", "is not valid"),
            (b"{}", "is not valid"),
            (
                br#"{"formatVersion":2,"nodes":"whatever"}"#,
                "format version 2",
            ),
            (
                br#"{"formatVersion":1,"nodes":[{"cluster":"dev"}]}"#,
                "is not valid",
            ),
            (
                br#"{"formatVersion":1,"nodes":[{"cluster":1}]}"#,
                "is not valid",
            ),
        ];
        for (body, message) in cases {
            let e = parse_nodes(body).expect_err("refused");
            assert!(e.to_string().contains(message), "{e}");
            assert_eq!(e.exit(), Exit::Io);
        }
    }
}

/// How long `--server` may take to answer.
const SERVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The branch pull requests merge into: origin's HEAD, else `main`, else `master`.
fn default_branch(repo: &git2::Repository) -> Option<String> {
    if let Ok(r) = repo.find_reference("refs/remotes/origin/HEAD") {
        if let Ok(Some(target)) = r.symbolic_target() {
            return Some(target.trim_start_matches("refs/remotes/").to_string());
        }
    }
    ["main", "master"]
        .into_iter()
        .find(|b| repo.find_branch(b, git2::BranchType::Local).is_ok())
        .map(String::from)
}

fn short(oid: git2::Oid) -> String {
    oid.to_string()[..12].to_string()
}

fn write_text(
    out: &mut dyn Write,
    base: &Side,
    head: &Side,
    label: &str,
    plan: &Plan,
    drift: Option<(&str, &Drift)>,
    palette: &Palette,
) -> std::io::Result<()> {
    writeln!(
        out,
        "base {} ({label}) -> head {}",
        short(base.commit),
        short(head.commit)
    )?;
    if base.repo.has_errors() {
        writeln!(
            out,
            "note: the base revision has invalid files; their clusters are treated as not running"
        )?;
    }
    let diagnostics = head.repo.render_diagnostics();
    if !diagnostics.is_empty() {
        writeln!(out, "{diagnostics}")?;
    }
    write!(out, "{}", render::text_styled(plan, palette))?;
    let trailers = approval_trailers(plan);
    if !trailers.is_empty() {
        writeln!(
            out,
            "approve with (requireApprovedPlan), in the commit message:"
        )?;
        write!(out, "{trailers}")?;
    }
    if let Some((server, drift)) = drift {
        write!(
            out,
            "{}",
            drift::render::drift_text_styled(server, drift, palette)
        )?;
    }
    Ok(())
}

fn write_markdown(
    out: &mut dyn Write,
    base: &Side,
    head: &Side,
    plan: &Plan,
    drift: Option<(&str, &Drift)>,
) -> std::io::Result<()> {
    let body = render::markdown(plan);
    let (title, rest) = body.split_once('\n').unwrap_or((&body, ""));
    writeln!(out, "{title}\n")?;
    writeln!(out, "`{}` → `{}`", short(base.commit), short(head.commit))?;
    if head.repo.has_errors() {
        writeln!(
            out,
            "\n:x: **Invalid cluster files** — they change nothing until fixed:\n\n```"
        )?;
        write!(out, "{}", head.repo.render_diagnostics())?;
        writeln!(out, "```")?;
    }
    write!(out, "{rest}")?;
    let trailers = approval_trailers(plan);
    if !trailers.is_empty() {
        writeln!(
            out,
            "\nWhere the daemon requires an approved plan, merge with these trailers in the \
             commit message:\n\n```\n{trailers}```"
        )?;
    }
    if let Some((server, drift)) = drift {
        write!(out, "{}", drift::render::drift_markdown(server, drift))?;
    }
    Ok(())
}

/// A `Drover-Plan:` trailer per cluster whose plan has steps: a commit that carries them
/// approves exactly these plans.
fn approval_trailers(plan: &Plan) -> String {
    plan.clusters
        .iter()
        .filter(|c| c.steps().next().is_some())
        .map(|c| format!("{}: {}\n", crate::source::approval::TRAILER, c.digest))
        .collect()
}

/// The `--format json` document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    format_version: u32,
    base: String,
    head: String,
    valid: bool,
    diagnostics: Vec<DiagnosticJson<'a>>,
    plan: &'a Plan,
    /// With `--server` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<DriftJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DriftJson<'a> {
    server: &'a str,
    #[serde(flatten)]
    drift: &'a Drift,
}

fn write_json(
    out: &mut dyn Write,
    base: &Side,
    head: &Side,
    plan: &Plan,
    drift: Option<(&str, &Drift)>,
) -> std::io::Result<()> {
    let report = Report {
        format_version: plan::PLAN_FORMAT_VERSION,
        base: base.commit.to_string(),
        head: head.commit.to_string(),
        valid: !head.repo.has_errors(),
        diagnostics: head
            .repo
            .diagnostics
            .iter()
            .map(DiagnosticJson::from)
            .collect(),
        plan,
        drift: drift.map(|(server, drift)| DriftJson { server, drift }),
    };
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)
}
