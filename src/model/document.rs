//! Bounded YAML documents with spans and diagnostics, shared by cluster files and the daemon
//! configuration. A file is read within `MAX_FILE_BYTES` (`read_limited`), parsed into
//! documents with the span index of their values (`parse_documents`), and checked with a
//! `Checker` that reports each problem at the span that causes it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::diagnostic::{Diagnostic, Location, NameError, Pos, Problem, Severity};
use super::yaml::{self, DocIndex, Mark};

/// Largest file read: a cluster file or the daemon configuration.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One file's bytes and its name as diagnostics show it. A cluster file is named by its path
/// relative to the repository root (with `/`).
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: String,
    pub bytes: Vec<u8>,
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

/// Reads at most one byte past the limit, so a huge file costs no more than a small one.
pub(crate) fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
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

/// Where findings go while one document is checked.
pub(crate) struct Checker<'a> {
    /// The file's name, as diagnostics show it.
    pub file: &'a str,
    /// Where the document's values are.
    pub index: &'a DocIndex,
    diagnostics: &'a mut Vec<Diagnostic>,
    /// Errors (not warnings) reported so far.
    pub errors: usize,
}

impl<'a> Checker<'a> {
    /// A checker reporting into `diagnostics`, with spans from `index`.
    pub fn new(file: &'a str, index: &'a DocIndex, diagnostics: &'a mut Vec<Diagnostic>) -> Self {
        Checker {
            file,
            index,
            diagnostics,
            errors: 0,
        }
    }

    /// Records a problem at `mark`, counting errors.
    fn report(&mut self, mark: Mark, problem: Problem) {
        if problem.severity() == Severity::Error {
            self.errors += 1;
        }
        let location = Location {
            file: self.file.to_string(),
            pos: Some(mark.pos),
            len: mark.len,
        };
        self.diagnostics.push(Diagnostic::new(location, problem));
    }

    /// A problem with the value at `path`.
    pub fn at(&mut self, path: &str, problem: Problem) {
        let mark = self.index.value(path);
        self.report(mark, problem);
    }

    /// A problem with the key of the entry at `path`.
    pub fn at_key(&mut self, path: &str, problem: Problem) {
        let mark = self.index.key(path);
        self.report(mark, problem);
    }

    /// Parses a name with `parse`, reporting why it is invalid at `path`.
    pub fn name<T>(
        &mut self,
        path: &str,
        value: &str,
        what: &'static str,
        parse: fn(&str) -> Result<T, NameError>,
    ) -> Option<T> {
        match parse(value) {
            Ok(v) => Some(v),
            Err(reason) => {
                let problem = Problem::InvalidName {
                    what,
                    value: value.to_string(),
                    reason,
                };
                self.at(path, problem);
                None
            }
        }
    }
}
