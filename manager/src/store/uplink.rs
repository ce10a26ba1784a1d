//! Uplink: ingest of verified uplink batches (dedupe by client and seq,
//! the high-water mark acknowledged to devices, the uplink history) and
//! what the reports leave behind (latest status per deployment, latest
//! state, presence and last seen per client).

use std::collections::{BTreeMap, BTreeSet};

use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::{Envelope, Message, ScheduleInForce, StatusReport};
use margo_schemas::status::{ComponentStatus, DeploymentState, StatusError};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::clients::{ClientRecord, CLIENTS};
use super::desired::{ever_assigned, ASSIGNED, DEPLOYMENTS};
use super::instances::{self, InstanceClone, InstanceTrack, INSTANCES};
use super::reports::{LatestCapabilities, CAPS_HISTORY, CAPS_LATEST};
use super::{decode, encode, Result, Store, StoreError};
use crate::capabilities::{check_capabilities, CapabilitiesRejection};
use crate::seq_window::SeqWindow;

/// clientId → highest contiguous settled uplink seq ([`SeqWindow::hwm`]).
pub(super) const HWM: TableDefinition<&str, u64> = TableDefinition::new("uplink_hwm");
/// (clientId, seq) settled above the high-water mark ([`SeqWindow::above`]).
pub(super) const ABOVE_HWM: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("uplink_above_hwm");
/// (clientId, seq) → CBOR [`StoredUplink`]: the uplink history (status, state, capabilities, sync).
const UPLINK_LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("uplink_log");
/// (clientId, deploymentId) → CBOR [`LatestStatus`].
pub(super) const STATUS_LATEST: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("status_latest");
/// clientId → CBOR [`LatestState`].
pub(super) const STATE_LATEST: TableDefinition<&str, &[u8]> = TableDefinition::new("state_latest");
/// clientId → CBOR [`ClientRuntime`] (presence, last seen, adopted version).
pub(super) const RUNTIME: TableDefinition<&str, &[u8]> = TableDefinition::new("client_runtime");

/// Creates the tables of this family (at open).
pub(super) fn open_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(HWM)?;
    txn.open_table(ABOVE_HWM)?;
    txn.open_table(UPLINK_LOG)?;
    txn.open_table(STATUS_LATEST)?;
    txn.open_table(STATE_LATEST)?;
    txn.open_table(RUNTIME)?;
    Ok(())
}

/// One uplink message as kept in the history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredUplink {
    /// Message kind (`status`, `state`, `capabilities`, `sync`).
    pub kind: String,
    /// The device's timestamp (ms).
    pub ts: u64,
    /// When the manager stored it (ms).
    pub received_ms: u64,
    /// The verified envelope, re-encoded as CBOR.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatestStatus {
    pub(crate) seq: u64,
    pub(crate) received_ms: u64,
    pub(crate) adopted_manifest_version: u64,
    pub(crate) state: DeploymentState,
    pub(crate) error: Option<StatusError>,
    pub(crate) components: Vec<ComponentStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatestState {
    pub(crate) seq: u64,
    pub(crate) received_ms: u64,
    pub(crate) adopted_manifest_version: u64,
    pub(crate) agent_version: String,
}

impl LatestStatus {
    pub(super) fn of(report: &StatusReport, seq: u64, received_ms: u64) -> Self {
        Self {
            seq,
            received_ms,
            adopted_manifest_version: report.adopted_manifest_version,
            state: report.status.status.state,
            error: report.status.status.error.clone(),
            components: report.status.components.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClientRuntime {
    pub(crate) presence: Option<String>,
    pub(crate) last_seen_ms: Option<u64>,
    /// From the newest `state` report (authoritative).
    pub(crate) state_adopted: Option<u64>,
    pub(crate) state_seq: u64,
    /// Highest `adoptedManifestVersion` seen in status reports (a hint).
    pub(crate) status_hint: Option<u64>,
    /// The schedule in force per the newest `state` report (absent in
    /// records written before schedules existed).
    #[serde(default)]
    pub(crate) schedule: Option<ScheduleInForce>,
}

/// One received uplink item, already verified.
#[derive(Debug, Clone)]
pub enum UplinkItem {
    /// A signed, verified, validated message.
    Message(Box<Envelope>),
    /// A presence payload (`online`/`offline`).
    Presence {
        /// The client.
        client: ClientId,
        /// `true` for `online`.
        online: bool,
    },
}

/// What happened to one uplink message in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored for the first time.
    Stored,
    /// Already stored (or settled): not stored again, still acknowledged.
    Duplicate,
    /// The client is unknown or revoked (it vanished since verification).
    Refused,
    /// Verified but refused on content (capabilities checks that need the
    /// store): not stored, yet its seq counts as settled and is acknowledged,
    /// so the device's outbox drains instead of resending it for ever.
    Rejected(CapabilitiesRejection),
    /// A status report for a deployment never assigned to the client: not
    /// stored, settled and acknowledged like [`IngestOutcome::Rejected`].
    NotAssigned(DeploymentId),
}

/// Result of storing a batch.
#[derive(Debug, Clone, Default)]
pub struct BatchResult {
    /// One outcome per item (presence counts as `Stored`).
    pub outcomes: Vec<IngestOutcome>,
    /// Clients whose messages were stored or deduplicated: they get an ack.
    pub ack: BTreeSet<ClientId>,
    /// Clients that asked for a resync.
    pub sync: BTreeSet<ClientId>,
    /// Clients whose uplink switches between agent stores (instance ids)
    /// like a cloned bundle's, as of this batch.
    pub clones: BTreeMap<ClientId, InstanceClone>,
    /// Time spent writing the batch into the transaction (before the commit).
    pub write_time: std::time::Duration,
    /// Time the commit took (with default durability: written and fsynced).
    pub commit_time: std::time::Duration,
}

/// One stored uplink seq (for `GET /v1/clients/{id}/uplink`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkSummary {
    /// The seq.
    pub seq: u64,
    /// Message kind.
    pub kind: String,
    /// Device timestamp (ms).
    pub ts: u64,
    /// When stored (ms).
    pub received_at: u64,
}

impl Store {
    /// Stores a batch of verified uplink items in one transaction.
    pub fn ingest(&self, items: &[UplinkItem]) -> Result<BatchResult> {
        self.ingest_at(items, self.clock.now_ms())
    }

    /// [`ingest`](Self::ingest) with the receive time given (tests).
    pub(crate) fn ingest_at(&self, items: &[UplinkItem], received_ms: u64) -> Result<BatchResult> {
        let started = std::time::Instant::now();
        let txn = self.begin_write()?;
        let mut result = BatchResult::default();
        {
            let clients = txn.open_table(CLIENTS)?;
            let mut hwm_table = txn.open_table(HWM)?;
            let mut above = txn.open_table(ABOVE_HWM)?;
            let mut log = txn.open_table(UPLINK_LOG)?;
            let mut status_latest = txn.open_table(STATUS_LATEST)?;
            let mut state_latest = txn.open_table(STATE_LATEST)?;
            let mut caps_latest = txn.open_table(CAPS_LATEST)?;
            let mut caps_history = txn.open_table(CAPS_HISTORY)?;
            let mut runtime_table = txn.open_table(RUNTIME)?;
            let assigned = txn.open_table(ASSIGNED)?;
            let deployments = txn.open_table(DEPLOYMENTS)?;
            let mut instance_table = txn.open_table(INSTANCES)?;
            let mut tracks: BTreeMap<ClientId, InstanceTrack> = BTreeMap::new();
            let mut runtimes: BTreeMap<ClientId, ClientRuntime> = BTreeMap::new();
            // Each client's seq window as read (its stored rows above the
            // mark) and as changed by the batch; written back at the end.
            let mut windows: BTreeMap<ClientId, (BTreeSet<u64>, SeqWindow)> = BTreeMap::new();
            // Whether each client of the batch is live: read and decoded
            // once per batch, not once per message.
            let mut live_clients: BTreeMap<&ClientId, bool> = BTreeMap::new();

            for item in items {
                let client = match item {
                    UplinkItem::Message(env) => &env.client,
                    UplinkItem::Presence { client, .. } => client,
                };
                let live = match live_clients.get(client) {
                    Some(live) => *live,
                    None => {
                        let live = match clients.get(client.as_str())? {
                            Some(v) => !decode::<ClientRecord>("clients", v.value())?.revoked,
                            None => false,
                        };
                        live_clients.insert(client, live);
                        live
                    }
                };
                if !live {
                    result.outcomes.push(IngestOutcome::Refused);
                    continue;
                }
                if !runtimes.contains_key(client) {
                    let rt = runtime_table
                        .get(client.as_str())?
                        .map(|v| decode::<ClientRuntime>("client_runtime", v.value()))
                        .transpose()?
                        .unwrap_or_default();
                    runtimes.insert(client.clone(), rt);
                }
                let Some(rt) = runtimes.get_mut(client) else {
                    continue;
                };
                rt.last_seen_ms = Some(received_ms);
                let env = match item {
                    UplinkItem::Presence { online, .. } => {
                        rt.presence = Some(if *online { "online" } else { "offline" }.into());
                        result.outcomes.push(IngestOutcome::Stored);
                        continue;
                    }
                    UplinkItem::Message(env) => env,
                };
                let c = client.as_str();
                if !windows.contains_key(client) {
                    let read = read_window(&hwm_table, &above, c)?;
                    windows.insert(client.clone(), read);
                }
                let Some((_, window)) = windows.get_mut(client) else {
                    continue;
                };
                // Everything below `low` is settled on the device.
                window.settle_below(env.low);
                let seq = env.seq;
                if let Some(instance) = &env.instance {
                    if !tracks.contains_key(client) {
                        let track = instances::read_track(&instance_table, c)?;
                        tracks.insert(client.clone(), track);
                    }
                    if let Some(track) = tracks.get_mut(client) {
                        match track.observe(instance, seq, received_ms, &self.clone_rule) {
                            Some(found) => result.clones.insert(client.clone(), found),
                            None => result.clones.remove(client),
                        };
                    }
                }
                let duplicate = window.is_settled(seq);
                // Capabilities checks that need the store (a child needs its
                // parent's capabilities first), in the same transaction so a
                // parent earlier in this batch counts.
                // The device id of an accepted report is its normalised `properties.id`.
                let (rejection, caps_device) = match (&env.msg, duplicate) {
                    (Message::Capabilities(report), false) => {
                        match check_capabilities(&report.manifest, |parent| {
                            Ok::<_, StoreError>(caps_latest.get((c, parent.as_str()))?.is_some())
                        })? {
                            Ok(normalised) => (None, Some(normalised.id.to_string())),
                            Err(rejection) => (Some(rejection), None),
                        }
                    }
                    _ => (None, None),
                };
                let unassigned = match (&env.msg, duplicate) {
                    (Message::Status(report), false) => {
                        let dep = &report.status.deployment_id;
                        (!ever_assigned(&assigned, &deployments, &status_latest, c, dep.as_str())?)
                            .then(|| dep.clone())
                    }
                    _ => None,
                };
                if duplicate {
                    result.outcomes.push(IngestOutcome::Duplicate);
                } else if let Some(deployment) = unassigned {
                    // Settled (acknowledged) but not stored.
                    window.settle(seq);
                    result.outcomes.push(IngestOutcome::NotAssigned(deployment));
                } else if let Some(rejection) = rejection {
                    // Settled (acknowledged) but not stored.
                    window.settle(seq);
                    result.outcomes.push(IngestOutcome::Rejected(rejection));
                } else {
                    window.settle(seq);
                    let stored = StoredUplink {
                        kind: env.msg.kind().to_string(),
                        ts: env.ts,
                        received_ms,
                        envelope: encode("uplink_log", env)?,
                    };
                    log.insert((c, seq), encode("uplink_log", &stored)?.as_slice())?;
                    match &env.msg {
                        Message::Status(report) => {
                            let dep = report.status.deployment_id.as_str();
                            let newer = match status_latest.get((c, dep))? {
                                Some(v) => {
                                    decode::<LatestStatus>("status_latest", v.value())?.seq < seq
                                }
                                None => true,
                            };
                            if newer {
                                let latest = LatestStatus::of(report, seq, received_ms);
                                status_latest.insert(
                                    (c, dep),
                                    encode("status_latest", &latest)?.as_slice(),
                                )?;
                            }
                            rt.status_hint = Some(
                                rt.status_hint
                                    .unwrap_or(0)
                                    .max(report.adopted_manifest_version),
                            );
                        }
                        Message::State(report) => {
                            if seq > rt.state_seq {
                                rt.state_seq = seq;
                                rt.state_adopted = Some(report.adopted_manifest_version);
                                rt.schedule = report.schedule.clone();
                                let latest = LatestState {
                                    seq,
                                    received_ms,
                                    adopted_manifest_version: report.adopted_manifest_version,
                                    agent_version: report.agent_version.clone(),
                                };
                                state_latest
                                    .insert(c, encode("state_latest", &latest)?.as_slice())?;
                            }
                        }
                        Message::Capabilities(report) => {
                            // Always set: an accepted, non-duplicate report.
                            if let Some(device) = caps_device.as_deref() {
                                let newer = match caps_latest.get((c, device))? {
                                    Some(v) => {
                                        decode::<LatestCapabilities>(
                                            "capabilities_latest",
                                            v.value(),
                                        )?
                                        .seq < seq
                                    }
                                    None => true,
                                };
                                let encoded = encode(
                                    "capabilities_latest",
                                    &LatestCapabilities::of(&report.manifest, seq, received_ms)?,
                                )?;
                                if newer {
                                    caps_latest.insert((c, device), encoded.as_slice())?;
                                }
                                Self::keep_capabilities_history(
                                    &mut caps_history,
                                    c,
                                    device,
                                    seq,
                                    &encoded,
                                )?;
                            }
                        }
                        Message::Sync(_) => {}
                        // Downlink kinds never reach here (ingest rejects them first).
                        Message::Manifest(_)
                        | Message::Deployment(_)
                        | Message::Ack(_)
                        | Message::Config(_) => {}
                    }
                    result.outcomes.push(IngestOutcome::Stored);
                }
                if matches!(env.msg, Message::Sync(_)) {
                    result.sync.insert(client.clone());
                }
                result.ack.insert(client.clone());
            }
            for (client, (rows, window)) in &windows {
                write_window(&mut hwm_table, &mut above, client.as_str(), rows, window)?;
            }
            for (client, track) in &tracks {
                instances::write_track(&mut instance_table, client.as_str(), track)?;
            }
            for (client, rt) in &runtimes {
                runtime_table.insert(client.as_str(), encode("client_runtime", rt)?.as_slice())?;
            }
        }
        let committing = std::time::Instant::now();
        result.write_time = committing - started;
        self.commit(txn, "write an uplink batch to")?;
        result.commit_time = committing.elapsed();
        Ok(result)
    }

    /// Stored uplink seqs of `client`, ascending.
    pub fn uplink(&self, client: &ClientId) -> Result<Vec<UplinkSummary>> {
        let txn = self.begin_read()?;
        let log = txn.open_table(UPLINK_LOG)?;
        let c = client.as_str();
        let mut out = Vec::new();
        for row in log.range((c, 0u64)..=(c, u64::MAX))? {
            let (k, v) = row?;
            let stored: StoredUplink = decode("uplink_log", v.value())?;
            out.push(UplinkSummary {
                seq: k.value().1,
                kind: stored.kind,
                ts: stored.ts,
                received_at: stored.received_ms,
            });
        }
        Ok(out)
    }
}

/// `client`'s seq window as stored, with the rows it has above the mark.
fn read_window(
    hwm_table: &redb::Table<'_, &str, u64>,
    above: &redb::Table<'_, (&str, u64), ()>,
    client: &str,
) -> Result<(BTreeSet<u64>, SeqWindow)> {
    let hwm = hwm_table.get(client)?.map_or(0, |v| v.value());
    let rows: BTreeSet<u64> = above
        .range((client, 0u64)..=(client, u64::MAX))?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let window = SeqWindow::from_parts(hwm, rows.iter().copied());
    Ok((rows, window))
}

/// Writes `window` back for `client`: its mark, and the rows above the
/// mark that differ from `rows` (those read).
fn write_window(
    hwm_table: &mut redb::Table<'_, &str, u64>,
    above: &mut redb::Table<'_, (&str, u64), ()>,
    client: &str,
    rows: &BTreeSet<u64>,
    window: &SeqWindow,
) -> Result<()> {
    hwm_table.insert(client, window.hwm())?;
    for &seq in rows.difference(window.above()) {
        above.remove((client, seq))?;
    }
    for &seq in window.above().difference(rows) {
        above.insert((client, seq), ())?;
    }
    Ok(())
}
