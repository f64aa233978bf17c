//! The planner's quorum rule against real etcd: removing a member shrinks the quorum with it,
//! losing one does not. A healthy two-member etcd scaled down to one commits the removal and
//! keeps serving; with one of the two lost, no membership change commits. The planner allows
//! the first and refuses the second.

use drover::model::{load_sources, SourceFile};
use drover::plan::{as_if_running, plan_cluster, Finding};

use crate::support::docker;
use crate::support::etcd::{start_cluster, EtcdMember};
use crate::support::wait::eventually;
use crate::support::{require, test_name};

const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A cluster file with etcd nodes `cp-1` .. `cp-<n>`.
fn cluster(n: u32) -> drover::model::Cluster {
    let mut text = String::from(
        "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {name: q}\nspec:\n  nodes:\n",
    );
    for i in 1..=n {
        text.push_str(&format!(
            "    - {{name: cp-{i}, address: 127.0.0.{}, roles: [etcd, controlplane]}}\n",
            i + 1
        ));
    }
    text.push_str("  etcd: {image: drover-test/etcd:3.4.23}\n");
    let file = SourceFile {
        path: "clusters/q.yaml".into(),
        bytes: text.into_bytes(),
    };
    let repo = load_sources(vec![file], Vec::new());
    assert!(!repo.has_errors(), "{}", repo.render_diagnostics());
    repo.clusters.into_iter().next().expect("one cluster")
}

/// The planner's errors for scaling two members to one, with `cp-2` healthy or not.
fn planner_errors(second_healthy: bool) -> Vec<Finding> {
    let mut observed = as_if_running(&cluster(2));
    observed.etcd_members.get_mut("cp-2").expect("cp-2").healthy = second_healthy;
    plan_cluster(&cluster(1), &observed, None).errors
}

/// The id of the member named `name`.
async fn member_id(member: &EtcdMember, name: &str) -> u64 {
    let mut client = member.client().await;
    let list = client.member_list().await.expect("member list");
    list.members()
        .iter()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no member {name}"))
        .id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_healthy_member_of_two_commits_and_the_last_one_serves() {
    let docker = require!(docker::connect().await);
    let mut members = require!(start_cluster(&docker, &test_name!(), 2).await);
    assert!(
        planner_errors(true).is_empty(),
        "{:?}",
        planner_errors(true)
    );
    let second = member_id(&members[0], "member-2").await;
    let mut client = members[0].client().await;
    // etcd accepts a removal once its leader has heard from a quorum for five seconds (its
    // own health gate); until then it answers "unhealthy cluster".
    eventually(
        "two healthy members to commit the removal of one",
        LIMIT,
        || {
            let mut client = client.clone();
            async move { client.member_remove(second).await.map(|_| ()) }
        },
    )
    .await;
    drop(members.pop());
    // One member of one is a quorum: it serves once it has elected itself (the removed member
    // may have been the leader).
    eventually("the last member to serve writes", LIMIT, || {
        let mut client = client.clone();
        async move {
            client
                .put("drover-test/after-removal", "kept", None)
                .await
                .map(|_| ())
        }
    })
    .await;
    let listed = client.member_list().await.expect("member list");
    assert_eq!(listed.members().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_two_members_lost_no_membership_change_commits() {
    let docker = require!(docker::connect().await);
    let mut members = require!(start_cluster(&docker, &test_name!(), 2).await);
    let errors = planner_errors(false);
    assert!(
        matches!(
            errors.as_slice(),
            [Finding::EtcdQuorumLost {
                members: 2,
                healthy: 1,
                quorum: 2
            }]
        ),
        "{errors:?}"
    );
    let second = member_id(&members[0], "member-2").await;
    let mut client = members[0].client().await;
    client
        .put("drover-test/before-loss", "x", None)
        .await
        .expect("two of two members write");
    drop(members.pop());
    // Writes need a quorum of the membership, which one of two is not.
    let removed = client.member_remove(second).await;
    assert!(
        removed.is_err(),
        "a removal committed without a quorum: {removed:?}"
    );
    let put = client.put("drover-test/after-loss", "x", None).await;
    assert!(put.is_err(), "a write committed without a quorum");
}
