//! Health probes against a real container: HTTP, TCP and exec each tell healthy from unhealthy,
//! say why, and never outlast their timeout.

use std::time::Duration;

use drover::agent::probe::{Health, Prober};
use drover::nodeplan::Probe;

use crate::support::docker::{self, Container, ContainerSpec, BUSYBOX_IMAGE};
use crate::support::{net, require, test_name};

const TIMEOUT: Duration = Duration::from_secs(5);

fn unhealthy_because(health: &Health, part: &str) {
    match health {
        Health::Unhealthy(why) => assert!(why.contains(part), "reason {why:?} lacks {part:?}"),
        Health::Healthy => panic!("healthy, expected unhealthy because of {part:?}"),
    }
}

#[tokio::test]
async fn probes_tell_healthy_from_unhealthy_and_say_why() {
    let client = require!(docker::connect().await);
    let ip = net::unique_loopback(&[8080]);
    let addr = net::addr(ip, 8080);
    let script =
        format!("mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p {addr} -h /www");
    let spec = ContainerSpec::new(BUSYBOX_IMAGE, &["sh", "-c", &script]);
    let container = require!(Container::start(&client, &test_name!(), spec).await);
    let prober = Prober::new(client.clone()).unwrap();
    let http = |path: &str| Probe::Http(format!("http://{addr}{path}"));

    // Await the server through the probe itself.
    let name = container.name().to_string();
    container
        .eventually(
            "httpd to answer the http probe",
            Duration::from_secs(20),
            || {
                let (prober, probe, name) = (prober.clone(), http("/index.html"), name.clone());
                async move {
                    match prober.check(&probe, &name, TIMEOUT).await {
                        Health::Healthy => Ok(()),
                        Health::Unhealthy(why) => Err(why),
                    }
                }
            },
        )
        .await;

    let check = |probe: Probe| {
        let (prober, name) = (prober.clone(), name.clone());
        async move { prober.check(&probe, &name, TIMEOUT).await }
    };
    assert_eq!(check(http("/index.html")).await, Health::Healthy);
    unhealthy_because(&check(http("/missing")).await, "HTTP 404");
    assert_eq!(check(Probe::Tcp(addr.to_string())).await, Health::Healthy);
    let closed = net::addr(ip, net::free_port(ip));
    unhealthy_because(&check(Probe::Tcp(closed.to_string())).await, "refused");
    let exec = |cmd: &[&str]| Probe::Exec(cmd.iter().map(|s| s.to_string()).collect());
    assert_eq!(check(exec(&["true"])).await, Health::Healthy);
    unhealthy_because(
        &check(exec(&["sh", "-c", "echo broken >&2; exit 3"])).await,
        "exit status 3: broken",
    );
}

#[tokio::test]
async fn a_probe_that_hangs_is_cut_off_at_its_timeout() {
    let client = require!(docker::connect().await);
    let ip = net::unique_loopback(&[]);
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let prober = Prober::new(client).unwrap();
    let probe = Probe::Http(format!("http://{addr}/"));
    let health = prober
        .check(&probe, "unused", Duration::from_millis(300))
        .await;
    assert_eq!(health, Health::Unhealthy("timed out after 300ms".into()));
    hold.abort();
}
