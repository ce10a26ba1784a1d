//! Per-device isolation on Mosquitto 2.x with the shipped `config/mosquitto`
//! ACL: with client B's certificate, nothing of client A's can be read,
//! written, taken over, or impersonated through a last will.
//! (The same rules through the embedded broker's gateway are tested in
//! `broker/tests/gateway.rs`.)

use std::time::Duration;

use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::topics;
use margo_testkit::mosquitto::{self, Mosquitto};
use margo_testkit::mqtt::TestClient;
use margo_testkit::pki::TestPki;
use rumqttc::{LastWill, QoS};

const QUIET: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_b_cannot_touch_device_a_on_mosquitto() -> anyhow::Result<()> {
    margo_tests::init_tracing();
    if !mosquitto::available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new("margo test CA");
    pki.write_server_files(dir.path())?;
    let broker = Mosquitto::start(
        &dir.path().join("mosquitto"),
        &dir.path().join("ca.crt"),
        &dir.path().join("server.crt"),
        &dir.path().join("server.key"),
    )?;
    let a = ClientId::new("aaaaaaaa")?;
    let b = ClientId::new("bbbbbbbb")?;
    let dep = DeploymentId::new("d1")?;
    let a_tls = pki.tls_identity(a.as_str());
    let b_tls = pki.tls_identity(b.as_str());
    let mgr_tls = pki.tls_identity("margo-manager");

    // The manager publishes A's retained desired state and watches uplink.
    let mut manager =
        TestClient::connect("margo-manager", broker.port, Some(&mgr_tls), None, true).await?;
    manager
        .publish(&topics::desired_manifest(&a), true, b"for-a".to_vec())
        .await?;
    for filter in topics::manager_uplink_filters() {
        manager.subscribe(&filter).await?;
    }

    // Positive control: A reads its own desired state.
    let mut dev_a = TestClient::connect(a.as_str(), broker.port, Some(&a_tls), None, false).await?;
    dev_a.subscribe(&topics::desired_filter(&a)).await?;
    let got = dev_a.next_publish(Duration::from_secs(5)).await;
    assert_eq!(
        got.map(|p| p.payload.to_vec()),
        Some(b"for-a".to_vec()),
        "A must read its own retained manifest"
    );

    // B subscribes to A's desired state: granted by Mosquitto but filtered to nothing.
    let mut dev_b = TestClient::connect(b.as_str(), broker.port, Some(&b_tls), None, true).await?;
    dev_b.subscribe(&topics::desired_filter(&a)).await?;
    dev_b.subscribe("margo/v1/clients/+/desired/#").await?;
    assert!(
        dev_b.next_publish(QUIET).await.is_none(),
        "B received A's desired state"
    );

    // B publishes on A's status topic and on A's downlink: dropped. Then A
    // publishes its own status; the manager must see only A's.
    dev_b
        .publish(&topics::status(&a, &dep), false, b"forged-by-b".to_vec())
        .await?;
    dev_b
        .publish(
            &topics::desired_manifest(&a),
            true,
            b"forged-manifest".to_vec(),
        )
        .await?;
    dev_a
        .publish(&topics::status(&a, &dep), false, b"from-a".to_vec())
        .await?;
    let seen = manager
        .next_publish(Duration::from_secs(5))
        .await
        .expect("A's status reaches the manager");
    assert_eq!(
        seen.payload.to_vec(),
        b"from-a".to_vec(),
        "the manager received B's forged status first"
    );
    assert!(
        dev_a.next_publish(QUIET).await.is_none(),
        "A received B's forged manifest"
    );

    // B connects with A's client id: it is renamed to B's identity, so A's
    // session is not taken over.
    let b_as_a = TestClient::connect(a.as_str(), broker.port, Some(&b_tls), None, false).await?;
    assert!(
        dev_a.still_connected(QUIET).await,
        "B using A's client id kicked A"
    );
    b_as_a.crash();

    // B sets its last will on A's presence topic and dies: the will is refused.
    // Positive control first: a will on B's own presence is delivered.
    let own_will = LastWill::new(topics::presence(&b), "offline", QoS::AtLeastOnce, true);
    let b_own =
        TestClient::connect(b.as_str(), broker.port, Some(&b_tls), Some(own_will), true).await?;
    b_own.crash();
    let will = manager
        .next_publish(Duration::from_secs(5))
        .await
        .expect("B's own will is delivered");
    assert_eq!(will.topic, topics::presence(&b));

    let forged_will = LastWill::new(topics::presence(&a), "offline", QoS::AtLeastOnce, true);
    match TestClient::connect(
        b.as_str(),
        broker.port,
        Some(&b_tls),
        Some(forged_will),
        true,
    )
    .await
    {
        Ok(b_forged) => {
            b_forged.crash();
            if let Some(p) = manager.next_publish(QUIET).await {
                assert_ne!(
                    p.topic,
                    topics::presence(&a),
                    "B's will was published on A's presence"
                );
            }
        }
        // Refusing the connection outright is also isolation.
        Err(e) => eprintln!("connection with a foreign will refused: {e}"),
    }
    drop(broker);
    Ok(())
}
