//! What every client endpoint of the HTTP API checks first: path ids well
//! formed, then (after content negotiation, size and media type, which the
//! handlers check) who is calling, then the client's state.
//!
//! [`authenticate`] is the single place that decides whether a request on a
//! `/api/v1/clients/{clientId}` route speaks for that client. In order:
//!
//! 1. a TLS client certificate that maps to the path's client
//!    ([`tls_peer::certifies`]; always accepted);
//! 2. RFC 9421 HTTP Message Signatures (`Signature-Input` + `Signature`, and
//!    `Content-Digest` when there is a body), verified with the key of the
//!    client's registered certificate, covering `@method`, the target and
//!    (with a body) `content-digest`, `created` within
//!    `http.signature_max_age`/`http.signature_clock_skew`, `expires` not
//!    passed, `keyid` naming the client;
//! 3. `X-Payload-Signature` (Margo's older body-only scheme), on `GET`s and
//!    on requests with a body only: it does not cover the method or path,
//!    so a bodiless `DELETE` signed with it could be a replayed `GET`.
//!
//! Refusals: no credential on a route that needs one, an unknown client
//! (there is no key to verify with), or a signature that does not verify →
//! `401`; a missing, malformed or mismatching `Content-Digest` → `400`; a
//! revoked client that authenticated → `403`. Reads with
//! `http.require_signed_reads = false` need no credential: an unknown client
//! is then `404`. Details in `docs/http-api.md`, "Request authentication".

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use margo_schemas::digest::{Digest, DigestError};
use margo_schemas::http_msg_sig::{self, PublicKey, CONTENT_DIGEST};
use margo_schemas::http_sig::{self, PAYLOAD_SIGNATURE};
use margo_schemas::ids::{ClientId, DeploymentId, DeviceId, IdError};
use tracing::{debug, error};

use super::problem::Refusal;
use super::{tls_peer, ApiState};
use crate::clock::Clock;
use crate::config::{HttpSettings, SignatureScheme};
use crate::store::ClientRecord;

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

/// How requests authenticate (`[http]` settings).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// RFC 9421 signatures accepted.
    pub rfc9421: bool,
    /// `X-Payload-Signature` accepted (GETs and requests with a body).
    pub x_payload_signature: bool,
    /// Oldest `created` accepted.
    pub max_age: Duration,
    /// Latest `created` accepted (clock skew).
    pub clock_skew: Duration,
    /// The manager's clock, which `created` and `expires` are checked against.
    pub clock: Clock,
}

impl AuthSettings {
    /// The settings of `[http]`.
    pub fn from_config(http: &HttpSettings) -> Self {
        Self {
            rfc9421: http.signature_schemes.contains(&SignatureScheme::Rfc9421),
            x_payload_signature: http
                .signature_schemes
                .contains(&SignatureScheme::XPayloadSignature),
            max_age: http.signature_max_age,
            clock_skew: http.signature_clock_skew,
            clock: Clock::system(),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self::from_config(&HttpSettings::default())
    }
}

/// A `401` whose body also carries the `error`/`message` members of the
/// RFC 9421 page's `application/json` answer (`{"error": "Invalid
/// signature", "message": ...}`), for clients of that revision.
fn unauthorized(detail: impl Into<String>) -> Refusal {
    Refusal::unauthorized(detail).with_error("Invalid signature")
}

/// The client's state once it is known who is calling: unknown → 404,
/// revoked → 403.
fn client_state(client: &ClientId, record: Option<&ClientRecord>) -> Result<(), Refusal> {
    match record {
        None => Err(Refusal::not_found(format!("no client {client}"))),
        Some(r) if r.revoked => Err(Refusal::forbidden(format!("client {client} is revoked"))),
        Some(_) => Ok(()),
    }
}

/// Whether `keyid` names `client`: its client id, or the SHA-256
/// fingerprint of its registered certificate (`sha256:<hex>` or bare hex,
/// any case).
fn keyid_names(keyid: &str, client: &ClientId, cert_der: &[u8]) -> bool {
    if keyid == client.as_str() {
        return true;
    }
    let fingerprint = margo_schemas::pki::fingerprint(cert_der).to_string();
    let hex = fingerprint.trim_start_matches("sha256:");
    let given = keyid.trim();
    let given = given
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("sha256:"))
        .map_or(given, |_| &given[7..]);
    given.eq_ignore_ascii_case(hex)
}

fn unix_now(clock: &Clock) -> i64 {
    i64::try_from(clock.now_ms() / 1000).unwrap_or(i64::MAX)
}

/// Checks who is calling for `client` (see the module docs), then the
/// client's state. `required`: whether this route needs a credential at all
/// (`false` only for reads with `http.require_signed_reads` off). A
/// verified credential makes the caller's source network known to the
/// descriptor reserve.
pub async fn authenticate(
    state: &ApiState,
    client: &ClientId,
    parts: &Parts,
    body: &[u8],
    required: bool,
) -> Result<(), Refusal> {
    let credential = verify_caller(state, client, parts, body, required).await?;
    if credential {
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            state.fd_reserve.mark_known(peer.ip());
        }
    }
    Ok(())
}

/// [`authenticate`]'s checks; `Ok(true)` when a credential was verified.
async fn verify_caller(
    state: &ApiState,
    client: &ClientId,
    parts: &Parts,
    body: &[u8],
    required: bool,
) -> Result<bool, Refusal> {
    let headers = &parts.headers;
    let record = state.fleet.client_record(client).await.map_err(|e| {
        error!(client_id = %client, error = %e, "reading a client failed");
        Refusal::internal()
    })?;
    // 1. A TLS client certificate that maps to this client.
    if tls_peer::certifies(state, parts, client).await? {
        return client_state(client, record.as_ref()).map(|()| true);
    }
    let has_rfc9421 = headers.contains_key(http_msg_sig::SIGNATURE_INPUT)
        || headers.contains_key(http_msg_sig::SIGNATURE);
    let has_payload_signature = headers.contains_key(PAYLOAD_SIGNATURE);
    if !required {
        return client_state(client, record.as_ref()).map(|()| false);
    }
    if !has_rfc9421 && !has_payload_signature {
        return Err(unauthorized(
            "no credential: sign the request with HTTP Message Signatures (RFC 9421: \
             Signature-Input and Signature, plus Content-Digest when there is a body) \
             or X-Payload-Signature",
        ));
    }
    let Some(record) = record else {
        return Err(unauthorized(format!(
            "no client {client} is registered, so its signature cannot be verified"
        )));
    };
    let key = PublicKey::from_certificate(&record.cert_der).map_err(|e| {
        unauthorized(format!(
            "the registered certificate of client {client} has no usable key: {e}"
        ))
    })?;
    let auth = &state.auth;
    if has_rfc9421 {
        if !auth.rfc9421 {
            return Err(unauthorized(
                "RFC 9421 signatures are not accepted here (http.signature_schemes)",
            ));
        }
        verify_rfc9421(client, parts, body, &key, &record, auth)?;
    } else {
        if !auth.x_payload_signature {
            return Err(unauthorized(
                "X-Payload-Signature is not accepted here (http.signature_schemes); \
                 sign with HTTP Message Signatures (RFC 9421)",
            ));
        }
        // The old scheme signs the body only. A GET may present it (reads of
        // this client, as before); a request with a body is bound by what
        // the body names (the handlers check it against the path). A DELETE
        // has no body, so its signature would be the one of any GET: refused.
        let bodiless_write = parts.method != Method::GET && body.is_empty();
        if parts.method == Method::DELETE || bodiless_write {
            return Err(unauthorized(format!(
                "X-Payload-Signature signs only the body, so it cannot authorize a bodiless \
                 {}; sign it with HTTP Message Signatures (RFC 9421) covering @method and \
                 the target",
                parts.method
            )));
        }
        http_sig::verify_with_key(
            header_str(headers, CONTENT_DIGEST),
            header_str(headers, PAYLOAD_SIGNATURE),
            body,
            &key,
            false,
        )
        .map_err(|e| {
            let detail = format!("X-Payload-Signature: {e}");
            match StatusCode::from_u16(e.status()) {
                Ok(StatusCode::BAD_REQUEST) => Refusal::bad_request(detail),
                _ => unauthorized(detail),
            }
        })?;
    }
    client_state(client, Some(&record)).map(|()| true)
}

fn verify_rfc9421(
    client: &ClientId,
    parts: &Parts,
    body: &[u8],
    key: &PublicKey,
    record: &ClientRecord,
    auth: &AuthSettings,
) -> Result<(), Refusal> {
    let keyid_ok = |k: &str| keyid_names(k, client, &record.cert_der);
    let label = verify_message_signature(
        &parts.method,
        &parts.uri,
        &parts.headers,
        body,
        key,
        &keyid_ok,
        auth,
    )?;
    debug!(client_id = %client, %label, "RFC 9421 signature verified");
    Ok(())
}

/// Verifies the RFC 9421 signature of a request (method, target, headers
/// and body as received) with `key`, the `Content-Digest` against the body,
/// `created`/`expires` against `auth`, and the `keyid` with `keyid_ok`.
/// Returns the label of the signature that verified. `401` for a signature
/// that does not verify; `400` for a missing or mismatching digest.
pub(super) fn verify_message_signature(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    key: &PublicKey,
    keyid_ok: &dyn Fn(&str) -> bool,
    auth: &AuthSettings,
) -> Result<String, Refusal> {
    let has_body = !body.is_empty();
    let lines: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
        .collect();
    let authority = header_str(headers, header::HOST.as_str())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let request = http_msg_sig::Request {
        method: method.as_str(),
        scheme: "https",
        authority,
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &lines,
    };
    let digest_lines = request.field_lines(CONTENT_DIGEST);
    if has_body && digest_lines.is_empty() {
        return Err(Refusal::bad_request(
            "missing Content-Digest header: a request with a body must carry \
             sha-256=:<base64>: (RFC 9530) and cover it in the signature",
        ));
    }
    let policy = http_msg_sig::Policy {
        now: unix_now(&auth.clock),
        max_age: auth.max_age.as_secs(),
        max_future_skew: auth.clock_skew.as_secs(),
        has_body,
    };
    let verified = http_msg_sig::verify_request(&request, key, &policy, keyid_ok)
        .map_err(|e| unauthorized(format!("HTTP message signature refused: {e}")))?;
    if !digest_lines.is_empty() {
        http_msg_sig::check_content_digest(&digest_lines, body)
            .map_err(|e| Refusal::bad_request(e.to_string()))?;
    }
    Ok(format!("{} ({})", verified.label, verified.alg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyid_forms() {
        let client = ClientId::new("client1").unwrap();
        let cert = b"not really a certificate";
        let fp = margo_schemas::pki::fingerprint(cert).to_string();
        let hex = fp.trim_start_matches("sha256:").to_string();
        assert!(keyid_names("client1", &client, cert));
        assert!(keyid_names(&fp, &client, cert));
        assert!(keyid_names(&hex.to_uppercase(), &client, cert));
        assert!(keyid_names(&format!("SHA256:{hex}"), &client, cert));
        assert!(!keyid_names("client2", &client, cert));
        assert!(!keyid_names("sha256:00", &client, cert));
        assert!(!keyid_names("", &client, cert));
    }
}
