//! A TCP proxy on loopback that can freeze: while frozen it keeps every connection open and
//! passes no byte either way, as a hung peer or a dead network path would. Everything it
//! started stops when it drops.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

pub struct FreezingProxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    _accept: AbortOnDropHandle<()>,
}

impl FreezingProxy {
    /// Listens on `ip` (any free port) and forwards every connection to `upstream`.
    pub async fn start(ip: IpAddr, upstream: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind((ip, 0)).await.expect("the proxy listens");
        let addr = listener.local_addr().expect("the proxy's address");
        let (frozen, _) = watch::channel(false);
        let watch = frozen.clone();
        let accept = tokio::spawn(async move {
            // Dropped with the accept task, which aborts every connection's pipes.
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pipes.spawn(pipe(client_read, server_write, watch.subscribe()));
                pipes.spawn(pipe(server_read, client_write, watch.subscribe()));
            }
        });
        FreezingProxy {
            addr,
            frozen,
            _accept: AbortOnDropHandle::new(accept),
        }
    }

    /// From now on, no byte passes until `thaw`.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

/// Copies `from` to `to`, holding bytes while frozen.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = frozen.changed() => continue,
        };
        // Frozen while reading: the bytes wait with the rest.
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy on loopback that can be cut, as a server that went away: every connection is
/// closed and new ones are closed as soon as they are accepted, until `mend`. It can also
/// hold every byte (`pause`) until cut or resumed. It counts the bytes sent upstream.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    paused: watch::Sender<bool>,
    upstream_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _accept: AbortOnDropHandle<()>,
}

impl CuttingProxy {
    pub async fn start(ip: IpAddr, upstream: SocketAddr) -> CuttingProxy {
        use std::sync::atomic::AtomicU64;
        let listener = TcpListener::bind((ip, 0)).await.expect("the proxy listens");
        let addr = listener.local_addr().expect("the proxy's address");
        let (cut, _) = watch::channel(false);
        let (paused, _) = watch::channel(false);
        let watch = cut.clone();
        let hold = paused.clone();
        let upstream_bytes = std::sync::Arc::new(AtomicU64::new(0));
        let counter = upstream_bytes.clone();
        let accept = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let counted = counter.clone();
                let signals = || (watch.subscribe(), hold.subscribe());
                pipes.spawn(cut_pipe(
                    client_read,
                    server_write,
                    signals(),
                    Some(counted),
                ));
                pipes.spawn(cut_pipe(server_read, client_write, signals(), None));
            }
        });
        CuttingProxy {
            addr,
            cut,
            paused,
            upstream_bytes,
            _accept: AbortOnDropHandle::new(accept),
        }
    }

    /// Closes every connection and refuses new ones until `mend`.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn mend(&self) {
        self.cut.send_replace(false);
    }

    /// Holds every byte until `cut` or `resume`.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Bytes passed upstream so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.upstream_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Copies `from` to `to` until either side closes or the proxy is cut.
async fn cut_pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    (mut cut, mut paused): (watch::Receiver<bool>, watch::Receiver<bool>),
    counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = paused.wait_for(|p| !*p) => {}
            _ = cut.wait_for(|c| *c) => return,
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.wait_for(|c| *c) => return,
        };
        if let Some(counter) = &counter {
            counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
