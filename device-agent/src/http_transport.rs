//! The HTTP transport (`transport = "http"`): the Margo HTTP API instead of
//! the MQTT session, feeding the same reconciler and draining the same
//! durable outbox (`docs/http-api.md`, "The agent over HTTP").
//!
//! **Checks.** With a `[schedule]`, checks fall at
//! `ValidSchedule::next_check_at_or_after` wall-clock instants (plus one at
//! start-up when communication is allowed then); without one, every
//! `http.poll_rate` minus up to a tenth of jitter. A check is a signed
//! conditional `GET C/deployments` with the `ETag` kept in the store as
//! `If-None-Match`. `304` ends it. A `200` manifest is validated, judged
//! against the accepted one with the MQTT rule (lower version: rollback;
//! equal version, other content: conflict; both security events), and its
//! documents are fetched: the bundle on the first sync or when more than
//! `http.bundle_over_percent` (default half) of the deployments changed,
//! otherwise each changed document alone.
//! Every document is verified against its digest before anything is cached;
//! then the manifest goes through the shared [`ManifestSink`] (the MQTT
//! path's acceptance) and only then is the new `ETag` stored. Any failure
//! keeps the previous state and the old `ETag`, so the next check retries.
//!
//! **Uplink.** The outbox is drained in seq order: `status` →
//! `POST C/deployments/{id}/status`, `capabilities` →
//! `PUT C/capabilities/{deviceId}`; `state` and `sync` have no HTTP form
//! and are settled unsent. An entry leaves the outbox only after a `2xx`,
//! or a `409` (stale: the manager holds something newer, counted as
//! delivered). Network errors, `408`, `429` and `5xx` keep it and retry
//! with backoff; `401` and `404` (the WFM does not authenticate or know
//! this client) keep it too, retried with a backoff growing to the poll
//! period, logged at error once per streak and shown in the snapshot
//! (`uplink_error`); any other `4xx` is a permanent refusal: logged once at
//! error with the problem detail, dropped, counted. The uplink is sent
//! after every check and, unless the schedule is `per-check`, as soon as
//! something is enqueued, but only while the schedule allows communication.
//!
//! **Downtime.** Outside the allowed times nothing is sent and nothing
//! above debug is logged about communication.
//!
//! **Revisions** (`http.api`, [`ApiPaths`]): `1.0.0-rc.3` (default) uses
//! client-less paths and mutual TLS, no signatures; `1.0.0-rc.2` and `1.0.0`
//! use `/api/v1/clients/{clientId}/...` and sign every request, GETs
//! included, with the device key by the scheme of `http.signature`
//! ([`crate::request_auth`]: RFC 9421 by default, or `Content-Digest` +
//! `X-Payload-Signature`). Paths are put under the manager URL's base path.
//! TLS 1.3 trusts only the CA of the identity and presents the client
//! certificate whenever asked.
//!
//! **Unusable documents.** A document with the listed digest that the agent
//! cannot use is remembered by digest and fails alone (see
//! [`crate::sync::judge_document`]); it is never fetched again while listed.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use margo_schemas::digest::Digest;
use margo_schemas::ids::DeploymentId;
use margo_schemas::manifest::{BundleRef, StateManifest, MEDIA_TYPE as MANIFEST_MEDIA_TYPE};
use margo_schemas::messages::Message;
use margo_schemas::pki::{self, PkiError};
use margo_schemas::schedule::{ConnectionMode, ValidSchedule};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

use crate::bundle::{self, BundleError, BundleLimits};
use crate::clock::{Backoff, Clock};
use crate::config::{AgentConfig, ApiMode, ConfigError, SignatureScheme};
use crate::http::{Answer, HttpError, HttpsClient, ManagerUrl, RequestBody};
use crate::identity::{Identity, WireClientId};
use crate::outbox::Uplink;
use crate::request_auth::{AuthError, RequestAuth};
use crate::snapshot::{ConnectionStatus, Snapshots};
use crate::stats::AgentStats;
use crate::store::{manifest_digest, AcceptedManifest, Store, StoreError};
use crate::sync::{judge_document, judge_offer, DownlinkError, ManifestSink, Offer, Verdict};

/// Media type of a deployment bundle.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.margo.bundle.v1+tar+gzip";
/// Longest `ETag` kept.
const MAX_ETAG: usize = 256;

/// Settings of the HTTP transport.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub manager: ManagerUrl,
    /// The API revision spoken (`http.api`): paths and authentication.
    pub api: ApiMode,
    /// Largest manifest, document or report body; largest bundle entry.
    pub max_body_bytes: usize,
    /// Largest bundle, compressed and unpacked.
    pub max_bundle_bytes: usize,
    pub request_timeout: Duration,
    /// Poll period without a schedule.
    pub poll_rate: Duration,
    /// First retry delay after a failure (doubling, jittered).
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    pub schedule: Option<ValidSchedule>,
    /// Resume TLS sessions across requests (`tls_resumption`).
    pub tls_resumption: bool,
    /// Fetch the bundle when more than this percentage of the deployments
    /// changed (`http.bundle_over_percent`).
    pub bundle_over_percent: u8,
    /// How requests are signed (`http.signature`).
    pub signature: SignatureScheme,
}

impl HttpSettings {
    /// The settings `config` gives (`[http]`, `[schedule]`, reconnect delays).
    pub fn from_config(config: &AgentConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            manager: config.http_manager_url()?,
            api: config.http.api,
            max_body_bytes: config.http.max_body_bytes,
            max_bundle_bytes: config.http.max_bundle_bytes,
            request_timeout: config.http.request_timeout,
            poll_rate: config.http.poll_rate,
            retry_min: config.reconnect_min,
            retry_max: config.reconnect_max,
            schedule: config.local_schedule()?,
            tls_resumption: config.tls_resumption,
            bundle_over_percent: config.http.bundle_over_percent,
            signature: config.http.signature,
        })
    }
}

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] PkiError),
    #[error(transparent)]
    Key(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a check did not get to a verdict. The previous state is kept in every case.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{what}: {source}")]
    Network {
        what: &'static str,
        source: HttpError,
    },
    #[error("{what}: the manager answered {status}: {detail}")]
    Answer {
        what: &'static str,
        status: StatusCode,
        detail: String,
    },
    #[error("{what}: malformed answer: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error(transparent)]
    Rejected(#[from] DownlinkError),
    #[error("bundle {digest}: {source}")]
    Bundle {
        digest: Digest,
        source: Box<BundleError>,
    },
    #[error("bundle: received bytes have digest {actual}, the manifest says {expected}")]
    BundleDigest { expected: Digest, actual: Digest },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CheckError {
    /// Content that disagrees with what was promised, or a version rule
    /// broken: counted and logged as a security event.
    pub fn is_security_event(&self) -> bool {
        match self {
            Self::Rejected(e) => e.is_security_event(),
            Self::Bundle { source, .. } => source.is_integrity_event(),
            Self::BundleDigest { .. } => true,
            _ => false,
        }
    }

    /// Whether the manager was not reached or could not answer (retry soon).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Network { .. } => true,
            Self::Answer { status, .. } => retryable(*status),
            _ => false,
        }
    }
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// `304`: the stored `ETag` is current.
    NotModified,
    /// `404`: the manager does not know this client (the specification
    /// lists only 200/304/406 for this GET; a client with nothing assigned
    /// gets an empty manifest). Logged at error, retried at the next check.
    UnknownClient,
    /// The accepted manifest again (its `ETag` is now stored).
    Unchanged(u64),
    /// A newer manifest was verified and handed to the reconciler.
    Accepted {
        version: u64,
        /// Downloaded as a bundle (else `documents` single downloads).
        bundle: bool,
        documents: usize,
    },
}

/// How an uplink drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Entries the manager took (`2xx`, `409`).
    pub delivered: usize,
    /// Entries refused for good (dropped).
    pub refused: usize,
    /// `state`/`sync` entries settled unsent.
    pub skipped: usize,
    /// Entries left because the manager could not be reached (retry later).
    pub left: usize,
    /// The manager answered 401 or 404: the entries are kept and retried
    /// with a backoff growing to the poll period.
    pub held: bool,
}

/// Everything [`HttpTransport::new`] needs besides settings.
pub struct HttpDeps {
    pub identity: Identity,
    pub sink: ManifestSink,
    pub uplink: Uplink,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<AgentStats>,
    pub snapshots: Snapshots,
}

/// The next check: a wall-clock instant (schedule) or a monotonic one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextCheck {
    Wall(u64),
    Mono(Instant),
    Never,
}

/// The transport task (see the module docs).
pub struct HttpTransport {
    /// The client id as the manager assigned it (paths, key ids).
    client_id: WireClientId,
    paths: ApiPaths,
    settings: HttpSettings,
    http: HttpsClient,
    bundles: HttpsClient,
    sink: ManifestSink,
    uplink: Uplink,
    store: Store,
    clock: Arc<dyn Clock>,
    stats: Arc<AgentStats>,
    snapshots: Snapshots,
    accepted: Option<AcceptedManifest>,
    /// The last check error logged above debug (repeats are logged at debug).
    last_error: Option<String>,
    /// While reports are refused with 401/404: why (logged once per streak).
    held: Option<String>,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("client_id", &self.client_id)
            .field("manager", &self.settings.manager)
            .finish_non_exhaustive()
    }
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

fn ms_to_timestamp(ms: u64) -> jiff::Timestamp {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX)
}

fn timestamp_to_ms(t: jiff::Timestamp) -> u64 {
    u64::try_from(t.as_millisecond()).unwrap_or(0)
}

/// The transport-neutral form of an HTTP manifest (no `url`s, no bundle):
/// what the MQTT path accepts, so both give the same accepted digest.
pub fn transport_neutral(mut manifest: StateManifest) -> StateManifest {
    manifest.bundle = None;
    for d in &mut manifest.deployments {
        d.url = None;
    }
    manifest
}

/// `body` decoded per its `Content-Encoding` (identity or gzip), at most `limit` bytes.
fn decoded_body(answer: &Answer, limit: usize, what: &'static str) -> Result<Vec<u8>, CheckError> {
    let coding = answer
        .headers
        .get(hyper::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match coding.as_deref() {
        None | Some("identity") => Ok(answer.body.to_vec()),
        Some("gzip" | "x-gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&answer.body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| CheckError::Malformed {
                    what,
                    reason: format!("gzip: {e}"),
                })?;
            if out.len() > limit {
                return Err(CheckError::Malformed {
                    what,
                    reason: format!("decodes to more than {limit} bytes"),
                });
            }
            Ok(out)
        }
        Some(other) => Err(CheckError::Malformed {
            what,
            reason: format!(
                "unsupported Content-Encoding {:?}",
                other.chars().take(40).collect::<String>()
            ),
        }),
    }
}

fn answer_error(what: &'static str, answer: &Answer) -> CheckError {
    CheckError::Answer {
        what,
        status: answer.status,
        detail: answer.problem_detail().unwrap_or_else(|| answer.excerpt()),
    }
}

/// The request paths of one API revision under the manager's base path
/// (`docs/http-api.md`, "The agent over HTTP"): `{clientId}` paths for
/// `1.0.0` and `1.0.0-rc.2`, client-less paths for `1.0.0-rc.3` (the client
/// is whoever presented its certificate in the TLS handshake).
#[derive(Debug, Clone)]
pub struct ApiPaths {
    url: ManagerUrl,
    api: ApiMode,
    /// The percent-encoded client id segment.
    client: String,
}

impl ApiPaths {
    pub fn new(url: ManagerUrl, api: ApiMode, client: &WireClientId) -> Self {
        Self {
            url,
            api,
            client: client.path_segment(),
        }
    }

    fn api_path(&self, rest: &str) -> String {
        match self.api {
            ApiMode::Rc3 => self.url.path(&format!("/api/v1{rest}")),
            ApiMode::Rc2 | ApiMode::V1 => self
                .url
                .path(&format!("/api/v1/clients/{}{rest}", self.client)),
        }
    }

    /// `GET` the state manifest.
    pub fn manifest(&self) -> String {
        self.api_path("/deployments")
    }

    /// `GET` one deployment document.
    pub fn deployment(&self, id: &DeploymentId, digest: &Digest) -> String {
        self.api_path(&format!(
            "/deployments/{}/{digest}",
            crate::manager_url::encode_segment(id.as_str())
        ))
    }

    /// `GET` the bundle.
    pub fn bundle(&self, digest: &Digest) -> String {
        self.api_path(&format!("/bundles/{digest}"))
    }

    /// `POST` a deployment status.
    pub fn status(&self, id: &DeploymentId) -> String {
        self.api_path(&format!(
            "/deployments/{}/status",
            crate::manager_url::encode_segment(id.as_str())
        ))
    }

    /// `PUT` capabilities (1.0.0 has no deviceId in the path).
    pub fn capabilities(&self, device_id: &str) -> String {
        match self.api {
            ApiMode::V1 => self.api_path("/capabilities"),
            ApiMode::Rc2 | ApiMode::Rc3 => self.api_path(&format!("/capabilities/{device_id}")),
        }
    }
}

impl HttpTransport {
    /// Builds the TLS configuration (once: later connections resume) and the signer.
    pub fn new(settings: HttpSettings, deps: HttpDeps) -> Result<Self, HttpSetupError> {
        let pem = &deps.identity.pem;
        let mut tls = pki::client_tls_config(&pem.ca_pem, Some((&pem.cert_pem, &pem.key_pem)))?;
        if !settings.tls_resumption {
            tls.resumption = rustls::client::Resumption::disabled();
        }
        let mut http = HttpsClient::new(settings.manager.clone(), tls)?
            .with_limits(settings.max_body_bytes, settings.request_timeout);
        // rc.3: mutual TLS authenticates the client; the clientId revisions
        // sign every request, with the assigned client id as `keyid`.
        if settings.api.client_id_paths() {
            let pkcs8 = pki::pkcs8_from_pem(&pem.key_pem, "client.key")?;
            let auth =
                RequestAuth::new(settings.signature, &pkcs8, deps.identity.wire_id.as_str())?;
            http = http.with_auth(Arc::new(auth));
        }
        let bundles = http
            .clone()
            .with_limits(settings.max_bundle_bytes, settings.request_timeout);
        let accepted = deps.store.accepted_manifest()?;
        let paths = ApiPaths::new(
            settings.manager.clone(),
            settings.api,
            &deps.identity.wire_id,
        );
        Ok(Self {
            client_id: deps.identity.wire_id.clone(),
            paths,
            settings,
            http,
            bundles,
            sink: deps.sink,
            uplink: deps.uplink,
            store: deps.store,
            clock: deps.clock,
            stats: deps.stats,
            snapshots: deps.snapshots,
            accepted,
            last_error: None,
            held: None,
        })
    }

    /// Whether the schedule allows communication now (always, without one).
    pub fn may_communicate(&self) -> bool {
        self.settings
            .schedule
            .as_ref()
            .is_none_or(|s| s.may_communicate(ms_to_timestamp(self.clock.unix_ms())))
    }

    /// Whether uplink may go out between checks (not with `per-check`).
    fn uplink_between_checks(&self) -> bool {
        self.settings
            .schedule
            .as_ref()
            .is_none_or(|s| s.connection() == ConnectionMode::Persistent)
    }

    fn next_check(&self, after_ms: Option<u64>) -> NextCheck {
        match &self.settings.schedule {
            Some(schedule) => {
                let from = after_ms.map_or(self.clock.unix_ms(), |t| {
                    t.saturating_add(1).max(self.clock.unix_ms())
                });
                schedule
                    .next_check_at_or_after(ms_to_timestamp(from))
                    .map_or(NextCheck::Never, |t| NextCheck::Wall(timestamp_to_ms(t)))
            }
            None => {
                let rate = self.settings.poll_rate;
                let spread = u64::try_from((rate / 10).as_millis()).unwrap_or(0);
                let jitter = Duration::from_millis(fastrand::u64(0..=spread));
                NextCheck::Mono(self.clock.now() + rate - jitter)
            }
        }
    }

    fn sleep_for(&self, next: NextCheck) -> crate::clock::Sleep {
        match next {
            NextCheck::Wall(ms) => self.clock.sleep_until_unix_ms(ms),
            NextCheck::Mono(at) => self.clock.sleep_until(at),
            NextCheck::Never => Box::pin(std::future::pending()),
        }
    }

    fn set_status(&self, status: ConnectionStatus) {
        self.snapshots.update(|s| {
            s.connection = status;
            s.connected = status == ConnectionStatus::Connected;
        });
    }

    /// Runs until `shutdown`.
    #[instrument(skip_all, fields(client_id = %self.client_id))]
    pub async fn run(mut self, shutdown: CancellationToken) {
        info!(manager = %self.settings.manager, schedule = ?self.settings.schedule.as_ref().map(ToString::to_string), "HTTP transport starting");
        let notify = self.uplink.notifier();
        let mut backoff = Backoff::new(self.settings.retry_min, self.settings.retry_max);
        let mut uplink_backoff = Backoff::new(self.settings.retry_min, self.settings.retry_max);
        let mut refusal_backoff = Backoff::new(
            self.settings.retry_min.min(self.settings.poll_rate),
            self.settings.poll_rate,
        );
        let mut uplink_retry: Option<Instant> = None;
        // A check at start-up when allowed (a restart should not wait a whole period).
        let mut next = if self.may_communicate() {
            NextCheck::Mono(self.clock.now())
        } else {
            self.next_check(None)
        };
        let mut retry_check: Option<Instant> = None;
        loop {
            let check_due = match retry_check {
                Some(at) => NextCheck::Mono(at),
                None => next,
            };
            let sleep_check = self.sleep_for(check_due);
            let sleep_uplink = match uplink_retry {
                Some(at) => self.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            let between = self.uplink_between_checks();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = sleep_check => {
                    let scheduled_ms = match check_due {
                        NextCheck::Wall(ms) => Some(ms),
                        _ => None,
                    };
                    retry_check = None;
                    if !self.may_communicate() {
                        debug!("check due outside the allowed times; skipped");
                        next = self.next_check(scheduled_ms);
                        continue;
                    }
                    let ok = tokio::select! {
                        () = shutdown.cancelled() => break,
                        ok = self.check_logged() => ok,
                    };
                    if ok {
                        backoff.reset();
                        next = self.next_check(scheduled_ms);
                    } else {
                        // Retry before the next regular check, never after it.
                        let delay = backoff.next_delay();
                        let retry_at = self.clock.now() + delay;
                        next = self.next_check(scheduled_ms);
                        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                        let later = match next {
                            NextCheck::Mono(regular) => regular <= retry_at,
                            NextCheck::Wall(ms) => {
                                ms <= self.clock.unix_ms().saturating_add(delay_ms)
                            }
                            NextCheck::Never => false,
                        };
                        retry_check = (!later).then_some(retry_at);
                    }
                    let drained = tokio::select! {
                        () = shutdown.cancelled() => break,
                        d = self.drain_uplink() => d,
                    };
                    uplink_retry = self.after_drain(drained, &mut uplink_backoff, &mut refusal_backoff);
                }
                () = notify.notified(), if between && uplink_retry.is_none() => {
                    if self.may_communicate() {
                        let drained = tokio::select! {
                            () = shutdown.cancelled() => break,
                            d = self.drain_uplink() => d,
                        };
                        uplink_retry = self.after_drain(drained, &mut uplink_backoff, &mut refusal_backoff);
                    } else {
                        debug!("uplink waits for the allowed times");
                    }
                }
                () = sleep_uplink => {
                    uplink_retry = None;
                    if self.may_communicate() && between {
                        let drained = tokio::select! {
                            () = shutdown.cancelled() => break,
                            d = self.drain_uplink() => d,
                        };
                        uplink_retry = self.after_drain(drained, &mut uplink_backoff, &mut refusal_backoff);
                    } else {
                        debug!("uplink retry waits for the next check");
                    }
                }
            }
        }
        self.set_status(ConnectionStatus::Stopped);
        info!("HTTP transport stopped");
    }

    /// When to drain again: not at all when everything went; after a
    /// 401/404 with the refusal backoff (growing to the poll period, so a
    /// refused report never waits longer than a check); else the
    /// network backoff.
    fn after_drain(
        &self,
        drained: Drained,
        backoff: &mut Backoff,
        refusals: &mut Backoff,
    ) -> Option<Instant> {
        if drained.left == 0 {
            backoff.reset();
            refusals.reset();
            None
        } else if drained.held {
            backoff.reset();
            Some(self.clock.now() + refusals.next_delay())
        } else {
            refusals.reset();
            Some(self.clock.now() + backoff.next_delay())
        }
    }

    /// One check with its outcome logged and counted; `false` if it failed
    /// for a reason worth retrying before the next regular check.
    async fn check_logged(&mut self) -> bool {
        match self.check().await {
            Ok(CheckOutcome::UnknownClient) => {
                let text = "manifest: 404".to_string();
                if self.last_error.as_deref() != Some(text.as_str()) {
                    error!(client_id = %self.client_id, path = %self.paths.manifest(), "the WFM does not know this client: the manifest request was answered 404 Not Found; asking again at the next check");
                } else {
                    debug!("manifest request answered 404 again");
                }
                self.last_error = Some(text);
                self.set_status(ConnectionStatus::Connected);
                true
            }
            Ok(outcome) => {
                self.note_success();
                match outcome {
                    CheckOutcome::NotModified => debug!("manifest not modified"),
                    CheckOutcome::UnknownClient => {}
                    CheckOutcome::Unchanged(v) => {
                        debug!(manifest_version = v, "same manifest again")
                    }
                    CheckOutcome::Accepted {
                        version,
                        bundle,
                        documents,
                    } => {
                        info!(
                            manifest_version = version,
                            bundle, documents, "manifest fetched over HTTP"
                        )
                    }
                }
                true
            }
            Err(error) => {
                let transient = error.is_transient();
                if transient {
                    AgentStats::bump(&self.stats.http_errors);
                    self.set_status(ConnectionStatus::Backoff);
                } else {
                    self.set_status(ConnectionStatus::Connected);
                }
                if matches!(&error, CheckError::Answer { status, .. } if *status == StatusCode::FORBIDDEN)
                {
                    AgentStats::bump(&self.stats.revoked_refusals);
                    self.set_status(ConnectionStatus::Revoked);
                }
                let text = error.to_string();
                let repeat = self.last_error.as_deref() == Some(text.as_str());
                if repeat {
                    debug!(%error, "check failed again");
                } else if error.is_security_event() {
                    warn!(%error, "security event: desired state rejected; keeping the previous state");
                } else if matches!(error, CheckError::Answer { status, .. } if status.is_client_error())
                {
                    error!(%error, "the manager refuses the manifest request");
                } else {
                    warn!(%error, "check failed; keeping the previous state");
                }
                self.last_error = Some(text);
                self.snapshots.update(|_| {});
                // Integrity failures are retried at the next regular check,
                // not hammered: only transient failures retry early.
                !transient
            }
        }
    }

    fn note_success(&mut self) {
        if self.last_error.take().is_some() {
            info!("the manager answers again");
        }
        self.set_status(ConnectionStatus::Connected);
    }

    async fn get(
        &self,
        client: &HttpsClient,
        what: &'static str,
        path: &str,
        headers: Vec<(&'static str, String)>,
    ) -> Result<Answer, CheckError> {
        // Signed by the client (`with_auth`), like every request.
        client
            .exchange(Method::GET, path, &headers, None)
            .await
            .map_err(|source| match source {
                HttpError::TooLarge { limit } => CheckError::Malformed {
                    what,
                    reason: format!("body larger than {limit} bytes"),
                },
                source => CheckError::Network { what, source },
            })
    }

    /// One check (see the module docs); rejections and security events are
    /// counted here, logging is the caller's.
    pub async fn check(&mut self) -> Result<CheckOutcome, CheckError> {
        AgentStats::bump(&self.stats.http_checks);
        let result = self.check_inner().await;
        if let Err(error) = &result {
            if error.is_security_event() || matches!(error, CheckError::Rejected(_)) {
                AgentStats::bump(&self.stats.rejected);
            }
            if error.is_security_event() {
                AgentStats::bump(&self.stats.security_events);
            }
            self.snapshots.update(|_| {});
        }
        result
    }

    async fn check_inner(&mut self) -> Result<CheckOutcome, CheckError> {
        let stored_etag = self.store.http_etag()?;
        let mut headers = vec![
            ("accept", MANIFEST_MEDIA_TYPE.to_string()),
            ("accept-encoding", "gzip".to_string()),
        ];
        if let Some(tag) = &stored_etag {
            headers.push(("if-none-match", tag.clone()));
        }
        let path = self.paths.manifest();
        let answer = self.get(&self.http, "manifest", &path, headers).await?;
        match answer.status {
            StatusCode::NOT_MODIFIED => {
                AgentStats::bump(&self.stats.http_not_modified);
                return Ok(CheckOutcome::NotModified);
            }
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(CheckOutcome::UnknownClient),
            _ => return Err(answer_error("manifest", &answer)),
        }
        let body = decoded_body(&answer, self.settings.max_body_bytes, "manifest")?;
        let etag = answer
            .headers
            .get(hyper::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_ETAG)
            .map_or_else(|| format!("\"{}\"", Digest::of(&body)), str::to_string);
        let manifest: StateManifest =
            serde_json::from_slice(&body).map_err(|e| CheckError::Malformed {
                what: "manifest",
                reason: e.to_string(),
            })?;
        manifest
            .validate()
            .map_err(DownlinkError::InvalidManifest)?;
        let version = manifest.manifest_version;
        let bundle_ref = manifest.bundle.clone();
        let neutral = transport_neutral(manifest);
        let digest = manifest_digest(&neutral)?;
        if judge_offer(self.accepted.as_ref(), version, &digest)? == Offer::Same {
            if stored_etag.as_deref() != Some(etag.as_str()) {
                self.store.set_http_etag(&etag)?;
            }
            return Ok(CheckOutcome::Unchanged(version));
        }
        info!(
            manifest_version = version,
            deployments = neutral.deployments.len(),
            "newer manifest received"
        );
        let (fetched, bundle) = self.fetch_documents(&neutral, bundle_ref.as_ref()).await?;
        let documents = fetched.usable.len() + fetched.unusable.len();
        let now = self.clock.unix_ms();
        for doc in &fetched.usable {
            self.store.cache_put(doc, now)?;
            AgentStats::bump(&self.stats.deployments_cached);
        }
        for (id, digest, reason) in &fetched.unusable {
            // Remembered by digest: not downloaded again, fails alone.
            self.store.refused_put(digest, id, reason, now)?;
            AgentStats::bump(&self.stats.deployments_refused);
            warn!(deployment_id = %id, %digest, %reason, "deployment document cannot be used; this deployment fails alone");
        }
        let accepted = self.sink.accept(&neutral, digest)?;
        self.accepted = Some(accepted);
        // Only now, with the content verified and handed to the reconciler.
        self.store.set_http_etag(&etag)?;
        Ok(CheckOutcome::Accepted {
            version,
            bundle,
            documents,
        })
    }

    /// Downloads and verifies every listed document not yet judged (cached,
    /// or remembered as unusable). Nothing is stored here: the caller
    /// stores only when all were verified.
    async fn fetch_documents(
        &self,
        manifest: &StateManifest,
        bundle_ref: Option<&BundleRef>,
    ) -> Result<(bundle::Decoded, bool), CheckError> {
        let previous: BTreeMap<&DeploymentId, Digest> = self
            .accepted
            .iter()
            .flat_map(|a| a.manifest.deployments.iter())
            .map(|d| (&d.deployment_id, d.digest))
            .collect();
        let changed = manifest
            .deployments
            .iter()
            .filter(|r| previous.get(&r.deployment_id) != Some(&r.digest))
            .count();
        let mut needed = Vec::new();
        for r in &manifest.deployments {
            if !self.store.judged(&r.digest)? {
                needed.push(r);
            }
        }
        if needed.is_empty() {
            return Ok((bundle::Decoded::default(), false));
        }
        let use_bundle = self.accepted.is_none()
            || changed * 100
                > usize::from(self.settings.bundle_over_percent) * manifest.deployments.len();
        if let (true, Some(bundle_ref)) = (use_bundle, bundle_ref) {
            let docs = self.fetch_bundle(manifest, bundle_ref).await?;
            return Ok((docs, true));
        }
        let mut docs = bundle::Decoded::default();
        for r in needed {
            let path = self.paths.deployment(&r.deployment_id, &r.digest);
            let headers = vec![
                ("accept", "application/yaml".to_string()),
                ("accept-encoding", "gzip".to_string()),
            ];
            let answer = self.get(&self.http, "deployment", &path, headers).await?;
            if answer.status != StatusCode::OK {
                return Err(answer_error("deployment", &answer));
            }
            AgentStats::bump(&self.stats.http_documents);
            let yaml = decoded_body(&answer, self.settings.max_body_bytes, "deployment")?;
            match judge_document(&r.deployment_id, &r.digest, yaml)? {
                Verdict::Usable(doc) => {
                    debug!(deployment_id = %r.deployment_id, digest = %r.digest, "deployment downloaded and verified");
                    docs.usable.push(*doc);
                }
                Verdict::Unusable(reason) => {
                    docs.unusable
                        .push((r.deployment_id.clone(), r.digest, reason));
                }
            }
        }
        Ok((docs, false))
    }

    async fn fetch_bundle(
        &self,
        manifest: &StateManifest,
        bundle_ref: &BundleRef,
    ) -> Result<bundle::Decoded, CheckError> {
        let digest = bundle_ref.digest;
        if bundle_ref
            .size_bytes
            .is_some_and(|n| n > self.settings.max_bundle_bytes as u64)
        {
            return Err(CheckError::Bundle {
                digest,
                source: Box::new(BundleError::TotalTooLarge {
                    limit: self.settings.max_bundle_bytes,
                }),
            });
        }
        let path = self.paths.bundle(&digest);
        let headers = vec![("accept", BUNDLE_MEDIA_TYPE.to_string())];
        let answer = self.get(&self.bundles, "bundle", &path, headers).await?;
        if answer.status != StatusCode::OK {
            return Err(answer_error("bundle", &answer));
        }
        AgentStats::bump(&self.stats.http_bundles);
        let actual = Digest::of(&answer.body);
        if actual != digest {
            return Err(CheckError::BundleDigest {
                expected: digest,
                actual,
            });
        }
        let wanted: BTreeMap<DeploymentId, Digest> = manifest
            .deployments
            .iter()
            .map(|d| (d.deployment_id.clone(), d.digest))
            .collect();
        let limits = BundleLimits {
            max_entry: self.settings.max_body_bytes,
            max_total: self.settings.max_bundle_bytes,
        };
        // Decompression is CPU work on untrusted input: off the async threads.
        let body: Bytes = answer.body.clone();
        let decoded =
            tokio::task::spawn_blocking(move || bundle::decode(&body, &wanted, limits)).await;
        match decoded {
            Ok(Ok(docs)) => {
                debug!(%digest, documents = docs.usable.len(), unusable = docs.unusable.len(), "bundle downloaded and verified");
                Ok(docs)
            }
            Ok(Err(source)) => Err(CheckError::Bundle {
                digest,
                source: Box::new(source),
            }),
            Err(e) => Err(CheckError::Bundle {
                digest,
                source: Box::new(BundleError::Unreadable(format!("decoder task: {e}"))),
            }),
        }
    }

    /// Sends pending outbox entries in seq order until one cannot be
    /// delivered now (see the module docs). Public for tests.
    pub async fn drain_uplink(&mut self) -> Drained {
        let mut drained = Drained::default();
        let pending = self.uplink.lock().pending();
        for (i, seq) in pending.iter().copied().enumerate() {
            let message = self.uplink.lock().message(seq);
            let message = match message {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(error) => {
                    error!(seq, %error, "unreadable outbox entry dropped");
                    self.settle(seq, &mut drained.refused);
                    AgentStats::bump(&self.stats.uplink_refused);
                    continue;
                }
            };
            let (what, method, path, body) = match &message {
                Message::Status(report) => {
                    // The shape of the WFM's revision (rc.3: no apiVersion/kind;
                    // rc.2/1.0.0: their required apiVersion and kind).
                    let body = serde_json::to_vec(&report.status.to_wire(
                        self.settings.api.revision(),
                        report.adopted_manifest_version,
                    ));
                    (
                        "status",
                        Method::POST,
                        self.paths.status(&report.status.deployment_id),
                        body,
                    )
                }
                Message::Capabilities(report) => (
                    "capabilities",
                    Method::PUT,
                    self.paths
                        .capabilities(report.manifest.device_id().unwrap_or_default()),
                    serde_json::to_vec(&report.manifest),
                ),
                other => {
                    debug!(seq, kind = other.kind(), "no HTTP form; settled unsent");
                    self.settle(seq, &mut drained.skipped);
                    AgentStats::bump(&self.stats.uplink_skipped);
                    continue;
                }
            };
            let body = match body {
                Ok(b) if b.len() <= self.settings.max_body_bytes => b,
                Ok(b) => {
                    error!(
                        seq,
                        kind = what,
                        bytes = b.len(),
                        limit = self.settings.max_body_bytes,
                        "report larger than http.max_body_bytes; dropped"
                    );
                    self.settle(seq, &mut drained.refused);
                    AgentStats::bump(&self.stats.uplink_refused);
                    continue;
                }
                Err(e) => {
                    error!(seq, kind = what, error = %e, "report could not be encoded; dropped");
                    self.settle(seq, &mut drained.refused);
                    AgentStats::bump(&self.stats.uplink_refused);
                    continue;
                }
            };
            let sent = self
                .http
                .exchange(
                    method,
                    &path,
                    &[],
                    Some(RequestBody {
                        content_type: "application/json",
                        bytes: Bytes::from(body),
                    }),
                )
                .await;
            AgentStats::bump(&self.stats.published);
            match sent {
                Ok(answer)
                    if answer.status.is_success() || answer.status == StatusCode::CONFLICT =>
                {
                    if answer.status == StatusCode::CONFLICT {
                        debug!(seq, kind = what, detail = ?answer.problem_detail(), "manager holds newer state (409); counted as delivered");
                    } else {
                        debug!(seq, kind = what, status = %answer.status, "delivered");
                    }
                    self.settle(seq, &mut drained.delivered);
                    AgentStats::bump(&self.stats.acked);
                    self.note_success();
                    if self.held.take().is_some() {
                        info!(
                            kind = what,
                            "the manager accepts this client's reports again"
                        );
                        self.snapshots.update(|s| s.uplink_error = None);
                    }
                }
                Ok(answer)
                    if answer.status == StatusCode::UNAUTHORIZED
                        || answer.status == StatusCode::NOT_FOUND =>
                {
                    let detail = answer.problem_detail().unwrap_or_else(|| answer.excerpt());
                    self.uplink_held(what, answer.status, &detail);
                    drained.left = pending.len() - i;
                    drained.held = true;
                    break;
                }
                Ok(answer) if retryable(answer.status) => {
                    self.uplink_failed(what, &format!("the manager answered {}", answer.status));
                    drained.left = pending.len() - i;
                    break;
                }
                Ok(answer) => {
                    let detail = answer.problem_detail().unwrap_or_else(|| answer.excerpt());
                    error!(seq, kind = what, status = %answer.status, %detail, "the manager refused a report for good; dropped");
                    self.settle(seq, &mut drained.refused);
                    AgentStats::bump(&self.stats.uplink_refused);
                }
                Err(e) => {
                    self.uplink_failed(what, &e.to_string());
                    drained.left = pending.len() - i;
                    break;
                }
            }
        }
        drained
    }

    /// A report refused with 401 (not authenticated) or 404 (the manager
    /// does not know this client or device): kept and retried, logged at
    /// error once per streak, shown in the snapshot.
    fn uplink_held(&mut self, what: &str, status: StatusCode, detail: &str) {
        AgentStats::bump(&self.stats.uplink_held);
        let text = format!(
            "{what} report refused with {status}: {detail}; kept in the outbox and retried"
        );
        if self.held.is_none() {
            error!(client_id = %self.client_id, kind = what, %status, %detail, "the manager refuses this client's report (not authenticated, or it does not know this client); kept in the outbox, retrying with backoff");
        } else {
            debug!(kind = what, %status, "report still refused; retrying with backoff");
        }
        self.held = Some(text.clone());
        self.snapshots.update(|s| s.uplink_error = Some(text));
    }

    fn uplink_failed(&mut self, what: &str, error: &str) {
        AgentStats::bump(&self.stats.http_errors);
        self.set_status(ConnectionStatus::Backoff);
        let text = format!("{what} upload: {error}");
        if self.last_error.as_deref() == Some(text.as_str()) {
            debug!(error = %text, "uplink still failing; retrying with backoff");
        } else {
            warn!(error = %text, "uplink failed; kept in the outbox, retrying with backoff");
        }
        self.last_error = Some(text);
    }

    fn settle(&self, seq: u64, counter: &mut usize) {
        match self.uplink.settle(&[seq]) {
            Ok(n) => *counter += n,
            Err(error) => warn!(seq, %error, "could not remove an outbox entry"),
        }
    }
}
