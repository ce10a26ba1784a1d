//! Everything stored about a client that read models join, read in one
//! transaction: its record, presence and runtime, newest state report,
//! desired and reported deployments, desired version and acknowledged seq.
//! The joining itself (the fleet view) is `crate::status_view`'s.

use margo_schemas::ids::{ClientId, DeploymentId};
use redb::ReadableTable;

use super::clients::{ClientRecord, CLIENTS};
use super::desired::{desired_version, DeploymentEntry, DEPLOYMENTS, MANIFEST_VERSIONS};
use super::uplink::{
    ClientRuntime, LatestState, LatestStatus, HWM, RUNTIME, STATE_LATEST, STATUS_LATEST,
};
use super::{decode, Result, Store, StoreError};

/// One client as stored, read in one transaction.
#[derive(Debug, Clone)]
pub(crate) struct ClientSnapshot {
    /// The client.
    pub(crate) id: ClientId,
    /// Its record.
    pub(crate) record: ClientRecord,
    /// Presence, last seen, adopted versions, schedule in force.
    pub(crate) runtime: ClientRuntime,
    /// Its newest `state` report.
    pub(crate) state: Option<LatestState>,
    /// Its current desired manifest version.
    pub(crate) desired_version: u64,
    /// Its uplink high-water mark (the `ackedSeq` it sees).
    pub(crate) acked_seq: u64,
    /// The deployments desired now, by id.
    pub(crate) desired: Vec<(DeploymentId, DeploymentEntry)>,
    /// The newest status of every deployment it reported, by id.
    pub(crate) reported: Vec<(DeploymentId, LatestStatus)>,
}

impl Store {
    /// What is stored about `client`.
    pub(crate) fn client_snapshot(&self, client: &ClientId) -> Result<ClientSnapshot> {
        let txn = self.begin_read()?;
        snapshot_in(&txn, client)
    }

    /// What is stored about every client, sorted by id, in one transaction.
    pub(crate) fn client_snapshots(&self) -> Result<Vec<ClientSnapshot>> {
        let txn = self.begin_read()?;
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
        ids.iter().map(|id| snapshot_in(&txn, id)).collect()
    }
}

fn snapshot_in(txn: &redb::ReadTransaction, client: &ClientId) -> Result<ClientSnapshot> {
    let c = client.as_str();
    let record: ClientRecord = match txn.open_table(CLIENTS)?.get(c)? {
        Some(v) => decode("clients", v.value())?,
        None => return Err(StoreError::UnknownClient(c.to_string())),
    };
    let runtime: ClientRuntime = txn
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
    let deployment_id = |id: &str| {
        DeploymentId::new(id).map_err(|e| StoreError::Corrupt {
            table: "deployments",
            detail: e.to_string(),
        })
    };
    let mut desired = Vec::new();
    for row in txn.open_table(DEPLOYMENTS)?.range((c, "")..)? {
        let (k, v) = row?;
        let (owner, id) = k.value();
        if owner != c {
            break;
        }
        let entry: DeploymentEntry = decode("deployments", v.value())?;
        desired.push((deployment_id(id)?, entry));
    }
    let mut reported = Vec::new();
    for row in txn.open_table(STATUS_LATEST)?.range((c, "")..)? {
        let (k, v) = row?;
        let (owner, id) = k.value();
        if owner != c {
            break;
        }
        let latest: LatestStatus = decode("status_latest", v.value())?;
        reported.push((deployment_id(id)?, latest));
    }
    Ok(ClientSnapshot {
        id: client.clone(),
        record,
        runtime,
        state,
        desired_version,
        acked_seq,
        desired,
        reported,
    })
}
