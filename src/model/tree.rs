//! Cluster files from a Git tree at a commit, read from the object database without a checkout:
//! the Git counterpart of `load_dir`, with the same rules (every `*.yaml` / `*.yml` under the
//! clusters directory, in path order; hidden entries skipped; symbolic links skipped with a
//! warning; size and count limits as diagnostics).

use std::path::Path;

use super::diagnostic::{Diagnostic, Location, Problem};
use super::document::{SourceFile, MAX_FILE_BYTES};
use super::load::MAX_FILES;

/// Why a tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("`{path}` is not a directory at commit {commit}")]
    NotFound { path: String, commit: String },
    #[error("reading commit {commit}")]
    Git {
        commit: String,
        #[source]
        source: git2::Error,
    },
}

/// The cluster files under `subdir/clusters_dir` at `commit`, named by their path from `subdir`
/// (the repository's root when there is none), with the diagnostics of files that were skipped.
pub fn read_tree(
    repo: &git2::Repository,
    commit: git2::Oid,
    subdir: Option<&str>,
    clusters_dir: &str,
) -> Result<(Vec<SourceFile>, Vec<Diagnostic>), TreeError> {
    let git = |source| TreeError::Git {
        commit: commit.to_string(),
        source,
    };
    let root = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git)?;
    let clusters_dir = clusters_dir.trim_matches('/');
    let dir = match subdir.map(|s| s.trim_matches('/')) {
        Some(sub) if !sub.is_empty() => format!("{sub}/{clusters_dir}"),
        _ => clusters_dir.to_string(),
    };
    let not_found = || TreeError::NotFound {
        path: dir.clone(),
        commit: commit.to_string(),
    };
    let entry = root.get_path(Path::new(&dir)).map_err(|_| not_found())?;
    let tree = repo.find_tree(entry.id()).map_err(|_| not_found())?;
    let mut walk = Walk::default();
    walk.tree(repo, &tree, clusters_dir).map_err(git)?;
    Ok((walk.files, walk.diagnostics))
}

#[derive(Default)]
struct Walk {
    files: Vec<SourceFile>,
    diagnostics: Vec<Diagnostic>,
    full: bool,
}

impl Walk {
    fn tree(
        &mut self,
        repo: &git2::Repository,
        tree: &git2::Tree<'_>,
        prefix: &str,
    ) -> Result<(), git2::Error> {
        // Git keeps tree entries sorted by name, so the walk is in path order.
        for entry in tree.iter() {
            if self.full {
                break;
            }
            let Ok(name) = entry.name() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let path = format!("{prefix}/{name}");
            match entry.kind() {
                Some(git2::ObjectType::Tree) => {
                    let sub = repo.find_tree(entry.id())?;
                    self.tree(repo, &sub, &path)?;
                }
                Some(git2::ObjectType::Blob) if is_yaml(name) => self.blob(repo, &entry, path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn blob(
        &mut self,
        repo: &git2::Repository,
        entry: &git2::TreeEntry<'_>,
        path: String,
    ) -> Result<(), git2::Error> {
        let location = Location {
            file: path.clone(),
            pos: None,
            len: 1,
        };
        if entry.filemode() == i32::from(git2::FileMode::Link) {
            self.diagnostics
                .push(Diagnostic::new(location, Problem::SymlinkSkipped));
            return Ok(());
        }
        if self.files.len() == MAX_FILES {
            let problem = Problem::TooManyFiles { limit: MAX_FILES };
            self.diagnostics.push(Diagnostic::new(location, problem));
            self.full = true;
            return Ok(());
        }
        let blob = repo.find_blob(entry.id())?;
        let size = blob.size() as u64;
        if size > MAX_FILE_BYTES {
            let problem = Problem::FileTooLarge {
                size,
                limit: MAX_FILE_BYTES,
            };
            self.diagnostics.push(Diagnostic::new(location, problem));
            return Ok(());
        }
        self.files.push(SourceFile {
            path,
            bytes: blob.content().to_vec(),
        });
        Ok(())
    }
}

fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}
