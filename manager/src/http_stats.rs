//! Counters of the HTTPS listener: its connections ([`HttpStats`]) and the
//! onboarding requests it answers ([`OnboardingStats`]). The listener
//! (`http`) counts; the admin API's `/v1/health` reports them, so they live
//! apart from both.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Connection-level counters of the HTTPS listener.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Sockets accepted.
    pub accepted: AtomicU64,
    /// Closed at once: `max_connections` reached.
    pub refused_connection_cap: AtomicU64,
    /// TLS handshakes that failed.
    pub handshake_failed: AtomicU64,
    /// TLS handshakes that hit the deadline.
    pub handshake_timeout: AtomicU64,
    /// Requests that hit the request deadline.
    pub request_timeout: AtomicU64,
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
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
#[derive(Debug, Default)]
pub struct OnboardingStats {
    /// `POST /api/v1/onboarding` received.
    pub requests: AtomicU64,
    /// Polls received.
    pub polls: AtomicU64,
    /// CA certificate downloads.
    pub certificate: AtomicU64,
    /// Approved by an enrollment token.
    pub approved_token: AtomicU64,
    /// Approved by the allow-list.
    pub approved_allowlist: AtomicU64,
    /// Approved by `[onboarding] approval = "auto"`.
    pub approved_auto: AtomicU64,
    /// Answered with an identity already issued (approved earlier or known key).
    pub approved_earlier: AtomicU64,
    /// New pending requests.
    pub pending_created: AtomicU64,
    /// 400: malformed request, unusable certificate, bad digest.
    pub bad_request: AtomicU64,
    /// 401: signature.
    pub bad_signature: AtomicU64,
    /// 403: rejected, revoked, bad token.
    pub forbidden: AtomicU64,
    /// 404 on polls.
    pub not_found: AtomicU64,
    /// 429: rate limit.
    pub rate_limited: AtomicU64,
    /// 503: pending cap.
    pub pending_full: AtomicU64,
    /// 413: body too large.
    pub too_large: AtomicU64,
    /// 500.
    pub internal_errors: AtomicU64,
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
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
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
