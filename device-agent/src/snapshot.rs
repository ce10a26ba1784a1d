//! The agent's observable state, published on a `watch` channel for the
//! demo, the fleet simulator and tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use margo_schemas::digest::Digest;
use margo_schemas::status::DeploymentState;
use serde::Serialize;
use tokio::sync::watch;

use crate::stats::{AgentStats, StatsSnapshot};

/// Where the MQTT connection is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionStatus {
    /// Not started yet.
    #[default]
    Idle,
    /// Connecting (TCP, TLS, CONNECT).
    Connecting,
    /// ConnAck received.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
    /// The gateway refused this device's certificate (revoked): no normal
    /// reconnects, only a slow retry every `reconnect_max`; nothing is applied.
    Revoked,
    /// The schedule says not now (outside the polling period, or between
    /// `per-check` checks): no connection attempts until `next_contact_ms`.
    Scheduled,
    /// Inside a planned downtime window: no connection attempts, nothing sent.
    Downtime,
    /// Shut down.
    Stopped,
}

/// One deployment as the agent holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentView {
    /// The last reported overall state.
    pub state: DeploymentState,
    /// The version whose components are running.
    pub running: Option<Digest>,
    /// The error of the last failed action.
    pub error: Option<String>,
}

/// A point-in-time view of the agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentSnapshot {
    pub client_id: String,
    pub connection: ConnectionStatus,
    /// `connection == Connected`.
    pub connected: bool,
    /// While `Scheduled` or `Downtime`: when the agent next communicates
    /// (wall-clock ms; None: not under the schedule in force).
    pub next_contact_ms: Option<u64>,
    /// The newest manifest accepted (all content present).
    pub accepted_manifest_version: u64,
    /// The newest manifest fully applied.
    pub adopted_manifest_version: u64,
    pub deployments: BTreeMap<String, DeploymentView>,
    pub outbox_len: usize,
    pub outbox_bytes: usize,
    /// HTTP transport: why uplink reports are being held (the manager
    /// answered 401 or 404), while that lasts; `None` when they go through.
    pub uplink_error: Option<String>,
    pub counters: StatsSnapshot,
}

/// Publisher side of the snapshot channel; cheap to clone.
#[derive(Debug, Clone)]
pub struct Snapshots {
    tx: Arc<watch::Sender<AgentSnapshot>>,
    stats: Arc<AgentStats>,
}

impl Snapshots {
    /// A channel starting at `initial`.
    pub fn new(initial: AgentSnapshot, stats: Arc<AgentStats>) -> Self {
        let (tx, _) = watch::channel(initial);
        Self {
            tx: Arc::new(tx),
            stats,
        }
    }

    /// A new receiver.
    pub fn subscribe(&self) -> watch::Receiver<AgentSnapshot> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn current(&self) -> AgentSnapshot {
        self.tx.borrow().clone()
    }

    /// Changes the snapshot (and refreshes the counters) and notifies receivers.
    pub fn update(&self, change: impl FnOnce(&mut AgentSnapshot)) {
        let counters = self.stats.snapshot();
        self.tx.send_modify(|s| {
            change(s);
            s.counters = counters;
        });
    }
}
