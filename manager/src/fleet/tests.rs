//! The core's operations and their side effects, without sockets: a real
//! store and PKI in a temp dir, a [`Downlink`] nobody drains (so the tests
//! read what each operation asked of the publisher) and a revocation set.

use margo_broker::Revocations;
use margo_schemas::ids::DeploymentId;

use super::*;
use crate::onboarding::{OnboardingError, RejectFilter, Submission, Submitted};
use crate::store::tests::{doc, valid, PER_CHECK_UTC};
use crate::store::{Claims, IngestOutcome};

struct Harness {
    _dir: tempfile::TempDir,
    fleet: Fleet,
    downlink: Downlink,
    revocations: Revocations,
}

fn harness() -> Harness {
    harness_with_clock(crate::clock::Clock::system())
}

fn harness_with_clock(clock: crate::clock::Clock) -> Harness {
    margo_schemas::pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_with_clock(&dir.path().join("manager.redb"), clock).expect("store");
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
    device_from("192.0.2.7:40000", auto_approve)
}

/// [`device_submission`] from `source` (`ip:port`).
fn device_from(source: &str, auto_approve: bool) -> Submission {
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
        source: source.into(),
        allowlisted: false,
        auto_approve,
        max_pending: 10,
        max_pending_per_source: 10,
        pending_ttl_ms: 3_600_000,
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

/// Issue 12, finding 5: 1,000 pending requests from 61 addresses filled the
/// queue for good (they never expired, even across a restart). Now each
/// waits `pending_ttl` after the device's latest request, then gives its
/// place up.
#[tokio::test]
async fn pending_requests_expire_and_give_their_place_up() {
    let clock = crate::clock::ManualClock::starting_at(1_800_000_000_000);
    let h = harness_with_clock(clock.clock());
    let full = |source: &str| {
        let mut s = device_from(source, false);
        s.max_pending = 2;
        s.pending_ttl_ms = 3_600_000;
        s
    };
    let first = full("192.0.2.1:1");
    let first_id = first.request_id.clone();
    h.fleet.submit_onboarding(first).await.expect("first waits");
    h.fleet
        .submit_onboarding(full("192.0.2.2:1"))
        .await
        .expect("second waits");
    let refused = h.fleet.submit_onboarding(full("192.0.2.3:1")).await;
    assert!(
        matches!(
            refused,
            Err(FleetError::Onboarding(OnboardingError::PendingFull {
                max: 2
            }))
        ),
        "{refused:?}"
    );

    clock.advance(std::time::Duration::from_secs(3599));
    let still = h.fleet.onboarding_requests().await.expect("list");
    assert_eq!(still.len(), 2, "not expired 1 s before");
    assert_eq!(still[0].expires_at, Some(1_800_000_000_000 + 3_600_000));

    clock.advance(std::time::Duration::from_secs(1));
    assert!(h
        .fleet
        .onboarding_requests()
        .await
        .expect("list")
        .is_empty());
    assert!(
        h.fleet
            .onboarding_lookup(first_id)
            .await
            .expect("lookup")
            .is_none(),
        "a polling device gets 404 and posts again"
    );
    let third = h.fleet.submit_onboarding(full("192.0.2.3:1")).await;
    assert!(
        matches!(third, Ok(Submitted::Pending { created: true, .. })),
        "{third:?}"
    );
}

/// Issue 12, finding 5: one source network may hold only so many pending
/// requests (an IPv6 /64 counts as one source).
#[tokio::test]
async fn one_source_network_cannot_fill_the_queue() {
    let h = harness();
    let capped = |source: &str| {
        let mut s = device_from(source, false);
        s.max_pending_per_source = 2;
        s
    };
    for source in ["[2001:db8:1:2::1]:1", "[2001:db8:1:2::ff]:9"] {
        h.fleet
            .submit_onboarding(capped(source))
            .await
            .expect("waits");
    }
    let refused = h
        .fleet
        .submit_onboarding(capped("[2001:db8:1:2:abcd::7]:3"))
        .await;
    assert!(
        matches!(
            &refused,
            Err(FleetError::Onboarding(OnboardingError::SourcePendingFull { max: 2, group }))
                if group == "2001:db8:1:2::/64"
        ),
        "{refused:?}"
    );
    let other = h
        .fleet
        .submit_onboarding(capped("[2001:db8:1:3::1]:1"))
        .await;
    assert!(
        matches!(other, Ok(Submitted::Pending { .. })),
        "another /64: {other:?}"
    );
}

/// Issue 12, finding 5: clearing a flood took one `reject` per id; now one
/// call rejects by age and by source network.
#[tokio::test]
async fn operators_reject_pending_requests_by_filter() {
    let clock = crate::clock::ManualClock::starting_at(1_800_000_000_000);
    let h = harness_with_clock(clock.clock());
    for source in ["198.51.100.1:1", "198.51.100.2:1"] {
        h.fleet
            .submit_onboarding(device_from(source, false))
            .await
            .expect("waits");
    }
    clock.advance(std::time::Duration::from_secs(600));
    let recent = device_from("203.0.113.5:1", false);
    h.fleet
        .submit_onboarding(recent.clone())
        .await
        .expect("waits");

    let none = h.fleet.reject_matching(RejectFilter::default()).await;
    assert!(
        matches!(none, Err(FleetError::Onboarding(OnboardingError::NoFilter))),
        "no filter and no --all: {none:?}"
    );
    let by_age = RejectFilter {
        older_than: Some(std::time::Duration::from_secs(300)),
        from: Some("198.51.100.2".parse().expect("filter")),
        ..RejectFilter::default()
    };
    let rejected = h.fleet.reject_matching(by_age).await.expect("reject");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].source, "198.51.100.2:1");

    let old = RejectFilter {
        older_than: Some(std::time::Duration::from_secs(300)),
        ..RejectFilter::default()
    };
    assert_eq!(h.fleet.reject_matching(old).await.expect("reject").len(), 1);
    let pending: Vec<_> = h
        .fleet
        .onboarding_requests()
        .await
        .expect("list")
        .into_iter()
        .filter(|r| r.state == margo_schemas::onboarding::OnboardingState::Pending)
        .collect();
    assert_eq!(pending.len(), 1, "the recent one still waits");
    assert_eq!(pending[0].request_id, recent.request_id);
    let all = RejectFilter {
        all: true,
        ..RejectFilter::default()
    };
    assert_eq!(h.fleet.reject_matching(all).await.expect("reject").len(), 1);
    let again = h.fleet.submit_onboarding(recent).await;
    assert!(
        matches!(
            again,
            Err(FleetError::Onboarding(OnboardingError::Rejected(_)))
        ),
        "a rejected device stays refused: {again:?}"
    );
}

/// The serial numbers a revocation list PEM names.
fn listed_serials(path: &std::path::Path) -> Vec<Vec<u8>> {
    let pem = std::fs::read(path).expect("the list exists");
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    assert_eq!(block.label, "X509 CRL");
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents).expect("a CRL");
    crl.iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect()
}

/// Issue 12, finding 6: an external broker learns of a revocation from the
/// fleet CA's revocation list, rewritten by every revoke.
#[tokio::test]
async fn revoke_rewrites_the_revocation_list_for_external_brokers() {
    let h = harness();
    let crl = h._dir.path().join("pki").join(revocation_list::CRL_FILE);
    assert_eq!(h.fleet.write_revocation_list().await.expect("write"), 0);
    assert!(listed_serials(&crl).is_empty());

    let kept = h
        .fleet
        .provision("kept".into(), None)
        .await
        .expect("provision");
    let gone = h
        .fleet
        .provision("gone".into(), None)
        .await
        .expect("provision");
    let serial = |der: &[u8]| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("cert");
        cert.tbs_certificate.raw_serial().to_vec()
    };
    let revoked = h.fleet.revoke("gone".into()).await.expect("revoke");
    assert_eq!(revoked.revocation_list_entries, Some(1));
    let listed = listed_serials(&crl);
    assert_eq!(listed, [serial(&gone.device.cert.der)]);
    assert!(!listed.contains(&serial(&kept.device.cert.der)));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&crl).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o644,
        "public, readable by a broker running as another user"
    );
}

/// An uplink batch is stored in one transaction, its refusals become
/// security events, and acks are asked for only after the commit (a
/// duplicate is acked again, never stored twice).
#[tokio::test]
async fn an_uplink_batch_is_stored_audited_and_acked() {
    use crate::store::tests::{state, status_item};
    let h = harness();
    let id = h
        .fleet
        .provision("dev-1".into(), None)
        .await
        .expect("provision")
        .client_id;
    h.downlink.take_requested(&id);
    let verification = crate::store::AuditEvent {
        ts_ms: 1,
        kind: "bad-signature".into(),
        client_id: Some(id.to_string()),
        topic: "t".into(),
        detail: "refused while verifying".into(),
    };
    let batch = vec![state(&id, 1, 1, 1), status_item(&id, 2, "never-assigned")];
    let ingested = h
        .fleet
        .ingest(batch, vec![verification])
        .await
        .expect("ingest");
    assert!(matches!(
        ingested.result.outcomes.as_slice(),
        [IngestOutcome::Stored, IngestOutcome::NotAssigned(_)]
    ));
    assert_eq!(ingested.acks_requested, 1);
    assert!(h.downlink.take_requested(&id).is_some_and(|r| r.ack));
    let (_, counts) = h.fleet.audit(10).await.expect("audit");
    assert_eq!(counts.get("bad-signature"), Some(&1));
    assert_eq!(counts.get("unassigned-deployment"), Some(&1));

    let again = h
        .fleet
        .ingest(vec![state(&id, 1, 1, 1)], Vec::new())
        .await
        .expect("ingest again");
    assert!(matches!(
        again.result.outcomes.as_slice(),
        [IngestOutcome::Duplicate]
    ));
    assert!(h.downlink.take_requested(&id).is_some_and(|r| r.ack));
}
