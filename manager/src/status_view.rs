//! The fleet view operators see (`margoctl status`, `GET /v1/status`): for
//! each client, what is desired and what it reported per deployment,
//! joined with its presence and reported schedule into its availability
//! ([`availability::classify`]). A read model over the store: it reads one
//! [`ClientSnapshot`] per client (one transaction) and joins it here, so the
//! store stays persistence only.

use std::collections::BTreeMap;

use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::ScheduleInForce;
use margo_schemas::schedule::ValidSchedule;
use margo_schemas::status::{ComponentStatus, DeploymentState, StatusError};
use serde::{Deserialize, Serialize};

use crate::availability::{self, Availability, Observed};
use crate::store::{ClientSnapshot, Store, StoreError};

/// Per-deployment view in [`ClientStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    /// The deployment id.
    pub deployment_id: DeploymentId,
    /// `metadata.name` of the desired document, if desired.
    pub name: Option<String>,
    /// `apiVersion` of the desired document, if desired (and recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Desired digest, `None` if no longer desired (e.g. being removed).
    pub desired_digest: Option<String>,
    /// Latest reported overall state.
    pub state: Option<DeploymentState>,
    /// Latest reported component states.
    pub components: Vec<ComponentStatus>,
    /// Latest reported overall error.
    pub error: Option<StatusError>,
    /// The manifest version the device was applying when it reported.
    pub reported_manifest_version: Option<u64>,
    /// When the latest status was stored (ms).
    pub updated_at: Option<u64>,
}

/// Fleet view of one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    /// The id.
    pub client_id: ClientId,
    /// The name.
    pub name: String,
    /// Whether revoked.
    pub revoked: bool,
    /// Current desired manifest version (1 = nothing deployed yet: the zero-deployment manifest).
    pub desired_version: u64,
    /// The last manifest version the device fully applied, from its newest
    /// `state` report; `None` before the first one.
    pub adopted_version: Option<u64>,
    /// The highest manifest version the device reported applying in a
    /// `status` (Margo's `adoptedManifestVersion` names the version being
    /// applied, so it can run ahead of `adopted_version` while an apply is in
    /// progress or has failed).
    pub applying_version: Option<u64>,
    /// `online`, `offline` or `unknown`.
    pub presence: String,
    /// Last time anything was heard from it (ms).
    pub last_seen: Option<u64>,
    /// Highest contiguous stored uplink seq.
    pub acked_seq: u64,
    /// Agent software version from its last `state` report.
    pub agent_version: Option<String>,
    /// Desired and reported deployments, sorted by id.
    pub deployments: Vec<DeploymentView>,
    /// The schedule in force per its newest `state` report (where it came
    /// from, the remote config version, the schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_in_force: Option<ScheduleInForce>,
    /// What its silence means right now ([`availability::classify`]):
    /// `online`, `in-planned-downtime`, `outside-polling-period`,
    /// `between-checks`, `overdue`, `offline` or `revoked`.
    #[serde(default)]
    pub availability: Availability,
    /// Set while its identity looks in use from several places at once
    /// (a cloned bundle?): the fleet core's suspicion, not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloned: Option<CloneSuspicion>,
}

/// What the operator sees of a suspected clone (issue 12, finding 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloneSuspicion {
    /// Where it was seen from: `address 192.0.2.1` (the gateway's source
    /// networks) or `agent store <instance id>` (uplink).
    pub sources: Vec<String>,
    /// Since when (ms since the epoch).
    pub since: u64,
    /// Last renewed (ms since the epoch).
    pub last_seen: u64,
}

impl CloneSuspicion {
    /// `identity in use from 2 sources (cloned?) since 2025-01-31T12:00:00Z: …`.
    pub fn describe(&self) -> String {
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.since);
        format!(
            "identity in use from {} sources (cloned?) since {}: {}",
            self.sources.len(),
            humantime::format_rfc3339_seconds(since),
            self.sources.join(", ")
        )
    }
}

/// The fleet view of one client; availability as of `now_ms`.
pub fn client_status(
    store: &Store,
    client: &ClientId,
    now_ms: u64,
) -> Result<ClientStatus, StoreError> {
    Ok(join(store.client_snapshot(client)?, now_ms))
}

/// The fleet view of every client, sorted by id; availability as of `now_ms`.
pub fn fleet_status(store: &Store, now_ms: u64) -> Result<Vec<ClientStatus>, StoreError> {
    Ok(store
        .client_snapshots()?
        .into_iter()
        .map(|snapshot| join(snapshot, now_ms))
        .collect())
}

/// Joins what is stored about one client into its view.
fn join(snapshot: ClientSnapshot, now_ms: u64) -> ClientStatus {
    let ClientSnapshot {
        id,
        record,
        runtime: rt,
        state,
        desired_version,
        acked_seq,
        desired,
        reported,
    } = snapshot;
    let empty_view = |deployment_id: DeploymentId| DeploymentView {
        deployment_id,
        name: None,
        api_version: None,
        desired_digest: None,
        state: None,
        components: Vec::new(),
        error: None,
        reported_manifest_version: None,
        updated_at: None,
    };
    let mut views: BTreeMap<String, DeploymentView> = BTreeMap::new();
    for (deployment_id, entry) in desired {
        views.insert(
            deployment_id.as_str().to_string(),
            DeploymentView {
                name: Some(entry.name),
                api_version: entry.api_version,
                desired_digest: Some(entry.digest),
                ..empty_view(deployment_id)
            },
        );
    }
    for (deployment_id, latest) in reported {
        let key = deployment_id.as_str().to_string();
        let view = match views.remove(&key) {
            Some(view) => view,
            None => empty_view(deployment_id),
        };
        views.insert(
            key,
            DeploymentView {
                state: Some(latest.state),
                components: latest.components,
                error: latest.error,
                reported_manifest_version: Some(latest.adopted_manifest_version),
                updated_at: Some(latest.received_ms),
                ..view
            },
        );
    }
    // A schedule the manager cannot read counts as none reported.
    let schedule = rt
        .schedule
        .as_ref()
        .and_then(|s| ValidSchedule::try_from(&s.schedule).ok());
    let availability = availability::classify(
        &Observed {
            revoked: record.revoked,
            online: rt.presence.as_deref() == Some("online"),
            last_seen_ms: rt.last_seen_ms,
            schedule: schedule.as_ref(),
        },
        now_ms,
    );
    ClientStatus {
        client_id: id,
        name: record.name,
        revoked: record.revoked,
        desired_version,
        adopted_version: rt.state_adopted,
        applying_version: rt.status_hint,
        presence: rt.presence.unwrap_or_else(|| "unknown".into()),
        last_seen: rt.last_seen_ms,
        acked_seq,
        agent_version: state.map(|s| s.agent_version),
        deployments: views.into_values().collect(),
        schedule_in_force: rt.schedule,
        availability,
        cloned: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::tests::{doc, ms, open, state, state_with_schedule, valid, PER_CHECK_UTC};
    use crate::store::{now_ms, UplinkItem};
    use margo_schemas::messages::{Envelope, Message, StatusReport, SyncReason, SyncRequest};
    use margo_schemas::status::DeploymentStatus;

    #[test]
    fn status_state_and_sync_update_the_fleet_view() {
        let (_dir, store, id) = open();
        store.deploy(&id, &[doc("a", "1")]).expect("deploy");
        let status = |seq: u64, s: DeploymentState| {
            UplinkItem::Message(Box::new(Envelope::new(
                id.clone(),
                seq,
                1,
                Message::Status(StatusReport {
                    adopted_manifest_version: 2,
                    status: DeploymentStatus::new(
                        DeploymentId::new("a").expect("id"),
                        vec![ComponentStatus {
                            name: "web".into(),
                            state: s,
                            error: None,
                        }],
                        None,
                    ),
                }),
            )))
        };
        let sync = UplinkItem::Message(Box::new(Envelope::new(
            id.clone(),
            4,
            1,
            Message::Sync(SyncRequest {
                reason: SyncReason::Startup,
                adopted_manifest_version: 0,
            }),
        )));
        // Out of order: the newer status (seq 2) arrives before the older one.
        let r = store
            .ingest(&[
                status(2, DeploymentState::Installed),
                status(1, DeploymentState::Installing),
                UplinkItem::Presence {
                    client: id.clone(),
                    online: true,
                },
                sync,
            ])
            .expect("ingest");
        assert!(r.sync.contains(&id));
        let view = client_status(&store, &id, now_ms()).expect("status");
        assert_eq!(view.presence, "online");
        assert_eq!(view.desired_version, 2);
        assert_eq!(view.adopted_version, None, "only a state report adopts");
        assert_eq!(view.applying_version, Some(2));
        assert_eq!(view.acked_seq, 2);
        assert_eq!(view.deployments.len(), 1);
        let d = &view.deployments[0];
        assert_eq!(d.state, Some(DeploymentState::Installed));
        assert_eq!(d.name.as_deref(), Some("app-a"));
        assert_eq!(d.desired_digest, Some(doc("a", "1").digest().to_string()));
        // A state report is authoritative over the status hint.
        store.ingest(&[state(&id, 3, 0, 0)]).expect("ingest");
        let view = client_status(&store, &id, now_ms()).expect("status");
        assert_eq!(view.adopted_version, Some(0));
        assert_eq!(view.acked_seq, 4);
        assert_eq!(view.agent_version.as_deref(), Some("test"));
    }

    #[test]
    fn the_newest_reported_schedule_drives_availability() {
        let (_dir, store, id) = open();
        let in_force = |version: u64| ScheduleInForce {
            source: margo_schemas::messages::ScheduleSource::Remote,
            config_version: version,
            schedule: valid(PER_CHECK_UTC).schedule().clone(),
        };
        // Seq 2 (version 5) arrives before seq 1 (version 4): the newest wins.
        store
            .ingest(&[
                state_with_schedule(&id, 2, Some(in_force(5))),
                state_with_schedule(&id, 1, Some(in_force(4))),
            ])
            .expect("ingest");
        let view = client_status(&store, &id, now_ms()).expect("status");
        assert_eq!(
            view.schedule_in_force.as_ref().map(|s| s.config_version),
            Some(5)
        );
        // Heard from at 10:03 on Monday 2026-03-02 (the 10:00 check); no
        // presence reported: classified by the schedule.
        store
            .ingest_at(
                &[state_with_schedule(&id, 4, Some(in_force(5)))],
                ms("2026-03-02T10:03:00Z"),
            )
            .expect("ingest");
        let at = |t: &str| {
            client_status(&store, &id, ms(t))
                .expect("status")
                .availability
        };
        assert_eq!(at("2026-03-02T10:14:00Z"), Availability::BetweenChecks);
        assert_eq!(at("2026-03-02T10:25:00Z"), Availability::Overdue);
        assert_eq!(
            at("2026-03-02T20:00:00Z"),
            Availability::OutsidePollingPeriod
        );
        assert_eq!(
            fleet_status(&store, ms("2026-03-02T10:25:00Z")).expect("fleet")[0].availability,
            Availability::Overdue
        );
        // Online presence wins; a later state without a schedule removes it.
        store
            .ingest(&[
                UplinkItem::Presence {
                    client: id.clone(),
                    online: true,
                },
                state_with_schedule(&id, 5, None),
            ])
            .expect("ingest");
        let view = client_status(&store, &id, now_ms()).expect("status");
        assert_eq!(view.availability, Availability::Online);
        assert_eq!(view.schedule_in_force, None);
        store
            .ingest(&[UplinkItem::Presence {
                client: id.clone(),
                online: false,
            }])
            .expect("ingest");
        let view = client_status(&store, &id, now_ms()).expect("status");
        assert_eq!(view.availability, Availability::Offline, "no schedule");
        store.set_revoked(&id, true).expect("revoke");
        let view = client_status(&store, &id, now_ms()).expect("status");
        assert_eq!(view.availability, Availability::Revoked);
    }

    #[test]
    fn a_silent_client_becomes_overdue_as_the_store_clock_advances() {
        let clock = ManualClock::starting_at(ms("2026-03-02T10:03:00Z"));
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open_with_clock(&dir.path().join("m.redb"), clock.clock()).expect("open");
        let id = ClientId::generate();
        store.add_client(&id, "dev-1", b"cert").expect("add");
        let in_force = ScheduleInForce {
            source: margo_schemas::messages::ScheduleSource::Remote,
            config_version: 1,
            schedule: valid(PER_CHECK_UTC).schedule().clone(),
        };
        // Heard from at 10:03 (the 10:00 check), stamped by the store's clock.
        store
            .ingest(&[state_with_schedule(&id, 1, Some(in_force))])
            .expect("ingest");
        let now = |store: &Store| {
            client_status(store, &id, store.clock().now_ms())
                .expect("status")
                .availability
        };
        let view = client_status(&store, &id, store.clock().now_ms()).expect("status");
        assert_eq!(view.last_seen, Some(ms("2026-03-02T10:03:00Z")));
        clock.set_unix_ms(ms("2026-03-02T10:14:00Z"));
        assert_eq!(now(&store), Availability::BetweenChecks);
        clock.set_unix_ms(ms("2026-03-02T10:25:00Z"));
        assert_eq!(now(&store), Availability::Overdue, "missed the 10:15 check");
    }
}
