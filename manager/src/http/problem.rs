//! RFC 9457 problem responses of the public HTTP API (reading R4 of
//! `docs/http-api.md`, "Problem bodies").
//!
//! - `type` is a Margo problem type URI
//!   (`https://docs.margo.org/specification/problem-types#<name>`, the
//!   namespace of the newest registry and of the rc.3 OpenAPI) for the
//!   conditions the registry names, `about:blank` otherwise; `title` is the
//!   registry's title, or the status phrase for `about:blank`.
//! - `retryable` and `backoffStrategy` as the retry table of
//!   `api-requirements-and-security.md` says (429, 503, 500: retryable,
//!   exponential; everything else: not retryable, none).
//! - Content type `application/problem+json`.
//! - Where an older revision specifies `application/json {"error": "..."}`
//!   (onboarding 400/403 in 1.0.0/rc.2, the RFC 9421 page's 401 `{"error",
//!   "message"}`), a refusal made [`Refusal::with_error`] carries the problem
//!   members **and** `error` and `message`; [`negotiate`] (a middleware on
//!   the whole router) then answers it as `application/json` when the
//!   request's `Accept` names `application/json` and not
//!   `application/problem+json`.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use crate::problem::PROBLEM_JSON;
use crate::problem::{status_title, Problem, ABOUT_BLANK};

/// Media type of the older revisions' error bodies.
pub const JSON: &str = "application/json";
/// Namespace of the Margo problem type URIs (newest registry, rc.3).
pub const TYPE_NAMESPACE: &str = "https://docs.margo.org/specification/problem-types";

/// The problem types of the Margo registry (`problem-types.md`), and
/// `about:blank` for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// 400: malformed request.
    InvalidRequest,
    /// 422: well-formed request with a semantic error.
    SemanticError,
    /// 403: denied by local policy (revoked client, rejected request).
    NotAuthorized,
    /// 404: no gateway for a child device id.
    GatewayNotFound,
    /// 404: no device with that id for the client.
    DeviceNotFound,
    /// 404: no bundle with that digest.
    InvalidBundle,
    /// 404: no deployment document with that id and digest.
    DeploymentNotFound,
    /// 406: no representation matching `Accept`.
    ServerCannotGenerateResponse,
    /// Anything the registry does not name.
    Blank,
}

impl ProblemType {
    /// The registry's name (`#<name>`), `None` for `about:blank`.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidRequest => "invalid-request",
            Self::SemanticError => "semantic-error",
            Self::NotAuthorized => "not-authorized",
            Self::GatewayNotFound => "gateway-not-found",
            Self::DeviceNotFound => "device-not-found",
            Self::InvalidBundle => "invalid-bundle",
            Self::DeploymentNotFound => "deployment-not-found",
            Self::ServerCannotGenerateResponse => "server-cannot-generate-response",
            Self::Blank => return None,
        })
    }

    /// The `type` member.
    pub fn uri(self) -> String {
        match self.name() {
            Some(name) => format!("{TYPE_NAMESPACE}#{name}"),
            None => ABOUT_BLANK.to_string(),
        }
    }

    /// The registry's title; the status phrase for `about:blank`.
    pub fn title(self, status: StatusCode) -> &'static str {
        match self {
            Self::InvalidRequest => "Invalid Request",
            Self::SemanticError => "Semantic Error",
            Self::NotAuthorized => "Not Authorized",
            Self::GatewayNotFound => "Gateway not found",
            Self::DeviceNotFound => "Device Not Found",
            Self::InvalidBundle => "Invalid Bundle",
            Self::DeploymentNotFound => "Deployment Not Found",
            Self::ServerCannotGenerateResponse => "Server Cannot Generate Response",
            Self::Blank => status_title(status),
        }
    }

    /// The type a refusal with `status` gets unless it names one: the
    /// registry's type where the status has exactly one (400, 403, 406,
    /// 422), `about:blank` otherwise (a 404 names its type where it knows it).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::InvalidRequest,
            StatusCode::UNPROCESSABLE_ENTITY => Self::SemanticError,
            StatusCode::FORBIDDEN => Self::NotAuthorized,
            StatusCode::NOT_ACCEPTABLE => Self::ServerCannotGenerateResponse,
            _ => Self::Blank,
        }
    }
}

/// A problem body (RFC 9457 members, Margo's retry members, and the older
/// revisions' `error`/`message` when asked for).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProblemBody {
    /// `type`, `title`, `status` and `detail`, in that order.
    #[serde(flatten)]
    pub problem: Problem,
    /// Whether the client may retry.
    pub retryable: bool,
    /// `none` or `exponential`.
    pub backoff_strategy: &'static str,
    /// `Retry-After` again, advisory (rc.3 `retryAfterSeconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// Older revisions' `{"error": "..."}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Older revisions' `message` (the detail again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Marks a response whose problem body also carries the older revisions'
/// `error` member, so [`negotiate`] may answer it as `application/json`.
#[derive(Debug, Clone, Copy)]
pub struct LegacyErrorBody;

/// A refused request: status, what was wrong, and (429/503) when to retry.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// What was wrong, for the client.
    pub detail: String,
    /// Seconds to wait (`Retry-After`), if any.
    pub retry_after: Option<u64>,
    /// The onboarding request concerned, if known (for the log).
    pub request_id: Option<String>,
    /// The problem type (default: [`ProblemType::for_status`]).
    pub kind: ProblemType,
    /// The older revisions' `error` text, if this refusal has one.
    pub error: Option<String>,
}

/// `Retry-After` of a [`Refusal::storage`].
const STORAGE_RETRY_SECS: u64 = 10;

impl Refusal {
    /// A refusal with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            retry_after: None,
            request_id: None,
            kind: ProblemType::for_status(status),
            error: None,
        }
    }

    /// A refusal of a registered Margo problem type.
    pub fn typed(status: StatusCode, kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            ..Self::new(status, detail)
        }
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 401.
    ///
    /// Every `401` also carries the older revisions' `error`/`message`
    /// members (the RFC 9421 page answers `401` as `application/json
    /// {"error", "message"}`); [`Refusal::with_error`] may name it better.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail).with_error("Unauthorized")
    }

    /// 403 (`not-authorized`).
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    /// 404 (`about:blank`; see [`Refusal::typed`] for the registry's 404s).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 500; the detail stays generic (the cause is logged).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the manager logged the cause",
        )
    }

    /// 503 for a write the store's file system refused (full, read-only):
    /// the detail names the storage error (the store logged the file), and
    /// the client retries.
    pub fn storage(failure: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the manager cannot store this now: {failure}; retry later"),
        )
        .retry_after(STORAGE_RETRY_SECS)
    }

    /// Sets `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Names the onboarding request concerned.
    pub fn for_request(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_string());
        self
    }

    /// Adds the older revisions' `error` member (and `message`, the detail
    /// again), e.g. `"Invalid certificate"`, `"Client rejected"`,
    /// `"Invalid signature"`.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// The body of this refusal.
    pub fn body(&self) -> ProblemBody {
        let retryable = matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::INTERNAL_SERVER_ERROR
        );
        ProblemBody {
            problem: Problem::new(
                self.kind.uri(),
                self.kind.title(self.status),
                self.status,
                self.detail.clone(),
            ),
            retryable,
            backoff_strategy: if retryable { "exponential" } else { "none" },
            retry_after_seconds: self.retry_after,
            error: self.error.clone(),
            message: self.error.as_ref().map(|_| self.detail.clone()),
        }
    }
}

/// A problem response for `status` and `detail` (type from the status).
pub fn problem(status: StatusCode, detail: &str) -> Response {
    Refusal::new(status, detail).into_response()
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = crate::problem::response(self.status, &self.body());
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.error.is_some() {
            response.extensions_mut().insert(LegacyErrorBody);
        }
        response
    }
}

/// Whether `Accept` names `application/json` (q > 0) and not
/// `application/problem+json`: a client of the older revisions that
/// expects `application/json {"error": ...}`.
pub fn wants_plain_json(headers: &HeaderMap) -> bool {
    let mut json = false;
    for range in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = range.split(';').map(str::trim);
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let excluded = parts.any(|p| {
            p.split_once('=')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if excluded {
            continue;
        }
        match name.as_str() {
            PROBLEM_JSON => return false,
            JSON => json = true,
            _ => {}
        }
    }
    json
}

/// Middleware: answers a problem that carries the older `error` member as
/// `application/json` to a client whose `Accept` asks for that and not for
/// `application/problem+json` (same body either way).
pub async fn negotiate(request: Request, next: Next) -> Response {
    let plain = wants_plain_json(request.headers());
    let mut response = next.run(request).await;
    if plain && response.extensions().get::<LegacyErrorBody>().is_some() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn registry_types_and_blank() {
        let body = Refusal::forbidden("revoked").body();
        assert_eq!(
            body.problem.kind,
            "https://docs.margo.org/specification/problem-types#not-authorized"
        );
        assert_eq!(body.problem.title, "Not Authorized");
        assert!(!body.retryable);
        assert_eq!(body.backoff_strategy, "none");
        let body = Refusal::not_found("x").body();
        assert_eq!(
            (body.problem.kind.as_str(), body.problem.title.as_str()),
            ("about:blank", "Not Found")
        );
        let body = Refusal::typed(StatusCode::NOT_FOUND, ProblemType::InvalidBundle, "x").body();
        assert!(
            body.problem.kind.ends_with("#invalid-bundle"),
            "{}",
            body.problem.kind
        );
        let body = Refusal::new(StatusCode::TOO_MANY_REQUESTS, "slow down")
            .retry_after(7)
            .body();
        assert!(body.retryable);
        assert_eq!(body.backoff_strategy, "exponential");
        assert_eq!(body.retry_after_seconds, Some(7));
        for (status, name) in [
            (400, "invalid-request"),
            (422, "semantic-error"),
            (406, "server-cannot-generate-response"),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(ProblemType::for_status(status).name(), Some(name));
        }
    }

    #[test]
    fn legacy_error_members_only_when_asked() {
        let plain = serde_json::to_value(Refusal::bad_request("bad").body()).unwrap();
        assert!(plain.get("error").is_none() && plain.get("message").is_none());
        let legacy = serde_json::to_value(
            Refusal::bad_request("not P-256")
                .with_error("Invalid certificate")
                .body(),
        )
        .unwrap();
        assert_eq!(legacy["error"], "Invalid certificate");
        assert_eq!(legacy["message"], "not P-256");
        assert_eq!(legacy["detail"], "not P-256");
        assert_eq!(legacy["status"], 400);
    }

    #[test]
    fn body_members_in_order() {
        let body = Refusal::bad_request("not P-256")
            .with_error("Invalid certificate")
            .body();
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            concat!(
                r#"{"type":"https://docs.margo.org/specification/problem-types#invalid-request","#,
                r#""title":"Invalid Request","status":400,"detail":"not P-256","retryable":false,"#,
                r#""backoffStrategy":"none","error":"Invalid certificate","message":"not P-256"}"#
            )
        );
        let body = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "full")
            .retry_after(3)
            .body();
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            concat!(
                r#"{"type":"about:blank","title":"Service Unavailable","status":503,"#,
                r#""detail":"full","retryable":true,"backoffStrategy":"exponential","#,
                r#""retryAfterSeconds":3}"#
            )
        );
    }

    #[test]
    fn accept_decides_the_legacy_media_type() {
        assert!(!wants_plain_json(&HeaderMap::new()));
        assert!(wants_plain_json(&accept("application/json")));
        assert!(wants_plain_json(&accept(
            "text/plain, application/json;q=0.5"
        )));
        assert!(!wants_plain_json(&accept(
            "application/json, application/problem+json"
        )));
        assert!(!wants_plain_json(&accept("application/problem+json")));
        assert!(!wants_plain_json(&accept("*/*")));
        assert!(!wants_plain_json(&accept("application/json;q=0")));
    }
}
