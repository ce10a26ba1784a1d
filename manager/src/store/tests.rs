use super::clients::CLIENT_CERTS;
use super::uplink::{ABOVE_HWM, HWM};
use super::*;
use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::{Envelope, Message, ScheduleInForce, StateReport, StatusReport};
use margo_schemas::schedule::{Schedule, ValidSchedule};
use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus};

pub(crate) fn doc(id: &str, revision: &str) -> ApplicationDeployment {
    let yaml = format!(
        "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {id}\n  name: app-{id}\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
         \x20     - name: web\n        properties:\n          revision: \"{revision}\"\n"
    );
    ApplicationDeployment::parse(yaml.into_bytes()).expect("valid test document")
}

pub(crate) fn open() -> (tempfile::TempDir, Store, ClientId) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("m.redb")).expect("open");
    let id = ClientId::generate();
    store.add_client(&id, "dev-1", b"cert").expect("add");
    (dir, store, id)
}

pub(crate) fn state(client: &ClientId, seq: u64, low: u64, adopted: u64) -> UplinkItem {
    let mut env = Envelope::new(
        client.clone(),
        seq,
        1,
        Message::State(StateReport {
            adopted_manifest_version: adopted,
            agent_version: "test".into(),
            deployments: vec![],
            schedule: None,
        }),
    );
    env.low = low;
    UplinkItem::Message(Box::new(env))
}

#[test]
fn certificate_index_is_kept_and_rebuilt_for_older_databases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.redb");
    let store = Store::open(&path).expect("open");
    let (a, b) = (ClientId::generate(), ClientId::generate());
    store.add_client(&a, "dev-a", b"cert-a").expect("add");
    store.add_client(&b, "dev-b", b"cert-b").expect("add");
    store.set_revoked(&b, true).expect("revoke");
    let found = |s: &Store, der: &[u8]| s.client_by_certificate(der).expect("lookup");
    assert_eq!(found(&store, b"cert-a").map(|e| e.id), Some(a.clone()));
    let revoked = found(&store, b"cert-b").expect("a revoked client is still found");
    assert!(revoked.record.revoked);
    assert!(found(&store, b"cert-c").is_none());
    // A database from before the index: the table is empty.
    {
        let txn = store.begin_write().expect("txn");
        txn.delete_table(CLIENT_CERTS).expect("drop the index");
        txn.commit().expect("commit");
    }
    drop(store);
    let store = Store::open(&path).expect("reopen");
    assert_eq!(found(&store, b"cert-a").map(|e| e.id), Some(a));
    assert_eq!(found(&store, b"cert-b").map(|e| e.id), Some(b));
}

#[test]
fn clients_are_unique_and_resolvable_by_name() {
    let (_dir, store, id) = open();
    assert!(matches!(
        store.add_client(&ClientId::generate(), "dev-1", b"x"),
        Err(StoreError::NameTaken(_))
    ));
    assert!(matches!(
        store.add_client(&id, "other", b"x"),
        Err(StoreError::ClientExists(_))
    ));
    assert_eq!(store.resolve("dev-1").expect("by name"), id);
    assert_eq!(store.resolve(id.as_str()).expect("by id"), id);
    assert!(matches!(
        store.resolve("nope"),
        Err(StoreError::UnknownClient(_))
    ));
    assert!(matches!(
        store.add_client(&ClientId::generate(), " padded", b"x"),
        Err(StoreError::InvalidName(_))
    ));
}

#[test]
fn bulk_add_and_deploy_many_are_all_or_nothing() {
    let (_dir, store, first) = open();
    let more: Vec<(ClientId, String, Vec<u8>)> = (2..=4)
        .map(|i| (ClientId::generate(), format!("dev-{i}"), b"cert".to_vec()))
        .collect();
    store.add_clients(&more).expect("bulk add");
    // A taken name anywhere in the batch adds none of it.
    let clash = vec![
        (ClientId::generate(), "fresh".to_string(), b"c".to_vec()),
        (ClientId::generate(), "dev-2".to_string(), b"c".to_vec()),
    ];
    assert!(matches!(
        store.add_clients(&clash),
        Err(StoreError::NameTaken(_))
    ));
    assert!(!store.name_taken("fresh").expect("lookup"));

    store
        .add_client(&ClientId::generate(), "other-1", b"c")
        .expect("add");
    let revoked = store.resolve("dev-4").expect("dev-4");
    store.set_revoked(&revoked, true).expect("revoke");
    let selected = store.clients_with_name_prefix("dev-").expect("prefix");
    let mut expected = vec![first.clone(), more[0].0.clone(), more[1].0.clone()];
    expected.sort_by_key(|id| store.client(id).expect("read").expect("known").name);
    assert_eq!(
        selected, expected,
        "dev-1..3, not other-1, not revoked dev-4"
    );

    let outcomes = store
        .deploy_many(&selected, &[doc("a", "1")])
        .expect("deploy many");
    // Version 1 is the zero-deployment manifest: the first deploy makes 2.
    assert!(outcomes.iter().all(|o| o.manifest_version == 2));
    let outcomes = store
        .deploy_many(&selected, &[doc("a", "2")])
        .expect("update many");
    assert!(outcomes
        .iter()
        .all(|o| o.manifest_version == 3 && o.changed.len() == 1));
    // A revoked client in the list fails the whole call; nothing changes.
    let mut with_revoked = selected.clone();
    with_revoked.push(revoked);
    assert!(matches!(
        store.deploy_many(&with_revoked, &[doc("a", "3")]),
        Err(StoreError::Revoked(_))
    ));
    assert_eq!(
        store.desired_state(&first).expect("state").manifest_version,
        3
    );
}

#[test]
fn deploy_bumps_the_version_once_and_only_on_change() {
    let (_dir, store, id) = open();
    let out = store
        .deploy(&id, &[doc("a", "1"), doc("b", "1")])
        .expect("deploy");
    assert_eq!(
        out.manifest_version, 2,
        "the first deploy follows version 1"
    );
    assert_eq!(out.changed.len(), 2);
    let again = store.deploy(&id, &[doc("a", "1")]).expect("same again");
    assert_eq!(again.manifest_version, 2);
    assert!(again.changed.is_empty());
    let update = store
        .deploy(&id, &[doc("a", "2"), doc("b", "1")])
        .expect("update");
    assert_eq!(update.manifest_version, 3);
    assert_eq!(update.changed, vec![DeploymentId::new("a").expect("id")]);

    let desired = store.desired_state(&id).expect("desired");
    assert_eq!(desired.manifest_version, 3);
    assert_eq!(desired.deployments.len(), 2);
    assert_eq!(desired.deployments[0].id.as_str(), "a");
    assert_eq!(desired.deployments[0].yaml, doc("a", "2").bytes());
    assert_eq!(desired.deployments[0].digest, doc("a", "2").digest());
}

#[test]
fn undeploy_removes_and_bumps() {
    let (_dir, store, id) = open();
    store
        .deploy(&id, &[doc("a", "1"), doc("b", "1")])
        .expect("deploy");
    let a = DeploymentId::new("a").expect("id");
    assert_eq!(store.undeploy(&id, &a).expect("undeploy"), 3);
    assert!(matches!(
        store.undeploy(&id, &a),
        Err(StoreError::NotDeployed { .. })
    ));
    let desired = store.desired_state(&id).expect("desired");
    assert_eq!(desired.manifest_version, 3);
    assert_eq!(desired.deployments.len(), 1);
    assert_eq!(desired.ack.manifest_version, 3);
}

#[test]
fn nothing_assigned_is_version_1_with_no_deployments() {
    let (_dir, store, id) = open();
    let desired = store.desired_state(&id).expect("desired");
    assert_eq!(desired.manifest_version, 1);
    assert!(desired.deployments.is_empty());
    assert_eq!(desired.ack.manifest_version, 1);
    assert_eq!(store.ack_for(&id).expect("ack").manifest_version, 1);
    assert_eq!(
        store.acks_for(std::slice::from_ref(&id)).expect("acks")[0].manifest_version,
        1
    );
    let snapshot = store.client_snapshot(&id).expect("snapshot");
    assert_eq!(snapshot.desired_version, 1, "what the fleet view shows");
    // A database from before this reading: a stored 1 with a deployment
    // stays 1, and the next change makes 2.
    assert_eq!(desired_version(None), 1);
    assert_eq!(desired_version(Some(0)), 1);
    assert_eq!(desired_version(Some(1)), 1);
    assert_eq!(desired_version(Some(7)), 7);
}

pub(crate) fn status_item(client: &ClientId, seq: u64, deployment: &str) -> UplinkItem {
    UplinkItem::Message(Box::new(Envelope::new(
        client.clone(),
        seq,
        1,
        Message::Status(StatusReport {
            adopted_manifest_version: 2,
            status: DeploymentStatus::new(
                DeploymentId::new(deployment).expect("id"),
                vec![ComponentStatus {
                    name: "web".into(),
                    state: DeploymentState::Removed,
                    error: None,
                }],
                None,
            ),
        }),
    )))
}

#[test]
fn status_of_a_deployment_never_assigned_is_settled_not_stored() {
    let (_dir, store, id) = open();
    store
        .deploy(&id, &[doc("a", "1"), doc("b", "1")])
        .expect("deploy");
    let b = DeploymentId::new("b").expect("id");
    store.undeploy(&id, &b).expect("undeploy");
    let r = store
        .ingest(&[
            status_item(&id, 1, "never"),
            status_item(&id, 2, "a"),
            status_item(&id, 3, "b"),
        ])
        .expect("ingest");
    assert_eq!(
        r.outcomes,
        vec![
            IngestOutcome::NotAssigned(DeploymentId::new("never").expect("id")),
            IngestOutcome::Stored,
            IngestOutcome::Stored,
        ],
        "an undeployed deployment is still reported (removing/removed)"
    );
    // Settled: acknowledged, so the device's outbox drains.
    assert!(r.ack.contains(&id));
    assert_eq!(store.ack_for(&id).expect("ack").acked_seq, 3);
    // What the fleet view joins: a desired, b reported while removed,
    // "never" nowhere.
    let snapshot = store.client_snapshot(&id).expect("snapshot");
    let desired: Vec<&str> = snapshot.desired.iter().map(|(d, _)| d.as_str()).collect();
    let reported: Vec<&str> = snapshot.reported.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(desired, vec!["a"]);
    assert_eq!(reported, vec!["a", "b"]);
    // Resent: a duplicate, not refused again.
    let r = store
        .ingest(&[status_item(&id, 1, "never")])
        .expect("ingest");
    assert_eq!(r.outcomes, vec![IngestOutcome::Duplicate]);

    // Over HTTP: refused, never stored; an undeployed one accepted.
    let never = DeploymentStatus::new(DeploymentId::new("never").expect("id"), vec![], None);
    assert!(matches!(
        store.record_http_status(&id, &never, None),
        Err(ReportError::NotAssigned(d)) if d.as_str() == "never"
    ));
    let removed = DeploymentStatus::new(b.clone(), vec![], None);
    assert!(store.record_http_status(&id, &removed, Some(3)).is_ok());
    // Another client's deployment is not this one's.
    let other = ClientId::generate();
    store.add_client(&other, "dev-2", b"cert").expect("add");
    assert!(matches!(
        store.record_http_status(&other, &removed, None),
        Err(ReportError::NotAssigned(_))
    ));
}

#[test]
fn revoked_clients_get_no_deployments_and_no_uplink() {
    let (_dir, store, id) = open();
    store.set_revoked(&id, true).expect("revoke");
    assert!(matches!(
        store.deploy(&id, &[doc("a", "1")]),
        Err(StoreError::Revoked(_))
    ));
    let r = store.ingest(&[state(&id, 1, 0, 0)]).expect("ingest");
    assert_eq!(r.outcomes, vec![IngestOutcome::Refused]);
    assert!(r.ack.is_empty());
}

#[test]
fn uplink_is_deduplicated_by_client_and_seq() {
    let (_dir, store, id) = open();
    let other = ClientId::generate();
    store.add_client(&other, "dev-2", b"cert").expect("add");
    let r = store
        .ingest(&[
            state(&id, 1, 0, 0),
            state(&id, 1, 0, 0),
            state(&other, 1, 0, 0),
        ])
        .expect("ingest");
    assert_eq!(
        r.outcomes,
        vec![
            IngestOutcome::Stored,
            IngestOutcome::Duplicate,
            IngestOutcome::Stored
        ]
    );
    assert_eq!(r.ack.len(), 2);
    // A later batch with the same seq is a duplicate too, and still acked.
    let r = store.ingest(&[state(&id, 1, 0, 0)]).expect("ingest");
    assert_eq!(r.outcomes, vec![IngestOutcome::Duplicate]);
    assert!(r.ack.contains(&id));
    assert_eq!(store.uplink(&id).expect("uplink").len(), 1);
    assert_eq!(store.ack_for(&id).expect("ack").acked_seq, 1);
}

#[test]
fn high_water_mark_follows_gaps_and_low() {
    let (_dir, store, id) = open();
    store
        .ingest(&[state(&id, 1, 1, 0), state(&id, 3, 1, 0)])
        .expect("ingest");
    assert_eq!(store.ack_for(&id).expect("ack").acked_seq, 1, "gap at 2");
    store.ingest(&[state(&id, 2, 1, 0)]).expect("ingest");
    assert_eq!(store.ack_for(&id).expect("ack").acked_seq, 3, "gap filled");
    // 4 was dropped by the device's overflow policy: low = 5 settles it.
    store.ingest(&[state(&id, 6, 5, 0)]).expect("ingest");
    assert_eq!(
        store.ack_for(&id).expect("ack").acked_seq,
        4,
        "5 still missing"
    );
    store.ingest(&[state(&id, 5, 5, 0)]).expect("ingest");
    assert_eq!(store.ack_for(&id).expect("ack").acked_seq, 6);
    // low jumping past stored seqs above the mark clears them.
    store
        .ingest(&[state(&id, 9, 1, 0), state(&id, 12, 11, 0)])
        .expect("ingest");
    assert_eq!(store.ack_for(&id).expect("ack").acked_seq, 10);
    let seqs: Vec<u64> = store
        .uplink(&id)
        .expect("uplink")
        .iter()
        .map(|u| u.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 5, 6, 9, 12]);
    // Below the mark = duplicate.
    let r = store.ingest(&[state(&id, 4, 0, 0)]).expect("ingest");
    assert_eq!(r.outcomes, vec![IngestOutcome::Duplicate]);
}

/// The seq window as the tables hold it: the mark in `uplink_hwm`, one
/// `(clientId, seq)` row per settled seq above it in `uplink_above_hwm`.
fn stored_window(store: &Store, client: &ClientId) -> (Option<u64>, Vec<u64>) {
    let txn = store.begin_read().expect("read");
    let c = client.as_str();
    let hwm = txn
        .open_table(HWM)
        .expect("table")
        .get(c)
        .expect("get")
        .map(|v| v.value());
    let above = txn
        .open_table(ABOVE_HWM)
        .expect("table")
        .range((c, 0u64)..=(c, u64::MAX))
        .expect("range")
        .map(|r| r.expect("row").0.value().1)
        .collect();
    (hwm, above)
}

#[test]
fn the_seq_window_is_stored_as_a_mark_and_rows_above_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.redb");
    let id = ClientId::generate();
    {
        let store = Store::open(&path).expect("open");
        store.add_client(&id, "dev", b"cert").expect("add");
        assert_eq!(stored_window(&store, &id), (None, vec![]));
        store
            .ingest(&[
                state(&id, 1, 0, 0),
                state(&id, 3, 0, 0),
                state(&id, 5, 0, 0),
            ])
            .expect("ingest");
        assert_eq!(stored_window(&store, &id), (Some(1), vec![3, 5]));
    }
    // Read back after reopening: 2 closes the first gap, 4 is still missing.
    let store = Store::open(&path).expect("reopen");
    let r = store
        .ingest(&[state(&id, 3, 0, 0), state(&id, 2, 0, 0)])
        .expect("ingest");
    assert_eq!(
        r.outcomes,
        vec![IngestOutcome::Duplicate, IngestOutcome::Stored]
    );
    assert_eq!(stored_window(&store, &id), (Some(3), vec![5]));
    // low = 7 settles 4 and 6; the rows below the new mark go.
    store.ingest(&[state(&id, 8, 7, 0)]).expect("ingest");
    assert_eq!(stored_window(&store, &id), (Some(6), vec![8]));
    store.ingest(&[state(&id, 7, 7, 0)]).expect("ingest");
    assert_eq!(stored_window(&store, &id), (Some(8), vec![]));
}

#[test]
fn audit_is_counted_and_bounded() {
    let (_dir, store, _id) = open();
    let event = |kind: &str| AuditEvent {
        ts_ms: 1,
        kind: kind.into(),
        client_id: None,
        topic: "t".into(),
        detail: "d".into(),
    };
    store
        .record_audit(&[
            event("bad-signature"),
            event("bad-signature"),
            event("malformed"),
        ])
        .expect("audit");
    let (events, counts) = store.audit(10).expect("read");
    assert_eq!(events.len(), 3);
    assert_eq!(counts.get("bad-signature"), Some(&2));
    assert_eq!(counts.get("malformed"), Some(&1));
}

pub(crate) fn valid(text: &str) -> ValidSchedule {
    let s: Schedule = toml::from_str(text).expect("test schedule parses");
    ValidSchedule::try_from(s).expect("test schedule is valid")
}

pub(crate) const PER_CHECK_UTC: &str = "time_zone = \"UTC\"\nconnection = \"per-check\"\n\
    [polling]\nperiod = [{ start = \"08:00\", end = \"18:00\" }]\nrate = \"15m\"\n";

pub(crate) fn state_with_schedule(
    client: &ClientId,
    seq: u64,
    schedule: Option<ScheduleInForce>,
) -> UplinkItem {
    UplinkItem::Message(Box::new(Envelope::new(
        client.clone(),
        seq,
        1,
        Message::State(StateReport {
            adopted_manifest_version: 0,
            agent_version: "test".into(),
            deployments: vec![],
            schedule,
        }),
    )))
}

pub(crate) fn ms(rfc3339: &str) -> u64 {
    let t: jiff::Timestamp = rfc3339.parse().expect("test instant");
    u64::try_from(t.as_millisecond()).expect("after the epoch")
}

#[test]
fn remote_schedule_versions_grow_by_one_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.redb");
    let id = ClientId::generate();
    let other = ClientId::generate();
    {
        let store = Store::open(&path).expect("open");
        store.add_client(&id, "dev", b"cert").expect("add");
        store.add_client(&other, "dev-2", b"cert").expect("add");
        assert_eq!(store.remote_config(&id).expect("read"), None);
        let first = store
            .set_schedule(&id, Some(valid(PER_CHECK_UTC)))
            .expect("set");
        assert_eq!(first.version, 1);
        assert_eq!(
            first.schedule.as_ref().map(|s| s.time_zone.as_str()),
            Some("UTC")
        );
        let second = store
            .set_schedule(&id, Some(valid(PER_CHECK_UTC)))
            .expect("set again");
        assert_eq!(second.version, 2, "every call is a change");
        // Versions are per client.
        assert_eq!(store.set_schedule(&other, None).expect("clear").version, 1);
    }
    let store = Store::open(&path).expect("reopen");
    let stored = store.remote_config(&id).expect("read").expect("stored");
    assert_eq!(stored.version, 2);
    let cleared = store.set_schedule(&id, None).expect("clear");
    assert_eq!(cleared.version, 3);
    assert_eq!(cleared.schedule, None);
    assert_eq!(store.remote_config(&id).expect("read"), Some(cleared));
}

#[test]
fn remote_schedule_of_unknown_or_revoked_clients_is_refused() {
    let (_dir, store, id) = open();
    assert!(matches!(
        store.set_schedule(&ClientId::generate(), None),
        Err(StoreError::UnknownClient(_))
    ));
    store.set_revoked(&id, true).expect("revoke");
    assert!(matches!(
        store.set_schedule(&id, Some(valid(PER_CHECK_UTC))),
        Err(StoreError::Revoked(_))
    ));
    assert_eq!(store.remote_config(&id).expect("read"), None);
}

#[test]
fn data_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.redb");
    let id = ClientId::generate();
    {
        let store = Store::open(&path).expect("open");
        store.add_client(&id, "dev", b"cert").expect("add");
        store.deploy(&id, &[doc("a", "1")]).expect("deploy");
        store.ingest(&[state(&id, 1, 0, 2)]).expect("ingest");
    }
    let store = Store::open(&path).expect("reopen");
    let desired = store.desired_state(&id).expect("desired");
    assert_eq!(desired.manifest_version, 2);
    assert_eq!(desired.ack.acked_seq, 1);
}
