//! The manager's redb store: persistence only, one module per table family.
//!
//! - [`clients`]: clients, their names, keys and certificates.
//! - [`desired`]: desired state (deployments, manifest versions, blobs,
//!   assignments) and remote config.
//! - [`uplink`]: ingest of uplink batches (seq window, history, latest
//!   status and state, presence).
//! - [`reports`]: capabilities, and reports delivered over HTTP.
//! - [`onboarding`]: onboarding requests and enrollment tokens.
//! - [`audit`]: security events.
//!
//! Synchronous (redb is); async code calls it through [`Store::run`], which
//! moves the work onto tokio's blocking pool. Every mutating call is one
//! write transaction; ingest writes a whole batch in one transaction.
//!
//! A write the file system refuses (no space left, read-only, I/O error)
//! fails as [`StoreError::Unavailable`], is logged once (with the first
//! thing that could not be written) until writes work again, and the
//! database file is reopened by the next call once it can be
//! ([`margo_schemas::db_file`]): callers acknowledge nothing that failed and
//! their senders retry.

use std::path::Path;
use std::sync::Arc;

use margo_schemas::db_file::{self, DbFile};
use margo_schemas::ids::{ClientId, DeploymentId};
use serde::{de::DeserializeOwned, Serialize};

use crate::clock::Clock;

mod audit;
mod clients;
mod desired;
mod instances;
mod onboarding;
mod reports;
mod snapshot;
#[cfg(test)]
pub(crate) mod tests;
mod uplink;

pub use audit::{AuditEvent, MAX_AUDIT_EVENTS};
pub use clients::{key_id, key_id_of_cert, validate_name, ClientEntry, ClientRecord, MAX_NAME_LEN};
pub use desired::{desired_version, DeployOutcome, DesiredDeployment, DesiredState, RemoteConfig};
pub use instances::InstanceClone;
pub(crate) use onboarding::TokenRecord;
pub use onboarding::{Claims, RequestRecord};
pub use reports::{CapabilitiesEntry, ReportError, ReportOutcome, MAX_CAPABILITIES_HISTORY};
pub(crate) use snapshot::ClientSnapshot;
pub use uplink::{BatchResult, IngestOutcome, StoredUplink, UplinkItem, UplinkSummary};

/// Everything the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (corruption, a bug, ...; see [`StoreError::Unavailable`] for I/O).
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    /// The database file cannot be written (or read) now: no space left on
    /// the device, a read-only file system, an I/O error. Nothing was
    /// written; the same call may succeed later.
    #[error(transparent)]
    Unavailable(#[from] db_file::Unavailable),
    /// A stored record does not decode (corruption or an incompatible version).
    #[error("stored {table} record is unreadable: {detail}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode a {table} record: {detail}")]
    Encode {
        /// Table name.
        table: &'static str,
        /// Encoder message.
        detail: String,
    },
    /// No client with that id or name.
    #[error("no client {0:?}")]
    UnknownClient(String),
    /// The client is revoked.
    #[error("client {0} is revoked")]
    Revoked(ClientId),
    /// The name is already used by another client.
    #[error("the name {0:?} is already taken")]
    NameTaken(String),
    /// The name is not acceptable.
    #[error("name: {0}")]
    InvalidName(String),
    /// The client id already exists.
    #[error("client {0} already exists")]
    ClientExists(ClientId),
    /// The deployment is not assigned to the client.
    #[error("deployment {deployment} is not assigned to client {client}")]
    NotDeployed {
        /// The client.
        client: ClientId,
        /// The deployment.
        deployment: DeploymentId,
    },
    /// More deployments than a manifest may hold.
    #[error("client {client} would have {count} deployments, the limit is {max}")]
    TooManyDeployments {
        /// The client.
        client: ClientId,
        /// How many it would have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The blocking task running a store call failed.
    #[error("store task failed: {0}")]
    Task(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Database(e.into())
            }
        }
    )*};
}
impl From<db_file::DbError> for StoreError {
    fn from(e: db_file::DbError) -> Self {
        match e {
            db_file::DbError::Unavailable(u) => Self::Unavailable(u),
            db_file::DbError::Other(e) => Self::Database(e),
        }
    }
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    /// Whether the storage refused the call (full, read-only, I/O error)
    /// rather than the data or the request being wrong: it may work later.
    pub fn is_unavailable(&self) -> bool {
        self.storage_failure().is_some()
    }

    /// The storage error in words ("no space left on the device", ...) when
    /// [`Self::is_unavailable`], without the file's path.
    pub fn storage_failure(&self) -> Option<String> {
        match self {
            Self::Unavailable(u) => Some(u.detail.clone()),
            Self::Database(e) if db_file::is_storage_failure(e) => Some(db_file::describe(e)),
            _ => None,
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>> {
    margo_schemas::codec::encode(value).map_err(|e| StoreError::Encode {
        table,
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T> {
    margo_schemas::codec::decode(bytes, usize::MAX).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// Milliseconds since the Unix epoch on the system clock (the store itself
/// reads [`Store::clock`]).
pub fn now_ms() -> u64 {
    crate::clock::system_now_ms()
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    file: Arc<DbFile>,
    /// Stamps every timestamp the store writes; decisions on time (token
    /// expiry, availability) read it too.
    clock: Clock,
    /// When uplink switching between agent stores is a suspected clone.
    clone_rule: margo_broker::CloneRule,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database file and its tables, on the system clock.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_clock(path, Clock::system())
    }

    /// [`Store::open`], reading time from `clock`.
    pub fn open_with_clock(path: &Path, clock: Clock) -> Result<Self> {
        // redb would create the file with the umask's mode: it holds the
        // fleet's state, so 0600 first (an existing file is set to 0600 too).
        margo_schemas::private_fs::prepare_file(path).map_err(|e| {
            redb::Error::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        })?;
        let file = DbFile::open(path, None)?;
        let store = Self {
            file: Arc::new(file),
            clock,
            clone_rule: margo_broker::CloneRule::default(),
        };
        let txn = store.begin_write()?;
        {
            clients::open_tables(&txn)?;
            desired::open_tables(&txn)?;
            uplink::open_tables(&txn)?;
            instances::open_tables(&txn)?;
            reports::open_tables(&txn)?;
            audit::open_tables(&txn)?;
            onboarding::open_tables(&txn)?;
            Self::rebuild_certificate_index(&txn)?;
        }
        store.commit(txn, "create the tables of")?;
        Ok(store)
    }

    /// The rule uplink instance switches are judged by.
    pub fn clone_rule(&self) -> margo_broker::CloneRule {
        self.clone_rule
    }

    /// This store, judging uplink instance switches by `rule`
    /// (`[broker.clone_detection]`).
    pub fn with_clone_rule(mut self, rule: margo_broker::CloneRule) -> Self {
        self.clone_rule = rule;
        self
    }

    /// Waits (at most `timeout`) until this handle is the only one left:
    /// a store call on the blocking pool keeps running, holding its handle,
    /// even when the task that awaited it was cancelled at shutdown, and the
    /// database file stays locked until it finishes. True once released.
    pub async fn wait_until_sole_handle(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if Arc::strong_count(&self.file) == 1 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The clock this store stamps and decides with.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Runs `f` on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in one write transaction, committed when `f` succeeds and
    /// rolled back (nothing written) when it fails: for operations outside
    /// the store that must change several tables together (onboarding
    /// decisions). Blocking, like every store call.
    pub(crate) fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&WriteTxn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.begin_write()?;
        let out = f(&WriteTxn(&txn))?;
        self.commit(txn, "write an onboarding decision to")?;
        Ok(out)
    }

    /// Runs `f` on one consistent snapshot of the store.
    pub(crate) fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&ReadTxn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.begin_read()?;
        f(&ReadTxn(&txn))
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
}

/// A write transaction handed out by [`Store::write`]; its accessors live
/// with their table family.
pub(crate) struct WriteTxn<'a>(&'a redb::WriteTransaction);

/// A read transaction handed out by [`Store::read`].
pub(crate) struct ReadTxn<'a>(&'a redb::ReadTransaction);
