//! Onboarding: devices submit requests (HTTPS), operators decide them
//! (admin socket), enrollment tokens decide them on the operator's behalf.
//! Whoever approves, what follows an approval is written once, in
//! [`Fleet::approval_committed`].

use tracing::{info, warn};

use super::{Fleet, FleetResult};
use crate::onboarding::{
    Approved, CreatedToken, Lookup, RejectFilter, RequestView, Submission, Submitted, TokenView,
};

/// What [`Fleet::approve`] decided.
#[derive(Debug, Clone)]
pub struct ApprovedRequest {
    /// The request after the decision.
    pub request: RequestView,
    /// The approval and its client.
    pub approved: Approved,
    /// The client can use the HTTP API only (its key is not ECDSA P-256;
    /// MQTT signs with COSE ES256).
    pub http_only: bool,
}

impl Fleet {
    /// What follows an approval committed by this manager, whoever decided
    /// it: the publisher publishes the new client's retained messages (so
    /// they wait for it when it first connects), and a key MQTT cannot use
    /// is logged. Returns whether the client can use the HTTP API only.
    fn approval_committed(&self, approved: &Approved) -> bool {
        self.inner.downlink.republish(&approved.client_id);
        let http_only = margo_schemas::pki::cert_info(&approved.client.cert_der)
            .map(|info| info.p256_public_key.is_none())
            .unwrap_or(false);
        if http_only {
            warn!(
                client_id = %approved.client_id,
                "this client's key is not ECDSA P-256: it can use the HTTP API only (MQTT needs P-256 for COSE ES256)"
            );
        }
        http_only
    }

    /// A device's onboarding request, verified by the HTTPS listener:
    /// approved at once (known key, enrollment token, allow-list,
    /// `approval = "auto"`, the client's certificate issued here) or left
    /// for an operator.
    pub async fn submit_onboarding(&self, submission: Submission) -> FleetResult<Submitted> {
        let pki = std::sync::Arc::clone(&self.inner.pki);
        let submitted = self
            .inner
            .store
            .run(move |s| {
                Ok(s.onboarding_submit(submission, |id, der| pki.issue_for_device_cert(id, der)))
            })
            .await??;
        if let Submitted::Approved(approved) = &submitted {
            if approved.now {
                self.approval_committed(approved);
            }
        }
        Ok(submitted)
    }

    /// Where the request `request_id` stands (a device polling).
    pub async fn onboarding_lookup(&self, request_id: String) -> FleetResult<Option<Lookup>> {
        Ok(self
            .inner
            .store
            .run(move |s| Ok(s.onboarding_lookup(&request_id)))
            .await??)
    }

    /// Every onboarding request, for an operator.
    pub async fn onboarding_requests(&self) -> FleetResult<Vec<RequestView>> {
        Ok(self
            .inner
            .store
            .run(|s| Ok(s.onboarding_requests()))
            .await??)
    }

    /// An operator approves `request_id` (a unique prefix will do), naming
    /// the client `name` or letting the device's claimed name stand.
    pub async fn approve(
        &self,
        request_id: String,
        name: Option<String>,
    ) -> FleetResult<ApprovedRequest> {
        let pki = std::sync::Arc::clone(&self.inner.pki);
        let (request, approved) = self
            .inner
            .store
            .run(move |s| {
                Ok(
                    s.onboarding_approve(&request_id, name.as_deref(), |client, der| {
                        pki.issue_for_device_cert(client, der)
                    }),
                )
            })
            .await??;
        info!(
            request_id = %request.request_id,
            client_id = %approved.client_id,
            name = %approved.client.name,
            decided_by = %approved.decided_by,
            "onboarding request approved"
        );
        let http_only = self.approval_committed(&approved);
        Ok(ApprovedRequest {
            request,
            approved,
            http_only,
        })
    }

    /// An operator rejects `request_id`.
    pub async fn reject(&self, request_id: String) -> FleetResult<RequestView> {
        let view = self
            .inner
            .store
            .run(move |s| Ok(s.onboarding_reject(&request_id)))
            .await??;
        info!(request_id = %view.request_id, "onboarding request rejected");
        Ok(view)
    }

    /// An operator rejects every pending request `filter` selects (expired
    /// ones are forgotten instead).
    pub async fn reject_matching(&self, filter: RejectFilter) -> FleetResult<Vec<RequestView>> {
        let log = format!("{filter:?}");
        let rejected = self
            .inner
            .store
            .run(move |s| Ok(s.onboarding_reject_matching(&filter)))
            .await??;
        info!(count = rejected.len(), filter = %log, "onboarding requests rejected in bulk");
        Ok(rejected)
    }

    /// A new enrollment token for `uses` devices, valid `ttl_ms`.
    pub async fn create_token(
        &self,
        uses: u32,
        ttl_ms: u64,
        note: Option<String>,
    ) -> FleetResult<CreatedToken> {
        let created = self
            .inner
            .store
            .run(move |s| Ok(s.token_create(uses, ttl_ms, note)))
            .await??;
        info!(token_id = %created.view.id, uses = created.view.uses, expires_at = created.view.expires_at, "enrollment token created");
        Ok(created)
    }

    /// Every enrollment token (never their text).
    pub async fn tokens(&self) -> FleetResult<Vec<TokenView>> {
        Ok(self.inner.store.run(|s| Ok(s.tokens())).await??)
    }

    /// Revokes the enrollment token `id`.
    pub async fn revoke_token(&self, id: String) -> FleetResult<TokenView> {
        let view = self
            .inner
            .store
            .run(move |s| Ok(s.token_revoke(&id)))
            .await??;
        info!(token_id = %view.id, "enrollment token revoked");
        Ok(view)
    }
}
