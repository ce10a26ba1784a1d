//! Onboarding requests and enrollment tokens as stored.
//!
//! The decisions (approved by what, under which name, with which
//! certificate) are the onboarding module's: it takes them inside one write
//! transaction ([`Store::write`]) through the accessors here, so a decision
//! and everything it writes (client, certificate binding, spent token,
//! request state) commit together or not at all.

use margo_schemas::ids::ClientId;
use margo_schemas::onboarding::OnboardingState;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{decode, encode, ReadTxn, Result, Store, WriteTxn};

/// request id → CBOR [`RequestRecord`].
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("onboarding_requests");
/// request ids in state pending (the index the queue caps and expiry walk).
const PENDING: TableDefinition<&str, ()> = TableDefinition::new("onboarding_pending");
/// token id → CBOR [`TokenRecord`].
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollment_tokens");
/// hex SHA-256 of a token → token id.
const TOKEN_HASHES: TableDefinition<&str, &str> = TableDefinition::new("enrollment_token_hashes");

/// Creates the tables of this family (at open).
pub(super) fn open_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(REQUESTS)?;
    txn.open_table(PENDING)?;
    txn.open_table(TOKENS)?;
    txn.open_table(TOKEN_HASHES)?;
    Ok(())
}

/// What a device claims to be (from the request's extensions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// The name it would like.
    pub name: Option<String>,
    /// Vendor.
    pub vendor: Option<String>,
    /// Model number.
    pub model_number: Option<String>,
    /// Serial number.
    pub serial_number: Option<String>,
}

/// One onboarding request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Pending, approved or rejected.
    pub state: OnboardingState,
    /// The device's self-signed certificate.
    #[serde(with = "serde_bytes")]
    pub cert_der: Vec<u8>,
    /// What it claims to be (latest request).
    pub claims: Claims,
    /// Source address of the latest request.
    pub source: String,
    /// First request (ms since epoch).
    pub first_seen_ms: u64,
    /// Latest request (ms since epoch).
    pub last_seen_ms: u64,
    /// The client it became, once approved.
    pub client_id: Option<ClientId>,
    /// `operator`, `token <id>`, `allowlist`, `auto` or `known key`.
    pub decided_by: Option<String>,
    /// When approved or rejected (ms since epoch).
    pub decided_ms: Option<u64>,
    /// When it stops waiting if nobody decides (ms since epoch; refreshed by
    /// each request of the device). `None` in records written before
    /// requests expired: [`crate::onboarding::DEFAULT_PENDING_TTL`] after
    /// `last_seen_ms` then.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// An enrollment token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenRecord {
    /// Hex SHA-256 of the token.
    pub(crate) hash: String,
    /// Uses it was created with.
    pub(crate) uses_total: u32,
    /// Uses left.
    pub(crate) uses_left: u32,
    /// Expiry (ms since epoch).
    pub(crate) expires_ms: u64,
    /// Operator's note.
    pub(crate) note: Option<String>,
    /// When created (ms since epoch).
    pub(crate) created_ms: u64,
}

/// `(hex SHA-256 of the device certificate, clientId)` of every approved
/// request: the certificates plain Margo clients present in TLS (rebuilding
/// the store's certificate index).
pub(super) fn approved_certificates(txn: &redb::WriteTransaction) -> Result<Vec<(String, String)>> {
    let table = txn.open_table(REQUESTS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let record: RequestRecord = decode("onboarding_requests", v.value())?;
        if let (OnboardingState::Approved, Some(client)) = (record.state, record.client_id) {
            out.push((k.value().to_string(), client.to_string()));
        }
    }
    Ok(out)
}

impl WriteTxn<'_> {
    /// The onboarding request with this exact id.
    pub(crate) fn onboarding_request(&self, id: &str) -> Result<Option<RequestRecord>> {
        let table = self.0.open_table(REQUESTS)?;
        let found = table.get(id)?;
        found
            .map(|v| decode("onboarding_requests", v.value()))
            .transpose()
    }

    /// Stores a request and keeps the pending index in step with its state.
    pub(crate) fn put_onboarding_request(&self, id: &str, record: &RequestRecord) -> Result<()> {
        self.0
            .open_table(REQUESTS)?
            .insert(id, encode("onboarding_requests", record)?.as_slice())?;
        let mut pending = self.0.open_table(PENDING)?;
        if record.state == OnboardingState::Pending {
            pending.insert(id, ())?;
        } else {
            pending.remove(id)?;
        }
        Ok(())
    }

    /// The ids of the pending requests, in id order.
    pub(crate) fn pending_request_ids(&self) -> Result<Vec<String>> {
        let table = self.0.open_table(PENDING)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(row?.0.value().to_string());
        }
        Ok(out)
    }

    /// Forgets a request (an expired pending one) and its pending entry.
    pub(crate) fn remove_onboarding_request(&self, id: &str) -> Result<()> {
        self.0.open_table(REQUESTS)?.remove(id)?;
        self.0.open_table(PENDING)?.remove(id)?;
        Ok(())
    }

    /// The ids of the requests that start with `prefix`, in order, at most `limit`.
    pub(crate) fn onboarding_request_ids(&self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        let table = self.0.open_table(REQUESTS)?;
        let mut out = Vec::new();
        for row in table.range(prefix..)? {
            let (k, _) = row?;
            let id = k.value();
            if !id.starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push(id.to_string());
        }
        Ok(out)
    }

    /// The id of the token with this hash.
    pub(crate) fn token_id_by_hash(&self, hash: &str) -> Result<Option<String>> {
        Ok(self
            .0
            .open_table(TOKEN_HASHES)?
            .get(hash)?
            .map(|v| v.value().to_string()))
    }

    /// The token with this id.
    pub(crate) fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let table = self.0.open_table(TOKENS)?;
        let found = table.get(id)?;
        found
            .map(|v| decode("enrollment_tokens", v.value()))
            .transpose()
    }

    /// Stores `record` as token `id` (its hash is indexed by
    /// [`insert_token`](Self::insert_token) and never changes).
    pub(crate) fn put_token(&self, id: &str, record: &TokenRecord) -> Result<()> {
        self.0
            .open_table(TOKENS)?
            .insert(id, encode("enrollment_tokens", record)?.as_slice())?;
        Ok(())
    }

    /// Adds a new token and indexes its hash; `false` (nothing written) if
    /// a token with this id exists.
    pub(crate) fn insert_token(&self, id: &str, record: &TokenRecord) -> Result<bool> {
        if self.0.open_table(TOKENS)?.get(id)?.is_some() {
            return Ok(false);
        }
        self.put_token(id, record)?;
        self.0
            .open_table(TOKEN_HASHES)?
            .insert(record.hash.as_str(), id)?;
        Ok(true)
    }

    /// Deletes a token and its hash; the deleted record, if there was one.
    pub(crate) fn remove_token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let removed = self
            .0
            .open_table(TOKENS)?
            .remove(id)?
            .map(|v| v.value().to_vec());
        let Some(bytes) = removed else {
            return Ok(None);
        };
        let record: TokenRecord = decode("enrollment_tokens", &bytes)?;
        self.0
            .open_table(TOKEN_HASHES)?
            .remove(record.hash.as_str())?;
        Ok(Some(record))
    }
}

impl ReadTxn<'_> {
    /// The onboarding request with this exact id.
    pub(crate) fn onboarding_request(&self, id: &str) -> Result<Option<RequestRecord>> {
        let table = self.0.open_table(REQUESTS)?;
        let found = table.get(id)?;
        found
            .map(|v| decode("onboarding_requests", v.value()))
            .transpose()
    }
}

impl Store {
    /// Every onboarding request with its id, in id order.
    pub(crate) fn onboarding_request_records(&self) -> Result<Vec<(String, RequestRecord)>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(REQUESTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((
                k.value().to_string(),
                decode("onboarding_requests", v.value())?,
            ));
        }
        Ok(out)
    }

    /// Every enrollment token with its id, in id order.
    pub(crate) fn token_records(&self) -> Result<Vec<(String, TokenRecord)>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((
                k.value().to_string(),
                decode("enrollment_tokens", v.value())?,
            ));
        }
        Ok(out)
    }
}
