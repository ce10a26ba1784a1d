//! Issue 12, finding 1: one device cannot monopolise ingest. Above its
//! `[gateway.device_rate]` the gateway stops reading from it until the debt
//! is paid (TCP pushes back); nothing is lost, the pauses are counted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use margo_broker::{BrokerConfig, DeviceRate, EmbeddedBroker, GatewayConfig};
use margo_schemas::ids::ClientId;
use margo_schemas::topics;
use margo_testkit::mqtt::{Options, TestClient};
use margo_testkit::pki::{client_tls, TestPki};
use margo_testkit::within;
use rumqttc::QoS;

#[tokio::test]
async fn a_device_over_its_message_rate_is_throttled_not_dropped() {
    let pki = TestPki::new("fleet ca");
    let mut config = BrokerConfig::default();
    config.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    let mut gateway = GatewayConfig::new(gateway_tls(&pki));
    gateway.listen = "127.0.0.1:0".parse().expect("addr");
    gateway.device_rate = DeviceRate {
        messages_per_second: 20,
        message_burst: 5,
        ..DeviceRate::default()
    };
    config.gateway = Some(gateway);
    let broker = within(WAIT, "broker start", EmbeddedBroker::start(config))
        .await
        .expect("broker starts");
    let dev = ClientId::new("dev1").expect("id");

    let mut manager = common::internal_client(&broker, "manager");
    manager.connack().await;
    manager
        .subscribe(&topics::state(&dev))
        .await
        .expect("subscribe");

    let tls = client_tls(&pki, Some(&pki.client("dev1")));
    let mut device = TestClient::device(
        broker.gateway_addr().expect("gateway"),
        tls,
        Options::new("dev1"),
    );
    device.connack().await;
    let start = Instant::now();
    const N: usize = 25;
    for i in 0..N {
        device
            .client
            .publish(topics::state(&dev), QoS::AtMostOnce, false, vec![i as u8])
            .await
            .expect("queue publish");
    }
    let mut got = Vec::new();
    while got.len() < N {
        let p = manager
            .next_publish(WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {N} messages arrived", got.len()));
        got.push(p.payload[0]);
    }
    let elapsed = start.elapsed();
    assert_eq!(got, (0..N as u8).collect::<Vec<_>>(), "all, in order");
    // 20 over the burst of 5 at 20/s: about a second.
    assert!(
        elapsed >= Duration::from_millis(800),
        "25 messages in {elapsed:?}: not throttled"
    );
    assert!(broker.stats().get(margo_broker::GatewayMetric::Throttled) > 0);
    broker.shutdown().await;
}
