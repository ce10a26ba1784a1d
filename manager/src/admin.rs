//! The admin API: JSON over HTTP/1.1 on a Unix socket (mode 0600), and the
//! [`AdminClient`] that `margoctl` and tests use.
//!
//! redb allows one process per file, so every operator action goes through
//! the running manager. Errors are problem bodies (`application/problem+json`)
//! with a `detail` that says what was wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::ScheduleInForce;
use margo_schemas::schedule::{Schedule, ValidSchedule};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use crate::ca::{CaError, FleetPki};
use crate::http::{HttpStats, OnboardingStats};
use crate::ingest::{IngestStats, IngestStatsSnapshot, IngestTimingSnapshot, KeyCache};
use crate::mqtt_link::{LinkStats, LinkStatsSnapshot};
use crate::onboarding::{CreatedToken, OnboardingError, RequestView, TokenView};
use crate::publisher::Downlink;
use crate::status_view::{self, ClientStatus};
use crate::store::{
    now_ms, AuditEvent, CapabilitiesEntry, RemoteConfig, Store, StoreError, UplinkSummary,
};

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminServeError {
    /// Binding or preparing the socket failed.
    #[error("admin socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Binds the admin socket: removes a stale socket file, binds, sets mode 0600.
pub fn bind_socket(path: &Path) -> Result<UnixListener, AdminServeError> {
    let err = |source| AdminServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket; refusing to remove it",
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another manager is serving on this socket",
                )));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

// ---- wire types ---------------------------------------------------------------

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
pub const MAX_BULK_CLIENTS: u32 = 10_000;

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
    /// Every device as a complete [`ProvisionedBundle`] (for [`crate::bundle::write_bundle`]).
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
    /// `[onboarding] approval`: `operator` or `auto` (every device that
    /// asks is approved).
    #[serde(default)]
    pub onboarding_approval: Option<String>,
    /// Ingest batch sizes, commit latencies and time totals.
    #[serde(default)]
    pub ingest_timing: IngestTimingSnapshot,
}

/// Ingest counters as JSON (same fields as [`IngestStatsSnapshot`]).
pub type IngestStatsSnapshotWire = BTreeMap<String, u64>;
/// Link counters as JSON (same fields as [`LinkStatsSnapshot`]).
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

/// A problem body (RFC 9457).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    /// Always `about:blank`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Short summary (the HTTP reason).
    #[serde(default)]
    pub title: String,
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What was wrong.
    pub detail: String,
}

// ---- server -------------------------------------------------------------------

/// Everything the handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The store.
    pub store: Store,
    /// The fleet PKI.
    pub pki: Arc<FleetPki>,
    /// Publisher requests.
    pub downlink: Downlink,
    /// Verifying-key cache of ingest (forgotten on revoke).
    pub keys: KeyCache,
    /// The embedded gateway's revocation set, if embedded.
    pub revocations: Option<margo_broker::Revocations>,
    /// Default broker URL for bundles.
    pub public_broker_url: String,
    /// Ingest counters.
    pub ingest_stats: Arc<IngestStats>,
    /// Link counters.
    pub link_stats: Arc<LinkStats>,
    /// Broker connection state.
    pub connected: watch::Receiver<bool>,
    /// Onboarding counters.
    pub onboarding_stats: Arc<OnboardingStats>,
    /// HTTPS connection counters.
    pub http_stats: Arc<HttpStats>,
    /// `[onboarding] approval` (`operator` or `auto`).
    pub onboarding_approval: &'static str,
}

/// An API error: a status and a detail.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::UnknownClient(_) | StoreError::NotDeployed { .. } => StatusCode::NOT_FOUND,
            StoreError::NameTaken(_) | StoreError::ClientExists(_) | StoreError::Revoked(_) => {
                StatusCode::CONFLICT
            }
            StoreError::InvalidName(_) | StoreError::TooManyDeployments { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "admin request failed in the store");
        }
        Self::new(status, e.to_string())
    }
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        tracing::error!(error = %e, "admin request failed in the CA");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<OnboardingError> for ApiError {
    fn from(e: OnboardingError) -> Self {
        let detail = e.to_string();
        let status = match e {
            OnboardingError::Store(store) => return store.into(),
            OnboardingError::UnknownRequest(_) | OnboardingError::UnknownToken(_) => {
                StatusCode::NOT_FOUND
            }
            OnboardingError::AmbiguousRequest(_) | OnboardingError::InvalidToken(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            OnboardingError::Decided { .. }
            | OnboardingError::Revoked(_)
            | OnboardingError::Rejected(_)
            | OnboardingError::NoFreeName(_)
            | OnboardingError::Token(_)
            | OnboardingError::PendingFull { .. } => StatusCode::CONFLICT,
            OnboardingError::Ca(_) | OnboardingError::Random => {
                tracing::error!(error = %detail, "admin onboarding request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, detail)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("request body: {}", e.body_text()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: "about:blank".into(),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/clients", post(add_client).get(list_clients))
        .route("/v1/clients/bulk", post(add_clients))
        .route("/v1/deployments", post(deploy_many))
        .route("/v1/clients/{client}", get(client_details))
        .route("/v1/clients/{client}/revoke", post(revoke_client))
        .route("/v1/ca", get(ca_info))
        .route("/v1/onboarding/requests", get(onboarding_requests))
        .route(
            "/v1/onboarding/requests/{id}/approve",
            post(approve_request),
        )
        .route("/v1/onboarding/requests/{id}/reject", post(reject_request))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/clients/{client}/uplink", get(uplink))
        .route("/v1/clients/{client}/capabilities", get(capabilities))
        .route(
            "/v1/clients/{client}/schedule",
            get(get_schedule).put(set_schedule).delete(clear_schedule),
        )
        .route("/v1/clients/{client}/deployments", post(deploy))
        .route(
            "/v1/clients/{client}/deployments/{deployment}",
            delete(undeploy),
        )
        .route("/v1/status", get(status))
        .route("/v1/audit", get(audit))
        .with_state(state)
}

fn to_map<T: Serialize>(value: &T) -> BTreeMap<String, u64> {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

async fn health(State(state): State<AdminState>) -> Json<Health> {
    let ingest: IngestStatsSnapshot = state.ingest_stats.snapshot();
    let link: LinkStatsSnapshot = state.link_stats.snapshot();
    Json(Health {
        connected: *state.connected.borrow(),
        ingest: to_map(&ingest),
        link: to_map(&link),
        onboarding: to_map(&state.onboarding_stats.snapshot()),
        http: to_map(&state.http_stats.snapshot()),
        onboarding_approval: Some(state.onboarding_approval.to_string()),
        ingest_timing: state.ingest_stats.timing.snapshot(),
    })
}

async fn resolve(state: &AdminState, client: String) -> ApiResult<ClientId> {
    Ok(state.store.run(move |s| s.resolve(&client)).await?)
}

#[instrument(skip_all, fields(name = %req.as_ref().map(|r| r.name.as_str()).unwrap_or("-")))]
async fn add_client(
    State(state): State<AdminState>,
    req: Result<Json<AddClientRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ProvisionedBundle>)> {
    let Json(req) = req?;
    crate::store::validate_name(&req.name)?;
    let broker_url = req
        .broker_url
        .unwrap_or_else(|| state.public_broker_url.clone());
    crate::config::BrokerUrl::parse(&broker_url)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("brokerUrl: {e}")))?;
    let name = req.name.clone();
    if state.store.run(move |s| s.name_taken(&name)).await? {
        return Err(StoreError::NameTaken(req.name).into());
    }
    let client_id = ClientId::generate();
    let pki = Arc::clone(&state.pki);
    let id = client_id.clone();
    let device = tokio::task::spawn_blocking(move || pki.provision_device(&id))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let (id, name, der) = (client_id.clone(), req.name.clone(), device.cert.der.clone());
    state
        .store
        .run(move |s| s.add_client(&id, &name, &der))
        .await?;
    info!(client_id = %client_id, name = %req.name, "provisioned a client");
    Ok((
        StatusCode::CREATED,
        Json(ProvisionedBundle {
            client_id,
            name: req.name,
            broker_url,
            key_pem: device.key_pem,
            cert_pem: device.cert.pem,
            ca_pem: state.pki.ca_pem().to_string(),
            signing_cert_pem: state.pki.signing_cert_pem().to_string(),
        }),
    ))
}

#[instrument(skip_all, fields(prefix = %req.as_ref().map(|r| r.prefix.as_str()).unwrap_or("-")))]
async fn add_clients(
    State(state): State<AdminState>,
    req: Result<Json<AddClientsRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ProvisionedBulk>)> {
    let Json(req) = req?;
    if !(1..=MAX_BULK_CLIENTS).contains(&req.count) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("count: {} is not in 1..={MAX_BULK_CLIENTS}", req.count),
        ));
    }
    let last = req.first.checked_add(req.count - 1).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "first + count overflows")
    })?;
    let names: Vec<String> = (req.first..=last)
        .map(|i| format!("{}{i}", req.prefix))
        .collect();
    for name in &names {
        crate::store::validate_name(name)?;
    }
    let broker_url = req
        .broker_url
        .unwrap_or_else(|| state.public_broker_url.clone());
    crate::config::BrokerUrl::parse(&broker_url)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("brokerUrl: {e}")))?;
    // Keys and certificates on the blocking pool, then one transaction (which
    // re-checks every name, so a concurrent add cannot slip in between).
    let pki = Arc::clone(&state.pki);
    let devices = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|name| {
                let id = ClientId::generate();
                let device = pki.provision_device(&id)?;
                Ok((id, name, device))
            })
            .collect::<Result<Vec<_>, CaError>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let rows: Vec<(ClientId, String, Vec<u8>)> = devices
        .iter()
        .map(|(id, name, device)| (id.clone(), name.clone(), device.cert.der.clone()))
        .collect();
    state.store.run(move |s| s.add_clients(&rows)).await?;
    info!(prefix = %req.prefix, count = req.count, "provisioned clients in bulk");
    Ok((
        StatusCode::CREATED,
        Json(ProvisionedBulk {
            broker_url,
            ca_pem: state.pki.ca_pem().to_string(),
            signing_cert_pem: state.pki.signing_cert_pem().to_string(),
            clients: devices
                .into_iter()
                .map(|(client_id, name, device)| ProvisionedDevicePem {
                    client_id,
                    name,
                    key_pem: device.key_pem,
                    cert_pem: device.cert.pem,
                })
                .collect(),
        }),
    ))
}

async fn list_clients(State(state): State<AdminState>) -> ApiResult<Json<Vec<ClientSummary>>> {
    let clients = state.store.run(|s| s.clients()).await?;
    Ok(Json(
        clients
            .into_iter()
            .map(|c| ClientSummary {
                client_id: c.id,
                name: c.record.name,
                revoked: c.record.revoked,
                created_at: c.record.created_ms,
            })
            .collect(),
    ))
}

#[instrument(skip_all, fields(client_id = %client))]
async fn revoke_client(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<RevokeResponse>> {
    let id = resolve(&state, client).await?;
    let c = id.clone();
    let (already_revoked, record) = state
        .store
        .run(move |s| {
            let before = s.client(&c)?.is_some_and(|r| r.revoked);
            Ok((before, s.set_revoked(&c, true)?))
        })
        .await?;
    state.keys.forget(&id);
    let connections_closed = state.revocations.as_ref().map(|r| r.revoke(&id));
    state.downlink.revoked(&id);
    info!(client_id = %id, already_revoked, ?connections_closed, "revoked a client");
    Ok(Json(RevokeResponse {
        client_id: id,
        name: record.name,
        revoked: record.revoked,
        created_at: record.created_ms,
        already_revoked,
        connections_closed,
    }))
}

async fn client_details(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<ClientDetails>> {
    let id = resolve(&state, client).await?;
    let details = state
        .store
        .run(move |s| {
            let record = s
                .client(&id)?
                .ok_or_else(|| StoreError::UnknownClient(id.to_string()))?;
            let status = status_view::client_status(s, &id, now_ms())?;
            let capabilities = s.capabilities_detail(&id)?;
            let remote_config = s.remote_config(&id)?;
            let info = margo_schemas::pki::cert_info(&record.cert_der).ok();
            Ok(ClientDetails {
                cert_fingerprint: margo_schemas::pki::fingerprint(&record.cert_der).to_string(),
                cert_not_after: info.map(|i| i.not_after),
                client: ClientSummary {
                    client_id: id,
                    name: record.name,
                    revoked: record.revoked,
                    created_at: record.created_ms,
                },
                status,
                capabilities,
                remote_config,
            })
        })
        .await?;
    Ok(Json(details))
}

async fn ca_info(State(state): State<AdminState>) -> ApiResult<Json<CaInfo>> {
    Ok(Json(CaInfo {
        fingerprint: state.pki.ca_fingerprint()?.to_string(),
        certificate_pem: state.pki.ca_pem().to_string(),
    }))
}

async fn onboarding_requests(State(state): State<AdminState>) -> ApiResult<Json<Vec<RequestView>>> {
    let requests = state.store.run(|s| Ok(s.onboarding_requests())).await??;
    Ok(Json(requests))
}

#[instrument(skip_all, fields(request_id = %id))]
async fn approve_request(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
    req: Result<Json<ApproveRequest>, JsonRejection>,
) -> ApiResult<Json<ApproveResponse>> {
    let Json(req) = req?;
    let pki = Arc::clone(&state.pki);
    let (view, approved) = state
        .store
        .run(move |s| {
            Ok(
                s.onboarding_approve(&id, req.name.as_deref(), |client, der| {
                    pki.issue_for_device_cert(client, der)
                }),
            )
        })
        .await??;
    state.downlink.republish(&approved.client_id);
    info!(
        request_id = %view.request_id,
        client_id = %approved.client_id,
        name = %approved.client.name,
        decided_by = %approved.decided_by,
        "onboarding request approved"
    );
    let http_only = margo_schemas::pki::cert_info(&approved.client.cert_der)
        .map(|info| info.p256_public_key.is_none())
        .unwrap_or(false);
    if http_only {
        warn!(
            client_id = %approved.client_id,
            "this client's key is not ECDSA P-256: it can use the HTTP API only (MQTT needs P-256 for COSE ES256)"
        );
    }
    Ok(Json(ApproveResponse {
        request: view,
        client_id: approved.client_id,
        name: approved.client.name,
        decided_by: approved.decided_by,
        http_only,
    }))
}

#[instrument(skip_all, fields(request_id = %id))]
async fn reject_request(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<RequestView>> {
    let view = state
        .store
        .run(move |s| Ok(s.onboarding_reject(&id)))
        .await??;
    info!(request_id = %view.request_id, "onboarding request rejected");
    Ok(Json(view))
}

async fn create_token(
    State(state): State<AdminState>,
    req: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let Json(req) = req?;
    let ttl_ms = req.expires_in_secs.saturating_mul(1000);
    let created = state
        .store
        .run(move |s| Ok(s.token_create(req.uses, ttl_ms, req.note)))
        .await??;
    info!(token_id = %created.view.id, uses = created.view.uses, expires_at = created.view.expires_at, "enrollment token created");
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_tokens(State(state): State<AdminState>) -> ApiResult<Json<Vec<TokenView>>> {
    Ok(Json(state.store.run(|s| Ok(s.tokens())).await??))
}

async fn revoke_token(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<TokenView>> {
    let view = state.store.run(move |s| Ok(s.token_revoke(&id))).await??;
    info!(token_id = %view.id, "enrollment token revoked");
    Ok(Json(view))
}

async fn uplink(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<Vec<UplinkSummary>>> {
    let id = resolve(&state, client).await?;
    Ok(Json(state.store.run(move |s| s.uplink(&id)).await?))
}

async fn capabilities(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<BTreeMap<String, serde_json::Value>>> {
    let id = resolve(&state, client).await?;
    Ok(Json(state.store.run(move |s| s.capabilities(&id)).await?))
}

/// Parses deployment documents; the error names the document (0-based index) and the field.
pub fn parse_documents(docs: Vec<String>) -> Result<Vec<ApplicationDeployment>, String> {
    let mut parsed: Vec<ApplicationDeployment> = Vec::with_capacity(docs.len());
    let mut seen = BTreeSet::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let d = ApplicationDeployment::parse(doc.into_bytes())
            .map_err(|e| format!("document {i}: {e}"))?;
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

#[instrument(skip_all, fields(client_id = %client))]
async fn deploy(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
    docs: Result<Json<Vec<String>>, JsonRejection>,
) -> ApiResult<Json<DeployResponse>> {
    let Json(docs) = docs?;
    if docs.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must list at least one ApplicationDeployment document",
        ));
    }
    let parsed = parse_documents(docs)
        .map_err(|detail| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail))?;
    let id = resolve(&state, client).await?;
    let c = id.clone();
    let outcome = state.store.run(move |s| s.deploy(&c, &parsed)).await?;
    if !outcome.changed.is_empty() {
        state.downlink.desired_changed(&id, []);
    }
    info!(client_id = %id, manifest_version = outcome.manifest_version, changed = outcome.changed.len(), "deployed");
    Ok(Json(DeployResponse {
        client_id: id,
        manifest_version: outcome.manifest_version,
        changed: outcome.changed,
    }))
}

#[instrument(skip_all)]
async fn deploy_many(
    State(state): State<AdminState>,
    req: Result<Json<DeployManyRequest>, JsonRejection>,
) -> ApiResult<Json<Vec<DeployResponse>>> {
    let Json(req) = req?;
    if req.documents.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "documents must list at least one ApplicationDeployment document",
        ));
    }
    if req.clients.is_empty() && req.name_prefix.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "name the clients (clients) or select them by name prefix (namePrefix)",
        ));
    }
    let parsed = parse_documents(req.documents)
        .map_err(|detail| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail))?;
    let (clients, prefix) = (req.clients, req.name_prefix);
    let (ids, outcomes) = state
        .store
        .run(move |s| {
            let mut ids = Vec::with_capacity(clients.len());
            let mut seen = BTreeSet::new();
            for c in &clients {
                let id = s.resolve(c)?;
                if seen.insert(id.clone()) {
                    ids.push(id);
                }
            }
            if let Some(prefix) = &prefix {
                for id in s.clients_with_name_prefix(prefix)? {
                    if seen.insert(id.clone()) {
                        ids.push(id);
                    }
                }
            }
            let outcomes = s.deploy_many(&ids, &parsed)?;
            Ok((ids, outcomes))
        })
        .await?;
    let mut changed_clients = 0usize;
    let responses: Vec<DeployResponse> = ids
        .into_iter()
        .zip(outcomes)
        .map(|(id, outcome)| {
            if !outcome.changed.is_empty() {
                state.downlink.desired_changed(&id, []);
                changed_clients += 1;
            }
            DeployResponse {
                client_id: id,
                manifest_version: outcome.manifest_version,
                changed: outcome.changed,
            }
        })
        .collect();
    info!(
        clients = responses.len(),
        changed_clients, "deployed to many clients"
    );
    Ok(Json(responses))
}

#[instrument(skip_all, fields(client_id = %client, deployment_id = %deployment))]
async fn undeploy(
    State(state): State<AdminState>,
    UrlPath((client, deployment)): UrlPath<(String, String)>,
) -> ApiResult<Json<DeployResponse>> {
    let deployment = DeploymentId::new(deployment)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let id = resolve(&state, client).await?;
    let (c, d) = (id.clone(), deployment.clone());
    let manifest_version = state.store.run(move |s| s.undeploy(&c, &d)).await?;
    state.downlink.desired_changed(&id, [deployment.clone()]);
    info!(client_id = %id, deployment_id = %deployment, manifest_version, "undeployed");
    Ok(Json(DeployResponse {
        client_id: id,
        manifest_version,
        changed: vec![deployment],
    }))
}

async fn schedule_view(state: &AdminState, id: ClientId) -> ApiResult<ScheduleView> {
    Ok(state
        .store
        .run(move |s| {
            let remote = s.remote_config(&id)?;
            let in_force = status_view::client_status(s, &id, now_ms())?.schedule_in_force;
            Ok(ScheduleView {
                client_id: id,
                remote,
                in_force,
            })
        })
        .await?)
}

async fn get_schedule(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<ScheduleView>> {
    let id = resolve(&state, client).await?;
    Ok(Json(schedule_view(&state, id).await?))
}

/// Stores `schedule` (validated; `None` clears) under the next config
/// version, then asks the publisher for `R/config`. Answers only after the
/// commit.
async fn store_schedule(
    state: &AdminState,
    client: String,
    schedule: Option<ValidSchedule>,
) -> ApiResult<Json<ScheduleView>> {
    let id = resolve(state, client).await?;
    let c = id.clone();
    let config = state
        .store
        .run(move |s| s.set_schedule(&c, schedule))
        .await?;
    state.downlink.config_changed(&id);
    info!(
        client_id = %id,
        config_version = config.version,
        remote = config.schedule.is_some(),
        "remote schedule stored"
    );
    let mut view = schedule_view(state, id).await?;
    // What this call committed, even if another call has committed since.
    view.remote = Some(config);
    Ok(Json(view))
}

#[instrument(skip_all, fields(client_id = %client))]
async fn set_schedule(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
    schedule: Result<Json<Schedule>, JsonRejection>,
) -> ApiResult<Json<ScheduleView>> {
    let Json(schedule) = schedule?;
    let valid = ValidSchedule::try_from(schedule)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    store_schedule(&state, client, Some(valid)).await
}

#[instrument(skip_all, fields(client_id = %client))]
async fn clear_schedule(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<ScheduleView>> {
    store_schedule(&state, client, None).await
}

/// `GET /v1/status` query.
#[derive(Debug, Deserialize)]
struct StatusQuery {
    client: Option<String>,
}

async fn status(
    State(state): State<AdminState>,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Json<Vec<ClientStatus>>> {
    match q.client.filter(|c| !c.is_empty()) {
        Some(client) => {
            let id = resolve(&state, client).await?;
            Ok(Json(vec![
                state
                    .store
                    .run(move |s| status_view::client_status(s, &id, now_ms()))
                    .await?,
            ]))
        }
        None => Ok(Json(
            state
                .store
                .run(|s| status_view::fleet_status(s, now_ms()))
                .await?,
        )),
    }
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(state): State<AdminState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditReport>> {
    let limit = q.limit.unwrap_or(100).min(10_000);
    let (events, counts) = state.store.run(move |s| s.audit(limit)).await?;
    Ok(Json(AuditReport { events, counts }))
}

// ---- client -------------------------------------------------------------------

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be reached (is the manager running?).
    #[error("cannot connect to the manager at {path}: {source} (is margo-manager running?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("admin API: {0}")]
    Http(#[from] hyper::Error),
    /// Building the request failed.
    #[error("admin API request: {0}")]
    Request(#[from] axum::http::Error),
    /// The manager answered with an error.
    #[error("{detail} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The problem detail.
        detail: String,
    },
    /// The response body is not what was expected.
    #[error("admin API response: {0}")]
    Decode(#[from] serde_json::Error),
}

impl AdminError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Percent-encodes one path segment or query value.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client of the admin API over its Unix socket (one connection per call).
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: axum::http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| AdminError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "admin connection ended");
            }
        });
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "margo-manager");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        driver.abort();
        if !status.is_success() {
            let detail = serde_json::from_slice::<Problem>(&bytes)
                .map(|p| p.detail)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(500).collect());
            return Err(AdminError::Api {
                status: status.as_u16(),
                detail,
            });
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Health and counters.
    pub async fn health(&self) -> Result<Health, AdminError> {
        self.call(axum::http::Method::GET, "/v1/health", None).await
    }

    /// Provisions a client: the manager assigns the id, generates the key,
    /// issues the certificate and returns the bundle contents.
    pub async fn add_client(
        &self,
        name: &str,
        broker_url: Option<&str>,
    ) -> Result<ProvisionedBundle, AdminError> {
        let body = serde_json::to_vec(&AddClientRequest {
            name: name.to_string(),
            broker_url: broker_url.map(str::to_string),
        })?;
        self.call(axum::http::Method::POST, "/v1/clients", Some(body))
            .await
    }

    /// Provisions `count` clients named `{prefix}{first}`.. in one call.
    pub async fn add_clients(
        &self,
        prefix: &str,
        count: u32,
        first: u32,
        broker_url: Option<&str>,
    ) -> Result<ProvisionedBulk, AdminError> {
        let body = serde_json::to_vec(&AddClientsRequest {
            prefix: prefix.to_string(),
            count,
            first,
            broker_url: broker_url.map(str::to_string),
        })?;
        self.call(axum::http::Method::POST, "/v1/clients/bulk", Some(body))
            .await
    }

    /// Adds or updates the same documents on many clients in one transaction.
    pub async fn deploy_many(
        &self,
        request: &DeployManyRequest,
    ) -> Result<Vec<DeployResponse>, AdminError> {
        let body = serde_json::to_vec(request)?;
        self.call(axum::http::Method::POST, "/v1/deployments", Some(body))
            .await
    }

    /// Every client.
    pub async fn list_clients(&self) -> Result<Vec<ClientSummary>, AdminError> {
        self.call(axum::http::Method::GET, "/v1/clients", None)
            .await
    }

    /// One client in full: identity, status, capabilities.
    pub async fn client(&self, client: &str) -> Result<ClientDetails, AdminError> {
        let path = format!("/v1/clients/{}", encode_component(client));
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// The fleet CA and its fingerprint.
    pub async fn ca(&self) -> Result<CaInfo, AdminError> {
        self.call(axum::http::Method::GET, "/v1/ca", None).await
    }

    /// Every onboarding request, most recently seen first.
    pub async fn onboarding_requests(&self) -> Result<Vec<RequestView>, AdminError> {
        self.call(axum::http::Method::GET, "/v1/onboarding/requests", None)
            .await
    }

    /// Approves an onboarding request (id, `sha256:<id>` or a unique prefix).
    pub async fn approve(
        &self,
        request: &str,
        name: Option<&str>,
    ) -> Result<ApproveResponse, AdminError> {
        let path = format!(
            "/v1/onboarding/requests/{}/approve",
            encode_component(request)
        );
        let body = serde_json::to_vec(&ApproveRequest {
            name: name.map(str::to_string),
        })?;
        self.call(axum::http::Method::POST, &path, Some(body)).await
    }

    /// Rejects an onboarding request.
    pub async fn reject(&self, request: &str) -> Result<RequestView, AdminError> {
        let path = format!(
            "/v1/onboarding/requests/{}/reject",
            encode_component(request)
        );
        self.call(axum::http::Method::POST, &path, None).await
    }

    /// Creates an enrollment token; the returned token text is shown only now.
    pub async fn create_token(
        &self,
        uses: u32,
        expires_in: std::time::Duration,
        note: Option<&str>,
    ) -> Result<CreatedToken, AdminError> {
        let body = serde_json::to_vec(&CreateTokenRequest {
            uses,
            expires_in_secs: expires_in.as_secs(),
            note: note.map(str::to_string),
        })?;
        self.call(axum::http::Method::POST, "/v1/tokens", Some(body))
            .await
    }

    /// Every enrollment token (never the token text).
    pub async fn tokens(&self) -> Result<Vec<TokenView>, AdminError> {
        self.call(axum::http::Method::GET, "/v1/tokens", None).await
    }

    /// Deletes an enrollment token.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, AdminError> {
        let path = format!("/v1/tokens/{}", encode_component(id));
        self.call(axum::http::Method::DELETE, &path, None).await
    }

    /// Revokes a client (by id or name).
    pub async fn revoke(&self, client: &str) -> Result<RevokeResponse, AdminError> {
        let path = format!("/v1/clients/{}/revoke", encode_component(client));
        self.call(axum::http::Method::POST, &path, None).await
    }

    /// Adds or updates deployment documents (YAML text) for a client.
    pub async fn deploy(
        &self,
        client: &str,
        documents: Vec<String>,
    ) -> Result<DeployResponse, AdminError> {
        let path = format!("/v1/clients/{}/deployments", encode_component(client));
        let body = serde_json::to_vec(&documents)?;
        self.call(axum::http::Method::POST, &path, Some(body)).await
    }

    /// Removes one deployment from a client.
    pub async fn undeploy(
        &self,
        client: &str,
        deployment_id: &str,
    ) -> Result<DeployResponse, AdminError> {
        let path = format!(
            "/v1/clients/{}/deployments/{}",
            encode_component(client),
            encode_component(deployment_id)
        );
        self.call(axum::http::Method::DELETE, &path, None).await
    }

    /// Fleet view: one client (by id or name) or all.
    pub async fn status(&self, client: Option<&str>) -> Result<Vec<ClientStatus>, AdminError> {
        let path = match client {
            Some(c) => format!("/v1/status?client={}", encode_component(c)),
            None => "/v1/status".to_string(),
        };
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// The stored uplink seqs of a client.
    pub async fn uplink(&self, client: &str) -> Result<Vec<UplinkSummary>, AdminError> {
        let path = format!("/v1/clients/{}/uplink", encode_component(client));
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// The latest capabilities of a client, by device id.
    pub async fn capabilities(
        &self,
        client: &str,
    ) -> Result<BTreeMap<String, serde_json::Value>, AdminError> {
        let path = format!("/v1/clients/{}/capabilities", encode_component(client));
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// The remote schedule stored for a client and the one it reports in force.
    pub async fn schedule(&self, client: &str) -> Result<ScheduleView, AdminError> {
        let path = format!("/v1/clients/{}/schedule", encode_component(client));
        self.call(axum::http::Method::GET, &path, None).await
    }

    /// Sets a client's remote schedule (validated again by the manager): a
    /// new config version, stored and published on `R/config` before the
    /// answer.
    pub async fn set_schedule(
        &self,
        client: &str,
        schedule: &Schedule,
    ) -> Result<ScheduleView, AdminError> {
        let path = format!("/v1/clients/{}/schedule", encode_component(client));
        let body = serde_json::to_vec(schedule)?;
        self.call(axum::http::Method::PUT, &path, Some(body)).await
    }

    /// Clears a client's remote schedule: a new config version without a
    /// schedule, so the device falls back to its local one.
    pub async fn clear_schedule(&self, client: &str) -> Result<ScheduleView, AdminError> {
        let path = format!("/v1/clients/{}/schedule", encode_component(client));
        self.call(axum::http::Method::DELETE, &path, None).await
    }

    /// Recent security events and their counters.
    pub async fn audit(&self, limit: usize) -> Result<AuditReport, AdminError> {
        let path = format!("/v1/audit?limit={limit}");
        self.call(axum::http::Method::GET, &path, None).await
    }
}
