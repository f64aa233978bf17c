//! Who may join and speak for a node: every refusal reaches the agent with its reason, spends
//! nothing it should not, and leaks nothing. Wrong, malformed, expired and reused tokens, and
//! tokens for another node; an undeclared node; a node bound to another key until `drover node
//! reset`; a join that fails inside the daemon (its token stays unspent); two agents racing on
//! one single-use token (one joins); credentials outside their validity; a credential
//! speaking for another node; no credential at all; a credential revoked when its node leaves
//! Git; a daemon CA that does not match the pin; clients that connect and stay silent, before
//! or after their hello; reports over the daemon's limits. The captured logs are searched for
//! every token and private key the tests used.

use std::time::{Duration, SystemTime};

use drover::agent::credential::{Credential, DataDir};
use drover::agent::session::{self, Dial, SessionError};
use drover::join::{create_token, list_tokens, Bindings, TokenRules};
use drover::model::{ClusterName, NodeName};
use drover::pki::{self, NodeKey};
use drover::protocol::TokenRefusal;
use drover::protocol::{AgentMessage, Refusal, ServerMessage, PROTOCOL_VERSION};
use drover::secret::Secret;
use drover::state::StateDir;
use tempfile::TempDir;

use crate::support::fleet::Fleet;

pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const NODES: &[(&str, &str)] = &[("n1", "etcd"), ("n2", "worker"), ("n3", "worker")];

/// Joins as `node` with a fresh data directory.
pub(crate) async fn join_as(
    fleet: &Fleet,
    node: &str,
    token: &Secret,
    pin: &str,
) -> (Result<Credential, SessionError>, TempDir) {
    let dir = crate::support::private_tempdir();
    let data = DataDir::new(StateDir::new(dir.path()));
    let dial = Dial::new(&fleet.url(), pin).unwrap();
    (session::join(&dial, &data, node, token).await, dir)
}

fn refusal(outcome: Result<Credential, SessionError>) -> Refusal {
    match outcome {
        Err(SessionError::Refused(r)) => r,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(c) => panic!("expected a refusal, joined as {}", c.node),
    }
}

/// Everything secret in a credential: the lines of its private key.
fn key_lines(c: &Credential) -> Vec<String> {
    c.key_pem
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect()
}

/// Opens a session with `credential` (or none) and says hello as `cluster/node`.
pub(crate) async fn hello(
    fleet: &Fleet,
    credential: Option<&Credential>,
    cluster: &str,
    node: &str,
) -> (session::Socket, ServerMessage) {
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let identity = credential.map(|c| DataDir::identity(c).unwrap());
    let mut socket = dial.connect(identity).await.expect("a connection");
    let m = AgentMessage::Hello {
        protocol: PROTOCOL_VERSION,
        cluster: cluster.into(),
        node: node.into(),
        agent_version: "test".into(),
        applied: None,
    };
    session::send(&mut socket, &m).await.unwrap();
    let answer = session::recv(&mut socket).await.expect("an answer");
    (socket, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refusals_say_why_and_spend_nothing() {
    let fleet = Fleet::start("joins", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let pin = fleet.pin();
    let cluster = ClusterName::parse(&fleet.cluster).unwrap();
    // n1 joined before, with its own key.
    let (n1, _d0) = join_as(&fleet, "n1", &fleet.token(true, HOUR), &pin).await;
    let n1 = n1.expect("n1 joins");
    let single = fleet.token(true, HOUR);
    let for_n3 = fleet.token_with(TokenRules {
        ttl: HOUR,
        single_use: true,
        node: Some(NodeName::parse("n3").unwrap()),
    });
    let (expired, _) = create_token(
        &fleet.state(),
        &cluster,
        TokenRules {
            ttl: HOUR,
            single_use: true,
            node: None,
        },
        SystemTime::now() - 2 * HOUR,
    )
    .unwrap();
    let (id, _) = single.expose().split_once('.').unwrap();
    let wrong = Secret::new(format!("{id}.{}", "0".repeat(64)));
    let undeclared = Refusal::UndeclaredNode {
        cluster: fleet.cluster.clone(),
        node: "intruder".into(),
    };
    let bound = Refusal::BoundToAnotherKey {
        cluster: fleet.cluster.clone(),
        node: "n1".into(),
    };
    let malformed = Secret::new("no-dot-here");
    let token = |problem| Refusal::Token { problem };
    let other_node = token(TokenRefusal::OtherNode { node: "n3".into() });
    let cases: Vec<(&str, &Secret, Refusal)> = vec![
        ("n2", &wrong, token(TokenRefusal::Unknown)),
        ("n2", &malformed, token(TokenRefusal::Malformed)),
        ("n2", &expired, token(TokenRefusal::Expired)),
        ("intruder", &single, undeclared),
        ("n1", &single, bound),
        ("n2", &for_n3, other_node),
    ];
    for (node, presented, want) in cases {
        let (outcome, _dir) = join_as(&fleet, node, presented, &pin).await;
        let got = refusal(outcome);
        assert_eq!(got, want, "joining as {node}");
        assert!(!got.to_string().contains(presented.expose()));
    }
    let (outcome, _dir) = join_as(&fleet, "Not_A_Name", &single, &pin).await;
    assert!(matches!(refusal(outcome), Refusal::BadRequest { .. }));

    // None of those spent a single-use token; the first good join does.
    let (first, _d1) = join_as(&fleet, "n2", &single, &pin).await;
    let first = first.expect("the first good join succeeds");
    let (again, _d2) = join_as(&fleet, "n3", &single, &pin).await;
    assert_eq!(refusal(again), token(TokenRefusal::AlreadyUsed));
    let (n3, _d3) = join_as(&fleet, "n3", &for_n3, &pin).await;
    let n3 = n3.expect("a token bound to n3 joins n3");

    let mut secrets = vec![
        single.expose().to_string(),
        for_n3.expose().to_string(),
        expired.expose().to_string(),
        wrong.expose().to_string(),
    ];
    for c in [&n1, &first, &n3] {
        secrets.extend(key_lines(c));
    }
    fleet
        .logs
        .assert_free_of(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Whether the single-use token `token` is spent, as the daemon's state says.
fn spent(fleet: &Fleet, token: &Secret) -> bool {
    let (id, _) = token.expose().split_once('.').unwrap();
    let tokens = list_tokens(&fleet.state()).unwrap();
    let record = tokens
        .iter()
        .find(|t| t.id == id)
        .expect("the token is kept");
    record.used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_binding_cannot_be_saved_spends_no_token() {
    let fleet = Fleet::start("unsaved", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let single = fleet.token(true, HOUR);
    // The token is good, the node declared and its credential issued; then saving the
    // binding fails, because a directory stands where the bindings document goes.
    let bindings = fleet
        .state
        .path()
        .join(drover::join::bindings_name(&fleet.cluster));
    let _ = std::fs::remove_file(&bindings);
    std::fs::create_dir(&bindings).unwrap();
    let (outcome, _d) = join_as(&fleet, "n1", &single, &fleet.pin()).await;
    match refusal(outcome) {
        Refusal::BadRequest { detail } => assert!(detail.contains("see its log"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(!spent(&fleet, &single), "a failed join spent the token");
    // Once the daemon can save again, the same token joins.
    std::fs::remove_dir(&bindings).unwrap();
    let (outcome, _d) = join_as(&fleet, "n1", &single, &fleet.pin()).await;
    let n1 = outcome.expect("the unspent token joins");
    assert!(spent(&fleet, &single));
    let mut secrets = key_lines(&n1);
    secrets.push(single.expose().to_string());
    fleet
        .logs
        .assert_free_of(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_single_use_token_joins_one_of_two_racing_agents() {
    let racers: &[(&str, &str)] = &[
        ("e1", "etcd"),
        ("a1", "worker"),
        ("a2", "worker"),
        ("b1", "worker"),
        ("b2", "worker"),
        ("c1", "worker"),
        ("c2", "worker"),
    ];
    let fleet = Fleet::start("race", racers).await;
    let names: Vec<&str> = racers.iter().map(|(n, _)| *n).collect();
    fleet.declare(&names, "    worker: []\n");
    let pin = fleet.pin();
    for pair in [["a1", "a2"], ["b1", "b2"], ["c1", "c2"]] {
        let single = fleet.token(true, HOUR);
        let ((left, _d1), (right, _d2)) = tokio::join!(
            join_as(&fleet, pair[0], &single, &pin),
            join_as(&fleet, pair[1], &single, &pin)
        );
        let (winner, loser) = match (left, right) {
            (Ok(c), Err(e)) | (Err(e), Ok(c)) => (c, e),
            (l, r) => panic!(
                "{pair:?}: exactly one join succeeds: {:?} {:?}",
                l.map(|c| c.node),
                r.map(|c| c.node)
            ),
        };
        assert_eq!(
            refusal(Err(loser)),
            Refusal::Token {
                problem: TokenRefusal::AlreadyUsed
            }
        );
        assert!(spent(&fleet, &single));
        // Only the winner is bound.
        let bound: Bindings = fleet
            .state()
            .load(&drover::join::bindings_name(&fleet.cluster))
            .unwrap()
            .unwrap();
        let joined: Vec<&str> = pair
            .iter()
            .copied()
            .filter(|n| bound.nodes.contains_key(&format!("{}/{n}", fleet.cluster)))
            .collect();
        assert_eq!(joined, [winner.node.as_str()], "{pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_bound_to_a_key_refuses_another_until_reset() {
    let fleet = Fleet::start("bound", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let pin = fleet.pin();
    let (joined, _d1) = join_as(&fleet, "n1", &fleet.token(true, HOUR), &pin).await;
    let original = joined.unwrap();
    // A reinstalled machine: new key, new token, same name.
    let (again, _d2) = join_as(&fleet, "n1", &fleet.token(true, HOUR), &pin).await;
    assert_eq!(
        refusal(again),
        Refusal::BoundToAnotherKey {
            cluster: fleet.cluster.clone(),
            node: "n1".into()
        }
    );
    let reset = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["node", "reset", &fleet.cluster, "n1", "--state-dir"])
        .arg(fleet.state.path())
        .output()
        .unwrap();
    assert!(reset.status.success(), "{reset:?}");
    assert!(String::from_utf8_lossy(&reset.stdout).contains("binding removed"));
    let (replaced, _d3) = join_as(&fleet, "n1", &fleet.token(true, HOUR), &pin).await;
    let replacement = replaced.expect("after a reset the node joins with its new key");
    // The original key no longer works.
    let (_, answer) = hello(&fleet, Some(&original), &fleet.cluster, "n1").await;
    assert_eq!(
        answer,
        ServerMessage::Refused {
            reason: Refusal::UnknownCredential
        }
    );
    let mut secrets = key_lines(&original);
    secrets.extend(key_lines(&replacement));
    fleet
        .logs
        .assert_free_of(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_speaks_only_for_its_own_node() {
    let fleet = Fleet::start("others", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (joined, _d) = join_as(&fleet, "n2", &fleet.token(true, HOUR), &fleet.pin()).await;
    let n2 = joined.unwrap();
    let (_, answer) = hello(&fleet, Some(&n2), &fleet.cluster, "n3").await;
    assert_eq!(
        answer,
        ServerMessage::Refused {
            reason: Refusal::NotYourNode {
                own_cluster: fleet.cluster.clone(),
                own_node: "n2".into(),
                cluster: fleet.cluster.clone(),
                node: "n3".into(),
            }
        }
    );
    let (_, answer) = hello(&fleet, None, &fleet.cluster, "n2").await;
    assert_eq!(
        answer,
        ServerMessage::Refused {
            reason: Refusal::CredentialRequired
        }
    );
    // Its own node: welcome, then its own plan only.
    let (mut socket, answer) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
    assert!(
        matches!(answer, ServerMessage::Welcome { .. }),
        "{answer:?}"
    );
    let plan = loop {
        match session::recv(&mut socket).await.unwrap() {
            ServerMessage::Plan { spec, .. } => break spec,
            _ => continue,
        }
    };
    let specs = fleet.specs(&["n1", "n2", "n3"], "    worker: []\n");
    assert_eq!(plan, specs["n2"]);
    fleet.logs.assert_free_of(
        &key_lines(&n2)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaving_git_has_its_credential_revoked() {
    let fleet = Fleet::start("revoke", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (joined, _d) = join_as(&fleet, "n3", &fleet.token(true, HOUR), &fleet.pin()).await;
    let n3 = joined.unwrap();
    let (mut socket, answer) = hello(&fleet, Some(&n3), &fleet.cluster, "n3").await;
    assert!(
        matches!(answer, ServerMessage::Welcome { .. }),
        "{answer:?}"
    );

    fleet.declare(&["n1", "n2"], "    worker: []\n");
    let revoked = Refusal::Revoked {
        cluster: fleet.cluster.clone(),
        node: "n3".into(),
        why: "the node left the cluster's definition in Git".into(),
    };
    let ended = loop {
        match session::recv(&mut socket).await {
            Ok(ServerMessage::Refused { reason }) => break reason,
            Ok(_) => continue,
            Err(e) => panic!("the session ended without a reason: {e}"),
        }
    };
    assert_eq!(ended, revoked);
    // Coming back is refused the same way, even once the node is declared again: it must
    // join with a new token.
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (_, answer) = hello(&fleet, Some(&n3), &fleet.cluster, "n3").await;
    assert_eq!(answer, ServerMessage::Refused { reason: revoked });
    let (rejoined, _d2) = join_as(&fleet, "n3", &fleet.token(true, HOUR), &fleet.pin()).await;
    rejoined.expect("a revoked node joins again with a new token");
}

/// Says hello as `credential`'s node; the answer, or how the connection failed.
async fn try_hello(fleet: &Fleet, credential: &Credential) -> Result<ServerMessage, String> {
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let identity = DataDir::identity(credential).unwrap();
    let mut socket = dial
        .connect(Some(identity))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let m = AgentMessage::Hello {
        protocol: PROTOCOL_VERSION,
        cluster: credential.cluster.clone(),
        node: credential.node.clone(),
        agent_version: "test".into(),
        applied: None,
    };
    session::send(&mut socket, &m)
        .await
        .map_err(|e| format!("send: {e}"))?;
    session::recv(&mut socket)
        .await
        .map_err(|e| format!("recv: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_outside_its_validity_is_refused() {
    let fleet = Fleet::start("validity", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (joined, _d) = join_as(&fleet, "n2", &fleet.token(true, HOUR), &fleet.pin()).await;
    let n2 = joined.unwrap();
    // Certificates for n2's own bound key, from the daemon's CA by the path joins take.
    let ca = pki::DaemonCa::ensure(&fleet.state()).unwrap();
    let csr = NodeKey::from_pem(&n2.key_pem)
        .unwrap()
        .csr_pem("n2")
        .unwrap();
    let now = SystemTime::now();
    let cases = [
        ("issued now", now, true),
        ("expired", now - 2 * pki::NODE_CERT_VALIDITY, false),
        ("not yet valid", now + 24 * HOUR, false),
    ];
    for (what, issued, welcome) in cases {
        let cert_pem = ca
            .issue_node(&csr, &fleet.cluster, "n2", issued)
            .unwrap()
            .cert_pem;
        let credential = Credential {
            cert_pem,
            ..n2.clone()
        };
        let answer = try_hello(&fleet, &credential).await;
        match (welcome, &answer) {
            (true, Ok(ServerMessage::Welcome { .. })) => {}
            (false, Err(_) | Ok(ServerMessage::Refused { .. })) => {}
            _ => panic!("{what}: {answer:?}"),
        }
    }
    fleet.logs.assert_free_of(
        &key_lines(&n2)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_ca_that_does_not_match_the_pin_gets_no_token() {
    let fleet = Fleet::start("pin", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let token = fleet.token(true, HOUR);
    let other = pki::pin(NodeKey::generate().unwrap().pin().as_bytes());
    let (outcome, _d) = join_as(&fleet, "n1", &token, &other).await;
    match outcome {
        Err(e @ SessionError::PinMismatch) => {
            assert!(e.to_string().contains(pki::PIN_MISMATCH), "{e}");
            assert!(!e.is_transient());
        }
        other => panic!("expected a pin mismatch, got {:?}", other.map(|c| c.node)),
    }
    // The token never left the agent: it still joins with the right pin.
    let (outcome, _d) = join_as(&fleet, "n1", &token, &fleet.pin()).await;
    outcome.expect("the unspent token joins");
    fleet.logs.assert_free_of(&[token.expose()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_told_to_retry_until_the_daemon_has_read_git() {
    let fleet = Fleet::start("early", NODES).await;
    let (outcome, _d) = join_as(&fleet, "n1", &fleet.token(true, HOUR), &fleet.pin()).await;
    match outcome {
        Err(e @ SessionError::RetryAfter { .. }) => assert!(e.is_transient()),
        other => panic!("expected retry-after, got {:?}", other.map(|c| c.node)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stay_silent_are_disconnected() {
    use tokio::io::AsyncReadExt as _;
    let fleet = Fleet::start_configured("silent", NODES, |s| {
        s.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let addr = fleet.url().trim_start_matches("wss://").to_string();
    let closed = |what: &'static str| {
        move |read: std::io::Result<usize>| match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("{what}: the server sent {n} bytes instead of closing"),
        }
    };
    let mut buf = [0u8; 64];
    // No TLS handshake at all.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("a client that never starts TLS is dropped");
    closed("silent TCP")(read);
    // TLS, then no HTTP request.
    let mut tls = dial.tls(None).await.expect("TLS with the pinned CA");
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .expect("a client that never sends its request is dropped");
    closed("silent TLS")(read);
    // The server still serves agents that speak.
    let token = fleet.token(true, HOUR);
    let (outcome, _d) = join_as(&fleet, "n1", &token, &fleet.pin()).await;
    outcome.expect("a prompt agent joins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_heartbeats_and_drops_an_agent_that_falls_silent() {
    // Fleet servers beat every 500 ms: silence is noticed after three beats.
    let fleet = Fleet::start("beats", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (joined, _d) = join_as(&fleet, "n2", &fleet.token(true, HOUR), &fleet.pin()).await;
    let n2 = joined.unwrap();
    let (mut socket, answer) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
    assert!(
        matches!(
            answer,
            ServerMessage::Welcome {
                heartbeat_interval_ms: 500,
                ..
            }
        ),
        "{answer:?}"
    );
    assert!(fleet.report("n2").connected);
    // The daemon beats with a growing sequence; the agent says nothing back.
    let mut beats = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match session::recv(&mut socket).await {
                Ok(ServerMessage::Heartbeat { seq }) => beats.push(seq),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the daemon drops a silent agent");
    assert!(matches!(ended, SessionError::Lost(_)), "{ended}");
    assert!(
        !beats.is_empty() && beats.windows(2).all(|w| w[1] == w[0] + 1),
        "{beats:?}"
    );
    assert!(
        beats.len() <= 4,
        "dropped after about three silent intervals: {beats:?}"
    );
    assert!(!fleet.report("n2").connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_bounded_at_the_daemon() {
    use drover::protocol::{StepReport, MAX_REPORT_ITEMS, MAX_REPORT_TEXT_BYTES};
    let fleet = Fleet::start("bounds", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (joined, _d) = join_as(&fleet, "n2", &fleet.token(true, HOUR), &fleet.pin()).await;
    let n2 = joined.unwrap();
    let step = |error: &str| StepReport {
        subject: "web".into(),
        action: "created".into(),
        error: Some(error.to_string()),
    };
    let applied = |steps| AgentMessage::Applied {
        generation: 1,
        checksum: "sha256:00".into(),
        steps,
    };

    // A long error is kept, cut to the limit.
    let (mut socket, _) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
    let long = "e".repeat(100 * MAX_REPORT_TEXT_BYTES);
    session::send(&mut socket, &applied(vec![step(&long)]))
        .await
        .unwrap();
    let kept = crate::support::wait::eventually("the report", Duration::from_secs(30), || async {
        fleet
            .report("n2")
            .steps
            .first()
            .and_then(|s| s.error.clone())
            .ok_or("no step yet")
    })
    .await;
    assert!(
        kept.len() <= MAX_REPORT_TEXT_BYTES && kept.ends_with('…'),
        "{}",
        kept.len()
    );

    // Too many steps: refused with the reason, and nothing of it is kept.
    let many = (0..=MAX_REPORT_ITEMS).map(|_| step("x")).collect();
    session::send(&mut socket, &applied(many)).await.unwrap();
    let reason = loop {
        match session::recv(&mut socket).await {
            Ok(ServerMessage::Refused { reason }) => break reason,
            Ok(_) => continue,
            Err(e) => panic!("closed without a reason: {e}"),
        }
    };
    match reason {
        Refusal::BadRequest { detail } => assert!(detail.contains("over the limit"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fleet.report("n2").steps.len(), 1);
}
