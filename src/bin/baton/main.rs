//! The `baton` binary: `serve`, and client subcommands that call a running server. Flags
//! are parsed here; everything else is the `baton` library.

mod conn;
mod entity;
mod events;
mod lease;
mod machine;
mod machine_file;
mod output;
mod serve;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

/// baton: fenced leases, state-machine transitions and sealed event tapes over gRPC.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server (SQLite file baton.db on 127.0.0.1:50051 by default).
    Serve(serve::ServeArgs),
    /// Leases with fencing tokens.
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// State machines of entity kinds.
    #[command(subcommand)]
    Machine(machine::MachineCmd),
    /// Entities and their transitions.
    #[command(subcommand)]
    Entity(entity::EntityCmd),
    /// Append to an entity's event tape.
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Print an entity's events as they arrive; exits 0 after `final`.
    Tail(events::TailArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let outcome = match cli.command {
            Command::Serve(args) => {
                let serve = matches.subcommand_matches("serve").cloned().unwrap_or_default();
                return serve::run(args, &serve).await;
            }
            Command::Lease(cmd) => lease::run(cmd).await,
            Command::Machine(cmd) => machine::run(cmd).await,
            Command::Entity(cmd) => entity::run(cmd).await,
            Command::Events(cmd) => events::run(cmd).await,
            Command::Tail(args) => events::tail(args).await,
        };
        outcome.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })
    })
}
