//! Server processes the tests start (nginx, sshd, a container registry): each in its own
//! process group, stopped with its whole group on drop.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::net::addr;
use super::Unavailable;

/// How long a server may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process in its own process group: the whole group (fcgiwrap's workers, sshd's
/// sessions) gets SIGTERM, then SIGKILL, on drop, and the child is reaped.
pub struct Process {
    pub name: &'static str,
    pub child: Child,
}

impl Process {
    pub fn spawn(name: &'static str, command: &mut Command) -> Result<Self, Unavailable> {
        let child = command
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Unavailable::new(name, format!("cannot start {name}: {e}")))?;
        Ok(Self { name, child })
    }

    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let group = format!("-{}", self.child.id());
        let signal = |name: &str| {
            let _ = Command::new("kill")
                .args([name, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                // Workers of the group may outlive the leader by a moment.
                signal("-KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("-KILL");
        if let Err(e) = self.child.wait() {
            eprintln!("warning: cannot reap {}: {e}", self.name);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (blocking) until `ip:port` accepts TCP connections, or the process exits.
pub fn wait_listening(
    process: &mut Process,
    ip: Ipv4Addr,
    port: u16,
    log: &Path,
) -> Result<(), Unavailable> {
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        if std::net::TcpStream::connect_timeout(&addr(ip, port), Duration::from_millis(200)).is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(Unavailable::new(
                process.name,
                format!("exited with {status} before listening on {ip}:{port}: {log}"),
            ));
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{} did not listen on {ip}:{port} within {START_TIMEOUT:?}",
                process.name
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
