//! A clock whose monotonic time moves only when the test advances it, for
//! timeouts the agent decides by `Clock::now` (content timeout, sync rate
//! limit): a test steps over them exactly instead of sleeping.

use std::sync::Arc;
use std::time::Duration;

use margo_agent::clock::{Clock, Sleep};
use tokio::sync::watch;
use tokio::time::Instant;

/// Monotonic and wall time both start at the real ones and move together,
/// only by [`ManualClock::advance`]; sleeps end once the clock reaches them.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    start_unix_ms: u64,
    /// How far the test has moved the clock.
    elapsed: Arc<watch::Sender<Duration>>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            start_unix_ms: margo_agent::clock::SystemClock.unix_ms(),
            elapsed: Arc::new(watch::Sender::new(Duration::ZERO)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.elapsed.send_modify(|e| *e += by);
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.borrow()
    }

    fn wait_until(&self, done: impl Fn(Duration) -> bool + Send + 'static) -> Sleep {
        let mut rx = self.elapsed.subscribe();
        Box::pin(async move {
            while !done(*rx.borrow_and_update()) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn unix_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.start_unix_ms.saturating_add(elapsed)
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let start = self.start;
        self.wait_until(move |elapsed| start + elapsed >= deadline)
    }

    fn sleep_until_unix_ms(&self, unix_ms: u64) -> Sleep {
        let start = self.start_unix_ms;
        self.wait_until(move |elapsed| {
            let elapsed = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            start.saturating_add(elapsed) >= unix_ms
        })
    }
}
