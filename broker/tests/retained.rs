//! Issue 12, finding 1: devices cannot store retained data in the broker.
//! The gateway refuses a retained PUBLISH on every device topic except the
//! device's own small presence, like any other forbidden publish: the
//! connection is closed, the violation logged and counted. Before the fix,
//! 800 retained 1 MiB messages from one certificate stayed in the broker.

mod common;

use std::time::Duration;

use common::*;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::topics;
use margo_testkit::eventually;
use margo_testkit::mqtt::{Options, TestClient};
use margo_testkit::pki::{client_tls, TestPki};

#[tokio::test]
async fn a_retained_device_publish_is_refused_and_nothing_is_stored() {
    let pki = TestPki::new("fleet ca");
    let broker = start_broker(&pki, Duration::from_secs(10)).await;
    let gw = broker.gateway_addr().expect("gateway");
    let stats = broker.stats();
    let dev = ClientId::new("dev1").expect("id");
    let status = topics::status(&dev, &DeploymentId::new("x").expect("id"));
    let tls = client_tls(&pki, Some(&pki.client("dev1")));

    // Its own presence, retained: allowed.
    let mut device = TestClient::device(gw, tls.clone(), Options::new("dev1"));
    device.connack().await;
    device
        .publish(&topics::presence(&dev), true, b"online".to_vec())
        .await
        .expect("retained presence accepted");
    device.stays_up(Duration::from_millis(300)).await;
    assert_eq!(margo_broker::violations(&stats), 0);

    // A retained status: refused, connection closed, counted.
    let _ = device
        .client
        .publish(&status, rumqttc::QoS::AtLeastOnce, true, vec![7u8; 4096])
        .await;
    device.closed("retained publish on a status topic").await;
    eventually(WAIT, "the retain violation counted", || {
        stats.get(margo_broker::GatewayMetric::ViolationRetain) == 1
    })
    .await;

    // A fresh subscriber finds the presence and nothing on the status topic.
    let mut fresh = TestClient::plain(broker.mqtt_addr(), "fresh");
    fresh.connack().await;
    fresh.subscribe(&status).await.expect("subscribe status");
    fresh
        .subscribe(&topics::presence(&dev))
        .await
        .expect("subscribe presence");
    let mut seen = Vec::new();
    while let Some(p) = fresh.next_publish(Duration::from_secs(1)).await {
        seen.push((p.topic.clone(), p.retain));
    }
    assert_eq!(
        seen,
        vec![(topics::presence(&dev), true)],
        "only the retained presence is stored"
    );
    broker.shutdown().await;
}
