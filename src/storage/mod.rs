//! Storage: one [`Store`] trait, a Postgres adapter and a SQLite adapter, picked from the
//! database URL scheme. The rules live in `domain`; a store only loads and saves, inside
//! write transactions that begin with the key's lock ([`Store::begin`]).

mod error;
mod postgres;
mod rows;
mod sqlite;

pub use error::StoreError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::domain::command::ListEntities;
use crate::domain::entity::Entity;
use crate::domain::lease::{Lease, LeaseRow};
use crate::domain::machine::StoredMachine;
use crate::domain::names::{DedupKey, EntityId, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::{Clock, Timestamp};
use crate::faults::Faults;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Result of storage calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A committed change, delivered to every replica's subscribers and lease waiters.
#[derive(Debug, Clone)]
pub enum Change {
    /// A tape grew to `head`. `events` holds the new events when they were small enough to
    /// travel with the notification; otherwise it is empty and readers go to the table.
    Tape {
        ns: Namespace,
        entity_id: EntityId,
        head: Seq,
        events: Vec<Arc<StoredEvent>>,
    },
    /// A key's lease was released (waiters may now acquire).
    LeaseFreed { ns: Namespace, key: LeaseKey },
    /// Notifications may have been missed (lost connection, lagging hub): everyone re-reads.
    Resync,
}

/// Which backend a store is: the one backend enum of the project (the bench and the tests
/// pick backends with it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Postgres: many replicas, advisory locks, LISTEN/NOTIFY.
    Postgres,
    /// SQLite: one node, in-process wake-ups.
    Sqlite,
}

impl Backend {
    /// Both backends, in the order tests run them.
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    /// The lowercase name (`sqlite`, `postgres`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown backend {s:?}: use sqlite or postgres"))
    }
}

/// A storage backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is (for logs).
    fn backend(&self) -> Backend;
    /// The clock (skew source in tests).
    fn clock(&self) -> &Clock;
    /// Begins a write transaction holding the lock of `lock_key` (see
    /// [`crate::domain::names::lock_key`]); its clock is read after the lock is held.
    async fn begin(&self, lock_key: i64) -> Result<Box<dyn WriteTx>> {
        self.begin_at(lock_key, First::Nothing).await
    }
    /// [`Store::begin`], naming the row the transaction will read first: Postgres reads it
    /// (after the lock) in the same round trip that takes the lock.
    async fn begin_at(&self, lock_key: i64, first: First<'_>) -> Result<Box<dyn WriteTx>>;
    /// Store time now.
    async fn now(&self) -> Result<Timestamp>;
    /// Answers when the database does.
    async fn ping(&self) -> Result<()>;
    /// A key's lease row.
    async fn lease_row(&self, ns: &Namespace, key: &LeaseKey) -> Result<Option<LeaseRow>>;
    /// A kind's machine.
    async fn machine(&self, ns: &Namespace, kind: &Name) -> Result<Option<StoredMachine>>;
    /// One entity.
    async fn entity(&self, ns: &Namespace, id: &EntityId) -> Result<Option<Entity>>;
    /// A page of entities, ordered by id.
    async fn list_entities(&self, q: &ListEntities) -> Result<Vec<Entity>>;
    /// The stored tape heads of these entities (absent ones are left out), in one query.
    async fn heads(&self, keys: &[(Namespace, EntityId)]) -> Result<Vec<((Namespace, EntityId), Seq)>>;
    /// Up to `limit` events with seq > `after`, in order.
    async fn events(&self, ns: &Namespace, id: &EntityId, after: Seq, limit: u32) -> Result<Vec<StoredEvent>>;
    /// Deletes request outcomes stored before `before`; returns how many.
    async fn purge_requests(&self, before: Timestamp) -> Result<u64>;
    /// True when this replica should run housekeeping (one replica at a time).
    async fn is_housekeeper(&self) -> Result<bool>;
    /// Committed changes, from every replica.
    fn changes(&self) -> broadcast::Receiver<Change>;
    /// Stops background tasks (the notification listener) and closes connections.
    async fn close(&self);
}

/// The row a write transaction reads first.
#[derive(Debug, Clone, Copy)]
pub enum First<'a> {
    /// No hint.
    Nothing,
    /// An entity ([`WriteTx::entity`]).
    Entity(&'a Namespace, &'a EntityId),
    /// A lease row, unshared ([`WriteTx::lease_row`] with `share: false`).
    Lease(&'a Namespace, &'a LeaseKey),
}

/// One write of a transaction. Postgres sends a transaction's writes to the database
/// together, with its commit, in one round trip; SQLite runs each at once.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// Stores the outcome of a request id.
    Request {
        ns: &'a Namespace,
        rid: &'a RequestId,
        method: &'a str,
        outcome: &'a str,
    },
    /// Writes a key's lease (creating the row on first grant).
    Lease { ns: &'a Namespace, lease: &'a Lease },
    /// Ends a key's lease, keeping its token counter.
    EndLease { ns: &'a Namespace, key: &'a LeaseKey },
    /// Creates or replaces a kind's machine.
    Machine { ns: &'a Namespace, m: &'a StoredMachine },
    /// Inserts a new entity; `AlreadyExists` (at the latest on commit) when the id is taken.
    InsertEntity { ns: &'a Namespace, e: &'a Entity },
    /// Saves an entity's state, version, fields, times and tape head.
    UpdateEntity { ns: &'a Namespace, e: &'a Entity },
    /// Appends numbered events.
    Events {
        ns: &'a Namespace,
        id: &'a EntityId,
        events: &'a [StoredEvent],
    },
}

/// One write transaction. Dropping it without [`WriteTx::commit`] rolls back.
#[async_trait]
pub trait WriteTx: Send {
    /// Store time, read once the transaction's lock was held.
    fn now(&self) -> Timestamp;
    /// Makes the commit conditional on `kind`'s machine still being at `version`, holding
    /// the machine's lock shared from then to the commit (a redefinition takes it
    /// exclusively, so it cannot remove a state under this transaction). When the machine
    /// changed, this call or the commit fails with [`StoreError::Conflict`].
    async fn expect_machine(&mut self, lock_key: i64, ns: &Namespace, kind: &Name, version: u64) -> Result<()>;
    /// The stored outcome of `rid`: (method, JSON).
    async fn request(&mut self, ns: &Namespace, rid: &RequestId) -> Result<Option<(String, String)>>;
    /// A key's lease row. With `share`, a concurrent acquire of the key waits for this
    /// transaction (a fenced write and a takeover cannot interleave, I3).
    async fn lease_row(&mut self, ns: &Namespace, key: &LeaseKey, share: bool) -> Result<Option<LeaseRow>>;
    /// A kind's machine.
    async fn machine(&mut self, ns: &Namespace, kind: &Name) -> Result<Option<StoredMachine>>;
    /// One of `states` that some entity of `kind` is in, if any.
    async fn state_in_use(&mut self, ns: &Namespace, kind: &Name, states: &[&str]) -> Result<Option<String>>;
    /// One entity.
    async fn entity(&mut self, ns: &Namespace, id: &EntityId) -> Result<Option<Entity>>;
    /// The entity holding a dedup key.
    async fn entity_by_dedup(&mut self, ns: &Namespace, kind: &Name, dedup: &DedupKey) -> Result<Option<Entity>>;
    /// One write (see [`Write`]); it is part of the commit, and visible to later reads of
    /// this transaction.
    async fn write(&mut self, w: Write<'_>) -> Result<()>;
    /// Announces a change to every replica once the transaction commits.
    async fn publish(&mut self, change: Change) -> Result<()>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Stores the outcome of `rid`.
    async fn put_request(&mut self, ns: &Namespace, rid: &RequestId, method: &str, outcome: &str) -> Result<()> {
        self.write(Write::Request {
            ns,
            rid,
            method,
            outcome,
        })
        .await
    }
    /// Writes the key's lease (creating the row on first grant).
    async fn put_lease(&mut self, ns: &Namespace, lease: &Lease) -> Result<()> {
        self.write(Write::Lease { ns, lease }).await
    }
    /// Ends the key's lease, keeping its token counter.
    async fn end_lease(&mut self, ns: &Namespace, key: &LeaseKey) -> Result<()> {
        self.write(Write::EndLease { ns, key }).await
    }
    /// Creates or replaces a kind's machine.
    async fn put_machine(&mut self, ns: &Namespace, m: &StoredMachine) -> Result<()> {
        self.write(Write::Machine { ns, m }).await
    }
    /// Inserts a new entity.
    async fn insert_entity(&mut self, ns: &Namespace, e: &Entity) -> Result<()> {
        self.write(Write::InsertEntity { ns, e }).await
    }
    /// Saves an entity.
    async fn update_entity(&mut self, ns: &Namespace, e: &Entity) -> Result<()> {
        self.write(Write::UpdateEntity { ns, e }).await
    }
    /// Appends numbered events.
    async fn insert_events(&mut self, ns: &Namespace, id: &EntityId, events: &[StoredEvent]) -> Result<()> {
        self.write(Write::Events { ns, id, events }).await
    }
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The clock (database time on Postgres is shifted by its skew).
    pub clock: Clock,
    /// Postgres connections per replica.
    pub pool_size: u32,
    /// Postgres ends a baton session that sits idle inside a transaction this long (a frozen
    /// or partitioned replica), rolling the transaction back and freeing its key's lock.
    pub idle_in_transaction_timeout: Duration,
    /// Postgres gives up a wait for a lock after this long (the call is UNAVAILABLE).
    pub lock_timeout: Duration,
    /// Deliberate faults (tests only; all off by default).
    pub faults: Faults,
}

impl StoreOptions {
    /// Options with this clock and pool size, the other bounds at values that never cut a
    /// healthy transaction, no faults. (The server's defaults are in `app::Settings`.)
    pub fn new(clock: Clock, pool_size: u32) -> Self {
        Self {
            clock,
            pool_size,
            idle_in_transaction_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(10),
            faults: Faults::default(),
        }
    }
}

/// Opens the store a database URL names: `postgres://…` / `postgresql://…` or
/// `sqlite:…`. Runs migrations.
pub async fn connect(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, options).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, options).await?))
    } else {
        Err(StoreError::Config(format!(
            "unsupported database URL {:?}: use postgres://user@host/db or sqlite:path/to/file.db",
            redact(url)
        )))
    }
}

/// A URL with any password replaced, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
