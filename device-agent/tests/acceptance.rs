//! Manifest and deployment acceptance rules, driven by feeding signed
//! messages into the downlink handler directly (no broker).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::manual_clock::ManualClock;
use common::*;
use margo_agent::sync::{DownlinkError, Handled};
use margo_agent::Store;
use margo_schemas::cose::SigningKey;
use margo_schemas::messages::{Message, MessageError, SyncReason};

const CLIENT: &str = "dev1";

const CONTENT_TIMEOUT: Duration = Duration::from_millis(200);

struct Setup {
    fleet: Fleet,
    identity: margo_agent::identity::Identity,
    store: Store,
    agent: margo_agent::Agent,
    /// The agent's clock: timeouts pass when the test advances it.
    clock: ManualClock,
}

fn setup() -> Setup {
    let fleet = Fleet::new();
    let identity = fleet.identity(CLIENT, "mqtts://localhost:8883");
    let store = Store::in_memory().expect("store");
    let clock = ManualClock::new();
    let agent = agent_with_clock(
        identity.clone(),
        store.clone(),
        sim(),
        Some(Arc::new(clock.clone())),
        |c| c.content_timeout = CONTENT_TIMEOUT,
    );
    Setup {
        fleet,
        identity,
        store,
        agent,
        clock,
    }
}

fn syncs(
    uplink: &margo_agent::outbox::Uplink,
    identity: &margo_agent::identity::Identity,
) -> Vec<SyncReason> {
    pending_messages(uplink, identity)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::Sync(s) => Some(s.reason),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn manifest_waits_for_content_in_any_order_then_is_accepted_once() {
    let s = setup();
    let mut parts = s.agent.parts().expect("parts");
    let client = s.identity.client_id.clone();
    let key = &s.fleet.signer;
    let a = yaml("dep-a", "app-a", &[("web", "")]);
    let b = yaml("dep-b", "app-b", &[("db", "")]);
    let m1 = manifest(1, &[&a, &b]);

    // One document before the manifest, one after.
    let (t, p) = deployment_msg(key, &client, &a);
    assert!(matches!(
        parts.downlink.handle_publish(&t, &p),
        Ok(Handled::Cached(_))
    ));
    let (mt, mp) = manifest_msg(key, &client, &m1);
    assert_eq!(
        parts.downlink.handle_publish(&mt, &mp).expect("manifest"),
        Handled::Waiting {
            version: 1,
            missing: 1
        }
    );
    assert!(
        s.store.accepted_manifest().expect("read").is_none(),
        "not accepted while content is missing"
    );
    let (t, p) = deployment_msg(key, &client, &b);
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("deployment"),
        Handled::Accepted(1)
    );
    assert_eq!(
        s.store
            .accepted_manifest()
            .expect("read")
            .expect("accepted")
            .version(),
        1
    );

    // Retained redelivery of the same manifest: ignored quietly.
    assert_eq!(
        parts.downlink.handle_publish(&mt, &mp).expect("again"),
        Handled::Ignored(1)
    );
    // A cleared deployment topic is not a removal.
    assert_eq!(
        parts.downlink.handle_publish(&t, b"").expect("cleared"),
        Handled::Cleared
    );
    let stats = s.agent.handle().stats;
    assert_eq!(stats.security_events.load(Ordering::Relaxed), 0);
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn rollback_and_conflicting_replay_are_security_events() {
    let s = setup();
    let mut parts = s.agent.parts().expect("parts");
    let client = s.identity.client_id.clone();
    let key = &s.fleet.signer;
    let a = yaml("dep-a", "app-a", &[("web", "")]);
    let a2 = yaml("dep-a", "app-a", &[("web", "image: v2")]);
    for (t, p) in [
        deployment_msg(key, &client, &a),
        deployment_msg(key, &client, &a2),
    ] {
        parts.downlink.handle_publish(&t, &p).expect("cached");
    }
    let (t, p) = manifest_msg(key, &client, &manifest(5, &[&a]));
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("v5"),
        Handled::Accepted(5)
    );

    let (t, p) = manifest_msg(key, &client, &manifest(4, &[&a2]));
    assert!(matches!(
        parts.downlink.handle_publish(&t, &p),
        Err(DownlinkError::Rollback {
            offered: 4,
            accepted: 5
        })
    ));
    let (t, p) = manifest_msg(key, &client, &manifest(5, &[&a2]));
    assert!(matches!(
        parts.downlink.handle_publish(&t, &p),
        Err(DownlinkError::Conflict { version: 5 })
    ));
    let stats = s.agent.handle().stats;
    assert_eq!(stats.security_events.load(Ordering::Relaxed), 2);
    assert_eq!(
        s.store
            .accepted_manifest()
            .expect("read")
            .expect("accepted")
            .version(),
        5
    );

    // The accepted version survives a restart: a fresh agent on the same store still refuses v4.
    let again = agent(s.identity.clone(), s.store.clone(), sim(), |_| {});
    let mut parts = again.parts().expect("parts");
    let (t, p) = manifest_msg(key, &client, &manifest(4, &[&a2]));
    assert!(matches!(
        parts.downlink.handle_publish(&t, &p),
        Err(DownlinkError::Rollback { .. })
    ));
}

#[tokio::test]
async fn forged_tampered_and_misdirected_messages_are_dropped() {
    let s = setup();
    let mut parts = s.agent.parts().expect("parts");
    let client = s.identity.client_id.clone();
    let key = &s.fleet.signer;
    let (forger, _) = SigningKey::generate().expect("key");
    let a = yaml("dep-a", "app-a", &[("web", "")]);

    // Signed by a key that is not the manager's.
    let (t, p) = manifest_msg(&forger, &client, &manifest(1, &[&a]));
    assert!(matches!(
        parts.downlink.handle_publish(&t, &p),
        Err(DownlinkError::Message(MessageError::Signature(_)))
    ));
    let (t, p) = deployment_msg(&forger, &client, &a);
    assert!(parts.downlink.handle_publish(&t, &p).is_err());

    // Validly signed, but the bytes do not hash to the announced digest.
    let mut body = margo_schemas::messages::DeploymentBody {
        deployment_id: dep("dep-a"),
        digest: margo_schemas::digest::Digest::of(&a),
        yaml: a.clone(),
    };
    body.yaml = yaml("dep-a", "app-a", &[("evil", "")]);
    let payload = seal(key, &client, Message::Deployment(body));
    let topic = margo_schemas::topics::desired_deployment(&client, &dep("dep-a"));
    assert!(matches!(
        parts.downlink.handle_publish(&topic, &payload),
        Err(DownlinkError::Deployment { .. })
    ));

    // A document whose own id differs from the topic's id.
    let other = yaml("dep-b", "app-b", &[("web", "")]);
    let body = margo_schemas::messages::DeploymentBody {
        deployment_id: dep("dep-a"),
        digest: margo_schemas::digest::Digest::of(&other),
        yaml: other.clone(),
    };
    let payload = seal(key, &client, Message::Deployment(body));
    assert!(matches!(
        parts.downlink.handle_publish(&topic, &payload),
        Err(DownlinkError::IdMismatch { .. })
    ));

    // A manifest sealed for another client, replayed onto ours.
    let other_client = margo_schemas::ids::ClientId::new("dev2").expect("id");
    let payload = seal(key, &other_client, Message::Manifest(manifest(1, &[&a])));
    assert!(matches!(
        parts
            .downlink
            .handle_publish(&margo_schemas::topics::desired_manifest(&client), &payload),
        Err(DownlinkError::Message(MessageError::WrongClient { .. }))
    ));
    // A manifest on the ack topic.
    let payload = seal(key, &client, Message::Manifest(manifest(1, &[&a])));
    assert!(matches!(
        parts
            .downlink
            .handle_publish(&margo_schemas::topics::ack(&client), &payload),
        Err(DownlinkError::Message(MessageError::WrongTopic { .. }))
    ));
    // Garbage and oversized payloads.
    assert!(parts.downlink.handle_publish(&t, b"\x00garbage").is_err());
    assert!(parts
        .downlink
        .handle_publish(&t, &vec![0u8; 2 << 20])
        .is_err());

    // Nothing was cached or accepted; every drop was counted.
    assert!(!s
        .store
        .cache_contains(&margo_schemas::digest::Digest::of(&a))
        .expect("read"));
    assert!(s.store.accepted_manifest().expect("read").is_none());
    let stats = s.agent.handle().stats.snapshot();
    assert_eq!(stats.rejected, 8);
    assert!(stats.security_events >= 5, "{stats:?}");

    // The handler goes on: the genuine messages are still accepted.
    let (t, p) = deployment_msg(key, &client, &a);
    parts
        .downlink
        .handle_publish(&t, &p)
        .expect("genuine deployment");
    let (t, p) = manifest_msg(key, &client, &manifest(1, &[&a]));
    assert_eq!(
        parts
            .downlink
            .handle_publish(&t, &p)
            .expect("genuine manifest"),
        Handled::Accepted(1)
    );
}

#[tokio::test]
async fn manifest_listing_a_digest_under_another_id_is_refused() {
    let s = setup();
    let mut parts = s.agent.parts().expect("parts");
    let client = s.identity.client_id.clone();
    let key = &s.fleet.signer;
    let a = yaml("dep-a", "app-a", &[("web", "")]);
    let (t, p) = deployment_msg(key, &client, &a);
    parts.downlink.handle_publish(&t, &p).expect("cached");
    let mut m = manifest(1, &[&a]);
    m.deployments[0].deployment_id = dep("dep-z");
    let (t, p) = manifest_msg(key, &client, &m);
    assert!(matches!(
        parts.downlink.handle_publish(&t, &p),
        Err(DownlinkError::ContentMismatch { .. })
    ));
    assert!(s.store.accepted_manifest().expect("read").is_none());
}

#[tokio::test]
async fn missing_content_and_newer_acks_ask_for_sync_and_acks_trim_the_outbox() {
    let s = setup();
    let mut parts = s.agent.parts().expect("parts");
    let client = s.identity.client_id.clone();
    let key = &s.fleet.signer;
    let a = yaml("dep-a", "app-a", &[("web", "")]);

    // A manifest whose document never arrives: after the content timeout, sync.
    let (t, p) = manifest_msg(key, &client, &manifest(1, &[&a]));
    parts.downlink.handle_publish(&t, &p).expect("waiting");
    parts.downlink.on_timer().expect("timer");
    s.clock.advance(CONTENT_TIMEOUT - Duration::from_millis(1));
    parts.downlink.on_timer().expect("timer");
    assert!(
        syncs(&parts.uplink, &s.identity).is_empty(),
        "not before the timeout"
    );
    s.clock.advance(Duration::from_millis(1));
    parts.downlink.on_timer().expect("timer");
    assert_eq!(
        syncs(&parts.uplink, &s.identity),
        vec![SyncReason::MissingContent]
    );

    // The ack covers the sync; it also announces version 2, which we do not
    // have (a content timeout after the last sync, so not rate-limited).
    let (t, p) = ack_msg(key, &client, 1, 2);
    s.clock.advance(CONTENT_TIMEOUT);
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("ack"),
        Handled::Acked {
            removed: 1,
            sync: true
        }
    );
    assert_eq!(syncs(&parts.uplink, &s.identity), vec![SyncReason::Behind]);
    // Repeated acks within the content timeout do not flood the manager with syncs.
    let (t, p) = ack_msg(key, &client, 1, 2);
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("ack"),
        Handled::Acked {
            removed: 0,
            sync: false
        }
    );
    let (t, p) = ack_msg(key, &client, 2, 1);
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("ack"),
        Handled::Acked {
            removed: 1,
            sync: false
        }
    );
    assert!(parts.uplink.lock().is_empty());
}

#[tokio::test]
async fn in_manifest_on_demand_mode_a_newer_ack_marks_the_agent_behind_instead_of_syncing() {
    let s = setup();
    let mut parts = s.agent.parts().expect("parts");
    let client = s.identity.client_id.clone();
    let key = &s.fleet.signer;
    let a = yaml("dep-a", "app-a", &[("web", "")]);
    let (t, p) = deployment_msg(key, &client, &a);
    parts.downlink.handle_publish(&t, &p).expect("cached");
    let (t, p) = manifest_msg(key, &client, &manifest(1, &[&a]));
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("accepted"),
        Handled::Accepted(1)
    );
    parts.downlink.set_manifest_on_demand(true);

    // The same version: nothing to fetch.
    let (t, p) = ack_msg(key, &client, 0, 1);
    parts.downlink.handle_publish(&t, &p).expect("ack");
    assert!(!parts.downlink.is_behind());

    // A newer version: recorded, no sync (the connection fetches the manifest).
    let (t, p) = ack_msg(key, &client, 0, 2);
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("ack"),
        Handled::Acked {
            removed: 0,
            sync: false
        }
    );
    assert!(parts.downlink.is_behind());
    assert!(syncs(&parts.uplink, &s.identity).is_empty());

    // A forged ack claiming a newer version changes nothing.
    let (forger, _) = SigningKey::generate().expect("key");
    let (t, p) = ack_msg(&forger, &client, 0, 9);
    assert!(parts.downlink.handle_publish(&t, &p).is_err());

    // The announced manifest arrives: no longer behind.
    let b = yaml("dep-b", "app-b", &[("web", "")]);
    let (t, p) = deployment_msg(key, &client, &b);
    parts.downlink.handle_publish(&t, &p).expect("cached");
    let (t, p) = manifest_msg(key, &client, &manifest(2, &[&a, &b]));
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("accepted"),
        Handled::Accepted(2)
    );
    assert!(!parts.downlink.is_behind());

    // Outside that mode a newer ack asks for a sync, as before.
    parts.downlink.set_manifest_on_demand(false);
    let (t, p) = ack_msg(key, &client, 0, 3);
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("ack"),
        Handled::Acked {
            removed: 0,
            sync: true
        }
    );
    assert_eq!(syncs(&parts.uplink, &s.identity), vec![SyncReason::Behind]);
}

#[test]
fn a_bundle_whose_signing_certificate_the_fleet_ca_did_not_issue_is_refused() {
    let fleet = Fleet::new();
    let other = Fleet::new();
    let mut pem = fleet.device("abc123", "mqtts://localhost:8883");
    assert!(margo_agent::identity::Identity::from_pem(pem.clone()).is_ok());
    // A signing certificate from another CA: downlink signed with it must never be trusted.
    pem.manager_signing_cert_pem = other.device("abc123", "x").manager_signing_cert_pem;
    let err = margo_agent::identity::Identity::from_pem(pem)
        .expect_err("foreign signing certificate accepted");
    assert!(
        err.to_string().contains("manager-signing.crt"),
        "error does not name the file: {err}"
    );
}

fn config_msg(
    key: &SigningKey,
    client: &margo_schemas::ids::ClientId,
    version: u64,
    schedule: Option<&str>,
) -> (String, Vec<u8>) {
    let schedule = schedule.map(|text| toml::from_str(text).expect("schedule TOML"));
    (
        margo_schemas::topics::config(client),
        seal(
            key,
            client,
            Message::Config(margo_schemas::messages::DeviceConfig { version, schedule }),
        ),
    )
}

const LOCAL: &str =
    "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"06:00\", end = \"07:00\" }]\n";
const REMOTE: &str =
    "time_zone = \"Europe/Berlin\"\nconnection = \"per-check\"\n[polling]\nrate = \"30m\"\n";

#[tokio::test]
async fn remote_schedule_is_versioned_persisted_reported_and_falls_back_to_local() {
    use margo_schemas::messages::ScheduleSource;
    let s = setup();
    let local_agent = |store: Store| {
        agent(s.identity.clone(), store, sim(), |c| {
            c.schedule = Some(toml::from_str(LOCAL).unwrap());
        })
    };
    let a = local_agent(s.store.clone());
    let mut parts = a.parts().expect("parts");
    let client = s.identity.client_id.clone();
    let key = &s.fleet.signer;
    let in_force = |rx: &margo_agent::schedule_plan::ScheduleRx| {
        rx.borrow().as_ref().map(|a| {
            (
                a.source,
                a.config_version,
                a.schedule.time_zone_name().to_string(),
            )
        })
    };
    assert_eq!(
        in_force(&parts.schedule),
        Some((ScheduleSource::Local, 0, "UTC".into()))
    );

    let (t, p) = config_msg(key, &client, 3, Some(REMOTE));
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("config"),
        Handled::Configured(3)
    );
    assert_eq!(
        in_force(&parts.schedule),
        Some((ScheduleSource::Remote, 3, "Europe/Berlin".into()))
    );
    // The schedule in force is reported at once.
    let reported = pending_messages(&parts.uplink, &s.identity)
        .into_iter()
        .rev()
        .find_map(|(_, m)| match m {
            Message::State(st) => st.schedule,
            _ => None,
        })
        .expect("a state report naming the schedule");
    assert_eq!(reported.source, ScheduleSource::Remote);
    assert_eq!(reported.config_version, 3);
    assert_eq!(reported.schedule.time_zone, "Europe/Berlin");

    // Retained redelivery: quietly ignored. Older or conflicting: security events.
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("again"),
        Handled::Ignored(3)
    );
    let events = a.handle().stats.security_events.load(Ordering::Relaxed);
    let (t2, p2) = config_msg(key, &client, 2, None);
    assert!(matches!(
        parts.downlink.handle_publish(&t2, &p2),
        Err(DownlinkError::ConfigRollback {
            offered: 2,
            held: 3
        })
    ));
    let (t3, p3) = config_msg(key, &client, 3, Some(LOCAL));
    assert!(matches!(
        parts.downlink.handle_publish(&t3, &p3),
        Err(DownlinkError::ConfigConflict { version: 3 })
    ));
    assert_eq!(
        a.handle().stats.security_events.load(Ordering::Relaxed),
        events + 2
    );
    // An invalid schedule is refused; the one in force stays.
    let (t4, p4) = config_msg(key, &client, 4, Some("time_zone = \"Nowhere/Land\"\n"));
    let err = parts.downlink.handle_publish(&t4, &p4).unwrap_err();
    assert!(err.to_string().contains("time_zone"), "{err}");
    assert_eq!(in_force(&parts.schedule).unwrap().1, 3);

    // Persisted: a restarted agent starts with the remote schedule.
    let restarted = local_agent(s.store.clone()).parts().expect("parts");
    assert_eq!(
        in_force(&restarted.schedule),
        Some((ScheduleSource::Remote, 3, "Europe/Berlin".into()))
    );

    // Cleared by the manager: back to the local schedule.
    let (t5, p5) = config_msg(key, &client, 5, None);
    assert_eq!(
        parts.downlink.handle_publish(&t5, &p5).expect("clear"),
        Handled::Configured(5)
    );
    assert_eq!(
        in_force(&parts.schedule),
        Some((ScheduleSource::Local, 0, "UTC".into()))
    );
}

/// The MQTT side of "fails alone": a document whose digest is right but
/// whose `apiVersion` the agent does not know is remembered by digest, and
/// the manifest is accepted without waiting for it (the same judgement as
/// the HTTP transport, `sync::judge_document`).
#[tokio::test]
async fn an_unusable_document_is_remembered_and_does_not_hold_the_manifest() {
    use margo_schemas::digest::Digest;
    use margo_schemas::ids::DeploymentId;
    use margo_schemas::manifest::DeploymentRef;
    let s = setup();
    let mut parts = s.agent.parts().expect("parts");
    let client = s.identity.client_id.clone();
    let key = &s.fleet.signer;
    let a = yaml("dep-a", "app-a", &[("web", "")]);
    let odd = String::from_utf8(yaml("dep-b", "app-b", &[("web", "")]))
        .expect("utf8")
        .replace("application.margo.org/v1alpha1", "example.com/v9")
        .into_bytes();
    let mut m = manifest(1, &[&a]);
    m.deployments.push(DeploymentRef {
        deployment_id: DeploymentId::new("dep-b").expect("id"),
        digest: Digest::of(&odd),
        size_bytes: None,
        url: None,
    });
    let (t, p) = manifest_msg(key, &client, &m);
    assert_eq!(
        parts.downlink.handle_publish(&t, &p).expect("manifest"),
        Handled::Waiting {
            version: 1,
            missing: 2
        }
    );
    let (t, p) = deployment_msg(key, &client, &a);
    assert!(matches!(
        parts.downlink.handle_publish(&t, &p),
        Ok(Handled::Cached(_))
    ));
    let body = margo_schemas::messages::DeploymentBody {
        deployment_id: DeploymentId::new("dep-b").expect("id"),
        digest: Digest::of(&odd),
        yaml: odd.clone(),
    };
    let topic = margo_schemas::topics::desired_deployment(
        &client,
        &DeploymentId::new("dep-b").expect("id"),
    );
    let payload = seal(key, &client, Message::Deployment(body));
    assert_eq!(
        parts
            .downlink
            .handle_publish(&topic, &payload)
            .expect("judged"),
        Handled::Accepted(1),
        "the unusable document does not hold the manifest back"
    );
    let refused = s
        .store
        .refused_get(&Digest::of(&odd))
        .expect("read")
        .expect("remembered");
    assert!(refused.reason.contains("apiVersion"), "{}", refused.reason);
    let stats = s.agent.handle().stats;
    assert_eq!(stats.deployments_refused.load(Ordering::Relaxed), 1);
    assert_eq!(stats.security_events.load(Ordering::Relaxed), 0);
}
