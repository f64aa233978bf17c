//! `drover token create`, `list`, `revoke`, `drover node list` and `drover agent` as an
//! operator runs them: the token and the full agent command line with the CA hash; listing and
//! revoking by id; joined nodes with their keys and status; the
//! agent's preflight checks, one clear message and exit code per failure; the agent binary
//! joining, converging, keeping its containers while the daemon is down, and stopping on
//! SIGTERM. No output ever contains the token.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use drover::agent::credential::DataDir;
use drover::agent::session::{self, Dial, SessionError};
use drover::pki::DaemonCa;
use drover::protocol::Refusal;
use drover::protocol::TokenRefusal;
use drover::secret::Secret;
use drover::state::StateDir;
use tokio::process::Command;

use crate::support::cli::{drover, text, BIN};
use crate::support::docker;
use crate::support::fleet::Fleet;
use crate::support::net::{free_port, unique_loopback};
use crate::support::require;
use crate::support::wait::eventually;

const HOUR: Duration = Duration::from_secs(3600);

/// The token in `token create`'s output: the indented line of the form `<id>.<secret>`.
fn printed_token(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| {
            l.split_once('.')
                .is_some_and(|(id, secret)| id.len() == 8 && secret.len() == 64 && !l.contains(' '))
        })
        .map(str::to_string)
}

#[tokio::test]
async fn token_create_prints_the_agent_command_line_with_the_ca_hash() {
    // A state directory the command creates, so its mode is the command's doing.
    let work = tempfile::tempdir().unwrap();
    let state_path = work.path().join("state");
    let dir = state_path.to_str().unwrap();
    let out = drover(&[
        "token",
        "create",
        "dev",
        "--server",
        "wss://127.0.0.1:7443",
        "--state-dir",
        dir,
    ])
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let pin = DaemonCa::ensure(&StateDir::new(state_path.as_path()).into())
        .unwrap()
        .pin()
        .to_string();
    assert!(stdout.contains(&format!(
        "drover agent --server wss://127.0.0.1:7443 --ca-hash {pin} --token-file /etc/drover/join-token --node-name <NODE>"
    )), "{stdout}");
    assert!(stdout.contains("single use, expires"), "{stdout}");
    let token = printed_token(&stdout).expect("the token is printed");
    let stored = std::fs::read_to_string(state_path.as_path().join("join-tokens.json")).unwrap();
    assert!(
        !stored.contains(token.split_once('.').unwrap().1),
        "stored in clear"
    );
    let mode = std::fs::metadata(state_path.as_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the state directory is open to others: {mode:o}"
    );

    // --out: a new owner-only file, and the token is not on stdout.
    let file = state_path.as_path().join("token");
    let file_arg = file.to_str().unwrap();
    let args = [
        "token",
        "create",
        "dev",
        "--server",
        "wss://127.0.0.1:7443",
        "--state-dir",
        dir,
        "--reusable",
        "--ttl",
        "2h",
        "--out",
        file_arg,
    ];
    let out = drover(&args).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let token = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!stdout.contains(token.trim()), "{stdout}");
    assert!(
        stdout.contains(&format!("--token-file {file_arg}")),
        "{stdout}"
    );
    assert!(stdout.contains("reusable"), "{stdout}");
    // The file is never overwritten.
    let again = drover(&args).await;
    assert_eq!(again.status.code(), Some(74), "{:?}", text(&again));

    for (bad, why) in [
        (vec!["--ttl", "8d"], "--ttl"),
        (vec!["--server", "http://x"], "--server"),
    ] {
        let mut args = vec![
            "token",
            "create",
            "dev",
            "--state-dir",
            dir,
            "--server",
            "wss://127.0.0.1:7443",
        ];
        args.extend(bad);
        let out = drover(&args).await;
        assert_eq!(out.status.code(), Some(64), "{:?}", text(&out));
        assert!(text(&out).1.contains(why), "{:?}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_checks_its_inputs_before_it_dials() {
    let fleet = Fleet::start("preflight", &[("n1", "etcd"), ("w1", "worker")]).await;
    fleet.declare(&["n1", "w1"], "    worker: []\n");
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("token");
    let token = fleet.token(true, HOUR);
    std::fs::write(&token_file, token.expose()).unwrap();
    let token_arg = token_file.to_str().unwrap();
    let data = work.path().join("data");
    let data_arg = data.to_str().unwrap();
    let url = fleet.url();
    let pin = fleet.pin();
    let nobody = format!("wss://{}", {
        let ip = unique_loopback(&[]);
        format!("{ip}:{}", free_port(ip))
    });
    let nobody_either = format!("wss://{}", {
        let ip = unique_loopback(&[]);
        format!("{ip}:{}", free_port(ip))
    });
    let none_up = format!("{nobody},{nobody_either}");
    // The first daemon given is down, the next is up: the check passes, and the agent goes on
    // to the next one (a missing Docker here, so that it stops before it joins).
    let first_down = format!("{nobody},{url}");
    let other_pin = format!("sha256:{}", "ab".repeat(32));
    let missing = work.path().join("missing").display().to_string();
    // A data directory others may read: the agent's key would be theirs too.
    let loose = work.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    let loose_hint = format!("run `chmod 700 {}`", loose.display());
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--data-dir", loose.to_str().unwrap()], 74, &loose_hint),
        (vec!["--ca-hash", "sha256:XYZ"], 64, "--ca-hash must be"),
        (vec!["--server", "http://127.0.0.1:1"], 64, "--server"),
        (vec!["--node-name", "Not_A_Name"], 64, "--node-name"),
        (vec!["--token-file", &missing], 64, "--token-file"),
        (vec!["--server", &nobody], 69, "the daemon is not reachable"),
        (
            vec!["--server", &none_up],
            69,
            "no daemon of --server is reachable",
        ),
        (
            vec!["--ca-hash", &other_pin],
            77,
            "presents a CA whose key hash is not",
        ),
        (
            vec!["--docker-socket", "/nonexistent/docker.sock"],
            69,
            "Docker",
        ),
        (
            vec![
                "--server",
                &first_down,
                "--docker-socket",
                "/nonexistent/docker.sock",
            ],
            69,
            "Docker",
        ),
    ];
    for (change, code, message) in cases {
        let mut args: Vec<&str> = vec![
            "agent",
            "--server",
            &url,
            "--ca-hash",
            &pin,
            "--node-name",
            "w1",
            "--token-file",
            token_arg,
            "--data-dir",
            data_arg,
        ];
        // Later flags win in clap only for the same flag; replace instead.
        for pair in change.chunks(2) {
            let at = args.iter().position(|a| *a == pair[0]);
            match at {
                Some(i) => args[i + 1] = pair[1],
                None => args.extend(pair),
            }
        }
        let out = drover(&args).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
        assert!(!stdout.contains(token.expose()) && !stderr.contains(token.expose()));
    }
    // No credential and no token file: said plainly.
    let out = drover(&[
        "agent",
        "--server",
        &url,
        "--ca-hash",
        &pin,
        "--node-name",
        "w1",
        "--data-dir",
        data_arg,
    ])
    .await;
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out).1.contains("has not joined yet"),
        "{:?}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_joins_converges_and_stops_on_sigterm() {
    require!(docker::connect().await);
    let mut fleet = Fleet::start(
        "binary",
        &[("n1", "etcd"), ("w1", "worker"), ("w2", "worker")],
    )
    .await;
    let labels = docker::test_labels();
    let worker = format!(
        "    worker:\n      - {{name: idle, image: '{}', command: [sleep, '3600'], labels: {labels}}}\n",
        docker::BUSYBOX_IMAGE
    );
    let specs = fleet.declare(&["n1", "w1"], &worker);
    let work = tempfile::tempdir().unwrap();
    let token = fleet.token(false, HOUR);
    let token_file = work.path().join("token");
    std::fs::write(&token_file, token.expose()).unwrap();

    let (url, pin) = (fleet.url(), fleet.pin());
    let agent = |node: &str, data: &Path, root: &Path| {
        Command::new(BIN)
            .args(["agent", "--server", &url, "--ca-hash", &pin])
            .args(["--node-name", node, "--token-file"])
            .arg(&token_file)
            .arg("--data-dir")
            .arg(data)
            .arg("--host-root")
            .arg(root)
            .env("DROVER_LOG", "debug")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the agent starts")
    };
    // An undeclared node is refused with the reason, and the agent exits 77.
    let refused = agent("w2", &work.path().join("w2"), work.path()).wait_with_output();
    let out = tokio::time::timeout(Duration::from_secs(60), refused)
        .await
        .expect("an undeclared node's agent exits instead of retrying")
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("is not declared in cluster"), "{stderr}");
    assert!(!stderr.contains(token.expose()));

    let root = work.path().join("w1-root");
    let child = agent("w1", &work.path().join("w1"), &root);
    fleet
        .converged("w1", &specs["w1"], Duration::from_secs(120))
        .await;
    let (stdout, stderr) = terminate(child).await;
    assert!(stderr.contains("stopping"), "{stderr}");
    eventually(
        "the server to see the agent go",
        Duration::from_secs(30),
        || async {
            if fleet.report("w1").connected {
                Err("still connected")
            } else {
                Ok(())
            }
        },
    )
    .await;
    let mut outputs = vec![stdout, stderr];

    // The daemon goes away and the node restarts: the agent still keeps its containers as
    // planned, from the plan it saved, while it waits for the daemon.
    fleet.stop_server().await;
    let idle = format!("drover.{}.w1.idle", fleet.cluster);
    let removed = std::process::Command::new("docker")
        .args(["rm", "-f", &idle])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{removed:?}");
    let child = agent("w1", &work.path().join("w1"), &root);
    eventually(
        "the agent to recreate its container with the daemon down",
        Duration::from_secs(60),
        || async {
            let out = Command::new("docker")
                .args(["inspect", "-f", "{{.State.Running}}", &idle])
                .output()
                .await
                .unwrap();
            match String::from_utf8_lossy(&out.stdout).trim() {
                "true" => Ok(()),
                other => Err(format!("running: {other:?}")),
            }
        },
    )
    .await;
    let (stdout, stderr) = terminate(child).await;
    assert!(
        stderr.contains("the daemon is not reachable yet; applying the saved plan"),
        "{stderr}"
    );
    outputs.extend([stdout, stderr]);
    for output in &outputs {
        assert!(!output.contains(token.expose()), "the token leaked");
        assert!(!output.contains("PRIVATE KEY"), "a key leaked");
    }
}

/// Stops an agent with SIGTERM; it must exit 0 within 30 s. Returns its stdout and stderr.
async fn terminate(child: tokio::process::Child) -> (String, String) {
    let pid = child.id().expect("a pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the agent stops on SIGTERM")
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_and_revoked_at_once() {
    let fleet = Fleet::start("tokens", &[("n1", "etcd"), ("w1", "worker")]).await;
    fleet.declare(&["n1", "w1"], "    worker: []\n");
    let dir = fleet.state.path().to_str().unwrap().to_string();
    let reusable = fleet.token(false, HOUR);
    let single = fleet.token(true, HOUR);
    let id = |t: &Secret| t.expose().split_once('.').unwrap().0.to_string();
    let work = tempfile::tempdir().unwrap();
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let join = |node: &'static str, token: Secret| {
        let data = DataDir::new(StateDir::new(work.path().join(node)));
        let dial = dial.clone();
        async move { session::join(&dial, &data, node, &token).await }
    };
    join("n1", single.clone())
        .await
        .expect("the single-use token joins");
    // A token for one node: the command line it prints names that node.
    let out = drover(&[
        "token",
        "create",
        &fleet.cluster,
        "--node",
        "w1",
        "--server",
        &fleet.url(),
        "--state-dir",
        &dir,
    ])
    .await;
    let (made, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(made.contains("node w1 only"), "{made}");
    assert!(made.contains("--node-name w1\n"), "{made}");
    let for_w1 = Secret::new(printed_token(&made).expect("the token is printed"));
    let bad = [
        "token",
        "create",
        "dev",
        "--node",
        "Not_A_Name",
        "--server",
        "wss://127.0.0.1:7443",
        "--state-dir",
        &dir,
    ];
    let out = drover(&bad).await;
    assert_eq!(out.status.code(), Some(64), "{:?}", text(&out));
    assert!(text(&out).1.contains("--node"), "{:?}", text(&out));

    let out = drover(&["token", "list", "--state-dir", &dir]).await;
    let (listed, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let row = |t: &Secret| {
        listed
            .lines()
            .find(|l| l.starts_with(&id(t)))
            .unwrap_or_else(|| panic!("{} is not listed: {listed}", id(t)))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row(&reusable)[1..4],
        [fleet.cluster.as_str(), "any", "reusable"]
    );
    assert_eq!(row(&reusable)[5], "valid", "{listed}");
    assert_eq!(row(&single)[3], "single");
    assert_eq!(row(&single)[5], "used", "{listed}");
    assert_eq!(row(&for_w1)[1..4], [fleet.cluster.as_str(), "w1", "single"]);

    let out = drover(&["token", "revoke", &id(&reusable), "--state-dir", &dir]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("revoked"));
    match join("w1", reusable.clone()).await {
        Err(SessionError::Refused(Refusal::Token { problem })) => {
            assert_eq!(problem, TokenRefusal::Unknown)
        }
        other => panic!(
            "a revoked token must be refused, got {:?}",
            other.map(|c| c.node)
        ),
    }
    let out = drover(&["token", "list", "--state-dir", &dir]).await;
    assert!(!text(&out).0.contains(&id(&reusable)), "{:?}", text(&out));

    // Revoking again, or pasting the whole token: clear errors that never echo the secret.
    let out = drover(&["token", "revoke", &id(&reusable), "--state-dir", &dir]).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert!(text(&out).1.contains("no join token with id"));
    let out = drover(&["token", "revoke", reusable.expose(), "--state-dir", &dir]).await;
    assert_eq!(out.status.code(), Some(64), "{:?}", text(&out));
    for output in [text(&out).0, text(&out).1, listed] {
        assert!(!output.contains(reusable.expose().split_once('.').unwrap().1));
        assert!(!output.contains(single.expose().split_once('.').unwrap().1));
        assert!(!output.contains(for_w1.expose().split_once('.').unwrap().1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_listed_with_their_key_and_status() {
    let fleet = Fleet::start("nodes", &[("n1", "etcd"), ("w1", "worker")]).await;
    fleet.declare(&["n1", "w1"], "    worker: []\n");
    let dir = fleet.state.path().to_str().unwrap().to_string();
    let list = || async { text(&drover(&["node", "list", "--state-dir", &dir]).await).0 };
    assert_eq!(list().await, "no node has joined\n");

    let work = tempfile::tempdir().unwrap();
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let token = fleet.token(false, HOUR);
    let mut pins = Vec::new();
    for node in ["n1", "w1"] {
        let data = DataDir::new(StateDir::new(work.path().join(node)));
        let c = session::join(&dial, &data, node, &token).await.unwrap();
        pins.push(drover::pki::NodeKey::from_pem(&c.key_pem).unwrap().pin());
    }
    let listed = list().await;
    for (node, pin) in ["n1", "w1"].iter().zip(&pins) {
        let row = listed
            .lines()
            .find(|l| l.starts_with(&format!("{}/{node} ", fleet.cluster)))
            .unwrap_or_else(|| panic!("{node} not listed: {listed}"));
        assert!(row.contains(&pin[..19]), "{row} has {pin}");
        assert!(row.ends_with("  bound"), "{row}");
    }

    // w1 leaves Git: revoked, with the reason. n1 is reset: gone from the list.
    fleet.declare(&["n1"], "    worker: []\n");
    let cluster = fleet.cluster.clone();
    let reset = drover(&["node", "reset", &cluster, "n1", "--state-dir", &dir]).await;
    assert!(reset.status.success(), "{:?}", text(&reset));
    let listed = list().await;
    assert!(!listed.contains(&format!("{cluster}/n1 ")), "{listed}");
    assert!(
        listed.contains("revoked: the node left the cluster's definition in Git"),
        "{listed}"
    );
    assert!(!listed.contains("PRIVATE KEY") && !listed.contains(token.expose()));
}
