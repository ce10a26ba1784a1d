//! The randomized crash campaign (issue 12, "Then prove it" item 2): real
//! `margo-agent` processes, each behind its own [`FaultProxy`], go through a
//! rollout of successive versions while a seeded schedule SIGKILLs the
//! manager (with the embedded broker in it), Mosquitto (external-broker
//! mode) and agents, and breaks and shapes the devices' links. At the end
//! every invariant is judged and reported PASS or FAIL.
//!
//! `margo-fleetsim campaign --devices N --versions V --duration D --seed S
//! [--broker embedded|mosquitto]` runs it; `tests/tests/campaign.rs` runs a
//! bounded variant with fixed seeds.
//!
//! [`FaultProxy`]: crate::faultproxy::FaultProxy

pub mod invariants;
mod run;
pub mod schedule;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

pub use run::run;

use crate::faultproxy::FaultCounts;
use crate::fleetsim::harness::BrokerKind;
use invariants::Verdict;
use schedule::ScheduleSpec;

/// The deployment every version of the rollout updates.
pub const DEPLOYMENT: &str = "c0ffee00-0000-4000-8000-000000000001";

/// What to run.
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    pub seed: u64,
    pub devices: usize,
    pub versions: u32,
    /// How long the faults go on.
    pub duration: Duration,
    pub broker: BrokerKind,
    /// How long the fleet may take to converge once the faults stop (a
    /// generous bound, not a measurement).
    pub converge_timeout: Duration,
    /// Parent of the campaign's working directory (default: the system temp dir).
    pub work_dir: Option<PathBuf>,
    /// Keep the working directory (logs, stores) even when every invariant holds.
    pub keep: bool,
    /// Print every step as it runs.
    pub verbose: bool,
}

impl CampaignOptions {
    pub fn new(seed: u64, devices: usize, versions: u32, duration: Duration) -> Self {
        CampaignOptions {
            seed,
            devices,
            versions,
            duration,
            broker: BrokerKind::Embedded,
            converge_timeout: Duration::from_secs(180 + devices as u64),
            work_dir: None,
            keep: false,
            verbose: false,
        }
    }

    pub fn schedule_spec(&self) -> ScheduleSpec {
        ScheduleSpec {
            seed: self.seed,
            devices: self.devices,
            versions: self.versions,
            duration: self.duration,
            broker: self.broker,
        }
    }

    /// The command that replays this campaign.
    pub fn replay_command(&self) -> String {
        format!(
            "margo-fleetsim campaign --devices {} --versions {} --duration {} --seed {} --broker {}",
            self.devices,
            self.versions,
            humantime::format_duration(self.duration),
            self.seed,
            self.broker
        )
    }
}

/// The median and maximum of some durations.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub count: usize,
    pub median: Duration,
    pub max: Duration,
}

impl Spread {
    pub fn of(durations: &[Duration]) -> Spread {
        let mut d = durations.to_vec();
        d.sort_unstable();
        Spread {
            count: d.len(),
            median: d.get(d.len() / 2).copied().unwrap_or_default(),
            max: d.last().copied().unwrap_or_default(),
        }
    }
}

/// What a campaign did and found.
#[derive(Debug, Clone)]
pub struct CampaignReport {
    pub options: CampaignOptions,
    /// Steps carried out, per kind (`deploy`, `manager-kill`, `link-cut`, …).
    pub executed: BTreeMap<&'static str, usize>,
    /// What the proxies did, summed over every device's link.
    pub link: FaultCounts,
    /// From the last fault to every device converged (None: it did not).
    pub converged_after: Option<Duration>,
    /// From the deploy of the final revision to each device's runtime
    /// finishing it, over the devices that did (None: it was not deployed).
    pub final_rollout: Option<Spread>,
    pub verdicts: Vec<Verdict>,
    /// Where the logs and stores are (kept when an invariant failed).
    pub dir: PathBuf,
    pub elapsed: Duration,
}

impl CampaignReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        !self.verdicts.is_empty() && self.verdicts.iter().all(|v| v.pass)
    }

    pub fn text(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "campaign seed={} devices={} versions={} duration={} broker={} ({} in all)",
            o.seed,
            o.devices,
            o.versions,
            humantime::format_duration(o.duration),
            o.broker,
            humantime::format_duration(Duration::from_secs(self.elapsed.as_secs())),
        );
        let _ = writeln!(s, "steps carried out:");
        for (kind, n) in &self.executed {
            let _ = writeln!(s, "  {kind:<16} {n}");
        }
        let l = &self.link;
        let _ = writeln!(
            s,
            "links: {} cut, {} reset, {} half-open, {} latency, {} bandwidth; {} connections broken",
            l.cut, l.reset, l.half_open, l.latency, l.bandwidth, l.connections_broken
        );
        match self.converged_after {
            Some(d) => {
                let _ = writeln!(s, "converged {:.1} s after the last fault", d.as_secs_f64());
            }
            None => {
                let _ = writeln!(s, "did not converge");
            }
        }
        if let Some(r) = &self.final_rollout {
            let _ = writeln!(
                s,
                "final revision applied by {} devices: median {:.1} s, max {:.1} s after its deploy",
                r.count,
                r.median.as_secs_f64(),
                r.max.as_secs_f64()
            );
        }
        let _ = writeln!(s, "invariants:");
        for v in &self.verdicts {
            let _ = writeln!(s, "  {v}");
        }
        let _ = writeln!(
            s,
            "{}; replay: {}",
            if self.passed() { "PASS" } else { "FAIL" },
            o.replay_command()
        );
        if !self.passed() || o.keep {
            let _ = writeln!(s, "logs and stores: {}", self.dir.display());
        }
        s
    }
}
