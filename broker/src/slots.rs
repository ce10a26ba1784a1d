//! Connection slots capped in total and per source network (an IPv4
//! address, an IPv6 /64: [`margo_schemas::source_network`]). The device
//! gateway holds one for each connection before its CONNECT; the manager's
//! HTTPS listener for each open connection. A slot is given back when
//! dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Which cap refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// Every slot is taken.
    Total,
    /// The source network holds its share.
    PerSource,
}

/// Slots capped at `max_total`, and at `max_per_source` per source network.
#[derive(Debug)]
pub struct SourceSlots {
    max_total: usize,
    max_per_source: usize,
    state: Arc<Mutex<SlotState>>,
}

#[derive(Debug, Default)]
struct SlotState {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One taken slot; given back on drop.
#[derive(Debug)]
pub struct Slot {
    network: IpAddr,
    state: Arc<Mutex<SlotState>>,
}

impl SourceSlots {
    /// Slots for at most `max_total` connections, `max_per_source` from one
    /// source network (each at least 1).
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            state: Arc::default(),
        }
    }

    /// A slot for a connection from `peer`, or which cap refused it.
    pub fn try_take(&self, peer: IpAddr) -> Result<Slot, SlotRefusal> {
        let network = margo_schemas::source_network::of(peer);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.total >= self.max_total {
            return Err(SlotRefusal::Total);
        }
        let from_source = state.per_source.get(&network).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            return Err(SlotRefusal::PerSource);
        }
        state.total += 1;
        state.per_source.insert(network, from_source + 1);
        Ok(Slot {
            network,
            state: Arc::clone(&self.state),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_source.get_mut(&self.network) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_source.remove(&self.network);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_source_network_holds_at_most_its_share_and_gives_it_back() {
        let slots = SourceSlots::new(100, 2);
        let a1 = slots.try_take(ip("192.0.2.1")).expect("first");
        let _a2 = slots.try_take(ip("192.0.2.1")).expect("second");
        assert_eq!(
            slots.try_take(ip("192.0.2.1")).err(),
            Some(SlotRefusal::PerSource)
        );
        let b = slots
            .try_take(ip("192.0.2.2"))
            .expect("another address has its own");
        // One IPv6 /64 is one source.
        let _c1 = slots.try_take(ip("2001:db8::1")).expect("v6 first");
        let _c2 = slots.try_take(ip("2001:db8::ffff:1")).expect("v6 second");
        assert_eq!(
            slots.try_take(ip("2001:db8::abcd")).err(),
            Some(SlotRefusal::PerSource)
        );
        drop(a1);
        assert!(
            slots.try_take(ip("192.0.2.1")).is_ok(),
            "a dropped slot comes back"
        );
        drop(b);
        let state = slots.state.lock().unwrap();
        assert!(
            !state.per_source.contains_key(&ip("192.0.2.2")),
            "empty networks are forgotten"
        );
        assert_eq!(state.total, 3, "a2, c1 and c2 are held");
    }

    #[test]
    fn pending_caps_total_and_per_ip() {
        let pending = SourceSlots::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let p1 = pending.try_take(a).expect("first");
        let _p2 = pending.try_take(a).expect("second");
        assert_eq!(
            pending.try_take(a).err(),
            Some(SlotRefusal::PerSource),
            "per-ip cap"
        );
        let _p3 = pending.try_take(b).expect("other ip");
        assert_eq!(
            pending.try_take(b).err(),
            Some(SlotRefusal::Total),
            "total cap"
        );
        drop(p1);
        assert!(pending.try_take(a).is_ok(), "slot released");
    }
}
