//! The core's operations and their side effects, without sockets: a real
//! store and PKI in a temp dir, a [`Downlink`] nobody drains (so the tests
//! read what each operation asked of the publisher) and a revocation set.

use margo_broker::Revocations;
use margo_schemas::ids::DeploymentId;

use super::*;
use crate::onboarding::{Submission, Submitted};
use crate::store::tests::{doc, valid, PER_CHECK_UTC};
use crate::store::Claims;

struct Harness {
    _dir: tempfile::TempDir,
    fleet: Fleet,
    downlink: Downlink,
    revocations: Revocations,
}

fn harness() -> Harness {
    margo_schemas::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("manager.redb")).expect("store");
    let pki = FleetPki::load_or_create(&dir.path().join("pki"), &["localhost".into()], None)
        .expect("pki");
    let downlink = Downlink::new();
    let revocations = Revocations::new();
    let fleet = Fleet::new(FleetParts {
        store,
        pki: Arc::new(pki),
        downlink: downlink.clone(),
        keys: KeyCache::default(),
        revocations: Some(revocations.clone()),
        public_broker_url: "mqtts://edge.example.com:8883".into(),
    });
    Harness {
        _dir: dir,
        fleet,
        downlink,
        revocations,
    }
}

/// A device's self-signed P-256 certificate, as onboarding receives it.
fn device_submission(auto_approve: bool) -> Submission {
    let made = rcgen::generate_simple_self_signed(vec!["device".into()]).expect("self-signed");
    let der = made.cert.der().to_vec();
    let info = margo_schemas::pki::cert_info(&der).expect("cert info");
    Submission {
        request_id: margo_schemas::digest::Digest::of(&der).hex(),
        key_id: crate::store::key_id(&info.p256_public_key.expect("P-256")),
        cert_der: der,
        claims: Claims {
            name: Some("line-7".into()),
            ..Claims::default()
        },
        token: None,
        source: "192.0.2.7".into(),
        allowlisted: false,
        auto_approve,
        max_pending: 10,
    }
}

#[tokio::test]
async fn deploy_asks_the_publisher_only_when_something_changed() {
    let h = harness();
    let made = h
        .fleet
        .provision("dev-1".into(), None)
        .await
        .expect("provision");
    assert_eq!(made.broker_url, "mqtts://edge.example.com:8883");
    let id = made.client_id;

    let first = h
        .fleet
        .deploy("dev-1".into(), vec![doc("app", "1")])
        .await
        .expect("deploy");
    assert_eq!(first.changed, [DeploymentId::new("app").unwrap()]);
    let asked = h.downlink.take_requested(&id).expect("a request");
    assert!(asked.desired && asked.ack, "{asked:?}");

    let again = h
        .fleet
        .deploy(id.to_string(), vec![doc("app", "1")])
        .await
        .expect("identical deploy");
    assert!(again.changed.is_empty());
    assert_eq!(again.manifest_version, first.manifest_version);
    assert_eq!(h.downlink.take_requested(&id), None, "nothing changed");

    let removed = h
        .fleet
        .undeploy(id.to_string(), DeploymentId::new("app").unwrap())
        .await
        .expect("undeploy");
    assert_eq!(removed.manifest_version, first.manifest_version + 1);
    let asked = h.downlink.take_requested(&id).expect("a request");
    assert_eq!(asked.clears, [DeploymentId::new("app").unwrap()]);
}

#[tokio::test]
async fn bulk_deploy_reaches_named_and_prefixed_clients_once_each() {
    let h = harness();
    let made = h
        .fleet
        .provision_many("sim-".into(), 1, 3, None)
        .await
        .expect("bulk");
    let ids: Vec<ClientId> = made.clients.iter().map(|(id, _, _)| id.clone()).collect();
    let targets = Targets {
        clients: vec!["sim-2".into(), ids[1].to_string()],
        name_prefix: Some("sim-".into()),
    };
    let deployed = h
        .fleet
        .deploy_many(targets, vec![doc("app", "1")])
        .await
        .expect("deploy many");
    let reached: Vec<&ClientId> = deployed.iter().map(|d| &d.client_id).collect();
    assert_eq!(
        reached,
        [&ids[1], &ids[0], &ids[2]],
        "named first, each once"
    );
    for id in &ids {
        assert!(h.downlink.take_requested(id).is_some_and(|r| r.desired));
    }
}

#[tokio::test]
async fn requests_that_cannot_succeed_are_refused_before_anything_is_written() {
    let h = harness();
    let refused = |r: FleetResult<_>| match r {
        Err(e @ (FleetError::Invalid(_) | FleetError::Incomplete(_))) => e.to_string(),
        other => panic!("expected a refusal, got {:?}", other.map(|_: ()| ())),
    };
    let count = h.fleet.provision_many("x-".into(), 1, 0, None).await;
    assert!(refused(count.map(drop)).contains("count"));
    let url = h
        .fleet
        .provision("a".into(), Some("ftp://nowhere".into()))
        .await;
    assert!(refused(url.map(drop)).contains("brokerUrl"));
    let empty = h.fleet.deploy("a".into(), vec![]).await;
    assert!(refused(empty.map(drop)).contains("at least one"));
    let nobody = h
        .fleet
        .deploy_many(Targets::default(), vec![doc("a", "1")])
        .await;
    assert!(refused(nobody.map(drop)).contains("namePrefix"));
    assert!(h.fleet.clients().await.expect("clients").is_empty());
}

#[tokio::test]
async fn revoke_flags_the_client_cuts_the_gateway_and_clears_retained_state() {
    let h = harness();
    let id = h
        .fleet
        .provision("dev-1".into(), None)
        .await
        .expect("provision")
        .client_id;

    let revoked = h.fleet.revoke("dev-1".into()).await.expect("revoke");
    assert!(revoked.record.revoked && !revoked.already_revoked);
    assert_eq!(revoked.connections_closed, Some(0), "no live connection");
    assert!(h.revocations.is_revoked(&id), "the gateway refuses it");
    let asked = h.downlink.take_requested(&id).expect("a request");
    assert!(asked.revoked, "its retained topics are cleared: {asked:?}");
    let record = h.fleet.client_record(&id).await.expect("read");
    assert!(record.expect("exists").revoked, "committed");

    let again = h.fleet.revoke(id.to_string()).await.expect("revoke again");
    assert!(again.already_revoked);
    assert!(h.downlink.take_requested(&id).is_some_and(|r| r.revoked));
}

#[tokio::test]
async fn an_approval_republishes_whoever_decided_it() {
    // By the device's own submission, with approval = "auto".
    let h = harness();
    let Submitted::Approved(auto) = h
        .fleet
        .submit_onboarding(device_submission(true))
        .await
        .expect("submit")
    else {
        panic!("auto approval approves at once");
    };
    assert!(auto.now);
    assert_eq!(auto.client.name, "line-7");
    let asked = h.downlink.take_requested(&auto.client_id).expect("request");
    assert!(
        asked.everything,
        "its retained state waits for it: {asked:?}"
    );

    // By an operator, after the request waited.
    let submission = device_submission(false);
    let request_id = submission.request_id.clone();
    let Submitted::Pending { created, .. } = h
        .fleet
        .submit_onboarding(submission.clone())
        .await
        .expect("submit")
    else {
        panic!("waits for an operator");
    };
    assert!(created);
    assert_eq!(h.fleet.onboarding_requests().await.expect("list").len(), 2);
    let decided = h
        .fleet
        .approve(request_id, Some("line-8".into()))
        .await
        .expect("approve");
    assert!(!decided.http_only, "a P-256 key works over MQTT");
    let client = decided.approved.client_id;
    assert!(h
        .downlink
        .take_requested(&client)
        .is_some_and(|r| r.everything));

    // The device asking again is answered from the decision, not re-approved.
    let Submitted::Approved(earlier) = h
        .fleet
        .submit_onboarding(submission)
        .await
        .expect("resubmit")
    else {
        panic!("approved earlier");
    };
    assert!(!earlier.now);
    assert_eq!(
        h.downlink.take_requested(&client),
        None,
        "no second side effect"
    );
}

#[tokio::test]
async fn a_schedule_is_committed_then_published() {
    let h = harness();
    let id = h
        .fleet
        .provision("dev-1".into(), None)
        .await
        .expect("provision")
        .client_id;
    let valid = valid(PER_CHECK_UTC);
    let stored = h
        .fleet
        .set_schedule("dev-1".into(), Some(valid))
        .await
        .expect("set");
    let first = stored.remote.expect("stored").version;
    assert!(h.downlink.take_requested(&id).is_some_and(|r| r.config));
    let cleared = h
        .fleet
        .set_schedule(id.to_string(), None)
        .await
        .expect("clear");
    let remote = cleared.remote.expect("a cleared config is a new version");
    assert_eq!(remote.version, first + 1);
    assert!(remote.schedule.is_none());
    assert_eq!(
        h.fleet.schedule("dev-1".into()).await.expect("read").remote,
        Some(remote)
    );
}
