//! `baton token create`: a new bearer token, and the lines to add to the server's tokens
//! file (`--auth-tokens`). Offline: the server never sees the secret, only its hash.

use crate::conn::Outcome;
use crate::failure::Failure;
use crate::output::Output;
use baton::auth::Role;
use baton::auth::grants::{new_secret, token_entry};
use clap::Subcommand;
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// `baton token …`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a new token: prints its secret (once) and the entry for the tokens file.
    Create {
        /// Who the token is for (shown in the server's logs and errors).
        #[arg(long)]
        subject: String,
        /// What it may do: read (Get/List/Stream), write (and mutations), admin (and
        /// machine definitions and operator calls).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["read", "write", "admin"]))]
        role: String,
        /// A namespace it may use, or a prefix ending in * (repeatable; at least one).
        #[arg(long = "namespace", short = 'n', required = true)]
        namespaces: Vec<String>,
        /// It stops working after this long, e.g. 90days (default: never).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// How to print: table (the secret, then the file entry) or json.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

impl TokenCmd {
    /// How the command prints.
    pub fn output(&self) -> Output {
        match self {
            TokenCmd::Create { output, .. } => *output,
        }
    }
}

/// Runs a token command.
pub async fn run(cmd: TokenCmd) -> Outcome {
    let TokenCmd::Create {
        subject,
        role,
        namespaces,
        expires_in,
        output,
    } = cmd;
    let role: Role = role.parse().map_err(Failure::usage)?;
    let expires_at = expires_in.map(|d| humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string());
    let secret = new_secret().map_err(Failure::other)?;
    let entry = token_entry(&subject, &secret, role, &namespaces, expires_at).map_err(Failure::usage)?;
    match output {
        Output::Json => println!("{}", json!({ "secret": secret, "entry": entry })),
        Output::Table => println!(
            "# The secret, shown once: give it to {subject} (BATON_TOKEN, or --auth-token).\n{secret}\n\n# Add to the tokens file (--auth-tokens); the server reads it again on change.\n{entry}"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
