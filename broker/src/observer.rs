//! The operator's loopback listener (`[mqtt] listen`, default
//! 127.0.0.1:1883): read-only MQTT for MQTT Explorer, `mosquitto_sub` and
//! scripts (issue 12, finding 2).
//!
//! rumqttd itself listens only on the authenticated internal port, which
//! the manager and the gateway reach with the per-start login. This
//! listener relays each observer to that port under the observer policy of
//! [`Inspector::observer`]: SUBSCRIBE anywhere, never PUBLISH, no last will,
//! always a clean session, and a client id under
//! [`crate::inspect::OBSERVER_PREFIX`], so a local user can neither write
//! (desired state, presence) nor take over the manager's or a device's
//! session.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::accept;
use crate::error::{BrokerError, Listener};
use crate::inspect::Inspector;
use crate::relay::{End, Relay, SessionError, Upstream};
use crate::slots::{Slot, SourceSlots};
use crate::stats::{GatewayMetric, GatewayStats};

/// The bound read-only listener.
pub(crate) struct ObserverListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: Upstream,
    connect_timeout: Duration,
    max_packet_bytes: usize,
    /// Connections from accept until their CONNECT.
    pending: SourceSlots,
    /// Connections from accept until they close.
    open: SourceSlots,
    /// Numbers observer connections (part of their client ids).
    connections: AtomicU64,
    stats: Arc<GatewayStats>,
}

/// How the listener is set up.
pub(crate) struct ObserverSettings {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub connect_timeout: Duration,
    pub max_packet_bytes: usize,
    pub max_connections: usize,
    pub stats: Arc<GatewayStats>,
}

impl ObserverListener {
    /// Binds `settings.listen`; a taken address is an error naming
    /// `[mqtt] listen`.
    pub(crate) async fn bind(settings: ObserverSettings) -> Result<Self, BrokerError> {
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| BrokerError::Bind {
                    listener: Listener::Mqtt,
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        let max = settings.max_connections;
        Ok(Self {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                upstream: settings.upstream,
                connect_timeout: settings.connect_timeout,
                max_packet_bytes: settings.max_packet_bytes,
                pending: SourceSlots::new(max, max),
                open: SourceSlots::new(max, max),
                connections: AtomicU64::new(0),
                stats: settings.stats,
            }),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves observers until `shutdown` is cancelled.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        info!(listen = %self.local_addr, "read-only MQTT listener for operators serving");
        let tracker = TaskTracker::new();
        loop {
            let Some((socket, peer)) =
                accept::next(&self.listener, &shutdown, "read-only MQTT").await
            else {
                break;
            };
            let slots = self
                .shared
                .open
                .try_take(peer.ip())
                .and_then(|open| Ok((open, self.shared.pending.try_take(peer.ip())?)));
            let Ok((open, pending)) = slots else {
                self.shared.stats.inc(GatewayMetric::ObserverRefusedCap);
                debug!(%peer, "read-only listener at its connection cap; connection closed");
                continue;
            };
            let shared = Arc::clone(&self.shared);
            let token = shutdown.child_token();
            tracker.spawn(
                observe(shared, socket, open, pending, token)
                    .instrument(tracing::info_span!("observer", %peer)),
            );
        }
        tracker.close();
        tracker.wait().await;
    }
}

async fn observe(
    shared: Arc<Shared>,
    socket: TcpStream,
    _open: Slot,
    pending: Slot,
    token: CancellationToken,
) {
    let _ = socket.set_nodelay(true);
    let relay = Relay {
        upstream: &shared.upstream,
        connect_timeout: shared.connect_timeout,
        rate: None,
        stats: None,
    };
    let connection = shared
        .connections
        .fetch_add(1, Ordering::Relaxed)
        .to_string();
    let inspector = Inspector::observer(connection, shared.max_packet_bytes)
        .with_login(shared.upstream.login.clone());
    shared.stats.inc(GatewayMetric::ObserverAccepted);
    let result = tokio::select! {
        () = token.cancelled() => Ok(End::Cancelled),
        result = relay.session(socket, inspector, pending) => result,
    };
    match result {
        Ok(end) => debug!(?end, "observer connection closed"),
        Err(SessionError::Violation(violation)) => {
            shared.stats.inc(GatewayMetric::ObserverViolation);
            warn!(
                %violation,
                "client on the read-only MQTT listener tried to write; connection closed \
                 (this listener is for observers: subscribe only)"
            );
        }
        Err(SessionError::Io(error)) => debug!(%error, "observer connection closed by I/O error"),
    }
}
