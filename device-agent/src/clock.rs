//! Time, read through one small trait so schedules and retries can be
//! driven by a simulated clock in tests.
//!
//! Two kinds of time:
//! - Monotonic instants (`tokio::time::Instant`) for timeouts, keep-alive,
//!   backoff and acks. Tests using tokio's paused time work with
//!   [`SystemClock`] too.
//! - Wall-clock time (Unix milliseconds) for message timestamps and for the
//!   schedule: polling windows, checks and downtime are wall-clock facts.
//!   [`Clock::sleep_until_unix_ms`] waits for a wall-clock instant.
//!
//! [`SimulatedClock`] keeps real monotonic time (so network timeouts behave)
//! but lets a test set the wall clock, so days of schedule run in seconds.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
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
    /// Completes once the wall clock reads `unix_ms` or later.
    fn sleep_until_unix_ms(&self, unix_ms: u64) -> Sleep;
}

/// The longest single timer [`SystemClock::sleep_until_unix_ms`] arms before
/// it reads the wall clock again: a device without a battery-backed clock
/// may jump by years when NTP first syncs, and a suspended one stops
/// monotonic time; neither may leave a schedule sleeping for the wrong span.
pub const WALL_RECHECK: Duration = Duration::from_secs(60);

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

    fn sleep_until_unix_ms(&self, unix_ms: u64) -> Sleep {
        let clock = *self;
        Box::pin(async move {
            loop {
                let now = clock.unix_ms();
                if now >= unix_ms {
                    return;
                }
                let left = Duration::from_millis(unix_ms - now);
                tokio::time::sleep(left.min(WALL_RECHECK)).await;
            }
        })
    }
}

/// A clock whose wall time is set by the test; monotonic time is real.
///
/// [`SimulatedClock::next_wake`] tells the earliest wall-clock instant some
/// task is sleeping for, so a test can run a schedule as a discrete-event
/// simulation: wait until the agent is idle, then jump to its next wake-up.
#[derive(Debug, Clone)]
pub struct SimulatedClock {
    inner: Arc<SimInner>,
}

#[derive(Debug)]
struct SimInner {
    wall: watch::Sender<u64>,
    /// Pending wall-clock sleepers: deadline → how many.
    sleepers: Mutex<BTreeMap<u64, usize>>,
}

impl SimulatedClock {
    /// A clock whose wall time starts at `unix_ms`.
    pub fn starting_at(unix_ms: u64) -> Self {
        Self {
            inner: Arc::new(SimInner {
                wall: watch::Sender::new(unix_ms),
                sleepers: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Sets the wall clock (forwards or backwards: real clocks jump too).
    pub fn set_unix_ms(&self, unix_ms: u64) {
        self.inner.wall.send_replace(unix_ms);
    }

    /// Moves the wall clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .wall
            .send_modify(|now| *now = now.saturating_add(ms));
    }

    /// The earliest wall-clock instant a task sleeps for, if any.
    pub fn next_wake(&self) -> Option<u64> {
        lock(&self.inner.sleepers).keys().next().copied()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unregisters a simulated sleeper when its future completes or is dropped.
struct SleeperGuard {
    inner: Arc<SimInner>,
    deadline: u64,
}

impl Drop for SleeperGuard {
    fn drop(&mut self) {
        let mut sleepers = lock(&self.inner.sleepers);
        if let Some(n) = sleepers.get_mut(&self.deadline) {
            *n -= 1;
            if *n == 0 {
                sleepers.remove(&self.deadline);
            }
        }
    }
}

impl Clock for SimulatedClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        *self.inner.wall.borrow()
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(deadline))
    }

    fn sleep_until_unix_ms(&self, unix_ms: u64) -> Sleep {
        let inner = Arc::clone(&self.inner);
        let mut rx = inner.wall.subscribe();
        *lock(&inner.sleepers).entry(unix_ms).or_insert(0) += 1;
        let guard = SleeperGuard {
            inner,
            deadline: unix_ms,
        };
        Box::pin(async move {
            let _guard = guard;
            // The sender lives in `_guard.inner`, so `changed` never fails.
            while *rx.borrow_and_update() < unix_ms {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
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

    #[tokio::test]
    async fn simulated_wall_sleep_wakes_when_the_clock_reaches_it() {
        let clock = SimulatedClock::starting_at(1_000);
        assert_eq!(clock.next_wake(), None);
        let sleep = clock.sleep_until_unix_ms(5_000);
        let task = tokio::spawn(sleep);
        tokio::task::yield_now().await;
        assert_eq!(clock.next_wake(), Some(5_000));
        clock.advance(Duration::from_millis(3_999));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "woke before its wall-clock instant");
        clock.set_unix_ms(5_000);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("woke")
            .expect("no panic");
        assert_eq!(clock.next_wake(), None, "a finished sleeper unregisters");
        // A dropped sleeper unregisters too.
        drop(clock.sleep_until_unix_ms(9_000));
        assert_eq!(clock.next_wake(), None);
        // Already due: completes at once.
        clock.sleep_until_unix_ms(10).await;
    }

    #[tokio::test(start_paused = true)]
    async fn system_wall_sleep_completes_for_a_past_instant() {
        SystemClock.sleep_until_unix_ms(0).await;
    }

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
