//! Which agent store (instance id) a client's uplink comes from (issue 12,
//! finding 9). Agents put their store's random instance id into every
//! uplink envelope; two devices cloned from one bundle show up as uplink
//! switching between two instance ids, with either broker.
//!
//! Per client the store keeps the instance of the newest envelope (named
//! in the client's ack, so the other device ignores it), the highest seq
//! seen from each recent instance, and when the sending instance changed.
//! One change is a store reset (or restore); [`CloneRule::switches`]
//! changes within [`CloneRule::window`] make the client a suspected clone.
//! An instance that sends again after another one did (a clone, not a
//! reset) is acked no higher than the highest seq it sent, so the other's
//! higher seqs never make it renumber its outbox: of two clones, only the
//! second, at its first appearance, can renumber once.

use margo_broker::CloneRule;
use margo_schemas::ids::InstanceId;
use margo_schemas::messages::Ack;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{decode, encode, Result};

/// clientId → CBOR [`InstanceTrack`].
pub(super) const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("uplink_instances");

/// Instances remembered per client (their highest seqs).
const MAX_INSTANCES: usize = 8;
/// Instance changes remembered per client.
const MAX_CHANGES: usize = 64;

/// Creates the table (at open).
pub(super) fn open_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(INSTANCES)?;
    Ok(())
}

/// One client's uplink instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceTrack {
    /// The instance of the newest envelope.
    last: Option<InstanceId>,
    /// Highest seq seen per instance, most recently seen last.
    seqs: Vec<(InstanceId, u64)>,
    /// When the sending instance changed (ms), within the window.
    changes: Vec<u64>,
    /// Since when the changes make it a suspected clone (ms).
    suspected_since: Option<u64>,
    /// Whether the newest instance sent before, then another one did, then
    /// it again (within the window of changes).
    #[serde(default)]
    returned: bool,
}

/// A suspected clone found in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceClone {
    /// The instances seen recently, most recent last.
    pub instances: Vec<InstanceId>,
    /// Since when (ms).
    pub since_ms: u64,
}

impl InstanceTrack {
    /// Notes an envelope of `instance` with `seq` at `now_ms`. Returns the
    /// suspicion while one lasts.
    pub(crate) fn observe(
        &mut self,
        instance: &InstanceId,
        seq: u64,
        now_ms: u64,
        rule: &CloneRule,
    ) -> Option<InstanceClone> {
        let window = u64::try_from(rule.window.as_millis()).unwrap_or(u64::MAX);
        let oldest = now_ms.saturating_sub(window);
        self.changes.retain(|at| *at >= oldest);
        if self.changes.is_empty() {
            self.returned = false;
        }
        if self.last.as_ref().is_some_and(|last| last != instance) {
            self.returned = self.seqs.iter().any(|(i, _)| i == instance);
            self.changes.push(now_ms);
            if self.changes.len() > MAX_CHANGES {
                self.changes.remove(0);
            }
        }
        self.last = Some(instance.clone());
        let highest = match self.seqs.iter().position(|(i, _)| i == instance) {
            Some(at) => self.seqs.remove(at).1.max(seq),
            None => seq,
        };
        self.seqs.push((instance.clone(), highest));
        if self.seqs.len() > MAX_INSTANCES {
            self.seqs.remove(0);
        }
        if self.changes.len() >= rule.switches as usize {
            self.suspected_since.get_or_insert(now_ms);
        } else if self.changes.is_empty() {
            // A whole window without a change: it stopped.
            self.suspected_since = None;
        }
        self.suspected_since.map(|since_ms| InstanceClone {
            instances: self.seqs.iter().map(|(i, _)| i.clone()).collect(),
            since_ms,
        })
    }

    /// `ack` as the newest instance should see it: named, and when it
    /// came back after another instance, no higher than the highest seq it
    /// sent.
    pub(crate) fn shape(&self, ack: &mut Ack) {
        let Some(last) = &self.last else {
            return;
        };
        ack.instance = Some(last.clone());
        if self.returned || self.suspected_since.is_some() {
            if let Some((_, highest)) = self.seqs.iter().find(|(i, _)| i == last) {
                ack.acked_seq = ack.acked_seq.min(*highest);
            }
        }
    }
}

/// Reads `client`'s track from `table` (empty if none).
pub(super) fn read_track(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    client: &str,
) -> Result<InstanceTrack> {
    table
        .get(client)?
        .map(|v| decode::<InstanceTrack>("uplink_instances", v.value()))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Shapes `ack` for `client` by its stored track ([`InstanceTrack::shape`]).
pub(super) fn shape_ack(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    client: &str,
    ack: &mut Ack,
) -> Result<()> {
    read_track(table, client)?.shape(ack);
    Ok(())
}

/// Writes `track` for `client`.
pub(super) fn write_track(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    client: &str,
    track: &InstanceTrack,
) -> Result<()> {
    table.insert(client, encode("uplink_instances", track)?.as_slice())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ack(seq: u64) -> Ack {
        Ack {
            acked_seq: seq,
            manifest_version: 1,
            instance: None,
        }
    }

    #[test]
    fn a_store_reset_is_one_change_and_keeps_the_full_ack() {
        let rule = CloneRule::default();
        let (old, new) = (InstanceId::generate(), InstanceId::generate());
        let mut track = InstanceTrack::default();
        assert!(track.observe(&old, 100, 1_000, &rule).is_none());
        assert!(track.observe(&new, 1, 2_000, &rule).is_none());
        let mut a = ack(100);
        track.shape(&mut a);
        assert_eq!(a.instance.as_ref(), Some(&new));
        assert_eq!(a.acked_seq, 100, "the reset store renumbers above it");
    }

    #[test]
    fn alternating_instances_are_a_clone_whose_acks_stop_at_its_own_seqs() {
        let rule = CloneRule {
            window: Duration::from_secs(60),
            switches: 3,
        };
        let (a, b) = (InstanceId::generate(), InstanceId::generate());
        let mut track = InstanceTrack::default();
        assert!(track.observe(&a, 10, 0, &rule).is_none());
        assert!(track.observe(&b, 50, 1_000, &rule).is_none());
        assert!(track.observe(&a, 11, 2_000, &rule).is_none());
        let mut returned = ack(50);
        track.shape(&mut returned);
        assert_eq!(
            returned.acked_seq, 11,
            "a came back after b: a clone, not a reset"
        );
        let found = track.observe(&b, 51, 3_000, &rule).expect("three changes");
        assert_eq!(found.since_ms, 3_000);
        assert_eq!(found.instances, vec![a.clone(), b.clone()]);
        let mut for_b = ack(51);
        track.shape(&mut for_b);
        assert_eq!((for_b.instance.as_ref(), for_b.acked_seq), (Some(&b), 51));
        track
            .observe(&a, 12, 4_000, &rule)
            .expect("still suspected");
        let mut for_a = ack(51);
        track.shape(&mut for_a);
        assert_eq!(
            (for_a.instance.as_ref(), for_a.acked_seq),
            (Some(&a), 12),
            "never above what a sent"
        );

        // A whole window with one sender only: it stopped.
        assert!(track.observe(&a, 13, 70_000, &rule).is_none());
        let mut later = ack(51);
        track.shape(&mut later);
        assert_eq!(later.acked_seq, 51);
    }
}
