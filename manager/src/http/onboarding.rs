//! Margo onboarding over HTTPS (`docs/onboarding.md`):
//!
//! - `GET /api/v1/onboarding/certificate` → `200 {"certificate": base64(CA PEM)}`
//! - `POST /api/v1/onboarding` → `201` approved (token, allow-list, or
//!   earlier), `202` pending (`Location`, `Retry-After`), `400` unusable
//!   request or certificate or digest, `401` signature, `403` rejected,
//!   revoked or bad token, `429` rate limit, `503` too many pending
//! - `GET /api/v1/onboarding/requests/{id}` → `200` pending/approved, `403`
//!   rejected or revoked, `404` unknown
//!
//! Every refusal is counted and logged once with the source address.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use margo_schemas::onboarding::{
    IssuedIdentity, OnboardingRequest, OnboardingResponse, OnboardingState, ResponseExtensions,
};
use serde::Serialize;
use tracing::{error, info, instrument, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use margo_schemas::http_msg_sig::{self, PublicKey};
use margo_schemas::http_sig;

use super::access;
use super::device_key::DeviceKey;
use super::problem::Refusal;
use super::ApiState;
use crate::config::Approval;
use crate::fleet::FleetError;
pub use crate::http_stats::{OnboardingMetric, OnboardingStats};
use crate::onboarding::{
    Approved, Claims, Lookup, OnboardingError, Submission, Submitted, TokenProblem,
};

/// Largest onboarding request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Path of the CA certificate endpoint.
pub const CERTIFICATE_PATH: &str = "/api/v1/onboarding/certificate";
/// Path of the onboarding endpoint.
pub const ONBOARDING_PATH: &str = "/api/v1/onboarding";
/// Prefix of a request's poll location.
pub const REQUESTS_PATH: &str = "/api/v1/onboarding/requests";

/// Route of a request's poll location.
pub const POLL_ROUTE: &str = "/api/v1/onboarding/requests/{id}";

/// Counts and logs a refusal once (warn for 401/403/429/503/5xx, info
/// otherwise), then answers it.
fn refused(state: &ApiState, peer: SocketAddr, what: &str, refusal: Refusal) -> Response {
    state
        .stats
        .inc(OnboardingMetric::of_refusal(refusal.status));
    // The older revisions' `{"error": "..."}` beside the problem members
    // (device-client-onboarding.md; the RFC 9421 page for 401).
    let refusal = match refusal.status {
        StatusCode::BAD_REQUEST => refusal.with_error("Invalid certificate"),
        StatusCode::UNAUTHORIZED => refusal.with_error("Invalid signature"),
        StatusCode::FORBIDDEN => refusal.with_error("Client rejected"),
        _ => refusal,
    };
    let request_id = refusal.request_id.as_deref().unwrap_or("-");
    let status = refusal.status.as_u16();
    match refusal.status {
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::PAYLOAD_TOO_LARGE => {
            info!(%peer, request_id, status, detail = %refusal.detail, "{what} refused");
        }
        _ => warn!(%peer, request_id, status, detail = %refusal.detail, "{what} refused"),
    }
    refusal.into_response()
}

fn rate_limit(state: &ApiState, peer: SocketAddr) -> Result<(), Refusal> {
    state
        .limiter
        .check(peer.ip(), Instant::now())
        .map_err(|wait| {
            Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many onboarding requests from {}; retry later",
                    peer.ip()
                ),
            )
            .retry_after(wait.as_secs_f64().ceil() as u64)
        })
}

/// `{"certificate": "<base64 of the CA PEM>"}`.
#[derive(Debug, Serialize)]
struct CertificateBody {
    certificate: String,
}

pub(super) async fn certificate(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(refusal) = rate_limit(&state, peer) {
        return refused(&state, peer, "CA certificate request", refusal);
    }
    state.stats.inc(OnboardingMetric::Certificate);
    Json(CertificateBody {
        certificate: data_encoding::BASE64.encode(state.fleet.ca_pem().as_bytes()),
    })
    .into_response()
}

fn location(request_id: &str) -> String {
    format!("{REQUESTS_PATH}/{request_id}")
}

fn identity(state: &ApiState, approved: &Approved) -> IssuedIdentity {
    IssuedIdentity {
        name: approved.client.name.clone(),
        client_certificate: crate::ca::cert_pem(&approved.client.cert_der),
        ca_certificate: state.fleet.ca_pem().to_string(),
        manager_signing_certificate: state.fleet.signing_cert_pem().to_string(),
        broker_url: state.fleet.public_broker_url().to_string(),
    }
}

fn approved_response(state: &ApiState, approved: &Approved, status: StatusCode) -> Response {
    let loc = location(&approved.request_id);
    let body = OnboardingResponse {
        client_id: Some(approved.client_id.clone()),
        extensions: ResponseExtensions {
            request_id: approved.request_id.clone(),
            state: OnboardingState::Approved,
            location: loc.clone(),
            retry_after_secs: None,
            identity: Some(identity(state, approved)),
        },
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&loc) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Margo's `201 {"clientId": "..."}` and nothing else in the body (the
/// `Location` header still names the request, where our extension serves
/// the issued identity).
fn plain_created(approved: &Approved) -> Response {
    let body = serde_json::json!({ "clientId": approved.client_id });
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location(&approved.request_id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn pending_response(state: &ApiState, request_id: &str, status: StatusCode) -> Response {
    let loc = location(request_id);
    let retry = state.onboarding.poll_interval.as_secs().max(1);
    let body = OnboardingResponse {
        client_id: None,
        extensions: ResponseExtensions {
            request_id: request_id.to_string(),
            state: OnboardingState::Pending,
            location: loc.clone(),
            retry_after_secs: Some(retry),
            identity: None,
        },
    };
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&loc) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
    response
}

/// What the device's certificate must be: parseable, a supported key
/// ([`DeviceKey`]: ECDSA P-256 or P-384, RSA ≥ 2048, Ed25519), valid now.
/// Margo states no rule on `basicConstraints`, and we use only the key, so
/// a certificate marked `CA:TRUE` (what `openssl req -x509` makes) is
/// accepted with a notice in the log. Returns its key. Public for the
/// fuzz target `onboarding`.
#[doc(hidden)]
pub fn check_device_certificate(der: &[u8], peer: SocketAddr) -> Result<DeviceKey, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    let key = DeviceKey::of(&cert).map_err(|e| format!("certificate: {e}"))?;
    if cert.is_ca() {
        info!(
            %peer,
            fingerprint = %margo_schemas::pki::fingerprint(der),
            "the device certificate is marked as a CA (basicConstraints CA:TRUE); accepted, only its key is used"
        );
    }
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(format!(
            "certificate: not valid now (valid from {} to {})",
            validity.not_before, validity.not_after
        ));
    }
    Ok(key)
}

/// Maps a decision error to its refusal.
fn decision_refusal(error: OnboardingError, request_id: &str) -> Refusal {
    let refusal = match error {
        OnboardingError::Rejected(_) => {
            Refusal::forbidden("this onboarding request was rejected by an operator")
        }
        OnboardingError::Revoked(client) => Refusal::forbidden(format!(
            "this device's key belongs to client {client}, which is revoked"
        )),
        OnboardingError::Token(problem) => Refusal::forbidden(match problem {
            TokenProblem::Unknown => "enrollment token is unknown or revoked",
            TokenProblem::Expired => "enrollment token has expired",
            TokenProblem::UsedUp => "enrollment token is used up",
        }),
        OnboardingError::PendingFull { max } => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{max} onboarding requests are waiting for an operator; retry later"),
        )
        .retry_after(300),
        OnboardingError::SourcePendingFull { max, group } => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{max} onboarding requests from {group} are waiting for an operator; retry later"
            ),
        )
        .retry_after(300),
        OnboardingError::Store(e) if e.is_unavailable() => {
            Refusal::storage(&e.storage_failure().unwrap_or_default())
        }
        other => {
            error!(request_id, error = %other, "onboarding decision failed");
            Refusal::internal()
        }
    };
    refusal.for_request(request_id)
}

/// Checks the onboarding request's signature with the key of the
/// certificate it offers (the client has no id yet, so no registered key):
/// RFC 9421 HTTP Message Signatures when the request carries
/// `Signature-Input`/`Signature` (what `device-client-onboarding.md`
/// requires; any `keyid`, since the key comes with the request), otherwise
/// `Content-Digest` + `X-Payload-Signature` (the older text). `400` for the
/// digest, `401` for the signature.
fn verify_request_signature(
    state: &ApiState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    cert_der: &[u8],
) -> Result<(), Refusal> {
    let key = PublicKey::from_certificate(cert_der).map_err(|e| {
        Refusal::bad_request(format!(
            "the certificate's key cannot verify signatures: {e}"
        ))
    })?;
    let rfc9421 = headers.contains_key(http_msg_sig::SIGNATURE_INPUT)
        || headers.contains_key(http_msg_sig::SIGNATURE);
    if rfc9421 {
        let any_keyid = |_: &str| true;
        access::verify_message_signature(
            &Method::POST,
            uri,
            headers,
            body,
            &key,
            &any_keyid,
            &state.auth,
        )?;
        return Ok(());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    http_sig::verify_with_key(
        header(http_sig::CONTENT_DIGEST),
        header(http_sig::PAYLOAD_SIGNATURE),
        body,
        &key,
        true,
    )
    .map_err(|e| {
        let detail = format!("X-Payload-Signature: {e}");
        match e.status() {
            400 => Refusal::bad_request(detail),
            _ => Refusal::unauthorized(detail),
        }
    })
}

#[instrument(skip_all, fields(%peer))]
pub(super) async fn submit(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    state.stats.inc(OnboardingMetric::Requests);
    match decide(&state, peer, &uri, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refused(&state, peer, "onboarding request", refusal),
    }
}

/// The request body and the DER certificate it carries: the first reading
/// of untrusted onboarding bytes (the fuzz target `onboarding` runs it).
#[doc(hidden)]
pub fn read_request(body: &[u8]) -> Result<(OnboardingRequest, Vec<u8>), Refusal> {
    let request: OnboardingRequest = serde_json::from_slice(body).map_err(|e| {
        Refusal::bad_request(format!("request body is not an OnboardingRequest: {e}"))
    })?;
    let cert_der = request
        .certificate_der()
        .map_err(|e| Refusal::bad_request(e.to_string()))?;
    Ok((request, cert_der))
}

async fn decide(
    state: &ApiState,
    peer: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    rate_limit(state, peer)?;
    let body =
        body.map_err(|e| Refusal::new(e.status(), format!("request body: {}", e.body_text())))?;
    let (request, cert_der) = read_request(&body)?;
    let request_id = margo_schemas::pki::fingerprint(&cert_der).hex();
    let key = check_device_certificate(&cert_der, peer)
        .map_err(|detail| Refusal::bad_request(detail).for_request(&request_id))?;
    verify_request_signature(state, uri, headers, &body, &cert_der)
        .map_err(|refusal| refusal.for_request(&request_id))?;
    let key_id = match &key {
        DeviceKey::P256(point) => crate::store::key_id(point),
        DeviceKey::P384 { spki, .. }
        | DeviceKey::Rsa { spki, .. }
        | DeviceKey::Ed25519 { spki, .. } => margo_schemas::digest::Digest::of(spki).hex(),
    };
    // Our extensions in the 201 body only for a client that asks for them
    // with `x-margo-mqtt-extensions` (an empty object will do; our agent
    // always sends one). Everyone else gets exactly Margo's `{"clientId"}`.
    let wants_extensions = request.extensions.is_some();

    let ext = request.extensions.unwrap_or_default();
    let submission = Submission {
        request_id: request_id.clone(),
        key_id,
        cert_der,
        claims: Claims {
            name: ext.name,
            vendor: ext.vendor,
            model_number: ext.model_number,
            serial_number: ext.serial_number,
        },
        token: ext.enrollment_token,
        source: peer.to_string(),
        allowlisted: state.allowlist.iter().any(|id| id == &request_id),
        auto_approve: state.onboarding.approval == Approval::Auto,
        max_pending: state.onboarding.max_pending,
        max_pending_per_source: state.onboarding.max_pending_per_source,
        pending_ttl_ms: u64::try_from(state.onboarding.pending_ttl.as_millis()).unwrap_or(u64::MAX),
    };
    let outcome = state
        .fleet
        .submit_onboarding(submission)
        .await
        .map_err(|e| match e {
            FleetError::Onboarding(e) => decision_refusal(e, &request_id),
            FleetError::Store(e) if e.is_unavailable() => {
                Refusal::storage(&e.storage_failure().unwrap_or_default()).for_request(&request_id)
            }
            e => {
                error!(request_id, error = %e, "onboarding store call failed");
                Refusal::internal().for_request(&request_id)
            }
        })?;
    Ok(match outcome {
        Submitted::Approved(approved) => {
            state.stats.inc(OnboardingMetric::of_approval(approved.by));
            if approved.now {
                info!(
                    %peer,
                    request_id,
                    client_id = %approved.client_id,
                    name = %approved.client.name,
                    decided_by = %approved.decided_by,
                    key = %key.describe(),
                    "device onboarded"
                );
                if approved.decided_by == "auto" {
                    warn!(
                        %peer,
                        client_id = %approved.client_id,
                        "AUTO-APPROVED without an operator ([onboarding] approval = \"auto\")"
                    );
                }
            }
            if wants_extensions {
                approved_response(state, &approved, StatusCode::CREATED)
            } else {
                plain_created(&approved)
            }
        }
        Submitted::Pending {
            request_id,
            created,
        } => {
            if created {
                state.stats.inc(OnboardingMetric::PendingCreated);
                info!(%peer, request_id, "onboarding request waits for an operator");
            }
            pending_response(state, &request_id, StatusCode::ACCEPTED)
        }
    })
}

fn is_request_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[instrument(skip_all, fields(%peer))]
pub(super) async fn poll(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    state.stats.inc(OnboardingMetric::Polls);
    match lookup(&state, peer, id).await {
        Ok(response) => response,
        Err(refusal) => refused(&state, peer, "onboarding poll", refusal),
    }
}

async fn lookup(state: &ApiState, peer: SocketAddr, id: String) -> Result<Response, Refusal> {
    rate_limit(state, peer)?;
    if !is_request_id(&id) {
        return Err(Refusal::not_found(
            "no such onboarding request (ids are 64 lowercase hex digits)",
        ));
    }
    let found = state
        .fleet
        .onboarding_lookup(id.clone())
        .await
        .map_err(|e| {
            error!(request_id = %id, error = %e, "onboarding lookup failed");
            Refusal::internal().for_request(&id)
        })?;
    match found {
        None => Err(Refusal::not_found("no such onboarding request").for_request(&id)),
        Some(Lookup::Rejected) => Err(Refusal::forbidden(
            "this onboarding request was rejected by an operator",
        )
        .for_request(&id)),
        Some(Lookup::Revoked(client)) => Err(Refusal::forbidden(format!(
            "this device was onboarded as client {client}, which is revoked"
        ))
        .for_request(&id)),
        Some(Lookup::Pending(_)) => Ok(pending_response(state, &id, StatusCode::OK)),
        Some(Lookup::Approved(approved)) => Ok(approved_response(state, &approved, StatusCode::OK)),
    }
}
