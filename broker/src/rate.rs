//! Per-device ingest limits at the gateway (issue 12, finding 1): a token
//! bucket for PUBLISH packets and one for bytes, per relayed connection (one
//! live connection per identity: the broker keeps only the newest session of
//! a client id). Over the limit the gateway holds the device's next packet
//! and stops reading until the debt is paid, so TCP pushes back on it;
//! nothing is dropped.
//! Pure: time is passed in.

use std::time::{Duration, Instant};

use margo_schemas::config_layers::ConfigError;
use serde::Deserialize;

/// How much one device may send through the gateway (`[gateway.device_rate]`
/// in `margo-broker`'s file, `[broker.device_rate]` in the manager's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceRate {
    /// Sustained PUBLISH packets per second. Default 100.
    pub messages_per_second: u32,
    /// PUBLISH packets allowed at once above the sustained rate (an agent
    /// flushing its outbox after a pause). Default 1000.
    pub message_burst: u32,
    /// Sustained bytes per second, every packet counted. Default 1 MiB.
    pub bytes_per_second: u64,
    /// Bytes allowed at once above the sustained rate. Default 16 MiB.
    pub byte_burst: u64,
}

impl Default for DeviceRate {
    fn default() -> Self {
        Self {
            messages_per_second: 100,
            message_burst: 1000,
            bytes_per_second: 1024 * 1024,
            byte_burst: 16 * 1024 * 1024,
        }
    }
}

impl DeviceRate {
    /// Every value must be at least 1; `prefix` names the table in errors.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        for (name, value) in [
            ("messages_per_second", u64::from(self.messages_per_second)),
            ("message_burst", u64::from(self.message_burst)),
            ("bytes_per_second", self.bytes_per_second),
            ("byte_burst", self.byte_burst),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(
                    format!("{prefix}.{name}"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

/// Refills at `rate` per second up to `burst`; taking more than there is
/// leaves a debt, waited out before the next read.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
        }
    }

    fn take(&mut self, elapsed: Duration, n: f64) -> Duration {
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst) - n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The limits of one device connection.
#[derive(Debug)]
pub(crate) struct Throttle {
    messages: Bucket,
    bytes: Bucket,
    last: Instant,
}

impl Throttle {
    pub(crate) fn new(rate: &DeviceRate, now: Instant) -> Self {
        Self {
            messages: Bucket::new(
                f64::from(rate.messages_per_second),
                f64::from(rate.message_burst),
            ),
            bytes: Bucket::new(rate.bytes_per_second as f64, rate.byte_burst as f64),
            last: now,
        }
    }

    /// Charges `publishes` PUBLISH packets and `bytes` bytes about to be
    /// forwarded at `now`; returns how long to wait before forwarding them
    /// (zero within the limits).
    pub(crate) fn charge(&mut self, publishes: usize, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let messages = self.messages.take(elapsed, publishes as f64);
        let bytes = self.bytes.take(elapsed, bytes as f64);
        messages.max(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(messages: u32, burst: u32) -> DeviceRate {
        DeviceRate {
            messages_per_second: messages,
            message_burst: burst,
            ..DeviceRate::default()
        }
    }

    #[test]
    fn burst_passes_then_the_sustained_rate_holds() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(&rate(10, 5), t0);
        assert_eq!(throttle.charge(5, 100, t0), Duration::ZERO, "the burst");
        let pause = throttle.charge(5, 100, t0);
        assert_eq!(pause, Duration::from_millis(500), "5 over at 10/s");
        // After the pause the debt is paid; one more costs 100 ms.
        let t1 = t0 + pause;
        assert_eq!(throttle.charge(1, 100, t1), Duration::from_millis(100));
        // A long silence refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(throttle.charge(5, 100, t2), Duration::ZERO);
        assert!(throttle.charge(1, 100, t2) > Duration::ZERO);
    }

    #[test]
    fn bytes_are_limited_too_and_a_packet_over_the_burst_still_passes() {
        let t0 = Instant::now();
        let limits = DeviceRate {
            bytes_per_second: 1000,
            byte_burst: 1000,
            ..DeviceRate::default()
        };
        let mut throttle = Throttle::new(&limits, t0);
        assert_eq!(throttle.charge(1, 3000, t0), Duration::from_secs(2));
    }

    #[test]
    fn zero_is_refused_naming_the_field() {
        let err = rate(0, 5)
            .validate("gateway.device_rate")
            .expect_err("zero");
        assert!(
            err.to_string()
                .contains("gateway.device_rate.messages_per_second"),
            "{err}"
        );
    }
}
