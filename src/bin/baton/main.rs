//! The `baton` binary: `serve`, and client subcommands that call a running server. Flags
//! are parsed here; everything else is the `baton` library.

mod addr;
mod admin;
mod conn;
mod entity;
mod events;
mod failure;
mod lease;
mod machine;
mod machine_file;
mod output;
mod serve;
mod token;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// Print an entity's events as they arrive, resuming when the stream breaks; exits 0
    /// after `final`.
    Tail(events::TailArgs),
    /// Bearer tokens for a server's tokens file (--auth-tokens).
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Operator commands: live leases, force-release, machines, delete an entity.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Print a shell completion script, e.g. `baton completions bash > /etc/bash_completion.d/baton`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// How the command prints results and errors (`serve` and `completions` print no
    /// results: human lines).
    fn output(&self) -> Output {
        match self {
            Command::Serve(_) | Command::Completions { .. } => Output::Table,
            Command::Lease(c) => c.conn().output(),
            Command::Machine(c) => c.conn().output(),
            Command::Entity(c) => c.conn().output(),
            Command::Events(c) => c.conn().output(),
            Command::Tail(a) => a.conn().output(),
            Command::Admin(c) => c.conn().output(),
            Command::Token(c) => c.output(),
        }
    }
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
    let output = cli.command.output();
    runtime.block_on(async move {
        let outcome = match cli.command {
            Command::Serve(args) => {
                let serve = matches.subcommand_matches("serve").cloned().unwrap_or_default();
                return serve::run(args, &serve).await;
            }
            Command::Completions { shell } => {
                clap_complete::generate(shell, &mut Cli::command(), "baton", &mut std::io::stdout());
                return ExitCode::SUCCESS;
            }
            Command::Lease(cmd) => lease::run(cmd).await,
            Command::Machine(cmd) => machine::run(cmd).await,
            Command::Entity(cmd) => entity::run(cmd).await,
            Command::Events(cmd) => events::run(cmd).await,
            Command::Tail(args) => events::tail(args).await,
            Command::Admin(cmd) => admin::run(cmd).await,
            Command::Token(cmd) => token::run(cmd).await,
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

    /// Every argument of every command explains itself in `--help`.
    #[test]
    fn every_argument_has_help() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut missing = vec![];
        walk(&cli, "baton", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }

    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().or(arg.get_long_help()).map(|h| h.to_string());
            if help.is_none_or(|h| h.trim().is_empty()) {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_name() != "help" {
                missing.push(format!("{sub_path} (the command itself)"));
            }
            walk(sub, &sub_path, missing);
        }
    }

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
