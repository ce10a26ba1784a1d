//! Problem details (RFC 9457): the error body of both HTTP APIs the manager
//! serves, the admin API on its Unix socket (`admin`, which answers
//! `about:blank` problems) and the Margo HTTP API (`http::problem` adds
//! Margo's problem types, the retry members and the older revisions'
//! `error`/`message` on top of [`Problem`]). Neither API imports the other
//! for it.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The `type` of a problem that has no more specific type.
pub const ABOUT_BLANK: &str = "about:blank";

/// The RFC 9457 members every problem body of the manager carries, in this
/// order. Reading one, a missing `type`, `title` or `status` is empty or 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Problem type URI (`about:blank` unless a registry names it).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Short summary of the type (for `about:blank`: the status phrase).
    #[serde(default)]
    pub title: String,
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What was wrong in this occurrence.
    pub detail: String,
}

impl Problem {
    /// A problem of type `kind` titled `title`.
    pub fn new(
        kind: impl Into<String>,
        title: impl Into<String>,
        status: StatusCode,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.into(),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    /// An `about:blank` problem: the status phrase is the title.
    pub fn blank(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::new(ABOUT_BLANK, status_title(status), status, detail)
    }
}

/// The status phrase (`Not Found`; `Error` for a status without one): the
/// title of an `about:blank` problem.
pub fn status_title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

/// A `status` response with `body` (a [`Problem`], or a body that extends
/// one) as `application/problem+json`.
pub fn response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], bytes).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_problem_members_in_order() {
        let problem = Problem::blank(StatusCode::NOT_FOUND, "no such client");
        assert_eq!(
            serde_json::to_string(&problem).unwrap(),
            r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no such client"}"#
        );
    }

    #[test]
    fn reads_a_body_with_only_a_detail_and_extra_members() {
        let problem: Problem = serde_json::from_str(r#"{"detail":"x","retryable":false}"#).unwrap();
        assert_eq!(problem.detail, "x");
        assert_eq!((problem.kind.as_str(), problem.status), ("", 0));
    }
}
