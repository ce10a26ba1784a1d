//! Counters for everything the agent receives, rejects, drops or retries.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters (atomics), shared by the agent's tasks.
        #[derive(Debug, Default)]
        pub struct AgentStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`AgentStats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl AgentStats {
            /// Copies every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    /// Downlink publishes received.
    received,
    /// Downlink messages dropped: bad signature, malformed, wrong client/topic, oversized.
    rejected,
    /// Security events: rollback/replay of manifests, forged content, id mismatches.
    security_events,
    /// Deployment documents verified and cached.
    deployments_cached,
    /// Manifests accepted.
    manifests_accepted,
    /// Uplink messages enqueued.
    enqueued,
    /// Uplink publishes handed to the MQTT client (first sends and resends).
    published,
    /// Uplink resends (after reconnect or ack timeout).
    resent,
    /// Uplink entries removed by a manager ack.
    acked,
    /// Superseded statuses dropped because the outbox was full.
    dropped_superseded,
    /// Other entries dropped because the outbox was full.
    dropped_other,
    /// `sync` requests enqueued.
    syncs,
    /// Successful MQTT connections.
    connects,
    /// Failed connection attempts and lost connections.
    connection_errors,
    /// Deployment actions that failed.
    apply_failures,
    /// Reconcile passes retried after a failure.
    retries,
    /// Connection attempts refused because this device's certificate was revoked.
    revoked_refusals,
    /// Capabilities reports enqueued (one per device, children included).
    capabilities_sent,
    /// HTTP transport: manifest checks made (each a conditional GET).
    http_checks,
    /// HTTP transport: checks answered `304 Not Modified`.
    http_not_modified,
    /// HTTP transport: bundles downloaded.
    http_bundles,
    /// HTTP transport: single deployment documents downloaded.
    http_documents,
    /// HTTP transport: checks or uplink requests that failed (network, 5xx, bad answers).
    http_errors,
    /// HTTP transport: uplink entries the manager refused for good (4xx other than 409), dropped.
    uplink_refused,
    /// HTTP transport: `state`/`sync` entries skipped (no HTTP form).
    uplink_skipped,
    /// HTTP transport: uplink attempts the manager answered 401 or 404
    /// (kept in the outbox and retried with backoff).
    uplink_held,
    /// Deployment documents judged unacceptable (digest right, content not
    /// usable): each fails alone with a `failed` status.
    deployments_refused,
);

impl AgentStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
