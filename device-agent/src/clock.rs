//! Time, read through one small trait so schedules and retries can later be
//! driven by a simulated clock in tests.
//!
//! Monotonic instants are `tokio::time::Instant`, so tests using tokio's
//! paused time work with [`SystemClock`] too.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A boxed sleep future returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the agent reads "now" and how it waits.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Monotonic now, for timers and deadlines.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch, for message timestamps.
    fn unix_ms(&self) -> u64;
    /// Completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep;
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> Sleep {
        self.sleep_until(self.now() + duration)
    }
}

/// The real clock (tokio timers, system wall clock).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(deadline))
    }
}

/// Exponential backoff with full jitter in `[base/2, base]`, doubling from
/// `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `min`, capped at `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The undithered delay for the current attempt.
    pub fn base(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay (jittered) and advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base();
        self.attempt = self.attempt.saturating_add(1);
        jitter(base)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to `min` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random duration in `[d/2, d]`.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let spread = u64::try_from((d - half).as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(fastrand::u64(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let bases: Vec<_> = (0..6)
            .map(|_| {
                let base = b.base();
                let d = b.next_delay();
                assert!(
                    d <= base && d >= base / 2,
                    "{d:?} outside [{base:?}/2, {base:?}]"
                );
                base.as_secs()
            })
            .collect();
        assert_eq!(bases, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.base(), Duration::from_secs(1));
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.base(), Duration::from_secs(10));
    }
}
