//! A fixed-bucket histogram of `u64` samples that many threads record into
//! without locks (one relaxed atomic add per sample and bucket), for
//! distributions the manager reports about itself (ingest batch sizes,
//! commit latencies).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Counts samples into buckets with fixed inclusive upper bounds, plus one
/// overflow bucket; keeps the count, sum and maximum exactly.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// `bounds.len() + 1` counters; the last one counts samples above every bound.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds`, which must be strictly increasing.
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds increase");
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Counts one sample.
    pub fn record(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Reads every counter (not atomically as a whole: a sample recorded
    /// meanwhile may show in some fields and not yet in others).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| Bucket {
                le: self.bounds.get(i).copied(),
                count: c.load(Ordering::Relaxed),
            })
            .collect();
        HistogramSnapshot {
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// One bucket of a [`HistogramSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Inclusive upper bound; `None` for the overflow bucket.
    pub le: Option<u64>,
    /// Samples in this bucket (not cumulative).
    pub count: u64,
}

/// A point-in-time copy of a [`Histogram`] (JSON in `GET /v1/health`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Samples recorded.
    pub count: u64,
    /// Their sum.
    pub sum: u64,
    /// The largest.
    pub max: u64,
    /// Every bucket, lowest bound first, the overflow bucket last.
    pub buckets: Vec<Bucket>,
}

impl HistogramSnapshot {
    /// The samples recorded since `earlier` (a snapshot of the same histogram).
    /// The maximum cannot be split and stays this snapshot's.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let buckets = self
            .buckets
            .iter()
            .map(|b| Bucket {
                le: b.le,
                count: b.count.saturating_sub(
                    earlier
                        .buckets
                        .iter()
                        .find(|e| e.le == b.le)
                        .map_or(0, |e| e.count),
                ),
            })
            .collect();
        HistogramSnapshot {
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum.saturating_sub(earlier.sum),
            max: self.max,
            buckets,
        }
    }

    /// Mean of the samples (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// An upper bound of the `p`-th percentile (nearest rank): the bound of
    /// the bucket holding it, or the maximum for the overflow bucket (or
    /// when the maximum is lower). 0 when empty.
    pub fn percentile_bound(&self, p: f64) -> u64 {
        let total: u64 = self.buckets.iter().map(|b| b.count).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for b in &self.buckets {
            seen += b.count;
            if seen >= rank {
                return b.le.map_or(self.max, |le| le.min(self.max));
            }
        }
        self.max
    }
}

/// Bounds for batch sizes (messages): powers of two up to 65,536.
pub const SIZE_BOUNDS: &[u64] = &[
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];

/// Bounds for latencies in microseconds: 1, 1.5, 2, 3, 5, 7 per decade
/// from 10 µs to 10 s.
pub const MICROS_BOUNDS: &[u64] = &[
    10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000,
    10_000, 15_000, 20_000, 30_000, 50_000, 70_000, 100_000, 150_000, 200_000, 300_000, 500_000,
    700_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000, 5_000_000, 7_000_000, 10_000_000,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_bucket_of_their_inclusive_bound() {
        let h = Histogram::new(&[1, 10, 100]);
        for v in [0, 1, 2, 10, 11, 100, 101, 5000] {
            h.record(v);
        }
        let s = h.snapshot();
        let counts: Vec<u64> = s.buckets.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![2, 2, 2, 2]);
        assert_eq!(s.buckets[3].le, None);
        assert_eq!((s.count, s.sum, s.max), (8, 5225, 5000));
    }

    #[test]
    fn percentile_bounds_and_differences() {
        let h = Histogram::new(SIZE_BOUNDS);
        for _ in 0..90 {
            h.record(3);
        }
        let before = h.snapshot();
        for _ in 0..10 {
            h.record(700);
        }
        let s = h.snapshot();
        assert_eq!(s.percentile_bound(50.0), 4);
        assert_eq!(s.percentile_bound(90.0), 4);
        assert_eq!(s.percentile_bound(95.0), 700, "capped at the maximum");
        assert_eq!(s.percentile_bound(100.0), 700);
        let d = s.since(&before);
        assert_eq!((d.count, d.sum), (10, 7000));
        assert_eq!(d.percentile_bound(50.0), 700);
        assert_eq!(HistogramSnapshot::default().percentile_bound(99.0), 0);
        assert!((s.mean() - 72.7).abs() < 1e-9);
    }
}
