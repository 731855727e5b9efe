//! The Postgres adapter: many replicas on one database. A write batch costs two round
//! trips on its lane's connection: BEGIN, the batch's advisory locks (tried, in one global
//! order), the clock and every row it reads are sent together, then its writes and COMMIT.
//! The statements are typed and prepared once per connection (array parameters and
//! `unnest`, never request data in SQL text); tokio-postgres pipelines them, which is why
//! this adapter uses it (sqlx waits for each statement's answer before sending the next).
//! Reads use connections of their own. Committed changes reach this replica's subscribers
//! at once and the others by a batched `NOTIFY` after commit.

mod conn;
mod notify;
mod tls;

use super::decode::{self, EntityTuple, EventTuple};
use super::{Backend, BatchTx, Change, DefineTx, Loaded, MachineRow, Result, Store, StoreError, StoreOptions};
use crate::domain::batch::{Lock, Reads, Writes};
use crate::domain::command::{ListEntities, ListLeases, ListMachines};
use crate::domain::entity::Entity;
use crate::domain::lease::LeaseRow;
use crate::domain::machine::StoredMachine;
use crate::domain::names::{EntityId, LeaseKey, Name, Namespace, lock_key, lock_space};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::{Clock, Timestamp};
use async_trait::async_trait;
use conn::{Conn, Endpoint, Slot};
use futures::future::{BoxFuture, FutureExt, try_join_all};
use notify::Announcer;
use sqlx::ConnectOptions;
use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};
use tokio_postgres::{Config, Row};

/// Session-level advisory lock held by the one replica that runs housekeeping.
const HOUSEKEEPER_LOCK: i64 = 0x6261_746f_6e5f_686b; // "baton_hk"

/// Postgres store.
pub struct PgStore {
    pg: Endpoint,
    clock: Clock,
    /// One connection per write lane, and the lane's turn: a lane runs one batch at a time
    /// (the turn is held from `begin_batch` to the commit), so two transactions never share
    /// a connection.
    lanes: Vec<(Slot, Arc<Mutex<()>>)>,
    /// Connections for reads, used round-robin (each pipelines concurrent reads).
    readers: Vec<Slot>,
    next_reader: AtomicUsize,
    /// Machine definitions, which wait for their kind's lock.
    define: Slot,
    changes: broadcast::Sender<Change>,
    announcer: Announcer,
    stop_listener: watch::Sender<bool>,
    /// A dedicated connection holding the housekeeper lock while we hold it: session-level
    /// advisory locks never go on shared connections.
    /// Kept open while we are not the housekeeper too, to ask again on it.
    housekeeper: Mutex<Option<(tokio_postgres::Client, bool)>>,
    round_trips: Arc<AtomicU64>,
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// Why the first connection failed, on one line with what to do about it.
fn start_error(redacted: &str, tls: &tls::Tls, e: tokio_postgres::Error) -> StoreError {
    let hint = if conn::is_tls_failure(&e) {
        // Its message says what was checked and what to change.
        ""
    } else if conn::describe_pg(&e).ends_with("server does not support TLS") {
        // tokio-postgres's words when the server answers the TLS request with "no".
        " (sslmode=require and the verify modes need a server with ssl = on)"
    } else if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        && tls.mode() == tls::SslMode::Disable
    {
        " (sslmode=disable: a server that accepts only TLS connections refuses this one)"
    } else {
        " (is PostgreSQL running and is the URL right?)"
    };
    StoreError::Unavailable(format!(
        "cannot connect to Postgres at {redacted}: {}{hint}",
        conn::describe_pg(&e)
    ))
}

impl PgStore {
    /// Runs migrations, connects, and starts the notification listener and notifier.
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<Self> {
        let redacted = super::redact(url);
        let bad_url = |e: &dyn std::fmt::Display| StoreError::Config(format!("bad Postgres URL {redacted:?}: {e}"));
        // sslmode and friends mean what libpq says, for tokio-postgres and sqlx alike: they
        // are taken out here and applied by our TLS connector and to sqlx's options.
        let (rest, tls) = tls::split(url).map_err(|e| bad_url(&e))?;
        let mut config = Config::from_str(&rest).map_err(|e| bad_url(&conn::describe(&e)))?;
        let tls = tls.for_hosts(config.get_hosts(), config.get_hostaddrs().len());
        // A replica frozen (or cut off) inside a transaction must not hold its keys' locks
        // for long: Postgres ends the session and rolls the transaction back, so writers on
        // other replicas go on. A healthy transaction is idle only between its two round
        // trips, for the microseconds the domain takes to decide.
        //
        // Every statement baton sends is served by an index (primary keys, entities_by_state,
        // requests_by_age). Its statements are prepared once per connection, and a plan
        // Postgres caches while a table is still empty (a new database, before autoanalyze)
        // can scan it sequentially long after it has grown: measured, 11 ms per call instead
        // of 2 ms on 10,000 entities. Forbidding sequential scans keeps every plan an index
        // plan.
        config
            .options(format!(
                "-c idle_in_transaction_session_timeout={} -c lock_timeout={} -c enable_seqscan=off",
                millis(opts.idle_in_transaction_timeout),
                millis(opts.lock_timeout)
            ))
            .application_name("baton")
            .connect_timeout(Duration::from_secs(10))
            .ssl_mode(tls.wire_mode());
        tls.check().await.map_err(|e| bad_url(&e))?;
        let unreachable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!(
                "cannot connect to Postgres at {redacted}: {e} (is PostgreSQL running and is the URL right?)"
            ))
        };
        let pg = Endpoint { config, tls };
        // The housekeeper's session is the first connection, made by the connector every
        // other one uses, so a refused login or a rejected certificate fails the start in
        // its own words, before migrations.
        let (client, connection) = pg.connect().await.map_err(|e| start_error(&redacted, &pg.tls, e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // Migrations go through sqlx's migrator, on a connection of their own.
        let migrate_options = pg
            .tls
            .sqlx(sqlx::postgres::PgConnectOptions::from_str(&rest).map_err(|e| bad_url(&e))?)
            .application_name("baton")
            .log_statements(tracing::log::LevelFilter::Trace);
        let mut migrating = migrate_options.connect().await.map_err(|e| unreachable(&e))?;
        sqlx::migrate!("migrations/postgres").run(&mut migrating).await?;
        let _ = sqlx::Connection::close(migrating).await;

        let readers: Vec<Slot> = (0..opts.pool_size.max(1)).map(|_| Slot::default()).collect();
        // Open one now, so a wrong URL or a refused login fails the start, not a call.
        readers[0].get(&pg).await.map_err(|e| unreachable(&e))?;
        let (changes, _) = broadcast::channel(4096);
        let (stop_listener, stop) = watch::channel(false);
        let (ready_tx, ready) = oneshot::channel();
        let replica = uuid::Uuid::now_v7().as_u64_pair().1;
        tokio::spawn(notify::listen(pg.clone(), changes.clone(), replica, stop, ready_tx));
        let (notices, queued) = mpsc::unbounded_channel();
        tokio::spawn(notify::notifier(pg.clone(), Slot::default(), queued));
        // Serve nothing before we can hear other replicas' commits.
        match tokio::time::timeout(Duration::from_secs(10), ready).await {
            Ok(Ok(())) => {}
            _ => {
                let _ = stop_listener.send(true);
                return Err(StoreError::Unavailable(
                    "cannot LISTEN for notifications on Postgres".into(),
                ));
            }
        }
        Ok(Self {
            lanes: (0..opts.write_lanes.max(1)).map(|_| Default::default()).collect(),
            readers,
            next_reader: AtomicUsize::new(0),
            define: Slot::default(),
            announcer: Announcer {
                changes: changes.clone(),
                notices,
                replica,
            },
            changes,
            stop_listener,
            housekeeper: Mutex::new(Some((client, false))),
            round_trips: Arc::default(),
            clock: opts.clock,
            pg,
        })
    }

    /// A connection for reads.
    async fn reader(&self) -> Result<Arc<Conn>> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[i].get(&self.pg).await
    }
}

/// Columns 1.. of an entity row whose column 0 is its namespace.
fn entity_at(r: &Row, at: usize) -> Result<Entity> {
    let t: EntityTuple = (
        r.try_get(at)?,
        r.try_get(at + 1)?,
        r.try_get(at + 2)?,
        r.try_get(at + 3)?,
        r.try_get(at + 4)?,
        r.try_get(at + 5)?,
        r.try_get(at + 6)?,
        r.try_get(at + 7)?,
        r.try_get(at + 8)?,
        r.try_get(at + 9)?,
        r.try_get(at + 10)?,
        r.try_get(at + 11)?,
    );
    decode::entity(t)
}

/// A lease row's columns from `at` on.
fn lease_at(r: &Row, at: usize) -> Result<LeaseRow> {
    decode::lease_row((
        r.try_get(at)?,
        r.try_get(at + 1)?,
        r.try_get(at + 2)?,
        r.try_get(at + 3)?,
        r.try_get(at + 4)?,
    ))
}

fn namespaced_entities(rows: Vec<Row>) -> Result<Vec<(Namespace, Entity)>> {
    rows.iter()
        .map(|r| Ok((decode::namespace(r.try_get(0)?)?, entity_at(r, 1)?)))
        .collect()
}

fn namespaced_machines(rows: &[Row]) -> Result<Vec<(Namespace, MachineRow)>> {
    rows.iter()
        .map(|r| Ok((decode::namespace(r.try_get(0)?)?, machine_at(r, 1)?)))
        .collect()
}

fn machine_at(r: &Row, at: usize) -> Result<MachineRow> {
    decode::machine_row((
        r.try_get(at)?,
        r.try_get(at + 1)?,
        r.try_get(at + 2)?,
        r.try_get(at + 3)?,
    ))
}

/// Two parallel arrays from pairs, as `unnest` takes them.
fn columns<'a, A: AsRef<str> + 'a, B: AsRef<str> + 'a>(
    pairs: impl IntoIterator<Item = &'a (A, B)>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    pairs.into_iter().map(|(a, b)| (a.as_ref(), b.as_ref())).unzip()
}

type Step<'a> = BoxFuture<'a, Result<(), tokio_postgres::Error>>;

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn lanes(&self) -> usize {
        self.lanes.len()
    }

    async fn begin_batch(
        &self,
        lane: usize,
        locks: &[Lock],
        wait: bool,
        reads: &Reads,
    ) -> Result<(Box<dyn BatchTx>, Loaded)> {
        let (slot, turn) = &self.lanes[lane % self.lanes.len()];
        let turn = turn.clone().lock_owned().await;
        let conn = slot.get(&self.pg).await?;
        let (c, q) = (&conn.client, &conn.q);
        let keys: Vec<i64> = locks.iter().map(|l| l.key).collect();
        let shared: Vec<bool> = locks.iter().map(|l| l.shared).collect();
        let (ent_ns, ent_ids) = columns(&reads.entities);
        let (lease_ns, lease_keys) = columns(&reads.leases);
        let (req_ns, req_ids) = columns(&reads.requests);
        let (mach_ns, mach_kinds) = columns(&reads.machines);
        let dedup_ns: Vec<&str> = reads.dedup.iter().map(|(n, _, _)| n.as_str()).collect();
        let dedup_kinds: Vec<&str> = reads.dedup.iter().map(|(_, k, _)| k.as_str()).collect();
        let dedup_keys: Vec<&str> = reads.dedup.iter().map(|(_, _, d)| d.as_str()).collect();
        let skew = self.clock.skew_micros();
        // One flight: each request goes out when first polled, in this order, without
        // waiting for the answers before it; nothing is sent for an empty set. The locks come
        // first, so every read after them sees the rows as they are with the locks held.
        let lock_and_clock: [&P<'_>; 4] = [&keys, &shared, &wait, &skew];
        let by_id: [&P<'_>; 2] = [&ent_ns, &ent_ids];
        let by_dedup: [&P<'_>; 3] = [&dedup_ns, &dedup_kinds, &dedup_keys];
        let by_lease: [&P<'_>; 2] = [&lease_ns, &lease_keys];
        let by_request: [&P<'_>; 2] = [&req_ns, &req_ids];
        let by_kind: [&P<'_>; 2] = [&mach_ns, &mach_kinds];
        let wanted = [
            (true, &q.lock, &lock_and_clock[..]),
            (!ent_ids.is_empty(), &q.entities_by_id, &by_id[..]),
            (!dedup_keys.is_empty(), &q.entities_by_dedup, &by_dedup[..]),
            (!lease_keys.is_empty(), &q.leases_by_key, &by_lease[..]),
            (!req_ids.is_empty(), &q.requests_by_id, &by_request[..]),
            (!mach_kinds.is_empty(), &q.machines_by_kind, &by_kind[..]),
        ];
        let mut queries: Vec<BoxFuture<'_, Result<Vec<Row>, tokio_postgres::Error>>> = vec![];
        let mut sent = [false; 6];
        for (i, (want, stmt, params)) in wanted.into_iter().enumerate() {
            if want {
                sent[i] = true;
                queries.push(c.query(stmt, params).boxed());
            }
        }
        let flight = futures::future::try_join(c.batch_execute("BEGIN"), try_join_all(queries)).await;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::DB_ROUND_TRIPS).increment(1);
        let mut answers = match flight {
            Ok((_, answers)) => answers.into_iter(),
            Err(e) => {
                // The transaction may be open and failed: the connection is not reused.
                conn.poison();
                return Err(e.into());
            }
        };
        let mut next = |i: usize| {
            if sent[i] {
                answers.next().unwrap_or_default()
            } else {
                vec![]
            }
        };
        let (lock, by_id, by_dedup, leases, requests, machines) =
            (next(0), next(1), next(2), next(3), next(4), next(5));
        let decoded = (|| -> Result<Loaded> {
            let lock = lock
                .first()
                .ok_or_else(|| StoreError::Internal("baton_lock returned no row".into()))?;
            let mut entities = namespaced_entities(by_id)?;
            entities.extend(namespaced_entities(by_dedup)?);
            Ok(Loaded {
                granted: lock.try_get(0)?,
                now: Timestamp(lock.try_get(1)?),
                entities,
                leases: leases
                    .iter()
                    .map(|r| Ok((decode::namespace(r.try_get(0)?)?, lease_at(r, 1)?)))
                    .collect::<Result<_>>()?,
                requests: requests
                    .iter()
                    .map(|r| decode::request((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                    .collect::<Result<_>>()?,
                machines: namespaced_machines(&machines)?,
            })
        })();
        match decoded {
            Ok(loaded) => {
                let batch = PgBatch {
                    conn: Some(conn),
                    round_trips: self.round_trips.clone(),
                    _turn: turn,
                };
                Ok((Box::new(batch), loaded))
            }
            Err(e) => {
                conn.poison();
                Err(e)
            }
        }
    }

    async fn begin_define(
        &self,
        ns: &Namespace,
        kind: &Name,
    ) -> Result<(Box<dyn DefineTx>, Option<MachineRow>, Timestamp)> {
        let conn = self.define.get(&self.pg).await?;
        let (c, q) = (&conn.client, &conn.q);
        let lock = lock_key(ns, lock_space::MACHINE, kind.as_str());
        let skew = self.clock.skew_micros();
        let flight = futures::future::try_join4(
            c.batch_execute("BEGIN"),
            c.query_one(&q.define_lock, &[&lock]),
            c.query_one(&q.now, &[&skew]),
            c.query_opt(&q.machine, &[&ns.as_str(), &kind.as_str()]),
        )
        .await;
        let (_, _, now, row) = match flight {
            Ok(r) => r,
            Err(e) => {
                conn.poison();
                return Err(e.into());
            }
        };
        let current = row.map(|r| machine_at(&r, 0)).transpose();
        let now = now.try_get(0).map(Timestamp);
        match (current, now) {
            (Ok(current), Ok(now)) => Ok((Box::new(PgDefine { conn: Some(conn) }), current, now)),
            (Err(e), _) => {
                conn.poison();
                Err(e)
            }
            (_, Err(e)) => {
                conn.poison();
                Err(e.into())
            }
        }
    }

    fn announce(&self, changes: Vec<Change>) {
        self.announcer.announce(changes);
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn connections(&self) -> super::Connections {
        let slots = self
            .lanes
            .iter()
            .map(|(s, _)| s)
            .chain(&self.readers)
            .chain([&self.define]);
        slots.fold(super::Connections::default(), |mut c, slot| {
            let (open, in_use) = slot.state();
            c.open += usize::from(open);
            c.in_use += usize::from(in_use);
            c
        })
    }

    async fn now(&self) -> Result<Timestamp> {
        let conn = self.reader().await?;
        let row = conn.client.query_one(&conn.q.now, &[&self.clock.skew_micros()]).await?;
        Ok(Timestamp(row.try_get(0)?))
    }

    async fn ping(&self) -> Result<()> {
        let conn = self.reader().await?;
        conn.client.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn lease_row(&self, ns: &Namespace, key: &LeaseKey) -> Result<Option<LeaseRow>> {
        let conn = self.reader().await?;
        let row = conn
            .client
            .query_opt(&conn.q.lease, &[&ns.as_str(), &key.as_str()])
            .await?;
        row.map(|r| lease_at(&r, 0)).transpose()
    }

    async fn machine(&self, ns: &Namespace, kind: &Name) -> Result<Option<StoredMachine>> {
        let conn = self.reader().await?;
        let row = conn
            .client
            .query_opt(&conn.q.machine, &[&ns.as_str(), &kind.as_str()])
            .await?;
        row.map(|r| decode::machine(&machine_at(&r, 0)?)).transpose()
    }

    async fn entity(&self, ns: &Namespace, id: &EntityId) -> Result<Option<Entity>> {
        let conn = self.reader().await?;
        let row = conn
            .client
            .query_opt(&conn.q.entity, &[&ns.as_str(), &id.as_str()])
            .await?;
        row.map(|r| entity_at(&r, 0)).transpose()
    }

    async fn list_entities(&self, q: &ListEntities, max_bytes: usize) -> Result<(Vec<Entity>, bool)> {
        let conn = self.reader().await?;
        let names = |v: &[Name]| v.iter().map(|n| n.as_str().to_string()).collect::<Vec<String>>();
        let after = q.after.as_ref().map(|p| p.last());
        let rows = conn
            .client
            .query(
                &conn.q.list_entities,
                &[
                    &q.ns.as_str(),
                    &q.kind.as_str(),
                    &names(&q.states),
                    &names(&q.has_fields),
                    &names(&q.missing_fields),
                    &after,
                    &i64::from(q.limit),
                    &i64::try_from(max_bytes).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        super::until_full(rows.iter().map(|r| Ok((entity_at(r, 0)?, r.try_get(12)?))))
    }

    async fn heads(&self, keys: &[(Namespace, EntityId)]) -> Result<Vec<((Namespace, EntityId), Seq)>> {
        let conn = self.reader().await?;
        let (ns, ids) = columns(keys);
        let rows = conn.client.query(&conn.q.heads, &[&ns, &ids]).await?;
        rows.iter()
            .map(|r| decode::head((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
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
        let conn = self.reader().await?;
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let rows = conn
            .client
            .query(
                &conn.q.events,
                &[
                    &ns.as_str(),
                    &id.as_str(),
                    &decode::to_i64(after),
                    &i64::from(limit),
                    &max_bytes,
                ],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let t: EventTuple = (
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                );
                decode::event(t)
            })
            .collect()
    }

    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<(Namespace, EntityId)>> {
        let conn = self.reader().await?;
        let rows = conn.client.query(&conn.q.due, &[&now.0, &i64::from(limit)]).await?;
        rows.iter()
            .map(|r| decode::entity_key((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn list_leases(&self, q: &ListLeases, now: Timestamp) -> Result<Vec<LeaseRow>> {
        let conn = self.reader().await?;
        let after = q.after.as_ref().map(|p| p.last());
        let rows = conn
            .client
            .query(
                &conn.q.list_leases,
                &[&q.ns.as_str(), &q.prefix, &now.0, &after, &i64::from(q.limit)],
            )
            .await?;
        rows.iter().map(|r| lease_at(r, 0)).collect()
    }

    async fn list_machines(&self, q: &ListMachines, max_bytes: usize) -> Result<(Vec<MachineRow>, bool)> {
        let conn = self.reader().await?;
        let after = q.after.as_ref().map(|p| p.last());
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let rows = conn
            .client
            .query(
                &conn.q.list_machines,
                &[&q.ns.as_str(), &after, &i64::from(q.limit), &max_bytes],
            )
            .await?;
        super::until_full(rows.iter().map(|r| Ok((machine_at(r, 0)?, r.try_get(4)?))))
    }

    async fn purge_requests(&self, before: Timestamp) -> Result<u64> {
        let conn = self.reader().await?;
        Ok(conn.client.execute(&conn.q.purge_requests, &[&before.0]).await?)
    }

    async fn is_housekeeper(&self) -> Result<bool> {
        let mut slot = self.housekeeper.lock().await;
        if let Some((client, held)) = slot.as_ref() {
            if client.is_closed() {
                // The lock went with its session.
                *slot = None;
            } else if *held {
                if client.simple_query("SELECT 1").await.is_ok() {
                    return Ok(true);
                }
                *slot = None;
            }
        }
        if slot.is_none() {
            let (client, connection) = self.pg.connect().await.map_err(conn::connect_error)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            *slot = Some((client, false));
        }
        // The session is kept whether or not it wins, so a replica that asks every half
        // second does not open a connection each time.
        let Some((client, held)) = slot.as_mut() else {
            return Ok(false);
        };
        let won: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&HOUSEKEEPER_LOCK])
            .await?
            .try_get(0)?;
        *held = won;
        Ok(won)
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn close(&self) {
        let _ = self.stop_listener.send(true);
        self.housekeeper.lock().await.take();
        for slot in self
            .lanes
            .iter()
            .map(|(s, _)| s)
            .chain(&self.readers)
            .chain([&self.define])
        {
            slot.clear().await;
        }
    }
}

/// A write batch: its lane's connection, inside the transaction `begin_batch` opened.
/// Dropped without a commit, the connection is poisoned (closed, so Postgres rolls the
/// transaction back) instead of reused in an unknown state.
struct PgBatch {
    conn: Option<Arc<Conn>>,
    round_trips: Arc<AtomicU64>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for PgBatch {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.poison();
        }
    }
}

#[async_trait]
impl BatchTx for PgBatch {
    async fn machines(&mut self, kinds: &BTreeSet<(Namespace, Name)>) -> Result<Vec<(Namespace, MachineRow)>> {
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| StoreError::Internal("batch already finished".into()))?;
        let (ns, names) = columns(kinds);
        let rows = conn.client.query(&conn.q.machines_by_kind, &[&ns, &names]).await;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::DB_ROUND_TRIPS).increment(1);
        namespaced_machines(&rows?)
    }

    async fn commit(mut self: Box<Self>, w: &Writes) -> Result<()> {
        let Some(conn) = self.conn.take() else {
            return Err(StoreError::Internal("batch already finished".into()));
        };
        let result = commit(&conn, w).await;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::DB_ROUND_TRIPS).increment(1);
        match result {
            // A statement refused before COMMIT: Postgres turned the COMMIT into a ROLLBACK,
            // and the connection is idle again.
            Err(e @ StoreError::Conflict(_)) => Err(e),
            Err(e) => {
                conn.poison();
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }
}

/// A statement parameter.
type P<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

/// One statement of a flight, its answer dropped (a failure still fails the flight).
fn step<'a>(c: &'a tokio_postgres::Client, stmt: &'a tokio_postgres::Statement, params: &'a [&'a P<'a>]) -> Step<'a> {
    c.execute(stmt, params).map(|r| r.map(drop)).boxed()
}

/// The namespaces and rows of the entities a batch creates (`new`) or updates.
fn entity_columns(w: &Writes, new: bool) -> (Vec<&str>, Vec<&Entity>) {
    w.entities
        .iter()
        .filter(|(_, (_, created))| *created == new)
        .map(|((ns, _), (e, _))| (ns.as_str(), e))
        .unzip()
}

/// The writes and COMMIT of a batch, in one flight.
async fn commit(conn: &Conn, w: &Writes) -> Result<()> {
    let (c, q) = (&conn.client, &conn.q);
    // Machines.
    let m_ns: Vec<&str> = w.machines.iter().map(|(n, _, _)| n.as_str()).collect();
    let m_kinds: Vec<&str> = w.machines.iter().map(|(_, k, _)| k.as_str()).collect();
    let m_versions: Vec<i64> = w.machines.iter().map(|(_, _, v)| decode::to_i64(*v)).collect();
    let m_locks: Vec<i64> = w
        .machines
        .iter()
        .map(|(n, k, _)| lock_key(n, lock_space::MACHINE, k.as_str()))
        .collect();
    // Leases.
    let l_ns: Vec<&str> = w.leases.keys().map(|(n, _)| n.as_str()).collect();
    let l_keys: Vec<&str> = w.leases.values().map(|l| l.key.as_str()).collect();
    let l_tokens: Vec<i64> = w.leases.values().map(|l| decode::to_i64(l.token)).collect();
    let l_holders: Vec<Option<&str>> = w
        .leases
        .values()
        .map(|l| l.holder.as_ref().map(|h| h.as_str()))
        .collect();
    let l_acquired: Vec<i64> = w.leases.values().map(|l| l.acquired_at.0).collect();
    let l_expires: Vec<i64> = w.leases.values().map(|l| l.expires_at.0).collect();
    // Entities, new and updated.
    let (n_ns, n_es) = entity_columns(w, true);
    let (u_ns, u_es) = entity_columns(w, false);
    let strs = |es: &[&Entity], f: fn(&Entity) -> String| es.iter().map(|e| f(e)).collect::<Vec<String>>();
    let ints = |es: &[&Entity], f: fn(&Entity) -> i64| es.iter().map(|e| f(e)).collect::<Vec<i64>>();
    let n_ids = strs(&n_es, |e| e.id.to_string());
    let n_kinds = strs(&n_es, |e| e.kind.to_string());
    let n_states = strs(&n_es, |e| e.state.clone());
    let n_versions = ints(&n_es, |e| decode::to_i64(e.version));
    let n_fields = strs(&n_es, |e| decode::fields_json(&e.fields));
    let n_dedup: Vec<Option<&str>> = n_es.iter().map(|e| e.dedup_key.as_ref().map(|d| d.as_str())).collect();
    let n_created = ints(&n_es, |e| e.created_at.0);
    let n_updated = ints(&n_es, |e| e.updated_at.0);
    let n_activity = ints(&n_es, |e| e.last_activity_at.0);
    let n_last = ints(&n_es, |e| decode::to_i64(e.last_seq));
    let n_final: Vec<Option<i64>> = n_es.iter().map(|e| e.final_seq.map(decode::to_i64)).collect();
    let n_due: Vec<Option<i64>> = n_es.iter().map(|e| e.due_at.map(|t| t.0)).collect();
    let u_ids = strs(&u_es, |e| e.id.to_string());
    let u_states = strs(&u_es, |e| e.state.clone());
    let u_versions = ints(&u_es, |e| decode::to_i64(e.version));
    let u_fields = strs(&u_es, |e| decode::fields_json(&e.fields));
    let u_updated = ints(&u_es, |e| e.updated_at.0);
    let u_activity = ints(&u_es, |e| e.last_activity_at.0);
    let u_last = ints(&u_es, |e| decode::to_i64(e.last_seq));
    let u_final: Vec<Option<i64>> = u_es.iter().map(|e| e.final_seq.map(decode::to_i64)).collect();
    let u_dedup: Vec<Option<&str>> = u_es.iter().map(|e| e.dedup_key.as_ref().map(|d| d.as_str())).collect();
    let u_due: Vec<Option<i64>> = u_es.iter().map(|e| e.due_at.map(|t| t.0)).collect();
    // Entities deleted.
    let (d_ns, d_ids) = columns(&w.deleted);
    // Events.
    let v_ns: Vec<&str> = w.events.iter().map(|(n, _, _)| n.as_str()).collect();
    let v_ids: Vec<&str> = w.events.iter().map(|(_, i, _)| i.as_str()).collect();
    let v_seqs: Vec<i64> = w.events.iter().map(|(_, _, e)| decode::to_i64(e.seq)).collect();
    let v_types: Vec<&str> = w.events.iter().map(|(_, _, e)| e.event_type.as_str()).collect();
    let v_cts: Vec<&str> = w.events.iter().map(|(_, _, e)| e.content_type.as_str()).collect();
    let v_payloads: Vec<&[u8]> = w.events.iter().map(|(_, _, e)| e.payload.as_slice()).collect();
    let v_states: Vec<Option<&str>> = w.events.iter().map(|(_, _, e)| e.state.as_deref()).collect();
    let v_at: Vec<i64> = w.events.iter().map(|(_, _, e)| e.created_at.0).collect();
    // Request outcomes.
    let r_ns: Vec<&str> = w.requests.iter().map(|(n, _, _)| n.as_str()).collect();
    let r_ids: Vec<&str> = w.requests.iter().map(|(_, r, _)| r.as_str()).collect();
    let r_calls: Vec<&str> = w.requests.iter().map(|(_, _, s)| s.call.as_str()).collect();
    let r_outcomes: Vec<&str> = w.requests.iter().map(|(_, _, s)| s.outcome.as_str()).collect();

    // One flight, in this order: the machine check first (it holds the kinds' locks to the
    // commit), the writes, then COMMIT. A statement that fails makes the COMMIT a ROLLBACK.
    let expect: [&P<'_>; 4] = [&m_ns, &m_kinds, &m_versions, &m_locks];
    let leases: [&P<'_>; 6] = [&l_ns, &l_keys, &l_tokens, &l_holders, &l_acquired, &l_expires];
    let inserts: [&P<'_>; 13] = [
        &n_ns,
        &n_ids,
        &n_kinds,
        &n_states,
        &n_versions,
        &n_fields,
        &n_dedup,
        &n_created,
        &n_updated,
        &n_activity,
        &n_last,
        &n_final,
        &n_due,
    ];
    let updates: [&P<'_>; 11] = [
        &u_ns,
        &u_ids,
        &u_states,
        &u_versions,
        &u_fields,
        &u_updated,
        &u_activity,
        &u_last,
        &u_final,
        &u_dedup,
        &u_due,
    ];
    let deletes: [&P<'_>; 2] = [&d_ns, &d_ids];
    let events: [&P<'_>; 8] = [&v_ns, &v_ids, &v_seqs, &v_types, &v_cts, &v_payloads, &v_states, &v_at];
    let requests: [&P<'_>; 5] = [&r_ns, &r_ids, &r_calls, &r_outcomes, &w.now.0];
    let mut steps: Vec<Step<'_>> = vec![];
    if !m_kinds.is_empty() {
        steps.push(step(c, &q.expect_machines, &expect));
    }
    if !l_keys.is_empty() {
        steps.push(step(c, &q.upsert_leases, &leases));
    }
    // Updates first: an entity that gives up its dedup key (`while_active`) frees it for an
    // entity inserted by the same batch. Deletes before inserts: an id deleted and created
    // again in one batch is a new entity.
    if !u_ids.is_empty() {
        steps.push(step(c, &q.update_entities, &updates));
    }
    if !d_ids.is_empty() {
        steps.push(step(c, &q.delete_entities, &deletes));
    }
    if !n_ids.is_empty() {
        steps.push(step(c, &q.insert_entities, &inserts));
    }
    if !v_seqs.is_empty() {
        steps.push(step(c, &q.insert_events, &events));
    }
    if !r_ids.is_empty() {
        steps.push(step(c, &q.insert_requests, &requests));
    }
    steps.push(c.batch_execute("COMMIT").boxed());
    // Every answer is awaited, the COMMIT's too, before the first failure is reported: the
    // lane's next batch may use the connection only once this transaction has ended (a
    // statement that failed made the COMMIT a ROLLBACK). Returning at the first failure
    // let the next BEGIN meet the aborted transaction (seen as 25P02 in about one run in
    // four of the contract suite).
    for result in futures::future::join_all(steps).await {
        result?;
    }
    Ok(())
}

/// A machine definition's transaction.
struct PgDefine {
    conn: Option<Arc<Conn>>,
}

impl Drop for PgDefine {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.poison();
        }
    }
}

#[async_trait]
impl DefineTx for PgDefine {
    async fn state_in_use(&mut self, ns: &Namespace, kind: &Name, states: &[&str]) -> Result<Option<String>> {
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| StoreError::Internal("definition already finished".into()))?;
        let row = conn
            .client
            .query_opt(&conn.q.state_in_use, &[&ns.as_str(), &kind.as_str(), &states])
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn commit(mut self: Box<Self>, ns: &Namespace, m: &StoredMachine) -> Result<()> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| StoreError::Internal("definition already finished".into()))?;
        let spec = decode::machine_json(m)?;
        let kind = m.machine.kind().as_str();
        let (c, q) = (&conn.client, &conn.q);
        let schedules: Vec<(&str, bool, i64)> = m
            .machine
            .schedules()
            .into_iter()
            .map(|(state, after, idle)| (state, idle, i64::try_from(after.as_micros()).unwrap_or(i64::MAX)))
            .collect();
        let (ns, version) = (ns.as_str(), decode::to_i64(m.version));
        let upsert: [&P<'_>; 5] = [&ns, &kind, &version, &spec, &m.defined_at.0];
        // Entities already in a state the new definition times out (or retains) get their
        // due time from it; stale ones left by the old definition are cleared when due.
        let reschedules: Vec<[&P<'_>; 5]> = schedules
            .iter()
            .map(|(state, idle, after)| -> [&P<'_>; 5] { [&ns, &kind, state, idle, after] })
            .collect();
        let mut steps: Vec<Step<'_>> = vec![step(c, &q.upsert_machine, &upsert)];
        steps.extend(reschedules.iter().map(|p| step(c, &q.reschedule, p)));
        steps.push(c.batch_execute("COMMIT").boxed());
        let mut done = Ok(());
        for result in futures::future::join_all(steps).await {
            if done.is_ok() {
                done = result;
            }
        }
        if let Err(e) = done {
            conn.poison();
            return Err(e.into());
        }
        Ok(())
    }
}
