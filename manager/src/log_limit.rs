//! Per-client rate limit for warnings a device can trigger at will.
//!
//! One device sending 5,000 malformed messages must not write 5,000 WARN
//! lines. [`LogLimiter`] lets the first `burst` lines of each client through
//! per `interval`, counts the rest, and reports the count once, with the
//! next line it lets through for that client ("suppressed K more"). It is a
//! pure type over `now: Instant`; [`ClientWarnings`] is the shared, locked
//! one the adapters log through. Counters and the audit log are not its
//! business: every rejection is still counted and audited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

/// Lines let through per client and interval by [`ClientWarnings::new`].
pub const BURST: u32 = 5;
/// The interval of [`ClientWarnings::new`].
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Clients tracked at once by [`ClientWarnings::new`]; the oldest window is
/// evicted beyond it.
pub const MAX_CLIENTS: usize = 1024;

/// What to do with one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Log the line.
    pub log: bool,
    /// Lines of this client suppressed since its last logged one, to report
    /// now (0 when none are owed).
    pub suppressed: u64,
    /// A client whose window was evicted to make room, with the lines it
    /// still had suppressed (only when there were some).
    pub evicted: Option<(String, u64)>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// The first `burst` lines per client per `interval`, then a count.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    max_clients: usize,
    windows: HashMap<String, Window>,
}

impl LogLimiter {
    /// A limiter of `burst` lines per client per `interval`, tracking at most
    /// `max_clients` clients (at least one).
    pub fn new(burst: u32, interval: Duration, max_clients: usize) -> Self {
        Self {
            burst,
            interval,
            max_clients: max_clients.max(1),
            windows: HashMap::new(),
        }
    }

    /// Decides about one line of `client` at `now`.
    pub fn check(&mut self, client: &str, now: Instant) -> Decision {
        if let Some(window) = self.windows.get_mut(client) {
            if now.saturating_duration_since(window.started) >= self.interval {
                let suppressed = window.suppressed;
                *window = Window {
                    started: now,
                    logged: 1,
                    suppressed: 0,
                };
                return Decision {
                    log: true,
                    suppressed,
                    evicted: None,
                };
            }
            let log = window.logged < self.burst;
            if log {
                window.logged += 1;
            } else {
                window.suppressed += 1;
            }
            return Decision {
                log,
                suppressed: 0,
                evicted: None,
            };
        }
        let evicted = if self.windows.len() >= self.max_clients {
            self.evict_oldest()
        } else {
            None
        };
        self.windows.insert(
            client.to_string(),
            Window {
                started: now,
                logged: 1,
                suppressed: 0,
            },
        );
        Decision {
            log: self.burst > 0,
            suppressed: 0,
            evicted,
        }
    }

    /// How many clients are tracked.
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    fn evict_oldest(&mut self) -> Option<(String, u64)> {
        let oldest = self
            .windows
            .iter()
            .min_by_key(|(_, w)| w.started)
            .map(|(client, _)| client.clone())?;
        let window = self.windows.remove(&oldest)?;
        (window.suppressed > 0).then_some((oldest, window.suppressed))
    }
}

/// A [`LogLimiter`] shared by the tasks that log one kind of warning
/// (`what`, the warning's message, named in the summary lines).
#[derive(Debug)]
pub struct ClientWarnings {
    what: &'static str,
    limiter: Mutex<LogLimiter>,
}

impl ClientWarnings {
    /// [`BURST`] lines per client per [`INTERVAL`], at most [`MAX_CLIENTS`]
    /// clients tracked.
    pub fn new(what: &'static str) -> Self {
        Self::with_limiter(what, LogLimiter::new(BURST, INTERVAL, MAX_CLIENTS))
    }

    /// Over `limiter`.
    pub fn with_limiter(what: &'static str, limiter: LogLimiter) -> Self {
        Self {
            what,
            limiter: Mutex::new(limiter),
        }
    }

    /// Whether to log the next warning about `client`; first logs the
    /// summary lines owed (this client's, and an evicted one's).
    pub fn allow(&self, client: &str) -> bool {
        let decision = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(client, Instant::now());
        let what = self.what;
        if let Some((evicted, suppressed)) = decision.evicted {
            warn!(
                client_id = %evicted,
                suppressed,
                "suppressed {suppressed} more \"{what}\" warnings from client {evicted}"
            );
        }
        if decision.suppressed > 0 {
            let suppressed = decision.suppressed;
            warn!(
                client_id = client,
                suppressed, "suppressed {suppressed} more \"{what}\" warnings from client {client}"
            );
        }
        decision.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn logged(limiter: &mut LogLimiter, client: &str, now: Instant, n: usize) -> usize {
        (0..n).filter(|_| limiter.check(client, now).log).count()
    }

    #[test]
    fn lets_the_first_lines_of_each_client_through_then_counts() {
        let mut limiter = LogLimiter::new(5, MINUTE, 16);
        let t0 = Instant::now();
        assert_eq!(logged(&mut limiter, "a", t0, 5_000), 5);
        assert_eq!(logged(&mut limiter, "b", t0, 3), 3, "clients are apart");
        // Still inside a's window: nothing owed yet.
        let inside = limiter.check("a", t0 + Duration::from_secs(59));
        assert!(!inside.log);
        assert_eq!(inside.suppressed, 0);
        // The next line after the interval reports the count once.
        let next = limiter.check("a", t0 + MINUTE);
        assert_eq!(
            next,
            Decision {
                log: true,
                suppressed: 4_996,
                evicted: None
            }
        );
        assert_eq!(limiter.check("a", t0 + MINUTE).suppressed, 0);
        assert_eq!(logged(&mut limiter, "a", t0 + MINUTE, 100), 3);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_client_is_evicted_with_its_count() {
        let mut limiter = LogLimiter::new(1, MINUTE, 3);
        let t0 = Instant::now();
        for (i, client) in ["a", "b", "c"].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(i as u64);
            assert!(limiter.check(client, at).log);
        }
        assert!(!limiter.check("a", t0 + Duration::from_secs(3)).log);
        let d = limiter.check("d", t0 + Duration::from_secs(4));
        assert!(d.log);
        assert_eq!(d.evicted, Some(("a".to_string(), 1)));
        assert_eq!(limiter.tracked(), 3);
        for i in 0..1_000u64 {
            limiter.check(&format!("x{i}"), t0 + Duration::from_secs(5 + i));
        }
        assert_eq!(limiter.tracked(), 3);
    }

    #[test]
    fn shared_limiter_logs_a_summary_line() {
        let warnings = ClientWarnings::with_limiter("test", LogLimiter::new(2, Duration::ZERO, 4));
        // A zero interval: every line is let through, none owed.
        assert!((0..10).all(|_| warnings.allow("a")));
        let warnings = ClientWarnings::new("test");
        assert_eq!((0..50).filter(|_| warnings.allow("a")).count(), 5);
    }

    /// What a subscriber sees: `burst` lines, then one summary line.
    #[test]
    fn a_flood_writes_a_few_lines_and_one_summary() {
        use std::sync::Arc;

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let interval = Duration::from_millis(200);
        let warnings =
            ClientWarnings::with_limiter("flood", LogLimiter::new(5, interval, MAX_CLIENTS));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..5_000 {
                if warnings.allow("dev-1") {
                    warn!(client_id = "dev-1", "flood");
                }
            }
            std::thread::sleep(interval);
            if warnings.allow("dev-1") {
                warn!(client_id = "dev-1", "flood");
            }
        });
        let text = String::from_utf8(lines.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), 7, "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("suppressed 4995 more \"flood\" warnings from client dev-1"))
                .count(),
            1,
            "{text}"
        );
    }
}
