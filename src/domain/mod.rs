//! Pure rules: names, leases, machines, the tape. No I/O; every decision a backend makes
//! inside its transaction is a function here, so both backends share one predicate.

pub mod entity;
pub mod error;
pub mod lease;
pub mod machine;
pub mod names;
pub mod tape;
pub mod time;

pub use error::DomainError;
