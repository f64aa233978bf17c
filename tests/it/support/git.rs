//! Real git repositories (libgit2 through git2) in temporary directories.

use std::path::Path;

use git2::{Commit, IndexAddOption, Oid, Repository, RepositoryInitOptions, Signature};
use tempfile::TempDir;

pub const AUTHOR_NAME: &str = "drover-test";
pub const AUTHOR_EMAIL: &str = "test@drover.invalid";
/// The branch new repositories start on, whatever the user's git config says.
pub const BRANCH: &str = "main";

/// The author and committer of every test commit.
pub fn signature() -> Signature<'static> {
    Signature::now(AUTHOR_NAME, AUTHOR_EMAIL).expect("a valid signature")
}

/// A non-bare repository with a work tree in a temporary directory, deleted on drop.
pub struct TestRepo {
    repo: Repository,
    // Declared last: fields drop in order, so the repository closes before
    // its directory goes.
    dir: TempDir,
}

impl TestRepo {
    /// `git init -b main` in a fresh temporary directory.
    pub fn init() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("drover-test-repo-")
            .tempdir()
            .expect("creating a temporary directory");
        let mut options = RepositoryInitOptions::new();
        options.initial_head(BRANCH);
        let repo = Repository::init_opts(dir.path(), &options)
            .unwrap_or_else(|e| panic!("git init {}: {e}", dir.path().display()));
        Self { repo, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `file://` URL for the repository, as a remote would be configured.
    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Writes `contents` to `relative` in the work tree, creating directories.
    pub fn write(&self, relative: &str, contents: impl AsRef<[u8]>) {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Removes `relative` from the work tree (the next commit drops it).
    pub fn remove(&self, relative: &str) {
        let path = self.path().join(relative);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("rm {}: {e}", path.display()));
    }

    /// `git add -A && git commit -m message` on the current branch.
    pub fn commit_all(&self, message: &str) -> Oid {
        let mut index = self.repo.index().expect("opening the index");
        index
            .add_all(["*"], IndexAddOption::DEFAULT, None)
            .expect("git add");
        index.update_all(["*"], None).expect("staging deletions");
        index.write().expect("writing the index");
        let tree_id = index.write_tree().expect("writing the tree");
        let tree = self.repo.find_tree(tree_id).expect("reading the new tree");
        let parent = self.head_commit();
        let parents: Vec<&Commit<'_>> = parent.iter().collect();
        let signature = signature();
        self.repo
            .commit(
                Some("HEAD"),
                &signature,
                &signature,
                message,
                &tree,
                &parents,
            )
            .unwrap_or_else(|e| panic!("git commit -m {message:?}: {e}"))
    }

    /// Writes each `(path, contents)` and commits them all.
    pub fn commit_files(&self, files: &[(&str, &str)], message: &str) -> Oid {
        for (path, contents) in files {
            self.write(path, contents);
        }
        self.commit_all(message)
    }

    /// The commit HEAD points at, `None` before the first commit.
    pub fn head_commit(&self) -> Option<Commit<'_>> {
        self.repo
            .head()
            .ok()
            .and_then(|head| head.peel_to_commit().ok())
    }
}

/// The bytes of `path` in the tree of the commit `rev` resolves to, read from
/// the object database (no checkout). `None` if the path is not in that tree.
pub fn read_file_at(repo: &Repository, rev: &str, path: &str) -> Option<Vec<u8>> {
    let commit = repo
        .revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
        .unwrap_or_else(|e| panic!("resolving {rev:?} to a commit: {e}"));
    let tree = commit.tree().expect("reading the commit's tree");
    let entry = tree.get_path(Path::new(path)).ok()?;
    let blob = entry
        .to_object(repo)
        .and_then(|object| object.peel_to_blob())
        .unwrap_or_else(|e| panic!("{path} at {rev} is not a file: {e}"));
    Some(blob.content().to_vec())
}
