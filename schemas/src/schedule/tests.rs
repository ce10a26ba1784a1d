use super::*;

use jiff::civil::date;
use proptest::prelude::*;

fn parse(text: &str) -> Schedule {
    match toml::from_str(text) {
        Ok(s) => s,
        Err(e) => panic!("schedule TOML does not parse: {e}\n{text}"),
    }
}

fn valid(text: &str) -> ValidSchedule {
    match ValidSchedule::try_from(parse(text)) {
        Ok(s) => s,
        Err(e) => panic!("schedule is invalid: {e}\n{text}"),
    }
}

fn invalid(text: &str) -> ScheduleError {
    match ValidSchedule::try_from(parse(text)) {
        Ok(s) => panic!("schedule should be invalid: {s}"),
        Err(e) => e,
    }
}

/// The instant of a local civil time that exists exactly once.
fn local(s: &ValidSchedule, dt: DateTime) -> Timestamp {
    s.time_zone()
        .to_ambiguous_timestamp(dt)
        .unambiguous()
        .expect("test time is unambiguous")
}

fn utc(text: &str) -> Timestamp {
    text.parse().expect("test instant")
}

/// Every check in `[from, to)`.
fn checks(s: &ValidSchedule, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
    let mut out = Vec::new();
    let mut t = from;
    while let Some(c) = s.next_check_at_or_after(t) {
        if c >= to {
            break;
        }
        out.push(c);
        t = c + nanos(1);
    }
    out
}

fn nanos(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_nanos(n)
}

fn mins(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_mins(n)
}

const OFFICE_HOURS: &str = r#"
time_zone = "Europe/Berlin"
connection = "per-check"
[polling]
period = [{ start = "08:00", end = "18:00" }]
rate = "15m"
[[downtime]]
kind = "weekly"
days = ["sat", "sun"]
start = "00:00"
end = "24:00"
"#;

// ----- wire form and validation ------------------------------------------

#[test]
fn defaults_are_all_day_every_15_minutes_persistent() {
    let s = valid(r#"time_zone = "UTC""#);
    assert!(s.polls_all_day());
    assert_eq!(s.rate(), Duration::from_secs(900));
    assert_eq!(s.connection(), ConnectionMode::Persistent);
    assert_eq!(s.to_string(), "UTC; polling all day every 15m; persistent");
    let t = utc("2026-05-05T10:07:00Z");
    assert!(s.may_communicate(t));
    assert_eq!(
        s.next_check_at_or_after(t),
        Some(utc("2026-05-05T10:15:00Z"))
    );
    assert_eq!(
        s.last_expected_check_before(t),
        Some(utc("2026-05-05T10:00:00Z"))
    );
    assert_eq!(s.next_change_after(t), None);
}

#[test]
fn round_trips_through_toml_and_json() {
    let s = parse(OFFICE_HOURS);
    let back: Schedule = toml::from_str(&toml::to_string(&s).expect("to toml")).expect("from toml");
    assert_eq!(back, s);
    let json = serde_json::to_string(&s).expect("to json");
    let back: Schedule = serde_json::from_str(&json).expect("from json");
    assert_eq!(back, s);
    assert!(json.contains(r#""kind":"weekly""#), "{json}");
    assert!(json.contains(r#""connection":"per-check""#), "{json}");
}

#[test]
fn unknown_fields_are_rejected_everywhere() {
    for text in [
        "time_zone = \"UTC\"\nzone = \"UTC\"",
        "time_zone = \"UTC\"\n[polling]\nrate = \"1m\"\nperiods = []",
        "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"01:00\", end = \"02:00\", days = [] }]",
        "time_zone = \"UTC\"\n[[downtime]]\nkind = \"daily\"\nstart = \"01:00\"\nend = \"02:00\"\ndays = [\"mon\"]",
        "time_zone = \"UTC\"\n[[downtime]]\nkind = \"monthly\"\nstart = \"01:00\"\nend = \"02:00\"",
        "time_zone = \"UTC\"\nconnection = \"sometimes\"",
    ] {
        assert!(
            toml::from_str::<Schedule>(text).is_err(),
            "accepted:\n{text}"
        );
    }
}

#[test]
fn validation_errors_name_the_field() {
    let cases: &[(&str, &str, Problem)] = &[
        (
            r#"time_zone = "Mars/Olympus""#,
            "time_zone",
            Problem::UnknownTimeZone("Mars/Olympus".into()),
        ),
        (
            "time_zone = \"UTC\"\n[polling]\nrate = \"0s\"",
            "polling.rate",
            Problem::RateTooShort("0s".into()),
        ),
        (
            "time_zone = \"UTC\"\n[polling]\nrate = \"500ms\"",
            "polling.rate",
            Problem::RateTooShort("500ms".into()),
        ),
        (
            "time_zone = \"UTC\"\n[polling]\nrate = \"32days\"",
            "polling.rate",
            Problem::RateTooLong("32days".into()),
        ),
        (
            "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"08:00\", end = \"08:00\" }]",
            "polling.period[0]",
            Problem::EmptyWindow,
        ),
        (
            "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"08:00\", end = \"12:00\" }, { start = \"22:00\", end = \"09:00\" }]",
            "polling.period[1]",
            Problem::Overlap("polling.period[0]".into()),
        ),
        (
            "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"8:00\", end = \"12:00\" }]",
            "polling.period[0].start",
            Problem::MalformedTime("8:00".into()),
        ),
        (
            "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"24:00\", end = \"12:00\" }]",
            "polling.period[0].start",
            Problem::MalformedTime("24:00".into()),
        ),
        (
            "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"08:00\", end = \"12:60\" }]",
            "polling.period[0].end",
            Problem::MalformedTime("12:60".into()),
        ),
        (
            "time_zone = \"UTC\"\n[[downtime]]\nkind = \"one-off\"\nstart = \"2026-06-02T00:00:00Z\"\nend = \"2026-06-01T00:00:00Z\"",
            "downtime[0].end",
            Problem::EndNotAfterStart,
        ),
        (
            "time_zone = \"UTC\"\n[[downtime]]\nkind = \"weekly\"\ndays = [\"mon\", \"funday\"]\nstart = \"01:00\"\nend = \"02:00\"",
            "downtime[0].days[1]",
            Problem::UnknownDay("funday".into()),
        ),
        (
            "time_zone = \"UTC\"\n[[downtime]]\nkind = \"weekly\"\ndays = [\"mon\", \"Monday\"]\nstart = \"01:00\"\nend = \"02:00\"",
            "downtime[0].days[1]",
            Problem::DuplicateDay("Monday".into()),
        ),
        (
            "time_zone = \"UTC\"\n[[downtime]]\nkind = \"weekly\"\ndays = []\nstart = \"01:00\"\nend = \"02:00\"",
            "downtime[0].days",
            Problem::NoDays,
        ),
        (
            "time_zone = \"UTC\"\n[[downtime]]\nkind = \"daily\"\nstart = \"03:00\"\nend = \"03:00\"",
            "downtime[0]",
            Problem::EmptyWindow,
        ),
    ];
    for (text, field, problem) in cases {
        let e = invalid(text);
        assert_eq!(&e.field, field, "{text}\n=> {e}");
        assert_eq!(&e.problem, problem, "{text}\n=> {e}");
        assert!(e.to_string().contains(field), "{e}");
    }

    let e = invalid("time_zone = \"UTC\"\n[polling]\nrate = \"soon\"");
    assert_eq!(e.field, "polling.rate");
    assert!(matches!(e.problem, Problem::MalformedRate { .. }), "{e}");
    let e = invalid(
        "time_zone = \"UTC\"\n[[downtime]]\nkind = \"one-off\"\nstart = \"2026-06-02T00:00:00\"\nend = \"2026-06-03T00:00:00Z\"",
    );
    assert_eq!(
        e.field, "downtime[0].start",
        "an instant needs an offset: {e}"
    );
    assert!(matches!(e.problem, Problem::MalformedInstant { .. }), "{e}");
}

#[test]
fn adjacent_windows_and_full_day_ends_are_accepted() {
    let s = valid(
        "time_zone = \"UTC\"\n[polling]\nperiod = [{ start = \"12:00\", end = \"14:00\" }, { start = \"08:00\", end = \"12:00\" }, { start = \"22:00\", end = \"00:00\" }]",
    );
    assert!(!s.polls_all_day());
    assert_eq!(
        s.to_string(),
        "UTC; polling 08:00-12:00,12:00-14:00,22:00-24:00 every 15m; persistent"
    );
    assert!(s.may_communicate(utc("2026-01-01T23:59:59Z")));
    assert!(!s.may_communicate(utc("2026-01-02T00:00:00Z")));
}

#[test]
fn all_day_checks_restart_at_local_midnight() {
    let s = valid("time_zone = \"UTC\"\n[polling]\nrate = \"7h\"");
    let got = checks(&s, utc("2026-05-05T00:00:00Z"), utc("2026-05-06T00:00:01Z"));
    let want: Vec<Timestamp> = [
        "2026-05-05T00:00:00Z",
        "2026-05-05T07:00:00Z",
        "2026-05-05T14:00:00Z",
        "2026-05-05T21:00:00Z",
        "2026-05-06T00:00:00Z",
    ]
    .iter()
    .map(|t| utc(t))
    .collect();
    assert_eq!(got, want);
}

// ----- worked examples -----------------------------------------------------

#[test]
fn office_hours_give_40_checks_per_weekday_and_none_at_weekends() {
    let s = valid(OFFICE_HOURS);
    // Monday 2026-06-01 to Monday 2026-06-08.
    for day in 1..=7 {
        let d = date(2026, 6, day);
        let from = local(&s, d.at(0, 0, 0, 0));
        let to = local(&s, d.at(23, 59, 0, 0));
        let got = checks(&s, from, to);
        if day <= 5 {
            assert_eq!(got.len(), 40, "{d}");
            assert_eq!(got[0], local(&s, d.at(8, 0, 0, 0)));
            assert_eq!(got[39], local(&s, d.at(17, 45, 0, 0)));
        } else {
            assert!(got.is_empty(), "{d}: {got:?}");
        }
    }
    // Friday evening: the next check is Monday 08:00, the last one Friday 17:45.
    let fri = local(&s, date(2026, 6, 5).at(19, 0, 0, 0));
    let mon = local(&s, date(2026, 6, 8).at(8, 0, 0, 0));
    assert_eq!(s.next_check_at_or_after(fri), Some(mon));
    assert_eq!(
        s.last_expected_check_before(mon),
        Some(local(&s, date(2026, 6, 5).at(17, 45, 0, 0)))
    );
    assert_eq!(s.next_change_after(fri), Some(mon));
    // 18:00 is the end, excluded.
    let six = local(&s, date(2026, 6, 3).at(18, 0, 0, 0));
    assert!(!s.may_communicate(six));
    assert!(s.may_communicate(six - nanos(1)));
    assert_eq!(s.in_downtime(fri), None);
    let sat = local(&s, date(2026, 6, 6).at(10, 0, 0, 0));
    assert_eq!(s.in_downtime(sat).map(|d| d.index), Some(0));
    assert_eq!(
        s.to_string(),
        "Europe/Berlin; polling 08:00-18:00 every 15m; per-check; downtime: weekly sat,sun 00:00-24:00"
    );
}

#[test]
fn night_only_window_crosses_midnight() {
    let s = valid(
        "time_zone = \"America/New_York\"\n[polling]\nperiod = [{ start = \"22:00\", end = \"05:00\" }]\nrate = \"1h\"",
    );
    let d = date(2026, 6, 10);
    let got = checks(
        &s,
        local(&s, d.at(12, 0, 0, 0)),
        local(&s, d.at(12, 0, 0, 0)) + mins(24 * 60),
    );
    let want: Vec<Timestamp> = [22, 23]
        .iter()
        .map(|h| local(&s, d.at(*h, 0, 0, 0)))
        .chain((0..5).map(|h| local(&s, date(2026, 6, 11).at(h, 0, 0, 0))))
        .collect();
    assert_eq!(got, want);
    assert!(s.may_communicate(local(&s, date(2026, 6, 11).at(4, 59, 0, 0))));
    assert!(!s.may_communicate(local(&s, date(2026, 6, 11).at(5, 0, 0, 0))));
    assert_eq!(
        s.next_change_after(local(&s, d.at(12, 0, 0, 0))),
        Some(local(&s, d.at(22, 0, 0, 0)))
    );
    assert_eq!(
        s.next_change_after(local(&s, d.at(23, 0, 0, 0))),
        Some(local(&s, date(2026, 6, 11).at(5, 0, 0, 0)))
    );
}

#[test]
fn maintenance_weekend_blocks_saturday_to_monday_morning() {
    // Sat 00:00 -> Mon 06:00 as two weekly entries.
    let s = valid(
        r#"
time_zone = "Europe/Berlin"
[polling]
rate = "30m"
[[downtime]]
kind = "weekly"
days = ["sat", "sun"]
start = "00:00"
end = "24:00"
[[downtime]]
kind = "weekly"
days = ["mon"]
start = "00:00"
end = "06:00"
"#,
    );
    let fri_late = local(&s, date(2026, 6, 5).at(23, 40, 0, 0));
    let sat = local(&s, date(2026, 6, 6).at(0, 0, 0, 0));
    let mon6 = local(&s, date(2026, 6, 8).at(6, 0, 0, 0));
    assert_eq!(s.next_change_after(fri_late), Some(sat));
    assert_eq!(s.next_change_after(sat), Some(mon6));
    assert_eq!(s.next_check_at_or_after(fri_late), Some(mon6));
    assert_eq!(
        s.last_expected_check_before(mon6),
        Some(local(&s, date(2026, 6, 5).at(23, 30, 0, 0)))
    );
    assert_eq!(
        s.in_downtime(local(&s, date(2026, 6, 8).at(5, 59, 0, 0)))
            .map(|d| d.index),
        Some(1)
    );

    // The same with a weekly window that crosses midnight: Sunday 12:00 to
    // Monday 06:00.
    let crossing = valid(
        r#"
time_zone = "Europe/Berlin"
[polling]
rate = "30m"
[[downtime]]
kind = "weekly"
days = ["saturday"]
start = "00:00"
end = "24:00"
[[downtime]]
kind = "weekly"
days = ["Sun"]
start = "00:00"
end = "12:00"
[[downtime]]
kind = "weekly"
days = ["sun"]
start = "12:00"
end = "06:00"
"#,
    );
    let mut t = fri_late;
    while t < mon6 + mins(120) {
        assert_eq!(crossing.may_communicate(t), s.may_communicate(t), "{t}");
        t += mins(7);
    }
}

#[test]
fn one_off_48h_downtime() {
    let s = valid(
        r#"
time_zone = "UTC"
connection = "per-check"
[polling]
period = [{ start = "08:00", end = "18:00" }]
rate = "15m"
[[downtime]]
kind = "one-off"
start = "2026-07-01T12:00:00+02:00"
end = "2026-07-03T12:00:00+02:00"
"#,
    );
    let start = utc("2026-07-01T10:00:00Z");
    let end = utc("2026-07-03T10:00:00Z");
    assert!(s.may_communicate(start - nanos(1)));
    assert!(!s.may_communicate(start));
    assert!(s.in_downtime(start).is_some());
    assert!(s.in_downtime(end).is_none());
    assert_eq!(s.next_change_after(start - mins(10)), Some(start));
    assert_eq!(s.next_change_after(start), Some(end));
    assert_eq!(s.next_check_at_or_after(start), Some(end));
    assert_eq!(
        s.last_expected_check_before(end),
        Some(utc("2026-07-01T09:45:00Z"))
    );
    assert!(checks(&s, start, end).is_empty());
    // Before and after it the downtime changes nothing.
    assert_eq!(
        checks(&s, utc("2026-06-30T00:00:00Z"), utc("2026-07-01T00:00:00Z")).len(),
        40
    );
    assert_eq!(
        checks(&s, utc("2026-07-04T00:00:00Z"), utc("2026-07-05T00:00:00Z")).len(),
        40
    );
}

/// Found by fuzzing: a one-off downtime lasting a thousand years made every
/// question about the schedule walk it day by day (365,000 steps, seconds
/// per call). Inside a one-off the answer is its end (or start).
#[test]
fn a_one_off_lasting_centuries_is_skipped_not_walked() {
    let s = valid(
        r#"
time_zone = "UTC"
connection = "per-check"
[polling]
period = [{ start = "08:00", end = "18:00" }]
rate = "15m"
[[downtime]]
kind = "one-off"
start = "2027-01-19T18:00:00Z"
end = "3027-01-21T18:00:00Z"
[[downtime]]
kind = "one-off"
start = "2026-12-01T00:00:00Z"
end = "2027-01-20T00:00:00Z"
"#,
    );
    let inside = utc("2500-06-01T12:00:00Z");
    // It ends at 18:00, when the polling period has closed: communication
    // resumes with the period the next morning.
    let end = utc("3027-01-22T08:00:00Z");
    assert!(!s.may_communicate(inside));
    // Both one-offs overlap: blocked from the first start to the last end.
    assert_eq!(s.next_change_after(inside), Some(end));
    assert_eq!(
        s.next_change_after(utc("2026-12-10T00:00:00Z")),
        Some(end),
        "the overlapping one-offs are one blocked stretch"
    );
    assert_eq!(s.next_check_at_or_after(inside), Some(end));
    assert_eq!(
        s.last_expected_check_before(inside),
        Some(utc("2026-11-30T17:45:00Z"))
    );

    // Polling all day and a one-off centuries ahead: nothing changes until
    // it starts, and nothing after it ends.
    let far = valid(
        r#"
time_zone = "Europe/Berlin"
[[downtime]]
kind = "one-off"
start = "2900-03-01T00:00:00Z"
end = "2900-03-02T00:00:00Z"
"#,
    );
    let now = utc("2026-12-03T12:00:00Z");
    assert_eq!(
        far.next_change_after(now),
        Some(utc("2900-03-01T00:00:00Z"))
    );
    assert_eq!(
        far.next_change_after(utc("2900-03-01T06:00:00Z")),
        Some(utc("2900-03-02T00:00:00Z"))
    );
    assert_eq!(far.next_change_after(utc("2900-03-02T00:00:00Z")), None);
}

// ----- DST ---------------------------------------------------------------

fn berlin_night() -> ValidSchedule {
    valid(
        "time_zone = \"Europe/Berlin\"\n[polling]\nperiod = [{ start = \"01:30\", end = \"03:30\" }]\nrate = \"15m\"",
    )
}

#[test]
fn spring_forward_shortens_a_window_across_the_gap() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
    let s = berlin_night();
    let got = checks(&s, utc("2026-03-28T12:00:00Z"), utc("2026-03-29T12:00:00Z"));
    let want: Vec<Timestamp> = [
        "2026-03-29T00:30:00Z", // 01:30 CET
        "2026-03-29T00:45:00Z", // 01:45 CET
        "2026-03-29T01:00:00Z", // 03:00 CEST
        "2026-03-29T01:15:00Z", // 03:15 CEST
    ]
    .iter()
    .map(|t| utc(t))
    .collect();
    assert_eq!(got, want);
    assert_eq!(
        s.next_change_after(utc("2026-03-29T00:00:00Z")),
        Some(utc("2026-03-29T00:30:00Z"))
    );
    assert_eq!(
        s.next_change_after(utc("2026-03-29T00:30:00Z")),
        Some(utc("2026-03-29T01:30:00Z"))
    );
}

#[test]
fn fall_back_lengthens_a_window_across_the_fold() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC).
    let s = berlin_night();
    let got = checks(&s, utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z"));
    assert_eq!(got.len(), 12, "{got:?}");
    assert_eq!(got[0], utc("2026-10-24T23:30:00Z")); // 01:30 CEST
    assert_eq!(got[11], utc("2026-10-25T02:15:00Z")); // 03:15 CET
    assert_eq!(
        s.next_change_after(utc("2026-10-24T23:30:00Z")),
        Some(utc("2026-10-25T02:30:00Z"))
    );
}

#[test]
fn a_check_time_in_the_gap_happens_when_the_clock_jumps_past_it() {
    let s = valid(
        "time_zone = \"Europe/Berlin\"\n[polling]\nperiod = [{ start = \"02:30\", end = \"04:00\" }]\nrate = \"2h\"",
    );
    // Daily check at 02:30; on the spring-forward day 02:30 does not exist and
    // the check is at 03:00 CEST, the first instant the clock reads >= 02:30.
    assert_eq!(
        s.next_check_at_or_after(utc("2026-03-28T12:00:00Z")),
        Some(utc("2026-03-29T01:00:00Z"))
    );
    assert_eq!(
        s.next_check_at_or_after(utc("2026-03-29T01:00:00.001Z")),
        Some(utc("2026-03-30T00:30:00Z"))
    );
    // A window lying entirely in the skipped hour does not happen that day.
    let s = valid(
        "time_zone = \"Europe/Berlin\"\n[polling]\nperiod = [{ start = \"02:15\", end = \"02:45\" }]\nrate = \"1h\"",
    );
    assert_eq!(
        s.next_check_at_or_after(utc("2026-03-28T12:00:00Z")),
        Some(utc("2026-03-30T00:15:00Z"))
    );
    assert!(!s.may_communicate(utc("2026-03-29T01:00:00Z")));
}

#[test]
fn a_window_in_the_repeated_hour_happens_twice() {
    let s = valid(
        "time_zone = \"Europe/Berlin\"\n[polling]\nperiod = [{ start = \"02:30\", end = \"02:45\" }]\nrate = \"15m\"",
    );
    let got = checks(&s, utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z"));
    assert_eq!(
        got,
        vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-25T01:30:00Z")]
    );
    assert_eq!(
        s.last_expected_check_before(utc("2026-10-25T01:29:00Z")),
        Some(utc("2026-10-25T00:30:00Z"))
    );
}

#[test]
fn kolkata_has_no_dst_and_a_half_hour_offset() {
    let s = valid(
        "time_zone = \"Asia/Kolkata\"\n[polling]\nperiod = [{ start = \"09:00\", end = \"10:00\" }]\nrate = \"20m\"",
    );
    let got = checks(&s, utc("2026-03-29T00:00:00Z"), utc("2026-03-30T00:00:00Z"));
    assert_eq!(
        got,
        vec![
            utc("2026-03-29T03:30:00Z"),
            utc("2026-03-29T03:50:00Z"),
            utc("2026-03-29T04:10:00Z")
        ]
    );
}

// ----- property tests ----------------------------------------------------

const ZONES: &[&str] = &[
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "UTC",
];

/// Days around DST changes in the zones above, and ordinary days.
const DAYS: &[(i16, i8, i8)] = &[
    (2026, 3, 29),  // Europe spring forward
    (2026, 10, 25), // Europe fall back
    (2026, 3, 8),   // US spring forward
    (2026, 11, 1),  // US fall back
    (2026, 4, 5),   // Sydney fall back
    (2026, 10, 4),  // Sydney spring forward
    (2026, 6, 17),
    (2027, 1, 1),
];

fn minute() -> impl Strategy<Value = u16> {
    prop_oneof![
        // Favour the DST-prone early hours and whole hours.
        (0u16..5).prop_map(|h| h * 60 + 30),
        (0u16..24).prop_map(|h| h * 60),
        0u16..1440,
    ]
}

fn hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[derive(Debug, Clone)]
struct Gen {
    zone: &'static str,
    period: Vec<(u16, u16)>,
    rate_secs: u64,
    daily: Vec<(u16, u16)>,
    weekly: Vec<(u8, u16, u16)>,
    one_off: Option<(i64, i64)>,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Gen {
    fn schedule(&self) -> Schedule {
        Schedule {
            time_zone: self.zone.into(),
            polling: Polling {
                period: self
                    .period
                    .iter()
                    .map(|&(s, e)| DailyWindow {
                        start: hhmm(s),
                        end: hhmm(e),
                    })
                    .collect(),
                rate: format!("{}s", self.rate_secs),
            },
            connection: ConnectionMode::PerCheck,
            downtime: self
                .daily
                .iter()
                .map(|&(s, e)| Downtime::Daily {
                    start: hhmm(s),
                    end: hhmm(e),
                })
                .chain(self.weekly.iter().map(|&(days, s, e)| {
                    Downtime::Weekly {
                        days: (0..7)
                            .filter(|i| days & (1 << i) != 0)
                            .map(|i| DAY_NAMES[i].to_string())
                            .collect(),
                        start: hhmm(s),
                        end: hhmm(e),
                    }
                }))
                .chain(self.one_off.map(|(s, len)| {
                    let start = utc("2026-01-01T00:00:00Z") + jiff::SignedDuration::from_mins(s);
                    Downtime::OneOff {
                        start: start.to_string(),
                        end: (start + jiff::SignedDuration::from_mins(len)).to_string(),
                    }
                }))
                .collect(),
        }
    }

    /// Independent reading of the rules, minute by minute on the local clock.
    fn brute(&self, t: Timestamp) -> bool {
        let tz = TimeZone::get(self.zone).expect("zone");
        let dt = tz.to_datetime(t);
        let m = u16::try_from(dt.hour()).expect("h") * 60 + u16::try_from(dt.minute()).expect("m");
        let wd = usize::try_from(dt.date().weekday().to_monday_zero_offset()).expect("wd");
        let yd = (wd + 6) % 7;
        let within = |s: u16, e: u16, today: bool, yesterday: bool| {
            let e = if e == 0 { 1440 } else { e };
            if e > s {
                today && s <= m && m < e
            } else {
                (today && m >= s) || (yesterday && m < e)
            }
        };
        let polling =
            self.period.is_empty() || self.period.iter().any(|&(s, e)| within(s, e, true, true));
        let down = self.daily.iter().any(|&(s, e)| within(s, e, true, true))
            || self
                .weekly
                .iter()
                .any(|&(d, s, e)| within(s, e, d & (1 << wd) != 0, d & (1 << yd) != 0))
            || self.one_off.is_some_and(|(s, len)| {
                let start = utc("2026-01-01T00:00:00Z") + jiff::SignedDuration::from_mins(s);
                start <= t && t < start + jiff::SignedDuration::from_mins(len)
            });
        polling && !down
    }
}

fn window() -> impl Strategy<Value = (u16, u16)> {
    (minute(), minute()).prop_filter("non-empty", |(s, e)| s != e)
}

fn gen() -> impl Strategy<Value = Gen> {
    (
        prop::sample::select(ZONES),
        prop::collection::vec(window(), 0..4),
        prop_oneof![
            Just(60u64),
            Just(900),
            Just(3600),
            Just(7 * 60 + 13),
            1u64..20_000
        ],
        prop::collection::vec(window(), 0..2),
        prop::collection::vec((1u8..128, minute(), minute()), 0..2),
        prop::option::of((0i64..(800 * 24 * 60), 1i64..(3 * 24 * 60))),
    )
        .prop_map(|(zone, period, rate_secs, daily, weekly, one_off)| Gen {
            zone,
            period,
            rate_secs,
            daily,
            weekly: weekly.into_iter().filter(|(_, s, e)| s != e).collect(),
            one_off,
        })
}

fn valid_gen() -> impl Strategy<Value = (Gen, ValidSchedule)> {
    gen().prop_filter_map("overlapping polling windows", |g| {
        ValidSchedule::try_from(g.schedule()).ok().map(|s| (g, s))
    })
}

/// An instant near the start of one of `DAYS` in the schedule's zone.
fn instant() -> impl Strategy<Value = (usize, i64)> {
    (0..DAYS.len(), -(36 * 3600i64)..(60 * 3600))
}

fn instant_for(s: &ValidSchedule, (day, secs): (usize, i64)) -> Timestamp {
    let (y, m, d) = DAYS[day];
    let midnight = s
        .time_zone()
        .to_ambiguous_timestamp(date(y, m, d).at(0, 0, 0, 0))
        .compatible()
        .expect("midnight");
    midnight + jiff::SignedDuration::from_secs(secs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn membership_agrees_with_a_minute_scan((g, s) in valid_gen(), day in 0..DAYS.len(), sec in 0i64..60) {
        let start = instant_for(&s, (day, -3600)) + jiff::SignedDuration::from_secs(sec);
        for i in 0..(26 * 60) {
            let t = start + jiff::SignedDuration::from_mins(i);
            prop_assert_eq!(s.may_communicate(t), g.brute(t), "at {} ({})", t, s.time_zone().to_datetime(t));
        }
    }

    #[test]
    fn next_check_is_at_or_after_monotone_and_allowed(
        (_g, s) in valid_gen(), a in instant(), delta in 0i64..(3 * 86_400),
    ) {
        let t1 = instant_for(&s, a);
        let t2 = t1 + jiff::SignedDuration::from_secs(delta);
        let c1 = s.next_check_at_or_after(t1);
        let c2 = s.next_check_at_or_after(t2);
        if let Some(c1) = c1 {
            prop_assert!(c1 >= t1);
            prop_assert!(s.may_communicate(c1), "check {} is not allowed", c1);
            // It is a fixed point, and the previous check before just after it is itself.
            prop_assert_eq!(s.next_check_at_or_after(c1), Some(c1));
            prop_assert_eq!(s.last_expected_check_before(c1 + nanos(1)), Some(c1));
            // Nothing between t1 and c1 is a check.
            if let Some(prev) = s.last_expected_check_before(c1) {
                prop_assert!(prev < t1, "check {} lies between {} and {}", prev, t1, c1);
            }
        }
        match (c1, c2) {
            (Some(c1), Some(c2)) => prop_assert!(c1 <= c2),
            (None, Some(c2)) => prop_assert!(false, "no check after {} but one at {}", t1, c2),
            _ => {}
        }
        if let Some(c2) = c2 {
            prop_assert!(c2 >= t2);
            prop_assert!(s.may_communicate(c2));
        }
    }

    #[test]
    fn last_expected_check_is_before_and_allowed((_g, s) in valid_gen(), a in instant()) {
        let t = instant_for(&s, a);
        if let Some(c) = s.last_expected_check_before(t) {
            prop_assert!(c < t);
            prop_assert!(s.may_communicate(c));
            let next = s.next_check_at_or_after(c + nanos(1));
            prop_assert!(next.is_none_or(|n| n >= t), "check {:?} between {} and {}", next, c, t);
        }
    }

    #[test]
    fn next_change_flips_there_and_not_before((g, s) in valid_gen(), a in instant()) {
        let t = instant_for(&s, a);
        let now = s.may_communicate(t);
        if let Some(c) = s.next_change_after(t) {
            prop_assert!(c > t);
            prop_assert!(s.may_communicate(c) != now, "no flip at {}", c);
            prop_assert_eq!(g.brute(c), s.may_communicate(c));
            let span = c.as_nanosecond() - t.as_nanosecond();
            for i in 1..64i128 {
                let probe = ts_from_nanos(t.as_nanosecond() + span * i / 64).expect("probe");
                prop_assert_eq!(s.may_communicate(probe), now, "flipped early at {}", probe);
            }
            prop_assert_eq!(s.may_communicate(c - nanos(1)), now);
        } else {
            // Never changes again: sample the next three days.
            for h in 0..72 {
                prop_assert_eq!(s.may_communicate(t + jiff::SignedDuration::from_hours(h)), now);
            }
        }
    }
}

// ----- the example files in config/schedules -------------------------------

#[test]
fn example_files_behave_as_their_comments_say() {
    let office = valid(include_str!("../../../config/schedules/office-hours.toml"));
    let d = date(2026, 12, 23); // Wednesday
    let day = |s: &ValidSchedule, d: Date| {
        checks(s, local(s, d.at(0, 0, 0, 0)), local(s, d.at(23, 59, 0, 0)))
    };
    assert_eq!(day(&office, d).len(), 40);
    assert_eq!(day(&office, date(2026, 12, 24)).len(), 0, "holiday");
    assert_eq!(day(&office, date(2026, 12, 26)).len(), 0, "Saturday");
    assert_eq!(day(&office, date(2026, 12, 28)).len(), 40, "Monday");

    let night = valid(include_str!("../../../config/schedules/night-only.toml"));
    let from = local(&night, date(2026, 6, 10).at(12, 0, 0, 0));
    let got = checks(&night, from, from + mins(24 * 60));
    assert_eq!(got.len(), 13);
    assert_eq!(got[0], local(&night, date(2026, 6, 10).at(22, 0, 0, 0)));
    assert!(got.contains(&local(&night, date(2026, 6, 11).at(1, 30, 0, 0))));
    assert!(!got.contains(&local(&night, date(2026, 6, 11).at(2, 0, 0, 0))));
    assert_eq!(got[12], local(&night, date(2026, 6, 11).at(4, 30, 0, 0)));

    let noon = local(&night, date(2026, 6, 10).at(12, 0, 0, 0));
    assert_eq!(
        night.next_change_after(noon),
        Some(local(&night, date(2026, 6, 10).at(22, 0, 0, 0)))
    );
    assert_eq!(
        night.next_change_after(local(&night, date(2026, 6, 10).at(23, 0, 0, 0))),
        Some(local(&night, date(2026, 6, 11).at(2, 0, 0, 0)))
    );

    let weekend = valid(include_str!(
        "../../../config/schedules/maintenance-weekend.toml"
    ));
    assert_eq!(weekend.connection(), ConnectionMode::Persistent);
    let fri = local(&weekend, date(2026, 9, 11).at(23, 57, 0, 0));
    let sat = local(&weekend, date(2026, 9, 12).at(0, 0, 0, 0));
    let mon6 = local(&weekend, date(2026, 9, 14).at(6, 0, 0, 0));
    assert_eq!(weekend.next_change_after(fri), Some(sat));
    assert_eq!(weekend.next_change_after(sat), Some(mon6));
    assert_eq!(weekend.next_check_at_or_after(sat), Some(mon6));
    let mon = date(2026, 9, 14);
    assert_eq!(
        day(&weekend, mon).len(),
        18 * 12,
        "06:00 to 24:00 every 5 minutes"
    );
    let shutdown = utc("2027-01-19T07:00:00Z");
    assert_eq!(weekend.in_downtime(shutdown).map(|d| d.index), Some(2));
    assert_eq!(
        weekend.next_change_after(shutdown),
        Some(utc("2027-01-21T07:00:00Z"))
    );
}
