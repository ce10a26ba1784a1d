//! RFC 9457 problem responses of the public HTTP API.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::admin::Problem;

/// Media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

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
}

impl Refusal {
    /// A refusal with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            retry_after: None,
            request_id: None,
        }
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    /// 404.
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
}

/// A problem response for `status` and `detail`.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    let body = Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: detail.to_string(),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], bytes).into_response()
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = problem(self.status, &self.detail);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
