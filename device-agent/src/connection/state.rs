//! The session's state and its transitions, apart from the I/O: the
//! driver in `connection.rs` polls the MQTT event loop, the timers and the
//! schedule, and calls one transition per event with the time as an
//! argument; the transitions say what the driver does next (log, ask for
//! a sync, end the session). Nothing here sleeps or touches the network.

use std::collections::HashMap;
use std::time::Duration;

use margo_schemas::messages::SyncReason;
use tokio::time::Instant;

use crate::clock::{jitter, Backoff};
use crate::schedule_plan::{Phase, Planner};

use super::{ConnState, MqttTransportSettings};

/// What a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionKind {
    /// Connected through a stretch the schedule allows (or for good).
    Online,
    /// One `per-check` check.
    Check,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionEnd {
    Shutdown,
    /// The schedule ended the stretch (downtime, end of the period).
    Scheduled,
    /// A `per-check` check settled or reached its bound.
    CheckDone,
}

/// State carried across sessions.
#[derive(Debug)]
pub(super) struct RunState {
    pub state_due: Instant,
    /// No session has ended yet since the process started.
    pub first: bool,
    pub revoked: bool,
}

impl RunState {
    pub fn new(now: Instant, state_interval: Duration) -> Self {
        Self {
            state_due: now + state_interval,
            first: true,
            revoked: false,
        }
    }

    /// Whether a `state` report is due at `now`; if so the next one is
    /// due a `state_interval` later.
    pub fn take_state_report(&mut self, now: Instant, state_interval: Duration) -> bool {
        if now < self.state_due {
            return false;
        }
        self.state_due = now + state_interval;
        true
    }
}

/// What a ConnAck means for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnAckOutcome {
    /// Ask the manager for a sync, and why.
    pub ask_sync: Option<SyncReason>,
    /// The gateway had refused this device before (revoked) and accepts it now.
    pub unrevoked: bool,
    /// Failed connection attempts since the previous ConnAck.
    pub failed_attempts: u32,
}

/// Whether the `attempt`th failed connection attempt in a row is worth an
/// INFO line: the first is a warning of its own, then the 2nd, 4th, 8th,
/// ... so an agent that cannot connect for hours still says so, without
/// a line per retry.
pub(super) fn announce_retry(attempt: u32) -> bool {
    attempt >= 2 && attempt.is_power_of_two()
}

/// What a failed poll means for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PollFailure {
    /// The gateway refuses this device; `already`: it did last time too.
    Revoked { already: bool, delay: Duration },
    /// Any other error; `attempt` counts the delays since the last ConnAck.
    Error {
        was_connected: bool,
        attempt: u32,
        delay: Duration,
    },
}

/// What a new schedule means for the running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScheduleOutcome {
    /// The session goes on (maybe with a new end).
    Continue,
    /// The session ends once what is pending is delivered.
    Drain,
    /// The session ends now.
    End,
}

/// The mutable state of one session (one stretch of communication).
#[derive(Debug)]
pub(super) struct SessionState {
    pub kind: SessionKind,
    /// When the schedule ends the session (wall clock, ms), if ever.
    pub until: Option<u64>,
    pub conn: ConnState,
    backoff: Backoff,
    /// Outbox entries published on this connection, and when.
    pub sent: HashMap<u64, Instant>,
    /// The session started clean.
    clean: bool,
    /// The first session of the process.
    first_session: bool,
    /// No ConnAck yet in this session.
    first_connack: bool,
    /// When a check (or a drain) ends whether or not it settled.
    check_deadline: Instant,
    /// An online session that a new schedule ends first delivers what is
    /// pending (the state report naming the new schedule), like a check.
    draining: bool,
    /// `persistent` with a schedule: each check is an in-band sync, a
    /// state report whose ack names the manager's current version.
    pub inband_at: Option<u64>,
    /// `per-check`: when the check may count as settled (armed on SubAck,
    /// pushed back by every exchange).
    settle_at: Option<Instant>,
    ack_timeout: Duration,
    check_timeout: Duration,
    check_settle: Duration,
    reconnect_max: Duration,
}

impl SessionState {
    /// A session of `kind` until `until`, starting at `now` / `now_ms`.
    pub fn new(
        kind: SessionKind,
        until: Option<u64>,
        run: &RunState,
        planner: &Planner,
        settings: &MqttTransportSettings,
        now: Instant,
        now_ms: u64,
    ) -> Self {
        Self {
            kind,
            until,
            conn: ConnState::Connecting,
            backoff: Backoff::new(settings.reconnect_min, settings.reconnect_max),
            sent: HashMap::new(),
            // Under a schedule every session is clean: a persistent session
            // left behind by a scheduled disconnect would queue every
            // publication until the next process start.
            clean: !run.first || planner.schedule().is_some(),
            first_session: run.first,
            first_connack: true,
            check_deadline: now + settings.check_timeout,
            draining: false,
            inband_at: match kind {
                SessionKind::Online => planner.next_check_after(now_ms),
                SessionKind::Check => None,
            },
            settle_at: None,
            ack_timeout: settings.ack_timeout,
            check_timeout: settings.check_timeout,
            check_settle: settings.check_settle,
            reconnect_max: settings.reconnect_max,
        }
    }

    /// The session starts clean (no persistent session to resume).
    pub fn clean(&self) -> bool {
        self.clean
    }

    /// This session sets the last will and says `online`.
    pub fn presence(&self) -> bool {
        self.kind == SessionKind::Online
    }

    /// A check after a pause subscribes narrowly.
    pub fn narrow(&self) -> bool {
        self.kind == SessionKind::Check && !self.first_session
    }

    /// Connects and disconnects are logged at debug only (not the first session).
    pub fn quiet(&self) -> bool {
        !self.first_session
    }

    pub fn connected(&self) -> bool {
        self.conn == ConnState::Connected
    }

    /// The session ends once it settles or at the check deadline.
    pub fn checking(&self) -> bool {
        self.kind == SessionKind::Check || self.draining
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn check_deadline(&self) -> Instant {
        self.check_deadline
    }

    /// When to see whether the check settled (only while connected).
    pub fn settle_at(&self) -> Option<Instant> {
        if self.checking() && self.connected() {
            self.settle_at
        } else {
            None
        }
    }

    /// The earliest of: the state report, the downlink's pending-content
    /// deadline, the oldest ack timeout.
    pub fn next_wake(&self, state_due: Instant, downlink_deadline: Option<Instant>) -> Instant {
        let mut wake = state_due;
        if let Some(d) = downlink_deadline {
            wake = wake.min(d);
        }
        if let Some(oldest) = self.sent.values().min() {
            wake = wake.min(*oldest + self.ack_timeout);
        }
        wake
    }

    /// The backoff delay is over: connect again.
    pub fn on_backoff_elapsed(&mut self) {
        self.conn = ConnState::Connecting;
    }

    /// The broker accepted the connection: what to ask and say. Everything
    /// is published afresh on this connection.
    pub fn on_connack(&mut self, session_present: bool, run: &mut RunState) -> ConnAckOutcome {
        self.conn = ConnState::Connected;
        let failed_attempts = self.backoff.attempts();
        self.backoff.reset();
        let unrevoked = std::mem::replace(&mut run.revoked, false);
        let ask_sync = if run.first && self.first_connack {
            Some(SyncReason::Startup)
        } else if !self.clean && !session_present {
            Some(SyncReason::SessionLost)
        } else {
            None
        };
        self.first_connack = false;
        self.sent.clear();
        ConnAckOutcome {
            ask_sync,
            unrevoked,
            failed_attempts,
        }
    }

    /// A SubAck, a message received or an ack of ours: a check is not
    /// settled yet.
    pub fn on_exchange(&mut self, now: Instant) {
        if self.checking() {
            self.settle_at = Some(now + self.check_settle);
        }
    }

    /// The outbox has something new (sent while connected).
    pub fn on_outbox_notified(&mut self, now: Instant) {
        if self.checking() && self.settle_at.is_some() {
            self.settle_at = Some(now + self.check_settle);
        }
    }

    /// The settle time passed: the check is done when nothing is pending
    /// (`idle`: no downlink deadline and an empty outbox), else it waits
    /// another settle time.
    pub fn on_settle_elapsed(&mut self, now: Instant, idle: bool) -> Option<SessionEnd> {
        if idle {
            return Some(SessionEnd::CheckDone);
        }
        self.settle_at = Some(now + self.check_settle);
        None
    }

    /// A poll failed: back off until the returned instant's delay passed.
    /// `revocation`: the gateway refuses this device's identity (slow
    /// retries only, in case the revocation is undone).
    pub fn on_poll_error(
        &mut self,
        revocation: bool,
        run: &mut RunState,
        now: Instant,
    ) -> PollFailure {
        let failure = if revocation {
            let delay = jitter(self.reconnect_max);
            let already = std::mem::replace(&mut run.revoked, true);
            PollFailure::Revoked { already, delay }
        } else {
            let delay = self.backoff.next_delay();
            run.revoked = false;
            PollFailure::Error {
                was_connected: self.connected(),
                attempt: self.backoff.attempts(),
                delay,
            }
        };
        let delay = match failure {
            PollFailure::Revoked { delay, .. } | PollFailure::Error { delay, .. } => delay,
        };
        self.conn = ConnState::Backoff(now + delay);
        failure
    }

    /// The timer fired: nothing can be acked while disconnected, so
    /// everything is resent on connect.
    pub fn on_timer(&mut self) {
        if !self.connected() {
            self.sent.clear();
        }
    }

    /// An in-band check ran at `now_ms`; the next one follows the schedule.
    pub fn on_inband_check(&mut self, planner: &Planner, now_ms: u64) {
        self.inband_at = planner.next_check_after(now_ms);
    }

    /// The planner has a new schedule (already set): an online session
    /// follows it while it stays online, a check finishes under it, and an
    /// online session it ends delivers what is pending first (if connected).
    pub fn on_new_schedule(
        &mut self,
        planner: &mut Planner,
        now: Instant,
        now_ms: u64,
    ) -> ScheduleOutcome {
        match (self.kind, planner.phase(now_ms)) {
            (SessionKind::Online, Phase::Online { until }) => {
                self.until = until;
                self.inband_at = planner.next_check_after(now_ms);
                ScheduleOutcome::Continue
            }
            // A check finishes under the new schedule; its next check follows it.
            (SessionKind::Check, _) => ScheduleOutcome::Continue,
            _ if self.connected() => {
                planner.check_done(now_ms, now_ms);
                self.draining = true;
                self.check_deadline = now + self.check_timeout;
                self.settle_at = Some(now + self.check_settle);
                ScheduleOutcome::Drain
            }
            _ => ScheduleOutcome::End,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerUrl;
    use margo_schemas::schedule::{Schedule, ValidSchedule};

    const S: Duration = Duration::from_secs(1);

    fn settings() -> MqttTransportSettings {
        MqttTransportSettings {
            broker: BrokerUrl {
                host: "localhost".into(),
                port: 1883,
                tls: false,
            },
            keep_alive: 30 * S,
            ack_timeout: 10 * S,
            reconnect_min: S,
            reconnect_max: 60 * S,
            state_interval: 300 * S,
            max_message_bytes: 1 << 16,
            wake_spread: Duration::ZERO,
            check_timeout: 120 * S,
            check_settle: 2 * S,
            tls_resumption: true,
            connect_timeout: 5 * S,
        }
    }

    fn schedule(text: &str) -> ValidSchedule {
        let s: Schedule = toml::from_str(text).unwrap();
        ValidSchedule::try_from(s).unwrap()
    }

    fn at(rfc3339: &str) -> u64 {
        crate::schedule_plan::ms(rfc3339.parse::<jiff::Timestamp>().unwrap())
    }

    const PERSISTENT: &str = "time_zone = \"UTC\"\nconnection = \"persistent\"\n[polling]\nperiod = [{ start = \"08:00\", end = \"18:00\" }]\nrate = \"15m\"\n";
    const PER_CHECK: &str = "time_zone = \"UTC\"\nconnection = \"per-check\"\n[polling]\nperiod = [{ start = \"08:00\", end = \"18:00\" }]\nrate = \"15m\"\n";

    fn run(now: Instant) -> RunState {
        RunState::new(now, settings().state_interval)
    }

    fn session(kind: SessionKind, run: &RunState, planner: &Planner, now: Instant) -> SessionState {
        SessionState::new(kind, None, run, planner, &settings(), now, 0)
    }

    #[test]
    fn a_first_session_without_schedule_resumes_and_later_ones_start_clean() {
        let now = Instant::now();
        let mut r = run(now);
        let p = Planner::new(None);
        let s = session(SessionKind::Online, &r, &p, now);
        assert!(!s.clean() && s.presence() && !s.narrow() && !s.quiet());
        assert_eq!(s.conn, ConnState::Connecting);
        assert_eq!(s.inband_at, None);
        assert_eq!(s.check_deadline(), now + 120 * S);
        r.first = false;
        let s = session(SessionKind::Check, &r, &p, now);
        assert!(s.clean() && !s.presence() && s.narrow() && s.quiet());
        assert!(s.checking());
    }

    #[test]
    fn under_a_schedule_even_the_first_session_is_clean() {
        let now = Instant::now();
        let r = run(now);
        let p = Planner::new(Some(schedule(PER_CHECK)));
        let s = session(SessionKind::Check, &r, &p, now);
        assert!(s.clean());
        // The first check of the process subscribes to everything.
        assert!(!s.narrow());
    }

    #[test]
    fn a_persistent_schedule_plans_in_band_checks() {
        let now = Instant::now();
        let r = run(now);
        let p = Planner::new(Some(schedule(PERSISTENT)));
        let t = at("2026-03-02T10:00:00Z");
        let s = SessionState::new(SessionKind::Online, None, &r, &p, &settings(), now, t);
        assert_eq!(s.inband_at, p.next_check_after(t));
        assert!(s.inband_at.is_some());
        let c = SessionState::new(SessionKind::Check, None, &r, &p, &settings(), now, t);
        assert_eq!(c.inband_at, None);
    }

    #[test]
    fn the_state_report_is_due_once_per_interval() {
        let now = Instant::now();
        let mut r = run(now);
        let interval = settings().state_interval;
        assert!(!r.take_state_report(now, interval));
        assert!(r.take_state_report(now + interval, interval));
        assert_eq!(r.state_due, now + 2 * interval);
        assert!(!r.take_state_report(now + interval, interval));
    }

    #[test]
    fn the_first_connack_asks_for_a_startup_sync() {
        let now = Instant::now();
        let mut r = run(now);
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        s.sent.insert(1, now);
        let out = s.on_connack(false, &mut r);
        assert_eq!(out.ask_sync, Some(SyncReason::Startup));
        assert!(!out.unrevoked);
        assert!(s.connected() && s.sent.is_empty());
        // A reconnect of the resumed session: a sync only when the broker lost it.
        s.conn = ConnState::Connecting;
        assert_eq!(s.on_connack(true, &mut r).ask_sync, None);
        assert_eq!(
            s.on_connack(false, &mut r).ask_sync,
            Some(SyncReason::SessionLost)
        );
    }

    #[test]
    fn a_clean_session_asks_for_no_sync_after_its_first() {
        let now = Instant::now();
        let mut r = run(now);
        r.first = false;
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        assert_eq!(s.on_connack(false, &mut r).ask_sync, None);
    }

    #[test]
    fn a_connack_ends_the_revocation_and_resets_the_backoff() {
        let now = Instant::now();
        let mut r = run(now);
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        for _ in 0..3 {
            s.on_poll_error(false, &mut r, now);
        }
        r.revoked = true;
        let out = s.on_connack(true, &mut r);
        assert!(out.unrevoked && !r.revoked);
        match s.on_poll_error(false, &mut r, now) {
            PollFailure::Error {
                was_connected,
                attempt,
                delay,
            } => {
                assert!(was_connected);
                assert_eq!(attempt, 1);
                assert!(delay <= S);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Issue 12, finding 10: after the first failure the agent said nothing
    /// while it retried. The ConnAck now tells how many attempts failed, and
    /// the 2nd, 4th, 8th, ... failure in a row is announced.
    #[test]
    fn failed_attempts_are_counted_until_the_connack_and_announced_sparsely() {
        let now = Instant::now();
        let mut r = run(now);
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        for _ in 0..5 {
            s.on_poll_error(false, &mut r, now);
        }
        let outcome = s.on_connack(false, &mut r);
        assert_eq!(outcome.failed_attempts, 5);
        assert_eq!(
            s.on_connack(true, &mut r).failed_attempts,
            0,
            "reset by the ConnAck"
        );
        let announced: Vec<u32> = (1..=40).filter(|a| announce_retry(*a)).collect();
        assert_eq!(announced, [2, 4, 8, 16, 32]);
    }

    #[test]
    fn a_poll_error_backs_off_exponentially() {
        let now = Instant::now();
        let mut r = run(now);
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        for attempt in 1..=4u32 {
            let PollFailure::Error {
                was_connected,
                attempt: a,
                delay,
            } = s.on_poll_error(false, &mut r, now)
            else {
                panic!("not a revocation");
            };
            assert!(!was_connected);
            assert_eq!(a, attempt);
            let base = S * (1 << (attempt - 1));
            assert!(delay >= base / 2 && delay <= base, "{delay:?}");
            assert_eq!(s.conn, ConnState::Backoff(now + delay));
        }
        s.on_backoff_elapsed();
        assert_eq!(s.conn, ConnState::Connecting);
    }

    #[test]
    fn a_revocation_retries_slowly_and_says_so_once() {
        let now = Instant::now();
        let mut r = run(now);
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        let PollFailure::Revoked { already, delay } = s.on_poll_error(true, &mut r, now) else {
            panic!("a revocation");
        };
        assert!(!already && r.revoked);
        assert!(delay >= 30 * S && delay <= 60 * S, "{delay:?}");
        assert_eq!(s.conn, ConnState::Backoff(now + delay));
        assert!(matches!(
            s.on_poll_error(true, &mut r, now),
            PollFailure::Revoked { already: true, .. }
        ));
        // Another error ends the revocation.
        s.on_poll_error(false, &mut r, now);
        assert!(!r.revoked);
    }

    #[test]
    fn a_check_settles_after_quiet_time() {
        let now = Instant::now();
        let mut r = run(now);
        r.first = false;
        let p = Planner::new(None);
        let mut s = session(SessionKind::Check, &r, &p, now);
        // Not armed before an exchange, nor before connecting.
        assert_eq!(s.settle_at(), None);
        s.on_outbox_notified(now);
        s.on_exchange(now);
        assert_eq!(s.settle_at(), None);
        s.on_connack(false, &mut r);
        assert_eq!(s.settle_at(), Some(now + 2 * S));
        s.on_exchange(now + S);
        assert_eq!(s.settle_at(), Some(now + 3 * S));
        s.on_outbox_notified(now + 2 * S);
        assert_eq!(s.settle_at(), Some(now + 4 * S));
        // Something still pending: another settle time.
        assert_eq!(s.on_settle_elapsed(now + 4 * S, false), None);
        assert_eq!(s.settle_at(), Some(now + 6 * S));
        assert_eq!(
            s.on_settle_elapsed(now + 6 * S, true),
            Some(SessionEnd::CheckDone)
        );
    }

    #[test]
    fn an_online_session_does_not_settle() {
        let now = Instant::now();
        let mut r = run(now);
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        s.on_connack(true, &mut r);
        s.on_exchange(now);
        s.on_outbox_notified(now);
        assert!(!s.checking());
        assert_eq!(s.settle_at(), None);
    }

    #[test]
    fn the_next_wake_is_the_earliest_deadline() {
        let now = Instant::now();
        let r = run(now);
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        let due = now + 300 * S;
        assert_eq!(s.next_wake(due, None), due);
        assert_eq!(s.next_wake(due, Some(now + 50 * S)), now + 50 * S);
        s.sent.insert(7, now + 5 * S);
        s.sent.insert(8, now + S);
        assert_eq!(s.next_wake(due, Some(now + 50 * S)), now + 11 * S);
        assert_eq!(s.next_wake(now, Some(now + 50 * S)), now);
    }

    #[test]
    fn the_timer_forgets_what_was_sent_only_while_disconnected() {
        let now = Instant::now();
        let mut r = run(now);
        let p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        s.sent.insert(1, now);
        s.on_timer();
        assert!(s.sent.is_empty());
        s.on_connack(true, &mut r);
        s.sent.insert(2, now);
        s.on_timer();
        assert_eq!(s.sent.len(), 1);
    }

    #[test]
    fn in_band_checks_follow_the_schedule() {
        let now = Instant::now();
        let r = run(now);
        let p = Planner::new(Some(schedule(PERSISTENT)));
        let t = at("2026-03-02T10:00:00Z");
        let mut s = SessionState::new(SessionKind::Online, None, &r, &p, &settings(), now, t);
        let next = s.inband_at.unwrap();
        s.on_inband_check(&p, next);
        assert_eq!(s.inband_at, p.next_check_after(next));
        assert!(s.inband_at.unwrap() > next);
    }

    #[test]
    fn a_new_schedule_that_stays_online_moves_the_end() {
        let now = Instant::now();
        let r = run(now);
        let mut p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        p.set_schedule(Some(schedule(PERSISTENT)));
        let t = at("2026-03-02T10:00:00Z");
        assert_eq!(s.on_new_schedule(&mut p, now, t), ScheduleOutcome::Continue);
        assert_eq!(s.until, Some(at("2026-03-02T18:00:00Z")));
        assert_eq!(s.inband_at, p.next_check_after(t));
    }

    #[test]
    fn a_new_schedule_ends_an_online_session_after_draining_if_connected() {
        let now = Instant::now();
        let mut r = run(now);
        let mut p = Planner::new(None);
        let mut s = session(SessionKind::Online, &r, &p, now);
        p.set_schedule(Some(schedule(PER_CHECK)));
        let t = at("2026-03-02T10:00:00Z");
        // Not connected: it ends at once.
        assert_eq!(s.on_new_schedule(&mut p, now, t), ScheduleOutcome::End);
        s.on_connack(true, &mut r);
        let later = now + 10 * S;
        assert_eq!(s.on_new_schedule(&mut p, later, t), ScheduleOutcome::Drain);
        assert!(s.draining() && s.checking());
        assert_eq!(s.check_deadline(), later + 120 * S);
        assert_eq!(s.settle_at(), Some(later + 2 * S));
    }

    #[test]
    fn a_check_finishes_under_a_new_schedule() {
        let now = Instant::now();
        let r = run(now);
        let mut p = Planner::new(Some(schedule(PER_CHECK)));
        let mut s = session(SessionKind::Check, &r, &p, now);
        p.set_schedule(None);
        assert_eq!(
            s.on_new_schedule(&mut p, now, at("2026-03-02T10:00:00Z")),
            ScheduleOutcome::Continue
        );
        assert_eq!(s.until, None);
        assert!(!s.draining());
    }
}
