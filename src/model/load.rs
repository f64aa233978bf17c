//! Loading a repository's cluster files. `load_sources` is pure: files in, clusters and
//! diagnostics out, each file on its own so one broken file never hides another's clusters.
//! `load_dir` and `load_file` are the IO edge that reads them from disk.

use std::collections::BTreeMap;
use std::path::Path;

use super::diagnostic::{Diagnostic, Location, Problem, Severity};
use super::document::{
    parse_documents, read_limited, Checker, LoadError, SourceFile, MAX_FILE_BYTES,
};
use super::spec::ClusterFile;
use super::validate::check;
use super::yaml::Mark;
use super::Cluster;

/// Most cluster files read from one repository.
pub const MAX_FILES: usize = 10_000;
/// Where cluster files live in a repository, unless configured otherwise.
pub const DEFAULT_CLUSTERS_DIR: &str = "clusters";

/// The clusters a repository defines, and what is wrong with it.
#[derive(Debug, Default)]
pub struct Repository {
    /// Valid clusters, in file then document order.
    pub clusters: Vec<Cluster>,
    /// Every finding, ordered by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// The text of each file that has diagnostics, to show the offending lines.
    pub sources: BTreeMap<String, String>,
    /// How many cluster files were read.
    pub files: usize,
}

impl Repository {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity() == Severity::Error)
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity() == severity)
            .count()
    }

    /// Every diagnostic, rendered with its source line.
    pub fn render_diagnostics(&self) -> String {
        self.diagnostics
            .iter()
            .map(|d| {
                let src = self.sources.get(&d.location.file).map(String::as_str);
                d.render(src)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A cluster that passed its own file's checks, before repository-wide ones.
struct Candidate {
    cluster: Cluster,
    name_mark: Mark,
}

/// Loads every file. Pure: no IO, and the same files give the same result.
pub fn load_sources(files: Vec<SourceFile>, mut diagnostics: Vec<Diagnostic>) -> Repository {
    let mut candidates = Vec::new();
    let mut texts = BTreeMap::new();
    let count = files.len();
    for file in files {
        if let Some(text) = load_one(&file, &mut candidates, &mut diagnostics) {
            texts.insert(file.path, text);
        }
    }
    let clusters = unique_names(candidates, &mut diagnostics);
    diagnostics.sort_by(|a, b| a.location.cmp(&b.location));
    let sources = texts
        .into_iter()
        .filter(|(path, _)| diagnostics.iter().any(|d| &d.location.file == path))
        .collect();
    Repository {
        clusters,
        diagnostics,
        sources,
        files: count,
    }
}

/// Loads one file's clusters into `candidates`; returns its text when it is readable.
fn load_one(
    file: &SourceFile,
    candidates: &mut Vec<Candidate>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<String> {
    let parsed = parse_documents::<ClusterFile>(file, diagnostics);
    for (doc, index) in &parsed.documents {
        let mut checker = Checker::new(&file.path, index, diagnostics);
        if let Some(cluster) = check(doc, &mut checker) {
            let name_mark = index.value("metadata.name");
            candidates.push(Candidate { cluster, name_mark });
        }
    }
    parsed.text
}

/// Cluster names are unique across the repository. A name defined twice loads neither
/// definition, so adding a file can never take over a running cluster.
fn unique_names(candidates: Vec<Candidate>, diagnostics: &mut Vec<Diagnostic>) -> Vec<Cluster> {
    let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        by_name
            .entry(c.cluster.name.to_string())
            .or_default()
            .push(i);
    }
    let place = |c: &Candidate| {
        format!(
            "{}:{}:{}",
            c.cluster.source.file, c.name_mark.pos.line, c.name_mark.pos.column
        )
    };
    let mut dropped = vec![false; candidates.len()];
    for (name, idx) in &by_name {
        if idx.len() < 2 {
            continue;
        }
        for (k, &i) in idx.iter().enumerate() {
            let other = idx[if k == 0 { 1 } else { 0 }];
            let c = &candidates[i];
            let location = Location {
                file: c.cluster.source.file.clone(),
                pos: Some(c.name_mark.pos),
                len: c.name_mark.len,
            };
            let problem = Problem::DuplicateCluster {
                name: name.clone(),
                other: place(&candidates[other]),
            };
            diagnostics.push(Diagnostic::new(location, problem));
            dropped[i] = true;
        }
    }
    candidates
        .into_iter()
        .zip(dropped)
        .filter(|(_, d)| !d)
        .map(|(c, _)| c.cluster)
        .collect()
}

/// Reads every `*.yaml` / `*.yml` under `root/clusters_dir` (recursively, in path order, hidden
/// entries and symbolic links skipped) and loads them.
pub fn load_dir(root: &Path, clusters_dir: &str) -> Result<Repository, LoadError> {
    let dir = root.join(clusters_dir);
    if !dir.is_dir() {
        return Err(LoadError::NotFound { path: dir });
    }
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    let walker = walkdir::WalkDir::new(&dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = entry.map_err(|e| LoadError::Io {
            path: e.path().unwrap_or(&dir).to_path_buf(),
            source: e.into(),
        })?;
        if !is_yaml(entry.path()) || entry.file_type().is_dir() {
            continue;
        }
        let rel = relative(root, entry.path());
        let whole = |problem| {
            let location = Location {
                file: rel.clone(),
                pos: None,
                len: 1,
            };
            Diagnostic::new(location, problem)
        };
        if entry.path_is_symlink() {
            diagnostics.push(whole(Problem::SymlinkSkipped));
            continue;
        }
        if files.len() == MAX_FILES {
            let limit = MAX_FILES;
            diagnostics.push(whole(Problem::TooManyFiles { limit }));
            break;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if size > MAX_FILE_BYTES {
            let limit = MAX_FILE_BYTES;
            diagnostics.push(whole(Problem::FileTooLarge { size, limit }));
            continue;
        }
        match read_limited(entry.path()) {
            Ok(bytes) => files.push(SourceFile { path: rel, bytes }),
            Err(e) => {
                let reason = e.to_string();
                diagnostics.push(whole(Problem::Unreadable { reason }));
            }
        }
    }
    Ok(load_sources(files, diagnostics))
}

/// Loads a single cluster file, named in diagnostics as given.
pub fn load_file(path: &Path) -> Result<Repository, LoadError> {
    if !path.is_file() {
        return Err(LoadError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let name = path.display().to_string();
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        let limit = MAX_FILE_BYTES;
        let location = Location {
            file: name,
            pos: None,
            len: 1,
        };
        let too_large = Diagnostic::new(location, Problem::FileTooLarge { size, limit });
        return Ok(load_sources(Vec::new(), vec![too_large]));
    }
    let bytes = read_limited(path).map_err(io)?;
    let file = SourceFile { path: name, bytes };
    Ok(load_sources(vec![file], Vec::new()))
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
