//! The agent's etcd tasks (`drover::agent::etcd::run`) against real etcd with TLS only, from
//! certificates `drover::etcd_pki::ClusterCa` issued: health, status (one leader named by
//! all) and the membership list; clients
//! without the cluster's certificate refused; the add-then-start procedure for a new member and
//! its removal; a peer URL update; and a task against a stopped member failing with a reason.

use std::time::Duration;

use drover::agent::etcd::{health, run};
use drover::etcd_pki::ClusterCa;
use drover::protocol::{EtcdMemberInfo, EtcdTask, EtcdTaskOutcome};
use drover::state::StateDir;
use etcd_client::{Certificate, Client, ConnectOptions, TlsOptions};

use crate::support::docker;
use crate::support::etcd::{initial_cluster, TlsCluster, TlsMember};
use crate::support::wait::eventually;
use crate::support::{private_tempdir, require, test_name};

/// etcd refuses membership changes for a few seconds after members connect ("unhealthy
/// cluster"); tasks that change membership are retried until this limit.
const LIMIT: Duration = Duration::from_secs(30);

async fn task(member: &TlsMember, task: EtcdTask) -> EtcdTaskOutcome {
    run(&task, &member.client_url, member.pki_dir()).await
}

/// The members of a `Members` outcome, sorted by name (the unnamed first); panics otherwise.
fn members(outcome: EtcdTaskOutcome) -> Vec<EtcdMemberInfo> {
    match outcome {
        EtcdTaskOutcome::Members { mut members } => {
            members.sort_by(|a, b| a.name.cmp(&b.name));
            members
        }
        other => panic!("expected the members, got {other:?}"),
    }
}

fn names(members: &[EtcdMemberInfo]) -> Vec<&str> {
    members.iter().map(|m| m.name.as_str()).collect()
}

/// Runs `what` on `member` until it succeeds (not `Failed`), within `LIMIT`.
async fn until_done(member: &TlsMember, what: EtcdTask) -> EtcdTaskOutcome {
    eventually(&format!("{what:?} on {}", member.name), LIMIT, || async {
        match task(member, what.clone()).await {
            EtcdTaskOutcome::Failed { error } => Err(error),
            done => Ok(done),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_over_tls_are_healthy_list_each_other_and_refuse_other_clients() {
    let docker = require!(docker::connect().await);
    let cluster = require!(TlsCluster::start(&docker, &test_name!(), 3).await);
    for member in &cluster.members {
        assert_eq!(
            task(member, EtcdTask::Health).await,
            EtcdTaskOutcome::Healthy,
            "{}",
            member.name
        );
        health(&member.client_url, member.pki_dir())
            .await
            .unwrap_or_else(|e| panic!("{}: {}", member.name, e.reason()));
    }

    // Every member names itself and the one leader; exactly one of them leads.
    let mut leaders = std::collections::BTreeSet::new();
    let mut leading = 0;
    for member in &cluster.members {
        match until_done(member, EtcdTask::Status).await {
            EtcdTaskOutcome::Status {
                member_id,
                leader_id,
                revision,
                db_size,
                version,
            } => {
                assert!(revision >= 1 && db_size > 0, "{revision} {db_size}");
                assert!(version.starts_with("3."), "{version}");
                leading += usize::from(member_id == leader_id);
                leaders.insert(leader_id);
            }
            other => panic!("{}: {other:?}", member.name),
        }
    }
    assert_eq!((leaders.len(), leading), (1, 1), "{leaders:?}");

    let listed = members(task(&cluster.members[0], EtcdTask::MemberList).await);
    assert_eq!(names(&listed), ["member-1", "member-2", "member-3"]);
    for (info, member) in listed.iter().zip(&cluster.members) {
        assert_eq!(info.peer_urls, [member.peer_url.as_str()]);
        assert_eq!(info.client_urls, [member.client_url.as_str()]);
        assert!(
            u64::from_str_radix(&info.id, 16).is_ok_and(|id| id != 0),
            "{info:?}"
        );
    }

    // A client that trusts the CA but has no certificate of its own.
    let first = &cluster.members[0];
    let ca = std::fs::read_to_string(first.pki_dir().join("ca.pem")).unwrap();
    let options = ConnectOptions::new()
        .with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(ca)))
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5));
    let refused = match Client::connect([&first.client_url], Some(options)).await {
        Err(e) => e.to_string(),
        Ok(mut client) => match client.member_list().await {
            Err(e) => e.to_string(),
            Ok(list) => panic!("a client without a certificate listed {list:?}"),
        },
    };
    eprintln!("without a certificate: {refused}");

    // A node of another cluster, with that cluster's CA and certificates.
    let other_state = private_tempdir();
    let other = ClusterCa::ensure(&StateDir::new(other_state.path()).into(), "other").unwrap();
    let other_pki = private_tempdir();
    let files = other
        .issue(
            "member-1",
            &[first.ip.to_string()],
            std::time::SystemTime::now(),
        )
        .unwrap();
    for (file, spec) in &files {
        std::fs::write(other_pki.path().join(file), &spec.content).unwrap();
    }
    let outcome = run(&EtcdTask::MemberList, &first.client_url, other_pki.path()).await;
    let EtcdTaskOutcome::Failed { error } = outcome else {
        panic!("a client of another CA was answered: {outcome:?}");
    };
    eprintln!("another CA: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_then_started_with_existing_state_joins_and_can_be_removed() {
    let docker = require!(docker::connect().await);
    let test = test_name!();
    let cluster = require!(TlsCluster::start(&docker, &test, 3).await);
    let first = &cluster.members[0];
    let mut fourth = cluster.new_member("member-4");

    let added = members(
        until_done(
            first,
            EtcdTask::MemberAdd {
                peer_url: fourth.peer_url.clone(),
            },
        )
        .await,
    );
    assert_eq!(names(&added), ["", "member-1", "member-2", "member-3"]);
    assert_eq!(added[0].peer_urls, [fourth.peer_url.clone()]);
    assert!(added[0].client_urls.is_empty(), "{:?}", added[0]);
    let fourth_id = added[0].id.clone();

    let initial = initial_cluster(cluster.members.iter().chain([&fourth]));
    require!(
        cluster
            .start_member(&docker, &mut fourth, &initial, "existing")
            .await
    );
    fourth.await_ready().await;
    assert_eq!(
        task(&fourth, EtcdTask::Health).await,
        EtcdTaskOutcome::Healthy
    );
    let joined = members(task(&fourth, EtcdTask::MemberList).await);
    assert_eq!(
        names(&joined),
        ["member-1", "member-2", "member-3", "member-4"]
    );
    assert_eq!(joined[3].id, fourth_id);
    assert_eq!(joined[3].client_urls, [fourth.client_url.clone()]);

    assert_eq!(
        until_done(first, EtcdTask::MemberRemove { id: fourth_id }).await,
        EtcdTaskOutcome::Done
    );
    let left = members(task(first, EtcdTask::MemberList).await);
    assert_eq!(names(&left), ["member-1", "member-2", "member-3"]);
    assert_eq!(
        task(first, EtcdTask::Health).await,
        EtcdTaskOutcome::Healthy
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_url_update_shows_in_the_list() {
    let docker = require!(docker::connect().await);
    let cluster = require!(TlsCluster::start(&docker, &test_name!(), 3).await);
    let first = &cluster.members[0];
    let listed = members(task(first, EtcdTask::MemberList).await);
    let third = listed.iter().find(|m| m.name == "member-3").unwrap();
    // Another port on the member's own address, which its peer certificate names.
    let moved = format!("https://{}:12380", cluster.members[2].ip);
    let update = EtcdTask::MemberUpdate {
        id: third.id.clone(),
        peer_url: moved.clone(),
    };
    assert_eq!(until_done(first, update).await, EtcdTaskOutcome::Done);
    let listed = members(task(first, EtcdTask::MemberList).await);
    assert_eq!(listed[2].name, "member-3");
    assert_eq!(listed[2].peer_urls, [moved]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_against_a_stopped_member_or_one_without_quorum_fail_with_a_reason() {
    let docker = require!(docker::connect().await);
    let mut cluster = require!(TlsCluster::start(&docker, &test_name!(), 3).await);
    cluster.members[2].stop();
    for what in [EtcdTask::Health, EtcdTask::MemberList] {
        let outcome = task(&cluster.members[2], what.clone()).await;
        let EtcdTaskOutcome::Failed { error } = outcome else {
            panic!("{what:?} on a stopped member: {outcome:?}");
        };
        assert!(!error.is_empty(), "{what:?}");
        eprintln!("{what:?} on a stopped member: {error}");
    }
    // Two of three still make a quorum (once they elected a leader, if the stopped member
    // led: until then etcd answers "leader changed").
    assert_eq!(
        until_done(&cluster.members[0], EtcdTask::Health).await,
        EtcdTaskOutcome::Healthy
    );

    // One of three does not: the member still answers, but is not healthy.
    cluster.members[1].stop();
    let first = &cluster.members[0];
    let error = eventually("the member left alone to be unhealthy", LIMIT, || async {
        match task(first, EtcdTask::Health).await {
            EtcdTaskOutcome::Failed { error } => Ok(error),
            healthy => Err(healthy),
        }
    })
    .await;
    eprintln!("Health without quorum: {error}");
}
