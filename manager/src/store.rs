//! The manager's redb store: clients, desired state, uplink, audit.
//!
//! Synchronous (redb is); async code calls it through [`Store::run`], which
//! moves the work onto tokio's blocking pool. Every mutating call is one
//! write transaction; ingest writes a whole batch in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use margo_schemas::capabilities::DeviceCapabilitiesManifest;
use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId, DeviceId};
use margo_schemas::messages::{Ack, Envelope, Message, ScheduleInForce, StatusReport};
use margo_schemas::pki::cert_info;
use margo_schemas::schedule::{Schedule, ValidSchedule};

use crate::availability::{self, Availability, Observed};
use crate::capabilities::{check_capabilities, CapabilitiesRejection};
use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus, StatusError};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// clientId → CBOR [`ClientRecord`].
pub(crate) const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
/// name → clientId (unique names).
pub(crate) const NAMES: TableDefinition<&str, &str> = TableDefinition::new("client_names");
/// hex SHA-256 of a client certificate's public key (P-256 point) → clientId,
/// so a key stays bound to its client (and its revocation) across re-onboarding.
pub(crate) const CLIENT_KEYS: TableDefinition<&str, &str> = TableDefinition::new("client_keys");
/// hex SHA-256 of a certificate's DER → clientId: every certificate a
/// client is registered with (its fleet-CA certificate, and the device's own
/// certificate it onboarded with), so a TLS client certificate identifies
/// its client (`http::tls_peer`). Written in the transactions that add a
/// client or approve an onboarding request; rebuilt at open when it holds
/// fewer entries than there are clients (a database from before it).
pub(crate) const CLIENT_CERTS: TableDefinition<&str, &str> =
    TableDefinition::new("client_certificates");
/// digest (`sha256:…`) → exact YAML bytes.
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// (clientId, deploymentId) → CBOR [`DeploymentEntry`].
const DEPLOYMENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("deployments");
/// clientId → current desired manifest version. No entry: version 1, the
/// zero-deployment manifest (see [`desired_version`]).
const MANIFEST_VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("manifest_versions");
/// (clientId, deploymentId) ever assigned to the client (kept after an
/// undeploy), so a status report for a deployment the client never had is
/// refused. Added without a migration: a deployment assigned before the
/// table existed counts as assigned when it is still desired or has a stored
/// status (see [`ever_assigned`]).
const ASSIGNED: TableDefinition<(&str, &str), ()> = TableDefinition::new("assigned_deployments");
/// clientId → highest contiguous settled uplink seq.
const HWM: TableDefinition<&str, u64> = TableDefinition::new("uplink_hwm");
/// (clientId, seq) stored above the high-water mark.
const ABOVE_HWM: TableDefinition<(&str, u64), ()> = TableDefinition::new("uplink_above_hwm");
/// (clientId, seq) → CBOR [`StoredUplink`]: the uplink history (status, state, capabilities, sync).
const UPLINK_LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("uplink_log");
/// (clientId, deploymentId) → CBOR [`LatestStatus`].
const STATUS_LATEST: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("status_latest");
/// clientId → CBOR [`LatestState`].
const STATE_LATEST: TableDefinition<&str, &[u8]> = TableDefinition::new("state_latest");
/// (clientId, deviceId) → CBOR [`LatestCapabilities`].
const CAPS_LATEST: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("capabilities_latest");
/// (clientId, deviceId, seq) → CBOR [`LatestCapabilities`]: the last
/// [`MAX_CAPABILITIES_HISTORY`] reports per device.
const CAPS_HISTORY: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("capabilities_history");
/// clientId → CBOR [`ClientRuntime`] (presence, last seen, adopted version).
const RUNTIME: TableDefinition<&str, &[u8]> = TableDefinition::new("client_runtime");
/// clientId → CBOR [`RemoteConfig`]: the remote settings published on `R/config`.
const REMOTE_CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("remote_config");
/// sequence → CBOR [`AuditEvent`].
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// audit kind → count.
const AUDIT_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("audit_counts");

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
fn ever_assigned(
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

/// Most audit events kept (the oldest are dropped; counters keep counting).
pub const MAX_AUDIT_EVENTS: u64 = 10_000;
/// Longest client name.
pub const MAX_NAME_LEN: usize = 128;
/// Capabilities reports kept per (client, device id) besides the latest.
pub const MAX_CAPABILITIES_HISTORY: usize = 16;

/// Everything the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, ...).
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    /// A stored record does not decode (corruption or an incompatible version).
    #[error("stored {table} record is unreadable: {detail}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode a {table} record: {detail}")]
    Encode {
        /// Table name.
        table: &'static str,
        /// Encoder message.
        detail: String,
    },
    /// No client with that id or name.
    #[error("no client {0:?}")]
    UnknownClient(String),
    /// The client is revoked.
    #[error("client {0} is revoked")]
    Revoked(ClientId),
    /// The name is already used by another client.
    #[error("the name {0:?} is already taken")]
    NameTaken(String),
    /// The name is not acceptable.
    #[error("name: {0}")]
    InvalidName(String),
    /// The client id already exists.
    #[error("client {0} already exists")]
    ClientExists(ClientId),
    /// The deployment is not assigned to the client.
    #[error("deployment {deployment} is not assigned to client {client}")]
    NotDeployed {
        /// The client.
        client: ClientId,
        /// The deployment.
        deployment: DeploymentId,
    },
    /// More deployments than a manifest may hold.
    #[error("client {client} would have {count} deployments, the limit is {max}")]
    TooManyDeployments {
        /// The client.
        client: ClientId,
        /// How many it would have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The blocking task running a store call failed.
    #[error("store task failed: {0}")]
    Task(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Database(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>> {
    margo_schemas::codec::encode(value).map_err(|e| StoreError::Encode {
        table,
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T> {
    margo_schemas::codec::decode(bytes, usize::MAX).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A client as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Human-readable unique name.
    pub name: String,
    /// Its MQTT client certificate, DER.
    #[serde(with = "serde_bytes")]
    pub cert_der: Vec<u8>,
    /// When it was provisioned (ms since epoch).
    pub created_ms: u64,
    /// Whether it is revoked.
    pub revoked: bool,
}

/// A client with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    /// The id.
    pub id: ClientId,
    /// The record.
    pub record: ClientRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeploymentEntry {
    digest: String,
    name: String,
    size: u64,
    /// The document's `apiVersion` (absent in entries written before it was kept).
    #[serde(default)]
    api_version: Option<String>,
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
struct LatestStatus {
    seq: u64,
    received_ms: u64,
    adopted_manifest_version: u64,
    state: DeploymentState,
    error: Option<StatusError>,
    components: Vec<ComponentStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LatestState {
    seq: u64,
    received_ms: u64,
    adopted_manifest_version: u64,
    agent_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatestCapabilities {
    seq: u64,
    received_ms: u64,
    /// The document as received, JSON text (the exact body for HTTP; the
    /// CBOR document written as JSON for MQTT). Shown to operators as is;
    /// read through [`DeviceCapabilitiesManifest::normalize`] when used.
    json: String,
}

impl LatestStatus {
    fn of(report: &StatusReport, seq: u64, received_ms: u64) -> Self {
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

impl LatestCapabilities {
    fn of(manifest: &DeviceCapabilitiesManifest, seq: u64, received_ms: u64) -> Result<Self> {
        Ok(Self {
            seq,
            received_ms,
            json: manifest.original_json(),
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ClientRuntime {
    presence: Option<String>,
    last_seen_ms: Option<u64>,
    /// From the newest `state` report (authoritative).
    state_adopted: Option<u64>,
    state_seq: u64,
    /// Highest `adoptedManifestVersion` seen in status reports (a hint).
    status_hint: Option<u64>,
    /// The schedule in force per the newest `state` report (absent in
    /// records written before schedules existed).
    #[serde(default)]
    schedule: Option<ScheduleInForce>,
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

/// A security event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// When (ms since epoch).
    pub ts_ms: u64,
    /// Short kind, e.g. `bad-signature`, `unknown-client`.
    pub kind: String,
    /// The client the message claimed to come from, if known.
    pub client_id: Option<String>,
    /// The topic it arrived on.
    pub topic: String,
    /// What was wrong.
    pub detail: String,
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

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<Database>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Validates a client name: 1..=128 printable characters, no surrounding spaces.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(StoreError::InvalidName("must not be empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidName(format!(
            "{} bytes, the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidName(
            "no control characters or surrounding whitespace".into(),
        ));
    }
    Ok(())
}

/// Identifies a public key: hex SHA-256 of its uncompressed P-256 point.
pub fn key_id(p256_point: &[u8]) -> String {
    Digest::of(p256_point).hex()
}

/// [`key_id`] of a certificate's key, if it is a P-256 certificate.
pub fn key_id_of_cert(cert_der: &[u8]) -> Option<String> {
    cert_info(cert_der)
        .ok()
        .and_then(|info| info.p256_public_key)
        .map(|point| key_id(&point))
}

impl Store {
    /// Opens (or creates) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(CLIENTS)?;
            txn.open_table(NAMES)?;
            txn.open_table(CLIENT_KEYS)?;
            txn.open_table(CLIENT_CERTS)?;
            txn.open_table(CAPS_HISTORY)?;
            txn.open_table(BLOBS)?;
            txn.open_table(DEPLOYMENTS)?;
            txn.open_table(MANIFEST_VERSIONS)?;
            txn.open_table(ASSIGNED)?;
            txn.open_table(HWM)?;
            txn.open_table(ABOVE_HWM)?;
            txn.open_table(UPLINK_LOG)?;
            txn.open_table(STATUS_LATEST)?;
            txn.open_table(STATE_LATEST)?;
            txn.open_table(CAPS_LATEST)?;
            txn.open_table(RUNTIME)?;
            txn.open_table(AUDIT)?;
            txn.open_table(AUDIT_COUNTS)?;
            txn.open_table(REMOTE_CONFIG)?;
            crate::onboarding::open_tables(&txn)?;
            Self::rebuild_certificate_index(&txn)?;
        }
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Waits (at most `timeout`) until this handle is the only one left:
    /// a store call on the blocking pool keeps running, holding its handle,
    /// even when the task that awaited it was cancelled at shutdown, and the
    /// database file stays locked until it finishes. True once released.
    pub async fn wait_until_sole_handle(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if Arc::strong_count(&self.db) == 1 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Runs `f` on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    // ---- clients -------------------------------------------------------------

    /// Adds a client. Fails if the id exists or the name is taken.
    pub fn add_client(&self, id: &ClientId, name: &str, cert_der: &[u8]) -> Result<ClientRecord> {
        let txn = self.db.begin_write()?;
        let record = Self::insert_client(&txn, id, name, cert_der)?;
        txn.commit()?;
        Ok(record)
    }

    /// Adds many clients in one transaction (bulk provisioning): all or none.
    pub fn add_clients(&self, clients: &[(ClientId, String, Vec<u8>)]) -> Result<()> {
        let txn = self.db.begin_write()?;
        for (id, name, cert_der) in clients {
            Self::insert_client(&txn, id, name, cert_der)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Adds a client inside `txn` (provisioning and onboarding approval both
    /// use this): unique id and name, and its public key bound to it.
    pub(crate) fn insert_client(
        txn: &redb::WriteTransaction,
        id: &ClientId,
        name: &str,
        cert_der: &[u8],
    ) -> Result<ClientRecord> {
        validate_name(name)?;
        let mut clients = txn.open_table(CLIENTS)?;
        let mut names = txn.open_table(NAMES)?;
        if clients.get(id.as_str())?.is_some() {
            return Err(StoreError::ClientExists(id.clone()));
        }
        if names.get(name)?.is_some() {
            return Err(StoreError::NameTaken(name.to_string()));
        }
        let record = ClientRecord {
            name: name.to_string(),
            cert_der: cert_der.to_vec(),
            created_ms: now_ms(),
            revoked: false,
        };
        clients.insert(id.as_str(), encode("clients", &record)?.as_slice())?;
        names.insert(name, id.as_str())?;
        if let Some(key) = key_id_of_cert(cert_der) {
            txn.open_table(CLIENT_KEYS)?
                .insert(key.as_str(), id.as_str())?;
        }
        Self::bind_certificate(txn, cert_der, id)?;
        Ok(record)
    }

    /// Registers `cert_der` as a certificate of `client` inside `txn` (the
    /// onboarding approval binds the device's own certificate this way).
    pub(crate) fn bind_certificate(
        txn: &redb::WriteTransaction,
        cert_der: &[u8],
        client: &ClientId,
    ) -> Result<()> {
        txn.open_table(CLIENT_CERTS)?
            .insert(Digest::of(cert_der).hex().as_str(), client.as_str())?;
        Ok(())
    }

    /// Fills [`CLIENT_CERTS`] from the clients and the approved onboarding
    /// requests when it has fewer entries than there are clients: a
    /// database written before the index existed (or by such a version
    /// since). Insert-only, so running it on a complete index changes nothing.
    fn rebuild_certificate_index(txn: &redb::WriteTransaction) -> Result<()> {
        let indexed = txn.open_table(CLIENT_CERTS)?.len()?;
        let clients = txn.open_table(CLIENTS)?;
        if indexed >= clients.len()? {
            return Ok(());
        }
        let mut bindings = Vec::new();
        for row in clients.iter()? {
            let (k, v) = row?;
            let record: ClientRecord = decode("clients", v.value())?;
            bindings.push((Digest::of(&record.cert_der).hex(), k.value().to_string()));
        }
        drop(clients);
        bindings.extend(crate::onboarding::approved_certificates(txn)?);
        let mut index = txn.open_table(CLIENT_CERTS)?;
        for (fingerprint, client) in &bindings {
            index.insert(fingerprint.as_str(), client.as_str())?;
        }
        tracing::info!(
            certificates = bindings.len(),
            "client certificate index rebuilt (database from an earlier version)"
        );
        Ok(())
    }

    /// The client registered with exactly this certificate (DER), with its
    /// record (revoked ones included: the caller decides).
    pub fn client_by_certificate(&self, cert_der: &[u8]) -> Result<Option<ClientEntry>> {
        let txn = self.db.begin_read()?;
        let found = txn
            .open_table(CLIENT_CERTS)?
            .get(Digest::of(cert_der).hex().as_str())?
            .map(|v| v.value().to_string());
        let Some(id) = found else {
            return Ok(None);
        };
        let id = ClientId::new(id).map_err(|e| StoreError::Corrupt {
            table: "client_certificates",
            detail: e.to_string(),
        })?;
        let record = txn
            .open_table(CLIENTS)?
            .get(id.as_str())?
            .map(|v| decode::<ClientRecord>("clients", v.value()))
            .transpose()?;
        Ok(record.map(|record| ClientEntry { id, record }))
    }

    /// The client whose certificate carries the public key with this
    /// [`key_id`], with its record.
    pub(crate) fn client_by_key(
        txn: &redb::WriteTransaction,
        key_id: &str,
    ) -> Result<Option<ClientEntry>> {
        let found = txn
            .open_table(CLIENT_KEYS)?
            .get(key_id)?
            .map(|v| v.value().to_string());
        let Some(id) = found else {
            return Ok(None);
        };
        let id = ClientId::new(id).map_err(|e| StoreError::Corrupt {
            table: "client_keys",
            detail: e.to_string(),
        })?;
        let record = txn
            .open_table(CLIENTS)?
            .get(id.as_str())?
            .map(|v| decode::<ClientRecord>("clients", v.value()))
            .transpose()?;
        Ok(record.map(|record| ClientEntry { id, record }))
    }

    /// Whether `name` is already used.
    pub fn name_taken(&self, name: &str) -> Result<bool> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(NAMES)?.get(name)?.is_some())
    }

    /// The client with this id.
    pub fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLIENTS)?;
        let found = table.get(id.as_str())?;
        found.map(|v| decode("clients", v.value())).transpose()
    }

    /// Resolves a client id or unique name.
    pub fn resolve(&self, id_or_name: &str) -> Result<ClientId> {
        let txn = self.db.begin_read()?;
        if let Ok(id) = ClientId::new(id_or_name) {
            if txn.open_table(CLIENTS)?.get(id.as_str())?.is_some() {
                return Ok(id);
            }
        }
        let names = txn.open_table(NAMES)?;
        let found = names.get(id_or_name)?;
        match found {
            Some(id) => ClientId::new(id.value()).map_err(|e| StoreError::Corrupt {
                table: "client_names",
                detail: e.to_string(),
            }),
            None => Err(StoreError::UnknownClient(
                id_or_name.chars().take(140).collect(),
            )),
        }
    }

    /// Every client, sorted by id.
    pub fn clients(&self) -> Result<Vec<ClientEntry>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLIENTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let id = ClientId::new(k.value()).map_err(|e| StoreError::Corrupt {
                table: "clients",
                detail: e.to_string(),
            })?;
            out.push(ClientEntry {
                id,
                record: decode("clients", v.value())?,
            });
        }
        Ok(out)
    }

    /// Marks a client revoked (or not). Returns the updated record.
    pub fn set_revoked(&self, id: &ClientId, revoked: bool) -> Result<ClientRecord> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut clients = txn.open_table(CLIENTS)?;
            let found = clients.get(id.as_str())?.map(|v| v.value().to_vec());
            let mut record: ClientRecord = match found {
                Some(bytes) => decode("clients", &bytes)?,
                None => return Err(StoreError::UnknownClient(id.to_string())),
            };
            record.revoked = revoked;
            clients.insert(id.as_str(), encode("clients", &record)?.as_slice())?;
            record
        };
        txn.commit()?;
        Ok(record)
    }

    // ---- desired state -------------------------------------------------------

    fn live_client(txn: &redb::WriteTransaction, id: &ClientId) -> Result<ClientRecord> {
        let clients = txn.open_table(CLIENTS)?;
        let found = clients.get(id.as_str())?;
        let record: ClientRecord = match found {
            Some(v) => decode("clients", v.value())?,
            None => return Err(StoreError::UnknownClient(id.to_string())),
        };
        if record.revoked {
            return Err(StoreError::Revoked(id.clone()));
        }
        Ok(record)
    }

    /// Adds or updates `docs` for `client` in one transaction and bumps the
    /// manifest version once if anything changed (an identical re-deploy
    /// changes nothing and keeps the version).
    pub fn deploy(
        &self,
        client: &ClientId,
        docs: &[ApplicationDeployment],
    ) -> Result<DeployOutcome> {
        let txn = self.db.begin_write()?;
        let outcome = Self::deploy_in(&txn, client, docs)?;
        txn.commit()?;
        Ok(outcome)
    }

    /// [`Store::deploy`] for many clients in one transaction (one commit for
    /// a whole fleet): all or none. Outcomes in the order of `clients`.
    pub fn deploy_many(
        &self,
        clients: &[ClientId],
        docs: &[ApplicationDeployment],
    ) -> Result<Vec<DeployOutcome>> {
        let txn = self.db.begin_write()?;
        let outcomes = clients
            .iter()
            .map(|client| Self::deploy_in(&txn, client, docs))
            .collect::<Result<Vec<_>>>()?;
        txn.commit()?;
        Ok(outcomes)
    }

    /// The live (not revoked) clients whose name starts with `prefix`, sorted by name.
    pub fn clients_with_name_prefix(&self, prefix: &str) -> Result<Vec<ClientId>> {
        let txn = self.db.begin_read()?;
        let names = txn.open_table(NAMES)?;
        let clients = txn.open_table(CLIENTS)?;
        let mut out = Vec::new();
        for row in names.range(prefix..)? {
            let (name, id) = row?;
            if !name.value().starts_with(prefix) {
                break;
            }
            let revoked = match clients.get(id.value())? {
                Some(v) => decode::<ClientRecord>("clients", v.value())?.revoked,
                None => true,
            };
            if revoked {
                continue;
            }
            out.push(ClientId::new(id.value()).map_err(|e| StoreError::Corrupt {
                table: "client_names",
                detail: e.to_string(),
            })?);
        }
        Ok(out)
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
        let txn = self.db.begin_write()?;
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
        txn.commit()?;
        Ok(version)
    }

    /// The complete desired state of `client` and its current ack.
    pub fn desired_state(&self, client: &ClientId) -> Result<DesiredState> {
        let txn = self.db.begin_read()?;
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
        Ok(DesiredState {
            client: client.clone(),
            manifest_version,
            deployments: out,
            ack: Ack {
                acked_seq,
                manifest_version,
            },
        })
    }

    /// The ack `client` should see now.
    pub fn ack_for(&self, client: &ClientId) -> Result<Ack> {
        let txn = self.db.begin_read()?;
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
        Ok(Ack {
            acked_seq,
            manifest_version,
        })
    }

    /// The acks `clients` should see now, in one read transaction.
    pub fn acks_for(&self, clients: &[ClientId]) -> Result<Vec<Ack>> {
        let txn = self.db.begin_read()?;
        let versions = txn.open_table(MANIFEST_VERSIONS)?;
        let hwm = txn.open_table(HWM)?;
        clients
            .iter()
            .map(|client| {
                Ok(Ack {
                    acked_seq: hwm.get(client.as_str())?.map_or(0, |v| v.value()),
                    manifest_version: desired_version(
                        versions.get(client.as_str())?.map(|v| v.value()),
                    ),
                })
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
        let txn = self.db.begin_write()?;
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
                updated_at: now_ms(),
            };
            table.insert(
                client.as_str(),
                encode("remote_config", &config)?.as_slice(),
            )?;
            config
        };
        txn.commit()?;
        Ok(config)
    }

    /// `client`'s remote settings; `None` if none were ever set.
    pub fn remote_config(&self, client: &ClientId) -> Result<Option<RemoteConfig>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REMOTE_CONFIG)?;
        let found = table.get(client.as_str())?;
        found
            .map(|v| decode("remote_config", v.value()))
            .transpose()
    }

    // ---- uplink --------------------------------------------------------------

    /// Stores a batch of verified uplink items in one transaction.
    pub fn ingest(&self, items: &[UplinkItem]) -> Result<BatchResult> {
        self.ingest_at(items, now_ms())
    }

    /// [`ingest`](Self::ingest) with the receive time given (tests).
    fn ingest_at(&self, items: &[UplinkItem], received_ms: u64) -> Result<BatchResult> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_write()?;
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
            let mut runtimes: BTreeMap<ClientId, ClientRuntime> = BTreeMap::new();
            let mut hwms: BTreeMap<ClientId, u64> = BTreeMap::new();
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
                if !hwms.contains_key(client) {
                    let h = hwm_table
                        .get(client.as_str())?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    hwms.insert(client.clone(), h);
                }
                let mut hwm = hwms.get(client).copied().unwrap_or(0);
                let c = client.as_str();
                // Everything below `low` is settled on the device.
                if env.low > 0 && env.low - 1 > hwm {
                    hwm = env.low - 1;
                    let settled: Vec<u64> = above
                        .range((c, 0u64)..=(c, hwm))?
                        .map(|r| r.map(|(k, _)| k.value().1))
                        .collect::<Result<_, _>>()?;
                    for seq in settled {
                        above.remove((c, seq))?;
                    }
                }
                let seq = env.seq;
                let duplicate = seq <= hwm || above.get((c, seq))?.is_some();
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
                    above.insert((c, seq), ())?;
                    result.outcomes.push(IngestOutcome::NotAssigned(deployment));
                } else if let Some(rejection) = rejection {
                    // Settled (acknowledged) but not stored.
                    above.insert((c, seq), ())?;
                    result.outcomes.push(IngestOutcome::Rejected(rejection));
                } else {
                    above.insert((c, seq), ())?;
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
                // Advance over contiguous stored seqs.
                while above.remove((c, hwm + 1))?.is_some() {
                    hwm += 1;
                }
                hwms.insert(client.clone(), hwm);
                result.ack.insert(client.clone());
            }
            for (client, hwm) in &hwms {
                hwm_table.insert(client.as_str(), *hwm)?;
            }
            for (client, rt) in &runtimes {
                runtime_table.insert(client.as_str(), encode("client_runtime", rt)?.as_slice())?;
            }
        }
        let committing = std::time::Instant::now();
        result.write_time = committing - started;
        txn.commit()?;
        result.commit_time = committing.elapsed();
        Ok(result)
    }

    /// Adds `encoded` to the capabilities history of `device` under `seq`
    /// and drops the oldest beyond [`MAX_CAPABILITIES_HISTORY`].
    fn keep_capabilities_history(
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
        let received_ms = now_ms();
        let c = client.as_str();
        let dep = status.deployment_id.as_str();
        let txn = self.db.begin_write()?;
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
        txn.commit()?;
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
        let received_ms = now_ms();
        let c = client.as_str();
        let txn = self.db.begin_write()?;
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
        txn.commit()?;
        Ok(outcome)
    }

    /// Deletes the stored capabilities (latest and history) of `device`.
    /// A gateway whose children still have capabilities is refused.
    pub fn delete_capabilities(
        &self,
        client: &ClientId,
        device: &DeviceId,
    ) -> Result<(), ReportError> {
        let received_ms = now_ms();
        let c = client.as_str();
        let d = device.as_str();
        let txn = self.db.begin_write()?;
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
        txn.commit()?;
        Ok(())
    }

    /// Stored uplink seqs of `client`, ascending.
    pub fn uplink(&self, client: &ClientId) -> Result<Vec<UplinkSummary>> {
        let txn = self.db.begin_read()?;
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

    /// The latest capabilities reports of `client` as JSON values, by device id.
    pub fn capabilities(&self, client: &ClientId) -> Result<BTreeMap<String, serde_json::Value>> {
        let txn = self.db.begin_read()?;
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
        let txn = self.db.begin_read()?;
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

    // ---- fleet view ----------------------------------------------------------

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

    // ---- audit ---------------------------------------------------------------

    /// Appends security events (keeping at most [`MAX_AUDIT_EVENTS`]) and bumps their counters.
    pub fn record_audit(&self, events: &[AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut audit = txn.open_table(AUDIT)?;
            let mut counts = txn.open_table(AUDIT_COUNTS)?;
            let first = audit.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
            for (key, event) in (first..).zip(events) {
                audit.insert(key, encode("audit", event)?.as_slice())?;
                let n = counts
                    .get(event.kind.as_str())?
                    .map(|v| v.value())
                    .unwrap_or(0);
                counts.insert(event.kind.as_str(), n + 1)?;
            }
            while audit.len()? > MAX_AUDIT_EVENTS {
                if audit.pop_first()?.is_none() {
                    break;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The most recent `limit` audit events, oldest first, and the counters by kind.
    pub fn audit(&self, limit: usize) -> Result<(Vec<AuditEvent>, BTreeMap<String, u64>)> {
        let txn = self.db.begin_read()?;
        let audit = txn.open_table(AUDIT)?;
        let mut events = Vec::new();
        for row in audit.iter()?.rev().take(limit) {
            let (_, v) = row?;
            events.push(decode("audit", v.value())?);
        }
        events.reverse();
        let mut counts = BTreeMap::new();
        for row in txn.open_table(AUDIT_COUNTS)?.iter()? {
            let (k, v) = row?;
            counts.insert(k.value().to_string(), v.value());
        }
        Ok((events, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use margo_schemas::messages::{StateReport, StatusReport, SyncReason, SyncRequest};
    use margo_schemas::status::DeploymentStatus;

    fn doc(id: &str, revision: &str) -> ApplicationDeployment {
        let yaml = format!(
            "apiVersion: application.margo.org/v1alpha1\nkind: ApplicationDeployment\n\
             metadata:\n  annotations:\n    id: {id}\n  name: app-{id}\n\
             spec:\n  deploymentProfile:\n    type: compose\n    components:\n\
             \x20     - name: web\n        properties:\n          revision: \"{revision}\"\n"
        );
        ApplicationDeployment::parse(yaml.into_bytes()).expect("valid test document")
    }

    fn open() -> (tempfile::TempDir, Store, ClientId) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("m.redb")).expect("open");
        let id = ClientId::generate();
        store.add_client(&id, "dev-1", b"cert").expect("add");
        (dir, store, id)
    }

    fn state(client: &ClientId, seq: u64, low: u64, adopted: u64) -> UplinkItem {
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
            let txn = store.db.begin_write().expect("txn");
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
        let view = store.client_status(&id, now_ms()).expect("status");
        assert_eq!(view.desired_version, 1);
        // A database from before this reading: a stored 1 with a deployment
        // stays 1, and the next change makes 2.
        assert_eq!(desired_version(None), 1);
        assert_eq!(desired_version(Some(0)), 1);
        assert_eq!(desired_version(Some(1)), 1);
        assert_eq!(desired_version(Some(7)), 7);
    }

    fn status_item(client: &ClientId, seq: u64, deployment: &str) -> UplinkItem {
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
        let view = store.client_status(&id, now_ms()).expect("status");
        let ids: Vec<&str> = view
            .deployments
            .iter()
            .map(|d| d.deployment_id.as_str())
            .collect();
        assert_eq!(ids, vec!["a", "b"]);
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
        let view = store.client_status(&id, now_ms()).expect("status");
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
        let view = store.client_status(&id, now_ms()).expect("status");
        assert_eq!(view.adopted_version, Some(0));
        assert_eq!(view.acked_seq, 4);
        assert_eq!(view.agent_version.as_deref(), Some("test"));
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

    fn valid(text: &str) -> ValidSchedule {
        let s: Schedule = toml::from_str(text).expect("test schedule parses");
        ValidSchedule::try_from(s).expect("test schedule is valid")
    }

    const PER_CHECK_UTC: &str = "time_zone = \"UTC\"\nconnection = \"per-check\"\n\
        [polling]\nperiod = [{ start = \"08:00\", end = \"18:00\" }]\nrate = \"15m\"\n";

    fn state_with_schedule(
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

    fn ms(rfc3339: &str) -> u64 {
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
        let view = store.client_status(&id, now_ms()).expect("status");
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
            store
                .client_status(&id, ms(t))
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
            store
                .fleet_status(ms("2026-03-02T10:25:00Z"))
                .expect("fleet")[0]
                .availability,
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
        let view = store.client_status(&id, now_ms()).expect("status");
        assert_eq!(view.availability, Availability::Online);
        assert_eq!(view.schedule_in_force, None);
        store
            .ingest(&[UplinkItem::Presence {
                client: id.clone(),
                online: false,
            }])
            .expect("ingest");
        let view = store.client_status(&id, now_ms()).expect("status");
        assert_eq!(view.availability, Availability::Offline, "no schedule");
        store.set_revoked(&id, true).expect("revoke");
        let view = store.client_status(&id, now_ms()).expect("status");
        assert_eq!(view.availability, Availability::Revoked);
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
}
