//! Several daemons sharing the work through one etcd (a real 3-member cluster for the state):
//! scaling from one daemon to three drains clusters to the newcomers with nothing run again,
//! clusters spread over the daemons by their rendezvous assignment, agents given every
//! daemon's URL reach their cluster's owner, an owner killed mid-rollout has its clusters
//! taken under newer fences and finished, daemons started at once on empty state make one CA,
//! a daemon cut off from etcd stops before its lease ends, and an agent refuses a plan under an
//! old fence.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover::api::SharingView;
use drover::store::DurableState;

use crate::serve::{ready_at, CONVERGE};
use crate::support::daemon::{AgentProcess, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::{unique_cluster, ClusterCleanup};
use crate::support::git::TestRepo;
use crate::support::net::unique_loopback;
use crate::support::{etcd, require};

/// A lease lives 10 s and a membership change settles for 5 s: a takeover is well within this.
pub(crate) const TAKEOVER: Duration = Duration::from_secs(90);

/// A one-node cluster: an etcd member and a web server on the node's own address.
pub(crate) fn cluster_yaml(name: &str, node: &str, ip: std::net::Ipv4Addr, text: &str) -> String {
    let labels = docker::test_labels();
    format!(
        "apiVersion: drover.dev/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  nodes:
    - {{name: {node}, address: {ip}, roles: [etcd, worker]}}
  etcd: {{image: {ETCD_IMAGE}}}
  components:
    worker:
      - name: web
        image: {BUSYBOX_IMAGE}
        command: [sh, -c, 'echo {text} > /tmp/index.html && exec httpd -f -h /tmp -p {ip}:9090']
        health: {{tcp: '{ip}:9090', interval: 1s}}
        labels: {labels}
"
    )
}

pub(crate) fn key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("state.key");
    std::fs::write(&path, format!("{}\n", "c3".repeat(32))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The daemons and owners `daemon` sees (`drover status --daemons`), once `check` accepts them.
pub(crate) async fn await_sharing(
    daemon: &TestDaemon,
    what: &str,
    check: impl Fn(&SharingView) -> bool,
) -> SharingView {
    let outcome = crate::support::wait::poll_until(TAKEOVER, || async {
        let (code, out, err) = daemon
            .cli(&["status", "--daemons", "--format", "json"])
            .await;
        if code != Some(0) {
            return Err(err);
        }
        let view: SharingView = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        if check(&view) {
            Ok(view)
        } else {
            Err(format!("{view:?}"))
        }
    })
    .await;
    match outcome {
        Ok(view) => view,
        Err(t) => panic!(
            "timed out waiting for {what}; last: {}\nlog:\n{}",
            t.last_error.unwrap_or_default(),
            crate::support::daemon::tail(&daemon.log(), 60)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_share_the_clusters_and_survive_a_killed_owner_and_a_lost_etcd_member() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let mut members = require!(etcd::start_cluster(&engine, "sharing", 3).await);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();

    // Six clusters, named so that each daemon owns two.
    let ids: Vec<String> = ["daemon-a", "daemon-b", "daemon-c"]
        .map(String::from)
        .to_vec();
    let clusters = clusters_for(&ids, &[2, 2, 2]);
    let _cleanup: Vec<ClusterCleanup> = clusters.iter().cloned().map(ClusterCleanup).collect();
    let ips: Vec<_> = clusters
        .iter()
        .map(|_| unique_loopback(&[2379, 2380, 9090]))
        .collect();
    let repo = TestRepo::init();
    let first = commit_version(&repo, &clusters, &ips, "v1");

    let work = crate::support::private_tempdir();
    let key = key_file(work.path());
    let url = repo.url();
    let configs: Vec<String> = ids
        .iter()
        .map(|id| state_config(&endpoints, &key, id))
        .collect();
    // Scaling from one daemon to three: daemon-a starts alone and owns every cluster.
    let mut daemons: Vec<TestDaemon> = configs
        .iter()
        .map(|config| TestDaemon::unstarted_with_config(&url, config))
        .collect();
    daemons[0].spawn().await;
    let servers: Vec<String> = daemons.iter().map(TestDaemon::agents_url).collect();
    let servers = servers.join(",");
    let all: Vec<usize> = (0..ids.len()).collect();
    let owner = |c: &str, live: &[usize]| -> usize {
        let live_ids: Vec<String> = live.iter().map(|i| ids[*i].clone()).collect();
        let id = drover::daemon::ownership::owner(c, &live_ids).unwrap();
        ids.iter().position(|i| i == id).unwrap()
    };
    let assigned = |v: &SharingView, live: &[usize]| {
        v.daemons.len() == live.len()
            && !v.settling
            && clusters
                .iter()
                .all(|c| v.owners.get(c) == Some(&ids[owner(c, live)]))
    };
    await_sharing(&daemons[0], "daemon-a owning every cluster", |v| {
        assigned(v, &[0])
    })
    .await;
    // The agents, told of every daemon with daemon-a first, converge on it.
    let mut agents = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let token = daemons[0].token_file(c).await;
        agents.push((
            c.clone(),
            AgentProcess::start_with(&daemons[0], &servers, &node(i), &token),
        ));
    }
    let revision = first.to_string();
    converge_on_owners(&daemons, &agents, |c| owner(c, &[0]), &revision).await;
    let alone_fences: Vec<u64> = agents.iter().map(|(_, agent)| fence_of(agent)).collect();
    let alone_applied: Vec<u64> = agents.iter().map(|(_, agent)| applied_of(agent)).collect();

    // daemon-b and daemon-c start together. Once the membership settled, each owns its two:
    // daemon-a drains theirs to them, and nothing runs again (every node keeps the generation
    // it applied); the moved clusters' agents hold a newer fence.
    if let [_, b, c] = &mut daemons[..] {
        tokio::join!(b.spawn(), c.spawn());
    }
    let pin = daemons[0].pin();
    assert!(
        daemons.iter().all(|d| d.pin() == pin),
        "a daemon joining made its own CA"
    );
    await_sharing(&daemons[0], "every daemon owning its clusters", |v| {
        assigned(v, &all)
    })
    .await;
    converge_on_owners(&daemons, &agents, |c| owner(c, &all), &revision).await;
    for (i, (c, agent)) in agents.iter().enumerate() {
        assert_eq!(
            applied_of(agent),
            alone_applied[i],
            "{c} ran its plan again"
        );
        let moved = owner(c, &all) != 0;
        assert_eq!(fence_of(agent) > alone_fences[i], moved, "{c}: fence");
    }
    let fences_before: Vec<u64> = agents.iter().map(|(_, agent)| fence_of(agent)).collect();
    // Asked about a cluster it does not own, a daemon names the owner, whatever the request.
    let theirs = clusters.iter().find(|c| owner(c, &all) == 1).unwrap();
    let theirs = theirs.as_str();
    for asked in [
        &["status", theirs][..],
        &["snapshot", "save", theirs],
        &["snapshot", "restore", theirs, "any-id", "--no-wait"],
        &["snapshot", "list", theirs],
    ] {
        let (code, _, err) = daemons[0].cli(asked).await;
        assert_ne!(code, Some(0), "{asked:?}");
        assert!(err.contains("owned by daemon daemon-b"), "{asked:?}: {err}");
    }

    // A webhook may reach any daemon: one to daemon-a rolls every cluster out (all of them
    // poll only every 5 minutes).
    let second = commit_version(&repo, &clusters, &ips, "v2");
    daemons[0].hook().await;
    for c in &clusters {
        daemons[owner(c, &all)]
            .await_status(
                "v2 from a webhook to daemon-a",
                c,
                CONVERGE,
                ready_at(second.to_string()),
            )
            .await;
    }

    // daemon-a is killed in the middle of rolling v3 out, and one of the state's three etcd
    // members is lost: the two others take daemon-a's clusters once its lease is gone, and
    // finish.
    let third = commit_version(&repo, &clusters, &ips, "v3");
    daemons[0].hook().await;
    let mine = clusters.iter().find(|c| owner(c, &all) == 0).unwrap();
    daemons[0]
        .await_status("daemon-a rolling v3 out", mine, CONVERGE, |s| {
            if s.desired_revision.as_deref() == Some(third.to_string().as_str()) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        })
        .await;
    daemons[0].kill();
    drop(members.pop());
    daemons[1].hook().await;
    // Before its lease runs out, the survivors see daemon-a silent: its agents are told to
    // retry rather than sent to a daemon that is gone, and so is an operator (its lease has
    // seconds left: a silent daemon is seen within about 3 s of its last renewal).
    await_sharing(
        &daemons[1],
        "daemon-a silent while its lease runs out",
        |v| {
            v.daemons.iter().any(|d| d.id == ids[0] && d.silent)
                && v.owners.values().any(|o| *o == ids[0])
        },
    )
    .await;
    let (code, _, err) = daemons[1].cli(&["status", mine]).await;
    assert_ne!(code, Some(0));
    assert!(err.contains("has not renewed its lease"), "{err}");
    let survivors = [1, 2];
    await_sharing(&daemons[1], "the survivors owning every cluster", |v| {
        assigned(v, &survivors)
    })
    .await;
    for c in &clusters {
        daemons[owner(c, &survivors)]
            .await_status("v3 on a survivor", c, TAKEOVER, ready_at(third.to_string()))
            .await;
    }
    // The agents of daemon-a's clusters now hold a newer fence; the others' are unchanged.
    let mut fences = Vec::new();
    for ((c, agent), before) in agents.iter().zip(fences_before) {
        let after = fence_of(agent);
        if owner(c, &all) == 0 {
            assert!(after > before, "{c}: fence {before} -> {after}");
        } else {
            assert_eq!(after, before, "{c} moved though its owner lived");
        }
        fences.push(after);
    }

    // daemon-a comes back: its clusters are drained to it, and nothing runs again (every node
    // keeps the generation it applied).
    let applied: Vec<u64> = agents.iter().map(|(_, agent)| applied_of(agent)).collect();
    daemons[0].spawn().await;
    await_sharing(&daemons[1], "daemon-a owning its clusters again", |v| {
        assigned(v, &all)
    })
    .await;
    for (i, (c, agent)) in agents.iter().enumerate() {
        daemons[owner(c, &all)]
            .await_status(
                "v3 on its owner again",
                c,
                TAKEOVER,
                ready_at(third.to_string()),
            )
            .await;
        assert_eq!(applied_of(agent), applied[i], "{c} ran its plan again");
        if owner(c, &all) == 0 {
            assert!(
                fence_of(agent) > fences[i],
                "{c}: no newer fence after the move back"
            );
        }
    }
    // daemon-c is stopped (SIGTERM): it finishes its passes, exits 0 and gives its lease
    // back, so its clusters move without waiting for the lease to expire.
    assert!(daemons[2].terminate().success(), "{}", daemons[2].log());
    let two = [0, 1];
    await_sharing(&daemons[0], "daemon-c's clusters moved", |v| {
        assigned(v, &two)
    })
    .await;
    assert!(
        !daemons[2].log().contains("could not revoke"),
        "{}",
        daemons[2].log()
    );
    for c in &clusters {
        daemons[owner(c, &two)]
            .await_status(
                "v3 after daemon-c stopped",
                c,
                TAKEOVER,
                ready_at(third.to_string()),
            )
            .await;
    }
    let mut changes = 0;
    for d in &daemons[..2] {
        let metrics = reqwest::get(format!("http://{}/metrics", d.http()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("drover_lease_renew_duration_seconds_count"),
            "{metrics}"
        );
        changes += metrics
            .lines()
            .find_map(|l| l.strip_prefix("drover_ownership_changes_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    // Their own four, daemon-a's two taken over and given back, daemon-c's two taken.
    assert!(changes >= 6, "{changes} ownership changes");
    for (_, mut agent) in agents {
        agent.stop();
    }
}

/// Waits until each agent's cluster is Ready at `revision` on its owner, `daemons[owner(c)]`.
async fn converge_on_owners(
    daemons: &[TestDaemon],
    agents: &[(String, AgentProcess)],
    owner: impl Fn(&str) -> usize,
    revision: &str,
) {
    for (c, agent) in agents {
        let on = &daemons[owner(c)];
        let ready = ready_at(revision.to_string());
        let converged =
            crate::support::wait::poll_until(CONVERGE, || async { ready(&on.status(c).await?) })
                .await;
        assert!(
            converged.is_ok(),
            "{c} did not converge on its owner: {converged:?}\nagent log:\n{}\nowner log:\n{}",
            agent.log(),
            crate::support::daemon::tail(&on.log(), 40)
        );
    }
}

/// Cluster names such that `per[i]` of them go to `ids[i]` by the rendezvous assignment.
pub(crate) fn clusters_for(ids: &[String], per: &[usize]) -> Vec<String> {
    let mut left = per.to_vec();
    let mut clusters = Vec::new();
    while left.iter().any(|n| *n > 0) {
        let name = unique_cluster("share");
        let owner = drover::daemon::ownership::owner(&name, ids).unwrap();
        let i = ids.iter().position(|id| id == owner).unwrap();
        if left[i] > 0 {
            left[i] -= 1;
            clusters.push(name);
        }
    }
    clusters
}

/// The state in etcd at `endpoints`, as `daemonId: id` sees it.
pub(crate) fn state_config(endpoints: &[String], key: &Path, id: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("'{e}'")).collect();
    format!(
        "state:\n  etcd: {{endpoints: [{}], prefix: /drover-sharing/, encryptionKeyFile: {}, daemonId: {id}}}\n",
        endpoints.join(", "),
        key.display()
    )
}

/// The daemons' shared state, as `state_config` names it, opened here (to read what they wrote,
/// or to act as a stale daemon would).
pub(crate) async fn shared_state(endpoints: &[String], key: &Path) -> DurableState {
    use drover::store::etcd::{EtcdStateConfig, EtcdStore};
    let config = EtcdStateConfig {
        endpoints: endpoints.to_vec(),
        tls: None,
        prefix: "/drover-sharing/".into(),
        encryption_key_file: key.to_path_buf(),
    };
    let store = tokio::task::spawn_blocking(move || EtcdStore::open(&config))
        .await
        .unwrap()
        .expect("the state's etcd opens");
    DurableState::new(std::sync::Arc::new(store))
}

/// The first line of `log` that contains `what`, and its timestamp.
fn logged_at(log: &str, what: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(what))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
}

/// Commits every cluster's file, its web server serving `text`.
fn commit_version(
    repo: &TestRepo,
    clusters: &[String],
    ips: &[std::net::Ipv4Addr],
    text: &str,
) -> git2::Oid {
    let files: Vec<(String, String)> = clusters
        .iter()
        .zip(ips)
        .enumerate()
        .map(|(i, (c, ip))| {
            (
                format!("clusters/{c}.yaml"),
                cluster_yaml(c, &node(i), *ip, text),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    repo.commit_files(&refs, text)
}

/// The one node of the `i`-th cluster (each its own agent data directory).
fn node(i: usize) -> String {
    format!("n{}", i + 1)
}

/// The plan generation an agent last applied.
fn applied_of(agent: &AgentProcess) -> u64 {
    let text = std::fs::read_to_string(agent.dir.join("data").join("applied.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["generation"].as_u64().unwrap()
}

/// The newest fencing token an agent recorded.
fn fence_of(agent: &AgentProcess) -> u64 {
    let text = std::fs::read_to_string(agent.dir.join("data").join("fence.json"))
        .unwrap_or_else(|e| panic!("{}: no fence.json: {e}\n{}", agent.node, agent.log()));
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["newest"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_cut_off_from_the_state_stops_before_its_lease_ends_and_its_old_fence_is_refused()
{
    use drover::nodeplan::SealedSpec;
    use drover::server::{AgentServer, Settings};
    use drover::store::Fence;

    use crate::support::proxy::FreezingProxy;

    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let members = require!(etcd::start_cluster(&engine, "sharing-cut", 3).await);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    // daemon-a reaches the state's etcd only through proxies that can freeze.
    let mut proxies = Vec::new();
    for m in &members {
        let upstream: std::net::SocketAddr =
            m.endpoint.trim_start_matches("http://").parse().unwrap();
        proxies.push(FreezingProxy::start(m.ip.into(), upstream).await);
    }
    let through: Vec<String> = proxies
        .iter()
        .map(|p| format!("http://{}", p.addr))
        .collect();

    let ids = ["daemon-a".to_string(), "daemon-b".to_string()];
    let cluster = clusters_for(&ids, &[1, 0]).remove(0);
    let _cleanup = ClusterCleanup(cluster.clone());
    let ip = unique_loopback(&[2379, 2380, 9090]);
    let repo = TestRepo::init();
    let path = format!("clusters/{cluster}.yaml");
    let first = repo.commit_files(&[(&path, &cluster_yaml(&cluster, "n1", ip, "v1"))], "one");
    let work = crate::support::private_tempdir();
    let key = key_file(work.path());
    // Two daemons started at once on empty state make one CA.
    let (url, config_a, config_b) = (
        repo.url(),
        state_config(&through, &key, &ids[0]),
        state_config(&endpoints, &key, &ids[1]),
    );
    let (a, b) = tokio::join!(
        TestDaemon::start_with_config(&url, None, &config_a),
        TestDaemon::start_with_config(&url, None, &config_b),
    );
    assert_eq!(a.pin(), b.pin(), "daemons started at once made two CAs");
    let servers = format!("{},{}", a.agents_url(), b.agents_url());
    let token = b.token_file(&cluster).await;
    let mut agent = AgentProcess::start_with(&a, &servers, "n1", &token);
    let ready = ready_at(first.to_string());
    let converged =
        crate::support::wait::poll_until(CONVERGE, || async { ready(&a.status(&cluster).await?) })
            .await;
    assert!(
        converged.is_ok(),
        "{converged:?}\nagent:\n{}\ndaemon-a:\n{}",
        agent.log(),
        crate::support::daemon::tail(&a.log(), 40)
    );
    let old = fence_of(&agent);

    // daemon-a is cut off from etcd: it stops acting before its lease can have expired, and
    // daemon-b takes the cluster only after that.
    // (daemon-b may have held the cluster for a moment while daemon-a was joining: only what
    // it logs from now on is the takeover.)
    let b_logged = b.log().len();
    for p in &proxies {
        p.freeze();
    }
    await_sharing(&b, "daemon-b owning the cluster", |v| {
        v.daemons.len() == 1 && v.owners.get(&cluster) == Some(&ids[1])
    })
    .await;
    b.await_status("converged on daemon-b", &cluster, TAKEOVER, &ready)
        .await;
    let stopped = logged_at(&a.log(), "it stopped acting")
        .unwrap_or_else(|| panic!("daemon-a never stopped acting:\n{}", a.log()));
    let taken = logged_at(&b.log()[b_logged..], "this daemon owns the cluster now").unwrap();
    assert!(
        stopped < taken,
        "daemon-a stopped at {stopped}, daemon-b took over at {taken}"
    );
    let newer = fence_of(&agent);
    assert!(newer > old, "fence {old} -> {newer}");

    // A plan under daemon-a's old fence, arriving now, is refused and not applied.
    agent.stop();
    let state = shared_state(&endpoints, &key).await;
    state.set_fence(&cluster, Some(Fence(old as i64)));
    let stale_ip = unique_loopback(&[]);
    let mut settings = Settings::new((stale_ip, 0).into());
    settings.names = vec![stale_ip.to_string()];
    let stale = AgentServer::start(state, settings).await.unwrap();
    let hub = stale.hub().clone();
    hub.share();
    let c = cluster.clone();
    let published = tokio::task::spawn_blocking(move || {
        hub.own(&c).unwrap();
        hub.mark_ready();
        let plan = [("n1".to_string(), Some(SealedSpec::new(Default::default())))].into();
        hub.set_cluster(&c, &plan)
    })
    .await
    .unwrap();
    assert!(
        matches!(
            published,
            Err(drover::server::hub::HubError::State(
                drover::state::StateError::Fenced { .. }
            ))
        ),
        "the old owner's generations were written: {published:?}"
    );
    let url = format!("wss://{}", stale.local_addr());
    let late = AgentProcess::start_with(&a, &url, "n1", &token);
    let refused = crate::support::wait::poll_until(CONVERGE, || {
        let count = stale.hub().fenced_count();
        async move {
            if count > 0 {
                Ok(count)
            } else {
                Err("no refusal yet")
            }
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the agent took the stale plan:\n{}",
        late.log()
    );
    assert_eq!(fence_of(&late), newer);
    assert!(late.log().contains("refused"), "{}", late.log());
    // What runs is still daemon-b's v1: the empty plan removed nothing.
    drop(late);
    stale.shutdown().await;
    let back = AgentProcess::start_with(&a, &b.agents_url(), "n1", &token);
    let again =
        crate::support::wait::poll_until(CONVERGE, || async { ready(&b.status(&cluster).await?) })
            .await;
    assert!(again.is_ok(), "{again:?}\nagent:\n{}", back.log());
}
