//! Desired state over HTTP (Margo `GET` endpoints), served from the same
//! store read and the same manifest builder as the MQTT publisher:
//!
//! - `GET /api/v1/clients/{clientId}/deployments` → `200` manifest
//!   (`application/vnd.margo.manifest.v1+json`, `ETag: "sha256:<hex of the
//!   body>"`), `304` on a matching `If-None-Match`, `406` when `Accept`
//!   excludes the media type; a client with nothing ever deployed gets the
//!   zero-deployment manifest (`manifestVersion` 1, `bundle: null`,
//!   `deployments: []`), never 404
//! - `GET .../deployments/{deploymentId}/{digest}` → `200` the exact YAML
//!   (`application/yaml`, `ETag: "<digest>"`, immutable), `404` unless it is
//!   the client's current document for that deployment (a malformed
//!   deploymentId or digest included)
//! - `GET .../bundles/{digest}` → `200` the tar.gz of every YAML
//!   (`application/vnd.margo.bundle.v1+tar+gzip`), `404` unless it is the
//!   client's current bundle (a malformed digest included)
//!
//! The rc.3 routes (`GET /api/v1/deployments`, `.../deployments/{deploymentId}/{digest}`,
//! `GET /api/v1/bundles/{digest}`) serve the same for the client of the TLS
//! client certificate ([`tls_peer::caller`]: `401` none or unknown, `403`
//! revoked), with rc.3 `url`s and `Cache-Control: private` (see [`Routes`]).
//!
//! The manifest and YAML are gzip-encoded when `Accept-Encoding` admits it
//! (`Vary: Accept-Encoding`); ETags and digests stay those of the decoded
//! bytes. All: `400` malformed clientId; then (after the `406` of
//! the manifest) authentication (`access::authenticate`): with
//! `http.require_signed_reads` (default) a request without a credential or
//! with a signature that does not verify is `401` (an unknown client too),
//! a `Content-Digest` that does not match the (empty) body `400`; a revoked
//! client `403`; without it an unknown client is `404`.

use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::manifest::MEDIA_TYPE as MANIFEST_MEDIA_TYPE;
use tracing::{debug, error, info, instrument, warn};

use super::access;
use super::problem::{ProblemType, Refusal};
use super::{tls_peer, ApiState};
use crate::state_manifest::{self, Form, BUNDLE_MEDIA_TYPE};
use crate::store::DesiredState;

/// Media type of a deployment document.
pub const YAML_MEDIA_TYPE: &str = "application/yaml";
/// `Cache-Control` of content-addressed (immutable) resources on the
/// `{clientId}` routes (1.0.0 and rc.2 say `public`).
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of content-addressed resources on the rc.3 routes.
pub const PRIVATE_IMMUTABLE: &str = "private, max-age=31536000, immutable";
/// `Cache-Control` of the manifest on the rc.3 routes (1.0.0 and rc.2 name none).
pub const PRIVATE: &str = "private";

/// Route of the manifest.
pub const MANIFEST_ROUTE: &str = "/api/v1/clients/{clientId}/deployments";
/// Route of one deployment document.
pub const DEPLOYMENT_ROUTE: &str = "/api/v1/clients/{clientId}/deployments/{deploymentId}/{digest}";
/// Route of a bundle.
pub const BUNDLE_ROUTE: &str = "/api/v1/clients/{clientId}/bundles/{digest}";
/// rc.3 route of the caller's manifest.
pub const RC3_MANIFEST_ROUTE: &str = "/api/v1/deployments";
/// rc.3 route of one deployment document.
pub const RC3_DEPLOYMENT_ROUTE: &str = "/api/v1/deployments/{deploymentId}/{digest}";
/// rc.3 route of a bundle.
pub const RC3_BUNDLE_ROUTE: &str = "/api/v1/bundles/{digest}";

/// The path family a request came by: the `{clientId}` routes of 1.0.0 and
/// rc.2 (signature or certificate of that client), or the rc.3 routes
/// (caller identified by its TLS client certificate). It decides the
/// manifest's `url`s and the `Cache-Control` each revision names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `/api/v1/clients/{clientId}/...`.
    Clients,
    /// `/api/v1/deployments`, `/api/v1/bundles/...`, `/api/v1/capabilities/...`.
    Rc3,
}

impl Routes {
    /// `Cache-Control` of a document or bundle.
    pub fn immutable(self) -> &'static str {
        match self {
            Self::Clients => IMMUTABLE,
            Self::Rc3 => PRIVATE_IMMUTABLE,
        }
    }

    /// `Cache-Control` of the manifest, if the revision names one.
    pub fn manifest_cache_control(self) -> Option<&'static str> {
        match self {
            Self::Clients => None,
            Self::Rc3 => Some(PRIVATE),
        }
    }
}

/// Logs a refusal once (warn for 401/403, info otherwise) and answers it.
pub(super) fn refused(client: &str, what: &str, refusal: Refusal) -> Response {
    let status = refusal.status.as_u16();
    match refusal.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            warn!(client_id = client, status, detail = %refusal.detail, "{what} refused");
        }
        _ => info!(client_id = client, status, detail = %refusal.detail, "{what} refused"),
    }
    refusal.into_response()
}

/// Whether `accept` admits `media_type`: absent, `*/*`, `application/*` or
/// the type itself, with a q-value above 0.
pub fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    let Some(accept) = accept else {
        return true;
    };
    let (top, _) = media_type.split_once('/').unwrap_or((media_type, ""));
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let excluded = parts.any(|p| {
            p.split_once('=')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        !excluded && (name == "*/*" || name == format!("{top}/*") || name == media_type)
    })
}

/// Whether `Accept-Encoding` admits gzip (`gzip`, `x-gzip` or `*` with a
/// q-value above 0).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("").to_ascii_lowercase();
            let excluded = parts.any(|p| {
                p.split_once('=')
                    .filter(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                    .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !excluded && matches!(coding.as_str(), "gzip" | "x-gzip" | "*")
        })
}

/// `body` gzip-encoded (mtime 0, fixed level: equal input, equal output).
fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    gz.write_all(body)?;
    gz.finish()
}

/// A `200` for a text representation (manifest, YAML): gzip-encoded when
/// the client accepts it, `Vary: Accept-Encoding` either way. The ETag and
/// the digests stay those of the decoded bytes, which is what clients
/// verify and send back in `If-None-Match`.
fn ok_text(
    headers: &HeaderMap,
    content_type: &'static str,
    etag: HeaderValue,
    extra: &[(header::HeaderName, &'static str)],
    body: Vec<u8>,
) -> Response {
    let mut extra = extra.to_vec();
    extra.push((header::VARY, "accept-encoding"));
    if accepts_gzip(headers) {
        match gzip(&body) {
            Ok(encoded) => {
                extra.push((header::CONTENT_ENCODING, "gzip"));
                return ok(content_type, etag, &extra, encoded);
            }
            Err(e) => warn!(error = %e, "gzip failed; answering uncompressed"),
        }
    }
    ok(content_type, etag, &extra, body)
}

/// Whether `If-None-Match` names `etag` (quoted) or is `*` (weak comparison,
/// RFC 9110 §13.1.2).
pub fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn not_modified(etag: &HeaderValue, extra: &[(header::HeaderName, &'static str)]) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    response.headers_mut().insert(header::ETAG, etag.clone());
    for (name, value) in extra {
        response
            .headers_mut()
            .insert(name.clone(), HeaderValue::from_static(value));
    }
    response
}

fn ok(
    content_type: &'static str,
    etag: HeaderValue,
    extra: &[(header::HeaderName, &'static str)],
    body: impl Into<axum::body::Body>,
) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::ETAG, etag);
    for (name, value) in extra {
        headers.insert(name.clone(), HeaderValue::from_static(value));
    }
    response
}

fn quoted(text: &str) -> Result<HeaderValue, Refusal> {
    HeaderValue::from_str(&format!("\"{text}\"")).map_err(|_| Refusal::internal())
}

async fn desired(state: &ApiState, client: &ClientId) -> Result<DesiredState, Refusal> {
    state.fleet.desired_state(client).await.map_err(|e| {
        error!(client_id = %client, error = %e, "reading the desired state failed");
        Refusal::internal()
    })
}

/// The HTTP manifest of `state` in the `routes` family's form and its exact
/// JSON bytes.
pub fn manifest_body(
    state: &ApiState,
    desired: &DesiredState,
    routes: Routes,
) -> Result<Vec<u8>, Refusal> {
    let bundle = state.bundles.get(desired).map_err(|e| {
        error!(client_id = %desired.client, error = %e, "building the bundle failed");
        Refusal::internal()
    })?;
    let info = bundle.map(|b| b.info());
    let form = match routes {
        Routes::Clients => Form::Http(info),
        Routes::Rc3 => Form::HttpRc3(info),
    };
    let manifest = state_manifest::build(desired, form);
    // Struct fields in declaration order, deployments sorted by id, no maps:
    // equal states serialise to equal bytes.
    serde_json::to_vec(&manifest).map_err(|e| {
        error!(client_id = %desired.client, error = %e, "encoding the manifest failed");
        Refusal::internal()
    })
}

/// `406` unless `Accept` admits the manifest media type.
fn negotiate_manifest(headers: &HeaderMap) -> Result<(), Refusal> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if accepts(accept, MANIFEST_MEDIA_TYPE) {
        return Ok(());
    }
    Err(Refusal::new(
        StatusCode::NOT_ACCEPTABLE,
        format!("the manifest is only available as {MANIFEST_MEDIA_TYPE}"),
    ))
}

#[instrument(skip_all, fields(client_id = %raw_client))]
pub(super) async fn manifest(
    State(state): State<ApiState>,
    Path(raw_client): Path<String>,
    parts: Parts,
) -> Response {
    let served = async {
        let client = access::client_id(&raw_client)?;
        negotiate_manifest(&parts.headers)?;
        access::authenticate(&state, &client, &parts, b"", state.require_signed_reads).await?;
        serve_manifest(&state, &client, &parts.headers, Routes::Clients).await
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(&raw_client, "manifest request", refusal),
    }
}

/// `GET /api/v1/deployments` (rc.3): the caller's manifest.
#[instrument(skip_all)]
pub(super) async fn rc3_manifest(State(state): State<ApiState>, parts: Parts) -> Response {
    let mut caller = None;
    let served = async {
        negotiate_manifest(&parts.headers)?;
        let client = tls_peer::caller(&state, &parts).await?;
        caller = Some(client.clone());
        serve_manifest(&state, &client, &parts.headers, Routes::Rc3).await
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(&caller_name(caller.as_ref()), "manifest request", refusal),
    }
}

/// The client named in the log of a refused rc.3 request.
fn caller_name(caller: Option<&ClientId>) -> String {
    caller.map_or_else(|| "-".to_string(), ToString::to_string)
}

async fn serve_manifest(
    state: &ApiState,
    client: &ClientId,
    headers: &HeaderMap,
    routes: Routes,
) -> Result<Response, Refusal> {
    // Nothing ever deployed: the zero-deployment manifest (version 1).
    let desired = desired(state, client).await?;
    let body = manifest_body(state, &desired, routes)?;
    let etag = quoted(&Digest::of(&body).to_string())?;
    let etag_text = etag.to_str().unwrap_or_default();
    let mut extra = vec![(header::VARY, "accept-encoding")];
    extra.extend(
        routes
            .manifest_cache_control()
            .map(|c| (header::CACHE_CONTROL, c)),
    );
    if none_match(headers, etag_text) {
        debug!(
            manifest_version = desired.manifest_version,
            "manifest not modified"
        );
        return Ok(not_modified(&etag, &extra));
    }
    debug!(
        manifest_version = desired.manifest_version,
        "manifest served"
    );
    Ok(ok_text(
        headers,
        MANIFEST_MEDIA_TYPE,
        etag,
        &extra[1..],
        body,
    ))
}

#[instrument(skip_all, fields(client_id = %raw.0, deployment_id = %raw.1))]
pub(super) async fn deployment(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String, String)>,
    parts: Parts,
) -> Response {
    let served = async {
        let (raw_client, raw_deployment, raw_digest) = &raw;
        let client = access::client_id(raw_client)?;
        access::authenticate(&state, &client, &parts, b"", state.require_signed_reads).await?;
        serve_deployment(
            &state,
            &client,
            (raw_deployment, raw_digest),
            &parts.headers,
            Routes::Clients,
        )
        .await
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(&raw.0, "deployment document request", refusal),
    }
}

/// `GET /api/v1/deployments/{deploymentId}/{digest}` (rc.3).
#[instrument(skip_all, fields(deployment_id = %raw.0))]
pub(super) async fn rc3_deployment(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String)>,
    parts: Parts,
) -> Response {
    let mut caller = None;
    let served = async {
        let client = tls_peer::caller(&state, &parts).await?;
        caller = Some(client.clone());
        serve_deployment(
            &state,
            &client,
            (&raw.0, &raw.1),
            &parts.headers,
            Routes::Rc3,
        )
        .await
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(
            &caller_name(caller.as_ref()),
            "deployment document request",
            refusal,
        ),
    }
}

/// Serves `raw = (deploymentId, digest)` of `client`. A malformed
/// deploymentId or digest names nothing the manager has: `404`, the only
/// refusal `desired-state.md` lists for this endpoint ("MUST return 404 if
/// it does not have the exact digest"), answered after authentication.
async fn serve_deployment(
    state: &ApiState,
    client: &ClientId,
    (raw_deployment, raw_digest): (&str, &str),
    headers: &HeaderMap,
    routes: Routes,
) -> Result<Response, Refusal> {
    let wanted = DeploymentId::new(raw_deployment)
        .ok()
        .zip(Digest::parse(raw_digest).ok());
    let desired = desired(state, client).await?;
    let found = wanted.as_ref().and_then(|(deployment, digest)| {
        desired
            .deployments
            .into_iter()
            .find(|d| d.id == *deployment && d.digest == *digest)
    });
    let (Some(doc), Some((_, digest))) = (found, wanted) else {
        return Err(Refusal::typed(
            StatusCode::NOT_FOUND,
            ProblemType::DeploymentNotFound,
            format!(
                "client {client} has no deployment {raw_deployment:?} with digest {raw_digest:?}"
            ),
        ));
    };
    let etag = quoted(&digest.to_string())?;
    let extra = [
        (header::CACHE_CONTROL, routes.immutable()),
        (header::VARY, "accept-encoding"),
    ];
    if none_match(headers, etag.to_str().unwrap_or_default()) {
        return Ok(not_modified(&etag, &extra));
    }
    Ok(ok_text(
        headers,
        YAML_MEDIA_TYPE,
        etag,
        &extra[..1],
        doc.yaml,
    ))
}

#[instrument(skip_all, fields(client_id = %raw.0))]
pub(super) async fn bundle(
    State(state): State<ApiState>,
    Path(raw): Path<(String, String)>,
    parts: Parts,
) -> Response {
    let served = async {
        let client = access::client_id(&raw.0)?;
        access::authenticate(&state, &client, &parts, b"", state.require_signed_reads).await?;
        serve_bundle(&state, &client, &raw.1, &parts.headers, Routes::Clients).await
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(&raw.0, "bundle request", refusal),
    }
}

/// `GET /api/v1/bundles/{digest}` (rc.3).
#[instrument(skip_all)]
pub(super) async fn rc3_bundle(
    State(state): State<ApiState>,
    Path(raw_digest): Path<String>,
    parts: Parts,
) -> Response {
    let mut caller = None;
    let served = async {
        let client = tls_peer::caller(&state, &parts).await?;
        caller = Some(client.clone());
        serve_bundle(&state, &client, &raw_digest, &parts.headers, Routes::Rc3).await
    };
    match served.await {
        Ok(response) => response,
        Err(refusal) => refused(&caller_name(caller.as_ref()), "bundle request", refusal),
    }
}

/// Serves the bundle `raw_digest` of `client`. A malformed digest names no
/// bundle the manager has: `404` (the endpoint's "MUST return 404 Not
/// Found"), answered after authentication.
async fn serve_bundle(
    state: &ApiState,
    client: &ClientId,
    raw_digest: &str,
    headers: &HeaderMap,
    routes: Routes,
) -> Result<Response, Refusal> {
    let wanted = Digest::parse(raw_digest).ok();
    let desired = desired(state, client).await?;
    let bundle = state.bundles.get(&desired).map_err(|e| {
        error!(client_id = %client, error = %e, "building the bundle failed");
        Refusal::internal()
    })?;
    let Some(bundle) = bundle.filter(|b| wanted.as_ref() == Some(&b.digest)) else {
        return Err(Refusal::typed(
            StatusCode::NOT_FOUND,
            ProblemType::InvalidBundle,
            format!("{raw_digest:?} is not the current bundle of client {client}"),
        ));
    };
    let etag = quoted(&bundle.digest.to_string())?;
    let extra = [(header::CACHE_CONTROL, routes.immutable())];
    if none_match(headers, etag.to_str().unwrap_or_default()) {
        return Ok(not_modified(&etag, &extra));
    }
    Ok(ok(BUNDLE_MEDIA_TYPE, etag, &extra, bundle.bytes.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let m = MANIFEST_MEDIA_TYPE;
        assert!(accepts(None, m));
        assert!(accepts(Some("*/*"), m));
        assert!(accepts(Some("application/*"), m));
        assert!(accepts(
            Some("text/html, application/vnd.margo.manifest.v1+json;q=0.5"),
            m
        ));
        assert!(!accepts(Some("application/json"), m));
        assert!(!accepts(Some("text/*"), m));
        assert!(!accepts(
            Some("application/vnd.margo.manifest.v1+json;q=0"),
            m
        ));
    }

    #[test]
    fn accept_encoding() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        for (value, want) in [
            ("gzip", true),
            ("br, gzip;q=0.5", true),
            ("*", true),
            ("identity", false),
            ("gzip;q=0", false),
        ] {
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            assert_eq!(accepts_gzip(&h), want, "{value}");
        }
        assert_eq!(gzip(b"abc").unwrap(), gzip(b"abc").unwrap());
    }

    #[test]
    fn if_none_match_forms() {
        let mut h = HeaderMap::new();
        assert!(!none_match(&h, "\"sha256:ab\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"sha256:ab\""),
        );
        assert!(none_match(&h, "\"sha256:ab\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&h, "\"anything\""));
    }
}
