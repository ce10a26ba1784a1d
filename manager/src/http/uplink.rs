//! Device reports over HTTP (Margo request bodies, signed):
//!
//! - `POST /api/v1/clients/{clientId}/deployments/{deploymentId}/status` →
//!   `200` stored
//! - `POST|PUT /api/v1/clients/{clientId}/capabilities/{deviceId}` and
//!   `POST|PUT /api/v1/clients/{clientId}/capabilities` (device id from the
//!   body, as in the Margo 1.0.0 OpenAPI) → `201` whether created or
//!   replaced, as 1.0.0 and rc.2 list it ([`capabilities_status`]); any
//!   published document shape (see [`DeviceCapabilitiesManifest`]), stored
//!   as received
//! - `DELETE /api/v1/clients/{clientId}/capabilities/{deviceId}` → `204`
//! - rc.3 (caller identified by its TLS client certificate, `401` without
//!   a registered one): `POST /api/v1/deployments/{deploymentId}/status` and
//!   `PUT /api/v1/capabilities/{deviceId}` → `201` created, `200` updated;
//!   `DELETE /api/v1/capabilities/{deviceId}` → `204`
//!
//! Refusals (RFC 9457 problem bodies, nothing stored), in this order: `400`
//! malformed path id; `413`; `415`; `401` no credential, unknown client or a
//! signature that does not verify (`access::authenticate`: RFC 9421,
//! `X-Payload-Signature` except on `DELETE`, or the client's TLS
//! certificate); `400` missing or wrong `Content-Digest`; `403` revoked
//! client; `400` malformed JSON; `404` a status for a deployment never
//! assigned to the client, a gateway child before its parent, no
//! capabilities to delete; `409` a stale status (older manifest version
//! than the stored one) or a gateway with children left; `413` body
//! over `http.max_body_bytes`; `415` not `application/json`; `422` semantic
//! errors (status rules, ids in the body that differ from the path, invalid
//! capabilities). Stored through the same store tables and acceptance checks
//! as MQTT uplink, so `margoctl status` and `clients show` show both alike.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use margo_schemas::capabilities::{DeviceCapabilitiesManifest, DocumentError};
use margo_schemas::ids::{ClientId, DeploymentId, DeviceId};
use margo_schemas::revision::Revision;
use margo_schemas::status::DeploymentStatus;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tracing::{error, instrument};

use super::access;
use super::deployments::refused;
use super::problem::{ProblemType, Refusal};
use super::{tls_peer, ApiState};
use crate::capabilities::CapabilitiesRejection;
use crate::store::{ReportError, ReportOutcome};

/// Route of a deployment status.
pub const STATUS_ROUTE: &str = "/api/v1/clients/{clientId}/deployments/{deploymentId}/status";
/// Route of one device's capabilities (`gw/child` may be given unescaped).
pub const DEVICE_CAPABILITIES_ROUTE: &str = "/api/v1/clients/{clientId}/capabilities/{*deviceId}";
/// Route of capabilities with the device id in the body (Margo 1.0.0).
pub const CAPABILITIES_ROUTE: &str = "/api/v1/clients/{clientId}/capabilities";
/// rc.3 route of a deployment status.
pub const RC3_STATUS_ROUTE: &str = "/api/v1/deployments/{deploymentId}/status";
/// rc.3 route of one device's capabilities.
pub const RC3_CAPABILITIES_ROUTE: &str = "/api/v1/capabilities/{*deviceId}";

/// The status body: a Margo `DeploymentStatusManifest`, with the newer
/// draft's optional `adoptedManifestVersion`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusBody {
    /// The manifest version the device is applying, when it says.
    #[serde(default)]
    pub adopted_manifest_version: Option<u64>,
    /// The status itself.
    #[serde(flatten)]
    pub status: DeploymentStatus,
}

/// Reads a status body (400 for a syntax error, 422 for the wrong shape);
/// the fuzz target `status` runs it.
#[doc(hidden)]
pub fn parse_status(body: &[u8]) -> Result<StatusBody, Refusal> {
    parse_json(body, "DeploymentStatusManifest")
}

/// The checked body bytes: size (413) and content type (415).
fn body_bytes(
    state: &ApiState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Refusal> {
    let body =
        body.map_err(|e| Refusal::new(e.status(), format!("request body: {}", e.body_text())))?;
    if body.len() > state.max_body_bytes {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is {} bytes, the limit is {}",
                body.len(),
                state.max_body_bytes
            ),
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("request body must be application/json, not {content_type:?}"),
        ));
    }
    Ok(body)
}

fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Refusal> {
    // A syntax error is 400; well-formed JSON of the wrong shape (missing
    // fields, bad ids or enum values) is a semantic error, 422.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::bad_request(format!("request body is not JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| {
        Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("request body is not a valid {what}: {e}"),
        )
    })
}

fn store_refusal(client: &ClientId, error: ReportError) -> Refusal {
    match error {
        ReportError::UnknownClient => Refusal::not_found(format!("no client {client}")),
        ReportError::Revoked => Refusal::forbidden(format!("client {client} is revoked")),
        ReportError::Capabilities(rejection) => match rejection {
            CapabilitiesRejection::Invalid { .. } => {
                Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.to_string())
            }
            CapabilitiesRejection::ChildBeforeParent { .. } => Refusal::typed(
                StatusCode::NOT_FOUND,
                ProblemType::GatewayNotFound,
                rejection.to_string(),
            ),
        },
        ReportError::AheadOfDesired { .. } => {
            Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
        }
        ReportError::Stale { .. } | ReportError::HasChildren { .. } => {
            Refusal::new(StatusCode::CONFLICT, error.to_string())
        }
        ReportError::NoCapabilities(_) => Refusal::typed(
            StatusCode::NOT_FOUND,
            ProblemType::DeviceNotFound,
            error.to_string(),
        ),
        ReportError::NotAssigned(_) => Refusal::typed(
            StatusCode::NOT_FOUND,
            ProblemType::DeploymentNotFound,
            error.to_string(),
        ),
        ReportError::Store(e) => match e.storage_failure() {
            // Logged once by the store.
            Some(failure) => Refusal::storage(&failure),
            None => {
                error!(client_id = %client, error = %e, "storing an HTTP report failed");
                Refusal::internal()
            }
        },
    }
}

/// The status of a stored capabilities report, by the revision whose route
/// received it: 1.0.0 and rc.2 list only `201` for POST/PUT (added or
/// replaced alike); rc.3 answers `201` created, `200` updated.
pub fn capabilities_status(outcome: ReportOutcome, revision: Revision) -> StatusCode {
    match (revision, outcome) {
        (Revision::V1_0_0 | Revision::Rc2, _) => StatusCode::CREATED,
        (Revision::Rc3, ReportOutcome::Created) => StatusCode::CREATED,
        (Revision::Rc3, ReportOutcome::Replaced) => StatusCode::OK,
    }
}

/// `201` for a status report of a deployment that had none, `200` when it
/// replaced one (rc.3's "created"/"updated").
fn stored(outcome: ReportOutcome) -> Response {
    match outcome {
        ReportOutcome::Created => StatusCode::CREATED.into_response(),
        ReportOutcome::Replaced => StatusCode::OK.into_response(),
    }
}

/// The client named in the log of a refused rc.3 request.
fn caller_name(caller: Option<&ClientId>) -> String {
    caller.map_or_else(|| "-".to_string(), ToString::to_string)
}

/// Reads a capabilities body, keeping its exact text: a syntax error is
/// 400; JSON that is not an object is 422 (the shape is checked by the store).
#[doc(hidden)]
pub fn parse_capabilities(body: &[u8]) -> Result<DeviceCapabilitiesManifest, Refusal> {
    DeviceCapabilitiesManifest::from_json(body).map_err(|e| match e {
        DocumentError::Syntax(_) => Refusal::bad_request(format!("request body is {e}")),
        DocumentError::NotAnObject(_) => {
            Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
    })
}

#[instrument(skip_all, fields(client_id = %raw.0, deployment_id = %raw.1))]
pub(super) async fn status(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String)>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let served = async {
        let client = access::client_id(&raw.0)?;
        let deployment = access::deployment_id(&raw.1)?;
        let body = body_bytes(&state, &parts.headers, body)?;
        access::authenticate(&state, &client, &parts, &body, true).await?;
        store_status(&state, &client, &deployment, &body).await?;
        // Margo 1.0.0 and rc.2 answer 200 for "added, or updated".
        Ok::<_, Refusal>(StatusCode::OK.into_response())
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(&raw.0, "deployment status", refusal),
    }
}

/// `POST /api/v1/deployments/{deploymentId}/status` (rc.3): `201` created,
/// `200` updated.
#[instrument(skip_all, fields(deployment_id = %raw_deployment))]
pub(super) async fn rc3_status(
    State(state): State<ApiState>,
    Path(raw_deployment): Path<String>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut caller = None;
    let served = async {
        let deployment = access::deployment_id(&raw_deployment)?;
        let body = body_bytes(&state, &parts.headers, body)?;
        let client = tls_peer::caller(&state, &parts).await?;
        caller = Some(client.clone());
        let outcome = store_status(&state, &client, &deployment, &body).await?;
        Ok::<_, Refusal>(stored(outcome))
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(&caller_name(caller.as_ref()), "deployment status", refusal),
    }
}

/// Parses, checks and stores an authenticated status report of `client`.
async fn store_status(
    state: &ApiState,
    client: &ClientId,
    deployment: &DeploymentId,
    body: &[u8],
) -> Result<ReportOutcome, Refusal> {
    let parsed = parse_status(body)?;
    if &parsed.status.deployment_id != deployment {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "deploymentId {} in the body differs from {deployment} in the path",
                parsed.status.deployment_id
            ),
        ));
    }
    parsed
        .status
        .validate()
        .map_err(|e| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, format!("status: {e}")))?;
    state
        .fleet
        .record_status_report(client, parsed.status, parsed.adopted_manifest_version)
        .await
        .map_err(|e| store_refusal(client, e))
}

#[instrument(skip_all, fields(client_id = %raw.0, device_id = %raw.1))]
pub(super) async fn put_device_capabilities(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String)>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match put_capabilities(&state, &raw.0, Some(&raw.1), &parts, body).await {
        Ok(response) => response,
        Err(refusal) => refused(&raw.0, "capabilities report", refusal),
    }
}

#[instrument(skip_all, fields(client_id = %raw_client))]
pub(super) async fn put_body_capabilities(
    State(state): State<ApiState>,
    Path(raw_client): Path<String>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match put_capabilities(&state, &raw_client, None, &parts, body).await {
        Ok(response) => response,
        Err(refusal) => refused(&raw_client, "capabilities report", refusal),
    }
}

async fn put_capabilities(
    state: &ApiState,
    raw_client: &str,
    raw_device: Option<&str>,
    parts: &Parts,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let client = access::client_id(raw_client)?;
    let device: Option<DeviceId> = raw_device.map(access::device_id).transpose()?;
    let body = body_bytes(state, &parts.headers, body)?;
    access::authenticate(state, &client, parts, &body, true).await?;
    let outcome = store_capabilities(state, &client, device.as_ref(), &body).await?;
    Ok(capabilities_status(outcome, Revision::Rc2).into_response())
}

/// `PUT /api/v1/capabilities/{deviceId}` (rc.3): `201` created, `200` updated.
#[instrument(skip_all, fields(device_id = %raw_device))]
pub(super) async fn rc3_put_capabilities(
    State(state): State<ApiState>,
    Path(raw_device): Path<String>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut caller = None;
    let served = async {
        let device = access::device_id(&raw_device)?;
        let body = body_bytes(&state, &parts.headers, body)?;
        let client = tls_peer::caller(&state, &parts).await?;
        caller = Some(client.clone());
        let outcome = store_capabilities(&state, &client, Some(&device), &body).await?;
        Ok::<_, Refusal>(capabilities_status(outcome, Revision::Rc3).into_response())
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(
            &caller_name(caller.as_ref()),
            "capabilities report",
            refusal,
        ),
    }
}

/// Parses, checks and stores an authenticated capabilities report of
/// `client` (`device`: the path's device id, if the route has one).
async fn store_capabilities(
    state: &ApiState,
    client: &ClientId,
    device: Option<&DeviceId>,
    body: &[u8],
) -> Result<ReportOutcome, Refusal> {
    let manifest = parse_capabilities(body)?;
    if let Some(device) = device {
        if manifest.device_id() != Some(device.as_str()) {
            return Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "properties.id {:?} in the body differs from {device} in the path",
                    manifest.device_id().unwrap_or("(none)")
                ),
            ));
        }
    }
    state
        .fleet
        .record_capabilities_report(client, manifest)
        .await
        .map_err(|e| store_refusal(client, e))
}

#[instrument(skip_all, fields(client_id = %raw.0, device_id = %raw.1))]
pub(super) async fn delete_capabilities(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String)>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let served = async {
        let client = access::client_id(&raw.0)?;
        let device = access::device_id(&raw.1)?;
        let body = bounded_body(&state, body)?;
        // The signature covers the (normally empty) body.
        access::authenticate(&state, &client, &parts, &body, true).await?;
        remove_capabilities(&state, &client, &device).await
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(&raw.0, "capabilities deletion", refusal),
    }
}

/// `DELETE /api/v1/capabilities/{deviceId}` (rc.3): `204`.
#[instrument(skip_all, fields(device_id = %raw_device))]
pub(super) async fn rc3_delete_capabilities(
    State(state): State<ApiState>,
    Path(raw_device): Path<String>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut caller = None;
    let served = async {
        let device = access::device_id(&raw_device)?;
        bounded_body(&state, body)?;
        let client = tls_peer::caller(&state, &parts).await?;
        caller = Some(client.clone());
        remove_capabilities(&state, &client, &device).await
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(
            &caller_name(caller.as_ref()),
            "capabilities deletion",
            refusal,
        ),
    }
}

/// The body of a bodiless request, read within `http.max_body_bytes` (413).
fn bounded_body(state: &ApiState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Refusal> {
    let body =
        body.map_err(|e| Refusal::new(e.status(), format!("request body: {}", e.body_text())))?;
    if body.len() > state.max_body_bytes {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is {} bytes, the limit is {}",
                body.len(),
                state.max_body_bytes
            ),
        ));
    }
    Ok(body)
}

async fn remove_capabilities(
    state: &ApiState,
    client: &ClientId,
    device: &DeviceId,
) -> Result<Response, Refusal> {
    state
        .fleet
        .delete_capabilities(client, device)
        .await
        .map_err(|e| store_refusal(client, e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
