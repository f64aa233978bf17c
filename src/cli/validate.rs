//! `drover validate [PATH]`: loads a repository (or one file) and reports every diagnostic.
//! Exit 0 when valid (warnings allowed), 1 on errors.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::Exit;
use crate::model::diagnostic::{DiagnosticJson, Severity};
use crate::model::document::LoadError;
use crate::model::load::DEFAULT_CLUSTERS_DIR;
use crate::model::{load_dir, load_file, Repository, Role};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A repository's root, or a single cluster file.
    #[arg(default_value = ".", env = "DROVER_REPO")]
    path: PathBuf,
    /// The directory under the root that holds cluster files.
    #[arg(long, default_value = DEFAULT_CLUSTERS_DIR, env = "DROVER_CLUSTERS_DIR")]
    clusters_dir: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "DROVER_FORMAT")]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Version of the `--format json` document; bumped on any incompatible change.
const JSON_FORMAT_VERSION: u32 = 1;

pub fn run(args: &Args, out: &mut dyn Write) -> Exit {
    let loaded = if args.path.is_file() {
        load_file(&args.path)
    } else {
        load_dir(&args.path, &args.clusters_dir)
    };
    let repo = match loaded {
        Ok(repo) => repo,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return match e {
                LoadError::NotFound { .. } => Exit::Usage,
                LoadError::Io { .. } => Exit::Io,
            };
        }
    };
    let written = match args.format {
        Format::Text => write_text(&repo, out),
        Format::Json => write_json(&repo, out),
    };
    match (written, repo.has_errors()) {
        (Err(_), _) => Exit::Io,
        (Ok(()), true) => Exit::Invalid,
        (Ok(()), false) => Exit::Ok,
    }
}

fn write_text(repo: &Repository, out: &mut dyn Write) -> std::io::Result<()> {
    let rendered = repo.render_diagnostics();
    if !rendered.is_empty() {
        writeln!(out, "{rendered}")?;
    }
    for c in &repo.clusters {
        let etcd = c.nodes_with(Role::Etcd).count();
        writeln!(
            out,
            "ok: cluster {} ({}:{}): {} nodes, {} etcd",
            c.name,
            c.source.file,
            c.source.line,
            c.nodes.len(),
            etcd
        )?;
    }
    let (errors, warnings) = (repo.count(Severity::Error), repo.count(Severity::Warning));
    writeln!(
        out,
        "{} file{}, {} valid cluster{}: {} error{}, {} warning{}",
        repo.files,
        plural(repo.files),
        repo.clusters.len(),
        plural(repo.clusters.len()),
        errors,
        plural(errors),
        warnings,
        plural(warnings)
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The `--format json` document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    format_version: u32,
    valid: bool,
    files: usize,
    clusters: Vec<ClusterJson<'a>>,
    errors: usize,
    warnings: usize,
    diagnostics: Vec<DiagnosticJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterJson<'a> {
    name: &'a str,
    file: &'a str,
    line: u32,
    nodes: usize,
    etcd_members: usize,
}

fn write_json(repo: &Repository, out: &mut dyn Write) -> std::io::Result<()> {
    let report = Report {
        format_version: JSON_FORMAT_VERSION,
        valid: !repo.has_errors(),
        files: repo.files,
        clusters: repo
            .clusters
            .iter()
            .map(|c| ClusterJson {
                name: c.name.as_str(),
                file: &c.source.file,
                line: c.source.line,
                nodes: c.nodes.len(),
                etcd_members: c.nodes_with(Role::Etcd).count(),
            })
            .collect(),
        errors: repo.count(Severity::Error),
        warnings: repo.count(Severity::Warning),
        diagnostics: repo.diagnostics.iter().map(DiagnosticJson::from).collect(),
    };
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)
}
