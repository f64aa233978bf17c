//! Fuzzing the loader with proptest: arbitrary bytes, mutations of real cluster files, and
//! generated YAML. Whatever the input, loading never panics, every diagnostic points inside
//! the file, and a file either yields its clusters or says why not. The daemon configuration
//! and snapshot manifests get the same treatment. `PROPTEST_CASES` sets the
//! number of cases per property (default 1000).

use drover::model::diagnostic::Severity;
use drover::model::{load_sources, Repository, SourceFile};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    crate::support::props::cases(1000)
}

fn load(bytes: Vec<u8>) -> (Repository, Vec<u8>) {
    let file = SourceFile {
        path: "clusters/f.yaml".into(),
        bytes: bytes.clone(),
    };
    (load_sources(vec![file], Vec::new()), bytes)
}

/// What must hold for any input.
fn check_invariants(repo: &Repository, bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(bytes);
    let lines = text.lines().count() as u32;
    for d in &repo.diagnostics {
        if let Some(pos) = d.location.pos {
            prop_assert!(pos.line >= 1 && pos.column >= 1, "{d:?}");
            prop_assert!(pos.line <= lines + 1, "line past the end: {d:?}");
        }
        // Rendering must not panic either.
        let _ = d.render(repo.sources.get(&d.location.file).map(String::as_str));
    }
    let errors = repo
        .diagnostics
        .iter()
        .any(|d| d.severity() == Severity::Error);
    if !errors && repo.clusters.is_empty() {
        // A file with no error and no cluster must have said so.
        prop_assert!(
            repo.diagnostics
                .iter()
                .any(|d| d.problem.code() == "empty-file"),
            "nothing loaded and nothing said: {:?}",
            repo.diagnostics
        );
    }
    Ok(())
}

const SEEDS: [&str; 2] = [
    include_str!("../../examples-repo/clusters/dev.yaml"),
    include_str!("../../examples-repo/clusters/k8s-reference.yaml"),
];

/// Fragments that matter to YAML, to the loader, or to templates.
const TOKENS: &[&str] = &[
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "  ",
    "\t",
    "'",
    "\"",
    "&a ",
    "*a",
    "<<: ",
    "---\n",
    "!!str ",
    "!tag ",
    "? ",
    "|\n",
    ">\n",
    "#",
    "~",
    "null",
    "0",
    "-1",
    "4294967296",
    "{{",
    "}}",
    "{% for x in y %}",
    "node.address",
    "\u{feff}",
    "\u{0}",
    "é",
    "etcd",
    "%",
];

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Duplicate { at: usize, len: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Edit::Insert { at, token }),
        (any::<usize>(), 1usize..200).prop_map(|(at, len)| Edit::Duplicate { at, len }),
    ]
}

fn apply(seed: &str, edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for e in edits {
        let n = b.len().max(1);
        match *e {
            Edit::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(b.len());
                b.drain(at.min(b.len())..end);
            }
            Edit::Insert { at, token } => {
                let at = at % (b.len() + 1);
                b.splice(at..at, TOKENS[token].bytes());
            }
            Edit::Duplicate { at, len } => {
                let at = at % n;
                let end = (at + len).min(b.len());
                let part = b[at.min(b.len())..end].to_vec();
                b.splice(at.min(b.len())..at.min(b.len()), part);
            }
        }
    }
    b
}

/// A small YAML value, rendered as block or flow text.
fn yaml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        "[a-z0-9.:/-]{0,12}",
        Just("''".to_string()),
        Just("~".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("{{ node.address }}".to_string()),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-zA-Z]{1,10}", inner), 0..5).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", body.join(", "))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (repo, bytes) = load(bytes);
        check_invariants(&repo, &bytes)?;
    }

    #[test]
    fn mutated_cluster_files_never_panic(
        seed in 0..SEEDS.len(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let (repo, bytes) = load(apply(SEEDS[seed], &edits));
        check_invariants(&repo, &bytes)?;
    }

    #[test]
    fn generated_cluster_shapes_never_panic(
        nodes in yaml_value(),
        etcd in yaml_value(),
        components in yaml_value(),
        rollout in yaml_value(),
    ) {
        let text = format!(
            "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: f}}\nspec:\n  nodes: {nodes}\n  etcd: {etcd}\n  components: {components}\n  rollout: {rollout}\n"
        );
        let (repo, bytes) = load(text.into_bytes());
        check_invariants(&repo, &bytes)?;
    }
}

/// The daemon configuration's parser: whatever the bytes, a configuration or diagnostics that
/// point inside the file, never a panic.
fn check_config(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let lines = String::from_utf8_lossy(&bytes).lines().count() as u32;
    match drover::config::parse("daemon.yaml", bytes) {
        Ok(_) => {}
        Err(drover::config::ConfigError::Invalid { diagnostics }) => {
            prop_assert!(!diagnostics.is_empty());
            for d in &diagnostics {
                if let Some(pos) = d.location.pos {
                    prop_assert!(pos.line >= 1 && pos.line <= lines + 1, "{d:?}");
                }
            }
        }
        Err(e) => prop_assert!(false, "unexpected error: {e}"),
    }
    Ok(())
}

const CONFIG_SEED: &str = include_str!("../../examples-repo/daemon.example.yaml");

proptest! {
    #![proptest_config(config())]

    #[test]
    fn daemon_configurations_never_panic(
        edits in prop::collection::vec(edit(), 0..8),
        noise in prop::collection::vec(any::<u8>(), 0..512),
        raw in any::<bool>(),
    ) {
        let bytes = if raw { noise } else { apply(CONFIG_SEED, &edits) };
        check_config(bytes)?;
    }
}

/// The seeds themselves load, so mutations start from valid files.
#[test]
fn seeds_are_valid() {
    for seed in SEEDS {
        let (repo, _) = load(seed.as_bytes().to_vec());
        assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
        assert_eq!(repo.clusters.len(), 1);
    }
}

/// A manifest as `save` writes it, the seed of the manifest parser's mutations.
const MANIFEST_SEED: &str = r#"{
  "format": 1,
  "cluster": "dev",
  "id": "20261125T060000Z-41-aaaaaaaa",
  "member": "node-1",
  "revision": 41,
  "etcdVersion": "3.4.23",
  "rawSize": 20512,
  "compressedSize": 1200,
  "rawSha256": "0101010101010101010101010101010101010101010101010101010101010101",
  "compressedSha256": "0202020202020202020202020202020202020202020202020202020202020202",
  "compression": "zstd",
  "compressionLevel": 3,
  "gitCommit": "0123456789abcdef0123456789abcdef01234567",
  "startedAt": "2026-11-25T06:00:00.123Z",
  "finishedAt": "2026-11-25T06:00:01.456Z"
}"#;

/// The manifest parser: whatever the bytes, a manifest that writes back to the same manifest,
/// or a typed refusal; never a panic.
fn check_manifest(bytes: &[u8]) -> Result<(), TestCaseError> {
    use drover::snapshot::manifest::{Manifest, ManifestError, MAX_MANIFEST_BYTES};
    match Manifest::parse(bytes) {
        Ok(manifest) => {
            prop_assert!(bytes.len() <= MAX_MANIFEST_BYTES);
            let again = Manifest::parse(&manifest.to_json());
            prop_assert_eq!(again.ok(), Some(manifest));
        }
        Err(ManifestError::TooLarge { size, .. }) => prop_assert_eq!(size, bytes.len()),
        Err(_) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn manifests_never_panic(
        edits in prop::collection::vec(edit(), 0..8),
        noise in prop::collection::vec(any::<u8>(), 0..512),
        raw in any::<bool>(),
    ) {
        let bytes = if raw { noise } else { apply(MANIFEST_SEED, &edits) };
        check_manifest(&bytes)?;
    }
}

#[test]
fn the_manifest_seed_is_valid() {
    let manifest = drover::snapshot::manifest::Manifest::parse(MANIFEST_SEED.as_bytes());
    assert!(manifest.is_ok(), "{manifest:?}");
}

proptest! {
    #![proptest_config(config())]

    /// Whatever a commit message or a reviewed-digest file holds, reading its approvals never
    /// panics and yields only well-formed digests, at most `MAX_APPROVALS` of them; a trailer
    /// appended to any message approves its digest.
    #[test]
    fn approvals_are_only_ever_digests(
        message in ".{0,400}",
        file in prop::option::of("(sha256:[0-9a-f]{64}|.{0,80})(\n(sha256:[0-9a-f]{64}|.{0,80})){0,6}"),
        digest in "[0-9a-f]{64}",
    ) {
        use drover::source::approval::{Approvals, MAX_APPROVALS};
        let approvals = Approvals::read(Some(&message), file.as_deref());
        prop_assert!(approvals.iter().count() <= MAX_APPROVALS);
        for d in approvals.iter() {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            prop_assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{d}");
        }
        let signed = format!("{}\n\nDrover-Plan: sha256:{digest}\n", message.trim_end());
        let want = format!("sha256:{digest}");
        prop_assert!(Approvals::read(Some(&signed), None).approves(&want), "{signed:?}");
    }
}
