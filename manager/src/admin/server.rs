//! The admin API's server: the socket, [`serve`], the router and its
//! handlers (errors in `error.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use margo_broker::GatewayStats;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::schedule::{Schedule, ValidSchedule};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::error::ApiError;
use super::wire::{
    parse_documents, AddClientRequest, AddClientsRequest, ApproveRequest, ApproveResponse,
    AuditReport, CaInfo, ClientDetails, ClientSummary, CreateTokenRequest, DeployManyRequest,
    DeployResponse, Health, ProvisionedBulk, ProvisionedBundle, ProvisionedDevicePem,
    RevokeResponse, ScheduleView, MAX_BULK_CLIENTS,
};
use crate::ca::{CaError, FleetPki};
use crate::http_stats::{HttpStats, OnboardingStats};
use crate::ingest::{IngestStats, KeyCache};
use crate::mqtt_link::LinkStats;
use crate::onboarding::{CreatedToken, RequestView, TokenView};
use crate::operations::{self, Revoked};
use crate::publisher::Downlink;
use crate::status_view::{self, ClientStatus};
use crate::store::{Store, StoreError, UplinkSummary};

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
    let Revoked {
        record,
        already_revoked,
        connections_closed,
    } = operations::revoke(
        &state.store,
        &state.keys,
        state.revocations.as_ref(),
        &state.downlink,
        &id,
    )
    .await?;
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
            let status = status_view::client_status(s, &id, s.clock().now_ms())?;
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
    info!(
        request_id = %view.request_id,
        client_id = %approved.client_id,
        name = %approved.client.name,
        decided_by = %approved.decided_by,
        "onboarding request approved"
    );
    let http_only = operations::approval_committed(&state.downlink, &approved);
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
            let in_force =
                status_view::client_status(s, &id, s.clock().now_ms())?.schedule_in_force;
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
                    .run(move |s| status_view::client_status(s, &id, s.clock().now_ms()))
                    .await?,
            ]))
        }
        None => Ok(Json(
            state
                .store
                .run(|s| status_view::fleet_status(s, s.clock().now_ms()))
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
