//! Remote schedules and availability against a real manager (embedded broker
//! and gateway, redb in a temp dir): `R/config` is retained, signed with the
//! fleet signing key and versioned; a bad schedule is refused and nothing is
//! stored or published; the config is republished after a restart and
//! cleared on revocation; a reported schedule shows in the client view and
//! drives `availability`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use margo_manager::admin::ProvisionedBundle;
use margo_manager::availability::Availability;
use margo_manager::{Manager, ManagerConfig, ManagerHandle};
use margo_schemas::cose::{SigningKey, VerifyingKey};
use margo_schemas::ids::ClientId;
use margo_schemas::messages::{
    DeviceConfig, Envelope, Message, ScheduleInForce, ScheduleSource, StateReport,
};
use margo_schemas::pki::{certs_from_pem, client_tls_config, pkcs8_from_pem};
use margo_schemas::schedule::Schedule;
use margo_schemas::topics;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

/// Per-check office hours in UTC.
const OFFICE: &str = r#"
time_zone = "UTC"
connection = "per-check"
[polling]
period = [{ start = "08:00", end = "18:00" }]
rate = "15m"
"#;

/// Always in planned downtime, whatever the wall clock says.
const ALWAYS_DOWN: &str = r#"
time_zone = "UTC"
[[downtime]]
kind = "daily"
start = "00:00"
end = "24:00"
"#;

fn schedule(text: &str) -> Schedule {
    toml::from_str(text).expect("test schedule parses")
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for: {what}"),
    }
}

async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    within(what, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn config(dir: &Path) -> ManagerConfig {
    let mut config = ManagerConfig::with_data_dir(dir);
    config.broker.mqtt_listen = "127.0.0.1:0".parse().expect("addr");
    config.broker.gateway_listen = "127.0.0.1:0".parse().expect("addr");
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.ingest.batch_interval = Duration::from_millis(5);
    config
}

async fn start(dir: &Path) -> ManagerHandle {
    within("manager start", Manager::start(config(dir)))
        .await
        .expect("manager starts")
}

type Publishes = mpsc::UnboundedReceiver<Result<rumqttc::Publish, String>>;

/// An MQTT connection that forwards every publish it receives.
async fn connect(opts: MqttOptions) -> (AsyncClient, Publishes) {
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut up = Some(up_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(up) = up.take() {
                        let _ = up.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    within("CONNACK", up_rx).await.expect("connected");
    (client, rx)
}

/// A fake device behind the gateway, subscribed to its config and ack.
struct Device {
    id: ClientId,
    client: AsyncClient,
    key: SigningKey,
    manager_key: VerifyingKey,
    publishes: Publishes,
    seq: u64,
}

impl Device {
    async fn connect(gateway: SocketAddr, bundle: &ProvisionedBundle) -> Self {
        let tls = client_tls_config(
            bundle.ca_pem.as_bytes(),
            Some((bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())),
        )
        .expect("device TLS config");
        let mut opts = MqttOptions::new(bundle.client_id.as_str(), "127.0.0.1", gateway.port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, publishes) = connect(opts).await;
        let id = bundle.client_id.clone();
        for topic in [topics::config(&id), topics::ack(&id)] {
            client
                .subscribe(topic, QoS::AtLeastOnce)
                .await
                .expect("subscribe");
        }
        let pkcs8 = pkcs8_from_pem(bundle.key_pem.as_bytes(), "device key").expect("key");
        let signing = certs_from_pem(bundle.signing_cert_pem.as_bytes(), "signing cert")
            .expect("signing cert")
            .remove(0);
        Self {
            id,
            client,
            key: SigningKey::from_pkcs8(&pkcs8).expect("device key"),
            manager_key: VerifyingKey::from_certificate(signing.as_ref()).expect("signing key"),
            publishes,
            seq: 0,
        }
    }

    /// The next verified downlink message (empty retained payloads skipped).
    async fn next(&mut self, what: &str) -> Message {
        let (id, key) = (self.id.clone(), self.manager_key.clone());
        within(what, async {
            loop {
                let publish = match self.publishes.recv().await {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => panic!("device connection failed waiting for {what}: {e}"),
                    None => panic!("device event loop ended waiting for {what}"),
                };
                if publish.payload.is_empty() {
                    continue;
                }
                let (client, topic) =
                    topics::parse_device_topic(&publish.topic).expect("a device topic");
                assert_eq!(client, id);
                let env = Envelope::open(&publish.payload, 1 << 20, &key, &id, &topic)
                    .expect("downlink verifies against the manager signing certificate");
                return env.msg;
            }
        })
        .await
    }

    /// The next signed config on `R/config` (acks in between are skipped).
    async fn next_config(&mut self, what: &str) -> DeviceConfig {
        loop {
            match self.next(what).await {
                Message::Config(c) => return c,
                Message::Ack(_) => continue,
                other => panic!("unexpected {} waiting for {what}", other.kind()),
            }
        }
    }

    /// Publishes a signed state report with `schedule` and waits for its ack.
    async fn report_state(&mut self, schedule: Option<ScheduleInForce>) {
        self.seq += 1;
        let env = Envelope::new(
            self.id.clone(),
            self.seq,
            margo_manager::store::now_ms(),
            Message::State(StateReport {
                adopted_manifest_version: 0,
                agent_version: "test".into(),
                deployments: vec![],
                schedule,
            }),
        );
        let payload = env.seal(&self.key).expect("seal");
        self.client
            .publish(topics::state(&self.id), QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish state");
        let seq = self.seq;
        loop {
            match self.next("ack of the state report").await {
                Message::Ack(a) if a.acked_seq >= seq => return,
                _ => continue,
            }
        }
    }

    async fn presence(&self, online: bool) {
        self.client
            .publish(
                topics::presence(&self.id),
                QoS::AtLeastOnce,
                true,
                if online { "online" } else { "offline" },
            )
            .await
            .expect("presence");
    }
}

/// What a new subscriber finds retained on `client`'s `R/config`: connects
/// on the loopback listener, verifies with the manager's signing key.
async fn retained_config(
    manager: &ManagerHandle,
    client: &ClientId,
    key: &VerifyingKey,
    name: &str,
) -> DeviceConfig {
    let port = manager.mqtt_addr().expect("embedded broker").port();
    let (watcher, mut publishes) = connect(MqttOptions::new(name, "127.0.0.1", port)).await;
    watcher
        .subscribe(topics::config(client), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let publish = within("the retained config", async {
        loop {
            match publishes.recv().await {
                Some(Ok(p)) if !p.payload.is_empty() => return p,
                Some(Ok(_)) => continue,
                other => panic!("watcher: {other:?}"),
            }
        }
    })
    .await;
    assert!(publish.retain, "delivered as a retained message");
    let env = Envelope::open(
        &publish.payload,
        1 << 20,
        key,
        client,
        &topics::DeviceTopic::Config,
    )
    .expect("the config verifies against the manager signing certificate");
    let _ = watcher.disconnect().await;
    match env.msg {
        Message::Config(c) => c,
        other => panic!("a {} message on R/config", other.kind()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_schedule_is_versioned_signed_retained_and_republished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(dir.path()).await;
    let admin = manager.admin();
    let bundle = admin.add_client("kiln-4", None).await.expect("add client");
    let mut device = Device::connect(manager.gateway_addr().expect("gateway"), &bundle).await;

    // Nothing set yet: no config, the device follows its local schedule.
    let view = admin.schedule("kiln-4").await.expect("schedule view");
    assert_eq!(view.remote, None);
    assert_eq!(view.in_force, None);

    let office = schedule(OFFICE);
    let set = admin
        .set_schedule("kiln-4", &office)
        .await
        .expect("set schedule");
    assert_eq!(set.remote.as_ref().map(|r| r.version), Some(1));
    let c = device.next_config("config v1").await;
    assert_eq!(c.version, 1);
    assert_eq!(c.schedule.as_ref(), Some(&office));
    let key = device.manager_key.clone();
    let retained = retained_config(&manager, &device.id, &key, "watch-v1").await;
    assert_eq!(retained, c);

    let set = admin
        .set_schedule("kiln-4", &office)
        .await
        .expect("set schedule again");
    assert_eq!(set.remote.as_ref().map(|r| r.version), Some(2));
    assert_eq!(device.next_config("config v2").await.version, 2);

    let cleared = admin.clear_schedule("kiln-4").await.expect("clear");
    assert_eq!(cleared.remote.as_ref().map(|r| r.version), Some(3));
    let c = device.next_config("config v3").await;
    assert_eq!(c.version, 3);
    assert_eq!(c.schedule, None, "cleared: back to the local schedule");
    let retained = retained_config(&manager, &device.id, &key, "watch-v3").await;
    assert_eq!(retained, c);

    // A bad schedule is refused naming the field; nothing stored or published.
    let mut bad = office.clone();
    bad.polling.rate = "0s".into();
    let err = admin
        .set_schedule("kiln-4", &bad)
        .await
        .expect_err("a zero rate is refused");
    assert_eq!(err.status(), Some(422));
    assert!(err.to_string().contains("polling.rate"), "{err}");
    let view = admin.schedule("kiln-4").await.expect("schedule view");
    assert_eq!(view.remote.as_ref().map(|r| r.version), Some(3));
    assert_eq!(view.remote.as_ref().and_then(|r| r.schedule.clone()), None);
    // The next config the device sees is the next valid change: v4.
    admin
        .set_schedule("kiln-4", &office)
        .await
        .expect("set schedule");
    assert_eq!(
        device.next_config("config v4").await.version,
        4,
        "the refused schedule published nothing"
    );
    let unknown = admin
        .set_schedule("no-such-client", &office)
        .await
        .expect_err("unknown client");
    assert_eq!(unknown.status(), Some(404));

    // Restart on the same data dir: a fresh embedded broker holds nothing
    // retained, so the manager republishes the config from redb.
    drop(device);
    manager.shutdown().await;
    let manager = start(dir.path()).await;
    let admin = manager.admin();
    let mut device = Device::connect(manager.gateway_addr().expect("gateway"), &bundle).await;
    let c = device.next_config("republished config v4").await;
    assert_eq!(c.version, 4);
    assert_eq!(c.schedule, Some(office));
    let retained = retained_config(&manager, &device.id, &key, "watch-v4").await;
    assert_eq!(retained, c);

    // Revocation clears the retained config (an operator watching on the
    // loopback listener sees the empty retained payload).
    let (watcher, mut watched) = connect(MqttOptions::new(
        "schedule-test-watcher",
        "127.0.0.1",
        manager.mqtt_addr().expect("embedded broker").port(),
    ))
    .await;
    watcher
        .subscribe(topics::config(&device.id), QoS::AtLeastOnce)
        .await
        .expect("watch config");
    within("the retained config for the watcher", async {
        loop {
            match watched.recv().await {
                Some(Ok(p)) if !p.payload.is_empty() => return,
                Some(Ok(_)) => continue,
                other => panic!("watcher: {other:?}"),
            }
        }
    })
    .await;
    admin.revoke("kiln-4").await.expect("revoke");
    within("the config topic cleared on revocation", async {
        loop {
            match watched.recv().await {
                Some(Ok(p)) if p.payload.is_empty() => {
                    assert_eq!(p.topic, topics::config(&device.id));
                    return;
                }
                Some(Ok(_)) => continue,
                other => panic!("watcher: {other:?}"),
            }
        }
    })
    .await;
    let refused = admin
        .set_schedule("kiln-4", &schedule(OFFICE))
        .await
        .expect_err("revoked");
    assert_eq!(refused.status(), Some(409));
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_schedule_shows_and_drives_availability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(dir.path()).await;
    let admin = manager.admin();
    let bundle = admin.add_client("press-2", None).await.expect("add client");
    let mut device = Device::connect(manager.gateway_addr().expect("gateway"), &bundle).await;

    // Before any report: no presence, no schedule → offline.
    let status = admin.status(Some("press-2")).await.expect("status");
    assert_eq!(status[0].availability, Availability::Offline);

    let down = schedule(ALWAYS_DOWN);
    let in_force = ScheduleInForce {
        source: ScheduleSource::Remote,
        config_version: 7,
        schedule: down.clone(),
    };
    device.report_state(Some(in_force.clone())).await;

    let details = admin.client("press-2").await.expect("client details");
    assert_eq!(details.status.schedule_in_force.as_ref(), Some(&in_force));
    assert_eq!(details.status.availability, Availability::InPlannedDowntime);
    let view = admin.schedule("press-2").await.expect("schedule view");
    assert_eq!(view.in_force.as_ref(), Some(&in_force));

    // As `margoctl status --json` prints it: a new field, old ones unchanged.
    let json = serde_json::to_value(admin.status(None).await.expect("status")).expect("json");
    assert_eq!(json[0]["availability"], "in-planned-downtime", "{json:#}");
    assert_eq!(json[0]["presence"], "unknown", "{json:#}");
    assert_eq!(json[0]["scheduleInForce"]["configVersion"], 7, "{json:#}");
    assert_eq!(json[0]["scheduleInForce"]["source"], "remote", "{json:#}");

    // Online presence wins; offline again falls back to the schedule.
    device.presence(true).await;
    eventually("availability online", async || {
        admin
            .status(Some("press-2"))
            .await
            .is_ok_and(|s| s[0].availability == Availability::Online)
    })
    .await;
    device.presence(false).await;
    eventually("availability in planned downtime", async || {
        admin
            .status(Some("press-2"))
            .await
            .is_ok_and(|s| s[0].availability == Availability::InPlannedDowntime)
    })
    .await;

    // A report without a schedule (always connected) makes silence "offline".
    device.report_state(None).await;
    let status = admin.status(Some("press-2")).await.expect("status");
    assert_eq!(status[0].schedule_in_force, None);
    assert_eq!(status[0].availability, Availability::Offline);
    manager.shutdown().await;
}
