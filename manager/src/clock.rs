//! The manager's wall clock, read through one cheap handle so decisions that
//! depend on time can be tested without sleeping.
//!
//! The store owns a [`Clock`] ([`crate::store::Store::clock`]) and stamps
//! every timestamp it writes with it (received reports, onboarding requests,
//! enrollment tokens, clients, remote configuration); ingest stamps the
//! audit events it records and the publisher the envelopes it signs with the
//! same clock; the decisions read it too: enrollment token expiry, the availability a status query
//! classifies (`last seen` against now) and the age of an RFC 9421
//! signature (`http::access::AuthSettings::clock`). [`Clock::system`] is the
//! real wall clock; [`ManualClock`] is one a test sets and advances
//! (`Manager::start_with_clock`).
//!
//! Monotonic timers (uplink batching, rate limits, timeouts) stay on tokio
//! and `std::time::Instant`; certificate validity uses the system clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the manager reads "now" (milliseconds since the Unix epoch).
/// Cheap to clone; the default is the system clock.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system wall clock.
    pub fn system() -> Self {
        Self(Source::System)
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Source::System => system_now_ms(),
            Source::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }
}

/// The system wall clock in milliseconds since the Unix epoch (0 before
/// the epoch).
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A clock that stands still until the test moves it; [`ManualClock::clock`]
/// hands the manager a [`Clock`] reading it.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `unix_ms`.
    pub fn starting_at(unix_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(unix_ms)))
    }

    /// A clock reading the system wall clock's current time (so timestamps
    /// devices send and certificates stay plausible next to it).
    pub fn starting_now() -> Self {
        Self::starting_at(system_now_ms())
    }

    /// The [`Clock`] to give the manager.
    pub fn clock(&self) -> Clock {
        Clock(Source::Manual(Arc::clone(&self.0)))
    }

    /// What the clock reads.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the clock (forwards or backwards: real clocks jump too).
    pub fn set_unix_ms(&self, unix_ms: u64) {
        self.0.store(unix_ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`; returns the new reading.
    pub fn advance(&self, by: Duration) -> u64 {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let before = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(ms))
            })
            .unwrap_or_else(|now| now);
        before.saturating_add(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_every_handle_sees_it() {
        let manual = ManualClock::starting_at(1_000);
        let clock = manual.clock();
        let copy = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(manual.advance(Duration::from_millis(1_500)), 2_500);
        assert_eq!((clock.now_ms(), copy.now_ms()), (2_500, 2_500));
        manual.set_unix_ms(10);
        assert_eq!(copy.now_ms(), 10);
        manual.set_unix_ms(u64::MAX - 1);
        assert_eq!(
            manual.advance(Duration::from_secs(1)),
            u64::MAX,
            "saturates"
        );
    }

    #[test]
    fn the_system_clock_is_the_default_and_reads_the_wall_clock() {
        let before = system_now_ms();
        let now = Clock::default().now_ms();
        assert!(now >= before && now <= system_now_ms());
        assert!(before > 1_700_000_000_000, "after 2023");
        let manual = ManualClock::starting_now();
        assert!(manual.now_ms() >= before);
    }
}
