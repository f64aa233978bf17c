//! Loopback addresses and ports for tests that run concurrently.
//!
//! nextest runs each test in its own process, so a per-process counter alone
//! would hand the same address to two tests. Addresses are therefore derived
//! from the process id *and* a per-process counter, inside 127.64.0.0/10
//! (127.64.0.0 - 127.127.255.255; 127.0.0.1 is left to Garage and to whatever
//! else runs on the machine). Every 127.x.y.z answers on Linux without setup.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// First address of the range the tests use.
const BASE: Ipv4Addr = Ipv4Addr::new(127, 64, 0, 0);
/// 127.64.0.0/10 holds 2^22 addresses.
const RANGE_SIZE: u32 = 1 << 22;
/// Addresses one test process may take before the sequence wraps.
const SLOTS_PER_PROCESS: u32 = 64;

/// A loopback address no other running test uses, with every port in `ports`
/// free on it (checked by binding each one briefly). Panics when none of this
/// process's slots is free, which means something else holds the ports.
pub fn unique_loopback(ports: &[u16]) -> Ipv4Addr {
    static NEXT_SLOT: AtomicU32 = AtomicU32::new(0);
    let process_block = (std::process::id() % (RANGE_SIZE / SLOTS_PER_PROCESS)) * SLOTS_PER_PROCESS;
    let mut last_error = None;
    for _ in 0..SLOTS_PER_PROCESS {
        let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS_PER_PROCESS;
        let ip = Ipv4Addr::from(u32::from(BASE) + process_block + slot);
        // x.y.z.0 and x.y.z.255 work on loopback but read like network and
        // broadcast addresses in logs; skip them.
        if matches!(ip.octets()[3], 0 | 255) {
            continue;
        }
        match ports_free(ip, ports) {
            Ok(()) => return ip,
            Err(error) => last_error = Some(error),
        }
    }
    panic!(
        "no free loopback address for ports {ports:?} among this process's \
         {SLOTS_PER_PROCESS} slots; last error: {last_error:?}"
    );
}

/// A port that was free on `ip` a moment ago (the OS picked it).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    let listener = TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("cannot bind an ephemeral port on {ip}: {e}"));
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// `ip:port` as a socket address.
pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn ports_free(ip: Ipv4Addr, ports: &[u16]) -> std::io::Result<()> {
    // Port 0 always binds: it proves the address itself is usable.
    TcpListener::bind((ip, 0))?;
    for &port in ports {
        TcpListener::bind((ip, port))?;
    }
    Ok(())
}
