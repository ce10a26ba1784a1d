//! Suspected clones (issue 12, finding 9): one identity in use from several
//! places at once. Two detectors feed the core: the embedded gateway
//! (switches between source networks, [`margo_broker::clones`]) and ingest
//! (uplink switching between agent stores, with either broker; see
//! `store/instances.rs`). Each suspicion is kept for the operator's view
//! (`margoctl status`, `clients show`), recorded once as a security event,
//! and lasts until the client is revoked or nothing renews it for a window.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use margo_schemas::ids::ClientId;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::Fleet;
use crate::status_view::{ClientStatus, CloneSuspicion};
use crate::store::{AuditEvent, InstanceClone};

/// Sources named per suspicion at most.
const MAX_SOURCES: usize = 8;

/// The suspicions in force; each lapses a window after its last renewal.
#[derive(Debug)]
pub(super) struct Suspicions {
    window_ms: u64,
    by_client: Mutex<HashMap<ClientId, CloneSuspicion>>,
}

impl Suspicions {
    pub(super) fn new(window: std::time::Duration) -> Self {
        Self {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            by_client: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClientId, CloneSuspicion>> {
        self.by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes `sources` for `client` at `now_ms`; true if the suspicion is new.
    fn note(&self, client: &ClientId, sources: &[String], now_ms: u64) -> bool {
        let mut all = self.lock();
        let lapsed = all
            .get(client)
            .is_some_and(|s| now_ms.saturating_sub(s.last_seen) > self.window_ms);
        if lapsed {
            all.remove(client);
        }
        let mut new = false;
        let entry = all.entry(client.clone()).or_insert_with(|| {
            new = true;
            CloneSuspicion {
                sources: Vec::new(),
                since: now_ms,
                last_seen: now_ms,
            }
        });
        entry.last_seen = now_ms;
        let mut merged: BTreeSet<String> = entry.sources.drain(..).collect();
        merged.extend(sources.iter().cloned());
        entry.sources = merged.into_iter().take(MAX_SOURCES).collect();
        new
    }

    /// `client`'s suspicion at `now_ms`, if it has not lapsed.
    pub(super) fn current(&self, client: &ClientId, now_ms: u64) -> Option<CloneSuspicion> {
        self.lock()
            .get(client)
            .filter(|s| now_ms.saturating_sub(s.last_seen) <= self.window_ms)
            .cloned()
    }

    /// Forgets `client`'s suspicion (it was revoked).
    pub(super) fn clear(&self, client: &ClientId) {
        self.lock().remove(client);
    }
}

/// Where a suspicion was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneOrigin {
    /// The embedded gateway: source networks taking the session in turns.
    Gateway,
    /// Uplink: messages from several agent stores (instance ids).
    Uplink,
}

impl Fleet {
    /// Notes a suspected clone of `client` seen from `sources`. A new
    /// suspicion is recorded as a security event (and, from uplink, logged
    /// at WARN: the gateway logs its own). Returns whether it was new.
    pub async fn note_clone(
        &self,
        client: &ClientId,
        sources: Vec<String>,
        origin: CloneOrigin,
    ) -> bool {
        let now = self.inner.store.clock().now_ms();
        if !self.clones.note(client, &sources, now) {
            return false;
        }
        let listed = sources.join(", ");
        if origin == CloneOrigin::Uplink {
            warn!(
                client_id = %client,
                sources = %listed,
                "identity {client} is in use from {} agent stores at once: cloned bundle? (revoke it and onboard each device anew)",
                sources.len()
            );
        }
        let event = AuditEvent {
            ts_ms: now,
            kind: "cloned-identity".to_string(),
            client_id: Some(client.to_string()),
            topic: String::new(),
            detail: format!(
                "identity in use from {} sources at once ({}): {listed}",
                sources.len(),
                match origin {
                    CloneOrigin::Gateway => "device gateway",
                    CloneOrigin::Uplink => "uplink",
                }
            ),
        };
        if let Err(error) = self
            .inner
            .store
            .run(move |s| s.record_audit(&[event]))
            .await
        {
            error!(%error, "could not record a security event");
        }
        true
    }

    /// Notes the suspicions an uplink batch found; returns how many are new.
    pub(super) async fn note_instance_clones(
        &self,
        found: impl IntoIterator<Item = (ClientId, InstanceClone)>,
    ) -> u64 {
        let mut new = 0;
        for (client, clone) in found {
            let sources = clone
                .instances
                .iter()
                .map(|i| format!("agent store {i}"))
                .collect();
            if self.note_clone(&client, sources, CloneOrigin::Uplink).await {
                new += 1;
            }
        }
        new
    }

    /// Adds the suspicions in force to `statuses`.
    pub(super) fn with_clones(&self, mut statuses: Vec<ClientStatus>) -> Vec<ClientStatus> {
        let now = self.inner.store.clock().now_ms();
        for status in &mut statuses {
            status.cloned = self.clones.current(&status.client_id, now);
        }
        statuses
    }

    /// Follows the embedded gateway's clone alerts until `shutdown` (none
    /// with an external broker: the uplink detector still works there).
    pub async fn follow_gateway_clones(self, shutdown: CancellationToken) {
        let Some(revocations) = self.inner.revocations.clone() else {
            return;
        };
        let mut alerts = revocations.clones().subscribe();
        loop {
            let alert = tokio::select! {
                () = shutdown.cancelled() => return,
                alert = alerts.recv() => alert,
            };
            match alert {
                Ok(alert) => {
                    let sources = alert
                        .sources
                        .iter()
                        .map(|a| format!("address {a}"))
                        .collect();
                    self.note_clone(&alert.client, sources, CloneOrigin::Gateway)
                        .await;
                }
                Err(RecvError::Lagged(skipped)) => {
                    warn!(skipped, "clone alerts skipped (the core fell behind)");
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspicion_merges_sources_and_lapses_after_a_quiet_window() {
        let s = Suspicions::new(std::time::Duration::from_secs(60));
        let dev = ClientId::new("dev").unwrap();
        assert!(s.note(&dev, &["address 192.0.2.1".into()], 1_000));
        assert!(!s.note(&dev, &["agent store x".into()], 30_000));
        let now = s.current(&dev, 50_000).expect("in force");
        assert_eq!(now.since, 1_000);
        assert_eq!(now.sources, vec!["address 192.0.2.1", "agent store x"]);
        assert!(s.current(&dev, 91_000).is_none(), "a quiet window");
        assert!(s.note(&dev, &[], 95_000), "new again after it lapsed");
        s.clear(&dev);
        assert!(s.current(&dev, 95_000).is_none());
    }
}
