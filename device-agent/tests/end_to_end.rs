//! End to end: the agent library against the embedded broker behind the
//! device gateway (mutual TLS 1.3), with this test acting as the manager on
//! the loopback listener: it publishes a retained signed manifest and
//! deployment, verifies the agent's uplink and acks it.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use margo_agent::{Agent, AgentConfig, AgentOptions, Store};
use margo_broker::{BrokerConfig, EmbeddedBroker, GatewayConfig, Upstream};
use margo_schemas::cose::{SigningKey, VerifyingKey};
use margo_schemas::ids::ClientId;
use margo_schemas::messages::{Envelope, Message, SyncReason};
use margo_schemas::pki;
use margo_schemas::status::DeploymentState;
use margo_schemas::topics;
use margo_testkit::{eventually, within};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const CLIENT: &str = "dev42";

/// What the fake manager saw.
#[derive(Debug, Default)]
struct Seen {
    statuses: Vec<(String, DeploymentState, u64)>,
    syncs: Vec<SyncReason>,
    states: usize,
    /// Device ids of the capabilities reports, in arrival order.
    capabilities: Vec<String>,
    presence: Vec<String>,
    seqs: BTreeSet<u64>,
    acked: u64,
    rejected: usize,
    /// Broker acknowledgements of the manager's own publishes.
    pubacks: usize,
}

/// A minimal manager: verifies uplink with the device's key, acks the highest contiguous seq.
fn spawn_manager(
    mqtt: Upstream,
    client: ClientId,
    device_key: VerifyingKey,
    signer: Arc<SigningKey>,
    manifest_version: u64,
    retained: Vec<(String, Vec<u8>)>,
) -> Manager {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = Arc::clone(&seen);
    let mut options =
        MqttOptions::new("test-manager", mqtt.addr.ip().to_string(), mqtt.addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    if let Some(login) = &mqtt.login {
        options.set_credentials(&login.username, &login.password);
    }
    options.set_max_packet_size(2 << 20, 2 << 20);
    let (mqtt_client, mut eventloop) = AsyncClient::new(options, 64);
    let handle = mqtt_client.clone();
    let manifest_version = Arc::new(std::sync::atomic::AtomicU64::new(manifest_version));
    let announced = Arc::clone(&manifest_version);
    tokio::spawn(async move {
        loop {
            let event = match eventloop.poll().await {
                Ok(e) => e,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    for leaf in ["status/+", "state", "sync", "presence", "capabilities"] {
                        let filter = format!(
                            "{}/{leaf}",
                            topics::presence(&client).trim_end_matches("/presence")
                        );
                        let _ = mqtt_client.try_subscribe(filter, QoS::AtLeastOnce);
                    }
                    for (topic, payload) in &retained {
                        let _ = mqtt_client.try_publish(
                            topic.clone(),
                            QoS::AtLeastOnce,
                            true,
                            payload.clone(),
                        );
                    }
                }
                Event::Incoming(Packet::PubAck(_)) => out.lock().expect("lock").pubacks += 1,
                Event::Incoming(Packet::Publish(p)) => {
                    let Some((owner, leaf)) = topics::parse_device_topic(&p.topic) else {
                        continue;
                    };
                    if owner != client {
                        continue;
                    }
                    let mut s = out.lock().expect("lock");
                    if leaf == topics::DeviceTopic::Presence {
                        s.presence
                            .push(String::from_utf8_lossy(&p.payload).to_string());
                        continue;
                    }
                    let env = match Envelope::open(&p.payload, 1 << 20, &device_key, &client, &leaf)
                    {
                        Ok(env) => env,
                        Err(_) => {
                            s.rejected += 1;
                            continue;
                        }
                    };
                    match &env.msg {
                        Message::Status(r) => s.statuses.push((
                            r.status.deployment_id.to_string(),
                            r.status.status.state,
                            r.adopted_manifest_version,
                        )),
                        Message::Sync(r) => s.syncs.push(r.reason),
                        Message::State(_) => s.states += 1,
                        Message::Capabilities(r) => s
                            .capabilities
                            .push(r.manifest.device_id().unwrap_or_default().to_string()),
                        _ => {}
                    }
                    s.seqs.insert(env.seq);
                    let mut hwm = s.acked.max(env.low.saturating_sub(1));
                    while s.seqs.contains(&(hwm + 1)) {
                        hwm += 1;
                    }
                    s.acked = hwm;
                    let announced = announced.load(std::sync::atomic::Ordering::Relaxed);
                    let (topic, payload) = ack_msg(&signer, &client, hwm, announced);
                    let _ = mqtt_client.try_publish(topic, QoS::AtLeastOnce, true, payload);
                }
                _ => {}
            }
        }
    });
    Manager {
        seen,
        mqtt: handle,
        announced: manifest_version,
    }
}

/// The fake manager's handles.
struct Manager {
    seen: Arc<Mutex<Seen>>,
    mqtt: AsyncClient,
    /// The manifest version announced in acks.
    announced: Arc<std::sync::atomic::AtomicU64>,
}

impl Manager {
    /// Publishes retained desired state and announces `version` in later acks.
    async fn publish(&self, version: u64, messages: Vec<(String, Vec<u8>)>) {
        self.announced
            .store(version, std::sync::atomic::Ordering::Relaxed);
        for (topic, payload) in messages {
            self.mqtt
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await
                .expect("queue publish");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_installs_reports_and_empties_its_outbox_through_the_gateway() {
    margo_schemas::pki::install_crypto_provider();
    let fleet = Fleet::new();
    let mut config = BrokerConfig::default();
    config.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    let mut gateway = GatewayConfig::new(fleet.gateway_tls());
    gateway.listen = "127.0.0.1:0".parse().expect("addr");
    config.gateway = Some(gateway);
    let broker = within(WAIT, "broker start", EmbeddedBroker::start(config))
        .await
        .expect("broker starts");
    let gw = broker.gateway_addr().expect("gateway");

    let pem = fleet.device(CLIENT, &format!("mqtts://127.0.0.1:{}", gw.port()));
    let client = pem.client_id.clone();
    let cert = pki::certs_from_pem(&pem.cert_pem, "client cert").expect("cert");
    let device_key = VerifyingKey::from_certificate(&cert[0]).expect("device key");

    let doc = yaml(
        "dep-e2e",
        "e2e-app",
        &[("web", "simulatedDelayMs: 50"), ("db", "")],
    );
    let m1 = manifest(1, &[&doc]);
    let signer = Arc::new(fleet.signer);
    let retained = vec![
        deployment_msg(&signer, &client, &doc),
        manifest_msg(&signer, &client, &m1),
        ack_msg(&signer, &client, 0, 1),
    ];
    let manager = spawn_manager(
        broker.upstream(),
        client.clone(),
        device_key,
        Arc::clone(&signer),
        1,
        retained,
    );
    let seen = Arc::clone(&manager.seen);
    // The retained desired state is in the broker before the device connects.
    eventually(WAIT, "manager published the retained desired state", || {
        seen.lock().expect("lock").pubacks >= 3
    })
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = AgentConfig {
        identity_dir: dir.path().join("identity"),
        data_dir: dir.path().join("data"),
        keep_alive: Duration::from_secs(5),
        ack_timeout: Duration::from_secs(2),
        capabilities: test_capabilities(),
        ..AgentConfig::default()
    };
    let runtime = sim();
    let agent = Agent::new(
        config,
        AgentOptions {
            identity: Some(margo_agent::identity::Identity::from_pem(pem).expect("identity")),
            runtime: Some(runtime.clone()),
            ..AgentOptions::default()
        },
    )
    .expect("agent");
    let handle = agent.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));

    let mut snapshots = handle.snapshots.clone();
    within(WAIT, "installed at version 1 with an empty outbox", async {
        loop {
            {
                let s = snapshots.borrow_and_update();
                let installed = s
                    .deployments
                    .get("dep-e2e")
                    .is_some_and(|d| d.state == DeploymentState::Installed);
                if s.connected && s.adopted_manifest_version == 1 && installed && s.outbox_len == 0
                {
                    break;
                }
            }
            if snapshots.changed().await.is_err() {
                panic!("agent stopped");
            }
        }
    })
    .await;

    {
        let s = seen.lock().expect("lock");
        let states: Vec<_> = s.statuses.iter().map(|(_, st, _)| *st).collect();
        assert_eq!(
            states,
            vec![DeploymentState::Installing, DeploymentState::Installed],
            "{s:?}"
        );
        assert!(s
            .statuses
            .iter()
            .all(|(id, _, v)| id == "dep-e2e" && *v == 1));
        assert_eq!(s.syncs.first(), Some(&SyncReason::Startup));
        assert!(s.states >= 1, "state report after the reconcile");
        assert_eq!(s.presence.first().map(String::as_str), Some("online"));
        assert_eq!(s.rejected, 0);
        assert!(s.acked >= 4);
        // Capabilities are reported once on start (id: the bundle name, sanitised).
        assert_eq!(
            s.capabilities,
            vec!["test-device-dev42".to_string()],
            "{s:?}"
        );
    }
    assert_eq!(runtime.apply_count("dep-e2e", "web"), 1);
    assert_eq!(runtime.apply_count("dep-e2e", "db"), 1);
    let stats = handle.stats.snapshot();
    assert_eq!(stats.rejected, 0);
    assert_eq!(stats.security_events, 0);
    assert_eq!(stats.connects, 1);

    shutdown.cancel();
    within(WAIT, "agent stops", task)
        .await
        .expect("join")
        .expect("clean stop");
    eventually(WAIT, "offline presence on clean shutdown", || {
        seen.lock()
            .expect("lock")
            .presence
            .last()
            .map(String::as_str)
            == Some("offline")
    })
    .await;
    assert_eq!(
        handle.snapshots.borrow().connection,
        margo_agent::ConnectionStatus::Stopped
    );

    // Restart on the same data dir: nothing is applied again, the version survives.
    let store = Store::open(&dir.path().join("data/agent.redb")).expect("reopen");
    assert_eq!(store.adopted_version().expect("read"), 1);
    assert!(store.outbox_load().expect("read").1.is_empty());
    broker.shutdown().await;
}

/// Waits until the snapshot satisfies `cond`.
async fn until(
    handle: &margo_agent::AgentHandle,
    what: &str,
    cond: impl Fn(&margo_agent::AgentSnapshot) -> bool,
) {
    let mut snapshots = handle.snapshots.clone();
    within(WAIT, what, async {
        loop {
            if cond(&snapshots.borrow_and_update()) {
                return;
            }
            if snapshots.changed().await.is_err() {
                panic!("agent stopped while waiting for: {what}");
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_with_backoff_and_catches_up_after_an_outage() {
    use margo_broker::{Gateway, Revocations};
    margo_schemas::pki::install_crypto_provider();
    let fleet = Fleet::new();
    let mut config = BrokerConfig::default();
    config.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    let broker = within(WAIT, "broker start", EmbeddedBroker::start(config))
        .await
        .expect("broker starts");
    let mut gateway_config = GatewayConfig::new(fleet.gateway_tls());
    gateway_config.listen = "127.0.0.1:0".parse().expect("addr");
    let gateway = Gateway::bind(
        gateway_config.clone(),
        broker.upstream(),
        Revocations::new(),
    )
    .await
    .expect("gateway binds");
    let gw = gateway.local_addr();
    let outage = CancellationToken::new();
    let first_gateway = tokio::spawn(gateway.run(outage.clone()));

    let pem = fleet.device("dev43", &format!("mqtts://127.0.0.1:{}", gw.port()));
    let client = pem.client_id.clone();
    let cert = pki::certs_from_pem(&pem.cert_pem, "client cert").expect("cert");
    let device_key = VerifyingKey::from_certificate(&cert[0]).expect("device key");
    let signer = Arc::new(fleet.signer);
    let a = yaml("dep-a", "app-a", &[("web", "")]);
    let manager = spawn_manager(
        broker.upstream(),
        client.clone(),
        device_key,
        Arc::clone(&signer),
        1,
        vec![
            deployment_msg(&signer, &client, &a),
            manifest_msg(&signer, &client, &manifest(1, &[&a])),
        ],
    );
    eventually(WAIT, "retained v1 published", || {
        manager.seen.lock().expect("lock").pubacks >= 2
    })
    .await;

    let config = AgentConfig {
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(400),
        keep_alive: Duration::from_secs(5),
        ack_timeout: Duration::from_secs(2),
        capabilities: test_capabilities(),
        ..AgentConfig::default()
    };
    let runtime = sim();
    let agent = Agent::new(
        config,
        AgentOptions {
            identity: Some(margo_agent::identity::Identity::from_pem(pem).expect("identity")),
            runtime: Some(runtime.clone()),
            store: Some(Store::in_memory().expect("store")),
            ..AgentOptions::default()
        },
    )
    .expect("agent");
    let handle = agent.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    until(&handle, "v1 adopted, outbox empty", |s| {
        s.connected && s.adopted_manifest_version == 1 && s.outbox_len == 0
    })
    .await;

    // Outage: the gateway goes away; the manager publishes v2 meanwhile.
    outage.cancel();
    first_gateway.await.expect("join").expect("gateway stops");
    until(&handle, "connection lost", |s| !s.connected).await;
    let b = yaml("dep-b", "app-b", &[("db", "")]);
    manager
        .publish(
            2,
            vec![
                deployment_msg(&signer, &client, &b),
                manifest_msg(&signer, &client, &manifest(2, &[&a, &b])),
            ],
        )
        .await;
    eventually(WAIT, "a few failed reconnects with backoff", || {
        handle
            .stats
            .connection_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    })
    .await;

    // The gateway comes back on the same port; the agent resumes and catches up.
    let gateway_config = GatewayConfig {
        listen: gw,
        ..gateway_config
    };
    let gateway = Gateway::bind(gateway_config, broker.upstream(), Revocations::new())
        .await
        .expect("gateway rebinds");
    let recovery = CancellationToken::new();
    let second_gateway = tokio::spawn(gateway.run(recovery.clone()));
    until(&handle, "v2 adopted after the outage, outbox empty", |s| {
        s.connected
            && s.adopted_manifest_version == 2
            && s.outbox_len == 0
            && s.deployments
                .get("dep-b")
                .is_some_and(|d| d.state == DeploymentState::Installed)
    })
    .await;
    {
        let s = manager.seen.lock().expect("lock");
        let b_states: Vec<_> = s
            .statuses
            .iter()
            .filter(|(id, _, _)| id == "dep-b")
            .map(|(_, st, v)| (*st, *v))
            .collect();
        assert_eq!(
            b_states,
            vec![
                (DeploymentState::Installing, 2),
                (DeploymentState::Installed, 2)
            ]
        );
    }
    assert_eq!(
        runtime.apply_count("dep-a", "web"),
        1,
        "unchanged deployment not reapplied"
    );
    assert_eq!(runtime.apply_count("dep-b", "db"), 1);
    assert!(handle.stats.snapshot().connects >= 2);

    shutdown.cancel();
    within(WAIT, "agent stops", task)
        .await
        .expect("join")
        .expect("clean stop");
    recovery.cancel();
    second_gateway.await.expect("join").expect("gateway stops");
    broker.shutdown().await;
}
