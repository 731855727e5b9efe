//! One integration-test binary: the Store contract on both backends, then the API over
//! real gRPC on both backends.

mod helpers;

mod auth;
mod cancellation;
mod cli;
mod config;
mod contract;
mod entities;
mod housekeeping;
mod leases;
mod observability;
mod pipeline;
mod postgres_tls;
mod scenarios;
mod server;
mod tape;
