//! Fault timelines: scripted, or drawn from a seed (same seed, same
//! schedule, whatever the machine).

use std::fmt;
use std::time::Duration;

/// One link fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Close every connection with a FIN.
    Cut,
    /// Close every connection with an RST.
    Reset,
    /// Stop forwarding for `stall` with the sockets open, then cut.
    HalfOpen { stall: Duration },
    /// Hold every chunk back by `latency` for `lasting`.
    Latency {
        latency: Duration,
        lasting: Duration,
    },
    /// Cap each direction at `bytes_per_sec` for `lasting`.
    Bandwidth {
        bytes_per_sec: u64,
        lasting: Duration,
    },
}

/// The kinds of [`LinkFault`], for counting and for choosing which to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    Cut,
    Reset,
    HalfOpen,
    Latency,
    Bandwidth,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Cut,
        FaultKind::Reset,
        FaultKind::HalfOpen,
        FaultKind::Latency,
        FaultKind::Bandwidth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Cut => "link-cut",
            FaultKind::Reset => "link-reset",
            FaultKind::HalfOpen => "link-half-open",
            FaultKind::Latency => "link-latency",
            FaultKind::Bandwidth => "link-bandwidth",
        }
    }
}

impl LinkFault {
    pub fn kind(&self) -> FaultKind {
        match self {
            LinkFault::Cut => FaultKind::Cut,
            LinkFault::Reset => FaultKind::Reset,
            LinkFault::HalfOpen { .. } => FaultKind::HalfOpen,
            LinkFault::Latency { .. } => FaultKind::Latency,
            LinkFault::Bandwidth { .. } => FaultKind::Bandwidth,
        }
    }

    /// A fault of `kind` with its parameters drawn from `rng`.
    pub fn draw(kind: FaultKind, rng: &mut fastrand::Rng) -> LinkFault {
        let ms = |rng: &mut fastrand::Rng, lo: u64, hi: u64| Duration::from_millis(rng.u64(lo..hi));
        match kind {
            FaultKind::Cut => LinkFault::Cut,
            FaultKind::Reset => LinkFault::Reset,
            FaultKind::HalfOpen => LinkFault::HalfOpen {
                stall: ms(rng, 1_000, 8_000),
            },
            FaultKind::Latency => LinkFault::Latency {
                latency: ms(rng, 50, 800),
                lasting: ms(rng, 2_000, 10_000),
            },
            FaultKind::Bandwidth => LinkFault::Bandwidth {
                bytes_per_sec: rng.u64(2_000..50_000),
                lasting: ms(rng, 2_000, 10_000),
            },
        }
    }
}

impl fmt::Display for LinkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            LinkFault::Cut => write!(f, "cut"),
            LinkFault::Reset => write!(f, "reset"),
            LinkFault::HalfOpen { stall } => write!(f, "half-open for {}", d(stall)),
            LinkFault::Latency { latency, lasting } => {
                write!(f, "latency {} for {}", d(latency), d(lasting))
            }
            LinkFault::Bandwidth {
                bytes_per_sec,
                lasting,
            } => write!(f, "bandwidth {bytes_per_sec} B/s for {}", d(lasting)),
        }
    }
}

/// What a seeded timeline draws.
#[derive(Debug, Clone)]
pub struct TimelineSpec {
    pub seed: u64,
    /// Faults fall in `[0, span)`.
    pub span: Duration,
    pub faults: usize,
    /// The kinds to draw from (uniformly).
    pub kinds: Vec<FaultKind>,
}

/// Faults at offsets from the moment the timeline is played, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    pub events: Vec<(Duration, LinkFault)>,
}

impl Timeline {
    /// A scripted timeline (sorted by offset).
    pub fn scripted(mut events: Vec<(Duration, LinkFault)>) -> Timeline {
        events.sort_by_key(|(at, _)| *at);
        Timeline { events }
    }

    /// A timeline drawn from `spec.seed`: the same spec gives the same timeline.
    pub fn seeded(spec: &TimelineSpec) -> Timeline {
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let span_ms = spec.span.as_millis().max(1) as u64;
        let events = (0..spec.faults)
            .filter_map(|_| {
                let at = Duration::from_millis(rng.u64(0..span_ms));
                let kind = *spec.kinds.get(rng.usize(0..spec.kinds.len().max(1)))?;
                Some((at, LinkFault::draw(kind, &mut rng)))
            })
            .collect();
        Timeline::scripted(events)
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, fault) in &self.events {
            writeln!(f, "+{:>8.3}s {fault}", at.as_secs_f64())?;
        }
        Ok(())
    }
}
