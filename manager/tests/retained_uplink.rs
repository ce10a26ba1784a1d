//! Issue 12, finding 1, on an external broker (Mosquitto, whose ACL cannot
//! forbid retain): a retained message a device leaves on its uplink topic
//! is cleared by the manager (an empty retained publish) as soon as the
//! manager sees it, so a fresh subscriber finds nothing. Before the fix it
//! stayed in the broker, and 800 such 1 MiB messages grew the broker by
//! 1 GB.

mod common;

use std::time::Duration;

use common::*;
use margo_manager::config::BrokerMode;
use margo_schemas::ids::DeploymentId;
use margo_schemas::topics;
use margo_testkit::eventually_async;
use margo_testkit::mosquitto::{self, Mosquitto};
use margo_testkit::mqtt::TestClient;
use margo_testkit::pki::{TestPki, TlsIdentity};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_clears_a_retained_uplink_message_on_mosquitto() {
    if !mosquitto::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = margo_testkit::free_port();
    let mut config = config(dir.path());
    config.broker.mode = BrokerMode::External;
    config.broker.url = Some(format!("mqtts://localhost:{port}"));
    margo_manager::init(&config).expect("init creates the fleet PKI");
    let pki = config.data_dir.join("pki");

    // Mosquitto trusts the fleet CA and a test CA whose `observer` may read
    // everything: the test looks at the broker through it.
    let observer_ca = TestPki::new("observer ca");
    let observer = observer_ca.client("observer");
    let fleet_ca = std::fs::read(pki.join("ca.crt")).expect("fleet ca");
    let cafile = dir.path().join("cafile.pem");
    std::fs::write(
        &cafile,
        [fleet_ca.clone(), observer_ca.ca_pem().into_bytes()].concat(),
    )
    .expect("write cafile");
    let _broker = Mosquitto::start_with_acl(
        port,
        &dir.path().join("mosquitto"),
        &cafile,
        &pki.join("gateway.crt"),
        &pki.join("gateway.key"),
        "user observer\ntopic read margo/v1/#",
    )
    .expect("mosquitto starts");
    let observer = TlsIdentity {
        ca_pem: fleet_ca,
        cert_pem: observer.cert_pem().into_bytes(),
        key_pem: observer.key_pem().into_bytes(),
    };

    let manager = start(config.clone()).await;
    let bundle = manager
        .admin()
        .add_client("junk-1", None)
        .await
        .expect("add client");
    manager.shutdown().await;

    // While the manager is away, the device leaves a retained message.
    let id = bundle.client_id.clone();
    let status = topics::status(&id, &DeploymentId::new("x").expect("id"));
    let device_tls = TlsIdentity {
        ca_pem: bundle.ca_pem.clone().into_bytes(),
        cert_pem: bundle.cert_pem.clone().into_bytes(),
        key_pem: bundle.key_pem.clone().into_bytes(),
    };
    let mut device = TestClient::connect(id.as_str(), port, Some(&device_tls), None, true)
        .await
        .expect("device connects");
    device
        .publish(&status, true, vec![7u8; 4096])
        .await
        .expect("retained publish accepted by mosquitto");
    assert!(
        retained_on(&observer, port, &status).await,
        "the retained message is stored"
    );

    // The manager comes back, sees it (retained, on subscribing) and clears it.
    let manager = start(config).await;
    eventually_async(
        WAIT,
        "no retained message on the device's status topic",
        async || !retained_on(&observer, port, &status).await,
    )
    .await;
    manager.shutdown().await;
}

/// Whether a fresh (clean-session) subscriber receives a retained message on `topic`.
async fn retained_on(observer: &TlsIdentity, port: u16, topic: &str) -> bool {
    let mut fresh = TestClient::connect("observer", port, Some(observer), None, true)
        .await
        .expect("observer connects");
    fresh.subscribe(topic).await.expect("subscribe");
    let seen = fresh.next_publish(Duration::from_secs(1)).await;
    seen.is_some_and(|p| p.retain && !p.payload.is_empty())
}
