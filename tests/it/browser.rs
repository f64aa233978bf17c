//! The dashboard in a real browser: Debian's headless chromium, driven over WebDriver, against
//! a daemon, its agents and a Git repository. An operator signs in, watches the cluster
//! converge and a rollout's steps change state without reloading, sees an invalid commit's
//! diagnostic and a snapshot appear; a wrong token and a forged action are refused; every page
//! passes axe-core with no serious violation. Screenshots land in `target/test-artifacts/`.

use fantoccini::Locator;
use serde_json::Value;

use crate::support::browser::Browser;
use crate::support::daemon::{tail, AgentProcess, Layout, TestDaemon};
use crate::support::docker::{self, BUSYBOX_IMAGE, ETCD_IMAGE};
use crate::support::fleet::ClusterCleanup;
use crate::support::git::TestRepo;
use crate::support::require;

/// Records, in the page, every state each rollout step is drawn in, across the live updates
/// that replace the page's content: `window.droverSeen["n1: ..."]` lists them in order.
const RECORD_STEPS: &str = "
    window.droverSeen = {};
    const scan = () => document.querySelectorAll('li.step').forEach(li => {
        const key = li.textContent.replace(/^\\s*\\S+\\s+/, '').trim();
        const seen = window.droverSeen[key] || (window.droverSeen[key] = []);
        if (seen[seen.length - 1] !== li.dataset.state) seen.push(li.dataset.state);
    });
    new MutationObserver(scan).observe(document.getElementById('main'), { childList: true, subtree: true });
    scan();
    window.droverPageId = Math.random();
    return window.droverPageId;";

async fn assert_accessible(browser: &Browser, page: &str) {
    let violations = browser.accessibility_violations().await;
    assert!(
        violations.is_empty(),
        "{page}: serious accessibility violations: {violations:#?}"
    );
}

async fn sign_in(browser: &Browser, token: &str) {
    let c = &browser.client;
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    browser.click("form[action='/ui/sign-in'] button").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_the_cluster_in_a_browser() {
    let engine = require!(docker::connect().await);
    require!(docker::require_image(&engine, ETCD_IMAGE).await);
    require!(docker::require_image(&engine, BUSYBOX_IMAGE).await);
    let browser = require!(Browser::start("browser").await);
    let c = &browser.client;
    let layout = Layout::new("browse");
    let cluster = layout.cluster.clone();
    let _cleanup = ClusterCleanup(cluster.clone());
    let repo = TestRepo::init();
    repo.commit_files(
        &[(&layout.path(), &layout.yaml_with_snapshots("v1", "24h", 3))],
        "dev",
    );
    let daemon = TestDaemon::start(&repo.url()).await;
    let base = format!("https://{}:{}", daemon.ip, daemon.agents_port);
    let token = std::fs::read_to_string(daemon.state_dir().join("operator-token")).unwrap();

    // Signed out, the dashboard is the sign-in page; a wrong token is refused.
    c.goto(&format!("{base}/ui/clusters/{cluster}"))
        .await
        .unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/sign-in");
    assert_accessible(&browser, "sign-in").await;
    sign_in(&browser, "not-the-operator-token").await;
    browser
        .await_text("the refusal", "p.error", |t| !t.is_empty())
        .await;
    browser.screenshot("sign-in-refused").await;
    assert_eq!(
        c.get_all_cookies().await.unwrap().len(),
        0,
        "a refused sign-in set a cookie"
    );

    // The operator token opens the clusters page; the cookie is out of scripts' reach.
    sign_in(&browser, token.trim()).await;
    browser
        .await_text("the clusters page", "h1", |t| t == "Clusters")
        .await;
    let visible: Value = c.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(
        visible,
        Value::String(String::new()),
        "the session cookie is readable by scripts"
    );

    // The cluster converges while the page is open: it changes without a reload.
    let page_id = c.execute(RECORD_STEPS, vec![]).await.unwrap();
    let join = daemon.token_file(&cluster).await;
    let _agents = AgentProcess::start_all(&daemon, &layout, &join);
    let row = format!("tr[data-cluster='{cluster}']");
    browser
        .await_text("the cluster ready", &format!("{row} td.condition"), |t| {
            t.starts_with("Ready")
        })
        .await;
    browser
        .await_text("every node ready", &format!("{row} td.ready"), |t| {
            t == "4/4"
        })
        .await;
    let same: Value = c
        .execute("return window.droverPageId", vec![])
        .await
        .unwrap();
    assert_eq!(same, page_id, "the page was reloaded");
    browser.screenshot("clusters").await;
    assert_accessible(&browser, "clusters").await;

    // A rollout, watched on the cluster page: its steps go from pending to done as the
    // agents report, one batch after another.
    c.goto(&format!("{base}/ui/clusters/{cluster}"))
        .await
        .unwrap();
    browser
        .await_text("the cluster page", "h1", |t| t.contains(&cluster))
        .await;
    c.execute(RECORD_STEPS, vec![]).await.unwrap();
    // Each api takes two seconds to serve: every batch lasts long enough to be seen.
    let slow = layout
        .yaml_with_snapshots("v2", "24h", 3)
        .replace("&& exec httpd", "&& sleep 2 && exec httpd");
    let second = repo.commit_files(&[(&layout.path(), &slow)], "v2");
    daemon.hook().await;
    browser
        .await_text("the rollout drawn", "ol.phases", |t| t.contains("recreate"))
        .await;
    browser.screenshot("rollout").await;
    assert_accessible(&browser, "cluster, rolling out").await;
    browser
        .await_text("the new revision applied", "dl.facts", |t| {
            t.contains(&second.to_string()[..12])
                && t.matches(&second.to_string()[..12]).count() == 2
        })
        .await;
    let seen: Value = c.execute("return window.droverSeen", vec![]).await.unwrap();
    let seen: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_value(seen).unwrap();
    let changed: Vec<&String> = seen
        .iter()
        .filter(|(_, states)| states.len() > 1)
        .map(|(step, _)| step)
        .collect();
    assert!(
        !changed.is_empty(),
        "no step changed state on the page: {seen:#?}"
    );
    let n3 = seen
        .iter()
        .find(|(step, _)| step.starts_with("n3: recreate api"))
        .unwrap_or_else(|| panic!("n3's step was never drawn: {seen:#?}"));
    assert_eq!(
        n3.1.first().map(String::as_str),
        Some("pending"),
        "{seen:#?}"
    );
    assert!(
        seen.values()
            .any(|states| states.iter().any(|s| s == "done")),
        "no step was ever drawn done: {seen:#?}"
    );

    // An invalid commit: its diagnostic, as `drover validate` prints it, appears.
    repo.commit_files(
        &[(
            &layout.path(),
            &layout
                .yaml_with_snapshots("v3", "24h", 3)
                .replace("maxUnavailable:", "maxUnavailabel:"),
        )],
        "typo",
    );
    daemon.hook().await;
    let diagnostic = browser
        .await_text("the diagnostic", "pre.diagnostic", |t| t.contains('^'))
        .await;
    assert!(diagnostic.contains(&layout.path()), "{diagnostic}");
    browser.screenshot("held-back").await;

    // Snapshot now: the snapshot appears in the table, and in the chart.
    browser.click("form[action$='/snapshot'] button").await;
    browser
        .await_text("the snapshot", "table.snapshots tbody", |t| !t.is_empty())
        .await;
    browser.screenshot("cluster").await;
    assert_accessible(&browser, "cluster").await;

    // The node and daemon pages.
    c.goto(&format!("{base}/ui/clusters/{cluster}/nodes/n1"))
        .await
        .unwrap();
    browser
        .await_text("the node page", "h1", |t| t.contains("n1"))
        .await;
    browser.screenshot("node").await;
    assert_accessible(&browser, "node").await;
    c.goto(&format!("{base}/ui/daemon")).await.unwrap();
    // Every commit above was announced by a webhook: the deliveries are listed.
    let deliveries = browser
        .await_text("the webhook deliveries", "table.deliveries tbody", |t| {
            t.contains("generic")
        })
        .await;
    assert!(deliveries.contains("accepted"), "{deliveries}");
    browser.screenshot("daemon").await;
    assert_accessible(&browser, "daemon").await;

    // A forged action (a form without the session's CSRF token) is refused.
    c.goto(&format!("{base}/ui/clusters/{cluster}"))
        .await
        .unwrap();
    let forge = "const f = document.createElement('form');
        f.method = 'post'; f.action = location.pathname + '/reconcile';
        const i = document.createElement('input'); i.name = 'csrf'; i.value = 'forged';
        f.appendChild(i); document.body.appendChild(f); f.submit();";
    c.execute(forge, vec![]).await.unwrap();
    browser
        .await_text("the refusal", "h1", |t| t == "Refused")
        .await;
    browser.screenshot("forged-action-refused").await;

    // Signing out ends the session.
    c.goto(&format!("{base}/ui/")).await.unwrap();
    browser.click("form[action='/ui/sign-out'] button").await;
    browser
        .await_text("signed out", "h1", |t| t == "Sign in")
        .await;
    c.goto(&format!("{base}/ui/daemon")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/ui/sign-in");
    let log = daemon.log();
    assert!(
        !log.contains(token.trim()),
        "the operator token is in the log:\n{}",
        tail(&log, 20)
    );
    c.clone().close().await.unwrap();
}
