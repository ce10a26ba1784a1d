//! What a client's silence means: the availability class of `margoctl
//! status`, from its presence, its last check-in and the schedule it reported
//! in force.
//!
//! A pure function of what the store holds and of an instant passed in (the
//! manager's wall clock in production, fixed instants in tests). The rules
//! are described in `docs/schedule.md` ("Availability").

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use margo_schemas::schedule::{ConnectionMode, ValidSchedule};
use serde::{Deserialize, Serialize};

/// The fixed part of the grace after an expected check (link latency, TLS,
/// clock skew between device and manager).
pub const GRACE_BASE: Duration = Duration::from_secs(120);

/// How a client is doing, as far as the manager can tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Availability {
    /// Its retained presence says `online`.
    Online,
    /// Not online, and the schedule it reported is in a planned downtime now.
    InPlannedDowntime,
    /// Not online, and the schedule it reported is outside its polling period now.
    OutsidePollingPeriod,
    /// `per-check` schedule, inside the polling period, and it has checked in
    /// at every expected check whose grace has run out.
    BetweenChecks,
    /// `per-check` schedule: it missed an expected check by more than the grace.
    Overdue,
    /// Not online otherwise: no schedule reported, or a `persistent` schedule
    /// that says it should be connected now.
    #[default]
    Offline,
    /// Revoked by the operator.
    Revoked,
}

impl Availability {
    /// The wire name (`in-planned-downtime`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::InPlannedDowntime => "in-planned-downtime",
            Self::OutsidePollingPeriod => "outside-polling-period",
            Self::BetweenChecks => "between-checks",
            Self::Overdue => "overdue",
            Self::Offline => "offline",
            Self::Revoked => "revoked",
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the manager knows about a client, for [`classify`].
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Revoked by the operator.
    pub revoked: bool,
    /// Its retained presence is `online`.
    pub online: bool,
    /// When anything was last heard from it (ms since the epoch).
    pub last_seen_ms: Option<u64>,
    /// The schedule it reported in force, if any (and valid).
    pub schedule: Option<&'a ValidSchedule>,
}

/// How long after an expected check a `per-check` device may still be on
/// its way: [`GRACE_BASE`] plus half the polling rate (the agent spreads its
/// wake-up over up to half the rate so a fleet does not connect at once).
pub fn late_grace(rate: Duration) -> Duration {
    GRACE_BASE + rate / 2
}

/// How much earlier than an expected check (by the manager's clock) a
/// check-in still counts for it: the device's clock may run ahead. At most
/// half the rate, so the check before never counts for this one.
pub fn early_tolerance(rate: Duration) -> Duration {
    GRACE_BASE.min(rate / 2)
}

fn millis(d: Duration) -> i128 {
    i128::try_from(d.as_millis()).unwrap_or(i128::MAX)
}

/// Classifies a client at `now_ms` (ms since the epoch), in this order:
///
/// 1. revoked → [`Availability::Revoked`];
/// 2. presence `online` → [`Availability::Online`];
/// 3. no (valid) schedule reported → [`Availability::Offline`];
/// 4. in a downtime of the schedule → [`Availability::InPlannedDowntime`];
/// 5. outside its polling period → [`Availability::OutsidePollingPeriod`];
/// 6. `persistent` (it should be connected now) → [`Availability::Offline`];
/// 7. `per-check`: take the last expected check older than the grace,
///    `D = last_expected_check_before(now - late_grace(rate))`. If there is
///    one and the device was not seen since `D - early_tolerance(rate)`
///    → [`Availability::Overdue`]; otherwise [`Availability::BetweenChecks`].
///
/// While `last_expected_check_before(now)` itself is older than the grace,
/// `D` is that check; while it is still within the grace, `D` is the check
/// before it, so a device silent for days is overdue at every instant, not
/// only once each check's grace has run out.
pub fn classify(observed: &Observed<'_>, now_ms: u64) -> Availability {
    if observed.revoked {
        return Availability::Revoked;
    }
    if observed.online {
        return Availability::Online;
    }
    let Some(schedule) = observed.schedule else {
        return Availability::Offline;
    };
    let Some(now) = timestamp(i128::from(now_ms)) else {
        return Availability::Offline;
    };
    if schedule.in_downtime(now).is_some() {
        return Availability::InPlannedDowntime;
    }
    if !schedule.in_polling_period(now) {
        return Availability::OutsidePollingPeriod;
    }
    match schedule.connection() {
        ConnectionMode::Persistent => Availability::Offline,
        ConnectionMode::PerCheck => {
            let rate = schedule.rate();
            let due = timestamp(i128::from(now_ms) - millis(late_grace(rate)))
                .and_then(|t| schedule.last_expected_check_before(t));
            let Some(due) = due else {
                return Availability::BetweenChecks;
            };
            let counts_from = i128::from(due.as_millisecond()) - millis(early_tolerance(rate));
            match observed.last_seen_ms {
                Some(seen) if i128::from(seen) >= counts_from => Availability::BetweenChecks,
                _ => Availability::Overdue,
            }
        }
    }
}

fn timestamp(ms: i128) -> Option<Timestamp> {
    Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use margo_schemas::schedule::Schedule;

    use super::*;

    /// UTC (no DST), 2026-03-02 is a Monday. Checks 08:00, 08:15, ..., 17:45
    /// every weekday; weekends and 12:00-13:00 daily are downtime.
    const PER_CHECK: &str = r#"
        time_zone = "UTC"
        connection = "per-check"
        [polling]
        period = [{ start = "08:00", end = "18:00" }]
        rate = "15m"
        [[downtime]]
        kind = "weekly"
        days = ["sat", "sun"]
        start = "00:00"
        end = "24:00"
        [[downtime]]
        kind = "daily"
        start = "12:00"
        end = "13:00"
    "#;

    fn schedule(text: &str) -> ValidSchedule {
        let s: Schedule = toml::from_str(text).expect("test schedule parses");
        ValidSchedule::try_from(s).expect("test schedule is valid")
    }

    fn ms(rfc3339: &str) -> u64 {
        let t: Timestamp = rfc3339.parse().expect("test instant");
        u64::try_from(t.as_millisecond()).expect("after the epoch")
    }

    fn offline<'a>(schedule: Option<&'a ValidSchedule>, last_seen: Option<&str>) -> Observed<'a> {
        Observed {
            revoked: false,
            online: false,
            last_seen_ms: last_seen.map(ms),
            schedule,
        }
    }

    #[test]
    fn grace_is_two_minutes_plus_half_the_rate() {
        assert_eq!(
            late_grace(Duration::from_secs(900)),
            Duration::from_secs(570)
        );
        assert_eq!(
            early_tolerance(Duration::from_secs(900)),
            Duration::from_secs(120)
        );
        assert_eq!(
            early_tolerance(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn revoked_wins_over_everything() {
        let s = schedule(PER_CHECK);
        let observed = Observed {
            revoked: true,
            online: true,
            last_seen_ms: Some(ms("2026-03-02T10:00:00Z")),
            schedule: Some(&s),
        };
        assert_eq!(
            classify(&observed, ms("2026-03-02T10:01:00Z")),
            Availability::Revoked
        );
    }

    #[test]
    fn online_presence_is_online_whatever_the_schedule_says() {
        let s = schedule(PER_CHECK);
        let observed = Observed {
            online: true,
            ..offline(Some(&s), Some("2026-03-01T10:00:00Z"))
        };
        // Sunday: weekly downtime, yet the presence says online.
        assert_eq!(
            classify(&observed, ms("2026-03-01T10:01:00Z")),
            Availability::Online
        );
    }

    #[test]
    fn no_schedule_means_offline() {
        assert_eq!(
            classify(
                &offline(None, Some("2026-03-02T10:00:00Z")),
                ms("2026-03-02T10:01:00Z")
            ),
            Availability::Offline
        );
        assert_eq!(
            classify(&offline(None, None), ms("2026-03-02T10:01:00Z")),
            Availability::Offline
        );
    }

    #[test]
    fn planned_downtime_weekly_and_daily() {
        let s = schedule(PER_CHECK);
        let seen = Some("2026-02-27T17:45:10Z");
        // Saturday.
        assert_eq!(
            classify(&offline(Some(&s), seen), ms("2026-02-28T10:00:00Z")),
            Availability::InPlannedDowntime
        );
        // Monday lunch (inside the polling period, downtime wins).
        assert_eq!(
            classify(
                &offline(Some(&s), Some("2026-03-02T11:45:00Z")),
                ms("2026-03-02T12:30:00Z")
            ),
            Availability::InPlannedDowntime
        );
    }

    #[test]
    fn outside_the_polling_period() {
        let s = schedule(PER_CHECK);
        // Monday 19:00 and Tuesday 07:59, last seen at Monday's last check.
        let observed = offline(Some(&s), Some("2026-03-02T17:45:30Z"));
        assert_eq!(
            classify(&observed, ms("2026-03-02T19:00:00Z")),
            Availability::OutsidePollingPeriod
        );
        assert_eq!(
            classify(&observed, ms("2026-03-03T07:59:00Z")),
            Availability::OutsidePollingPeriod
        );
    }

    #[test]
    fn per_check_between_checks() {
        let s = schedule(PER_CHECK);
        // Checked in at 10:00 (plus a wake-up delay); 10:14 is before the next check.
        let observed = offline(Some(&s), Some("2026-03-02T10:03:00Z"));
        assert_eq!(
            classify(&observed, ms("2026-03-02T10:14:00Z")),
            Availability::BetweenChecks
        );
        // 10:15 is due, but its grace (9m30s) has not run out at 10:24.
        assert_eq!(
            classify(&observed, ms("2026-03-02T10:24:00Z")),
            Availability::BetweenChecks
        );
        // A device whose clock runs a minute ahead checked in at 10:14 by
        // the manager's clock: that counts for the 10:15 check.
        let early = offline(Some(&s), Some("2026-03-02T10:14:00Z"));
        assert_eq!(
            classify(&early, ms("2026-03-02T10:26:00Z")),
            Availability::BetweenChecks
        );
        // Monday 08:05: the last expected check whose grace ran out is
        // Friday 17:45 (the weekend is downtime), and it checked in then.
        let weekend = offline(Some(&s), Some("2026-02-27T17:46:00Z"));
        assert_eq!(
            classify(&weekend, ms("2026-03-02T08:05:00Z")),
            Availability::BetweenChecks
        );
    }

    #[test]
    fn per_check_overdue() {
        let s = schedule(PER_CHECK);
        // Last seen at 10:03 for the 10:00 check; at 10:25 the 10:15 check
        // is 10 minutes old (> 9m30s grace) and was missed.
        let observed = offline(Some(&s), Some("2026-03-02T10:03:00Z"));
        assert_eq!(
            classify(&observed, ms("2026-03-02T10:25:00Z")),
            Availability::Overdue
        );
        // Silent since Friday: overdue on Monday at 08:05 already (Friday
        // 17:45 is the last check out of its grace) and at 08:20 (08:00 missed).
        let silent = offline(Some(&s), Some("2026-02-27T09:00:00Z"));
        assert_eq!(
            classify(&silent, ms("2026-03-02T08:05:00Z")),
            Availability::Overdue
        );
        assert_eq!(
            classify(&silent, ms("2026-03-02T08:20:00Z")),
            Availability::Overdue
        );
        // A check-in a full rate early does not count.
        let too_early = offline(Some(&s), Some("2026-03-02T10:00:00Z"));
        assert_eq!(
            classify(&too_early, ms("2026-03-02T10:25:00Z")),
            Availability::Overdue
        );
        // Never seen (a schedule without a check-in cannot really happen).
        assert_eq!(
            classify(&offline(Some(&s), None), ms("2026-03-02T10:25:00Z")),
            Availability::Overdue
        );
    }

    #[test]
    fn persistent_schedule_inside_the_period_is_offline() {
        let s = schedule(&PER_CHECK.replace("per-check", "persistent"));
        let observed = offline(Some(&s), Some("2026-03-02T10:03:00Z"));
        assert_eq!(
            classify(&observed, ms("2026-03-02T10:04:00Z")),
            Availability::Offline
        );
        // Outside the period and in downtime it is still planned absence.
        assert_eq!(
            classify(&observed, ms("2026-03-02T20:00:00Z")),
            Availability::OutsidePollingPeriod
        );
        assert_eq!(
            classify(&observed, ms("2026-03-02T12:10:00Z")),
            Availability::InPlannedDowntime
        );
    }

    #[test]
    fn wire_names_are_kebab_case() {
        for (a, name) in [
            (Availability::Online, "online"),
            (Availability::InPlannedDowntime, "in-planned-downtime"),
            (Availability::OutsidePollingPeriod, "outside-polling-period"),
            (Availability::BetweenChecks, "between-checks"),
            (Availability::Overdue, "overdue"),
            (Availability::Offline, "offline"),
            (Availability::Revoked, "revoked"),
        ] {
            assert_eq!(a.to_string(), name);
            assert_eq!(
                serde_json::to_value(a).expect("json"),
                serde_json::Value::String(name.into())
            );
        }
    }
}
