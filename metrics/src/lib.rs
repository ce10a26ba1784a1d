//! The one metrics layer of margo's manager and gateway.
//!
//! A *metric set* is an enum declared once with [`metric_set!`]: every
//! variant is one metric series (name, labels) and every family of series
//! has its help text. [`Stats`] keeps the values of one set per instance
//! (tests run several managers in one process, and the admin API's
//! `/v1/health` reports its own manager's values), and every update also
//! goes to the [`metrics`] facade, where the manager's Prometheus recorder
//! renders it (`GET /metrics`). With no recorder installed (the standalone
//! broker, most tests) a facade call does nothing.
//!
//! [`Histogram`] does the same for distributions: fixed buckets kept per
//! instance (for `/v1/health` and its percentiles) and every sample also
//! recorded with `metrics::histogram!`.
//!
//! ```
//! margo_metrics::metric_set! {
//!     /// Things a parser saw.
//!     pub enum ParserMetric {
//!         counter "parser_messages_total", "Messages parsed, by outcome." {
//!             /// Parsed.
//!             Parsed(outcome = "ok") => "parsed",
//!             /// Refused.
//!             Refused(outcome = "refused") => "refused",
//!         }
//!         gauge "parser_open_streams", "Streams open now." {
//!             /// Open streams.
//!             Open() => "open",
//!         }
//!     }
//! }
//! let stats = margo_metrics::Stats::<ParserMetric>::default();
//! stats.inc(ParserMetric::Parsed);
//! stats.inc(ParserMetric::Open);
//! stats.sub(ParserMetric::Open, 1);
//! assert_eq!(stats.get(ParserMetric::Parsed), 1);
//! assert_eq!(stats.to_map()["open"], 0);
//! ```

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Whether a metric only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic (Prometheus `counter`).
    Counter,
    /// Up and down (Prometheus `gauge`).
    Gauge,
}

/// One metric series as declared: what the facade and `docs/metrics.md` call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Counter or gauge.
    pub kind: Kind,
    /// The metric name, e.g. `margo_ingest_rejected_total`.
    pub name: &'static str,
    /// The series' labels, e.g. `[("reason", "revoked")]`.
    pub labels: &'static [(&'static str, &'static str)],
    /// Help text of the metric name (the Prometheus `# HELP` line).
    pub help: &'static str,
    /// The series' key in the admin API's `/v1/health` JSON (camelCase).
    pub key: &'static str,
}

/// A set of metric series declared with [`metric_set!`].
pub trait MetricSet: Copy + 'static {
    /// Every series of the set, in declaration order.
    const ALL: &'static [Self];
    /// The series' declaration.
    fn metric(self) -> &'static Metric;
    /// The series' position in [`MetricSet::ALL`].
    fn index(self) -> usize;
}

/// Declares a [`MetricSet`]: an enum with one variant per series, grouped
/// in families that share a kind (`counter` or `gauge`), a name and a help
/// text. Each variant lists its labels and its `/v1/health` key.
#[macro_export]
macro_rules! metric_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $set:ident {
            $(
                $kind:ident $name:literal, $help:literal {
                    $(
                        $(#[$vmeta:meta])*
                        $variant:ident ( $($lk:ident = $lv:literal),* $(,)? ) => $key:literal
                    ),* $(,)?
                }
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $set {
            $($(
                $(#[$vmeta])*
                $variant,
            )*)*
        }

        impl $crate::MetricSet for $set {
            const ALL: &'static [Self] = &[$($(Self::$variant,)*)*];

            fn metric(self) -> &'static $crate::Metric {
                match self {
                    $($(
                        Self::$variant => &$crate::Metric {
                            kind: $crate::metric_set!(@kind $kind),
                            name: $name,
                            labels: &[$((stringify!($lk), $lv)),*],
                            help: $help,
                            key: $key,
                        },
                    )*)*
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
    (@kind counter) => { $crate::Kind::Counter };
    (@kind gauge) => { $crate::Kind::Gauge };
}

/// The values of every series of the set `M`, for one instance, each
/// update mirrored into the `metrics` facade.
#[derive(Debug)]
pub struct Stats<M: MetricSet> {
    values: Box<[AtomicU64]>,
    set: PhantomData<fn() -> M>,
}

impl<M: MetricSet> Default for Stats<M> {
    fn default() -> Self {
        Self {
            values: M::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            set: PhantomData,
        }
    }
}

impl<M: MetricSet> Stats<M> {
    fn slot(&self, series: M) -> &AtomicU64 {
        &self.values[series.index()]
    }

    /// Adds one.
    pub fn inc(&self, series: M) {
        self.add(series, 1);
    }

    /// Adds `n`.
    pub fn add(&self, series: M, n: u64) {
        self.slot(series).fetch_add(n, Ordering::Relaxed);
        let m = series.metric();
        match m.kind {
            Kind::Counter => metrics::counter!(m.name, m.labels).increment(n),
            Kind::Gauge => metrics::gauge!(m.name, m.labels).increment(n as f64),
        }
    }

    /// Takes `n` off a gauge (saturating at 0). Counters only grow: for
    /// one this is a mistake, ignored in release builds.
    pub fn sub(&self, series: M, n: u64) {
        let m = series.metric();
        debug_assert_eq!(m.kind, Kind::Gauge, "{} is a counter", m.name);
        if m.kind != Kind::Gauge {
            return;
        }
        let _ = self
            .slot(series)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        metrics::gauge!(m.name, m.labels).decrement(n as f64);
    }

    /// Sets a gauge to `value`. For a counter this is a mistake, ignored in
    /// release builds.
    pub fn set(&self, series: M, value: u64) {
        let m = series.metric();
        debug_assert_eq!(m.kind, Kind::Gauge, "{} is a counter", m.name);
        if m.kind != Kind::Gauge {
            return;
        }
        self.slot(series).store(value, Ordering::Relaxed);
        metrics::gauge!(m.name, m.labels).set(value as f64);
    }

    /// This instance's value.
    pub fn get(&self, series: M) -> u64 {
        self.slot(series).load(Ordering::Relaxed)
    }

    /// The sum of the series `pick` chooses.
    pub fn sum(&self, pick: impl Fn(M) -> bool) -> u64 {
        M::ALL
            .iter()
            .filter(|s| pick(**s))
            .map(|s| self.get(*s))
            .sum()
    }

    /// Every value by its `/v1/health` key (read one by one, not as one
    /// atomic whole).
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        M::ALL
            .iter()
            .map(|s| (s.metric().key.to_string(), self.get(*s)))
            .collect()
    }
}

/// Registers the help text of every metric name of `M` with the
/// installed recorder (call once after installing it).
pub fn describe<M: MetricSet>() {
    let mut seen: Vec<&str> = Vec::new();
    for series in M::ALL {
        let m = series.metric();
        if seen.contains(&m.name) {
            continue;
        }
        seen.push(m.name);
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
        }
    }
}

// ---- histograms --------------------------------------------------------------

/// A histogram as declared: its facade name and help, and its buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramMetric {
    /// The metric name, e.g. `margo_ingest_commit_seconds`.
    pub name: &'static str,
    /// Help text (the Prometheus `# HELP` line).
    pub help: &'static str,
    /// Inclusive upper bounds of the buckets kept per instance, in the
    /// unit samples are recorded in; strictly increasing.
    pub bounds: &'static [u64],
    /// Recorded units per exported unit (µs recorded, seconds exported: 1e6).
    pub per_exported_unit: f64,
}

impl HistogramMetric {
    /// The bucket bounds in the exported unit (for the Prometheus exporter).
    pub fn exported_buckets(&self) -> Vec<f64> {
        self.bounds
            .iter()
            .map(|b| *b as f64 / self.per_exported_unit)
            .collect()
    }

    /// Registers the help text with the installed recorder.
    pub fn describe(&self) {
        metrics::describe_histogram!(self.name, self.help);
    }
}

/// Counts `u64` samples into fixed buckets for one instance, without locks
/// (relaxed atomics), and records each one with `metrics::histogram!`
/// (in the exported unit).
#[derive(Debug)]
pub struct Histogram {
    metric: &'static HistogramMetric,
    /// `bounds.len() + 1` counters; the last one counts samples above every bound.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    /// An empty histogram of `metric`.
    pub fn new(metric: &'static HistogramMetric) -> Self {
        debug_assert!(
            metric.bounds.windows(2).all(|w| w[0] < w[1]),
            "bounds increase"
        );
        Self {
            metric,
            buckets: (0..=metric.bounds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Its declaration.
    pub fn metric(&self) -> &'static HistogramMetric {
        self.metric
    }

    /// Counts one sample.
    pub fn record(&self, value: u64) {
        let i = self.metric.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
        metrics::histogram!(self.metric.name).record(value as f64 / self.metric.per_exported_unit);
    }

    /// Reads every counter (not atomically as a whole: a sample recorded
    /// meanwhile may show in some fields and not yet in others).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, c)| Bucket {
                le: self.metric.bounds.get(i).copied(),
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

/// The buckets of a [`Histogram`] at one instant (JSON in `GET /v1/health`).
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

/// Bounds for sizes (messages): powers of two up to 65,536.
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

    metric_set! {
        /// A test set.
        enum Test {
            counter "test_events_total", "Events, by what." {
                /// A.
                A(what = "a") => "a",
                /// B.
                B(what = "b") => "b",
            }
            gauge "test_open", "Open now." {
                /// Open.
                Open() => "open",
            }
        }
    }

    #[test]
    fn each_series_is_declared_once_and_counted_per_instance() {
        let (one, two) = (Stats::<Test>::default(), Stats::<Test>::default());
        one.inc(Test::A);
        one.add(Test::B, 3);
        two.inc(Test::A);
        one.add(Test::Open, 2);
        one.sub(Test::Open, 5);
        assert_eq!((one.get(Test::A), one.get(Test::B)), (1, 3));
        assert_eq!(one.get(Test::Open), 0, "a gauge saturates at 0");
        assert_eq!(two.get(Test::B), 0);
        assert_eq!(one.sum(|s| s.metric().name == "test_events_total"), 4);
        let map = one.to_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map["b"], 3);
        assert_eq!(Test::B.metric().labels, &[("what", "b")]);
        assert_eq!(Test::Open.metric().kind, Kind::Gauge);
        assert!(Test::ALL.iter().enumerate().all(|(i, s)| s.index() == i));
    }

    const SMALL: HistogramMetric = HistogramMetric {
        name: "test_small",
        help: "Small values.",
        bounds: &[1, 10, 100],
        per_exported_unit: 1.0,
    };

    const SIZES: HistogramMetric = HistogramMetric {
        name: "test_sizes",
        help: "Sizes.",
        bounds: SIZE_BOUNDS,
        per_exported_unit: 1.0,
    };

    #[test]
    fn samples_land_in_the_bucket_of_their_inclusive_bound() {
        let h = Histogram::new(&SMALL);
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
        let h = Histogram::new(&SIZES);
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

    #[test]
    fn exported_buckets_are_scaled() {
        let micros = HistogramMetric {
            name: "test_seconds",
            help: "Seconds.",
            bounds: &[10, 1_000_000],
            per_exported_unit: 1e6,
        };
        assert_eq!(micros.exported_buckets(), vec![1e-5, 1.0]);
    }
}
