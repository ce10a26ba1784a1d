//! The manager's one MQTT connection (rumqttc).
//!
//! [`Connection`] owns the rumqttc event loop: it reconnects with exponential
//! backoff and jitter, hands every uplink publish ([`RawUplink`]) to ingest
//! over a bounded channel, and after every ConnAck calls its `on_connected`
//! hook (the manager asks the publisher to resubscribe and republish all
//! retained desired state and remote configs). Ingest and the publisher both
//! depend on this module, not on each other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use margo_metrics::{metric_set, Stats};
use margo_schemas::topics;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// MQTT client id of the manager.
pub const MANAGER_CLIENT_ID: &str = "margo-manager";
/// Keep-alive of the manager's connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Longest connection attempt to the broker (TCP, TLS, CONNECT/CONNACK).
/// rumqttc's default is 5 s; after a broker restart the broker works
/// through every device's handshake as well, and an attempt abandoned at
/// 5 s only queues another (docs/benchmarks.md, reconnect storm).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Capacity of rumqttc's request channel.
pub const REQUEST_CAPACITY: usize = 10_000;
/// Most unacknowledged QoS 1 publishes in flight.
pub const INFLIGHT: u16 = 100;
/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One publish received from the broker.
#[derive(Debug, Clone)]
pub struct RawUplink {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
}

/// Where the manager's MQTT connection goes.
#[derive(Clone)]
pub struct MqttTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS (trust anchors and the manager's client certificate), or plain MQTT.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// User name and password, if the broker wants them (the embedded
    /// broker's internal listener always does).
    pub login: Option<margo_broker::Login>,
}

impl std::fmt::Debug for MqttTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("login", &self.login)
            .finish()
    }
}

/// The manager's network options: `base` with [`CONNECT_TIMEOUT`].
pub fn network_options(mut base: rumqttc::NetworkOptions) -> rumqttc::NetworkOptions {
    base.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
    base
}

/// rumqttc options for the manager: persistent session, QoS 1, large request channel.
pub fn mqtt_options(target: &MqttTarget) -> MqttOptions {
    let mut opts = MqttOptions::new(MANAGER_CLIENT_ID, target.host.clone(), target.port);
    opts.set_keep_alive(KEEP_ALIVE);
    opts.set_clean_session(false);
    opts.set_request_channel_capacity(REQUEST_CAPACITY);
    opts.set_inflight(INFLIGHT);
    // Never let one oversized packet kill the connection (it would be
    // redelivered forever on a persistent session): accept what MQTT allows
    // and let ingest reject it by size.
    opts.set_max_packet_size(268_435_455, 268_435_455);
    if let Some(login) = &target.login {
        opts.set_credentials(&login.username, &login.password);
    }
    if let Some(tls) = &target.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::clone(tls)),
        ));
    }
    opts
}

metric_set! {
    /// Metrics of the MQTT link and the publisher.
    pub enum LinkMetric {
        gauge "margo_mqtt_link_connected",
            "1 while the manager's MQTT connection to the broker is up, else 0." {
            /// Connected now (1) or not (0).
            Connected() => "connected",
        }
        counter "margo_mqtt_link_connects_total", "CONNACKs received (first connect and every reconnect)." {
            /// ConnAcks received.
            Connects() => "connects",
        }
        counter "margo_mqtt_link_connection_errors_total",
            "Failed connection attempts and dropped connections to the broker." {
            /// Failed connection attempts and dropped connections.
            ConnectionErrors() => "connectionErrors",
        }
        counter "margo_mqtt_link_retained_cleared_total",
            "Retained messages devices left on uplink topics (external broker), cleared by the manager." {
            /// Retained uplink messages cleared.
            RetainedCleared() => "retainedCleared",
        }
        counter "margo_publisher_published_total", "Downlink messages published (including clears)." {
            /// Messages published.
            Published() => "published",
        }
        counter "margo_publisher_republish_all_total", "Full republishes of every client (after a reconnect)." {
            /// Full republishes.
            RepublishAll() => "republishAll",
        }
        counter "margo_publisher_errors_total",
            "Publish work that failed (retried on the next request or reconnect)." {
            /// Failed publish work.
            PublishErrors() => "publishErrors",
        }
    }
}

/// The link's and the publisher's values of [`LinkMetric`].
pub type LinkStats = Stats<LinkMetric>;

// ---- the event loop -----------------------------------------------------------

/// Owns the rumqttc event loop.
pub struct Connection {
    eventloop: EventLoop,
    uplink: mpsc::Sender<RawUplink>,
    on_connected: Box<dyn FnMut() + Send>,
    connected: watch::Sender<bool>,
    stats: Arc<LinkStats>,
    retained: RetainedClearer,
}

impl Connection {
    /// Wraps `eventloop`; uplink publishes go to `uplink`; `on_connected`
    /// runs after every ConnAck (the manager asks the publisher to
    /// resubscribe and republish).
    pub fn new(
        eventloop: EventLoop,
        uplink: mpsc::Sender<RawUplink>,
        on_connected: impl FnMut() + Send + 'static,
        connected: watch::Sender<bool>,
        stats: Arc<LinkStats>,
    ) -> Self {
        Self {
            eventloop,
            uplink,
            on_connected: Box::new(on_connected),
            connected,
            stats,
            retained: RetainedClearer::default(),
        }
    }

    /// Clears, through `client`, every retained message a device left on
    /// an uplink topic (issue 12, finding 1).
    pub fn clearing_retained_with(mut self, client: AsyncClient) -> Self {
        self.retained.client = Some(client);
        self
    }

    /// Polls until `shutdown`; reconnects with exponential backoff and jitter.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = BACKOFF_MIN;
                    self.stats.inc(LinkMetric::Connects);
                    info!(
                        session_present = ack.session_present,
                        "connected to the broker"
                    );
                    self.connected.send_replace(true);
                    self.stats.set(LinkMetric::Connected, 1);
                    (self.on_connected)();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if publish.retain {
                        self.retained
                            .check(&publish.topic, &publish.payload, &self.stats);
                    }
                    let raw = RawUplink {
                        topic: publish.topic,
                        payload: publish.payload,
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        sent = self.uplink.send(raw) => {
                            if sent.is_err() {
                                debug!("ingest stopped; connection task ends");
                                break;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    self.stats.inc(LinkMetric::ConnectionErrors);
                    self.connected.send_replace(false);
                    self.stats.set(LinkMetric::Connected, 0);
                    // Jitter: between half and the full delay.
                    let millis = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
                    let delay = Duration::from_millis(millis / 2 + fastrand::u64(0..=millis / 2));
                    warn!(%error, retry_in = ?delay, "MQTT connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.connected.send_replace(false);
        self.stats.set(LinkMetric::Connected, 0);
    }
}

/// Most retained-message clears logged (one line each); later ones are only
/// counted, so a device cannot flood the log.
const CLEARS_LOGGED: u64 = 20;

/// Clears retained messages devices leave on their uplink topics: the
/// gateway refuses them, but an external broker's ACL cannot (Mosquitto).
/// A retained message reaches the manager with the retain flag when it
/// subscribes (every connect, and every `[broker] retained_sweep`).
#[derive(Default)]
struct RetainedClearer {
    client: Option<AsyncClient>,
    cleared: u64,
}

impl RetainedClearer {
    fn check(&mut self, topic: &str, payload: &Bytes, stats: &LinkStats) {
        let Some(client) = &self.client else { return };
        if payload.is_empty()
            || !topics::is_device_uplink(topic)
            || topics::device_may_retain(topic, payload.len())
        {
            return;
        }
        self.cleared += 1;
        stats.inc(LinkMetric::RetainedCleared);
        if self.cleared <= CLEARS_LOGGED {
            warn!(
                topic,
                bytes = payload.len(),
                cleared = self.cleared,
                "a device left a retained message on its uplink topic; clearing it{}",
                if self.cleared == CLEARS_LOGGED {
                    " (further clears are not logged)"
                } else {
                    ""
                }
            );
        }
        if let Err(error) = client.try_publish(topic, QoS::AtLeastOnce, true, Bytes::new()) {
            warn!(topic, %error, "could not queue the clear of a retained message");
        }
    }
}
