//! The dashboard over real sockets (TLS, the daemon's CA pinned): nothing without a session,
//! sign-in with the operator token only, a cookie the browser keeps to itself, actions
//! refused without the session's CSRF token or from another origin, the pages a cluster's
//! state shows up on, and the events that tell a page to refresh.

use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;

use crate::serve::CONVERGE;
use crate::support::daemon::{tail, Layout, TestDaemon};
use crate::support::docker::BUSYBOX_IMAGE;
use crate::support::git::TestRepo;

/// A client of the daemon's TLS listener that pins its CA and follows no redirect.
fn client(daemon: &TestDaemon) -> reqwest::Client {
    let tls = drover::pki::agent_config(&daemon.pin(), None).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn base(daemon: &TestDaemon) -> String {
    format!("https://{}:{}", daemon.ip, daemon.agents_port)
}

fn operator_token(daemon: &TestDaemon) -> String {
    std::fs::read_to_string(daemon.state_dir().join("operator-token"))
        .unwrap()
        .trim()
        .to_string()
}

/// Sends the head of a sign-in form of `length` bytes, and none of its body, over TLS to the
/// daemon; returns the head of the answer.
async fn oversized_form(daemon: &TestDaemon, length: usize) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tls = drover::pki::agent_config(&daemon.pin(), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let tcp = tokio::net::TcpStream::connect((daemon.ip, daemon.agents_port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(daemon.ip).into());
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "POST /ui/sign-in HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n",
        daemon.ip, daemon.agents_port
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer without the body");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// An action's form, cookie and origin, and the answer expected.
type ActionCase<'a> = (
    Vec<(&'static str, String)>,
    Option<String>,
    Option<&'a str>,
    StatusCode,
);

#[tokio::test]
async fn the_dashboard_needs_a_session_and_refuses_forged_actions() {
    let layout = Layout::new("dash");
    // A second cluster whose snapshots name a store the daemon lacks: overdue at once.
    let late = Layout::new("dashlate");
    let late_yaml = late
        .yaml_with_snapshots("v1", "1h", 3)
        .replace("store: backups", "store: offsite");
    let repo = TestRepo::init();
    let first = repo.commit_files(
        &[
            (&layout.path(), &layout.yaml("v1", BUSYBOX_IMAGE)),
            (&late.path(), &late_yaml),
        ],
        "dev",
    );
    let daemon = TestDaemon::start(&repo.url()).await;
    let http = client(&daemon);
    let base = base(&daemon);
    let cluster = layout.cluster.clone();

    // Nothing without a session: every page sends to the sign-in page, events are refused.
    for path in ["/ui/", &format!("/ui/clusters/{cluster}"), "/ui/daemon"] {
        let answer = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers()[LOCATION], "/ui/sign-in", "{path}");
    }
    let events = http.get(format!("{base}/ui/events")).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::UNAUTHORIZED);
    let page = http.get(format!("{base}/ui/sign-in")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("Operator token"));

    // A wrong token is refused and opens nothing.
    let wrong = http
        .post(format!("{base}/ui/sign-in"))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    // An oversized form is refused on its announced length, before a byte of it is sent,
    // and the connection is closed after the answer.
    let head = oversized_form(&daemon, 64 * 1024).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );

    // The operator token opens a session, in a cookie scripts cannot read, sent only over
    // TLS and only by this site's own pages.
    let token = operator_token(&daemon);
    let signed = http
        .post(format!("{base}/ui/sign-in"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    let set = signed.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{attribute} missing from {set}");
    }
    assert!(
        !set.contains(&token),
        "the cookie carries the operator token itself"
    );
    let session = set.split(';').next().unwrap().to_string();

    // The clusters page shows the cluster, waiting for its agents, at the revision its
    // reconciler took up (a first pass sets it: under load it may come after the sign-in);
    // searching and filtering narrow it.
    let revision = first.to_string();
    daemon
        .await_status("the commit taken up", &cluster, CONVERGE, |s| {
            match s.desired_revision.as_deref() == Some(revision.as_str()) {
                true => Ok(()),
                false => Err(format!("desired {:?}", s.desired_revision)),
            }
        })
        .await;
    let get = |path: String| {
        let http = http.clone();
        let session = session.clone();
        async move {
            let answer = http.get(path).header(COOKIE, session).send().await.unwrap();
            (answer.status(), answer.text().await.unwrap())
        }
    };
    let (code, page) = get(format!("{base}/ui/")).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        page.contains(&format!("data-cluster=\"{cluster}\"")),
        "{page}"
    );
    assert!(
        page.contains(&first.to_string()[..12]),
        "the desired revision is shown"
    );
    assert!(page.contains("0/4"), "no node ready yet: {page}");
    let (_, none) = get(format!("{base}/ui/?q=nothing-like-it")).await;
    assert!(!none.contains("data-cluster="), "{none}");
    let (_, ready) = get(format!("{base}/ui/?condition=ready")).await;
    assert!(
        !ready.contains("data-cluster="),
        "nothing is Ready: {ready}"
    );
    let (_, overdue) = get(format!("{base}/ui/?condition=overdue")).await;
    assert!(
        overdue.contains(&format!("data-cluster=\"{}\"", late.cluster))
            && !overdue.contains(&format!("data-cluster=\"{cluster}\"")),
        "{overdue}"
    );
    let (_, busy) = get(format!(
        "{base}/ui/?condition=reconciling&q={}",
        &cluster[..6]
    ))
    .await;
    assert!(
        busy.contains(&format!("data-cluster=\"{cluster}\"")),
        "{busy}"
    );

    // The cluster page: its nodes, and forms with the session's CSRF token.
    let (code, page) = get(format!("{base}/ui/clusters/{cluster}")).await;
    assert_eq!(code, StatusCode::OK);
    for (node, _, _) in &layout.nodes {
        assert!(
            page.contains(&format!("data-node=\"{node}\"")),
            "{node}: {page}"
        );
    }
    assert!(page.contains("waiting for"), "the reason is shown: {page}");
    let csrf = csrf_of(&page);
    let (code, _) = get(format!("{base}/ui/clusters/{cluster}/nodes/n1")).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = get(format!("{base}/ui/clusters/nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, page) = get(format!("{base}/ui/daemon")).await;
    assert_eq!(code, StatusCode::OK);
    assert!(page.contains(&repo.url()), "{page}");

    // Actions: refused without the CSRF token, with another one, without a session, or from
    // another site; done with all of it.
    let reconcile = format!("{base}/ui/clusters/{cluster}/reconcile");
    let post = |form: Vec<(&'static str, String)>, cookie: Option<String>, origin: Option<&str>| {
        let mut request = http.post(&reconcile).form(&form);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        async move { request.send().await.unwrap().status() }
    };
    let here = base.clone();
    let cases: Vec<ActionCase> = vec![
        (
            vec![],
            Some(session.clone()),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            vec![("csrf", "f".repeat(64))],
            Some(session.clone()),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            vec![("csrf", csrf.clone())],
            None,
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            vec![("csrf", csrf.clone())],
            Some(session.clone()),
            Some("https://evil.example"),
            StatusCode::FORBIDDEN,
        ),
        (
            vec![("csrf", csrf.clone())],
            Some(session.clone()),
            Some(here.as_str()),
            StatusCode::SEE_OTHER,
        ),
        (
            vec![("csrf", csrf.clone())],
            Some(session.clone()),
            None,
            StatusCode::SEE_OTHER,
        ),
    ];
    for (form, cookie, origin, expected) in cases {
        let described = format!("{form:?} cookie={} origin={origin:?}", cookie.is_some());
        assert_eq!(post(form, cookie, origin).await, expected, "{described}");
    }

    // Events: a page signed in hears `changed` when a cluster's status moves.
    let mut events = http
        .get(format!("{base}/ui/events"))
        .header(COOKIE, session.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let broken = repo.commit_files(
        &[(
            &layout.path(),
            "apiVersion: drover.dev/v1alpha1\nkind: Cluster\nmetadata: {name: [\n",
        )],
        "broken",
    );
    daemon.hook().await;
    let heard = tokio::time::timeout(CONVERGE, async {
        let mut seen = String::new();
        while let Some(chunk) = events.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: changed") {
                return seen;
            }
        }
        seen
    })
    .await
    .expect("an event within the limit");
    assert!(heard.contains("event: changed"), "{heard}");

    // The broken commit's diagnostic, as `drover validate` prints it, on the cluster page.
    crate::support::wait::poll_until(CONVERGE, || async {
        let (_, page) = get(format!("{base}/ui/clusters/{cluster}")).await;
        match page.contains("Held back") && page.contains("clusters/") {
            true => Ok(()),
            false => Err(page),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{:?}\n{}", e.last_error, tail(&daemon.log(), 20)));
    let _ = broken;

    // Signing out ends the session.
    let out = http
        .post(format!("{base}/ui/sign-out"))
        .header(COOKIE, session.clone())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let (code, _) = get(format!("{base}/ui/")).await;
    assert_eq!(code, StatusCode::SEE_OTHER);
    assert!(
        !daemon.log().contains(&token),
        "the operator token is in the daemon's log"
    );
}
