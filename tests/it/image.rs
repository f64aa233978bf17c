//! The container image built from the repository's Dockerfile runs drover. There is no registry
//! here, so the base image is made from the very libraries `ldd` reports for the binary under
//! test, and the image gets the binary cargo built for this test run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{docker, require, unique_token};

/// Removes the images a test built, even when it panics.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

fn docker_cli(args: &[&str], dir: &Path) -> Output {
    Command::new("docker")
        .args(args)
        .current_dir(dir)
        // The engine from Debian has no BuildKit; the classic builder is what it offers.
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("run the docker CLI")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A root filesystem holding the shared libraries `binary` links, as a tarball for `docker import`.
fn glibc_rootfs(binary: &Path, dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
    let listing = String::from_utf8_lossy(&ldd.stdout);
    let libs: Vec<&str> = listing
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .collect();
    assert!(!libs.is_empty(), "ldd listed no libraries: {listing}");
    for lib in libs {
        let target = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(lib, &target).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
    let tarball = dir.join("rootfs.tar");
    let tar = Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mode=go+rX",
            "-C",
        ])
        .arg(&rootfs)
        .args(["-cf"])
        .arg(&tarball)
        .arg(".")
        .output()
        .expect("tar");
    ok(&tar, "tar");
    tarball
}

#[tokio::test]
async fn the_dockerfile_packages_a_drover_that_validates_the_examples() {
    let _docker = require!(docker::connect().await);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_drover"));
    let work = tempfile::tempdir().unwrap();
    let token = unique_token();
    let base = format!("drover-test/glibc:{token}");
    let image = format!("drover-test/drover:{token}");
    let _cleanup = Images(vec![image.clone(), base.clone()]);

    // A build context laid out like the repository, wherever cargo put the binary.
    let context = work.path().join("context");
    std::fs::create_dir_all(context.join("target/debug")).unwrap();
    for file in ["Dockerfile", ".dockerignore"] {
        std::fs::copy(root.join(file), context.join(file)).unwrap();
    }
    std::fs::copy(&binary, context.join("target/debug/drover")).unwrap();
    let copy = Command::new("cp")
        .arg("-r")
        .arg(root.join("examples-repo"))
        .arg(&context)
        .output()
        .expect("cp");
    ok(&copy, "copy examples-repo");

    let tarball = glibc_rootfs(&binary, work.path());
    let import = docker_cli(&["import", tarball.to_str().unwrap(), &base], &root);
    ok(&import, "docker import");
    let build = docker_cli(
        &[
            "build",
            "-q",
            "-t",
            &image,
            "--build-arg",
            &format!("BASE={base}"),
            "--build-arg",
            "BINARY=target/debug/drover",
            ".",
        ],
        &context,
    );
    ok(&build, "docker build");

    // The default command validates the bundled examples, as an unprivileged user, offline.
    let run = docker_cli(&["run", "--rm", "--network", "none", &image], &root);
    let out = ok(&run, "docker run (default command)");
    assert!(out.contains("ok: cluster dev ("), "{out}");
    assert!(
        out.contains("2 valid clusters: 0 errors, 0 warnings"),
        "{out}"
    );
    let user = docker_cli(&["inspect", "-f", "{{.Config.User}}", &image], &root);
    assert_eq!(ok(&user, "docker inspect").trim(), "65532:65532");

    let schema = docker_cli(
        &["run", "--rm", "--network", "none", &image, "schema"],
        &root,
    );
    let out = ok(&schema, "docker run schema");
    let json: serde_json::Value = serde_json::from_str(&out).expect("schema is JSON");
    assert_eq!(json["title"], "drover Cluster");

    serves_from_the_image(&image, &root, &token).await;
}

/// Removes a container a test started, even when it panics.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// `drover serve` runs from the image on its bundled examples, answers health and readiness,
/// and stops cleanly (exit 0) on `docker stop`.
async fn serves_from_the_image(image: &str, root: &Path, token: &str) {
    let ip = crate::support::net::unique_loopback(&[]);
    let (agents, http) = (
        crate::support::net::free_port(ip),
        crate::support::net::free_port(ip),
    );
    let name = format!("drover-test-serve-{}", token.to_lowercase());
    let _guard = ContainerGuard(name.clone());
    let listen_agents = format!("{ip}:{agents}");
    let listen_http = format!("{ip}:{http}");
    let pid_label = format!("drover-test.pid={}", std::process::id());
    let run = docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "drover-test=1",
            "--label",
            &pid_label,
            "--network",
            "host",
            "--tmpfs",
            "/var/lib/drover:uid=65532,gid=65532,mode=0700",
            image,
            "serve",
            "--source",
            "/usr/share/drover/examples-repo",
            "--listen-agents",
            &listen_agents,
            "--listen-http",
            &listen_http,
            "--tls-name",
            &ip.to_string(),
        ],
        root,
    );
    ok(&run, "docker run serve");
    let readyz = format!("http://{listen_http}/readyz");
    crate::support::wait::eventually(
        "the daemon in the image to be ready",
        Duration::from_secs(60),
        || async {
            let r = reqwest::get(&readyz).await.map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(r.status().to_string())
            }
        },
    )
    .await;
    let stop = docker_cli(&["stop", "-t", "30", &name], root);
    ok(&stop, "docker stop");
    let code = docker_cli(&["inspect", "-f", "{{.State.ExitCode}}", &name], root);
    let logs = docker_cli(&["logs", &name], root);
    assert_eq!(
        ok(&code, "docker inspect").trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
}
