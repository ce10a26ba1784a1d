//! A counting TCP proxy: put it between a device and the broker (or the
//! manager's HTTPS listener) to count connection attempts and bytes at the
//! network, not in the agent's own logs or counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Stamps an accepted connection (e.g. with a simulated wall clock).
pub type Stamp = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Default)]
struct Counts {
    /// One stamp per accepted TCP connection, in accept order.
    accepted: Mutex<Vec<u64>>,
    /// Bytes device → upstream.
    up: AtomicU64,
    /// Bytes upstream → device.
    down: AtomicU64,
}

/// Forwards every connection on `addr` to the upstream address and counts.
pub struct CountingProxy {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    stop: CancellationToken,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `upstream`. Each
    /// accepted connection is recorded with `stamp()` at accept time.
    pub async fn start(upstream: SocketAddr, stamp: Stamp) -> Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the proxy")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        let (c, s) = (Arc::clone(&counts), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((device, _)) = accepted else { continue };
                c.accepted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(stamp());
                let (c, s) = (Arc::clone(&c), s.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = s.cancelled() => {}
                        () = forward(device, upstream, &c) => {}
                    }
                });
            }
        });
        Ok(CountingProxy { addr, counts, stop })
    }

    /// The stamps of every accepted connection so far.
    pub fn connections(&self) -> Vec<u64> {
        self.counts
            .accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// (device → upstream, upstream → device) bytes so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.counts.up.load(Ordering::Relaxed),
            self.counts.down.load(Ordering::Relaxed),
        )
    }
}

impl CountingProxy {
    /// The byte counts once they have not changed for `quiet` (what is in
    /// flight when a connection closes has arrived).
    pub async fn settled_bytes(&self, quiet: Duration) -> (u64, u64) {
        let mut last = self.bytes();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.bytes();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn forward(device: TcpStream, upstream: SocketAddr, counts: &Counts) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut dr, mut dw) = device.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let n = copy_counting(&mut dr, &mut sw, &counts.up).await;
        let _ = sw.shutdown().await;
        n
    };
    let down = async {
        let n = copy_counting(&mut sr, &mut dw, &counts.down).await;
        let _ = dw.shutdown().await;
        n
    };
    tokio::join!(up, down);
}

async fn copy_counting(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    counter: &AtomicU64,
) -> u64 {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return total;
        }
        let n = n as u64;
        counter.fetch_add(n, Ordering::Relaxed);
        total += n;
    }
}
