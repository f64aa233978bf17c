//! `drover plan` over real Git repositories: the revisions it compares, its three formats, and
//! its exit codes (0 no change, 2 changes, 1 invalid or unsafe, 64 bad usage).

use std::path::Path;
use std::process::{Command, Output};

use crate::support::git::TestRepo;

fn drover(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .current_dir(dir)
        .env_remove("DROVER_REPO")
        .env_remove("DROVER_FORMAT")
        .env_remove("DROVER_PLAN_BASE")
        .env_remove("DROVER_PLAN_HEAD")
        .output()
        .expect("run drover")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const DEV: &str = include_str!("../../examples-repo/clusters/dev.yaml");

/// A repository on `main` with the example cluster, and a `pr` branch checked out on top.
fn repo_with_branch(head: &str) -> TestRepo {
    let repo = TestRepo::init();
    repo.commit_files(&[("clusters/dev.yaml", DEV)], "base");
    {
        let r = repo.repo();
        let base = r.head().unwrap().peel_to_commit().unwrap();
        assert_eq!(r.head().unwrap().shorthand().ok(), Some("main"));
        r.branch("pr", &base, false).unwrap();
        r.set_head("refs/heads/pr").unwrap();
    }
    repo.commit_files(&[("clusters/dev.yaml", head)], "head");
    repo
}

#[test]
fn an_unchanged_repository_plans_nothing_and_exits_0() {
    let repo = repo_with_branch(DEV);
    let out = drover(&["plan"], repo.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("(merge-base of HEAD and main)"), "{text}");
    assert!(text.contains("cluster dev: no changes"), "{text}");
    assert!(text.contains("plan digest: sha256:"), "{text}");
}

#[test]
fn a_change_exits_2_in_every_format() {
    let head = DEV.replace("drover-test/etcd:3.4.23", "drover-test/etcd:3.4.24");
    let repo = repo_with_branch(&head);

    let out = drover(&["plan"], repo.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("node-1: recreate etcd container: image changed"),
        "{text}"
    );

    let out = drover(&["plan", "--format", "markdown"], repo.path());
    let md = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{md}");
    assert!(md.starts_with("### drover plan\n"), "{md}");
    assert!(md.contains("| `dev` | changes | 3 nodes |"), "{md}");
    assert!(
        md.contains("<details><summary><code>dev</code>: 3 steps in 1 phase</summary>"),
        "{md}"
    );

    let out = drover(&["plan", "--format", "json"], repo.path());
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["formatVersion"], 1);
    assert_eq!(json["valid"], true);
    let head_sha = repo.repo().head().unwrap().target().unwrap().to_string();
    assert_eq!(json["head"], head_sha.as_str());
    let steps = &json["plan"]["clusters"][0]["phases"][0]["batches"][0]["steps"];
    assert_eq!(steps[0]["action"], "recreateContainer");
    assert_eq!(steps[0]["container"], "drover.dev.node-1.etcd");

    // The digest is the same in every format and on every run.
    let digest = json["plan"]["digest"].as_str().unwrap().to_string();
    assert!(text.contains(&digest), "{text}");
    assert!(md.contains(&digest), "{md}");
}

#[test]
fn an_invalid_head_exits_1_and_holds_the_cluster_back() {
    let head = DEV.replace("roles: [worker]", "roles: [wroker]");
    let repo = repo_with_branch(&head);
    let out = drover(&["plan"], repo.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "clusters/dev.yaml:28:15: error: spec.nodes[3].roles[0]: unknown variant `wroker`"
        ),
        "{text}"
    );
    assert!(
        text.contains("cluster dev: invalid at this revision; its last good definition stays"),
        "{text}"
    );
    assert!(!text.contains("no longer declared"), "{text}");
}

#[test]
fn an_unsafe_plan_exits_1() {
    // Every control-plane node leaves its role: the plan refuses to run.
    let head = DEV.replace("roles: [etcd, controlplane]", "roles: [etcd]");
    let repo = repo_with_branch(&head);
    let out = drover(&["plan", "--format", "markdown"], repo.path());
    let md = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{md}");
    assert!(md.contains("| `dev` | unsafe |"), "{md}");
    assert!(
        md.contains(":x: **dev**: every control-plane node would be removed"),
        "{md}"
    );
}

#[test]
fn explicit_revisions_and_a_first_cluster() {
    let repo = TestRepo::init();
    let empty = repo.commit_files(&[("README", "clusters come later\n")], "empty");
    let first = repo.commit_files(&[("clusters/dev.yaml", DEV)], "first cluster");
    let (empty, first) = (empty.to_string(), first.to_string());
    let out = drover(&["plan", "--base", &empty, "--head", &first], repo.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("cluster dev: new cluster, "), "{text}");
    assert!(
        text.contains("node-1: start etcd member (new cluster; members node-1, node-2, node-3)"),
        "{text}"
    );
}

#[test]
fn bad_revisions_and_paths_exit_64() {
    let repo = repo_with_branch(DEV);
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &Path, &str); 3] = [
        (
            &["plan", "--base", "no-such-rev"],
            repo.path(),
            "unknown revision `no-such-rev`",
        ),
        (&["plan"], dir.path(), "not a Git repository"),
        (
            &["plan", "--clusters-dir", "nope"],
            repo.path(),
            "`nope` is not a directory at commit",
        ),
    ];
    for (args, cwd, message) in cases {
        let out = drover(args, cwd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

/// The text with its ANSI escape sequences (`ESC [ ... m`) taken out.
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('\u{1b}') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        rest = tail.find('m').map_or("", |end| &tail[end + 1..]);
    }
    out.push_str(rest);
    out
}

#[test]
fn text_is_coloured_only_when_asked_or_on_a_terminal() {
    let head = DEV.replace("drover-test/etcd:3.4.23", "drover-test/etcd:3.4.24");
    let repo = repo_with_branch(&head);
    // Standard output is a pipe here, so auto means plain.
    let plain = stdout(&drover(&["plan"], repo.path()));
    assert!(!plain.contains('\u{1b}'), "{plain}");
    assert_eq!(
        stdout(&drover(&["plan", "--color", "never"], repo.path())),
        plain
    );
    let coloured = stdout(&drover(&["plan", "--color", "always"], repo.path()));
    assert!(
        coloured.contains("\u{1b}[33mnode-1: recreate etcd container: image changed"),
        "a recreate is yellow: {coloured:?}"
    );
    assert!(coloured.contains("\u{1b}[1mcluster dev"), "{coloured:?}");
    assert_eq!(strip_ansi(&coloured), plain, "colour changes no text");
    // Colour is for the text format only.
    let md = stdout(&drover(
        &["plan", "--color", "always", "--format", "markdown"],
        repo.path(),
    ));
    assert!(!md.contains('\u{1b}'), "{md}");
}
