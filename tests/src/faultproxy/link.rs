//! One proxied connection: two pumps (client → upstream, upstream → client)
//! that honour the connection's latency, bandwidth cap and mode.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::Ctl;

/// Latency and bandwidth of a link, the same in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkShape {
    /// How long every chunk is held before it is forwarded.
    pub latency: Duration,
    /// At most this many bytes per second in each direction (None: no cap).
    pub bytes_per_sec: Option<u64>,
}

/// What a connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwarding.
    Flow,
    /// Half-open: nothing read, nothing written, both sockets kept open.
    Stall,
    /// Close both sockets with a FIN.
    Cut,
    /// Close both sockets with an RST (SO_LINGER 0).
    Reset,
}

/// How many chunks may wait in the latency line of one direction.
const IN_FLIGHT: usize = 256;
/// The largest chunk read at once.
const CHUNK: usize = 16 * 1024;

/// Forwards `client` to `upstream` until both directions end or the mode
/// breaks the connection. Returns whether a fault broke it.
pub(super) async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut ctl: watch::Receiver<Ctl>,
    up: &AtomicU64,
    down: &AtomicU64,
) -> bool {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // The client sees its connection closed, as with a refused upstream.
        return false;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let (up_ctl, down_ctl) = (ctl.clone(), ctl.clone());
        let pumps = async { tokio::join!(pump(cr, sw, up_ctl, up), pump(sr, cw, down_ctl, down)) };
        tokio::select! {
            // Pumps also stop on a fault: the mode says which ending it is.
            _ = pumps => Some(ctl.borrow().mode).filter(|m| matches!(m, Mode::Cut | Mode::Reset)),
            mode = broken(&mut ctl) => Some(mode),
        }
    };
    match end {
        None => false,
        Some(Mode::Reset) => {
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
            true
        }
        Some(_) => {
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
            true
        }
    }
}

/// Waits until the mode is Cut or Reset.
async fn broken(ctl: &mut watch::Receiver<Ctl>) -> Mode {
    loop {
        let mode = ctl.borrow_and_update().mode;
        if matches!(mode, Mode::Cut | Mode::Reset) {
            return mode;
        }
        if ctl.changed().await.is_err() {
            // The proxy is gone: end this connection like a cut.
            return Mode::Cut;
        }
    }
}

/// Waits while the connection is stalled.
async fn flowing(ctl: &mut watch::Receiver<Ctl>) -> Option<LinkShape> {
    loop {
        let c = *ctl.borrow_and_update();
        match c.mode {
            Mode::Flow => return Some(c.shape),
            Mode::Stall => {}
            Mode::Cut | Mode::Reset => return None,
        }
        if ctl.changed().await.is_err() {
            return None;
        }
    }
}

/// One direction: a reader that stamps chunks and a writer that forwards
/// each at its stamp plus the latency, paced to the bandwidth cap.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    ctl: watch::Receiver<Ctl>,
    counter: &AtomicU64,
) {
    // `None` marks the reader's EOF: only then is the half-close passed on
    // (a reader stopped by a cut or reset must not send a FIN first).
    let (tx, mut rx) = mpsc::channel::<Option<(Instant, Vec<u8>)>>(IN_FLIGHT);
    let mut read_ctl = ctl.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let Some(shape) = flowing(&mut read_ctl).await else {
                return;
            };
            // Small reads under a small cap, so pacing stays smooth.
            let max = shape
                .bytes_per_sec
                .map_or(CHUNK, |b| (b as usize / 10).clamp(1, CHUNK));
            let n = tokio::select! {
                r = from.read(&mut buf[..max]) => match r {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None).await;
                        return;
                    }
                    Ok(n) => n,
                },
                // A stall or break that comes while waiting for data.
                _ = read_ctl.changed() => continue,
            };
            if tx
                .send(Some((Instant::now(), buf[..n].to_vec())))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let mut write_ctl = ctl;
    let writer = async {
        loop {
            let (read_at, chunk) = match rx.recv().await {
                Some(Some(c)) => c,
                // The reader saw EOF and everything before it was written:
                // pass the half-close on.
                Some(None) => {
                    let _ = to.shutdown().await;
                    return;
                }
                // The reader stopped on a fault: no FIN before the cut or reset.
                None => return,
            };
            let Some(shape) = flowing(&mut write_ctl).await else {
                return;
            };
            tokio::time::sleep_until(read_at + shape.latency).await;
            // The stall may have begun during the latency.
            if flowing(&mut write_ctl).await.is_none() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if let Some(rate) = shape.bytes_per_sec.filter(|r| *r > 0) {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
            }
        }
    };
    tokio::join!(reader, writer);
}
