//! Real git remotes for the source tests: smart HTTP (nginx + fcgiwrap + git-http-backend,
//! with basic auth) and SSH (sshd with a test key pair and a generated known_hosts). Each
//! server runs on a unique loopback address and port with a temporary configuration, and is
//! stopped on drop. Both serve any repository by absolute path, so a test commits in a
//! [`super::git::TestRepo`] and the remote sees it at once.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::net::{free_port, unique_loopback};
use super::process::{wait_listening, Process, START_TIMEOUT};
use super::Unavailable;

const NGINX: &str = "/usr/sbin/nginx";
const FCGIWRAP: &str = "/usr/sbin/fcgiwrap";
const GIT_HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";
const SSHD: &str = "/usr/sbin/sshd";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

fn require_file(component: &'static str, path: &str) -> Result<(), Unavailable> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(Unavailable::new(
            component,
            format!("{path} is missing (scripts/test installs nginx, fcgiwrap and openssh-server)"),
        ))
    }
}

/// nginx serving every repository on the machine over smart HTTP at `/<absolute path>`,
/// behind basic auth, with an access log a test can count requests in.
pub struct HttpRemote {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub username: String,
    pub password: String,
    dir: TempDir,
    // Stopped before `dir` goes (fields drop in order).
    nginx: Option<Process>,
    fcgiwrap: Option<Process>,
}

impl HttpRemote {
    /// Starts nginx and fcgiwrap on a fresh loopback address.
    pub fn start() -> Result<Self, Unavailable> {
        for path in [NGINX, FCGIWRAP, GIT_HTTP_BACKEND] {
            require_file("git smart HTTP", path)?;
        }
        let ip = unique_loopback(&[]);
        let port = free_port(ip);
        let dir = tempfile::Builder::new()
            .prefix("drover-http-remote-")
            .tempdir()
            .map_err(|e| Unavailable::new("git smart HTTP", e))?;
        let mut remote = Self {
            ip,
            port,
            username: "drover".to_owned(),
            password: format!("pw-{}", super::unique_token()),
            dir,
            nginx: None,
            fcgiwrap: None,
        };
        let d = remote.dir.path();
        std::fs::write(
            d.join("htpasswd"),
            format!("{}:{{PLAIN}}{}\n", remote.username, remote.password),
        )
        .map_err(|e| Unavailable::new("git smart HTTP", e))?;
        std::fs::write(d.join("nginx.conf"), remote.nginx_conf())
            .map_err(|e| Unavailable::new("git smart HTTP", e))?;
        remote.up()?;
        Ok(remote)
    }

    /// `http://ip:port/<path>`: the URL of a repository on this machine.
    pub fn url(&self, repo: &Path) -> String {
        format!("http://{}:{}{}", self.ip, self.port, repo.display())
    }

    /// Stops the servers (the remote becomes unreachable); [`Self::up`] starts them again on
    /// the same address and port.
    pub fn down(&mut self) {
        self.nginx.take();
        self.fcgiwrap.take();
    }

    pub fn up(&mut self) -> Result<(), Unavailable> {
        let d = self.dir.path();
        let socket = d.join("fcgi.sock");
        let _ = std::fs::remove_file(&socket);
        let fcgi_log = d.join("fcgiwrap.log");
        // One process (-c 1): with pre-forked workers, the workers outlive a stopped parent
        // and linger as orphans until init reaps them.
        let mut fcgiwrap = Process::spawn(
            "fcgiwrap",
            Command::new(FCGIWRAP)
                .args(["-c", "1", "-s"])
                .arg(format!("unix:{}", socket.display()))
                .stdout(Stdio::null())
                .stderr(log_file(&fcgi_log)?),
        )?;
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if let Ok(Some(status)) = fcgiwrap.child.try_wait() {
                return Err(Unavailable::new(
                    "fcgiwrap",
                    format!("exited with {status}"),
                ));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fcgiwrap did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let error_log = d.join("error.log");
        let mut nginx = Process::spawn(
            "nginx",
            Command::new(NGINX)
                .arg("-p")
                .arg(d)
                .arg("-e")
                .arg(&error_log)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(log_file(&d.join("nginx.stderr"))?),
        )?;
        wait_listening(&mut nginx, self.ip, self.port, &error_log)?;
        self.fcgiwrap = Some(fcgiwrap);
        self.nginx = Some(nginx);
        Ok(())
    }

    /// The access log: one line per request, `METHOD path status bytes_sent`.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// How many `POST .../git-upload-pack` requests (object transfers) the server answered.
    pub fn upload_pack_posts(&self) -> usize {
        self.access_log()
            .lines()
            .filter(|l| l.starts_with("POST ") && l.contains("/git-upload-pack"))
            .count()
    }

    /// How many `GET .../info/refs` requests (ref advertisements) the server answered.
    pub fn info_refs_gets(&self) -> usize {
        self.access_log()
            .lines()
            .filter(|l| l.starts_with("GET ") && l.contains("/info/refs"))
            .count()
    }

    /// Sum of response body bytes in the access log.
    pub fn bytes_sent(&self) -> u64 {
        self.access_log()
            .lines()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn nginx_conf(&self) -> String {
        let d = self.dir.path().display();
        let (ip, port) = (self.ip, self.port);
        format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format drover '$request_method $uri $status $msec $request_time $body_bytes_sent';
    access_log {d}/access.log drover;
    client_body_temp_path {d}/body;
    fastcgi_temp_path {d}/fastcgi;
    proxy_temp_path {d}/proxy;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    server {{
        listen {ip}:{port};
        location / {{
            auth_basic "git";
            auth_basic_user_file {d}/htpasswd;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME {GIT_HTTP_BACKEND};
            fastcgi_param GIT_PROJECT_ROOT /;
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param PATH_INFO $uri;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_pass unix:{d}/fcgi.sock;
        }}
    }}
}}
"#
        )
    }
}

/// sshd on a loopback port that lets one test key in as root; the repository is addressed by
/// its absolute path (`ssh://root@ip:port/abs/path`), no git-shell involved.
pub struct SshRemote {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The client's private key (no passphrase) and a known_hosts listing the server's key.
    pub private_key: PathBuf,
    pub known_hosts: PathBuf,
    /// A known_hosts file listing a different key for the same host.
    pub wrong_known_hosts: PathBuf,
    dir: TempDir,
    sshd: Option<Process>,
}

impl SshRemote {
    pub fn start() -> Result<Self, Unavailable> {
        for path in [SSHD, SSH_KEYGEN] {
            require_file("sshd", path)?;
        }
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").map_err(|e| Unavailable::new("sshd", e))?;
        let ip = unique_loopback(&[]);
        let port = free_port(ip);
        let dir = tempfile::Builder::new()
            .prefix("drover-ssh-remote-")
            .tempdir()
            .map_err(|e| Unavailable::new("sshd", e))?;
        let d = dir.path();
        for key in ["host_key", "client_key", "other_key"] {
            keygen(&d.join(key))?;
        }
        let read = |name: &str| {
            std::fs::read_to_string(d.join(name)).map_err(|e| Unavailable::new("sshd", e))
        };
        std::fs::write(d.join("authorized_keys"), read("client_key.pub")?)
            .map_err(|e| Unavailable::new("sshd", e))?;
        let known = |pub_name: &str| -> Result<String, Unavailable> {
            let public = read(pub_name)?;
            let mut fields = public.split_whitespace();
            let (kind, key) = (
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
            );
            Ok(format!("[{ip}]:{port} {kind} {key}\n"))
        };
        let known_hosts = d.join("known_hosts");
        let wrong_known_hosts = d.join("wrong_known_hosts");
        std::fs::write(&known_hosts, known("host_key.pub")?)
            .map_err(|e| Unavailable::new("sshd", e))?;
        std::fs::write(&wrong_known_hosts, known("other_key.pub")?)
            .map_err(|e| Unavailable::new("sshd", e))?;
        let config = format!(
            "Port {port}\nListenAddress {ip}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
             UsePAM no\nLogLevel VERBOSE\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| Unavailable::new("sshd", e))?;
        let log = d.join("sshd.log");
        let mut sshd = Process::spawn(
            "sshd",
            Command::new(SSHD)
                .arg("-D")
                .arg("-E")
                .arg(&log)
                .arg("-f")
                .arg(d.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(log_file(&d.join("sshd.stderr"))?),
        )?;
        wait_listening(&mut sshd, ip, port, &log)?;
        Ok(Self {
            ip,
            port,
            private_key: d.join("client_key"),
            known_hosts,
            wrong_known_hosts,
            sshd: Some(sshd),
            dir,
        })
    }

    /// `ssh://root@ip:port/<absolute path>`.
    pub fn url(&self, repo: &Path) -> String {
        format!("ssh://root@{}:{}{}", self.ip, self.port, repo.display())
    }

    /// The private key's text, to prove it never reaches a log.
    pub fn private_key_text(&self) -> String {
        std::fs::read_to_string(&self.private_key).unwrap_or_default()
    }

    /// sshd's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SshRemote {
    fn drop(&mut self) {
        self.sshd.take();
    }
}

fn keygen(path: &Path) -> Result<(), Unavailable> {
    let status = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "drover-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| Unavailable::new("ssh-keygen", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Unavailable::new(
            "ssh-keygen",
            format!("exited with {status}"),
        ))
    }
}

fn log_file(path: &Path) -> Result<std::fs::File, Unavailable> {
    std::fs::File::create(path)
        .map_err(|e| Unavailable::new("log file", format!("{}: {e}", path.display())))
}
