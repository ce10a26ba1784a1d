//! The embedded rumqttd on an authenticated loopback port, plus the two
//! relays in front of it: the device gateway and the operator's read-only
//! listener ([`crate::observer`]).

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

use crate::config::{BrokerConfig, Limits, INTERNAL_USERNAME};
use crate::error::{BrokerError, Listener};
use crate::fd_reserve::FdReserve;
use crate::gateway::Gateway;
use crate::inspect::Login;
use crate::observer::{ObserverListener, ObserverSettings};
use crate::relay::Upstream;
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
    /// Validates `config`, binds the operator's read-only listener and the
    /// gateway (if configured), checks the internal listener's address,
    /// starts rumqttd on its own thread with a login required on that
    /// address and waits until it is proven to be this broker's (a nonce
    /// published there reaches its in-process link), then starts serving.
    /// A taken address is an error naming the listener and its
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
                "read-only MQTT listener on a non-loopback address: anyone who reaches it reads the fleet's traffic"
            );
        }
        // Every listener is bound (or its address checked) before rumqttd
        // starts: a taken port is a start error naming it, never a line in
        // rumqttd's log while we talk to whatever holds the port.
        let internal_addr = probe_bind(config.internal.listen)?;
        let login = Login {
            username: INTERNAL_USERNAME.to_string(),
            password: config
                .internal
                .password
                .clone()
                .unwrap_or_else(|| random_hex(24)),
        };
        let upstream = Upstream {
            addr: internal_addr,
            login: Some(login.clone()),
        };
        let stats = Arc::new(GatewayStats::default());
        let fd_reserve = Arc::new(FdReserve::new(config.limits.fd_reserve));
        let observer = ObserverListener::bind(ObserverSettings {
            listen: config.mqtt.listen,
            upstream: upstream.clone(),
            connect_timeout: config.limits.connection_timeout,
            max_packet_bytes: config.limits.max_payload_bytes,
            max_connections: config.mqtt.max_connections,
            stats: Arc::clone(&stats),
        })
        .await?;
        let revocations = Revocations::new();
        let gateway = match config.gateway {
            None => None,
            Some(gateway_config) => Some(
                Gateway::bind_with_stats(
                    gateway_config,
                    upstream.clone(),
                    revocations.clone(),
                    Arc::clone(&stats),
                    Arc::clone(&fd_reserve),
                )
                .await?,
            ),
        };
        let mut broker =
            rumqttd::Broker::new(rumqttd_config(internal_addr, &config.limits, &login));
        let link = broker
            .link(VERIFY_LINK)
            .map_err(|e| BrokerError::NotReady {
                addr: internal_addr,
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
                listener: Listener::Internal,
                addr: internal_addr,
                source: std::io::Error::other("rumqttd's listener stopped at start (its log says why)"),
            }),
            verified = verify_own_listener(&upstream, link) => verified?,
        }
        info!(%internal_addr, "embedded rumqttd accepting (login required)");

        let shutdown = CancellationToken::new();
        let mqtt_addr = observer.local_addr();
        let mut tasks = vec![tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                observer.run(shutdown).await;
                Ok(())
            }
        })];
        let gateway_addr = match gateway {
            None => None,
            Some(gateway) => {
                let addr = gateway.local_addr();
                tasks.push(tokio::spawn(gateway.run(shutdown.clone())));
                Some(addr)
            }
        };
        Ok(BrokerHandle {
            mqtt_addr,
            upstream,
            gateway_addr,
            revocations,
            stats,
            fd_reserve,
            shutdown,
            tasks,
        })
    }
}

/// A running broker. Dropping it leaves everything running; call
/// [`BrokerHandle::shutdown`] to stop the gateway.
#[derive(Debug)]
pub struct BrokerHandle {
    mqtt_addr: SocketAddr,
    upstream: Upstream,
    gateway_addr: Option<SocketAddr>,
    revocations: Revocations,
    stats: Arc<GatewayStats>,
    fd_reserve: Arc<FdReserve>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<Result<(), BrokerError>>>,
}

impl BrokerHandle {
    /// The operator's read-only MQTT address (the real port when
    /// configured with 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// rumqttd's internal listener and its login: where the manager's own
    /// session connects (and where another relay would).
    pub fn upstream(&self) -> Upstream {
        self.upstream.clone()
    }

    /// The device gateway's address, if one is configured.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway_addr
    }

    /// The gateway's revocation set (shared: changes apply at once).
    pub fn revocations(&self) -> Revocations {
        self.revocations.clone()
    }

    /// The process's descriptor reserve ([`FdReserve`]): the manager's
    /// HTTPS listener shares it with the gateway.
    pub fn fd_reserve(&self) -> Arc<FdReserve> {
        Arc::clone(&self.fd_reserve)
    }

    /// The counters of the gateway and the read-only listener.
    pub fn stats(&self) -> Arc<GatewayStats> {
        Arc::clone(&self.stats)
    }

    /// Stops the gateway and the read-only listener: closes them and every
    /// connection they relay, and waits for their tasks. The embedded
    /// rumqttd cannot be stopped (rumqttd 0.20 has no shutdown); its
    /// threads and internal listener live until the process exits.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => error!(%error, "broker listener failed"),
                Err(error) => error!(%error, "broker listener task panicked"),
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
        listener: Listener::Internal,
        addr: listen,
        source,
    };
    let probe = StdTcpListener::bind(listen).map_err(bind_error)?;
    probe.local_addr().map_err(bind_error)
}

/// The rumqttd configuration: one MQTT 3.1.1 server, our limits, `login`
/// required of every client.
fn rumqttd_config(listen: SocketAddr, limits: &Limits, login: &Login) -> rumqttd::Config {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: u16::try_from(limits.connection_timeout.as_millis())
            .unwrap_or(u16::MAX),
        max_payload_size: limits.max_payload_bytes,
        max_inflight_count: usize::from(limits.max_inflight),
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let expected = login.clone();
    connections.set_auth_handler(move |_client_id, username: String, password: String| {
        let ok = username == expected.username
            && constant_time_eq(password.as_bytes(), expected.password.as_bytes());
        async move { ok }
    });
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

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Proves that `upstream` is served by the rumqttd behind `link` (its
/// in-process link): an MQTT client there publishes a fresh random nonce
/// on a topic only the link subscribes to, until the link hears it. A
/// foreign broker (or anything else) on the port never delivers it there.
async fn verify_own_listener(
    upstream: &Upstream,
    (mut link_tx, mut link_rx): (LinkTx, LinkRx),
) -> Result<(), BrokerError> {
    let addr = upstream.addr;
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
    if let Some(login) = &upstream.login {
        options.set_credentials(&login.username, &login.password);
    }
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
        listener: Listener::Internal,
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
        let login = Login {
            username: INTERNAL_USERNAME.into(),
            password: random_hex(8),
        };
        let upstream = Upstream {
            addr,
            login: Some(login.clone()),
        };
        let mut serving = rumqttd::Broker::new(rumqttd_config(addr, &Limits::default(), &login));
        let serving_link = serving.link(VERIFY_LINK).expect("link");
        std::thread::spawn(move || {
            let _ = serving.start();
        });
        verify_own_listener(&upstream, serving_link)
            .await
            .expect("the serving broker's own listener");

        // A second router (never listening), asking about the first one's port.
        let other = rumqttd::Broker::new(rumqttd_config(addr, &Limits::default(), &login));
        let other_link = other.link(VERIFY_LINK).expect("link");
        let error = verify_own_listener(&upstream, other_link)
            .await
            .expect_err("not the other broker's listener");
        assert!(
            matches!(
                error,
                BrokerError::NotOurs {
                    listener: Listener::Internal,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("[internal] listen"), "{error}");
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(constant_time_eq(b"", b""));
    }
}
