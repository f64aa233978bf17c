//! Agents and the agent server end to end, with the real Docker engine: three simulated nodes
//! (each its own data directory, host root and 127.x address) join with a token, converge a
//! plan of busybox containers, are repaired after hand edits, drop removed components, pull
//! images from a registry on loopback (and keep what runs when a pull fails), report a bad
//! image's reason to the server, survive their own restart mid-apply, a server restart (onto
//! the state an earlier drover left) and a connection that hangs, and renew their credentials
//! in band.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use drover::join::{bindings_name, Bindings};
use drover::pki::{cert_pin, pem_certificate};
use drover::protocol::Refusal;
use drover::state::StateDir;

use crate::support::docker::{self, BUSYBOX_IMAGE};
use crate::support::fleet::{containers_of, Fleet, TestAgent};
use crate::support::net::{free_port, unique_loopback};
use crate::support::proxy::FreezingProxy;
use crate::support::registry::Registry;
use crate::support::require;
use crate::support::wait::eventually;

const CONVERGE: Duration = Duration::from_secs(120);
const HOUR: Duration = Duration::from_secs(3600);

/// The components the tests run: an HTTP server with a TCP probe and a sleeper on workers,
/// an HTTP server with an HTTP probe on the control plane. Every container carries the test
/// harness's labels so a crashed test's leftovers are swept.
fn components(worker_extra_env: &str) -> String {
    let labels = docker::test_labels();
    format!(
        "    controlplane:\n      - {{name: api, image: '{BUSYBOX_IMAGE}', command: [httpd, -f, -h, /etc, -p, '{{{{ node.address }}}}:8080'], labels: {labels}, health: {{http: 'http://{{{{ node.address }}}}:8080/group', interval: 1s}}}}\n    worker:\n      - {{name: web, image: '{BUSYBOX_IMAGE}', command: [httpd, -f, -p, '{{{{ node.address }}}}:8080'], env: {{LEVEL: info{worker_extra_env}}}, labels: {labels}, health: {{tcp: '{{{{ node.address }}}}:8080', interval: 1s}}}}\n      - {{name: side, image: '{BUSYBOX_IMAGE}', command: [sleep, '3600'], labels: {labels}}}\n"
    )
}

fn docker_cli(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Container names of the cluster, each with how many containers carry it (Docker refuses
/// duplicate names, so this counts by the component label instead).
fn components_per_node(cluster: &str) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for id in containers_of(cluster) {
        let labels = docker_cli(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"drover.dev/node\"}} {{index .Config.Labels \"drover.dev/component\"}}",
            &id,
        ]);
        let (node, component) = labels.split_once(' ').expect("two labels");
        *counts
            .entry((node.to_string(), component.to_string()))
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_are_repaired_and_drop_removed_components() {
    require!(docker::connect().await);
    let fleet = Fleet::start(
        "fleet",
        &[
            ("n1", "etcd, controlplane"),
            ("n2", "worker"),
            ("n3", "worker"),
        ],
    )
    .await;
    let specs = fleet.declare(&["n1", "n2", "n3"], &components(""));
    let token = fleet.token(false, HOUR);
    let mut agents = Vec::new();
    for node in ["n1", "n2", "n3"] {
        agents.push(TestAgent::start(&fleet, node, Some(token.clone())).await);
    }
    for node in ["n1", "n2", "n3"] {
        fleet.converged(node, &specs[node], CONVERGE).await;
    }
    // Health travels to the server.
    eventually("health reports", CONVERGE, || async {
        let web = fleet.report("n2").containers.get("web").cloned();
        let api = fleet.report("n1").containers.get("api").cloned();
        match (&web, &api) {
            (Some(w), Some(a)) if w.healthy == Some(true) && a.healthy == Some(true) => Ok(()),
            _ => Err(format!("web {web:?}, api {api:?}")),
        }
    })
    .await;

    // Stopped by hand, removed by hand: both come back.
    let web2 = format!("drover.{}.n2.web", fleet.cluster);
    let side3 = format!("drover.{}.n3.side", fleet.cluster);
    docker_cli(&["stop", "-t", "1", &web2]);
    docker_cli(&["rm", "-f", &side3]);
    eventually(
        "the stopped and removed containers to come back",
        CONVERGE,
        || async {
            let running = docker_cli(&["ps", "--format", "{{.Names}}"]);
            let names: Vec<&str> = running.lines().collect();
            if names.contains(&web2.as_str()) && names.contains(&side3.as_str()) {
                Ok(())
            } else {
                Err(running.clone())
            }
        },
    )
    .await;
    fleet.converged("n2", &specs["n2"], CONVERGE).await;
    fleet.converged("n3", &specs["n3"], CONVERGE).await;

    // A component dropped from the plan is removed from every node.
    let without_side = components("").replace(
        &components("")
            .lines()
            .find(|l| l.contains("name: side"))
            .map(|l| format!("{l}\n"))
            .expect("a side component"),
        "",
    );
    let specs = fleet.declare(&["n1", "n2", "n3"], &without_side);
    for node in ["n2", "n3"] {
        assert!(!specs[node].containers.contains_key("side"));
        fleet.converged(node, &specs[node], CONVERGE).await;
    }
    let counts = components_per_node(&fleet.cluster);
    assert!(
        counts.keys().all(|(_, component)| component != "side"),
        "{counts:?}"
    );
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");

    for agent in agents {
        agent.stop().await;
    }
    fleet.logs.assert_free_of(&[token.expose()]);
}

/// A container that listens a moment after it starts is reported healthy as soon as it
/// does: while it comes up it is probed often, not once per (here hour-long) interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_comes_up_slowly_is_healthy_without_waiting_an_interval() {
    require!(docker::connect().await);
    let fleet = Fleet::start("slowup", &[("n1", "etcd"), ("w1", "worker")]).await;
    let labels = docker::test_labels();
    let worker = format!(
        "    worker:\n      - {{name: late, image: '{BUSYBOX_IMAGE}', command: [sh, -c, 'sleep 1; exec httpd -f -p {{{{ node.address }}}}:8080'], labels: {labels}, health: {{tcp: '{{{{ node.address }}}}:8080', interval: 1h}}}}\n"
    );
    fleet.declare(&["n1", "w1"], &worker);
    // No resync either in the hour: only the probes can see the server come up.
    let agent =
        TestAgent::start_resyncing_every(&fleet, "w1", Some(fleet.token(true, HOUR)), HOUR).await;
    // Well under the hour a probe per interval would take after a first failed one.
    eventually(
        "the late server to be reported healthy",
        CONVERGE,
        || async {
            let late = fleet.report("w1").containers.get("late").cloned();
            match &late {
                Some(l) if l.healthy == Some(true) => Ok(()),
                _ => Err(format!("late {late:?}")),
            }
        },
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_image_shows_dockers_reason_at_the_server() {
    require!(docker::connect().await);
    let fleet = Fleet::start("badimg", &[("n1", "etcd"), ("w1", "worker")]).await;
    // A registry address where nothing listens: the pull fails on loopback, nowhere else.
    let nowhere = {
        let ip = unique_loopback(&[]);
        format!("{ip}:{}", free_port(ip))
    };
    let worker = format!(
        "    worker:\n      - {{name: ghost, image: '{nowhere}/drover-test/no-such-image:1', command: [sleep, '1']}}\n"
    );
    fleet.declare(&["n1", "w1"], &worker);
    let agent = TestAgent::start(&fleet, "w1", Some(fleet.token(true, HOUR))).await;
    let error = fleet.failed_step("w1", "ghost", CONVERGE).await;
    assert!(
        error.starts_with(&format!("pulling {nowhere}/drover-test/no-such-image:1: ")),
        "{error}"
    );
    assert!(
        error.contains("connection refused"),
        "Docker's reason: {error}"
    );
    assert!(!fleet.report("w1").containers.contains_key("ghost"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_and_a_failed_pull_keeps_what_runs() {
    require!(docker::connect().await);
    let registry = require!(Registry::start());
    let image = registry.push(BUSYBOX_IMAGE, "drover-test/busybox:1");
    let fleet = Fleet::start("pull", &[("n1", "etcd"), ("w1", "worker")]).await;
    let labels = docker::test_labels();
    let worker = |image: &str| {
        format!(
            "    worker:\n      - {{name: app, image: '{image}', command: [sleep, '3600'], labels: {labels}}}\n"
        )
    };
    let specs = fleet.declare(&["n1", "w1"], &worker(&image));
    let agent = TestAgent::start(&fleet, "w1", Some(fleet.token(true, HOUR))).await;
    fleet.converged("w1", &specs["w1"], CONVERGE).await;
    let first = fleet.report("w1").containers["app"].clone();

    // A tag the registry does not have: the step fails with the registry's reason, and the
    // container that runs keeps running until a pull succeeds.
    let missing = registry.image("drover-test/busybox:nope");
    fleet.declare(&["n1", "w1"], &worker(&missing));
    let error = fleet.failed_step("w1", "app", CONVERGE).await;
    assert!(
        error.starts_with(&format!("pulling {missing}: ")),
        "{error}"
    );
    assert!(
        error.contains("manifest unknown"),
        "the registry's reason: {error}"
    );
    let now = fleet.report("w1").containers["app"].clone();
    assert!(now.running, "the old container was removed before the pull");
    assert_eq!(now.spec_hash, first.spec_hash);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_mid_apply_converges_without_duplicates() {
    require!(docker::connect().await);
    let fleet = Fleet::start("midapply", &[("n1", "etcd"), ("w1", "worker")]).await;
    let labels = docker::test_labels();
    let worker: String = (0..8)
        .map(|i| {
            format!("      - {{name: c{i}, image: '{BUSYBOX_IMAGE}', command: [sleep, '3600'], labels: {labels}}}\n")
        })
        .collect();
    let specs = fleet.declare(&["n1", "w1"], &format!("    worker:\n{worker}"));
    let agent = TestAgent::start(&fleet, "w1", Some(fleet.token(true, HOUR))).await;
    // Kill the agent as soon as the first container exists: the apply is under way.
    eventually("the apply to begin", CONVERGE, || async {
        let n = containers_of(&fleet.cluster).len();
        if n >= 1 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
    let (data, host_root) = agent.kill().await;
    let made_before = containers_of(&fleet.cluster).len();
    assert!(
        made_before < 8,
        "the whole apply finished before the kill; the test proves nothing"
    );

    // Its credential and saved plan are in its data directory: no token needed.
    let pin = fleet.pin();
    let agent = TestAgent::start_with(&fleet, "w1", None, &pin, data, host_root).await;
    fleet.converged("w1", &specs["w1"], CONVERGE).await;
    let counts = components_per_node(&fleet.cluster);
    assert_eq!(counts.len(), 8, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "duplicates: {counts:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_makes_agents_reconnect_and_resume() {
    require!(docker::connect().await);
    let mut fleet = Fleet::start(
        "restart",
        &[("n1", "etcd"), ("w1", "worker"), ("w2", "worker")],
    )
    .await;
    let specs = fleet.declare(&["n1", "w1", "w2"], &components(""));
    let token = fleet.token(false, HOUR);
    let agents = [
        TestAgent::start(&fleet, "w1", Some(token.clone())).await,
        TestAgent::start(&fleet, "w2", Some(token.clone())).await,
    ];
    for node in ["w1", "w2"] {
        fleet.converged(node, &specs[node], CONVERGE).await;
    }
    let generation = fleet.hub().generation(&fleet.cluster, "w1");

    fleet.stop_server().await;
    // The state as an earlier drover left it: every cluster's bindings in one document.
    let state = fleet.state();
    let name = bindings_name(&fleet.cluster);
    let bound: Bindings = state.load(&name).unwrap().expect("the nodes are bound");
    state.save("node-credentials.json", &bound).unwrap();
    state.remove(&name).unwrap();
    fleet.start_server().await;
    assert_eq!(state.load::<Bindings>(&name).unwrap(), Some(bound));
    assert_eq!(
        state.load::<Bindings>("node-credentials.json").unwrap(),
        None
    );
    // The new server reads the same state: generations keep growing, credentials hold.
    let specs = fleet.declare(&["n1", "w1", "w2"], &components(", MODE: resumed"));
    let after = fleet.hub().generation(&fleet.cluster, "w1");
    assert!(after > generation, "{after:?} after {generation:?}");
    for node in ["w1", "w2"] {
        fleet.converged(node, &specs[node], CONVERGE).await;
        assert!(fleet.report(node).connected);
    }
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_renewed_in_band_and_the_old_key_stops_working() {
    require!(docker::connect().await);
    // Every credential is "old": the server asks for a renewal on each connection.
    let mut fleet = Fleet::start_configured("renew", &[("n1", "etcd"), ("w1", "worker")], |s| {
        s.renew_after = Duration::ZERO
    })
    .await;
    let specs = fleet.declare(&["n1", "w1"], "    worker: []\n");
    let agent = TestAgent::start(&fleet, "w1", Some(fleet.token(true, HOUR))).await;
    fleet.converged("w1", &specs["w1"], CONVERGE).await;
    let data = StateDir::new(agent.data.path());
    let key_pin = |data: &StateDir| {
        let c: serde_json::Value = data.load("credential.json").unwrap().expect("a credential");
        let cert = pem_certificate(c["certPem"].as_str().unwrap()).unwrap();
        cert_pin(&cert).unwrap()
    };
    let bound = |fleet: &Fleet| {
        let b: Bindings = fleet
            .state()
            .load(&bindings_name(&fleet.cluster))
            .unwrap()
            .unwrap();
        b
    };
    let node_key = format!("{}/w1", fleet.cluster);
    // The server asked at once; the agent made a new key and holds its certificate, and the
    // server staged that key next to the one the node joined with.
    let (joined, renewed) = eventually("a renewal staged", CONVERGE, || async {
        let b = bound(&fleet).nodes[&node_key].clone();
        let have = key_pin(&data);
        if b.next_pin.as_deref() == Some(have.as_str()) && b.key_pin != have {
            Ok((b.key_pin, have))
        } else {
            Err((b, have))
        }
    })
    .await;
    // The next connection uses the new key, which then becomes the bound one; the key the
    // node joined with is no longer accepted.
    fleet.restart_server().await;
    fleet.declare(&["n1", "w1"], "    worker: []\n");
    eventually("the renewed key bound", CONVERGE, || async {
        let b = bound(&fleet).nodes[&node_key].clone();
        if b.key_pin == renewed && fleet.report("w1").connected {
            Ok(())
        } else {
            Err(b)
        }
    })
    .await;
    let b = bound(&fleet);
    assert_eq!(
        b.check(&fleet.cluster, "w1", &joined),
        Err(Refusal::UnknownCredential)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_connection_is_dropped_by_both_sides_and_the_agent_redials() {
    require!(docker::connect().await);
    // Fleet servers beat every 500 ms.
    let fleet = Fleet::start("hung", &[("n1", "etcd"), ("w1", "worker")]).await;
    let specs = fleet.declare(&["n1", "w1"], "    worker: []\n");
    let server: std::net::SocketAddr = fleet.url().trim_start_matches("wss://").parse().unwrap();
    let proxy = FreezingProxy::start(server.ip(), server).await;
    let via = format!("wss://{}", proxy.addr);
    let agent = TestAgent::start_via(&fleet, "w1", Some(fleet.token(true, HOUR)), &via).await;
    fleet.converged("w1", &specs["w1"], CONVERGE).await;

    // The path goes dead without a close: each side notices the other's silence.
    proxy.freeze();
    let silent = "the daemon was silent for three heartbeat intervals";
    eventually(
        "the agent to notice the silent daemon",
        CONVERGE,
        || async {
            if fleet.logs.text().contains(silent) {
                Ok(())
            } else {
                Err("not yet")
            }
        },
    )
    .await;
    eventually("the daemon to drop the silent agent", CONVERGE, || async {
        if fleet.report("w1").connected {
            Err("still connected")
        } else {
            Ok(())
        }
    })
    .await;
    // The path comes back: the agent's redial gets through.
    proxy.thaw();
    eventually("the agent to reconnect", CONVERGE, || async {
        if fleet.report("w1").connected {
            Ok(())
        } else {
            Err("not connected")
        }
    })
    .await;
    agent.stop().await;
}
