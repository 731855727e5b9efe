//! Connections of the Postgres adapter. Each is opened with baton's session bounds, and
//! prepares every statement baton sends — once, in one pipelined round trip — so no call
//! parses or plans SQL text, and no statement carries request data in its text.

use super::super::{Result, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls, Statement};

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
pub async fn open(config: &Config) -> Result<Conn> {
    let (client, connection) = config.connect(NoTls).await.map_err(StoreError::from)?;
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
    pub async fn get(&self, config: &Config) -> Result<Arc<Conn>> {
        let mut slot = self.0.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.client.is_closed()
            && !conn.poisoned.load(Ordering::Relaxed)
        {
            return Ok(conn.clone());
        }
        *slot = None;
        let conn = Arc::new(open(config).await?);
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
