//! The embedded rumqttd on loopback, plus the device gateway in front of it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{BrokerConfig, Limits};
use crate::error::{BrokerError, Listener};
use crate::gateway::Gateway;
use crate::revocation::Revocations;
use crate::stats::GatewayStats;

/// How long rumqttd gets to start accepting connections.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const READY_POLL: Duration = Duration::from_millis(20);
/// The in-process client that proves the listener is ours.
const VERIFY_LINK: &str = "margo-broker-verify";
/// Topic prefix of that proof (a fresh random leaf each start).
const VERIFY_TOPIC: &str = "margo/v1/broker/verify";

/// Starts rumqttd and the gateway.
pub struct EmbeddedBroker;

impl EmbeddedBroker {
    /// Validates `config`, checks the plain listener's address and binds the
    /// gateway (if configured), starts rumqttd on its own thread and waits
    /// until its loopback listener is proven to be this broker's (a nonce
    /// published over TCP reaches its in-process link), then starts serving
    /// devices. A taken address is an error naming the listener and its
    /// configuration key ([`BrokerError::Bind`], [`BrokerError::NotOurs`]).
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
        // Every listener's address is checked (and the gateway bound) before
        // rumqttd starts: a taken port is a start error naming it, never a
        // line in rumqttd's log while we talk to whatever holds the port.
        let mqtt_addr = probe_bind(config.mqtt.listen)?;
        let revocations = Revocations::new();
        let gateway = match config.gateway {
            None => None,
            Some(gateway_config) => {
                Some(Gateway::bind(gateway_config, mqtt_addr, revocations.clone()).await?)
            }
        };
        let mut broker = rumqttd::Broker::new(rumqttd_config(mqtt_addr, &config.limits));
        let link = broker
            .link(VERIFY_LINK)
            .map_err(|e| BrokerError::NotReady {
                addr: mqtt_addr,
                reason: format!("in-process link: {e}"),
            })?;
        let (ended_tx, ended_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                // Returns only when its listener thread ended: at start, when
                // the bind failed (rumqttd only logs that).
                let result = broker.start();
                if let Err(error) = &result {
                    error!(%error, "embedded rumqttd stopped");
                }
                let _ = ended_tx.send(());
            })?;
        tokio::select! {
            _ = ended_rx => return Err(BrokerError::Bind {
                listener: Listener::Mqtt,
                addr: mqtt_addr,
                source: std::io::Error::other("rumqttd's listener stopped at start (its log says why)"),
            }),
            verified = verify_own_listener(mqtt_addr, link) => verified?,
        }
        info!(%mqtt_addr, "embedded rumqttd accepting");

        let shutdown = CancellationToken::new();
        let (gateway_addr, stats, task) = match gateway {
            None => (None, Arc::new(GatewayStats::default()), None),
            Some(gateway) => {
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

/// Binds `listen` once and releases it: a taken address is an error naming
/// it, and port 0 becomes a free port (rumqttd binds internally and does not
/// report the port it got). rumqttd binds it again right after; the small
/// race is closed by [`verify_own_listener`].
fn probe_bind(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let bind_error = |source| BrokerError::Bind {
        listener: Listener::Mqtt,
        addr: listen,
        source,
    };
    let probe = StdTcpListener::bind(listen).map_err(bind_error)?;
    probe.local_addr().map_err(bind_error)
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

/// Proves that `addr` is served by the rumqttd behind `link` (its
/// in-process link): an MQTT client on `addr` publishes a fresh random nonce
/// on a topic only the link subscribes to, until the link hears it. A
/// foreign broker (or anything else) on the port never delivers it there.
async fn verify_own_listener(
    addr: SocketAddr,
    (mut link_tx, mut link_rx): (LinkTx, LinkRx),
) -> Result<(), BrokerError> {
    let nonce = random_hex(16);
    let topic = format!("{VERIFY_TOPIC}/{nonce}");
    let deadline = Instant::now() + READY_DEADLINE;
    let heard = tokio::task::spawn_blocking({
        let (topic, nonce) = (topic.clone(), nonce.clone());
        move || {
            if link_tx.subscribe(topic).is_err() {
                return false;
            }
            loop {
                match link_rx.recv_deadline(deadline) {
                    Ok(Some(Notification::Forward(forward)))
                        if forward.publish.payload[..] == *nonce.as_bytes() =>
                    {
                        return true
                    }
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        }
    });
    let mut options = MqttOptions::new(
        format!("margo-broker-verify-{}", &nonce[..8]),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut tick = tokio::time::interval(READY_POLL * 5);
    let mut last_error = String::from("no answer");
    let publishing = async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = client.try_publish(&topic, QoS::AtMostOnce, false, nonce.clone());
                }
                event = eventloop.poll() => if let Err(error) = event {
                    last_error = error.to_string();
                    tokio::time::sleep(READY_POLL).await;
                },
            }
        }
    };
    let outcome = tokio::select! {
        heard = heard => heard.unwrap_or(false),
        () = publishing => false,
    };
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(READY_POLL * 5, eventloop.poll()).await;
    if outcome {
        return Ok(());
    }
    Err(BrokerError::NotOurs {
        listener: Listener::Mqtt,
        addr,
        reason: format!(
            "a probe published there never reached the embedded broker within {READY_DEADLINE:?} ({last_error})"
        ),
    })
}

/// `bytes` random bytes (the system CSPRNG), in lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The system generator does not fail on the platforms we run on; should
    // it, the time-based fallback still makes a per-start value.
    if SystemRandom::new().fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        buf.iter_mut()
            .zip(nanos.to_le_bytes().iter().cycle())
            .for_each(|(b, n)| *b = *n);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race [`probe_bind`] leaves open: another broker took the port.
    /// Its listener answers MQTT, but what is published there never reaches
    /// our in-process link.
    #[tokio::test]
    async fn only_the_broker_behind_the_link_passes_the_proof() {
        let addr = probe_bind("127.0.0.1:0".parse().expect("addr")).expect("free port");
        let mut serving = rumqttd::Broker::new(rumqttd_config(addr, &Limits::default()));
        let serving_link = serving.link(VERIFY_LINK).expect("link");
        std::thread::spawn(move || {
            let _ = serving.start();
        });
        verify_own_listener(addr, serving_link)
            .await
            .expect("the serving broker's own listener");

        // A second router (never listening), asking about the first one's port.
        let other = rumqttd::Broker::new(rumqttd_config(addr, &Limits::default()));
        let other_link = other.link(VERIFY_LINK).expect("link");
        let error = verify_own_listener(addr, other_link)
            .await
            .expect_err("not the other broker's listener");
        assert!(
            matches!(
                error,
                BrokerError::NotOurs {
                    listener: Listener::Mqtt,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("[mqtt] listen"), "{error}");
    }
}
