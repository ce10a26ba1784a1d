//! The fleet view: stored presence, schedule and reports joined into one
//! status per client, with its availability.

use std::collections::BTreeMap;

use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::ScheduleInForce;
use margo_schemas::schedule::ValidSchedule;
use margo_schemas::status::{ComponentStatus, DeploymentState, StatusError};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::clients::{ClientRecord, CLIENTS};
use super::desired::{desired_version, DeploymentEntry, DEPLOYMENTS, MANIFEST_VERSIONS};
use super::uplink::{
    ClientRuntime, LatestState, LatestStatus, HWM, RUNTIME, STATE_LATEST, STATUS_LATEST,
};
use super::{decode, Result, Store, StoreError};
use crate::availability::{self, Availability, Observed};

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
}

impl Store {
    /// The fleet view of one client; availability as of `now_ms`.
    pub fn client_status(&self, client: &ClientId, now_ms: u64) -> Result<ClientStatus> {
        let txn = self.db.begin_read()?;
        Self::status_in(&txn, client, now_ms)
    }

    /// The fleet view of every client, sorted by id; availability as of `now_ms`.
    pub fn fleet_status(&self, now_ms: u64) -> Result<Vec<ClientStatus>> {
        let txn = self.db.begin_read()?;
        let ids: Vec<ClientId> = {
            let table = txn.open_table(CLIENTS)?;
            let mut ids = Vec::new();
            for row in table.iter()? {
                let (k, _) = row?;
                if let Ok(id) = ClientId::new(k.value()) {
                    ids.push(id);
                }
            }
            ids
        };
        ids.iter()
            .map(|id| Self::status_in(&txn, id, now_ms))
            .collect()
    }

    fn status_in(
        txn: &redb::ReadTransaction,
        client: &ClientId,
        now_ms: u64,
    ) -> Result<ClientStatus> {
        let c = client.as_str();
        let record: ClientRecord = match txn.open_table(CLIENTS)?.get(c)? {
            Some(v) => decode("clients", v.value())?,
            None => return Err(StoreError::UnknownClient(c.to_string())),
        };
        let rt: ClientRuntime = txn
            .open_table(RUNTIME)?
            .get(c)?
            .map(|v| decode("client_runtime", v.value()))
            .transpose()?
            .unwrap_or_default();
        let state: Option<LatestState> = txn
            .open_table(STATE_LATEST)?
            .get(c)?
            .map(|v| decode("state_latest", v.value()))
            .transpose()?;
        let desired_version = desired_version(
            txn.open_table(MANIFEST_VERSIONS)?
                .get(c)?
                .map(|v| v.value()),
        );
        let acked_seq = txn.open_table(HWM)?.get(c)?.map(|v| v.value()).unwrap_or(0);

        let mut views: BTreeMap<String, DeploymentView> = BTreeMap::new();
        let empty_view = |id: &str| -> Result<DeploymentView> {
            Ok(DeploymentView {
                deployment_id: DeploymentId::new(id).map_err(|e| StoreError::Corrupt {
                    table: "deployments",
                    detail: e.to_string(),
                })?,
                name: None,
                api_version: None,
                desired_digest: None,
                state: None,
                components: Vec::new(),
                error: None,
                reported_manifest_version: None,
                updated_at: None,
            })
        };
        for row in txn.open_table(DEPLOYMENTS)?.range((c, "")..)? {
            let (k, v) = row?;
            let (owner, id) = k.value();
            if owner != c {
                break;
            }
            let entry: DeploymentEntry = decode("deployments", v.value())?;
            let mut view = empty_view(id)?;
            view.name = Some(entry.name);
            view.api_version = entry.api_version;
            view.desired_digest = Some(entry.digest);
            views.insert(id.to_string(), view);
        }
        for row in txn.open_table(STATUS_LATEST)?.range((c, "")..)? {
            let (k, v) = row?;
            let (owner, id) = k.value();
            if owner != c {
                break;
            }
            let latest: LatestStatus = decode("status_latest", v.value())?;
            let view = match views.remove(id) {
                Some(view) => view,
                None => empty_view(id)?,
            };
            views.insert(
                id.to_string(),
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
        Ok(ClientStatus {
            client_id: client.clone(),
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
        })
    }
}
