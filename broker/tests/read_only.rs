//! Issue 12, finding 2: the operator's plain loopback listener is
//! read-only, and only holders of the internal login reach rumqttd with
//! write access. Before the fix, any local user on 127.0.0.1:1883 could
//! take over the manager's or a device's session by client id, overwrite
//! retained desired state and forge a retained `offline` presence.

mod common;

use std::time::Duration;

use common::*;
use margo_broker::{GatewayMetric, INTERNAL_USERNAME};
use margo_schemas::ids::ClientId;
use margo_schemas::topics;
use margo_testkit::eventually;
use margo_testkit::mqtt::{Options, TestClient};
use margo_testkit::pki::{client_tls, TestPki};
use rumqttc::{LastWill, MqttOptions, QoS};

const QUIET: Duration = Duration::from_millis(700);

fn id(s: &str) -> ClientId {
    ClientId::new(s).expect("valid id")
}

#[tokio::test]
async fn observers_read_everything_but_cannot_write_or_take_over_sessions() {
    let pki = TestPki::new("fleet ca");
    let broker = start_broker(&pki, Duration::from_secs(10)).await;
    let stats = broker.stats();
    let dev = id("dev1");

    // The manager's session (internal listener, login) and retained state.
    let mut manager = internal_client(&broker, "margo-manager");
    manager.connack().await;
    manager
        .publish(&topics::desired_manifest(&dev), true, b"signed-v1".to_vec())
        .await
        .expect("manager publishes desired state");
    // A device through the gateway, with its presence.
    let gw = broker.gateway_addr().expect("gateway");
    let tls = client_tls(&pki, Some(&pki.client("dev1")));
    let mut device = TestClient::device(gw, tls, Options::new("dev1"));
    device.connack().await;
    device
        .publish(&topics::presence(&dev), true, b"online".to_vec())
        .await
        .expect("device presence");

    // An observer reads retained desired state and presence.
    let mut observer = TestClient::plain(broker.mqtt_addr(), "explorer");
    observer.connack().await;
    observer
        .subscribe("margo/v1/#")
        .await
        .expect("subscribe all");
    // Retained messages arrive in no particular order.
    let mut read = Vec::new();
    while read.len() < 2 {
        let p = observer
            .next_publish(WAIT)
            .await
            .expect("the retained desired state and presence");
        read.push((p.topic.clone(), p.payload.to_vec(), p.retain));
    }
    read.sort();
    assert_eq!(
        read,
        vec![
            (topics::desired_manifest(&dev), b"signed-v1".to_vec(), true),
            (topics::presence(&dev), b"online".to_vec(), true),
        ]
    );

    // Client ids of the manager and of a device: connected, but as
    // observers, so neither real session is taken over.
    for taken in ["margo-manager", "dev1"] {
        let mut thief = TestClient::plain(broker.mqtt_addr(), taken);
        thief.connack().await;
        thief.stays_up(QUIET).await;
    }
    manager.stays_up(QUIET).await;
    device.stays_up(QUIET).await;

    // Writes are refused: the connection closes and nothing is stored.
    let before = stats.get(GatewayMetric::ObserverViolation);
    for (topic, payload) in [
        (topics::desired_manifest(&dev), b"forged".to_vec()),
        (topics::presence(&dev), b"offline".to_vec()),
    ] {
        let mut writer = TestClient::plain(broker.mqtt_addr(), "writer");
        writer.connack().await;
        let _ = writer
            .client
            .publish(&topic, QoS::AtLeastOnce, true, payload)
            .await;
        writer.closed("publish on the read-only listener").await;
    }
    let mut options = MqttOptions::new("willing", "127.0.0.1", broker.mqtt_addr().port());
    options.set_last_will(LastWill::new(
        topics::presence(&dev),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let mut willing = TestClient::spawn(options, 8);
    willing
        .closed("a last will on the read-only listener")
        .await;
    eventually(WAIT, "three write attempts counted", || {
        stats.get(GatewayMetric::ObserverViolation) == before + 3
    })
    .await;

    let mut fresh = TestClient::plain(broker.mqtt_addr(), "fresh");
    fresh.connack().await;
    fresh.subscribe("margo/v1/#").await.expect("subscribe");
    let mut seen = Vec::new();
    while let Some(p) = fresh.next_publish(QUIET).await {
        seen.push((p.topic.clone(), p.payload.to_vec()));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (topics::desired_manifest(&dev), b"signed-v1".to_vec()),
            (topics::presence(&dev), b"online".to_vec()),
        ],
        "retained state unchanged by the refused writers"
    );
    manager.stays_up(Duration::from_millis(10)).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn the_internal_listener_wants_the_login() {
    let pki = TestPki::new("fleet ca");
    let broker = start_broker(&pki, Duration::from_secs(10)).await;
    let upstream = broker.upstream();
    let login = upstream.login.clone().expect("login");

    let mut anonymous = TestClient::plain(upstream.addr, "margo-manager");
    anonymous.closed("no login").await;
    let mut wrong =
        TestClient::plain_login(upstream.addr, "margo-manager", INTERNAL_USERNAME, "guess");
    wrong.closed("wrong password").await;
    let mut other_user = TestClient::plain_login(upstream.addr, "x", "admin", &login.password);
    other_user.closed("wrong user name").await;

    let mut manager = internal_client(&broker, "margo-manager");
    manager.connack().await;
    manager.stays_up(QUIET).await;
    broker.shutdown().await;
}
