//! One integration-test binary: the Store contract on both backends, then the API over
//! real gRPC on both backends.

mod helpers;

mod contract;
mod leases;
mod entities;
mod tape;
mod server;
mod scenarios;
