//! The admin API's request and response bodies, shared by the server and
//! [`super::AdminClient`].

use std::collections::{BTreeMap, BTreeSet};

use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::ScheduleInForce;
use serde::{Deserialize, Serialize};

use crate::ingest::IngestTimingSnapshot;
use crate::onboarding::RequestView;
use crate::status_view::ClientStatus;
use crate::store::{AuditEvent, CapabilitiesEntry, RemoteConfig};

/// `POST /v1/clients` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddClientRequest {
    /// Unique human-readable name.
    pub name: String,
    /// Broker URL for the bundle (default: the manager's `public_broker_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_url: Option<String>,
}

/// `POST /v1/clients` response: everything an identity bundle holds.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionedBundle {
    /// The assigned client id.
    pub client_id: ClientId,
    /// The name.
    pub name: String,
    /// Where the device connects.
    pub broker_url: String,
    /// The device's private key (PKCS#8 PEM). The manager does not keep it.
    pub key_pem: String,
    /// The device's client certificate (CN = client id).
    pub cert_pem: String,
    /// The fleet CA.
    pub ca_pem: String,
    /// The manager's signing certificate.
    pub signing_cert_pem: String,
}

impl std::fmt::Debug for ProvisionedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionedBundle")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("broker_url", &self.broker_url)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Most clients one `POST /v1/clients/bulk` call provisions.
pub use crate::fleet::MAX_BULK_CLIENTS;

/// `POST /v1/clients/bulk` body: provisions `{prefix}{first}` ..
/// `{prefix}{first + count - 1}` in one store transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddClientsRequest {
    /// Name prefix, e.g. `sim-`.
    pub prefix: String,
    /// How many (1..=[`MAX_BULK_CLIENTS`]).
    pub count: u32,
    /// Number of the first name (default 1).
    #[serde(default = "one")]
    pub first: u32,
    /// Broker URL for the bundles (default: the manager's `public_broker_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_url: Option<String>,
}

fn one() -> u32 {
    1
}

/// One device of a [`ProvisionedBulk`]: what differs per device.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionedDevicePem {
    /// The assigned client id.
    pub client_id: ClientId,
    /// The name.
    pub name: String,
    /// The device's private key (PKCS#8 PEM). The manager does not keep it.
    pub key_pem: String,
    /// The device's client certificate (CN = client id).
    pub cert_pem: String,
}

/// `POST /v1/clients/bulk` response: the shared parts once, then every device.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionedBulk {
    /// Where the devices connect.
    pub broker_url: String,
    /// The fleet CA.
    pub ca_pem: String,
    /// The manager's signing certificate.
    pub signing_cert_pem: String,
    /// The devices, in name order.
    pub clients: Vec<ProvisionedDevicePem>,
}

impl std::fmt::Debug for ProvisionedBulk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionedBulk")
            .field("broker_url", &self.broker_url)
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl ProvisionedBulk {
    /// Every device as a complete [`ProvisionedBundle`] (for [`crate::identity_bundle::write_bundle`]).
    pub fn bundles(&self) -> impl Iterator<Item = ProvisionedBundle> + '_ {
        self.clients.iter().map(|c| ProvisionedBundle {
            client_id: c.client_id.clone(),
            name: c.name.clone(),
            broker_url: self.broker_url.clone(),
            key_pem: c.key_pem.clone(),
            cert_pem: c.cert_pem.clone(),
            ca_pem: self.ca_pem.clone(),
            signing_cert_pem: self.signing_cert_pem.clone(),
        })
    }
}

/// `POST /v1/deployments` body: the same documents to many clients, in one
/// store transaction (all or none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployManyRequest {
    /// Client ids or names.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Also every live client whose name starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    /// ApplicationDeployment YAML documents.
    pub documents: Vec<String>,
}

/// One client in `GET /v1/clients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientSummary {
    /// The id.
    pub client_id: ClientId,
    /// The name.
    pub name: String,
    /// Whether revoked.
    pub revoked: bool,
    /// When provisioned (ms since epoch).
    pub created_at: u64,
}

/// `POST /v1/clients/{client}/revoke` response: what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokeResponse {
    /// The id.
    pub client_id: ClientId,
    /// The name.
    pub name: String,
    /// Always true after the call.
    pub revoked: bool,
    /// When provisioned (ms since epoch).
    pub created_at: u64,
    /// It was revoked already before this call.
    pub already_revoked: bool,
    /// Live gateway connections cut (embedded gateway only).
    pub connections_closed: Option<usize>,
    /// Certificates the rewritten revocation list (`pki/revoked.crl`, for
    /// external brokers) names; absent if writing it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_list_entries: Option<usize>,
}

/// `GET /v1/ca`: what devices pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaInfo {
    /// `sha256:<hex>` of the CA certificate's DER.
    pub fingerprint: String,
    /// The CA certificate, PEM.
    pub certificate_pem: String,
}

/// `POST /v1/onboarding/requests/{id}/approve` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApproveRequest {
    /// The fleet name to give the device (default: what it claimed, else `device-<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /v1/onboarding/requests/reject` body: rejects every pending
/// request the filters select (they combine; with none, `all` must be true).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RejectManyRequest {
    /// Reject every pending request (required when no filter is given).
    #[serde(default)]
    pub all: bool,
    /// Only requests first seen at least this many seconds ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_secs: Option<u64>,
    /// Only requests from this address or network (`192.0.2.0/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// `POST /v1/onboarding/requests/{id}/approve` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApproveResponse {
    /// The request after approval.
    pub request: RequestView,
    /// The client it became.
    pub client_id: ClientId,
    /// The client's name.
    pub name: String,
    /// Who approved (`operator`, or `known key` when the key was a client already).
    pub decided_by: String,
    /// The device's key is not ECDSA P-256: the client can use the HTTP API
    /// only (MQTT signs with COSE ES256).
    #[serde(default)]
    pub http_only: bool,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// How many devices it may approve.
    pub uses: u32,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
    /// Operator's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `GET /v1/clients/{client}`: one client in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientDetails {
    /// Identity.
    pub client: ClientSummary,
    /// `sha256:<hex>` of its client certificate.
    pub cert_fingerprint: String,
    /// Its client certificate's expiry (seconds since epoch).
    pub cert_not_after: Option<i64>,
    /// Presence, versions, deployments.
    pub status: ClientStatus,
    /// Latest capabilities per device id.
    pub capabilities: Vec<CapabilitiesEntry>,
    /// The remote settings stored for it (published on `R/config`), if any
    /// were ever set. What the device follows is `status.scheduleInForce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_config: Option<RemoteConfig>,
}

/// `GET`, `PUT` and `DELETE /v1/clients/{client}/schedule`: the remote
/// schedule stored for a client and the one it reports in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    /// The client.
    pub client_id: ClientId,
    /// The remote config as stored and published (after `PUT`/`DELETE`: the
    /// new version, committed); `None` if none was ever set.
    pub remote: Option<RemoteConfig>,
    /// The schedule in force per the client's newest `state` report.
    pub in_force: Option<ScheduleInForce>,
}

/// Response of deploy and undeploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployResponse {
    /// The client.
    pub client_id: ClientId,
    /// Its desired version now.
    pub manifest_version: u64,
    /// Deployments added, updated or removed by the call.
    pub changed: Vec<DeploymentId>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Connected to the broker right now.
    pub connected: bool,
    /// Ingest counters.
    pub ingest: IngestStatsSnapshotWire,
    /// Link counters.
    pub link: LinkStatsSnapshotWire,
    /// Onboarding counters (HTTPS API).
    #[serde(default)]
    pub onboarding: BTreeMap<String, u64>,
    /// HTTPS connection counters.
    #[serde(default)]
    pub http: BTreeMap<String, u64>,
    /// The embedded device gateway's counters (empty with an external broker).
    #[serde(default)]
    pub gateway: BTreeMap<String, u64>,
    /// `[onboarding] approval`: `operator` or `auto` (every device that
    /// asks is approved).
    #[serde(default)]
    pub onboarding_approval: Option<String>,
    /// Ingest batch sizes, commit latencies and time totals.
    #[serde(default)]
    pub ingest_timing: IngestTimingSnapshot,
}

/// Ingest counters as JSON, by the keys of [`crate::ingest::IngestMetric`].
pub type IngestStatsSnapshotWire = BTreeMap<String, u64>;
/// Link counters as JSON, by the keys of [`crate::mqtt_link::LinkMetric`].
pub type LinkStatsSnapshotWire = BTreeMap<String, u64>;

/// `GET /v1/audit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    /// Most recent events, oldest first.
    pub events: Vec<AuditEvent>,
    /// Counters by kind (never reset).
    pub counts: BTreeMap<String, u64>,
}

/// Parses deployment documents an operator submits, refusing unknown
/// fields ([`ApplicationDeployment::parse_strict`]); the error names the
/// document (0-based index, and its `metadata.name` when it has one) and
/// the field.
pub fn parse_documents(docs: Vec<String>) -> Result<Vec<ApplicationDeployment>, String> {
    let mut parsed: Vec<ApplicationDeployment> = Vec::with_capacity(docs.len());
    let mut seen = BTreeSet::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let name = margo_schemas::deployment::document_name(doc.as_bytes());
        let d = ApplicationDeployment::parse_strict(doc.into_bytes()).map_err(|e| match name {
            Some(name) => format!("document {i}: {e} (metadata.name {name:?})"),
            None => format!("document {i}: {e}"),
        })?;
        if !seen.insert(d.id.clone()) {
            return Err(format!(
                "document {i}: metadata.annotations.id: {} appears twice in this request",
                d.id
            ));
        }
        parsed.push(d);
    }
    Ok(parsed)
}
