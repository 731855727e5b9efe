//! Storage: one [`Store`] trait, a Postgres adapter and a SQLite adapter, picked from the
//! database URL scheme. The rules live in `domain`; a store only loads and saves. A write
//! batch costs two round trips: begin, lock its keys and read its rows; then write and
//! commit. Each backend owns its SQL, in `.sql` files beside it.

mod decode;
mod error;
mod postgres;
mod sqlite;

pub use error::StoreError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::domain::batch::{Lock, Reads, Rows, StoredRequest, Writes};
use crate::domain::command::{ListEntities, ListLeases, ListMachines};
use crate::domain::entity::Entity;
use crate::domain::lease::LeaseRow;
use crate::domain::machine::StoredMachine;
use crate::domain::names::{EntityId, LeaseKey, Name, Namespace, RequestId};
use crate::domain::tape::{Seq, StoredEvent};
use crate::domain::time::{Clock, Timestamp};
use crate::faults::Faults;
use async_trait::async_trait;
use std::collections::BTreeSet;
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

/// A machine row as stored: its spec still JSON (the service parses each version once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRow {
    /// The kind.
    pub kind: Name,
    /// 1, 2, 3 ... per redefinition.
    pub version: u64,
    /// The spec, as JSON.
    pub spec: String,
    /// When this version was stored.
    pub defined_at: Timestamp,
}

/// Database connections of a store at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connections {
    /// Open connections.
    pub open: usize,
    /// Of those, connections a call is using.
    pub in_use: usize,
}

/// What the first round trip of a write batch found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// For each lock asked for, in order: whether it is held (a key another replica holds
    /// is not; the commands that need it wait for a later batch).
    pub granted: Vec<bool>,
    /// Store time, read once the locks were held.
    pub now: Timestamp,
    /// Entities found by id, and those found by dedup key.
    pub entities: Vec<(Namespace, Entity)>,
    /// Lease rows found.
    pub leases: Vec<(Namespace, LeaseRow)>,
    /// Stored request outcomes found.
    pub requests: Vec<(Namespace, RequestId, StoredRequest)>,
    /// The machines asked for by kind.
    pub machines: Vec<(Namespace, MachineRow)>,
}

impl Loaded {
    /// The rows a batch decides against, each machine parsed by `machine` (the service
    /// parses each version once; see `service::MachineCache`).
    pub fn into_rows(self, mut machine: impl FnMut(&Namespace, &MachineRow) -> Result<StoredMachine>) -> Result<Rows> {
        let mut rows = Rows {
            now: self.now,
            ..Rows::default()
        };
        for (ns, e) in self.entities {
            if let Some(d) = &e.dedup_key {
                rows.dedup.insert((ns.clone(), e.kind.clone(), d.clone()), e.id.clone());
            }
            rows.entities.insert((ns, e.id.clone()), e);
        }
        for (ns, l) in self.leases {
            rows.leases.insert((ns, l.key.clone()), l);
        }
        for (ns, rid, stored) in self.requests {
            rows.requests.insert((ns, rid), stored);
        }
        for (ns, m) in self.machines {
            let parsed = machine(&ns, &m)?;
            rows.machines.insert((ns, m.kind), parsed);
        }
        Ok(rows)
    }
}

/// A storage backend. Writes go through write batches: one round trip to begin, lock and
/// read ([`Store::begin_batch`]), one to write and commit ([`BatchTx::commit`]). Reads use
/// connections of their own, so they never queue behind writes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is (for logs).
    fn backend(&self) -> Backend;
    /// The clock (skew source in tests).
    fn clock(&self) -> &Clock;
    /// How many write batches can be in flight at once (each lane has its own connection;
    /// a lane runs one batch at a time, and a second `begin_batch` on it waits its turn).
    fn lanes(&self) -> usize;
    /// First round trip of a write batch on `lane`: begins a transaction, takes `locks` in
    /// their order — each tried (`wait` false) or waited for (`wait` true) — reads the store
    /// clock, then reads what `reads` names (nothing is sent for what it does not name).
    async fn begin_batch(
        &self,
        lane: usize,
        locks: &[Lock],
        wait: bool,
        reads: &Reads,
    ) -> Result<(Box<dyn BatchTx>, Loaded)>;
    /// A machine definition's own transaction, holding the kind's lock exclusively (it
    /// waits for write batches planned with the kind's current version), with the stored
    /// machine if there is one and the store time.
    async fn begin_define(
        &self,
        ns: &Namespace,
        kind: &Name,
    ) -> Result<(Box<dyn DefineTx>, Option<MachineRow>, Timestamp)>;
    /// Delivers committed changes to this replica's subscribers and, where there are
    /// others, to the other replicas.
    fn announce(&self, changes: Vec<Change>);
    /// Database round trips made by write batches so far (tests and metrics count them).
    fn round_trips(&self) -> u64;
    /// The store's open database connections, and how many of them a call is using now
    /// (metrics read it at each scrape).
    fn connections(&self) -> Connections {
        Connections::default()
    }
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
    /// A page of entities, ordered by id: up to `q.limit`, stopping before the entity that
    /// would take the page past `max_bytes` (each counted as its fields' JSON plus 256; the
    /// first is always returned), and whether it stopped there.
    async fn list_entities(&self, q: &ListEntities, max_bytes: usize) -> Result<(Vec<Entity>, bool)>;
    /// The stored tape heads of these entities (absent ones are left out), in one query.
    async fn heads(&self, keys: &[(Namespace, EntityId)]) -> Result<Vec<((Namespace, EntityId), Seq)>>;
    /// Up to `limit` events with seq > `after`, in order, stopping before the event that
    /// would take the payload bytes returned past `max_bytes` (the first is always returned).
    async fn events(
        &self,
        ns: &Namespace,
        id: &EntityId,
        after: Seq,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>>;
    /// Up to `limit` entities whose due time (a state timeout, a purge) is at or before
    /// `now`, soonest first.
    async fn due(&self, now: Timestamp, limit: u32) -> Result<Vec<(Namespace, EntityId)>>;
    /// A page of the leases live at `now`, ordered by key.
    async fn list_leases(&self, q: &ListLeases, now: Timestamp) -> Result<Vec<LeaseRow>>;
    /// A page of machines, ordered by kind: up to `q.limit`, stopping before the machine that
    /// would take the page past `max_bytes` (each counted as its spec's JSON plus 64; the
    /// first is always returned), and whether it stopped there.
    async fn list_machines(&self, q: &ListMachines, max_bytes: usize) -> Result<(Vec<MachineRow>, bool)>;
    /// Deletes request outcomes stored before `before`; returns how many.
    async fn purge_requests(&self, before: Timestamp) -> Result<u64>;
    /// True when this replica should run housekeeping (one replica at a time).
    async fn is_housekeeper(&self) -> Result<bool>;
    /// Committed changes, from every replica.
    fn changes(&self) -> broadcast::Receiver<Change>;
    /// Stops background tasks (the notification listener) and closes connections.
    async fn close(&self);
}

/// The second round trip of a write batch. Dropped without [`BatchTx::commit`], it rolls back.
#[async_trait]
pub trait BatchTx: Send {
    /// The machines of `kinds`, read inside the batch's transaction: a third round trip,
    /// for the kinds a replica has not cached yet.
    async fn machines(&mut self, kinds: &BTreeSet<(Namespace, Name)>) -> Result<Vec<(Namespace, MachineRow)>>;
    /// Writes everything and commits. [`StoreError::Conflict`]: nothing was written (a
    /// machine was redefined, a row appeared), decide the batch again; `Unavailable`: the
    /// commit's fate is unknown.
    async fn commit(self: Box<Self>, writes: &Writes) -> Result<()>;
}

/// A machine definition's transaction.
#[async_trait]
pub trait DefineTx: Send {
    /// One of `states` that some entity of `kind` is in, if any.
    async fn state_in_use(&mut self, ns: &Namespace, kind: &Name, states: &[&str]) -> Result<Option<String>>;
    /// Stores the machine and commits.
    async fn commit(self: Box<Self>, ns: &Namespace, machine: &StoredMachine) -> Result<()>;
}

/// The rows of a page read with its `fits` column (see `list_entities.sql`): the rows up to
/// the first that does not fit, and whether there was one.
fn until_full<T>(rows: impl IntoIterator<Item = Result<(T, bool)>>) -> Result<(Vec<T>, bool)> {
    let mut page = vec![];
    for row in rows {
        let (item, fits) = row?;
        if !fits {
            return Ok((page, true));
        }
        page.push(item);
    }
    Ok((page, false))
}

/// A stored machine row, parsed and validated (a row that breaks a rule is corrupt).
pub fn parse_machine(row: &MachineRow) -> Result<StoredMachine> {
    decode::machine(row)
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The clock (database time on Postgres is shifted by its skew).
    pub clock: Clock,
    /// Postgres connections per replica for reads.
    pub pool_size: u32,
    /// Postgres write lanes: batches in flight at once, each on a connection of its own.
    pub write_lanes: u32,
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
            write_lanes: 2,
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

/// A database URL (or libpq `key=value` connection string) with every password replaced by
/// `***`, for error messages and logs. Errs on the side of hiding: the user information runs
/// to the *last* `@` (a password may hold an unencoded `@`; tokio-postgres stops at the first
/// one and would read the rest as the host), and the value of every `password`-like
/// parameter (`password`, `sslpassword`, in a query string or a connection string) is hidden.
pub fn redact(url: &str) -> String {
    let url = match url.find("://") {
        Some(s) => {
            let (scheme, rest) = url.split_at(s + 3);
            match rest.rfind('@') {
                Some(at) => {
                    let user = rest[..at].split_once(':').map_or(&rest[..at], |(user, _)| user);
                    let password = if rest[..at].contains(':') { ":***" } else { "" };
                    format!("{scheme}{user}{password}{}", &rest[at..])
                }
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };
    redact_password_params(&url)
}

/// Hides the value of every parameter whose name ends in `password` (any case): `?password=…`,
/// `&sslpassword=…`, `password = 'it''s'`.
fn redact_password_params(s: &str) -> String {
    const NAME: &str = "password";
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find(NAME) {
        let name_end = from + found + NAME.len();
        let after = &s[name_end..];
        let value_at = name_end + (after.len() - after.trim_start().len());
        if !s[value_at..].starts_with('=') {
            out.push_str(&s[from..name_end]);
            from = name_end;
            continue;
        }
        let value_at = value_at + 1;
        let value = &s[value_at..];
        let value_at = value_at + (value.len() - value.trim_start().len());
        let value = &s[value_at..];
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            // A quoted value ends at the first quote not escaped by a backslash.
            let mut escaped = false;
            let end = quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(quoted.len(), |(i, _)| i + 1);
            1 + end
        } else {
            value
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                .unwrap_or(value.len())
        };
        out.push_str(&s[from..value_at]);
        out.push_str("***");
        from = value_at + len;
    }
    out.push_str(&s[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn every_password_is_redacted() {
        let cases = [
            ("postgres://u:s3cret@db:5432/x", "postgres://u:***@db:5432/x"),
            // An unencoded `@` in the password: hidden up to the last one.
            ("postgres://u:p@ss@w0rd@db/x", "postgres://u:***@db/x"),
            ("postgresql://u:a:b@db/x", "postgresql://u:***@db/x"),
            ("postgres://u@db/x", "postgres://u@db/x"),
            ("postgres://db/x?password=s3cret", "postgres://db/x?password=***"),
            (
                "postgres://u@db/x?sslmode=require&PASSWORD=s3cret&application_name=a",
                "postgres://u@db/x?sslmode=require&PASSWORD=***&application_name=a",
            ),
            ("postgres://db/x?sslpassword=s3cret", "postgres://db/x?sslpassword=***"),
            (
                "host=db user=u password=s3cret dbname=x",
                "host=db user=u password=*** dbname=x",
            ),
            (
                "host=db password = 'it\\'s s3cret' dbname=x",
                "host=db password = *** dbname=x",
            ),
            ("sqlite:baton.db", "sqlite:baton.db"),
            (
                "postgres://db/x?application_name=password",
                "postgres://db/x?application_name=password",
            ),
        ];
        for (url, expected) in cases {
            let shown = redact(url);
            assert_eq!(shown, expected, "{url}");
            for secret in ["s3cret", "ss", "w0rd", "it"] {
                if url.contains(secret) && !expected.contains(secret) {
                    assert!(!shown.contains(secret), "{url} -> {shown}");
                }
            }
        }
    }
}
