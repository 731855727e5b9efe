//! The SQLite adapter: the embedded, one-node default. WAL for concurrent readers; one
//! write connection, so writers queue in order (FIFO) instead of spinning on SQLITE_BUSY;
//! `BEGIN IMMEDIATE` takes the database write lock up front. Wake-ups are in-process.

use super::rows::{self, impl_store, impl_write_tx};
use super::{Backend, Change, First, Result, StoreError, StoreOptions, Write};
use crate::domain::entity::Entity;
use crate::domain::lease::LeaseRow;
use crate::domain::machine::StoredMachine;
use crate::domain::names::{DedupKey, EntityId, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::{Clock, Timestamp};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::broadcast;

/// SQLite store.
pub struct SqliteStore {
    write_pool: SqlitePool,
    read_pool: SqlitePool,
    clock: Clock,
    changes: broadcast::Sender<Change>,
    /// Fault injection: a pause between commit and announcement.
    pause: Option<Duration>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs migrations.
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<Self> {
        let StoreOptions { clock, faults, .. } = opts;
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
            pause: faults.pause_after_commit,
        })
    }

    async fn begin_impl(&self, _lock_key: i64, _first: First<'_>) -> Result<SqliteTx> {
        // The single write connection is the lock: every writer of every key waits here.
        let tx = self.write_pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(SqliteTx {
            tx,
            now: self.clock.now(),
            pending: Vec::new(),
            changes: self.changes.clone(),
            pause: self.pause,
        })
    }

    async fn heads_impl(&self, keys: &[(Namespace, EntityId)]) -> Result<Vec<((Namespace, EntityId), Seq)>> {
        // SQLite has no arrays: the keys travel as one JSON parameter.
        let keys: Vec<[&str; 2]> = keys.iter().map(|(n, i)| [n.as_str(), i.as_str()]).collect();
        let keys = serde_json::to_string(&keys).map_err(|e| StoreError::Internal(e.to_string()))?;
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT e.namespace, e.id, e.last_seq FROM json_each($1) AS k \
             JOIN entities e ON e.namespace = k.value ->> 0 AND e.id = k.value ->> 1",
        )
        .bind(keys)
        .fetch_all(&self.read_pool)
        .await?
        .into_iter()
        .map(rows::head)
        .collect()
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
    pause: Option<Duration>,
}

impl SqliteTx {
    // Reads are in-process: nothing is read ahead.
    fn first_entity(&mut self, _ns: &Namespace, _id: &EntityId) -> Option<Option<Entity>> {
        None
    }

    fn first_lease(&mut self, _ns: &Namespace, _key: &LeaseKey) -> Option<Option<LeaseRow>> {
        None
    }

    async fn reader(&mut self) -> Result<&mut SqliteConnection> {
        Ok(&mut *self.tx)
    }

    async fn expect_machine_impl(&mut self, _lock_key: i64, ns: &Namespace, kind: &Name, version: u64) -> Result<()> {
        // One writer at a time: nothing can change the machine before this commits.
        let stored: Option<(i64,)> = sqlx::query_as("SELECT version FROM machines WHERE namespace = $1 AND kind = $2")
            .bind(ns.as_str())
            .bind(kind.as_str())
            .fetch_optional(&mut *self.tx)
            .await?;
        match stored {
            Some((v,)) if v == rows::to_i64(version) => Ok(()),
            _ => Err(StoreError::Conflict(format!(
                "machine {kind} is no longer at version {version}"
            ))),
        }
    }

    async fn write_impl(&mut self, w: Write<'_>) -> Result<()> {
        let query = match w {
            Write::Request {
                ns,
                rid,
                method,
                outcome,
            } => sqlx::query(rows::INSERT_REQUEST)
                .bind(ns.as_str())
                .bind(rid.as_str())
                .bind(method)
                .bind(outcome)
                .bind(self.now.0),
            Write::Lease { ns, lease } => sqlx::query(rows::UPSERT_LEASE)
                .bind(ns.as_str())
                .bind(lease.key.as_str())
                .bind(rows::to_i64(lease.token))
                .bind(lease.holder.as_str())
                .bind(lease.acquired_at.0)
                .bind(lease.expires_at.0),
            Write::EndLease { ns, key } => sqlx::query(rows::END_LEASE).bind(ns.as_str()).bind(key.as_str()),
            Write::Machine { ns, m } => sqlx::query(rows::UPSERT_MACHINE)
                .bind(ns.as_str())
                .bind(m.machine.kind().as_str())
                .bind(rows::to_i64(m.version))
                .bind(rows::machine_json(m)?)
                .bind(m.defined_at.0),
            Write::InsertEntity { ns, e } => sqlx::query(rows::INSERT_ENTITY)
                .bind(ns.as_str())
                .bind(e.id.as_str())
                .bind(e.kind.as_str())
                .bind(e.state.as_str())
                .bind(rows::to_i64(e.version))
                .bind(rows::fields_json(&e.fields))
                .bind(e.dedup_key.as_ref().map(|d| d.as_str()))
                .bind(e.created_at.0)
                .bind(e.updated_at.0)
                .bind(e.last_activity_at.0)
                .bind(rows::to_i64(e.last_seq))
                .bind(e.final_seq.map(rows::to_i64)),
            Write::UpdateEntity { ns, e } => sqlx::query(rows::UPDATE_ENTITY)
                .bind(ns.as_str())
                .bind(e.id.as_str())
                .bind(e.state.as_str())
                .bind(rows::to_i64(e.version))
                .bind(rows::fields_json(&e.fields))
                .bind(e.updated_at.0)
                .bind(e.last_activity_at.0)
                .bind(rows::to_i64(e.last_seq))
                .bind(e.final_seq.map(rows::to_i64)),
            Write::Events { ns, id, events } => {
                if events.is_empty() {
                    return Ok(());
                }
                let mut qb = sqlx::QueryBuilder::<Sqlite>::new(rows::INSERT_EVENTS_PREFIX);
                qb.push_values(events, |mut b, ev| {
                    b.push_bind(ns.as_str())
                        .push_bind(id.as_str())
                        .push_bind(rows::to_i64(ev.seq))
                        .push_bind(ev.event_type.as_str())
                        .push_bind(ev.content_type.as_str())
                        .push_bind(ev.payload.as_slice())
                        .push_bind(ev.state.as_deref());
                    b.push_bind(ev.created_at.0);
                });
                qb.build().execute(&mut *self.tx).await?;
                return Ok(());
            }
        };
        match query.execute(&mut *self.tx).await {
            Ok(_) => Ok(()),
            Err(err) => Err(rows::write_error(
                err,
                match w {
                    Write::InsertEntity { e, .. } => Some(&e.id),
                    _ => None,
                },
            )),
        }
    }

    async fn publish_impl(&mut self, change: Change) -> Result<()> {
        self.pending.push(change);
        Ok(())
    }

    async fn commit_impl(self) -> Result<()> {
        self.tx.commit().await?;
        if let Some(pause) = self.pause {
            tokio::time::sleep(pause).await;
        }
        for change in self.pending {
            let _ = self.changes.send(change);
        }
        Ok(())
    }
}

impl_write_tx!(SqliteTx, Sqlite, rows::SELECT_LEASE);
