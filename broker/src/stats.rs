//! Gateway counters: the [`GatewayStats`] atomics (read by the broker's own
//! tests and the manager's `/v1/health`) and, at the same places, the
//! `metrics` facade under the names in [`names`] (docs/metrics.md). With no
//! recorder installed (the standalone broker) a facade call does nothing;
//! the manager installs a Prometheus recorder and serves `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::inspect::Violation;

/// Names of the gateway's metrics.
pub mod names {
    /// Counter: TCP connections accepted (before any check).
    pub const CONNECTIONS_ACCEPTED: &str = "margo_gateway_connections_accepted_total";
    /// Counter, label `outcome` = `ok` | `failed` | `timeout`: TLS handshakes.
    pub const HANDSHAKES: &str = "margo_gateway_handshakes_total";
    /// Counter, label `reason` = `pending_cap` | `per_ip_cap` | `revoked` |
    /// `bad_identity`: connections refused before they were relayed.
    pub const CONNECTIONS_REFUSED: &str = "margo_gateway_connections_refused_total";
    /// Counter, label `reason` (see [`crate::Violation::kind`]): connections
    /// closed for a protocol or topic-rule violation (refused subscribe,
    /// publish, will, ...).
    pub const VIOLATIONS: &str = "margo_gateway_violations_total";
    /// Counter, label `direction` = `up` (device → broker) | `down`: bytes relayed.
    pub const BYTES: &str = "margo_gateway_bytes_total";
    /// Counter: pauses imposed on a device over its rate (`[gateway.device_rate]`).
    pub const THROTTLED: &str = "margo_gateway_throttled_total";
    /// Gauge: connections currently relayed to the broker.
    pub const LIVE_CONNECTIONS: &str = "margo_gateway_live_connections";
}

/// Why the gateway closed a connection before relaying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The cap on pending handshakes in total was reached.
    PendingCap,
    /// The cap on pending handshakes from one source address was reached.
    PerIpCap,
    /// The certificate's identity is revoked.
    Revoked,
    /// The certificate CN is not a valid client id.
    BadIdentity,
}

impl Refusal {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::PendingCap => "pending_cap",
            Self::PerIpCap => "per_ip_cap",
            Self::Revoked => "revoked",
            Self::BadIdentity => "bad_identity",
        }
    }
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Completed with a verified client certificate.
    Ok,
    /// Failed (no or untrusted certificate, bad protocol, I/O).
    Failed,
    /// Aborted at the handshake deadline.
    Timeout,
}

impl HandshakeOutcome {
    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }
}

/// Counters of everything the gateway accepted, refused or dropped.
///
/// All fields are monotonic except `live_connections`, which is a gauge.
/// Read them with [`GatewayStats::snapshot`] or directly with `load`.
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// TCP connections accepted (before any check).
    pub accepted: AtomicU64,
    /// TLS handshakes completed with a verified client certificate.
    pub handshakes_ok: AtomicU64,
    /// TLS handshakes that failed (no or untrusted certificate, bad protocol, I/O).
    pub handshake_failed: AtomicU64,
    /// TLS handshakes aborted at the handshake deadline.
    pub handshake_timeout: AtomicU64,
    /// Connections closed at once because a pending-handshake cap was reached.
    pub refused_pending_cap: AtomicU64,
    /// Connections refused because their identity is revoked.
    pub refused_revoked: AtomicU64,
    /// Connections refused because the certificate CN is not a valid client id.
    pub refused_bad_identity: AtomicU64,
    /// Connections closed for a protocol or topic-rule violation.
    pub acl_violations: AtomicU64,
    /// Bytes forwarded device → broker.
    pub bytes_up: AtomicU64,
    /// Bytes forwarded broker → device.
    pub bytes_down: AtomicU64,
    /// Connections currently relayed to the broker.
    pub live_connections: AtomicU64,
    /// Pauses imposed on a device over its rate.
    pub throttled: AtomicU64,
}

/// A plain copy of [`GatewayStats`] at one instant.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayStatsSnapshot {
    pub accepted: u64,
    pub handshakes_ok: u64,
    pub handshake_failed: u64,
    pub handshake_timeout: u64,
    pub refused_pending_cap: u64,
    pub refused_revoked: u64,
    pub refused_bad_identity: u64,
    pub acl_violations: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub live_connections: u64,
    pub throttled: u64,
}

impl GatewayStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> GatewayStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GatewayStatsSnapshot {
            accepted: get(&self.accepted),
            handshakes_ok: get(&self.handshakes_ok),
            handshake_failed: get(&self.handshake_failed),
            handshake_timeout: get(&self.handshake_timeout),
            refused_pending_cap: get(&self.refused_pending_cap),
            refused_revoked: get(&self.refused_revoked),
            refused_bad_identity: get(&self.refused_bad_identity),
            acl_violations: get(&self.acl_violations),
            bytes_up: get(&self.bytes_up),
            bytes_down: get(&self.bytes_down),
            live_connections: get(&self.live_connections),
            throttled: get(&self.throttled),
        }
    }

    /// Counts an accepted TCP connection.
    pub(crate) fn accepted(&self) {
        bump(&self.accepted);
        metrics::counter!(names::CONNECTIONS_ACCEPTED).increment(1);
    }

    /// Counts a finished TLS handshake.
    pub(crate) fn handshake(&self, outcome: HandshakeOutcome) {
        bump(match outcome {
            HandshakeOutcome::Ok => &self.handshakes_ok,
            HandshakeOutcome::Failed => &self.handshake_failed,
            HandshakeOutcome::Timeout => &self.handshake_timeout,
        });
        metrics::counter!(names::HANDSHAKES, "outcome" => outcome.label()).increment(1);
    }

    /// Counts a connection refused before it was relayed.
    pub(crate) fn refused(&self, refusal: Refusal) {
        bump(match refusal {
            Refusal::PendingCap | Refusal::PerIpCap => &self.refused_pending_cap,
            Refusal::Revoked => &self.refused_revoked,
            Refusal::BadIdentity => &self.refused_bad_identity,
        });
        metrics::counter!(names::CONNECTIONS_REFUSED, "reason" => refusal.label()).increment(1);
    }

    /// Counts a connection closed for `violation`.
    pub(crate) fn violation(&self, violation: &Violation) {
        bump(&self.acl_violations);
        metrics::counter!(names::VIOLATIONS, "reason" => violation.kind()).increment(1);
    }

    /// Counts bytes forwarded device → broker.
    pub(crate) fn bytes_up(&self, n: usize) {
        let n = to_u64(n);
        self.bytes_up.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(names::BYTES, "direction" => "up").increment(n);
    }

    /// Counts bytes forwarded broker → device.
    pub(crate) fn bytes_down(&self, n: usize) {
        let n = to_u64(n);
        self.bytes_down.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(names::BYTES, "direction" => "down").increment(n);
    }

    /// Counts a pause imposed on a device over its rate.
    pub(crate) fn throttled(&self) {
        bump(&self.throttled);
        metrics::counter!(names::THROTTLED).increment(1);
    }

    /// A connection starts being relayed.
    pub(crate) fn live_opened(&self) {
        bump(&self.live_connections);
        metrics::gauge!(names::LIVE_CONNECTIONS).increment(1.0);
    }

    /// A relayed connection ended.
    pub(crate) fn live_closed(&self) {
        self.live_connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(names::LIVE_CONNECTIONS).decrement(1.0);
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
