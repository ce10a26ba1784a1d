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

use std::path::Path;
use std::sync::Arc;

use margo_schemas::ids::{ClientId, DeploymentId};
use redb::{Database, ReadableDatabase};
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
    /// redb failed (I/O, corruption, ...).
    #[error("database: {0}")]
    Database(#[from] redb::Error),
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
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

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
    db: Arc<Database>,
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
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
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
        txn.commit()?;
        Ok(Self {
            db: Arc::new(db),
            clock,
            clone_rule: margo_broker::CloneRule::default(),
        })
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
            if Arc::strong_count(&self.db) == 1 {
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
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let out = f(&WriteTxn(&txn))?;
        txn.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Runs `f` on one consistent snapshot of the store.
    pub(crate) fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&ReadTxn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = self.db.begin_read().map_err(StoreError::from)?;
        f(&ReadTxn(&txn))
    }
}

/// A write transaction handed out by [`Store::write`]; its accessors live
/// with their table family.
pub(crate) struct WriteTxn<'a>(&'a redb::WriteTransaction);

/// A read transaction handed out by [`Store::read`].
pub(crate) struct ReadTxn<'a>(&'a redb::ReadTransaction);
