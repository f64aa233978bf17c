//! The daemon's durable state in a real etcd: the same contract as the state directory, run
//! on both; no lost update and one CA when several daemons (each with its own client) write
//! at once; values sealed at rest, bound to their key, and refused under another key.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover::pki::DaemonCa;
use drover::state::{StateDir, StateError};
use drover::store::etcd::{EtcdStateConfig, EtcdStateError, EtcdStore};
use drover::store::{DurableState, Store};

use crate::support::docker;
use crate::support::etcd::EtcdMember;
use crate::support::require;

/// A store on `member` under `prefix`, sealed with the key in `key_file`.
fn etcd_store(member: &EtcdMember, prefix: &str, key_file: &std::path::Path) -> EtcdStore {
    EtcdStore::open(&EtcdStateConfig {
        endpoints: vec![member.endpoint.clone()],
        tls: None,
        prefix: prefix.to_string(),
        encryption_key_file: key_file.to_path_buf(),
    })
    .unwrap()
}

fn key_file(dir: &std::path::Path, name: &str, hex: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// What every backend must do, on `state`.
fn contract(state: &DurableState, store: &dyn Store, backend: &str) {
    assert_eq!(state.load::<u32>("absent.json").unwrap(), None, "{backend}");
    assert_eq!(store.stamp("absent.json").unwrap(), None, "{backend}");
    state.save("record-b.json", &2u32).unwrap();
    state.save("record-a.json", &1u32).unwrap();
    state.save("other.json", &3u32).unwrap();
    assert_eq!(
        state.load::<u32>("record-a.json").unwrap(),
        Some(1),
        "{backend}"
    );
    assert_eq!(
        state.names("record-").unwrap(),
        ["record-a.json", "record-b.json"],
        "{backend}"
    );
    let before = store.stamp("record-a.json").unwrap();
    assert!(before.is_some(), "{backend}");
    let updated = state
        .update::<u32, u32, std::convert::Infallible>("record-a.json", |n| {
            *n += 10;
            Ok(*n)
        })
        .unwrap()
        .unwrap();
    assert_eq!(updated.value, 11, "{backend}");
    assert_ne!(store.stamp("record-a.json").unwrap(), before, "{backend}");
    // Create-if-absent: the second make never runs.
    let made: u32 = state
        .create("created.json", || Ok::<_, drover::state::StateError>(7))
        .unwrap();
    let again: u32 = state
        .create(
            "created.json",
            || -> Result<u32, drover::state::StateError> { panic!("{backend}: created twice") },
        )
        .unwrap();
    assert_eq!((made, again), (7, 7), "{backend}");
    // Stamps by prefix, in one call, are each document's own.
    let stamps = store.stamps("record-").unwrap();
    let listed: Vec<&str> = stamps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(listed, ["record-a.json", "record-b.json"], "{backend}");
    for (name, stamp) in &stamps {
        assert_eq!(
            Some(*stamp),
            store.stamp(name).unwrap(),
            "{backend}: {name}"
        );
    }
    // Removed, and removing what is absent is no error.
    state.remove("record-b.json").unwrap();
    state.remove("record-b.json").unwrap();
    assert_eq!(
        state.load::<u32>("record-b.json").unwrap(),
        None,
        "{backend}"
    );
    assert_eq!(
        state.names("record-").unwrap(),
        ["record-a.json"],
        "{backend}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_lives_in_etcd_as_it_does_in_a_directory() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, docker::ETCD_IMAGE).await);
    let member = require!(EtcdMember::start(&engine, "state-contract").await);
    let dir = crate::support::private_tempdir();
    let key = key_file(dir.path(), "state.key", &"ab".repeat(32));
    let endpoint_member = member;
    tokio::task::spawn_blocking(move || {
        let on_disk = StateDir::new(dir.path().join("state"));
        on_disk.ensure().unwrap();
        let disk_state: DurableState = on_disk.clone().into();
        contract(&disk_state, &on_disk, "state directory");
        let store = Arc::new(etcd_store(&endpoint_member, "/drover-a/", &key));
        let etcd_state = DurableState::new(store.clone());
        contract(&etcd_state, store.as_ref(), "etcd");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_sharing_etcd_lose_no_update_and_mint_one_ca() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, docker::ETCD_IMAGE).await);
    let member = Arc::new(require!(EtcdMember::start(&engine, "state-race").await));
    let dir = crate::support::private_tempdir();
    let key = key_file(dir.path(), "state.key", &"cd".repeat(32));
    const DAEMONS: usize = 3;
    const ROUNDS: u32 = 20;
    let handles: Vec<_> = (0..DAEMONS)
        .map(|_| {
            let (member, key) = (member.clone(), key.clone());
            std::thread::spawn(move || {
                // Each its own client, as separate daemons.
                let state = DurableState::new(Arc::new(etcd_store(&member, "/drover-b/", &key)));
                let ca = DaemonCa::ensure(&state).unwrap();
                for _ in 0..ROUNDS {
                    state
                        .update::<BTreeMap<String, u32>, (), std::convert::Infallible>(
                            "counter.json",
                            |m| {
                                *m.entry("n".into()).or_default() += 1;
                                Ok(())
                            },
                        )
                        .unwrap()
                        .unwrap();
                }
                ca.pin().to_string()
            })
        })
        .collect();
    let pins: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(pins.iter().all(|p| *p == pins[0]), "several CAs: {pins:?}");
    let member2 = member.clone();
    let total = tokio::task::spawn_blocking(move || {
        let state = DurableState::new(Arc::new(etcd_store(&member2, "/drover-b/", &key)));
        state.load::<BTreeMap<String, u32>>("counter.json").unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        total.and_then(|m| m.get("n").copied()),
        Some(DAEMONS as u32 * ROUNDS),
        "an update was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_in_etcd_is_sealed_and_bound_to_its_key() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, docker::ETCD_IMAGE).await);
    let member = require!(EtcdMember::start(&engine, "state-sealed").await);
    let mut raw = member.client().await;
    let dir = crate::support::private_tempdir();
    let key = key_file(dir.path(), "state.key", &"ef".repeat(32));
    let other_key = key_file(dir.path(), "other.key", &"01".repeat(32));
    let secret = format!("private-key-{}", crate::support::unique_token());
    let member = Arc::new(member);
    {
        let (member, key, secret) = (member.clone(), key.clone(), secret.clone());
        tokio::task::spawn_blocking(move || {
            let state = DurableState::new(Arc::new(etcd_store(&member, "/drover-c/", &key)));
            state.save("ca.json", &secret).unwrap();
            state.save("tokens.json", &"tokens").unwrap();
        })
        .await
        .unwrap();
    }
    // At rest, the value is not the secret.
    let stored = raw.get("/drover-c/ca.json", None).await.unwrap();
    let sealed = stored.kvs()[0].value().to_vec();
    assert!(
        !String::from_utf8_lossy(&sealed).contains(&secret),
        "the secret is in etcd in the clear"
    );
    // Moved to another document's key, it does not open; nor under another key.
    raw.put("/drover-c/tokens.json", sealed, None)
        .await
        .unwrap();
    let (member2, key2) = (member.clone(), key.clone());
    let outcomes = tokio::task::spawn_blocking(move || {
        let state = DurableState::new(Arc::new(etcd_store(&member2, "/drover-c/", &key2)));
        let moved = state.load::<String>("tokens.json").map(|_| ());
        let wrong = DurableState::new(Arc::new(etcd_store(&member2, "/drover-c/", &other_key)));
        let other = wrong.load::<String>("ca.json").map(|_| ());
        let own = state.load::<String>("ca.json").unwrap();
        (moved.is_err(), other.is_err(), own)
    })
    .await
    .unwrap();
    assert_eq!(outcomes, (true, true, Some(secret)));

    // A key file others may read is refused, as are one that is not a key and a missing one.
    use std::os::unix::fs::PermissionsExt as _;
    let loose = key_file(dir.path(), "loose.key", &"02".repeat(32));
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let short = key_file(dir.path(), "short.key", "abcd");
    let missing = dir.path().join("missing.key");
    let endpoint = member.endpoint.clone();
    let refused = tokio::task::spawn_blocking(move || {
        [loose, short, missing].map(|key| {
            let opened = EtcdStore::open(&EtcdStateConfig {
                endpoints: vec![endpoint.clone()],
                tls: None,
                prefix: "/drover-c/".into(),
                encryption_key_file: key,
            });
            match opened {
                Err(EtcdStateError::LooseKey { mode, .. }) => format!("loose {mode:o}"),
                Err(EtcdStateError::BadKey { .. }) => "bad".to_string(),
                Err(EtcdStateError::File { .. }) => "missing".to_string(),
                other => format!("{other:?}"),
            }
        })
    })
    .await
    .unwrap();
    assert_eq!(refused, ["loose 644", "bad", "missing"]);
}

/// A daemon on a state directory converges a cluster; stopped, its state is migrated into
/// etcd and the directory's documents removed; started on etcd, it knows its agents (same CA,
/// same credentials), keeps the cluster converged and rolls out the next commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_moves_its_state_into_etcd_and_carries_on() {
    use crate::serve::{ready_at, CONVERGE};
    use crate::support::daemon::{AgentProcess, Layout, TestDaemon};
    use crate::support::fleet::ClusterCleanup;
    use crate::support::git::TestRepo;

    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, docker::ETCD_IMAGE).await);
    require!(docker::require_image(&engine, docker::BUSYBOX_IMAGE).await);
    let member = require!(EtcdMember::start(&engine, "state-migrate").await);
    let layout = Layout::new("migrate");
    let cluster = layout.cluster.clone();
    let _cleanup = ClusterCleanup(cluster.clone());
    let repo = TestRepo::init();
    let first = repo.commit_files(
        &[(&layout.path(), &layout.yaml("v1", docker::BUSYBOX_IMAGE))],
        "dev",
    );
    let mut daemon = TestDaemon::start(&repo.url()).await;
    let join = daemon.token_file(&cluster).await;
    let _agents = AgentProcess::start_all(&daemon, &layout, &join);
    daemon
        .await_status(
            "converged on the directory",
            &cluster,
            CONVERGE,
            ready_at(first.to_string()),
        )
        .await;
    let pin = daemon.pin();
    assert!(daemon.terminate().success());

    let key = key_file(daemon.work.path(), "state.key", &"5a".repeat(32));
    daemon.extra_config = format!(
        "state:\n  etcd: {{endpoints: ['{}'], prefix: /drover-migrated/, encryptionKeyFile: {}}}\n",
        member.endpoint,
        key.display()
    );
    let config = daemon.write_config();
    let state_dir = daemon.state_dir();
    let migrate = |dry_run: bool| {
        let mut args = vec![
            "state".to_string(),
            "migrate".into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        if dry_run {
            args.push("--dry-run".into());
        }
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::support::cli::drover(&args).await
        }
    };
    let dry = migrate(true).await;
    assert_eq!(dry.status.code(), Some(0), "{dry:?}");
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("ca.json: would copy"),
        "{dry:?}"
    );
    let moved = migrate(false).await;
    let said = String::from_utf8_lossy(&moved.stdout).into_owned();
    assert_eq!(moved.status.code(), Some(0), "{moved:?}");
    assert!(said.contains("ca.json: copied"), "{said}");
    assert!(
        !said.contains("endpoint.json"),
        "a machine-local file was migrated: {said}"
    );
    let again = migrate(false).await;
    let said_again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert!(!said_again.contains("copied"), "copied twice: {said_again}");

    // Only etcd holds the state now.
    for entry in std::fs::read_dir(&state_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") && name != "endpoint.json" {
            std::fs::remove_file(&path).unwrap();
        }
    }
    daemon.spawn().await;
    assert_eq!(daemon.pin(), pin, "the daemon made a new CA");
    daemon
        .await_status(
            "converged on etcd",
            &cluster,
            CONVERGE,
            ready_at(first.to_string()),
        )
        .await;
    let second = repo.commit_files(
        &[(&layout.path(), &layout.yaml("v2", docker::BUSYBOX_IMAGE))],
        "v2",
    );
    daemon.hook().await;
    daemon
        .await_status(
            "the next commit, on etcd",
            &cluster,
            CONVERGE,
            ready_at(second.to_string()),
        )
        .await;
    assert!(daemon.log().contains("the durable state is in etcd"));
    // The operator's commands find the state through the daemon's configuration.
    let listed =
        crate::support::cli::drover(&["node", "list", "--config", config.to_str().unwrap()]).await;
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert!(listed_text.contains(&cluster), "{listed_text}");
}

/// Two daemons on one etcd: each registered under its lease; a cluster claimed by one is not
/// the other's, and only its owner's fenced writes land. When the owner stops renewing, it
/// stops acting before its lease expires; the other claims the cluster with a newer fence,
/// and the old owner's writes are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_has_one_owner_and_a_lost_owner_is_fenced() {
    use drover::store::lease::{Fence, Membership};
    use std::time::{Duration, Instant};

    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, docker::ETCD_IMAGE).await);
    let member = require!(EtcdMember::start(&engine, "state-lease").await);
    let dir = crate::support::private_tempdir();
    let key = key_file(dir.path(), "state.key", &"77".repeat(32));
    const TTL: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_millis(500);
    tokio::task::spawn_blocking(move || {
        let open = || Arc::new(etcd_store(&member, "/drover-lease/", &key));
        let (store_a, store_b) = (open(), open());
        let a = Membership::join(store_a.clone(), "daemon-a", TTL, MARGIN).unwrap();
        let b = Membership::join(store_b.clone(), "daemon-b", TTL, MARGIN).unwrap();
        // A write of dev's record under `fence`, as a daemon holding it would make it.
        let write = |store: &Arc<EtcdStore>, fence: Fence, value: &str| {
            let state = DurableState::new(store.clone());
            state.set_fence("dev", Some(fence));
            state.save_for("dev", "record-dev.json", &value)
        };
        let fenced = |r: Result<(), StateError>| matches!(r, Err(StateError::Fenced { .. }));
        assert_eq!(a.members().unwrap(), ["daemon-a", "daemon-b"]);

        let fence = a.claim("dev").unwrap().expect("nobody owned dev");
        assert_eq!(
            a.claim("dev").unwrap(),
            Some(fence),
            "claiming again keeps the fence"
        );
        assert_eq!(b.claim("dev").unwrap(), None, "dev is daemon-a's");
        write(&store_a, fence, "1").unwrap();
        assert!(fenced(write(&store_b, Fence(fence.0 + 1), "2")));
        // Without a fence, nothing of dev is written.
        let unfenced = DurableState::new(store_b.clone()).save_for("dev", "record-dev.json", &"0");
        assert!(fenced(unfenced));

        // daemon-a stops renewing (frozen, or cut off); daemon-b keeps renewing.
        let stopped_renewing = Instant::now();
        let must_stop = a.acting_until();
        assert!(must_stop <= stopped_renewing + TTL - MARGIN + Duration::from_millis(50));
        let claimed = loop {
            b.renew().unwrap();
            if let Some(newer) = b.claim("dev").unwrap() {
                break (newer, Instant::now());
            }
            assert!(stopped_renewing.elapsed() < TTL * 5, "dev was never freed");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (newer, at) = claimed;
        assert!(newer > fence, "{newer:?} after {fence:?}");
        assert!(
            must_stop < at,
            "daemon-a could still act when daemon-b took dev over"
        );
        assert_eq!(b.members().unwrap(), ["daemon-b"]);
        // daemon-a's late write is refused: its fence is gone.
        assert!(fenced(write(&store_a, fence, "late")));
        assert!(a.renew().is_err(), "an expired lease renewed");
        write(&store_b, newer, "3").unwrap();
        let state = DurableState::new(store_b.clone());
        assert_eq!(
            state.load::<String>("record-dev.json").unwrap().as_deref(),
            Some("3")
        );
        // An update under the fence holds too, and one under the old fence is refused.
        state.set_fence("dev", Some(newer));
        state
            .update_for("dev", "record-dev.json", |v: &mut String| {
                v.push('4');
                Ok::<_, ()>(())
            })
            .unwrap()
            .unwrap();
        state.set_fence("dev", Some(fence));
        let late = state.update_for("dev", "record-dev.json", |v: &mut String| {
            v.push('5');
            Ok::<_, ()>(())
        });
        assert!(matches!(late, Err(StateError::Fenced { .. })), "{late:?}");
        assert_eq!(
            state.load::<String>("record-dev.json").unwrap().as_deref(),
            Some("34")
        );
        b.release("dev", newer).unwrap();
        b.leave().unwrap();
    })
    .await
    .unwrap();
}
