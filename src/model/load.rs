//! Loading a repository's cluster files. `load_sources` is pure: files in, clusters and
//! diagnostics out, each file on its own so one broken file never hides another's clusters.
//! `load_dir` and `load_file` are the IO edge that reads them from disk.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::diagnostic::{Diagnostic, Location, Pos, Problem, Severity};
use super::spec::ClusterFile;
use super::validate::{check, Checker};
use super::yaml::{self, DocIndex, Mark};
use super::Cluster;

/// Largest cluster file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most cluster files read from one repository.
pub const MAX_FILES: usize = 10_000;
/// Where cluster files live in a repository, unless configured otherwise.
pub const DEFAULT_CLUSTERS_DIR: &str = "clusters";

/// One file's bytes, named by its path relative to the repository root (with `/`).
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

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

/// A file's documents, each deserialized and with the index of where its values are.
pub(crate) struct Parsed<T> {
    /// The file's text, when it could be read as text.
    pub text: Option<String>,
    pub documents: Vec<(T, DocIndex)>,
}

/// Reads a YAML file within the limits: size, UTF-8, the bounded first pass, then serde.
/// Every problem becomes a diagnostic; documents that parse are returned.
pub(crate) fn parse_documents<T: DeserializeOwned>(
    file: &SourceFile,
    diagnostics: &mut Vec<Diagnostic>,
) -> Parsed<T> {
    let at = |mark: Option<Mark>, problem| {
        let location = Location {
            file: file.path.clone(),
            pos: mark.map(|m| m.pos),
            len: mark.map_or(1, |m| m.len),
        };
        Diagnostic::new(location, problem)
    };
    let mut parsed = Parsed {
        text: None,
        documents: Vec::new(),
    };
    let size = file.bytes.len() as u64;
    if size > MAX_FILE_BYTES {
        let limit = MAX_FILE_BYTES;
        diagnostics.push(at(None, Problem::FileTooLarge { size, limit }));
        return parsed;
    }
    let text = match std::str::from_utf8(&file.bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = std::str::from_utf8(&file.bytes[..e.valid_up_to()]).unwrap_or_default();
            let mark = Mark {
                pos: end_of(valid),
                len: 1,
            };
            diagnostics.push(at(Some(mark), Problem::NotUtf8));
            parsed.text = Some(String::from_utf8_lossy(&file.bytes).into_owned());
            return parsed;
        }
    };
    parsed.text = Some(text.to_string());
    let docs = match yaml::index(text) {
        Ok(docs) => docs,
        Err(e) => {
            diagnostics.push(at(Some(e.mark), e.problem));
            return parsed;
        }
    };
    if docs.iter().all(|d| d.empty) {
        diagnostics.push(at(Some(Mark::START), Problem::EmptyFile));
        return parsed;
    }
    // serde_yaml's document iterator can repeat a syntax error forever where its parser (libyaml)
    // is stricter than the first pass's: read no more documents than the first pass counted, and
    // stop at an error that does not move.
    let count = docs.len();
    let mut last_error: Option<Mark> = None;
    let documents = serde_yaml::Deserializer::from_str(text).take(count);
    for (document, index) in documents.zip(docs) {
        if index.empty {
            continue;
        }
        match T::deserialize(document) {
            Ok(value) => parsed.documents.push((value, index)),
            Err(e) => {
                let (mark, reason) = schema_error(&e, &index);
                if last_error == Some(mark) {
                    break;
                }
                last_error = Some(mark);
                diagnostics.push(at(Some(mark), Problem::Schema { reason }));
            }
        }
    }
    parsed
}

/// Where a serde error points, and its message without serde_yaml's "at line L column C".
fn schema_error(e: &serde_yaml::Error, index: &DocIndex) -> (Mark, String) {
    let text = e.to_string();
    let reason = match text.rfind(" at line ") {
        Some(i) if text[i..].contains(" column ") => text[..i].to_string(),
        _ => text.clone(),
    };
    let mark = match e.location() {
        Some(l) => {
            let pos = Pos {
                line: l.line() as u32,
                column: l.column() as u32,
            };
            index.at_pos(pos).unwrap_or(Mark { pos, len: 1 })
        }
        None => index.start.unwrap_or(Mark::START),
    };
    (mark, reason)
}

/// The position just past `text`.
fn end_of(text: &str) -> Pos {
    let line = text.matches('\n').count() as u32 + 1;
    let last = text.rsplit('\n').next().unwrap_or("");
    Pos {
        line,
        column: last.chars().count() as u32 + 1,
    }
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

/// Why a path could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// Reads at most one byte past the limit, so a huge file costs no more than a small one.
pub(crate) fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}
