//! End to end inside the crate: a real manager (embedded broker + gateway,
//! redb in a temp dir) and a hand-rolled fake device speaking mutual TLS
//! through the gateway with its provisioned bundle, signing with
//! margo-schemas directly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use margo_manager::admin::ProvisionedBundle;
use margo_manager::{Manager, ManagerConfig, ManagerHandle};
use margo_schemas::cose::{SigningKey, VerifyingKey};
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::{Ack, Envelope, Message, StatusReport};
use margo_schemas::pki::{certs_from_pem, client_tls_config, pkcs8_from_pem};
use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus};
use margo_schemas::topics;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);
const DEPLOYMENT_ID: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";

fn yaml(revision: &str) -> String {
    format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {DEPLOYMENT_ID}\n    applicationId: com-example-app\n  name: example-app\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
         \x20     - name: web\n        properties:\n          packageLocation: https://example.com/app.tar.gz\n          revision: \"{revision}\"\n"
    )
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for: {what}"),
    }
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

/// A fake device: mutual TLS through the gateway, signing with its bundle key.
struct Device {
    id: ClientId,
    client: AsyncClient,
    key: SigningKey,
    manager_key: VerifyingKey,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Publish, String>>,
}

impl Device {
    async fn connect(gateway: SocketAddr, bundle: &ProvisionedBundle, clean: bool) -> Self {
        let tls = client_tls_config(
            bundle.ca_pem.as_bytes(),
            Some((bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes())),
        )
        .expect("device TLS config");
        let mut opts = MqttOptions::new(bundle.client_id.as_str(), "127.0.0.1", gateway.port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        opts.set_clean_session(clean);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut connected = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected.take() {
                            let _ = tx.send(());
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
        within("device CONNACK", connected_rx)
            .await
            .expect("device connects through the gateway");
        let id = bundle.client_id.clone();
        client
            .subscribe(topics::desired_filter(&id), QoS::AtLeastOnce)
            .await
            .expect("subscribe desired");
        client
            .subscribe(topics::ack(&id), QoS::AtLeastOnce)
            .await
            .expect("subscribe ack");
        let pkcs8 = pkcs8_from_pem(bundle.key_pem.as_bytes(), "device key").expect("key");
        let signing_der = certs_from_pem(bundle.signing_cert_pem.as_bytes(), "signing cert")
            .expect("signing cert")
            .remove(0);
        Self {
            id,
            client,
            key: SigningKey::from_pkcs8(&pkcs8).expect("device key"),
            manager_key: VerifyingKey::from_certificate(signing_der.as_ref())
                .expect("manager signing key"),
            events,
        }
    }

    /// Waits for a verified downlink message matching `pick`.
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&Message) -> Option<T>) -> T {
        let id = self.id.clone();
        let key = self.manager_key.clone();
        within(what, async {
            loop {
                let publish = match self.events.recv().await {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => panic!("device connection failed waiting for {what}: {e}"),
                    None => panic!("device event loop ended waiting for {what}"),
                };
                if publish.payload.is_empty() {
                    continue;
                }
                let (client, topic) =
                    topics::parse_device_topic(&publish.topic).expect("device topic");
                assert_eq!(client, id);
                let env = Envelope::open(&publish.payload, 1 << 20, &key, &id, &topic)
                    .expect("downlink verifies against the manager signing certificate");
                if let Some(v) = pick(&env.msg) {
                    return v;
                }
            }
        })
        .await
    }

    async fn expect_ack(&mut self, what: &str, cond: impl Fn(&Ack) -> bool) -> Ack {
        self.expect(what, |m| match m {
            Message::Ack(a) if cond(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    async fn publish_signed(&self, topic: String, env: &Envelope, key: &SigningKey) {
        let payload = env.seal(key).expect("seal");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    fn status(&self, seq: u64, state: DeploymentState) -> Envelope {
        Envelope::new(
            self.id.clone(),
            seq,
            1,
            Message::Status(StatusReport {
                adopted_manifest_version: 2,
                status: DeploymentStatus::new(
                    DeploymentId::new(DEPLOYMENT_ID).expect("id"),
                    vec![ComponentStatus {
                        name: "web".into(),
                        state,
                        error: None,
                    }],
                    None,
                ),
            }),
        )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_status_ack_bad_signature_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(dir.path()).await;
    let admin = manager.admin();
    let gateway = manager.gateway_addr().expect("embedded gateway");

    let bundle = admin.add_client("press-7", None).await.expect("add client");
    assert_eq!(bundle.broker_url, "mqtts://localhost:8883");
    let out = dir.path().join("bundle");
    margo_manager::bundle::write_bundle(&out, &bundle).expect("write bundle");
    assert!(matches!(
        margo_manager::bundle::write_bundle(&out, &bundle),
        Err(margo_manager::bundle::BundleError::Exists(_))
    ));
    let dup = admin
        .add_client("press-7", None)
        .await
        .expect_err("duplicate name");
    assert_eq!(dup.status(), Some(409));

    let mut device = Device::connect(gateway, &bundle, false).await;
    device
        .client
        .publish(
            topics::presence(&device.id),
            QoS::AtLeastOnce,
            true,
            "online",
        )
        .await
        .expect("presence");

    // Invalid documents are refused with the document index and field.
    let bad = admin
        .deploy(
            "press-7",
            vec![yaml("1").replace("type: compose", "type: k8s")],
        )
        .await
        .expect_err("invalid YAML refused");
    assert_eq!(bad.status(), Some(422));
    assert!(
        bad.to_string()
            .contains("document 0: spec.deploymentProfile.type"),
        "{bad}"
    );

    // Deploy → retained signed deployment + manifest + ack arrive. Version
    // 1 is the zero-deployment manifest, so the first deploy makes 2.
    let r = admin
        .deploy("press-7", vec![yaml("1")])
        .await
        .expect("deploy");
    assert_eq!(r.manifest_version, 2);
    let expected_digest = margo_schemas::digest::Digest::of(yaml("1").as_bytes());
    let body = device
        .expect("deployment body", |m| match m {
            Message::Deployment(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!(body.digest, expected_digest);
    assert_eq!(body.yaml, yaml("1").as_bytes());
    let manifest = device
        .expect("manifest v2", |m| match m {
            Message::Manifest(m) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(manifest.manifest_version, 2);
    assert_eq!(manifest.deployments.len(), 1);
    assert_eq!(manifest.deployments[0].digest, expected_digest);
    assert_eq!(
        manifest.deployments[0].size_bytes,
        Some(yaml("1").len() as u64)
    );
    device
        .expect_ack("ack announcing v2", |a| a.manifest_version == 2)
        .await;

    // A signed status is stored and acked.
    let status = device.status(1, DeploymentState::Installed);
    device
        .publish_signed(
            topics::status(&device.id, &DeploymentId::new(DEPLOYMENT_ID).expect("id")),
            &status,
            &device.key,
        )
        .await;
    let ack = device
        .expect_ack("ack covering seq 1", |a| a.acked_seq >= 1)
        .await;
    assert_eq!(
        ack,
        Ack {
            acked_seq: 1,
            manifest_version: 2
        }
    );

    // A status with a bad signature is dropped, counted, audited, not acked.
    let (forger, _) = SigningKey::generate().expect("key");
    let forged = device.status(2, DeploymentState::Failed);
    device
        .publish_signed(
            topics::status(&device.id, &DeploymentId::new(DEPLOYMENT_ID).expect("id")),
            &forged,
            &forger,
        )
        .await;
    let stats = manager.ingest_stats();
    eventually("bad signature counted", async || {
        stats.bad_signature.load(Ordering::Relaxed) == 1
    })
    .await;
    // The counter moves when the message is judged; the audit row lands with
    // the next committed batch, so wait for it rather than racing it.
    eventually("bad signature audited", async || {
        admin
            .audit(10)
            .await
            .is_ok_and(|r| r.counts.get("bad-signature") == Some(&1))
    })
    .await;
    let seqs: Vec<u64> = admin
        .uplink("press-7")
        .await
        .expect("uplink")
        .iter()
        .map(|u| u.seq)
        .collect();
    assert_eq!(seqs, vec![1], "the forged seq 2 is not stored");

    // A duplicate is acked again; the fleet view shows the device.
    device
        .publish_signed(
            topics::status(&device.id, &DeploymentId::new(DEPLOYMENT_ID).expect("id")),
            &status,
            &device.key,
        )
        .await;
    eventually("duplicate counted", async || {
        stats.duplicates.load(Ordering::Relaxed) >= 1
    })
    .await;
    let view = admin.status(Some("press-7")).await.expect("status");
    let view = &view[0];
    assert_eq!(view.client_id, device.id);
    assert_eq!(view.desired_version, 2);
    assert_eq!(view.acked_seq, 1);
    assert_eq!(view.presence, "online");
    assert_eq!(view.deployments.len(), 1);
    assert_eq!(view.deployments[0].state, Some(DeploymentState::Installed));
    assert_eq!(
        view.deployments[0].desired_digest.as_deref(),
        Some(expected_digest.to_string().as_str())
    );

    // Restart the manager on the same data dir. rumqttd cannot be stopped in
    // process, so the new manager starts a fresh embedded broker (empty: no
    // retained messages, no sessions) and must republish everything from redb.
    drop(device);
    manager.shutdown().await;
    let manager = start(dir.path()).await;
    let gateway = manager.gateway_addr().expect("embedded gateway");
    let mut device = Device::connect(gateway, &bundle, true).await;
    let manifest = device
        .expect("republished manifest", |m| match m {
            Message::Manifest(m) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(manifest.manifest_version, 2);
    device
        .expect_ack("republished ack", |a| {
            a.acked_seq == 1 && a.manifest_version == 2
        })
        .await;

    // Undeploy clears the retained deployment and announces v3.
    let r = manager
        .admin()
        .undeploy("press-7", DEPLOYMENT_ID)
        .await
        .expect("undeploy");
    assert_eq!(r.manifest_version, 3);
    let manifest = device
        .expect("manifest v3", |m| match m {
            Message::Manifest(m) if m.manifest_version == 3 => Some(m.clone()),
            _ => None,
        })
        .await;
    assert!(manifest.deployments.is_empty());
    let missing = manager
        .admin()
        .undeploy("press-7", DEPLOYMENT_ID)
        .await
        .expect_err("second undeploy");
    assert_eq!(missing.status(), Some(404));
    manager.shutdown().await;
}

/// A client with nothing assigned has desired state version 1 with no
/// deployments (Margo desired-state.md: the first manifest MUST use version
/// 1); a fresh device's sync gets it on `R/desired/manifest`, so it learns it
/// is in sync. A status for a deployment never assigned is settled (acked)
/// but not stored; the first deploy then makes version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_client_gets_the_zero_deployment_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(dir.path()).await;
    let admin = manager.admin();
    let bundle = admin.add_client("fresh-1", None).await.expect("add");
    let mut device = Device::connect(manager.gateway_addr().expect("gateway"), &bundle, true).await;
    let sync = Envelope::new(
        device.id.clone(),
        1,
        1,
        Message::Sync(margo_schemas::messages::SyncRequest {
            reason: margo_schemas::messages::SyncReason::Startup,
            adopted_manifest_version: 0,
        }),
    );
    device
        .publish_signed(topics::sync(&device.id), &sync, &device.key)
        .await;
    let manifest = device
        .expect("zero-deployment manifest", |m| match m {
            Message::Manifest(m) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(manifest.manifest_version, 1);
    assert!(manifest.deployments.is_empty());
    assert!(manifest.bundle.is_none());
    manifest.validate().expect("a valid manifest");
    device
        .expect_ack("ack of the sync", |a| {
            a.acked_seq == 1 && a.manifest_version == 1
        })
        .await;
    let view = admin.status(Some("fresh-1")).await.expect("status");
    assert_eq!(view[0].desired_version, 1);

    // A status for a deployment never assigned: acked (the outbox drains),
    // counted, audited, not stored.
    let status = device.status(2, DeploymentState::Installed);
    device
        .publish_signed(
            topics::status(&device.id, &DeploymentId::new(DEPLOYMENT_ID).expect("id")),
            &status,
            &device.key,
        )
        .await;
    device
        .expect_ack("ack settling the refused status", |a| a.acked_seq == 2)
        .await;
    let stats = manager.ingest_stats();
    assert_eq!(stats.unassigned_status.load(Ordering::Relaxed), 1);
    eventually("refusal audited", async || {
        admin
            .audit(10)
            .await
            .is_ok_and(|r| r.counts.get("unassigned-deployment") == Some(&1))
    })
    .await;
    let view = admin.status(Some("fresh-1")).await.expect("status");
    assert!(view[0].deployments.is_empty(), "{:?}", view[0].deployments);
    let kinds: Vec<String> = admin
        .uplink("fresh-1")
        .await
        .expect("uplink")
        .into_iter()
        .map(|u| u.kind)
        .collect();
    assert_eq!(kinds, vec!["sync"]);

    // The first deploy is version 2; now the status is accepted.
    let r = admin
        .deploy("fresh-1", vec![yaml("1")])
        .await
        .expect("deploy");
    assert_eq!(r.manifest_version, 2);
    device
        .expect("manifest v2", |m| match m {
            Message::Manifest(m) if m.manifest_version == 2 => Some(()),
            _ => None,
        })
        .await;
    let status = device.status(3, DeploymentState::Installed);
    device
        .publish_signed(
            topics::status(&device.id, &DeploymentId::new(DEPLOYMENT_ID).expect("id")),
            &status,
            &device.key,
        )
        .await;
    device
        .expect_ack("ack of the stored status", |a| a.acked_seq == 3)
        .await;
    let view = admin.status(Some("fresh-1")).await.expect("status");
    assert_eq!(view[0].deployments.len(), 1);
    assert_eq!(
        view[0].deployments[0].state,
        Some(DeploymentState::Installed)
    );
    assert_eq!(stats.unassigned_status.load(Ordering::Relaxed), 1);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_republishes_and_unknown_topics_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(dir.path()).await;
    let admin = manager.admin();
    let bundle = admin.add_client("pump-1", None).await.expect("add");
    admin
        .deploy(bundle.client_id.as_str(), vec![yaml("1")])
        .await
        .expect("deploy");
    let mut device = Device::connect(manager.gateway_addr().expect("gateway"), &bundle, true).await;
    device
        .expect_ack("first ack", |a| a.manifest_version == 2)
        .await;
    let sync = Envelope::new(
        device.id.clone(),
        1,
        1,
        Message::Sync(margo_schemas::messages::SyncRequest {
            reason: margo_schemas::messages::SyncReason::SessionLost,
            adopted_manifest_version: 0,
        }),
    );
    device
        .publish_signed(topics::sync(&device.id), &sync, &device.key)
        .await;
    // The sync is stored, acked, and triggers a full republish.
    device
        .expect("republished deployment after sync", |m| {
            matches!(m, Message::Deployment(_)).then_some(())
        })
        .await;
    device
        .expect_ack("ack covering the sync", |a| a.acked_seq == 1)
        .await;
    let uplink = admin.uplink("pump-1").await.expect("uplink");
    assert_eq!(uplink.len(), 1);
    assert_eq!(uplink[0].kind, "sync");

    // Garbage on a valid uplink topic: malformed, counted, loop goes on.
    device
        .client
        .publish(
            topics::state(&device.id),
            QoS::AtLeastOnce,
            false,
            vec![1u8, 2, 3],
        )
        .await
        .expect("publish garbage");
    let stats = manager.ingest_stats();
    eventually("malformed counted", async || {
        stats.malformed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(manager.is_connected());
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_broker_mode_uses_the_same_code_path() {
    // A bare rumqttd (no gateway) stands in for an external broker.
    let mut broker_config = margo_broker::BrokerConfig::default();
    broker_config.mqtt.listen = "127.0.0.1:0".parse().expect("addr");
    let broker = within(
        "external broker start",
        margo_broker::EmbeddedBroker::start(broker_config),
    )
    .await
    .expect("broker starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.broker.mode = margo_manager::config::BrokerMode::External;
    config.broker.url = Some(format!("mqtt://{}", broker.mqtt_addr()));
    let manager = within("manager start", Manager::start(config))
        .await
        .expect("manager starts against the external broker");
    assert!(manager.gateway_addr().is_none());
    assert!(manager.is_connected());
    let admin = manager.admin();
    let bundle = admin.add_client("ext-1", None).await.expect("add");
    admin
        .deploy("ext-1", vec![yaml("2")])
        .await
        .expect("deploy");

    // The device connects in plain MQTT (no gateway here); signatures still rule.
    let id = bundle.client_id.clone();
    let mut opts = MqttOptions::new(id.as_str(), "127.0.0.1", broker.mqtt_addr().port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
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
    client
        .subscribe(topics::desired_filter(&id), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    client
        .subscribe(topics::ack(&id), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let pkcs8 = pkcs8_from_pem(bundle.key_pem.as_bytes(), "key").expect("key");
    let signing_der = certs_from_pem(bundle.signing_cert_pem.as_bytes(), "signing")
        .expect("cert")
        .remove(0);
    let mut device = Device {
        id: id.clone(),
        client,
        key: SigningKey::from_pkcs8(&pkcs8).expect("key"),
        manager_key: VerifyingKey::from_certificate(signing_der.as_ref()).expect("key"),
        events,
    };
    device
        .expect("retained manifest from the external broker", |m| match m {
            Message::Manifest(m) if m.manifest_version == 2 => Some(()),
            _ => None,
        })
        .await;
    let status = device.status(1, DeploymentState::Installing);
    device
        .publish_signed(
            topics::status(&id, &DeploymentId::new(DEPLOYMENT_ID).expect("id")),
            &status,
            &device.key,
        )
        .await;
    device
        .expect_ack("ack through the external broker", |a| a.acked_seq == 1)
        .await;
    manager.shutdown().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_clients_are_cut_off_and_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(dir.path()).await;
    let admin = manager.admin();
    let bundle = admin.add_client("old-1", None).await.expect("add");
    admin
        .deploy("old-1", vec![yaml("1")])
        .await
        .expect("deploy");
    let mut device = Device::connect(manager.gateway_addr().expect("gateway"), &bundle, true).await;
    device
        .expect_ack("ack before revocation", |a| a.manifest_version == 2)
        .await;
    let revoked = admin.revoke("old-1").await.expect("revoke");
    assert!(revoked.revoked);
    within("gateway closes the revoked device", async {
        while let Some(event) = device.events.recv().await {
            if event.is_err() {
                return;
            }
        }
    })
    .await;
    let err = admin
        .deploy("old-1", vec![yaml("2")])
        .await
        .expect_err("deploy to a revoked client");
    assert_eq!(err.status(), Some(409));
    let view = admin.status(Some("old-1")).await.expect("status");
    assert!(view[0].revoked);
    manager.shutdown().await;
}
