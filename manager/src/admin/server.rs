//! The admin API's server: the socket, [`serve`], the router and its
//! handlers (errors in `error.rs`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use margo_broker::GatewayStats;
use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::schedule::{Schedule, ValidSchedule};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{instrument, warn};

use super::error::ApiError;
use super::wire::{
    parse_documents, AddClientRequest, AddClientsRequest, ApproveRequest, ApproveResponse,
    AuditReport, CaInfo, ClientDetails, ClientSummary, CreateTokenRequest, DeployManyRequest,
    DeployResponse, Health, ProvisionedBulk, ProvisionedBundle, ProvisionedDevicePem,
    RejectManyRequest, RevokeResponse, ScheduleView,
};
use crate::fleet::{Deployed, Fleet, ScheduleState, Targets};
use crate::http_stats::{HttpStats, OnboardingStats};
use crate::ingest::IngestStats;
use crate::mqtt_link::LinkStats;
use crate::onboarding::{CreatedToken, RejectFilter, RequestView, SourceFilter, TokenView};
use crate::status_view::ClientStatus;
use crate::store::{ClientRecord, UplinkSummary};

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

/// Everything the handlers need: the application core, and what
/// `/v1/health` reports.
#[derive(Clone)]
pub struct AdminState {
    /// The application core every handler calls.
    pub fleet: Fleet,
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
    /// The embedded gateway's counters (`None` with an external broker).
    pub gateway_stats: Option<Arc<GatewayStats>>,
    /// `[onboarding] approval` (`operator` or `auto`).
    pub onboarding_approval: &'static str,
}

type ApiResult<T> = Result<T, ApiError>;

/// Serves the admin API on `listener` until `shutdown`, then lets open
/// connections finish (the caller bounds how long). An error is logged.
pub async fn serve(listener: UnixListener, state: AdminState, shutdown: CancellationToken) {
    let serve = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(error) = serve.await {
        warn!(%error, "admin API stopped");
    }
}

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
        .route("/v1/onboarding/requests/reject", post(reject_requests))
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

async fn health(State(state): State<AdminState>) -> Json<Health> {
    Json(Health {
        connected: *state.connected.borrow(),
        ingest: state.ingest_stats.counters.to_map(),
        link: state.link_stats.to_map(),
        onboarding: state.onboarding_stats.to_map(),
        http: state.http_stats.to_map(),
        gateway: state
            .gateway_stats
            .as_ref()
            .map(|g| g.to_map())
            .unwrap_or_default(),
        onboarding_approval: Some(state.onboarding_approval.to_string()),
        ingest_timing: state.ingest_stats.timing(),
    })
}

fn summary(client_id: ClientId, record: ClientRecord) -> ClientSummary {
    ClientSummary {
        client_id,
        name: record.name,
        revoked: record.revoked,
        created_at: record.created_ms,
    }
}

fn deploy_response(deployed: Deployed) -> DeployResponse {
    DeployResponse {
        client_id: deployed.client_id,
        manifest_version: deployed.manifest_version,
        changed: deployed.changed,
    }
}

fn schedule_view(state: ScheduleState) -> ScheduleView {
    ScheduleView {
        client_id: state.client_id,
        remote: state.remote,
        in_force: state.in_force,
    }
}

#[instrument(skip_all, fields(name = %req.as_ref().map(|r| r.name.as_str()).unwrap_or("-")))]
async fn add_client(
    State(state): State<AdminState>,
    req: Result<Json<AddClientRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ProvisionedBundle>)> {
    let Json(req) = req?;
    let made = state.fleet.provision(req.name, req.broker_url).await?;
    Ok((
        StatusCode::CREATED,
        Json(ProvisionedBundle {
            client_id: made.client_id,
            name: made.name,
            broker_url: made.broker_url,
            key_pem: made.device.key_pem,
            cert_pem: made.device.cert.pem,
            ca_pem: state.fleet.ca_pem().to_string(),
            signing_cert_pem: state.fleet.signing_cert_pem().to_string(),
        }),
    ))
}

#[instrument(skip_all, fields(prefix = %req.as_ref().map(|r| r.prefix.as_str()).unwrap_or("-")))]
async fn add_clients(
    State(state): State<AdminState>,
    req: Result<Json<AddClientsRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ProvisionedBulk>)> {
    let Json(req) = req?;
    let made = state
        .fleet
        .provision_many(req.prefix, req.first, req.count, req.broker_url)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ProvisionedBulk {
            broker_url: made.broker_url,
            ca_pem: state.fleet.ca_pem().to_string(),
            signing_cert_pem: state.fleet.signing_cert_pem().to_string(),
            clients: made
                .clients
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
    let clients = state.fleet.clients().await?;
    Ok(Json(
        clients
            .into_iter()
            .map(|c| summary(c.id, c.record))
            .collect(),
    ))
}

#[instrument(skip_all, fields(client_id = %client))]
async fn revoke_client(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<RevokeResponse>> {
    let revoked = state.fleet.revoke(client).await?;
    Ok(Json(RevokeResponse {
        client_id: revoked.client_id,
        name: revoked.record.name,
        revoked: revoked.record.revoked,
        created_at: revoked.record.created_ms,
        already_revoked: revoked.already_revoked,
        connections_closed: revoked.connections_closed,
        revocation_list_entries: revoked.revocation_list_entries,
    }))
}

async fn client_details(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<ClientDetails>> {
    let view = state.fleet.client_view(client).await?;
    let info = margo_schemas::pki::cert_info(&view.record.cert_der).ok();
    Ok(Json(ClientDetails {
        cert_fingerprint: margo_schemas::pki::fingerprint(&view.record.cert_der).to_string(),
        cert_not_after: info.map(|i| i.not_after),
        client: summary(view.client_id, view.record),
        status: view.status,
        capabilities: view.capabilities,
        remote_config: view.remote_config,
    }))
}

async fn ca_info(State(state): State<AdminState>) -> ApiResult<Json<CaInfo>> {
    Ok(Json(CaInfo {
        fingerprint: state.fleet.ca_fingerprint()?.to_string(),
        certificate_pem: state.fleet.ca_pem().to_string(),
    }))
}

async fn onboarding_requests(State(state): State<AdminState>) -> ApiResult<Json<Vec<RequestView>>> {
    Ok(Json(state.fleet.onboarding_requests().await?))
}

#[instrument(skip_all, fields(request_id = %id))]
async fn approve_request(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
    req: Result<Json<ApproveRequest>, JsonRejection>,
) -> ApiResult<Json<ApproveResponse>> {
    let Json(req) = req?;
    let decided = state.fleet.approve(id, req.name).await?;
    Ok(Json(ApproveResponse {
        request: decided.request,
        client_id: decided.approved.client_id,
        name: decided.approved.client.name,
        decided_by: decided.approved.decided_by,
        http_only: decided.http_only,
    }))
}

#[instrument(skip_all, fields(request_id = %id))]
async fn reject_request(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<RequestView>> {
    Ok(Json(state.fleet.reject(id).await?))
}

#[instrument(skip_all)]
async fn reject_requests(
    State(state): State<AdminState>,
    req: Result<Json<RejectManyRequest>, JsonRejection>,
) -> ApiResult<Json<Vec<RequestView>>> {
    let Json(req) = req?;
    let from = req
        .from
        .map(|f| f.parse::<SourceFilter>())
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("from: {e}")))?;
    let filter = RejectFilter {
        all: req.all,
        older_than: req.older_than_secs.map(Duration::from_secs),
        from,
    };
    Ok(Json(state.fleet.reject_matching(filter).await?))
}

async fn create_token(
    State(state): State<AdminState>,
    req: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let Json(req) = req?;
    let ttl_ms = req.expires_in_secs.saturating_mul(1000);
    let created = state.fleet.create_token(req.uses, ttl_ms, req.note).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_tokens(State(state): State<AdminState>) -> ApiResult<Json<Vec<TokenView>>> {
    Ok(Json(state.fleet.tokens().await?))
}

async fn revoke_token(
    State(state): State<AdminState>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<TokenView>> {
    Ok(Json(state.fleet.revoke_token(id).await?))
}

async fn uplink(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<Vec<UplinkSummary>>> {
    Ok(Json(state.fleet.uplink(client).await?))
}

async fn capabilities(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<BTreeMap<String, serde_json::Value>>> {
    Ok(Json(state.fleet.capabilities(client).await?))
}

/// The deployment documents of a request, parsed (422 names the document).
fn documents(docs: Vec<String>) -> ApiResult<Vec<ApplicationDeployment>> {
    parse_documents(docs).map_err(|detail| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail))
}

async fn deploy(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
    docs: Result<Json<Vec<String>>, JsonRejection>,
) -> ApiResult<Json<DeployResponse>> {
    let Json(docs) = docs?;
    let deployed = state.fleet.deploy(client, documents(docs)?).await?;
    Ok(Json(deploy_response(deployed)))
}

#[instrument(skip_all)]
async fn deploy_many(
    State(state): State<AdminState>,
    req: Result<Json<DeployManyRequest>, JsonRejection>,
) -> ApiResult<Json<Vec<DeployResponse>>> {
    let Json(req) = req?;
    let targets = Targets {
        clients: req.clients,
        name_prefix: req.name_prefix,
    };
    let deployed = state
        .fleet
        .deploy_many(targets, documents(req.documents)?)
        .await?;
    Ok(Json(deployed.into_iter().map(deploy_response).collect()))
}

#[instrument(skip_all, fields(client_id = %client, deployment_id = %deployment))]
async fn undeploy(
    State(state): State<AdminState>,
    UrlPath((client, deployment)): UrlPath<(String, String)>,
) -> ApiResult<Json<DeployResponse>> {
    let deployment = DeploymentId::new(deployment)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let deployed = state.fleet.undeploy(client, deployment).await?;
    Ok(Json(deploy_response(deployed)))
}

async fn get_schedule(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<ScheduleView>> {
    Ok(Json(schedule_view(state.fleet.schedule(client).await?)))
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
    let stored = state.fleet.set_schedule(client, Some(valid)).await?;
    Ok(Json(schedule_view(stored)))
}

#[instrument(skip_all, fields(client_id = %client))]
async fn clear_schedule(
    State(state): State<AdminState>,
    UrlPath(client): UrlPath<String>,
) -> ApiResult<Json<ScheduleView>> {
    let stored = state.fleet.set_schedule(client, None).await?;
    Ok(Json(schedule_view(stored)))
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
    let client = q.client.filter(|c| !c.is_empty());
    Ok(Json(state.fleet.status(client).await?))
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
    let (events, counts) = state.fleet.audit(limit).await?;
    Ok(Json(AuditReport { events, counts }))
}
