//! A TCP proxy that can cut the connection between a service and a dependency without closing
//! it, the way a network partition (or an nftables drop rule) does: bytes stop flowing, nobody
//! is told. Used where a real network namespace would need the dependency on a routable address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards 127.0.0.1:port to `upstream` until partitioned.
pub struct PartitionProxy {
    addr: SocketAddr,
    partitioned: Arc<AtomicBool>,
    healed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl PartitionProxy {
    pub async fn start(upstream: SocketAddr) -> Result<PartitionProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let partitioned = Arc::new(AtomicBool::new(false));
        let (healed, _) = watch::channel(0u64);
        let state = (partitioned.clone(), healed.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (partitioned, healed) = (state.0.clone(), state.1.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, partitioned.clone(), healed.subscribe()));
                    tokio::spawn(pump(sr, cw, partitioned, healed.subscribe()));
                });
            }
        });
        Ok(PartitionProxy {
            addr,
            partitioned,
            healed,
            task,
        })
    }

    /// "http://127.0.0.1:port" of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every byte in both directions from now on, keeping connections open.
    pub fn partition(&self) {
        self.partitioned.store(true, Ordering::SeqCst);
    }

    /// Lets new bytes through again (bytes dropped meanwhile stay lost).
    pub fn heal(&self) {
        self.partitioned.store(false, Ordering::SeqCst);
        self.healed.send_modify(|n| *n += 1);
    }
}

impl Drop for PartitionProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    partitioned: Arc<AtomicBool>,
    mut healed: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if partitioned.load(Ordering::SeqCst) {
            // A dropped packet: the sender is not told. Wait for healing before reading on,
            // like a black-holed route (the connection is unusable until then anyway).
            while partitioned.load(Ordering::SeqCst) {
                if healed.changed().await.is_err() {
                    return;
                }
            }
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
