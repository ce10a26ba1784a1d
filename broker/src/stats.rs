//! Gateway counters, declared once in [`GatewayMetric`] (margo-metrics):
//! kept per gateway in [`GatewayStats`] (read by the broker's own tests and
//! the manager's `/v1/health`) and mirrored into the `metrics` facade
//! (docs/metrics.md). With no recorder installed (the standalone broker) a
//! facade call does nothing; the manager installs a Prometheus recorder and
//! serves `GET /metrics`.

use margo_metrics::{metric_set, MetricSet, Stats};

use crate::inspect::Violation;

metric_set! {
    /// Everything the gateway accepted, refused or dropped.
    pub enum GatewayMetric {
        counter "margo_gateway_connections_accepted_total",
            "TCP connections accepted on the device port, before any check." {
            /// TCP connections accepted.
            Accepted() => "accepted",
        }
        counter "margo_gateway_handshakes_total", "TLS handshakes, by outcome." {
            /// Completed with a verified client certificate.
            HandshakesOk(outcome = "ok") => "handshakesOk",
            /// Failed (no or untrusted certificate, bad protocol, I/O).
            HandshakeFailed(outcome = "failed") => "handshakeFailed",
            /// Aborted at the handshake deadline.
            HandshakeTimeout(outcome = "timeout") => "handshakeTimeout",
        }
        counter "margo_gateway_connections_refused_total",
            "Connections closed before they were relayed, by reason." {
            /// The cap on pending handshakes in total was reached.
            RefusedPendingCap(reason = "pending_cap") => "refusedPendingCap",
            /// The cap on pending handshakes from one source address was reached.
            RefusedPerIpCap(reason = "per_ip_cap") => "refusedPerIpCap",
            /// The certificate's identity is revoked.
            RefusedRevoked(reason = "revoked") => "refusedRevoked",
            /// The certificate CN is not a valid client id.
            RefusedBadIdentity(reason = "bad_identity") => "refusedBadIdentity",
            /// The identity already holds `max_connections_per_identity` connections.
            RefusedIdentityCap(reason = "identity_cap") => "refusedIdentityCap",
            /// Near the open-file limit, from a source network with no recent session.
            RefusedFdReserve(reason = "fd_reserve") => "refusedFdReserve",
        }
        counter "margo_gateway_violations_total",
            "Connections closed for a protocol or topic-rule violation, by reason." {
            /// A SUBSCRIBE outside the device's tree.
            ViolationSubscribe(reason = "subscribe") => "violationSubscribe",
            /// A PUBLISH outside the device's tree.
            ViolationPublish(reason = "publish") => "violationPublish",
            /// A last will outside the device's tree.
            ViolationWill(reason = "will") => "violationWill",
            /// A retained publish or will other than the device's own presence.
            ViolationRetain(reason = "retain") => "violationRetain",
            /// The first packet was not CONNECT.
            ViolationNotConnect(reason = "not_connect") => "violationNotConnect",
            /// A second CONNECT.
            ViolationSecondConnect(reason = "second_connect") => "violationSecondConnect",
            /// Not MQTT 3.1.1.
            ViolationProtocol(reason = "protocol") => "violationProtocol",
            /// A broker-to-client packet from the client.
            ViolationServerOnly(reason = "server_only") => "violationServerOnly",
            /// A malformed or oversized packet.
            ViolationMalformed(reason = "malformed") => "violationMalformed",
        }
        counter "margo_gateway_bytes_total", "Bytes relayed, by direction." {
            /// Device → broker.
            BytesUp(direction = "up") => "bytesUp",
            /// Broker → device.
            BytesDown(direction = "down") => "bytesDown",
        }
        counter "margo_gateway_throttled_total",
            "Pauses imposed on a device over its message or byte rate ([gateway.device_rate])." {
            /// A device's reading paused until it is back within its rate.
            Throttled() => "throttled",
        }
        counter "margo_gateway_clones_suspected_total",
            "Identities seen switching between source networks in turns (a cloned bundle?), once per identity per [gateway.clone_detection] window." {
            /// An identity reached the switches of [gateway.clone_detection] within its window.
            ClonesSuspected() => "clonesSuspected",
        }
        gauge "margo_gateway_live_connections", "Connections currently relayed to the broker." {
            /// Connections relayed now.
            LiveConnections() => "liveConnections",
        }
        counter "margo_observer_connections_total",
            "Connections to the operator's read-only MQTT listener ([mqtt] listen), by outcome." {
            /// Accepted (relayed to the broker once its CONNECT arrives).
            ObserverAccepted(outcome = "accepted") => "observerAccepted",
            /// Closed at once: the listener's connection cap was reached.
            ObserverRefusedCap(outcome = "refused_cap") => "observerRefusedCap",
            /// Closed for a write (PUBLISH, will) or a protocol violation.
            ObserverViolation(outcome = "violation") => "observerViolation",
        }
    }
}

impl GatewayMetric {
    /// The series counting `violation`.
    pub fn of_violation(violation: &Violation) -> Self {
        match violation {
            Violation::NotConnect(_) => Self::ViolationNotConnect,
            Violation::SecondConnect => Self::ViolationSecondConnect,
            Violation::Protocol(_) => Self::ViolationProtocol,
            Violation::WillTopic(_) => Self::ViolationWill,
            Violation::Subscribe(_) => Self::ViolationSubscribe,
            Violation::Publish(_) => Self::ViolationPublish,
            Violation::Retain(_) => Self::ViolationRetain,
            Violation::ServerOnly(_) => Self::ViolationServerOnly,
            Violation::Malformed(_) => Self::ViolationMalformed,
            // Only the observer policy refuses writes as such.
            Violation::ReadOnly(_) => Self::ObserverViolation,
        }
    }

    /// Whether this series counts a violation.
    pub fn is_violation(self) -> bool {
        self.metric().name == "margo_gateway_violations_total"
    }
}

/// The gateway's values of [`GatewayMetric`].
pub type GatewayStats = Stats<GatewayMetric>;

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
    /// The identity already holds its cap of connections.
    IdentityCap,
    /// Near the open-file limit, from a source network with no recent session.
    FdReserve,
}

impl Refusal {
    /// The series counting it.
    pub fn metric(self) -> GatewayMetric {
        match self {
            Self::PendingCap => GatewayMetric::RefusedPendingCap,
            Self::PerIpCap => GatewayMetric::RefusedPerIpCap,
            Self::Revoked => GatewayMetric::RefusedRevoked,
            Self::BadIdentity => GatewayMetric::RefusedBadIdentity,
            Self::IdentityCap => GatewayMetric::RefusedIdentityCap,
            Self::FdReserve => GatewayMetric::RefusedFdReserve,
        }
    }

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        self.metric().metric().labels[0].1
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
    /// The series counting it.
    pub fn metric(self) -> GatewayMetric {
        match self {
            Self::Ok => GatewayMetric::HandshakesOk,
            Self::Failed => GatewayMetric::HandshakeFailed,
            Self::Timeout => GatewayMetric::HandshakeTimeout,
        }
    }
}

/// Connections closed for any violation (the sum over every reason).
pub fn violations(stats: &GatewayStats) -> u64 {
    stats.sum(GatewayMetric::is_violation)
}

pub(crate) fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_labels_are_the_declared_ones() {
        assert_eq!(Refusal::PerIpCap.label(), "per_ip_cap");
        assert_eq!(Refusal::Revoked.label(), "revoked");
        let violations = GatewayMetric::ALL
            .iter()
            .filter(|m| m.is_violation())
            .count();
        assert_eq!(violations, 9);
    }
}
