//! The Postgres adapter: many replicas on one database. Writers of a key serialize on
//! `pg_advisory_xact_lock` (taken with the clock read by `baton_lock_now`); commits announce
//! themselves with `NOTIFY`, and one `LISTEN` connection per replica hears every replica.

use super::rows::{self, impl_store, impl_write_tx};
use super::{Backend, Change, Result, StoreError, StoredMachine};
use crate::domain::entity::Entity;
use crate::domain::lease::{Lease, LeaseRow};
use crate::domain::names::{DedupKey, EntityId, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::StoredEvent;
use crate::domain::time::{Clock, Timestamp};
use base64::Engine;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, broadcast, oneshot, watch};

const TAPE_CHANNEL: &str = "baton_tape";
const LEASE_CHANNEL: &str = "baton_lease";
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
    stop_listener: watch::Sender<bool>,
    /// A dedicated (unpooled) connection holding the housekeeper lock while we hold it:
    /// session-level advisory locks never go on pooled connections.
    housekeeper: Mutex<Option<PgConnection>>,
}

impl PgStore {
    /// Connects, runs migrations and starts the notification listener.
    pub async fn connect(url: &str, clock: Clock, pool_size: u32) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("bad Postgres URL {:?}: {e}", super::redact(url))))?
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
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
        tokio::spawn(listen(pool.clone(), changes.clone(), stop, ready_tx));
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
            stop_listener,
            housekeeper: Mutex::new(None),
        })
    }

    async fn begin_impl(&self, lock_key: i64) -> Result<PgTx> {
        let mut tx = self.write_pool.begin().await?;
        let (now,): (i64,) = sqlx::query_as("SELECT baton_lock_now($1, $2)")
            .bind(lock_key)
            .bind(self.clock.skew_micros())
            .fetch_one(&mut *tx)
            .await?;
        Ok(PgTx {
            tx,
            now: Timestamp(now),
        })
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

/// A Postgres write transaction.
pub struct PgTx {
    tx: sqlx::Transaction<'static, Postgres>,
    now: Timestamp,
}

impl PgTx {
    async fn lock_shared_impl(&mut self, lock_key: i64) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(lock_key)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn publish_impl(&mut self, change: Change) -> Result<()> {
        let (channel, payload) = match &change {
            Change::Tape {
                ns,
                entity_id,
                head,
                events,
            } => (TAPE_CHANNEL, encode_tape(ns, entity_id, *head, events)),
            Change::LeaseFreed { ns, key } => (
                LEASE_CHANNEL,
                serde_json::json!({ "ns": ns.as_str(), "key": key.as_str() }).to_string(),
            ),
            Change::Resync => return Ok(()),
        };
        // Delivered by Postgres at commit, in commit order, to every listening replica.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn commit_impl(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
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
    head: u64,
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

#[derive(serde::Deserialize)]
struct WireLease {
    ns: String,
    key: String,
}

/// The tape notification: the new events themselves when small, else just the head.
fn encode_tape(ns: &Namespace, id: &EntityId, head: u64, events: &[Arc<StoredEvent>]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut wire = WireTape {
        ns: ns.to_string(),
        id: id.to_string(),
        head,
        ev: events
            .iter()
            .map(|e| WireEvent {
                seq: e.seq,
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

fn decode(channel: &str, payload: &str) -> Option<Change> {
    let b64 = base64::engine::general_purpose::STANDARD;
    match channel {
        TAPE_CHANNEL => {
            let w: WireTape = serde_json::from_str(payload).ok()?;
            let events =
                w.ev.into_iter()
                    .map(|e| {
                        Some(Arc::new(StoredEvent {
                            seq: e.seq,
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

/// The replica's one LISTEN connection. After every (re)connection it announces `Resync`,
/// so subscribers re-read from their last seq whatever was committed while it was down.
async fn listen(
    pool: PgPool,
    changes: broadcast::Sender<Change>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    loop {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all([TAPE_CHANNEL, LEASE_CHANNEL]).await?;
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
                    Ok(Some(n)) => match decode(n.channel(), n.payload()) {
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
