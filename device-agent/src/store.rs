//! The agent's durable state in redb: accepted manifest, adopted version,
//! verified YAML cache by digest, applied state per deployment (with the
//! intent written before the adapter runs), failed-attempt bookkeeping, and
//! the uplink outbox.
//!
//! Every method commits its own transaction before returning, so a caller
//! that acts or acknowledges after a successful call knows the write
//! survives a power loss (file backend). The in-memory backend serves the
//! fleet simulator.
//!
//! A write the file system refuses (no space left, read-only, I/O error)
//! fails as [`StoreError::Unavailable`] and is logged once until writes
//! work again; the file is reopened by a later call once it can be
//! ([`margo_schemas::db_file`]). The caller keeps what it could not store
//! (an outbox entry stays in memory, a manifest is not acknowledged) and
//! tries again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use margo_schemas::codec;
use margo_schemas::db_file::{self, DbFile};
use margo_schemas::deployment::{ApplicationDeployment, VerifiedParseError};
use margo_schemas::digest::Digest;
use margo_schemas::ids::{DeploymentId, InstanceId};
use margo_schemas::manifest::StateManifest;
use margo_schemas::messages::DeviceConfig;
use margo_schemas::status::{DeploymentState, StatusError};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const CACHE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("yaml_cache");
const APPLIED: TableDefinition<&str, &[u8]> = TableDefinition::new("applied");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const REFUSED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refused_docs");

const KEY_NEXT_SEQ: &str = "next_seq";
const KEY_ADOPTED: &str = "adopted_version";
const KEY_ACCEPTED: &str = "accepted_manifest";
const KEY_RETRY: &str = "retry";
const KEY_CAPABILITIES: &str = "capabilities_digest";
const KEY_REMOTE_CONFIG: &str = "remote_config";
const KEY_HTTP_ETAG: &str = "http_etag";
const KEY_INSTANCE: &str = "instance";

/// Largest record we decode from our own store (a YAML document is at most 512 KiB).
const MAX_RECORD: usize = 2 * 1024 * 1024;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redb: {0}")]
    Db(#[from] redb::Error),
    /// The database file cannot be written (or read) now: no space left on
    /// the device, a read-only file system, an I/O error. Nothing was
    /// written; the same call may succeed later.
    #[error(transparent)]
    Unavailable(#[from] db_file::Unavailable),
    #[error("stored {table} record {key:?} is unreadable: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("could not encode a {what} record: {reason}")]
    Encode { what: &'static str, reason: String },
}

macro_rules! db_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(redb::Error::from(e))
            }
        }
    )*};
}
impl From<db_file::DbError> for StoreError {
    fn from(e: db_file::DbError) -> Self {
        match e {
            db_file::DbError::Unavailable(u) => Self::Unavailable(u),
            db_file::DbError::Other(e) => Self::Db(e),
        }
    }
}

db_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    /// Whether the storage refused the call (full, read-only, I/O error)
    /// rather than the data being wrong: it may work later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Db(e) => db_file::is_storage_failure(e),
            _ => false,
        }
    }
}

/// The last manifest accepted (verified, newer, all content present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedManifest {
    pub manifest: StateManifest,
    /// Digest of the manifest's CBOR encoding: tells a replay from a forgery at equal versions.
    pub digest: Digest,
}

impl AcceptedManifest {
    /// Wraps `manifest` with its content digest.
    pub fn new(manifest: StateManifest) -> Result<Self, StoreError> {
        let digest = manifest_digest(&manifest)?;
        Ok(Self { manifest, digest })
    }

    pub fn version(&self) -> u64 {
        self.manifest.manifest_version
    }
}

/// The content digest of a manifest (over its CBOR encoding).
pub fn manifest_digest(manifest: &StateManifest) -> Result<Digest, StoreError> {
    let bytes = codec::encode(manifest).map_err(|e| StoreError::Encode {
        what: "manifest",
        reason: e.to_string(),
    })?;
    Ok(Digest::of(&bytes))
}

/// What the reconciler was about to do when it wrote the intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Install,
    Update,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Update => "update",
            Self::Remove => "remove",
        }
    }
}

/// Written before the adapter is called; cleared when the outcome is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub action: Action,
    /// The digest being installed (none for a removal).
    pub target: Option<Digest>,
    /// The manifest version being applied.
    pub manifest_version: u64,
}

/// Applied state of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    /// The digest whose components are running (none: nothing installed).
    pub running: Option<Digest>,
    /// The last reported overall state.
    pub state: DeploymentState,
    /// An action begun and not yet recorded as finished.
    pub intent: Option<Intent>,
    /// The error of the last failed action.
    pub error: Option<StatusError>,
}

/// Failed-attempt bookkeeping for the manifest being applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryState {
    pub manifest_version: u64,
    /// Failed passes so far (≥ 1).
    pub attempts: u32,
    /// Wall-clock ms of the last failure.
    pub failed_at_ms: u64,
}

/// A deployment document judged unacceptable: its bytes match the listed
/// digest, but the agent cannot use them (unknown `apiVersion`, YAML it
/// cannot parse, ...). Kept by digest so it is never downloaded again and
/// fails alone (`docs/http-api.md`, "The agent over HTTP").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedDoc {
    /// The deployment id the manifest listed it under.
    pub id: DeploymentId,
    /// Why it cannot be used.
    pub reason: String,
    pub refused_at_ms: u64,
}

/// A cached, verified deployment document.
#[derive(Serialize, Deserialize)]
struct CachedDoc {
    #[serde(with = "serde_bytes")]
    yaml: Vec<u8>,
    cached_at_ms: u64,
}

/// One sealed uplink message waiting for the manager's ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub topic: String,
    /// Message kind (`status`, `state`, `sync`, ...).
    pub kind: String,
    /// For `status`: the deployment it reports on (coalescing key).
    pub deployment: Option<DeploymentId>,
    /// The `low` sealed into the envelope.
    pub low: u64,
    /// The COSE_Sign1 bytes as published.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl OutboxRecord {
    /// Bytes this entry counts against the outbox limit.
    pub fn size(&self) -> usize {
        self.payload.len() + self.topic.len()
    }
}

/// Handle to the agent's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    file: Arc<DbFile>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    codec::decode(bytes, MAX_RECORD).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    codec::encode(value).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

impl Store {
    /// Opens (or creates) the database file at `path`, creating its
    /// directory. Both are private whatever the umask (the store holds the
    /// deployment documents): the directories created 0700, the file 0600.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |e: std::io::Error, at: &Path| {
            StoreError::Db(redb::Error::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", at.display()),
            )))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            margo_schemas::private_fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
        }
        margo_schemas::private_fs::prepare_file(path).map_err(|e| io(e, path))?;
        let file = DbFile::open(path, Some(16 * 1024 * 1024))?;
        Self::init(file)
    }

    /// A fresh database in memory (nothing survives the process). Clone the
    /// returned handle to "restart" an agent on the same state.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(256 * 1024)
            .create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::init(DbFile::from_database(db))
    }

    fn init(file: DbFile) -> Result<Self, StoreError> {
        let store = Self {
            file: Arc::new(file),
        };
        let txn = store.begin_write()?;
        {
            txn.open_table(META)?;
            txn.open_table(DOCS)?;
            txn.open_table(CACHE)?;
            txn.open_table(APPLIED)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(REFUSED)?;
            // This store's random instance id, made once with the store (or
            // on the first open of a store that predates it).
            let mut docs = txn.open_table(DOCS)?;
            if docs.get(KEY_INSTANCE)?.is_none() {
                let id = encode("instance id", &InstanceId::generate())?;
                docs.insert(KEY_INSTANCE, id.as_slice())?;
            }
        }
        store.commit(txn, "create the tables of")?;
        Ok(store)
    }

    /// Begins a write transaction (reopening the file after a failed write).
    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        Ok(self.file.begin_write()?)
    }

    /// Begins a read transaction.
    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        Ok(self.file.begin_read()?)
    }

    /// Commits `txn`; `action` says what it writes ("write the outbox to"),
    /// for the report of a refused write.
    fn commit(&self, txn: redb::WriteTransaction, action: &str) -> Result<(), StoreError> {
        Ok(self.file.commit(txn, action)?)
    }

    /// This store's instance id: random, made with the store and kept
    /// across restarts (uplink envelopes carry it; see
    /// [`margo_schemas::messages::Ack::instance`]).
    pub fn instance_id(&self) -> Result<InstanceId, StoreError> {
        self.doc(KEY_INSTANCE)?.ok_or_else(|| StoreError::Corrupt {
            table: "docs",
            key: KEY_INSTANCE.to_string(),
            reason: "missing".to_string(),
        })
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(key)?.map(|v| v.value()))
    }

    fn doc<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(DOCS)?;
        let Some(v) = table.get(key)? else {
            return Ok(None);
        };
        decode("docs", key, v.value()).map(Some)
    }

    /// The accepted manifest, if any.
    pub fn accepted_manifest(&self) -> Result<Option<AcceptedManifest>, StoreError> {
        self.doc(KEY_ACCEPTED)
    }

    /// Records `accepted` as the accepted manifest (committed on return).
    pub fn set_accepted_manifest(&self, accepted: &AcceptedManifest) -> Result<(), StoreError> {
        let bytes = encode("manifest", accepted)?;
        let txn = self.begin_write()?;
        txn.open_table(DOCS)?
            .insert(KEY_ACCEPTED, bytes.as_slice())?;
        self.commit(txn, "write the accepted manifest to")?;
        Ok(())
    }

    /// The last manifest version fully applied (0 = none).
    pub fn adopted_version(&self) -> Result<u64, StoreError> {
        Ok(self.meta(KEY_ADOPTED)?.unwrap_or(0))
    }

    /// Records `version` as adopted and clears failed-attempt bookkeeping.
    pub fn set_adopted(&self, version: u64) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        txn.open_table(META)?.insert(KEY_ADOPTED, version)?;
        txn.open_table(DOCS)?.remove(KEY_RETRY)?;
        self.commit(txn, "write the adopted version to")?;
        Ok(())
    }

    /// Digest of the capabilities reports last enqueued, if any.
    pub fn capabilities_digest(&self) -> Result<Option<Digest>, StoreError> {
        self.doc(KEY_CAPABILITIES)
    }

    /// Records the digest of the capabilities reports just enqueued.
    pub fn set_capabilities_digest(&self, digest: &Digest) -> Result<(), StoreError> {
        let bytes = encode("capabilities digest", digest)?;
        let txn = self.begin_write()?;
        txn.open_table(DOCS)?
            .insert(KEY_CAPABILITIES, bytes.as_slice())?;
        self.commit(txn, "write the capabilities digest to")?;
        Ok(())
    }

    /// The last remote config accepted from the manager, if any.
    pub fn remote_config(&self) -> Result<Option<DeviceConfig>, StoreError> {
        self.doc(KEY_REMOTE_CONFIG)
    }

    /// Records `config` as the remote config in force (committed on return).
    pub fn set_remote_config(&self, config: &DeviceConfig) -> Result<(), StoreError> {
        let bytes = encode("remote config", config)?;
        let txn = self.begin_write()?;
        txn.open_table(DOCS)?
            .insert(KEY_REMOTE_CONFIG, bytes.as_slice())?;
        self.commit(txn, "write the remote config to")?;
        Ok(())
    }

    /// The `ETag` of the HTTP manifest last accepted (HTTP transport), sent
    /// back as `If-None-Match`.
    pub fn http_etag(&self) -> Result<Option<String>, StoreError> {
        self.doc(KEY_HTTP_ETAG)
    }

    /// Records the `ETag` of the HTTP manifest whose content was verified and
    /// accepted (committed on return).
    pub fn set_http_etag(&self, etag: &str) -> Result<(), StoreError> {
        let bytes = encode("http etag", &etag)?;
        let txn = self.begin_write()?;
        txn.open_table(DOCS)?
            .insert(KEY_HTTP_ETAG, bytes.as_slice())?;
        self.commit(txn, "write the HTTP ETag to")?;
        Ok(())
    }

    /// Failed-attempt bookkeeping, if the current manifest has failed.
    pub fn retry_state(&self) -> Result<Option<RetryState>, StoreError> {
        self.doc(KEY_RETRY)
    }

    /// Replaces the failed-attempt bookkeeping.
    pub fn set_retry_state(&self, retry: Option<&RetryState>) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(DOCS)?;
            match retry {
                Some(r) => {
                    let bytes = encode("retry", r)?;
                    table.insert(KEY_RETRY, bytes.as_slice())?;
                }
                None => {
                    table.remove(KEY_RETRY)?;
                }
            }
        }
        self.commit(txn, "write the retry state to")?;
        Ok(())
    }

    /// Caches a verified document under its digest.
    pub fn cache_put(&self, doc: &ApplicationDeployment, now_ms: u64) -> Result<(), StoreError> {
        let bytes = encode(
            "cache",
            &CachedDoc {
                yaml: doc.bytes().to_vec(),
                cached_at_ms: now_ms,
            },
        )?;
        let txn = self.begin_write()?;
        txn.open_table(CACHE)?
            .insert(doc.digest().as_bytes().as_slice(), bytes.as_slice())?;
        self.commit(txn, "cache a deployment document in")?;
        Ok(())
    }

    /// Whether a document with `digest` is cached.
    pub fn cache_contains(&self, digest: &Digest) -> Result<bool, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CACHE)?;
        Ok(table.get(digest.as_bytes().as_slice())?.is_some())
    }

    /// The cached document with `digest`, parsed and re-verified.
    pub fn cache_get(&self, digest: &Digest) -> Result<Option<ApplicationDeployment>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CACHE)?;
        let Some(v) = table.get(digest.as_bytes().as_slice())? else {
            return Ok(None);
        };
        let key = digest.to_string();
        let cached: CachedDoc = decode("yaml_cache", &key, v.value())?;
        ApplicationDeployment::parse_verified(cached.yaml, digest)
            .map(Some)
            .map_err(|e: VerifiedParseError| StoreError::Corrupt {
                table: "yaml_cache",
                key,
                reason: e.to_string(),
            })
    }

    /// Records that the document with `digest` (listed as `id`) was judged unusable.
    pub fn refused_put(
        &self,
        digest: &Digest,
        id: &DeploymentId,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let reason: String = reason.chars().take(1000).collect();
        let bytes = encode(
            "refused",
            &RefusedDoc {
                id: id.clone(),
                reason,
                refused_at_ms: now_ms,
            },
        )?;
        let txn = self.begin_write()?;
        txn.open_table(REFUSED)?
            .insert(digest.as_bytes().as_slice(), bytes.as_slice())?;
        self.commit(txn, "record a refused document in")?;
        Ok(())
    }

    /// The verdict on the document with `digest`, if it was judged unusable.
    pub fn refused_get(&self, digest: &Digest) -> Result<Option<RefusedDoc>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(REFUSED)?;
        let Some(v) = table.get(digest.as_bytes().as_slice())? else {
            return Ok(None);
        };
        decode("refused_docs", &digest.to_string(), v.value()).map(Some)
    }

    /// Whether the document with `digest` is cached or was judged unusable:
    /// either way it needs no download.
    pub fn judged(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.cache_contains(digest)? || self.refused_get(digest)?.is_some())
    }

    /// Removes cached documents not in `keep` and cached before `older_than_ms`
    /// (and verdicts on unusable documents likewise).
    pub fn cache_gc(
        &self,
        keep: &BTreeSet<Digest>,
        older_than_ms: u64,
    ) -> Result<usize, StoreError> {
        let txn = self.begin_write()?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(CACHE)?;
            let mut doomed = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                let key = k.value().to_vec();
                let keep_it = <[u8; 32]>::try_from(key.as_slice())
                    .ok()
                    .is_some_and(|raw| keep.iter().any(|d| d.as_bytes() == &raw));
                if keep_it {
                    continue;
                }
                let old = codec::decode::<CachedDoc>(v.value(), MAX_RECORD)
                    .map(|c| c.cached_at_ms < older_than_ms)
                    .unwrap_or(true);
                if old {
                    doomed.push(key);
                }
            }
            for key in doomed {
                table.remove(key.as_slice())?;
                removed += 1;
            }
            let mut refused = txn.open_table(REFUSED)?;
            let mut doomed = Vec::new();
            for item in refused.iter()? {
                let (k, v) = item?;
                let key = k.value().to_vec();
                let keep_it = <[u8; 32]>::try_from(key.as_slice())
                    .ok()
                    .is_some_and(|raw| keep.iter().any(|d| d.as_bytes() == &raw));
                let old = codec::decode::<RefusedDoc>(v.value(), MAX_RECORD)
                    .map(|r| r.refused_at_ms < older_than_ms)
                    .unwrap_or(true);
                if !keep_it && old {
                    doomed.push(key);
                }
            }
            for key in doomed {
                refused.remove(key.as_slice())?;
            }
        }
        self.commit(txn, "prune the document cache in")?;
        Ok(removed)
    }

    /// Applied state of every deployment the agent holds.
    pub fn applied(&self) -> Result<BTreeMap<DeploymentId, AppliedRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(APPLIED)?;
        let mut out = BTreeMap::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let key = k.value();
            let id = DeploymentId::new(key).map_err(|e| StoreError::Corrupt {
                table: "applied",
                key: key.to_string(),
                reason: e.to_string(),
            })?;
            out.insert(id, decode("applied", key, v.value())?);
        }
        Ok(out)
    }

    /// Applied state of one deployment.
    pub fn applied_get(&self, id: &DeploymentId) -> Result<Option<AppliedRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(APPLIED)?;
        let Some(v) = table.get(id.as_str())? else {
            return Ok(None);
        };
        decode("applied", id.as_str(), v.value()).map(Some)
    }

    /// Writes the applied state of one deployment (committed on return).
    pub fn put_applied(&self, id: &DeploymentId, record: &AppliedRecord) -> Result<(), StoreError> {
        let bytes = encode("applied", record)?;
        let txn = self.begin_write()?;
        txn.open_table(APPLIED)?
            .insert(id.as_str(), bytes.as_slice())?;
        self.commit(txn, "write applied state to")?;
        Ok(())
    }

    /// Forgets a deployment (after its removal is recorded).
    pub fn remove_applied(&self, id: &DeploymentId) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        txn.open_table(APPLIED)?.remove(id.as_str())?;
        self.commit(txn, "remove applied state from")?;
        Ok(())
    }

    /// The outbox: next seq to assign (≥ 1) and every pending entry in seq order.
    pub fn outbox_load(&self) -> Result<(u64, Vec<(u64, OutboxRecord)>), StoreError> {
        let txn = self.begin_read()?;
        let next = txn
            .open_table(META)?
            .get(KEY_NEXT_SEQ)?
            .map(|v| v.value())
            .unwrap_or(1)
            .max(1);
        let table = txn.open_table(OUTBOX)?;
        let mut entries = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let seq = k.value();
            entries.push((seq, decode("outbox", &seq.to_string(), v.value())?));
        }
        Ok((next, entries))
    }

    /// One pending outbox entry.
    pub fn outbox_get(&self, seq: u64) -> Result<Option<OutboxRecord>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let Some(v) = table.get(seq)? else {
            return Ok(None);
        };
        decode("outbox", &seq.to_string(), v.value()).map(Some)
    }

    /// In one transaction: removes `remove`, inserts `insert`, and sets the next seq.
    pub fn outbox_commit(
        &self,
        insert: Option<(u64, &OutboxRecord)>,
        remove: &[u64],
        next_seq: u64,
    ) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(OUTBOX)?;
            for seq in remove {
                table.remove(*seq)?;
            }
            if let Some((seq, record)) = insert {
                let bytes = encode("outbox", record)?;
                table.insert(seq, bytes.as_slice())?;
            }
            txn.open_table(META)?.insert(KEY_NEXT_SEQ, next_seq)?;
        }
        self.commit(txn, "write the outbox to")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use margo_schemas::manifest::DeploymentRef;

    pub(crate) const DOC: &str = "apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: d1
  name: app
spec:
  deploymentProfile:
    type: compose
    components:
      - name: web
        properties: {}
";

    fn everything(store: &Store) {
        let doc = ApplicationDeployment::parse(DOC.as_bytes().to_vec()).unwrap();
        store.cache_put(&doc, 5).unwrap();
        let manifest = StateManifest {
            manifest_version: 3,
            bundle: None,
            deployments: vec![DeploymentRef {
                deployment_id: doc.id.clone(),
                digest: doc.digest(),
                size_bytes: None,
                url: None,
            }],
        };
        store
            .set_accepted_manifest(&AcceptedManifest::new(manifest).unwrap())
            .unwrap();
        store.set_adopted(2).unwrap();
        store
            .put_applied(
                &doc.id,
                &AppliedRecord {
                    running: Some(doc.digest()),
                    state: DeploymentState::Installed,
                    intent: Some(Intent {
                        action: Action::Update,
                        target: Some(doc.digest()),
                        manifest_version: 3,
                    }),
                    error: None,
                },
            )
            .unwrap();
        let record = OutboxRecord {
            topic: "t".into(),
            kind: "state".into(),
            deployment: None,
            low: 1,
            payload: vec![1, 2, 3],
        };
        store.outbox_commit(Some((1, &record)), &[], 2).unwrap();
        store
            .set_retry_state(Some(&RetryState {
                manifest_version: 3,
                attempts: 2,
                failed_at_ms: 9,
            }))
            .unwrap();
    }

    fn check(store: &Store) {
        let doc = ApplicationDeployment::parse(DOC.as_bytes().to_vec()).unwrap();
        assert_eq!(store.cache_get(&doc.digest()).unwrap().unwrap(), doc);
        assert_eq!(store.accepted_manifest().unwrap().unwrap().version(), 3);
        assert_eq!(store.adopted_version().unwrap(), 2);
        let applied = store.applied().unwrap();
        assert_eq!(
            applied[&doc.id].intent.as_ref().unwrap().action,
            Action::Update
        );
        let (next, entries) = store.outbox_load().unwrap();
        assert_eq!(next, 2);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].1.payload, vec![1, 2, 3]);
        assert_eq!(store.retry_state().unwrap().unwrap().attempts, 2);
    }

    #[test]
    fn everything_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.redb");
        let instance = {
            let store = Store::open(&path).unwrap();
            everything(&store);
            store.instance_id().unwrap()
        };
        let store = Store::open(&path).unwrap();
        check(&store);
        assert_eq!(
            store.instance_id().unwrap(),
            instance,
            "the instance id is kept across restarts"
        );
        assert_ne!(
            Store::in_memory().unwrap().instance_id().unwrap(),
            instance,
            "another store, another instance"
        );
        store.set_adopted(3).unwrap();
        assert!(
            store.retry_state().unwrap().is_none(),
            "adoption clears retries"
        );
    }

    #[test]
    fn in_memory_store_is_shared_by_clones() {
        let store = Store::in_memory().unwrap();
        everything(&store.clone());
        check(&store);
    }

    #[test]
    fn cache_gc_keeps_referenced_and_recent() {
        let store = Store::in_memory().unwrap();
        let a = ApplicationDeployment::parse(DOC.as_bytes().to_vec()).unwrap();
        let b = ApplicationDeployment::parse(DOC.replace("name: app", "name: app2").into_bytes())
            .unwrap();
        let c = ApplicationDeployment::parse(DOC.replace("name: app", "name: app3").into_bytes())
            .unwrap();
        store.cache_put(&a, 10).unwrap();
        store.cache_put(&b, 10).unwrap();
        store.cache_put(&c, 100).unwrap();
        let keep = BTreeSet::from([a.digest()]);
        assert_eq!(store.cache_gc(&keep, 50).unwrap(), 1);
        assert!(store.cache_contains(&a.digest()).unwrap());
        assert!(!store.cache_contains(&b.digest()).unwrap());
        assert!(store.cache_contains(&c.digest()).unwrap());
    }
}
