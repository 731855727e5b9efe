//! Connections of the Postgres adapter. Each is opened with baton's session bounds, and
//! prepares every statement baton sends — once, in one pipelined round trip — so no call
//! parses or plans SQL text, and no statement carries request data in its text.

use super::super::{Result, StoreError};
use super::tls::{self, Tls};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, Socket, Statement};

/// A connection's driver: spawn it (or poll its messages) for the client to be served.
pub type Connection = tokio_postgres::Connection<Socket, tls::Stream>;

/// Where and how every baton connection is made: the URL's settings (with baton's session
/// bounds) and its TLS.
#[derive(Clone)]
pub struct Endpoint {
    pub config: Config,
    pub tls: Tls,
}

impl Endpoint {
    /// Opens a bare connection (no statements prepared).
    pub async fn connect(&self) -> Result<(Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// An error and its causes on one line. tokio-postgres's own message stops at its kind
/// ("error performing TLS handshake"): the cause is what says what went wrong.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// A driver error on one line: a server's refusal as severity, message and SQLSTATE; any
/// other failure with its causes.
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => describe(e),
    }
}

/// Classifies a failure to connect, keeping its cause in the message.
pub fn connect_error(e: tokio_postgres::Error) -> StoreError {
    let text = describe_pg(&e);
    match StoreError::from(e) {
        StoreError::Unavailable(_) => StoreError::Unavailable(text),
        StoreError::Internal(_) => StoreError::Internal(text),
        other => other,
    }
}

/// True when `e` failed in the TLS handshake for a reason [`tls::Failure`] words (a
/// certificate rejected, a file unreadable): its message then says what to fix.
pub fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<tls::Failure>() {
            return true;
        }
        source = s.source();
    }
    false
}

macro_rules! queries {
    ($($name:ident),+ $(,)?) => {
        /// Every statement, prepared on one connection.
        pub struct Queries {
            $(pub $name: Statement,)+
        }

        impl Queries {
            async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
                let ($($name,)+) = futures::try_join!(
                    $(c.prepare(include_str!(concat!("queries/", stringify!($name), ".sql"))),)+
                )?;
                Ok(Self { $($name,)+ })
            }
        }
    };
}

queries!(
    lock,
    now,
    entities_by_id,
    entities_by_dedup,
    leases_by_key,
    requests_by_id,
    machines_by_kind,
    expect_machines,
    upsert_leases,
    insert_entities,
    update_entities,
    insert_events,
    insert_requests,
    define_lock,
    machine,
    upsert_machine,
    state_in_use,
    entity,
    lease,
    list_entities,
    heads,
    events,
    purge_requests,
    notify,
    delete_entities,
    due,
    reschedule,
    list_leases,
    list_machines,
);

/// One connection and its statements.
pub struct Conn {
    pub client: Client,
    pub q: Queries,
    /// Set when a transaction on it was abandoned half-way: it is replaced, never reused
    /// (closing it makes Postgres roll the transaction back).
    poisoned: AtomicBool,
}

impl Conn {
    /// Marks this connection unusable (its transaction state is unknown).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Relaxed);
    }
}

/// Opens a connection, drives it on a task of its own, and prepares the statements.
pub async fn open(endpoint: &Endpoint) -> Result<Conn> {
    let (client, connection) = endpoint.connect().await.map_err(connect_error)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    let q = Queries::prepare(&client).await?;
    Ok(Conn {
        client,
        q,
        poisoned: AtomicBool::new(false),
    })
}

/// A connection opened on first use and replaced when it closes or is poisoned.
#[derive(Default)]
pub struct Slot(Mutex<Option<Arc<Conn>>>);

impl Slot {
    /// The slot's connection, (re)opened if need be.
    pub async fn get(&self, endpoint: &Endpoint) -> Result<Arc<Conn>> {
        let mut slot = self.0.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.client.is_closed()
            && !conn.poisoned.load(Ordering::Relaxed)
        {
            return Ok(conn.clone());
        }
        *slot = None;
        let conn = Arc::new(open(endpoint).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Whether the slot has an open connection, and whether a call holds it now (a slot
    /// being (re)opened counts as open and in use).
    pub fn state(&self) -> (bool, bool) {
        match self.0.try_lock() {
            Err(_) => (true, true),
            Ok(slot) => match slot.as_ref() {
                Some(conn) if !conn.client.is_closed() => (true, Arc::strong_count(conn) > 1),
                _ => (false, false),
            },
        }
    }

    /// Drops the slot's connection.
    pub async fn clear(&self) {
        self.0.lock().await.take();
    }
}
