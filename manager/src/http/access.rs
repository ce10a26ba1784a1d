//! What every client endpoint of the HTTP API checks first: path ids well
//! formed, the client known and not revoked, and (for bodies, and for reads
//! when `http.require_signed_reads`) the payload signature made with the key
//! of the certificate the client was onboarded or provisioned with.

use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use margo_schemas::digest::{Digest, DigestError};
use margo_schemas::http_sig::{self, CONTENT_DIGEST, PAYLOAD_SIGNATURE};
use margo_schemas::ids::{ClientId, DeploymentId, DeviceId, IdError};
use tracing::error;

use super::problem::Refusal;
use super::{tls_peer, ApiState};

/// A path id that is not well formed: 400 naming the parameter.
fn bad_id(param: &str, error: &IdError) -> Refusal {
    Refusal::bad_request(format!("path parameter {param}: {error}"))
}

/// `{clientId}`.
pub fn client_id(raw: &str) -> Result<ClientId, Refusal> {
    ClientId::new(raw).map_err(|e| bad_id("clientId", &e))
}

/// `{deploymentId}`.
pub fn deployment_id(raw: &str) -> Result<DeploymentId, Refusal> {
    DeploymentId::new(raw).map_err(|e| bad_id("deploymentId", &e))
}

/// `{deviceId}` (gateway children as `gw/child` or `gw%2Fchild`).
pub fn device_id(raw: &str) -> Result<DeviceId, Refusal> {
    DeviceId::new(raw).map_err(|e| bad_id("deviceId", &e))
}

/// `{digest}`: `sha256:<64 lowercase hex>`; anything else (other algorithms
/// included) is 400.
pub fn digest(raw: &str) -> Result<Digest, Refusal> {
    Digest::parse(raw)
        .map_err(|e: DigestError| Refusal::bad_request(format!("path parameter digest: {e}")))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks that `client` exists (404) and is not revoked (403), then, when
/// `signed`, the payload signature over `body` (400 digest, 401 signature).
/// A TLS client certificate registered to `client` is a credential too
/// ([`tls_peer::certifies`]): then no signature is needed.
pub async fn authenticate(
    state: &ApiState,
    client: &ClientId,
    parts: &Parts,
    body: &[u8],
    signed: bool,
) -> Result<(), Refusal> {
    let headers = &parts.headers;
    let id = client.clone();
    let record = state.store.run(move |s| s.client(&id)).await.map_err(|e| {
        error!(client_id = %client, error = %e, "reading a client failed");
        Refusal::internal()
    })?;
    let Some(record) = record else {
        return Err(Refusal::not_found(format!("no client {client}")));
    };
    if record.revoked {
        return Err(Refusal::forbidden(format!("client {client} is revoked")));
    }
    if !signed || tls_peer::certifies(state, parts, client).await? {
        return Ok(());
    }
    let point = margo_schemas::pki::cert_info(&record.cert_der)
        .ok()
        .and_then(|info| info.p256_public_key)
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "the client's certificate has no ECDSA P-256 key to verify signatures with",
            )
        })?;
    http_sig::verify_request(
        header_str(headers, CONTENT_DIGEST),
        header_str(headers, PAYLOAD_SIGNATURE),
        body,
        &point,
    )
    .map_err(|e| {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        Refusal::new(status, e.to_string())
    })
}
