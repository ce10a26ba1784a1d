//! Ingest's metrics, declared once in [`IngestMetric`] and the histograms
//! below (margo-metrics): kept per manager in [`IngestStats`] for
//! `/v1/health` on the admin socket and exported on `GET /metrics`
//! (`docs/metrics.md`).

use std::time::Duration;

use margo_metrics::{
    metric_set, Histogram, HistogramMetric, HistogramSnapshot, Stats, MICROS_BOUNDS, SIZE_BOUNDS,
};
use margo_schemas::cose::CoseError;
use margo_schemas::messages::{Message, MessageError};
use serde::{Deserialize, Serialize};

use super::IngestError;

metric_set! {
    /// Ingest's counters.
    pub enum IngestMetric {
        counter "margo_ingest_received_total", "Uplink publishes received from the broker." {
            /// Publishes received.
            Received() => "received",
        }
        counter "margo_ingest_messages_total", "Uplink messages stored, by outcome." {
            /// Messages stored for the first time.
            Stored(outcome = "stored") => "stored",
            /// Duplicates (already stored or settled; acked again).
            Duplicates(outcome = "duplicate") => "duplicates",
            /// Presence updates stored.
            Presence(outcome = "presence") => "presence",
        }
        counter "margo_ingest_stored_total", "Uplink messages stored for the first time, by kind." {
            /// Status reports stored.
            StoredStatus(kind = "status") => "storedStatus",
            /// Capabilities reports stored.
            StoredCapabilities(kind = "capabilities") => "storedCapabilities",
            /// State reports stored.
            StoredState(kind = "state") => "storedState",
            /// Sync requests stored.
            StoredSync(kind = "sync") => "storedSync",
        }
        counter "margo_ingest_rejected_total",
            "Uplink messages refused and dropped (not acked), by verification error." {
            /// Bad COSE signature or certificate.
            BadSignature(reason = "bad_signature") => "badSignature",
            /// Undecodable CBOR/COSE or presence.
            Malformed(reason = "malformed") => "malformed",
            /// Unknown client.
            UnknownClient(reason = "unknown_client") => "unknownClient",
            /// Revoked client (also a revocation found while storing).
            Revoked(reason = "revoked") => "revoked",
            /// Wrong topic, wrong client, or not an uplink topic.
            WrongTopic(reason = "wrong_topic") => "wrongTopic",
            /// Over the size limit.
            Oversized(reason = "oversized") => "oversized",
            /// Unknown kind or protocol version.
            UnknownKind(reason = "unknown_kind") => "unknownKind",
            /// Invalid body (seq 0, `low` above `seq`, invalid status).
            InvalidBody(reason = "invalid_body") => "invalidBody",
        }
        counter "margo_ingest_settled_unstored_total",
            "Uplink messages acked but not stored, by reason." {
            /// Capabilities refused as invalid.
            InvalidCapabilities(reason = "invalid_capabilities") => "invalidCapabilities",
            /// Capabilities of a gateway child before its parent's.
            ChildBeforeParent(reason = "child_before_parent") => "childBeforeParent",
            /// Status reports for a deployment never assigned to the client.
            UnassignedStatus(reason = "unassigned_status") => "unassignedStatus",
        }
        counter "margo_ingest_batches_total", "Uplink batches committed." {
            /// Batches committed.
            Batches() => "batches",
        }
        counter "margo_ingest_store_errors_total",
            "Uplink batches that failed to store (not acked: devices resend)." {
            /// Store failures.
            StoreErrors() => "storeErrors",
        }
        counter "margo_ingest_acks_requested_total",
            "Acks requested from the publisher (one per client per batch)." {
            /// Acks requested.
            AcksRequested() => "acksRequested",
        }
        counter "margo_ingest_clones_suspected_total",
            "Clients whose uplink came from several agent stores in turns (a cloned bundle?), once per suspicion." {
            /// New suspicions of a cloned identity found in uplink.
            ClonesSuspected() => "clonesSuspected",
        }
        counter "margo_ingest_verify_nanoseconds_total",
            "Time spent verifying uplink (topic, size, key lookup, signature, decode, validation)." {
            /// Total verification time, ns.
            VerifyNanos() => "verifyNanos",
        }
        counter "margo_ingest_write_nanoseconds_total",
            "Time spent writing batches into their transactions, before the commits." {
            /// Total write time, ns.
            WriteNanos() => "writeNanos",
        }
    }
}

/// Histogram: publishes per committed batch (received, before verification).
pub const BATCH_SIZE: HistogramMetric = HistogramMetric {
    name: "margo_ingest_batch_size",
    help: "Publishes per committed uplink batch.",
    bounds: SIZE_BOUNDS,
    per_exported_unit: 1.0,
};

/// Histogram: the redb commit of a batch (data written and fsynced), µs
/// kept, seconds exported.
pub const COMMIT_TIME: HistogramMetric = HistogramMetric {
    name: "margo_ingest_commit_seconds",
    help: "Store commit time of an uplink batch.",
    bounds: MICROS_BOUNDS,
    per_exported_unit: 1e6,
};

/// Histogram: first publish of a batch received → its acks requested, µs
/// kept, seconds exported.
pub const BATCH_TIME: HistogramMetric = HistogramMetric {
    name: "margo_ingest_batch_seconds",
    help: "Time from the first publish of an uplink batch to its acks.",
    bounds: MICROS_BOUNDS,
    per_exported_unit: 1e6,
};

/// Every histogram of ingest.
pub const HISTOGRAMS: [&HistogramMetric; 3] = [&BATCH_SIZE, &COMMIT_TIME, &BATCH_TIME];

/// Ingest's values for one manager.
#[derive(Debug)]
pub struct IngestStats {
    /// The counters.
    pub counters: Stats<IngestMetric>,
    /// Publishes per committed batch.
    pub batch_size: Histogram,
    /// Commit latency, µs.
    pub commit_micros: Histogram,
    /// First publish received → acks requested, µs.
    pub batch_micros: Histogram,
}

impl Default for IngestStats {
    fn default() -> Self {
        Self {
            counters: Stats::default(),
            batch_size: Histogram::new(&BATCH_SIZE),
            commit_micros: Histogram::new(&COMMIT_TIME),
            batch_micros: Histogram::new(&BATCH_TIME),
        }
    }
}

/// Ingest's distributions and time totals as `/v1/health` reports them
/// (`ingestTiming`): what the uplink ingest benchmark reads instead of
/// guessing from outside.
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

impl IngestStats {
    /// This manager's value of `series`.
    pub fn get(&self, series: IngestMetric) -> u64 {
        self.counters.get(series)
    }

    /// Adds one to `series`.
    pub(super) fn inc(&self, series: IngestMetric) {
        self.counters.inc(series);
    }

    /// The `ingestTiming` report.
    pub fn timing(&self) -> IngestTimingSnapshot {
        IngestTimingSnapshot {
            batch_size: self.batch_size.snapshot(),
            commit_micros: self.commit_micros.snapshot(),
            batch_micros: self.batch_micros.snapshot(),
            verify_nanos: self.get(IngestMetric::VerifyNanos),
            write_nanos: self.get(IngestMetric::WriteNanos),
            acks_requested: self.get(IngestMetric::AcksRequested),
        }
    }
}

impl IngestMetric {
    /// The series counting a message refused with `error`.
    pub fn of_rejection(error: &IngestError) -> Self {
        match error {
            IngestError::Message(MessageError::Signature(
                CoseError::BadSignature | CoseError::WrongAlgorithm,
            ))
            | IngestError::Certificate(_) => Self::BadSignature,
            IngestError::Message(MessageError::Signature(_) | MessageError::Codec(_))
            | IngestError::BadPresence => Self::Malformed,
            IngestError::UnknownClient => Self::UnknownClient,
            IngestError::Revoked => Self::Revoked,
            IngestError::TooLarge { .. } | IngestError::Message(MessageError::TooLarge { .. }) => {
                Self::Oversized
            }
            IngestError::Message(MessageError::UnknownKind(_) | MessageError::Version(_)) => {
                Self::UnknownKind
            }
            IngestError::ZeroSeq | IngestError::LowAboveSeq { .. } | IngestError::Status(_) => {
                Self::InvalidBody
            }
            IngestError::Store(_) => Self::StoreErrors,
            IngestError::NotDeviceTopic
            | IngestError::NotUplink
            | IngestError::Message(
                MessageError::WrongClient { .. } | MessageError::WrongTopic { .. },
            ) => Self::WrongTopic,
        }
    }

    /// The series counting a stored message of this kind (`None` for the
    /// downlink kinds, which ingest refuses before storing).
    pub fn of_stored(message: &Message) -> Option<Self> {
        match message {
            Message::Status(_) => Some(Self::StoredStatus),
            Message::Capabilities(_) => Some(Self::StoredCapabilities),
            Message::State(_) => Some(Self::StoredState),
            Message::Sync(_) => Some(Self::StoredSync),
            Message::Manifest(_)
            | Message::Deployment(_)
            | Message::Ack(_)
            | Message::Config(_) => None,
        }
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
