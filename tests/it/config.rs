//! The daemon configuration: the example in examples-repo loads, and every mistake an operator
//! can make in a store definition is a diagnostic pointing at it.

use std::path::Path;

use drover::config::{self, ConfigError, Credentials, Store};
use expect_test::{expect, Expect};

/// Checks what `show` prints of the parsed configuration, or its diagnostics.
fn check_shown(text: &str, show: fn(&config::DaemonConfig) -> String, expect: Expect) {
    let out = match config::parse("daemon.yaml", text.as_bytes().to_vec()) {
        Ok(c) => show(&c),
        Err(e @ ConfigError::Invalid { .. }) => e.render(),
        Err(e) => panic!("unexpected error: {e}"),
    };
    expect.assert_eq(&out);
}

fn check(text: &str, expect: Expect) {
    check_shown(text, |c| format!("{:#?}\n", c.stores), expect);
}

const HEAD: &str = "apiVersion: drover.dev/v1alpha1\nkind: DaemonConfig\n";

#[test]
fn the_example_names_a_file_store_and_an_s3_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = config::load(&root.join("examples-repo/daemon.example.yaml")).expect("example loads");
    let names: Vec<&str> = c.stores.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["backups", "local"]);
    let local = c.stores.values().find(|s| matches!(s, Store::File { .. }));
    assert!(local.is_some(), "a file:// store");
    let Some(Store::S3(s3)) = c.stores.values().find(|s| matches!(s, Store::S3(_))) else {
        panic!("an s3 store");
    };
    assert_eq!(
        (s3.bucket.as_str(), s3.prefix.as_str()),
        ("etcd-snapshots", "drover")
    );
    assert!(matches!(s3.credentials, Credentials::Files { .. }));
}

#[test]
fn stores_parse_into_typed_definitions() {
    check(
        &format!("{HEAD}stores:\n  env-creds: {{url: 's3://b', credentials: {{fromEnvironment: true}}}}\n"),
        expect![[r#"
            {
                StoreName(
                    "env-creds",
                ): S3(
                    S3Store {
                        bucket: "b",
                        prefix: "",
                        endpoint: None,
                        region: "us-east-1",
                        path_style: false,
                        allow_http: false,
                        credentials: Environment,
                    },
                ),
            }
        "#]],
    );
}

#[test]
fn store_mistakes_are_diagnostics() {
    check(
        &format!(
            "{HEAD}stores:
  Bad_Name: {{url: 'file:///x'}}
  relative: {{url: 'file://host/x'}}
  mixed: {{url: 'file:///x', region: r}}
  plain-http: {{url: 's3://b', endpoint: 'http://127.0.0.1:3900', credentials: {{fromEnvironment: true}}}}
  no-creds: {{url: 's3://b'}}
  half-creds: {{url: 's3://b', credentials: {{accessKeyIdFile: /x}}}}
  ftp: {{url: 'ftp://x'}}
"
        ),
        expect![[r#"
            daemon.yaml:4:3: error: invalid store name `Bad_Name`: only lower-case letters, digits and '-' are allowed
            daemon.yaml:5:19: error: invalid store: a file store is file:///absolute/path
            daemon.yaml:6:3: error: invalid store: endpoint, region, credentials, pathStyle and allowHttp are for s3:// stores
            daemon.yaml:7:41: error: invalid store: a plain http endpoint needs allowHttp: true
            daemon.yaml:8:13: error: invalid store: give credentials: both accessKeyIdFile and secretAccessKeyFile, or fromEnvironment: true
            daemon.yaml:9:31: error: invalid store: give credentials: both accessKeyIdFile and secretAccessKeyFile, or fromEnvironment: true
            daemon.yaml:10:14: error: invalid store: the scheme must be file or s3
        "#]],
    );
    check(
        "apiVersion: drover.dev/v1alpha1\nkind: Cluster\n",
        expect![[r#"
        daemon.yaml:2:7: error: unsupported kind `Cluster`; a daemon configuration holds `DaemonConfig`
    "#]],
    );
    check(
        &format!("{HEAD}---\n{HEAD}"),
        expect![[r#"
        daemon.yaml:4:1: error: a daemon configuration is one YAML document
    "#]],
    );
}

/// A secret pasted inline is refused by name, and its value appears nowhere in the output.
#[test]
fn an_inline_secret_is_refused_without_echoing_it() {
    let text = format!("{HEAD}stores:\n  s: {{url: 's3://b', secretAccessKey: hunter2-secret}}\n");
    let err = config::parse("daemon.yaml", text.into_bytes()).unwrap_err();
    let out = err.render();
    assert!(out.contains("unknown field `secretAccessKey`"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
}

fn check_verdicts(text: &str, expect: Expect) {
    check_shown(text, |c| format!("{:#?}\n", c.verdicts), expect);
}

#[test]
fn a_forge_for_verdicts_is_checked_before_use() {
    check_verdicts(
        &format!(
            "{HEAD}verdicts:
  forge: {{kind: gitlab, apiUrl: 'https://gitlab.example/api/v4', repository: ops/infra/clusters, tokenFile: /etc/drover/forge-token}}
  dashboardUrl: 'https://drover.example/'
"
        ),
        expect![[r#"
            Verdicts {
                forge: Some(
                    Forge {
                        kind: Gitlab,
                        api: Url {
                            scheme: "https",
                            cannot_be_a_base: false,
                            username: "",
                            password: None,
                            host: Some(
                                Domain(
                                    "gitlab.example",
                                ),
                            ),
                            port: None,
                            path: "/api/v4",
                            query: None,
                            fragment: None,
                        },
                        repository: "ops/infra/clusters",
                        token_file: "/etc/drover/forge-token",
                    },
                ),
                dashboard_url: Some(
                    Url {
                        scheme: "https",
                        cannot_be_a_base: false,
                        username: "",
                        password: None,
                        host: Some(
                            Domain(
                                "drover.example",
                            ),
                        ),
                        port: None,
                        path: "/",
                        query: None,
                        fragment: None,
                    },
                ),
                notes: false,
            }
        "#]],
    );
    let cases = [
        "{kind: github, apiUrl: 'http://api.github.com', repository: o/r, tokenFile: /t}",
        "{kind: github, apiUrl: 'https://api.github.com', repository: o/r/x, tokenFile: /t}",
        "{kind: gitea, apiUrl: 'https://gitea.example/api/v1', repository: o, tokenFile: /t}",
        "{kind: gitlab, apiUrl: 'https://gitlab.example/api/v4', repository: 'g//r', tokenFile: /t}",
        "{kind: sourcehut, apiUrl: 'https://x', repository: o/r, tokenFile: /t}",
        "{kind: github, apiUrl: 'https://api.github.com', repository: o/r, token: inline}",
    ];
    for forge in cases {
        let text = format!("{HEAD}verdicts:\n  forge: {forge}\n");
        let out = config::parse("daemon.yaml", text.into_bytes());
        assert!(
            matches!(out, Err(ConfigError::Invalid { .. })),
            "{forge}: {out:?}"
        );
    }
    // Plain http is for a forge on this machine (a test server, a local proxy).
    let text = format!(
        "{HEAD}verdicts:\n  forge: {{kind: gitea, apiUrl: 'http://127.0.0.1:3000/api/v1', repository: o/r, tokenFile: /t}}\n"
    );
    assert!(config::parse("daemon.yaml", text.into_bytes()).is_ok());
}

#[test]
fn the_clusters_that_need_an_approved_plan_are_named() {
    let show = |c: &config::DaemonConfig| format!("{:?}\n", c.require_approved_plan);
    let cases = [
        (
            "",
            expect![[r#"
            None
        "#]],
        ),
        (
            "requireApprovedPlan: [prod, stage]\n",
            expect![[r#"
            Clusters({"prod", "stage"})
        "#]],
        ),
        (
            "requireApprovedPlan: [prod, '*']\n",
            expect![[r#"
            Every
        "#]],
        ),
        (
            "requireApprovedPlan: [prod, 'Not A Name']\n",
            expect![[r#"
            daemon.yaml:3:29: error: invalid daemon setting: a cluster name, or "*" for every cluster
        "#]],
        ),
    ];
    for (text, expect) in cases {
        check_shown(&format!("{HEAD}{text}"), show, expect);
    }
}

#[test]
fn a_forge_links_each_commit_to_its_page() {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let cases = [
        (
            "github",
            "https://api.github.com",
            "ops/clusters",
            "https://github.com/ops/clusters/commit/",
        ),
        (
            "github",
            "https://ghe.example/api/v3/",
            "ops/clusters",
            "https://ghe.example/ops/clusters/commit/",
        ),
        (
            "gitlab",
            "https://gitlab.com/api/v4",
            "ops/infra/clusters",
            "https://gitlab.com/ops/infra/clusters/-/commit/",
        ),
        (
            "gitlab",
            "https://git.example/gitlab/api/v4",
            "ops/clusters",
            "https://git.example/gitlab/ops/clusters/-/commit/",
        ),
        (
            "gitea",
            "https://codeberg.org/api/v1",
            "ops/clusters",
            "https://codeberg.org/ops/clusters/commit/",
        ),
    ];
    for (kind, api, repository, want) in cases {
        let text = format!(
            "{HEAD}verdicts:\n  forge: {{kind: {kind}, apiUrl: '{api}', repository: {repository}, tokenFile: /t}}\n"
        );
        let forge = config::parse("daemon.yaml", text.into_bytes())
            .unwrap()
            .verdicts
            .forge
            .unwrap();
        assert_eq!(forge.commit_url(commit), format!("{want}{commit}"), "{api}");
    }
}

#[test]
fn state_in_etcd_is_checked_before_use() {
    let show = |c: &config::DaemonConfig| format!("{:?}\n", c.state_etcd);
    let cases = [
        (
            "state: {etcd: {endpoints: ['http://127.0.0.1:2379'], encryptionKeyFile: /k}}\n",
            expect![[r#"
                Some(EtcdStateConfig { endpoints: ["http://127.0.0.1:2379"], tls: None, prefix: "/drover/", encryption_key_file: "/k" })
            "#]],
        ),
        (
            "state: {etcd: {endpoints: ['https://etcd.example:2379'], caFile: /ca, certFile: /c, keyFile: /k, prefix: /d1/, encryptionKeyFile: /e}}\n",
            expect![[r#"
                Some(EtcdStateConfig { endpoints: ["https://etcd.example:2379"], tls: Some(EtcdTls { ca_file: "/ca", cert_file: "/c", key_file: "/k" }), prefix: "/d1/", encryption_key_file: "/e" })
            "#]],
        ),
        (
            "state: {etcd: {endpoints: ['http://etcd.example:2379'], encryptionKeyFile: /k}}\n",
            expect![[r#"
                daemon.yaml:3:28: error: invalid daemon setting: https://host:port (plain http only to a loopback address)
            "#]],
        ),
        (
            "state: {etcd: {endpoints: ['https://etcd.example:2379'], caFile: /ca, encryptionKeyFile: /k}}\n",
            expect![[r#"
                daemon.yaml:3:15: error: invalid daemon setting: https endpoints need caFile, certFile and keyFile, all three
            "#]],
        ),
        (
            "state: {etcd: {endpoints: [], prefix: drover, encryptionKeyFile: /k}}\n",
            expect![[r#"
                daemon.yaml:3:27: error: invalid daemon setting: at least one client URL
                daemon.yaml:3:39: error: invalid daemon setting: a key prefix that starts and ends with /
            "#]],
        ),
    ];
    for (text, expect) in cases {
        check_shown(&format!("{HEAD}{text}"), show, expect);
    }
}
