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
