//! What an unauthenticated or misbehaving peer can cost the agent server, with real sockets:
//! a flood of silent and slow clients while real agents stay connected and get their plans;
//! oversized and malformed first messages (the reply and the log line stay short); a peer that
//! stops reading (its session ends within a bound and shutdown completes); `Renew` nobody asked
//! for; and `drover node reset` racing renewals, which must never be missed.

use std::time::Duration;

use drover::agent::credential::Credential;
use drover::agent::session::{self, Dial, SessionError};
use drover::join::{bindings_name, Bindings};
use drover::pki::NodeKey;
use drover::protocol::{AgentMessage, Refusal, ServerMessage, MAX_REFUSAL_TEXT_BYTES};
use futures::SinkExt as _;
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::Message;

use crate::agent_security::{hello, join_as, HOUR, NODES};
use crate::support::fleet::Fleet;
use crate::support::wait::eventually;

const LIMIT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const REFUSAL_LOGS: u32 = 5;
/// Clients refused at once in each round of a burst.
const BURST_ROUND: usize = 30;

/// Sends a first message the daemon cannot parse and checks it is refused.
async fn refused_nonsense(dial: &Dial) {
    let mut s = dial.connect(None).await.unwrap();
    s.send(Message::Text(r#"{"type":"nonsense"}"#.into()))
        .await
        .unwrap();
    let answer = session::recv(&mut s).await;
    assert!(
        matches!(answer, Ok(ServerMessage::Refused { .. })),
        "{answer:?}"
    );
}

async fn joined(fleet: &Fleet, node: &str) -> (Credential, tempfile::TempDir) {
    let (outcome, dir) = join_as(fleet, node, &fleet.token(true, HOUR), &fleet.pin()).await;
    (outcome.expect("the node joins"), dir)
}

/// The next message that is not a heartbeat; the error when the session ends instead.
async fn next_non_heartbeat(socket: &mut session::Socket) -> Result<ServerMessage, SessionError> {
    loop {
        match session::recv(socket).await? {
            ServerMessage::Heartbeat { .. } => continue,
            other => return Ok(other),
        }
    }
}

/// Reads until the server closes the connection; panics if it sends data or keeps it open.
async fn closed_by_server(mut tcp: tokio::net::TcpStream, within: Duration, client: usize) {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(within, tcp.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("client {client}: the server sent {n} bytes instead of closing"),
        Err(_) => panic!("client {client}: still open after {within:?}"),
    }
}

/// A worker component with a file of `size` bytes whose content changes with `round`.
fn big_file(round: usize, size: usize) -> String {
    let content = format!("{round:08}{}", "x".repeat(size));
    format!(
        "    worker:\n      - name: big\n        image: drover-test/busybox:1\n        files:\n          - {{path: /etc/big, content: \"{content}\"}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_and_slow_clients_leaves_connected_agents_served() {
    let fleet = Fleet::start_configured("flood", NODES, |s| {
        s.max_handshakes = 4;
        s.max_pending = 16;
        s.max_unadmitted = 8;
        s.handshake_timeout = HANDSHAKE_TIMEOUT;
        // The test's agent sends no heartbeats; it must not be dropped for that here.
        s.heartbeat = Duration::from_secs(60);
    })
    .await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (n2, _d) = joined(&fleet, "n2").await;
    let (mut agent, welcome) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
    assert!(
        matches!(welcome, ServerMessage::Welcome { .. }),
        "{welcome:?}"
    );
    let first = next_non_heartbeat(&mut agent)
        .await
        .expect("the first plan");
    assert!(
        matches!(first, ServerMessage::Plan { generation: 1, .. }),
        "{first:?}"
    );

    let addr = fleet.url().trim_start_matches("wss://").to_string();
    // Silent TCP clients, far over the count allowed to wait for a handshake.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // Slow clients: TLS and WebSocket done, then no first message, over the unadmitted count.
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let mut slow = Vec::new();
    for _ in 0..12 {
        if let Ok(s) = dial.connect(None).await {
            slow.push(s);
        }
    }

    // The connected agent gets a new plan during the flood.
    fleet.declare(&["n1", "n2", "n3"], &big_file(1, 16));
    let plan = tokio::time::timeout(LIMIT, next_non_heartbeat(&mut agent))
        .await
        .expect("a plan during the flood")
        .expect("the session stays up");
    assert!(
        matches!(plan, ServerMessage::Plan { generation: 2, .. }),
        "{plan:?}"
    );

    // Every silent client is closed by the server: at once over the count, else at the
    // handshake timeout, which covers the wait for a handshake slot too. Untimed waiters
    // would take 200 / 4 slots x 2 s.
    let bound = HANDSHAKE_TIMEOUT * 3;
    let closing = silent
        .into_iter()
        .enumerate()
        .map(|(i, tcp)| closed_by_server(tcp, bound, i));
    futures::future::join_all(closing).await;
    // Slow clients over the unadmitted count were closed; the others at the first-message
    // timeout.
    for (i, mut s) in slow.into_iter().enumerate() {
        let ended = tokio::time::timeout(LIMIT, session::recv(&mut s)).await;
        match ended.unwrap_or_else(|_| panic!("slow client {i} still open")) {
            Err(_) | Ok(ServerMessage::Refused { .. }) => {}
            Ok(other) => panic!("slow client {i} got {other:?}"),
        }
    }
    // The server still admits new agents.
    let (n3, _d3) = joined(&fleet, "n3").await;
    let (_s, welcome) = hello(&fleet, Some(&n3), &fleet.cluster, "n3").await;
    assert!(
        matches!(welcome, ServerMessage::Welcome { .. }),
        "{welcome:?}"
    );
    assert!(fleet.report("n2").connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_first_messages_get_short_answers() {
    let fleet = Fleet::start_configured("firstmsg", NODES, |s| {
        s.refusal_logs_per_second = REFUSAL_LOGS;
    })
    .await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let dial = Dial::new(&fleet.url(), &fleet.pin()).unwrap();
    let marker = "q".repeat(20 * 1024);
    // Malformed, within the size an unadmitted peer may send: the reply quotes little of it.
    let mut s = dial.connect(None).await.unwrap();
    let text = format!(r#"{{"type":"{marker}"}}"#);
    s.send(Message::Text(text.into())).await.unwrap();
    match session::recv(&mut s).await {
        Ok(ServerMessage::Refused {
            reason: Refusal::BadRequest { detail },
        }) => assert!(detail.len() <= MAX_REFUSAL_TEXT_BYTES, "{}", detail.len()),
        other => panic!("expected a short refusal, got {other:?}"),
    }
    // Oversized for a peer without a credential: refused by the WebSocket layer before parsing.
    let mut s = dial.connect(None).await.unwrap();
    let big = format!(r#"{{"type":"join","x":"{}"}}"#, "z".repeat(1024 * 1024));
    let _ = s.send(Message::Text(big.into())).await;
    match session::recv(&mut s).await {
        Err(_) => {}
        Ok(ServerMessage::Refused {
            reason: Refusal::BadRequest { detail },
        }) => assert!(detail.len() <= MAX_REFUSAL_TEXT_BYTES, "{}", detail.len()),
        Ok(other) => panic!("expected the connection refused, got {other:?}"),
    }
    // A hello naming a huge node: the refusal and its log line stay short.
    let mut s = dial.connect(None).await.unwrap();
    let m = AgentMessage::Hello {
        protocol: drover::protocol::PROTOCOL_VERSION,
        cluster: "c".into(),
        node: marker.clone(),
        agent_version: marker.clone(),
        applied: None,
    };
    session::send(&mut s, &m).await.unwrap();
    let answer = session::recv(&mut s).await.expect("a refusal");
    assert!(
        matches!(
            answer,
            ServerMessage::Refused {
                reason: Refusal::CredentialRequired
            }
        ),
        "{answer:?}"
    );
    // A burst of malformed first messages costs a bounded number of log lines. Rounds of
    // concurrent clients go on until more were refused than the budget could log in the
    // time they took, however slow the machine.
    let started = std::time::Instant::now();
    let mut sent = 0;
    while sent <= 3 + REFUSAL_LOGS as usize * (started.elapsed().as_secs() as usize + 2) {
        let round = (0..BURST_ROUND).map(|_| refused_nonsense(&dial));
        futures::future::join_all(round).await;
        sent += BURST_ROUND;
    }
    let seconds = started.elapsed().as_secs() + 1;
    let refused = |logs: &str| logs.lines().filter(|l| l.contains("agent refused")).count();
    let logged = refused(&fleet.logs.text());
    // Three refusals before the burst, then at most the budget per second it lasted.
    let most = 3 + REFUSAL_LOGS as usize * (seconds as usize + 1);
    assert!(logged <= most, "{logged} refusals logged in {seconds} s");
    assert!(logged < 3 + sent, "some refusals were not logged");
    // The next refusal logged says how many were not.
    eventually(
        "a refusal logged with the count of those that were not",
        LIMIT,
        || async {
            let mut s = dial.connect(None).await.unwrap();
            let _ = s.send(Message::Text(r#"{"type":"nonsense"}"#.into())).await;
            let _ = session::recv(&mut s).await;
            if fleet.logs.text().contains("more refusals not logged") {
                Ok(())
            } else {
                Err("not yet")
            }
        },
    )
    .await;
    let logs = fleet.logs.text();
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2048, "a log line of {longest} bytes");
    assert!(
        !logs.contains(&marker[..1024]),
        "the peer's text is not logged in full"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_and_shutdown_completes() {
    let mut fleet = Fleet::start_configured("stuck", NODES, |s| {
        s.send_timeout = Duration::from_secs(1);
        s.heartbeat = Duration::from_secs(60);
    })
    .await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (n2, _d) = joined(&fleet, "n2").await;
    let (socket, _) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
    // The agent reads nothing more; the daemon keeps sending plans of 512 KiB.
    let mut round = 0;
    eventually(
        "the daemon to drop the agent that stopped reading",
        LIMIT,
        || {
            round += 1;
            fleet.declare(&["n1", "n2", "n3"], &big_file(round, 512 * 1024));
            async {
                if fleet.report("n2").connected {
                    Err("still connected")
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
    tokio::time::timeout(LIMIT, fleet.stop_server())
        .await
        .expect("shutdown completes with a peer that does not read");
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_is_refused_unless_the_daemon_asked_for_it() {
    let fleet = Fleet::start("unasked", NODES).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    let (n2, _d) = joined(&fleet, "n2").await;
    let (mut socket, welcome) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
    assert!(
        matches!(welcome, ServerMessage::Welcome { .. }),
        "{welcome:?}"
    );
    let csr_pem = NodeKey::generate().unwrap().csr_pem("n2").unwrap();
    session::send(&mut socket, &AgentMessage::Renew { csr_pem })
        .await
        .unwrap();
    let answer = loop {
        match next_non_heartbeat(&mut socket).await {
            Ok(ServerMessage::Plan { .. }) => continue,
            other => break other,
        }
    };
    match answer {
        Ok(ServerMessage::Refused {
            reason: Refusal::BadRequest { detail },
        }) => assert!(detail.contains("renew"), "{detail}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let bindings: Bindings = fleet
        .state()
        .load(&bindings_name(&fleet.cluster))
        .unwrap()
        .unwrap();
    let key = format!("{}/n2", fleet.cluster);
    assert!(
        bindings.nodes[&key].next_pin.is_none(),
        "nothing was staged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reset_racing_renewals_is_never_missed() {
    let fleet = Fleet::start_configured("race", NODES, |s| s.renew_after = Duration::ZERO).await;
    fleet.declare(&["n1", "n2", "n3"], "    worker: []\n");
    for round in 0..8 {
        let (n2, _d) = joined(&fleet, "n2").await;
        let (mut socket, _) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
        // The daemon asks every session to renew; answer it while another process resets.
        let asked = loop {
            match next_non_heartbeat(&mut socket)
                .await
                .expect("a renewal request")
            {
                ServerMessage::RenewCredential {} => break true,
                _ => continue,
            }
        };
        assert!(asked);
        let csr_pem = NodeKey::generate().unwrap().csr_pem("n2").unwrap();
        let state = fleet.state();
        let cluster = fleet.cluster.clone();
        let reset = std::thread::spawn(move || {
            state
                .update(&bindings_name(&cluster), |b: &mut Bindings| {
                    b.reset(&cluster, "n2");
                    Ok::<_, std::convert::Infallible>(())
                })
                .unwrap()
                .unwrap();
        });
        let _ = session::send(&mut socket, &AgentMessage::Renew { csr_pem }).await;
        reset.join().unwrap();
        drop(socket);
        // Whatever the order, the reset stands: the node's key is refused.
        eventually(
            &format!("round {round}: the reset to hold"),
            LIMIT,
            || async {
                let (_s, answer) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
                match answer {
                    ServerMessage::Refused { .. } => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        // And it holds: the cache does not go back to the key.
        for _ in 0..3 {
            let (_s, answer) = hello(&fleet, Some(&n2), &fleet.cluster, "n2").await;
            assert!(
                matches!(answer, ServerMessage::Refused { .. }),
                "round {round}: {answer:?}"
            );
        }
    }
}
