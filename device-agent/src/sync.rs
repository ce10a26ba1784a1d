//! Desired-state sync: the downlink message handler.
//!
//! [`DesiredStateSync::handle_publish`] takes one MQTT publish (topic + payload) and
//! needs no broker, so tests drive it directly. It verifies every message
//! with the manager's signing key through [`Envelope::open`] (bounded size,
//! this client, kind fitting the topic), then:
//!
//! - `deployment`: checks the digest over the exact bytes and that the
//!   YAML's `metadata.annotations.id` is the topic's id, and caches it by digest;
//! - `manifest`: a lower version than the accepted one, or an equal version
//!   with different content, is a security event; the same manifest again is
//!   ignored quietly; a newer one waits until every referenced digest is
//!   cached (asking for a `sync` if that takes longer than the content
//!   timeout), is stored as accepted, and goes to the reconciler;
//! - `ack`: trims the outbox, and asks for a `sync` if the manager announces
//!   a manifest version this agent does not have (in manifest-on-demand
//!   mode it only records that; the connection then subscribes to the
//!   manifest, see [`DesiredStateSync::set_manifest_on_demand`]).
//! - `config` (on `R/config`): a newer version with a valid schedule (or
//!   none: back to the local one) is stored, put in force and announced in a
//!   `state` report; an older version is a security event (replay), an
//!   invalid schedule is refused and the one in force stays.
//!
//! An empty retained payload on a deployment topic means the manager cleared
//! it; it is ignored (deletion comes only from the manifest).

use std::sync::Arc;
use std::time::Duration;

use margo_schemas::cose::VerifyingKey;
use margo_schemas::deployment::{ApplicationDeployment, VerifiedParseError};
use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::manifest::{ManifestError, StateManifest};
use margo_schemas::messages::{
    Ack, DeploymentBody, DeviceConfig, Envelope, Message, MessageError, ScheduleSource, SyncReason,
    SyncRequest,
};
use margo_schemas::schedule::ValidSchedule;
use margo_schemas::topics::{self, DeviceTopic};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::outbox::{OutboxError, Uplink};
use crate::schedule_plan::{ActiveSchedule, ScheduleRx};
use crate::snapshot::Snapshots;
use crate::stats::AgentStats;
use crate::store::{manifest_digest, AcceptedManifest, Store, StoreError};

/// Why a downlink message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum DownlinkError {
    #[error("topic {0:?} is not one this agent handles")]
    UnexpectedTopic(String),
    #[error("no manager signing key to verify downlink messages with (a plain Margo identity)")]
    NoManagerKey,
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("invalid manifest: {0}")]
    InvalidManifest(ManifestError),
    #[error("manifest version {offered} is lower than the accepted {accepted} (rollback)")]
    Rollback { offered: u64, accepted: u64 },
    #[error("manifest version {version} was already received with different content (replay or forgery)")]
    Conflict { version: u64 },
    #[error("deployment {topic_id}: {source}")]
    Deployment {
        topic_id: DeploymentId,
        source: VerifiedParseError,
    },
    #[error("deployment on topic {topic_id} carries a document whose id is {doc_id}")]
    IdMismatch {
        topic_id: DeploymentId,
        doc_id: DeploymentId,
    },
    #[error("manifest {version} lists {listed} with digest {digest}, but that document's id is {doc_id}")]
    ContentMismatch {
        version: u64,
        listed: DeploymentId,
        digest: Digest,
        doc_id: DeploymentId,
    },
    #[error("config version {offered} is lower than the {held} in force (replay)")]
    ConfigRollback { offered: u64, held: u64 },
    #[error(
        "config version {version} was already received with different content (replay or forgery)"
    )]
    ConfigConflict { version: u64 },
    #[error("config version {version}: {source}")]
    InvalidSchedule {
        version: u64,
        source: margo_schemas::schedule::ScheduleError,
    },
    #[error("manifest {version} lists {listed} with digest {digest}, which is not in the cache")]
    MissingContent {
        version: u64,
        listed: DeploymentId,
        digest: Digest,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl DownlinkError {
    /// Whether this is a security event (validly shaped but not acceptable
    /// content: rollback, conflicting replay, tampering, forged signatures, ids that disagree).
    pub fn is_security_event(&self) -> bool {
        matches!(
            self,
            Self::Rollback { .. }
                | Self::Conflict { .. }
                | Self::ConfigRollback { .. }
                | Self::ConfigConflict { .. }
                | Self::IdMismatch { .. }
                | Self::ContentMismatch { .. }
                | Self::Deployment {
                    source: VerifiedParseError::Digest(_),
                    ..
                }
                | Self::Message(MessageError::Signature(_) | MessageError::WrongClient { .. })
        )
    }

    /// Whether the message was bad (as opposed to a local store failure).
    pub fn is_rejection(&self) -> bool {
        !matches!(self, Self::Store(_) | Self::Outbox(_))
    }

    /// Whether the store refused a write (full, read-only): the manager's
    /// message is not acknowledged and comes again.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            Self::Store(e) | Self::Outbox(OutboxError::Store(e)) => e.is_unavailable(),
            _ => false,
        }
    }
}

/// What a handled publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Empty retained payload (a cleared topic).
    Cleared,
    /// A verified document was cached.
    Cached(Digest),
    /// The manifest is newer; waiting for `missing` documents.
    Waiting { version: u64, missing: usize },
    /// A manifest was accepted and handed to the reconciler.
    Accepted(u64),
    /// The same manifest again (retained redelivery), or one older than a pending one.
    Ignored(u64),
    /// An ack: `removed` outbox entries; `sync` if a resync was requested.
    Acked { removed: usize, sync: bool },
    /// A remote config of this version is now in force.
    Configured(u64),
    /// A document whose digest is right but which the agent cannot use: it
    /// is remembered by digest and its deployment fails alone.
    Refused(Digest),
}

/// The verdict on one document whose bytes arrived for a listed deployment.
#[derive(Debug)]
pub enum Verdict {
    /// Verified and usable.
    Usable(Box<ApplicationDeployment>),
    /// The bytes are the listed ones, but the agent cannot use them (the
    /// reason goes into the deployment's `failed` status).
    Unusable(String),
}

/// The shared judgement of both transports on one document listed as `id`
/// with `digest`: a digest mismatch or an id that is not the listed one is
/// an error (the update is abandoned, nothing is remembered, it may be
/// fetched again); a document with the right bytes that does not parse or
/// names an unknown `apiVersion`/`kind` is [`Verdict::Unusable`]: the
/// caller remembers it ([`Store::refused_put`]) so it is not fetched again,
/// and the deployment fails alone while the rest of the manifest applies.
pub fn judge_document(
    id: &DeploymentId,
    digest: &Digest,
    bytes: Vec<u8>,
) -> Result<Verdict, DownlinkError> {
    match ApplicationDeployment::parse_verified(bytes, digest) {
        Ok(doc) if doc.id != *id => Err(DownlinkError::IdMismatch {
            topic_id: id.clone(),
            doc_id: doc.id,
        }),
        Ok(doc) => Ok(Verdict::Usable(Box::new(doc))),
        Err(VerifiedParseError::Deployment(e)) => Ok(Verdict::Unusable(e.to_string())),
        Err(source) => Err(DownlinkError::Deployment {
            topic_id: id.clone(),
            source,
        }),
    }
}

/// Puts remote schedules in force, falling back to the local one.
#[derive(Debug, Clone)]
pub struct ScheduleControl {
    tx: Arc<watch::Sender<Option<ActiveSchedule>>>,
    local: Option<ValidSchedule>,
}

impl ScheduleControl {
    /// Starts with the stored remote config if there is a valid one, else
    /// the local schedule.
    pub fn new(local: Option<ValidSchedule>, remote: Option<&DeviceConfig>) -> (Self, ScheduleRx) {
        let initial = match remote {
            Some(config) => match Self::resolve(&local, config) {
                Ok(active) => active,
                Err(error) => {
                    warn!(%error, "stored remote schedule no longer valid; using the local one");
                    local.clone().map(ActiveSchedule::local)
                }
            },
            None => local.clone().map(ActiveSchedule::local),
        };
        let (tx, rx) = watch::channel(initial);
        (
            Self {
                tx: Arc::new(tx),
                local,
            },
            rx,
        )
    }

    /// A receiver of the schedule in force.
    pub fn subscribe(&self) -> ScheduleRx {
        self.tx.subscribe()
    }

    fn resolve(
        local: &Option<ValidSchedule>,
        config: &DeviceConfig,
    ) -> Result<Option<ActiveSchedule>, DownlinkError> {
        Ok(match &config.schedule {
            Some(schedule) => Some(ActiveSchedule {
                schedule: ValidSchedule::try_from(schedule).map_err(|source| {
                    DownlinkError::InvalidSchedule {
                        version: config.version,
                        source,
                    }
                })?,
                source: ScheduleSource::Remote,
                config_version: config.version,
            }),
            None => local.clone().map(ActiveSchedule::local),
        })
    }
}

/// A newer manifest waiting for its documents.
#[derive(Debug, Clone)]
struct Pending {
    manifest: StateManifest,
    digest: Digest,
    deadline: Instant,
}

/// Settings of the downlink handler.
#[derive(Debug, Clone)]
pub struct DesiredStateSyncSettings {
    pub max_message_bytes: usize,
    pub content_timeout: Duration,
}

/// The downlink message handler (see the module docs).
pub struct DesiredStateSync {
    client: ClientId,
    manager_key: Option<VerifyingKey>,
    settings: DesiredStateSyncSettings,
    store: Store,
    uplink: Uplink,
    clock: Arc<dyn Clock>,
    stats: Arc<AgentStats>,
    snapshots: Snapshots,
    sink: ManifestSink,
    accepted: Option<AcceptedManifest>,
    pending: Option<Pending>,
    last_sync: Option<Instant>,
    schedule: ScheduleControl,
    /// The highest manifest version a verified ack announced.
    announced: u64,
    /// An ack announcing a newer manifest does not ask for a sync.
    manifest_on_demand: bool,
}

impl std::fmt::Debug for DesiredStateSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesiredStateSync")
            .field("client", &self.client)
            .field(
                "accepted",
                &self.accepted.as_ref().map(AcceptedManifest::version),
            )
            .field(
                "pending",
                &self.pending.as_ref().map(|p| p.manifest.manifest_version),
            )
            .finish_non_exhaustive()
    }
}

/// Everything [`DesiredStateSync::new`] needs.
#[derive(Debug, Clone)]
pub struct DesiredStateSyncDeps {
    pub client: ClientId,
    /// None for a plain Margo identity (every downlink message is refused).
    pub manager_key: Option<VerifyingKey>,
    pub settings: DesiredStateSyncSettings,
    pub store: Store,
    pub uplink: Uplink,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<AgentStats>,
    pub snapshots: Snapshots,
    pub schedule: ScheduleControl,
}

/// How an offered manifest (valid, with content digest `digest`) relates
/// to the accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Newer than the accepted one (or nothing is accepted yet).
    Newer,
    /// The accepted manifest again (same version, same content).
    Same,
}

/// The version rule both transports apply: a lower version is a rollback,
/// an equal version with other content a conflict (both security events);
/// the same manifest again is [`Offer::Same`].
pub fn judge_offer(
    accepted: Option<&AcceptedManifest>,
    version: u64,
    digest: &Digest,
) -> Result<Offer, DownlinkError> {
    let Some(accepted) = accepted else {
        return Ok(Offer::Newer);
    };
    if version < accepted.version() {
        return Err(DownlinkError::Rollback {
            offered: version,
            accepted: accepted.version(),
        });
    }
    if version == accepted.version() {
        return if *digest == accepted.digest {
            Ok(Offer::Same)
        } else {
            Err(DownlinkError::Conflict { version })
        };
    }
    Ok(Offer::Newer)
}

/// The one way a verified manifest reaches the reconciler, shared by the
/// MQTT downlink and the HTTP transport: it checks that every listed
/// document is cached (verified) under the listed id, records the manifest
/// as accepted (committed), and sends it on the reconciler's `watch`.
#[derive(Debug, Clone)]
pub struct ManifestSink {
    client: ClientId,
    store: Store,
    stats: Arc<AgentStats>,
    snapshots: Snapshots,
    targets: Arc<watch::Sender<Option<Arc<AcceptedManifest>>>>,
}

impl ManifestSink {
    /// A sink feeding `targets`.
    pub fn new(
        client: ClientId,
        store: Store,
        stats: Arc<AgentStats>,
        snapshots: Snapshots,
        targets: watch::Sender<Option<Arc<AcceptedManifest>>>,
    ) -> Self {
        Self {
            client,
            store,
            stats,
            snapshots,
            targets: Arc::new(targets),
        }
    }

    /// Accepts `manifest` (content digest `digest`, already judged newer):
    /// every document must be in the cache with the listed id.
    pub fn accept(
        &self,
        manifest: &StateManifest,
        digest: Digest,
    ) -> Result<AcceptedManifest, DownlinkError> {
        let version = manifest.manifest_version;
        for r in &manifest.deployments {
            let Some(doc) = self.store.cache_get(&r.digest)? else {
                if self.store.refused_get(&r.digest)?.is_some() {
                    // Judged unusable: this deployment fails alone in reconcile.
                    continue;
                }
                return Err(DownlinkError::MissingContent {
                    version,
                    listed: r.deployment_id.clone(),
                    digest: r.digest,
                });
            };
            if doc.id != r.deployment_id {
                return Err(DownlinkError::ContentMismatch {
                    version,
                    listed: r.deployment_id.clone(),
                    digest: r.digest,
                    doc_id: doc.id,
                });
            }
        }
        let accepted = AcceptedManifest {
            manifest: manifest.clone(),
            digest,
        };
        self.store.set_accepted_manifest(&accepted)?;
        AgentStats::bump(&self.stats.manifests_accepted);
        info!(client_id = %self.client, manifest_version = version, "manifest accepted");
        self.snapshots
            .update(|s| s.accepted_manifest_version = version);
        self.targets.send_replace(Some(Arc::new(accepted.clone())));
        Ok(accepted)
    }
}

impl DesiredStateSync {
    /// A handler starting from the accepted manifest in the store; accepted
    /// manifests are sent on `targets`.
    pub fn new(
        deps: DesiredStateSyncDeps,
        targets: watch::Sender<Option<Arc<AcceptedManifest>>>,
    ) -> Result<Self, StoreError> {
        let sink = ManifestSink::new(
            deps.client.clone(),
            deps.store.clone(),
            Arc::clone(&deps.stats),
            deps.snapshots.clone(),
            targets,
        );
        Self::with_sink(deps, sink)
    }

    /// A handler accepting through `sink`.
    pub fn with_sink(deps: DesiredStateSyncDeps, sink: ManifestSink) -> Result<Self, StoreError> {
        let accepted = deps.store.accepted_manifest()?;
        Ok(Self {
            client: deps.client,
            manager_key: deps.manager_key,
            settings: deps.settings,
            store: deps.store,
            uplink: deps.uplink,
            clock: deps.clock,
            stats: deps.stats,
            snapshots: deps.snapshots,
            sink,
            accepted,
            pending: None,
            last_sync: None,
            schedule: deps.schedule,
            announced: 0,
            manifest_on_demand: false,
        })
    }

    /// The highest manifest version known: pending, else accepted, else 0.
    pub fn known_version(&self) -> u64 {
        self.pending
            .as_ref()
            .map(|p| p.manifest.manifest_version)
            .or(self.accepted.as_ref().map(AcceptedManifest::version))
            .unwrap_or(0)
    }

    /// Whether a verified ack announced a manifest version newer than any
    /// this agent holds (accepted or pending).
    pub fn is_behind(&self) -> bool {
        self.announced > self.known_version()
    }

    /// In manifest-on-demand mode (a `per-check` check subscribed to the
    /// ack but not to the manifest), an ack announcing a newer manifest is
    /// only recorded ([`Self::is_behind`]) instead of asking for a `sync`:
    /// the connection subscribes to the retained manifest, which the
    /// manager publishes before the ack that announces it. The version
    /// comes from a signed ack, and only decides whether to fetch; the
    /// manifest and its documents are verified as always.
    pub fn set_manifest_on_demand(&mut self, on: bool) {
        self.manifest_on_demand = on;
    }

    /// The accepted manifest version (0 = none).
    pub fn accepted_version(&self) -> u64 {
        self.accepted.as_ref().map_or(0, AcceptedManifest::version)
    }

    /// Handles one publish. Errors are already counted and logged; they are
    /// returned for tests and callers that want to know.
    pub fn handle_publish(
        &mut self,
        topic: &str,
        payload: &[u8],
    ) -> Result<Handled, DownlinkError> {
        AgentStats::bump(&self.stats.received);
        let result = self.dispatch(topic, payload);
        if let Err(error) = &result {
            if error.is_rejection() {
                AgentStats::bump(&self.stats.rejected);
            }
            if error.is_security_event() {
                AgentStats::bump(&self.stats.security_events);
                warn!(client_id = %self.client, topic, %error, "security event: message rejected");
            } else if error.is_rejection() {
                warn!(client_id = %self.client, topic, %error, "message rejected");
            } else if error.is_storage_failure() {
                // The store logs a refused write once; not every message.
                debug!(client_id = %self.client, topic, %error, "could not handle message");
            } else {
                warn!(client_id = %self.client, topic, %error, "could not handle message");
            }
        }
        // Refresh the counters in the snapshot.
        self.snapshots.update(|_| {});
        result
    }

    fn dispatch(&mut self, topic: &str, payload: &[u8]) -> Result<Handled, DownlinkError> {
        let leaf = match topics::parse_device_topic(topic) {
            Some((client, leaf)) if client == self.client => leaf,
            _ => {
                return Err(DownlinkError::UnexpectedTopic(
                    topic.chars().take(200).collect(),
                ))
            }
        };
        if !matches!(
            leaf,
            DeviceTopic::DesiredManifest
                | DeviceTopic::DesiredDeployment(_)
                | DeviceTopic::Ack
                | DeviceTopic::Config
        ) {
            return Err(DownlinkError::UnexpectedTopic(topic.to_string()));
        }
        if payload.is_empty() {
            debug!(client_id = %self.client, topic, "cleared retained topic");
            return Ok(Handled::Cleared);
        }
        let manager_key = self
            .manager_key
            .as_ref()
            .ok_or(DownlinkError::NoManagerKey)?;
        let envelope = Envelope::open(
            payload,
            self.settings.max_message_bytes,
            manager_key,
            &self.client,
            &leaf,
        )?;
        match (envelope.msg, leaf) {
            (Message::Manifest(m), _) => self.on_manifest(m),
            (Message::Deployment(d), DeviceTopic::DesiredDeployment(id)) => {
                self.on_deployment(id, d)
            }
            (Message::Ack(a), _) => self.on_ack(a),
            (Message::Config(c), _) => self.on_config(c),
            (other, _) => Err(DownlinkError::Message(MessageError::WrongTopic {
                kind: other.kind(),
            })),
        }
    }

    fn on_manifest(&mut self, manifest: StateManifest) -> Result<Handled, DownlinkError> {
        manifest
            .validate()
            .map_err(DownlinkError::InvalidManifest)?;
        let version = manifest.manifest_version;
        let digest = manifest_digest(&manifest)?;
        if judge_offer(self.accepted.as_ref(), version, &digest)? == Offer::Same {
            debug!(client_id = %self.client, manifest_version = version, "same manifest again");
            return Ok(Handled::Ignored(version));
        }
        if let Some(pending) = &self.pending {
            let pending_version = pending.manifest.manifest_version;
            if version == pending_version {
                return if digest == pending.digest {
                    self.try_accept()
                } else {
                    Err(DownlinkError::Conflict { version })
                };
            }
            if version < pending_version {
                debug!(client_id = %self.client, manifest_version = version, pending_version, "older than the pending manifest");
                return Ok(Handled::Ignored(version));
            }
        }
        info!(client_id = %self.client, manifest_version = version, deployments = manifest.deployments.len(), "newer manifest received");
        self.pending = Some(Pending {
            manifest,
            digest,
            deadline: self.clock.now() + self.settings.content_timeout,
        });
        self.try_accept()
    }

    fn on_config(&mut self, config: DeviceConfig) -> Result<Handled, DownlinkError> {
        let version = config.version;
        if let Some(held) = self.store.remote_config()? {
            if version < held.version {
                return Err(DownlinkError::ConfigRollback {
                    offered: version,
                    held: held.version,
                });
            }
            if version == held.version {
                return if held == config {
                    debug!(client_id = %self.client, version, "same config again");
                    Ok(Handled::Ignored(version))
                } else {
                    Err(DownlinkError::ConfigConflict { version })
                };
            }
        }
        let active = ScheduleControl::resolve(&self.schedule.local, &config)?;
        self.store.set_remote_config(&config)?;
        let report = active.as_ref().map(ActiveSchedule::report);
        match &active {
            Some(a) => info!(
                client_id = %self.client,
                version,
                source = ?a.source,
                connection = %a.schedule.connection(),
                time_zone = a.schedule.time_zone_name(),
                rate = ?a.schedule.rate(),
                "schedule from the manager in force"
            ),
            None => {
                info!(client_id = %self.client, version, "no schedule in force (the manager cleared it)")
            }
        }
        self.schedule.tx.send_replace(active);
        let state = crate::reconcile::state_report(&self.store, report)?;
        self.uplink.post(Message::State(state))?;
        Ok(Handled::Configured(version))
    }

    /// Whether a newer manifest waits for documents.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// Deployments of the pending manifest whose document is not cached yet.
    pub fn missing_deployments(&self) -> Result<Vec<DeploymentId>, DownlinkError> {
        let Some(pending) = &self.pending else {
            return Ok(Vec::new());
        };
        let mut missing = Vec::new();
        for r in &pending.manifest.deployments {
            if !self.store.judged(&r.digest)? {
                missing.push(r.deployment_id.clone());
            }
        }
        Ok(missing)
    }

    /// Accepts the pending manifest if every document is cached.
    fn try_accept(&mut self) -> Result<Handled, DownlinkError> {
        let Some(pending) = &self.pending else {
            return Ok(Handled::Ignored(self.accepted_version()));
        };
        let version = pending.manifest.manifest_version;
        let mut missing = 0;
        for r in &pending.manifest.deployments {
            if !self.store.judged(&r.digest)? {
                missing += 1;
            }
        }
        if missing > 0 {
            debug!(client_id = %self.client, manifest_version = version, missing, "waiting for deployment documents");
            return Ok(Handled::Waiting { version, missing });
        }
        match self.sink.accept(&pending.manifest, pending.digest) {
            Ok(accepted) => {
                self.pending = None;
                self.accepted = Some(accepted);
                Ok(Handled::Accepted(version))
            }
            Err(error @ DownlinkError::ContentMismatch { .. }) => {
                self.pending = None;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    fn on_deployment(
        &mut self,
        topic_id: DeploymentId,
        body: DeploymentBody,
    ) -> Result<Handled, DownlinkError> {
        let doc = match judge_document(&topic_id, &body.digest, body.yaml)? {
            Verdict::Usable(doc) => *doc,
            Verdict::Unusable(reason) => {
                let digest = body.digest;
                self.store
                    .refused_put(&digest, &topic_id, &reason, self.clock.unix_ms())?;
                AgentStats::bump(&self.stats.deployments_refused);
                warn!(client_id = %self.client, deployment_id = %topic_id, %digest, %reason, "deployment document cannot be used; this deployment fails alone");
                if self.pending.is_some() {
                    if let Handled::Accepted(v) = self.try_accept()? {
                        return Ok(Handled::Accepted(v));
                    }
                }
                return Ok(Handled::Refused(digest));
            }
        };
        let digest = doc.digest();
        self.store.cache_put(&doc, self.clock.unix_ms())?;
        AgentStats::bump(&self.stats.deployments_cached);
        debug!(client_id = %self.client, deployment_id = %topic_id, %digest, "deployment cached");
        if self.pending.is_some() {
            if let Handled::Accepted(v) = self.try_accept()? {
                return Ok(Handled::Accepted(v));
            }
        }
        Ok(Handled::Cached(digest))
    }

    fn on_ack(&mut self, ack: Ack) -> Result<Handled, DownlinkError> {
        let removed = self.uplink.ack(ack.acked_seq, ack.instance.as_ref())?;
        let mut sync = false;
        self.announced = self.announced.max(ack.manifest_version);
        if ack.manifest_version > self.known_version() && self.manifest_on_demand {
            debug!(
                client_id = %self.client,
                manifest_version = ack.manifest_version,
                known = self.known_version(),
                "manager announces a newer manifest; fetching it"
            );
        } else if ack.manifest_version > self.known_version() {
            info!(
                client_id = %self.client,
                manifest_version = ack.manifest_version,
                known = self.known_version(),
                "manager announces a newer manifest"
            );
            sync = self.request_sync(SyncReason::Behind)?;
        }
        Ok(Handled::Acked { removed, sync })
    }

    /// Enqueues a `sync`. Content-driven requests are rate-limited to one
    /// per content timeout; session and startup requests always go.
    pub fn request_sync(&mut self, reason: SyncReason) -> Result<bool, DownlinkError> {
        let now = self.clock.now();
        let limited = matches!(
            reason,
            SyncReason::MissingContent | SyncReason::Check | SyncReason::Behind
        );
        if limited {
            if let Some(last) = self.last_sync {
                if now < last + self.settings.content_timeout {
                    debug!(client_id = %self.client, ?reason, "sync already requested recently");
                    return Ok(false);
                }
            }
        }
        let adopted = self.store.adopted_version()?;
        let seq = self.uplink.post(Message::Sync(SyncRequest {
            reason,
            adopted_manifest_version: adopted,
        }))?;
        self.last_sync = Some(now);
        AgentStats::bump(&self.stats.syncs);
        info!(client_id = %self.client, ?seq, ?reason, "sync requested");
        Ok(true)
    }

    /// When [`DesiredStateSync::on_timer`] next needs to run.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// Asks for a sync if a pending manifest's documents are overdue.
    pub fn on_timer(&mut self) -> Result<(), DownlinkError> {
        let now = self.clock.now();
        let Some(pending) = &mut self.pending else {
            return Ok(());
        };
        if now < pending.deadline {
            return Ok(());
        }
        pending.deadline = now + self.settings.content_timeout;
        let version = pending.manifest.manifest_version;
        warn!(client_id = %self.client, manifest_version = version, "deployment documents did not arrive in time");
        self.request_sync(SyncReason::MissingContent)?;
        Ok(())
    }
}
