//! The uplink seq window of one client: which of its uplink seqs are
//! settled, as a plain value with no I/O (rumqttc keeps its `MqttState`
//! apart from the event loop the same way).
//!
//! A seq is settled once the manager stored it (or refused it on content
//! and acknowledged it), and every seq below an envelope's `low` is settled
//! too: the device's outbox holds nothing below it any more. A settled seq
//! that arrives again is a duplicate: acknowledged, not stored again.
//!
//! The window is a high-water mark, `hwm` (every seq in `1..=hwm` is
//! settled; it is the `ackedSeq` the device sees), and the set of settled
//! seqs above it, there because of a gap. Every method keeps it canonical:
//! each seq of the set is above `hwm + 1` (a settled `hwm + 1` is absorbed
//! into the mark, and the mark then runs over the contiguous seqs after it).
//! So the set is empty unless a seq is missing, and it never holds more than
//! `highest - hwm - 1` seqs, `highest` being the highest settled seq: it is
//! bounded by the gap between the mark and the newest seq, which a device
//! closes by sending the missing seq or by moving `low` past it.
//!
//! The store keeps a window as the mark (table `uplink_hwm`, clientId → u64)
//! and one row per seq of the set (table `uplink_above_hwm`, (clientId, seq)
//! → ()); see [`SeqWindow::from_parts`].

use std::collections::BTreeSet;

/// Whether a seq was new to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not settled before: settled now.
    New,
    /// Already settled (at or below the mark, or in the set above it).
    Duplicate,
}

/// The settled uplink seqs of one client (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqWindow {
    hwm: u64,
    above: BTreeSet<u64>,
}

impl SeqWindow {
    /// A window from its stored parts: the mark and the seqs above it.
    /// Seqs at or below the mark are dropped and the mark runs over the
    /// contiguous seqs after it, so any stored parts give a canonical window
    /// (what this type writes is canonical already, and reads back equal).
    pub fn from_parts(hwm: u64, above: impl IntoIterator<Item = u64>) -> Self {
        let mut window = Self {
            hwm,
            above: above.into_iter().filter(|&seq| seq > hwm).collect(),
        };
        window.advance();
        window
    }

    /// The high-water mark: every seq in `1..=hwm` is settled.
    pub fn hwm(&self) -> u64 {
        self.hwm
    }

    /// The settled seqs above the mark, ascending (each above `hwm + 1`).
    pub fn above(&self) -> &BTreeSet<u64> {
        &self.above
    }

    /// Whether `seq` is settled: a duplicate if it arrives again.
    pub fn is_settled(&self, seq: u64) -> bool {
        seq <= self.hwm || self.above.contains(&seq)
    }

    /// Settles every seq below `low` (an envelope's `low`: the lowest seq
    /// still in the device's outbox; 0 says nothing).
    pub fn settle_below(&mut self, low: u64) {
        let floor = low.saturating_sub(1);
        if floor > self.hwm {
            self.hwm = floor;
            self.above = self.above.split_off(&floor.saturating_add(1));
            self.advance();
        }
    }

    /// Settles `seq`; [`Seen::Duplicate`] (and nothing changes) if it was
    /// settled already.
    pub fn settle(&mut self, seq: u64) -> Seen {
        if self.is_settled(seq) {
            return Seen::Duplicate;
        }
        self.above.insert(seq);
        self.advance();
        Seen::New
    }

    /// Moves the mark over the settled seqs right after it.
    fn advance(&mut self) {
        while let Some(next) = self.hwm.checked_add(1) {
            if !self.above.remove(&next) {
                break;
            }
            self.hwm = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One arrival: an envelope's seq and low.
    #[derive(Debug, Clone, Copy)]
    struct Arrival {
        seq: u64,
        low: u64,
    }

    fn arrival() -> impl Strategy<Value = Arrival> {
        // Small seqs so that duplicates, gaps and contiguous runs all occur;
        // `low` is 0 (says nothing) half of the time.
        (1u64..48, prop_oneof![Just(0u64), 0u64..48]).prop_map(|(seq, low)| Arrival { seq, low })
    }

    fn receive(window: &mut SeqWindow, a: Arrival) -> Seen {
        window.settle_below(a.low);
        window.settle(a.seq)
    }

    fn run(arrivals: &[Arrival]) -> SeqWindow {
        let mut window = SeqWindow::default();
        for a in arrivals {
            receive(&mut window, *a);
        }
        window
    }

    /// The oracle: the settled set written out, and the mark as the longest
    /// run `1..=h` inside it.
    fn oracle(arrivals: &[Arrival]) -> (u64, BTreeSet<u64>) {
        let mut settled: BTreeSet<u64> = BTreeSet::new();
        for a in arrivals {
            settled.extend(1..a.low);
            settled.insert(a.seq);
        }
        let mut hwm = 0;
        while settled.contains(&(hwm + 1)) {
            hwm += 1;
        }
        let above = settled.into_iter().filter(|&s| s > hwm).collect();
        (hwm, above)
    }

    fn assert_canonical(window: &SeqWindow) -> Result<(), TestCaseError> {
        if let Some(&first) = window.above().first() {
            prop_assert!(
                first > window.hwm() + 1,
                "{window:?}: hwm + 1 is in the set"
            );
        }
        if let Some(&highest) = window.above().last() {
            prop_assert!(
                (window.above().len() as u64) < highest - window.hwm(),
                "{window:?} holds more than the gap"
            );
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn a_seq_settled_twice_is_a_duplicate_the_second_time(
            arrivals in prop::collection::vec(arrival(), 0..64),
            seq in 1u64..64,
        ) {
            let mut window = run(&arrivals);
            let first = window.settle(seq);
            prop_assert_eq!(first == Seen::New, !run(&arrivals).is_settled(seq));
            let settled = window.clone();
            prop_assert_eq!(window.settle(seq), Seen::Duplicate);
            prop_assert_eq!(window, settled, "a duplicate changes nothing");
        }

        #[test]
        fn the_order_of_arrival_does_not_change_the_window(
            (arrivals, shuffled) in prop::collection::vec(arrival(), 0..64)
                .prop_flat_map(|a| (Just(a.clone()), Just(a).prop_shuffle())),
        ) {
            prop_assert_eq!(run(&arrivals), run(&shuffled));
        }

        #[test]
        fn the_window_is_what_the_oracle_says_and_stays_bounded(
            arrivals in prop::collection::vec(arrival(), 0..64),
        ) {
            let mut window = SeqWindow::default();
            let mut seen = BTreeSet::new();
            for (i, a) in arrivals.iter().enumerate() {
                let (hwm_before, above_before) = oracle(&arrivals[..i]);
                let settled_before = a.seq <= hwm_before.max(a.low.saturating_sub(1))
                    || above_before.contains(&a.seq);
                let outcome = receive(&mut window, *a);
                prop_assert_eq!(outcome == Seen::Duplicate, settled_before);
                let (hwm, above) = oracle(&arrivals[..=i]);
                prop_assert_eq!(window.hwm(), hwm);
                prop_assert_eq!(window.above(), &above);
                assert_canonical(&window)?;
                seen.insert(a.seq);
                prop_assert!(window.above().len() <= seen.len());
            }
        }

        #[test]
        fn everything_at_or_below_the_mark_is_a_duplicate(
            arrivals in prop::collection::vec(arrival(), 0..64),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut window = run(&arrivals);
            // Seqs here stay below 64, so the mark fits a usize.
            let seq = pick.index(window.hwm() as usize + 1) as u64;
            prop_assert!(window.is_settled(seq));
            let before = window.clone();
            prop_assert_eq!(window.settle(seq), Seen::Duplicate);
            prop_assert_eq!(window, before);
        }

        #[test]
        fn the_mark_runs_over_contiguous_seqs(
            (n, order) in (1u64..64).prop_flat_map(|n| {
                (Just(n), Just((1..=n).collect::<Vec<u64>>()).prop_shuffle())
            }),
            gap_after in 0u64..64,
        ) {
            // 1..=n in any order: the mark ends at n with nothing above it.
            let mut window = SeqWindow::default();
            for &seq in &order {
                prop_assert_eq!(window.settle(seq), Seen::New);
            }
            prop_assert_eq!(window.hwm(), n);
            prop_assert!(window.above().is_empty());
            // A missing seq stops it; settling the missing one runs over the rest.
            let missing = n + 1 + gap_after % 4;
            let mut window = SeqWindow::default();
            for seq in (1..=missing + 3).filter(|&s| s != missing) {
                window.settle(seq);
            }
            prop_assert_eq!(window.hwm(), missing - 1);
            prop_assert_eq!(window.above().len(), 3);
            window.settle(missing);
            prop_assert_eq!(window.hwm(), missing + 3);
            prop_assert!(window.above().is_empty());
        }

        #[test]
        fn stored_parts_read_back_equal(arrivals in prop::collection::vec(arrival(), 0..64)) {
            let window = run(&arrivals);
            let read = SeqWindow::from_parts(window.hwm(), window.above().iter().copied());
            prop_assert_eq!(read, window);
        }
    }

    #[test]
    fn low_settles_a_dropped_seq_and_clears_the_set_below_it() {
        // The case of `store::tests::high_water_mark_follows_gaps_and_low`.
        let mut window = SeqWindow::from_parts(6, []);
        assert_eq!(receive(&mut window, Arrival { seq: 9, low: 1 }), Seen::New);
        assert_eq!(window.hwm(), 6);
        assert_eq!(
            receive(&mut window, Arrival { seq: 12, low: 11 }),
            Seen::New
        );
        assert_eq!(window.hwm(), 10);
        assert_eq!(window.above(), &BTreeSet::from([12]));
        assert_eq!(window.settle(4), Seen::Duplicate);
    }

    #[test]
    fn the_mark_stops_at_the_largest_seq() {
        let mut window = SeqWindow::from_parts(u64::MAX - 1, []);
        assert_eq!(window.settle(u64::MAX), Seen::New);
        assert_eq!(window.hwm(), u64::MAX);
        assert_eq!(window.settle(u64::MAX), Seen::Duplicate);
        window.settle_below(u64::MAX);
        assert_eq!(window.hwm(), u64::MAX);
    }
}
