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
use std::time::Duration;

use bytes::BytesMut;
use margo_schemas::ids::ClientId;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::accept;
use crate::clones;
use crate::config::GatewayConfig;
use crate::error::{BrokerError, Listener};
use crate::fd_reserve::{fd_of, FdReserve};
use crate::inspect::Inspector;
use crate::rate::DeviceRate;
use crate::relay::{read_packet, End, Relay, SessionError, Upstream, READ_CHUNK};
use crate::revocation::{LiveRefusal, Revocations};
use crate::slots::{Slot, SlotRefusal, SourceSlots};
use crate::stats::{GatewayMetric, GatewayStats, HandshakeOutcome, Refusal};
use crate::tls::{self, accept_with_deadline, Handshake};

/// A bound device gateway, not yet serving. Build with [`Gateway::bind`],
/// read [`Gateway::local_addr`], then [`Gateway::run`] it.
pub struct Gateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    acceptor: TlsAcceptor,
    upstream: Upstream,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    max_packet_bytes: usize,
    device_rate: DeviceRate,
    revocations: Revocations,
    stats: Arc<GatewayStats>,
    /// Connections in progress: from accept until their CONNECT arrives.
    pending: SourceSlots,
    max_per_identity: usize,
    fd_reserve: Arc<FdReserve>,
}

impl Gateway {
    /// Validates `cfg`, builds the TLS config and binds the listener.
    /// `upstream` is the broker the gateway relays to (its internal
    /// listener and login; a bare address for a broker without login).
    pub async fn bind(
        cfg: GatewayConfig,
        upstream: impl Into<Upstream>,
        revocations: Revocations,
    ) -> Result<Self, BrokerError> {
        let reserve = Arc::new(FdReserve::new(crate::Limits::default().fd_reserve));
        Self::bind_with_stats(cfg, upstream, revocations, Arc::default(), reserve).await
    }

    /// Like [`Gateway::bind`], counting into `stats` (shared with the
    /// embedded broker's read-only listener) and sharing the process's
    /// descriptor reserve.
    pub(crate) async fn bind_with_stats(
        cfg: GatewayConfig,
        upstream: impl Into<Upstream>,
        revocations: Revocations,
        stats: Arc<GatewayStats>,
        fd_reserve: Arc<FdReserve>,
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
                upstream: upstream.into(),
                handshake_timeout: cfg.handshake_timeout,
                connect_timeout: cfg.connect_timeout,
                max_packet_bytes: cfg.max_packet_bytes,
                device_rate: cfg.device_rate,
                revocations,
                stats,
                pending: SourceSlots::new(cfg.max_pending_handshakes, cfg.max_pending_per_ip),
                max_per_identity: cfg.max_connections_per_identity,
                fd_reserve,
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
        info!(listen = %self.local_addr, upstream = %self.shared.upstream.addr, "device gateway serving");
        let tracker = TaskTracker::new();
        loop {
            let Some((socket, peer)) =
                accept::next(&self.listener, &shutdown, "device gateway").await
            else {
                break;
            };
            self.shared.stats.inc(GatewayMetric::Accepted);
            if !self.shared.fd_reserve.admits(fd_of(&socket), peer.ip()) {
                self.shared.stats.inc(Refusal::FdReserve.metric());
                debug!(%peer, "near the open-file limit: only known sources get in; connection closed");
                continue;
            }
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
    upstream: impl Into<Upstream>,
    revocations: Revocations,
    shutdown: CancellationToken,
) -> Result<(), BrokerError> {
    Gateway::bind(cfg, upstream, revocations)
        .await?
        .run(shutdown)
        .await
}

async fn handle_connection(
    shared: Arc<Shared>,
    socket: TcpStream,
    permit: Slot,
    token: CancellationToken,
) {
    let peer = socket.peer_addr().ok().map(|a| a.ip());
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
    relay_device(shared, tls, identity, peer, permit, token)
        .instrument(span)
        .await;
}

/// Relays a device's session. `permit` holds its place among the
/// connections in progress until its CONNECT arrives, so sockets that finish
/// TLS and then stay silent count against the pending caps too.
async fn relay_device(
    shared: Arc<Shared>,
    tls: TlsStream<TcpStream>,
    identity: ClientId,
    peer: Option<std::net::IpAddr>,
    permit: Slot,
    token: CancellationToken,
) {
    let registered =
        shared
            .revocations
            .register_live(&identity, token.clone(), shared.max_per_identity);
    let _live = match registered {
        Ok(live) => {
            // A device of the fleet: its network keeps a place when
            // descriptors run short.
            if let Some(peer) = peer {
                shared.fd_reserve.mark_known(peer);
            }
            live
        }
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
    let (_watched, suspected) =
        clones::watch_connection(&shared.revocations.clones(), &identity, peer);
    if suspected {
        shared.stats.inc(GatewayMetric::ClonesSuspected);
    }
    let relay = Relay {
        upstream: &shared.upstream,
        connect_timeout: shared.connect_timeout,
        rate: Some(&shared.device_rate),
        stats: Some(&shared.stats),
    };
    let inspector = Inspector::new(identity.clone(), shared.max_packet_bytes)
        .with_login(shared.upstream.login.clone());
    let result = tokio::select! {
        () = token.cancelled() => Ok(End::Cancelled),
        result = relay.session(tls, inspector, permit) => result,
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
