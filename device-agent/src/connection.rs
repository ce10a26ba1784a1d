//! The MQTT connection: one rumqttc `EventLoop` driven from one `select!`
//! loop together with the outbox sender, the timers and shutdown.
//!
//! - Persistent session (`clean_session = false`), client id = clientId,
//!   last will = retained `offline` on the presence topic. A `per-check`
//!   check sets no will and does not say `online`: the presence stays
//!   `offline`, and the retained `offline` it publishes when it ends is its
//!   check-in (the manager's availability counts any message as seen).
//! - TLS: the rustls client configuration is built once and reused for every
//!   reconnect, so TLS 1.3 session resumption works (unless
//!   `tls_resumption = false`).
//! - Reconnect with exponential backoff and jitter (rumqttc would retry at
//!   once): after a failed poll the loop is in [`ConnState::Backoff`] and does
//!   not poll until the timer arm fires; the backoff resets on ConnAck.
//! - On every ConnAck: subscribe to the desired-state filter and the ack
//!   topic, publish retained `online`, resend the whole outbox, and ask for a
//!   `sync` on first start or when the broker did not resume the session.
//!   A `per-check` check after a pause subscribes to the ack and the config
//!   only, and to the manifest only when the retained (signed) ack announces
//!   a newer version than the agent holds; to deployment topics only for
//!   documents that newer manifest names and the agent lacks.
//! - Outbox entries not acked by the manager within the ack timeout are
//!   resent on the live connection.
//! - Revoked: a CONNACK "not authorized" / "bad user name or password", or
//!   a TLS alert "certificate revoked" / "certificate unknown", means the
//!   fleet manager revoked this device. The status becomes
//!   [`ConnectionStatus::Revoked`], one error is logged, and the only
//!   retries are slow ones (about every `reconnect_max`) in case the
//!   operator takes it back; the reconciler applies nothing meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::{Message, SyncReason};
use margo_schemas::pki::{self, PkiError};
use margo_schemas::schedule::ValidSchedule;
use margo_schemas::topics;
use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing,
    Packet, QoS, Request, SubscribeFilter, TlsConfiguration, Transport,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

use crate::clock::Clock;
use crate::config::BrokerUrl;
use crate::identity::Identity;
use crate::outbox::{OutboxError, Uplink};
use crate::reconcile::state_report;
use crate::schedule_plan::{AwayReason, Phase, Planner, ScheduleRx};
use crate::snapshot::{ConnectionStatus, Snapshots};
use crate::stats::AgentStats;
use crate::store::Store;
use crate::sync::DesiredStateSync;

mod revocation;
mod state;

pub use revocation::is_revocation;

use state::{PollFailure, RunState, ScheduleOutcome, SessionEnd, SessionKind, SessionState};

/// Presence payload while connected.
pub const ONLINE: &[u8] = b"online";
/// Presence payload of the last will and of a clean shutdown.
pub const OFFLINE: &[u8] = b"offline";
/// Requests the MQTT client buffers before `try_publish` reports full.
const REQUEST_CAPACITY: usize = 64;
/// How long a clean disconnect may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// Why the connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionSetupError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] PkiError),
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Polling the event loop until ConnAck.
    Connecting,
    /// ConnAck received; sending and receiving.
    Connected,
    /// A connection attempt failed or the connection dropped; waiting until the instant.
    Backoff(Instant),
}

/// Settings of the MQTT transport.
#[derive(Debug, Clone)]
pub struct MqttTransportSettings {
    pub broker: BrokerUrl,
    pub keep_alive: Duration,
    pub ack_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub state_interval: Duration,
    pub max_message_bytes: usize,
    /// Random extra delay (at most) before a scheduled connect.
    pub wake_spread: Duration,
    /// `per-check`: longest time connected for one check.
    pub check_timeout: Duration,
    /// `per-check`: quiet time after which a check counts as settled.
    pub check_settle: Duration,
    /// Resume TLS 1.3 sessions across reconnects (config `tls_resumption`).
    pub tls_resumption: bool,
    /// Longest connection attempt (config `connect_timeout`).
    pub connect_timeout: Duration,
}

/// How a stretch away ended.
#[derive(Debug)]
enum AwayEnd {
    Shutdown,
    Woke,
    ScheduleChanged(Option<ValidSchedule>),
}

/// Completes at the wall-clock instant, or never.
async fn wall_sleep(clock: &Arc<dyn Clock>, until: Option<u64>) {
    match until {
        Some(at) => clock.sleep_until_unix_ms(at).await,
        None => std::future::pending().await,
    }
}

/// Completes at the instant, or never.
async fn sleep_opt(clock: &Arc<dyn Clock>, at: Option<Instant>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The connection task.
pub struct MqttTransport {
    client_id: ClientId,
    settings: MqttTransportSettings,
    options: MqttOptions,
    downlink: DesiredStateSync,
    uplink: Uplink,
    store: Store,
    clock: Arc<dyn Clock>,
    stats: Arc<AgentStats>,
    snapshots: Snapshots,
    schedule: ScheduleRx,
    /// False once the schedule's sender is gone (no more changes).
    schedule_live: bool,
    /// This session sets the last will and says `online` (not in a
    /// `per-check` check).
    presence: bool,
    /// In a `per-check` check after a pause: what this session subscribed
    /// to beyond the ack and the config (None: the session subscribes to
    /// `R/desired/#`).
    narrow: Option<Narrow>,
}

/// The subscriptions of a narrow (`per-check`) session.
#[derive(Debug, Default)]
struct Narrow {
    /// The manifest topic (subscribed once an ack announced a newer version).
    manifest: bool,
    /// Deployment topics of documents a newer manifest needs.
    deployments: HashSet<DeploymentId>,
}

/// Everything [`MqttTransport::new`] needs besides settings.
pub struct MqttTransportDeps {
    pub identity: Identity,
    pub downlink: DesiredStateSync,
    pub uplink: Uplink,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<AgentStats>,
    pub snapshots: Snapshots,
    /// The schedule in force (None: always connected); a new value re-plans.
    pub schedule: ScheduleRx,
}

impl MqttTransport {
    /// Builds the MQTT options (and the TLS configuration, once).
    pub fn new(
        settings: MqttTransportSettings,
        deps: MqttTransportDeps,
    ) -> Result<Self, ConnectionSetupError> {
        let client_id = deps.identity.client_id.clone();
        let mut options = MqttOptions::new(
            client_id.as_str(),
            settings.broker.host.clone(),
            settings.broker.port,
        );
        options
            .set_clean_session(false)
            .set_keep_alive(settings.keep_alive)
            .set_max_packet_size(
                settings.max_message_bytes + 4096,
                settings.max_message_bytes + 4096,
            );
        if settings.broker.tls {
            let pem = &deps.identity.pem;
            let mut tls = pki::client_tls_config(&pem.ca_pem, Some((&pem.cert_pem, &pem.key_pem)))?;
            if !settings.tls_resumption {
                tls.resumption = rustls::client::Resumption::disabled();
            }
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        }
        Ok(Self {
            client_id,
            settings,
            options,
            downlink: deps.downlink,
            uplink: deps.uplink,
            store: deps.store,
            clock: deps.clock,
            stats: deps.stats,
            snapshots: deps.snapshots,
            schedule: deps.schedule,
            schedule_live: true,
            presence: true,
            narrow: None,
        })
    }

    /// Runs until `shutdown`, following the schedule: connected while it
    /// allows (or for each check), away otherwise. At shutdown it says
    /// `offline` and disconnects cleanly (if connected).
    #[instrument(skip_all, fields(client_id = %self.client_id))]
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut planner = Planner::new(self.current_schedule());
        let mut run = RunState::new(self.clock.now(), self.settings.state_interval);
        self.set_status(ConnectionStatus::Connecting);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = self.clock.unix_ms();
            let (kind, until) = match planner.phase(now) {
                Phase::Online { until } => (SessionKind::Online, until),
                Phase::Check { until } => (SessionKind::Check, until),
                Phase::Away { until, why } => {
                    match self.away(until, why, &shutdown, &mut run).await {
                        AwayEnd::Shutdown => break,
                        AwayEnd::ScheduleChanged(schedule) => planner.set_schedule(schedule),
                        AwayEnd::Woke => {
                            let delay = planner.wake_delay(self.settings.wake_spread);
                            if !delay.is_zero() {
                                debug!(?delay, "spreading the scheduled connect");
                                tokio::select! {
                                    () = shutdown.cancelled() => break,
                                    () = self.clock.sleep(delay) => {}
                                }
                            }
                        }
                    }
                    continue;
                }
            };
            let end = self
                .session(kind, until, &mut planner, &shutdown, &mut run)
                .await;
            run.first = false;
            if kind == SessionKind::Check {
                planner.check_done(now, self.clock.unix_ms());
            }
            if end == SessionEnd::Shutdown {
                break;
            }
        }
        self.set_status(ConnectionStatus::Stopped);
        info!("connection stopped");
    }

    /// Not communicating until `until` (or a new schedule): no connection
    /// attempt, nothing sent, nothing above `debug` logged about it. State
    /// reports still go into the outbox and wait there.
    async fn away(
        &mut self,
        until: Option<u64>,
        why: AwayReason,
        shutdown: &CancellationToken,
        run: &mut RunState,
    ) -> AwayEnd {
        self.set_status(match why {
            AwayReason::Downtime => ConnectionStatus::Downtime,
            AwayReason::OutsidePollingPeriod | AwayReason::BetweenChecks => {
                ConnectionStatus::Scheduled
            }
        });
        self.snapshots.update(|s| s.next_contact_ms = until);
        debug!(?why, until_ms = ?until, "not communicating until the schedule allows");
        let result = loop {
            tokio::select! {
                () = shutdown.cancelled() => break AwayEnd::Shutdown,
                () = wall_sleep(&self.clock, until) => break AwayEnd::Woke,
                changed = self.schedule.changed(), if self.schedule_live => {
                    if changed.is_ok() {
                        break AwayEnd::ScheduleChanged(self.current_schedule());
                    }
                    // The sender is gone: the schedule in force stays.
                    self.schedule_live = false;
                }
                () = self.clock.sleep_until(run.state_due) => {
                    self.enqueue_state_report(run);
                }
            }
        };
        self.snapshots.update(|s| s.next_contact_ms = None);
        result
    }

    /// One stretch of communication: connect (with backoff), exchange, and
    /// end at `until`, when a `per-check` check has settled or timed out, or
    /// at shutdown. Without a schedule the one session of the process
    /// resumes the persistent session; under a schedule, and after any
    /// pause, sessions start clean, because the retained topics hold exactly
    /// the current desired state and a device away for days should fetch
    /// that once, not every intermediate version a persistent session would
    /// have queued (decision 0006). The first session asks for a sync.
    async fn session(
        &mut self,
        kind: SessionKind,
        until: Option<u64>,
        planner: &mut Planner,
        shutdown: &CancellationToken,
        run: &mut RunState,
    ) -> SessionEnd {
        let mut st = SessionState::new(
            kind,
            until,
            run,
            planner,
            &self.settings,
            self.clock.now(),
            self.clock.unix_ms(),
        );
        let mut options = self.options.clone();
        options.set_clean_session(st.clean());
        // A check is a short visit: no `online`, so no will either (a device
        // dying mid-check stays `offline`, which it already is).
        self.presence = st.presence();
        if self.presence {
            options.set_last_will(LastWill::new(
                topics::presence(&self.client_id),
                OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
        }
        // A check after a pause starts a clean session: subscribing to
        // `R/desired/#` would have the broker hand over every retained
        // deployment document again on every check, and the manifest
        // subscription the signed manifest. Subscribe to the ack instead,
        // to the manifest only when the ack announces a newer version, and
        // to a deployment topic only when that manifest names a document
        // the agent does not have (docs/benchmarks.md, bytes on the wire).
        self.narrow = st.narrow().then(Narrow::default);
        self.downlink.set_manifest_on_demand(self.narrow.is_some());
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(self.settings.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);
        let notify = self.uplink.notifier();
        if kind == SessionKind::Check {
            debug!(until_ms = ?until, "scheduled check");
        }
        if !run.revoked {
            self.set_status(ConnectionStatus::Connecting);
        }
        let end = loop {
            let wake = st.next_wake(run.state_due, self.downlink.next_deadline());
            let checking = st.checking();
            match st.conn {
                ConnState::Backoff(at) => {
                    tokio::select! {
                        () = shutdown.cancelled() => break SessionEnd::Shutdown,
                        () = wall_sleep(&self.clock, st.until) => break SessionEnd::Scheduled,
                        () = self.clock.sleep_until(st.check_deadline()), if checking => {
                            debug!("check ended at check_timeout without a connection");
                            break SessionEnd::CheckDone;
                        }
                        () = wall_sleep(&self.clock, st.inband_at), if st.inband_at.is_some() => {
                            self.inband_check(planner, &mut st, run);
                        }
                        () = self.clock.sleep_until(at) => {
                            st.on_backoff_elapsed();
                            if !run.revoked {
                                self.set_status(ConnectionStatus::Connecting);
                            }
                        }
                        () = self.clock.sleep_until(wake) => {
                            self.on_timer(&client, &mut st, run);
                        }
                    }
                }
                ConnState::Connecting | ConnState::Connected => {
                    let connected = st.connected();
                    let settle_at = st.settle_at();
                    tokio::select! {
                        () = shutdown.cancelled() => break SessionEnd::Shutdown,
                        () = wall_sleep(&self.clock, st.until) => break SessionEnd::Scheduled,
                        () = self.clock.sleep_until(st.check_deadline()), if checking => {
                            let pending = self.uplink.lock().len();
                            debug!(pending, "check ended at check_timeout before it settled");
                            break SessionEnd::CheckDone;
                        }
                        () = sleep_opt(&self.clock, settle_at), if settle_at.is_some() => {
                            let idle = self.downlink.next_deadline().is_none() && self.uplink.lock().is_empty();
                            if let Some(end) = st.on_settle_elapsed(self.clock.now(), idle) {
                                break end;
                            }
                        }
                        () = wall_sleep(&self.clock, st.inband_at), if st.inband_at.is_some() && !st.draining() => {
                            self.inband_check(planner, &mut st, run);
                        }
                        changed = self.schedule.changed(), if self.schedule_live => {
                            if changed.is_ok() {
                                planner.set_schedule(self.current_schedule());
                                match st.on_new_schedule(planner, self.clock.now(), self.clock.unix_ms()) {
                                    ScheduleOutcome::Continue => {}
                                    ScheduleOutcome::Drain => debug!("the new schedule ends this session once the outbox is delivered"),
                                    ScheduleOutcome::End => break SessionEnd::Scheduled,
                                }
                            } else {
                                // The sender is gone: the schedule in force stays.
                                self.schedule_live = false;
                            }
                        }
                        event = eventloop.poll() => match event {
                            Ok(event) => self.on_event(&client, &mut eventloop, event, &mut st, run),
                            Err(error) => {
                                let revocation = is_revocation(&error);
                                let failure = st.on_poll_error(revocation, run, self.clock.now());
                                self.on_poll_error(&error, failure);
                            }
                        },
                        () = notify.notified(), if connected => {
                            self.pump(&client, &mut st.sent);
                            st.on_outbox_notified(self.clock.now());
                        }
                        () = self.clock.sleep_until(wake) => {
                            self.on_timer(&client, &mut st, run);
                        }
                    }
                }
            }
        };
        if st.connected() {
            self.disconnect(&client, &mut eventloop, end != SessionEnd::Shutdown)
                .await;
        }
        end
    }

    /// The schedule in force, marking it seen.
    fn current_schedule(&mut self) -> Option<ValidSchedule> {
        self.schedule
            .borrow_and_update()
            .as_ref()
            .map(|a| a.schedule.clone())
    }

    fn set_status(&self, status: ConnectionStatus) {
        self.snapshots.update(|s| {
            s.connection = status;
            s.connected = status == ConnectionStatus::Connected;
        });
    }

    /// In a narrow session: subscribes to the manifest once an ack announced
    /// a newer one (and stops deferring: if the manifest still does not
    /// come, the next ack asks for a sync as in other sessions).
    fn subscribe_manifest_if_behind(&mut self, client: &AsyncClient) {
        let Some(narrow) = &mut self.narrow else {
            return;
        };
        if narrow.manifest || !self.downlink.is_behind() {
            return;
        }
        narrow.manifest = true;
        self.downlink.set_manifest_on_demand(false);
        debug!("the manager announces a newer manifest; subscribing to it");
        if let Err(error) =
            client.try_subscribe(topics::desired_manifest(&self.client_id), QoS::AtLeastOnce)
        {
            warn!(%error, "could not queue the subscription");
        }
    }

    /// In a narrow session: subscribes to the deployment topics of the
    /// documents the pending manifest needs and the agent lacks (the broker
    /// then delivers their retained copies).
    fn subscribe_missing(&mut self, client: &AsyncClient) {
        let Some(Narrow {
            deployments: subscribed,
            ..
        }) = &mut self.narrow
        else {
            return;
        };
        if !self.downlink.is_waiting() {
            return;
        }
        let missing = match self.downlink.missing_deployments() {
            Ok(missing) => missing,
            Err(error) => {
                warn!(%error, "could not read which deployment documents are missing");
                return;
            }
        };
        let filters: Vec<SubscribeFilter> = missing
            .into_iter()
            .filter(|id| subscribed.insert(id.clone()))
            .map(|id| {
                SubscribeFilter::new(
                    topics::desired_deployment(&self.client_id, &id),
                    QoS::AtLeastOnce,
                )
            })
            .collect();
        if filters.is_empty() {
            return;
        }
        debug!(
            count = filters.len(),
            "subscribing to missing deployment documents"
        );
        if let Err(error) = client.try_subscribe_many(filters) {
            warn!(%error, "could not queue the subscription");
        }
    }

    /// Handles one event of the MQTT event loop.
    fn on_event(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        event: Event,
        st: &mut SessionState,
        run: &mut RunState,
    ) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                // rumqttc replays its own unacked publishes on a resumed session;
                // the outbox resends everything anyway, so drop rumqttc's copies.
                eventloop
                    .pending
                    .retain(|r| !matches!(r, Request::Publish(_)));
                let session_present = ack.session_present;
                let outcome = st.on_connack(session_present, run);
                if outcome.unrevoked {
                    info!("the gateway accepts this device again (no longer revoked)");
                } else if outcome.failed_attempts > 0 {
                    info!(
                        failed_attempts = outcome.failed_attempts,
                        "connected again after failed attempts"
                    );
                }
                self.on_connack(client, session_present, outcome.ask_sync, st);
            }
            Event::Incoming(Packet::Publish(publish)) => {
                // Errors are counted and logged inside.
                let _ = self
                    .downlink
                    .handle_publish(&publish.topic, &publish.payload);
                // Also after a manifest that is ignored because it is the
                // pending one already (a check that ended waiting for content).
                self.subscribe_manifest_if_behind(client);
                self.subscribe_missing(client);
                st.on_exchange(self.clock.now());
            }
            Event::Incoming(Packet::PubAck(_)) if st.connected() => {
                self.pump(client, &mut st.sent);
                st.on_exchange(self.clock.now());
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                debug!(codes = ?ack.return_codes, "subscribed");
                st.on_exchange(self.clock.now());
            }
            _ => {}
        }
    }

    fn on_connack(
        &mut self,
        client: &AsyncClient,
        session_present: bool,
        ask_sync: Option<SyncReason>,
        st: &mut SessionState,
    ) {
        AgentStats::bump(&self.stats.connects);
        if st.quiet() {
            debug!(session_present, "connected");
        } else {
            info!(session_present, "connected");
        }
        self.set_status(ConnectionStatus::Connected);
        let mut filters = Vec::with_capacity(3);
        match &mut self.narrow {
            Some(narrow) => {
                // A clean session lost its subscriptions; the manifest
                // follows once the ack says it is newer.
                *narrow = Narrow::default();
                self.downlink.set_manifest_on_demand(true);
            }
            None => filters.push(SubscribeFilter::new(
                topics::desired_filter(&self.client_id),
                QoS::AtLeastOnce,
            )),
        }
        filters.push(SubscribeFilter::new(
            topics::config(&self.client_id),
            QoS::AtLeastOnce,
        ));
        filters.push(SubscribeFilter::new(
            topics::ack(&self.client_id),
            QoS::AtLeastOnce,
        ));
        if let Err(error) = client.try_subscribe_many(filters) {
            warn!(%error, "could not queue the subscription");
        }
        // A manifest still waiting for documents from an earlier session.
        self.subscribe_missing(client);
        if self.presence {
            if let Err(error) = client.try_publish(
                topics::presence(&self.client_id),
                QoS::AtLeastOnce,
                true,
                ONLINE,
            ) {
                warn!(%error, "could not queue the presence message");
            }
        }
        if let Some(reason) = ask_sync {
            // Logged inside; the outbox is the only thing that can fail here.
            let _ = self.downlink.request_sync(reason);
        }
        self.pump(client, &mut st.sent);
    }

    fn on_poll_error(&self, error: &ConnectionError, failure: PollFailure) {
        AgentStats::bump(&self.stats.connection_errors);
        match failure {
            PollFailure::Revoked { already, delay } => {
                AgentStats::bump(&self.stats.revoked_refusals);
                self.set_status(ConnectionStatus::Revoked);
                if already {
                    debug!(%error, ?delay, "still revoked");
                } else {
                    error!(
                        %error,
                        ?delay,
                        "the fleet manager revoked this device's certificate; re-onboard it \
                         (retrying only slowly in case the revocation is undone)"
                    );
                }
            }
            PollFailure::Error {
                was_connected,
                attempt,
                delay,
            } => {
                self.set_status(ConnectionStatus::Backoff);
                if was_connected {
                    warn!(%error, ?delay, "connection lost; reconnecting");
                } else if attempt <= 1 {
                    warn!(%error, ?delay, "could not connect; retrying with backoff");
                } else if state::announce_retry(attempt) {
                    info!(%error, attempt, ?delay, "still cannot connect; retrying with backoff");
                } else {
                    debug!(%error, attempt, ?delay, "still cannot connect");
                }
            }
        }
    }

    fn on_timer(&mut self, client: &AsyncClient, st: &mut SessionState, run: &mut RunState) {
        let _ = self.downlink.on_timer();
        self.enqueue_state_report(run);
        if st.connected() {
            self.pump(client, &mut st.sent);
        }
        st.on_timer();
    }

    /// An in-band check of a `persistent` session: a state report now (its
    /// ack tells whether the manager has a newer version); returns the
    /// next check.
    fn inband_check(&self, planner: &Planner, st: &mut SessionState, run: &mut RunState) {
        debug!("in-band check");
        run.state_due = self.clock.now();
        self.enqueue_state_report(run);
        st.on_inband_check(planner, self.clock.unix_ms());
    }

    /// Puts a `state` report in the outbox when `state_due` has passed.
    fn enqueue_state_report(&self, run: &mut RunState) {
        if !run.take_state_report(self.clock.now(), self.settings.state_interval) {
            return;
        }
        match state_report(&self.store, crate::schedule_plan::reported(&self.schedule)) {
            Ok(report) => {
                if let Err(error) = self.uplink.post(Message::State(report)) {
                    warn!(%error, "could not enqueue the state report");
                }
            }
            Err(error) => warn!(%error, "could not read state for the report"),
        }
    }

    /// Publishes every pending entry not sent on this connection, or sent
    /// longer than the ack timeout ago, until the client's queue is full.
    fn pump(&mut self, client: &AsyncClient, sent: &mut HashMap<u64, Instant>) {
        // Messages held while the store refused writes go first, once it takes them.
        self.uplink.store_held();
        let now = self.clock.now();
        let pending = self.uplink.lock().pending();
        sent.retain(|seq, _| pending.binary_search(seq).is_ok());
        for seq in pending {
            let resend = match sent.get(&seq) {
                Some(at) if now < *at + self.settings.ack_timeout => continue,
                Some(_) => true,
                None => false,
            };
            let item = self.uplink.lock().payload_for_send(seq);
            let (topic, payload) = match item {
                Ok(Some(item)) => item,
                Ok(None) => continue,
                Err(OutboxError::Store(error)) if error.is_unavailable() => {
                    // The store logged it once; sent once it can be read again.
                    debug!(seq, %error, "could not read an outbox entry");
                    continue;
                }
                Err(error) => {
                    warn!(seq, %error, "could not read an outbox entry");
                    continue;
                }
            };
            match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                Ok(()) => {
                    sent.insert(seq, now);
                    AgentStats::bump(&self.stats.published);
                    if resend {
                        AgentStats::bump(&self.stats.resent);
                        debug!(seq, "resent (not acked in time)");
                    }
                }
                Err(ClientError::TryRequest(_) | ClientError::Request(_)) => break,
            }
        }
    }

    /// Says `offline` (a check's check-in) and disconnects; `quiet` (a
    /// scheduled disconnect) logs at debug only.
    async fn disconnect(&self, client: &AsyncClient, eventloop: &mut EventLoop, quiet: bool) {
        let _ = client.try_publish(
            topics::presence(&self.client_id),
            QoS::AtLeastOnce,
            true,
            OFFLINE,
        );
        let _ = client.try_disconnect();
        let drained = tokio::time::timeout(DISCONNECT_GRACE, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            debug!("broker did not take the disconnect in time");
        } else if quiet {
            debug!("disconnected cleanly (schedule)");
        } else {
            info!("disconnected cleanly");
        }
    }
}
