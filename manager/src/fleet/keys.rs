//! The verifying keys of live clients, taken from their stored
//! certificates and cached: ingest checks every uplink signature with
//! them, and [`crate::fleet::Fleet::revoke`] forgets a revoked client's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use margo_schemas::cose::{CoseError, VerifyingKey};
use margo_schemas::ids::ClientId;

use crate::store::{Store, StoreError};

/// Why a client has no usable verifying key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No client with this id.
    #[error("unknown client")]
    UnknownClient,
    /// The client is revoked.
    #[error("client is revoked")]
    Revoked,
    /// The stored certificate has no usable key.
    #[error("client certificate: {0}")]
    Certificate(CoseError),
    /// Reading the client failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifying keys of live clients, by client id.
#[derive(Debug, Clone, Default)]
pub struct KeyCache {
    keys: Arc<Mutex<HashMap<ClientId, VerifyingKey>>>,
}

impl KeyCache {
    /// Drops a client's cached key (after revocation).
    pub fn forget(&self, client: &ClientId) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(client);
    }

    /// The key of `client`: cached, or read from its certificate in
    /// `store` (synchronous: call it on the blocking pool).
    pub fn get(&self, store: &Store, client: &ClientId) -> Result<VerifyingKey, KeyError> {
        if let Some(key) = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client)
        {
            return Ok(key.clone());
        }
        let record = store.client(client)?.ok_or(KeyError::UnknownClient)?;
        if record.revoked {
            return Err(KeyError::Revoked);
        }
        let key =
            VerifyingKey::from_certificate(&record.cert_der).map_err(KeyError::Certificate)?;
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(client.clone(), key.clone());
        Ok(key)
    }
}
