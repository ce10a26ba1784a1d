//! Desired state: the deployments assigned to each client (documents kept
//! by digest), manifest versions, the record of every deployment ever
//! assigned, and each client's remote config.

use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::Ack;
use margo_schemas::schedule::{Schedule, ValidSchedule};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::instances::{self, INSTANCES};
use super::uplink::HWM;
use super::{decode, encode, Result, Store, StoreError};

/// digest (`sha256:…`) → exact YAML bytes.
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// (clientId, deploymentId) → CBOR [`DeploymentEntry`].
pub(super) const DEPLOYMENTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("deployments");
/// clientId → current desired manifest version. No entry: version 1, the
/// zero-deployment manifest (see [`desired_version`]).
pub(super) const MANIFEST_VERSIONS: TableDefinition<&str, u64> =
    TableDefinition::new("manifest_versions");
/// (clientId, deploymentId) ever assigned to the client (kept after an
/// undeploy), so a status report for a deployment the client never had is
/// refused. Added without a migration: a deployment assigned before the
/// table existed counts as assigned when it is still desired or has a stored
/// status (see [`ever_assigned`]).
pub(super) const ASSIGNED: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("assigned_deployments");
/// clientId → CBOR [`RemoteConfig`]: the remote settings published on `R/config`.
const REMOTE_CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("remote_config");

/// Creates the tables of this family (at open).
pub(super) fn open_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(BLOBS)?;
    txn.open_table(DEPLOYMENTS)?;
    txn.open_table(MANIFEST_VERSIONS)?;
    txn.open_table(ASSIGNED)?;
    txn.open_table(REMOTE_CONFIG)?;
    Ok(())
}

/// The desired manifest version of a client whose stored entry is `stored`.
/// Margo's first manifest of a client MUST use version 1 (`desired-state.md`),
/// and a client with nothing assigned has one: version 1 with no
/// deployments. So no entry means version 1, and the first deploy makes 2.
/// (Databases from before this reading may hold 1 for a client whose first
/// deploy it counted; that stays as it is.)
pub fn desired_version(stored: Option<u64>) -> u64 {
    stored.unwrap_or(1).max(1)
}

/// Whether `deployment` was ever assigned to `client`: recorded in
/// [`ASSIGNED`], still desired, or (data from before that table) with a
/// stored status.
pub(super) fn ever_assigned(
    assigned: &impl ReadableTable<(&'static str, &'static str), ()>,
    deployments: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    status_latest: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    client: &str,
    deployment: &str,
) -> Result<bool> {
    Ok(assigned.get((client, deployment))?.is_some()
        || deployments.get((client, deployment))?.is_some()
        || status_latest.get((client, deployment))?.is_some())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeploymentEntry {
    pub(crate) digest: String,
    pub(crate) name: String,
    pub(crate) size: u64,
    /// The document's `apiVersion` (absent in entries written before it was kept).
    #[serde(default)]
    pub(crate) api_version: Option<String>,
}

/// A client's remote settings as stored and published on `R/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteConfig {
    /// Starts at 1 and grows by one with every change (set or clear).
    pub version: u64,
    /// The schedule the device should follow; `None` after a clear: the
    /// device falls back to its local configuration.
    pub schedule: Option<Schedule>,
    /// When this version was stored (ms since the epoch).
    pub updated_at: u64,
}

/// What a deploy call changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOutcome {
    /// The client's desired version after the call.
    pub manifest_version: u64,
    /// Deployments added or whose digest changed.
    pub changed: Vec<DeploymentId>,
}

/// One desired deployment with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredDeployment {
    /// Its id.
    pub id: DeploymentId,
    /// Its digest.
    pub digest: Digest,
    /// The exact YAML bytes.
    pub yaml: Vec<u8>,
}

/// A client's complete desired state plus its ack, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// The client.
    pub client: ClientId,
    /// Current desired version (1 = nothing ever deployed: the zero-deployment manifest).
    pub manifest_version: u64,
    /// Deployments sorted by id.
    pub deployments: Vec<DesiredDeployment>,
    /// The ack to publish.
    pub ack: Ack,
}

impl Store {
    /// Adds or updates `docs` for `client` in one transaction and bumps the
    /// manifest version once if anything changed (an identical re-deploy
    /// changes nothing and keeps the version).
    pub fn deploy(
        &self,
        client: &ClientId,
        docs: &[ApplicationDeployment],
    ) -> Result<DeployOutcome> {
        let txn = self.begin_write()?;
        let outcome = Self::deploy_in(&txn, client, docs)?;
        self.commit(txn, "write a deployment to")?;
        Ok(outcome)
    }

    /// [`Store::deploy`] for many clients in one transaction (one commit for
    /// a whole fleet): all or none. Outcomes in the order of `clients`.
    pub fn deploy_many(
        &self,
        clients: &[ClientId],
        docs: &[ApplicationDeployment],
    ) -> Result<Vec<DeployOutcome>> {
        let txn = self.begin_write()?;
        let outcomes = clients
            .iter()
            .map(|client| Self::deploy_in(&txn, client, docs))
            .collect::<Result<Vec<_>>>()?;
        self.commit(txn, "write deployments to")?;
        Ok(outcomes)
    }

    fn deploy_in(
        txn: &redb::WriteTransaction,
        client: &ClientId,
        docs: &[ApplicationDeployment],
    ) -> Result<DeployOutcome> {
        let outcome = {
            Self::live_client(txn, client)?;
            let mut blobs = txn.open_table(BLOBS)?;
            let mut deployments = txn.open_table(DEPLOYMENTS)?;
            let mut versions = txn.open_table(MANIFEST_VERSIONS)?;
            let mut assigned = txn.open_table(ASSIGNED)?;
            let mut changed = Vec::new();
            for doc in docs {
                let digest = doc.digest().to_string();
                let existing = deployments
                    .get((client.as_str(), doc.id.as_str()))?
                    .map(|v| decode::<DeploymentEntry>("deployments", v.value()))
                    .transpose()?;
                if existing.is_some_and(|e| e.digest == digest) {
                    continue;
                }
                if blobs.get(digest.as_str())?.is_none() {
                    blobs.insert(digest.as_str(), doc.bytes())?;
                }
                let entry = DeploymentEntry {
                    digest,
                    name: doc.name.clone(),
                    size: doc.bytes().len() as u64,
                    api_version: Some(doc.api_version.clone()),
                };
                deployments.insert(
                    (client.as_str(), doc.id.as_str()),
                    encode("deployments", &entry)?.as_slice(),
                )?;
                assigned.insert((client.as_str(), doc.id.as_str()), ())?;
                changed.push(doc.id.clone());
            }
            let count = deployments
                .range((client.as_str(), "")..)?
                .take_while(|r| {
                    r.as_ref()
                        .map(|(k, _)| k.value().0 == client.as_str())
                        .unwrap_or(true)
                })
                .count();
            if count > margo_schemas::manifest::MAX_DEPLOYMENTS {
                return Err(StoreError::TooManyDeployments {
                    client: client.clone(),
                    count,
                    max: margo_schemas::manifest::MAX_DEPLOYMENTS,
                });
            }
            let current = desired_version(versions.get(client.as_str())?.map(|v| v.value()));
            let manifest_version = if changed.is_empty() {
                current
            } else {
                versions.insert(client.as_str(), current + 1)?;
                current + 1
            };
            DeployOutcome {
                manifest_version,
                changed,
            }
        };
        Ok(outcome)
    }

    /// Removes one deployment from `client` and bumps the version. Returns the new version.
    pub fn undeploy(&self, client: &ClientId, deployment: &DeploymentId) -> Result<u64> {
        let txn = self.begin_write()?;
        let version = {
            Self::live_client(&txn, client)?;
            let mut deployments = txn.open_table(DEPLOYMENTS)?;
            let mut versions = txn.open_table(MANIFEST_VERSIONS)?;
            let mut assigned = txn.open_table(ASSIGNED)?;
            let removed = deployments
                .remove((client.as_str(), deployment.as_str()))?
                .is_some();
            if !removed {
                return Err(StoreError::NotDeployed {
                    client: client.clone(),
                    deployment: deployment.clone(),
                });
            }
            // Kept as assigned: the device still reports it while removing it.
            assigned.insert((client.as_str(), deployment.as_str()), ())?;
            let next = desired_version(versions.get(client.as_str())?.map(|v| v.value())) + 1;
            versions.insert(client.as_str(), next)?;
            next
        };
        self.commit(txn, "write an undeploy to")?;
        Ok(version)
    }

    /// The complete desired state of `client` and its current ack.
    pub fn desired_state(&self, client: &ClientId) -> Result<DesiredState> {
        let txn = self.begin_read()?;
        let deployments = txn.open_table(DEPLOYMENTS)?;
        let blobs = txn.open_table(BLOBS)?;
        let mut out = Vec::new();
        for row in deployments.range((client.as_str(), "")..)? {
            let (k, v) = row?;
            let (owner, id) = k.value();
            if owner != client.as_str() {
                break;
            }
            let entry: DeploymentEntry = decode("deployments", v.value())?;
            let corrupt = |detail: String| StoreError::Corrupt {
                table: "deployments",
                detail,
            };
            let id = DeploymentId::new(id).map_err(|e| corrupt(e.to_string()))?;
            let digest = Digest::parse(&entry.digest).map_err(|e| corrupt(e.to_string()))?;
            let yaml = blobs
                .get(entry.digest.as_str())?
                .map(|b| b.value().to_vec())
                .ok_or_else(|| corrupt(format!("blob {} is missing", entry.digest)))?;
            out.push(DesiredDeployment { id, digest, yaml });
        }
        let manifest_version = desired_version(
            txn.open_table(MANIFEST_VERSIONS)?
                .get(client.as_str())?
                .map(|v| v.value()),
        );
        let acked_seq = txn
            .open_table(HWM)?
            .get(client.as_str())?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut ack = Ack {
            acked_seq,
            manifest_version,
            instance: None,
        };
        instances::shape_ack(&txn.open_table(INSTANCES)?, client.as_str(), &mut ack)?;
        Ok(DesiredState {
            client: client.clone(),
            manifest_version,
            deployments: out,
            ack,
        })
    }

    /// The ack `client` should see now.
    pub fn ack_for(&self, client: &ClientId) -> Result<Ack> {
        let txn = self.begin_read()?;
        let manifest_version = desired_version(
            txn.open_table(MANIFEST_VERSIONS)?
                .get(client.as_str())?
                .map(|v| v.value()),
        );
        let acked_seq = txn
            .open_table(HWM)?
            .get(client.as_str())?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut ack = Ack {
            acked_seq,
            manifest_version,
            instance: None,
        };
        instances::shape_ack(&txn.open_table(INSTANCES)?, client.as_str(), &mut ack)?;
        Ok(ack)
    }

    /// The acks `clients` should see now, in one read transaction.
    pub fn acks_for(&self, clients: &[ClientId]) -> Result<Vec<Ack>> {
        let txn = self.begin_read()?;
        let versions = txn.open_table(MANIFEST_VERSIONS)?;
        let hwm = txn.open_table(HWM)?;
        let tracks = txn.open_table(INSTANCES)?;
        clients
            .iter()
            .map(|client| {
                let mut ack = Ack {
                    acked_seq: hwm.get(client.as_str())?.map_or(0, |v| v.value()),
                    manifest_version: desired_version(
                        versions.get(client.as_str())?.map(|v| v.value()),
                    ),
                    instance: None,
                };
                instances::shape_ack(&tracks, client.as_str(), &mut ack)?;
                Ok(ack)
            })
            .collect()
    }

    // ---- remote config ---------------------------------------------------------

    /// Stores `schedule` as `client`'s remote schedule (`None`: clear it, the
    /// device falls back to its local one) under the next config version, in
    /// one committed transaction. A revoked client is refused.
    pub fn set_schedule(
        &self,
        client: &ClientId,
        schedule: Option<ValidSchedule>,
    ) -> Result<RemoteConfig> {
        let txn = self.begin_write()?;
        let config = {
            Self::live_client(&txn, client)?;
            let mut table = txn.open_table(REMOTE_CONFIG)?;
            let previous = table
                .get(client.as_str())?
                .map(|v| decode::<RemoteConfig>("remote_config", v.value()))
                .transpose()?
                .map_or(0, |c| c.version);
            let config = RemoteConfig {
                version: previous + 1,
                schedule: schedule.map(Schedule::from),
                updated_at: self.clock.now_ms(),
            };
            table.insert(
                client.as_str(),
                encode("remote_config", &config)?.as_slice(),
            )?;
            config
        };
        self.commit(txn, "write a schedule to")?;
        Ok(config)
    }

    /// `client`'s remote settings; `None` if none were ever set.
    pub fn remote_config(&self, client: &ClientId) -> Result<Option<RemoteConfig>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(REMOTE_CONFIG)?;
        let found = table.get(client.as_str())?;
        found
            .map(|v| decode("remote_config", v.value()))
            .transpose()
    }
}
