//! The daemon's plain-HTTP listener with real sockets: health, readiness and metrics, webhooks
//! refused unsigned and oversized, and the bounds that hold before any handler runs (a request
//! head that never finishes, a flood of idle connections).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use drover::daemon::http::{HEADER_TIMEOUT, MAX_CONNECTIONS};
use drover::source::webhook::DEFAULT_MAX_BODY_BYTES;

use crate::support::daemon::TestDaemon;
use crate::support::git::TestRepo;

/// An empty repository: the daemon serves, with no cluster to reconcile.
async fn daemon() -> (TestRepo, TestDaemon) {
    let repo = TestRepo::init();
    repo.commit_files(&[("clusters/README", "no clusters yet\n")], "empty");
    let daemon = TestDaemon::start(&repo.url()).await;
    (repo, daemon)
}

/// Reads until the peer closes or `limit` passes; true when it closed.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let (_repo, daemon) = daemon().await;
    let base = format!("http://{}", daemon.http());
    let ready = crate::support::wait::eventually("/readyz", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{base}/readyz"))
            .await
            .map_err(|e| e.to_string())?;
        if r.status().as_u16() == 200 {
            Ok(())
        } else {
            Err(format!("{}", r.status()))
        }
    });
    ready.await;
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "drover_source_up 1",
        "drover_agents_connected 0",
        "drover_source_revision{",
        "drover_webhooks_accepted_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_refused_unsigned_or_oversized() {
    let (_repo, daemon) = daemon().await;
    let url = format!("http://{}/hooks/generic", daemon.http());
    let client = reqwest::Client::new();
    let unsigned = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    let wrong = client
        .post(&url)
        .header(
            "x-drover-signature-256",
            format!("sha256={}", "0".repeat(64)),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let big = vec![b'x'; DEFAULT_MAX_BODY_BYTES + 1];
    let oversized = client
        .post(&url)
        .header(
            "x-drover-signature-256",
            format!("sha256={}", "0".repeat(64)),
        )
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status().as_u16(), 413);
    daemon.hook().await;
    let unknown = client
        .post(format!("http://{}/hooks/github", daemon.http()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404, "no secret, no route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_cut_off() {
    let (_repo, daemon) = daemon().await;
    let addr = daemon.http();
    tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        assert!(
            closed_within(&mut slow, HEADER_TIMEOUT * 4),
            "the daemon kept a connection whose request head never ended"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_limit_are_closed_and_health_still_answers() {
    let (_repo, daemon) = daemon().await;
    let addr = daemon.http();
    let base = format!("http://{addr}");
    let held = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).unwrap());
        }
        let mut extra = TcpStream::connect(addr).unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(10)),
            "a connection over the limit was kept"
        );
        held
    })
    .await
    .unwrap();
    drop(held);
    crate::support::wait::eventually(
        "/healthz after the flood",
        Duration::from_secs(30),
        || async { reqwest::get(format!("{base}/healthz")).await.map(drop) },
    )
    .await;
}
