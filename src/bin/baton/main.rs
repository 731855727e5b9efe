//! The `baton` binary: `serve`, and client subcommands that call a running server. Flags
//! are parsed here; everything else is the `baton` library.

mod addr;
mod conn;
mod entity;
mod events;
mod failure;
mod lease;
mod machine;
mod machine_file;
mod output;
mod serve;

use clap::{Parser, Subcommand};
use output::Output;
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
    Serve(baton::app::Settings),
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
    /// Print an entity's events as they arrive, resuming when the stream breaks; exits 0
    /// after `final`.
    Tail(events::TailArgs),
}

impl Command {
    /// How the command prints results and errors (`serve` prints no results: human lines).
    fn output(&self) -> Output {
        match self {
            Command::Serve(_) => Output::Table,
            Command::Lease(c) => c.conn().output(),
            Command::Machine(c) => c.conn().output(),
            Command::Entity(c) => c.conn().output(),
            Command::Events(c) => c.conn().output(),
            Command::Tail(a) => a.conn().output(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let output = cli.command.output();
    runtime.block_on(async move {
        let outcome = match cli.command {
            Command::Serve(settings) => return serve::run(settings).await,
            Command::Lease(cmd) => lease::run(cmd).await,
            Command::Machine(cmd) => machine::run(cmd).await,
            Command::Entity(cmd) => entity::run(cmd).await,
            Command::Events(cmd) => events::run(cmd).await,
            Command::Tail(args) => events::tail(args).await,
        };
        outcome.unwrap_or_else(|failure| {
            failure.report(output);
            failure.exit_code()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn output_of(args: &[&str]) -> Result<Output, ErrorKind> {
        Cli::try_parse_from(args)
            .map(|c| c.command.output())
            .map_err(|e| e.kind())
    }

    #[test]
    fn json_is_output_json_and_the_two_do_not_mix() {
        assert_eq!(output_of(&["baton", "entity", "get", "x"]), Ok(Output::Table));
        assert_eq!(output_of(&["baton", "entity", "get", "x", "--json"]), Ok(Output::Json));
        assert_eq!(output_of(&["baton", "tail", "x", "--output", "json"]), Ok(Output::Json));
        assert_eq!(
            output_of(&["baton", "lease", "get", "k", "--output", "table"]),
            Ok(Output::Table)
        );
        assert_eq!(
            output_of(&["baton", "entity", "get", "x", "--json", "--output", "table"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            output_of(&["baton", "entity", "get", "x", "--output", "yaml"]),
            Err(ErrorKind::InvalidValue)
        );
    }
}
