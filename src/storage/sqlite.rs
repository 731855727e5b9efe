//! The SQLite adapter: the embedded, one-node default. WAL for concurrent readers; one
//! write connection, so writers queue in order (FIFO) instead of spinning on SQLITE_BUSY;
//! `BEGIN IMMEDIATE` takes the database write lock up front. Wake-ups are in-process.

use super::rows::{self, impl_store, impl_write_tx};
use super::{Backend, Change, Result, StoreError, StoredMachine};
use crate::domain::entity::Entity;
use crate::domain::lease::{Lease, LeaseRow};
use crate::domain::names::{DedupKey, EntityId, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::StoredEvent;
use crate::domain::time::{Clock, Timestamp};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::broadcast;

/// SQLite store.
pub struct SqliteStore {
    write_pool: SqlitePool,
    read_pool: SqlitePool,
    clock: Clock,
    changes: broadcast::Sender<Change>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs migrations.
    pub async fn connect(url: &str, clock: Clock) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged write survives a crash of the process and of the host (I11).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Config(format!("cannot open SQLite database {url:?}: {e}")))?;
        sqlx::migrate!("migrations/sqlite").run(&write_pool).await?;
        let read_pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| StoreError::Config(format!("cannot open SQLite database {url:?}: {e}")))?;
        let (changes, _) = broadcast::channel(4096);
        Ok(Self {
            write_pool,
            read_pool,
            clock,
            changes,
        })
    }

    async fn begin_impl(&self, _lock_key: i64) -> Result<SqliteTx> {
        // The single write connection is the lock: every writer of every key waits here.
        let tx = self.write_pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(SqliteTx {
            tx,
            now: self.clock.now(),
            pending: Vec::new(),
            changes: self.changes.clone(),
        })
    }

    async fn now_impl(&self) -> Result<Timestamp> {
        Ok(self.clock.now())
    }

    async fn is_housekeeper_impl(&self) -> Result<bool> {
        Ok(true)
    }

    async fn close_impl(&self) {
        self.read_pool.close().await;
        self.write_pool.close().await;
    }
}

impl_store!(SqliteStore, Sqlite, Backend::Sqlite, |n| format!(
    "json_extract(fields, '$.' || ${n}) IS NOT NULL"
));

/// A SQLite write transaction; its changes are announced after commit.
pub struct SqliteTx {
    tx: sqlx::Transaction<'static, Sqlite>,
    now: Timestamp,
    pending: Vec<Change>,
    changes: broadcast::Sender<Change>,
}

impl SqliteTx {
    async fn lock_shared_impl(&mut self, _lock_key: i64) -> Result<()> {
        Ok(())
    }

    async fn publish_impl(&mut self, change: Change) -> Result<()> {
        self.pending.push(change);
        Ok(())
    }

    async fn commit_impl(self) -> Result<()> {
        self.tx.commit().await?;
        for change in self.pending {
            let _ = self.changes.send(change);
        }
        Ok(())
    }
}

impl_write_tx!(SqliteTx, Sqlite, rows::SELECT_LEASE);
