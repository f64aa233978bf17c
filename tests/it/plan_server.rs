//! `drover plan --server`: the plan of a real Git repository compared with what a running
//! agent server's agents report (real agents, the real Docker engine): drift in all three
//! formats, the exit code it sets, and every way asking the daemon can fail.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::cli::{drover_in, text};
use crate::support::docker;
use crate::support::fleet::{Fleet, TestAgent};
use crate::support::git::TestRepo;
use crate::support::net::{free_port, unique_loopback};
use crate::support::require;

async fn drover(args: &[&str], dir: &Path) -> Output {
    drover_in(dir, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_with_server_shows_drift_in_every_format() {
    require!(docker::connect().await);
    let fleet = Fleet::start(
        "drift",
        &[
            ("n1", "etcd"),
            ("w1", "worker"),
            ("w2", "worker"),
            ("w3", "worker"),
        ],
    )
    .await;
    let labels = docker::test_labels();
    let worker = format!(
        "    worker:\n      - {{name: idle, image: '{}', command: [sleep, '3600'], labels: {labels}}}\n",
        docker::BUSYBOX_IMAGE
    );
    let running = ["n1", "w1", "w2"];
    let specs = fleet.declare(&running, &worker);
    // Git: the base is what the daemon runs; the pull request adds w3.
    let repo = TestRepo::init();
    repo.commit_files(
        &[("clusters/t.yaml", &fleet.cluster_yaml(&running, &worker))],
        "base",
    );
    let head = fleet.cluster_yaml(&["n1", "w1", "w2", "w3"], &worker);
    repo.commit_files(&[("clusters/t.yaml", &head)], "add w3");

    // w1 and w2 converge; then w2's agent stops. n1 never had an agent.
    let token = fleet.token(false, Duration::from_secs(3600));
    let w1 = TestAgent::start(&fleet, "w1", Some(token.clone())).await;
    let w2 = TestAgent::start(&fleet, "w2", Some(token.clone())).await;
    for (node, limit) in [("w1", 120), ("w2", 120)] {
        fleet
            .converged(node, &specs[node], Duration::from_secs(limit))
            .await;
    }
    let _dirs = w2.stop().await;

    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("operator-token");
    let dir = fleet.state.path().to_str().unwrap().to_string();
    let token_arg = token_file.to_str().unwrap().to_string();
    let (url, pin) = (fleet.url(), fleet.pin());
    let plan = |format: &'static str| {
        let args = [
            "plan",
            "--base",
            "HEAD~1",
            "--format",
            format,
            "--server",
            &url,
            "--ca-hash",
            &pin,
            "--api-token-file",
            &token_arg,
        ]
        .map(str::to_string);
        let path = repo.path().to_path_buf();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            drover(&args, &path).await
        }
    };

    // No operator token yet: the daemon says how to make one.
    std::fs::write(&token_file, "not-yet").unwrap();
    let out = plan("text").await;
    assert_eq!(out.status.code(), Some(77), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("drover token operator"),
        "{:?}",
        text(&out)
    );
    std::fs::remove_file(&token_file).unwrap();
    let made = drover(
        &[
            "token",
            "operator",
            "--state-dir",
            &dir,
            "--out",
            &token_arg,
        ],
        repo.path(),
    )
    .await;
    assert!(made.status.success(), "{:?}", text(&made));
    let operator = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !text(&made).0.contains(operator.trim()),
        "printed with --out"
    );

    let out = plan("text").await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("w3: create idle container"), "{stdout}");
    let drift_at = stdout.find("drift at https://").expect("a drift section");
    let drift = &stdout[drift_at..];
    assert!(
        drift.contains("1 of 3 nodes in sync with Git"),
        "only w1: {drift}"
    );
    assert!(drift.contains("n1: agent never connected"), "{drift}");
    assert!(drift.contains("n1: etcd: container missing"), "{drift}");
    assert!(
        drift.contains("w2: agent not connected (last seen 20"),
        "{drift}"
    );
    assert!(!drift.contains("w1:"), "w1 runs as planned: {drift}");
    assert!(
        !drift.contains("w3:"),
        "w3 is the change, not drift: {drift}"
    );

    let out = plan("markdown").await;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("### Drift"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "| {} | n1 | agent never connected |",
            fleet.cluster
        )),
        "{stdout}"
    );

    let out = plan("json").await;
    let (stdout, stderr) = text(&out);
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect(&stderr);
    let drift = &doc["drift"];
    assert_eq!(drift["nodes"], 3, "w3 is the plan's until it runs");
    assert_eq!(drift["inSync"], 1);
    assert!(drift["server"].as_str().unwrap().starts_with("https://"));
    let kinds: Vec<(String, String)> = drift["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["node"].as_str().unwrap().to_string(),
                i["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("n1", "disconnected"),
        ("n1", "missing"),
        ("w2", "disconnected"),
    ] {
        assert!(
            kinds.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} in {kinds:?}"
        );
    }

    drop(w1);
    fleet
        .logs
        .assert_free_of(&[operator.trim(), token.expose()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_with_server_fails_clearly() {
    let fleet = Fleet::start("driftfail", &[("n1", "etcd")]).await;
    fleet.declare(&["n1"], "    worker: []\n");
    let repo = TestRepo::init();
    repo.commit_files(
        &[(
            "clusters/t.yaml",
            &fleet.cluster_yaml(&["n1"], "    worker: []\n"),
        )],
        "base",
    );
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("token");
    let made = drover(
        &[
            "token",
            "operator",
            "--state-dir",
            fleet.state.path().to_str().unwrap(),
            "--out",
            good.to_str().unwrap(),
        ],
        repo.path(),
    )
    .await;
    assert!(made.status.success(), "{:?}", text(&made));
    let wrong = work.path().join("wrong");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();
    let missing = work.path().join("missing").display().to_string();
    let nobody = {
        let ip = unique_loopback(&[]);
        format!("https://{ip}:{}", free_port(ip))
    };
    let other_pin = format!("sha256:{}", "ab".repeat(32));
    let (url, pin) = (fleet.url(), fleet.pin());
    let (good, wrong) = (good.display().to_string(), wrong.display().to_string());
    let cases: Vec<([&str; 3], i32, &str)> = vec![
        // n1 has no agent: drift, so exit 2.
        ([&url, &pin, &good], 2, ""),
        ([&url, &pin, &wrong], 77, "the operator token is not valid"),
        ([&url, &pin, &missing], 64, "--api-token-file"),
        ([&url, "sha256:xyz", &good], 64, "--ca-hash must be"),
        (
            [&url, &other_pin, &good],
            77,
            "presents a CA whose key hash is not",
        ),
        ([&nobody, &pin, &good], 69, "cannot ask the daemon"),
        (
            ["http://127.0.0.1:1", &pin, &good],
            64,
            "is not an https://",
        ),
    ];
    for ([server, ca, token], code, message) in cases {
        let args = [
            "plan",
            "--base",
            "HEAD",
            "--server",
            server,
            "--ca-hash",
            ca,
            "--api-token-file",
            token,
        ];
        let out = drover(&args, repo.path()).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        if code == 2 {
            assert!(stdout.contains("0 of 1 nodes in sync"), "{stdout}");
        }
    }
    // --server without what it needs is a usage error from the parser.
    let out = drover(&["plan", "--server", &url], repo.path()).await;
    assert_eq!(out.status.code(), Some(64), "{:?}", text(&out));
}
