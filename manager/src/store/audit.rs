//! Security events: a bounded log and per-kind counters.

use std::collections::BTreeMap;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{decode, encode, Result, Store};

/// sequence → CBOR [`AuditEvent`].
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// audit kind → count.
const AUDIT_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("audit_counts");

/// Creates the tables of this family (at open).
pub(super) fn open_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(AUDIT)?;
    txn.open_table(AUDIT_COUNTS)?;
    Ok(())
}

/// Most audit events kept (the oldest are dropped; counters keep counting).
pub const MAX_AUDIT_EVENTS: u64 = 10_000;

/// A security event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// When (ms since epoch).
    pub ts_ms: u64,
    /// Short kind, e.g. `bad-signature`, `unknown-client`.
    pub kind: String,
    /// The client the message claimed to come from, if known.
    pub client_id: Option<String>,
    /// The topic it arrived on.
    pub topic: String,
    /// What was wrong.
    pub detail: String,
}

impl Store {
    /// Appends security events (keeping at most [`MAX_AUDIT_EVENTS`]) and bumps their counters.
    pub fn record_audit(&self, events: &[AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut audit = txn.open_table(AUDIT)?;
            let mut counts = txn.open_table(AUDIT_COUNTS)?;
            let first = audit.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
            for (key, event) in (first..).zip(events) {
                audit.insert(key, encode("audit", event)?.as_slice())?;
                let n = counts
                    .get(event.kind.as_str())?
                    .map(|v| v.value())
                    .unwrap_or(0);
                counts.insert(event.kind.as_str(), n + 1)?;
            }
            while audit.len()? > MAX_AUDIT_EVENTS {
                if audit.pop_first()?.is_none() {
                    break;
                }
            }
        }
        self.commit(txn, "write security events to")?;
        Ok(())
    }

    /// The most recent `limit` audit events, oldest first, and the counters by kind.
    pub fn audit(&self, limit: usize) -> Result<(Vec<AuditEvent>, BTreeMap<String, u64>)> {
        let txn = self.begin_read()?;
        let audit = txn.open_table(AUDIT)?;
        let mut events = Vec::new();
        for row in audit.iter()?.rev().take(limit) {
            let (_, v) = row?;
            events.push(decode("audit", v.value())?);
        }
        events.reverse();
        let mut counts = BTreeMap::new();
        for row in txn.open_table(AUDIT_COUNTS)?.iter()? {
            let (k, v) = row?;
            counts.insert(k.value().to_string(), v.value());
        }
        Ok((events, counts))
    }
}
