//! A member's snapshot, streamed by the agent (`drover::agent::transfer`) to the daemon's agent
//! server on a connection of its own: real etcd with TLS, the real server and node
//! credentials. The bytes arrive whole (etcd's own trailing sha256 checks out) with the
//! revision; only the node the transfer was asked of may send it, once; a transfer over the
//! limit is cut off and its reader told.

use std::time::Duration;

use drover::agent::credential::{Credential, DataDir};
use drover::agent::session::Dial;
use drover::agent::transfer::send_snapshot;
use drover::protocol::EtcdTaskOutcome;
use drover::server::transfer::{Incoming, TransferError};
use drover::server::Settings;
use sha2::{Digest as _, Sha256};

use crate::agent_security::join_as;
use crate::support::docker;
use crate::support::etcd::{TlsCluster, TlsMember};
use crate::support::fleet::Fleet;
use crate::support::{require, test_name};

const TTL: Duration = Duration::from_secs(60);

/// Joins `nodes` of a fleet declaring them; their credentials, in order.
async fn credentials(fleet: &Fleet, nodes: &[&str]) -> Vec<Credential> {
    fleet.declare(nodes, "    worker: []\n");
    let mut out = Vec::new();
    for node in nodes {
        let token = fleet.token(true, Duration::from_secs(600));
        let (joined, _dir) = join_as(fleet, node, &token, &fleet.pin()).await;
        out.push(joined.expect("the node joins"));
    }
    out
}

/// A fleet whose transfers stall after 300 ms, and n1's credential.
async fn quick_to_stall(prefix: &str) -> (Fleet, Credential) {
    let quick: fn(&mut Settings) = |s| s.transfer_stall = Duration::from_millis(300);
    let fleet = Fleet::start_configured(prefix, &[("n1", "etcd")], quick).await;
    let mut creds = credentials(&fleet, &["n1"]).await;
    (fleet, creds.remove(0))
}

/// Sends `member`'s snapshot as `credential`'s node to transfer `id`.
async fn send(
    fleet: &Fleet,
    credential: &Credential,
    id: &str,
    member: &TlsMember,
) -> EtcdTaskOutcome {
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let identity = DataDir::identity(credential).unwrap();
    send_snapshot(&dial, identity, id, &member.client_url, member.pki_dir()).await
}

/// Every piece of `incoming`, or the error that ended it.
async fn collect(mut incoming: Incoming) -> Result<Vec<u8>, TransferError> {
    let mut bytes = Vec::new();
    while let Some(piece) = incoming.bytes.recv().await {
        bytes.extend_from_slice(&piece?);
    }
    Ok(bytes)
}

async fn fill(member: &TlsMember, keys: usize) {
    let mut client = member.client().await.expect("an etcd client");
    for i in 0..keys {
        client
            .put(format!("key-{i:04}"), vec![b'v'; 512], None)
            .await
            .expect("a put");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_arrives_whole_and_only_from_the_node_asked() {
    let engine = require!(docker::connect().await);
    let etcd = require!(TlsCluster::start(&engine, &test_name!(), 1).await);
    let member = &etcd.members[0];
    fill(member, 200).await;
    let fleet = Fleet::start("xfer", &[("n1", "etcd"), ("n2", "worker")]).await;
    let creds = credentials(&fleet, &["n1", "n2"]).await;

    let (id, arrives) = fleet
        .hub()
        .transfers()
        .expect(&fleet.cluster, "n1", TTL)
        .unwrap();
    // Read as it arrives: the queue is short, and a reader that waits holds the agent back.
    let reader = tokio::spawn(async move {
        let incoming = arrives.await.expect("the transfer arrives");
        (incoming.revision, collect(incoming).await)
    });
    let outcome = send(&fleet, &creds[0], &id, member).await;
    let (revision, bytes) = reader.await.unwrap();
    let bytes = bytes.expect("every piece");
    assert_eq!(
        outcome,
        EtcdTaskOutcome::Sent {
            revision,
            bytes: bytes.len() as u64
        }
    );
    assert!(revision >= 201, "revision {revision} after 200 puts");
    // etcd ends a snapshot with the sha256 of what precedes it.
    let (db, trailer) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), trailer, "etcd's hash");
    assert!(
        db.len() > 200 * 512,
        "{} bytes for 200 values of 512",
        db.len()
    );

    // The same id again, or another node sending what was asked of n1: refused alike.
    let again = send(&fleet, &creds[0], &id, member).await;
    let (id2, arrives2) = fleet
        .hub()
        .transfers()
        .expect(&fleet.cluster, "n1", TTL)
        .unwrap();
    let other = send(&fleet, &creds[1], &id2, member).await;
    // (The daemon answers before reading the body: the agent sees the answer, or the pipe
    // the daemon closed.)
    for refused in [again, other] {
        assert!(
            matches!(refused, EtcdTaskOutcome::Failed { .. }),
            "a transfer nobody asked of this node went through: {refused:?}"
        );
    }
    // n2 could not take n1's transfer away: n1 still sends it.
    let reader = tokio::spawn(async move { collect(arrives2.await.unwrap()).await });
    let sent = send(&fleet, &creds[0], &id2, member).await;
    assert!(matches!(sent, EtcdTaskOutcome::Sent { .. }), "{sent:?}");
    assert!(reader.await.unwrap().is_ok());
    let unknown = send(
        &fleet,
        &creds[0],
        "0123456789abcdef0123456789abcdef",
        member,
    )
    .await;
    assert!(
        matches!(unknown, EtcdTaskOutcome::Failed { .. }),
        "{unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_over_the_limit_is_cut_off_and_its_reader_told() {
    let engine = require!(docker::connect().await);
    let etcd = require!(TlsCluster::start(&engine, &test_name!(), 1).await);
    let member = &etcd.members[0];
    fill(member, 50).await;
    let small: fn(&mut Settings) = |s| s.max_transfer_bytes = 16 * 1024;
    let fleet = Fleet::start_configured("xfer-limit", &[("n1", "etcd")], small).await;
    let creds = credentials(&fleet, &["n1"]).await;
    let (id, arrives) = fleet
        .hub()
        .transfers()
        .expect(&fleet.cluster, "n1", TTL)
        .unwrap();
    let reader = tokio::spawn(async move { collect(arrives.await.unwrap()).await });
    let outcome = send(&fleet, &creds[0], &id, member).await;
    assert_eq!(
        reader.await.unwrap(),
        Err(TransferError::TooLarge(16 * 1024))
    );
    assert!(
        matches!(outcome, EtcdTaskOutcome::Failed { .. }),
        "an oversized transfer went through: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_whose_bytes_stop_is_cut_off_and_its_reader_told() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let (fleet, n1) = quick_to_stall("xfer-stall").await;
    let (id, arrives) = fleet
        .hub()
        .transfers()
        .expect(&fleet.cluster, "n1", TTL)
        .unwrap();
    let reader = tokio::spawn(async move { collect(arrives.await.unwrap()).await });
    // A sender that sends one piece, then nothing, on a real connection with n1's credential.
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let tls = dial
        .tls(Some(DataDir::identity(&n1).unwrap()))
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    let piece = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from_static(b"etcd")))
    });
    let body = StreamBody::new(futures::StreamExt::chain(piece, futures::stream::pending()));
    let request = hyper::Request::put(format!("{}{id}", drover::protocol::TRANSFER_PATH))
        .header(hyper::header::HOST, "daemon")
        .header(drover::protocol::SNAPSHOT_REVISION_HEADER, "7")
        .header(drover::protocol::SNAPSHOT_VERSION_HEADER, "3.4.23")
        .body(body)
        .unwrap();
    let answer = sender.send_request(request).await;
    assert_eq!(
        reader.await.unwrap(),
        Err(TransferError::Stalled(Duration::from_millis(300)))
    );
    if let Ok(response) = answer {
        assert_eq!(response.status(), hyper::StatusCode::BAD_REQUEST);
    }
    driver.abort();
}

/// Offers n1 `data` under `sha256` and fills the transfer from a task, in pieces.
fn offer(fleet: &Fleet, data: Vec<u8>, sha256: &str) -> (String, tokio::task::JoinHandle<()>) {
    let (id, fill) = fleet
        .hub()
        .transfers()
        .offer(&fleet.cluster, "n1", TTL, sha256)
        .unwrap();
    let producer = tokio::spawn(async move {
        for piece in data.chunks(64 * 1024) {
            if fill
                .send(Ok(bytes::Bytes::copy_from_slice(piece)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    (id, producer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offered_transfer_is_fetched_whole_into_a_private_file_and_checked() {
    use std::os::unix::fs::PermissionsExt as _;

    use drover::agent::transfer::{fetch_to_file, TransferError as FetchError};

    let fleet = Fleet::start("xfer-down", &[("n1", "etcd"), ("n2", "worker")]).await;
    let creds = credentials(&fleet, &["n1", "n2"]).await;
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let identity = |c: &Credential| DataDir::identity(c).unwrap();
    let dir = crate::support::private_tempdir();
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = hex::encode(Sha256::digest(&data));

    let (id, producer) = offer(&fleet, data.clone(), &digest);
    let dest = dir.path().join("restore.db");
    let fetched = fetch_to_file(&dial, identity(&creds[0]), &id, &dest)
        .await
        .unwrap();
    producer.await.unwrap();
    assert_eq!(fetched.bytes, data.len() as u64);
    assert_eq!(fetched.sha256, digest);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Bytes that do not hash to what the daemon said: refused, and no file is left.
    let (id, _producer) = offer(&fleet, data.clone(), &"0".repeat(64));
    let bad = dir.path().join("bad.db");
    let refused = fetch_to_file(&dial, identity(&creds[0]), &id, &bad).await;
    assert!(
        matches!(refused, Err(FetchError::Digest { .. })),
        "{refused:?}"
    );
    assert!(!bad.exists(), "a file that failed its hash was left");

    // Offered to n1: n2 is refused, and n1 still fetches it.
    let (id, _producer) = offer(
        &fleet,
        b"etcd".to_vec(),
        &hex::encode(Sha256::digest(b"etcd")),
    );
    let other = fetch_to_file(&dial, identity(&creds[1]), &id, &dir.path().join("n2.db")).await;
    match other {
        Err(FetchError::Refused { status }) => assert_eq!(status, 404),
        other => panic!("n2 fetched n1's transfer: {other:?}"),
    }
    let mine = fetch_to_file(&dial, identity(&creds[0]), &id, &dir.path().join("n1.db")).await;
    assert_eq!(mine.unwrap().bytes, 4);
    // Taken once: a second fetch of the same id is refused.
    let again = fetch_to_file(
        &dial,
        identity(&creds[0]),
        &id,
        &dir.path().join("again.db"),
    )
    .await;
    assert!(
        matches!(again, Err(FetchError::Refused { .. })),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offered_transfer_whose_bytes_stop_fails_and_leaves_no_file() {
    use drover::agent::transfer::fetch_to_file;

    let (fleet, n1) = quick_to_stall("xfer-down-stall").await;
    let (id, fill) = fleet
        .hub()
        .transfers()
        .offer(&fleet.cluster, "n1", TTL, &"0".repeat(64))
        .unwrap();
    // One piece, then the daemon's side goes quiet without closing.
    fill.send(Ok(bytes::Bytes::from_static(b"etcd")))
        .await
        .unwrap();
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let dir = crate::support::private_tempdir();
    let dest = dir.path().join("restore.db");
    let identity = DataDir::identity(&n1).unwrap();
    let fetched = fetch_to_file(&dial, identity, &id, &dest).await;
    assert!(fetched.is_err(), "{fetched:?}");
    assert!(!dest.exists(), "a partial file was left");
    drop(fill);
}

/// What `take` is given: `n1`'s agent, on a plan that names the member at `member` and
/// carries a client certificate of its cluster's CA (written into the agent's PKI directory).
fn member_plan(etcd: &TlsCluster, member: &TlsMember) -> drover::nodeplan::NodeSpec {
    let pki = etcd
        .ca
        .issue("n1", &[member.ip.to_string()], std::time::SystemTime::now())
        .unwrap();
    drover::nodeplan::NodeSpec {
        etcd_client_url: Some(member.client_url.clone()),
        pki,
        ..drover::nodeplan::NodeSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_through_a_members_agent_is_saved_whole() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use drover::model::ClusterName;
    use drover::snapshot::download::download_verified;
    use futures::TryStreamExt as _;

    use crate::support::fleet::TestAgent;

    let engine = require!(docker::connect().await);
    let etcd = require!(TlsCluster::start(&engine, &test_name!(), 1).await);
    let member = &etcd.members[0];
    fill(member, 100).await;
    let fleet = Fleet::start("take", &[("n1", "etcd")]).await;
    fleet.declare(&["n1"], "    worker: []\n");
    let token = fleet.token(true, Duration::from_secs(600));
    let agent = TestAgent::start(&fleet, "n1", Some(token)).await;
    let spec = member_plan(&etcd, member);
    let desired = BTreeMap::from([(
        fleet.cluster.clone(),
        BTreeMap::from([("n1".to_string(), spec.clone())]),
    )]);
    fleet.hub().set_desired(&desired).unwrap();
    fleet.converged("n1", &spec, Duration::from_secs(30)).await;

    let dir = crate::support::private_tempdir();
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let cluster = ClusterName::parse(&fleet.cluster).unwrap();
    let members = ["n1".to_string()];
    let manifest =
        drover::daemon::snapshots::take(fleet.hub(), &*store, &cluster, &members, "abc123")
            .await
            .unwrap_or_else(|e| panic!("{}", drover_error(&e)));
    assert_eq!(manifest.member.as_str(), "n1");
    assert!(manifest.revision >= 101, "revision {}", manifest.revision);
    let listed = drover::snapshot::list(&*store, &cluster).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed.contains(&manifest.id));
    let (_, raw) = download_verified(store.clone(), &cluster, &manifest.id)
        .await
        .unwrap();
    let raw: Vec<bytes::Bytes> = raw.try_collect().await.unwrap();
    let revision = crate::snapshot_store::etcdctl_status_revision(&raw.concat());
    assert!(revision >= 101, "etcdctl says revision {revision}");
    agent.stop().await;
}

fn drover_error(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
