//! The communication schedule of a device: polling period and rate,
//! connection mode and planned downtime (Margo: "Downtime configuration",
//! "Polling Interval Period", "Polling Interval Rate").
//!
//! [`Schedule`] is the tolerant wire form (TOML in the agent's config, CBOR in
//! a signed remote config, JSON in reports). [`ValidSchedule`] is obtained with
//! `TryFrom` and its existence proves the invariants; every question the agent
//! and the manager ask is a pure function of it and of an instant passed in
//! (nothing here reads a clock). Semantics, edge rules and DST behaviour are
//! described in `docs/schedule.md`.
//!
//! Daily windows are defined on the local wall clock of the schedule's time
//! zone: an instant is inside `08:00`–`18:00` when the local clock reads a time
//! `t` with `08:00 <= t < 18:00`. On a day the clock skips an hour the window
//! is an hour shorter in real time; on a day it repeats an hour the repeated
//! hour counts twice.

use std::fmt;
use std::time::Duration;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The shortest polling rate accepted.
pub const MIN_RATE: Duration = Duration::from_secs(1);
/// The longest polling rate accepted (31 days).
pub const MAX_RATE: Duration = Duration::from_secs(31 * 24 * 3600);
/// The polling rate when the config does not give one.
pub const DEFAULT_RATE: &str = "15m";

/// How far the search functions look past the last one-off downtime before
/// concluding that something never happens again. A year and a bit covers
/// every yearly DST rule.
const HORIZON_DAYS: i64 = 400;
/// Days without a change after which the weekly rules (polling period,
/// recurring downtime) are known to change nothing: two weeks and a day,
/// so every weekday's every local time occurred at least once even if a
/// DST gap skipped an hour of one day.
const QUIET_DAYS: i64 = 15;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const NANOS_PER_MIN: i64 = 60_000_000_000;
const NANOS_PER_DAY: i128 = 86_400 * NANOS_PER_SEC;
const MINUTES_PER_DAY: u16 = 24 * 60;

// ---------------------------------------------------------------------------
// Wire form
// ---------------------------------------------------------------------------

/// A device's communication schedule as written by people and sent over the
/// wire. Validate it with `ValidSchedule::try_from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// IANA time zone name (`Europe/Berlin`, `UTC`), in which every daily and
    /// weekly time below is read.
    pub time_zone: String,
    #[serde(default)]
    pub polling: Polling,
    #[serde(default)]
    pub connection: ConnectionMode,
    /// Planned downtime: no connection attempts, nothing sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downtime: Vec<Downtime>,
}

/// When and how often the agent checks for desired-state changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Polling {
    /// Windows of the day in which the agent checks; empty means all day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub period: Vec<DailyWindow>,
    /// Time between checks inside a window, in humantime form (`"15m"`,
    /// `"1h 30m"`, `"30s"`).
    #[serde(default = "default_rate")]
    pub rate: String,
}

impl Default for Polling {
    fn default() -> Self {
        Polling {
            period: Vec::new(),
            rate: default_rate(),
        }
    }
}

fn default_rate() -> String {
    DEFAULT_RATE.to_string()
}

/// A window of the local day, `"HH:MM"` to `"HH:MM"`, end excluded. An end at
/// or before the start crosses midnight into the next day; `"24:00"` (or
/// `"00:00"`) as the end means the end of the day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyWindow {
    pub start: String,
    pub end: String,
}

/// How the agent uses the network inside the polling period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// Stay connected through the polling period; each check is an in-band
    /// sync check.
    #[default]
    Persistent,
    /// Connect at each check, synchronise, flush the outbox, disconnect.
    PerCheck,
}

impl fmt::Display for ConnectionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionMode::Persistent => "persistent",
            ConnectionMode::PerCheck => "per-check",
        })
    }
}

/// A planned downtime window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Downtime {
    /// From one instant to another (RFC 3339 with an offset, end excluded).
    OneOff { start: String, end: String },
    /// On the given days of the week (`"mon"` .. `"sun"`), `"HH:MM"` to
    /// `"HH:MM"` local time; an end at or before the start ends on the next day.
    Weekly {
        days: Vec<String>,
        start: String,
        end: String,
    },
    /// Every day, `"HH:MM"` to `"HH:MM"` local time; may cross midnight.
    Daily { start: String, end: String },
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A schedule that failed validation: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule field `{field}`: {problem}")]
pub struct ScheduleError {
    /// Path of the offending field, e.g. `polling.period[1].end`.
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a schedule field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("unknown time zone {0:?} (expected an IANA name such as \"Europe/Berlin\")")]
    UnknownTimeZone(String),
    #[error("{0:?} is not a time of day \"HH:MM\" (00:00 to 23:59; 24:00 only as an end)")]
    MalformedTime(String),
    #[error("{value:?} is not an RFC 3339 instant with an offset: {reason}")]
    MalformedInstant { value: String, reason: String },
    #[error("{value:?} is not a duration such as \"15m\": {reason}")]
    MalformedRate { value: String, reason: String },
    #[error("rate {0:?} is shorter than the minimum of 1s")]
    RateTooShort(String),
    #[error("rate {0:?} is longer than the maximum of 31 days")]
    RateTooLong(String),
    #[error("the window is empty (start equals end)")]
    EmptyWindow,
    #[error("overlaps {0}")]
    Overlap(String),
    #[error("the end is not after the start")]
    EndNotAfterStart,
    #[error("unknown day {0:?} (expected mon, tue, wed, thu, fri, sat or sun)")]
    UnknownDay(String),
    #[error("day {0:?} is listed twice")]
    DuplicateDay(String),
    #[error("no days given")]
    NoDays,
}

fn err(field: impl Into<String>, problem: Problem) -> ScheduleError {
    ScheduleError {
        field: field.into(),
        problem,
    }
}

// ---------------------------------------------------------------------------
// Validated form
// ---------------------------------------------------------------------------

/// A window of the local day in minutes: `start` in `0..1440`, `end` in
/// `1..=1440`; it crosses midnight when `end < start`. Never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MinuteWindow {
    start: u16,
    end: u16,
}

impl MinuteWindow {
    fn crosses_midnight(self) -> bool {
        self.end < self.start
    }

    /// Does the window contain this local time of day (nanoseconds since
    /// midnight) on a day where the window started (`today`) or on the day
    /// after one (`yesterday`)?
    fn contains(self, tod: i64, started_today: bool, started_yesterday: bool) -> bool {
        let s = i64::from(self.start) * NANOS_PER_MIN;
        let e = i64::from(self.end) * NANOS_PER_MIN;
        if self.crosses_midnight() {
            (started_today && tod >= s) || (started_yesterday && tod < e)
        } else {
            started_today && s <= tod && tod < e
        }
    }

    /// The window as pieces of `[0, 1440)`, for overlap checks.
    fn pieces(self) -> Vec<(u16, u16)> {
        if self.crosses_midnight() {
            vec![(self.start, MINUTES_PER_DAY), (0, self.end)]
        } else {
            vec![(self.start, self.end)]
        }
    }

    fn overlaps(self, other: MinuteWindow) -> bool {
        self.pieces()
            .iter()
            .any(|a| other.pieces().iter().any(|b| a.0 < b.1 && b.0 < a.1))
    }
}

impl fmt::Display for MinuteWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Days of the week as a bit set, Monday = bit 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Days(u8);

impl Days {
    const ALL: Days = Days(0x7f);

    fn contains(self, date: Date) -> bool {
        let bit = date.weekday().to_monday_zero_offset();
        self.0 & (1 << bit) != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    OneOff { start: Timestamp, end: Timestamp },
    Recurring { days: Days, window: MinuteWindow },
}

/// A schedule whose invariants hold: known time zone, rate within bounds,
/// non-empty and non-overlapping polling windows, well-formed downtime.
#[derive(Debug, Clone)]
pub struct ValidSchedule {
    source: Schedule,
    tz: TimeZone,
    /// Polling windows sorted by start; `[00:00-24:00]` when the period is
    /// empty (all day).
    period: Vec<MinuteWindow>,
    rate_nanos: i128,
    rate: Duration,
    downtime: Vec<Rule>,
}

impl PartialEq for ValidSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Which downtime window holds at an instant: its index in
/// `Schedule::downtime` and its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DowntimeRef<'a> {
    pub index: usize,
    pub downtime: &'a Downtime,
}

impl fmt::Display for DowntimeRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "downtime[{}] ({})", self.index, self.downtime)
    }
}

impl fmt::Display for Downtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Downtime::OneOff { start, end } => write!(f, "one-off {start} to {end}"),
            Downtime::Weekly { days, start, end } => {
                write!(f, "weekly {} {start}-{end}", days.join(","))
            }
            Downtime::Daily { start, end } => write!(f, "daily {start}-{end}"),
        }
    }
}

/// Parses `"HH:MM"`. `allow_24` admits `"24:00"` (only meaningful as an end).
fn parse_time_of_day(value: &str, allow_24: bool) -> Option<u16> {
    let (h, m) = value.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    match (h, m) {
        (24, 0) if allow_24 => Some(MINUTES_PER_DAY),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

fn parse_window(field: &str, start: &str, end: &str) -> Result<MinuteWindow, ScheduleError> {
    let s = parse_time_of_day(start, false).ok_or_else(|| {
        err(
            format!("{field}.start"),
            Problem::MalformedTime(start.into()),
        )
    })?;
    let e = parse_time_of_day(end, true)
        .ok_or_else(|| err(format!("{field}.end"), Problem::MalformedTime(end.into())))?;
    if s == e {
        return Err(err(field, Problem::EmptyWindow));
    }
    // "00:00" as an end means the end of the day.
    let e = if e == 0 { MINUTES_PER_DAY } else { e };
    Ok(MinuteWindow { start: s, end: e })
}

fn parse_day(value: &str) -> Option<u8> {
    let v = value.to_ascii_lowercase();
    let names = [
        ("mon", "monday"),
        ("tue", "tuesday"),
        ("wed", "wednesday"),
        ("thu", "thursday"),
        ("fri", "friday"),
        ("sat", "saturday"),
        ("sun", "sunday"),
    ];
    names
        .iter()
        .position(|(short, long)| v == *short || v == *long)
        .and_then(|i| u8::try_from(i).ok())
}

fn parse_instant(field: String, value: &str) -> Result<Timestamp, ScheduleError> {
    value.parse::<Timestamp>().map_err(|e| {
        err(
            field,
            Problem::MalformedInstant {
                value: value.into(),
                reason: e.to_string(),
            },
        )
    })
}

impl TryFrom<Schedule> for ValidSchedule {
    type Error = ScheduleError;

    fn try_from(source: Schedule) -> Result<Self, Self::Error> {
        let tz = TimeZone::get(&source.time_zone).map_err(|_| {
            err(
                "time_zone",
                Problem::UnknownTimeZone(source.time_zone.clone()),
            )
        })?;

        let rate_text = source.polling.rate.as_str();
        let rate = humantime::parse_duration(rate_text).map_err(|e| {
            err(
                "polling.rate",
                Problem::MalformedRate {
                    value: rate_text.into(),
                    reason: e.to_string(),
                },
            )
        })?;
        if rate < MIN_RATE {
            return Err(err("polling.rate", Problem::RateTooShort(rate_text.into())));
        }
        if rate > MAX_RATE {
            return Err(err("polling.rate", Problem::RateTooLong(rate_text.into())));
        }

        let mut period: Vec<MinuteWindow> = Vec::with_capacity(source.polling.period.len());
        for (i, w) in source.polling.period.iter().enumerate() {
            let field = format!("polling.period[{i}]");
            let window = parse_window(&field, &w.start, &w.end)?;
            if let Some(j) = period.iter().position(|other| other.overlaps(window)) {
                return Err(err(field, Problem::Overlap(format!("polling.period[{j}]"))));
            }
            period.push(window);
        }
        if period.is_empty() {
            period.push(MinuteWindow {
                start: 0,
                end: MINUTES_PER_DAY,
            });
        }
        period.sort_by_key(|w| w.start);

        let mut downtime = Vec::with_capacity(source.downtime.len());
        for (i, d) in source.downtime.iter().enumerate() {
            let field = format!("downtime[{i}]");
            let rule = match d {
                Downtime::OneOff { start, end } => {
                    let s = parse_instant(format!("{field}.start"), start)?;
                    let e = parse_instant(format!("{field}.end"), end)?;
                    if e <= s {
                        return Err(err(format!("{field}.end"), Problem::EndNotAfterStart));
                    }
                    Rule::OneOff { start: s, end: e }
                }
                Downtime::Weekly { days, start, end } => {
                    if days.is_empty() {
                        return Err(err(format!("{field}.days"), Problem::NoDays));
                    }
                    let mut set = 0u8;
                    for (k, day) in days.iter().enumerate() {
                        let bit = parse_day(day).ok_or_else(|| {
                            err(
                                format!("{field}.days[{k}]"),
                                Problem::UnknownDay(day.clone()),
                            )
                        })?;
                        if set & (1 << bit) != 0 {
                            return Err(err(
                                format!("{field}.days[{k}]"),
                                Problem::DuplicateDay(day.clone()),
                            ));
                        }
                        set |= 1 << bit;
                    }
                    Rule::Recurring {
                        days: Days(set),
                        window: parse_window(&field, start, end)?,
                    }
                }
                Downtime::Daily { start, end } => Rule::Recurring {
                    days: Days::ALL,
                    window: parse_window(&field, start, end)?,
                },
            };
            downtime.push(rule);
        }

        Ok(ValidSchedule {
            rate_nanos: i128::from(rate.as_secs()) * NANOS_PER_SEC
                + i128::from(rate.subsec_nanos()),
            source,
            tz,
            period,
            rate,
            downtime,
        })
    }
}

impl TryFrom<&Schedule> for ValidSchedule {
    type Error = ScheduleError;

    fn try_from(source: &Schedule) -> Result<Self, Self::Error> {
        ValidSchedule::try_from(source.clone())
    }
}

impl From<ValidSchedule> for Schedule {
    fn from(valid: ValidSchedule) -> Self {
        valid.source
    }
}

// ---------------------------------------------------------------------------
// Time arithmetic helpers
// ---------------------------------------------------------------------------

fn ts_from_nanos(n: i128) -> Option<Timestamp> {
    Timestamp::from_nanosecond(n).ok()
}

fn add_days(d: Date, days: i64) -> Option<Date> {
    d.checked_add(jiff::Span::new().try_days(days).ok()?).ok()
}

fn time_of_day_nanos(t: Time) -> i64 {
    (i64::from(t.hour()) * 3600 + i64::from(t.minute()) * 60 + i64::from(t.second()))
        * 1_000_000_000
        + i64::from(t.subsec_nanosecond())
}

/// The local civil date and time at `minute` minutes after the start of
/// `date` (1440 = the next day's midnight).
fn civil_at(date: Date, minute: u16) -> Option<DateTime> {
    let (date, minute) = if minute >= MINUTES_PER_DAY {
        (add_days(date, 1)?, minute - MINUTES_PER_DAY)
    } else {
        (date, minute)
    };
    let h = i8::try_from(minute / 60).ok()?;
    let m = i8::try_from(minute % 60).ok()?;
    Some(date.to_datetime(Time::new(h, m, 0, 0).ok()?))
}

impl ValidSchedule {
    /// The schedule as given (the form to report as "the schedule in force").
    pub fn schedule(&self) -> &Schedule {
        &self.source
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    pub fn time_zone_name(&self) -> &str {
        &self.source.time_zone
    }

    pub fn rate(&self) -> Duration {
        self.rate
    }

    pub fn connection(&self) -> ConnectionMode {
        self.source.connection
    }

    /// True when the polling period is all day.
    pub fn polls_all_day(&self) -> bool {
        self.period
            == [MinuteWindow {
                start: 0,
                end: MINUTES_PER_DAY,
            }]
    }

    /// The first instant at which the local clock reads `dt` or later: `dt`
    /// itself, its first occurrence when the clock repeats it, or the
    /// transition that skips over it.
    fn first_instant_at(&self, dt: DateTime) -> Option<Timestamp> {
        match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
            AmbiguousOffset::Gap { after, .. } => {
                self.transition_after(after.to_timestamp(dt).ok()?)
            }
        }
    }

    /// The last instant at which the local clock reaches `dt` (exclusive
    /// window ends): its second occurrence when the clock repeats it, or the
    /// transition that skips over it.
    fn last_instant_at(&self, dt: DateTime) -> Option<Timestamp> {
        match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            AmbiguousOffset::Fold { after, .. } => after.to_timestamp(dt).ok(),
            AmbiguousOffset::Gap { after, .. } => {
                self.transition_after(after.to_timestamp(dt).ok()?)
            }
        }
    }

    /// Every instant at which the local clock reads exactly `dt` (none in a
    /// gap, two in a fold).
    fn instants_at(&self, dt: DateTime, out: &mut Vec<Timestamp>) {
        match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => out.extend(offset.to_timestamp(dt).ok()),
            AmbiguousOffset::Fold { before, after } => {
                out.extend(before.to_timestamp(dt).ok());
                out.extend(after.to_timestamp(dt).ok());
            }
            AmbiguousOffset::Gap { .. } => {}
        }
    }

    fn transition_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.tz.following(t).next().map(|tr| tr.timestamp())
    }

    fn local_date(&self, t: Timestamp) -> Date {
        self.tz.to_datetime(t).date()
    }

    /// Is the local wall clock at `t` inside a polling window?
    pub fn in_polling_period(&self, t: Timestamp) -> bool {
        let dt = self.tz.to_datetime(t);
        let tod = time_of_day_nanos(dt.time());
        self.period.iter().any(|w| w.contains(tod, true, true))
    }

    /// The planned downtime in force at `t`, if any (the first one listed
    /// when several hold).
    pub fn in_downtime(&self, t: Timestamp) -> Option<DowntimeRef<'_>> {
        let dt = self.tz.to_datetime(t);
        let tod = time_of_day_nanos(dt.time());
        let today = dt.date();
        let yesterday = add_days(today, -1);
        let index = self.downtime.iter().position(|rule| match *rule {
            Rule::OneOff { start, end } => start <= t && t < end,
            Rule::Recurring { days, window } => window.contains(
                tod,
                days.contains(today),
                yesterday.is_some_and(|y| days.contains(y)),
            ),
        })?;
        let downtime = self.source.downtime.get(index)?;
        Some(DowntimeRef { index, downtime })
    }

    /// May the agent communicate at `t`: inside the polling period and outside
    /// every downtime window.
    pub fn may_communicate(&self, t: Timestamp) -> bool {
        self.in_polling_period(t) && self.in_downtime(t).is_none()
    }

    /// The instants of the `window` that starts on local `date`: from the
    /// first instant the clock reads its start to the last instant it
    /// reaches its end (excluded). None if the day has no such instants.
    fn occurrence(&self, date: Date, window: MinuteWindow) -> Option<(Timestamp, Timestamp)> {
        let start = self.first_instant_at(civil_at(date, window.start)?)?;
        let end_date = if window.crosses_midnight() {
            add_days(date, 1)?
        } else {
            date
        };
        let end = self.last_instant_at(civil_at(end_date, window.end)?)?;
        (start < end).then_some((start, end))
    }

    fn forward_horizon(&self, t: Timestamp) -> i128 {
        let last = self
            .downtime
            .iter()
            .filter_map(|r| match r {
                Rule::OneOff { end, .. } => Some(*end),
                Rule::Recurring { .. } => None,
            })
            .fold(t, Timestamp::max);
        last.as_nanosecond() + i128::from(HORIZON_DAYS) * NANOS_PER_DAY
    }

    fn backward_horizon(&self, t: Timestamp) -> i128 {
        let first = self
            .downtime
            .iter()
            .filter_map(|r| match r {
                Rule::OneOff { start, .. } => Some(*start),
                Rule::Recurring { .. } => None,
            })
            .fold(t, Timestamp::min);
        first.as_nanosecond() - i128::from(HORIZON_DAYS) * NANOS_PER_DAY
    }

    /// The latest end of the one-off downtimes in force at `t`.
    fn one_off_end_covering(&self, t: Timestamp) -> Option<Timestamp> {
        self.downtime
            .iter()
            .filter_map(|r| match *r {
                Rule::OneOff { start, end } if start <= t && t < end => Some(end),
                _ => None,
            })
            .max()
    }

    /// The first start or end of a one-off downtime after `t`.
    fn one_off_boundary_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.one_off_boundaries().filter(|b| *b > t).min()
    }

    /// The last start or end of a one-off downtime before `t`.
    fn one_off_boundary_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.one_off_boundaries().filter(|b| *b < t).max()
    }

    fn one_off_boundaries(&self) -> impl Iterator<Item = Timestamp> + '_ {
        self.downtime.iter().flat_map(|r| match *r {
            Rule::OneOff { start, end } => vec![start, end],
            Rule::Recurring { .. } => Vec::new(),
        })
    }

    /// The earliest start of the one-off downtimes in force at `t`.
    fn one_off_start_covering(&self, t: Timestamp) -> Option<Timestamp> {
        self.downtime
            .iter()
            .filter_map(|r| match *r {
                Rule::OneOff { start, end } if start <= t && t < end => Some(start),
                _ => None,
            })
            .min()
    }

    /// The earliest instant `>= t` of the form `window start + k·rate` before
    /// the window's end, ignoring downtime.
    fn raw_check_at_or_after(&self, t: Timestamp) -> Option<Timestamp> {
        let tn = t.as_nanosecond();
        let first = add_days(self.local_date(t), -1)?;
        let mut best: Option<i128> = None;
        let mut found_on: Option<i64> = None;
        for i in 0..=HORIZON_DAYS {
            // Occurrences of later days start later, up to DST slack: look
            // three more days past the first find, then stop.
            if found_on.is_some_and(|f| i > f + 3) {
                break;
            }
            let Some(date) = add_days(first, i) else {
                break;
            };
            for &w in &self.period {
                let Some((a, e)) = self.occurrence(date, w) else {
                    continue;
                };
                let (a, e) = (a.as_nanosecond(), e.as_nanosecond());
                if e <= tn {
                    continue;
                }
                let c = if tn <= a {
                    a
                } else {
                    let k = (tn - a + self.rate_nanos - 1) / self.rate_nanos;
                    a + k * self.rate_nanos
                };
                if c < e && best.is_none_or(|b| c < b) {
                    best = Some(c);
                }
            }
            if best.is_some() && found_on.is_none() {
                found_on = Some(i);
            }
        }
        best.and_then(ts_from_nanos)
    }

    /// The latest instant `< t` of the form `window start + k·rate` before the
    /// window's end, ignoring downtime.
    fn raw_check_before(&self, t: Timestamp) -> Option<Timestamp> {
        let tn = t.as_nanosecond();
        let last = add_days(self.local_date(t), 1)?;
        let mut best: Option<i128> = None;
        let mut found_on: Option<i64> = None;
        for i in 0..=HORIZON_DAYS {
            if found_on.is_some_and(|f| i > f + 3) {
                break;
            }
            let Some(date) = add_days(last, -i) else {
                break;
            };
            for &w in &self.period {
                let Some((a, e)) = self.occurrence(date, w) else {
                    continue;
                };
                let (a, e) = (a.as_nanosecond(), e.as_nanosecond());
                if a >= tn {
                    continue;
                }
                let hi = tn.min(e); // checks are < hi
                let k = (hi - a - 1) / self.rate_nanos;
                let c = a + k * self.rate_nanos;
                if best.is_none_or(|b| c > b) {
                    best = Some(c);
                }
            }
            if best.is_some() && found_on.is_none() {
                found_on = Some(i);
            }
        }
        best.and_then(ts_from_nanos)
    }

    /// Every instant in `(lo, hi]` at which `may_communicate` can change:
    /// local window and downtime edges, local midnights, DST transitions and
    /// one-off edges. Sorted, without duplicates.
    fn candidates(&self, lo: Timestamp, hi: Timestamp) -> Vec<Timestamp> {
        let mut minutes: Vec<u16> = vec![0];
        for w in &self.period {
            minutes.extend([w.start, w.end % MINUTES_PER_DAY]);
        }
        let mut out = Vec::new();
        for rule in &self.downtime {
            match *rule {
                Rule::OneOff { start, end } => out.extend([start, end]),
                Rule::Recurring { window, .. } => {
                    minutes.extend([window.start, window.end % MINUTES_PER_DAY])
                }
            }
        }
        minutes.sort_unstable();
        minutes.dedup();
        let (Some(from), Some(to)) = (
            add_days(self.local_date(lo), -1),
            add_days(self.local_date(hi), 1),
        ) else {
            return Vec::new();
        };
        let mut date = from;
        while date <= to {
            for &m in &minutes {
                if let Some(dt) = civil_at(date, m) {
                    self.instants_at(dt, &mut out);
                }
            }
            match add_days(date, 1) {
                Some(next) => date = next,
                None => break,
            }
        }
        out.extend(
            self.tz
                .following(lo)
                .map(|tr| tr.timestamp())
                .take_while(|ts| *ts <= hi),
        );
        out.retain(|c| lo < *c && *c <= hi);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// True when `may_communicate` is the same at every instant.
    fn is_constant(&self) -> bool {
        self.downtime.is_empty() && self.polls_all_day()
    }

    /// The next instant after `t` at which `may_communicate` differs from its
    /// value at `t`; it keeps the new value from then until the change after.
    /// None when it does not change within the search horizon (a year past
    /// the last one-off downtime), i.e. never.
    pub fn next_change_after(&self, t: Timestamp) -> Option<Timestamp> {
        if self.is_constant() {
            return None;
        }
        let now = self.may_communicate(t);
        let horizon = self.forward_horizon(t);
        let mut lo = t;
        let mut quiet_days = 0;
        while lo.as_nanosecond() < horizon {
            // Inside a one-off downtime nothing changes before it ends, and
            // after a whole week without a change the weekly rules never
            // change anything: only a one-off boundary can. Skip there
            // instead of walking day by day (a one-off may be centuries
            // away or last centuries; found by fuzzing).
            let skip_to = if quiet_days >= QUIET_DAYS {
                quiet_days = 0;
                Some(self.one_off_boundary_after(lo)?)
            } else if now {
                None
            } else {
                self.one_off_end_covering(lo)
            };
            if let Some(to) = skip_to {
                let before = ts_from_nanos(to.as_nanosecond() - 1)?;
                if before > lo {
                    lo = before;
                }
            }
            let hi = ts_from_nanos(lo.as_nanosecond() + NANOS_PER_DAY)?;
            for c in self.candidates(lo, hi) {
                if self.may_communicate(c) != now {
                    return Some(c);
                }
            }
            lo = hi;
            quiet_days += 1;
        }
        None
    }

    /// For `t` where `may_communicate` is false: the start of that blocked
    /// stretch (the latest change to "blocked" at or before `t`).
    fn blocked_since(&self, t: Timestamp) -> Option<Timestamp> {
        let horizon = self.backward_horizon(t);
        let mut hi = t;
        let mut since = t;
        let mut quiet_days = 0;
        while hi.as_nanosecond() > horizon {
            // Blocked throughout a one-off downtime: go to its start at
            // once; blocked a whole week: only a one-off boundary can end it.
            let skip_to = if quiet_days >= QUIET_DAYS {
                quiet_days = 0;
                Some(self.one_off_boundary_before(hi)?)
            } else {
                self.one_off_start_covering(hi)
            };
            if let Some(to) = skip_to {
                if to < hi {
                    hi = to;
                }
            }
            let lo = ts_from_nanos(hi.as_nanosecond() - NANOS_PER_DAY)?;
            for c in self.candidates(lo, hi).into_iter().rev() {
                if self.may_communicate(c) {
                    return Some(since);
                }
                since = c;
            }
            hi = lo;
            quiet_days += 1;
        }
        None
    }

    /// The first polling check at or after `t`.
    ///
    /// Checks fall at `window start + k·rate` (k = 0, 1, ...) strictly before
    /// the window's end, where the window start is the first instant the
    /// local clock reads the window's start time on that day; a check at
    /// which the agent may not communicate (downtime, or the clock was turned
    /// back out of the window) is skipped, not moved. None if there is no
    /// check any more.
    pub fn next_check_at_or_after(&self, t: Timestamp) -> Option<Timestamp> {
        let horizon = self.forward_horizon(t);
        let mut from = t;
        loop {
            let c = self.raw_check_at_or_after(from)?;
            if c.as_nanosecond() > horizon {
                return None;
            }
            if self.may_communicate(c) {
                return Some(c);
            }
            // Blocked: resume where communication is allowed again.
            from = self.next_change_after(c)?;
        }
    }

    /// The last polling check strictly before `t` (same rule as
    /// [`next_check_at_or_after`](Self::next_check_at_or_after)): when the
    /// device was last expected to check in. None if there never was one
    /// within the search horizon.
    pub fn last_expected_check_before(&self, t: Timestamp) -> Option<Timestamp> {
        let horizon = self.backward_horizon(t);
        let mut before = t;
        loop {
            let c = self.raw_check_before(before)?;
            if c.as_nanosecond() < horizon {
                return None;
            }
            if self.may_communicate(c) {
                return Some(c);
            }
            before = self.blocked_since(c)?;
        }
    }
}

impl fmt::Display for ValidSchedule {
    /// One line for logs and reports, e.g. `Europe/Berlin; polling
    /// 08:00-18:00 every 15m; per-check; downtime: weekly sat,sun 00:00-24:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; polling ", self.source.time_zone)?;
        if self.polls_all_day() {
            f.write_str("all day")?;
        } else {
            for (i, w) in self.period.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{w}")?;
            }
        }
        write!(
            f,
            " every {}; {}",
            humantime::format_duration(self.rate),
            self.source.connection
        )?;
        if !self.source.downtime.is_empty() {
            f.write_str("; downtime: ")?;
            for (i, d) in self.source.downtime.iter().enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{d}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
