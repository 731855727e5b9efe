//! The `baton` command line: `serve`, and client subcommands that call a running server.
//! Every setting is a flag and a `BATON_*` environment variable.

mod client;
mod output;

use crate::app::{Application, Settings};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// baton: fenced leases, state-machine transitions and sealed event tapes over gRPC.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server (SQLite file baton.db on 127.0.0.1:50051 by default).
    Serve(ServeArgs),
    /// Leases with fencing tokens.
    #[command(subcommand)]
    Lease(client::LeaseCmd),
    /// State machines of entity kinds.
    #[command(subcommand)]
    Machine(client::MachineCmd),
    /// Entities and their transitions.
    #[command(subcommand)]
    Entity(client::EntityCmd),
    /// Append to an entity's event tape.
    #[command(subcommand)]
    Events(client::EventsCmd),
    /// Print an entity's events as they arrive; exits 0 after `final`.
    Tail(client::TailArgs),
    /// Measure throughput and latency of a server, with raw Postgres and etcd baselines.
    Bench(crate::bench::BenchArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BATON_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Database: sqlite:PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long, env = "BATON_DATABASE_URL", default_value = "sqlite:baton.db")]
    database_url: String,
    /// Log format.
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter, e.g. info or baton=debug,info.
    #[arg(long, env = "BATON_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Longest graceful shutdown on SIGINT/SIGTERM.
    #[arg(long, env = "BATON_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Heartbeat interval of idle event streams.
    #[arg(long, env = "BATON_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Close HTTP/2 connections after this age so a load balancer can rebalance (0 = never).
    #[arg(long, env = "BATON_MAX_CONNECTION_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    max_connection_age: Duration,
    /// HTTP/2 keepalive ping interval.
    #[arg(long, env = "BATON_KEEPALIVE", default_value = "30s", value_parser = humantime::parse_duration)]
    keepalive: Duration,
    /// Database connections (Postgres pool size).
    #[arg(long, env = "BATON_POOL_SIZE", default_value_t = 8)]
    pool_size: u32,
    /// How long request-id outcomes are kept for safe retries.
    #[arg(long, env = "BATON_REQUEST_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    request_retention: Duration,
}

/// Runs the command line; the binary's whole body.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Lease(cmd) => client::run(client::Cmd::Lease(cmd)).await,
            Command::Machine(cmd) => client::run(client::Cmd::Machine(cmd)).await,
            Command::Entity(cmd) => client::run(client::Cmd::Entity(cmd)).await,
            Command::Events(cmd) => client::run(client::Cmd::Events(cmd)).await,
            Command::Tail(args) => client::run(client::Cmd::Tail(args)).await,
            Command::Bench(args) => crate::bench::run(args).await,
        }
    })
}

fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| format!("bad --log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> ExitCode {
    if let Err(e) = init_logging(args.log_format, &args.log_level) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let settings = Settings {
        listen: args.listen,
        database_url: args.database_url,
        drain: args.drain,
        heartbeat: args.heartbeat,
        max_connection_age: (!args.max_connection_age.is_zero()).then_some(args.max_connection_age),
        keepalive: args.keepalive,
        pool_size: args.pool_size,
        request_retention: args.request_retention,
        ..Settings::default()
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
