//! The broker's own test helpers: its gateway's TLS material and a broker on
//! free ports. Waits, the PKI and the MQTT client come from margo-testkit.

#![allow(dead_code)]

use std::time::Duration;

use margo_broker::{BrokerConfig, BrokerHandle, EmbeddedBroker, GatewayConfig, GatewayTls};
use margo_testkit::mqtt::TestClient;
use margo_testkit::pki::TestPki;
use margo_testkit::within;

/// Default wait for anything in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server certificate for `localhost` and `127.0.0.1` from `pki`, as
/// gateway TLS material.
pub fn gateway_tls(pki: &TestPki) -> GatewayTls {
    let server = pki.server();
    GatewayTls {
        ca_pem: pki.ca_pem().into_bytes(),
        cert_pem: server.cert_pem().into_bytes(),
        key_pem: server.key_pem().into_bytes(),
    }
}

/// A broker with a gateway on free loopback ports.
pub async fn start_broker(pki: &TestPki, handshake_timeout: Duration) -> BrokerHandle {
    let mut config = BrokerConfig::default();
    config.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    let mut gateway = GatewayConfig::new(gateway_tls(pki));
    gateway.listen = "127.0.0.1:0".parse().expect("addr");
    gateway.handshake_timeout = handshake_timeout;
    gateway.connect_timeout = Duration::from_secs(3);
    config.gateway = Some(gateway);
    within(WAIT, "broker start", EmbeddedBroker::start(config))
        .await
        .expect("broker starts")
}

/// A client on the broker's internal listener with its login: write
/// access, like the manager's own session.
pub fn internal_client(broker: &BrokerHandle, client_id: &str) -> TestClient {
    let upstream = broker.upstream();
    let login = upstream
        .login
        .expect("the embedded broker requires a login");
    TestClient::plain_login(upstream.addr, client_id, &login.username, &login.password)
}
