//! SQL shared by both backends (SQLite accepts Postgres' `$N` placeholders) and the
//! conversions from result tuples to domain values. Rows are decoded as tuples, which sqlx
//! decodes for either backend, so each conversion below is written once.

use super::{Result, StoreError};
use crate::domain::command::ListEntities;
use crate::domain::entity::{Entity, Fields, Version};
use crate::domain::lease::{FencingToken, LeaseRow};
use crate::domain::machine::{Machine, MachineSpec, StoredMachine};
use crate::domain::names::{DedupKey, EntityId, Holder, LeaseKey, Name, Namespace};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::Timestamp;
use std::sync::Arc;

pub type LeaseTuple = (String, i64, Option<String>, i64, i64);

pub const LEASE_COLS: &str = "key, token, holder, acquired_at_us, expires_at_us";
pub const SELECT_LEASE: &str =
    "SELECT key, token, holder, acquired_at_us, expires_at_us FROM leases WHERE namespace = $1 AND key = $2";
pub const UPSERT_LEASE: &str = "INSERT INTO leases (namespace, key, token, holder, acquired_at_us, expires_at_us) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (namespace, key) DO UPDATE SET token = excluded.token, holder = excluded.holder, \
     acquired_at_us = excluded.acquired_at_us, expires_at_us = excluded.expires_at_us";
pub const END_LEASE: &str = "UPDATE leases SET holder = NULL WHERE namespace = $1 AND key = $2";

pub const SELECT_REQUEST: &str = "SELECT method, outcome FROM requests WHERE namespace = $1 AND request_id = $2";
pub const INSERT_REQUEST: &str =
    "INSERT INTO requests (namespace, request_id, method, outcome, created_at_us) VALUES ($1, $2, $3, $4, $5)";
pub const PURGE_REQUESTS: &str = "DELETE FROM requests WHERE created_at_us < $1";

pub type MachineTuple = (i64, String, i64);
pub const SELECT_MACHINE: &str = "SELECT version, spec, defined_at_us FROM machines WHERE namespace = $1 AND kind = $2";
pub const UPSERT_MACHINE: &str = "INSERT INTO machines (namespace, kind, version, spec, defined_at_us) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (namespace, kind) DO UPDATE SET version = excluded.version, spec = excluded.spec, \
     defined_at_us = excluded.defined_at_us";

pub const ENTITY_COLS: &str = "id, kind, state, version, fields, dedup_key, created_at_us, updated_at_us, last_activity_at_us, last_seq, final_seq";
pub type EntityTuple = (
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
);
pub const SELECT_ENTITY: &str = "SELECT id, kind, state, version, fields, dedup_key, created_at_us, updated_at_us, \
     last_activity_at_us, last_seq, final_seq FROM entities WHERE namespace = $1 AND id = $2";
pub const SELECT_ENTITY_BY_DEDUP: &str = "SELECT id, kind, state, version, fields, dedup_key, created_at_us, updated_at_us, \
     last_activity_at_us, last_seq, final_seq FROM entities WHERE namespace = $1 AND kind = $2 AND dedup_key = $3";
pub const INSERT_ENTITY: &str = "INSERT INTO entities (namespace, id, kind, state, version, fields, dedup_key, created_at_us, \
     updated_at_us, last_activity_at_us, last_seq, final_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
pub const UPDATE_ENTITY: &str = "UPDATE entities SET state = $3, version = $4, fields = $5, updated_at_us = $6, \
     last_activity_at_us = $7, last_seq = $8, final_seq = $9 WHERE namespace = $1 AND id = $2";
pub const STATE_IN_USE: &str = "SELECT state FROM entities WHERE namespace = $1 AND kind = $2 AND state = $3 LIMIT 1";

pub type EventTuple = (i64, String, String, Vec<u8>, Option<String>, i64);
pub const SELECT_EVENTS: &str = "SELECT seq, type, content_type, payload, state, created_at_us FROM events \
     WHERE namespace = $1 AND entity_id = $2 AND seq > $3 ORDER BY seq LIMIT $4";
pub const INSERT_EVENTS_PREFIX: &str =
    "INSERT INTO events (namespace, entity_id, seq, type, content_type, payload, state, created_at_us) ";

/// A failed write, classified: an entity id or dedup key already taken by `inserted` is
/// the caller's mistake, not ours.
pub fn write_error(err: sqlx::Error, inserted: Option<&EntityId>) -> StoreError {
    let taken = match &err {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && matches!(db.constraint(), None | Some("entities_pkey" | "entities_dedup"))
        }
        _ => false,
    };
    match inserted {
        // The service inserts one entity per transaction, so this names it.
        Some(id) if taken => StoreError::Rejected(crate::domain::DomainError::AlreadyExists {
            what: "entity",
            name: id.to_string(),
        }),
        _ => err.into(),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt {what} row: {e}"))
}

/// A counter (version, seq, token) as stored: the domain keeps them at most `i64::MAX`.
pub fn to_i64(v: impl Into<u64>) -> i64 {
    i64::try_from(v.into()).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub fn lease_row((key, token, holder, acquired, expires): LeaseTuple) -> Result<LeaseRow> {
    Ok(LeaseRow {
        key: LeaseKey::parse("key", key).map_err(|e| corrupt("lease", e))?,
        token: FencingToken::parse("token", to_u64(token)).map_err(|e| corrupt("lease", e))?,
        holder: holder
            .map(|h| Holder::parse("holder", h))
            .transpose()
            .map_err(|e| corrupt("lease", e))?,
        acquired_at: Timestamp(acquired),
        expires_at: Timestamp(expires),
    })
}

pub fn machine((version, spec, defined_at): MachineTuple) -> Result<StoredMachine> {
    let spec: MachineSpec = serde_json::from_str(&spec).map_err(|e| corrupt("machine", e))?;
    let machine = Machine::parse(spec).map_err(|e| corrupt("machine", e))?;
    Ok(StoredMachine {
        machine: Arc::new(machine),
        version: to_u64(version),
        defined_at: Timestamp(defined_at),
    })
}

pub fn machine_json(m: &StoredMachine) -> Result<String> {
    serde_json::to_string(m.machine.spec()).map_err(|e| StoreError::Internal(e.to_string()))
}

pub fn entity(t: EntityTuple) -> Result<Entity> {
    let (id, kind, state, version, fields, dedup, created, updated, activity, last_seq, final_seq) = t;
    let fields: Fields = serde_json::from_str(&fields).map_err(|e| corrupt("entity", e))?;
    Ok(Entity {
        id: EntityId::parse("id", id).map_err(|e| corrupt("entity", e))?,
        kind: Name::parse("kind", kind).map_err(|e| corrupt("entity", e))?,
        state,
        version: Version::parse("version", to_u64(version)).map_err(|e| corrupt("entity", e))?,
        fields,
        dedup_key: dedup
            .map(|d| DedupKey::parse("dedup_key", d))
            .transpose()
            .map_err(|e| corrupt("entity", e))?,
        created_at: Timestamp(created),
        updated_at: Timestamp(updated),
        last_activity_at: Timestamp(activity),
        last_seq: seq(last_seq).map_err(|e| corrupt("entity", e))?,
        final_seq: final_seq.map(seq).transpose().map_err(|e| corrupt("entity", e))?,
    })
}

pub fn fields_json(f: &Fields) -> String {
    // A map of strings always serializes.
    serde_json::to_string(f).unwrap_or_else(|_| "{}".into())
}

/// A `(namespace, id, last_seq)` row of a heads query.
pub fn head((ns, id, last_seq): (String, String, i64)) -> Result<((Namespace, EntityId), Seq)> {
    let bad = |e: crate::domain::DomainError| corrupt("entity", e);
    Ok((
        (
            Namespace::parse("namespace", ns).map_err(bad)?,
            EntityId::parse("id", id).map_err(bad)?,
        ),
        seq(last_seq).map_err(bad)?,
    ))
}

fn seq(v: i64) -> std::result::Result<Seq, crate::domain::DomainError> {
    Seq::parse("seq", to_u64(v))
}

pub fn event((n, event_type, content_type, payload, state, created): EventTuple) -> Result<StoredEvent> {
    Ok(StoredEvent {
        seq: seq(n).map_err(|e| corrupt("event", e))?,
        event_type,
        payload,
        content_type,
        state,
        created_at: Timestamp(created),
    })
}

/// Builds the ListEntities statement. `presence(i)` renders "field number i is present"
/// in the backend's JSON dialect; binds are ns, kind, states..., fields..., after, limit.
pub fn list_sql(q: &ListEntities, presence: impl Fn(usize) -> String) -> String {
    let mut sql = format!("SELECT {ENTITY_COLS} FROM entities WHERE namespace = $1 AND kind = $2");
    let mut n = 2;
    if !q.states.is_empty() {
        let marks: Vec<String> = q
            .states
            .iter()
            .map(|_| {
                n += 1;
                format!("${n}")
            })
            .collect();
        sql += &format!(" AND state IN ({})", marks.join(", "));
    }
    for _ in &q.has_fields {
        n += 1;
        sql += &format!(" AND {}", presence(n));
    }
    for _ in &q.missing_fields {
        n += 1;
        sql += &format!(" AND NOT {}", presence(n));
    }
    if q.after.is_some() {
        n += 1;
        sql += &format!(" AND id > ${n}");
    }
    sql += &format!(" ORDER BY id LIMIT ${}", n + 1);
    sql
}

/// Generates the [`super::WriteTx`] impl shared by both backends: the reads, which are the
/// same SQL on both. The backend's type must have a field `now: Timestamp` and inherent
/// methods `reader` (the connection to read on, with this transaction's writes applied),
/// `first_entity` / `first_lease` (the row read by `begin`, if it is this one and still current),
/// `expect_machine_impl`, `write_impl`, `publish_impl` and `commit_impl`.
/// `$lease_share_sql` is the backend's "read the lease row and hold off takeovers" statement.
macro_rules! impl_write_tx {
    ($ty:ty, $db:ty, $lease_share_sql:expr) => {
        #[async_trait::async_trait]
        impl $crate::storage::WriteTx for $ty {
            fn now(&self) -> $crate::domain::time::Timestamp {
                self.now
            }

            async fn expect_machine(
                &mut self,
                lock_key: i64,
                ns: &Namespace,
                kind: &Name,
                version: u64,
            ) -> $crate::storage::Result<()> {
                self.expect_machine_impl(lock_key, ns, kind, version).await
            }

            async fn request(
                &mut self,
                ns: &Namespace,
                rid: &RequestId,
            ) -> $crate::storage::Result<Option<(String, String)>> {
                Ok(sqlx::query_as::<$db, (String, String)>(rows::SELECT_REQUEST)
                    .bind(ns.as_str())
                    .bind(rid.as_str())
                    .fetch_optional(self.reader().await?)
                    .await?)
            }

            async fn lease_row(
                &mut self,
                ns: &Namespace,
                key: &LeaseKey,
                share: bool,
            ) -> $crate::storage::Result<Option<LeaseRow>> {
                if !share && let Some(row) = self.first_lease(ns, key) {
                    return Ok(row);
                }
                let sql = if share {
                    $lease_share_sql
                } else {
                    rows::SELECT_LEASE
                };
                sqlx::query_as::<$db, rows::LeaseTuple>(sql)
                    .bind(ns.as_str())
                    .bind(key.as_str())
                    .fetch_optional(self.reader().await?)
                    .await?
                    .map(rows::lease_row)
                    .transpose()
            }

            async fn machine(&mut self, ns: &Namespace, kind: &Name) -> $crate::storage::Result<Option<StoredMachine>> {
                sqlx::query_as::<$db, rows::MachineTuple>(rows::SELECT_MACHINE)
                    .bind(ns.as_str())
                    .bind(kind.as_str())
                    .fetch_optional(self.reader().await?)
                    .await?
                    .map(rows::machine)
                    .transpose()
            }

            async fn state_in_use(
                &mut self,
                ns: &Namespace,
                kind: &Name,
                states: &[&str],
            ) -> $crate::storage::Result<Option<String>> {
                for state in states {
                    let found = sqlx::query_as::<$db, (String,)>(rows::STATE_IN_USE)
                        .bind(ns.as_str())
                        .bind(kind.as_str())
                        .bind(*state)
                        .fetch_optional(self.reader().await?)
                        .await?;
                    if let Some((s,)) = found {
                        return Ok(Some(s));
                    }
                }
                Ok(None)
            }

            async fn entity(&mut self, ns: &Namespace, id: &EntityId) -> $crate::storage::Result<Option<Entity>> {
                if let Some(row) = self.first_entity(ns, id) {
                    return Ok(row);
                }
                sqlx::query_as::<$db, rows::EntityTuple>(rows::SELECT_ENTITY)
                    .bind(ns.as_str())
                    .bind(id.as_str())
                    .fetch_optional(self.reader().await?)
                    .await?
                    .map(rows::entity)
                    .transpose()
            }

            async fn entity_by_dedup(
                &mut self,
                ns: &Namespace,
                kind: &Name,
                dedup: &DedupKey,
            ) -> $crate::storage::Result<Option<Entity>> {
                sqlx::query_as::<$db, rows::EntityTuple>(rows::SELECT_ENTITY_BY_DEDUP)
                    .bind(ns.as_str())
                    .bind(kind.as_str())
                    .bind(dedup.as_str())
                    .fetch_optional(self.reader().await?)
                    .await?
                    .map(rows::entity)
                    .transpose()
            }

            async fn write(&mut self, w: $crate::storage::Write<'_>) -> $crate::storage::Result<()> {
                self.write_impl(w).await
            }

            async fn publish(&mut self, change: $crate::storage::Change) -> $crate::storage::Result<()> {
                self.publish_impl(change).await
            }

            async fn commit(self: Box<Self>) -> $crate::storage::Result<()> {
                (*self).commit_impl().await
            }
        }
    };
}
pub(crate) use impl_write_tx;

/// Generates the [`super::Store`] impl shared by both backends. The backend's type must
/// have fields `read_pool: sqlx::Pool<$db>`, `clock: Clock`, `changes:
/// broadcast::Sender<Change>` and inherent methods `begin_impl`, `now_impl`,
/// `is_housekeeper_impl`, `close_impl`. `$presence` renders "field `$n` is present".
macro_rules! impl_store {
    ($ty:ty, $db:ty, $backend:expr, $presence:expr) => {
        #[async_trait::async_trait]
        impl $crate::storage::Store for $ty {
            fn backend(&self) -> $crate::storage::Backend {
                $backend
            }

            fn clock(&self) -> &Clock {
                &self.clock
            }

            async fn begin_at(
                &self,
                lock_key: i64,
                first: $crate::storage::First<'_>,
            ) -> $crate::storage::Result<Box<dyn $crate::storage::WriteTx>> {
                Ok(Box::new(self.begin_impl(lock_key, first).await?))
            }

            async fn now(&self) -> $crate::storage::Result<Timestamp> {
                self.now_impl().await
            }

            async fn ping(&self) -> $crate::storage::Result<()> {
                sqlx::query::<$db>("SELECT 1").execute(&self.read_pool).await?;
                Ok(())
            }

            async fn lease_row(&self, ns: &Namespace, key: &LeaseKey) -> $crate::storage::Result<Option<LeaseRow>> {
                sqlx::query_as::<$db, rows::LeaseTuple>(rows::SELECT_LEASE)
                    .bind(ns.as_str())
                    .bind(key.as_str())
                    .fetch_optional(&self.read_pool)
                    .await?
                    .map(rows::lease_row)
                    .transpose()
            }

            async fn machine(&self, ns: &Namespace, kind: &Name) -> $crate::storage::Result<Option<StoredMachine>> {
                sqlx::query_as::<$db, rows::MachineTuple>(rows::SELECT_MACHINE)
                    .bind(ns.as_str())
                    .bind(kind.as_str())
                    .fetch_optional(&self.read_pool)
                    .await?
                    .map(rows::machine)
                    .transpose()
            }

            async fn entity(&self, ns: &Namespace, id: &EntityId) -> $crate::storage::Result<Option<Entity>> {
                sqlx::query_as::<$db, rows::EntityTuple>(rows::SELECT_ENTITY)
                    .bind(ns.as_str())
                    .bind(id.as_str())
                    .fetch_optional(&self.read_pool)
                    .await?
                    .map(rows::entity)
                    .transpose()
            }

            async fn list_entities(
                &self,
                q: &$crate::domain::command::ListEntities,
            ) -> $crate::storage::Result<Vec<Entity>> {
                let sql = rows::list_sql(q, $presence);
                let mut query = sqlx::query_as::<$db, rows::EntityTuple>(sqlx::AssertSqlSafe(sql))
                    .bind(q.ns.as_str())
                    .bind(q.kind.as_str());
                for s in q.states.iter().chain(&q.has_fields).chain(&q.missing_fields) {
                    query = query.bind(s.as_str());
                }
                if let Some(after) = &q.after {
                    query = query.bind(after.last_id().as_str());
                }
                query
                    .bind(i64::from(q.limit))
                    .fetch_all(&self.read_pool)
                    .await?
                    .into_iter()
                    .map(rows::entity)
                    .collect()
            }

            async fn events(
                &self,
                ns: &Namespace,
                id: &EntityId,
                after: $crate::domain::tape::Seq,
                limit: u32,
            ) -> $crate::storage::Result<Vec<StoredEvent>> {
                Ok(sqlx::query_as::<$db, rows::EventTuple>(rows::SELECT_EVENTS)
                    .bind(ns.as_str())
                    .bind(id.as_str())
                    .bind(rows::to_i64(after))
                    .bind(i64::from(limit))
                    .fetch_all(&self.read_pool)
                    .await?
                    .into_iter()
                    .map(rows::event)
                    .collect::<$crate::storage::Result<_>>()?)
            }

            async fn heads(
                &self,
                keys: &[(Namespace, EntityId)],
            ) -> $crate::storage::Result<Vec<((Namespace, EntityId), $crate::domain::tape::Seq)>> {
                self.heads_impl(keys).await
            }

            async fn purge_requests(&self, before: Timestamp) -> $crate::storage::Result<u64> {
                let done = sqlx::query::<$db>(rows::PURGE_REQUESTS)
                    .bind(before.0)
                    .execute(&self.write_pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn is_housekeeper(&self) -> $crate::storage::Result<bool> {
                self.is_housekeeper_impl().await
            }

            fn changes(&self) -> tokio::sync::broadcast::Receiver<$crate::storage::Change> {
                self.changes.subscribe()
            }

            async fn close(&self) {
                self.close_impl().await
            }
        }
    };
}
pub(crate) use impl_store;
