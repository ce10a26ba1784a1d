//! The manager's application core. [`Fleet`] owns the store, the downlink
//! publisher's request side, the verifying-key cache, the embedded
//! gateway's revocation set and the PKI, and exposes every operation the
//! manager performs on behalf of someone: an operator on the admin socket,
//! a device on the HTTPS listener, or the MQTT ingest.
//!
//! The adapters ([`crate::admin`], [`crate::http`], [`crate::ingest`])
//! only translate: they parse a request into a call here and the result
//! into their wire form. Everything an operation causes (store commit, key
//! cache, gateway connections, retained messages, logs) is written here,
//! once, whoever asked.
//!
//! - `clients.rs`: provisioning, listing, details, revocation.
//! - `desired.rs`: deploy, bulk deploy, undeploy, remote schedules, the
//!   desired state devices read.
//! - `onboarding.rs`: onboarding requests (devices submit, operators decide)
//!   and enrollment tokens.
//! - `reports.rs`: the fleet view (status, uplink, capabilities, audit) and
//!   the reports devices send over HTTP.
//! - `uplink.rs`: uplink batches verified by MQTT ingest, stored and acked;
//!   `keys.rs` the verifying keys ingest checks them with.
//! - `revocation_list.rs`: the fleet CA's revocation list for external brokers.
//! - `clones.rs`: identities in use from several places at once (the
//!   gateway's and ingest's suspicions, shown to operators).

use std::sync::Arc;

use margo_broker::Revocations;
use margo_schemas::ids::ClientId;

use crate::ca::{CaError, FleetPki};
use crate::onboarding::OnboardingError;
use crate::publisher::Downlink;
use crate::store::{Store, StoreError};

mod clients;
mod clones;
mod desired;
mod keys;
mod onboarding;
mod reports;
pub mod revocation_list;
mod uplink;

pub use clients::{ClientView, Provisioned, ProvisionedMany, Revoked, MAX_BULK_CLIENTS};
pub use clones::CloneOrigin;
pub use desired::{Deployed, ScheduleState, Targets};
pub use keys::{KeyCache, KeyError};
pub use onboarding::ApprovedRequest;
pub use uplink::Ingested;

/// Why an operation failed. The adapters map each variant to their own
/// status (the admin API: 400, 404, 409, 422 or 500).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The PKI failed (key generation, signing): the manager's fault.
    #[error(transparent)]
    Pki(#[from] CaError),
    /// An onboarding decision was refused.
    #[error(transparent)]
    Onboarding(#[from] OnboardingError),
    /// The request is incomplete (nothing to deploy, no clients named).
    #[error("{0}")]
    Incomplete(String),
    /// A value in the request is not acceptable (a count out of range, a
    /// broker URL that does not parse, an invalid schedule).
    #[error("{0}")]
    Invalid(String),
    /// Work on the blocking pool panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl FleetError {
    /// Whether the store's file system refused the call (full, read-only):
    /// it may work later ([`StoreError::is_unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_unavailable())
    }
}

/// Result of a [`Fleet`] operation.
pub type FleetResult<T> = Result<T, FleetError>;

/// What the core is built from; each part is shared with the task that
/// serves it (the publisher drains [`Downlink`], the gateway enforces
/// [`Revocations`]).
pub struct FleetParts {
    /// The store.
    pub store: Store,
    /// The fleet PKI.
    pub pki: Arc<FleetPki>,
    /// Requests to the downlink publisher.
    pub downlink: Downlink,
    /// The verifying keys ingest checks uplink with.
    pub keys: KeyCache,
    /// The embedded gateway's revocation set (`None` with an external broker).
    pub revocations: Option<Revocations>,
    /// The broker URL written into provisioned bundles unless the request names one.
    pub public_broker_url: String,
}

/// The application core: cheap to clone, one per manager.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<FleetParts>,
    /// The rate limits of the refusal warnings of [`Fleet::ingest`].
    refusals: Arc<uplink::RefusalWarnings>,
    /// Suspected clones in force.
    clones: Arc<clones::Suspicions>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("embedded_gateway", &self.inner.revocations.is_some())
            .field("public_broker_url", &self.inner.public_broker_url)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// The core over `parts`.
    pub fn new(parts: FleetParts) -> Self {
        let clones = Arc::new(clones::Suspicions::new(parts.store.clone_rule().window));
        Self {
            inner: Arc::new(parts),
            refusals: Arc::new(uplink::RefusalWarnings::default()),
            clones,
        }
    }

    /// The store (the adapters' synchronous reads on the blocking pool, e.g.
    /// ingest's verification).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The verifying-key cache.
    pub fn keys(&self) -> &KeyCache {
        &self.inner.keys
    }

    /// The broker URL handed to devices unless a request names another.
    pub fn public_broker_url(&self) -> &str {
        &self.inner.public_broker_url
    }

    /// The fleet CA certificate (PEM), what devices trust.
    pub fn ca_pem(&self) -> &str {
        self.inner.pki.ca_pem()
    }

    /// The manager's signing certificate (PEM), what devices verify downlink with.
    pub fn signing_cert_pem(&self) -> &str {
        self.inner.pki.signing_cert_pem()
    }

    /// `sha256:<hex>` of the fleet CA's DER: what devices pin.
    pub fn ca_fingerprint(&self) -> FleetResult<margo_schemas::digest::Digest> {
        Ok(self.inner.pki.ca_fingerprint()?)
    }

    /// The client an operator means by `reference`: its id, or its name.
    pub async fn resolve(&self, reference: String) -> FleetResult<ClientId> {
        Ok(self.inner.store.run(move |s| s.resolve(&reference)).await?)
    }

    /// Runs `f` with the PKI on the blocking pool (key generation and
    /// signing take milliseconds each).
    async fn with_pki<T, F>(&self, f: F) -> FleetResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&FleetPki) -> Result<T, CaError> + Send + 'static,
    {
        let pki = Arc::clone(&self.inner.pki);
        Ok(tokio::task::spawn_blocking(move || f(&pki))
            .await
            .map_err(|e| FleetError::Task(e.to_string()))??)
    }
}

#[cfg(test)]
mod tests;
