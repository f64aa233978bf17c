//! The agent's Docker executor against the real engine: a node's plan converges, re-applying
//! it changes nothing (so a restarted agent redoes nothing), containers stopped or removed by
//! hand come back, a changed spec recreates only its container (its replacement created while
//! it is removed; one a crash left under its temporary name is removed), a component dropped
//! from the plan is removed, a bad image fails with Docker's own reason, stopping the agent
//! abandons a pull that hangs, and pulls from a registry with a login use the node's `docker
//! login`.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use drover::agent::docker::{Action, Driver, StepResult};
use drover::agent::registry::RegistryAuth;
use drover::model::{load_sources, SourceFile};
use drover::nodeplan::{container_name, NodeSpec};
use drover::plan::container::desired_nodes;

use crate::support::registry::Registry;
use crate::support::{docker, require, unique_token};

/// Removes every container of the test's cluster, even when the test panics.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=drover.dev/cluster={}", self.0);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

/// The plan of node `w1` in a cluster named `cluster` whose workers run `components`.
fn worker_spec(cluster: &str, components: &str) -> NodeSpec {
    let text = format!(
        "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: {cluster}}}\nspec:\n  nodes:\n    - {{name: e1, address: 127.0.0.2, roles: [etcd]}}\n    - {{name: w1, address: 127.0.0.3, roles: [worker]}}\n  etcd: {{image: drover-test/etcd:3.4.23}}\n  components:\n    worker:\n{components}"
    );
    let file = SourceFile {
        path: "clusters/t.yaml".into(),
        bytes: text.into_bytes(),
    };
    let repo = load_sources(vec![file], Vec::new());
    assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
    desired_nodes(&repo.clusters[0]).remove("w1").unwrap()
}

fn actions(results: &[StepResult]) -> Vec<(String, Action, bool)> {
    results
        .iter()
        .map(|r| (r.subject.clone(), r.action, r.error.is_none()))
        .collect()
}

fn ok(subject: &str, action: Action) -> (String, Action, bool) {
    (subject.to_string(), action, true)
}

const A: &str = "      - {name: a, image: 'drover-test/busybox:1', command: [sleep, '3600'], env: {LEVEL: info}, files: [{path: /etc/drover-test/a.conf, content: \"node {{ node.name }}\\n\", mode: '0600'}]}\n";
const B: &str = "      - {name: b, image: 'drover-test/busybox:1', command: [sleep, '3600'], restartPolicy: unless-stopped}\n";

#[tokio::test]
async fn a_node_plan_converges_and_is_repaired() {
    let client = require!(docker::connect().await);
    let cluster = format!(
        "agent-{}",
        unique_token()
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    let cluster = cluster[..cluster.len().min(40)].to_string();
    let _cleanup = Cleanup(cluster.clone());
    let host_root = tempfile::tempdir().unwrap();
    let driver = Driver::new(
        client.clone(),
        &cluster,
        "w1",
        host_root.path().to_path_buf(),
    );
    let spec = worker_spec(&cluster, &format!("{A}{B}"));

    // First apply: the file, then both containers.
    let results = driver.apply(&spec, 1, &Default::default()).await.unwrap();
    assert_eq!(
        actions(&results),
        [
            ok("/etc/drover-test/a.conf", Action::FileWritten),
            ok("a", Action::Created),
            ok("b", Action::Created)
        ]
    );
    let file = host_root.path().join("etc/drover-test/a.conf");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "node w1\n");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let running = driver.observe().await.unwrap();
    assert!(running.values().all(|r| r.running), "{running:?}");
    let name_a = container_name(&cluster, "w1", "a");
    let inspect = client.inspect_container(&name_a, None).await.unwrap();
    let labels = inspect.config.unwrap().labels.unwrap();
    assert_eq!(labels["drover.dev/component"], "a");
    assert_eq!(labels["drover.dev/generation"], "1");

    // A restarted agent (a new driver) finds everything in place and changes nothing.
    let again = Driver::new(
        client.clone(),
        &cluster,
        "w1",
        host_root.path().to_path_buf(),
    );
    let results = again.apply(&spec, 1, &Default::default()).await.unwrap();
    assert_eq!(
        actions(&results),
        [ok("a", Action::Unchanged), ok("b", Action::Unchanged)]
    );
    assert_eq!(
        driver.observe().await.unwrap(),
        running,
        "no container was replaced"
    );

    // Stopped and removed by hand: started and created again.
    let name_b = container_name(&cluster, "w1", "b");
    let stop = Command::new("docker")
        .args(["stop", "-t", "0", &name_b])
        .output()
        .unwrap();
    assert!(stop.status.success());
    let rm = Command::new("docker")
        .args(["rm", "-f", &name_a])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let results = driver.apply(&spec, 2, &Default::default()).await.unwrap();
    assert_eq!(
        actions(&results),
        [ok("a", Action::Created), ok("b", Action::Started)]
    );

    // A changed environment recreates only that container.
    let before = driver.observe().await.unwrap();
    let changed = worker_spec(
        &cluster,
        &format!("{}{B}", A.replace("LEVEL: info", "LEVEL: debug")),
    );
    let results = driver
        .apply(&changed, 3, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        actions(&results),
        [ok("a", Action::Recreated), ok("b", Action::Unchanged)]
    );
    let after = driver.observe().await.unwrap();
    assert_ne!(after["a"].id, before["a"].id);
    assert!(after["a"].running, "the replacement runs under its name");
    assert_eq!(after["b"].id, before["b"].id);

    // A replacement a crash left under its temporary name is never taken for the container
    // it was to replace, and the next apply removes it.
    let next = format!("{name_a}.next");
    let labels = [
        "drover.dev/managed-by=drover".to_string(),
        format!("drover.dev/cluster={cluster}"),
        "drover.dev/node=w1".to_string(),
        "drover.dev/component=a".to_string(),
    ];
    let mut create = Command::new("docker");
    create.args(["create", "--name", &next]);
    for label in &labels {
        create.args(["--label", label]);
    }
    let leftover = create
        .args(["drover-test/busybox:1", "sleep", "3600"])
        .output()
        .unwrap();
    assert!(leftover.status.success(), "{leftover:?}");
    assert_eq!(
        driver.observe().await.unwrap(),
        after,
        "the leftover is no component"
    );
    let results = driver
        .apply(&changed, 3, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        actions(&results),
        [ok("a", Action::Unchanged), ok("b", Action::Unchanged)]
    );
    let inspect = Command::new("docker")
        .args(["inspect", &next])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "the leftover was removed");

    // Dropped from the plan: removed. An image no registry has (a registry address on
    // loopback where nothing listens, so the pull goes nowhere else): the step fails with
    // Docker's reason.
    let nowhere = {
        let ip = crate::support::net::unique_loopback(&[]);
        format!("{ip}:{}", crate::support::net::free_port(ip))
    };
    let bad = format!(
        "      - {{name: c, image: '{nowhere}/drover-test/no-such-image:1', command: [sleep, '1']}}\n"
    );
    let results = driver
        .apply(
            &worker_spec(&cluster, &format!("{A}{bad}")),
            4,
            &Default::default(),
        )
        .await
        .unwrap();
    let summary: Vec<(String, Action)> = results
        .iter()
        .map(|r| (r.subject.clone(), r.action))
        .collect();
    assert_eq!(
        summary,
        [
            ("b".to_string(), Action::Removed),
            ("a".to_string(), Action::Recreated),
            ("c".to_string(), Action::Created)
        ]
    );
    let error = results[2].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("pulling ") && error.contains("connection refused"),
        "Docker's reason, got: {error:?}"
    );
    let left: Vec<String> = driver.observe().await.unwrap().into_keys().collect();
    assert_eq!(left, ["a"]);

    // A plan that drops `a` and its file: the container goes, then the file an earlier plan
    // wrote; a file already gone is no step.
    let stale: std::collections::BTreeSet<String> = [
        "/etc/drover-test/a.conf".to_string(),
        "/etc/drover-test/gone.conf".to_string(),
    ]
    .into();
    let results = driver
        .apply(&worker_spec(&cluster, B), 5, &stale)
        .await
        .unwrap();
    assert_eq!(
        actions(&results),
        [
            ok("a", Action::Removed),
            ok("/etc/drover-test/a.conf", Action::FileRemoved),
            ok("b", Action::Created)
        ]
    );
    assert!(!file.exists(), "the dropped file stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_abandons_a_pull_that_hangs() {
    let client = require!(docker::connect().await);
    let cluster = crate::support::fleet::unique_cluster("pullstop");
    let _cleanup = Cleanup(cluster.clone());
    let host_root = tempfile::tempdir().unwrap();
    // A "registry" on loopback that accepts connections and never answers.
    let ip = crate::support::net::unique_loopback(&[]);
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let registry = listener.local_addr().unwrap();
    let (dialled, mut dialled_rx) = tokio::sync::mpsc::channel(1);
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = dialled.try_send(());
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let driver = Driver::new(client, &cluster, "w1", host_root.path().to_path_buf())
        .stopped_by(stop.clone());
    let spec = worker_spec(
        &cluster,
        &format!("      - {{name: c, image: '{registry}/drover-test/busybox:1', command: [sleep, '1']}}\n"),
    );
    let apply = tokio::spawn(async move { driver.apply(&spec, 1, &Default::default()).await });
    tokio::time::timeout(std::time::Duration::from_secs(60), dialled_rx.recv())
        .await
        .expect("the engine dials the registry to pull");
    stop.cancel();
    let results = tokio::time::timeout(std::time::Duration::from_secs(10), apply)
        .await
        .expect("apply returns soon after the stop, not when the pull gives up")
        .unwrap()
        .unwrap();
    let error = results[0].error.as_deref().unwrap_or_default();
    assert!(
        error.ends_with("abandoned, the agent is stopping"),
        "{results:?}"
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_use_the_nodes_docker_login() {
    let logs = crate::support::logs::capture_logs();
    let client = require!(docker::connect().await);
    let password = format!("pw-{}", unique_token());
    let registry = require!(Registry::start_with_login("tester", &password));
    let image = registry.push("drover-test/busybox:1", "drover-test/private:1");
    let cluster = crate::support::fleet::unique_cluster("login");
    let _cleanup = Cleanup(cluster.clone());
    let host_root = tempfile::tempdir().unwrap();
    let spec = worker_spec(
        &cluster,
        &format!("      - {{name: p, image: '{image}', command: [sleep, '3600']}}\n"),
    );
    let driver = || {
        Driver::new(
            client.clone(),
            &cluster,
            "w1",
            host_root.path().to_path_buf(),
        )
    };

    // Without the node's credentials: the registry's refusal.
    let results = driver().apply(&spec, 1, &Default::default()).await.unwrap();
    let error = results[0].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with(&format!("pulling {image}: "))
            && error.contains("no basic auth credentials"),
        "{results:?}"
    );

    // With the configuration `docker login` wrote on the node: pulled, created, running.
    let config = registry.client_config().unwrap().join("config.json");
    let results = driver()
        .with_registry_auth(RegistryAuth::new(config))
        .apply(&spec, 2, &Default::default())
        .await
        .unwrap();
    assert_eq!(actions(&results), [ok("p", Action::Created)], "{results:?}");
    assert!(driver().observe().await.unwrap()["p"].running);
    logs.assert_free_of(&[&password]);
}
