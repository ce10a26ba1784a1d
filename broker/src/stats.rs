//! Gateway counters.

use std::sync::atomic::{AtomicU64, Ordering};

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
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}
