//! What the connection should be doing at a wall-clock instant, given the
//! schedule in force: pure decisions, no I/O, so they are tested directly.
//!
//! - No schedule: online all the time (the behaviour before schedules).
//! - `persistent`: online while [`ValidSchedule::may_communicate`], until
//!   the next change; away otherwise, until the next change.
//! - `per-check`: one check at each [`ValidSchedule::next_check_at_or_after`],
//!   away in between. At start, a check right away when communication is
//!   allowed (a restarted device reports in), otherwise the next check.
//!
//! Every connection the schedule starts waits an extra random delay up to
//! [`wake_spread`](crate::config::AgentConfig::wake_spread), capped at half
//! the polling rate, so a fleet sharing a schedule does not connect at once.

use std::time::Duration;

use jiff::Timestamp;
use margo_schemas::messages::{ScheduleInForce, ScheduleSource};
use margo_schemas::schedule::{ConnectionMode, ValidSchedule};
use serde::Serialize;
use tokio::sync::watch;

/// The schedule in force and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveSchedule {
    pub schedule: ValidSchedule,
    pub source: ScheduleSource,
    /// The remote config's version (0 for the local schedule).
    pub config_version: u64,
}

impl ActiveSchedule {
    /// The local schedule from the agent's configuration.
    pub fn local(schedule: ValidSchedule) -> Self {
        Self {
            schedule,
            source: ScheduleSource::Local,
            config_version: 0,
        }
    }

    /// What a state report says about it.
    pub fn report(&self) -> ScheduleInForce {
        ScheduleInForce {
            source: self.source,
            config_version: self.config_version,
            schedule: self.schedule.schedule().clone(),
        }
    }
}

/// Watches the schedule in force (None: always connected).
pub type ScheduleRx = watch::Receiver<Option<ActiveSchedule>>;

/// What a state report should say about the schedule in `rx`.
pub fn reported(rx: &ScheduleRx) -> Option<ScheduleInForce> {
    rx.borrow().as_ref().map(ActiveSchedule::report)
}

/// Why the agent is not communicating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AwayReason {
    /// Inside a planned downtime window.
    Downtime,
    /// Outside the polling period.
    OutsidePollingPeriod,
    /// `per-check`: between two checks.
    BetweenChecks,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Stay connected until the wall-clock instant (ms), or for good.
    Online { until: Option<u64> },
    /// Connect for one check; it must end by `until` (a downtime or the end
    /// of the period), if set.
    Check { until: Option<u64> },
    /// Do not communicate until the wall-clock instant (ms); `None` means no
    /// communication is allowed any more under this schedule.
    Away { until: Option<u64>, why: AwayReason },
}

/// Tracks the checks of a `per-check` schedule; stateless otherwise.
#[derive(Debug, Clone, Default)]
pub struct Planner {
    schedule: Option<ValidSchedule>,
    /// `per-check`: the next check (ms); `None` before the first decision.
    next_check: Option<u64>,
    /// `per-check`: no further check under this schedule.
    exhausted: bool,
}

impl Planner {
    /// A planner for `schedule` (None: always online).
    pub fn new(schedule: Option<ValidSchedule>) -> Self {
        Self {
            schedule,
            next_check: None,
            exhausted: false,
        }
    }

    /// The schedule in force.
    pub fn schedule(&self) -> Option<&ValidSchedule> {
        self.schedule.as_ref()
    }

    /// Replaces the schedule; `per-check` starts over (a check right away if
    /// communication is allowed).
    pub fn set_schedule(&mut self, schedule: Option<ValidSchedule>) {
        *self = Self::new(schedule);
    }

    /// What to do at `now_ms`.
    pub fn phase(&mut self, now_ms: u64) -> Phase {
        let Some(schedule) = &self.schedule else {
            return Phase::Online { until: None };
        };
        let now = ts(now_ms);
        let change = schedule.next_change_after(now).map(ms);
        let allowed = schedule.may_communicate(now);
        match schedule.connection() {
            ConnectionMode::Persistent if allowed => Phase::Online { until: change },
            ConnectionMode::Persistent => Phase::Away {
                until: change,
                why: away_reason(schedule, now, false),
            },
            ConnectionMode::PerCheck => {
                if self.exhausted {
                    return Phase::Away {
                        until: None,
                        why: away_reason(schedule, now, allowed),
                    };
                }
                let due = match self.next_check {
                    // First decision: check at once if allowed.
                    None if allowed => true,
                    None => {
                        self.next_check = first_check_from(schedule, now_ms);
                        self.exhausted = self.next_check.is_none();
                        false
                    }
                    Some(next) => now_ms >= next,
                };
                if due && allowed {
                    return Phase::Check { until: change };
                }
                if due {
                    // Woke for a check that a downtime (or a clock turned
                    // back) now forbids: skipped, not moved.
                    self.next_check = first_check_from(schedule, now_ms);
                    self.exhausted = self.next_check.is_none();
                }
                Phase::Away {
                    until: self.next_check,
                    why: away_reason(schedule, now, allowed),
                }
            }
        }
    }

    /// The first check strictly after `now_ms` under the schedule (for the
    /// in-band checks of a `persistent` session), if any.
    pub fn next_check_after(&self, now_ms: u64) -> Option<u64> {
        self.schedule
            .as_ref()
            .and_then(|s| first_check_from(s, now_ms.saturating_add(1)))
    }

    /// Records that the check started at `started_ms` is over; the next one
    /// is the first check after both it and `now_ms`.
    pub fn check_done(&mut self, started_ms: u64, now_ms: u64) {
        self.schedule_next_check(started_ms.saturating_add(1).max(now_ms));
    }

    fn schedule_next_check(&mut self, from_ms: u64) {
        let next = self
            .schedule
            .as_ref()
            .and_then(|s| first_check_from(s, from_ms));
        self.exhausted = next.is_none();
        self.next_check = next;
    }

    /// The extra delay before a scheduled connection: random in
    /// `[0, min(spread, rate / 2)]`.
    pub fn wake_delay(&self, spread: Duration) -> Duration {
        let cap = self
            .schedule
            .as_ref()
            .map_or(spread, |s| spread.min(s.rate() / 2));
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        if cap_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(fastrand::u64(0..=cap_ms))
    }
}

/// The first check at or after `from_ms`.
fn first_check_from(schedule: &ValidSchedule, from_ms: u64) -> Option<u64> {
    schedule.next_check_at_or_after(ts(from_ms)).map(ms)
}

fn away_reason(schedule: &ValidSchedule, now: Timestamp, allowed: bool) -> AwayReason {
    if schedule.in_downtime(now).is_some() {
        AwayReason::Downtime
    } else if allowed {
        AwayReason::BetweenChecks
    } else {
        AwayReason::OutsidePollingPeriod
    }
}

/// Unix milliseconds → timestamp (saturating at the representable range).
pub fn ts(unix_ms: u64) -> Timestamp {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
}

/// Timestamp → Unix milliseconds (0 before the epoch), rounded up so a
/// wake-up never lands before the instant.
pub fn ms(t: Timestamp) -> u64 {
    let nanos = t.as_nanosecond();
    if nanos <= 0 {
        return 0;
    }
    let ms = (nanos + 999_999) / 1_000_000;
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use margo_schemas::schedule::Schedule;

    fn schedule(text: &str) -> ValidSchedule {
        let s: Schedule = toml::from_str(text).unwrap();
        ValidSchedule::try_from(s).unwrap()
    }

    fn at(rfc3339: &str) -> u64 {
        ms(rfc3339.parse::<Timestamp>().unwrap())
    }

    const OFFICE: &str = r#"
time_zone = "UTC"
connection = "per-check"
[polling]
period = [{ start = "08:00", end = "18:00" }]
rate = "15m"
"#;

    #[test]
    fn no_schedule_is_always_online() {
        let mut p = Planner::new(None);
        assert_eq!(p.phase(0), Phase::Online { until: None });
        assert_eq!(p.wake_delay(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn per_check_walks_the_checks_of_a_day() {
        let mut p = Planner::new(Some(schedule(OFFICE)));
        // Started at night: away until 08:00.
        let night = at("2026-03-02T03:00:00Z");
        assert_eq!(
            p.phase(night),
            Phase::Away {
                until: Some(at("2026-03-02T08:00:00Z")),
                why: AwayReason::OutsidePollingPeriod
            }
        );
        let mut checks = Vec::new();
        let mut now = night;
        for _ in 0..100 {
            match p.phase(now) {
                Phase::Check { until } => {
                    assert_eq!(until, Some(at("2026-03-02T18:00:00Z")));
                    checks.push(now);
                    // The check takes 3 s.
                    p.check_done(now, now + 3_000);
                }
                Phase::Away { until, .. } => now = until.unwrap(),
                Phase::Online { .. } => panic!("per-check is never online"),
            }
            if now >= at("2026-03-03T00:00:00Z") {
                break;
            }
        }
        assert_eq!(checks.len(), 40, "08:00, 08:15, ..., 17:45");
        assert_eq!(checks[0], at("2026-03-02T08:00:00Z"));
        assert_eq!(checks[39], at("2026-03-02T17:45:00Z"));
    }

    #[test]
    fn per_check_checks_at_once_when_started_inside_the_period() {
        let mut p = Planner::new(Some(schedule(OFFICE)));
        let t = at("2026-03-02T10:07:00Z");
        assert!(matches!(p.phase(t), Phase::Check { .. }));
        p.check_done(t, t + 1_000);
        assert_eq!(
            p.phase(t + 1_000),
            Phase::Away {
                until: Some(at("2026-03-02T10:15:00Z")),
                why: AwayReason::BetweenChecks
            }
        );
    }

    #[test]
    fn a_check_that_downtime_now_forbids_is_skipped() {
        let mut p = Planner::new(Some(schedule(&format!(
            "{OFFICE}\n[[downtime]]\nkind = \"one-off\"\nstart = \"2026-03-02T10:10:00Z\"\nend = \"2026-03-02T11:00:00Z\"\n"
        ))));
        let t = at("2026-03-02T10:00:00Z");
        assert!(matches!(p.phase(t), Phase::Check { .. }));
        p.check_done(t, t + 1_000);
        // The 10:15..10:45 checks fall in the downtime: next is 11:00.
        assert_eq!(
            p.phase(t + 1_000),
            Phase::Away {
                until: Some(at("2026-03-02T11:00:00Z")),
                why: AwayReason::BetweenChecks
            }
        );
        // Woken late (jitter) at 10:12, inside the downtime: no check.
        let mut q = Planner::new(Some(schedule(&format!(
            "{OFFICE}\n[[downtime]]\nkind = \"one-off\"\nstart = \"2026-03-02T10:10:00Z\"\nend = \"2026-03-02T11:00:00Z\"\n"
        ))));
        q.phase(at("2026-03-02T07:00:00Z"));
        q.check_done(at("2026-03-02T09:59:00Z"), at("2026-03-02T09:59:00Z"));
        assert_eq!(
            q.phase(at("2026-03-02T10:12:00Z")),
            Phase::Away {
                until: Some(at("2026-03-02T11:00:00Z")),
                why: AwayReason::Downtime
            }
        );
    }

    #[test]
    fn persistent_is_online_in_the_period_and_away_outside() {
        let mut p = Planner::new(Some(schedule(
            "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"22:00\", end = \"04:00\" }]\nrate = \"1h\"\n[[downtime]]\nkind = \"daily\"\nstart = \"01:00\"\nend = \"02:00\"\n",
        )));
        assert_eq!(
            p.phase(at("2026-03-02T23:00:00Z")),
            Phase::Online {
                until: Some(at("2026-03-03T01:00:00Z"))
            }
        );
        assert_eq!(
            p.phase(at("2026-03-03T01:30:00Z")),
            Phase::Away {
                until: Some(at("2026-03-03T02:00:00Z")),
                why: AwayReason::Downtime
            }
        );
        assert_eq!(
            p.phase(at("2026-03-03T12:00:00Z")),
            Phase::Away {
                until: Some(at("2026-03-03T22:00:00Z")),
                why: AwayReason::OutsidePollingPeriod
            }
        );
    }

    #[test]
    fn wake_delay_is_capped_by_half_the_rate() {
        let p = Planner::new(Some(schedule(OFFICE)));
        for _ in 0..200 {
            let d = p.wake_delay(Duration::from_secs(3600));
            assert!(d <= Duration::from_secs(450), "{d:?}");
        }
        assert_eq!(p.wake_delay(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn millisecond_conversions_round_up() {
        assert_eq!(ms(ts(1_700_000_000_123)), 1_700_000_000_123);
        let t = Timestamp::from_nanosecond(1_500_001).unwrap();
        assert_eq!(ms(t), 2);
        assert_eq!(ms(Timestamp::from_second(-5).unwrap()), 0);
    }
}
