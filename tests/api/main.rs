//! One integration-test binary: the Store contract on both backends, then the API over
//! real gRPC on both backends.

mod helpers;

mod auth;
mod cancellation;
mod cli;
mod config;
mod contract;
mod entities;
mod fuzz;
mod hostile;
mod housekeeping;
mod leases;
mod limits;
mod observability;
mod pipeline;
mod postgres_tls;
mod raw;
mod scenarios;
mod server;
mod tape;
