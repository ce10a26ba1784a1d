//! The device gateway: the public device port in front of the broker.
//!
//! Each accepted socket runs in its own task: a TLS 1.3 handshake with a
//! deadline and caps on pending handshakes, mutual TLS against the fleet CA,
//! identity from the certificate CN, a revocation check (a revoked identity
//! gets CONNACK "not authorized" to its CONNECT, then the connection
//! closes), then a plain TCP connection to the broker with every client →
//! broker packet inspected ([`crate::inspect`]) and broker → client bytes
//! copied unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use margo_schemas::ids::ClientId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::clones;
use crate::config::GatewayConfig;
use crate::error::{BrokerError, Listener};
use crate::inspect::{Inspector, Violation};
use crate::rate::{DeviceRate, Throttle};
use crate::revocation::{LiveRefusal, Revocations};
use crate::slots::{Slot, SlotRefusal, SourceSlots};
use crate::stats::{to_u64, GatewayMetric, GatewayStats, HandshakeOutcome, Refusal};
use crate::tls::{self, accept_with_deadline, Handshake};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// MQTT control packet type of PUBLISH (the high nibble of the first byte).
const PUBLISH_TYPE: u8 = 3;
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A bound device gateway, not yet serving. Build with [`Gateway::bind`],
/// read [`Gateway::local_addr`], then [`Gateway::run`] it.
pub struct Gateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    max_packet_bytes: usize,
    device_rate: DeviceRate,
    revocations: Revocations,
    stats: Arc<GatewayStats>,
    /// Connections in progress: from accept until their CONNECT arrives.
    pending: SourceSlots,
    max_per_identity: usize,
}

impl Gateway {
    /// Validates `cfg`, builds the TLS config and binds the listener.
    /// `upstream` is the plain MQTT broker address the gateway relays to.
    pub async fn bind(
        cfg: GatewayConfig,
        upstream: SocketAddr,
        revocations: Revocations,
    ) -> Result<Self, BrokerError> {
        cfg.validate()?;
        revocations.clones().set_rule(cfg.clone_detection);
        let server_config = tls::server_config(&cfg.tls)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| BrokerError::Bind {
                listener: Listener::Gateway,
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                acceptor: TlsAcceptor::from(server_config),
                upstream,
                handshake_timeout: cfg.handshake_timeout,
                connect_timeout: cfg.connect_timeout,
                max_packet_bytes: cfg.max_packet_bytes,
                device_rate: cfg.device_rate,
                revocations,
                stats: Arc::new(GatewayStats::default()),
                pending: SourceSlots::new(cfg.max_pending_handshakes, cfg.max_pending_per_ip),
                max_per_identity: cfg.max_connections_per_identity,
            }),
        })
    }

    /// The address the gateway listens on (the real port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gateway's counters.
    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Serves devices until `shutdown` is cancelled, then closes every
    /// connection and returns once their tasks have ended.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        info!(listen = %self.local_addr, upstream = %self.shared.upstream, "device gateway serving");
        let tracker = TaskTracker::new();
        loop {
            let (socket, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            self.shared.stats.inc(GatewayMetric::Accepted);
            let permit = match self.shared.pending.try_take(peer.ip()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    let refusal = match refusal {
                        SlotRefusal::Total => Refusal::PendingCap,
                        SlotRefusal::PerSource => Refusal::PerIpCap,
                    };
                    self.shared.stats.inc(refusal.metric());
                    debug!(%peer, reason = refusal.label(), "pending handshake cap reached; connection closed");
                    drop(socket);
                    continue;
                }
            };
            let shared = Arc::clone(&self.shared);
            let token = shutdown.child_token();
            tracker.spawn(
                handle_connection(shared, socket, permit, token)
                    .instrument(tracing::info_span!("device", %peer)),
            );
        }
        tracker.close();
        tracker.wait().await;
        info!("device gateway stopped");
        Ok(())
    }
}

/// Runs a device gateway in front of the MQTT broker at `upstream` until
/// `shutdown` is cancelled. Use [`Gateway`] instead to learn the bound
/// address or read the counters.
pub async fn run_gateway(
    cfg: GatewayConfig,
    upstream: SocketAddr,
    revocations: Revocations,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    Gateway::bind(cfg, upstream, revocations)
        .await?
        .run(shutdown)
        .await
}

/// Decrements `live_connections` on drop.
struct LiveCount(Arc<GatewayStats>);

impl LiveCount {
    fn new(stats: &Arc<GatewayStats>) -> Self {
        stats.inc(GatewayMetric::LiveConnections);
        Self(Arc::clone(stats))
    }
}

impl Drop for LiveCount {
    fn drop(&mut self) {
        self.0.sub(GatewayMetric::LiveConnections, 1);
    }
}

async fn handle_connection(
    shared: Arc<Shared>,
    socket: TcpStream,
    permit: Slot,
    token: CancellationToken,
) {
    let tls = match accept_with_deadline(&shared.acceptor, socket, shared.handshake_timeout, &token)
        .await
    {
        Handshake::Done(tls) => *tls,
        Handshake::Cancelled => return,
        Handshake::Failed(error) => {
            shared.stats.inc(HandshakeOutcome::Failed.metric());
            debug!(%error, "TLS handshake failed");
            return;
        }
        Handshake::TimedOut => {
            shared.stats.inc(HandshakeOutcome::Timeout.metric());
            debug!(timeout = ?shared.handshake_timeout, "TLS handshake deadline passed");
            return;
        }
    };
    shared.stats.inc(HandshakeOutcome::Ok.metric());

    let identity = match tls::identity(tls.get_ref().1.peer_certificates()) {
        Ok(identity) => identity,
        Err(error) => {
            shared.stats.inc(Refusal::BadIdentity.metric());
            warn!(%error, "client certificate does not name a device");
            return;
        }
    };
    let span = tracing::info_span!("session", client_id = %identity);
    relay_device(shared, tls, identity, permit, token)
        .instrument(span)
        .await;
}

/// How a relayed session ended, when it ended without a violation.
#[derive(Debug)]
enum End {
    DeviceClosed,
    BrokerClosed,
    Cancelled,
    ConnectTimeout,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Relays a device's session. `permit` holds its place among the
/// connections in progress until its CONNECT arrives, so sockets that finish
/// TLS and then stay silent count against the pending caps too.
async fn relay_device(
    shared: Arc<Shared>,
    tls: TlsStream<TcpStream>,
    identity: ClientId,
    permit: Slot,
    token: CancellationToken,
) {
    let registered =
        shared
            .revocations
            .register_live(&identity, token.clone(), shared.max_per_identity);
    let _live = match registered {
        Ok(live) => live,
        Err(LiveRefusal::TooMany) => {
            shared.stats.inc(Refusal::IdentityCap.metric());
            debug!(
                max = shared.max_per_identity,
                "identity already holds its cap of connections; connection closed"
            );
            return;
        }
        Err(LiveRefusal::Revoked) => {
            // Keeps its place among the connections in progress until the
            // refusal is answered, like any other connection before CONNECT.
            shared.stats.inc(Refusal::Revoked.metric());
            let answered = tokio::select! {
                () = token.cancelled() => false,
                answered = refuse_not_authorized(&shared, tls, &identity) => answered,
            };
            warn!(
                connack_sent = answered,
                "revoked identity refused (CONNACK not authorized)"
            );
            return;
        }
    };
    let peer = tls.get_ref().0.peer_addr().ok().map(|a| a.ip());
    let (_watched, suspected) =
        clones::watch_connection(&shared.revocations.clones(), &identity, peer);
    if suspected {
        shared.stats.inc(GatewayMetric::ClonesSuspected);
    }
    let result = tokio::select! {
        () = token.cancelled() => Ok(End::Cancelled),
        result = session(&shared, tls, &identity, permit) => result,
    };
    match result {
        Ok(End::Cancelled) if shared.revocations.is_revoked(&identity) => {
            info!("connection closed: identity revoked");
        }
        Ok(end) => debug!(?end, "connection closed"),
        Err(SessionError::Violation(violation)) => {
            shared.stats.inc(GatewayMetric::of_violation(&violation));
            warn!(
                topic = violation.topic().unwrap_or(""),
                %violation,
                "device violated the protocol or topic rules; connection closed"
            );
        }
        Err(SessionError::Io(error)) => debug!(%error, "connection closed by I/O error"),
    }
}

async fn session(
    shared: &Shared,
    tls: TlsStream<TcpStream>,
    identity: &ClientId,
    permit: Slot,
) -> Result<End, SessionError> {
    let (mut device_rx, mut device_tx) = tokio::io::split(tls);
    let mut inspector = Inspector::new(identity.clone(), shared.max_packet_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);

    // Wait for the CONNECT before touching the broker.
    let first = tokio::time::timeout(
        shared.connect_timeout,
        read_packet(&mut device_rx, &mut buf, &mut inspector),
    )
    .await;
    let connect = match first {
        Err(_) => return Ok(End::ConnectTimeout),
        Ok(Ok(Some(connect))) => connect,
        Ok(Ok(None)) => return Ok(End::DeviceClosed),
        Ok(Err(e)) => return Err(e),
    };
    drop(permit);

    let upstream = match tokio::time::timeout(
        shared.connect_timeout,
        TcpStream::connect(shared.upstream),
    )
    .await
    {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            warn!(upstream = %shared.upstream, %error, "broker unreachable; device connection closed");
            return Err(error.into());
        }
        Err(_) => {
            warn!(upstream = %shared.upstream, "broker connect timed out; device connection closed");
            return Ok(End::ConnectTimeout);
        }
    };
    let _ = upstream.set_nodelay(true);
    let (mut broker_rx, mut broker_tx) = upstream.into_split();
    broker_tx.write_all(&connect).await?;
    shared
        .stats
        .add(GatewayMetric::BytesUp, to_u64(connect.len()));
    let _live = LiveCount::new(&shared.stats);
    debug!("device connected");

    let up = async {
        let mut out = BytesMut::new();
        let mut throttle = Throttle::new(&shared.device_rate, Instant::now());
        let mut throttled_before = false;
        loop {
            while let Some(packet) = inspector.next(&mut buf)? {
                let publish = packet.first().is_some_and(|b| b >> 4 == PUBLISH_TYPE);
                let pause = throttle.charge(usize::from(publish), packet.len(), Instant::now());
                if !pause.is_zero() {
                    // Over its rate: forward what was within it, then stop
                    // reading until the debt is paid (TCP pushes back on the
                    // device); logged once per connection.
                    if !out.is_empty() {
                        broker_tx.write_all(&out).await?;
                        shared.stats.add(GatewayMetric::BytesUp, to_u64(out.len()));
                        out.clear();
                    }
                    shared.stats.inc(GatewayMetric::Throttled);
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
                shared.stats.add(GatewayMetric::BytesUp, to_u64(out.len()));
                out.clear();
            }
            buf.reserve(READ_CHUNK);
            if device_rx.read_buf(&mut buf).await? == 0 {
                return Ok::<_, SessionError>(End::DeviceClosed);
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
            device_tx.write_all(&chunk[..n]).await?;
            device_tx.flush().await?;
            shared.stats.add(GatewayMetric::BytesDown, to_u64(n));
        }
    };
    tokio::select! {
        result = up => result,
        result = down => result,
    }
}

/// MQTT 3.1.1 CONNACK: session present 0, return code 5 (not authorized).
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// Answers a revoked identity's CONNECT with CONNACK "not authorized" and
/// closes, so its agent can tell "revoked" from a network problem. Returns
/// whether the CONNACK was sent (the device may send garbage or nothing).
async fn refuse_not_authorized(
    shared: &Shared,
    tls: TlsStream<TcpStream>,
    identity: &ClientId,
) -> bool {
    let (mut device_rx, mut device_tx) = tokio::io::split(tls);
    let mut inspector = Inspector::new(identity.clone(), shared.max_packet_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let first = tokio::time::timeout(
        shared.connect_timeout,
        read_packet(&mut device_rx, &mut buf, &mut inspector),
    )
    .await;
    match first {
        Ok(Ok(Some(_connect))) => {}
        Ok(Ok(None)) | Err(_) => return false,
        Ok(Err(error)) => {
            debug!(%error, "revoked identity sent no valid CONNECT");
            return false;
        }
    }
    let sent = async {
        device_tx.write_all(&CONNACK_NOT_AUTHORIZED).await?;
        device_tx.flush().await?;
        device_tx.shutdown().await
    };
    match tokio::time::timeout(shared.connect_timeout, sent).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            debug!(%error, "could not send CONNACK to a revoked identity");
            false
        }
        Err(_) => false,
    }
}

/// Reads until `inspector` yields a packet; `None` if the device closed first.
async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    inspector: &mut Inspector,
) -> Result<Option<bytes::Bytes>, SessionError> {
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
