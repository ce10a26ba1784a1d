//! Clients: records, unique names, and the key and certificate indexes
//! that bind a device's key and certificates to its client.

use margo_schemas::digest::Digest;
use margo_schemas::ids::ClientId;
use margo_schemas::pki::cert_info;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{decode, encode, ReadTxn, Result, Store, StoreError, WriteTxn};

/// clientId → CBOR [`ClientRecord`].
pub(super) const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
/// name → clientId (unique names).
pub(super) const NAMES: TableDefinition<&str, &str> = TableDefinition::new("client_names");
/// hex SHA-256 of a client certificate's public key (P-256 point) → clientId,
/// so a key stays bound to its client (and its revocation) across re-onboarding.
pub(super) const CLIENT_KEYS: TableDefinition<&str, &str> = TableDefinition::new("client_keys");
/// hex SHA-256 of a certificate's DER → clientId: every certificate a
/// client is registered with (its fleet-CA certificate, and the device's own
/// certificate it onboarded with), so a TLS client certificate identifies
/// its client (`http::tls_peer`). Written in the transactions that add a
/// client or approve an onboarding request; rebuilt at open when it holds
/// fewer entries than there are clients (a database from before it).
pub(super) const CLIENT_CERTS: TableDefinition<&str, &str> =
    TableDefinition::new("client_certificates");

/// Creates the tables of this family (at open).
pub(super) fn open_tables(txn: &redb::WriteTransaction) -> Result<()> {
    txn.open_table(CLIENTS)?;
    txn.open_table(NAMES)?;
    txn.open_table(CLIENT_KEYS)?;
    txn.open_table(CLIENT_CERTS)?;
    Ok(())
}

/// Longest client name.
pub const MAX_NAME_LEN: usize = 128;

/// A client as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Human-readable unique name.
    pub name: String,
    /// Its MQTT client certificate, DER.
    #[serde(with = "serde_bytes")]
    pub cert_der: Vec<u8>,
    /// When it was provisioned (ms since epoch).
    pub created_ms: u64,
    /// Whether it is revoked.
    pub revoked: bool,
    /// When it was revoked (ms since epoch; `None` if it is not, or was
    /// revoked before the time was kept).
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}

/// A client with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    /// The id.
    pub id: ClientId,
    /// The record.
    pub record: ClientRecord,
}

/// Validates a client name: 1..=128 printable characters, no surrounding spaces.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(StoreError::InvalidName("must not be empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidName(format!(
            "{} bytes, the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidName(
            "no control characters or surrounding whitespace".into(),
        ));
    }
    Ok(())
}

/// Identifies a public key: hex SHA-256 of its uncompressed P-256 point.
pub fn key_id(p256_point: &[u8]) -> String {
    Digest::of(p256_point).hex()
}

/// [`key_id`] of a certificate's key, if it is a P-256 certificate.
pub fn key_id_of_cert(cert_der: &[u8]) -> Option<String> {
    cert_info(cert_der)
        .ok()
        .and_then(|info| info.p256_public_key)
        .map(|point| key_id(&point))
}

impl Store {
    /// Adds a client. Fails if the id exists or the name is taken.
    pub fn add_client(&self, id: &ClientId, name: &str, cert_der: &[u8]) -> Result<ClientRecord> {
        let txn = self.begin_write()?;
        let record = Self::insert_client(&txn, id, name, cert_der, self.clock.now_ms())?;
        self.commit(txn, "add a client to")?;
        Ok(record)
    }

    /// Adds many clients in one transaction (bulk provisioning): all or none.
    pub fn add_clients(&self, clients: &[(ClientId, String, Vec<u8>)]) -> Result<()> {
        let txn = self.begin_write()?;
        let now = self.clock.now_ms();
        for (id, name, cert_der) in clients {
            Self::insert_client(&txn, id, name, cert_der, now)?;
        }
        self.commit(txn, "add clients to")?;
        Ok(())
    }

    /// Adds a client created at `created_ms` inside `txn` (provisioning and
    /// onboarding approval both use this): unique id and name, and its
    /// public key bound to it.
    pub(super) fn insert_client(
        txn: &redb::WriteTransaction,
        id: &ClientId,
        name: &str,
        cert_der: &[u8],
        created_ms: u64,
    ) -> Result<ClientRecord> {
        validate_name(name)?;
        let mut clients = txn.open_table(CLIENTS)?;
        let mut names = txn.open_table(NAMES)?;
        if clients.get(id.as_str())?.is_some() {
            return Err(StoreError::ClientExists(id.clone()));
        }
        if names.get(name)?.is_some() {
            return Err(StoreError::NameTaken(name.to_string()));
        }
        let record = ClientRecord {
            name: name.to_string(),
            cert_der: cert_der.to_vec(),
            created_ms,
            revoked: false,
            revoked_ms: None,
        };
        clients.insert(id.as_str(), encode("clients", &record)?.as_slice())?;
        names.insert(name, id.as_str())?;
        if let Some(key) = key_id_of_cert(cert_der) {
            txn.open_table(CLIENT_KEYS)?
                .insert(key.as_str(), id.as_str())?;
        }
        Self::bind_certificate(txn, cert_der, id)?;
        Ok(record)
    }

    /// Registers `cert_der` as a certificate of `client` inside `txn` (the
    /// onboarding approval binds the device's own certificate this way).
    pub(super) fn bind_certificate(
        txn: &redb::WriteTransaction,
        cert_der: &[u8],
        client: &ClientId,
    ) -> Result<()> {
        txn.open_table(CLIENT_CERTS)?
            .insert(Digest::of(cert_der).hex().as_str(), client.as_str())?;
        Ok(())
    }

    /// Fills [`CLIENT_CERTS`] from the clients and the approved onboarding
    /// requests when it has fewer entries than there are clients: a
    /// database written before the index existed (or by such a version
    /// since). Insert-only, so running it on a complete index changes nothing.
    pub(super) fn rebuild_certificate_index(txn: &redb::WriteTransaction) -> Result<()> {
        let indexed = txn.open_table(CLIENT_CERTS)?.len()?;
        let clients = txn.open_table(CLIENTS)?;
        if indexed >= clients.len()? {
            return Ok(());
        }
        let mut bindings = Vec::new();
        for row in clients.iter()? {
            let (k, v) = row?;
            let record: ClientRecord = decode("clients", v.value())?;
            bindings.push((Digest::of(&record.cert_der).hex(), k.value().to_string()));
        }
        drop(clients);
        bindings.extend(super::onboarding::approved_certificates(txn)?);
        let mut index = txn.open_table(CLIENT_CERTS)?;
        for (fingerprint, client) in &bindings {
            index.insert(fingerprint.as_str(), client.as_str())?;
        }
        tracing::info!(
            certificates = bindings.len(),
            "client certificate index rebuilt (database from an earlier version)"
        );
        Ok(())
    }

    /// The client registered with exactly this certificate (DER), with its
    /// record (revoked ones included: the caller decides).
    pub fn client_by_certificate(&self, cert_der: &[u8]) -> Result<Option<ClientEntry>> {
        let txn = self.begin_read()?;
        let found = txn
            .open_table(CLIENT_CERTS)?
            .get(Digest::of(cert_der).hex().as_str())?
            .map(|v| v.value().to_string());
        let Some(id) = found else {
            return Ok(None);
        };
        let id = ClientId::new(id).map_err(|e| StoreError::Corrupt {
            table: "client_certificates",
            detail: e.to_string(),
        })?;
        let record = txn
            .open_table(CLIENTS)?
            .get(id.as_str())?
            .map(|v| decode::<ClientRecord>("clients", v.value()))
            .transpose()?;
        Ok(record.map(|record| ClientEntry { id, record }))
    }

    /// The client whose certificate carries the public key with this
    /// [`key_id`], with its record.
    pub(super) fn client_by_key(
        txn: &redb::WriteTransaction,
        key_id: &str,
    ) -> Result<Option<ClientEntry>> {
        let found = txn
            .open_table(CLIENT_KEYS)?
            .get(key_id)?
            .map(|v| v.value().to_string());
        let Some(id) = found else {
            return Ok(None);
        };
        let id = ClientId::new(id).map_err(|e| StoreError::Corrupt {
            table: "client_keys",
            detail: e.to_string(),
        })?;
        let record = txn
            .open_table(CLIENTS)?
            .get(id.as_str())?
            .map(|v| decode::<ClientRecord>("clients", v.value()))
            .transpose()?;
        Ok(record.map(|record| ClientEntry { id, record }))
    }

    /// Whether `name` is already used.
    pub fn name_taken(&self, name: &str) -> Result<bool> {
        let txn = self.begin_read()?;
        Ok(txn.open_table(NAMES)?.get(name)?.is_some())
    }

    /// The client with this id.
    pub fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CLIENTS)?;
        let found = table.get(id.as_str())?;
        found.map(|v| decode("clients", v.value())).transpose()
    }

    /// Resolves a client id or unique name.
    pub fn resolve(&self, id_or_name: &str) -> Result<ClientId> {
        let txn = self.begin_read()?;
        if let Ok(id) = ClientId::new(id_or_name) {
            if txn.open_table(CLIENTS)?.get(id.as_str())?.is_some() {
                return Ok(id);
            }
        }
        let names = txn.open_table(NAMES)?;
        let found = names.get(id_or_name)?;
        match found {
            Some(id) => ClientId::new(id.value()).map_err(|e| StoreError::Corrupt {
                table: "client_names",
                detail: e.to_string(),
            }),
            None => Err(StoreError::UnknownClient(
                id_or_name.chars().take(140).collect(),
            )),
        }
    }

    /// Every client, sorted by id.
    pub fn clients(&self) -> Result<Vec<ClientEntry>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CLIENTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let id = ClientId::new(k.value()).map_err(|e| StoreError::Corrupt {
                table: "clients",
                detail: e.to_string(),
            })?;
            out.push(ClientEntry {
                id,
                record: decode("clients", v.value())?,
            });
        }
        Ok(out)
    }

    /// Marks a client revoked (or not). Returns the updated record.
    pub fn set_revoked(&self, id: &ClientId, revoked: bool) -> Result<ClientRecord> {
        let now = self.clock.now_ms();
        let txn = self.begin_write()?;
        let record = {
            let mut clients = txn.open_table(CLIENTS)?;
            let found = clients.get(id.as_str())?.map(|v| v.value().to_vec());
            let mut record: ClientRecord = match found {
                Some(bytes) => decode("clients", &bytes)?,
                None => return Err(StoreError::UnknownClient(id.to_string())),
            };
            record.revoked_ms = match (revoked, record.revoked) {
                (false, _) => None,
                (true, true) => record.revoked_ms,
                (true, false) => Some(now),
            };
            record.revoked = revoked;
            clients.insert(id.as_str(), encode("clients", &record)?.as_slice())?;
            record
        };
        self.commit(txn, "record a revocation in")?;
        Ok(record)
    }

    pub(super) fn live_client(txn: &redb::WriteTransaction, id: &ClientId) -> Result<ClientRecord> {
        let clients = txn.open_table(CLIENTS)?;
        let found = clients.get(id.as_str())?;
        let record: ClientRecord = match found {
            Some(v) => decode("clients", v.value())?,
            None => return Err(StoreError::UnknownClient(id.to_string())),
        };
        if record.revoked {
            return Err(StoreError::Revoked(id.clone()));
        }
        Ok(record)
    }

    /// The live (not revoked) clients whose name starts with `prefix`, sorted by name.
    pub fn clients_with_name_prefix(&self, prefix: &str) -> Result<Vec<ClientId>> {
        let txn = self.begin_read()?;
        let names = txn.open_table(NAMES)?;
        let clients = txn.open_table(CLIENTS)?;
        let mut out = Vec::new();
        for row in names.range(prefix..)? {
            let (name, id) = row?;
            if !name.value().starts_with(prefix) {
                break;
            }
            let revoked = match clients.get(id.value())? {
                Some(v) => decode::<ClientRecord>("clients", v.value())?.revoked,
                None => true,
            };
            if revoked {
                continue;
            }
            out.push(ClientId::new(id.value()).map_err(|e| StoreError::Corrupt {
                table: "client_names",
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }
}

impl WriteTxn<'_> {
    /// The client with this id.
    pub(crate) fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>> {
        let table = self.0.open_table(CLIENTS)?;
        let found = table.get(id.as_str())?;
        found.map(|v| decode("clients", v.value())).transpose()
    }

    /// Whether `name` is already used.
    pub(crate) fn name_taken(&self, name: &str) -> Result<bool> {
        Ok(self.0.open_table(NAMES)?.get(name)?.is_some())
    }

    /// [`Store::add_client`] inside this transaction.
    pub(crate) fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        cert_der: &[u8],
        created_ms: u64,
    ) -> Result<ClientRecord> {
        Store::insert_client(self.0, id, name, cert_der, created_ms)
    }

    /// Registers `cert_der` as a certificate of `client` (the onboarding
    /// approval binds the device's own certificate this way).
    pub(crate) fn bind_certificate(&self, cert_der: &[u8], client: &ClientId) -> Result<()> {
        Store::bind_certificate(self.0, cert_der, client)
    }

    /// The client whose certificate carries the public key with this
    /// [`key_id`], with its record.
    pub(crate) fn client_by_key(&self, key_id: &str) -> Result<Option<ClientEntry>> {
        Store::client_by_key(self.0, key_id)
    }
}

impl ReadTxn<'_> {
    /// The client with this id.
    pub(crate) fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>> {
        let table = self.0.open_table(CLIENTS)?;
        let found = table.get(id.as_str())?;
        found.map(|v| decode("clients", v.value())).transpose()
    }
}
