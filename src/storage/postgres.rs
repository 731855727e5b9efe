//! The Postgres adapter: many replicas on one database. Writers of a key serialize on
//! `pg_advisory_xact_lock`; a write costs two round trips (begin with its lock and first
//! row; writes with COMMIT). Committed changes reach this replica's subscribers at once and
//! the other replicas by a batched `NOTIFY` after commit; one `LISTEN` connection per
//! replica hears them.

use super::rows::{self, impl_store, impl_write_tx};
use super::{Backend, Change, First, Result, StoreError, StoreOptions, Write};
use crate::domain::entity::Entity;
use crate::domain::lease::LeaseRow;
use crate::domain::machine::StoredMachine;
use crate::domain::names::{DedupKey, EntityId, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::{Clock, Timestamp};
use base64::Engine;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};

const TAPE_CHANNEL: &str = "baton_tape";
const LEASE_CHANNEL: &str = "baton_lease";
/// "Re-read everything": sent when notifications may have been lost.
const RESYNC_CHANNEL: &str = "baton_resync";
/// Postgres refuses NOTIFY payloads of 8000 bytes or more; events travel whole below this.
const MAX_NOTIFY_PAYLOAD: usize = 7000;
/// Session-level advisory lock held by the one replica that runs housekeeping.
const HOUSEKEEPER_LOCK: i64 = 0x6261_746f_6e5f_686b; // "baton_hk"

/// Postgres store.
pub struct PgStore {
    write_pool: PgPool,
    read_pool: PgPool,
    options: PgConnectOptions,
    clock: Clock,
    changes: broadcast::Sender<Change>,
    /// Where committed changes go.
    announcer: Arc<Announcer>,
    stop_listener: watch::Sender<bool>,
    /// A dedicated (unpooled) connection holding the housekeeper lock while we hold it:
    /// session-level advisory locks never go on pooled connections.
    housekeeper: Mutex<Option<PgConnection>>,
}

impl PgStore {
    /// Connects, runs migrations and starts the notification listener.
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<Self> {
        let StoreOptions {
            clock,
            pool_size,
            idle_in_transaction_timeout,
            lock_timeout,
            faults,
        } = opts;
        let millis = |d: Duration| d.as_millis().max(1).to_string();
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("bad Postgres URL {:?}: {e}", super::redact(url))))?
            .log_statements(tracing::log::LevelFilter::Trace)
            // A replica frozen (or cut off) inside a transaction must not hold its key's lock
            // for long: Postgres ends the session and rolls the transaction back, so writers
            // on other replicas go on. A healthy transaction is idle only between its two
            // round trips, for the microseconds the domain takes to decide.
            .options([
                (
                    "idle_in_transaction_session_timeout",
                    millis(idle_in_transaction_timeout),
                ),
                ("lock_timeout", millis(lock_timeout)),
            ]);
        let pool = PgPoolOptions::new()
            // No ping per checkout: that is a round trip per call. A dead connection fails its
            // first statement instead, which is reported as UNAVAILABLE and retried by clients.
            .test_before_acquire(false)
            .max_connections(pool_size.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to Postgres at {}: {e} (is PostgreSQL running and is the URL right?)",
                    super::redact(url)
                ))
            })?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        let (changes, _) = broadcast::channel(4096);
        let (stop_listener, stop) = watch::channel(false);
        let (ready_tx, ready) = oneshot::channel();
        let replica = uuid::Uuid::now_v7().as_u64_pair().1;
        tokio::spawn(listen(pool.clone(), changes.clone(), replica, stop, ready_tx));
        let (notices, queued) = mpsc::unbounded_channel();
        tokio::spawn(notifier(pool.clone(), queued));
        let announcer = Arc::new(Announcer {
            changes: changes.clone(),
            notices,
            replica,
            pause: faults.pause_after_commit,
        });
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
            write_pool: pool.clone(),
            read_pool: pool,
            options,
            clock,
            changes,
            announcer,
            stop_listener,
            housekeeper: Mutex::new(None),
        })
    }

    async fn begin_impl(&self, lock_key: i64, first: First<'_>) -> Result<PgTx> {
        let mut conn = TxConn(Some(self.write_pool.acquire().await?));
        // One round trip: open the transaction, wait for the key's lock, read the clock and
        // the first row. Numbers are written into the text; names are dollar-quoted.
        let skew = self.clock.skew_micros();
        // Separate statements, so the row is read with a snapshot taken after the lock.
        let mut sql = format!("BEGIN; SELECT pg_advisory_xact_lock({lock_key}); SELECT baton_now_us({skew});");
        match first {
            First::Nothing => {}
            First::Entity(ns, id) => {
                sql += &format!(
                    " SELECT {} FROM entities WHERE namespace = {} AND id = {}",
                    rows::ENTITY_COLS,
                    quote(ns.as_str()),
                    quote(id.as_str())
                )
            }
            First::Lease(ns, key) => {
                sql += &format!(
                    " SELECT {} FROM leases WHERE namespace = {} AND key = {}",
                    rows::LEASE_COLS,
                    quote(ns.as_str()),
                    quote(key.as_str())
                )
            }
        }
        // Rows: the lock's (void), the clock's, then the first row if it exists.
        let got = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(conn.get()?).await?;
        let now: i64 = got
            .get(1)
            .ok_or_else(|| StoreError::Internal("BEGIN returned no clock".into()))?
            .try_get(0)?;
        let row = got.get(2);
        let first = match first {
            First::Nothing => None,
            First::Entity(ns, id) => {
                let entity = row
                    .map(|r| rows::entity(<rows::EntityTuple as sqlx::FromRow<_>>::from_row(r)?))
                    .transpose()?;
                Some(FirstRow::Entity(ns.clone(), id.clone(), entity))
            }
            First::Lease(ns, key) => {
                let lease = row
                    .map(|r| rows::lease_row(<rows::LeaseTuple as sqlx::FromRow<_>>::from_row(r)?))
                    .transpose()?;
                Some(FirstRow::Lease(ns.clone(), key.clone(), lease))
            }
        };
        Ok(PgTx {
            tx: conn,
            now: Timestamp(now),
            first,
            published: Vec::new(),
            announcer: self.announcer.clone(),
            ops: Vec::new(),
            inserted: None,
        })
    }

    async fn heads_impl(&self, keys: &[(Namespace, EntityId)]) -> Result<Vec<((Namespace, EntityId), Seq)>> {
        let (namespaces, ids): (Vec<&str>, Vec<&str>) = keys.iter().map(|(n, i)| (n.as_str(), i.as_str())).unzip();
        sqlx::query_as::<_, (String, String, i64)>(
            "SELECT e.namespace, e.id, e.last_seq FROM unnest($1::text[], $2::text[]) AS k(namespace, id) \
             JOIN entities e ON e.namespace = k.namespace AND e.id = k.id",
        )
        .bind(namespaces)
        .bind(ids)
        .fetch_all(&self.read_pool)
        .await?
        .into_iter()
        .map(rows::head)
        .collect()
    }

    async fn now_impl(&self) -> Result<Timestamp> {
        let (now,): (i64,) = sqlx::query_as("SELECT baton_now_us($1)")
            .bind(self.clock.skew_micros())
            .fetch_one(&self.read_pool)
            .await?;
        Ok(Timestamp(now))
    }

    async fn is_housekeeper_impl(&self) -> Result<bool> {
        let mut slot = self.housekeeper.lock().await;
        if let Some(conn) = slot.as_mut() {
            if conn.ping().await.is_ok() {
                return Ok(true);
            }
            *slot = None;
        }
        let mut conn = self.options.connect().await?;
        let (won,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(HOUSEKEEPER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if won {
            *slot = Some(conn);
        }
        Ok(won)
    }

    async fn close_impl(&self) {
        let _ = self.stop_listener.send(true);
        if let Some(conn) = self.housekeeper.lock().await.take() {
            let _ = conn.close().await;
        }
        self.write_pool.close().await;
    }
}

impl_store!(PgStore, Postgres, Backend::Postgres, |n| format!(
    "(fields::jsonb ->> ${n}) IS NOT NULL"
));

/// A pooled connection inside an open transaction. Dropped before commit (an error, a
/// rejected call, a cancelled request), it rolls back before the pool may reuse it, and
/// is closed instead when even that fails.
struct TxConn(Option<PoolConnection<Postgres>>);

impl TxConn {
    fn get(&mut self) -> Result<&mut PgConnection> {
        // Only `finish` empties it, and that consumes the transaction.
        self.0
            .as_deref_mut()
            .ok_or_else(|| StoreError::Internal("transaction already finished".into()))
    }

    /// The transaction ended (committed): the connection may go back to the pool.
    fn finish(mut self) {
        self.0.take();
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            tokio::spawn(async move {
                if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                    conn.close_on_drop();
                }
            });
        }
    }
}

/// A Postgres write transaction. Its writes are collected and sent with the commit, as one
/// `baton_flush` call in the same round trip as `COMMIT`: a write costs no round trip of
/// its own. A read after a write sends the writes first, so reads see them.
pub struct PgTx {
    tx: TxConn,
    now: Timestamp,
    /// The row `begin` read, until it is asked for.
    first: Option<FirstRow>,
    /// Changes to announce once committed.
    published: Vec<Change>,
    announcer: Arc<Announcer>,
    /// Writes not yet sent, as `baton_flush` operations.
    ops: Vec<serde_json::Value>,
    /// The entity inserted by the pending writes, if any (to name a taken id).
    inserted: Option<EntityId>,
}

/// A row read by `begin`.
enum FirstRow {
    Entity(Namespace, EntityId, Option<Entity>),
    Lease(Namespace, LeaseKey, Option<LeaseRow>),
}

impl PgTx {
    /// The entity `begin` read, when it is the one asked for and nothing was written since.
    fn first_entity(&mut self, ns: &Namespace, id: &EntityId) -> Option<Option<Entity>> {
        match self.first.take() {
            Some(FirstRow::Entity(n, i, row)) if &n == ns && &i == id && self.ops.is_empty() => Some(row),
            _ => None,
        }
    }

    /// The lease row `begin` read, likewise.
    fn first_lease(&mut self, ns: &Namespace, key: &LeaseKey) -> Option<Option<LeaseRow>> {
        match self.first.take() {
            Some(FirstRow::Lease(n, k, row)) if &n == ns && &k == key && self.ops.is_empty() => Some(row),
            _ => None,
        }
    }

    /// The connection to read on, once the pending writes are applied.
    async fn reader(&mut self) -> Result<&mut PgConnection> {
        if !self.ops.is_empty() {
            let ops = self.take_ops();
            let res = sqlx::query("SELECT baton_flush($1::jsonb)")
                .bind(ops)
                .execute(self.tx.get()?)
                .await;
            self.classify(res)?;
        }
        self.tx.get()
    }

    fn take_ops(&mut self) -> String {
        serde_json::Value::Array(std::mem::take(&mut self.ops)).to_string()
    }

    fn classify<T>(&mut self, res: std::result::Result<T, sqlx::Error>) -> Result<T> {
        let inserted = self.inserted.take();
        res.map_err(|err| rows::write_error(err, inserted.as_ref()))
    }

    async fn expect_machine_impl(&mut self, lock_key: i64, ns: &Namespace, kind: &Name, version: u64) -> Result<()> {
        // Checked at commit, under the machine's shared lock (see baton_flush).
        self.ops.push(serde_json::json!({
            "op": "machine_is", "lock": lock_key, "ns": ns.as_str(), "kind": kind.as_str(), "version": version,
        }));
        Ok(())
    }

    async fn write_impl(&mut self, w: Write<'_>) -> Result<()> {
        use serde_json::json;
        let op = match w {
            Write::Request {
                ns,
                rid,
                method,
                outcome,
            } => json!({
                "op": "request", "ns": ns.as_str(), "rid": rid.as_str(), "method": method,
                "outcome": outcome, "at": self.now.0,
            }),
            Write::Lease { ns, lease } => json!({
                "op": "lease", "ns": ns.as_str(), "key": lease.key.as_str(), "token": lease.token,
                "holder": lease.holder.as_str(), "acquired": lease.acquired_at.0, "expires": lease.expires_at.0,
            }),
            Write::EndLease { ns, key } => json!({ "op": "end_lease", "ns": ns.as_str(), "key": key.as_str() }),
            Write::Machine { ns, m } => json!({
                "op": "machine", "ns": ns.as_str(), "kind": m.machine.kind().as_str(), "version": m.version,
                "spec": rows::machine_json(m)?, "at": m.defined_at.0,
            }),
            Write::InsertEntity { ns, e } => {
                self.inserted = Some(e.id.clone());
                json!({
                    "op": "insert_entity", "ns": ns.as_str(), "id": e.id.as_str(), "kind": e.kind.as_str(),
                    "state": e.state, "version": e.version, "fields": rows::fields_json(&e.fields),
                    "dedup": e.dedup_key.as_ref().map(|d| d.as_str()), "created": e.created_at.0,
                    "updated": e.updated_at.0, "activity": e.last_activity_at.0, "last_seq": e.last_seq,
                    "final_seq": e.final_seq,
                })
            }
            Write::UpdateEntity { ns, e } => json!({
                "op": "update_entity", "ns": ns.as_str(), "id": e.id.as_str(), "state": e.state,
                "version": e.version, "fields": rows::fields_json(&e.fields), "updated": e.updated_at.0,
                "activity": e.last_activity_at.0, "last_seq": e.last_seq, "final_seq": e.final_seq,
            }),
            Write::Events { ns, id, events } => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let ev: Vec<_> = events
                    .iter()
                    .map(|e| {
                        json!({
                            "seq": e.seq.get(), "type": e.event_type, "ct": e.content_type,
                            "payload": b64.encode(&e.payload), "state": e.state, "at": e.created_at.0,
                        })
                    })
                    .collect();
                json!({ "op": "events", "ns": ns.as_str(), "id": id.as_str(), "events": ev })
            }
        };
        self.ops.push(op);
        Ok(())
    }

    async fn publish_impl(&mut self, change: Change) -> Result<()> {
        self.published.push(change);
        Ok(())
    }

    async fn commit_impl(mut self) -> Result<()> {
        let sql = if self.ops.is_empty() {
            "COMMIT".to_string()
        } else {
            let ops = self.take_ops();
            format!("SELECT baton_flush({}::jsonb); COMMIT", quote(&ops))
        };
        let res = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(self.tx.get()?).await;
        self.classify(res)?;
        let PgTx {
            tx,
            published,
            announcer,
            ..
        } = self;
        tx.finish();
        if let Some(pause) = announcer.pause {
            tokio::time::sleep(pause).await;
        }
        announcer.announce(published);
        Ok(())
    }
}

/// `text` as a dollar-quoted SQL literal.
fn quote(text: &str) -> String {
    let tag = dollar_tag(text);
    format!("{tag}{text}{tag}")
}

/// A dollar-quote tag that first occurs in `text + tag` at its end, so `$tag$text$tag$`
/// is exactly `text` as a literal, whatever `text` holds (dollar quotes have no escapes).
fn dollar_tag(text: &str) -> String {
    (0u32..)
        .map(|n| format!("$b{n}$"))
        .find(|tag| format!("{text}{tag}").find(tag.as_str()) == Some(text.len()))
        .unwrap_or_default()
}

impl_write_tx!(
    PgTx,
    Postgres,
    "SELECT key, token, holder, acquired_at_us, expires_at_us FROM leases WHERE namespace = $1 AND key = $2 FOR SHARE"
);

#[derive(serde::Serialize, serde::Deserialize)]
struct WireTape {
    ns: String,
    id: String,
    head: Seq,
    #[serde(default)]
    ev: Vec<WireEvent>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireEvent {
    seq: u64,
    t: String,
    ct: String,
    p: String,
    st: Option<String>,
    at: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireLease {
    ns: String,
    key: String,
}

/// Announces committed changes: to this replica's subscribers at once, to the others
/// through the notifier.
struct Announcer {
    changes: broadcast::Sender<Change>,
    notices: mpsc::UnboundedSender<(&'static str, String)>,
    /// Prefixes this replica's notifications, so its listener skips them unread.
    replica: u64,
    /// Fault injection: a pause between commit and announcement.
    pause: Option<Duration>,
}

impl Announcer {
    fn announce(&self, committed: Vec<Change>) {
        for change in committed {
            if let Some((channel, payload)) = encode(&change) {
                let _ = self.notices.send((channel, format!("{}{payload}", tag(self.replica))));
            }
            let _ = self.changes.send(change);
        }
    }
}

/// The fixed-width prefix naming the replica a notification came from.
fn tag(replica: u64) -> String {
    format!("{replica:016x}")
}

/// A change as a notification (channel, payload) for the other replicas.
fn encode(change: &Change) -> Option<(&'static str, String)> {
    match change {
        Change::Tape {
            ns,
            entity_id,
            head,
            events,
        } => Some((TAPE_CHANNEL, encode_tape(ns, entity_id, *head, events))),
        Change::LeaseFreed { ns, key } => {
            let wire = WireLease {
                ns: ns.to_string(),
                key: key.to_string(),
            };
            Some((LEASE_CHANNEL, serde_json::to_string(&wire).unwrap_or_default()))
        }
        Change::Resync => None,
    }
}

/// The tape notification: the new events themselves when small, else just the head.
fn encode_tape(ns: &Namespace, id: &EntityId, head: Seq, events: &[Arc<StoredEvent>]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut wire = WireTape {
        ns: ns.to_string(),
        id: id.to_string(),
        head,
        ev: events
            .iter()
            .map(|e| WireEvent {
                seq: e.seq.get(),
                t: e.event_type.clone(),
                ct: e.content_type.clone(),
                p: b64.encode(&e.payload),
                st: e.state.clone(),
                at: e.created_at.0,
            })
            .collect(),
    };
    let full = serde_json::to_string(&wire).unwrap_or_default();
    if full.len() <= MAX_NOTIFY_PAYLOAD {
        return full;
    }
    wire.ev.clear();
    serde_json::to_string(&wire).unwrap_or_default()
}

/// A notification (its replica prefix removed) as a change.
fn decode(channel: &str, payload: &str) -> Option<Change> {
    let b64 = base64::engine::general_purpose::STANDARD;
    match channel {
        TAPE_CHANNEL => {
            let w: WireTape = serde_json::from_str(payload).ok()?;
            let events =
                w.ev.into_iter()
                    .map(|e| {
                        Some(Arc::new(StoredEvent {
                            seq: Seq::parse("seq", e.seq).ok()?,
                            event_type: e.t,
                            payload: b64.decode(e.p).ok()?,
                            content_type: e.ct,
                            state: e.st,
                            created_at: Timestamp(e.at),
                        }))
                    })
                    .collect::<Option<Vec<_>>>()?;
            Some(Change::Tape {
                ns: Namespace::parse("ns", w.ns).ok()?,
                entity_id: EntityId::parse("id", w.id).ok()?,
                head: w.head,
                events,
            })
        }
        LEASE_CHANNEL => {
            let w: WireLease = serde_json::from_str(payload).ok()?;
            Some(Change::LeaseFreed {
                ns: Namespace::parse("ns", w.ns).ok()?,
                key: LeaseKey::parse("key", w.key).ok()?,
            })
        }
        _ => None,
    }
}

/// Sends committed changes to the other replicas: `pg_notify` after commit, in batches
/// (one statement for everything queued meanwhile). A NOTIFY inside the write itself would
/// hold Postgres' cluster-wide notify lock across the commit's WAL flush, serializing
/// every tape write; this way the lock is taken once per batch. The price: a replica that
/// dies between a commit and its batch leaves the others' subscribers unwoken until their
/// next heartbeat, when they re-read the table anyway (see `service::tape`).
async fn notifier(pool: PgPool, mut queued: mpsc::UnboundedReceiver<(&'static str, String)>) {
    // One NOTIFY statement carries at most this much payload.
    const BATCH_BYTES: usize = 256 * 1024;
    while let Some(first) = queued.recv().await {
        let mut size = first.1.len();
        let (mut channels, mut payloads) = (vec![first.0], vec![first.1]);
        while size < BATCH_BYTES
            && let Ok((c, p)) = queued.try_recv()
        {
            size += p.len();
            channels.push(c);
            payloads.push(p);
        }
        let sent = sqlx::query("SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)")
            .bind(&channels)
            .bind(&payloads)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            // The other replicas may have missed these: ask them to re-read (this replica
            // delivered them itself). If even that fails, their heartbeats will.
            tracing::warn!(error = %e, n = payloads.len(), "cannot notify other replicas; asking them to resync");
            let _ = sqlx::query("SELECT pg_notify($1, '')")
                .bind(RESYNC_CHANNEL)
                .execute(&pool)
                .await;
        }
    }
}

/// The replica's one LISTEN connection. After every (re)connection it announces `Resync`,
/// so subscribers re-read from their last seq whatever was committed while it was down.
async fn listen(
    pool: PgPool,
    changes: broadcast::Sender<Change>,
    replica: u64,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) {
    let own = tag(replica);
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all([TAPE_CHANNEL, LEASE_CHANNEL, RESYNC_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = stop.changed() => return,
            l = connected => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "notification listener cannot connect; retrying");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(50);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let _ = changes.send(Change::Resync);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                got = listener.try_recv() => match got {
                    Ok(Some(n)) if n.channel() == RESYNC_CHANNEL => { let _ = changes.send(Change::Resync); }
                    // Our own: delivered at commit already; skipped without parsing.
                    Ok(Some(n)) if n.payload().starts_with(own.as_str()) => {}
                    Ok(Some(n)) => match n.payload().get(own.len()..).and_then(|p| decode(n.channel(), p)) {
                        Some(change) => { let _ = changes.send(change); }
                        None => tracing::warn!(channel = n.channel(), "undecodable notification"),
                    },
                    // Connection lost and re-established (eager reconnect): we may have
                    // missed notifications in between.
                    Ok(None) => {
                        tracing::warn!("notification connection was lost; resyncing subscribers");
                        let _ = changes.send(Change::Resync);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "notification listener failed; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{dollar_tag, quote};

    #[test]
    fn dollar_quoting_survives_any_text() {
        assert_eq!(quote("plain"), "$b0$plain$b0$");
        // The tag in the text, or the text ending in a prefix of the tag, moves to another tag.
        assert_eq!(dollar_tag("a$b0$z"), "$b1$");
        assert_eq!(dollar_tag("a$b0"), "$b1$");
        assert_eq!(dollar_tag("a$b"), "$b0$");
        assert_eq!(dollar_tag("$b0$$b1$$b2"), "$b3$");
    }
}
