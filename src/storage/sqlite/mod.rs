//! The SQLite adapter: the embedded, one-node default. WAL for concurrent readers; one
//! write connection, so write batches queue in order instead of spinning on SQLITE_BUSY;
//! `BEGIN IMMEDIATE` takes the database's write lock up front, so every lock a batch asks
//! for is granted. A batch is one transaction, so one fsync (`synchronous=FULL`) per batch.
//! Wake-ups are in-process.

use super::decode::{self, EntityTuple, EventTuple, LeaseTuple, MachineTuple};
use super::{Backend, BatchTx, Change, DefineTx, Loaded, MachineRow, Result, Store, StoreError, StoreOptions};
use crate::domain::batch::{Lock, Reads, Writes};
use crate::domain::command::{ListEntities, ListLeases, ListMachines};
use crate::domain::entity::Entity;
use crate::domain::lease::LeaseRow;
use crate::domain::machine::StoredMachine;
use crate::domain::names::{EntityId, LeaseKey, Name, Namespace};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::{Clock, Timestamp};
use async_trait::async_trait;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;

/// SQLite store.
pub struct SqliteStore {
    write_pool: SqlitePool,
    read_pool: SqlitePool,
    clock: Clock,
    changes: broadcast::Sender<Change>,
    round_trips: Arc<AtomicU64>,
}

fn sqlx_err(e: sqlx::Error) -> StoreError {
    if StoreError::is_unique_violation(&e) {
        // Only a row that appeared outside this batch's view: decide again.
        return StoreError::Conflict(e.to_string());
    }
    e.into()
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and runs migrations.
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged write survives a crash of the process and of the host (I11).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let cannot_open = |e| StoreError::Config(format!("cannot open SQLite database {url:?}: {e}"));
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(cannot_open)?;
        sqlx::migrate!("migrations/sqlite").run(&write_pool).await?;
        let read_pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await
            .map_err(cannot_open)?;
        let (changes, _) = broadcast::channel(4096);
        Ok(Self {
            write_pool,
            read_pool,
            clock: opts.clock,
            changes,
            round_trips: Arc::default(),
        })
    }
}

/// The rows `keys` name, as a JSON array of arrays (SQLite has no array parameters).
fn keys<T: serde::Serialize>(keys: impl IntoIterator<Item = T>) -> String {
    serde_json::to_string(&keys.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

async fn machines_by_kind(
    conn: &mut SqliteConnection,
    wanted: &BTreeSet<(Namespace, Name)>,
) -> Result<Vec<(Namespace, MachineRow)>> {
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    let pairs = keys(wanted.iter().map(|(n, k)| [n.as_str(), k.as_str()]));
    sqlx::query_as::<_, (String, String, i64, String, i64)>(include_str!("queries/machines_by_kind.sql"))
        .bind(pairs)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(|(ns, kind, version, spec, at)| {
            Ok((decode::namespace(ns)?, decode::machine_row((kind, version, spec, at))?))
        })
        .collect()
}

fn with_ns<T>(rows: Vec<(String, T)>, decode: impl Fn(T) -> Result<Entity>) -> Result<Vec<(Namespace, Entity)>> {
    rows.into_iter()
        .map(|(ns, t)| Ok((decode::namespace(ns)?, decode(t)?)))
        .collect()
}

/// An entity row with its namespace first.
type NsEntityTuple = (
    String,
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

fn split(t: NsEntityTuple) -> (String, EntityTuple) {
    let (ns, id, kind, state, version, fields, dedup, created, updated, activity, last_seq, final_seq, due) = t;
    (
        ns,
        (
            id, kind, state, version, fields, dedup, created, updated, activity, last_seq, final_seq, due,
        ),
    )
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn lanes(&self) -> usize {
        // One writer: a second lane would only wait for the first.
        1
    }

    async fn begin_batch(
        &self,
        _lane: usize,
        locks: &[Lock],
        _wait: bool,
        reads: &Reads,
    ) -> Result<(Box<dyn BatchTx>, Loaded)> {
        // The single write connection is the lock: every key is ours until commit.
        let mut tx = self.write_pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = self.clock.now();
        let mut entities = vec![];
        if !reads.entities.is_empty() {
            let ids = keys(reads.entities.iter().map(|(n, i)| [n.as_str(), i.as_str()]));
            let rows: Vec<NsEntityTuple> = sqlx::query_as(include_str!("queries/entities_by_id.sql"))
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
            entities.extend(with_ns(rows.into_iter().map(split).collect(), decode::entity)?);
        }
        if !reads.dedup.is_empty() {
            let dedup = keys(reads.dedup.iter().map(|(n, k, d)| [n.as_str(), k.as_str(), d.as_str()]));
            let rows: Vec<NsEntityTuple> = sqlx::query_as(include_str!("queries/entities_by_dedup.sql"))
                .bind(dedup)
                .fetch_all(&mut *tx)
                .await?;
            entities.extend(with_ns(rows.into_iter().map(split).collect(), decode::entity)?);
        }
        let mut leases = vec![];
        if !reads.leases.is_empty() {
            let pairs = keys(reads.leases.iter().map(|(n, k)| [n.as_str(), k.as_str()]));
            let rows: Vec<(String, String, i64, Option<String>, i64, i64)> =
                sqlx::query_as(include_str!("queries/leases_by_key.sql"))
                    .bind(pairs)
                    .fetch_all(&mut *tx)
                    .await?;
            for (ns, key, token, holder, acquired, expires) in rows {
                leases.push((
                    decode::namespace(ns)?,
                    decode::lease_row((key, token, holder, acquired, expires))?,
                ));
            }
        }
        let mut requests = vec![];
        if !reads.requests.is_empty() {
            let pairs = keys(reads.requests.iter().map(|(n, r)| [n.as_str(), r.as_str()]));
            let rows: Vec<(String, String, String, String)> =
                sqlx::query_as(include_str!("queries/requests_by_id.sql"))
                    .bind(pairs)
                    .fetch_all(&mut *tx)
                    .await?;
            requests = rows.into_iter().map(decode::request).collect::<Result<_>>()?;
        }
        let machines = machines_by_kind(&mut tx, &reads.machines).await?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::DB_ROUND_TRIPS).increment(1);
        let loaded = Loaded {
            granted: vec![true; locks.len()],
            now,
            entities,
            leases,
            requests,
            machines,
        };
        let batch = SqliteBatch {
            tx,
            round_trips: self.round_trips.clone(),
        };
        Ok((Box::new(batch), loaded))
    }

    async fn begin_define(
        &self,
        ns: &Namespace,
        kind: &Name,
    ) -> Result<(Box<dyn DefineTx>, Option<MachineRow>, Timestamp)> {
        let mut tx = self.write_pool.begin_with("BEGIN IMMEDIATE").await?;
        let row: Option<MachineTuple> = sqlx::query_as(include_str!("queries/machine.sql"))
            .bind(ns.as_str())
            .bind(kind.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let current = row.map(decode::machine_row).transpose()?;
        Ok((Box::new(SqliteDefine { tx }), current, self.clock.now()))
    }

    fn announce(&self, changes: Vec<Change>) {
        for change in changes {
            let _ = self.changes.send(change);
        }
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn connections(&self) -> super::Connections {
        let pools = [&self.write_pool, &self.read_pool];
        let open: usize = pools.iter().map(|p| p.size() as usize).sum();
        let idle: usize = pools.iter().map(|p| p.num_idle()).sum();
        super::Connections {
            open,
            in_use: open.saturating_sub(idle),
        }
    }

    async fn now(&self) -> Result<Timestamp> {
        Ok(self.clock.now())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read_pool).await?;
        Ok(())
    }

    async fn lease_row(&self, ns: &Namespace, key: &LeaseKey) -> Result<Option<LeaseRow>> {
        sqlx::query_as::<_, LeaseTuple>(include_str!("queries/lease.sql"))
            .bind(ns.as_str())
            .bind(key.as_str())
            .fetch_optional(&self.read_pool)
            .await?
            .map(decode::lease_row)
            .transpose()
    }

    async fn machine(&self, ns: &Namespace, kind: &Name) -> Result<Option<StoredMachine>> {
        let row = sqlx::query_as::<_, MachineTuple>(include_str!("queries/machine.sql"))
            .bind(ns.as_str())
            .bind(kind.as_str())
            .fetch_optional(&self.read_pool)
            .await?;
        row.map(|r| decode::machine(&decode::machine_row(r)?)).transpose()
    }

    async fn entity(&self, ns: &Namespace, id: &EntityId) -> Result<Option<Entity>> {
        sqlx::query_as::<_, EntityTuple>(include_str!("queries/entity.sql"))
            .bind(ns.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read_pool)
            .await?
            .map(decode::entity)
            .transpose()
    }

    async fn list_entities(&self, q: &ListEntities, max_bytes: usize) -> Result<(Vec<Entity>, bool)> {
        let names = |v: &[Name]| json!(v.iter().map(Name::as_str).collect::<Vec<_>>()).to_string();
        let rows = sqlx::query(include_str!("queries/list_entities.sql"))
            .bind(q.ns.as_str())
            .bind(q.kind.as_str())
            .bind(names(&q.states))
            .bind(names(&q.has_fields))
            .bind(names(&q.missing_fields))
            .bind(q.after.as_ref().map(|p| p.last()))
            .bind(i64::from(q.limit))
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
            .fetch_all(&self.read_pool)
            .await?;
        super::until_full(rows.iter().map(|r| {
            let entity = decode::entity(EntityTuple::from_row(r)?)?;
            Ok((entity, r.try_get(12)?))
        }))
    }

    async fn heads(&self, wanted: &[(Namespace, EntityId)]) -> Result<Vec<((Namespace, EntityId), Seq)>> {
        let pairs = keys(wanted.iter().map(|(n, i)| [n.as_str(), i.as_str()]));
        sqlx::query_as::<_, (String, String, i64)>(include_str!("queries/heads.sql"))
            .bind(pairs)
            .fetch_all(&self.read_pool)
            .await?
            .into_iter()
            .map(decode::head)
            .collect()
    }

    async fn events(
        &self,
        ns: &Namespace,
        id: &EntityId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>> {
        sqlx::query_as::<_, EventTuple>(include_str!("queries/events.sql"))
            .bind(ns.as_str())
            .bind(id.as_str())
            .bind(decode::to_i64(after))
            .bind(i64::from(limit))
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
            .fetch_all(&self.read_pool)
            .await?
            .into_iter()
            .map(decode::event)
            .collect()
    }

    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<(Namespace, EntityId)>> {
        sqlx::query_as::<_, (String, String)>(include_str!("queries/due.sql"))
            .bind(now.0)
            .bind(i64::from(limit))
            .fetch_all(&self.read_pool)
            .await?
            .into_iter()
            .map(decode::entity_key)
            .collect()
    }

    async fn list_leases(&self, q: &ListLeases, now: Timestamp) -> Result<Vec<LeaseRow>> {
        sqlx::query_as::<_, LeaseTuple>(include_str!("queries/list_leases.sql"))
            .bind(q.ns.as_str())
            .bind(q.prefix.as_str())
            .bind(now.0)
            .bind(q.after.as_ref().map(|p| p.last()))
            .bind(i64::from(q.limit))
            .fetch_all(&self.read_pool)
            .await?
            .into_iter()
            .map(decode::lease_row)
            .collect()
    }

    async fn list_machines(&self, q: &ListMachines, max_bytes: usize) -> Result<(Vec<MachineRow>, bool)> {
        let rows = sqlx::query(include_str!("queries/list_machines.sql"))
            .bind(q.ns.as_str())
            .bind(q.after.as_ref().map(|p| p.last()))
            .bind(i64::from(q.limit))
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
            .fetch_all(&self.read_pool)
            .await?;
        super::until_full(rows.iter().map(|r| {
            let machine = decode::machine_row(MachineTuple::from_row(r)?)?;
            Ok((machine, r.try_get(4)?))
        }))
    }

    async fn purge_requests(&self, before: Timestamp) -> Result<u64> {
        let done = sqlx::query(include_str!("queries/purge_requests.sql"))
            .bind(before.0)
            .execute(&self.write_pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn is_housekeeper(&self) -> Result<bool> {
        Ok(true)
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn close(&self) {
        self.read_pool.close().await;
        self.write_pool.close().await;
    }
}

/// A write batch: the open `BEGIN IMMEDIATE` transaction on the write connection.
struct SqliteBatch {
    tx: Transaction<'static, Sqlite>,
    round_trips: Arc<AtomicU64>,
}

#[async_trait]
impl BatchTx for SqliteBatch {
    async fn machines(&mut self, kinds: &BTreeSet<(Namespace, Name)>) -> Result<Vec<(Namespace, MachineRow)>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::DB_ROUND_TRIPS).increment(1);
        machines_by_kind(&mut self.tx, kinds).await
    }

    async fn commit(mut self: Box<Self>, writes: &Writes) -> Result<()> {
        let tx = &mut self.tx;
        // The same contract as Postgres, though one writer makes it hold by construction:
        // every machine the writes were decided with is still at that version.
        for (ns, kind, version) in &writes.machines {
            let stored: Option<(i64,)> = sqlx::query_as(include_str!("queries/machine_version.sql"))
                .bind(ns.as_str())
                .bind(kind.as_str())
                .fetch_optional(&mut **tx)
                .await?;
            if stored != Some((decode::to_i64(*version),)) {
                return Err(StoreError::Conflict(format!("machine {kind} was redefined")));
            }
        }
        // Each table's rows go in one statement (a JSON array read back with json_each), so
        // a batch costs a few statements whatever its size: each sqlx statement is a trip to
        // the connection's worker thread and back.
        let leases = writes.leases.iter().map(|((ns, _), row)| {
            json!([
                ns.as_str(),
                row.key.as_str(),
                decode::to_i64(row.token),
                row.holder.as_ref().map(|h| h.as_str()),
                row.acquired_at.0,
                row.expires_at.0
            ])
        });
        let new = writes
            .entities
            .iter()
            .filter(|(_, (_, new))| *new)
            .map(|((ns, _), (e, _))| {
                json!([
                    ns.as_str(),
                    e.id.as_str(),
                    e.kind.as_str(),
                    e.state.as_str(),
                    decode::to_i64(e.version),
                    decode::fields_json(&e.fields),
                    e.dedup_key.as_ref().map(|d| d.as_str()),
                    e.created_at.0,
                    e.updated_at.0,
                    e.last_activity_at.0,
                    decode::to_i64(e.last_seq),
                    e.final_seq.map(decode::to_i64),
                    e.due_at.map(|t| t.0)
                ])
            });
        let changed = writes
            .entities
            .iter()
            .filter(|(_, (_, new))| !*new)
            .map(|((ns, _), (e, _))| {
                json!([
                    ns.as_str(),
                    e.id.as_str(),
                    e.state.as_str(),
                    decode::to_i64(e.version),
                    decode::fields_json(&e.fields),
                    e.updated_at.0,
                    e.last_activity_at.0,
                    decode::to_i64(e.last_seq),
                    e.final_seq.map(decode::to_i64),
                    e.dedup_key.as_ref().map(|d| d.as_str()),
                    e.due_at.map(|t| t.0)
                ])
            });
        let deleted = || writes.deleted.iter().map(|(ns, id)| json!([ns.as_str(), id.as_str()]));
        let events = writes.events.iter().map(|(ns, id, ev)| {
            json!([
                ns.as_str(),
                id.as_str(),
                decode::to_i64(ev.seq),
                ev.event_type.as_str(),
                ev.content_type.as_str(),
                hex(&ev.payload),
                ev.state.as_deref(),
                ev.created_at.0
            ])
        });
        let requests = writes.requests.iter().map(|(ns, rid, stored)| {
            json!([
                ns.as_str(),
                rid.as_str(),
                stored.call.as_str(),
                stored.outcome.as_str(),
                writes.now.0
            ])
        });
        write_rows(tx, include_str!("queries/upsert_leases.sql"), leases).await?;
        // Updates first: an entity that gives up its dedup key (`while_active`) frees it for
        // an entity inserted by the same batch. Deletes before inserts: an id deleted and
        // created again in one batch is a new entity.
        write_rows(tx, include_str!("queries/update_entities.sql"), changed).await?;
        write_rows(tx, include_str!("queries/delete_events.sql"), deleted()).await?;
        write_rows(tx, include_str!("queries/delete_entities.sql"), deleted()).await?;
        write_rows(tx, include_str!("queries/insert_entities.sql"), new).await?;
        write_rows(tx, include_str!("queries/insert_events.sql"), events).await?;
        write_rows(tx, include_str!("queries/insert_requests.sql"), requests).await?;
        self.tx.commit().await?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::DB_ROUND_TRIPS).increment(1);
        Ok(())
    }
}

/// Runs a multi-row statement whose `$1` is a JSON array of `rows`; nothing when there are
/// none.
async fn write_rows(
    tx: &mut Transaction<'static, Sqlite>,
    sql: &'static str,
    rows: impl Iterator<Item = serde_json::Value>,
) -> Result<()> {
    let rows: Vec<serde_json::Value> = rows.collect();
    if rows.is_empty() {
        return Ok(());
    }
    let rows = serde_json::Value::Array(rows).to_string();
    sqlx::query(sql).bind(rows).execute(&mut **tx).await.map_err(sqlx_err)?;
    Ok(())
}

/// Bytes as lowercase hex, for `unhex` in SQL (a JSON array cannot carry a blob).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// A machine definition on the write connection.
struct SqliteDefine {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl DefineTx for SqliteDefine {
    async fn state_in_use(&mut self, ns: &Namespace, kind: &Name, states: &[&str]) -> Result<Option<String>> {
        let found: Option<(String,)> = sqlx::query_as(include_str!("queries/state_in_use.sql"))
            .bind(ns.as_str())
            .bind(kind.as_str())
            .bind(json!(states).to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(found.map(|(s,)| s))
    }

    async fn commit(mut self: Box<Self>, ns: &Namespace, m: &StoredMachine) -> Result<()> {
        sqlx::query(include_str!("queries/upsert_machine.sql"))
            .bind(ns.as_str())
            .bind(m.machine.kind().as_str())
            .bind(decode::to_i64(m.version))
            .bind(decode::machine_json(m)?)
            .bind(m.defined_at.0)
            .execute(&mut *self.tx)
            .await?;
        // Entities already in a state the new definition times out (or retains) get their
        // due time from it; stale ones left by the old definition are cleared when due.
        for (state, after, idle) in m.machine.schedules() {
            sqlx::query(include_str!("queries/reschedule.sql"))
                .bind(ns.as_str())
                .bind(m.machine.kind().as_str())
                .bind(state)
                .bind(idle)
                .bind(i64::try_from(after.as_micros()).unwrap_or(i64::MAX))
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
