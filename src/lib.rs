//! baton: fenced leases, state-machine transitions and sealed event tapes, as a gRPC service.
//!
//! Layers, from the inside out: [`domain`] (pure rules), [`storage`] (one trait, a SQLite and
//! a Postgres adapter), [`service`] (one transaction per call, the wake-up hub), [`grpc`]
//! (parse → service → convert, the one error mapping) and [`app`] (settings, build, serve,
//! drain). The `baton` binary (`src/bin/baton`) is the command line over these.

pub mod domain;

/// Generated protobuf types, client and server.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("baton.v1");
    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
}
pub mod app;
pub mod auth;
#[doc(hidden)]
pub mod faults;
pub mod grpc;
pub mod process;
pub mod service;
pub mod storage;
pub mod telemetry;

pub use storage::Backend;
