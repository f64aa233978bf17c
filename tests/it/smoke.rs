//! One test per real component, proving the harness in `support` reaches it
//! and it behaves: if one of these fails, look at the setup before the code.

use std::net::SocketAddr;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::docker::{self, Container, ContainerSpec, BUSYBOX_IMAGE};
use crate::support::etcd::EtcdMember;
use crate::support::garage::S3Prefix;
use crate::support::git::{read_file_at, TestRepo};
use crate::support::{net, require, test_name, unique_token};

const SERVE_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn docker_container_serves_http_on_its_own_loopback_address() {
    let docker = require!(docker::connect().await);
    let port = 8080;
    let addr = net::addr(net::unique_loopback(&[port]), port);
    let body = format!("hello-{}", unique_token());
    let script = format!(
        "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {addr} -h /www"
    );
    let spec = ContainerSpec::new(BUSYBOX_IMAGE, &["sh", "-c", &script]);
    let container = require!(Container::start(&docker, &test_name!(), spec).await);

    let what = format!("busybox httpd to answer on {addr}");
    let response = container
        .eventually(&what, SERVE_TIMEOUT, || http_get(addr, "/index.html"))
        .await;

    assert!(
        response.starts_with("HTTP/1.") && response.contains(" 200 "),
        "unexpected response from {addr}: {response:?}"
    );
    let (_headers, served) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body separator in {response:?}"));
    assert_eq!(served, format!("{body}\n"));
}

#[tokio::test]
async fn etcd_member_stores_and_returns_a_key() {
    let docker = require!(docker::connect().await);
    let member = require!(EtcdMember::start(&docker, &test_name!()).await);
    let mut client = member.client().await;
    let value = format!("value-{}", unique_token());

    client
        .put("drover-test/smoke", value.as_str(), None)
        .await
        .expect("etcd put");
    let response = client
        .get("drover-test/smoke", None)
        .await
        .expect("etcd get");

    let kvs = response.kvs();
    assert_eq!(kvs.len(), 1, "expected one key, got {kvs:?}");
    assert_eq!(kvs[0].value(), value.as_bytes());
}

#[tokio::test]
async fn garage_puts_gets_and_lists_an_object() {
    let s3 = require!(S3Prefix::new(&test_name!()).await);
    let store = s3.store();
    let path = Path::from("snapshots/smoke.bin");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();

    store
        .put(&path, PutPayload::from(bytes.clone()))
        .await
        .expect("S3 put");
    let fetched = store
        .get(&path)
        .await
        .expect("S3 get")
        .bytes()
        .await
        .expect("S3 get body");
    let listed: Vec<Path> = store
        .list(Some(&Path::from("snapshots")))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .expect("S3 list");

    assert_eq!(fetched.as_ref(), bytes.as_slice());
    assert_eq!(listed, vec![path]);
}

#[test]
fn git_commits_read_back_from_the_tree_without_checkout() {
    let repo = TestRepo::init();
    repo.commit_files(&[("clusters/a.yaml", "name: a\n")], "first");
    let second = repo.commit_files(
        &[
            ("clusters/a.yaml", "name: a\nnodes: 3\n"),
            ("README", "hi\n"),
        ],
        "second",
    );

    let reopened = git2::Repository::open(repo.path()).expect("reopening the repository");
    let head = reopened
        .head()
        .and_then(|head| head.peel_to_commit())
        .expect("resolving HEAD");

    assert_eq!(head.id(), second);
    assert_eq!(head.parent_count(), 1);
    assert_eq!(
        read_file_at(&reopened, "HEAD", "clusters/a.yaml").as_deref(),
        Some(&b"name: a\nnodes: 3\n"[..])
    );
    assert_eq!(
        read_file_at(&reopened, "HEAD", "README").as_deref(),
        Some(&b"hi\n"[..])
    );
    assert_eq!(
        read_file_at(&reopened, "HEAD~1", "clusters/a.yaml").as_deref(),
        Some(&b"name: a\n"[..])
    );
    assert_eq!(read_file_at(&reopened, "HEAD~1", "README"), None);
}

/// A minimal HTTP/1.0 GET: the whole response as text.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
