//! Uplink batches from MQTT ingest (which verified them): stored in one
//! transaction with the security events they raise, then acknowledged
//! through the publisher. Acks go out only after the commit.

use std::sync::Arc;

use margo_schemas::topics;
use tracing::{error, warn};

use super::{Fleet, FleetResult};
use crate::log_limit::ClientWarnings;
use crate::store::{AuditEvent, BatchResult, IngestOutcome, UplinkItem};

/// What [`Fleet::ingest`] stored and asked for.
#[derive(Debug)]
pub struct Ingested {
    /// The batch, in order.
    pub items: Vec<UplinkItem>,
    /// What the store did with each item, and the commit's timings.
    pub result: BatchResult,
    /// Acks asked of the publisher (clients that asked for a sync get a
    /// full republication instead).
    pub acks_requested: u64,
    /// Clients the batch made suspected clones (several agent stores).
    pub new_clones: u64,
}

const UNASSIGNED: &str =
    "refused a status report for a deployment never assigned to the client (acknowledged, not stored)";
const CAPABILITIES: &str = "refused a capabilities report (acknowledged, not stored)";

/// The per-client rate limits of the refusal warnings (a device can send
/// as many refused reports as it likes; each is still audited).
#[derive(Debug)]
pub(super) struct RefusalWarnings {
    unassigned: ClientWarnings,
    capabilities: ClientWarnings,
}

impl Default for RefusalWarnings {
    fn default() -> Self {
        Self {
            unassigned: ClientWarnings::new(UNASSIGNED),
            capabilities: ClientWarnings::new(CAPABILITIES),
        }
    }
}

/// The security event of an item the store acknowledged but did not keep:
/// a status for a deployment never assigned to the client, or a refused
/// capabilities report. Logged here, within the client's share of
/// `warnings`.
fn refusal_event(
    item: &UplinkItem,
    outcome: &IngestOutcome,
    now_ms: u64,
    warnings: &RefusalWarnings,
) -> Option<AuditEvent> {
    let UplinkItem::Message(env) = item else {
        return None;
    };
    match outcome {
        IngestOutcome::NotAssigned(deployment) => {
            if warnings.unassigned.allow(env.client.as_str()) {
                warn!(
                    client_id = %env.client,
                    seq = env.seq,
                    deployment_id = %deployment,
                    "{UNASSIGNED}"
                );
            }
            Some(AuditEvent {
                ts_ms: now_ms,
                kind: "unassigned-deployment".to_string(),
                client_id: Some(env.client.to_string()),
                topic: topics::status(&env.client, deployment),
                detail: format!(
                    "status report for deployment {deployment}, never assigned to this client"
                ),
            })
        }
        IngestOutcome::Rejected(rejection) => {
            if warnings.capabilities.allow(env.client.as_str()) {
                warn!(
                    client_id = %env.client,
                    seq = env.seq,
                    kind = rejection.kind(),
                    error = %rejection,
                    "{CAPABILITIES}"
                );
            }
            Some(AuditEvent {
                ts_ms: now_ms,
                kind: rejection.kind().to_string(),
                client_id: Some(env.client.to_string()),
                topic: topics::capabilities(&env.client),
                detail: rejection.to_string().chars().take(512).collect(),
            })
        }
        IngestOutcome::Stored | IngestOutcome::Duplicate | IngestOutcome::Refused => None,
    }
}

impl Fleet {
    /// Stores a verified uplink batch in one transaction (deduplicated by
    /// client and seq), records `audit` (what verification refused) and
    /// the refusals the store finds as security events, then asks the
    /// publisher for each client's ack, or for everything retained when
    /// the client asked for a sync. On an error nothing is acked: the
    /// devices resend.
    pub async fn ingest(
        &self,
        items: Vec<UplinkItem>,
        mut audit: Vec<AuditEvent>,
    ) -> FleetResult<Ingested> {
        let warnings = Arc::clone(&self.refusals);
        let (items, result) =
            self.inner
                .store
                .run(move |store| {
                    let result = store.ingest(&items)?;
                    let now = store.clock().now_ms();
                    audit.extend(items.iter().zip(&result.outcomes).filter_map(
                        |(item, outcome)| refusal_event(item, outcome, now, &warnings),
                    ));
                    if let Err(error) = store.record_audit(&audit) {
                        error!(%error, "could not record security events");
                    }
                    Ok((items, result))
                })
                .await?;
        let new_clones = self.note_instance_clones(result.clones.clone()).await;
        for client in &result.sync {
            self.inner.downlink.republish(client);
        }
        let mut acks_requested = 0;
        for client in result.ack.iter().filter(|c| !result.sync.contains(*c)) {
            self.inner.downlink.ack(client);
            acks_requested += 1;
        }
        Ok(Ingested {
            items,
            result,
            acks_requested,
            new_clones,
        })
    }
}
