//! Capabilities (latest per device and a short history), and reports
//! delivered over HTTP, which land in the same tables as their MQTT twins.

use std::collections::BTreeMap;

use margo_schemas::capabilities::DeviceCapabilitiesManifest;
use margo_schemas::ids::{ClientId, DeploymentId, DeviceId};
use margo_schemas::messages::StatusReport;
use margo_schemas::status::DeploymentStatus;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::clients::{ClientRecord, CLIENTS};
use super::desired::{desired_version, ever_assigned, ASSIGNED, DEPLOYMENTS, MANIFEST_VERSIONS};
use super::uplink::{ClientRuntime, LatestStatus, RUNTIME, STATUS_LATEST};
use super::{decode, encode, Result, Store, StoreError};
use crate::capabilities::{check_capabilities, CapabilitiesRejection};

/// (clientId, deviceId) → CBOR [`LatestCapabilities`].
pub(super) const CAPS_LATEST: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("capabilities_latest");
/// (clientId, deviceId, seq) → CBOR [`LatestCapabilities`]: the last
/// [`MAX_CAPABILITIES_HISTORY`] reports per device.
pub(super) const CAPS_HISTORY: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("capabilities_history");

/// Creates the tables of this family (at open).
pub(super) fn open_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(CAPS_LATEST)?;
    txn.open_table(CAPS_HISTORY)?;
    Ok(())
}

/// Capabilities reports kept per (client, device id) besides the latest.
pub const MAX_CAPABILITIES_HISTORY: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LatestCapabilities {
    pub(super) seq: u64,
    pub(super) received_ms: u64,
    /// The document as received, JSON text (the exact body for HTTP; the
    /// CBOR document written as JSON for MQTT). Shown to operators as is;
    /// read through [`DeviceCapabilitiesManifest::normalize`] when used.
    pub(super) json: String,
}

impl LatestCapabilities {
    pub(super) fn of(
        manifest: &DeviceCapabilitiesManifest,
        seq: u64,
        received_ms: u64,
    ) -> Result<Self> {
        Ok(Self {
            seq,
            received_ms,
            json: manifest.original_json(),
        })
    }
}

/// The latest capabilities of one device (`GET /v1/clients/{client}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilitiesEntry {
    /// The device id (`properties.id`; `gw/child` for gateway children).
    pub device_id: String,
    /// Uplink seq of the report.
    pub seq: u64,
    /// When it was stored (ms).
    pub received_at: u64,
    /// Reports of this device kept in the history (at most [`MAX_CAPABILITIES_HISTORY`]).
    pub history_len: usize,
    /// The document as the device sent it (any published shape).
    pub manifest: serde_json::Value,
    /// The same read into the normalised form (`None` if the stored document
    /// no longer reads, e.g. written by an older manager with other rules).
    #[serde(default)]
    pub normalized: Option<margo_schemas::capabilities::DeviceCapabilities>,
}

/// What an HTTP-delivered report did to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Nothing was stored for it before.
    Created,
    /// It replaced the stored one.
    Replaced,
}

/// Why an HTTP-delivered report was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No such client.
    #[error("unknown client")]
    UnknownClient,
    /// The client is revoked.
    #[error("client is revoked")]
    Revoked,
    /// The capabilities were refused (invalid, or a child before its parent).
    #[error(transparent)]
    Capabilities(CapabilitiesRejection),
    /// A status for an older manifest version than the stored one.
    #[error("status for manifest version {offered} is older than the stored status for version {stored} (stale or replayed)")]
    Stale {
        /// `adoptedManifestVersion` of the request.
        offered: u64,
        /// That of the stored status.
        stored: u64,
    },
    /// A status for a manifest version the manager never issued.
    #[error(
        "adoptedManifestVersion {offered} is above the client's desired manifest version {desired}"
    )]
    AheadOfDesired {
        /// `adoptedManifestVersion` of the request.
        offered: u64,
        /// The client's current desired version.
        desired: u64,
    },
    /// A status for a deployment never assigned to the client.
    #[error("deployment {0} was never assigned to this client")]
    NotAssigned(DeploymentId),
    /// No capabilities stored for the device.
    #[error("no capabilities stored for device {0}")]
    NoCapabilities(DeviceId),
    /// A gateway with children that still have capabilities.
    #[error(
        "device {device} still has a child with capabilities ({child}); delete the children first"
    )]
    HasChildren {
        /// The gateway.
        device: DeviceId,
        /// One of its children.
        child: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

macro_rules! report_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ReportError {
            fn from(e: $t) -> Self {
                Self::Store(e.into())
            }
        }
    )*};
}
report_from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl Store {
    /// Adds `encoded` to the capabilities history of `device` under `seq`
    /// and drops the oldest beyond [`MAX_CAPABILITIES_HISTORY`].
    pub(super) fn keep_capabilities_history(
        caps_history: &mut redb::Table<'_, (&str, &str, u64), &[u8]>,
        c: &str,
        device: &str,
        seq: u64,
        encoded: &[u8],
    ) -> Result<()> {
        caps_history.insert((c, device, seq), encoded)?;
        let kept: Vec<u64> = caps_history
            .range((c, device, 0u64)..=(c, device, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().2))
            .collect::<Result<_, _>>()?;
        let excess = kept.len().saturating_sub(MAX_CAPABILITIES_HISTORY);
        for old in kept.iter().take(excess) {
            caps_history.remove((c, device, *old))?;
        }
        Ok(())
    }

    /// The live client for an HTTP-delivered report, and marks it seen.
    fn http_reporter(
        txn: &redb::WriteTransaction,
        client: &ClientId,
        received_ms: u64,
        f: impl FnOnce(&mut ClientRuntime),
    ) -> Result<(), ReportError> {
        let record: ClientRecord = match txn.open_table(CLIENTS)?.get(client.as_str())? {
            Some(v) => decode("clients", v.value())?,
            None => return Err(ReportError::UnknownClient),
        };
        if record.revoked {
            return Err(ReportError::Revoked);
        }
        let mut runtime = txn.open_table(RUNTIME)?;
        let mut rt: ClientRuntime = runtime
            .get(client.as_str())?
            .map(|v| decode("client_runtime", v.value()))
            .transpose()?
            .unwrap_or_default();
        rt.last_seen_ms = Some(received_ms);
        f(&mut rt);
        runtime.insert(client.as_str(), encode("client_runtime", &rt)?.as_slice())?;
        Ok(())
    }

    /// Stores a deployment status delivered over HTTP, into the same tables
    /// as MQTT status (so `margoctl status` shows it alike). HTTP requests
    /// carry no uplink seq: the record keeps the seq of the one it replaces
    /// (0 if none), so any later MQTT status still supersedes it.
    ///
    /// With `adopted` (Margo's `adoptedManifestVersion`), a status for an
    /// older manifest version than the stored one is refused as stale (a
    /// replayed request), and one for a version never desired is refused.
    pub fn record_http_status(
        &self,
        client: &ClientId,
        status: &DeploymentStatus,
        adopted: Option<u64>,
    ) -> Result<ReportOutcome, ReportError> {
        let received_ms = self.clock.now_ms();
        let c = client.as_str();
        let dep = status.deployment_id.as_str();
        let txn = self.begin_write()?;
        let outcome = {
            // The client first (unknown 404, revoked 403), then the
            // deployment; an error drops the whole transaction.
            Self::http_reporter(&txn, client, received_ms, |rt| {
                if let Some(v) = adopted {
                    rt.status_hint = Some(rt.status_hint.unwrap_or(0).max(v));
                }
            })?;
            let desired = desired_version(
                txn.open_table(MANIFEST_VERSIONS)?
                    .get(c)?
                    .map(|v| v.value()),
            );
            let mut status_latest = txn.open_table(STATUS_LATEST)?;
            if !ever_assigned(
                &txn.open_table(ASSIGNED)?,
                &txn.open_table(DEPLOYMENTS)?,
                &status_latest,
                c,
                dep,
            )? {
                return Err(ReportError::NotAssigned(status.deployment_id.clone()));
            }
            let previous = status_latest
                .get((c, dep))?
                .map(|v| decode::<LatestStatus>("status_latest", v.value()))
                .transpose()?;
            if let Some(offered) = adopted {
                if offered > desired {
                    return Err(ReportError::AheadOfDesired { offered, desired });
                }
                if let Some(p) = previous.as_ref() {
                    if offered < p.adopted_manifest_version {
                        return Err(ReportError::Stale {
                            offered,
                            stored: p.adopted_manifest_version,
                        });
                    }
                }
            }
            let report = StatusReport {
                adopted_manifest_version: adopted.unwrap_or(0),
                status: status.clone(),
            };
            let seq = previous.as_ref().map_or(0, |p| p.seq);
            let latest = LatestStatus::of(&report, seq, received_ms);
            status_latest.insert((c, dep), encode("status_latest", &latest)?.as_slice())?;
            if previous.is_some() {
                ReportOutcome::Replaced
            } else {
                ReportOutcome::Created
            }
        };
        self.commit(txn, "write an HTTP status report to")?;
        Ok(outcome)
    }

    /// Stores a capabilities report delivered over HTTP after the same
    /// acceptance checks as MQTT ([`check_capabilities`]), into the same
    /// tables. Stored with seq 0 (no uplink seq), so a later MQTT report
    /// supersedes it; it replaces the previous HTTP entry of the history.
    pub fn record_http_capabilities(
        &self,
        client: &ClientId,
        manifest: &DeviceCapabilitiesManifest,
    ) -> Result<ReportOutcome, ReportError> {
        let received_ms = self.clock.now_ms();
        let c = client.as_str();
        let txn = self.begin_write()?;
        let outcome = {
            Self::http_reporter(&txn, client, received_ms, |_| {})?;
            let mut caps_latest = txn.open_table(CAPS_LATEST)?;
            let mut caps_history = txn.open_table(CAPS_HISTORY)?;
            let normalised = check_capabilities(manifest, |parent| {
                Ok::<_, StoreError>(caps_latest.get((c, parent.as_str()))?.is_some())
            })?
            .map_err(ReportError::Capabilities)?;
            let device = normalised.id.as_str();
            let existed = caps_latest.get((c, device))?.is_some();
            let encoded = encode(
                "capabilities_latest",
                &LatestCapabilities::of(manifest, 0, received_ms)?,
            )?;
            caps_latest.insert((c, device), encoded.as_slice())?;
            Self::keep_capabilities_history(&mut caps_history, c, device, 0, &encoded)?;
            if existed {
                ReportOutcome::Replaced
            } else {
                ReportOutcome::Created
            }
        };
        self.commit(txn, "write an HTTP capabilities report to")?;
        Ok(outcome)
    }

    /// Deletes the stored capabilities (latest and history) of `device`.
    /// A gateway whose children still have capabilities is refused.
    pub fn delete_capabilities(
        &self,
        client: &ClientId,
        device: &DeviceId,
    ) -> Result<(), ReportError> {
        let received_ms = self.clock.now_ms();
        let c = client.as_str();
        let d = device.as_str();
        let txn = self.begin_write()?;
        {
            Self::http_reporter(&txn, client, received_ms, |_| {})?;
            let mut caps_latest = txn.open_table(CAPS_LATEST)?;
            let mut caps_history = txn.open_table(CAPS_HISTORY)?;
            if caps_latest.get((c, d))?.is_none() {
                return Err(ReportError::NoCapabilities(device.clone()));
            }
            let prefix = format!("{d}/");
            let child = caps_latest
                .range((c, prefix.as_str())..)?
                .next()
                .transpose()?
                .map(|(k, _)| k.value().1.to_string())
                .filter(|id| id.starts_with(&prefix));
            if let Some(child) = child {
                return Err(ReportError::HasChildren {
                    device: device.clone(),
                    child,
                });
            }
            caps_latest.remove((c, d))?;
            let seqs: Vec<u64> = caps_history
                .range((c, d, 0u64)..=(c, d, u64::MAX))?
                .map(|r| r.map(|(k, _)| k.value().2))
                .collect::<Result<_, _>>()?;
            for seq in seqs {
                caps_history.remove((c, d, seq))?;
            }
        }
        self.commit(txn, "delete capabilities from")?;
        Ok(())
    }

    /// The latest capabilities reports of `client` as JSON values, by device id.
    pub fn capabilities(&self, client: &ClientId) -> Result<BTreeMap<String, serde_json::Value>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CAPS_LATEST)?;
        let c = client.as_str();
        let mut out = BTreeMap::new();
        for row in table.range((c, "")..)? {
            let (k, v) = row?;
            let (owner, device) = k.value();
            if owner != c {
                break;
            }
            let latest: LatestCapabilities = decode("capabilities_latest", v.value())?;
            let json = serde_json::from_str(&latest.json).unwrap_or(serde_json::Value::Null);
            out.insert(device.to_string(), json);
        }
        Ok(out)
    }

    /// The latest capabilities of `client` per device id, with when they
    /// arrived, and how many reports of each device are kept in the history.
    pub fn capabilities_detail(&self, client: &ClientId) -> Result<Vec<CapabilitiesEntry>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CAPS_LATEST)?;
        let history = txn.open_table(CAPS_HISTORY)?;
        let c = client.as_str();
        let mut out = Vec::new();
        for row in table.range((c, "")..)? {
            let (k, v) = row?;
            let (owner, device) = k.value();
            if owner != c {
                break;
            }
            let latest: LatestCapabilities = decode("capabilities_latest", v.value())?;
            let manifest: serde_json::Value =
                serde_json::from_str(&latest.json).map_err(|e| StoreError::Corrupt {
                    table: "capabilities_latest",
                    detail: e.to_string(),
                })?;
            let normalized = DeviceCapabilitiesManifest::from_value(manifest.clone())
                .ok()
                .and_then(|m| m.normalize().ok());
            let history_len = history
                .range((c, device, 0u64)..=(c, device, u64::MAX))?
                .count();
            out.push(CapabilitiesEntry {
                device_id: device.to_string(),
                seq: latest.seq,
                received_at: latest.received_ms,
                history_len,
                manifest,
                normalized,
            });
        }
        Ok(out)
    }
}
