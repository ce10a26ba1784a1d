//! One relayed MQTT session: the client's bytes are inspected packet by
//! packet ([`crate::inspect`]) on their way to the broker's authenticated
//! internal listener, the broker's bytes are copied back unchanged. Shared
//! by the device gateway (TLS, per-device rules and rate) and the
//! operator's read-only loopback listener ([`crate::observer`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::inspect::{Inspector, Login, Violation};
use crate::rate::{DeviceRate, Throttle};
use crate::slots::Slot;
use crate::stats::{to_u64, GatewayMetric, GatewayStats};

/// Bytes read from a socket at a time.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// MQTT control packet type of PUBLISH (the high nibble of the first byte).
const PUBLISH_TYPE: u8 = 3;

/// Where relayed sessions go: the broker's internal listener and the login
/// it requires.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The broker's address.
    pub addr: SocketAddr,
    /// The login every relayed CONNECT presents (`None`: a broker without
    /// authentication, e.g. a test double).
    pub login: Option<Login>,
}

impl Upstream {
    /// A broker without authentication at `addr`.
    pub fn unauthenticated(addr: SocketAddr) -> Self {
        Self { addr, login: None }
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Self::unauthenticated(addr)
    }
}

/// How one session is relayed.
pub(crate) struct Relay<'a> {
    pub upstream: &'a Upstream,
    /// Deadline for the client's CONNECT and for reaching the broker.
    pub connect_timeout: Duration,
    /// The per-client message and byte rate, if any.
    pub rate: Option<&'a DeviceRate>,
    /// Byte and live-connection counters (the gateway's), if counted.
    pub stats: Option<&'a GatewayStats>,
}

/// How a relayed session ended, when it ended without a violation.
#[derive(Debug)]
pub(crate) enum End {
    ClientClosed,
    BrokerClosed,
    Cancelled,
    ConnectTimeout,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Decrements `live_connections` on drop.
struct LiveCount<'a>(&'a GatewayStats);

impl<'a> LiveCount<'a> {
    fn new(stats: &'a GatewayStats) -> Self {
        stats.inc(GatewayMetric::LiveConnections);
        Self(stats)
    }
}

impl Drop for LiveCount<'_> {
    fn drop(&mut self) {
        self.0.sub(GatewayMetric::LiveConnections, 1);
    }
}

impl Relay<'_> {
    fn count(&self, metric: GatewayMetric, n: usize) {
        if let Some(stats) = self.stats {
            stats.add(metric, to_u64(n));
        }
    }

    /// Relays `client` until either side closes. `permit` holds the
    /// connection's place among those in progress until its CONNECT
    /// arrives, so sockets that stay silent count against the caps too.
    pub(crate) async fn session<S>(
        &self,
        client: S,
        mut inspector: Inspector,
        permit: Slot,
    ) -> Result<End, SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);

        // Wait for the CONNECT before touching the broker.
        let first = tokio::time::timeout(
            self.connect_timeout,
            read_packet(&mut client_rx, &mut buf, &mut inspector),
        )
        .await;
        let connect = match first {
            Err(_) => return Ok(End::ConnectTimeout),
            Ok(Ok(Some(connect))) => connect,
            Ok(Ok(None)) => return Ok(End::ClientClosed),
            Ok(Err(e)) => return Err(e),
        };
        drop(permit);

        let addr = self.upstream.addr;
        let upstream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(error)) => {
                    warn!(upstream = %addr, %error, "broker unreachable; client connection closed");
                    return Err(error.into());
                }
                Err(_) => {
                    warn!(upstream = %addr, "broker connect timed out; client connection closed");
                    return Ok(End::ConnectTimeout);
                }
            };
        let _ = upstream.set_nodelay(true);
        let (mut broker_rx, mut broker_tx) = upstream.into_split();
        broker_tx.write_all(&connect).await?;
        self.count(GatewayMetric::BytesUp, connect.len());
        let _live = self.stats.map(LiveCount::new);
        debug!("client connected");

        let up = async {
            let mut out = BytesMut::new();
            let mut throttle = self.rate.map(|rate| Throttle::new(rate, Instant::now()));
            let mut throttled_before = false;
            loop {
                while let Some(packet) = inspector.next(&mut buf)? {
                    let publish = packet.first().is_some_and(|b| b >> 4 == PUBLISH_TYPE);
                    let pause = throttle.as_mut().map_or(Duration::ZERO, |t| {
                        t.charge(usize::from(publish), packet.len(), Instant::now())
                    });
                    if !pause.is_zero() {
                        // Over its rate: forward what was within it, then stop
                        // reading until the debt is paid (TCP pushes back on the
                        // client); logged once per connection.
                        if !out.is_empty() {
                            broker_tx.write_all(&out).await?;
                            self.count(GatewayMetric::BytesUp, out.len());
                            out.clear();
                        }
                        self.count(GatewayMetric::Throttled, 1);
                        if !throttled_before {
                            info!(?pause, "device over its rate limit; throttled");
                            throttled_before = true;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    out.extend_from_slice(&packet);
                }
                if !out.is_empty() {
                    broker_tx.write_all(&out).await?;
                    self.count(GatewayMetric::BytesUp, out.len());
                    out.clear();
                }
                buf.reserve(READ_CHUNK);
                if client_rx.read_buf(&mut buf).await? == 0 {
                    return Ok::<_, SessionError>(End::ClientClosed);
                }
            }
        };
        let down = async {
            let mut chunk = vec![0u8; READ_CHUNK];
            loop {
                let n = broker_rx.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<_, SessionError>(End::BrokerClosed);
                }
                client_tx.write_all(&chunk[..n]).await?;
                client_tx.flush().await?;
                self.count(GatewayMetric::BytesDown, n);
            }
        };
        tokio::select! {
            result = up => result,
            result = down => result,
        }
    }
}

/// Reads until `inspector` yields a packet; `None` if the client closed first.
pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    inspector: &mut Inspector,
) -> Result<Option<Bytes>, SessionError> {
    loop {
        if let Some(packet) = inspector.next(buf)? {
            return Ok(Some(packet));
        }
        buf.reserve(READ_CHUNK);
        if reader.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}
