//! A reserve of file descriptors for known clients (issue 12, finding 4).
//!
//! Strangers could hold enough sockets (stalled handshakes from many
//! addresses) to take the process to `Too many open files`, and then no
//! device, no manager session and no admin command got in. Linux hands out
//! the lowest free descriptor number, so an accepted socket numbered `n`
//! proves that at least `n` descriptors are open. Once that number reaches
//! the soft `RLIMIT_NOFILE` minus the reserve, a new connection is kept
//! only if its source network (an IPv4 address, an IPv6 /64) recently held
//! an authenticated session: a device through the gateway, or a device on
//! the HTTPS API. Everyone else is closed at once, so the last descriptors
//! go to the fleet, the manager's own sessions, its store and the admin
//! socket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use margo_schemas::source_network;

/// How long a source network stays known after its last authenticated session.
pub const KNOWN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most source networks remembered (the oldest are forgotten first).
pub const MAX_KNOWN: usize = 65_536;

/// The reserve, shared by every listener of one process.
#[derive(Debug)]
pub struct FdReserve {
    /// Descriptor number from which only known sources are admitted;
    /// `None`: no limit (or it could not be read).
    threshold: Option<u64>,
    known: Mutex<HashMap<IpAddr, Instant>>,
}

impl FdReserve {
    /// Keeps the top `reserve` descriptors of this process's soft
    /// `RLIMIT_NOFILE` for known sources.
    pub fn new(reserve: u64) -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Self::with_limit(limit, reserve)
    }

    /// Like [`FdReserve::new`] for a given descriptor limit (`None`: none).
    pub fn with_limit(limit: Option<u64>, reserve: u64) -> Self {
        Self {
            threshold: limit.map(|limit| limit.saturating_sub(reserve)),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The descriptor number from which only known sources get in.
    pub fn threshold(&self) -> Option<u64> {
        self.threshold
    }

    /// Whether a connection from `peer` accepted as descriptor `fd` may
    /// stay: always below the threshold, else only from a known source.
    pub fn admits(&self, fd: u64, peer: IpAddr) -> bool {
        match self.threshold {
            Some(threshold) if fd >= threshold => self.is_known(peer, Instant::now()),
            _ => true,
        }
    }

    /// Records that `peer` just held an authenticated session.
    pub fn mark_known(&self, peer: IpAddr) {
        self.mark_known_at(peer, Instant::now());
    }

    fn is_known(&self, peer: IpAddr, now: Instant) -> bool {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(&source_network::of(peer))
            .is_some_and(|seen| now.saturating_duration_since(*seen) < KNOWN_FOR)
    }

    fn mark_known_at(&self, peer: IpAddr, now: Instant) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let network = source_network::of(peer);
        if known.len() >= MAX_KNOWN && !known.contains_key(&network) {
            known.retain(|_, seen| now.saturating_duration_since(*seen) < KNOWN_FOR);
            if known.len() >= MAX_KNOWN {
                // Still full of recent sources: forget the oldest one.
                if let Some(oldest) = known.iter().min_by_key(|(_, seen)| **seen).map(|(k, _)| *k) {
                    known.remove(&oldest);
                }
            }
        }
        known.insert(network, now);
    }
}

/// The descriptor number of `socket`, as [`FdReserve::admits`] takes it.
#[cfg(unix)]
pub fn fd_of(socket: &impl std::os::fd::AsRawFd) -> u64 {
    u64::try_from(socket.as_raw_fd()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn below_the_threshold_everyone_is_admitted() {
        let reserve = FdReserve::with_limit(Some(1024), 256);
        assert_eq!(reserve.threshold(), Some(768));
        assert!(reserve.admits(767, ip("192.0.2.1")));
        assert!(!reserve.admits(768, ip("192.0.2.1")));
        let unlimited = FdReserve::with_limit(None, 256);
        assert!(unlimited.admits(1_000_000, ip("192.0.2.1")));
    }

    #[test]
    fn in_the_reserve_only_known_source_networks_get_in() {
        let reserve = FdReserve::with_limit(Some(100), 50);
        reserve.mark_known(ip("192.0.2.7"));
        reserve.mark_known(ip("2001:db8:1:2::5"));
        assert!(reserve.admits(60, ip("192.0.2.7")));
        assert!(!reserve.admits(60, ip("192.0.2.8")));
        // The same IPv6 /64, another address in it.
        assert!(reserve.admits(60, ip("2001:db8:1:2:ffff::1")));
        assert!(!reserve.admits(60, ip("2001:db8:1:3::1")));
    }

    #[test]
    fn known_sources_are_forgotten_after_a_while() {
        let reserve = FdReserve::with_limit(Some(100), 50);
        let then = Instant::now();
        reserve.mark_known_at(ip("192.0.2.7"), then);
        assert!(reserve.is_known(ip("192.0.2.7"), then + KNOWN_FOR / 2));
        assert!(!reserve.is_known(ip("192.0.2.7"), then + KNOWN_FOR));
    }

    #[test]
    fn the_memory_is_bounded() {
        let reserve = FdReserve::with_limit(Some(100), 50);
        let start = Instant::now();
        for n in 0..=MAX_KNOWN as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            reserve.mark_known_at(ip, start + Duration::from_millis(u64::from(n)));
        }
        let known = reserve.known.lock().expect("lock");
        assert_eq!(known.len(), MAX_KNOWN);
        assert!(
            !known.contains_key(&ip("10.0.0.0")),
            "the oldest is forgotten"
        );
    }
}
