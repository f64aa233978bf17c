//! The `drover` binary as operators and CI run it: exit codes, output formats, and the
//! examples repository, which must always validate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn drover(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .current_dir(dir)
        .env_remove("DROVER_REPO")
        .env_remove("DROVER_CLUSTERS_DIR")
        .env_remove("DROVER_FORMAT")
        .output()
        .expect("run drover")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_examples_repository_is_valid() {
    let out = drover(&["validate", "examples-repo"], &root());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ok: cluster dev (clusters/dev.yaml:"),
        "{text}"
    );
    assert!(text.contains("ok: cluster k8s-reference ("), "{text}");
    assert!(text.contains(": 0 errors, 0 warnings"), "{text}");
}

/// A repository with one broken file: its diagnostics are printed with file:line:column, the
/// valid cluster is still reported, and the exit code is 1.
#[test]
fn a_broken_file_is_reported_and_the_valid_clusters_still_load() {
    let repo = tempfile::tempdir().unwrap();
    let clusters = repo.path().join("clusters");
    std::fs::create_dir_all(&clusters).unwrap();
    std::fs::copy(
        root().join("examples-repo/clusters/dev.yaml"),
        clusters.join("dev.yaml"),
    )
    .unwrap();
    let broken = "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {name: broken}\nspec:\n  nodes:\n    - {name: n1, address: 127.0.0.9, roles: [etcd, master]}\n  etcd: {image: e}\n";
    std::fs::write(clusters.join("broken.yaml"), broken).unwrap();

    let out = drover(&["validate", "."], repo.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with(
            "clusters/broken.yaml:6:52: error: spec.nodes[0].roles[1]: unknown variant `master`"
        ),
        "{text}"
    );
    assert!(text.contains("6 |     - {name: n1, address: 127.0.0.9, roles: [etcd, master]}\n  |                                                    ^^^^^^"), "{text}");
    assert!(
        text.contains("ok: cluster dev (clusters/dev.yaml:"),
        "{text}"
    );
    assert!(
        text.contains("2 files, 1 valid cluster: 1 error, 0 warnings"),
        "{text}"
    );

    let out = drover(&["validate", "--format", "json", "."], repo.path());
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(json["formatVersion"], 1);
    assert_eq!(json["valid"], false);
    assert_eq!(json["clusters"][0]["name"], "dev");
    assert_eq!(json["clusters"][0]["etcdMembers"], 3);
    let d = &json["diagnostics"][0];
    assert_eq!(
        (
            &d["file"],
            &d["line"],
            &d["column"],
            &d["severity"],
            &d["code"]
        ),
        (
            &"clusters/broken.yaml".into(),
            &6.into(),
            &52.into(),
            &"error".into(),
            &"schema".into()
        )
    );

    // A single file can be checked on its own.
    let out = drover(&["validate", "clusters/dev.yaml"], repo.path());
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn warnings_alone_exit_zero() {
    let repo = tempfile::tempdir().unwrap();
    let clusters = repo.path().join("clusters");
    std::fs::create_dir_all(&clusters).unwrap();
    std::fs::write(clusters.join("empty.yaml"), "# to do\n").unwrap();
    let out = drover(&["validate"], repo.path());
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("warning: file holds no cluster"));
}

#[test]
fn bad_usage_exits_64_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["validate", "--bogus"], "unexpected argument '--bogus'"),
        (&["validate", "--format", "xml"], "invalid value 'xml'"),
        (
            &["validate", "does-not-exist"],
            "does-not-exist/clusters: no such file or directory",
        ),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
    ];
    for (args, message) in cases {
        let out = drover(args, dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    let out = drover(&["--help"], dir.path());
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn an_alias_bomb_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..30 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let file = dir.path().join("bomb.yaml");
    std::fs::write(&file, text).unwrap();
    let out = drover(&["validate", "bomb.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("bomb.yaml:6:10: error: aliases expand to more than"),
        "{}",
        stdout(&out)
    );
}
