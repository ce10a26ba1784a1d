//! End to end inside the crate: a real manager (embedded broker + gateway,
//! redb in a temp dir) and a hand-rolled fake device speaking mutual TLS
//! through the gateway with its provisioned bundle, signing with
//! margo-schemas directly.

mod common;

use std::net::SocketAddr;

use common::{config, start, FakeDevice, WAIT};
use margo_manager::admin::ProvisionedBundle;
use margo_manager::ingest::IngestMetric;
use margo_schemas::cose::SigningKey;
use margo_schemas::ids::DeploymentId;
use margo_schemas::messages::{Ack, Envelope, Message, StatusReport};
use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus};
use margo_schemas::topics;
use margo_testkit::mqtt::TestClient;
use margo_testkit::{eventually_async, within};
use rumqttc::QoS;

const DEPLOYMENT_ID: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";

fn yaml(revision: &str) -> String {
    format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {DEPLOYMENT_ID}\n    applicationId: com-example-app\n  name: example-app\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
         \x20     - name: web\n        properties:\n          packageLocation: https://example.com/app.tar.gz\n          revision: \"{revision}\"\n"
    )
}

/// A fake device through `gateway`, subscribed to its desired state and acks.
async fn connect(gateway: SocketAddr, bundle: &ProvisionedBundle, clean: bool) -> FakeDevice {
    let id = &bundle.client_id;
    let filters = [topics::desired_filter(id), topics::ack(id)];
    FakeDevice::connect(gateway, bundle.into(), clean, &filters).await
}

impl FakeDevice {
    async fn expect_ack(&mut self, what: &str, cond: impl Fn(&Ack) -> bool) -> Ack {
        self.expect(what, |m| match m {
            Message::Ack(a) if cond(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    async fn publish_signed(&self, topic: String, env: &Envelope, key: &SigningKey) {
        let payload = env.seal(key).expect("seal");
        self.mqtt
            .client
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_status_ack_bad_signature_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let gateway = manager.gateway_addr().expect("embedded gateway");

    let bundle = admin.add_client("press-7", None).await.expect("add client");
    assert_eq!(bundle.broker_url, "mqtts://localhost:8883");
    let out = dir.path().join("bundle");
    margo_manager::identity_bundle::write_bundle(&out, &bundle).expect("write bundle");
    assert!(matches!(
        margo_manager::identity_bundle::write_bundle(&out, &bundle),
        Err(margo_manager::identity_bundle::BundleError::Exists(_))
    ));
    let dup = admin
        .add_client("press-7", None)
        .await
        .expect_err("duplicate name");
    assert_eq!(dup.status(), Some(409));

    let mut device = connect(gateway, &bundle, false).await;
    device
        .mqtt
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
            manifest_version: 2,
            instance: None,
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
    eventually_async(WAIT, "bad signature counted", async || {
        stats.get(IngestMetric::BadSignature) == 1
    })
    .await;
    // The counter moves when the message is judged; the audit row lands with
    // the next committed batch, so wait for it rather than racing it.
    eventually_async(WAIT, "bad signature audited", async || {
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
    eventually_async(WAIT, "duplicate counted", async || {
        stats.get(IngestMetric::Duplicates) >= 1
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
    let manager = start(config(dir.path())).await;
    let gateway = manager.gateway_addr().expect("embedded gateway");
    let mut device = connect(gateway, &bundle, true).await;
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
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("fresh-1", None).await.expect("add");
    let mut device = connect(manager.gateway_addr().expect("gateway"), &bundle, true).await;
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
    assert_eq!(stats.get(IngestMetric::UnassignedStatus), 1);
    eventually_async(WAIT, "refusal audited", async || {
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
    assert_eq!(stats.get(IngestMetric::UnassignedStatus), 1);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_republishes_and_unknown_topics_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("pump-1", None).await.expect("add");
    admin
        .deploy(bundle.client_id.as_str(), vec![yaml("1")])
        .await
        .expect("deploy");
    let mut device = connect(manager.gateway_addr().expect("gateway"), &bundle, true).await;
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
        .mqtt
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
    eventually_async(WAIT, "malformed counted", async || {
        stats.get(IngestMetric::Malformed) == 1
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
    let password = "e2e-internal-password";
    broker_config.internal.password = Some(password.to_string());
    let broker = within(
        WAIT,
        "external broker start",
        margo_broker::EmbeddedBroker::start(broker_config),
    )
    .await
    .expect("broker starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.broker.mode = margo_manager::config::BrokerMode::External;
    // The manager presents the broker's internal login (a standalone
    // margo-broker's `[internal] password_file`).
    let internal = broker.upstream().addr;
    let password_file = dir.path().join("broker.password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write password");
    config.broker.url = Some(format!("mqtt://{internal}"));
    config.broker.password_file = Some(password_file);
    let manager = start(config).await;
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
    let mqtt = TestClient::plain_login(
        internal,
        id.as_str(),
        margo_broker::INTERNAL_USERNAME,
        password,
    )
    .with_wait(WAIT);
    let filters = [topics::desired_filter(&id), topics::ack(&id)];
    let mut device = FakeDevice::over(mqtt, (&bundle).into(), &filters).await;
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
    let manager = start(config(dir.path())).await;
    let admin = manager.admin();
    let bundle = admin.add_client("old-1", None).await.expect("add");
    admin
        .deploy("old-1", vec![yaml("1")])
        .await
        .expect("deploy");
    let mut device = connect(manager.gateway_addr().expect("gateway"), &bundle, true).await;
    device
        .expect_ack("ack before revocation", |a| a.manifest_version == 2)
        .await;
    let revoked = admin.revoke("old-1").await.expect("revoke");
    assert!(revoked.revoked);
    device
        .mqtt
        .closed("gateway closes the revoked device")
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
