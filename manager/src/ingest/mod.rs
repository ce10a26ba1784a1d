//! Uplink ingest: verify, validate, deduplicate, store in batches, then ack.
//!
//! Every uplink publish is checked (topic, client, size, signature against
//! the client's certificate, body), collected into a batch of up to
//! `batch_max` messages or `batch_interval`, stored in one redb transaction,
//! and only after the commit are acks requested from the publisher. A bad
//! message is counted, audited, logged with its client (at most a few lines
//! per client a minute: [`crate::log_limit`]) and dropped; the loop
//! never stops for one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use margo_schemas::cose::{CoseError, VerifyingKey};
use margo_schemas::ids::ClientId;
use margo_schemas::messages::{Envelope, Message, MessageError};
use margo_schemas::status::StatusErrorKind;
use margo_schemas::topics::{self, DeviceTopic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::capabilities::CapabilitiesRejection;
use crate::fleet::{Fleet, Ingested, KeyCache, KeyError};
use crate::log_limit::ClientWarnings;
use crate::mqtt_link::RawUplink;
use crate::store::{AuditEvent, IngestOutcome, Store, StoreError, UplinkItem};

mod stats;

pub use margo_metrics::HistogramSnapshot;
use stats::{micros, nanos};
pub use stats::{
    IngestMetric, IngestStats, IngestTimingSnapshot, BATCH_SIZE, BATCH_TIME, COMMIT_TIME,
    HISTOGRAMS,
};

/// Why one uplink message was rejected.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Not a device topic of this protocol.
    #[error("not a device topic")]
    NotDeviceTopic,
    /// A device topic the device does not publish on (e.g. downlink).
    #[error("not an uplink topic")]
    NotUplink,
    /// No client with this id.
    #[error("unknown client")]
    UnknownClient,
    /// The client is revoked.
    #[error("client is revoked")]
    Revoked,
    /// The payload exceeds `max_payload_bytes`.
    #[error("payload is {len} bytes, the limit is {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A presence payload other than `online` / `offline`.
    #[error("presence payload must be \"online\" or \"offline\"")]
    BadPresence,
    /// The stored certificate has no usable key.
    #[error("client certificate: {0}")]
    Certificate(CoseError),
    /// Signature, encoding, version, kind, client or topic mismatch.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// Uplink seqs start at 1.
    #[error("uplink seq 0 is not valid")]
    ZeroSeq,
    /// `low` above `seq`.
    #[error("low {low} is above seq {seq}")]
    LowAboveSeq {
        /// The low.
        low: u64,
        /// The seq.
        seq: u64,
    },
    /// An invalid deployment status.
    #[error("status: {0}")]
    Status(#[from] StatusErrorKind),
    /// A store read failed while verifying.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IngestError {
    /// Short kind for counters and the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotDeviceTopic | Self::NotUplink => "wrong-topic",
            Self::UnknownClient => "unknown-client",
            Self::Revoked => "revoked-client",
            Self::TooLarge { .. } => "oversized",
            Self::BadPresence => "malformed",
            Self::Certificate(_) => "bad-certificate",
            Self::Message(MessageError::Signature(CoseError::BadSignature))
            | Self::Message(MessageError::Signature(CoseError::WrongAlgorithm)) => "bad-signature",
            Self::Message(MessageError::Signature(_)) | Self::Message(MessageError::Codec(_)) => {
                "malformed"
            }
            Self::Message(MessageError::TooLarge { .. }) => "oversized",
            Self::Message(MessageError::Version(_)) => "wrong-version",
            Self::Message(MessageError::UnknownKind(_)) => "unknown-kind",
            Self::Message(MessageError::WrongClient { .. }) => "wrong-client",
            Self::Message(MessageError::WrongTopic { .. }) => "wrong-topic",
            Self::ZeroSeq | Self::LowAboveSeq { .. } | Self::Status(_) => "invalid-body",
            Self::Store(_) => "store-error",
        }
    }
}

impl From<KeyError> for IngestError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::UnknownClient => Self::UnknownClient,
            KeyError::Revoked => Self::Revoked,
            KeyError::Certificate(e) => Self::Certificate(e),
            KeyError::Store(e) => Self::Store(e),
        }
    }
}

/// Verifies one raw publish into a storable item. Synchronous (store reads, crypto).
pub fn verify(
    store: &Store,
    keys: &KeyCache,
    raw: &RawUplink,
    max_payload: usize,
) -> Result<UplinkItem, (Option<ClientId>, IngestError)> {
    let (client, topic) =
        topics::parse_device_topic(&raw.topic).ok_or((None, IngestError::NotDeviceTopic))?;
    let fail = |e: IngestError| (Some(client.clone()), e);
    if !topic.is_uplink() {
        return Err(fail(IngestError::NotUplink));
    }
    if raw.payload.len() > max_payload {
        return Err(fail(IngestError::TooLarge {
            len: raw.payload.len(),
            max: max_payload,
        }));
    }
    let key = keys.get(store, &client).map_err(|e| fail(e.into()))?;
    open_uplink(&client, &topic, &raw.payload, &key, max_payload).map_err(fail)
}

/// The part of [`verify`] after the key lookup: what the payload of an
/// uplink publish must be. Pure (no store), so the fuzz target
/// `envelope_*` (tests/fuzz, `margo_tests::fuzz_entries`) runs exactly
/// this code on hostile bytes.
#[doc(hidden)]
pub fn open_uplink(
    client: &ClientId,
    topic: &DeviceTopic,
    payload: &[u8],
    key: &VerifyingKey,
    max_payload: usize,
) -> Result<UplinkItem, IngestError> {
    if payload.len() > max_payload {
        return Err(IngestError::TooLarge {
            len: payload.len(),
            max: max_payload,
        });
    }
    if *topic == DeviceTopic::Presence {
        let online = match payload.trim_ascii() {
            b"online" => true,
            b"offline" => false,
            _ => return Err(IngestError::BadPresence),
        };
        return Ok(UplinkItem::Presence {
            client: client.clone(),
            online,
        });
    }
    let env = Envelope::open(payload, max_payload, key, client, topic)?;
    if env.seq == 0 {
        return Err(IngestError::ZeroSeq);
    }
    if env.low > env.seq {
        return Err(IngestError::LowAboveSeq {
            low: env.low,
            seq: env.seq,
        });
    }
    match &env.msg {
        Message::Status(report) => report.status.validate()?,
        // Checked in the store transaction (`crate::capabilities`): a child
        // needs its parent's stored capabilities, and a refused report is
        // still acknowledged so the device's outbox drains.
        Message::Capabilities(_) | Message::State(_) | Message::Sync(_) => {}
        // `fits_topic` already refuses downlink kinds on uplink topics.
        Message::Manifest(_) | Message::Deployment(_) | Message::Ack(_) | Message::Config(_) => {
            return Err(IngestError::NotUplink)
        }
    }
    Ok(UplinkItem::Message(Box::new(env)))
}

/// The ingest task.
pub struct Ingest {
    rx: mpsc::Receiver<RawUplink>,
    fleet: Fleet,
    stats: Arc<IngestStats>,
    batch_max: usize,
    batch_interval: Duration,
    max_payload: usize,
}

/// What the ingest task works with: shared handles owned elsewhere.
pub struct IngestDeps {
    /// The application core: the clients' keys to verify with, and
    /// [`Fleet::ingest`] to store a batch and ack it.
    pub fleet: Fleet,
    /// Counters shared with the admin API.
    pub stats: Arc<IngestStats>,
}

/// How the ingest task batches and bounds its input.
#[derive(Debug, Clone, Copy)]
pub struct IngestSettings {
    /// Most messages stored in one redb transaction (at least 1).
    pub batch_max: usize,
    /// How long a batch waits for more messages before it is stored.
    pub batch_interval: Duration,
    /// Largest uplink payload accepted, in bytes.
    pub max_payload: usize,
}

impl Ingest {
    /// An ingest task reading `rx`.
    pub fn new(rx: mpsc::Receiver<RawUplink>, deps: IngestDeps, settings: IngestSettings) -> Self {
        let IngestDeps { fleet, stats } = deps;
        Self {
            rx,
            fleet,
            stats,
            batch_max: settings.batch_max.max(1),
            batch_interval: settings.batch_interval,
            max_payload: settings.max_payload,
        }
    }

    /// Runs until `shutdown` or until the connection task stops sending.
    ///
    /// Two stages in one task: collecting and verifying a batch (on the
    /// blocking pool, in parallel chunks) overlaps with storing and
    /// committing the previous one, so signature checks do not wait for
    /// the previous batch's fsync. Acks still go out only after the commit
    /// of the batch that holds the message.
    pub async fn run(self, shutdown: CancellationToken) {
        // One batch committing, one verified and waiting.
        let (tx, rx) = mpsc::channel::<Verified>(1);
        let Ingest {
            rx: mut uplinks,
            fleet,
            stats,
            batch_max,
            batch_interval,
            max_payload,
        } = self;
        let verifier = Verifier {
            store: fleet.store().clone(),
            keys: fleet.keys().clone(),
            stats: Arc::clone(&stats),
            max_payload,
            warnings: Arc::new(ClientWarnings::new(DROPPED)),
        };
        let committer = Committer { fleet, stats };
        let collect = async move {
            loop {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    first = uplinks.recv() => match first {
                        Some(m) => m,
                        None => break,
                    },
                };
                let started = Instant::now();
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + batch_interval;
                while batch.len() < batch_max {
                    // Take what is queued without waiting, then wait for more.
                    match uplinks.try_recv() {
                        Ok(m) => {
                            batch.push(m);
                            continue;
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                        Err(mpsc::error::TryRecvError::Empty) => {}
                    }
                    match tokio::time::timeout_at(deadline, uplinks.recv()).await {
                        Ok(Some(m)) => batch.push(m),
                        Ok(None) | Err(_) => break,
                    }
                }
                let verified = verifier.verify(batch, started).await;
                if tx.send(verified).await.is_err() {
                    break;
                }
            }
            // Dropping `tx` lets the committer finish what was verified.
        };
        tokio::join!(collect, committer.run(rx));
    }
}

/// Smallest chunk of a batch verified on its own blocking thread.
const MIN_VERIFY_CHUNK: usize = 32;

/// A batch after verification, waiting for its transaction.
struct Verified {
    /// Publishes received (before verification).
    received: u64,
    items: Vec<UplinkItem>,
    audit: Vec<AuditEvent>,
    /// When its first publish was received.
    started: Instant,
}

/// The verification stage.
struct Verifier {
    store: Store,
    keys: KeyCache,
    stats: Arc<IngestStats>,
    max_payload: usize,
    warnings: Arc<ClientWarnings>,
}

impl Verifier {
    /// Verifies `batch` in chunks on the blocking pool, one per core.
    async fn verify(&self, batch: Vec<RawUplink>, started: Instant) -> Verified {
        let received = batch.len() as u64;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let parts = (batch.len() / MIN_VERIFY_CHUNK).clamp(1, cores);
        let per_part = batch.len().div_ceil(parts);
        let mut batch = batch.into_iter();
        let mut tasks = Vec::with_capacity(parts);
        for _ in 0..parts {
            let chunk: Vec<RawUplink> = batch.by_ref().take(per_part).collect();
            let (store, keys, stats, warnings) = (
                self.store.clone(),
                self.keys.clone(),
                Arc::clone(&self.stats),
                Arc::clone(&self.warnings),
            );
            let max = self.max_payload;
            tasks.push(tokio::task::spawn_blocking(move || {
                verify_chunk(&store, &keys, &stats, &warnings, &chunk, max)
            }));
        }
        let mut verified = Verified {
            received,
            items: Vec::with_capacity(usize::try_from(received).unwrap_or(0)),
            audit: Vec::new(),
            started,
        };
        for task in tasks {
            match task.await {
                Ok((items, audit)) => {
                    verified.items.extend(items);
                    verified.audit.extend(audit);
                }
                Err(error) => {
                    // Not acked: the devices resend.
                    self.stats.inc(IngestMetric::StoreErrors);
                    error!(%error, "verifying part of an uplink batch failed");
                }
            }
        }
        verified
    }
}

/// The warning of a rejected uplink message.
const DROPPED: &str = "dropped an uplink message";

/// Verifies `chunk` (synchronous: store reads, crypto); counts and audits
/// every rejection, and logs it within the client's share of `warnings`.
fn verify_chunk(
    store: &Store,
    keys: &KeyCache,
    stats: &IngestStats,
    warnings: &ClientWarnings,
    chunk: &[RawUplink],
    max: usize,
) -> (Vec<UplinkItem>, Vec<AuditEvent>) {
    let verifying = Instant::now();
    let mut items = Vec::with_capacity(chunk.len());
    let mut audit = Vec::new();
    for raw in chunk {
        stats.inc(IngestMetric::Received);
        match verify(store, keys, raw, max) {
            Ok(item) => items.push(item),
            Err((client, err)) => {
                stats.inc(IngestMetric::of_rejection(&err));
                let client_id = client.as_ref().map(ClientId::to_string);
                let shown = client_id.as_deref().unwrap_or("-");
                if warnings.allow(shown) {
                    warn!(
                        client_id = shown,
                        topic = %raw.topic,
                        kind = err.kind(),
                        error = %err,
                        "{DROPPED}"
                    );
                }
                audit.push(AuditEvent {
                    ts_ms: store.clock().now_ms(),
                    kind: err.kind().to_string(),
                    client_id,
                    topic: raw.topic.chars().take(256).collect(),
                    detail: err.to_string().chars().take(512).collect(),
                });
            }
        }
    }
    stats
        .counters
        .add(IngestMetric::VerifyNanos, nanos(verifying.elapsed()));
    (items, audit)
}

/// The storing stage: one [`Fleet::ingest`] per verified batch (the
/// transaction, then the acks), counted here.
struct Committer {
    fleet: Fleet,
    stats: Arc<IngestStats>,
}

impl Committer {
    async fn run(self, mut rx: mpsc::Receiver<Verified>) {
        while let Some(verified) = rx.recv().await {
            self.process(verified).await;
        }
    }

    async fn process(&self, verified: Verified) {
        let Verified {
            received: size,
            items,
            audit,
            started,
        } = verified;
        let Ingested {
            items,
            result,
            acks_requested,
            new_clones,
        } = match self.fleet.ingest(items, audit).await {
            Ok(ingested) => ingested,
            Err(error) => {
                self.stats.inc(IngestMetric::StoreErrors);
                if error.is_unavailable() {
                    // Full or read-only: the store logs it once, not per batch.
                    debug!(%error, "storing an uplink batch failed; devices will resend");
                } else {
                    error!(%error, "storing an uplink batch failed; devices will resend");
                }
                return;
            }
        };
        let stats = &self.stats;
        stats.inc(IngestMetric::Batches);
        stats.batch_size.record(size);
        stats.commit_micros.record(micros(result.commit_time));
        stats
            .counters
            .add(IngestMetric::WriteNanos, nanos(result.write_time));
        for (item, outcome) in items.iter().zip(&result.outcomes) {
            stats.inc(match (item, outcome) {
                (UplinkItem::Presence { .. }, IngestOutcome::Stored) => IngestMetric::Presence,
                (_, IngestOutcome::Stored) => IngestMetric::Stored,
                (_, IngestOutcome::Duplicate) => IngestMetric::Duplicates,
                (_, IngestOutcome::Refused) => IngestMetric::Revoked,
                (_, IngestOutcome::NotAssigned(_)) => IngestMetric::UnassignedStatus,
                (_, IngestOutcome::Rejected(CapabilitiesRejection::Invalid { .. })) => {
                    IngestMetric::InvalidCapabilities
                }
                (_, IngestOutcome::Rejected(CapabilitiesRejection::ChildBeforeParent { .. })) => {
                    IngestMetric::ChildBeforeParent
                }
            });
            if let (UplinkItem::Message(env), IngestOutcome::Stored) = (item, outcome) {
                if let Some(kind) = IngestMetric::of_stored(&env.msg) {
                    stats.inc(kind);
                }
            }
            if let UplinkItem::Message(env) = item {
                debug!(client_id = %env.client, seq = env.seq, kind = env.msg.kind(), ?outcome, "uplink");
            }
        }
        stats
            .counters
            .add(IngestMetric::AcksRequested, acks_requested);
        stats
            .counters
            .add(IngestMetric::ClonesSuspected, new_clones);
        stats.batch_micros.record(micros(started.elapsed()));
    }
}
