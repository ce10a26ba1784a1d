//! Counters of the HTTPS listener: its connections ([`HttpStats`]) and the
//! onboarding requests it answers ([`OnboardingStats`]). The listener
//! (`http`) counts; the admin API's `/v1/health` reports them, so they live
//! apart from both.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::telemetry::Counter;

/// Connection-level counters of the HTTPS listener.
#[derive(Debug)]
pub struct HttpStats {
    /// Sockets accepted.
    pub accepted: Counter,
    /// Closed at once: `max_connections` reached.
    pub refused_connection_cap: Counter,
    /// TLS handshakes that failed.
    pub handshake_failed: Counter,
    /// TLS handshakes that hit the deadline.
    pub handshake_timeout: Counter,
    /// Requests that hit the request deadline.
    pub request_timeout: Counter,
}

impl Default for HttpStats {
    fn default() -> Self {
        Self {
            accepted: Counter::new("margo_https_connections_accepted_total", &[]),
            refused_connection_cap: Counter::new(
                "margo_https_connections_refused_total",
                &[("reason", "connection_cap")],
            ),
            handshake_failed: Counter::new(
                "margo_https_handshakes_failed_total",
                &[("reason", "failed")],
            ),
            handshake_timeout: Counter::new(
                "margo_https_handshakes_failed_total",
                &[("reason", "timeout")],
            ),
            request_timeout: Counter::new("margo_https_request_timeouts_total", &[]),
        }
    }
}

/// A point-in-time copy of [`HttpStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct HttpStatsSnapshot {
    pub accepted: u64,
    pub refused_connection_cap: u64,
    pub handshake_failed: u64,
    pub handshake_timeout: u64,
    pub request_timeout: u64,
}

impl HttpStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> HttpStatsSnapshot {
        let l = |a: &Counter| a.load(Ordering::Relaxed);
        HttpStatsSnapshot {
            accepted: l(&self.accepted),
            refused_connection_cap: l(&self.refused_connection_cap),
            handshake_failed: l(&self.handshake_failed),
            handshake_timeout: l(&self.handshake_timeout),
            request_timeout: l(&self.request_timeout),
        }
    }
}

/// Onboarding counters.
#[derive(Debug)]
pub struct OnboardingStats {
    /// `POST /api/v1/onboarding` received.
    pub requests: Counter,
    /// Polls received.
    pub polls: Counter,
    /// CA certificate downloads.
    pub certificate: Counter,
    /// Approved by an enrollment token.
    pub approved_token: Counter,
    /// Approved by the allow-list.
    pub approved_allowlist: Counter,
    /// Approved by `[onboarding] approval = "auto"`.
    pub approved_auto: Counter,
    /// Answered with an identity already issued (approved earlier or known key).
    pub approved_earlier: Counter,
    /// New pending requests.
    pub pending_created: Counter,
    /// 400: malformed request, unusable certificate, bad digest.
    pub bad_request: Counter,
    /// 401: signature.
    pub bad_signature: Counter,
    /// 403: rejected, revoked, bad token.
    pub forbidden: Counter,
    /// 404 on polls.
    pub not_found: Counter,
    /// 429: rate limit.
    pub rate_limited: Counter,
    /// 503: pending cap.
    pub pending_full: Counter,
    /// 413: body too large.
    pub too_large: Counter,
    /// 500.
    pub internal_errors: Counter,
}

impl Default for OnboardingStats {
    fn default() -> Self {
        Self {
            requests: Counter::new(
                "margo_onboarding_requests_total",
                &[("endpoint", "request")],
            ),
            polls: Counter::new("margo_onboarding_requests_total", &[("endpoint", "poll")]),
            certificate: Counter::new(
                "margo_onboarding_requests_total",
                &[("endpoint", "certificate")],
            ),
            approved_token: Counter::new("margo_onboarding_approved_total", &[("by", "token")]),
            approved_allowlist: Counter::new(
                "margo_onboarding_approved_total",
                &[("by", "allowlist")],
            ),
            approved_auto: Counter::new("margo_onboarding_approved_total", &[("by", "auto")]),
            approved_earlier: Counter::new("margo_onboarding_approved_total", &[("by", "earlier")]),
            pending_created: Counter::new("margo_onboarding_pending_created_total", &[]),
            bad_request: Counter::new(
                "margo_onboarding_refused_total",
                &[("reason", "bad_request")],
            ),
            bad_signature: Counter::new(
                "margo_onboarding_refused_total",
                &[("reason", "bad_signature")],
            ),
            forbidden: Counter::new("margo_onboarding_refused_total", &[("reason", "forbidden")]),
            not_found: Counter::new("margo_onboarding_refused_total", &[("reason", "not_found")]),
            rate_limited: Counter::new(
                "margo_onboarding_refused_total",
                &[("reason", "rate_limited")],
            ),
            pending_full: Counter::new(
                "margo_onboarding_refused_total",
                &[("reason", "pending_full")],
            ),
            too_large: Counter::new("margo_onboarding_refused_total", &[("reason", "too_large")]),
            internal_errors: Counter::new(
                "margo_onboarding_refused_total",
                &[("reason", "internal_error")],
            ),
        }
    }
}

/// A point-in-time copy of [`OnboardingStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OnboardingStatsSnapshot {
    pub requests: u64,
    pub polls: u64,
    pub certificate: u64,
    pub approved_token: u64,
    pub approved_allowlist: u64,
    pub approved_auto: u64,
    pub approved_earlier: u64,
    pub pending_created: u64,
    pub bad_request: u64,
    pub bad_signature: u64,
    pub forbidden: u64,
    pub not_found: u64,
    pub rate_limited: u64,
    pub pending_full: u64,
    pub too_large: u64,
    pub internal_errors: u64,
}

impl OnboardingStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> OnboardingStatsSnapshot {
        let l = |a: &Counter| a.load(Ordering::Relaxed);
        OnboardingStatsSnapshot {
            requests: l(&self.requests),
            polls: l(&self.polls),
            certificate: l(&self.certificate),
            approved_token: l(&self.approved_token),
            approved_allowlist: l(&self.approved_allowlist),
            approved_auto: l(&self.approved_auto),
            approved_earlier: l(&self.approved_earlier),
            pending_created: l(&self.pending_created),
            bad_request: l(&self.bad_request),
            bad_signature: l(&self.bad_signature),
            forbidden: l(&self.forbidden),
            not_found: l(&self.not_found),
            rate_limited: l(&self.rate_limited),
            pending_full: l(&self.pending_full),
            too_large: l(&self.too_large),
            internal_errors: l(&self.internal_errors),
        }
    }
}
