//! Ingest's counters and timings, read by `/v1/health` on the admin socket
//! and exported as metrics (`docs/metrics.md`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use margo_schemas::cose::CoseError;
use margo_schemas::messages::MessageError;
use serde::{Deserialize, Serialize};

use super::IngestError;
use crate::histogram::{Histogram, HistogramSnapshot, MICROS_BOUNDS, SIZE_BOUNDS};
use crate::telemetry::Counter;

/// Counter, label `kind` (the message kind, e.g. `status`): uplink
/// messages stored for the first time, by kind.
pub const STORED_BY_KIND: &str = "margo_ingest_stored_total";

/// Ingest counters (also exported as metrics, `docs/metrics.md`).
#[derive(Debug)]
pub struct IngestStats {
    /// Publishes received.
    pub received: Counter,
    /// Messages stored for the first time.
    pub stored: Counter,
    /// Duplicates (already stored or settled; acked again).
    pub duplicates: Counter,
    /// Presence updates.
    pub presence: Counter,
    /// Batches committed.
    pub batches: Counter,
    /// Rejected: bad signature.
    pub bad_signature: Counter,
    /// Rejected: malformed CBOR/COSE or presence.
    pub malformed: Counter,
    /// Rejected: unknown client.
    pub unknown_client: Counter,
    /// Rejected: revoked client.
    pub revoked: Counter,
    /// Rejected: wrong topic, wrong client, or not uplink.
    pub wrong_topic: Counter,
    /// Rejected: oversized.
    pub oversized: Counter,
    /// Rejected: unknown kind or protocol version.
    pub unknown_kind: Counter,
    /// Rejected: invalid body (status, seq).
    pub invalid_body: Counter,
    /// Capabilities refused as invalid (settled and acked, not stored).
    pub invalid_capabilities: Counter,
    /// Capabilities of a gateway child before its parent's (settled and acked, not stored).
    pub child_before_parent: Counter,
    /// Status reports for a deployment never assigned to the client
    /// (settled and acked, not stored).
    pub unassigned_status: Counter,
    /// Batches that failed to commit (their messages are not acked; devices resend).
    pub store_errors: Counter,
    /// Where the time of committed batches goes.
    pub timing: IngestTiming,
}

impl Default for IngestStats {
    fn default() -> Self {
        Self {
            received: Counter::new("margo_ingest_received_total", &[]),
            stored: Counter::new("margo_ingest_messages_total", &[("outcome", "stored")]),
            duplicates: Counter::new("margo_ingest_messages_total", &[("outcome", "duplicate")]),
            presence: Counter::new("margo_ingest_messages_total", &[("outcome", "presence")]),
            batches: Counter::new("margo_ingest_batches_total", &[]),
            bad_signature: Counter::new(
                "margo_ingest_rejected_total",
                &[("reason", "bad_signature")],
            ),
            malformed: Counter::new("margo_ingest_rejected_total", &[("reason", "malformed")]),
            unknown_client: Counter::new(
                "margo_ingest_rejected_total",
                &[("reason", "unknown_client")],
            ),
            revoked: Counter::new("margo_ingest_rejected_total", &[("reason", "revoked")]),
            wrong_topic: Counter::new("margo_ingest_rejected_total", &[("reason", "wrong_topic")]),
            oversized: Counter::new("margo_ingest_rejected_total", &[("reason", "oversized")]),
            unknown_kind: Counter::new(
                "margo_ingest_rejected_total",
                &[("reason", "unknown_kind")],
            ),
            invalid_body: Counter::new(
                "margo_ingest_rejected_total",
                &[("reason", "invalid_body")],
            ),
            invalid_capabilities: Counter::new(
                "margo_ingest_settled_unstored_total",
                &[("reason", "invalid_capabilities")],
            ),
            child_before_parent: Counter::new(
                "margo_ingest_settled_unstored_total",
                &[("reason", "child_before_parent")],
            ),
            unassigned_status: Counter::new(
                "margo_ingest_settled_unstored_total",
                &[("reason", "unassigned_status")],
            ),
            store_errors: Counter::new("margo_ingest_store_errors_total", &[]),
            timing: IngestTiming::default(),
        }
    }
}

/// Distributions and time totals of committed ingest batches: what the
/// uplink ingest benchmark reads (through `GET /v1/health`) instead of
/// guessing from outside.
#[derive(Debug)]
pub struct IngestTiming {
    /// Publishes per committed batch (received, before verification).
    pub batch_size: Histogram,
    /// redb commit of a batch (default durability: data written and fsynced), µs.
    pub commit_micros: Histogram,
    /// First publish of a batch received → its acks requested from the publisher, µs.
    pub batch_micros: Histogram,
    /// Total time verifying (topic, size, key lookup, COSE signature, decode, validation), ns.
    pub verify_nanos: AtomicU64,
    /// Total time writing batches into their transactions (before the commit), ns.
    pub write_nanos: AtomicU64,
    /// Acks requested from the publisher (one per client per batch).
    pub acks_requested: AtomicU64,
}

impl Default for IngestTiming {
    fn default() -> Self {
        Self {
            batch_size: Histogram::new(SIZE_BOUNDS),
            commit_micros: Histogram::new(MICROS_BOUNDS),
            batch_micros: Histogram::new(MICROS_BOUNDS),
            verify_nanos: AtomicU64::new(0),
            write_nanos: AtomicU64::new(0),
            acks_requested: AtomicU64::new(0),
        }
    }
}

/// A point-in-time copy of [`IngestTiming`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestTimingSnapshot {
    /// Publishes per committed batch.
    pub batch_size: HistogramSnapshot,
    /// redb commit latency, µs.
    pub commit_micros: HistogramSnapshot,
    /// First publish received → acks requested, µs.
    pub batch_micros: HistogramSnapshot,
    /// Total verification time, ns.
    pub verify_nanos: u64,
    /// Total transaction write time before commits, ns.
    pub write_nanos: u64,
    /// Acks requested.
    pub acks_requested: u64,
}

impl IngestTiming {
    /// Reads every histogram and total.
    pub fn snapshot(&self) -> IngestTimingSnapshot {
        IngestTimingSnapshot {
            batch_size: self.batch_size.snapshot(),
            commit_micros: self.commit_micros.snapshot(),
            batch_micros: self.batch_micros.snapshot(),
            verify_nanos: self.verify_nanos.load(Ordering::Relaxed),
            write_nanos: self.write_nanos.load(Ordering::Relaxed),
            acks_requested: self.acks_requested.load(Ordering::Relaxed),
        }
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A point-in-time copy of [`IngestStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct IngestStatsSnapshot {
    pub received: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub presence: u64,
    pub batches: u64,
    pub bad_signature: u64,
    pub malformed: u64,
    pub unknown_client: u64,
    pub revoked: u64,
    pub wrong_topic: u64,
    pub oversized: u64,
    pub unknown_kind: u64,
    pub invalid_body: u64,
    pub invalid_capabilities: u64,
    pub child_before_parent: u64,
    pub unassigned_status: u64,
    pub store_errors: u64,
}

impl IngestStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> IngestStatsSnapshot {
        let l = |a: &Counter| a.load(Ordering::Relaxed);
        IngestStatsSnapshot {
            received: l(&self.received),
            stored: l(&self.stored),
            duplicates: l(&self.duplicates),
            presence: l(&self.presence),
            batches: l(&self.batches),
            bad_signature: l(&self.bad_signature),
            malformed: l(&self.malformed),
            unknown_client: l(&self.unknown_client),
            revoked: l(&self.revoked),
            wrong_topic: l(&self.wrong_topic),
            oversized: l(&self.oversized),
            unknown_kind: l(&self.unknown_kind),
            invalid_body: l(&self.invalid_body),
            invalid_capabilities: l(&self.invalid_capabilities),
            child_before_parent: l(&self.child_before_parent),
            unassigned_status: l(&self.unassigned_status),
            store_errors: l(&self.store_errors),
        }
    }

    pub(super) fn count_rejection(&self, error: &IngestError) {
        let counter = match error {
            IngestError::Message(MessageError::Signature(
                CoseError::BadSignature | CoseError::WrongAlgorithm,
            ))
            | IngestError::Certificate(_) => &self.bad_signature,
            IngestError::Message(MessageError::Signature(_) | MessageError::Codec(_))
            | IngestError::BadPresence => &self.malformed,
            IngestError::UnknownClient => &self.unknown_client,
            IngestError::Revoked => &self.revoked,
            IngestError::TooLarge { .. } | IngestError::Message(MessageError::TooLarge { .. }) => {
                &self.oversized
            }
            IngestError::Message(MessageError::UnknownKind(_) | MessageError::Version(_)) => {
                &self.unknown_kind
            }
            IngestError::ZeroSeq | IngestError::LowAboveSeq { .. } | IngestError::Status(_) => {
                &self.invalid_body
            }
            IngestError::Store(_) => &self.store_errors,
            IngestError::NotDeviceTopic
            | IngestError::NotUplink
            | IngestError::Message(
                MessageError::WrongClient { .. } | MessageError::WrongTopic { .. },
            ) => &self.wrong_topic,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
