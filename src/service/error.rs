//! Service errors: a rule broken, the database gone, or the server draining.

use crate::domain::DomainError;
use crate::domain::tape::Seq;
use crate::storage::StoreError;

/// What a service call can fail with. Mapped to gRPC in exactly one place (`grpc::status`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A rule was broken; the variant says which and with what context.
    #[error(transparent)]
    Rule(#[from] DomainError),
    /// The database cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The server is draining; `last_seq` tells a stream where to resume.
    #[error("server is shutting down; retry on another replica")]
    ShuttingDown { last_seq: Option<Seq> },
    /// The stream's connection outlived its age and grace; `last_seq` tells the stream
    /// where to resume (on a fresh connection, perhaps another replica).
    #[error("the connection reached its maximum age; resume on a new connection")]
    ConnectionAged { last_seq: Seq },
    /// The replica's memory for stream data is spent and this stream's client is the
    /// furthest behind: it ends, to resume after `last_seq` (the last event it was handed).
    #[error(
        "this stream's client is too far behind and the server's stream memory is full; resume after seq {last_seq}"
    )]
    StreamBehind { last_seq: Seq },
    /// A premise changed under the call (its machine was redefined) and retrying inside
    /// the server did not settle it. Nothing was written; the caller may retry.
    #[error("{0}; nothing was written, retry")]
    Conflict(String),
    /// A bug or corrupt data; details are logged, not sent.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected(d) => Error::Rule(d),
            StoreError::Unavailable(m) => Error::Unavailable(m),
            StoreError::Conflict(m) => Error::Conflict(m),
            StoreError::Config(m) | StoreError::Internal(m) => Error::Internal(m),
        }
    }
}
