//! A container registry (Debian's docker-registry) on its own loopback address, for image
//! pulls: the engine treats registries on 127.0.0.0/8 as plain HTTP, so nothing leaves the
//! machine. Images pushed to it are untagged locally, so only a pull brings them back; every
//! image of the registry is removed from the engine on drop, after the registry stops.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::net::{free_port, unique_loopback};
use super::process::{wait_listening, Process};
use super::Unavailable;

const REGISTRY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    /// `ip:port`, the registry part of its image references.
    pub addr: String,
    // Stopped before `_dir` goes (fields drop in order).
    process: Option<Process>,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Result<Self, Unavailable> {
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
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: '{ip}:{port}'}}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("the registry configuration");
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
        Ok(Registry {
            addr: format!("{ip}:{port}"),
            process: Some(process),
            _dir: dir,
        })
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
            let out = Command::new("docker")
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
