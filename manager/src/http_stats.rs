//! Metrics of the HTTPS listener, declared once (margo-metrics): its
//! connections ([`HttpMetric`]) and the onboarding requests it answers
//! ([`OnboardingMetric`]). The listener (`http`) counts; the admin API's
//! `/v1/health` reports them, so they live apart from both.

use axum::http::StatusCode;
use margo_metrics::{metric_set, Stats};

use crate::onboarding::ApprovedBy;

metric_set! {
    /// Connection-level metrics of the HTTPS listener.
    pub enum HttpMetric {
        counter "margo_https_connections_accepted_total", "HTTPS sockets accepted." {
            /// Sockets accepted.
            Accepted() => "accepted",
        }
        counter "margo_https_connections_refused_total",
            "HTTPS connections closed at once, by reason." {
            /// `http.max_connections` reached.
            RefusedConnectionCap(reason = "connection_cap") => "refusedConnectionCap",
            /// `http.max_connections_per_source` reached for the source network.
            RefusedSourceCap(reason = "source_cap") => "refusedSourceCap",
            /// Near the open-file limit, from a source network with no recent session.
            RefusedFdReserve(reason = "fd_reserve") => "refusedFdReserve",
        }
        counter "margo_https_handshakes_failed_total", "HTTPS TLS handshakes that failed, by reason." {
            /// TLS handshakes that failed.
            HandshakeFailed(reason = "failed") => "handshakeFailed",
            /// TLS handshakes that hit the deadline.
            HandshakeTimeout(reason = "timeout") => "handshakeTimeout",
        }
        counter "margo_https_request_timeouts_total", "HTTPS requests that hit the request deadline." {
            /// Requests that hit the request deadline.
            RequestTimeout() => "requestTimeout",
        }
    }
}

/// The HTTPS listener's values of [`HttpMetric`].
pub type HttpStats = Stats<HttpMetric>;

metric_set! {
    /// Onboarding over HTTPS.
    pub enum OnboardingMetric {
        counter "margo_onboarding_requests_total", "Onboarding requests received, by endpoint." {
            /// `POST /api/v1/onboarding` received.
            Requests(endpoint = "request") => "requests",
            /// Polls received.
            Polls(endpoint = "poll") => "polls",
            /// CA certificate downloads.
            Certificate(endpoint = "certificate") => "certificate",
        }
        counter "margo_onboarding_approved_total", "Onboarding requests answered with an identity, by who approved." {
            /// Approved by an enrollment token.
            ApprovedToken(by = "token") => "approvedToken",
            /// Approved by the allow-list.
            ApprovedAllowlist(by = "allowlist") => "approvedAllowlist",
            /// Approved by `[onboarding] approval = "auto"`.
            ApprovedAuto(by = "auto") => "approvedAuto",
            /// Answered with an identity already issued (approved earlier or known key).
            ApprovedEarlier(by = "earlier") => "approvedEarlier",
        }
        counter "margo_onboarding_pending_created_total", "New onboarding requests waiting for an operator." {
            /// New pending requests.
            PendingCreated() => "pendingCreated",
        }
        counter "margo_onboarding_refused_total", "Onboarding requests answered with an error, by reason." {
            /// 400: malformed request, unusable certificate, bad digest.
            BadRequest(reason = "bad_request") => "badRequest",
            /// 401: signature.
            BadSignature(reason = "bad_signature") => "badSignature",
            /// 403: rejected, revoked, bad token.
            Forbidden(reason = "forbidden") => "forbidden",
            /// 404 on polls.
            NotFound(reason = "not_found") => "notFound",
            /// 429: rate limit.
            RateLimited(reason = "rate_limited") => "rateLimited",
            /// 503: pending cap.
            PendingFull(reason = "pending_full") => "pendingFull",
            /// 413: body too large.
            TooLarge(reason = "too_large") => "tooLarge",
            /// 500.
            InternalErrors(reason = "internal_error") => "internalErrors",
        }
    }
}

/// The HTTPS listener's values of [`OnboardingMetric`].
pub type OnboardingStats = Stats<OnboardingMetric>;

impl OnboardingMetric {
    /// The series counting a refusal answered with `status`.
    pub fn of_refusal(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::BadRequest,
            StatusCode::UNAUTHORIZED => Self::BadSignature,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::TOO_MANY_REQUESTS => Self::RateLimited,
            StatusCode::SERVICE_UNAVAILABLE => Self::PendingFull,
            StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge,
            _ => Self::InternalErrors,
        }
    }

    /// The series counting an identity handed out by `by`.
    pub fn of_approval(by: ApprovedBy) -> Self {
        match by {
            ApprovedBy::Token => Self::ApprovedToken,
            ApprovedBy::Allowlist => Self::ApprovedAllowlist,
            ApprovedBy::Auto => Self::ApprovedAuto,
            // An operator decides on the admin socket; over HTTPS the
            // device only fetches what was issued then.
            ApprovedBy::Earlier | ApprovedBy::KnownKey | ApprovedBy::Operator => {
                Self::ApprovedEarlier
            }
        }
    }
}
