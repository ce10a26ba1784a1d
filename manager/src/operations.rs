//! Operator actions whose side effects more than one place would otherwise
//! write out: each side effect is written here once, and the admin API and
//! the HTTPS onboarding call these after the store has committed.
//!
//! - [`approval_committed`]: an onboarding request was approved (by an
//!   operator on the admin socket, or by an enrollment token, the
//!   allow-list or `approval = "auto"` on the HTTPS listener).
//! - [`revoke`]: a client is revoked (store, key cache, gateway, downlink).

use margo_broker::Revocations;
use margo_schemas::ids::ClientId;
use tracing::warn;

use crate::ingest::KeyCache;
use crate::onboarding::Approved;
use crate::publisher::Downlink;
use crate::store::{ClientRecord, Store, StoreError};

/// What follows an approval this call committed, whoever decided it: the
/// publisher publishes the new client's retained messages (so they wait
/// for it when it first connects), and a key MQTT cannot use is logged.
/// Returns whether the client can use the HTTP API only (its key is not
/// ECDSA P-256; MQTT signs with COSE ES256).
pub fn approval_committed(downlink: &Downlink, approved: &Approved) -> bool {
    downlink.republish(&approved.client_id);
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

/// What [`revoke`] did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The client's record after the call.
    pub record: ClientRecord,
    /// It was revoked already before this call.
    pub already_revoked: bool,
    /// Live gateway connections cut (`None` without an embedded gateway).
    pub connections_closed: Option<usize>,
}

/// Revokes `client`: commits the flag, then forgets its verifying key (ingest
/// refuses its uplink from now on), cuts its live connections at the
/// embedded gateway (`revocations`; `None` with an external broker) and asks
/// the publisher to clear its retained messages. Revoking twice does the
/// side effects again, which is harmless.
pub async fn revoke(
    store: &Store,
    keys: &KeyCache,
    revocations: Option<&Revocations>,
    downlink: &Downlink,
    client: &ClientId,
) -> Result<Revoked, StoreError> {
    let id = client.clone();
    let (already_revoked, record) = store
        .run(move |s| {
            let before = s.client(&id)?.is_some_and(|r| r.revoked);
            Ok((before, s.set_revoked(&id, true)?))
        })
        .await?;
    keys.forget(client);
    let connections_closed = revocations.map(|r| r.revoke(client));
    downlink.revoked(client);
    Ok(Revoked {
        record,
        already_revoked,
        connections_closed,
    })
}
