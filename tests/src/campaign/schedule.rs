//! The campaign's schedule: a rollout of successive versions and the faults
//! around it, drawn from one seed. The same options and seed give the same
//! schedule, so a failing seed replays.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::faultproxy::{FaultKind, LinkFault};
use crate::fleetsim::harness::BrokerKind;

/// What the schedule is drawn for.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    pub seed: u64,
    pub devices: usize,
    /// Successive versions rolled out (revisions 1..=versions).
    pub versions: u32,
    /// Faults fall in `[0, duration)`; the last version goes out at about 85 % of it.
    pub duration: Duration,
    pub broker: BrokerKind,
}

/// One step of the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `margoctl deploy-many`: the deployment at `revision` to every device.
    Deploy { revision: u32 },
    /// SIGKILL the manager (with the embedded broker in it); start it again after `down`.
    KillManager { down: Duration },
    /// SIGKILL Mosquitto; start it again after `down`.
    KillBroker { down: Duration },
    /// SIGKILL one agent; a [`Action::StartAgent`] follows.
    KillAgent { device: usize },
    /// Start a killed agent again.
    StartAgent { device: usize },
    /// A fault on one device's link (its proxy).
    Link { device: usize, fault: LinkFault },
}

/// What the campaign counts, per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deploy,
    ManagerKill,
    BrokerKill,
    AgentKill,
    AgentStart,
    Link(FaultKind),
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::ManagerKill => "manager-kill",
            Kind::BrokerKill => "broker-kill",
            Kind::AgentKill => "agent-kill",
            Kind::AgentStart => "agent-start",
            Kind::Link(k) => k.as_str(),
        }
    }
}

impl Action {
    pub fn kind(&self) -> Kind {
        match self {
            Action::Deploy { .. } => Kind::Deploy,
            Action::KillManager { .. } => Kind::ManagerKill,
            Action::KillBroker { .. } => Kind::BrokerKill,
            Action::KillAgent { .. } => Kind::AgentKill,
            Action::StartAgent { .. } => Kind::AgentStart,
            Action::Link { fault, .. } => Kind::Link(fault.kind()),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Action::Deploy { revision } => write!(f, "deploy revision {revision}"),
            Action::KillManager { down } => write!(f, "kill manager, down {}", d(down)),
            Action::KillBroker { down } => write!(f, "kill mosquitto, down {}", d(down)),
            Action::KillAgent { device } => write!(f, "kill agent {device}"),
            Action::StartAgent { device } => write!(f, "start agent {device}"),
            Action::Link { device, fault } => write!(f, "link {device}: {fault}"),
        }
    }
}

/// Steps at offsets from the campaign's start, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub events: Vec<(Duration, Action)>,
}

/// Mean time between manager kills, Mosquitto kills, kills of one given
/// agent and faults on one given link.
const MANAGER_EVERY: Duration = Duration::from_secs(20);
const BROKER_EVERY: Duration = Duration::from_secs(25);
const AGENT_EVERY: Duration = Duration::from_secs(40);
const LINK_EVERY: Duration = Duration::from_secs(20);
/// Fleet-wide floors on the time between agent kills and between link
/// faults, so a large fleet is not spending its time restarting.
const ANY_AGENT_EVERY: Duration = Duration::from_secs(2);
const ANY_LINK_EVERY: Duration = Duration::from_millis(500);

impl Schedule {
    /// Draws the schedule of `spec` from `spec.seed`.
    pub fn draw(spec: &ScheduleSpec) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let span = spec.duration.as_millis().max(1) as u64;
        let ms = Duration::from_millis;
        let at = |rng: &mut fastrand::Rng| ms(rng.u64(0..span));
        let count = |every: Duration, per: usize| {
            ((spec.duration.as_secs_f64() / every.as_secs_f64()) * per as f64).ceil() as usize
        };
        let mut events = Vec::new();

        // The rollout: evenly spread over the first 85 %, with jitter; a
        // kill of the manager or of a device just after some of them (inside
        // the publication and the applies).
        let rollout = span * 85 / 100;
        let step = rollout / u64::from(spec.versions.max(1));
        for revision in 1..=spec.versions {
            let t = step * u64::from(revision - 1) + rng.u64(0..step.max(2) / 2);
            events.push((ms(t), Action::Deploy { revision }));
            if rng.u8(0..10) < 3 {
                let down = ms(rng.u64(100..3_000));
                events.push((ms(t + rng.u64(0..1_000)), Action::KillManager { down }));
            }
            if spec.devices > 0 && rng.u8(0..10) < 4 {
                let device = rng.usize(0..spec.devices);
                events.push((ms(t + rng.u64(50..1_500)), Action::KillAgent { device }));
            }
        }
        for _ in 0..count(MANAGER_EVERY, 1) {
            let down = ms(rng.u64(100..4_000));
            events.push((at(&mut rng), Action::KillManager { down }));
        }
        if spec.broker == BrokerKind::Mosquitto {
            for _ in 0..count(BROKER_EVERY, 1) {
                let down = ms(rng.u64(100..4_000));
                events.push((at(&mut rng), Action::KillBroker { down }));
            }
        }
        for _ in 0..count(AGENT_EVERY, spec.devices).min(count(ANY_AGENT_EVERY, 1)) {
            let device = rng.usize(0..spec.devices.max(1));
            events.push((at(&mut rng), Action::KillAgent { device }));
        }
        for _ in 0..count(LINK_EVERY, spec.devices).min(count(ANY_LINK_EVERY, 1)) {
            let device = rng.usize(0..spec.devices.max(1));
            let kind = FaultKind::ALL[rng.usize(0..FaultKind::ALL.len())];
            let fault = LinkFault::draw(kind, &mut rng);
            events.push((at(&mut rng), Action::Link { device, fault }));
        }
        events.sort_by_key(|(t, _)| *t);

        // Each killed agent starts again after a while (0.1–6 s, sometimes
        // within half a second); a kill while it is down is dropped.
        let mut down_until: BTreeMap<usize, Duration> = BTreeMap::new();
        let mut out = Vec::new();
        for (t, action) in events {
            if let Action::KillAgent { device } = action {
                if down_until.get(&device).is_some_and(|u| *u >= t) {
                    continue;
                }
                let down = if rng.bool() {
                    ms(rng.u64(100..500))
                } else {
                    ms(rng.u64(500..6_000))
                };
                down_until.insert(device, t + down);
                out.push((t + down, Action::StartAgent { device }));
            }
            out.push((t, action));
        }
        // Stable: a start drawn for the same instant as another step stays after it.
        out.sort_by_key(|(t, _)| *t);
        Schedule { events: out }
    }

    /// How many steps of each kind.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut counts = BTreeMap::new();
        for (_, a) in &self.events {
            *counts.entry(a.kind()).or_insert(0) += 1;
        }
        counts
    }

    /// When the last fault happens (the last step that is not a deploy).
    pub fn last_fault(&self) -> Duration {
        self.events
            .iter()
            .filter(|(_, a)| !matches!(a, Action::Deploy { .. }))
            .map(|(t, _)| *t)
            .max()
            .unwrap_or_default()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, action) in &self.events {
            writeln!(f, "  +{:>9.3}s {action}", at.as_secs_f64())?;
        }
        Ok(())
    }
}
