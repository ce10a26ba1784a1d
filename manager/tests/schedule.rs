//! Remote schedules and availability against a real manager (embedded broker
//! and gateway, redb in a temp dir): `R/config` is retained, signed with the
//! fleet signing key and versioned; a bad schedule is refused and nothing is
//! stored or published; the config is republished after a restart and
//! cleared on revocation; a reported schedule shows in the client view and
//! drives `availability`.

mod common;

use std::net::SocketAddr;

use common::{config, start, FakeDevice, WAIT};
use margo_manager::admin::ProvisionedBundle;
use margo_manager::availability::Availability;
use margo_manager::ManagerHandle;
use margo_schemas::cose::VerifyingKey;
use margo_schemas::ids::ClientId;
use margo_schemas::messages::{
    DeviceConfig, Envelope, Message, ScheduleInForce, ScheduleSource, StateReport,
};
use margo_schemas::schedule::Schedule;
use margo_schemas::topics;
use margo_testkit::eventually_async;
use margo_testkit::mqtt::TestClient;
use rumqttc::{MqttOptions, QoS};

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

/// A plain MQTT connection on the loopback listener, after its CONNACK.
async fn watcher(name: &str, port: u16) -> TestClient {
    let mut watcher =
        TestClient::spawn(MqttOptions::new(name, "127.0.0.1", port), 64).with_wait(WAIT);
    watcher.connack().await;
    watcher
}

/// A fake device behind the gateway, subscribed to its config and ack.
async fn connect(gateway: SocketAddr, bundle: &ProvisionedBundle) -> FakeDevice {
    let id = &bundle.client_id;
    let filters = [topics::config(id), topics::ack(id)];
    FakeDevice::connect(gateway, bundle.into(), true, &filters).await
}

impl FakeDevice {
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
        self.mqtt
            .client
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
        self.mqtt
            .client
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
    let mut watcher = watcher(name, port).await;
    watcher
        .client
        .subscribe(topics::config(client), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let publish = watcher
        .expect_publish("the retained config", |p| {
            (!p.payload.is_empty()).then(|| p.clone())
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
    let _ = watcher.client.disconnect().await;
    match env.msg {
        Message::Config(c) => c,
        other => panic!("a {} message on R/config", other.kind()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_schedule_is_versioned_signed_retained_and_republished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("kiln-4", None).await.expect("add client");
    let mut device = connect(manager.gateway_addr().expect("gateway"), &bundle).await;

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
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let mut device = connect(manager.gateway_addr().expect("gateway"), &bundle).await;
    let c = device.next_config("republished config v4").await;
    assert_eq!(c.version, 4);
    assert_eq!(c.schedule, Some(office));
    let retained = retained_config(&manager, &device.id, &key, "watch-v4").await;
    assert_eq!(retained, c);

    // Revocation clears the retained config (an operator watching on the
    // loopback listener sees the empty retained payload).
    let mut watched = watcher(
        "schedule-test-watcher",
        manager.mqtt_addr().expect("embedded broker").port(),
    )
    .await;
    watched
        .client
        .subscribe(topics::config(&device.id), QoS::AtLeastOnce)
        .await
        .expect("watch config");
    watched
        .expect_publish("the retained config for the watcher", |p| {
            (!p.payload.is_empty()).then_some(())
        })
        .await;
    admin.revoke("kiln-4").await.expect("revoke");
    let cleared = watched
        .expect_publish("the config topic cleared on revocation", |p| {
            p.payload.is_empty().then(|| p.topic.clone())
        })
        .await;
    assert_eq!(cleared, topics::config(&device.id));
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
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("press-2", None).await.expect("add client");
    let mut device = connect(manager.gateway_addr().expect("gateway"), &bundle).await;

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
    eventually_async(WAIT, "availability online", async || {
        admin
            .status(Some("press-2"))
            .await
            .is_ok_and(|s| s[0].availability == Availability::Online)
    })
    .await;
    device.presence(false).await;
    eventually_async(WAIT, "availability in planned downtime", async || {
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
