//! The embedded rumqttd on loopback, plus the device gateway in front of it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{BrokerConfig, Limits};
use crate::error::BrokerError;
use crate::gateway::Gateway;
use crate::revocation::Revocations;
use crate::stats::GatewayStats;

/// How long rumqttd gets to start accepting connections.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const READY_POLL: Duration = Duration::from_millis(20);

/// Starts rumqttd and the gateway.
pub struct EmbeddedBroker;

impl EmbeddedBroker {
    /// Validates `config`, starts rumqttd on its own thread and waits until
    /// its loopback listener accepts connections, then binds the gateway (if
    /// configured) and starts serving devices. Returns when both accept.
    ///
    /// rumqttd 0.20 cannot be stopped: its threads live until the process
    /// exits, so call this once per process (tests may start several brokers
    /// on different ports; each leaks its threads).
    pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        config.validate()?;
        if !config.mqtt.listen.ip().is_loopback() {
            warn!(
                listen = %config.mqtt.listen,
                "plain MQTT listener on a non-loopback address: no authentication, no ACLs"
            );
        }
        let mqtt_addr = resolve_port(config.mqtt.listen)?;
        let rumqttd_config = rumqttd_config(mqtt_addr, &config.limits);
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(rumqttd_config);
                if let Err(error) = broker.start() {
                    error!(%error, "embedded rumqttd stopped");
                }
            })?;
        wait_until_accepting(mqtt_addr).await?;
        info!(%mqtt_addr, "embedded rumqttd accepting");

        let revocations = Revocations::new();
        let shutdown = CancellationToken::new();
        let (gateway_addr, stats, task) = match config.gateway {
            None => (None, Arc::new(GatewayStats::default()), None),
            Some(gateway_config) => {
                let gateway = Gateway::bind(gateway_config, mqtt_addr, revocations.clone()).await?;
                let addr = gateway.local_addr();
                let stats = gateway.stats();
                let task = tokio::spawn(gateway.run(shutdown.clone()));
                (Some(addr), stats, Some(task))
            }
        };
        Ok(BrokerHandle {
            mqtt_addr,
            gateway_addr,
            revocations,
            stats,
            shutdown,
            gateway_task: task,
        })
    }
}

/// A running broker. Dropping it leaves everything running; call
/// [`BrokerHandle::shutdown`] to stop the gateway.
#[derive(Debug)]
pub struct BrokerHandle {
    mqtt_addr: SocketAddr,
    gateway_addr: Option<SocketAddr>,
    revocations: Revocations,
    stats: Arc<GatewayStats>,
    shutdown: CancellationToken,
    gateway_task: Option<JoinHandle<Result<(), BrokerError>>>,
}

impl BrokerHandle {
    /// The plain loopback MQTT address (the real port when configured with 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The device gateway's address, if one is configured.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway_addr
    }

    /// The gateway's revocation set (shared: changes apply at once).
    pub fn revocations(&self) -> Revocations {
        self.revocations.clone()
    }

    /// The gateway's counters (all zero without a gateway).
    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.stats)
    }

    /// Stops the gateway: closes its listener and every device connection,
    /// and waits for its tasks. The embedded rumqttd cannot be stopped
    /// (rumqttd 0.20 has no shutdown); its threads and loopback listener live
    /// until the process exits.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Some(task) = self.gateway_task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => error!(%error, "device gateway failed"),
                Err(error) => error!(%error, "device gateway task panicked"),
            }
        }
    }
}

/// Port 0 → a free port, found by binding and releasing it (rumqttd binds
/// internally and does not report the port it got).
fn resolve_port(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let probe = StdTcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    Ok(probe.local_addr()?)
}

/// The rumqttd configuration: one MQTT 3.1.1 server, our limits.
fn rumqttd_config(listen: SocketAddr, limits: &Limits) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: u16::try_from(limits.connection_timeout.as_millis())
            .unwrap_or(u16::MAX),
        max_payload_size: limits.max_payload_bytes,
        max_inflight_count: usize::from(limits.max_inflight),
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "margo-v4".into(),
        listen,
        tls: None,
        // rumqttd sleeps this long after every accept; the gateway already
        // paces devices, so don't slow down a fleet reconnecting at once.
        next_connection_delay_ms: 0,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: limits.max_connections,
            max_outgoing_packet_count: limits.max_outgoing_packet_count,
            max_segment_size: limits.max_segment_bytes,
            max_segment_count: limits.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("margo".to_string(), server)])),
        ..Default::default()
    }
}

/// Polls a TCP connect until rumqttd accepts or the deadline passes.
async fn wait_until_accepting(addr: SocketAddr) -> Result<(), BrokerError> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let last_error = match TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        if Instant::now() >= deadline {
            return Err(BrokerError::NotReady {
                addr,
                reason: format!("no listener after {READY_DEADLINE:?}: {last_error}"),
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}
