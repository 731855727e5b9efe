//! One driver per measured system: baton over gRPC, and the baselines doing the same work
//! directly (raw Postgres, etcd).

pub mod baton;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod pg;
