//! Device reports over HTTP (Margo request bodies, signed):
//!
//! - `POST /api/v1/clients/{clientId}/deployments/{deploymentId}/status` →
//!   `200` stored
//! - `POST|PUT /api/v1/clients/{clientId}/capabilities/{deviceId}` and
//!   `POST|PUT /api/v1/clients/{clientId}/capabilities` (device id from the
//!   body, as in the Margo 1.0.0 OpenAPI) → `201` first report of the
//!   device, `200` replaced
//! - `DELETE /api/v1/clients/{clientId}/capabilities/{deviceId}` → `204`
//!
//! Refusals (RFC 9457 problem bodies, nothing stored), in this order: `400`
//! malformed path id; `413`; `415`; `401` no credential, unknown client or a
//! signature that does not verify (`access::authenticate`: RFC 9421,
//! `X-Payload-Signature` except on `DELETE`, or the client's TLS
//! certificate); `400` missing or wrong `Content-Digest`; `403` revoked
//! client; `400` malformed JSON; `404` a gateway child before its
//! parent, no capabilities to delete; `409` a stale status (older manifest
//! version than the stored one) or a gateway with children left; `413` body
//! over `http.max_body_bytes`; `415` not `application/json`; `422` semantic
//! errors (status rules, ids in the body that differ from the path, invalid
//! capabilities). Stored through the same store tables and acceptance checks
//! as MQTT uplink, so `margoctl status` and `clients show` show both alike.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use margo_schemas::capabilities::DeviceCapabilitiesManifest;
use margo_schemas::ids::{ClientId, DeviceId};
use margo_schemas::status::DeploymentStatus;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tracing::{error, info, instrument};

use super::access;
use super::deployments::refused;
use super::problem::Refusal;
use super::ApiState;
use crate::capabilities::CapabilitiesRejection;
use crate::store::{ReportError, ReportOutcome};

/// Route of a deployment status.
pub const STATUS_ROUTE: &str = "/api/v1/clients/{clientId}/deployments/{deploymentId}/status";
/// Route of one device's capabilities (`gw/child` may be given unescaped).
pub const DEVICE_CAPABILITIES_ROUTE: &str = "/api/v1/clients/{clientId}/capabilities/{*deviceId}";
/// Route of capabilities with the device id in the body (Margo 1.0.0).
pub const CAPABILITIES_ROUTE: &str = "/api/v1/clients/{clientId}/capabilities";

/// The status body: a Margo `DeploymentStatusManifest`, with the newer
/// draft's optional `adoptedManifestVersion`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    #[serde(default)]
    adopted_manifest_version: Option<u64>,
    #[serde(flatten)]
    status: DeploymentStatus,
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
            CapabilitiesRejection::ChildBeforeParent { .. } => {
                Refusal::not_found(rejection.to_string())
            }
        },
        ReportError::AheadOfDesired { .. } => {
            Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
        }
        ReportError::Stale { .. } | ReportError::HasChildren { .. } => {
            Refusal::new(StatusCode::CONFLICT, error.to_string())
        }
        ReportError::NoCapabilities(_) => Refusal::not_found(error.to_string()),
        ReportError::Store(e) => {
            error!(client_id = %client, error = %e, "storing an HTTP report failed");
            Refusal::internal()
        }
    }
}

fn stored(outcome: ReportOutcome, created: StatusCode) -> Response {
    match outcome {
        ReportOutcome::Created => created.into_response(),
        ReportOutcome::Replaced => StatusCode::OK.into_response(),
    }
}

#[instrument(skip_all, fields(client_id = %raw.0, deployment_id = %raw.1))]
pub(super) async fn status(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String)>,
    caller: access::Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match post_status(&state, &raw, &caller, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refused(&raw.0, "deployment status", refusal),
    }
}

async fn post_status(
    state: &ApiState,
    (raw_client, raw_deployment): &(String, String),
    caller: &access::Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let client = access::client_id(raw_client)?;
    let deployment = access::deployment_id(raw_deployment)?;
    let body = body_bytes(state, headers, body)?;
    access::authenticate(state, &client, caller, headers, &body, true).await?;
    let parsed: StatusBody = parse_json(&body, "DeploymentStatusManifest")?;
    if parsed.status.deployment_id != deployment {
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
    let id = client.clone();
    let outcome = state
        .store
        .run(move |s| {
            Ok(s.record_http_status(&id, &parsed.status, parsed.adopted_manifest_version))
        })
        .await
        .map_err(|e| store_refusal(&client, ReportError::Store(e)))?
        .map_err(|e| store_refusal(&client, e))?;
    info!(?outcome, "deployment status stored (HTTP)");
    // Margo answers 200 for "added, or updated".
    Ok(StatusCode::OK.into_response())
}

#[instrument(skip_all, fields(client_id = %raw.0, device_id = %raw.1))]
pub(super) async fn put_device_capabilities(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String)>,
    caller: access::Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match put_capabilities(&state, &raw.0, Some(&raw.1), &caller, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refused(&raw.0, "capabilities report", refusal),
    }
}

#[instrument(skip_all, fields(client_id = %raw_client))]
pub(super) async fn put_body_capabilities(
    State(state): State<ApiState>,
    Path(raw_client): Path<String>,
    caller: access::Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match put_capabilities(&state, &raw_client, None, &caller, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refused(&raw_client, "capabilities report", refusal),
    }
}

async fn put_capabilities(
    state: &ApiState,
    raw_client: &str,
    raw_device: Option<&str>,
    caller: &access::Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let client = access::client_id(raw_client)?;
    let device: Option<DeviceId> = raw_device.map(access::device_id).transpose()?;
    let body = body_bytes(state, headers, body)?;
    access::authenticate(state, &client, caller, headers, &body, true).await?;
    let manifest: DeviceCapabilitiesManifest = parse_json(&body, "DeviceCapabilitiesManifest")?;
    if let Some(device) = &device {
        if &manifest.properties.id != device {
            return Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "properties.id {} in the body differs from {device} in the path",
                    manifest.properties.id
                ),
            ));
        }
    }
    let device_id = manifest.properties.id.clone();
    let id = client.clone();
    let outcome = state
        .store
        .run(move |s| Ok(s.record_http_capabilities(&id, &manifest)))
        .await
        .map_err(|e| store_refusal(&client, ReportError::Store(e)))?
        .map_err(|e| store_refusal(&client, e))?;
    info!(device_id = %device_id, ?outcome, "capabilities stored (HTTP)");
    Ok(stored(outcome, StatusCode::CREATED))
}

#[instrument(skip_all, fields(client_id = %raw.0, device_id = %raw.1))]
pub(super) async fn delete_capabilities(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String)>,
    caller: access::Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match remove_capabilities(&state, &raw, &caller, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refused(&raw.0, "capabilities deletion", refusal),
    }
}

async fn remove_capabilities(
    state: &ApiState,
    (raw_client, raw_device): &(String, String),
    caller: &access::Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let client = access::client_id(raw_client)?;
    let device = access::device_id(raw_device)?;
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
    // Only RFC 9421 (or the client's TLS certificate) can authorize a
    // bodiless DELETE: it binds method and path.
    access::authenticate(state, &client, caller, headers, &body, true).await?;
    let id = client.clone();
    let target = device.clone();
    state
        .store
        .run(move |s| Ok(s.delete_capabilities(&id, &target)))
        .await
        .map_err(|e| store_refusal(&client, ReportError::Store(e)))?
        .map_err(|e| store_refusal(&client, e))?;
    info!(device_id = %device, "capabilities deleted (HTTP)");
    Ok(StatusCode::NO_CONTENT.into_response())
}
