//! The durable uplink outbox.
//!
//! [`Outbox::enqueue`] seals a message into a signed envelope with the next
//! per-client `seq` (from 1) and commits it to redb before anything is sent.
//! Entries are deleted only by a manager `ack` covering their seq. The
//! connection loop sends pending entries (QoS 1) on every connect and
//! resends those not acked within the ack timeout.
//!
//! Bounded by entry count and bytes. When an enqueue would exceed a bound:
//! 1. superseded `status` entries (an newer status of the same deployment is
//!    pending or being enqueued) are dropped, oldest first;
//! 2. then the oldest non-status entries;
//! 3. the latest status per deployment is never dropped: a new status is
//!    accepted over the limit, a new non-status entry that still does not fit
//!    is refused.
//!
//! Every drop is counted; the first drop of an overflow episode is logged at
//! warn. Every envelope carries the store's random instance id; an ack
//! naming another instance (a device cloned from the same bundle) is
//! ignored, so only acks for this store's own seqs trim or renumber it.
//! Each envelope's `low` is the lowest pending seq; an entry whose
//! sealed `low` is stale (for example after a drop left a gap) is re-sealed
//! with the current one when sent, so the manager can count the gap settled.
//!
//! A message the store cannot take (no space left, read-only file system)
//! is held in memory, not dropped and not sent: a newer message of the same
//! kind (and deployment, for `status`; device, for capabilities) replaces
//! it, and the held messages are stored in order, before anything newer, as
//! soon as the store takes writes again (tried on every enqueue and every
//! send pass). Only a process that dies meanwhile loses them; its next
//! start reports its state afresh.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use margo_schemas::codec;
use margo_schemas::cose::{SigningKey, VerifyingKey};
use margo_schemas::ids::{ClientId, DeploymentId, InstanceId};
use margo_schemas::messages::{Envelope, Message, MessageError};
use margo_schemas::topics;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::OutboxConfig;
use crate::snapshot::Snapshots;
use crate::stats::AgentStats;
use crate::store::{OutboxRecord, Store, StoreError};

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sealing a {kind} message: {source}")]
    Seal {
        kind: &'static str,
        source: MessageError,
    },
    #[error("a {0} message is downlink only; the agent does not send it")]
    NotUplink(&'static str),
    #[error("outbox full: a new {kind} message was dropped")]
    Full { kind: &'static str },
    #[error("stored outbox entry {seq} is unreadable: {reason}")]
    Corrupt { seq: u64, reason: String },
    /// The store refused the write; the message is held in memory and
    /// stored (then sent) once the store takes writes again.
    #[error("a {kind} message is held in memory until the store takes writes again")]
    Held { kind: &'static str },
}

/// What the overflow policy needs to know about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Counted bytes (payload + topic).
    pub size: usize,
    /// For `status` entries: the deployment.
    pub status_of: Option<DeploymentId>,
}

/// The outcome of the overflow policy for one enqueue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropPlan {
    /// Pending seqs to delete.
    pub drop: Vec<u64>,
    /// How many of them were superseded statuses.
    pub superseded: usize,
    /// Whether the new entry is stored.
    pub accept_new: bool,
}

/// The overflow policy (pure): which entries to drop so `new` fits.
pub fn plan_drops(
    pending: &BTreeMap<u64, EntryMeta>,
    new: &EntryMeta,
    limits: &OutboxConfig,
) -> DropPlan {
    let mut count = pending.len() + 1;
    let mut bytes = pending.values().map(|m| m.size).sum::<usize>() + new.size;
    let fits =
        |count: usize, bytes: usize| count <= limits.max_entries && bytes <= limits.max_bytes;
    let mut plan = DropPlan {
        accept_new: true,
        ..DropPlan::default()
    };
    if fits(count, bytes) {
        return plan;
    }
    // 1. Superseded statuses: a later status of the same deployment exists.
    let mut latest: BTreeMap<&DeploymentId, u64> = BTreeMap::new();
    for (seq, meta) in pending {
        if let Some(id) = &meta.status_of {
            latest.insert(id, *seq);
        }
    }
    let new_status = new.status_of.as_ref();
    for (seq, meta) in pending {
        if fits(count, bytes) {
            break;
        }
        let Some(id) = &meta.status_of else { continue };
        let superseded = new_status == Some(id) || latest.get(id).is_some_and(|l| l > seq);
        if superseded {
            plan.drop.push(*seq);
            plan.superseded += 1;
            count -= 1;
            bytes -= meta.size;
        }
    }
    // 2. Oldest non-status entries.
    for (seq, meta) in pending {
        if fits(count, bytes) {
            break;
        }
        if meta.status_of.is_none() {
            plan.drop.push(*seq);
            count -= 1;
            bytes -= meta.size;
        }
    }
    // 3. Only latest statuses remain: a status goes over the limit, anything else is refused.
    if !fits(count, bytes) && new.status_of.is_none() {
        plan.accept_new = false;
    }
    plan.drop.sort_unstable();
    plan
}

/// The durable, bounded uplink queue of one client.
pub struct Outbox {
    store: Store,
    client: ClientId,
    /// This store's instance id, sealed into every envelope.
    instance: InstanceId,
    /// The last other instance whose ack was ignored (logged once each).
    foreign: Option<InstanceId>,
    key: Arc<SigningKey>,
    own_key: VerifyingKey,
    clock: Arc<dyn Clock>,
    limits: OutboxConfig,
    stats: Arc<AgentStats>,
    next_seq: u64,
    index: BTreeMap<u64, EntryMeta>,
    bytes: usize,
    overflowing: bool,
    notify: Arc<Notify>,
    /// Messages the store refused, oldest first, one per kind and deployment.
    held: Vec<Message>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("client", &self.client)
            .field("next_seq", &self.next_seq)
            .field("len", &self.index.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// The topic an uplink message is published on.
pub fn uplink_topic(client: &ClientId, message: &Message) -> Result<String, OutboxError> {
    match message {
        Message::Status(s) => Ok(topics::status(client, &s.status.deployment_id)),
        Message::State(_) => Ok(topics::state(client)),
        Message::Sync(_) => Ok(topics::sync(client)),
        Message::Capabilities(_) => Ok(topics::capabilities(client)),
        Message::Manifest(_) | Message::Deployment(_) | Message::Ack(_) | Message::Config(_) => {
            Err(OutboxError::NotUplink(message.kind()))
        }
    }
}

impl Outbox {
    /// Loads the pending entries of `store`.
    pub fn open(
        store: Store,
        client: ClientId,
        key: Arc<SigningKey>,
        clock: Arc<dyn Clock>,
        limits: OutboxConfig,
        stats: Arc<AgentStats>,
    ) -> Result<Self, OutboxError> {
        let (next_seq, entries) = store.outbox_load()?;
        let mut index = BTreeMap::new();
        let mut bytes = 0;
        for (seq, record) in &entries {
            bytes += record.size();
            index.insert(
                *seq,
                EntryMeta {
                    size: record.size(),
                    status_of: record.deployment.clone(),
                },
            );
        }
        let next_seq = next_seq.max(index.keys().next_back().map_or(1, |s| s + 1));
        let own_key = key.public_key();
        let instance = store.instance_id()?;
        Ok(Self {
            store,
            client,
            instance,
            foreign: None,
            key,
            own_key,
            clock,
            limits,
            stats,
            next_seq,
            index,
            bytes,
            overflowing: false,
            notify: Arc::new(Notify::new()),
            held: Vec::new(),
        })
    }

    /// Woken on every enqueue (for the sender).
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Pending entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Pending bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The seq the next enqueue gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The lowest pending seq, or the next seq when empty.
    pub fn low(&self) -> u64 {
        self.index.keys().next().copied().unwrap_or(self.next_seq)
    }

    /// Pending seqs in order.
    pub fn pending(&self) -> Vec<u64> {
        self.index.keys().copied().collect()
    }

    /// Whether `seq` is still pending.
    pub fn contains(&self, seq: u64) -> bool {
        self.index.contains_key(&seq)
    }

    /// Messages held in memory because the store refused them.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Seals `message` with the next seq and commits it (after applying the
    /// overflow policy). Returns the seq. When the store refuses the write,
    /// the message is held ([`OutboxError::Held`]); so is any message while
    /// earlier ones are still held, to keep their order.
    pub fn enqueue(&mut self, message: Message) -> Result<u64, OutboxError> {
        if self.store_held() {
            match self.store_message(message.clone()) {
                Err(OutboxError::Store(e)) if e.is_unavailable() => {}
                other => return other,
            }
        }
        let kind = message.kind();
        self.hold(message);
        Err(OutboxError::Held { kind })
    }

    /// Stores the held messages, oldest first, until the store refuses one.
    /// True when none is left held.
    pub fn store_held(&mut self) -> bool {
        while !self.held.is_empty() {
            let message = self.held.remove(0);
            match self.store_message(message.clone()) {
                Err(OutboxError::Store(e)) if e.is_unavailable() => {
                    self.held.insert(0, message);
                    return false;
                }
                Ok(seq) => {
                    debug!(client_id = %self.client, seq, "stored a held message");
                }
                Err(error) => {
                    warn!(client_id = %self.client, %error, "a held message could not be stored");
                }
            }
        }
        true
    }

    /// Keeps `message` in memory, replacing a held one it supersedes (same
    /// kind; for `status`, same deployment).
    fn hold(&mut self, message: Message) {
        let key = |m: &Message| {
            let of = match m {
                Message::Status(s) => Some(s.status.deployment_id.to_string()),
                Message::Capabilities(c) => c.manifest.device_id().map(str::to_string),
                _ => None,
            };
            (m.kind(), of)
        };
        let new = key(&message);
        if self.held.is_empty() {
            info!(client_id = %self.client, kind = message.kind(), "the store refuses writes: holding uplink messages in memory until it takes them");
        }
        self.held.retain(|m| key(m) != new);
        self.held.push(message);
    }

    fn store_message(&mut self, message: Message) -> Result<u64, OutboxError> {
        let kind = message.kind();
        let topic = uplink_topic(&self.client, &message)?;
        let status_of = match &message {
            Message::Status(s) => Some(s.status.deployment_id.clone()),
            _ => None,
        };
        let seq = self.next_seq;
        // Seal once to learn the size, then again if drops move `low`.
        let mut envelope = Envelope::new(self.client.clone(), seq, self.clock.unix_ms(), message);
        envelope.low = self.low().min(seq);
        envelope.instance = Some(self.instance.clone());
        let mut payload = self.seal(&envelope)?;
        let meta = EntryMeta {
            size: payload.len() + topic.len(),
            status_of: status_of.clone(),
        };
        let plan = plan_drops(&self.index, &meta, &self.limits);
        if !plan.accept_new || !plan.drop.is_empty() {
            self.note_drops(&plan, kind);
        }
        if !plan.accept_new {
            self.store.outbox_commit(None, &plan.drop, self.next_seq)?;
            self.forget(&plan.drop);
            return Err(OutboxError::Full { kind });
        }
        let low_after = self
            .index
            .keys()
            .find(|s| !plan.drop.contains(s))
            .copied()
            .unwrap_or(seq)
            .min(seq);
        if low_after != envelope.low {
            envelope.low = low_after;
            payload = self.seal(&envelope)?;
        }
        let record = OutboxRecord {
            topic,
            kind: kind.to_string(),
            deployment: status_of.clone(),
            low: envelope.low,
            payload,
        };
        self.store
            .outbox_commit(Some((seq, &record)), &plan.drop, seq + 1)?;
        self.forget(&plan.drop);
        self.next_seq = seq + 1;
        self.bytes += record.size();
        self.index.insert(
            seq,
            EntryMeta {
                size: record.size(),
                status_of,
            },
        );
        AgentStats::bump(&self.stats.enqueued);
        debug!(client_id = %self.client, seq, kind, "enqueued");
        self.notify.notify_one();
        Ok(seq)
    }

    fn seal(&self, envelope: &Envelope) -> Result<Vec<u8>, OutboxError> {
        envelope
            .seal(&self.key)
            .map_err(|source| OutboxError::Seal {
                kind: envelope.msg.kind(),
                source,
            })
    }

    fn note_drops(&mut self, plan: &DropPlan, kind: &'static str) {
        let other = plan.drop.len() - plan.superseded + usize::from(!plan.accept_new);
        self.stats
            .dropped_superseded
            .fetch_add(plan.superseded as u64, std::sync::atomic::Ordering::Relaxed);
        self.stats
            .dropped_other
            .fetch_add(other as u64, std::sync::atomic::Ordering::Relaxed);
        if !self.overflowing {
            self.overflowing = true;
            warn!(
                client_id = %self.client,
                pending = self.index.len(),
                bytes = self.bytes,
                superseded = plan.superseded,
                other,
                new_kind = kind,
                "outbox full: dropping entries (superseded statuses first; further drops this episode are only counted)"
            );
        }
    }

    fn forget(&mut self, seqs: &[u64]) {
        for seq in seqs {
            if let Some(meta) = self.index.remove(seq) {
                self.bytes -= meta.size;
            }
        }
    }

    /// Deletes every entry with seq ≤ `acked_seq` (committed on return).
    /// Returns how many were removed.
    ///
    /// An ack beyond anything this outbox ever assigned means the manager
    /// saw seqs from an earlier life of this client (a lost store): the
    /// pending entries are renumbered above it so the manager does not
    /// discard them as duplicates.
    ///
    /// An ack naming another `instance` answers another store's seqs (the
    /// same identity in use on another device): it is ignored, and logged
    /// once per other instance. An ack naming none (an older manager) is
    /// taken as ours.
    pub fn ack(
        &mut self,
        acked_seq: u64,
        instance: Option<&InstanceId>,
    ) -> Result<usize, OutboxError> {
        if let Some(other) = instance.filter(|i| **i != self.instance) {
            if self.foreign.as_ref() != Some(other) {
                warn!(
                    client_id = %self.client,
                    instance = %self.instance,
                    other_instance = %other,
                    acked_seq,
                    "ack for another agent store with this identity ignored: is this device's bundle in use on another device too?"
                );
                self.foreign = Some(other.clone());
            }
            return Ok(0);
        }
        if acked_seq >= self.next_seq {
            warn!(
                client_id = %self.client,
                acked_seq,
                next_seq = self.next_seq,
                "manager acknowledges seqs this agent never assigned (store reset?); renumbering"
            );
            return self.renumber_above(acked_seq);
        }
        let done: Vec<u64> = self.index.range(..=acked_seq).map(|(s, _)| *s).collect();
        if done.is_empty() {
            return Ok(0);
        }
        self.store.outbox_commit(None, &done, self.next_seq)?;
        self.forget(&done);
        self.stats
            .acked
            .fetch_add(done.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if self.overflowing
            && self.index.len() < self.limits.max_entries
            && self.bytes < self.limits.max_bytes
        {
            self.overflowing = false;
            info!(client_id = %self.client, pending = self.index.len(), "outbox below its limits again");
        }
        debug!(client_id = %self.client, acked_seq, removed = done.len(), "acked");
        Ok(done.len())
    }

    fn renumber_above(&mut self, acked_seq: u64) -> Result<usize, OutboxError> {
        let old: Vec<u64> = self.pending();
        let mut next = acked_seq + 1;
        let low = next;
        for seq in &old {
            let Some(record) = self.store.outbox_get(*seq)? else {
                continue;
            };
            let mut envelope = self.unseal(*seq, &record)?;
            envelope.seq = next;
            envelope.low = low;
            let payload = self.seal(&envelope)?;
            let record = OutboxRecord {
                low,
                payload,
                ..record
            };
            self.store
                .outbox_commit(Some((next, &record)), &[*seq], next + 1)?;
            if let Some(meta) = self.index.remove(seq) {
                self.index.insert(next, meta);
            }
            next += 1;
        }
        self.store.outbox_commit(None, &[], next)?;
        self.next_seq = next;
        self.notify.notify_one();
        Ok(0)
    }

    fn unseal(&self, seq: u64, record: &OutboxRecord) -> Result<Envelope, OutboxError> {
        let corrupt = |reason: String| OutboxError::Corrupt { seq, reason };
        let body = self
            .own_key
            .verify(&record.payload)
            .map_err(|e| corrupt(e.to_string()))?;
        codec::decode(&body, usize::MAX).map_err(|e| corrupt(e.to_string()))
    }

    /// The message of pending entry `seq`, opened with the agent's own key:
    /// for the HTTP transport, which sends the message body rather than the
    /// sealed envelope. `None` if no longer pending.
    pub fn message(&self, seq: u64) -> Result<Option<Message>, OutboxError> {
        if !self.index.contains_key(&seq) {
            return Ok(None);
        }
        let Some(record) = self.store.outbox_get(seq)? else {
            return Ok(None);
        };
        Ok(Some(self.unseal(seq, &record)?.msg))
    }

    /// Deletes the entries `seqs` (committed on return): delivered or refused
    /// for good over a transport that answers per message (HTTP), where there
    /// is no cumulative ack. Returns how many were pending.
    pub fn settle(&mut self, seqs: &[u64]) -> Result<usize, OutboxError> {
        let done: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| self.index.contains_key(s))
            .collect();
        if done.is_empty() {
            return Ok(0);
        }
        self.store.outbox_commit(None, &done, self.next_seq)?;
        self.forget(&done);
        if self.overflowing
            && self.index.len() < self.limits.max_entries
            && self.bytes < self.limits.max_bytes
        {
            self.overflowing = false;
            info!(client_id = %self.client, pending = self.index.len(), "outbox below its limits again");
        }
        debug!(client_id = %self.client, settled = done.len(), "settled");
        Ok(done.len())
    }

    /// The topic and payload to publish for `seq`, re-sealed with the
    /// current `low` if the stored one is stale. `None` if no longer pending.
    pub fn payload_for_send(&mut self, seq: u64) -> Result<Option<(String, Vec<u8>)>, OutboxError> {
        if !self.index.contains_key(&seq) {
            return Ok(None);
        }
        let Some(record) = self.store.outbox_get(seq)? else {
            return Ok(None);
        };
        let low = self.low();
        if record.low >= low {
            return Ok(Some((record.topic, record.payload)));
        }
        let mut envelope = self.unseal(seq, &record)?;
        envelope.low = low;
        let payload = self.seal(&envelope)?;
        let record = OutboxRecord {
            low,
            payload,
            ..record
        };
        self.store
            .outbox_commit(Some((seq, &record)), &[], self.next_seq)?;
        if let Some(meta) = self.index.get_mut(&seq) {
            self.bytes = self.bytes - meta.size + record.size();
            meta.size = record.size();
        }
        Ok(Some((record.topic, record.payload)))
    }
}

/// The outbox shared by the agent's tasks, updating the snapshot on every change.
#[derive(Debug, Clone)]
pub struct Uplink {
    outbox: Arc<Mutex<Outbox>>,
    snapshots: Snapshots,
    notify: Arc<Notify>,
}

impl Uplink {
    /// Shares `outbox`.
    pub fn new(outbox: Outbox, snapshots: Snapshots) -> Self {
        let notify = outbox.notifier();
        let uplink = Self {
            outbox: Arc::new(Mutex::new(outbox)),
            snapshots,
            notify,
        };
        uplink.refresh();
        uplink
    }

    /// Locks the outbox (short, synchronous sections only).
    pub fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Woken on every enqueue.
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Enqueues `message` (see [`Outbox::enqueue`]).
    pub fn send(&self, message: Message) -> Result<u64, OutboxError> {
        let result = self.lock().enqueue(message);
        self.refresh();
        result
    }

    /// [`Uplink::send`] for a caller that goes on when the message is held
    /// in memory because the store refuses writes (`None`): it is stored
    /// and sent later.
    pub fn post(&self, message: Message) -> Result<Option<u64>, OutboxError> {
        match self.send(message) {
            Ok(seq) => Ok(Some(seq)),
            Err(OutboxError::Held { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores the messages held while the store refused writes (see
    /// [`Outbox::store_held`]).
    pub fn store_held(&self) {
        let had = {
            let mut outbox = self.lock();
            let had = outbox.held() > 0;
            if had {
                outbox.store_held();
            }
            had
        };
        if had {
            self.refresh();
        }
    }

    /// Applies a manager ack (see [`Outbox::ack`]).
    pub fn ack(&self, acked_seq: u64, instance: Option<&InstanceId>) -> Result<usize, OutboxError> {
        let result = self.lock().ack(acked_seq, instance);
        self.refresh();
        result
    }

    /// Deletes entries settled per message (see [`Outbox::settle`]).
    pub fn settle(&self, seqs: &[u64]) -> Result<usize, OutboxError> {
        let result = self.lock().settle(seqs);
        self.refresh();
        result
    }

    /// Copies the outbox size into the snapshot.
    pub fn refresh(&self) {
        let (len, bytes) = {
            let outbox = self.lock();
            (outbox.len(), outbox.bytes())
        };
        self.snapshots.update(|s| {
            s.outbox_len = len;
            s.outbox_bytes = bytes;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use margo_schemas::messages::StatusReport;
    use margo_schemas::messages::{StateReport, SyncReason, SyncRequest};
    use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus};
    use proptest::prelude::*;

    fn dep(s: &str) -> DeploymentId {
        DeploymentId::new(s).unwrap()
    }

    fn status(id: &str, state: DeploymentState) -> Message {
        Message::Status(StatusReport {
            adopted_manifest_version: 1,
            status: DeploymentStatus::new(
                dep(id),
                vec![ComponentStatus {
                    name: "c".into(),
                    state,
                    error: None,
                }],
                None,
            ),
        })
    }

    fn state() -> Message {
        Message::State(StateReport {
            adopted_manifest_version: 0,
            agent_version: "t".into(),
            deployments: vec![],
            schedule: None,
        })
    }

    fn outbox(store: Store, key: Arc<SigningKey>, max_entries: usize) -> Outbox {
        Outbox::open(
            store,
            ClientId::new("c1").unwrap(),
            key,
            Arc::new(SystemClock),
            OutboxConfig {
                max_entries,
                max_bytes: 1 << 20,
            },
            Arc::new(AgentStats::default()),
        )
        .unwrap()
    }

    fn open_env(ob: &Outbox, payload: &[u8]) -> Envelope {
        codec::decode(&ob.own_key.verify(payload).unwrap(), 1 << 20).unwrap()
    }

    #[test]
    fn seqs_start_at_one_persist_and_ack_trims() {
        let store = Store::in_memory().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let key = Arc::new(key);
        let mut ob = outbox(store.clone(), key.clone(), 100);
        assert_eq!(ob.enqueue(state()).unwrap(), 1);
        assert_eq!(
            ob.enqueue(status("a", DeploymentState::Installing))
                .unwrap(),
            2
        );
        assert_eq!(ob.enqueue(state()).unwrap(), 3);
        let (topic, payload) = ob.payload_for_send(3).unwrap().unwrap();
        assert_eq!(topic, "margo/v1/clients/c1/state");
        let env = open_env(&ob, &payload);
        assert_eq!((env.seq, env.low), (3, 1));

        let mut ob = outbox(store.clone(), key.clone(), 100);
        assert_eq!(ob.pending(), vec![1, 2, 3]);
        assert_eq!(ob.ack(2, None).unwrap(), 2);
        assert_eq!(ob.pending(), vec![3]);
        assert_eq!(ob.enqueue(state()).unwrap(), 4);
        let ob = outbox(store, key, 100);
        assert_eq!(ob.pending(), vec![3, 4]);
        assert_eq!(ob.next_seq(), 5);
    }

    #[test]
    fn full_outbox_coalesces_statuses_then_drops_oldest_other() {
        let store = Store::in_memory().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let mut ob = outbox(store, Arc::new(key), 4);
        ob.enqueue(state()).unwrap(); // 1
        ob.enqueue(status("a", DeploymentState::Installing))
            .unwrap(); // 2
        ob.enqueue(status("b", DeploymentState::Installing))
            .unwrap(); // 3
        ob.enqueue(status("a", DeploymentState::Installed)).unwrap(); // 4
                                                                      // Full: the superseded status 2 goes first.
        ob.enqueue(status("b", DeploymentState::Installed)).unwrap(); // 5
        assert_eq!(ob.pending(), vec![1, 3, 4, 5]);
        // Then 3 (superseded by 5).
        ob.enqueue(state()).unwrap(); // 6
        assert_eq!(ob.pending(), vec![1, 4, 5, 6]);
        // No superseded statuses left: the oldest non-status goes.
        ob.enqueue(state()).unwrap(); // 7
        assert_eq!(ob.pending(), vec![4, 5, 6, 7]);
        assert_eq!(
            ob.stats
                .dropped_superseded
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(
            ob.stats
                .dropped_other
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // The low of the newest envelope reflects the drops.
        let (_, payload) = ob.payload_for_send(7).unwrap().unwrap();
        assert_eq!(open_env(&ob, &payload).low, 4);
    }

    #[test]
    fn latest_statuses_are_never_dropped() {
        let store = Store::in_memory().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let mut ob = outbox(store, Arc::new(key), 2);
        ob.enqueue(status("a", DeploymentState::Installed)).unwrap();
        ob.enqueue(status("b", DeploymentState::Installed)).unwrap();
        // A status of a third deployment goes over the limit.
        ob.enqueue(status("c", DeploymentState::Installed)).unwrap();
        assert_eq!(ob.len(), 3);
        // A non-status message that cannot fit is refused.
        assert!(matches!(ob.enqueue(state()), Err(OutboxError::Full { .. })));
        assert_eq!(ob.len(), 3);
        let sync = Message::Sync(SyncRequest {
            reason: SyncReason::Check,
            adopted_manifest_version: 0,
        });
        assert!(matches!(ob.enqueue(sync), Err(OutboxError::Full { .. })));
    }

    #[test]
    fn stale_low_is_resealed_and_ack_beyond_renumbers() {
        let store = Store::in_memory().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let mut ob = outbox(store, Arc::new(key), 100);
        for _ in 0..3 {
            ob.enqueue(state()).unwrap();
        }
        ob.ack(1, None).unwrap();
        let (_, payload) = ob.payload_for_send(3).unwrap().unwrap();
        let env = open_env(&ob, &payload);
        assert_eq!((env.seq, env.low), (3, 2));

        // The manager has seen up to 50 from a previous life of this client.
        ob.ack(50, None).unwrap();
        assert_eq!(ob.pending(), vec![51, 52]);
        let (_, payload) = ob.payload_for_send(52).unwrap().unwrap();
        let env = open_env(&ob, &payload);
        assert_eq!((env.seq, env.low), (52, 51));
        assert_eq!(ob.enqueue(state()).unwrap(), 53);
    }

    #[test]
    fn acks_for_another_instance_neither_trim_nor_renumber() {
        let store = Store::in_memory().unwrap();
        let own = store.instance_id().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let mut ob = outbox(store, Arc::new(key), 100);
        for _ in 0..3 {
            ob.enqueue(state()).unwrap();
        }
        let (_, payload) = ob.payload_for_send(1).unwrap().unwrap();
        assert_eq!(open_env(&ob, &payload).instance.as_ref(), Some(&own));

        // A clone's acks, below and beyond our seqs: ignored.
        let clone = InstanceId::generate();
        assert_eq!(ob.ack(2, Some(&clone)).unwrap(), 0);
        assert_eq!(ob.ack(500, Some(&clone)).unwrap(), 0);
        assert_eq!(ob.pending(), vec![1, 2, 3]);
        assert_eq!(ob.next_seq(), 4);

        // Our own: trims, and beyond our seqs still renumbers (store reset).
        assert_eq!(ob.ack(1, Some(&own)).unwrap(), 1);
        ob.ack(50, Some(&own)).unwrap();
        assert_eq!(ob.pending(), vec![51, 52]);
    }

    #[test]
    fn message_and_settle_serve_the_http_transport() {
        let store = Store::in_memory().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        let mut ob = outbox(store.clone(), Arc::new(key), 100);
        ob.enqueue(state()).unwrap();
        ob.enqueue(status("a", DeploymentState::Installed)).unwrap();
        assert!(matches!(ob.message(2).unwrap(), Some(Message::Status(_))));
        assert_eq!(ob.settle(&[2, 7]).unwrap(), 1);
        assert_eq!(ob.pending(), vec![1]);
        assert!(ob.message(2).unwrap().is_none());
        assert_eq!(ob.enqueue(state()).unwrap(), 3, "seqs keep counting");
    }

    fn meta_strategy() -> impl Strategy<Value = EntryMeta> {
        (1usize..200, proptest::option::of(0u8..4)).prop_map(|(size, dep_no)| EntryMeta {
            size,
            status_of: dep_no.map(|n| DeploymentId::new(format!("d{n}")).unwrap()),
        })
    }

    proptest! {
        #[test]
        fn policy_invariants(
            existing in proptest::collection::vec(meta_strategy(), 0..40),
            new in meta_strategy(),
            max_entries in 1usize..30,
            max_bytes in 50usize..3000,
        ) {
            let pending: BTreeMap<u64, EntryMeta> =
                existing.into_iter().enumerate().map(|(i, m)| (i as u64 + 1, m)).collect();
            let limits = OutboxConfig { max_entries, max_bytes };
            let plan = plan_drops(&pending, &new, &limits);
            // Never drops the latest status of any deployment (counting the new one).
            let mut after: Vec<&EntryMeta> = pending
                .iter()
                .filter(|(s, _)| !plan.drop.contains(s))
                .map(|(_, m)| m)
                .collect();
            for (seq, meta) in &pending {
                if let Some(id) = &meta.status_of {
                    let is_latest = new.status_of.as_ref() != Some(id)
                        && !pending.range(seq + 1..).any(|(_, m)| m.status_of.as_ref() == Some(id));
                    if is_latest {
                        prop_assert!(!plan.drop.contains(seq), "dropped latest status {seq}");
                    }
                }
            }
            // A new status is always accepted.
            if new.status_of.is_some() {
                prop_assert!(plan.accept_new);
            }
            if plan.accept_new {
                after.push(&new);
            }
            let count = after.len();
            let bytes: usize = after.iter().map(|m| m.size).sum();
            let fits = count <= max_entries && bytes <= max_bytes;
            // Drops happen only when needed, and only until it fits.
            if pending.len() < max_entries
                && pending.values().map(|m| m.size).sum::<usize>() + new.size <= max_bytes
            {
                prop_assert!(plan.drop.is_empty() && plan.accept_new);
            }
            // Over the limit only if what remains is latest statuses (or the new status).
            if !fits {
                let non_status_left = after.iter().filter(|m| m.status_of.is_none()).count();
                prop_assert_eq!(non_status_left, 0);
            }
            // Superseded statuses go before any non-status entry is dropped.
            let dropped_other = plan.drop.iter().any(|s| pending[s].status_of.is_none());
            if dropped_other {
                for (seq, meta) in &pending {
                    if let Some(id) = &meta.status_of {
                        let superseded = new.status_of.as_ref() == Some(id)
                            || pending.range(seq + 1..).any(|(_, m)| m.status_of.as_ref() == Some(id));
                        prop_assert!(!superseded || plan.drop.contains(seq));
                    }
                }
            }
        }
    }
}
