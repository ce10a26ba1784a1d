//! The manager's clock stamps what it signs and audits: the envelopes of
//! downlink messages and the audit events of refused uplink read
//! `Store::clock`, so a [`ManualClock`] moved far from the system time shows
//! up in both (issue 11 item 8).

mod common;

use std::time::Duration;

use common::{config, start_with_manual_clock, FakeDevice, WAIT};
use margo_schemas::ids::DeploymentId;
use margo_schemas::messages::{Envelope, Message};
use margo_schemas::topics;
use margo_testkit::eventually_async;
use rumqttc::QoS;

const DEPLOYMENT_ID: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";

fn yaml() -> String {
    format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {DEPLOYMENT_ID}\n    applicationId: com-example-app\n  name: example-app\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
         \x20     - name: web\n        properties:\n          packageLocation: https://example.com/app.tar.gz\n          revision: \"1\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_envelopes_and_ingest_audit_events_read_the_managers_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (manager, clock) = start_with_manual_clock(config(dir.path())).await;
    // A day ahead of the system clock: nothing but the manager's clock reads this.
    let signed_at = clock.advance(Duration::from_secs(24 * 3600));

    let admin = manager.admin();
    let gateway = manager.gateway_addr().expect("embedded gateway");
    let bundle = admin.add_client("clocked", None).await.expect("add client");
    let id = bundle.client_id.clone();
    let filters = [topics::desired_filter(&id), topics::ack(&id)];
    let mut device = FakeDevice::connect(gateway, (&bundle).into(), true, &filters).await;

    admin.deploy("clocked", vec![yaml()]).await.expect("deploy");
    let key = device.manager_key.clone();
    let ts = device
        .mqtt
        .expect_publish("manifest v2", |publish| {
            if publish.payload.is_empty() {
                return None;
            }
            let (_, topic) = topics::parse_device_topic(&publish.topic).expect("a device topic");
            let env = Envelope::open(&publish.payload, 1 << 20, &key, &id, &topic)
                .expect("downlink verifies");
            match env.msg {
                Message::Manifest(m) if m.manifest_version == 2 => Some(env.ts),
                _ => None,
            }
        })
        .await;
    assert_eq!(
        ts, signed_at,
        "the manifest envelope is stamped by the manager's clock"
    );

    // An hour later by the manager's clock, an undecodable status is
    // refused: its audit event carries that time.
    let refused_at = clock.advance(Duration::from_secs(3600));
    device
        .mqtt
        .client
        .publish(
            topics::status(&id, &DeploymentId::new(DEPLOYMENT_ID).expect("id")),
            QoS::AtLeastOnce,
            false,
            b"not a COSE message".to_vec(),
        )
        .await
        .expect("publish");
    let client = id.to_string();
    eventually_async(WAIT, "the refused status is audited", async || {
        admin.audit(10).await.is_ok_and(|r| {
            r.events
                .iter()
                .any(|e| e.client_id.as_deref() == Some(client.as_str()))
        })
    })
    .await;
    let report = admin.audit(10).await.expect("audit");
    let event = report
        .events
        .iter()
        .find(|e| e.client_id.as_deref() == Some(client.as_str()))
        .expect("the event");
    assert_eq!(event.ts_ms, refused_at, "{event:?}");

    manager.shutdown().await;
}
