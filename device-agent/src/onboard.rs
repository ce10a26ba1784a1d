//! HTTPS onboarding (`margo-agent onboard`), the client side of
//! `docs/onboarding.md`:
//!
//! 1. fetch the fleet CA over an unverified TLS connection and compare its
//!    fingerprint with the one given out of band (or trust it on first use
//!    with `insecure_tofu`, loudly); every later request goes over a new TLS
//!    1.3 connection with that CA as the only root;
//! 2. create the device key once (`client.key`, PKCS#8 PEM, mode 0600,
//!    written before anything is sent, never sent) and a self-signed
//!    certificate for it (`onboarding.crt`, kept so re-posting is idempotent);
//! 3. `POST /api/v1/onboarding` signed with `Content-Digest` and
//!    `X-Payload-Signature`;
//! 4. on `202` remember the request (`onboarding.toml`), say once that it
//!    waits for approval, and poll `GET /api/v1/onboarding/requests/{id}`
//!    with backoff and jitter, honouring `Retry-After`;
//! 5. on approval check the issued identity (our key, CN = clientId, issued
//!    by the pinned CA; signing certificate issued by the CA) and write the
//!    bundle atomically, `identity.toml` last.
//!
//! **A plain Margo WFM** answers `201 {"clientId": "..."}` without our
//! `x-margo-mqtt-extensions` (the onboarding page's only success answer).
//! The identity is then the device's own key, the self-signed certificate
//! it onboarded with, the assigned client id (any URL-safe string) and the
//! WFM's CA as fetched and pinned in step 1: a plain identity
//! ([`crate::identity::IdentityKind::Plain`], `identity.toml` version 2),
//! usable by the HTTP transport only. A base path in the manager URL is put
//! in front of every path (`https://wfm/v1alpha2/margo` →
//! `/v1alpha2/margo/api/v1/onboarding`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use margo_schemas::digest::Digest;
use margo_schemas::identity::{
    IdentityIndex, CA_FILE, CERT_FILE, IDENTITY_VERSION, INDEX_FILE, KEY_FILE,
    MANAGER_SIGNING_CERT_FILE,
};
use margo_schemas::onboarding::{
    OnboardingRequest, OnboardingResponse, OnboardingState, RequestExtensions,
};
use margo_schemas::pki;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::clock::{Backoff, Clock};
use crate::config::{AgentConfig, ConfigError};
use crate::http::{self, Answer, HttpsClient, JsonBody, ManagerUrl};
use crate::identity::{
    Identity, IdentityError, IdentityPem, PlainIndex, WireClientId, PLAIN_IDENTITY_VERSION,
};
use crate::request_auth::RequestAuth;

/// The pending request, kept in the identity directory until approval.
pub const PENDING_FILE: &str = "onboarding.toml";
/// The self-signed certificate the request carries, kept so that re-posting
/// gives the same request id.
pub const REQUEST_CERT_FILE: &str = "onboarding.crt";
/// Path of the CA certificate endpoint.
pub const CA_PATH: &str = "/api/v1/onboarding/certificate";
/// Path of the onboarding endpoint.
pub const ONBOARDING_PATH: &str = "/api/v1/onboarding";
/// Prefix of a request's status path.
pub const REQUESTS_PATH: &str = "/api/v1/onboarding/requests/";
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why onboarding stopped without an identity.
#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error("onboarding configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "the fleet manager at {url} presents a CA with fingerprint {actual}, but this device \
         was told to expect {expected}. Check the fingerprint you were given (printed by \
         `margo-manager init` and `margoctl ca`) and that {url} really is your fleet manager; \
         nothing was sent"
    )]
    FingerprintMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "no CA fingerprint to check the manager against: pass --ca-fingerprint sha256:<hex> \
         (from `margoctl ca`), or --insecure-tofu to trust whatever CA answers first"
    )]
    NoFingerprint,
    #[error("the manager's CA certificate is unusable: {0}")]
    BadCa(String),
    #[error(
        "the fleet manager rejected this device's onboarding request {request_id}: {reason}; ask \
         the operator (`margoctl onboarding list`) or onboard with a valid enrollment token"
    )]
    Rejected { request_id: String, reason: String },
    #[error("the manager refused the request as invalid (400): {0}")]
    BadRequest(String),
    #[error("the manager refused the payload signature (401): {0}")]
    Unauthorized(String),
    #[error("unexpected answer {status} to {path}: {body}")]
    Unexpected {
        status: u16,
        path: String,
        body: String,
    },
    #[error("the manager's answer is unusable: {0}")]
    BadResponse(String),
    #[error("the issued identity is unusable: {0}")]
    BadIdentity(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "an identity bundle exists in {dir} but does not load ({source}); move it away to \
         onboard again"
    )]
    BrokenBundle { dir: PathBuf, source: IdentityError },
    #[error("device key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("onboarding claims: {0}")]
    Claims(String),
    #[error("TLS: {0}")]
    Tls(#[from] pki::PkiError),
    #[error("stopped before onboarding finished")]
    Cancelled,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OnboardError + '_ {
    move |source| OnboardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything onboarding needs.
#[derive(Debug, Clone)]
pub struct OnboardSettings {
    pub manager_url: ManagerUrl,
    /// The pinned CA fingerprint; `None` only with `insecure_tofu`.
    pub ca_fingerprint: Option<Digest>,
    pub insecure_tofu: bool,
    pub identity_dir: PathBuf,
    /// Name to ask for (default: the host name).
    pub name: Option<String>,
    pub token: Option<String>,
    pub vendor: Option<String>,
    pub model_number: Option<String>,
    pub serial_number: Option<String>,
    pub poll_min: Duration,
    pub poll_max: Duration,
}

impl OnboardSettings {
    /// Settings from `config.onboarding` (which must be present) and the
    /// claims of `config.capabilities`.
    pub fn from_config(config: &AgentConfig) -> Result<Self, OnboardError> {
        let onboarding = config.onboarding.as_ref().ok_or_else(|| {
            OnboardError::Config(ConfigError::Invalid {
                field: "onboarding.manager_url".into(),
                reason: "required (the [onboarding] section or --manager)".into(),
            })
        })?;
        onboarding.validate()?;
        let manager_url =
            ManagerUrl::parse(&onboarding.manager_url).map_err(|e| ConfigError::Invalid {
                field: "onboarding.manager_url".into(),
                reason: e.to_string(),
            })?;
        let caps = &config.capabilities;
        Ok(Self {
            manager_url,
            ca_fingerprint: onboarding.fingerprint()?,
            insecure_tofu: onboarding.insecure_tofu,
            identity_dir: config.identity_dir.clone(),
            name: onboarding.name.clone(),
            token: onboarding.token.clone(),
            vendor: caps.vendor.clone(),
            model_number: caps.model_number.clone(),
            serial_number: caps.serial_number.clone(),
            poll_min: onboarding.poll_min,
            poll_max: onboarding.poll_max,
        })
    }
}

/// How onboarding ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnboardOutcome {
    /// A complete bundle was already there; nothing was done.
    AlreadyOnboarded(WireClientId),
    /// The bundle was written (for a plain Margo WFM: a plain identity).
    Onboarded {
        client_id: WireClientId,
        name: String,
    },
}

/// The request waiting for approval, in `onboarding.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingRequest {
    version: u32,
    manager_url: String,
    request_id: String,
    location: String,
    /// The CA fingerprint checked (or trusted on first use) when the request was made.
    ca_fingerprint: Digest,
    /// Fingerprint of the certificate the request carried (`onboarding.crt`).
    certificate: Digest,
}

/// Whether `dir` holds an identity bundle (its index exists).
pub fn bundle_present(dir: &Path) -> bool {
    dir.join(INDEX_FILE).exists()
}

/// One onboarding run.
#[derive(Debug)]
pub struct Onboarding {
    settings: OnboardSettings,
    clock: Arc<dyn Clock>,
}

/// What the next request is.
enum Step {
    Post,
    Poll(String),
}

impl Onboarding {
    pub fn new(settings: OnboardSettings, clock: Arc<dyn Clock>) -> Self {
        Self { settings, clock }
    }

    /// Runs until the bundle is written, the request is rejected, a
    /// non-retryable error occurs, or `shutdown`.
    #[instrument(skip_all, fields(manager = %self.settings.manager_url))]
    pub async fn run(self, shutdown: CancellationToken) -> Result<OnboardOutcome, OnboardError> {
        margo_schemas::pki::install_crypto_provider();
        let dir = self.settings.identity_dir.clone();
        if bundle_present(&dir) {
            let identity = Identity::load(&dir).map_err(|source| OnboardError::BrokenBundle {
                dir: dir.clone(),
                source,
            })?;
            return Ok(OnboardOutcome::AlreadyOnboarded(identity.wire_id));
        }
        create_private_dir(&dir)?;
        let pending =
            read_pending(&dir)?.filter(|p| p.manager_url == self.settings.manager_url.to_string());
        let expected = match (&self.settings.ca_fingerprint, &pending) {
            (Some(pin), _) => Some(*pin),
            // Trusted on first use earlier: keep trusting only that CA.
            (None, Some(p)) => Some(p.ca_fingerprint),
            (None, None) if self.settings.insecure_tofu => None,
            (None, None) => return Err(OnboardError::NoFingerprint),
        };
        let (ca_der, ca_pem) = self.fetch_ca(expected, &shutdown).await?;
        let ca_fingerprint = pki::fingerprint(&ca_der);
        let (key, key_pem) = load_or_create_key(&dir)?;
        let cn = self.settings.name.clone().unwrap_or_else(hostname);
        let request_cert = load_or_create_request_cert(&dir, &key, &cn)?;
        let body = self.request_body(&request_cert)?;
        let request_fingerprint = pki::fingerprint(&request_cert);
        // Signed with both schemes: the device does not know yet which
        // revision the manager follows (the RFC 9421 keyid is the request
        // certificate's fingerprint; there is no client id yet).
        let auth = RequestAuth::both(&key.serialize_der(), &request_fingerprint.to_string())
            .map_err(|e| OnboardError::Key {
                path: dir.join(KEY_FILE),
                reason: e.to_string(),
            })?;
        let client = HttpsClient::new(
            self.settings.manager_url.clone(),
            http::verified_tls(&ca_pem)?,
        )?
        .with_auth(Arc::new(auth));
        let local_id = request_fingerprint.hex();

        let mut step = match pending {
            Some(p) if p.certificate == request_fingerprint => {
                info!(request_id = %p.request_id, "resuming a pending onboarding request");
                Step::Poll(p.location)
            }
            _ => Step::Post,
        };
        let onboarding_path = self.settings.manager_url.path(ONBOARDING_PATH);
        let mut backoff = Backoff::new(self.settings.poll_min, self.settings.poll_max);
        let mut announced = false;
        loop {
            let (path, result) = match &step {
                Step::Post => {
                    // Signed by the client (`with_auth`).
                    let headers = Vec::new();
                    let sent = client
                        .send(
                            Method::POST,
                            &onboarding_path,
                            Some(JsonBody {
                                bytes: body.clone(),
                                headers,
                            }),
                        )
                        .await;
                    (onboarding_path.clone(), sent)
                }
                Step::Poll(location) => {
                    let sent = client.send(Method::GET, location, None).await;
                    (location.clone(), sent)
                }
            };
            let answer = match result {
                Ok(answer) => answer,
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(%error, attempt = backoff.attempts(), ?delay, "could not reach the fleet manager; retrying");
                    self.sleep(delay, &shutdown).await?;
                    continue;
                }
            };
            let retry_after = answer.retry_after();
            match answer.status {
                StatusCode::OK | StatusCode::CREATED | StatusCode::ACCEPTED => {
                    if let Some(client_id) = plain_answer(&answer, &path)? {
                        return self.finish_plain(client_id, &key_pem, &ca_pem);
                    }
                    let response: OnboardingResponse = serde_json::from_slice(&answer.body)
                        .map_err(|e| {
                            OnboardError::BadResponse(format!(
                                "{path} answered {}: {e}",
                                answer.status
                            ))
                        })?;
                    let ext = &response.extensions;
                    match ext.state {
                        OnboardingState::Approved => {
                            let outcome = self.finish(&response, &key_pem, &key, &ca_der)?;
                            return Ok(outcome);
                        }
                        OnboardingState::Rejected => {
                            remove_if_exists(&dir.join(PENDING_FILE))?;
                            return Err(OnboardError::Rejected {
                                request_id: ext.request_id.clone(),
                                reason: "rejected by the operator".to_string(),
                            });
                        }
                        OnboardingState::Pending => {
                            let location = poll_location(
                                &answer,
                                &ext.request_id,
                                &self.settings.manager_url,
                            )?;
                            if !announced {
                                announced = true;
                                write_pending(
                                    &dir,
                                    &PendingRequest {
                                        version: 1,
                                        manager_url: self.settings.manager_url.to_string(),
                                        request_id: ext.request_id.clone(),
                                        location: location.clone(),
                                        ca_fingerprint,
                                        certificate: request_fingerprint,
                                    },
                                )?;
                                info!(
                                    request_id = %ext.request_id,
                                    fingerprint = %request_fingerprint,
                                    approve = %format!("margoctl onboarding approve {}", ext.request_id),
                                    "waiting for approval by the fleet operator"
                                );
                            } else {
                                debug!(request_id = %ext.request_id, "still waiting for approval");
                            }
                            step = Step::Poll(location);
                            let hint =
                                retry_after.or(ext.retry_after_secs.map(Duration::from_secs));
                            let delay = delay_with_hint(&mut backoff, hint);
                            self.sleep(delay, &shutdown).await?;
                        }
                    }
                }
                StatusCode::FORBIDDEN => {
                    remove_if_exists(&dir.join(PENDING_FILE))?;
                    let request_id = match &step {
                        Step::Poll(location) => location
                            .rsplit_once(REQUESTS_PATH)
                            .map_or(location.as_str(), |(_, id)| id)
                            .to_string(),
                        Step::Post => local_id.clone(),
                    };
                    // The manager says why (rejected, revoked, token used up or expired).
                    let reason = answer
                        .problem_detail()
                        .unwrap_or_else(|| "403 Forbidden".to_string());
                    return Err(OnboardError::Rejected { request_id, reason });
                }
                StatusCode::NOT_FOUND if matches!(step, Step::Poll(_)) => {
                    warn!(%path, "the manager no longer knows this request; sending it again");
                    remove_if_exists(&dir.join(PENDING_FILE))?;
                    announced = false;
                    step = Step::Post;
                    let delay = delay_with_hint(&mut backoff, retry_after);
                    self.sleep(delay, &shutdown).await?;
                }
                StatusCode::BAD_REQUEST => return Err(OnboardError::BadRequest(answer.excerpt())),
                StatusCode::UNAUTHORIZED => {
                    return Err(OnboardError::Unauthorized(answer.excerpt()))
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    let delay = delay_with_hint(&mut backoff, retry_after);
                    warn!(
                        status = answer.status.as_u16(),
                        ?delay,
                        "the fleet manager is busy; trying again later"
                    );
                    self.sleep(delay, &shutdown).await?;
                }
                status if status.is_server_error() => {
                    let delay = delay_with_hint(&mut backoff, retry_after);
                    warn!(status = status.as_u16(), body = %answer.excerpt(), ?delay, "the fleet manager failed; retrying");
                    self.sleep(delay, &shutdown).await?;
                }
                status => {
                    return Err(OnboardError::Unexpected {
                        status: status.as_u16(),
                        path,
                        body: answer.excerpt(),
                    })
                }
            }
        }
    }

    async fn sleep(
        &self,
        delay: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), OnboardError> {
        tokio::select! {
            () = shutdown.cancelled() => Err(OnboardError::Cancelled),
            () = self.clock.sleep(delay) => Ok(()),
        }
    }

    /// Fetches the CA over an unverified connection and checks it against
    /// `expected` (or trusts it, warning, when there is nothing to expect).
    async fn fetch_ca(
        &self,
        expected: Option<Digest>,
        shutdown: &CancellationToken,
    ) -> Result<(Vec<u8>, Vec<u8>), OnboardError> {
        let url = self.settings.manager_url.clone();
        let client = HttpsClient::new(url.clone(), http::unverified_tls()?)?;
        let mut backoff = Backoff::new(self.settings.poll_min, self.settings.poll_max);
        let answer = loop {
            match client.send(Method::GET, &url.path(CA_PATH), None).await {
                Ok(answer) if answer.status == StatusCode::OK => break answer,
                Ok(answer)
                    if answer.status == StatusCode::TOO_MANY_REQUESTS
                        || answer.status.is_server_error() =>
                {
                    let delay = delay_with_hint(&mut backoff, answer.retry_after());
                    warn!(
                        status = answer.status.as_u16(),
                        ?delay,
                        "the fleet manager cannot serve its CA now; retrying"
                    );
                    self.sleep(delay, shutdown).await?;
                }
                Ok(answer) => {
                    return Err(OnboardError::Unexpected {
                        status: answer.status.as_u16(),
                        path: url.path(CA_PATH),
                        body: answer.excerpt(),
                    })
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(%error, attempt = backoff.attempts(), ?delay, "could not reach the fleet manager; retrying");
                    self.sleep(delay, shutdown).await?;
                }
            }
        };
        let (der, pem) = parse_ca_answer(&answer)?;
        let actual = pki::fingerprint(&der);
        match expected {
            Some(expected) if expected == actual => {
                info!(fingerprint = %actual, "fleet CA matches the pinned fingerprint");
            }
            Some(expected) => {
                return Err(OnboardError::FingerprintMismatch {
                    url: url.to_string(),
                    expected,
                    actual,
                })
            }
            None => {
                warn!(
                    fingerprint = %actual,
                    "INSECURE: trusting the fleet CA presented by {url} without checking its fingerprint \
                     (--insecure-tofu). Compare this fingerprint with `margoctl ca` on the manager"
                );
            }
        }
        Ok((der, pem))
    }

    fn request_body(&self, cert_der: &[u8]) -> Result<Vec<u8>, OnboardError> {
        let s = &self.settings;
        let extensions = RequestExtensions {
            enrollment_token: s.token.clone(),
            name: s.name.clone(),
            vendor: s.vendor.clone(),
            model_number: s.model_number.clone(),
            serial_number: s.serial_number.clone(),
        };
        extensions
            .validate()
            .map_err(|e| OnboardError::Claims(e.to_string()))?;
        // Always sent, empty when there are no claims: it tells a margo-mqtt
        // manager that this client wants our extensions in the answer (a
        // CA-issued certificate, the broker URL, 202 + polling), and a Margo
        // WFM ignores it (`x-*-extensions` are the specification's extension
        // mechanism) and answers its plain `201 {"clientId"}`.
        let mut request = OnboardingRequest::new(cert_der);
        request.extensions = Some(extensions);
        serde_json::to_vec(&request).map_err(|e| OnboardError::Claims(e.to_string()))
    }

    /// Writes a plain identity (see the module docs): the assigned id, the
    /// device key, the certificate it onboarded with, the pinned WFM CA.
    fn finish_plain(
        &self,
        client_id: WireClientId,
        key_pem: &[u8],
        ca_pem: &[u8],
    ) -> Result<OnboardOutcome, OnboardError> {
        let dir = &self.settings.identity_dir;
        let cert_path = dir.join(REQUEST_CERT_FILE);
        let cert_pem = std::fs::read(&cert_path).map_err(io_err(&cert_path))?;
        let name = self.settings.name.clone().unwrap_or_else(hostname);
        Identity::from_plain(
            client_id.clone(),
            name.clone(),
            key_pem.to_vec(),
            cert_pem.clone(),
            ca_pem.to_vec(),
        )
        .map_err(|e| OnboardError::BadIdentity(e.to_string()))?;
        let index = PlainIndex {
            version: PLAIN_IDENTITY_VERSION,
            client_id: client_id.as_str().to_string(),
            name: name.clone(),
            manager_url: self.settings.manager_url.to_string(),
        };
        let index_text =
            toml::to_string(&index).map_err(|e| OnboardError::BadIdentity(e.to_string()))?;
        write_atomic(dir, CA_FILE, ca_pem, 0o644)?;
        write_atomic(dir, CERT_FILE, &cert_pem, 0o644)?;
        // The index last: its presence means the bundle is complete.
        write_atomic(dir, INDEX_FILE, index_text.as_bytes(), 0o644)?;
        remove_if_exists(&dir.join(PENDING_FILE))?;
        remove_if_exists(&cert_path)?;
        info!(
            client_id = %client_id,
            name = %name,
            "onboarded with a plain Margo WFM (201 without x-margo-mqtt-extensions); plain identity written: \
             the HTTP transport (transport = \"http\") only"
        );
        Ok(OnboardOutcome::Onboarded { client_id, name })
    }

    /// Checks the approved identity and writes the bundle.
    fn finish(
        &self,
        response: &OnboardingResponse,
        key_pem: &[u8],
        key: &rcgen::KeyPair,
        pinned_ca_der: &[u8],
    ) -> Result<OnboardOutcome, OnboardError> {
        let bad = |m: String| OnboardError::BadIdentity(m);
        let client_id = response
            .client_id
            .clone()
            .ok_or_else(|| bad("approved without a clientId".into()))?;
        let issued = response
            .extensions
            .identity
            .as_ref()
            .ok_or_else(|| bad("approved without an identity".into()))?;
        let first = |pem: &str, what: &str| -> Result<Vec<u8>, OnboardError> {
            pki::certs_from_pem(pem.as_bytes(), what)
                .map_err(|e| bad(e.to_string()))
                .map(|certs| certs[0].as_ref().to_vec())
        };
        let ca_der = first(&issued.ca_certificate, "caCertificate")?;
        if ca_der != pinned_ca_der {
            return Err(bad(format!(
                "caCertificate ({}) is not the pinned fleet CA ({})",
                pki::fingerprint(&ca_der),
                pki::fingerprint(pinned_ca_der)
            )));
        }
        let cert_der = first(&issued.client_certificate, "clientCertificate")?;
        let info = pki::cert_info(&cert_der).map_err(|e| bad(format!("clientCertificate: {e}")))?;
        if info.p256_public_key.as_deref() != Some(key.public_key_raw()) {
            return Err(bad("clientCertificate is not for this device's key".into()));
        }
        if info.common_name.as_deref() != Some(client_id.as_str()) {
            return Err(bad(format!(
                "clientCertificate CN {:?} is not the clientId {client_id}",
                info.common_name
            )));
        }
        pki::verify_issued_by(&cert_der, &ca_der)
            .map_err(|e| bad(format!("clientCertificate: {e}")))?;
        let signing_der = first(
            &issued.manager_signing_certificate,
            "managerSigningCertificate",
        )?;
        pki::verify_issued_by(&signing_der, &ca_der)
            .map_err(|e| bad(format!("managerSigningCertificate: {e}")))?;
        margo_schemas::broker_url::BrokerUrl::parse(&issued.broker_url)
            .map_err(|e| bad(format!("brokerUrl {:?}: {e}", issued.broker_url)))?;
        // The same checks the agent makes at start, on exactly what will be written.
        let pem = IdentityPem {
            client_id: client_id.clone(),
            name: issued.name.clone(),
            broker_url: issued.broker_url.clone(),
            key_pem: key_pem.to_vec(),
            cert_pem: issued.client_certificate.clone().into_bytes(),
            ca_pem: issued.ca_certificate.clone().into_bytes(),
            manager_signing_cert_pem: issued.manager_signing_certificate.clone().into_bytes(),
        };
        Identity::from_pem(pem.clone()).map_err(|e| bad(e.to_string()))?;
        let index = IdentityIndex {
            version: IDENTITY_VERSION,
            client_id: client_id.clone(),
            name: issued.name.clone(),
            broker_url: issued.broker_url.clone(),
        };
        let index_text = toml::to_string(&index).map_err(|e| bad(e.to_string()))?;
        let dir = &self.settings.identity_dir;
        write_atomic(dir, CA_FILE, &pem.ca_pem, 0o644)?;
        write_atomic(
            dir,
            MANAGER_SIGNING_CERT_FILE,
            &pem.manager_signing_cert_pem,
            0o644,
        )?;
        write_atomic(dir, CERT_FILE, &pem.cert_pem, 0o644)?;
        // The index last: its presence means the bundle is complete.
        write_atomic(dir, INDEX_FILE, index_text.as_bytes(), 0o644)?;
        remove_if_exists(&dir.join(PENDING_FILE))?;
        remove_if_exists(&dir.join(REQUEST_CERT_FILE))?;
        info!(client_id = %client_id, name = %issued.name, broker = %issued.broker_url, "onboarded; identity bundle written");
        Ok(OnboardOutcome::Onboarded {
            client_id: WireClientId::from(&client_id),
            name: issued.name.clone(),
        })
    }
}

/// The larger of the next backoff delay and the server's hint (capped).
fn delay_with_hint(backoff: &mut Backoff, hint: Option<Duration>) -> Duration {
    let delay = backoff.next_delay();
    match hint {
        Some(h) => delay.max(h.min(MAX_RETRY_AFTER)),
        None => delay,
    }
}

/// A plain Margo answer (`201 {"clientId": ...}` without
/// `x-margo-mqtt-extensions`): the assigned id; `None` when the extensions
/// are there (our manager; handled as before).
fn plain_answer(answer: &Answer, path: &str) -> Result<Option<WireClientId>, OnboardError> {
    #[derive(Deserialize)]
    struct Plain {
        #[serde(rename = "clientId")]
        client_id: Option<String>,
        #[serde(rename = "x-margo-mqtt-extensions")]
        extensions: Option<serde_json::Value>,
    }
    let plain: Plain = serde_json::from_slice(&answer.body).map_err(|e| {
        OnboardError::BadResponse(format!("{path} answered {}: {e}", answer.status))
    })?;
    if plain.extensions.is_some() {
        return Ok(None);
    }
    if answer.status == StatusCode::ACCEPTED {
        return Err(OnboardError::BadResponse(format!(
            "{path} answered 202 without x-margo-mqtt-extensions (nothing to poll)"
        )));
    }
    let id = plain.client_id.ok_or_else(|| {
        OnboardError::BadResponse(format!(
            "{path} answered {} without a clientId",
            answer.status
        ))
    })?;
    WireClientId::new(id)
        .map(Some)
        .map_err(|e| OnboardError::BadIdentity(e.to_string()))
}

/// Where to poll: the `Location` header if it is a request path (with or
/// without the base path), else built from the id; always under the base path.
fn poll_location(
    answer: &Answer,
    request_id: &str,
    url: &ManagerUrl,
) -> Result<String, OnboardError> {
    if request_id.is_empty()
        || request_id.len() > 128
        || !request_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(OnboardError::BadResponse(format!(
            "requestId {:?} is not a hex fingerprint",
            request_id.chars().take(80).collect::<String>()
        )));
    }
    let from_header = answer
        .headers
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| l.strip_prefix(url.base_path.as_str()).unwrap_or(l))
        .filter(|l| {
            l.strip_prefix(REQUESTS_PATH)
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        });
    Ok(url.path(
        &from_header
            .map(str::to_string)
            .unwrap_or_else(|| format!("{REQUESTS_PATH}{request_id}")),
    ))
}

/// `{"certificate": "<base64 PEM>"}` → (DER, PEM) of the first certificate.
fn parse_ca_answer(answer: &Answer) -> Result<(Vec<u8>, Vec<u8>), OnboardError> {
    #[derive(Deserialize)]
    struct CaAnswer {
        certificate: String,
    }
    let parsed: CaAnswer = serde_json::from_slice(&answer.body).map_err(|e| {
        OnboardError::BadCa(format!(
            "{CA_PATH} answer is not {{\"certificate\": …}}: {e}"
        ))
    })?;
    let text = parsed.certificate.trim();
    let pem = if text.starts_with("-----BEGIN") {
        text.as_bytes().to_vec()
    } else {
        let decoded = data_encoding::BASE64
            .decode(text.as_bytes())
            .map_err(|e| OnboardError::BadCa(format!("certificate is not base64: {e}")))?;
        if decoded.first() == Some(&0x30) {
            // base64 of the DER itself rather than of the PEM text: accepted too.
            der_to_pem(&decoded)
        } else {
            decoded
        }
    };
    let certs =
        pki::certs_from_pem(&pem, "fleet CA").map_err(|e| OnboardError::BadCa(e.to_string()))?;
    let der = certs[0].as_ref().to_vec();
    let info = pki::cert_info(&der).map_err(|e| OnboardError::BadCa(e.to_string()))?;
    if !info.is_ca {
        return Err(OnboardError::BadCa("the certificate is not a CA".into()));
    }
    Ok((der, pem))
}

/// A PEM `CERTIFICATE` block for `der`.
fn der_to_pem(der: &[u8]) -> Vec<u8> {
    let b64 = data_encoding::BASE64.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem.into_bytes()
}

/// Loads `client.key`, or creates it (P-256, PKCS#8 PEM, mode 0600) before anything is sent.
fn load_or_create_key(dir: &Path) -> Result<(rcgen::KeyPair, Vec<u8>), OnboardError> {
    let path = dir.join(KEY_FILE);
    let key_err = |reason: String| OnboardError::Key {
        path: path.clone(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(pem) => {
            let text =
                String::from_utf8(pem.clone()).map_err(|_| key_err("not PEM text".into()))?;
            let key = rcgen::KeyPair::from_pem(&text).map_err(|e| key_err(e.to_string()))?;
            if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
                return Err(key_err("not an ECDSA P-256 key".into()));
            }
            info!(path = %path.display(), "reusing the existing device key");
            Ok((key, pem))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| key_err(e.to_string()))?;
            let pem = key.serialize_pem().into_bytes();
            write_atomic(dir, KEY_FILE, &pem, 0o600)?;
            info!(path = %path.display(), "created the device key");
            Ok((key, pem))
        }
        Err(source) => Err(OnboardError::Io { path, source }),
    }
}

/// Loads `onboarding.crt` if it belongs to `key`, or creates a self-signed one (CN = `cn`).
fn load_or_create_request_cert(
    dir: &Path,
    key: &rcgen::KeyPair,
    cn: &str,
) -> Result<Vec<u8>, OnboardError> {
    let path = dir.join(REQUEST_CERT_FILE);
    match std::fs::read(&path) {
        Ok(pem) => {
            let der = pki::certs_from_pem(&pem, REQUEST_CERT_FILE)
                .ok()
                .map(|certs| certs[0].as_ref().to_vec());
            let matches = der
                .as_deref()
                .and_then(|d| pki::cert_info(d).ok())
                .is_some_and(|i| i.p256_public_key.as_deref() == Some(key.public_key_raw()));
            if let (true, Some(der)) = (matches, der) {
                return Ok(der);
            }
            warn!(path = %path.display(), "onboarding certificate does not match the device key; making a new one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(OnboardError::Io { path, source }),
    }
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| OnboardError::Key {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(key).map_err(|e| OnboardError::Key {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(dir, REQUEST_CERT_FILE, cert.pem().as_bytes(), 0o644)?;
    Ok(cert.der().to_vec())
}

fn read_pending(dir: &Path) -> Result<Option<PendingRequest>, OnboardError> {
    let path = dir.join(PENDING_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match toml::from_str::<PendingRequest>(&text) {
            Ok(p) if p.version == 1 => Ok(Some(p)),
            Ok(_) | Err(_) => {
                warn!(path = %path.display(), "ignoring an unreadable pending-request file; posting again");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OnboardError::Io { path, source }),
    }
}

fn write_pending(dir: &Path, pending: &PendingRequest) -> Result<(), OnboardError> {
    let text = toml::to_string(pending).map_err(|e| OnboardError::BadResponse(e.to_string()))?;
    write_atomic(dir, PENDING_FILE, text.as_bytes(), 0o644)
}

fn remove_if_exists(path: &Path) -> Result<(), OnboardError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OnboardError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), OnboardError> {
    margo_schemas::private_fs::create_dir_all(dir).map_err(io_err(dir))
}

/// Writes `name` in `dir` atomically: a temporary file in the same
/// directory with `mode`, fsync, rename, fsync of the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), OnboardError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    // An earlier crashed attempt may have left the temp file with other permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
    }
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// The host name, for the certificate CN when no name is configured.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "margo-device".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, pem) = load_or_create_key(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, pem_again) = load_or_create_key(dir.path()).unwrap();
        assert_eq!(pem, pem_again);
        assert_eq!(key.public_key_raw(), again.public_key_raw());
        let c1 = load_or_create_request_cert(dir.path(), &key, "dev").unwrap();
        let c2 = load_or_create_request_cert(dir.path(), &again, "dev").unwrap();
        assert_eq!(
            c1, c2,
            "the request certificate is kept, so the request id is stable"
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
        let d = delay_with_hint(&mut b, Some(Duration::from_secs(7)));
        assert!(d >= Duration::from_secs(7));
        let d = delay_with_hint(&mut b, Some(Duration::from_secs(1 << 20)));
        assert!(d <= MAX_RETRY_AFTER);
    }
}
