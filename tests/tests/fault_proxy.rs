//! The fault-injecting proxy does what it says at the socket level: each
//! fault is observed by a plain TCP client through it, against an echo
//! server. Timings are only lower bounds (a slow machine cannot make them
//! fail) or generous waits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use margo_tests::faultproxy::{
    FaultKind, FaultProxy, LinkFault, LinkShape, Timeline, TimelineSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound on anything that should happen promptly.
const PROMPTLY: Duration = Duration::from_secs(20);

/// An echo server on a free port.
async fn echo() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// A server that reads and discards, reporting the bytes it got.
async fn sink() -> Result<(SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || tx.send(n).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, rx))
}

async fn connected(proxy: &FaultProxy) -> Result<TcpStream> {
    let mut c = TcpStream::connect(proxy.addr).await?;
    // A round trip proves the upstream side is connected too.
    c.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    tokio::time::timeout(PROMPTLY, c.read_exact(&mut buf))
        .await
        .context("no echo through the proxy")??;
    Ok(c)
}

async fn round_trip(c: &mut TcpStream) -> Result<Duration> {
    let t = Instant::now();
    c.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(PROMPTLY, c.read_exact(&mut buf))
        .await
        .context("no echo")??;
    Ok(t.elapsed())
}

#[tokio::test]
async fn latency_delays_each_direction() -> Result<()> {
    let proxy = FaultProxy::start(echo().await?).await?;
    let mut c = connected(&proxy).await?;
    proxy.set_shape(LinkShape {
        latency: Duration::from_millis(300),
        bytes_per_sec: None,
    });
    // Held back on the way up and again on the way down.
    let rtt = round_trip(&mut c).await?;
    assert!(
        rtt >= Duration::from_millis(600),
        "round trip {rtt:?} under 2 × 300 ms"
    );
    proxy.set_shape(LinkShape::default());
    Ok(())
}

#[tokio::test]
async fn bandwidth_cap_paces_a_bulk_transfer() -> Result<()> {
    let (addr, mut got) = sink().await?;
    let proxy = FaultProxy::start(addr).await?;
    let rate = 20_000u64;
    proxy.set_shape(LinkShape {
        latency: Duration::ZERO,
        bytes_per_sec: Some(rate),
    });
    let mut c = TcpStream::connect(proxy.addr).await?;
    let total = 60_000usize;
    let t = Instant::now();
    c.write_all(&vec![7u8; total]).await?;
    let mut received = 0;
    while received < total {
        received += tokio::time::timeout(PROMPTLY, got.recv())
            .await
            .context("the sink stopped receiving")?
            .context("sink gone")?;
    }
    let elapsed = t.elapsed();
    // The first chunks go at once; the rest waits for the cap.
    let floor = Duration::from_secs_f64((total as u64 - rate / 5) as f64 / rate as f64);
    assert!(
        elapsed >= floor,
        "{total} bytes at {rate} B/s took {elapsed:?}, under {floor:?}"
    );
    Ok(())
}

#[tokio::test]
async fn cut_gives_the_client_eof() -> Result<()> {
    let proxy = FaultProxy::start(echo().await?).await?;
    let mut c = connected(&proxy).await?;
    assert_eq!(proxy.cut(), 1);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PROMPTLY, c.read(&mut buf))
        .await
        .context("no EOF after the cut")??;
    assert_eq!(n, 0, "a cut connection reads EOF");
    assert_eq!(proxy.counts().cut, 1);
    Ok(())
}

#[tokio::test]
async fn reset_gives_the_client_an_rst() -> Result<()> {
    let proxy = FaultProxy::start(echo().await?).await?;
    let mut c = connected(&proxy).await?;
    assert_eq!(proxy.reset(), 1);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(PROMPTLY, c.read(&mut buf))
        .await
        .context("nothing after the reset")?;
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        other => bail!("expected ECONNRESET, got {other:?}"),
    }
}

#[tokio::test]
async fn half_open_stalls_with_the_socket_open_then_cuts() -> Result<()> {
    let proxy = FaultProxy::start(echo().await?).await?;
    let mut c = connected(&proxy).await?;
    let stall = Duration::from_secs(2);
    let t = Instant::now();
    assert_eq!(proxy.half_open(stall), 1);
    // Writes are accepted (the socket is open) but nothing comes back.
    c.write_all(b"anyone?").await?;
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(Duration::from_millis(1_000), c.read(&mut buf)).await;
    assert!(early.is_err(), "half-open connection answered: {early:?}");
    // Then the peer is gone for good: EOF, not the echo (or an RST: the
    // proxy closes a socket holding the unread bytes written meanwhile).
    let end = tokio::time::timeout(PROMPTLY, c.read(&mut buf))
        .await
        .context("the stall never ended")?;
    match end {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => bail!("expected the end of the connection after the stall, got {other:?}"),
    }
    assert!(
        t.elapsed() >= stall,
        "the stall ended early: {:?}",
        t.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn new_connections_work_after_a_fault() -> Result<()> {
    let proxy = FaultProxy::start(echo().await?).await?;
    let _c = connected(&proxy).await?;
    proxy.reset();
    let mut c2 = connected(&proxy).await?;
    round_trip(&mut c2).await?;
    assert_eq!(proxy.accepted(), 2);
    Ok(())
}

#[test]
fn the_same_seed_draws_the_same_timeline() {
    let spec = |seed| TimelineSpec {
        seed,
        span: Duration::from_secs(60),
        faults: 30,
        kinds: FaultKind::ALL.to_vec(),
    };
    let a = Timeline::seeded(&spec(7));
    assert_eq!(a, Timeline::seeded(&spec(7)));
    assert_ne!(a, Timeline::seeded(&spec(8)));
    assert_eq!(a.events.len(), 30);
    assert!(
        a.events.windows(2).all(|w| w[0].0 <= w[1].0),
        "sorted by offset"
    );
}

#[tokio::test]
async fn a_scripted_timeline_plays_its_faults() -> Result<()> {
    let proxy = FaultProxy::start(echo().await?).await?;
    let mut c = connected(&proxy).await?;
    let timeline = Timeline::scripted(vec![
        (
            Duration::from_millis(100),
            LinkFault::Latency {
                latency: Duration::from_millis(50),
                lasting: Duration::from_secs(30),
            },
        ),
        (Duration::from_millis(300), LinkFault::Reset),
    ]);
    let _playing = proxy.play(&timeline);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(PROMPTLY, c.read(&mut buf))
        .await
        .context("the timeline's reset never came")?;
    assert!(r.is_err(), "expected the reset, got {r:?}");
    let counts = proxy.counts();
    assert_eq!((counts.latency, counts.reset), (1, 1), "{counts:?}");
    Ok(())
}
