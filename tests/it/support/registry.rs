//! A container registry (Debian's docker-registry) on its own loopback address, for image
//! pulls: the engine treats registries on 127.0.0.0/8 as plain HTTP, so nothing leaves the
//! machine. Images pushed to it are untagged locally, so only a pull brings them back; every
//! image of the registry is removed from the engine on drop, after the registry stops.
//! `start_with_login` asks for basic auth (htpasswd, bcrypt); pushes then log in with a Docker
//! client configuration of the registry's own, which `docker login` writes as on a node.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::net::{free_port, unique_loopback};
use super::process::{wait_listening, Process};
use super::Unavailable;

const REGISTRY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    /// `ip:port`, the registry part of its image references.
    pub addr: String,
    /// With basic auth: the Docker client configuration directory `docker login` wrote.
    client_config: Option<PathBuf>,
    // Stopped before `_dir` goes (fields drop in order).
    process: Option<Process>,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Result<Self, Unavailable> {
        Self::start_inner(None)
    }

    /// A registry that takes only `user` with `password`.
    pub fn start_with_login(user: &str, password: &str) -> Result<Self, Unavailable> {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(login: Option<(&str, &str)>) -> Result<Self, Unavailable> {
        if !Path::new(REGISTRY).exists() {
            return Err(Unavailable::new(
                "docker-registry",
                format!("{REGISTRY} is missing (scripts/test installs docker-registry)"),
            ));
        }
        let ip: Ipv4Addr = unique_loopback(&[]);
        let port = free_port(ip);
        let dir = tempfile::tempdir().expect("a registry directory");
        let config = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: '{ip}:{port}'}}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = login {
            let htpasswd = dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 4).expect("a bcrypt hash");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("the htpasswd file");
            text.push_str(&format!(
                "auth:\n  htpasswd: {{realm: drover-test, path: {}}}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, text).expect("the registry configuration");
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("a log file");
        let mut process = Process::spawn(
            "docker-registry",
            Command::new(REGISTRY)
                .arg("serve")
                .arg(&config)
                .stdout(log.try_clone().expect("a log file"))
                .stderr(log),
        )?;
        wait_listening(&mut process, ip, port, &log_path)?;
        let addr = format!("{ip}:{port}");
        let client_config = login.map(|(user, password)| {
            let client = dir.path().join("client");
            let mut child = Command::new("docker")
                .arg("--config")
                .arg(&client)
                .args(["login", "--username", user, "--password-stdin", &addr])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the docker CLI");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(password.as_bytes()).expect("the password");
            drop(stdin);
            let out = child.wait_with_output().expect("docker login");
            assert!(
                out.status.success(),
                "docker login: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            client
        });
        Ok(Registry {
            addr,
            client_config,
            process: Some(process),
            _dir: dir,
        })
    }

    /// The Docker client configuration `docker login` wrote, for a registry with a login.
    pub fn client_config(&self) -> Option<&Path> {
        self.client_config.as_deref()
    }

    /// `name` (with its tag) in this registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// Pushes the engine's image `local` as `name` and removes that tag from the engine again.
    /// Returns the reference to pull.
    pub fn push(&self, local: &str, name: &str) -> String {
        let remote = self.image(name);
        for args in [
            vec!["tag", local, &remote],
            vec!["push", &remote],
            vec!["rmi", &remote],
        ] {
            let mut docker = Command::new("docker");
            if let Some(config) = &self.client_config {
                docker.arg("--config").arg(config);
            }
            let out = docker
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .expect("the docker CLI");
            assert!(
                out.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        remote
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        drop(self.process.take());
        let listed = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output();
        let Ok(listed) = listed else { return };
        for image in String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|i| i.starts_with(&format!("{}/", self.addr)))
        {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}
