//! baton: fenced leases, state-machine transitions and sealed event tapes, as a gRPC service.

pub mod domain;

/// Generated protobuf types, client and server.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("baton.v1");
    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
}
pub mod app;
pub mod bench;
pub mod cli;
pub mod grpc;
pub mod service;
pub mod storage;
