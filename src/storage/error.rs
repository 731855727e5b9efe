//! Storage errors. sqlx errors are classified here and never leak upward.

use crate::domain::DomainError;

/// SQLSTATE raised by the Postgres `baton_expect_machines` function when a machine a batch
/// was decided with no longer has the version it read.
pub const MACHINE_CHANGED: &str = "BA001";

/// True for the SQLSTATEs that mean "the database cannot serve this now": connection
/// exceptions, admin shutdown, cannot connect now, too many connections, a session ended
/// for idling inside a transaction (25P03), a lock not granted within lock_timeout (55P03).
fn unavailable(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "25P03" | "55P03")
}

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A rule was broken (found inside the transaction, e.g. a taken id).
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// A premise of the transaction changed under it (a machine was redefined): nothing was
    /// written; run the call again from the start.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is shutting down: retry, maybe elsewhere.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Bad configuration (URL, file permissions).
    #[error("{0}")]
    Config(String),
    /// Anything else: a bug or a corrupt row. Logged in full, reported without internals.
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Classifies a sqlx error.
    pub fn from_sqlx(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // Raised by baton_flush when a machine the transaction relied on changed.
                Some(MACHINE_CHANGED) => StoreError::Conflict(db.message().to_string()),
                Some(c) if unavailable(c) => StoreError::Unavailable(e.to_string()),
                Some("5" | "6" | "261" | "517") => StoreError::Unavailable(e.to_string()),
                _ => StoreError::Internal(e.to_string()),
            },
            _ => StoreError::Internal(e.to_string()),
        }
    }

    /// True for a unique-constraint violation (Postgres 23505, SQLite 1555/2067).
    pub fn is_unique_violation(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// Classifies a Postgres driver error: refused before commit (retry the batch), the
    /// database unreachable, or a bug.
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            return match code {
                MACHINE_CHANGED => StoreError::Conflict(db.message().to_string()),
                // A row appeared that the batch's reads did not see: decide again.
                "23505" => StoreError::Conflict(db.message().to_string()),
                c if unavailable(c) => StoreError::Unavailable(e.to_string()),
                _ => StoreError::Internal(format!("{}: {} ({code})", db.severity(), db.message())),
            };
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Internal(e.to_string())
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from_sqlx(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => StoreError::from_sqlx(e),
            other => StoreError::Internal(format!("migration failed: {other}")),
        }
    }
}
