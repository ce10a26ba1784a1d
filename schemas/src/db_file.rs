//! A redb database file that outlives a failed write (feature `db-file`;
//! the manager's and the agent's stores are built on it).
//!
//! redb latches an I/O error met while writing (no space left on the device,
//! a read-only file system, EIO): every later transaction on that `Database`
//! fails with `StorageError::PreviousIo` until the handle is closed and the
//! file opened again, which runs redb's recovery back to the last committed
//! state (redb 4.6, `db.rs` and `cached_file.rs`). [`DbFile`] does that by
//! itself: the first transaction after such a failure gives the handle up,
//! and the file is reopened once no transaction holds the old handle, at
//! most once per backoff step (0.2 s doubling to 5 s) while the file stays
//! unwritable. A process so goes on by itself once space returns. Until
//! then each write fails with [`Unavailable`] (its caller acknowledges
//! nothing and keeps what it could not store).
//!
//! The first refused write is logged once at ERROR (the file, what was being
//! written and why: "no space left on the device", "read-only file
//! system"), later ones only counted, and the recovery once at INFO, when a
//! write succeeds 10 s or more after the last refused one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use redb::{
    Database, ReadTransaction, ReadableDatabase, StorageError, TransactionError, WriteTransaction,
};

/// First wait before reopening the file after a failure.
const REOPEN_MIN: Duration = Duration::from_millis(200);
/// Longest wait between two reopen attempts.
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// How long after the last refused write a successful one ends the episode.
const QUIET: Duration = Duration::from_secs(10);

/// A database file, reopened after a latched I/O error.
pub struct DbFile {
    /// `None` for a database on another backend (in memory): never reopened.
    path: Option<PathBuf>,
    cache_size: Option<usize>,
    slot: Mutex<Slot>,
    /// Set while writes fail (see [`Failing`]).
    failing: Mutex<Option<Failing>>,
}

/// A storage failure episode: from the first refused write until a write
/// succeeds [`QUIET`] after the last refused one. Small writes may succeed
/// on a full disk (redb reuses pages the file already holds) while large
/// ones fail: one episode, reported once, not a flapping report.
struct Failing {
    since: Instant,
    last: Instant,
    refused: u64,
}

struct Slot {
    current: Option<Arc<Database>>,
    /// The handle given up last: the file is not opened again while a
    /// transaction still holds it.
    retired: Weak<Database>,
    /// No reopen before this instant.
    not_before: Option<Instant>,
    /// The wait after the next failure.
    wait: Duration,
    /// The last storage failure, answered while waiting to reopen.
    last: Option<(io::ErrorKind, String)>,
}

/// A [`DbFile`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file system refused it (see [`Unavailable`]).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// redb failed otherwise (corruption, a bug).
    #[error(transparent)]
    Other(#[from] redb::Error),
}

/// The database file cannot be written (or read) now: no space left on the
/// device, a read-only file system, an I/O error. Nothing was written; the
/// same call may succeed later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} the store {path}: {detail}")]
pub struct Unavailable {
    /// What was being done ("write the outbox to", ...).
    pub action: String,
    /// The database file.
    pub path: String,
    /// The storage error in words ("no space left on the device", ...).
    pub detail: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DbFile {
    /// Opens (or creates) the database file at `path`; `cache_size` as
    /// redb's `Builder::set_cache_size` (None: redb's default).
    pub fn open(path: &Path, cache_size: Option<usize>) -> Result<Self, redb::DatabaseError> {
        let db = build(cache_size).create(path)?;
        Ok(Self::with(Some(path.to_path_buf()), cache_size, db))
    }

    /// A database on another backend (in memory): never reopened.
    pub fn from_database(db: Database) -> Self {
        Self::with(None, None, db)
    }

    fn with(path: Option<PathBuf>, cache_size: Option<usize>, db: Database) -> Self {
        Self {
            path,
            cache_size,
            slot: Mutex::new(Slot {
                current: Some(Arc::new(db)),
                retired: Weak::new(),
                not_before: None,
                wait: REOPEN_MIN,
                last: None,
            }),
            failing: Mutex::new(None),
        }
    }

    /// The file's path (None in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Begins a write transaction, on a reopened file if an earlier write
    /// latched an I/O error.
    pub fn begin_write(&self) -> Result<WriteTransaction, DbError> {
        self.begin(|db| db.begin_write())
            .map_err(|e| self.failed(e, "begin a write in"))
    }

    /// Begins a read transaction (on a reopened file like [`Self::begin_write`]).
    pub fn begin_read(&self) -> Result<ReadTransaction, DbError> {
        self.begin(|db| db.begin_read()).map_err(|e| {
            if is_storage_failure(&e) {
                DbError::Unavailable(self.unavailable(&e, "read"))
            } else {
                DbError::Other(e)
            }
        })
    }

    /// Commits `txn`; `action` says what it writes ("write the outbox to"),
    /// for the report of a refused write.
    pub fn commit(&self, txn: WriteTransaction, action: &str) -> Result<(), DbError> {
        match txn.commit() {
            Ok(()) => {
                lock(&self.slot).wait = REOPEN_MIN;
                let mut failing = lock(&self.failing);
                if let Some(f) = failing.as_ref().filter(|f| f.last.elapsed() >= QUIET) {
                    tracing::info!(
                        path = %self.shown_path(),
                        refused = f.refused,
                        after = ?f.since.elapsed(),
                        "the store is writable again"
                    );
                    *failing = None;
                }
                Ok(())
            }
            Err(e) => Err(self.failed(e.into(), action)),
        }
    }

    /// A transaction begun by `begin` on the current handle; on one that
    /// latched an I/O error, the handle is given up and the file reopened
    /// (when its backoff allows).
    fn begin<T>(
        &self,
        begin: impl Fn(&Database) -> Result<T, TransactionError>,
    ) -> Result<T, redb::Error> {
        let db = self.database()?;
        match begin(&db) {
            Err(TransactionError::Storage(StorageError::PreviousIo)) => {
                self.retire(&db);
                drop(db);
                Ok(begin(&*self.database()?)?)
            }
            other => Ok(other?),
        }
    }

    /// A write that failed with `error`: a storage failure is logged once
    /// until writes work again (with the first thing that could not be
    /// written), then only counted.
    fn failed(&self, error: redb::Error, action: &str) -> DbError {
        if !is_storage_failure(&error) {
            return DbError::Other(error);
        }
        if let redb::Error::Io(io) = &error {
            lock(&self.slot).last = Some((io.kind(), io.to_string()));
        }
        let refused = self.unavailable(&error, action);
        let mut failing = lock(&self.failing);
        let now = Instant::now();
        match failing.as_mut() {
            Some(f) => {
                f.refused += 1;
                f.last = now;
            }
            None => {
                *failing = Some(Failing {
                    since: now,
                    last: now,
                    refused: 1,
                });
                tracing::error!(
                    path = %refused.path,
                    "{refused}; nothing that could not be stored is acknowledged or dropped, \
                     and writes are retried until the file system accepts them"
                );
            }
        }
        DbError::Unavailable(refused)
    }

    /// The open database, the file reopened if the handle was given up.
    fn database(&self) -> Result<Arc<Database>, redb::Error> {
        let mut slot = lock(&self.slot);
        if let Some(db) = &slot.current {
            return Ok(Arc::clone(db));
        }
        let Some(path) = &self.path else {
            return Err(redb::Error::PreviousIo);
        };
        if slot.not_before.is_some_and(|t| Instant::now() < t) {
            return Err(match &slot.last {
                Some((kind, text)) => redb::Error::Io(io::Error::new(*kind, text.clone())),
                None => redb::Error::PreviousIo,
            });
        }
        if slot.retired.strong_count() > 0 {
            // A transaction of the old handle is still running; a later call reopens.
            return Err(redb::Error::PreviousIo);
        }
        match build(self.cache_size).create(path) {
            Ok(db) => {
                let db = Arc::new(db);
                slot.current = Some(Arc::clone(&db));
                slot.not_before = None;
                Ok(db)
            }
            Err(e) => {
                let e = redb::Error::from(e);
                if let redb::Error::Io(io) = &e {
                    slot.last = Some((io.kind(), io.to_string()));
                }
                backoff(&mut slot);
                Err(e)
            }
        }
    }

    /// Gives up `db` after a latched I/O error (if it is still the current one).
    fn retire(&self, db: &Arc<Database>) {
        if self.path.is_none() {
            return;
        }
        let mut slot = lock(&self.slot);
        if slot.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, db)) {
            slot.retired = Arc::downgrade(db);
            slot.current = None;
            backoff(&mut slot);
        }
    }

    fn unavailable(&self, error: &redb::Error, action: &str) -> Unavailable {
        Unavailable {
            action: action.to_string(),
            path: self.shown_path(),
            detail: describe(error),
        }
    }

    fn shown_path(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "(in memory)".to_string(), |p| p.display().to_string())
    }
}

/// No reopen for the current wait, which doubles (up to [`REOPEN_MAX`])
/// until a commit succeeds.
fn backoff(slot: &mut Slot) {
    slot.not_before = Some(Instant::now() + slot.wait);
    slot.wait = (slot.wait * 2).min(REOPEN_MAX);
}

fn build(cache_size: Option<usize>) -> redb::Builder {
    let mut builder = Database::builder();
    if let Some(bytes) = cache_size {
        builder.set_cache_size(bytes);
    }
    builder
}

/// Whether `error` says the file cannot be written now (no space, read-only,
/// an I/O error, or the file being reopened after one) rather than a fault
/// of the data or the program: such a call may succeed later.
pub fn is_storage_failure(error: &redb::Error) -> bool {
    matches!(
        error,
        redb::Error::Io(_)
            | redb::Error::PreviousIo
            | redb::Error::DatabaseClosed
            | redb::Error::DatabaseAlreadyOpen
    )
}

/// `error` in words for an operator: "no space left on the device" or
/// "read-only file system" when it is one of those, else redb's text.
pub fn describe(error: &redb::Error) -> String {
    match error {
        redb::Error::Io(io) => match io.kind() {
            io::ErrorKind::StorageFull => "no space left on the device".to_string(),
            io::ErrorKind::ReadOnlyFilesystem => "read-only file system".to_string(),
            _ => format!("I/O error: {io}"),
        },
        redb::Error::PreviousIo => {
            "an earlier write failed; the file is reopened once it can be".to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[test]
    fn storage_failures_are_named_for_an_operator() {
        let full = redb::Error::Io(io::Error::from_raw_os_error(28));
        let read_only = redb::Error::Io(io::Error::from_raw_os_error(30));
        assert!(is_storage_failure(&full) && is_storage_failure(&read_only));
        assert!(is_storage_failure(&redb::Error::PreviousIo));
        assert_eq!(describe(&full), "no space left on the device");
        assert_eq!(describe(&read_only), "read-only file system");
        assert!(!is_storage_failure(&redb::Error::Corrupted("x".into())));
    }

    #[test]
    fn a_file_survives_reopen_and_commits_reset_the_backoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.redb");
        let file = DbFile::open(&path, None).expect("open");
        let txn = file.begin_write().expect("write");
        txn.open_table(T)
            .expect("table")
            .insert(1, 2)
            .expect("insert");
        file.commit(txn, "write a row to").expect("commit");
        // Give the handle up as after a latched error: the next call reopens.
        let db = file.database().expect("db");
        file.retire(&db);
        drop(db);
        lock(&file.slot).not_before = None;
        let txn = file.begin_read().expect("read after reopen");
        let value = txn.open_table(T).expect("table").get(1).expect("get");
        assert_eq!(value.map(|v| v.value()), Some(2));
        assert_eq!(lock(&file.slot).wait, REOPEN_MIN * 2);
        drop(txn);
        let txn = file.begin_write().expect("write");
        file.commit(txn, "write nothing to").expect("commit");
        assert_eq!(lock(&file.slot).wait, REOPEN_MIN);
    }
}
